"""The documents that travel through the state machine (small: pointers and counters only).

Execution state: ``{"spec": <job spec>, "execution": <name>, "started_at": ..., "job": JobState,
"error": {"Error", "Cause"}, "failure": Failure}``; each Lambda returns one of these parts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from query_relay.models import ProviderName

JobStatus = Literal["RUNNING", "FINISHED", "DONE"]


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


class Failure(BaseModel):
    """``$.failure``: what Cleanup made of an error; the detail of the "Query Failed" event."""

    job_id: str
    connection: str
    provider: str
    error: str
    cause: str
    upstream_cancelled: bool = False
