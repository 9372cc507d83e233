"""The ``query`` object of an ES|QL job: the request body a job may set."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from query_relay.models import QueryModel, QueryText

Scalar = str | int | float | bool | None


class EsqlQuery(QueryModel):
    """The ES|QL request body a job may set. The async fields (``wait_for_completion_timeout``,
    ``keep_alive``, ``keep_on_completion``) and ``columnar`` belong to the provider, so they are
    rejected here as unknown fields."""

    query: QueryText
    # Positional ``[v, ...]`` or named ``[{"name": v}, ...]`` (a named value may be an object such
    # as ``{"identifier": "field"}``); never both in one list.
    params: list[Scalar | dict[str, Scalar | dict[str, Any]]] | None = None
    filter: dict[str, Any] | None = None
    locale: str | None = None
    time_zone: str | None = None
    include_ccs_metadata: bool | None = None
    # Land an answer ES flags ``is_partial`` (shard or cluster failures) instead of failing the job
    # with UpstreamPartialResult; sent as the URL parameter of the same name. The manifest then
    # says ``"is_partial": true``.
    allow_partial_results: bool | None = None

    def request_body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, exclude={"allow_partial_results"})

    @field_validator("params")
    @classmethod
    def _params_are_all_positional_or_all_named(
        cls, value: list[Scalar | dict[str, Any]] | None
    ) -> list[Scalar | dict[str, Any]] | None:
        if not value:
            return value
        named = [isinstance(param, dict) for param in value]
        if any(named) and not all(named):
            raise ValueError("mixes positional values and named {name: value} parameters")
        for param in value:
            if isinstance(param, dict) and len(param) != 1:
                raise ValueError("a named parameter is an object with exactly one key: {name: value}")
        return value
