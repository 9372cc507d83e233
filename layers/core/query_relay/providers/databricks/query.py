"""The ``query`` object of a Databricks job: the body of ``POST /api/2.0/sql/statements`` a job may
set (docs/upstreams/databricks.md).

``disposition``, ``format``, ``wait_timeout`` and ``on_wait_timeout`` belong to the provider, so
they are refused as unknown fields. So are ``row_limit`` and ``byte_limit``: the rows they cut off
set ``manifest.truncated`` exactly as the 100 GiB cap does, so a job could not tell a limit it asked
for from a result Databricks cut short (``LIMIT`` in the statement cuts without that ambiguity).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from query_relay.models import QueryModel, QueryText


class Parameter(BaseModel):
    """One named marker ``:name`` of the statement: its value as text (null or absent for SQL
    NULL) and the SQL type Databricks casts it to (``STRING`` when absent; ``INT``,
    ``DECIMAL(10,2)``, ``DATE``, ``TIMESTAMP`` ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    value: str | None = None
    type: str | None = Field(default=None, min_length=1)


class DatabricksQuery(QueryModel):
    """One SQL statement, the SQL warehouse that runs it, and its default catalog and schema."""

    statement: QueryText
    warehouse_id: str = Field(min_length=1)
    catalog: str | None = Field(default=None, min_length=1)
    schema_: str | None = Field(default=None, min_length=1, alias="schema")
    parameters: list[Parameter] | None = None
    # Land a result Databricks marks ``truncated`` (past the 100 GiB of EXTERNAL_LINKS) instead of
    # failing the job with UpstreamPartialResult; the manifest then says ``"is_partial": true``.
    allow_partial_results: bool | None = None

    def request_body(self) -> dict[str, Any]:
        return self.model_dump(
            mode="json", exclude_none=True, by_alias=True, exclude={"allow_partial_results"}
        )

    @field_validator("parameters")
    @classmethod
    def _parameter_names_are_unique(cls, value: list[Parameter] | None) -> list[Parameter] | None:
        names = [parameter.name for parameter in value or []]
        if len(set(names)) != len(names):
            raise ValueError("name each marker once (a name is given twice)")
        return value
