"""The ``query`` object of a Snowflake job: the body of ``POST /api/v2/statements`` a job may set
(docs/upstreams/snowflake.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from query_relay.models import QueryModel, QueryText

# The types a binding may name (Snowflake's "Using bind variables"): the value is sent as text and
# Snowflake reads it as that type.
BindingType = Literal[
    "FIXED", "REAL", "TEXT", "BOOLEAN", "DATE", "TIME", "TIMESTAMP_LTZ", "TIMESTAMP_NTZ", "TIMESTAMP_TZ",
    "BINARY", "ARRAY", "OBJECT", "VARIANT",
]  # fmt: skip
# Statement timeout, as Snowflake bounds it (seconds; 0 means the account's maximum).
MAX_TIMEOUT_SECONDS = 604_800


class Binding(BaseModel):
    """One ``?`` of the statement: its Snowflake type and its value as text (null for SQL NULL)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: BindingType
    value: str | None


class SnowflakeQuery(QueryModel):
    """One SQL statement and where it runs. ``bindings`` are keyed by the position of each ``?``
    ("1", "2", ...); ``parameters`` are Snowflake session parameters for the statement
    (``QUERY_TAG``, ``TIMEZONE``, ...). ``async`` and ``requestId`` belong to the provider."""

    statement: QueryText
    bindings: dict[str, Binding] | None = None
    database: str | None = Field(default=None, min_length=1)
    schema_: str | None = Field(default=None, min_length=1, alias="schema")
    warehouse: str | None = Field(default=None, min_length=1)
    role: str | None = Field(default=None, min_length=1)
    parameters: dict[str, str | int | float | bool] | None = None
    timeout: int | None = Field(default=None, ge=0, le=MAX_TIMEOUT_SECONDS)

    def request_body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)

    @field_validator("bindings")
    @classmethod
    def _bindings_are_numbered_from_one(cls, value: dict[str, Binding] | None) -> dict[str, Binding] | None:
        if value and sorted(value, key=lambda key: (len(key), key)) != [
            str(n) for n in range(1, len(value) + 1)
        ]:
            raise ValueError('are keyed by the position of each "?": "1", "2", ... without gaps')
        return value
