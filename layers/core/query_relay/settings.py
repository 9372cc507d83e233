"""Runtime settings, parsed once from the environment. A missing variable fails at start-up with
its name rather than deep inside a request."""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    results_bucket: str = Field(min_length=3)
    connection_secret_prefix: str = "query-relay/connections/"  # noqa: S105 - a name prefix, not a secret
    connection_cache_seconds: int = Field(default=300, ge=0)
    # Rows are rolled into a new part once a part holds this many (uncompressed) bytes.
    part_max_bytes: int = Field(default=128 * 1024 * 1024, ge=1024)
    # A result its upstream splits (partitions, chunks) is fetched in parallel branches of at least
    # this many bytes (query_relay.parallel); a smaller one is read by one Fetch.
    fetch_branch_min_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    # Longest a Poll may hold one upstream long-poll (must stay well under the Lambda timeout).
    long_poll_max_seconds: float = Field(default=30.0, ge=0, le=600)
    # How long Submit waits for the upstream to finish inline (the fast path).
    submit_wait_seconds: float = Field(default=2.0, ge=0, le=600)
    # Events one execution may hold before the job continues as a new one (query_relay.history).
    history_event_limit: int = Field(default=25_000, ge=200, le=25_000)
    # The DynamoDB table of slots and started submissions (query_relay.concurrency, .submissions).
    control_table: str | None = None
    # The Glue database a job's output.catalog may register in (the stack's CatalogDatabase).
    catalog_database: str | None = None

    @field_validator("catalog_database")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None


ENVIRONMENT = {
    "results_bucket": "RESULTS_BUCKET",
    "connection_secret_prefix": "CONNECTION_SECRET_PREFIX",
    "connection_cache_seconds": "CONNECTION_CACHE_SECONDS",
    "part_max_bytes": "PART_MAX_BYTES",
    "fetch_branch_min_bytes": "FETCH_BRANCH_MIN_BYTES",
    "long_poll_max_seconds": "LONG_POLL_MAX_SECONDS",
    "submit_wait_seconds": "SUBMIT_WAIT_SECONDS",
    "history_event_limit": "HISTORY_EVENT_LIMIT",
    "control_table": "CONTROL_TABLE",
    "catalog_database": "CATALOG_DATABASE",
}


class SettingsError(RuntimeError):
    pass


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    values = {
        field: os.environ[variable] for field, variable in ENVIRONMENT.items() if variable in os.environ
    }
    try:
        return Settings.model_validate(values)
    except ValidationError as error:
        problems = ", ".join(
            f"{ENVIRONMENT.get(str(problem['loc'][0]), str(problem['loc'][0]))}: {problem['msg']}"
            for problem in error.errors(include_url=False, include_input=False)
        )
        raise SettingsError(f"invalid environment: {problems}") from None
