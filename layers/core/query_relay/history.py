"""Long jobs and Step Functions' history limit: continue as a new execution before running out.

A Standard execution holds at most 25,000 history events. One Wait -> Poll -> Choice round writes
nine (WaitStateEntered/Exited; TaskStateEntered, TaskScheduled, TaskStarted, TaskSucceeded,
TaskStateExited; ChoiceStateEntered/Exited), so a job polled every minute for a week would need
90,000. Before a round would take the execution past its budget, Poll (or Submit while the job
waits for a slot) sets ``continue_as_new``: the machine starts a new execution of itself with the
job's state (``ContinueAsNew``) and the old one ends in SUCCEEDED with the output
``{"job_id", "status": "CONTINUED", "continued_as": <new execution ARN>}``.

The budget keeps a tenth of the limit free for retries (each retried task adds three events),
plus what finishing needs (Fetch with its retries, or a parallel fetch's Map of at most
``fetch_branches_allowed`` branches; the event, the end states, or Cleanup).

Continuations are named ``<job_id>.<n>``: '.' is allowed in execution names but never in job ids,
so no job can take a continuation's name. Names are 80 characters at most: a job id too long for
the suffix is cut and a hash of the whole id keeps the name unique.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from query_relay.parallel import MAX_FETCH_BRANCHES

if TYPE_CHECKING:
    from mypy_boto3_stepfunctions import SFNClient
    from mypy_boto3_stepfunctions.type_defs import DescribeExecutionOutputTypeDef

HISTORY_EVENT_LIMIT = 25_000  # Step Functions Standard
EVENTS_BEFORE_FIRST_WAIT = 12  # started, Route, Prepare, Submit (5), AfterSubmit
EVENTS_PER_ROUND = 9  # Wait (2) + Poll task (5) + Choice (2)
EVENTS_TO_FINISH = 100  # Fetch and its retries, PublishReady, end states; or Cleanup and its event
# A parallel fetch's Map writes about this many events a branch (MapIterationStarted/Succeeded,
# the branch's Fetch task (5), its Choice (2), the Pass that ends it (2)); its branches may take
# this share of the limit (all of MAX_FETCH_BRANCHES under the default limit).
EVENTS_PER_FETCH_BRANCH = 11
FETCH_BRANCH_SHARE = 0.05
RETRY_SHARE = 0.1  # of the limit, left for retried tasks (three events per retry)
CONTINUED = "CONTINUED"
MAX_EXECUTION_NAME = 80
MAX_CHAIN = 10_000  # a guard against a loop in a broken chain, far past any real job


def fetch_branches_allowed(limit: int = HISTORY_EVENT_LIMIT) -> int:
    """The most branches a parallel fetch may have in an execution of this history limit."""
    share = int(limit * FETCH_BRANCH_SHARE) // EVENTS_PER_FETCH_BRANCH
    return max(2, min(MAX_FETCH_BRANCHES, share))


def events_to_finish(limit: int = HISTORY_EVENT_LIMIT) -> int:
    """What finishing a job may write: Fetch, or the largest parallel fetch, and the end."""
    return EVENTS_TO_FINISH + fetch_branches_allowed(limit) * EVENTS_PER_FETCH_BRANCH


def should_continue(rounds_done: int, limit: int = HISTORY_EVENT_LIMIT) -> bool:
    """Whether one more round after ``rounds_done`` would leave too little of this execution's budget."""
    budget = limit * (1 - RETRY_SHARE) - EVENTS_BEFORE_FIRST_WAIT - events_to_finish(limit)
    return (rounds_done + 1) * EVENTS_PER_ROUND > budget


def rounds_per_execution(limit: int = HISTORY_EVENT_LIMIT) -> int:
    """How many Wait rounds one execution runs before the job continues in the next."""
    rounds = 0
    while not should_continue(rounds, limit):
        rounds += 1
    return rounds


def continuation_name(job_id: str, number: int) -> str:
    """The name of the job's ``number``-th continuation (1, 2, ...)."""
    name = f"{job_id}.{number}"
    if len(name) <= MAX_EXECUTION_NAME:
        return name
    suffix = f".{hashlib.sha256(job_id.encode()).hexdigest()[:8]}.{number}"
    return job_id[: MAX_EXECUTION_NAME - len(suffix)] + suffix


def is_continuation(execution_name: str) -> bool:
    return "." in execution_name


def continued_as(described: DescribeExecutionOutputTypeDef) -> str | None:
    """The ARN of the execution this one handed its job to, if it ended by continuing."""
    if described["status"] != "SUCCEEDED":
        return None
    output: Any = json.loads(described.get("output") or "null")
    if isinstance(output, dict) and output.get("status") == CONTINUED:
        arn = output.get("continued_as")
        return arn if isinstance(arn, str) else None
    return None


def latest_execution(
    client: SFNClient, described: DescribeExecutionOutputTypeDef
) -> DescribeExecutionOutputTypeDef:
    """The execution that carries the job now: ``described`` itself, or its last continuation."""
    for _ in range(MAX_CHAIN):
        arn = continued_as(described)
        if arn is None:
            return described
        described = client.describe_execution(executionArn=arn)
    raise RuntimeError(f"more than {MAX_CHAIN} continuations from {described['executionArn']}")


def still_running(client: SFNClient, execution_arn: str) -> bool:
    """Whether the job of this execution still runs (in it, or in a continuation of it)."""
    try:
        described = client.describe_execution(executionArn=execution_arn)
    except client.exceptions.ExecutionDoesNotExist:
        return False
    return latest_execution(client, described)["status"] == "RUNNING"
