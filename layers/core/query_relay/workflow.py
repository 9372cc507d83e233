"""The steps of a job, one function per Lambda: submit, poll, fetch, cleanup (and, when a landed
result could not be announced, report_unannounced).

Each takes the execution state the state machine hands its Lambda and returns the part the
state machine stores (see ``query_relay.state``). Handlers only call these. Once a step knows its
job's id, every line it logs carries that id as the correlation id (``observability.log_job``).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from query_relay import aws, submissions
from query_relay.catalog import Catalog, glue_columns
from query_relay.catalog import check_allowed as check_catalog_allowed
from query_relay.claims import MACHINE_CLAIMANT, Claim, claim_cleanup, cleanup_claimed
from query_relay.column_types import arrow_schema
from query_relay.concurrency import Slots
from query_relay.connections import load_connection
from query_relay.exceptions import (
    InvalidConnection,
    QueryTimedOut,
    UpstreamProtocolError,
    UpstreamRateLimited,
    cut_message,
)
from query_relay.history import continuation_name, fetch_branches_allowed, should_continue, still_running
from query_relay.limits import check_spec_fits
from query_relay.models import Connection, JobSpec, Manifest, OutputSpec, PollingSpec, parse_job_spec
from query_relay.observability import log_job, logger, metrics
from query_relay.parallel import plan_fetch
from query_relay.polling import MIN_WAIT_SECONDS, Jitter, next_wait_seconds, plan_next_check
from query_relay.providers import (
    FetchedResult,
    PollStatus,
    Provider,
    SubmitOptions,
    open_provider,
    validate_job,
)
from query_relay.results import BranchLanded, Landed, ResultWriter, WrittenResult, job_day, job_prefix
from query_relay.settings import get_settings
from query_relay.state import (
    BranchInput,
    CatalogPartition,
    CleanupInput,
    Failure,
    FetchCursor,
    FetchPlan,
    JobInput,
    JobState,
    ResultPointer,
    SubmitInput,
    UnannouncedResult,
)
from query_relay.submissions import StartedTask
from query_relay.upstream.deadline import invocation_ends_within
from query_relay.windows import resolved_query, run_values

# Keep this much of a Lambda's remaining time free when long-polling an upstream.
LAMBDA_TIME_MARGIN_SECONDS = 5.0
# A Fetch stops early (after a whole part) once less time than this is left (FetchBudget).
FETCH_RESERVE_SECONDS = 60.0
# A Retry-After longer than this is waited this long, then the upstream is asked again.
RETRY_AFTER_MAX_SECONDS = 3600.0
# An AWS error's cause is a sentence or two; a log line keeps at most this much of it.
MAX_LOGGED_CAUSE = 1000


def _writer() -> ResultWriter:
    settings = get_settings()
    return ResultWriter(aws.s3(), settings.results_bucket, part_max_bytes=settings.part_max_bytes)


def _now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def _provider_for(connection_name: str, connection: Connection | None = None) -> Iterator[Provider[Any, Any]]:
    provider = open_provider(connection_name, connection or load_connection(connection_name))
    try:
        yield provider
    finally:
        provider.close()


def _running_job(event: dict[str, Any]) -> tuple[JobSpec, JobState]:
    """Poll's and Fetch's input: the job spec and the job Submit (or the last Poll) left."""
    step = JobInput.model_validate(event)
    spec, job = parse_job_spec(step.spec), step.job
    log_job(job.job_id, connection=job.connection, upstream_id=job.upstream_id)
    return spec, job


# --- Submit ---------------------------------------------------------------------------------------


@dataclass
class _Request:
    """A Submit's job, read and checked; nothing is started anywhere yet."""

    step: SubmitInput
    spec: JobSpec
    job_id: str
    connection: Connection
    query: BaseModel
    submitted_at: datetime
    deadline: datetime
    # What the job's state keeps from its QUEUED state (and whether it now holds a slot).
    carried: dict[str, Any] = field(default_factory=dict)


def submit(event: dict[str, Any], *, seconds_left: float | None = None) -> dict[str, Any]:
    """Start the upstream task; or, when the connection's max_concurrent slots are all taken,
    return the job QUEUED with the Wait before asking again (the state machine calls Submit again
    with that job state). A retried Submit resumes the task an attempt that died had started."""
    request = _read(SubmitInput.model_validate(event))
    if not _take_slot(request):
        return _wait_for_slot(request).model_dump(mode="json")
    started = _started_before(request)
    if started is not None:
        return _resumed(request, started).model_dump(mode="json")
    with _upstream_time(seconds_left):
        job = _start(request, seconds_left)
        _undo_if_stopped_meanwhile(request, job)
    return job.model_dump(mode="json")


def _read(step: SubmitInput) -> _Request:
    """Parse and check the job: a bad spec, connection or query fails here, before anything runs."""
    spec = parse_job_spec(step.spec)
    check_spec_fits(step.spec)  # before anything starts upstream (query_relay.limits)
    job_id = spec.job_id or step.execution
    log_job(job_id, connection=spec.connection)
    connection = load_connection(spec.connection)
    query = validate_job(spec.connection, connection, resolved_query(spec))
    check_catalog_allowed(spec, get_settings().catalog_database)
    if spec.scheduled_run is not None:
        logger.info(
            "a scheduled run",
            extra={"schedule": spec.scheduled_run.schedule, **run_values(spec.scheduled_run, needed=set())},
        )
    queued, submitted_at = step.queued, _now()
    # The job's clock starts when it first asked for a slot: waiting counts towards its timeout.
    deadline = queued.deadline if queued else submitted_at + timedelta(seconds=spec.polling.timeout_seconds)
    carried: dict[str, Any] = {}
    if queued is not None:
        carried = {
            "slot_checks": queued.slot_checks,
            "rounds": queued.rounds,
            "continuations": queued.continuations,
        }
    return _Request(step, spec, job_id, connection, query, submitted_at, deadline, carried)


def _take_slot(request: _Request) -> bool:
    """One of the connection's max_concurrent slots, if it sets one; False when all are taken."""
    limit = request.connection.max_concurrent
    if limit is None:
        return True
    slots = _slots(request.spec.connection)
    if slots is None:
        raise InvalidConnection(
            f"connection {request.spec.connection!r} sets max_concurrent but this deployment has no "
            "control table (CONTROL_TABLE)"
        )
    if not slots.acquire(request.job_id, request.step.execution_arn or "", limit):
        return False
    request.carried["holds_slot"] = True
    return True


def _started_before(request: _Request) -> StartedTask | None:
    """The upstream task an earlier attempt of this Submit started before it died, if any. Only a
    retried attempt can find one (the state machine passes ``retry_count``; 0 on a first try)."""
    table, execution_arn = get_settings().control_table, request.step.execution_arn
    if table is None or execution_arn is None or request.step.retry_count == 0:
        return None
    return submissions.find(table, execution_arn, request.job_id)


def _start(request: _Request, seconds_left: float | None) -> JobState:
    """Start the upstream task; a result ready inside the submit's wait lands at once (fast path)."""
    options = SubmitOptions(
        output_format=request.spec.output.format,
        wait_seconds=_bounded_wait(get_settings().submit_wait_seconds, seconds_left),
        timeout_seconds=request.spec.polling.timeout_seconds,
        on_started=_recorder(request.step, request.job_id, request.submitted_at),
        request_key=f"{request.step.execution_arn or request.step.execution}/{request.job_id}",
    )
    with _provider_for(request.spec.connection, request.connection) as provider:
        with provider.submit(request.query, options) as submission:
            job = _job(
                request,
                upstream_id=submission.upstream_id,
                status="FINISHED" if submission.finished else "RUNNING",
                wait_seconds=_first_wait_seconds(provider, request.spec, request.submitted_at),
                provider_state=submission.state,
            )
            logger.append_keys(upstream_id=job.upstream_id)
            if submission.result is not None:  # read while the submit's answer is open
                job.result, job.status = _land(request.spec, job, submission.result), "DONE"
                metrics.add_metric(name="FastPathJobs", unit="Count", value=1)
        if job.status == "DONE":
            _release_quietly(provider, job)
            _give_back_slot(job)
    metrics.add_metric(name="JobsSubmitted", unit="Count", value=1)
    logger.info("submitted", extra={"status": job.status, "provider": job.provider})
    return job


def _job(request: _Request, **fields: Any) -> JobState:
    """The job's state: what the request says, what it carried over, and ``fields``."""
    known: dict[str, Any] = {
        "job_id": request.job_id,
        "connection": request.spec.connection,
        "provider": request.connection.provider,
        "submitted_at": request.submitted_at,
        "deadline": request.deadline,
    }
    return JobState(**(known | request.carried | fields))


def _recorder(
    step: SubmitInput, job_id: str, submitted_at: datetime
) -> Callable[[str, dict[str, Any]], None]:
    """What the provider calls the moment the upstream names the task: record it for a retry."""
    table, execution_arn = get_settings().control_table, step.execution_arn

    def record(upstream_id: str, state: dict[str, Any]) -> None:
        if table is None or execution_arn is None:
            return
        try:
            submissions.record(table, execution_arn, job_id, StartedTask(upstream_id, state, submitted_at))
        except Exception as error:  # noqa: BLE001 - only a retry after a crash would miss it
            logger.warning(
                "could not record the started task",
                extra={"reason": type(error).__name__, "detail": str(error)},
            )

    return record


def _resumed(request: _Request, started: StartedTask) -> JobState:
    """The job of a Submit that died after the upstream named its task: go on polling that task."""
    logger.append_keys(upstream_id=started.upstream_id)
    logger.warning("an earlier attempt of this Submit started the upstream task and died: resuming it")
    metrics.add_metric(name="SubmitsResumed", unit="Count", value=1)
    return _job(
        request,
        upstream_id=started.upstream_id,
        status="RUNNING",
        wait_seconds=MIN_WAIT_SECONDS,
        submitted_at=started.submitted_at,
        provider_state=started.state,
    )


def _undo_if_stopped_meanwhile(request: _Request, job: JobState) -> None:
    """An execution stopped while its Submit ran gets no Cleanup, and the console-stop handler
    finds no job state to clean up: so Submit looks once it has started the task, and if its
    execution has ended meanwhile, undoes what it did (cancels the upstream task, removes a result
    the fast path landed, gives the slot back). Not claimed: the party that claimed this
    execution's cleanup found no job state to undo, and announced the ending itself."""
    execution_arn = request.step.execution_arn
    if execution_arn is None:
        return
    try:
        running = still_running(aws.sfn(), execution_arn)
    except Exception as error:  # noqa: BLE001 - the job goes on; only the undo is skipped
        logger.warning("could not check the execution", extra={"reason": type(error).__name__})
        return
    if running:
        return
    logger.warning("the execution ended while Submit ran: undoing what Submit started")
    _undo_job(job, request.spec.output)
    _give_back_slot(job)


def _slots(connection_name: str) -> Slots | None:
    table = get_settings().control_table
    return Slots(table, connection_name) if table else None


def _wait_for_slot(request: _Request) -> JobState:
    """The job, QUEUED: every slot of its connection is taken. Waiting counts towards
    ``polling.timeout_seconds``, like the upstream's own running time."""
    queued, now, deadline = request.step.queued, _now(), request.deadline
    asked_at = queued.submitted_at if queued else now
    waited = (now - asked_at).total_seconds()
    limit = request.connection.max_concurrent
    if now >= deadline:
        raise QueryTimedOut(
            f"job {request.job_id} waited {waited:.0f}s (polling.timeout_seconds) for one of the "
            f"{limit} slots of connection {request.spec.connection!r} (max_concurrent)"
        )
    checks = request.carried.get("slot_checks", 0) + 1
    seconds_left = (deadline - now).total_seconds()
    job = _job(
        request,
        upstream_id=None,
        status="QUEUED",
        wait_seconds=next_wait_seconds(
            request.spec.polling, checks - 1, seconds_left=seconds_left, jitter=random.random
        ),
        submitted_at=asked_at,
        slot_checks=checks,
    )
    if queued is not None:
        _count_round(job)
    logger.info(
        "waiting for a slot", extra={"max_concurrent": limit, "checks": checks, "waited_seconds": int(waited)}
    )
    metrics.add_metric(name="SlotWaits", unit="Count", value=1)
    return job


def _give_back_slot(job: JobState) -> None:
    """Give the job's slot back; a failure only delays the slot (the next Submit that finds no
    free slot frees those of ended executions)."""
    if not job.holds_slot:
        return
    _release_slot_quietly(job.job_id, job.connection)
    job.holds_slot = False


def _release_slot_quietly(job_id: str, connection_name: str) -> None:
    slots = _slots(connection_name)
    if slots is None:
        return
    try:
        slots.release(job_id)
    except Exception as error:  # noqa: BLE001 - the job's outcome stands; the slot is freed later
        logger.warning(
            "could not give the concurrency slot back",
            extra={"reason": type(error).__name__, "detail": str(error)},
        )


def _count_round(job: JobState) -> None:
    """One more Wait round ran in this execution: continue as a new execution before the next
    round would pass the history budget (query_relay.history)."""
    job.rounds += 1
    job.continue_as_new = should_continue(job.rounds, get_settings().history_event_limit)
    job.next_execution = None
    if job.continue_as_new:
        job.continuations += 1
        job.next_execution = continuation_name(job.job_id, job.continuations)
        job.rounds = 0
        logger.info(
            "continuing as a new execution",
            extra={"next_execution": job.next_execution, "continuations": job.continuations},
        )


def _first_wait_seconds(provider: Provider[Any, Any], spec: JobSpec, submitted_at: datetime) -> int:
    """After a long-poll upstream's submit the Wait is the shortest: the Polls do the waiting."""
    if provider.long_polls:
        return MIN_WAIT_SECONDS
    elapsed = (_now() - submitted_at).total_seconds()
    return next_wait_seconds(
        _polling_for(provider, spec.polling), 0, elapsed_seconds=elapsed, jitter=random.random
    )


def _polling_for(provider: Provider[Any, Any], polling: PollingSpec) -> PollingSpec:
    """The job's polling, its longest gap cut to what the upstream allows (``max_check_gap_seconds``)."""
    most = provider.max_check_gap_seconds
    if most is None or polling.max_seconds <= most:
        return polling
    return polling.model_copy(
        update={"max_seconds": most, "initial_seconds": min(polling.initial_seconds, most)}
    )


def _upstream_time(seconds_left: float | None) -> AbstractContextManager[None]:
    """Every upstream exchange of this invocation ends LAMBDA_TIME_MARGIN_SECONDS before the
    Lambda would be stopped: a trickling upstream fails the step with a named error
    (UpstreamUnavailable), retried like any, and the step still has time to clean up."""
    usable = None if seconds_left is None else seconds_left - LAMBDA_TIME_MARGIN_SECONDS
    return invocation_ends_within(usable)


def _bounded_wait(wanted: float, seconds_left: float | None) -> float:
    if seconds_left is None:
        return wanted
    return max(0.0, min(wanted, seconds_left - LAMBDA_TIME_MARGIN_SECONDS))


# --- Poll -----------------------------------------------------------------------------------------


def poll(event: dict[str, Any], *, seconds_left: float | None = None) -> dict[str, Any]:
    spec, job = _running_job(event)
    if job.upstream_id is None:
        raise UpstreamProtocolError("nothing to poll: the upstream gave no task id")  # pragma: no cover
    left_in_job = (job.deadline - _now()).total_seconds()
    if left_in_job <= 0:
        raise QueryTimedOut(
            f"job {job.job_id} still running upstream after {spec.polling.timeout_seconds}s "
            f"(polling.timeout_seconds); {job.polls} polls"
        )
    hold = _bounded_wait(min(get_settings().long_poll_max_seconds, left_in_job), seconds_left)
    with _upstream_time(seconds_left), _provider_for(job.connection) as provider:
        status = watch_upstream(provider, spec.polling, job, hold_seconds=hold)
    job.polls += 1
    job.continue_as_new, job.next_execution = False, None
    if job.status != "FINISHED":
        _count_round(job)
    logger.info(
        "polled",
        extra={
            "status": job.status,
            "polls": job.polls,
            "wait_seconds": job.wait_seconds,
            "detail": status.detail,
        },
    )
    metrics.add_metric(name="Polls", unit="Count", value=1)
    return job.model_dump(mode="json")


def watch_upstream(
    provider: Provider[Any, Any],
    polling: PollingSpec,
    job: JobState,
    *,
    hold_seconds: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    jitter: Jitter | None = random.random,
) -> PollStatus:
    """Check the task, and keep checking inside this invocation (long-polls, or short sleeps
    where those are cheaper than another Wait -> Poll round) for up to ``hold_seconds``. Sets
    ``job.status`` to FINISHED, or ``job.wait_seconds`` for the Wait state; the last status."""
    if job.upstream_id is None:
        raise UpstreamProtocolError("nothing to watch: the upstream gave no task id")  # pragma: no cover
    polling = _polling_for(provider, polling)
    hold_until = clock() + max(hold_seconds, 0.0)
    checks = 0
    while True:
        long_poll = max(hold_until - clock(), 0.0) if provider.long_polls else 0.0
        status = provider.poll(job.upstream_id, job.provider_state, long_poll)
        checks += 1
        if status.state is not None:
            job.provider_state = status.state
        if status.finished:
            job.status = "FINISHED"
            return status
        job_seconds_left = (job.deadline - _now()).total_seconds()
        next_check = plan_next_check(
            polling,
            polls_done=job.polls + checks - 1,
            elapsed_seconds=(_now() - job.submitted_at).total_seconds(),
            hold_left_seconds=hold_until - clock(),
            job_seconds_left=job_seconds_left,
            long_polls=provider.long_polls,
            retry_after_seconds=_honoured_retry_after(
                status.retry_after_seconds, job_seconds_left, most=provider.max_check_gap_seconds
            ),
            jitter=jitter,
        )
        if next_check.in_lambda_seconds is None:
            job.wait_seconds = next_check.wait_seconds
            return status
        sleep(next_check.in_lambda_seconds)


def _honoured_retry_after(
    seconds: float | None, job_seconds_left: float, *, most: float | None = None
) -> float | None:
    """The upstream's Retry-After, at most ``RETRY_AFTER_MAX_SECONDS`` (then it is asked again) and
    ``most``, the longest gap the upstream lets a task go unlooked-at. One that reaches past the
    job's deadline cannot be honoured: the job fails now rather than wait its deadline out (the
    state machine retries the Poll a few times first)."""
    if seconds is None:
        return None
    if seconds > job_seconds_left:
        raise UpstreamRateLimited(
            f"the upstream asks to wait {seconds:.0f}s before the next look (Retry-After), past the "
            f"job's deadline in {max(job_seconds_left, 0):.0f}s (polling.timeout_seconds)",
            retry_after_seconds=seconds,
        )
    return min(seconds, RETRY_AFTER_MAX_SECONDS, most if most is not None else RETRY_AFTER_MAX_SECONDS)


# --- Fetch ----------------------------------------------------------------------------------------


def fetch(event: dict[str, Any], *, seconds_left: float | None = None) -> dict[str, Any]:
    """Land the result; or, when this invocation's time runs short after a whole part of rows,
    stop with the job FETCHING and a ``fetch_cursor`` that the next Fetch goes on from (the state
    machine calls it again). The slot and the upstream's result are kept until the last one.

    A result its upstream splits into pieces, too large for one Fetch to read alone, is SPLIT
    instead: ``job.fetch_plan`` names the branches the FetchBranches Map hands back to this function
    (``fetch_branch``), and once they all have landed, the job comes back SPLIT and its manifest is
    written (``write_split_manifest``)."""
    if "branch" in event:
        return fetch_branch(BranchInput.model_validate(event), seconds_left=seconds_left)
    spec, job = _running_job(event)
    if job.upstream_id is None:
        raise UpstreamProtocolError("nothing to fetch: the upstream gave no task id")  # pragma: no cover
    if job.status == "SPLIT":
        return write_split_manifest(spec, job, event.get("execution_arn"))
    cursor = job.fetch_cursor
    budget = FetchBudget.of(seconds_left, cursor)
    with _upstream_time(seconds_left), _provider_for(job.connection) as provider:
        with provider.fetch(job.upstream_id, job.provider_state, spec.output.format) as result:
            if cursor is None and (plan := _fetch_plan(provider, result)) is not None:
                _check_catalog(spec, job, result)  # before any branch starts
                return _split(spec, job, plan)  # no row read: the branches read them
            job.result = _land(spec, job, result, budget, execution_arn=event.get("execution_arn"))
        if job.result is None:
            return job.model_dump(mode="json")
        _release_quietly(provider, job)
    _give_back_slot(job)
    job.status = "DONE"
    job.fetch_cursor = None
    return job.model_dump(mode="json")


def _fetch_plan(provider: Provider[Any, Any], result: FetchedResult) -> FetchPlan | None:
    """The branches of a parallel fetch, for a result the upstream split into enough pieces."""
    if result.pieces is None or provider.connection.max_parallel_fetch < 2:
        return None
    settings = get_settings()
    plan = plan_fetch(
        result.pieces,
        max_parallel=provider.connection.max_parallel_fetch,
        min_bytes=settings.fetch_branch_min_bytes,
        most=fetch_branches_allowed(settings.history_event_limit),
    )
    logger.info(
        "result pieces counted",
        extra={"pieces": len(result.pieces), "branches": 0 if plan is None else len(plan.branches)},
    )
    return plan


def _split(spec: JobSpec, job: JobState, plan: FetchPlan) -> dict[str, Any]:
    """The job, SPLIT: the FetchBranches Map fetches ``plan``'s branches, at most ``max_parallel``
    at a time. No manifest stays meanwhile (a re-run of the job may have left one)."""
    _writer().split(job_prefix(spec.output, job.job_id, job.submitted_at))
    job.status, job.fetch_plan = "SPLIT", plan
    logger.info(
        "fetching in parallel",
        extra={"branches": len(plan.branches), "max_parallel": plan.max_parallel},
    )
    metrics.add_metric(name="ParallelFetches", unit="Count", value=1)
    return job.model_dump(mode="json")


def fetch_branch(step: BranchInput, *, seconds_left: float | None = None) -> dict[str, Any]:
    """One branch of a parallel fetch: land pieces ``first`` .. ``end - 1`` as the branch's own parts
    and record them beside the parts for the manifest; or stop FETCHING with the branch's cursor,
    as a lone Fetch does. A branch that lands after the job's cleanup was claimed (another branch
    failed, the job was cancelled) removes what it wrote: nothing stays of a failed job."""
    spec, job, branch = parse_job_spec(step.spec), step.job, step.branch
    log_job(job.job_id, connection=job.connection, upstream_id=job.upstream_id)
    logger.append_keys(branch=branch.index)
    if job.upstream_id is None:
        raise UpstreamProtocolError("nothing to fetch: the upstream gave no task id")  # pragma: no cover
    cursor = job.fetch_cursor
    budget = FetchBudget.of(seconds_left, cursor)
    with _upstream_time(seconds_left), _provider_for(job.connection) as provider:
        fetched = provider.fetch(
            job.upstream_id, job.provider_state, spec.output.format, pieces=branch.pieces
        )
        with fetched as result:
            written = _write_parts(spec, job, result, budget, branch=branch.index)
            partial = written is not None and result.partial()
    if written is None:
        return job.model_dump(mode="json")
    writer, prefix = _writer(), job_prefix(spec.output, job.job_id, job.submitted_at)
    landed = BranchLanded(
        branch=branch.index, objects=written.objects, columns=written.columns, partial=partial
    )
    writer.put_branch(prefix, landed)
    if cleanup_claimed(get_settings().control_table, step.execution_arn):
        removed = writer.discard_branch(prefix, branch.index)
        logger.warning(
            "the job is being cleaned up: removed what this branch landed", extra={"objects": removed}
        )
    else:
        logger.info("branch landed", extra={"parts": len(written.objects), "rows": written.row_count})
    job.status, job.fetch_cursor = "SPLIT", None
    return job.model_dump(mode="json")


def write_split_manifest(spec: JobSpec, job: JobState, execution_arn: str | None) -> dict[str, Any]:
    """After every branch of a parallel fetch has landed: the manifest, written once, listing the
    branches' parts in result order; then what is not a part goes, and the job is DONE."""
    plan = job.fetch_plan
    if plan is None:
        raise RuntimeError("a SPLIT job without its fetch plan")  # pragma: no cover - the machine's bug
    writer, prefix = _writer(), job_prefix(spec.output, job.job_id, job.submitted_at)
    found = writer.branches(prefix, len(plan.branches))
    missing = [branch.index for branch, landed in zip(plan.branches, found, strict=True) if landed is None]
    if missing:
        raise RuntimeError(
            f"{len(missing)} of {len(plan.branches)} fetch branches left no record of their parts "
            f"(first: branch {missing[0]}), though the Map reported them done"
        )
    branches = [landed for landed in found if landed is not None]
    columns = branches[0].columns
    if any(landed.columns != columns for landed in branches):
        raise UpstreamProtocolError(
            "the branches of a parallel fetch read different columns: the upstream's answer changed "
            "between reads"
        )
    objects = [entry for landed in branches for entry in landed.objects]
    written = WrittenResult(
        objects=objects,
        columns=columns,
        row_count=sum(entry.rows for entry in objects),
        byte_count=sum(entry.bytes for entry in objects),
    )
    job.result = _write_manifest(
        spec, job, written, partial=any(landed.partial for landed in branches), execution_arn=execution_arn
    )
    writer.finish_split(prefix, objects)
    with _provider_for(job.connection) as provider:
        _release_quietly(provider, job)
    _give_back_slot(job)
    job.status, job.fetch_plan = "DONE", None
    metrics.add_metric(name="FetchBranches", unit="Count", value=len(plan.branches))
    return job.model_dump(mode="json")


@dataclass
class FetchBudget:
    """When a Fetch stops early: after a whole part, once the invocation's time left is below twice
    the longest part so far (this Fetch's or, carried in the cursor, an earlier one's), and never
    below FETCH_RESERVE_SECONDS (the last steps: manifest, listing, release). A Fetch that goes on
    after another first reads again what that one landed: that time is no part's. No time given
    (``seconds_left`` None): never."""

    seconds_left: float | None
    longest_part: float = 0.0
    resumed: bool = False
    started: float = field(init=False)
    last_check: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.last_check = time.monotonic()

    @classmethod
    def of(cls, seconds_left: float | None, cursor: FetchCursor | None) -> FetchBudget:
        """The budget of a Fetch (or branch) going on from ``cursor``, if an earlier one stopped."""
        return cls(seconds_left, cursor.longest_part_seconds if cursor else 0.0, resumed=cursor is not None)

    def exhausted(self) -> bool:
        now = time.monotonic()
        if self.resumed:
            self.resumed = False  # the first part came after the skipping: not measured
        else:
            self.longest_part = max(self.longest_part, now - self.last_check)
        self.last_check = now
        if self.seconds_left is None:
            return False
        left = self.seconds_left - (now - self.started)
        return left < max(FETCH_RESERVE_SECONDS, 2 * self.longest_part)


def _release_quietly(provider: Provider[Any, Any], job: JobState) -> None:
    """Dropping the upstream's stored result is a courtesy: the job has succeeded either way."""
    if job.upstream_id is None:
        return
    try:
        provider.release(job.upstream_id, job.provider_state)
    except Exception as error:  # noqa: BLE001
        logger.warning(
            "could not release the upstream result",
            extra={"reason": type(error).__name__, "detail": str(error)},
        )


def _land(
    spec: JobSpec,
    job: JobState,
    result: FetchedResult,
    budget: FetchBudget | None = None,
    *,
    execution_arn: str | None = None,
) -> ResultPointer | None:
    """Stream the result into parts, then write the manifest last; None when the budget ran out
    first (``job.fetch_cursor`` then says where the next Fetch goes on). No budget: in one go."""
    if job.fetch_cursor is None:
        _check_catalog(spec, job, result)
    written = _write_parts(spec, job, result, budget)
    if written is None:
        return None
    return _write_manifest(spec, job, written, partial=result.partial(), execution_arn=execution_arn)


def _check_catalog(spec: JobSpec, job: JobState, result: FetchedResult) -> None:
    """A result its catalog table cannot take fails the job before any part is written."""
    table = _catalog_table(spec)
    if table is not None:
        table.check(glue_columns(spec.output.format, job.provider, list(result.columns)))


def _catalog_table(spec: JobSpec) -> Catalog | None:
    if spec.output.catalog is None:
        return None
    return Catalog(aws.glue(), spec.output.catalog, spec.output.format)


def _register(spec: JobSpec, job: JobState, written: WrittenResult, prefix: str) -> CatalogPartition | None:
    """After the manifest: the job's partition in its catalog table (query_relay.catalog)."""
    table = _catalog_table(spec)
    if table is None or spec.output.catalog is None:
        return None
    day = job_day(job.submitted_at)
    table.register(
        glue_columns(spec.output.format, job.provider, written.columns),
        location=f"s3://{_writer().bucket}/{prefix}",
        partition=[day, job.job_id],
    )
    catalog = spec.output.catalog
    return CatalogPartition(database=catalog.database, table=catalog.table, dt=day, job_id=job.job_id)


def _write_parts(
    spec: JobSpec,
    job: JobState,
    result: FetchedResult,
    budget: FetchBudget | None,
    *,
    branch: int | None = None,
) -> WrittenResult | None:
    """The result (or a branch's pieces of it) streamed into parts, going on after the parts
    ``job.fetch_cursor`` names; None when the budget ran out first: the job is then FETCHING with
    the cursor the next Fetch goes on from."""
    writer = _writer()
    prefix = job_prefix(spec.output, job.job_id, job.submitted_at)
    cursor = job.fetch_cursor
    landed = (
        None if cursor is None else Landed(objects=cursor.objects, rows=cursor.rows, upload=cursor.upload)
    )
    stop = None if budget is None else budget.exhausted
    written = writer.write(
        prefix, result, spec.output, landed=landed, stop=stop, branch=branch, provider=job.provider
    )
    if written.finished:
        return written
    job.status = "FETCHING"
    job.fetch_cursor = FetchCursor(
        objects=written.objects,
        rows=written.row_count,
        invocations=1 if cursor is None else cursor.invocations + 1,
        upload=written.upload,
        longest_part_seconds=0.0 if budget is None else budget.longest_part,
    )
    logger.info(
        "fetch stopped before its time ran out; the next one goes on",
        extra={
            "parts": len(written.objects),
            "rows": written.row_count,
            "bytes": written.byte_count,
            "native_chunks": None if written.upload is None else written.upload.parts,
        },
    )
    return None


def _write_manifest(
    spec: JobSpec, job: JobState, written: WrittenResult, *, partial: bool, execution_arn: str | None
) -> ResultPointer:
    """The manifest of the landed parts, written last. Should the job's cleanup have been claimed
    meanwhile (an API cancel), the result is removed again: a cancelled job leaves nothing."""
    writer = _writer()
    prefix = job_prefix(spec.output, job.job_id, job.submitted_at)
    manifest = Manifest(
        job_id=job.job_id,
        connection=job.connection,
        provider=job.provider,
        upstream_id=job.upstream_id,
        format=spec.output.format,
        compression=spec.output.compression,
        row_count=written.row_count,
        byte_count=written.byte_count,
        columns=written.columns,
        objects=written.objects,
        submitted_at=job.submitted_at,
        completed_at=_now(),
        polls=job.polls,
        is_partial=partial,
        arrow_schema=arrow_schema(job.provider, written.columns) if spec.output.format == "parquet" else None,
    )
    manifest_key = writer.write_manifest(prefix, manifest)
    registered = None
    if cleanup_claimed(get_settings().control_table, execution_arn):
        removed = writer.discard(prefix)
        logger.warning(
            "the job is being cleaned up: removed the result it landed", extra={"objects": removed}
        )
    else:
        registered = _register(spec, job, written, prefix)
    metrics.add_metric(name="RowsLanded", unit="Count", value=written.row_count)
    metrics.add_metric(name="BytesLanded", unit="Bytes", value=written.byte_count)
    logger.info(
        "result landed",
        extra={"manifest_key": manifest_key, "rows": written.row_count, "bytes": written.byte_count},
    )
    return ResultPointer(
        bucket=writer.bucket,
        manifest_key=manifest_key,
        row_count=written.row_count,
        byte_count=written.byte_count,
        catalog=registered,
    )


# --- Cleanup --------------------------------------------------------------------------------------


def cleanup(event: dict[str, Any]) -> dict[str, Any]:
    """The Cleanup state: claim the execution's cleanup (``query_relay.claims``), then turn the
    caught error into a clean failure (``undo``). When an API cancel claimed it first, that cancel
    cleans up and announces, and this execution is being stopped: nothing is undone here, and the
    failure, marked ``claimed: false`` so the machine sends no event, carries the cancel's error
    and cause."""
    step = CleanupInput.model_validate(event)
    failure = _failure_of(step)
    if step.execution_arn is not None:
        mine = Claim(MACHINE_CLAIMANT, failure.error, failure.cause)
        held = claim_cleanup(get_settings().control_table, step.execution_arn, mine)
        if held.claimant != mine.claimant:
            logger.info("another party cleans up after this execution", extra={"claimant": held.claimant})
            failure = failure.model_copy(update={"error": held.error, "cause": held.cause, "claimed": False})
            return failure.model_dump(mode="json")
    return undo(step).model_dump(mode="json")


def undo(step: CleanupInput) -> Failure:
    """Undo what a job that ended without its result started: cancel the upstream task where
    possible, drop partial output, give back its slot; the failure (name and cause) the Fail
    state and the "Query Failed" event carry. The caller has claimed the cleanup."""
    failure = _failure_of(step)
    if step.job is not None:
        failure.upstream_cancelled = _undo_job(step.job, _output_of(step.spec))
    if failure.job_id and _may_hold_slot(step.job, failure.connection):
        _release_slot_quietly(failure.job_id, failure.connection)
    logger.warning("job failed", extra=failure.model_dump(include={"error", "cause", "upstream_cancelled"}))
    metrics.add_metric(name="JobsFailed", unit="Count", value=1)
    return failure


def _undo_job(job: JobState, output: OutputSpec | None) -> bool:
    """Cancel the job's upstream task (True when the upstream acknowledged it) and remove the
    output it wrote, if any; a failure of either is logged, never raised."""
    cancelled = _cancel_upstream(job)
    if output is not None:
        _discard_output(output, job)
    return cancelled


def _output_of(raw_spec: Any) -> OutputSpec | None:
    """Where the job writes, if its spec can be read (it may be the very thing that failed)."""
    try:
        return parse_job_spec(raw_spec).output
    except Exception as error:  # noqa: BLE001 - the job has failed already; report, don't mask it
        logger.warning(
            "could not remove partial output: the job spec is not readable", extra={"detail": str(error)}
        )
        return None


def _failure_of(step: CleanupInput) -> Failure:
    """The failure an execution state names (its job, connection and caught error); nothing undone yet."""
    job = step.job
    spec_document: dict[str, Any] = step.spec if isinstance(step.spec, dict) else {}
    job_id = job.job_id if job else str(spec_document.get("job_id") or step.execution or "")
    connection = job.connection if job else str(spec_document.get("connection") or "")
    log_job(job_id, connection=connection)
    return Failure(
        job_id=job_id,
        connection=connection,
        provider=job.provider if job else _provider_name_of(connection),
        error=step.error.name,
        cause=_readable_cause(step.error.cause),
    )


def _may_hold_slot(job: JobState | None, connection_name: str) -> bool:
    """Whether the job may hold a slot: it says so, or a Submit may have taken one and died."""
    if job is not None and job.holds_slot:
        return True
    if not connection_name or get_settings().control_table is None:
        return False
    try:
        return load_connection(connection_name).max_concurrent is not None
    except Exception:  # noqa: BLE001 - the connection may be the very thing that failed
        return False


def _provider_name_of(connection_name: str) -> str:
    """The provider behind a connection, for failures that happened before Submit knew it."""
    if not connection_name:
        return ""
    try:
        return load_connection(connection_name).provider
    except Exception:  # noqa: BLE001 - the connection may be the very thing that failed
        return ""


def _readable_cause(raw: Any) -> str:
    """A Lambda error's Cause is a JSON document with a stack trace: keep only the message, cut
    to size (it travels in the state and the event: query_relay.limits)."""
    if not isinstance(raw, str):
        return ""
    try:
        document = json.loads(raw)
    except ValueError:
        return cut_message(raw)
    if isinstance(document, dict) and "errorMessage" in document:
        return cut_message(str(document["errorMessage"]))
    return cut_message(raw)


def _cancel_upstream(job: JobState) -> bool:
    if job.upstream_id is None or job.status == "DONE":
        return False
    try:
        with _provider_for(job.connection) as provider:
            if not provider.can_cancel:
                logger.info("upstream has no cancel call; leaving the task to expire")
                return False
            return provider.cancel(job.upstream_id, job.provider_state)
    except Exception as error:  # noqa: BLE001 - cleanup must finish whatever went wrong upstream
        logger.warning(
            "could not cancel the upstream task",
            extra={"reason": type(error).__name__, "detail": str(error)},
        )
        return False


def _discard_output(output: OutputSpec, job: JobState) -> None:
    try:
        removed = _writer().discard(job_prefix(output, job.job_id, job.submitted_at))
    except Exception as error:  # noqa: BLE001 - the job has failed already; report, don't mask it
        logger.warning("could not remove partial output", extra={"detail": str(error)})
        return
    if removed:
        logger.info("removed partial output", extra={"objects": removed})


# --- a landed result that could not be announced -------------------------------------------------


def report_unannounced(event: dict[str, Any]) -> dict[str, Any]:
    """The result landed (the manifest is the truth, and the job succeeds) but "Query Result Ready"
    could not be sent: leave an ERROR line and a ``ResultNotAnnounced`` metric an alarm can watch."""
    unannounced = UnannouncedResult.model_validate(event)
    log_job(unannounced.job_id)
    logger.error(
        "result landed but its Query Result Ready event was not sent",
        extra={
            "manifest_key": unannounced.manifest_key,
            "bucket": unannounced.bucket,
            "error": str(unannounced.error.get("Error") or "UnknownError"),
            "cause": _readable_cause(unannounced.error.get("Cause"))[:MAX_LOGGED_CAUSE],
        },
    )
    metrics.add_metric(name="ResultNotAnnounced", unit="Count", value=1)
    return {"announced": False}
