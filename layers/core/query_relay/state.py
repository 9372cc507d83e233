"""The documents that travel through the state machine (small: pointers and counters only).

Execution state: ``{"spec": <job spec>, "execution": <name>, "execution_arn": <this execution>,
"job": JobState, "error": {"Error", "Cause"}, "failure": Failure}``; each Lambda returns one of these
parts. An execution that continues a job as a new one (``continue_as_new``) also carries
``"continued_from": <the previous execution's ARN>``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from query_relay.models import ProviderName

# QUEUED: waiting for one of the connection's max_concurrent slots (nothing sent upstream yet).
JobStatus = Literal["QUEUED", "RUNNING", "FINISHED", "DONE"]


class ResultPointer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bucket: str
    manifest_key: str
    row_count: int
    byte_count: int


class JobState(BaseModel):
    """``$.job``: written by Submit, updated by Poll and Fetch."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    connection: str
    provider: ProviderName
    upstream_id: str | None
    status: JobStatus
    polls: int = 0
    wait_seconds: int = 1
    submitted_at: datetime
    deadline: datetime
    provider_state: dict[str, Any] = Field(default_factory=dict)
    result: ResultPointer | None = None
    # Holds one of the connection's max_concurrent slots (query_relay.concurrency).
    holds_slot: bool = False
    slot_checks: int = 0
    # Wait rounds run in this execution; past the history budget the job continues as a new
    # execution named ``next_execution`` (query_relay.history).
    rounds: int = 0
    continuations: int = 0
    continue_as_new: bool = False
    next_execution: str | None = None


class Failure(BaseModel):
    """``$.failure``: what Cleanup made of an error; the detail of the "Query Failed" event."""

    job_id: str
    connection: str
    provider: str
    error: str
    cause: str
    upstream_cancelled: bool = False
    # False when another party claimed the execution's cleanup (query_relay.claims): it announces.
    claimed: bool = True


class UnannouncedResult(BaseModel):
    """What ReportNotAnnounced hands its Lambda: a landed result whose "Query Result Ready" event
    could not be sent, and the error PublishReady caught (``{"Error", "Cause"}``)."""

    job_id: str
    bucket: str
    manifest_key: str
    error: dict[str, Any] = Field(default_factory=dict)
