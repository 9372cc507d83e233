"""The ``query`` object of a Looker job: which query to run (a saved query, a Look's, or an inline
one) and the query task's settings; and the result format the task is asked for."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from query_relay.exceptions import InvalidJobSpec
from query_relay.models import OutputFormat, QueryModel

ResultFormat = Literal[
    "inline_json", "json", "json_detail", "json_fe", "json_bi", "csv", "html", "md", "txt", "xlsx",
    "gsxml", "sql", "odc",
]  # fmt: skip
# Formats this provider turns into rows; every format can be stored untouched (output native).
TABULAR_FORMATS = frozenset({"json", "json_detail", "csv"})
# parquet: json_detail, whose fields' types type the columns (json's rows carry none).
_DEFAULT_RESULT_FORMATS: dict[str, str] = {
    "jsonl": "json",
    "csv": "csv",
    "native": "json",
    "parquet": "json_detail",
}


_INLINE_ONLY_FIELDS = (
    "fields", "pivots", "fill_fields", "filters", "filter_expression", "sorts", "column_limit",
    "total", "row_total", "subtotals", "vis_config", "filter_config", "visible_ui_sections",
    "dynamic_fields", "client_id", "query_timezone",
)  # fmt: skip
_TASK_FLAGS = (
    "cache", "apply_formatting", "apply_vis", "server_table_calcs", "rebuild_pdts",
    "generate_drill_links", "force_production", "cache_only",
)  # fmt: skip
_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"


class LookerQuery(QueryModel):
    """Which query to run and how Looker runs it.

    Exactly one of ``query_id`` (a saved query), ``look_id`` (a Look's query) or an inline query
    (``model`` and ``view``, plus Looker's WriteQuery fields) names the query. ``limit`` is the
    row limit: inside an inline query, or the task's override of a saved query's limit. The rest
    are the query task's settings (``POST /query_tasks`` URL parameters); ``result_format``
    defaults from the output format (jsonl -> json, csv -> csv, native -> json, parquet ->
    json_detail).
    """

    query_id: str | None = Field(default=None, pattern=_ID_PATTERN)
    look_id: str | None = Field(default=None, pattern=_ID_PATTERN)
    # inline query (Looker's WriteQuery)
    model: str | None = Field(default=None, min_length=1)
    view: str | None = Field(default=None, min_length=1)
    fields: list[str] | None = None
    pivots: list[str] | None = None
    fill_fields: list[str] | None = None
    filters: dict[str, str] | None = None
    filter_expression: str | None = None
    sorts: list[str] | None = None
    column_limit: int | None = Field(default=None, ge=1)
    total: bool | None = None
    row_total: str | None = None
    subtotals: list[str] | None = None
    vis_config: dict[str, Any] | None = None
    filter_config: dict[str, Any] | None = None
    visible_ui_sections: str | None = None
    # a JSON string as Looker stores it, or the list of custom fields it encodes
    dynamic_fields: str | list[dict[str, Any]] | None = None
    client_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]{22}$")
    query_timezone: str | None = None
    # row limit (-1: no limit)
    limit: int | None = Field(default=None, ge=-1)
    # query task settings
    result_format: ResultFormat | None = None
    cache: bool | None = None
    apply_formatting: bool | None = None
    apply_vis: bool | None = None
    server_table_calcs: bool | None = None
    rebuild_pdts: bool | None = None
    generate_drill_links: bool | None = None
    force_production: bool | None = None
    cache_only: bool | None = None
    path_prefix: str | None = None

    @field_validator("query_id", "look_id", mode="before")
    @classmethod
    def _ids_may_be_numbers(cls, value: object) -> object:
        # Looker ids are strings, but people write {"look_id": 7}.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("fields", "pivots", "fill_fields", "sorts", "subtotals")
    @classmethod
    def _no_blank_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not item.strip() for item in value):
            raise ValueError("holds a blank entry")
        return value

    @model_validator(mode="after")
    def _exactly_one_query(self) -> LookerQuery:
        problems: list[tuple[str, str]] = []
        saved = [name for name in ("query_id", "look_id") if getattr(self, name) is not None]
        inline = self.model is not None or self.view is not None
        if len(saved) == 2:
            problems.append(("look_id", "cannot be combined with query_id: give exactly one query"))
        if saved and inline:
            problems.append(("model", f"an inline query (model + view) cannot be combined with {saved[0]}"))
        if not saved and not inline:
            problems.append(("model", "required: give query_id, look_id, or an inline query (model + view)"))
        if inline and self.model is None:
            problems.append(("model", "required for an inline query"))
        if inline and self.view is None:
            problems.append(("view", "required for an inline query (the explore's name)"))
        if saved:
            problems += [
                (name, f"only applies to an inline query; {saved[0]} runs the query as saved in Looker")
                for name in _INLINE_ONLY_FIELDS
                if getattr(self, name) is not None
            ]
        if problems:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("looker_query", message), loc=(name,), input=None
                    )
                    for name, message in problems
                ],
            )
        return self

    @property
    def is_inline(self) -> bool:
        return self.model is not None

    def write_query(self) -> dict[str, Any]:
        """The body of ``POST /queries`` for an inline query."""
        body = self.model_dump(include={"model", "view", *_INLINE_ONLY_FIELDS}, exclude_none=True)
        if isinstance(self.dynamic_fields, list):
            body["dynamic_fields"] = json.dumps(self.dynamic_fields)
        if "column_limit" in body:
            body["column_limit"] = str(body["column_limit"])
        if self.limit is not None:
            body["limit"] = str(self.limit)
        return body

    def task_params(self) -> dict[str, str]:
        """The URL parameters of ``POST /query_tasks``."""
        params = {name: _flag(value) for name in _TASK_FLAGS if (value := getattr(self, name)) is not None}
        if self.path_prefix is not None:
            params["path_prefix"] = self.path_prefix
        if self.limit is not None and not self.is_inline:  # an inline query carries its own limit
            params["limit"] = str(self.limit)
        return params


def _flag(value: bool) -> str:
    return "true" if value else "false"


def result_format_for(query: LookerQuery, output_format: OutputFormat) -> str:
    """The task's result format: the query's own, else the one that suits the output format."""
    chosen = query.result_format or _DEFAULT_RESULT_FORMATS[output_format]
    check_formats(chosen, output_format)
    return chosen


def check_formats(result_format: str, output_format: OutputFormat) -> None:
    if output_format != "native" and result_format not in TABULAR_FORMATS:
        raise InvalidJobSpec(
            f"invalid job spec (looker query): query.result_format: {result_format!r} gives no rows to "
            f"write as {output_format}; use output.format native, or result_format json, json_detail or csv"
        )
