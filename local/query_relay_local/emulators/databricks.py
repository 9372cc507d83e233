"""A Databricks SQL Statement Execution 2.0 emulator over real HTTP. Its shapes are those of the
official databricks-sdk (`service/sql.py`), which the contract tests parse every answer with.

Endpoints (`/api/...` calls need `Authorization: Bearer <token>` once the emulator has a PAT or
OAuth client; without either, authentication is off):
- `POST /api/2.0/sql/statements` `{statement, warehouse_id, catalog?, schema?, parameters?: [{name,
  value?, type?}], row_limit?, byte_limit?, disposition?: INLINE | EXTERNAL_LINKS, format?:
  JSON_ARRAY | CSV | ARROW_STREAM, wait_timeout?: "0s" | "5s".."50s" (default "10s"),
  on_wait_timeout?: CONTINUE | CANCEL, query_tags?}` waits up to `wait_timeout` and answers the
  `StatementResponse`; when the wait ends first, CANCEL cancels the statement. A refused request is
  400 `{error_code: "INVALID_PARAMETER_VALUE", message}`; a SQL error is HTTP 200 with
  `status: {state: FAILED, error: {error_code: BAD_REQUEST, message}, sql_state}`. ARROW_STREAM is
  400 "not supported by this emulator": Arrow IPC needs pyarrow, which this project does not ship.
- `GET /api/2.0/sql/statements/{id}`: the statement; manifest and chunk 0 once SUCCEEDED.
- `GET /api/2.0/sql/statements/{id}/result/chunks/{n}`: a chunk (`data_array` or `external_links`).
- `POST /api/2.0/sql/statements/{id}/cancel`: 200 `{}`; the statement becomes CANCELED.
- `POST /oidc/v1/token` (OAuth M2M: `grant_type=client_credentials&scope=all-apis`, the client in
  HTTP Basic or form fields) answers `{access_token, token_type, expires_in, scope}`; discovery:
  `GET /.well-known/databricks-config` and `GET /oidc/.well-known/oauth-authorization-server`
  (the SDK reads both before its first token).
Auth errors: no Bearer credential 401 `UNAUTHENTICATED`; an unknown token 403 `{"error_code": 403,
"message": "Invalid access token."}` (a number, as Databricks answers); an expired OAuth token
401 "Token is expired.". Errors never quote a credential.

Results come from the shared `warehouse` (tables employees, all_types, and numbers of
`config.numbers_rows` rows); values render as in "Types" below. Rows are split into chunks of
`config.chunk_rows`; an empty result has no chunk (and no `result`). `row_limit` and `byte_limit`
cut rows and set `manifest.truncated`; so does `config.truncate_after_rows` for EXTERNAL_LINKS (the
100 GiB cap); an INLINE result over `config.inline_limit_bytes` (25 MiB) FAILS the statement.
EXTERNAL_LINKS chunks are links to a second listener (another port, so another origin, as cloud
storage is): `http://<host>:<link port>/storage/<token>`. Like a presigned S3 URL it refuses any
`Authorization` header (400), needs every header of the link's `http_headers`
(`config.link_headers`), expires `config.link_ttl_seconds` after issue (403 "Request has
expired"; read when used, so lowering it expires issued links) and serves the chunk as a bare
JSON array of arrays or CSV (header in chunk 0, NULL as `null`). Fetching the chunk again gives a
fresh link. Byte counts are exact sizes of those bodies (INLINE answers give none, as documented).

Time: a statement is PENDING `config.pending_seconds`, RUNNING until `config.query_seconds` after
submit (both read at submit), then SUCCEEDED or FAILED. With `wait_timeout` "0s" the submit
answers PENDING even for a statement already done, as the docs say it does. One nobody polled for
`config.abandon_after_seconds` is CANCELED. Results are CLOSED `config.result_ttl_seconds` after
success (chunks then 404; before success they are 400); every statement is forgotten (404
`NOT_FOUND`) `config.forget_after_seconds` after it ended. `config.wait_scale` shrinks the
server-side wait (0.1: "5s" waits 0.5 s) to keep tests quick; `config.cancel_ignored` makes cancel
silently do nothing, as the docs warn it may.

Test hooks, in process and over HTTP (no auth, not logged in `requests`):
- `config` (`DatabricksEmulatorConfig`); HTTP `GET|POST /_emulator/config`.
- `fail_next(operation, status=None, times=1, retry_after=None, ...)`: operations `submit`,
  `status`, `chunk`, `cancel`, `token`, `link` (the storage listener) or `any`. A status answers
  that service's error (Databricks JSON, OAuth JSON, S3 XML; 429/503 with an integer Retry-After);
  `expire` forgets the statement in the path (or expires the link). HTTP `/_emulator/faults`.
- `statement_states()` -> `{id: "pending" | "running" | "succeeded" | "failed" | "canceled" |
  "closed" | "expired"}`; HTTP `GET /_emulator/statements`.
- `requests` (storage requests included), `submitted` (submit bodies), `token_requests` (calls of
  the token endpoint), `issued_tokens()` (the access tokens it issued); HTTP `GET|DELETE
  /_emulator/requests`, `GET /_emulator/tokens`.

Types (warehouse -> type_name / type_text -> JSON_ARRAY string): integer LONG/BIGINT "42"; decimal
DECIMAL/DECIMAL(p,s) "123.4500" (scale digits); double DOUBLE as Java prints it ("1.5",
"-1.23E-4", "Infinity", "NaN"); string STRING; boolean BOOLEAN "true"; date DATE "2024-05-06";
time STRING "12:34:56[.ffffff]" (Databricks has no TIME); timestamp TIMESTAMP_NTZ
"2024-05-06T12:34:56.123" (the service's name, which the SDK's `ColumnInfoTypeName` lacks, so it
parses as None; see databricks-jdbc#1518); timestamp_tz TIMESTAMP in UTC "...56.500Z"; binary
BINARY as upper-case hex (what databricks-sql-python's SEA reader decodes with `bytes.fromhex`);
json STRING holding compact JSON text. Fractions of a second show 3 digits, or 6 when they need them.
"""

from __future__ import annotations

import csv
import datetime as dt
import hmac
import io
import json
import logging
import math
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from . import warehouse
from .http import EmulatorServer, InjectedFault, url_host
from .warehouse import SqlError, WColumn

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

logger = logging.getLogger(__name__)

__all__ = ["ColumnType", "DatabricksEmulator", "DatabricksEmulatorConfig", "column_type", "serve_forever"]

JSON_TYPE = "application/json"
STATEMENTS_PATH = "/api/2.0/sql/statements"
STATEMENT_PATH = re.compile(rf"{STATEMENTS_PATH}/([^/]+)")
CHUNK_PATH = re.compile(rf"{STATEMENTS_PATH}/([^/]+)/result/chunks/([^/]+)")
CANCEL_PATH = re.compile(rf"{STATEMENTS_PATH}/([^/]+)/cancel")
CLIENT_CREDENTIALS_PATH = "/oidc/v1/token"
OAUTH_DISCOVERY_PATH = "/oidc/.well-known/oauth-authorization-server"
HOST_METADATA_PATH = "/.well-known/databricks-config"
STORAGE_PATH = re.compile(r"/storage/([A-Za-z0-9_-]+)")
OPERATIONS = ("submit", "status", "chunk", "cancel", "token", "link")
WAREHOUSE_ID = "5e1f0c2d3b4a6978"
WORKSPACE_ID = "1234567890123456"
OAUTH_SCOPES = frozenset({"all-apis", "sql", "offline_access"})
DEFAULT_LINK_HEADERS = {"x-amz-server-side-encryption-customer-algorithm": "AES256"}
SUBMIT_FIELDS = frozenset(
    {"statement", "warehouse_id", "catalog", "schema", "parameters", "row_limit", "byte_limit"}
    | {"disposition", "format", "wait_timeout", "on_wait_timeout", "query_tags"}
)
ACTIVE = ("PENDING", "RUNNING")
MISSING_CREDENTIAL = "Credential was not sent or was of an unsupported type for this API."

_ERRORS_BY_STATUS = {
    400: "INVALID_PARAMETER_VALUE",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "RESOURCE_CONFLICT",
    429: "REQUEST_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_S3_ERRORS_BY_STATUS = {
    400: ("InvalidRequest", "Bad Request"),
    403: ("AccessDenied", "Access Denied"),
    404: ("NoSuchKey", "The specified key does not exist."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}
_GATEWAY_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
)
_LINK_ENVIRON_KEY = "query_relay_local.databricks.storage"
_WAIT_STEP_SECONDS = 0.01


@dataclass
class DatabricksEmulatorConfig:
    """Knobs tests turn at runtime (in process, or via `POST /_emulator/config`)."""

    pending_seconds: float = 0.1
    query_seconds: float = 0.0
    wait_scale: float = 1.0
    chunk_rows: int = 1000
    numbers_rows: int = warehouse.NUMBERS_ROWS
    inline_limit_bytes: int = 25 * 1024 * 1024
    truncate_after_rows: int | None = None
    cancel_ignored: bool = False
    abandon_after_seconds: float = 900.0
    result_ttl_seconds: float = 3600.0
    forget_after_seconds: float = 12 * 3600.0
    link_ttl_seconds: float = 900.0
    link_headers: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_LINK_HEADERS))
    oauth_token_seconds: float = 3600.0


class DatabricksApiError(Exception):
    """A refused request: `{error_code, message}` with an HTTP status."""

    def __init__(self, status: int, error_code: str | int, message: str) -> None:
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message


class OAuthError(Exception):
    """A refused token request, in OAuth's shape `{error, error_description}`."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


def invalid(message: str) -> DatabricksApiError:
    return DatabricksApiError(400, "INVALID_PARAMETER_VALUE", message)


# --- types: warehouse columns as Databricks reports and renders them --------------------------------


@dataclass(frozen=True)
class ColumnType:
    type_name: str
    type_text: str
    render: Callable[[Any], str]
    precision: int | None = None
    scale: int | None = None


def column_type(column: WColumn) -> ColumnType:
    """How Databricks describes and renders a warehouse column (see "Types" in the module doc)."""
    if column.type == "decimal":
        precision, scale = column.precision or 38, column.scale or 0
        quantum = Decimal(1).scaleb(-scale)

        def render(value: Any) -> str:
            return format(Decimal(value).quantize(quantum, rounding=ROUND_HALF_UP), "f")

        return ColumnType("DECIMAL", f"DECIMAL({precision},{scale})", render, precision, scale)
    return _SIMPLE_TYPES[column.type]


def _java_double(value: float) -> str:
    """A double as Java's Double.toString (what Spark prints): positional in [1e-3, 1e7)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0 or 1e-3 <= abs(value) < 1e7:
        return repr(float(value))
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    text = "".join(map(str, digits))
    mantissa = f"{text[0]}.{text[1:] or '0'}"
    return f"{'-' if sign else ''}{mantissa}E{len(digits) - 1 + int(exponent)}"


def _fraction(moment: dt.datetime) -> str:
    micros = moment.microsecond
    return f".{micros // 1000:03d}" if micros % 1000 == 0 else f".{micros:06d}"


def _timestamp_ntz(value: dt.datetime) -> str:
    return value.replace(microsecond=0).isoformat() + _fraction(value)


def _timestamp_utc(value: dt.datetime) -> str:
    return _timestamp_ntz(value.astimezone(dt.UTC).replace(tzinfo=None)) + "Z"


_SIMPLE_TYPES = {
    "integer": ColumnType("LONG", "BIGINT", str),
    "double": ColumnType("DOUBLE", "DOUBLE", _java_double),
    "string": ColumnType("STRING", "STRING", str),
    "boolean": ColumnType("BOOLEAN", "BOOLEAN", lambda value: "true" if value else "false"),
    "date": ColumnType("DATE", "DATE", dt.date.isoformat),
    "time": ColumnType("STRING", "STRING", dt.time.isoformat),
    "timestamp": ColumnType("TIMESTAMP_NTZ", "TIMESTAMP_NTZ", _timestamp_ntz),
    "timestamp_tz": ColumnType("TIMESTAMP", "TIMESTAMP", _timestamp_utc),
    "binary": ColumnType("BINARY", "BINARY", lambda value: bytes(value).hex().upper()),
    "json": ColumnType(
        "STRING", "STRING", lambda value: json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    ),
}


def _render_row(row: list[Any], types: list[ColumnType]) -> list[str | None]:
    return [None if value is None else kind.render(value) for value, kind in zip(row, types, strict=True)]


def _json_row(values: list[str | None]) -> bytes:
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False).encode()


def _csv_line(values: Iterable[str | None]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(["null" if value is None else value for value in values])
    return out.getvalue().encode()


# --- parameters: typed strings converted as CAST would ---------------------------------------------

_INTEGER_BITS = {"TINYINT": 8, "BYTE": 8, "SMALLINT": 16, "SHORT": 16, "INT": 32, "INTEGER": 32}
_INTEGER_BITS |= {"BIGINT": 64, "LONG": 64}
_DECIMAL_TYPE = re.compile(r"(?:DECIMAL|DEC|NUMERIC)(?:\((\d+)(?:,(\d+))?\))?")
_TRUE, _FALSE = ("t", "true", "y", "yes", "1"), ("f", "false", "n", "no", "0")


class _CastFailed(Exception):
    def __init__(self, message: str, sql_state: str) -> None:
        super().__init__(message)
        self.message, self.sql_state = message, sql_state


def _converter(type_text: str) -> Callable[[str], Any]:
    """A function from a parameter's string to the Python value the warehouse binds (raising
    `_CastFailed` as the SQL CAST would); 400 for a type the API does not take."""
    kind = re.sub(r"\s+", "", type_text).upper()
    if kind == "STRING":
        return str
    if kind in _INTEGER_BITS:
        limit = 2 ** (_INTEGER_BITS[kind] - 1)
        return lambda text: _checked(int(text.strip()), limit)
    if kind in ("DOUBLE", "FLOAT", "REAL"):
        return lambda text: float(text.strip())
    if match := _DECIMAL_TYPE.fullmatch(kind):
        precision, scale = int(match.group(1) or 10), int(match.group(2) or 0)
        if not 1 <= precision <= 38 or scale > precision:
            raise invalid(f"parameter type {type_text} is not a valid DECIMAL")
        return lambda text: _decimal(text, precision, scale)
    simple: dict[str, Callable[[str], Any]] = {
        "BOOLEAN": _boolean,
        "DATE": lambda text: dt.date.fromisoformat(text.strip()),
        "TIMESTAMP": lambda text: _timestamp(text, aware=True),
        "TIMESTAMP_LTZ": lambda text: _timestamp(text, aware=True),
        "TIMESTAMP_NTZ": lambda text: _timestamp(text, aware=False),
        "BINARY": lambda text: text.encode(),
    }
    if kind in simple:
        return simple[kind]
    raise invalid(f"parameter type {type_text} is not supported (complex types are not)")


def _checked(value: int, limit: int) -> int:
    if not -limit <= value < limit:
        raise _CastFailed(
            f"[CAST_OVERFLOW] The value {value} cannot be cast: overflow. SQLSTATE: 22003", "22003"
        )
    return value


def _decimal(text: str, precision: int, scale: int) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(text) from None
    if not value.is_finite():
        raise ValueError(text)
    value = value.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP)
    if value and value.adjusted() >= precision - scale:
        shown = f"DECIMAL({precision}, {scale})"
        raise _CastFailed(
            f"[NUMERIC_VALUE_OUT_OF_RANGE] {text.strip()} cannot be {shown}. SQLSTATE: 22003", "22003"
        )
    return value


def _boolean(text: str) -> bool:
    word = text.strip().lower()
    if word not in _TRUE + _FALSE:
        raise ValueError(text)
    return word in _TRUE


def _timestamp(text: str, *, aware: bool) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text.strip())
    if not aware:
        return moment.replace(tzinfo=None)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)  # session zone UTC


# --- statements ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Parameter:
    name: str
    value: str | None
    type_text: str
    convert: Callable[[str], Any]


@dataclass(frozen=True)
class _Submission:
    statement: str
    parameters: list[_Parameter]
    row_limit: int | None
    byte_limit: int | None
    disposition: str
    format: str
    wait_seconds: int
    on_wait_timeout: str


@dataclass(frozen=True)
class _Failure:
    message: str
    sql_state: str | None = None


@dataclass(frozen=True)
class _Chunk:
    index: int
    row_offset: int
    row_count: int
    byte_count: int

    @property
    def row_end(self) -> int:
        return self.row_offset + self.row_count


@dataclass(frozen=True)
class _Result:
    names: list[str]
    types: list[ColumnType]
    rows: Sequence[list[Any]]
    chunks: list[_Chunk]
    truncated: bool
    format: str
    disposition: str

    def body(self, chunk: _Chunk) -> bytes:
        """The chunk as cloud storage holds it: a compact JSON array of arrays, or CSV."""
        rows = [_render_row(row, self.types) for row in self.rows[chunk.row_offset : chunk.row_end]]
        if self.format == "CSV":
            header = [_csv_line(self.names)] if chunk.index == 0 else []
            return b"".join(header + [_csv_line(row) for row in rows])
        return b"[" + b",".join(_json_row(row) for row in rows) + b"]"


@dataclass(eq=False)
class _Statement:
    """One statement; its life is computed from its timestamps (monotonic seconds)."""

    id: str
    running_at: float
    finishes_at: float
    last_polled_at: float
    outcome: _Result | _Failure
    canceled_at: float | None = None
    forgotten: bool = False

    def settle(self, now: float, config: DatabricksEmulatorConfig) -> None:
        """A statement nobody polled for `abandon_after_seconds` was canceled then."""
        abandoned_at = self.last_polled_at + config.abandon_after_seconds
        if self.canceled_at is None and abandoned_at < self.finishes_at and now >= abandoned_at:
            self.canceled_at = abandoned_at

    def state(self, now: float, config: DatabricksEmulatorConfig) -> str:
        if self.canceled_at is not None:
            state, ended = "CANCELED", self.canceled_at
        elif now < self.finishes_at:
            return "PENDING" if now < self.running_at else "RUNNING"
        else:
            state = "FAILED" if isinstance(self.outcome, _Failure) else "SUCCEEDED"
            ended = self.finishes_at
        if self.forgotten or now >= ended + config.forget_after_seconds:
            return "GONE"
        if state == "SUCCEEDED" and now >= ended + config.result_ttl_seconds:
            return "CLOSED"
        return state

    def cancel(self, now: float, config: DatabricksEmulatorConfig) -> None:
        self.settle(now, config)
        if self.state(now, config) in ACTIVE:
            self.canceled_at = now


@dataclass(frozen=True)
class _Link:
    statement_id: str
    chunk_index: int
    issued_at: float
    headers: dict[str, str]


def _parse_submission(body: Any, warehouse_id: str | None) -> _Submission:
    if not isinstance(body, dict):
        raise DatabricksApiError(400, "MALFORMED_REQUEST", "Invalid JSON given in the body of the request")
    unknown = sorted(set(body) - SUBMIT_FIELDS)
    if unknown:
        raise invalid(f"unknown field {unknown[0]!r} in the request")
    statement = body.get("statement")
    if not isinstance(statement, str) or not statement.strip():
        raise invalid("statement is required")
    if len(statement.encode()) > 16 * 1024 * 1024:
        raise invalid("the statement exceeds the maximum size of 16 MiB")
    warehouse_given = body.get("warehouse_id")
    if not isinstance(warehouse_given, str) or not warehouse_given:
        raise invalid("warehouse_id is required")
    if warehouse_id is not None and warehouse_given != warehouse_id:
        raise invalid(f"Warehouse {warehouse_given} does not exist")
    for name in ("catalog", "schema"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise invalid(f"{name} must be a string")
    disposition = _choice(body, "disposition", ("INLINE", "EXTERNAL_LINKS"), "INLINE")
    result_format = _choice(body, "format", ("JSON_ARRAY", "CSV", "ARROW_STREAM"), "JSON_ARRAY")
    if disposition == "INLINE" and result_format != "JSON_ARRAY":
        raise invalid(f"{result_format} format is supported only with EXTERNAL_LINKS disposition")
    if result_format == "ARROW_STREAM":
        raise invalid("ARROW_STREAM is not supported by this emulator (Arrow IPC would need pyarrow)")
    wait = str(body.get("wait_timeout", "10s"))
    match = re.fullmatch(r"(\d{1,3})s", wait)
    if match is None or not (int(match.group(1)) == 0 or 5 <= int(match.group(1)) <= 50):
        raise invalid("wait_timeout must be 0s (do not wait) or between 5s and 50s")
    return _Submission(
        statement=statement,
        parameters=_parameters(body.get("parameters")),
        row_limit=_limit(body, "row_limit", minimum=0),
        byte_limit=_limit(body, "byte_limit", minimum=1),
        disposition=disposition,
        format=result_format,
        wait_seconds=int(match.group(1)),
        on_wait_timeout=_choice(body, "on_wait_timeout", ("CONTINUE", "CANCEL"), "CONTINUE"),
    )


def _choice(body: dict[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = body.get(name) or default
    if value not in allowed:
        raise invalid(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _limit(body: dict[str, Any], name: str, *, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise invalid(f"{name} must be an integer")
    if int(value) < minimum:
        raise invalid(f"{name} must be at least {minimum}")
    return int(value)


def _parameters(items: Any) -> list[_Parameter]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise invalid("parameters must be a list of {name, value, type}")
    parameters: dict[str, _Parameter] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise invalid("every parameter needs a name")
        value, type_text = item.get("value"), item.get("type") or "STRING"
        if (value is not None and not isinstance(value, str)) or not isinstance(type_text, str):
            raise invalid(f"parameter {item['name']}: value and type are strings")
        if item["name"] in parameters:
            raise invalid(f"parameter {item['name']} is given twice")
        parameters[item["name"]] = _Parameter(item["name"], value, type_text, _converter(type_text))
    return list(parameters.values())


# Warehouse SQLSTATEs whose Databricks error class is unambiguous -> (error class, SQLSTATE).
_SQL_ERROR_CLASSES = {
    "42S02": ("TABLE_OR_VIEW_NOT_FOUND", "42P01"),
    "22018": ("CAST_INVALID_INPUT", "22018"),
    "07002": ("UNBOUND_SQL_PARAMETER", "42P02"),
}


def _execute(submission: _Submission, config: DatabricksEmulatorConfig) -> _Result | _Failure:
    params: dict[str, Any] = {}
    for parameter in submission.parameters:
        try:
            params[parameter.name] = None if parameter.value is None else parameter.convert(parameter.value)
        except _CastFailed as error:
            return _Failure(error.message, error.sql_state)
        except ValueError:
            return _Failure(
                f"[CAST_INVALID_INPUT] The value '{parameter.value}' of the type \"STRING\" cannot be cast "
                f'to "{parameter.type_text.upper()}" because it is malformed. SQLSTATE: 22018',
                "22018",
            )
    try:
        result = warehouse.execute(submission.statement, params, numbers_rows=max(0, config.numbers_rows))
    except SqlError as error:
        error_class, sql_state = _SQL_ERROR_CLASSES.get(error.sql_state, (None, error.sql_state))
        prefix = f"[{error_class}] " if error_class else ""
        return _Failure(f"{prefix}{error.message} SQLSTATE: {sql_state}", sql_state)
    return _shape(result, submission, config)


def _shape(
    result: warehouse.WResult, submission: _Submission, config: DatabricksEmulatorConfig
) -> _Result | _Failure:
    """Limits, byte counts and chunks of a result, in one pass over its rows."""
    types = [column_type(column) for column in result.columns]
    names = [column.name for column in result.columns]
    rows, truncated = result.rows, False
    caps = [submission.row_limit]
    if submission.disposition == "EXTERNAL_LINKS":
        caps.append(config.truncate_after_rows)
    for cap in caps:
        if cap is not None and len(rows) > cap:
            rows, truncated = rows[: max(0, cap)], True
    csv_format = submission.format == "CSV"
    sizes: list[int] = []
    total = 0
    for row in rows:
        rendered = _render_row(row, types)
        size = len(_csv_line(rendered)) if csv_format else len(_json_row(rendered)) + 1  # + its comma
        if submission.byte_limit is not None and total + size > submission.byte_limit:
            truncated = True
            break
        sizes.append(size)
        total += size
        if submission.disposition == "INLINE" and total > config.inline_limit_bytes:
            return _Failure(
                f"The result of the statement is larger than {config.inline_limit_bytes} bytes, the limit of "
                "INLINE disposition; use disposition EXTERNAL_LINKS for large results."
            )
    rows = rows[: len(sizes)]
    step = max(1, config.chunk_rows)
    chunks = []
    for index, offset in enumerate(range(0, len(sizes), step)):
        part = sizes[offset : offset + step]
        framing = len(_csv_line(names)) if csv_format and index == 0 else (0 if csv_format else 1)
        chunks.append(_Chunk(index, offset, len(part), sum(part) + framing))
    return _Result(names, types, rows, chunks, truncated, submission.format, submission.disposition)


# --- the emulator ----------------------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None  # the emulator keeps its own request log


class DatabricksEmulator(EmulatorServer):
    """The Databricks emulator; `start()` it (or use `with`) and point a client at `base_url`."""

    def __init__(
        self,
        *,
        token: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        warehouse_id: str | None = WAREHOUSE_ID,
        query_seconds: float = 0.0,
    ) -> None:
        super().__init__(OPERATIONS)
        self.config = DatabricksEmulatorConfig(query_seconds=query_seconds)
        self.warehouse_id = warehouse_id
        self._token, self._client_id, self._client_secret = token, client_id, client_secret
        self._lock = threading.Lock()
        self._statements: dict[str, _Statement] = {}
        self._issued_tokens: dict[str, float] = {}  # access token -> expiry (monotonic)
        self._links: dict[str, _Link] = {}
        self._storage: tuple[BaseWSGIServer, threading.Thread] | None = None
        self.submitted: list[dict[str, Any]] = []
        self.token_requests = 0

    def __repr__(self) -> str:
        auth = self._token is not None or self._client_id is not None
        return f"DatabricksEmulator(base_url={self._base_url!r}, auth_required={auth})"

    # -- lifecycle: the API server plus the storage listener of EXTERNAL_LINKS --

    @property
    def link_base_url(self) -> str:
        if self._storage is None:
            raise RuntimeError("DatabricksEmulator is not running; call start() first")
        host, port = self._storage[0].server_address[:2]
        return f"http://{url_host(str(host))}:{port}"

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        base_url = super().start(host, port)
        self._start_storage(host)
        return base_url

    def serve_forever(self, host: str, port: int) -> None:
        self._start_storage(host)
        try:
            super().serve_forever(host, port)
        finally:
            self._stop_storage()

    def stop(self) -> None:
        self._stop_storage()
        super().stop()

    def _start_storage(self, host: str) -> None:
        server = make_server(host, 0, self._storage_app, threaded=True, request_handler=_QuietHandler)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="DatabricksStorage", daemon=True
        )
        thread.start()
        self._storage = (server, thread)

    def _stop_storage(self) -> None:
        if self._storage is not None:
            server, thread = self._storage
            self._storage = None
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    def _storage_app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # the base's WSGI layer (request log, reset/truncate faults) serves the storage port too
        environ[_LINK_ENVIRON_KEY] = True
        return self._wsgi_app(environ, start_response)

    # -- test hooks --

    def issued_tokens(self) -> list[str]:
        """Every OAuth access token the token endpoint issued, expired or not (for leak tests)."""
        with self._lock:
            return list(self._issued_tokens)

    def statement_states(self) -> dict[str, str]:
        now = time.monotonic()
        with self._lock:
            for statement in self._statements.values():
                statement.settle(now, self.config)
            states = {key: s.state(now, self.config) for key, s in self._statements.items()}
        return {key: "expired" if state == "GONE" else state.lower() for key, state in states.items()}

    def clear_requests(self) -> None:
        super().clear_requests()
        with self._lock:
            self.submitted.clear()

    # -- dispatch --

    def handle(self, request: Request) -> Response:
        if request.environ.get(_LINK_ENVIRON_KEY):
            return self._storage_answer(request)
        if request.path.startswith(self.control_prefix):
            return self._control(request)
        try:
            operation, answer = self._route(request)
            if operation == "token":
                with self._lock:
                    self.token_requests += 1
            elif operation is not None:
                self._authenticate(request)
            fault = self.faults.take(operation, request) if operation else None
            if fault is None:
                return answer()
            if fault.expire:
                self._forget(request.path)
            return self.answer_with_fault(
                request, fault, lambda: self._guarded(answer), lambda f: self._fault(operation, f)
            )
        except (DatabricksApiError, OAuthError) as error:
            return self._error(error)
        except Exception:  # answer in Databricks' envelope even when the emulator has a bug
            logger.exception("Databricks emulator failed on %s %s", request.method, request.path)
            return self._error(DatabricksApiError(500, "INTERNAL_ERROR", "unexpected error in the emulator"))

    def _guarded(self, answer: Callable[[], Response]) -> Response:
        try:
            return answer()
        except (DatabricksApiError, OAuthError) as error:
            return self._error(error)

    def _route(self, request: Request) -> tuple[str | None, Callable[[], Response]]:
        """The fault operation (None: discovery, never faulted) and the answer of a request."""
        path = request.path.rstrip("/")
        route: tuple[str, str | None, Callable[[], Response]] | None = None
        if path == STATEMENTS_PATH:
            route = ("POST", "submit", lambda: self._submit(request))
        elif chunk := CHUNK_PATH.fullmatch(path):
            statement_id, index = chunk.groups()
            route = ("GET", "chunk", lambda: self._get_chunk(request, statement_id, index))
        elif cancel := CANCEL_PATH.fullmatch(path):
            route = ("POST", "cancel", lambda: self._cancel(cancel.group(1)))
        elif statement := STATEMENT_PATH.fullmatch(path):
            route = ("GET", "status", lambda: self._get_statement(request, statement.group(1)))
        elif path == CLIENT_CREDENTIALS_PATH:
            route = ("POST", "token", lambda: self._issue_token(request))
        elif path == HOST_METADATA_PATH:
            route = ("GET", None, lambda: self._json(self._host_metadata(request)))
        elif path == OAUTH_DISCOVERY_PATH:
            route = ("GET", None, lambda: self._json(self._oauth_metadata(request)))
        if route is None or request.method != route[0]:
            raise DatabricksApiError(404, "ENDPOINT_NOT_FOUND", f"No API found for '{request.method} {path}'")
        return route[1], route[2]

    def _authenticate(self, request: Request) -> None:
        if self._token is None and self._client_id is None:
            return
        scheme, _, credential = request.headers.get("Authorization", "").strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise DatabricksApiError(401, "UNAUTHENTICATED", MISSING_CREDENTIAL)
        if self._token is not None and _same(credential, self._token):
            return
        with self._lock:
            expires_at = self._issued_tokens.get(credential)
        if expires_at is None:
            raise DatabricksApiError(403, 403, "Invalid access token.")
        if time.monotonic() >= expires_at:
            raise DatabricksApiError(401, "UNAUTHENTICATED", "Token is expired.")

    # -- statements --

    def _submit(self, request: Request) -> Response:
        try:
            body = json.loads(request.get_data() or b"")
        except ValueError:
            body = None
        if isinstance(body, dict):
            with self._lock:
                self.submitted.append(body)
        submission = _parse_submission(body, self.warehouse_id)
        config = self.config
        outcome = _execute(submission, config)
        now = time.monotonic()
        duration = max(0.0, config.query_seconds)
        statement = _Statement(
            id=str(uuid.uuid4()),
            running_at=now + min(max(0.0, config.pending_seconds), duration),
            finishes_at=now + duration,
            last_polled_at=now,
            outcome=outcome,
        )
        with self._lock:
            self._statements[statement.id] = statement
        self._wait(statement, submission)
        body = self._statement_body(request, statement)
        if submission.wait_seconds == 0 and body["status"]["state"] not in ACTIVE:
            # "with 0s the call returns directly with PENDING state": even a statement done at once
            body = {"statement_id": statement.id, "status": {"state": "PENDING"}}
        return self._json(body)

    def _wait(self, statement: _Statement, submission: _Submission) -> None:
        """Hold the submit call until the statement ends or `wait_timeout` passes (waiting counts
        as polling); then CANCEL cancels it. A cancel call meanwhile ends the wait."""
        deadline = time.monotonic() + submission.wait_seconds * max(0.0, self.config.wait_scale)
        while True:
            now = time.monotonic()
            with self._lock:
                statement.settle(now, self.config)
                if statement.state(now, self.config) not in ACTIVE:
                    return
                statement.last_polled_at = now
            if now >= deadline:
                break
            time.sleep(max(0.001, min(_WAIT_STEP_SECONDS, deadline - now, statement.finishes_at - now)))
        if submission.wait_seconds > 0 and submission.on_wait_timeout == "CANCEL":
            with self._lock:
                statement.cancel(time.monotonic(), self.config)

    def _get_statement(self, request: Request, statement_id: str) -> Response:
        statement = self._find(statement_id)
        with self._lock:
            now = time.monotonic()
            if statement.state(now, self.config) in ACTIVE:
                statement.last_polled_at = now
        return self._json(self._statement_body(request, statement))

    def _cancel(self, statement_id: str) -> Response:
        statement = self._find(statement_id)
        if not self.config.cancel_ignored:
            with self._lock:
                statement.cancel(time.monotonic(), self.config)
        return self._json({})

    def _get_chunk(self, request: Request, statement_id: str, index_text: str) -> Response:
        statement = self._find(statement_id)
        result = self._result_of(statement)
        if not index_text.isdigit() or int(index_text) >= len(result.chunks):
            raise invalid(
                f"chunk_index {index_text} is out of range: the result has {len(result.chunks)} chunks"
            )
        return self._json(self._chunk_body(request, statement.id, result, result.chunks[int(index_text)]))

    def _find(self, statement_id: str) -> _Statement:
        """The statement (settled: abandoned ones canceled); 404 when unknown or forgotten."""
        now = time.monotonic()
        with self._lock:
            statement = self._statements.get(statement_id)
            if statement is not None:
                statement.settle(now, self.config)
                if statement.state(now, self.config) != "GONE":
                    return statement
        raise DatabricksApiError(404, "NOT_FOUND", f"The statement {statement_id} was not found.")

    def _result_of(self, statement: _Statement) -> _Result:
        with self._lock:
            state = statement.state(time.monotonic(), self.config)
        if state == "CLOSED":
            raise DatabricksApiError(404, "NOT_FOUND", f"The result of statement {statement.id} has expired.")
        if state != "SUCCEEDED" or not isinstance(statement.outcome, _Result):
            raise DatabricksApiError(
                400, "BAD_REQUEST", f"Statement {statement.id} has no result: it is {state}."
            )
        return statement.outcome

    def _forget(self, path: str) -> None:
        """The statement a request names is forgotten now (404 from then on)."""
        for pattern in (CHUNK_PATH, CANCEL_PATH, STATEMENT_PATH):
            if match := pattern.fullmatch(path.rstrip("/")):
                with self._lock:
                    statement = self._statements.get(match.group(1))
                    if statement is not None:
                        statement.forgotten = True
                return

    # -- answers --

    def _statement_body(self, request: Request, statement: _Statement) -> dict[str, Any]:
        with self._lock:
            state = statement.state(time.monotonic(), self.config)
        status: dict[str, Any] = {"state": state}
        body: dict[str, Any] = {"statement_id": statement.id, "status": status}
        outcome = statement.outcome
        if state == "FAILED" and isinstance(outcome, _Failure):
            status["error"] = {"error_code": "BAD_REQUEST", "message": outcome.message}
            if outcome.sql_state:
                status["sql_state"] = outcome.sql_state
        if state == "SUCCEEDED" and isinstance(outcome, _Result):
            body["manifest"] = _manifest(outcome)
            if outcome.chunks:
                body["result"] = self._chunk_body(request, statement.id, outcome, outcome.chunks[0])
        return body

    def _chunk_body(
        self, request: Request, statement_id: str, result: _Result, chunk: _Chunk
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "chunk_index": chunk.index,
            "row_offset": chunk.row_offset,
            "row_count": chunk.row_count,
        }
        if chunk.index + 1 < len(result.chunks):
            body["next_chunk_index"] = chunk.index + 1
            body["next_chunk_internal_link"] = (
                f"{STATEMENTS_PATH}/{statement_id}/result/chunks/{chunk.index + 1}"
            )
        if result.disposition == "INLINE":
            rows = result.rows[chunk.row_offset : chunk.row_end]
            return {**body, "data_array": [_render_row(row, result.types) for row in rows]}
        return {
            "external_links": [
                {**body, "byte_count": chunk.byte_count, **self._issue_link(request, statement_id, chunk)}
            ]
        }

    def _issue_link(self, request: Request, statement_id: str, chunk: _Chunk) -> dict[str, Any]:
        token = secrets.token_urlsafe(24)
        headers = dict(self.config.link_headers)
        ttl = self.config.link_ttl_seconds
        with self._lock:
            self._links[token] = _Link(statement_id, chunk.index, time.monotonic(), headers)
        # the host the client reached the API by, on the storage port: another origin
        host = url_host(urlsplit(request.host_url).hostname or "127.0.0.1")
        port = urlsplit(self.link_base_url).port
        expiration = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl)
        link: dict[str, Any] = {
            "external_link": f"http://{host}:{port}/storage/{token}",
            "expiration": expiration.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        if headers:
            link["http_headers"] = headers
        return link

    @staticmethod
    def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return Response(
            json.dumps(body, separators=(",", ":")), status=status, headers=headers, content_type=JSON_TYPE
        )

    def _error(
        self, error: DatabricksApiError | OAuthError, headers: dict[str, str] | None = None
    ) -> Response:
        if isinstance(error, OAuthError):
            return self._json(
                {"error": error.error, "error_description": error.description}, error.status, headers
            )
        return self._json({"error_code": error.error_code, "message": error.message}, error.status, headers)

    def _fault(self, operation: str | None, fault: InjectedFault) -> Response:
        status = fault.status or 500
        headers = {"Retry-After": str(math.ceil(fault.retry_after))} if fault.retry_after is not None else {}
        if operation == "token":
            error = OAuthError(status, "temporarily_unavailable", f"emulated token endpoint error {status}")
            return self._error(error, headers)
        if status == 502:  # what the load balancer in front of the workspace answers
            return Response(_GATEWAY_PAGE, status=502, headers=headers, content_type="text/html")
        code = _ERRORS_BY_STATUS.get(status, "UNKNOWN")
        return self._error(DatabricksApiError(status, code, f"emulated error {status}"), headers)

    # -- OAuth --

    def _issue_token(self, request: Request) -> Response:
        if request.form.get("grant_type") != "client_credentials":
            raise OAuthError(400, "unsupported_grant_type", "grant_type must be client_credentials")
        basic = (
            request.authorization if request.authorization and request.authorization.type == "basic" else None
        )
        client_id = basic.username if basic else request.form.get("client_id")
        client_secret = (basic.password if basic else request.form.get("client_secret")) or ""
        wrong_id = self._client_id is not None and not _same(client_id or "", self._client_id)
        wrong_secret = self._client_secret is not None and not _same(client_secret, self._client_secret)
        if not client_id or wrong_id or wrong_secret:
            raise OAuthError(401, "invalid_client", "Client authentication failed")
        scopes = request.form.get("scope", "").split()
        if not scopes or not set(scopes) <= OAUTH_SCOPES:
            raise OAuthError(400, "invalid_scope", f"scope must be among {sorted(OAUTH_SCOPES)}")
        seconds = max(0.0, self.config.oauth_token_seconds)
        access_token = secrets.token_urlsafe(32)
        with self._lock:
            self._issued_tokens[access_token] = time.monotonic() + seconds
        body = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": math.ceil(seconds),
            "scope": " ".join(scopes),
        }
        return self._json(body, headers={"Cache-Control": "no-store"})

    @staticmethod
    def _host_metadata(request: Request) -> dict[str, Any]:
        base = request.host_url.rstrip("/")
        return {
            "oidc_endpoint": f"{base}/oidc",
            "workspace_id": WORKSPACE_ID,
            "cloud": "AWS",
            "host_type": "workspace",
        }

    @staticmethod
    def _oauth_metadata(request: Request) -> dict[str, Any]:
        oidc = f"{request.host_url.rstrip('/')}/oidc"
        return {
            "issuer": oidc,
            "authorization_endpoint": f"{oidc}/v1/authorize",
            "token_endpoint": f"{oidc}/v1/token",
            "jwks_uri": f"{oidc}/jwks.json",
            "grant_types_supported": ["client_credentials", "authorization_code", "refresh_token"],
            "scopes_supported": sorted(OAUTH_SCOPES),
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        }

    # -- storage (the EXTERNAL_LINKS listener) --

    def _storage_answer(self, request: Request) -> Response:
        match = STORAGE_PATH.fullmatch(request.path)
        if match is None or request.method not in ("GET", "HEAD"):
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        token = match.group(1)
        fault = self.faults.take("link", request)
        if fault is None:
            return self._download(request, token)
        if fault.expire:
            with self._lock:
                if token in self._links:
                    self._links[token] = replace(self._links[token], issued_at=-math.inf)
        return self.answer_with_fault(
            request,
            fault,
            lambda: self._download(request, token),
            lambda f: _s3_fault(f.status or 500, f.retry_after),
        )

    def _download(self, request: Request, token: str) -> Response:
        if "Authorization" in request.headers:  # a presigned URL carries its own credential
            return _s3_error(
                400,
                "InvalidArgument",
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query "
                "string parameter or the Authorization header should be specified",
                ArgumentName="Authorization",
            )
        with self._lock:
            link = self._links.get(token)
        if link is None:
            return _s3_error(403, "AccessDenied", "Access Denied")
        ttl = self.config.link_ttl_seconds
        if time.monotonic() >= link.issued_at + ttl:
            return _s3_error(403, "AccessDenied", "Request has expired", **{"X-Amz-Expires": f"{ttl:g}"})
        for name, value in link.headers.items():
            given = request.headers.get(name)
            if given is None:
                return _s3_error(
                    400, "InvalidRequest", f"The request is missing the header {name} it was signed with."
                )
            if not _same(given, value):
                return _s3_error(403, "AccessDenied", f"The header {name} does not match the signed value.")
        try:
            result = self._result_of(self._find(link.statement_id))
        except DatabricksApiError:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        content_type = "text/csv" if result.format == "CSV" else JSON_TYPE
        return Response(result.body(result.chunks[link.chunk_index]), content_type=content_type)

    # -- control API (tests) --

    def _control(self, request: Request) -> Response:
        return self.control(
            request,
            self.config,
            {
                ("GET", "statements"): self.statement_states,
                ("GET", "tokens"): lambda: {"token_requests": self.token_requests},
            },
        )


def _manifest(result: _Result) -> dict[str, Any]:
    columns = []
    for position, (name, kind) in enumerate(zip(result.names, result.types, strict=True)):
        column: dict[str, Any] = {
            "name": name,
            "position": position,
            "type_name": kind.type_name,
            "type_text": kind.type_text,
        }
        if kind.precision is not None:
            column |= {"type_precision": kind.precision, "type_scale": kind.scale}
        columns.append(column)
    external = result.disposition == "EXTERNAL_LINKS"  # INLINE answers carry no byte counts
    chunks = []
    for chunk in result.chunks:
        info = {"chunk_index": chunk.index, "row_offset": chunk.row_offset, "row_count": chunk.row_count}
        chunks.append(info | ({"byte_count": chunk.byte_count} if external else {}))
    manifest: dict[str, Any] = {
        "format": result.format,
        "schema": {"column_count": len(columns), "columns": columns},
        "total_chunk_count": len(chunks),
        "total_row_count": len(result.rows),
        "truncated": result.truncated,
    }
    if chunks:
        manifest["chunks"] = chunks
    if external:
        manifest["total_byte_count"] = sum(chunk.byte_count for chunk in result.chunks)
    return manifest


def _s3_error(status: int, code: str, message: str, **details: str) -> Response:
    extra = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in details.items())
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>{extra}"
        f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
    )
    return Response(body, status=status, content_type="application/xml")


def _s3_fault(status: int, retry_after: float | None) -> Response:
    code, message = _S3_ERRORS_BY_STATUS.get(status, ("InternalError", f"emulated error {status}"))
    response = _s3_error(status, code, message)
    if retry_after is not None:
        response.headers["Retry-After"] = str(math.ceil(retry_after))
    return response


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def serve_forever(host: str, port: int, **kwargs: Any) -> None:
    """Serve a `DatabricksEmulator(**kwargs)` on host:port until interrupted
    (`query-relay emulate databricks`); its storage listener takes a free port beside it."""
    DatabricksEmulator(**kwargs).serve_forever(host, port)
