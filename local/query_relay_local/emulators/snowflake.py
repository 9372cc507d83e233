"""A Snowflake SQL API v2 emulator: statements on the shared warehouse (`warehouse`) over real HTTP.

Endpoints (docs/upstreams/snowflake.md; the public spec: snowflakedb/snowflake-rest-api-specs
`specifications/sqlapi.yaml`):
- `POST /api/v2/statements?async=true[&requestId=<uuid>][&retry=true][&nullable=false]` with body
  `{statement, timeout, database, schema, warehouse, role, bindings, parameters}` starts a
  statement: 202 QueryStatus (`code` 333334); without `async=true` the call waits up to
  `config.sync_wait_seconds` (Snowflake's 45 s) and answers 200 ResultSet, 422 or 202. A
  `requestId` seen before answers the statement it started (never a second one). Content-Type
  other than application/json is 415 (none at all is taken as JSON, as the spec says); an Accept
  that refuses application/json is 406.
- `GET /api/v2/statements/{handle}` answers 202 QueryStatus while running, 200 ResultSet (with
  partition 0's `data`) when done, 422 QueryFailureStatus when it failed or was canceled (code
  000604, sqlState 57014), 404 (code 000709) for an unknown or expired handle.
- `GET /api/v2/statements/{handle}?partition=N` answers `{"data": [...]}` for partition N >= 1
  (partition 0 is the whole ResultSet). Partitions >= 1 are gzipped (`Content-Encoding: gzip`)
  when the client accepts gzip (`config.gzip_partitions`: "accepted", "always" as Snowflake is
  reported to do, or "never"). A partition out of range answers `config.partition_out_of_range_status`
  (400 by default: the spec only says N ranges from 0 to the partitions minus 1, and 422 means
  "the statement failed", which a bad partition number does not mean; 422 is the other variant).
  ResultSet and partition answers carry a `Link` header (first / prev / next / last partitions).
- `POST /api/v2/statements/{handle}/cancel` answers 200 CancelStatus (code 000604) and the statement
  reads as canceled from then on. A statement that already ended stays as it ended and the cancel
  answers 422 (the spec's "an error occurred when cancelling"): its QueryFailureStatus when it
  failed or was canceled, code 000605 when it succeeded (`config.cancel_ended_status` 200 answers
  CancelStatus instead, the other way a server may say it).

Values (every one a JSON string, or null; `nullable=false` at submit gives the string "null"):

| warehouse    | rowType.type  | value                                                                |
|--------------|---------------|----------------------------------------------------------------------|
| integer      | fixed (p38 s0)| "42"                                                                 |
| decimal(p,s) | fixed (p, s)  | "123.4500" (always `scale` fraction digits)                          |
| double       | real          | shortest round-trip repr "1.5", "1e+300"; "inf", "-inf", "NaN"       |
| string       | text          | the text                                                             |
| boolean      | boolean       | "true" / "false"                                                     |
| date         | date          | days since 1970-01-01: "19849", "-165"                               |
| time         | time (s9)     | seconds since midnight, 9 fraction digits: "45296.123000000"         |
| timestamp    | timestamp_ntz | epoch seconds, 9 fraction digits: "1715000000.123456000", "-1.500000000" |
| timestamp_tz | timestamp_tz  | UTC epoch seconds, offset minutes + 1440: "1714998896.500000000 1560" |
| binary       | binary        | upper-case hex: "0001FEFF"                                           |
| json         | variant       | JSON text pretty-printed with a 2-space indent, as Snowflake prints it |

The TIMESTAMP_TZ, TIME, DATE and negative-timestamp encodings follow the official Python
connector's converter (snowflakedb/snowflake-connector-python `converter.py`:
`_TIMESTAMP_TZ_to_python` splits "value tz" and takes `int(tz) - 1440` minutes; `_DATE_to_python`
multiplies days by 86400; `get_seconds_microseconds` reads a signed "seconds.fraction").
Type names are lower case, as Snowflake sends them (`config.uppercase_type_names` for FIXED,
TEXT...). Column names are upper-cased (Snowflake's unquoted identifiers; `uppercase_column_names`).

Bindings `{"1": {"type", "value"}, ...}` bind `?` in order (keys that are not numbers bind
`:name`): FIXED ("42", "1.50"), REAL, TEXT, BOOLEAN, DATE ("2024-05-06" or epoch milliseconds),
TIME ("12:34:56.5" or nanoseconds since midnight), TIMESTAMP_NTZ / TIMESTAMP_LTZ ("2024-05-06
12:34:56" or epoch nanoseconds), TIMESTAMP_TZ (ISO with offset, or "epochnanos offset+1440"),
BINARY (hex); a null value is NULL. What the warehouse refuses is a 422 with its sqlState (42000
syntax / unknown column, 42S02 unknown table, 22018 bad value, 07002 missing binding).

Auth, every call: `Authorization: Bearer <token>` with `X-Snowflake-Authorization-Token-Type`
KEYPAIR_JWT (RS256 signed by the registered key; `iss` `<ACCOUNT>.<USER>.SHA256:<base64 sha256 of
the public key's DER SubjectPublicKeyInfo>`, `sub` `<ACCOUNT>.<USER>`, `exp` in the future and at
most one hour after `iat`), OAUTH or PROGRAMMATIC_ACCESS_TOKEN (compared with the configured
token); no header means OAUTH. Refusals are 401 `{code, message, ...}`: 390144 "JWT token is
invalid. [reason]" for key-pair JWTs, 390303 for OAuth tokens and PATs, 390101 for a missing or
non-Bearer Authorization (the last two codes are the emulator's choice). No answer ever quotes a
credential. All credentials None: any request is accepted.

Time: a statement runs `config.query_seconds` (read at submit), or fails after
`config.fail_after_seconds` (statements submitted while it is set) with `fail_code`,
`fail_sql_state`, `fail_message`, or times out after the body's `timeout` (code 000630, sqlState
57014). It is forgotten `config.statement_ttl_seconds` after submission (404 000709; read when a
statement is looked at). Results are split every `config.partition_rows` rows (read at submit):
5000 rows at 125 rows make 40 partitions. `partitionInfo` sizes are those of the JSON bodies
(uncompressed, and gzipped), measured up to `config.exact_sizes_max_rows` result rows and
estimated from a sample of each partition above. `config.numbers_rows` sizes the `numbers` table.
`sql_errors_at_submit` (default true) answers a statement the warehouse refuses with 422 at once;
false lets it run and fail like a slow error (202, then 422 on GET). An async submit answers 202
even when the statement is already done; `async_done_answers_result` answers 200 ResultSet then
(the "200 if already done" the upstream notes allow).

Test hooks, in process and over HTTP (no auth, not logged in `requests`):
- `config` (`SnowflakeEmulatorConfig`); HTTP `GET|POST /_emulator/config`.
- `fail_next(operation, status=None, ...)`: operations `submit`, `status` (GET without
  `partition`), `partition` (GET with `partition`), `cancel`, or `any`; a status answers
  Snowflake's `{code, message}` (429 with Retry-After when given, 502 an HTML gateway page).
  Other kinds as in emulators.http; `expire` expires the statement in the path. HTTP
  `POST|GET|DELETE /_emulator/faults`.
- `statement_states()` -> `{handle: "running" | "succeeded" | "failed" | "canceled" | "expired"}`,
  `statements_started` (how many statements ever started: a retried submit with the same
  requestId adds none); HTTP `GET /_emulator/statements` -> `{"states": {...}, "started": n}`.
- `requests` (method, path, query) and `submitted` (the JSON bodies of submits, in order); HTTP
  `GET|DELETE /_emulator/requests`. `bearer_tokens_seen`: every bearer token presented (the JWTs a
  client signed), for leak tests (in process only).
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import hmac
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from werkzeug.wrappers import Request, Response

from .http import EmulatorServer, update_config
from .warehouse import NUMBERS_ROWS, SqlError, WColumn, WResult, execute

logger = logging.getLogger(__name__)

__all__ = ["STATEMENTS_PATH", "SnowflakeEmulator", "SnowflakeEmulatorConfig", "serve_forever"]

JSON_TYPE = "application/json"
STATEMENTS_PATH = "/api/v2/statements"
STATEMENT_PATH = re.compile(rf"{re.escape(STATEMENTS_PATH)}/([^/]+)")
CANCEL_PATH = re.compile(rf"{re.escape(STATEMENTS_PATH)}/([^/]+)/cancel")
OPERATIONS = ("submit", "status", "partition", "cancel")

RUNNING_CODE, RUNNING_MESSAGE = (
    "333334",
    "Asynchronous execution in progress. Use provided query id to perform query monitoring and management.",
)
SUCCESS_CODE, SUCCESS_MESSAGE = "090001", "Statement executed successfully."
CANCELED_CODE, CANCELED_STATE, CANCELED_MESSAGE = "000604", "57014", "SQL execution canceled"
NOT_FOUND_CODE = "000709"
TIMEOUT_CODE = "000630"
MAX_TIMEOUT_SECONDS = 604_800  # what `timeout: 0` means
JWT_MAX_LIFETIME_SECONDS = 3600
JWT_LEEWAY_SECONDS = 60  # clock skew allowed on exp / iat

# The Snowflake error code the emulator gives with each warehouse sqlState.
_CODES_BY_SQL_STATE = {"42000": "001003", "42S02": "002003", "22018": "100038", "07002": "002049"}
_ERRORS_BY_STATUS = {
    400: ("390400", "emulated: bad request"),
    401: ("390144", "JWT token is invalid. [emulated]"),
    403: ("390102", "emulated: the SQL API is not enabled for this account"),
    404: ("390404", "emulated: not found"),
    408: (TIMEOUT_CODE, "emulated: statement reached its timeout and was canceled"),
    422: ("000603", "emulated: SQL execution internal error"),
    429: ("390500", "emulated: too many requests, retry later"),
    500: ("390500", "emulated internal error"),
    503: ("390503", "emulated: the service is unavailable"),
    504: ("390504", "emulated: the gateway timed out"),
}
_GATEWAY_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
)
_EPOCH = dt.datetime(1970, 1, 1)
_EPOCH_DATE = dt.date(1970, 1, 1)
_EPOCH_UTC = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_GZIP_CHOICES = ("accepted", "always", "never")
_SIZE_SAMPLE = 32  # rows of a partition rendered to estimate its size


@dataclass
class SnowflakeEmulatorConfig:
    """Knobs tests turn at runtime (in process, or via `POST /_emulator/config`)."""

    query_seconds: float = 0.0
    sync_wait_seconds: float = 45.0
    statement_ttl_seconds: float = 86_400.0  # Snowflake keeps results for 24 hours
    partition_rows: int = 1000
    exact_sizes_max_rows: int = 100_000  # partitionInfo sizes measured up to this many rows, estimated above
    numbers_rows: int = NUMBERS_ROWS
    fail_after_seconds: float | None = None
    fail_code: str = "100097"
    fail_sql_state: str = "22000"
    fail_message: str = "emulated failure: the warehouse ran out of memory while executing the statement"
    sql_errors_at_submit: bool = True
    async_done_answers_result: bool = False  # an async submit of a finished statement: 200 ResultSet
    gzip_partitions: str = "accepted"  # one of _GZIP_CHOICES
    partition_out_of_range_status: int = 400
    uppercase_type_names: bool = False
    uppercase_column_names: bool = True
    cancel_ended_status: int = 422  # a cancel of a statement that already ended: 422, or 200 as if canceled


class SnowflakeApiError(Exception):
    """An error answer: `{code, message}` plus the statement fields when it concerns one."""

    def __init__(self, status: int, code: str, message: str, *, sql_state: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.sql_state = sql_state


# --- statements ----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Statement:
    """One statement; its life is computed from its timestamps (monotonic seconds)."""

    handle: str
    request_id: str | None
    created_at: float
    created_on_ms: int
    ends_at: float
    partition_rows: int
    nulls_as_text: bool
    result: WResult | None
    # how it ends: None = succeeds; else (code, sqlState, message) of its failure
    failure: tuple[str, str, str] | None = None
    canceled_at: float | None = None
    sizes: list[tuple[int, int, int]] | None = field(default=None, repr=False)  # rows, raw, gzipped

    def life(self, now: float, ttl_seconds: float) -> str:
        if now >= self.created_at + ttl_seconds:
            return "expired"
        if self.canceled_at is not None and self.canceled_at <= now:
            return "canceled"
        if now < self.ends_at:
            return "running"
        return "failed" if self.failure is not None else "succeeded"

    @property
    def status_url(self) -> str:
        return f"{STATEMENTS_PATH}/{self.handle}"

    def partition_count(self) -> int:
        rows = len(self.result.rows) if self.result is not None else 0
        return max(1, math.ceil(rows / self.partition_rows))

    def partition_rows_at(self, index: int) -> Sequence[list[Any]]:
        assert self.result is not None
        start = index * self.partition_rows
        return self.result.rows[start : start + self.partition_rows]


# --- value rendering -----------------------------------------------------------------------------


def _micros(delta: dt.timedelta) -> int:
    return delta // dt.timedelta(microseconds=1)


def _seconds_text(micros: int) -> str:
    """Signed seconds with 9 fraction digits, as Snowflake writes epoch and time values."""
    return f"{Decimal(micros).scaleb(-6):.9f}"


def _render_double(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def _render_timestamp_tz(value: dt.datetime) -> str:
    offset = value.utcoffset() or dt.timedelta(0)
    return f"{_seconds_text(_micros(value - _EPOCH_UTC))} {offset // dt.timedelta(minutes=1) + 1440}"


def _renderer(column: WColumn) -> Callable[[Any], str]:
    """How a non-null value of `column` is written (see the module doc's table)."""
    match column.type:
        case "decimal":
            scale = column.scale or 0
            return lambda value: f"{Decimal(value):.{scale}f}"
        case "double":
            return _render_double
        case "boolean":
            return lambda value: "true" if value else "false"
        case "date":
            return lambda value: str((value - _EPOCH_DATE).days)
        case "time":
            return lambda value: _seconds_text(
                ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond
            )
        case "timestamp":
            return lambda value: _seconds_text(_micros(value - _EPOCH))
        case "timestamp_tz":
            return _render_timestamp_tz
        case "binary":
            return lambda value: bytes(value).hex().upper()
        case "json":
            return lambda value: json.dumps(value, indent=2, ensure_ascii=False)
        case _:  # integer, string
            return str


_ROW_TYPES: dict[str, tuple[str, dict[str, Any]]] = {
    # warehouse type -> (Snowflake type, the rowType fields that differ from the defaults)
    "integer": ("fixed", {"precision": 38, "scale": 0}),
    "decimal": ("fixed", {}),
    "double": ("real", {}),
    "string": ("text", {"length": 16_777_216, "byteLength": 16_777_216}),
    "boolean": ("boolean", {}),
    "date": ("date", {}),
    "time": ("time", {"precision": 0, "scale": 9}),
    "timestamp": ("timestamp_ntz", {"precision": 0, "scale": 9}),
    "timestamp_tz": ("timestamp_tz", {"precision": 0, "scale": 9}),
    "binary": ("binary", {"length": 8_388_608, "byteLength": 8_388_608}),
    "json": ("variant", {}),
}


def _row_type(column: WColumn, config: SnowflakeEmulatorConfig) -> dict[str, Any]:
    kind, extra = _ROW_TYPES[column.type]
    described: dict[str, Any] = {
        "name": column.name.upper() if config.uppercase_column_names else column.name,
        "database": "",
        "schema": "",
        "table": "",
        "type": kind.upper() if config.uppercase_type_names else kind,
        "length": None,
        "precision": None,
        "scale": None,
        "nullable": column.nullable,
        "byteLength": None,
        "collation": None,
        **extra,
    }
    if column.type == "decimal":
        described["precision"], described["scale"] = column.precision, column.scale
    return described


def _render_rows(columns: list[WColumn], rows: Sequence[list[Any]], nulls_as_text: bool) -> list[list[Any]]:
    renderers = [_renderer(column) for column in columns]
    null = "null" if nulls_as_text else None
    return [
        [null if value is None else render(value) for render, value in zip(renderers, row, strict=True)]
        for row in rows
    ]


# --- bindings ------------------------------------------------------------------------------------


def _binding_value(kind: str, value: Any) -> Any:
    """A binding's wire value as the Python value the warehouse takes (ValueError if it is bad)."""
    if value is None:
        return None
    text = str(value).strip()
    match kind:
        case "FIXED":
            return Decimal(text) if "." in text or "e" in text.lower() else int(text)
        case "REAL":
            return float(text)
        case "TEXT":
            return str(value)
        case "BOOLEAN":
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"'{text}' is not a boolean")
            return text.lower() in ("true", "1")
        case "DATE":
            if text.lstrip("-").isdigit():  # epoch milliseconds, as the connectors send it
                return _EPOCH_DATE + dt.timedelta(milliseconds=int(text))
            return dt.date.fromisoformat(text)
        case "TIME":
            if text.isdigit():  # nanoseconds since midnight
                return (_EPOCH + dt.timedelta(microseconds=int(text) // 1000)).time()
            return dt.time.fromisoformat(text)
        case "TIMESTAMP_NTZ" | "TIMESTAMP_LTZ":
            moment = _timestamp_binding(text)
            return moment if kind == "TIMESTAMP_NTZ" else moment.replace(tzinfo=dt.UTC)
        case "TIMESTAMP_TZ":
            epoch, _, offset = text.partition(" ")
            if offset:
                zone = dt.timezone(dt.timedelta(minutes=int(offset) - 1440))
                return _timestamp_binding(epoch).replace(tzinfo=dt.UTC).astimezone(zone)
            moment = dt.datetime.fromisoformat(text)
            return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
        case "BINARY":
            return bytes.fromhex(text)
    raise ValueError(f"unsupported bind type {kind}")


def _timestamp_binding(text: str) -> dt.datetime:
    if text.lstrip("-").isdigit():  # epoch nanoseconds
        return _EPOCH + dt.timedelta(microseconds=int(text) // 1000)
    moment = dt.datetime.fromisoformat(text)
    return moment.astimezone(dt.UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _bindings(raw: Any) -> Sequence[Any] | Mapping[str, Any]:
    """Body `bindings` as warehouse params: positions "1".."n" as a list, other keys by name."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise SnowflakeApiError(400, "390400", "bindings must be an object")
    values: dict[str, Any] = {}
    for key, binding in raw.items():
        if not isinstance(binding, dict) or "type" not in binding:
            raise SnowflakeApiError(400, "390400", f"binding {key} must be an object with a type and a value")
        kind = str(binding["type"]).upper()
        try:
            values[key] = _binding_value(kind, binding.get("value"))
        except (ValueError, TypeError, ArithmeticError, InvalidOperation, OverflowError):
            raise SqlError(f"Bind variable {key}: value is not a valid {kind}", "22018") from None
    if not all(key.isdigit() for key in values):
        return values
    positions = sorted(int(key) for key in values)
    if positions and positions != list(range(1, len(positions) + 1)):
        missing = next(n for n in range(1, positions[-1] + 1) if str(n) not in values)
        raise SqlError(f"Bind variable for position {missing} not set.", "07002")
    return [values[str(n)] for n in range(1, len(positions) + 1)]


# --- the emulator --------------------------------------------------------------------------------


class SnowflakeEmulator(EmulatorServer):
    """The Snowflake SQL API emulator; `start()` it (or use `with`) and point a client at `base_url`."""

    def __init__(
        self,
        account: str | None = None,
        user: str | None = None,
        public_key_pem: bytes | None = None,
        oauth_token: str | None = None,
        pat: str | None = None,
    ) -> None:
        super().__init__(OPERATIONS)
        self.config = SnowflakeEmulatorConfig()
        self._account = (account or "").upper()
        self._user = (user or "").upper()
        self._public_key: PublicKeyTypes | None = None
        self._fingerprint = ""
        if public_key_pem is not None:
            self._public_key = serialization.load_pem_public_key(public_key_pem)
            der = self._public_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            self._fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode()
        self._oauth_token = oauth_token
        self._pat = pat
        self._open = all(item is None for item in (account, user, public_key_pem, oauth_token, pat))
        self._lock = threading.Lock()
        self._statements: dict[str, _Statement] = {}
        self._by_request_id: dict[str, str] = {}
        self.statements_started = 0
        self.submitted: list[dict[str, Any]] = []
        # Every bearer token presented (JWTs included): what a leak test must never find printed.
        self.bearer_tokens_seen: set[str] = set()

    def __repr__(self) -> str:
        return f"SnowflakeEmulator(base_url={self._base_url!r}, auth_required={not self._open})"

    def statement_states(self) -> dict[str, str]:
        now = time.monotonic()
        with self._lock:
            ttl = self.config.statement_ttl_seconds
            return {handle: statement.life(now, ttl) for handle, statement in self._statements.items()}

    def clear_requests(self) -> None:
        super().clear_requests()
        with self._lock:
            self.submitted.clear()

    # -- dispatch --

    def handle(self, request: Request) -> Response:
        if request.path.startswith(self.control_prefix):
            return self._control(request)
        try:
            operation, answer = self._route(request)
            self._authenticate(request)
            self._negotiate(request, operation)
            fault = self.faults.take(operation, request)
            if fault is None:
                return answer()
            if fault.expire:
                self._expire(request.path)
            return self.answer_with_fault(
                request,
                fault,
                lambda: self._guarded(answer),
                lambda f: self._fault(f.status or 500, f.retry_after),
            )
        except SnowflakeApiError as error:
            return self._error(error)
        except Exception:  # answer in Snowflake's envelope even when the emulator has a bug
            logger.exception("Snowflake emulator failed on %s %s", request.method, request.path)
            return self._error(SnowflakeApiError(500, "390500", "unexpected error in the Snowflake emulator"))

    def _guarded(self, answer: Callable[[], Response]) -> Response:
        """`answer` giving its Snowflake error as `handle` would (faults run it outside that handler)."""
        try:
            return answer()
        except SnowflakeApiError as error:
            return self._error(error)

    def _route(self, request: Request) -> tuple[str, Callable[[], Response]]:
        path, method = request.path.rstrip("/"), request.method
        if path == STATEMENTS_PATH:
            operation, allowed, answer = "submit", "POST", lambda: self._submit(request)
        elif match := CANCEL_PATH.fullmatch(path):
            handle = match.group(1)
            operation, allowed, answer = "cancel", "POST", lambda: self._cancel(handle)
        elif match := STATEMENT_PATH.fullmatch(path):
            handle = match.group(1)
            operation = "partition" if "partition" in request.args else "status"
            allowed, answer = "GET", lambda: self._get(request, handle)
        else:
            raise SnowflakeApiError(404, "390404", f"Not Found: {request.path}")
        if method != allowed:
            raise SnowflakeApiError(405, "390405", "Method Not Allowed")
        return operation, answer

    def _negotiate(self, request: Request, operation: str) -> None:
        """415 for a body that says it is not JSON (none is taken as JSON); 406 when the client
        will not take JSON."""
        if operation == "submit" and request.content_type and request.mimetype != JSON_TYPE:
            raise SnowflakeApiError(415, "390415", f"Unsupported media type: {request.mimetype}")
        if "Accept" in request.headers and request.accept_mimetypes.best_match([JSON_TYPE]) is None:
            raise SnowflakeApiError(406, "390406", "Not acceptable: the API answers application/json only")

    # -- auth --

    def _authenticate(self, request: Request) -> None:
        if self._open:
            return
        scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
        token = token.strip()
        if token:
            with self._lock:
                self.bearer_tokens_seen.add(token)
        if scheme.lower() != "bearer" or not token:
            raise SnowflakeApiError(401, "390101", "Authorization header is missing or not a Bearer token.")
        # the spec: "If not specified, OAUTH is assumed."
        token_type = (
            request.headers.get("X-Snowflake-Authorization-Token-Type", "").strip().upper() or "OAUTH"
        )
        checks: dict[str, Callable[[], None]] = {
            "OAUTH": lambda: self._check_token(token, self._oauth_token, "Invalid OAuth access token."),
            "PROGRAMMATIC_ACCESS_TOKEN": lambda: self._check_token(
                token, self._pat, "Invalid programmatic access token."
            ),
            "KEYPAIR_JWT": lambda: self._check_jwt(token),
        }
        check = checks.get(token_type)
        if check is None:
            raise SnowflakeApiError(401, "390101", "Unsupported X-Snowflake-Authorization-Token-Type.")
        check()

    @staticmethod
    def _check_token(token: str, expected: str | None, message: str) -> None:
        if expected is None or not hmac.compare_digest(token.encode(), expected.encode()):
            raise SnowflakeApiError(401, "390303", message)

    def _check_jwt(self, token: str) -> None:
        def invalid(reason: str) -> SnowflakeApiError:
            return SnowflakeApiError(401, "390144", f"JWT token is invalid. [{reason}]")

        if self._public_key is None:
            raise invalid("no public key is registered for the user")
        try:
            claims = jwt.decode(
                token,
                self._public_key,  # type: ignore[arg-type]  # an RSA key for RS256
                algorithms=["RS256"],
                options={"require": ["iss", "sub", "iat", "exp"]},
                leeway=JWT_LEEWAY_SECONDS,
            )
        except jwt.ExpiredSignatureError:
            raise invalid("the token has expired") from None
        except jwt.InvalidSignatureError:
            raise invalid("the signature does not match the registered public key") from None
        except jwt.PyJWTError as error:
            raise invalid(type(error).__name__) from None
        subject = f"{self._account}.{self._user}"
        if claims["sub"] != subject:
            raise invalid("sub is not <ACCOUNT>.<USER> of the registered user")
        if claims["iss"] != f"{subject}.{self._fingerprint}":
            raise invalid("iss does not name the registered user and public key fingerprint")
        if (
            not isinstance(claims["iat"], int | float)
            or claims["exp"] - claims["iat"] > JWT_MAX_LIFETIME_SECONDS
        ):
            raise invalid("exp is more than one hour after iat")

    # -- endpoints --

    def _submit(self, request: Request) -> Response:
        body = self._body(request)
        with self._lock:
            self.submitted.append(body)
        request_id = request.args.get("requestId") or None
        statement = self._existing(request_id) or self._start(body, request_id, request)
        if request.args.get("async", "").lower() != "true":
            self._wait(statement)
        elif self._life(statement) == "succeeded" and not self.config.async_done_answers_result:
            # Snowflake answers an async submit with its QueryStatus, however quick the statement
            return self._json(
                self._status_body(statement, RUNNING_CODE, "00000", RUNNING_MESSAGE), status=202
            )
        return self._answer(statement)

    def _existing(self, request_id: str | None) -> _Statement | None:
        """The statement an earlier submit with this requestId started (still remembered)."""
        if request_id is None:
            return None
        now = time.monotonic()
        with self._lock:
            statement = self._statements.get(self._by_request_id.get(request_id, ""))
        if statement is None or statement.life(now, self.config.statement_ttl_seconds) == "expired":
            return None
        return statement

    def _start(self, body: dict[str, Any], request_id: str | None, request: Request) -> _Statement:
        config = self.config
        now = time.monotonic()
        result: WResult | None = None
        failure: tuple[str, str, str] | None = None
        timeout = _timeout(body.get("timeout"))
        try:
            params = _bindings(body.get("bindings"))
            result = execute(body["statement"], params, numbers_rows=config.numbers_rows)
        except SqlError as error:
            failure = (_CODES_BY_SQL_STATE.get(error.sql_state, "001003"), error.sql_state, error.message)
        refused = failure is not None
        duration = max(0.0, config.query_seconds)
        if failure is None and config.fail_after_seconds is not None and config.fail_after_seconds < duration:
            duration = max(0.0, config.fail_after_seconds)
            failure = (config.fail_code, config.fail_sql_state, config.fail_message)
        if failure is None and timeout < duration:
            duration = float(timeout)
            message = f"Statement reached its statement or warehouse timeout of {timeout} second(s)"
            message += " and was canceled."
            failure = (TIMEOUT_CODE, CANCELED_STATE, message)
        if refused and config.sql_errors_at_submit:
            duration = 0.0  # refused when compiled: the submit answers 422 at once
        statement = _Statement(
            handle=str(uuid.uuid4()),
            request_id=request_id,
            created_at=now,
            created_on_ms=int(time.time() * 1000),
            ends_at=now + duration,
            partition_rows=max(1, config.partition_rows),
            nulls_as_text=request.args.get("nullable", "").lower() == "false",
            result=result,
            failure=failure,
        )
        with self._lock:
            # a retry that arrived while this submit was running its statement registered first
            earlier = self._statements.get(self._by_request_id.get(request_id or "", ""))
            if earlier is not None and earlier.life(now, config.statement_ttl_seconds) != "expired":
                return earlier
            self._statements[statement.handle] = statement
            if request_id is not None:
                self._by_request_id[request_id] = statement.handle
            self.statements_started += 1
        return statement

    def _wait(self, statement: _Statement) -> None:
        """Hold a synchronous submit until the statement ends or `sync_wait_seconds` pass."""
        deadline = time.monotonic() + max(0.0, self.config.sync_wait_seconds)
        while True:
            now = time.monotonic()
            if statement.life(now, self.config.statement_ttl_seconds) != "running" or now >= deadline:
                return
            time.sleep(min(0.05, deadline - now, max(0.0, statement.ends_at - now)) or 0.001)

    def _get(self, request: Request, handle: str) -> Response:
        statement = self._find(handle)
        raw_partition = request.args.get("partition")
        if raw_partition is None or self._life(statement) != "succeeded":
            return self._answer(statement)
        try:
            partition = int(raw_partition)
        except ValueError:
            raise SnowflakeApiError(
                400, "390400", f"partition must be an integer, got {raw_partition!r}"
            ) from None
        count = statement.partition_count()
        if not 0 <= partition < count:
            status = self.config.partition_out_of_range_status
            raise SnowflakeApiError(
                status,
                "000709" if status == 422 else "390400",
                f"partition {partition} is out of range: the result has {count} partition(s)",
            )
        if partition == 0:
            return self._answer(statement)
        return self._partition(request, statement, partition)

    def _cancel(self, handle: str) -> Response:
        statement = self._find(handle)
        now = time.monotonic()
        with self._lock:
            life = statement.life(now, self.config.statement_ttl_seconds)
            if life == "running":
                statement.canceled_at = now
        if life != "running" and self.config.cancel_ended_status == 422:
            if life == "succeeded":
                body = self._status_body(
                    statement, "000605", "57014", "Statement already completed; nothing to cancel"
                )
                return self._json(body, status=422)
            return self._answer(statement)  # its 422 QueryFailureStatus
        body = {
            "code": CANCELED_CODE,
            "sqlState": CANCELED_STATE,
            "message": CANCELED_MESSAGE,
            "statementHandle": statement.handle,
            "statementStatusUrl": statement.status_url,
        }
        return self._json(body)

    # -- answers --

    def _answer(self, statement: _Statement) -> Response:
        """What a submit or a status GET answers for `statement` in its present state."""
        life = self._life(statement)
        if life == "running":
            return self._json(
                self._status_body(statement, RUNNING_CODE, "00000", RUNNING_MESSAGE), status=202
            )
        if life == "canceled":
            body = self._status_body(statement, CANCELED_CODE, CANCELED_STATE, CANCELED_MESSAGE)
            return self._json(body, status=422)
        if life == "failed":
            assert statement.failure is not None
            return self._json(self._status_body(statement, *statement.failure), status=422)
        return self._result_set(statement)

    def _status_body(self, statement: _Statement, code: str, sql_state: str, message: str) -> dict[str, Any]:
        return {
            "code": code,
            "sqlState": sql_state,
            "message": message,
            "statementHandle": statement.handle,
            "createdOn": statement.created_on_ms,
            "statementStatusUrl": statement.status_url,
        }

    def _result_set(self, statement: _Statement) -> Response:
        assert statement.result is not None
        columns = statement.result.columns
        data = _render_rows(columns, statement.partition_rows_at(0), statement.nulls_as_text)
        body = {
            "resultSetMetaData": {
                "format": "jsonv2",
                "numRows": len(statement.result.rows),
                "rowType": [_row_type(column, self.config) for column in columns],
                "partitionInfo": self._partition_info(statement),
                "nullable": not statement.nulls_as_text,
            },
            "data": data,
            "code": SUCCESS_CODE,
            "statementStatusUrl": statement.status_url,
            "requestId": statement.request_id or statement.handle,
            "sqlState": "00000",
            "statementHandle": statement.handle,
            "message": SUCCESS_MESSAGE,
            "createdOn": statement.created_on_ms,
        }
        return self._json(body, headers={"Link": _links(statement, 0)})

    def _partition_bytes(self, statement: _Statement, index: int) -> bytes:
        assert statement.result is not None
        rows = _render_rows(
            statement.result.columns, statement.partition_rows_at(index), statement.nulls_as_text
        )
        return orjson.dumps({"data": rows})

    def _partition_info(self, statement: _Statement) -> list[dict[str, int]]:
        """rowCount, uncompressedSize and compressedSize of each partition, worked out once per
        statement: measured on the rendered bodies up to `config.exact_sizes_max_rows` rows,
        estimated from a sample of each partition's rows above (rendering millions of rows just
        to state their size would hold the first answer for seconds; Snowflake's own sizes are
        of its internal format anyway, not of the JSON a client reads)."""
        if statement.sizes is None:
            assert statement.result is not None
            exact = len(statement.result.rows) <= self.config.exact_sizes_max_rows
            measure = self._measured_size if exact else self._estimated_size
            statement.sizes = [measure(statement, index) for index in range(statement.partition_count())]
        return [
            {"rowCount": rows, "uncompressedSize": raw, "compressedSize": packed}
            for rows, raw, packed in statement.sizes
        ]

    def _measured_size(self, statement: _Statement, index: int) -> tuple[int, int, int]:
        raw = self._partition_bytes(statement, index)
        return len(statement.partition_rows_at(index)), len(raw), len(gzip.compress(raw, compresslevel=1))

    @staticmethod
    def _estimated_size(statement: _Statement, index: int) -> tuple[int, int, int]:
        assert statement.result is not None
        rows = statement.partition_rows_at(index)
        count = len(rows)
        sample = [rows[position * count // _SIZE_SAMPLE] for position in range(min(count, _SIZE_SAMPLE))]
        raw = orjson.dumps(_render_rows(statement.result.columns, sample, statement.nulls_as_text))
        scale = count / max(1, len(sample))
        packed = len(gzip.compress(raw, compresslevel=1))
        return count, round(len(raw) * scale) + len('{"data":}'), round(packed * scale)

    def _partition(self, request: Request, statement: _Statement, index: int) -> Response:
        raw = self._partition_bytes(statement, index)
        mode = self.config.gzip_partitions
        accepts_gzip = "gzip" in request.headers.get("Accept-Encoding", "").lower()
        headers = {"Link": _links(statement, index)}
        if mode == "always" or (mode == "accepted" and accepts_gzip):
            headers["Content-Encoding"] = "gzip"
            raw = gzip.compress(raw, compresslevel=1)
        return Response(raw, status=200, headers=headers, content_type=JSON_TYPE)

    # -- lookups --

    def _find(self, handle: str) -> _Statement:
        with self._lock:
            statement = self._statements.get(handle)
        if statement is None or self._life(statement) == "expired":
            raise SnowflakeApiError(404, NOT_FOUND_CODE, f"Statement {handle} not found", sql_state="02000")
        return statement

    def _life(self, statement: _Statement) -> str:
        return statement.life(time.monotonic(), self.config.statement_ttl_seconds)

    def _expire(self, path: str) -> None:
        """The statement a request names expires now (404 000709 from then on, as after its TTL)."""
        match = CANCEL_PATH.fullmatch(path) or STATEMENT_PATH.fullmatch(path)
        if match is None:
            return
        with self._lock:
            statement = self._statements.get(match.group(1))
            if statement is not None:
                statement.created_at = time.monotonic() - self.config.statement_ttl_seconds - 1

    # -- envelopes --

    def _body(self, request: Request) -> dict[str, Any]:
        try:
            body = json.loads(request.get_data() or b"")
        except ValueError:
            raise SnowflakeApiError(400, "390400", "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise SnowflakeApiError(400, "390400", "The request body must be a JSON object.")
        if not isinstance(body.get("statement"), str) or not body["statement"].strip():
            raise SnowflakeApiError(400, "390400", "The request body has no statement.")
        return body

    @staticmethod
    def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return Response(orjson.dumps(body), status=status, headers=headers, content_type=JSON_TYPE)

    def _error(self, error: SnowflakeApiError, headers: dict[str, str] | None = None) -> Response:
        body: dict[str, Any] = {"code": error.code, "message": error.message}
        if error.sql_state is not None:
            body["sqlState"] = error.sql_state
        return self._json(body, status=error.status, headers=headers)

    def _fault(self, status: int, retry_after: float | None) -> Response:
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        if status == 502:  # what a load balancer in front of the API answers
            return Response(_GATEWAY_PAGE, status=502, headers=headers, content_type="text/html")
        code, message = _ERRORS_BY_STATUS.get(status, ("390500", f"emulated error {status}"))
        return self._error(SnowflakeApiError(status, code, message), headers)

    # -- control API (tests) --

    def _control(self, request: Request) -> Response:
        states = {
            ("GET", "statements"): lambda: {
                "states": self.statement_states(),
                "started": self.statements_started,
            }
        }
        return self.control(request, self.config, states, update=self._update_config)

    def _update_config(self, changes: dict[str, Any]) -> None:
        """The shared rules (emulators.http.update_config), and the choices some fields allow."""
        if changes.get("gzip_partitions", "accepted") not in _GZIP_CHOICES:
            raise ValueError(f"gzip_partitions is one of {list(_GZIP_CHOICES)}")
        if changes.get("partition_out_of_range_status", 400) not in (400, 422):
            raise ValueError("partition_out_of_range_status is 400 or 422")
        update_config(self.config, changes)


def _timeout(raw: Any) -> int:
    """The body's `timeout` in seconds (0 or absent: Snowflake's maximum, 7 days)."""
    if raw is None:
        return MAX_TIMEOUT_SECONDS
    try:
        seconds = int(raw)
    except (TypeError, ValueError):
        raise SnowflakeApiError(400, "390400", "timeout must be a number of seconds") from None
    if seconds < 0:
        raise SnowflakeApiError(400, "390400", "timeout must not be negative")
    return seconds or MAX_TIMEOUT_SECONDS


def _links(statement: _Statement, index: int) -> str:
    """The `Link` header of a partition answer: first, prev, next and last partitions."""
    last = statement.partition_count() - 1
    rels = [("first", 0)]
    if index > 0:
        rels.append(("prev", index - 1))
    if index < last:
        rels.append(("next", index + 1))
    rels.append(("last", last))
    return ",".join(f'<{statement.status_url}?partition={number}>; rel="{rel}"' for rel, number in rels)


def serve_forever(host: str, port: int, **kwargs: Any) -> None:
    """Serve a `SnowflakeEmulator(**kwargs)` on host:port until interrupted (for `query-relay
    emulate snowflake`)."""
    SnowflakeEmulator(**kwargs).serve_forever(host, port)
