"""Request and response bodies of the HTTP API (docs/contracts.md, "HTTP API"); the OpenAPI document
is generated from these."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from aws_lambda_powertools.event_handler.openapi.params import Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from query_relay.limits import EXECUTION_NAME_MAX_CHARS, SCHEDULED_RUN_SUFFIX, SCHEDULER_NAME_MAX_CHARS
from query_relay.models import JobSpec, Manifest, StrictModel

ExecutionStatus = Literal["RUNNING", "SUCCEEDED", "FAILED", "ABORTED", "TIMED_OUT", "PENDING_REDRIVE"]
PageSize = Annotated[int, Query(ge=1, le=100, description="items per page")]
# A schedule's runs are jobs (executions) named "<schedule>-<scheduled time without ':'>": a name
# leaves room for that in an execution name, and fits Scheduler's own limit (query_relay.limits).
SCHEDULE_NAME_MAX_CHARS = min(SCHEDULER_NAME_MAX_CHARS, EXECUTION_NAME_MAX_CHARS - len(SCHEDULED_RUN_SUFFIX))
SCHEDULE_NAME_PATTERN = rf"^[A-Za-z0-9_-]{{1,{SCHEDULE_NAME_MAX_CHARS}}}$"


class ResponseModel(BaseModel):
    model_config = ConfigDict(frozen=True)


class FieldProblem(ResponseModel):
    field: str
    message: str


class ErrorBody(ResponseModel):
    error: str = Field(description="a stable name: InvalidRequest, InvalidJobSpec, JobNotFound, ...")
    message: str
    fields: list[FieldProblem] = Field(default_factory=list)


# --- jobs ----------------------------------------------------------------------------------------


class JobAccepted(ResponseModel):
    job_id: str
    status: ExecutionStatus
    links: dict[str, str] = Field(description="self: where to follow the job")


class Download(ResponseModel):
    key: str
    url: str
    bytes: int | None = None
    sha256: str | None = None


class Downloads(ResponseModel):
    """Presigned GET links; anyone holding one can read that object until ``expires_at``."""

    expires_at: datetime
    manifest: Download
    objects: list[Download]


class ParallelFetchProgress(ResponseModel):
    branches: int = Field(description="branches the result was split into (runs of its partitions or chunks)")
    branches_landed: int = Field(description="branches whose parts have landed so far")


class JobView(ResponseModel):
    job_id: str
    status: ExecutionStatus
    connection: str | None = None
    provider: str | None = None
    upstream_id: str | None = None
    started_at: datetime
    stopped_at: datetime | None = None
    duration_seconds: float | None = None
    polls: int = 0
    waiting_for_slot: bool = Field(
        default=False,
        description="RUNNING, but every max_concurrent slot of its connection is taken (nothing sent "
        "upstream yet)",
    )
    parallel_fetch: ParallelFetchProgress | None = Field(
        default=None,
        description="RUNNING, and its result is being fetched in parallel (a Snowflake or Databricks "
        "result split into branches): how far the branches are",
    )
    error: str | None = None
    cause: str | None = None
    manifest: Manifest | None = None
    downloads: Downloads | None = None
    links: dict[str, str]


class JobSummary(ResponseModel):
    job_id: str
    status: ExecutionStatus
    started_at: datetime
    stopped_at: datetime | None = None
    links: dict[str, str]


class JobPage(ResponseModel):
    jobs: list[JobSummary]
    next_token: str | None = Field(default=None, description="pass as ?next_token= for the next page")


# --- schedules -----------------------------------------------------------------------------------


class ScheduledJobSpec(JobSpec):
    """A job spec without ``job_id``: each run's job id is ``<schedule name>-<scheduled time>``."""

    @field_validator("job_id")
    @classmethod
    def _no_fixed_job_id(cls, job_id: str | None) -> None:
        if job_id is not None:
            raise ValueError("may not be set: each run's job id is '<schedule name>-<scheduled time>'")
        return job_id


class ScheduleRequest(StrictModel):
    name: str = Field(pattern=SCHEDULE_NAME_PATTERN)
    expression: str = Field(
        min_length=1, max_length=256, description="cron(min hour day month weekday year) or rate(N unit)"
    )
    timezone: str = Field(
        default="UTC", min_length=1, max_length=50, description="IANA name, e.g. Europe/Paris"
    )
    spec: ScheduledJobSpec = Field(description="the job each run starts, as job '<name>-<scheduled time>'")
    enabled: bool = True
    description: str = Field(default="", max_length=512)


class ScheduleView(ResponseModel):
    name: str
    expression: str
    timezone: str
    enabled: bool
    description: str = ""
    spec: JobSpec | None = None
    created_at: datetime | None = None
    links: dict[str, str]


class ScheduleSummary(ResponseModel):
    name: str
    enabled: bool
    created_at: datetime | None = None
    links: dict[str, str]


class SchedulePage(ResponseModel):
    schedules: list[ScheduleSummary]
    next_token: str | None = None


# A backfill starts at most this many runs (one StartExecution each, inside the API's 29 s).
MAX_BACKFILL_RUNS = 100


class BackfillRequest(StrictModel):
    """Run a schedule for past scheduled times: one (``scheduled_time``) or every one it had from
    ``from`` to ``to`` (both included)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    scheduled_time: AwareDatetime | None = Field(
        default=None, strict=False, description="one past run's time"
    )
    from_: AwareDatetime | None = Field(
        default=None, alias="from", strict=False, description="first time of a range"
    )
    to: AwareDatetime | None = Field(default=None, strict=False, description="last time of a range")

    @model_validator(mode="after")
    def _one_time_or_a_range(self) -> BackfillRequest:
        if (self.scheduled_time is None) == (self.from_ is None and self.to is None):
            raise ValueError('give "scheduled_time", or "from" and "to"')
        if self.scheduled_time is None and (self.from_ is None or self.to is None):
            raise ValueError('a range needs both "from" and "to"')
        if self.from_ is not None and self.to is not None and self.from_ > self.to:
            raise ValueError('"from" is after "to"')
        return self


class BackfillRun(ResponseModel):
    job_id: str
    scheduled_time: datetime
    started: bool = Field(
        description="false: this run exists already (it ran, or runs now) and was not started again"
    )
    links: dict[str, str]


class BackfillAccepted(ResponseModel):
    schedule: str
    runs: list[BackfillRun]
