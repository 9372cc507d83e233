"""Jobs as the API sees them: start, describe, list and cancel executions of the query state machine.

The execution name is the job id, so starting a job twice yields one execution. Step Functions
refuses a second start of a name once that execution has closed (and moto even while it runs),
so on ``ExecutionAlreadyExists`` the existing execution's input is compared with the new spec:
the same spec is the same job, another spec is a conflict.

A stopped execution runs no Catch state, so cancelling does what Cleanup would have done: it reads
the execution's last known job state from its history, hands it to ``workflow.undo`` (cancel
upstream, drop partial output, give back the slot) and sends "Query Failed" with the error
``Cancelled``. The same code serves DELETE /queries/{job_id} and executions stopped elsewhere (the
console, the CLI) or timed out. Whichever party claims an execution's cleanup first
(``query_relay.claims``) does all of it, once; the API claims before it stops the execution.

A long job may continue as new executions (``query_relay.history``): the job id names the first,
whose output points at the next. Describing and cancelling a job follow that chain to the
execution that carries the job now; listing shows each job once, under its id.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from query_relay import aws, providers, workflow
from query_relay.api.exceptions import InvalidPageToken, JobConflict, JobFinished, JobNotFound
from query_relay.api.models import Download, Downloads, JobAccepted, JobPage, JobSummary, JobView
from query_relay.api.settings import get_control_settings
from query_relay.catalog import check_allowed as check_catalog_allowed
from query_relay.claims import Claim, claim_cleanup
from query_relay.connections import load_connection
from query_relay.exceptions import InvalidJobSpec, QueryTimedOut
from query_relay.history import continued_as, is_continuation, latest_execution, still_running
from query_relay.limits import check_spec_fits
from query_relay.models import JOB_ID_PATTERN, JobSpec, Manifest, parse_job_spec
from query_relay.observability import log_job, logger
from query_relay.settings import get_settings
from query_relay.state import CaughtError, CleanupInput, Failure, JobState
from query_relay.windows import resolved_query

if TYPE_CHECKING:
    from mypy_boto3_stepfunctions.type_defs import (
        DescribeExecutionOutputTypeDef,
        ExecutionListItemTypeDef,
        HistoryEventTypeDef,
    )

CANCELLED = "Cancelled"
QUERY_TIMED_OUT = QueryTimedOut.__name__
# The causes "Query Failed" gives for a job cancelled through the API, stopped elsewhere, timed out.
API_CANCEL_CAUSE = "cancelled through the query-relay API"
STOPPED_CAUSE = "stopped outside query-relay (the console, the CLI or StopExecution)"
TIMED_OUT_CAUSE = "the execution ran past its TimeoutSeconds (statemachine/query.asl.json)"
# How long a DELETE that finds another party cleaning up waits for the execution to end.
ENDING_PATIENCE_SECONDS = 10.0
# Task states whose output carries the job state ($.job) after they exit.
_JOB_STATES = ("Submit", "Poll", "Fetch")


def new_job_id(now: datetime | None = None) -> str:
    """``q-<UTC time>-<random>``: sorts by time, never collides in practice, a valid execution name."""
    return f"q-{(now or datetime.now(UTC)):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def execution_arn(job_id: str) -> str:
    machine = get_control_settings().state_machine_arn
    return f"{machine.replace(':stateMachine:', ':execution:', 1)}:{job_id}"


def links_of(job_id: str) -> dict[str, str]:
    return {"self": f"/queries/{job_id}"}


# --- start ---------------------------------------------------------------------------------------


def validate_job(spec: JobSpec) -> None:
    """What Submit would refuse, refused before anything starts: the connection and the query."""
    providers.validate_job(spec.connection, load_connection(spec.connection), resolved_query(spec))
    check_catalog_allowed(spec, get_settings().catalog_database)


def start_job(spec: JobSpec) -> JobAccepted:
    job_id = spec.job_id or new_job_id()
    log_job(job_id)  # a refusal below is logged under the job id too
    validate_job(spec)
    named = spec.model_copy(update={"job_id": job_id})
    document = named.model_dump(mode="json")
    check_spec_fits(document)
    client = aws.sfn()
    try:
        client.start_execution(
            stateMachineArn=get_control_settings().state_machine_arn, name=job_id, input=json.dumps(document)
        )
    except client.exceptions.ExecutionAlreadyExists:
        existing = _describe(job_id)
        if _spec_of(existing) != named:
            raise JobConflict(f"job {job_id!r} exists with a different spec; choose another job_id") from None
        logger.info("job exists already with the same spec", extra={"job_id": job_id})
        status = latest_execution(client, existing)["status"]  # it may have continued as new
        return JobAccepted(job_id=job_id, status=status, links=links_of(job_id))
    logger.info("job started", extra={"job_id": job_id, "connection": spec.connection})
    return JobAccepted(job_id=job_id, status="RUNNING", links=links_of(job_id))


def _spec_of(described: DescribeExecutionOutputTypeDef) -> JobSpec | None:
    """The spec an execution was started with (its name as job id when the input had none)."""
    try:
        spec = parse_job_spec(json.loads(described.get("input") or "null"))
    except (InvalidJobSpec, ValueError):
        return None
    return spec if spec.job_id else spec.model_copy(update={"job_id": described["name"]})


# --- describe and list ---------------------------------------------------------------------------


def describe_job(job_id: str) -> JobView:
    first = _describe(job_id)
    log_job(job_id)  # only an id that names a job: one asked for in vain may be anything
    described = latest_execution(aws.sfn(), first)  # the same execution unless the job continued
    status = described["status"]
    started, stopped = first["startDate"], described.get("stopDate")
    view: dict[str, Any] = {
        "job_id": job_id,
        "status": status,
        "started_at": started,
        "stopped_at": stopped,
        "duration_seconds": (stopped - started).total_seconds() if stopped else None,
        "error": described.get("error"),
        "cause": described.get("cause"),
        "links": links_of(job_id),
    }
    spec = _spec_of(first)
    if spec is not None:
        view["connection"] = spec.connection
    job = None if status == "SUCCEEDED" else _last_job_state(described["executionArn"])
    if job is not None:
        view |= {
            "provider": job.provider,
            "upstream_id": job.upstream_id,
            "polls": job.polls,
            "waiting_for_slot": status == "RUNNING" and job.status == "QUEUED",
        }
        if status == "RUNNING" and job.status == "SPLIT" and job.fetch_plan is not None:
            view["parallel_fetch"] = {
                "branches": len(job.fetch_plan.branches),
                "branches_landed": _branches_landed(described["executionArn"]),
            }
    output = json.loads(described.get("output") or "{}") if status == "SUCCEEDED" else {}
    if "manifest_key" in output:  # a schedule's launcher run succeeds without a result of its own
        manifest = read_manifest(output["bucket"], output["manifest_key"])
        view |= {
            "provider": manifest.provider,
            "upstream_id": manifest.upstream_id,
            "polls": manifest.polls,
            "manifest": manifest,
            "downloads": _downloads(output["bucket"], output["manifest_key"], manifest),
        }
    return JobView.model_validate(view)


def list_jobs(status: str | None = None, limit: int = 20, next_token: str | None = None) -> JobPage:
    """Newest first (the order Step Functions lists executions in), up to ``limit`` per page.

    Executions that are not jobs of their own are left out: a schedule's launcher run, and the
    continuations of a long job (the job shows once, with the status of its latest execution);
    with a status filter, a continuation that matches stands for its job."""
    arguments: dict[str, Any] = {
        "stateMachineArn": get_control_settings().state_machine_arn,
        "maxResults": limit,
    }
    if status:
        arguments["statusFilter"] = status
    if next_token:
        arguments["nextToken"] = next_token
    client = aws.sfn()
    try:
        page = client.list_executions(**arguments)
    except client.exceptions.InvalidToken:
        raise InvalidPageToken("not a next_token of this listing (or it has expired)") from None
    jobs = [job for execution in page["executions"] if (job := _summary(execution, filtered=bool(status)))]
    return JobPage(jobs=jobs, next_token=page.get("nextToken"))


def _summary(execution: ExecutionListItemTypeDef, *, filtered: bool) -> JobSummary | None:
    """The job an execution of the listing stands for, or None when it stands for none."""
    name, status, stopped = execution["name"], execution["status"], execution.get("stopDate")
    started = execution["startDate"]
    if is_continuation(name):
        if not filtered:
            return None  # listed under its job's first execution
        described = aws.sfn().describe_execution(executionArn=execution["executionArn"])
        name = str(json.loads(described.get("input") or "{}").get("job", {}).get("job_id", name))
    elif status == "SUCCEEDED":
        first = aws.sfn().describe_execution(executionArn=execution["executionArn"])
        output = json.loads(first.get("output") or "{}")
        if "schedule" in output:
            return None  # a schedule's launcher: its run is a job of its own
        if continued_as(first) is not None:
            if filtered:
                return None  # the job's status is its latest execution's, listed by that one
            latest = latest_execution(aws.sfn(), first)
            status, stopped = latest["status"], latest.get("stopDate")
    return JobSummary(
        job_id=name, status=status, started_at=started, stopped_at=stopped, links=links_of(name)
    )


def read_manifest(bucket: str, key: str) -> Manifest:
    body = aws.s3().get_object(Bucket=bucket, Key=key)["Body"]
    try:
        return Manifest.model_validate_json(body.read())
    finally:
        body.close()


def _downloads(bucket: str, manifest_key: str, manifest: Manifest) -> Downloads:
    expiry = get_control_settings().link_expiry_seconds
    client = aws.s3()

    def link(key: str) -> str:
        return client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expiry
        )

    return Downloads(
        expires_at=datetime.now(UTC) + timedelta(seconds=expiry),
        manifest=Download(key=manifest_key, url=link(manifest_key)),
        objects=[
            Download(key=entry.key, url=link(entry.key), bytes=entry.bytes, sha256=entry.sha256)
            for entry in manifest.objects
        ],
    )


def _describe(job_id: str) -> DescribeExecutionOutputTypeDef:
    if not re.fullmatch(JOB_ID_PATTERN, job_id):
        raise JobNotFound(f"no such job: job ids match {JOB_ID_PATTERN}")
    client = aws.sfn()
    try:
        return client.describe_execution(executionArn=execution_arn(job_id))
    except client.exceptions.ExecutionDoesNotExist:
        raise JobNotFound("no job has this id") from None


# --- cancel --------------------------------------------------------------------------------------


def cancel_job(job_id: str) -> JobView:
    """Stop the job's execution and clean up as its Cleanup state would have (module docstring),
    unless another party cleans up after that execution already (``query_relay.claims``): then,
    like a DELETE of a job stopped already, answer with the job as it now is."""
    first = _describe(job_id)
    log_job(job_id)
    described = latest_execution(aws.sfn(), first)
    if described["status"] == "ABORTED":
        return describe_job(job_id)  # stopped already (another DELETE, the console): the same answer
    if described["status"] != "RUNNING":
        raise JobFinished(f"job {job_id!r} is {described['status']}; only a RUNNING job can be cancelled")
    arn = described["executionArn"]
    mine = Claim(claimant=f"api:{secrets.token_hex(8)}", error=CANCELLED, cause=API_CANCEL_CAUSE)
    held = claim_cleanup(get_settings().control_table, arn, mine)
    if held.claimant != mine.claimant:
        logger.info("another party cleans up after this execution", extra={"claimant": held.claimant})
        _wait_until_ended(arn)
        return describe_job(job_id)
    aws.sfn().stop_execution(executionArn=arn, error=CANCELLED, cause=API_CANCEL_CAUSE)
    stopped = aws.sfn().describe_execution(executionArn=arn)["status"]
    if stopped == "ABORTED":
        _clean_up(arn, mine)
    else:  # it ended on its own first (it cannot have failed: its Cleanup would hold the claim)
        logger.info("the execution ended before it could be stopped", extra={"status": stopped})
    return describe_job(job_id)


def on_execution_ended_without_cleanup(arn: str, status: str, claimant: str) -> Failure | None:
    """An execution of the query machine was stopped (ABORTED) or ran past its own TimeoutSeconds
    (TIMED_OUT); neither runs a Catch state (EventBridge status change): clean up, unless another
    party (an API cancel, an earlier delivery of this event) claimed that already. The stop's own
    error and cause are not read: DescribeExecution documents them for FAILED executions only.
    Its lines name the execution; from the cleanup on (which reads the job's state) they carry the
    job id as correlation id too."""
    logger.append_keys(execution_arn=arn)
    if status == "TIMED_OUT":
        mine = Claim(claimant, QUERY_TIMED_OUT, TIMED_OUT_CAUSE)
    else:
        mine = Claim(claimant, CANCELLED, STOPPED_CAUSE)
    held = claim_cleanup(get_settings().control_table, arn, mine)
    if held.claimant != mine.claimant:
        logger.info("another party cleans up after this execution", extra={"claimant": held.claimant})
        return None
    return _clean_up(arn, mine)


def _wait_until_ended(arn: str) -> None:
    """Give the party that cleans up a moment to end the execution, so that the answer shows it."""
    deadline = time.monotonic() + ENDING_PATIENCE_SECONDS
    while still_running(aws.sfn(), arn) and time.monotonic() < deadline:
        time.sleep(0.2)


def _clean_up(arn: str, claim: Claim) -> Failure:
    """Cancel the upstream task, drop partial output, give back the job's slot and announce
    "Query Failed" with the claim's error and cause (``Cancelled``, or ``QueryTimedOut``)."""
    client = aws.sfn()
    described = client.describe_execution(executionArn=arn)
    document = json.loads(described.get("input") or "null")
    continued = isinstance(document, dict) and "continued_from" in document
    failure = workflow.undo(
        CleanupInput(
            spec=document["spec"] if continued else document,
            execution=document["execution"] if continued else described["name"],
            execution_arn=arn,
            job=_last_job_state(arn),
            error=CaughtError(Error=claim.error, Cause=claim.cause),
        )
    )
    _announce_failure(failure)
    return failure


def _announce_failure(failure: Failure) -> None:
    """The same event the state machine's PublishFailed state sends."""
    detail = failure.model_dump(include={"job_id", "connection", "provider", "error", "cause"})
    response = aws.events().put_events(
        Entries=[
            {
                "Source": "query-relay",
                "DetailType": "Query Failed",
                "EventBusName": get_control_settings().event_bus_name,
                "Detail": json.dumps(detail),
            }
        ]
    )
    if response.get("FailedEntryCount"):
        logger.warning("could not send the Query Failed event", extra={"entries": response["Entries"]})


def _last_job_state(arn: str) -> JobState | None:
    """The job state ($.job) the last Submit/Poll/Fetch left: upstream id, provider, poll count."""
    for event in _history_newest_first(arn):
        details = event.get("stateExitedEventDetails")
        if event["type"] != "TaskStateExited" or not details or details["name"] not in _JOB_STATES:
            continue
        output = json.loads(details.get("output") or "{}")
        try:
            return JobState.model_validate(output["job"])
        except (KeyError, TypeError, ValidationError):
            continue  # Submit failed (caught): no $.job yet at this point
    return _job_state_carried_in(arn)


def _branches_landed(arn: str) -> int:
    """How many iterations of the running parallel fetch's Map have succeeded: counted back from
    the newest event to the Map's start (at most about ten events a branch)."""
    landed = 0
    for event in _history_newest_first(arn):
        if event["type"] == "MapStateEntered":
            break
        landed += event["type"] == "MapIterationSucceeded"
    return landed


def _job_state_carried_in(arn: str) -> JobState | None:
    """A continuation starts with the job state of the execution before it (its input's ``job``)."""
    document = json.loads(aws.sfn().describe_execution(executionArn=arn).get("input") or "null")
    if not isinstance(document, dict) or "continued_from" not in document:
        return None
    try:
        return JobState.model_validate(document["job"])
    except (KeyError, TypeError, ValidationError):
        return None


def _history_newest_first(arn: str) -> Iterator[HistoryEventTypeDef]:
    """Newest events first, page by page, so a long execution needs one page, not all of them.
    (moto ignores reverseOrder and answers one page oldest first: sorting a page covers both.)"""
    paginator = aws.sfn().get_paginator("get_execution_history")
    for page in paginator.paginate(executionArn=arn, reverseOrder=True, includeExecutionData=True):
        yield from sorted(page["events"], key=lambda event: event["id"], reverse=True)
