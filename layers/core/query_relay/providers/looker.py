"""Looker API 4.0 query tasks (see docs/upstreams/looker.md).

Submit logs in with the connection's client credentials (the token is cached per host, client
and secret for as long as the process lives, so warm Lambdas skip the login), resolves the query
(a saved query id, a Look's query, or an inline query saved first with ``POST /queries``) and
starts a query task with ``POST /query_tasks``. Looker never answers a result inline: within the
submit's wait Submit only watches the task's status. Poll reads ``GET /query_tasks/{id}`` once
(Looker cannot long-poll), Fetch streams ``GET /query_tasks/{id}/results``, Cancel kills the
running query with ``DELETE /running_queries/{id}``.

Results are never loaded whole: JSON is parsed event by event (ijson's push interface) and CSV
line by line, as the bytes arrive. ``json`` rows keep Looker's ``view.field`` keys; ``json_detail``
rows are unwrapped from their ``{"value": ...}`` cells; ``csv`` rows keep Looker's header.

Choices where Looker's documentation is silent:
- A task whose status is ``killed`` fails the job with UpstreamQueryFailed ("killed in Looker").
- ``expired`` has been seen just before a task completed: the first one is remembered in the
  provider state and only a second consecutive one fails the job (UpstreamTaskExpired).
- A 401 is answered by one new login and one retry of the call; a second 401 is
  UpstreamAuthFailed. A rate-limited Poll waits ``RATE_LIMIT_DEFAULT_SECONDS`` when Looker sends
  no Retry-After (it documents none).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import httpx
import ijson
import ijson.common
import ijson.utils
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from query_relay.exceptions import (
    InvalidConnection,
    InvalidJobSpec,
    QueryRelayError,
    UpstreamAuthFailed,
    UpstreamProtocolError,
    UpstreamQueryFailed,
    UpstreamRateLimited,
    UpstreamTaskExpired,
    UpstreamUnavailable,
)
from query_relay.http import UpstreamClient, read_error_body, translate_transport_errors
from query_relay.json_stream import ENDS, IJSON, STARTS
from query_relay.models import ClientCredentialsAuth, Column, Connection, OutputFormat, StrictModel
from query_relay.observability import logger
from query_relay.providers.base import (
    FetchedResult,
    NativeResult,
    PollStatus,
    Provider,
    Submission,
    SubmitOptions,
    TabularResult,
)

API_PATH = "/api/4.0"
TASK_SOURCE = "query-relay"
# Renew a token this long before Looker says it expires (capped at half its lifetime).
TOKEN_RENEW_MARGIN_SECONDS = 300.0
DEFAULT_TOKEN_SECONDS = 3600.0
# Looker documents no Retry-After; a rate-limited Poll comes back after this long.
RATE_LIMIT_DEFAULT_SECONDS = 10.0
# Inside the submit's wait, the task's status is read after these pauses (then every second).
SUBMIT_STATUS_PAUSES = (0.1, 0.2, 0.4, 0.8)
SUBMIT_STATUS_PAUSE_MAX = 1.0
# Results that answer 202/204 (not ready) are asked for again after these pauses, then Fetch
# fails UpstreamUnavailable so that the state machine retries it later.
RESULTS_NOT_READY_PAUSES = (0.5, 1.0, 2.0)
# The query's field names travel in the execution state only when they are this small.
STATE_FIELDS_MAX = 64
STATE_FIELDS_MAX_CHARS = 4000
# Step Functions keeps a failure's cause small; an upstream reason longer than this is cut.
REASON_LIMIT = 2000

ResultFormat = Literal[
    "inline_json", "json", "json_detail", "json_fe", "json_bi", "csv", "html", "md", "txt", "xlsx",
    "gsxml", "sql", "odc",
]  # fmt: skip
# Formats this provider turns into rows; every format can be stored untouched (output native).
TABULAR_FORMATS = frozenset({"json", "json_detail", "csv"})
_EXTENSIONS = {
    "inline_json": "json", "json": "json", "json_detail": "json", "json_fe": "json",
    "json_bi": "json", "csv": "csv", "html": "html", "md": "md", "txt": "txt", "xlsx": "xlsx",
    "gsxml": "xml", "sql": "sql", "odc": "odc",
}  # fmt: skip
# Where the rows of a JSON format sit, for reading them or counting them.
_JSON_ROW_PREFIXES = {"json": "item", "json_detail": "data.item", "json_bi": "rows.item"}
_DELIMITERS = {"csv": ",", "txt": "\t"}
_DEFAULT_RESULT_FORMATS: dict[str, str] = {"jsonl": "json", "csv": "csv", "native": "json"}
_JSON_HEADERS = {"Accept": "application/json"}


# --- the job spec's query ------------------------------------------------------------------------

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


class LookerQuery(StrictModel):
    """Which query to run and how Looker runs it.

    Exactly one of ``query_id`` (a saved query), ``look_id`` (a Look's query) or an inline query
    (``model`` and ``view``, plus Looker's WriteQuery fields) names the query. ``limit`` is the
    row limit: inside an inline query, or the task's override of a saved query's limit. The rest
    are the query task's settings (``POST /query_tasks`` URL parameters); ``result_format``
    defaults from the output format (jsonl -> json, csv -> csv, native -> json).
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
    _check_formats(chosen, output_format)
    return chosen


def _check_formats(result_format: str, output_format: OutputFormat) -> None:
    if output_format != "native" and result_format not in TABULAR_FORMATS:
        raise InvalidJobSpec(
            f"invalid job spec (looker query): query.result_format: {result_format!r} gives no rows to "
            f"write as {output_format}; use output.format native, or result_format json, json_detail or csv"
        )


# --- access tokens -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    value: str = field(repr=False)
    renew_at: float  # time.monotonic()


class _TokenCache:
    """Access tokens by (host, client id, digest of the secret), shared by every provider in the
    process: a warm Lambda logs in once an hour, not once a call. The secret's digest is part of
    the key so that a token is never handed to a caller that presents a different secret."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str, str], _Token] = {}

    def get(self, key: tuple[str, str, str]) -> str | None:
        with self._lock:
            token = self._tokens.get(key)
        if token is None or time.monotonic() >= token.renew_at:
            return None
        return token.value

    def put(self, key: tuple[str, str, str], value: str, expires_in: float) -> None:
        margin = min(TOKEN_RENEW_MARGIN_SECONDS, expires_in / 2)
        with self._lock:
            self._tokens[key] = _Token(value, time.monotonic() + expires_in - margin)

    def drop(self, key: tuple[str, str, str], value: str) -> None:
        """Forget a refused token, unless another thread already replaced it."""
        with self._lock:
            token = self._tokens.get(key)
            if token is not None and token.value == value:
                del self._tokens[key]

    def cache_clear(self) -> None:
        """Forget every token (named like functools' caches: a new container, or the local stack
        starting afresh, empties every ``cache_clear`` of the library)."""
        with self._lock:
            self._tokens.clear()


TOKENS = _TokenCache()


# --- reading result bodies as they arrive --------------------------------------------------------


class _JsonReader:
    """Follows one JSON document fed chunk by chunk (ijson's push interface) and hands out the
    values found at a few paths: the rows (``item``, ``data.item`` ...), and for json_detail the
    ``errors`` and the ``fields`` metadata. Rows are built only while ``build_rows`` is true;
    otherwise they are only counted."""

    def __init__(self, row_prefix: str, *, where: str, build_rows: bool) -> None:
        self._row_prefix = row_prefix
        self._where = where
        self.build_rows = build_rows
        self._events: Any = ijson.utils.sendable_list()
        self._parser: Any = IJSON.parse_coro(self._events, use_float=True)
        self._builder: ijson.common.ObjectBuilder | None = None
        self._building: str | None = None  # the prefix of the value being built or skipped
        self._depth = 0
        self.top_event: str | None = None
        self.row_count = 0
        self.errors: list[Any] = []
        self.fields_metadata: Any = None

    def feed(self, chunk: bytes) -> list[Any]:
        try:
            self._parser.send(chunk)
        except ijson.JSONError as error:
            raise self._protocol_error(f"the result is not valid JSON ({_first_line(error)})") from None
        return self._consume()

    def finish(self) -> list[Any]:
        try:
            self._parser.close()
        except ijson.JSONError as error:
            raise self._protocol_error(f"the result is not valid JSON ({_first_line(error)})") from None
        return self._consume()

    def _consume(self) -> list[Any]:
        rows: list[Any] = []
        for prefix, event, value in self._events:
            if self.top_event is None:
                self.top_event = event
            if self._building is not None:
                self._continue_value(event, value, rows)
            elif prefix in (self._row_prefix, "errors.item", "fields") and event not in (*ENDS, "map_key"):
                self._start_value(prefix, event, value, rows)
        self._events.clear()
        return rows

    def _start_value(self, prefix: str, event: str, value: Any, rows: list[Any]) -> None:
        build = prefix != self._row_prefix or self.build_rows
        if event not in STARTS:  # a scalar: complete at once
            self._done(prefix, value, rows)
            return
        self._building, self._depth = prefix, 1
        self._builder = ijson.common.ObjectBuilder() if build else None
        if self._builder is not None:
            self._builder.event(event, value)

    def _continue_value(self, event: str, value: Any, rows: list[Any]) -> None:
        if self._builder is not None:
            self._builder.event(event, value)
        if event in STARTS:
            self._depth += 1
        elif event in ENDS:
            self._depth -= 1
        if self._depth == 0:
            prefix, builder = self._building, self._builder
            self._building = self._builder = None
            assert prefix is not None
            self._done(prefix, None if builder is None else builder.value, rows)

    def _done(self, prefix: str, value: Any, rows: list[Any]) -> None:
        if prefix == self._row_prefix:
            self.row_count += 1
            if self.build_rows:
                rows.append(value)
        elif prefix == "errors.item":
            self.errors.append(value)
        else:
            self.fields_metadata = value

    def _protocol_error(self, problem: str) -> UpstreamProtocolError:
        return UpstreamProtocolError(f"{self._where}: {problem}")


def _text_lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """UTF-8 text lines (ends kept, BOM dropped) from byte chunks, for the csv module. Only
    '\\n' splits: the csv reader itself joins the lines of a quoted value."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    pending = ""
    for chunk in chunks:
        pending += decoder.decode(chunk)
        *lines, pending = pending.split("\n")
        for line in lines:
            yield line + "\n"
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending


def _value_type(value: Any) -> str:
    """A column type guessed from a JSON value, in Looker's words where they exist."""
    if isinstance(value, bool):
        return "yesno"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict | list):
        return "object"
    return "unknown"


def _metadata_types(metadata: Any) -> dict[str, str]:
    """name -> Looker type from json_detail's ``fields`` ({"dimensions": [...], "measures": ...})."""
    types: dict[str, str] = {}
    if isinstance(metadata, dict):
        for group in metadata.values():
            for item in group if isinstance(group, list) else []:
                if isinstance(item, dict) and isinstance(item.get("name"), str):
                    types[item["name"]] = str(item.get("type") or "unknown")
    return types


def _cell_value(cell: Any) -> Any:
    """json_detail wraps each value as {"value": v, "rendered"?: ..., "links"?: ...}."""
    return cell.get("value") if isinstance(cell, dict) and "value" in cell else cell


def _query_errors(errors: list[Any]) -> list[str]:
    """The messages of json_detail's ``errors`` that are errors (Looker also lists warnings)."""
    messages = []
    for error in errors:
        if isinstance(error, dict):
            if str(error.get("level") or "error").lower() in ("warning", "info"):
                continue
            text = " ".join(
                str(part) for part in (error.get("message"), error.get("message_details")) if part
            )
            messages.append(text or json.dumps(error)[:200])
        elif error:
            messages.append(str(error))
    return messages


class _JsonResult:
    """A JSON result on the wire: read as far as the first row (to know the columns), then the
    rest flows out as rows or as the untouched bytes."""

    def __init__(
        self,
        chunks: Iterator[bytes],
        result_format: str,
        *,
        build_rows: bool,
        where: str,
        connection_name: str,
        operation: str,
    ) -> None:
        self._chunks = chunks
        self._format = result_format
        self.reader = _JsonReader(_JSON_ROW_PREFIXES[result_format], where=where, build_rows=True)
        self._keep_all_rows = build_rows
        self._where = where
        self._connection_name = connection_name
        self._operation = operation
        self._head_rows: list[Any] = []
        self._head_chunks: list[bytes] = []
        self._ended = False

    def read_head(self) -> None:
        """Read until the first row is known or the document ends (the head is small)."""
        with translate_transport_errors(self._connection_name, self._operation):
            while not self._ended and not self._head_rows:
                chunk = next(self._chunks, None)
                if chunk is None:
                    self._ended = True
                    self._head_rows += self.reader.finish()
                else:
                    self._head_chunks.append(chunk)
                    self._head_rows += self.reader.feed(chunk)
                self._check_errors()
        if not self._keep_all_rows:
            self.reader.build_rows = False  # the first row is enough to name the columns

    def columns(self, known_fields: list[str] | None) -> list[Column]:
        first = self._head_rows[0] if self._head_rows else None
        types = _metadata_types(self.reader.fields_metadata)
        if isinstance(first, dict):
            return [
                Column(name=name, type=types.get(name) or _value_type(_cell_value(value)))
                for name, value in first.items()
            ]
        names = known_fields or list(types)
        return [Column(name=name, type=types.get(name, "unknown")) for name in names]

    def rows(self, names: list[str]) -> Iterator[list[Any]]:
        with translate_transport_errors(self._connection_name, self._operation):
            head, self._head_rows, self._head_chunks = self._head_rows, [], []
            for row in head:
                yield self._values(row, names)
            if not self._ended:
                for chunk in self._chunks:
                    for row in self.reader.feed(chunk):
                        yield self._values(row, names)
                    self._check_errors()
                for row in self.reader.finish():
                    yield self._values(row, names)
        self._check_end()

    def native_chunks(self, result: NativeResult) -> Iterator[bytes]:
        with translate_transport_errors(self._connection_name, self._operation):
            head, self._head_chunks = self._head_chunks, []
            result.row_count = self.reader.row_count
            yield from head
            if not self._ended:
                for chunk in self._chunks:
                    self.reader.feed(chunk)
                    result.row_count = self.reader.row_count
                    yield chunk
                self.reader.finish()
        self._check_end()
        result.row_count = self.reader.row_count

    def _values(self, row: Any, names: list[str]) -> list[Any]:
        if not isinstance(row, dict):
            raise UpstreamProtocolError(f"{self._where}: a row of the {self._format} result is not an object")
        return [_cell_value(row.get(name)) for name in names]

    def _check_errors(self) -> None:
        messages = _query_errors(self.reader.errors)
        if messages:
            raise UpstreamQueryFailed(
                f"looker query failed: {'; '.join(messages)[:REASON_LIMIT]} [{self._where}]"
            )

    def _check_end(self) -> None:
        self._check_errors()
        expected = "start_array" if self._format == "json" else "start_map"
        if self.reader.top_event != expected:
            shape = "an object" if expected == "start_map" else "an array of rows"
            raise UpstreamProtocolError(f"{self._where}: the {self._format} result is not {shape}")


class _DelimitedResult:
    """A csv (or txt) result: the header line names the columns, every other record is a row.
    With ``keep_bytes`` the bytes are handed on as they arrived while the records are counted."""

    def __init__(
        self,
        chunks: Iterator[bytes],
        delimiter: str,
        *,
        keep_bytes: bool,
        where: str,
        connection_name: str,
        operation: str,
    ) -> None:
        self._where = where
        self._connection_name = connection_name
        self._operation = operation
        self._keep_bytes = keep_bytes
        self._seen_chunks: list[bytes] = []
        self._records = csv.reader(_text_lines(self._tee(chunks)), delimiter=delimiter)
        self.header: list[str] = []

    def _tee(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            if self._keep_bytes:
                self._seen_chunks.append(chunk)
            yield chunk

    def read_header(self) -> None:
        with translate_transport_errors(self._connection_name, self._operation):
            self.header = next(self._records, [])

    def rows(self) -> Iterator[list[str]]:
        width = len(self.header)
        with translate_transport_errors(self._connection_name, self._operation):
            for number, record in enumerate(self._rows(), start=1):
                if len(record) != width:
                    raise UpstreamProtocolError(
                        f"{self._where}: csv record {number} has {len(record)} values, the header {width}"
                    )
                yield record

    def native_chunks(self, result: NativeResult) -> Iterator[bytes]:
        with translate_transport_errors(self._connection_name, self._operation):
            for _ in self._rows():
                result.row_count += 1
                yield from self._drain()
            yield from self._drain()

    def _rows(self) -> Iterator[list[str]]:
        for record in self._records:
            if record:
                yield record
            elif len(self.header) == 1:  # one column: an empty line is an empty value
                yield [""]
            # else a blank line between records, not a row

    def _drain(self) -> Iterator[bytes]:
        seen, self._seen_chunks = self._seen_chunks, []
        yield from seen


# --- the provider --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """The saved query a task runs, and its field names when Looker told them."""

    query_id: str
    look_id: str | None
    fields: list[str] | None


class LookerProvider(Provider):
    name: ClassVar[str] = "looker"
    query_model: ClassVar[type[BaseModel]] = LookerQuery
    can_cancel: ClassVar[bool] = True

    def __init__(self, connection_name: str, connection: Connection) -> None:
        auth = connection.auth
        if not isinstance(auth, ClientCredentialsAuth):
            raise InvalidConnection(
                f"connection {connection_name!r}: looker connections take client_credentials auth "
                f'({{"type": "client_credentials", "client_id", "client_secret"}}: a Looker API key), '
                f"not {auth.type}"
            )
        super().__init__(connection_name, connection)
        self._auth = auth
        self._http = UpstreamClient(connection_name, connection, headers=_JSON_HEADERS)
        base_path = httpx.URL(connection.base_url).path.rstrip("/")
        # A base_url that already ends in /api/4.0 is taken as it is.
        self._api_path = "" if base_path.endswith(API_PATH) else API_PATH
        secret_digest = hashlib.sha256(auth.client_secret.get_secret_value().encode()).hexdigest()
        self._token_key = (connection.base_url, auth.client_id, secret_digest)

    # - submit -

    @contextmanager
    def submit(self, query: BaseModel, options: SubmitOptions) -> Iterator[Submission]:
        if not isinstance(query, LookerQuery):
            raise TypeError(f"LookerProvider.submit takes a LookerQuery, not {type(query).__name__}")
        result_format = result_format_for(query, options.output_format)
        target = self._resolve(query)
        task_id, status = self._create_task(query, target, result_format)
        state: dict[str, Any] = {"result_format": result_format}
        if target.fields is not None and _small_enough(target.fields):
            state["fields"] = target.fields
        options.started(task_id, state)
        logger.info(
            "looker query task created",
            extra={"upstream_id": task_id, "query_id": target.query_id, "result_format": result_format},
        )
        status = self._watch_briefly(task_id, status, options.wait_seconds)
        outcome = self._interpret(task_id, status, state, "looker submit")
        yield Submission(upstream_id=task_id, finished=outcome.finished, state=outcome.state or state)

    def _resolve(self, query: LookerQuery) -> _Target:
        if query.query_id is not None:
            document = self._get_json(
                f"/queries/{_quoted(query.query_id)}",
                "looker get query",
                params={"fields": "id,fields"},
                missing=f"Looker has no query {query.query_id!r} (or this API user cannot see it)",
            )
            return _Target(query.query_id, None, _string_list(document.get("fields")))
        if query.look_id is not None:
            document = self._get_json(
                f"/looks/{_quoted(query.look_id)}",
                "looker get look",
                params={"fields": "id,query_id,query"},
                missing=f"Looker has no look {query.look_id!r} (or this API user cannot see it)",
            )
            saved = document.get("query")
            query_id = document.get("query_id") or (saved.get("id") if isinstance(saved, dict) else None)
            if not isinstance(query_id, str | int) or isinstance(query_id, bool) or str(query_id) == "":
                raise self._protocol_error("looker get look", f"look {query.look_id!r} names no query_id")
            fields = _string_list(saved.get("fields")) if isinstance(saved, dict) else None
            return _Target(str(query_id), query.look_id, fields)
        operation = "looker create query"
        with self._call(
            "POST", "/queries", operation, params={"fields": "id,fields"}, json=query.write_query()
        ) as response:
            self._raise_for_error(response, operation)
            document = self._small_json(response, operation)
        query_id = document.get("id")
        if not isinstance(query_id, str | int) or isinstance(query_id, bool) or str(query_id) == "":
            raise self._protocol_error(operation, "the saved query has no id")
        return _Target(str(query_id), None, _string_list(document.get("fields")) or query.fields)

    def _create_task(self, query: LookerQuery, target: _Target, result_format: str) -> tuple[str, str]:
        operation = "looker create query task"
        body: dict[str, Any] = {
            "query_id": target.query_id,
            "result_format": result_format,
            "source": TASK_SOURCE,
        }
        if target.look_id is not None:
            body["look_id"] = target.look_id
        with self._call("POST", "/query_tasks", operation, params=query.task_params(), json=body) as response:
            self._raise_for_error(response, operation)
            document = self._small_json(response, operation)
        task_id, status = document.get("id"), document.get("status")
        if not isinstance(task_id, str) or not task_id:
            raise self._protocol_error(operation, "the query task has no id")
        return task_id, str(status or "added")

    def _watch_briefly(self, task_id: str, status: str, wait_seconds: float) -> str:
        """Read the task's status a few times while the submit may wait: a quick query is then
        finished before the first Wait state. Trouble reading it only ends the watch early."""
        deadline = time.monotonic() + max(wait_seconds, 0.0)
        pauses = iter(SUBMIT_STATUS_PAUSES)
        while status in ("added", "running"):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(next(pauses, SUBMIT_STATUS_PAUSE_MAX), left))
            try:
                status = self._task_status(task_id, "looker submit")
            except (UpstreamRateLimited, UpstreamUnavailable) as error:
                logger.info(
                    "looker status unavailable while submitting; Poll will look",
                    extra={"reason": type(error).__name__},
                )
                break
        return status

    # - poll -

    def poll(self, upstream_id: str, state: dict[str, Any], wait_seconds: float) -> PollStatus:
        """One status read: Looker cannot hold the request until the task ends."""
        operation = "looker poll"
        try:
            status = self._task_status(upstream_id, operation)
        except UpstreamRateLimited as error:
            # Not a failure of the job: the state machine waits as long as Looker asked (or a default).
            return PollStatus(
                finished=False,
                retry_after_seconds=error.retry_after_seconds or RATE_LIMIT_DEFAULT_SECONDS,
                detail="rate limited by Looker",
            )
        outcome = self._interpret(upstream_id, status, state, operation)
        logger.info("looker query task polled", extra={"upstream_id": upstream_id, "status": status})
        return outcome

    def _task_status(self, task_id: str, operation: str) -> str:
        document = self._get_json(
            f"/query_tasks/{_quoted(task_id)}", operation, params={"fields": "id,status"}, upstream_id=task_id
        )
        status = document.get("status")
        if not isinstance(status, str) or not status:
            raise self._protocol_error(operation, f"query task {task_id!r} has no status")
        return status.lower()

    def _interpret(self, task_id: str, status: str, state: dict[str, Any], operation: str) -> PollStatus:
        """What a task status means for the job; failures raise their named error."""
        if status == "complete":
            return PollStatus(finished=True, detail=status, state=_without_expired(state))
        if status in ("added", "running"):
            return PollStatus(finished=False, detail=status, state=_without_expired(state))
        if status == "error":
            raise UpstreamQueryFailed(
                f"looker query failed: {self._failure_reason(task_id)} "
                f"[{self._where(operation)}, task {task_id}]"
            )
        if status == "killed":
            raise UpstreamQueryFailed(
                f"looker query task {task_id!r} was killed in Looker before it finished "
                f"[{self._where(operation)}]"
            )
        if status == "expired":
            if state.get("expired_seen"):
                raise UpstreamTaskExpired(
                    f"{self._where(operation)}: Looker says query task {task_id!r} expired (seen twice)"
                )
            # Looker has answered "expired" just before completing a task: look once more next time.
            logger.warning("looker task reported expired; checking again", extra={"upstream_id": task_id})
            return PollStatus(
                finished=False, detail="expired (checking again)", state={**state, "expired_seen": True}
            )
        logger.warning(
            "looker task status not understood; still waiting",
            extra={"upstream_id": task_id, "status": status},
        )
        return PollStatus(finished=False, detail=status, state=_without_expired(state))

    def _failure_reason(self, task_id: str) -> str:
        """The database's message for a failed task: Looker puts it in the results (400 with
        ``message``, or ``errors`` for json_detail). Best effort: the job fails either way."""
        operation = "looker read failure"
        try:
            with self._call("GET", f"/query_tasks/{_quoted(task_id)}/results", operation) as response:
                body = read_error_body(response)
        except QueryRelayError:
            return "Looker reported status 'error' (its message could not be read)"
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        messages: list[str] = []
        if isinstance(document, dict):
            messages = _query_errors(document.get("errors") or [])
            if not messages and isinstance(document.get("message"), str):
                messages = [document["message"]]
        text = "; ".join(messages) or "Looker reported status 'error' without a message"
        return self._redact(text)[:REASON_LIMIT]

    # - fetch -

    @contextmanager
    def fetch(
        self, upstream_id: str, state: dict[str, Any], output_format: OutputFormat
    ) -> Iterator[FetchedResult]:
        operation = "looker fetch"
        result_format = state.get("result_format") or self._task_result_format(upstream_id, operation)
        _check_formats(result_format, output_format)
        known_fields = _string_list(state.get("fields"))
        with self._open_results(upstream_id, operation) as response:
            chunks = response.iter_bytes()
            where = f"{self._where(operation)}, task {upstream_id}"
            common = {"where": where, "connection_name": self.connection_name, "operation": operation}
            if result_format in _DELIMITERS:
                delimited = _DelimitedResult(
                    chunks, _DELIMITERS[result_format], keep_bytes=output_format == "native", **common
                )
                delimited.read_header()
                columns = [Column(name=name, type="string") for name in delimited.header]
                if output_format == "native":
                    native = NativeResult(
                        chunks=iter(()), extension=_EXTENSIONS[result_format], columns=columns
                    )
                    native.chunks = delimited.native_chunks(native)
                    yield native
                else:
                    yield TabularResult(columns=columns, rows=delimited.rows())
            elif result_format in _JSON_ROW_PREFIXES:
                answer = _JsonResult(chunks, result_format, build_rows=output_format != "native", **common)
                answer.read_head()
                columns = answer.columns(known_fields)
                if output_format == "native":
                    native = NativeResult(chunks=iter(()), extension="json", columns=columns)
                    native.chunks = answer.native_chunks(native)
                    yield native
                else:
                    yield TabularResult(
                        columns=columns, rows=answer.rows([column.name for column in columns])
                    )
            else:  # html, xlsx, sql ...: stored as they are, rows not counted
                yield NativeResult(
                    chunks=self._raw_chunks(chunks, operation),
                    extension=_EXTENSIONS.get(result_format, "bin"),
                )

    def _raw_chunks(self, chunks: Iterator[bytes], operation: str) -> Iterator[bytes]:
        with translate_transport_errors(self.connection_name, operation):
            yield from chunks

    def _task_result_format(self, task_id: str, operation: str) -> str:
        """The format the task was created with (when the state does not carry it)."""
        document = self._get_json(
            f"/query_tasks/{_quoted(task_id)}",
            operation,
            params={"fields": "id,result_format"},
            upstream_id=task_id,
        )
        result_format = document.get("result_format")
        if not isinstance(result_format, str) or result_format not in _EXTENSIONS:
            raise self._protocol_error(operation, f"query task {task_id!r} has an unknown result_format")
        return result_format

    @contextmanager
    def _open_results(self, task_id: str, operation: str) -> Iterator[httpx.Response]:
        """The results once ready. 202 (204 before Looker 25.0) means not ready yet: ask again
        after short pauses, then give the state machine the retry (UpstreamUnavailable)."""
        pauses = iter(RESULTS_NOT_READY_PAUSES)
        while True:
            with self._call(
                "GET", f"/query_tasks/{_quoted(task_id)}/results", operation, upstream_id=task_id
            ) as response:
                if response.status_code in (202, 204):
                    read_error_body(response)
                    pause = next(pauses, None)
                    if pause is None:
                        raise UpstreamUnavailable(
                            f"{self._where(operation)}: the results of task {task_id!r} are not ready yet "
                            f"(HTTP {response.status_code}) although the task is complete"
                        )
                    logger.info("looker results not ready; asking again", extra={"upstream_id": task_id})
                    time.sleep(pause)
                    continue
                self._raise_for_error(response, operation, task_id)
                yield response
                return

    # - cancel -

    def cancel(self, upstream_id: str, state: dict[str, Any]) -> bool:
        operation = "looker cancel"
        with self._call(
            "DELETE", f"/running_queries/{_quoted(upstream_id)}", operation, upstream_id=upstream_id
        ) as response:
            read_body = read_error_body(response)
            if response.status_code == 404:  # finished (or unknown): nothing runs any more
                return False
            if not 200 <= response.status_code < 300:
                self._raise_for_status_body(response, read_body, operation, upstream_id)
            return True

    def close(self) -> None:
        self._http.close()

    # - talking to Looker -

    def _api(self, path: str) -> str:
        return f"{self._api_path}{path}"

    @contextmanager
    def _call(
        self, method: str, path: str, operation: str, *, upstream_id: str | None = None, **request: Any
    ) -> Iterator[httpx.Response]:
        """An authenticated request. A 401 (token revoked or expired early) is answered by one
        new login and one retry; a second 401 reaches the caller's error mapping."""
        token = TOKENS.get(self._token_key) or self._login()
        log_fields = {"upstream_id": upstream_id} if upstream_id else None
        for attempt in (1, 2):
            with self._http.stream(
                method,
                self._api(path),
                operation=operation,
                headers={"Authorization": f"Bearer {token}"},
                log_fields=log_fields,
                **request,
            ) as response:
                if response.status_code == 401 and attempt == 1:
                    read_error_body(response)
                    TOKENS.drop(self._token_key, token)
                    logger.info(
                        "looker refused the access token; logging in again", extra={"operation": operation}
                    )
                    token = self._login()
                    continue
                yield response
                return

    def _login(self) -> str:
        operation = "looker login"
        credentials = {
            "client_id": self._auth.client_id,
            "client_secret": self._auth.client_secret.get_secret_value(),
        }
        with self._http.stream(
            "POST", self._api("/login"), operation=operation, data=credentials
        ) as response:
            if response.status_code in (401, 403, 404):  # Looker answers unknown credentials with 404
                read_error_body(response)
                raise UpstreamAuthFailed(
                    f"{self._where(operation)}: Looker refused the client credentials "
                    f"(HTTP {response.status_code}); check client_id and client_secret"
                )
            self._raise_for_error(response, operation)
            document = self._small_json(response, operation)
        token, expires_in = document.get("access_token"), document.get("expires_in")
        if not isinstance(token, str) or not token:
            raise self._protocol_error(operation, "the login answer has no access_token")
        lifetime = (
            float(expires_in)
            if isinstance(expires_in, int | float) and expires_in > 0
            else DEFAULT_TOKEN_SECONDS
        )
        TOKENS.put(self._token_key, token, lifetime)
        logger.info("logged in to looker", extra={"connection": self.connection_name, "expires_in": lifetime})
        return token

    def _get_json(
        self,
        path: str,
        operation: str,
        *,
        params: Mapping[str, str] | None = None,
        upstream_id: str | None = None,
        missing: str | None = None,
    ) -> dict[str, Any]:
        with self._call("GET", path, operation, upstream_id=upstream_id, params=params) as response:
            if response.status_code == 404 and missing is not None:
                read_error_body(response)
                raise UpstreamQueryFailed(f"{missing} [{self._where(operation)}]")
            self._raise_for_error(response, operation, upstream_id)
            return self._small_json(response, operation)

    def _small_json(self, response: httpx.Response, operation: str) -> dict[str, Any]:
        """A small JSON object answer (a token, a query, a task, a look)."""
        body = read_error_body(response)
        try:
            document = json.loads(body)
        except ValueError:
            raise self._protocol_error(
                operation, f"the answer is not JSON (HTTP {response.status_code})"
            ) from None
        if not isinstance(document, dict):
            raise self._protocol_error(operation, "the answer is not a JSON object")
        return document

    def _raise_for_error(
        self, response: httpx.Response, operation: str, upstream_id: str | None = None
    ) -> None:
        if 200 <= response.status_code < 300:
            return
        self._raise_for_status_body(response, read_error_body(response), operation, upstream_id)

    def _raise_for_status_body(
        self, response: httpx.Response, body: bytes, operation: str, upstream_id: str | None
    ) -> None:
        """Looker's envelope ``{"message", "errors"?: [{field, code, message}]}`` first, then the
        generic status classes."""
        status = response.status_code
        message, field_errors = _error_envelope(body)
        message = self._redact(message)[:REASON_LIMIT]
        where = f"{self._where(operation)}, HTTP {status}"
        if status == 404 and upstream_id is not None:
            raise UpstreamTaskExpired(
                f"{where}: Looker no longer knows query task {upstream_id!r} "
                "(unknown, or its results expired)"
            )
        if status == 400:
            raise UpstreamQueryFailed(f"looker query failed: {message or 'HTTP 400'} [{where}]")
        if status == 422:
            described = "; ".join(f"query.{name}: {text}" for name, text in field_errors) or message
            raise UpstreamQueryFailed(
                f"looker rejected the query: {self._redact(described)[:REASON_LIMIT]} [{where}]"
            )
        self._http.raise_for_status(response, operation=operation, reason=message)
        raise self._protocol_error(operation, f"unexpected answer HTTP {status}")  # pragma: no cover

    def _redact(self, text: str) -> str:
        scrubbed = self._http.redact(text)
        token = TOKENS.get(self._token_key)
        return scrubbed.replace(token, "***") if token else scrubbed

    def _where(self, operation: str) -> str:
        return f"{operation} on connection {self.connection_name!r}"

    def _protocol_error(self, operation: str, problem: str) -> UpstreamProtocolError:
        return UpstreamProtocolError(f"{self._where(operation)}: {problem}")


def _without_expired(state: dict[str, Any]) -> dict[str, Any] | None:
    """The state with a remembered 'expired' forgotten (None: unchanged)."""
    if "expired_seen" not in state:
        return None
    return {key: value for key, value in state.items() if key != "expired_seen"}


def _small_enough(names: list[str]) -> bool:
    return len(names) <= STATE_FIELDS_MAX and sum(len(name) for name in names) <= STATE_FIELDS_MAX_CHARS


def _string_list(value: Any) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    return None


def _quoted(identifier: str) -> str:
    return quote(identifier, safe="")


def _first_line(error: Exception) -> str:
    """yajl's messages draw a multi-line caret picture; the first line says what went wrong."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _error_envelope(body: bytes) -> tuple[str, list[tuple[str, str]]]:
    """(message, [(field, message), ...]) of Looker's error body; ('', []) when it is not one."""
    try:
        document = json.loads(body)
    except ValueError:
        return "", []
    if not isinstance(document, dict):
        return "", []
    message = document.get("message")
    field_errors = []
    for error in document.get("errors") or []:
        if isinstance(error, dict):
            name = str(error.get("field") or "(query)")
            text = " ".join(str(part) for part in (error.get("code"), error.get("message")) if part)
            field_errors.append((name, text))
    return (message if isinstance(message, str) else ""), field_errors
