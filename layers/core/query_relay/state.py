"""The documents that travel through the state machine (small: pointers and counters only).

Execution state: ``{"spec": <job spec>, "execution": <name>, "execution_arn": <this execution>,
"job": JobState, "error": {"Error", "Cause"}, "failure": Failure}``; each Lambda returns one of these
parts. An execution that continues a job as a new one (``continue_as_new``) also carries
``"continued_from": <the previous execution's ARN>``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from query_relay.models import NativeUpload, ObjectEntry, ProviderName

# QUEUED: waiting for one of the connection's max_concurrent slots (nothing sent upstream yet).
# FETCHING: a Fetch stopped before its invocation's time ran out; the next one goes on from
# ``fetch_cursor``. SPLIT: the result is fetched in parallel, by the branches of ``fetch_plan``
# (a branch that stops early is FETCHING, with its own cursor).
JobStatus = Literal["QUEUED", "RUNNING", "FINISHED", "FETCHING", "SPLIT", "DONE"]


class FetchCursor(BaseModel):
    """Where a Fetch that stopped early left the result: the parts it landed (whole objects, in
    order) and the rows they hold, or, for a native object, its unfinished multipart ``upload``.
    The next Fetch reads the answer again from its start, skips those rows (or checks those bytes),
    and goes on; the objects are the bytes one Fetch would have written. ``longest_part_seconds``
    carries how long a part took, for the next Fetch's budget (``workflow.FetchBudget``)."""

    model_config = ConfigDict(extra="forbid")

    objects: list[ObjectEntry]
    rows: int
    invocations: int = 1
    upload: NativeUpload | None = None
    longest_part_seconds: float = 0.0


class FetchBranch(BaseModel):
    """One branch of a parallel fetch: the upstream's pieces ``first`` .. ``end - 1`` (partitions,
    chunks), landed as parts ``part-<index>-<n>``."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0)
    first: int = Field(ge=0)
    end: int = Field(ge=1)

    @property
    def pieces(self) -> range:
        return range(self.first, self.end)


class FetchPlan(BaseModel):
    """How a result split by its upstream is fetched: ``branches`` (the Map state's items), at
    most ``max_parallel`` at a time (its MaxConcurrencyPath)."""

    model_config = ConfigDict(extra="forbid")

    branches: list[FetchBranch]
    max_parallel: int = Field(ge=1)


class CatalogPartition(BaseModel):
    """Where a result was registered (output.catalog): its table and its partition's values."""

    model_config = ConfigDict(extra="forbid")

    database: str
    table: str
    dt: str
    job_id: str


class ResultPointer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bucket: str
    manifest_key: str
    row_count: int
    byte_count: int
    # Always present (null when the job registers nothing): the machine's event and output read it.
    catalog: CatalogPartition | None = None


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
    fetch_cursor: FetchCursor | None = None
    fetch_plan: FetchPlan | None = None
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


# --- what each task state hands its Lambda -------------------------------------------------------


class CaughtError(BaseModel):
    """``$.error``: what a Catch caught, ``{"Error", "Cause"}`` (a Lambda's Cause is a JSON
    document with the message and a stack trace)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    error: Any = Field(default=None, alias="Error")
    cause: Any = Field(default=None, alias="Cause")

    @property
    def name(self) -> str:
        return str(self.error or "UnknownError")


class StepInput(BaseModel):
    """The execution state a task state hands its Lambda (see the module's doc). ``spec`` is the
    job spec as it was given: each step parses it, so that a bad one fails with named fields."""

    model_config = ConfigDict(extra="ignore")

    spec: Any = None
    execution: str = ""
    execution_arn: str | None = None
    job: JobState | None = None


class SubmitInput(StepInput):
    """Submit's: ``job`` is null on a first Submit, the QUEUED job after a WaitForSlot, and
    ``retry_count`` (``$$.State.RetryCount``) is 0 unless the state machine retries the Submit."""

    execution: str
    retry_count: int | None = None

    @property
    def queued(self) -> JobState | None:
        return self.job if self.job is not None and self.job.status == "QUEUED" else None


class JobInput(StepInput):
    """Poll's and Fetch's: the job Submit (or the last Poll) left."""

    job: JobState


class BranchInput(JobInput):
    """A parallel fetch branch's (an item of the FetchBranches Map): the job, and its branch."""

    branch: FetchBranch


class CleanupInput(StepInput):
    """Cleanup's: the caught error, and the job state if the job got as far as Submit. Whatever
    the error was, Cleanup must be able to read this: a job that is not an object is no job."""

    error: CaughtError = Field(default_factory=CaughtError)

    @field_validator("job", mode="before")
    @classmethod
    def _only_an_object_is_a_job(cls, value: Any) -> Any:
        return value if isinstance(value, dict | JobState) else None

    @field_validator("error", mode="before")
    @classmethod
    def _only_an_object_is_an_error(cls, value: Any) -> Any:
        return value if isinstance(value, dict | CaughtError) else {}
