"""An Elasticsearch ES|QL async-query emulator: a real HTTP server the official client accepts.

Endpoints (see docs/upstreams/esql.md): `POST /_query/async`, `GET|DELETE
/_query/async/{id}`, `POST /_query/async/{id}/stop`, plus the synchronous `POST /_query` and
`GET /` (cluster info). Queries run on generated data (see esql_data / esql_engine).

Time: every query takes `config.query_seconds` of wall time (read when it is submitted). A submit
whose `wait_for_completion_timeout` covers that answers the result at once and stores nothing
unless `keep_on_completion` is true (the fast path); otherwise it answers
`{"id", "is_running": true, "columns": [], "values": []}` once the wait is over. A GET with
`wait_for_completion_timeout` long-polls: it returns as soon as the query ends or the wait is
over. Results are not kept: a stored task re-runs its query when read (the data never changes),
so even huge results stream out in constant memory. A stored task disappears `keep_alive` after
its start (a GET's `keep_alive` pushes that back).

Test hooks, in process and over HTTP (no auth, not logged in `requests`):
- `config` (`EsqlEmulatorConfig`): `query_seconds`; `fail_running_after` (seconds): the next
  query that outlives its submit's wait fails that long after it started (capped at its
  duration) and its GET answers the stored error with `fail_running_status`; one-shot.
  `min_keep_alive_seconds` (ES: 1 s) lets tests try expiry faster.
  HTTP: `GET|POST /_emulator/config` (POST a JSON object of the fields to change).
- `fail_next(operation, status=None, times=1, retry_after=None, ...)`: operations `submit`, `get`,
  `delete`, `stop`, `query`, `info` or `any`; a status is answered with an ES error envelope (429
  -> `es_rejected_execution_exception`, 503 -> `no_shard_available_action_exception`, 404 ->
  `resource_not_found_exception`, ...) and a `Retry-After` header when `retry_after` is given.
  Other kinds (see emulators.http): `delay_seconds`, `reset`, `truncate_after_bytes`, and
  `expire` (the async id in the path expires now: 404 from then on). HTTP: `POST
  /_emulator/faults` with `{"operation", "status"?, "times"?, "retry_after"?, ...}`;
  `GET|DELETE /_emulator/faults`.
- `task_states()` -> `{id: "running" | "finished" | "failed" | "deleted" | "expired"}`.
  HTTP: `GET /_emulator/tasks`.
- `requests`: the (method, path, query params) of every request. HTTP: `GET|DELETE
  /_emulator/requests`.

Known differences from ES: formats json, csv and tsv only; `filter_path`, `locale`, `time_zone`
(UTC is used), `include_ccs_metadata` and `allow_partial_results` are accepted and ignored;
`stop` ends the query at once with its whole result, flagged `is_partial: true`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import itertools
import json
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from werkzeug.datastructures import Headers
from werkzeug.wrappers import Request, Response

from .esql_engine import CompiledQuery, compile_query
from .esql_output import JSON_TYPE, TEXT_FORMATS, json_result, text_result
from .esql_types import EsqlError, Value
from .http import EmulatorServer, InjectedFault, control_body

logger = logging.getLogger(__name__)

__all__ = ["EsqlEmulator", "EsqlEmulatorConfig", "serve_forever"]

PRODUCT_HEADER = ("X-Elastic-Product", "Elasticsearch")
ASYNC_ID_HEADER = "X-Elasticsearch-Async-Id"
IS_RUNNING_HEADER = "X-Elasticsearch-Async-Is-Running"

DEFAULT_WAIT_SECONDS = 1.0
DEFAULT_KEEP_ALIVE_SECONDS = 5 * 86_400.0
_NODE_ID = "qr-emulator-node"
_ES_VERSION = "9.1.0"

OPERATIONS = ("submit", "get", "delete", "stop", "query", "info")
TASK_STATES = ("running", "finished", "failed", "deleted", "expired")

_COMMON_URL_PARAMS = frozenset({"error_trace", "filter_path", "human", "pretty"})
_QUERY_URL_PARAMS = _COMMON_URL_PARAMS | {"format", "delimiter", "drop_null_columns", "allow_partial_results"}
_ASYNC_URL_PARAMS = frozenset({"keep_alive", "keep_on_completion", "wait_for_completion_timeout"})
_URL_PARAMS = {
    "submit": _QUERY_URL_PARAMS | _ASYNC_URL_PARAMS,
    "get": _COMMON_URL_PARAMS
    | {"wait_for_completion_timeout", "keep_alive", "drop_null_columns", "format"}
    | {"delimiter"},
    "stop": _COMMON_URL_PARAMS | {"drop_null_columns", "format", "delimiter"},
    "delete": _COMMON_URL_PARAMS,
    "query": _QUERY_URL_PARAMS,
    "info": _COMMON_URL_PARAMS,
}
_QUERY_BODY_FIELDS = frozenset(
    {"query", "params", "filter", "locale", "columnar", "profile", "include_ccs_metadata"}
    | {"include_execution_metadata", "time_zone", "tables"}
)
_ASYNC_BODY_FIELDS = _QUERY_BODY_FIELDS | _ASYNC_URL_PARAMS

#: Error envelopes for injected faults and stored failures, by status.
_ERRORS_BY_STATUS = {
    400: ("illegal_argument_exception", "emulated bad request"),
    401: ("security_exception", "emulated authentication failure"),
    403: ("security_exception", "action [indices:data/read/esql] is unauthorized (emulated)"),
    404: ("resource_not_found_exception", "emulated missing resource"),
    429: ("es_rejected_execution_exception", "rejected execution of ES|QL request (emulated overload)"),
    500: ("illegal_state_exception", "emulated internal error"),
    503: ("no_shard_available_action_exception", "emulated: no shard available for the query"),
    504: ("timeout_exception", "emulated gateway timeout"),
}
_WWW_AUTHENTICATE = ('Basic realm="security", charset="UTF-8"', 'Bearer realm="security"', "ApiKey")
_TIME_VALUE = re.compile(r"(\d+(?:\.\d+)?)(nanos|micros|ms|s|m|h|d)")
_TIME_UNITS = {"nanos": 1e-9, "micros": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class EsqlEmulatorConfig:
    """Knobs tests turn at runtime (in process, or via `POST /_emulator/config`)."""

    query_seconds: float = 0.0
    fail_running_after: float | None = None
    fail_running_status: int = 500
    min_keep_alive_seconds: float = 1.0


def error_for_status(status: int, reason: str | None = None) -> EsqlError:
    error_type, default_reason = _ERRORS_BY_STATUS.get(status, ("exception", f"emulated error {status}"))
    return EsqlError(reason or default_reason, status=status, error_type=error_type)


# --- tasks -----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Task:
    """One query's life, computed from its timestamps (monotonic seconds) rather than a thread."""

    query: CompiledQuery
    columnar: bool
    profile: bool
    started_at: float
    started_at_millis: int
    finishes_at: float
    expires_at: float
    fails_at: float | None = None
    failure: EsqlError | None = None
    id: str | None = None
    stopped_early: bool = False
    deleted: bool = False
    deleted_at: float | None = None
    changed: threading.Event = field(default_factory=threading.Event)

    def state(self, now: float, *, check_expiry: bool = True) -> str:
        if self.deleted:
            return "deleted"
        if check_expiry and now >= self.expires_at:
            return "expired"
        if self.fails_at is not None and now >= self.fails_at:
            return "failed"
        return "finished" if now >= self.finishes_at else "running"

    def wait(self, timeout: float) -> None:
        """Block until the task is no longer running or `timeout` seconds have passed."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if now >= deadline or self.state(now) != "running":
                return
            # stop and delete set `changed` to wake waiters before any of these moments
            self.changed.wait(min(deadline, self.ended_at(), self.expires_at) - now)

    def wall_millis(self, moment: float) -> int:
        return self.started_at_millis + round((moment - self.started_at) * 1000)

    def ended_at(self) -> float:
        ended = self.finishes_at if self.fails_at is None else min(self.finishes_at, self.fails_at)
        return ended if self.deleted_at is None else min(ended, self.deleted_at)


def new_async_id(sequence: int) -> str:
    """An id shaped like ES's: base64url of (doc id, "node:task") written as ES strings.

    The doc id length is picked so the encoding always ends in `=` padding, like the ids in
    ES's docs, so that clients' URL-quoting of `=` (`%3D`) is always exercised.
    """
    task_id = f"{_NODE_ID}:{sequence}".encode()
    doc_length = 20 if (2 + 20 + len(task_id)) % 3 else 21
    doc_id = secrets.token_urlsafe(16)[:doc_length].encode()
    raw = bytes([len(doc_id)]) + doc_id + bytes([len(task_id)]) + task_id
    return base64.urlsafe_b64encode(raw).decode()


def is_well_formed_async_id(text: str) -> bool:
    try:
        raw = base64.b64decode(text.encode("ascii"), altchars=b"-_", validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False
    offset = 0
    for _ in range(2):  # two length-prefixed strings: doc id, task id
        if offset >= len(raw) or raw[offset] == 0 or raw[offset] > 127:
            return False
        offset += 1 + raw[offset]
    return offset == len(raw)


# --- request parsing -------------------------------------------------------------------------


def parse_time_value(value: object, setting: str) -> float:
    """Seconds in an ES time value (`500ms`, `1s`, `2m`, `5d`, ...)."""
    match = _TIME_VALUE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise EsqlError(
            f"failed to parse setting [{setting}] with value [{value}] as a time value: "
            "unit is missing or unrecognized"
        )
    return float(match.group(1)) * _TIME_UNITS[match.group(2)]


def _url_flag(request: Request, name: str) -> bool | None:
    value = request.args.get(name)
    if value is None:
        return None
    if value in ("", "true"):
        return True
    if value == "false":
        return False
    raise EsqlError(f"Failed to parse value [{value}] as only [true] or [false] are allowed.")


def _body_flag(body: Mapping[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise _parse_error(f"[esql_query] failed to parse field [{name}]: expected a boolean")


def _parse_error(reason: str) -> EsqlError:
    return EsqlError(reason, error_type="x_content_parse_exception")


def _params(value: object) -> list[Value] | dict[str, Value] | None:
    """`params` as positional values or named values (ES refuses a mix)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise _parse_error("[esql_query] failed to parse field [params]: expected an array")
    positional: list[Value] = []
    named: dict[str, Value] = {}
    for item in value:
        if isinstance(item, dict):
            if len(item) != 1:
                raise _parse_error(f"[esql_query] a named parameter holds one name and one value, got {item}")
            ((name, named_value),) = item.items()
            if not _PARAM_NAME.fullmatch(name):
                raise _parse_error(f"[{name}] is not a valid parameter name")
            named[name] = _scalar(named_value)
        else:
            positional.append(_scalar(item))
    if positional and named:
        raise _parse_error(
            f"Params cannot contain both named and unnamed parameters; got {sorted(named)} and {positional}"
        )
    return named if named else positional


def _scalar(value: object) -> Value:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise _parse_error(f"[esql_query] parameter values must be scalars, got [{json.dumps(value)}]")


@dataclass(frozen=True)
class _QueryRequest:
    query: CompiledQuery
    columnar: bool
    profile: bool
    wait_seconds: float
    keep_alive_seconds: float
    keep_on_completion: bool


@dataclass(frozen=True)
class _OutputOptions:
    text_format: str | None  # None: JSON
    delimiter: str
    drop_null_columns: bool
    json_content_type: str

    @classmethod
    def of(cls, request: Request) -> _OutputOptions:
        requested = request.args.get("format")
        accept = request.headers.get("Accept", "")
        if requested is None:
            requested = "csv" if "text/csv" in accept else "tsv" if "text/tab-separated" in accept else "json"
        if requested != "json" and requested not in TEXT_FORMATS:
            raise EsqlError(f"Invalid format [{requested}]: the ES|QL emulator serves json, csv and tsv")
        delimiter = request.args.get("delimiter", ",")
        if len(delimiter) != 1 or delimiter in '"\r\n':
            raise EsqlError(f"invalid delimiter [{delimiter}]")
        version = re.search(r"compatible-with=(\d+)", accept)
        content_type = (
            f"application/vnd.elasticsearch+json;compatible-with={version.group(1)}" if version else JSON_TYPE
        )
        return cls(
            None if requested == "json" else requested,
            delimiter,
            bool(_url_flag(request, "drop_null_columns")),
            content_type,
        )


# --- the emulator ----------------------------------------------------------------------------


class _Credentials:
    """Accepted Authorization header values; kept out of reprs and logs."""

    def __init__(self, api_key: str | None, basic: tuple[str, str] | None, bearer: str | None) -> None:
        accepted: list[tuple[str, str]] = []
        if api_key is not None:
            accepted.append(("apikey", api_key))
        if basic is not None:
            accepted.append(("basic", base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()))
        if bearer is not None:
            accepted.append(("bearer", bearer))
        self._accepted = accepted

    def __repr__(self) -> str:
        return f"_Credentials(<{len(self._accepted)} accepted, hidden>)"

    @property
    def required(self) -> bool:
        return bool(self._accepted)

    def accepts(self, header: str) -> bool:
        scheme, _, value = header.strip().partition(" ")
        return any(
            scheme.lower() == accepted_scheme and hmac.compare_digest(value.strip(), accepted_value)
            for accepted_scheme, accepted_value in self._accepted
        )


class EsqlEmulator(EmulatorServer):
    """The ES|QL emulator; `start()` it (or use `with`) and point a client at `base_url`."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        basic: tuple[str, str] | None = None,
        bearer: str | None = None,
        query_seconds: float = 0.0,
    ) -> None:
        super().__init__(OPERATIONS)
        self.config = EsqlEmulatorConfig(query_seconds=query_seconds)
        self._credentials = _Credentials(api_key, basic, bearer)
        self._lock = threading.Lock()
        self._tasks: dict[str, _Task] = {}
        self._every_task: list[_Task] = []  # running_intervals()
        self._ended: dict[str, str] = {}  # id -> "deleted" | "expired"
        self._sequence = itertools.count(1)

    def __repr__(self) -> str:
        return f"EsqlEmulator(base_url={self._base_url!r}, auth_required={self._credentials.required})"

    def task_states(self) -> dict[str, str]:
        now = time.monotonic()
        with self._lock:
            self._forget_expired(now)
            states = {task_id: task.state(now) for task_id, task in self._tasks.items()}
            return {**self._ended, **states}

    def running_intervals(self) -> list[tuple[float, float]]:
        """When every query so far ran upstream: (started, ended or now) in monotonic seconds."""
        now = time.monotonic()
        with self._lock:
            return [(task.started_at, min(now, task.ended_at())) for task in self._every_task]

    # -- dispatch --

    def handle(self, request: Request) -> Response:
        if request.path.startswith(self.control_prefix):
            return self._control(request)
        try:
            operation, action = self._route(request)
            self._authenticate(request)
            unknown = sorted(set(request.args) - _URL_PARAMS[operation])
            if unknown:
                raise EsqlError(f"request [{request.path}] contains unrecognized parameter: [{unknown[0]}]")
            fault = self.faults.take(operation, request)
            if fault is None:
                return action()
            if fault.expire:
                self._expire(request.path)
            return self.answer_with_fault(
                request, fault, lambda: self._guarded(request, action), lambda f: self._fault(request, f)
            )
        except EsqlError as error:
            return self._error(request, error)
        except Exception:  # answer like ES (JSON, product header) even when the emulator has a bug
            logger.exception("ES|QL emulator failed on %s %s", request.method, request.path)
            return self._error(request, error_for_status(500, "unexpected error in the ES|QL emulator"))

    def _guarded(self, request: Request, action: Callable[[], Response]) -> Response:
        """`action` answering its ES error as `handle` would (faults run it outside that handler)."""
        try:
            return action()
        except EsqlError as error:
            return self._error(request, error)

    def _fault(self, request: Request, fault: InjectedFault) -> Response:
        assert fault.status is not None
        headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
        return self._error(request, error_for_status(fault.status), headers)

    def _expire(self, path: str) -> None:
        """The task a request names expires now (its stored result is gone, as after keep_alive)."""
        match = re.match(r"/_query/async/([^/]+)", path)
        if match is None:
            return
        with self._lock:
            task = self._tasks.get(match.group(1))
            if task is not None:
                task.expires_at = time.monotonic()
                task.changed.set()

    def _route(self, request: Request) -> tuple[str, Callable[[], Response]]:
        path, method = request.path, request.method
        routes: dict[str, tuple[str, Callable[[], Response]]] = {}
        if path == "/":
            routes = {"GET": ("info", self._info), "HEAD": ("info", self._info)}
        elif path == "/_query":
            routes = {"POST": ("query", lambda: self._sync_query(request))}
        elif path == "/_query/async":
            routes = {"POST": ("submit", lambda: self._submit(request))}
        elif match := re.fullmatch(r"/_query/async/([^/]+)/stop", path):
            async_id = match.group(1)
            routes = {"POST": ("stop", lambda: self._stop(request, async_id))}
        elif match := re.fullmatch(r"/_query/async/([^/]+)", path):
            async_id = match.group(1)
            routes = {
                "GET": ("get", lambda: self._get(request, async_id)),
                "DELETE": ("delete", lambda: self._delete(async_id)),
            }
        else:
            raise EsqlError(f"no handler found for uri [{path}] and method [{method}]")
        if method not in routes:
            allowed = ", ".join(sorted(routes))
            raise EsqlError(
                f"Incorrect HTTP method for uri [{path}] and method [{method}], allowed: [{allowed}]",
                status=405,
            )
        return routes[method]

    def _authenticate(self, request: Request) -> None:
        if not self._credentials.required:
            return
        header = request.headers.get("Authorization")
        if header is None:
            reason = f"missing authentication credentials for REST request [{request.path}]"
        elif self._credentials.accepts(header):
            return
        else:
            reason = "unable to authenticate with provided credentials and anonymous access is not allowed"
        raise EsqlError(reason, status=401, error_type="security_exception")

    # -- endpoints --

    def _info(self) -> Response:
        return self._json(
            {
                "name": _NODE_ID,
                "cluster_name": "query-relay-emulator",
                "cluster_uuid": "qr-emulator-cluster",
                "version": {"number": _ES_VERSION, "build_flavor": "default", "lucene_version": "10.2.0"},
                "tagline": "You Know, for Search",
            }
        )

    def _submit(self, request: Request) -> Response:
        output = _OutputOptions.of(request)
        query_request = self._query_request(request, async_call=True)
        task = self._start(query_request)
        task.wait(query_request.wait_seconds)
        state = task.state(time.monotonic(), check_expiry=False)
        if state == "running" or task.fails_at is not None or query_request.keep_on_completion:
            self._store(task)
        if state == "running":
            return self._running(task, output)
        return self._ended_task(task, output, include_id=task.id is not None)

    def _sync_query(self, request: Request) -> Response:
        output = _OutputOptions.of(request)
        task = self._start(self._query_request(request, async_call=False))
        task.wait(math.inf)
        return self._ended_task(task, output, include_id=False, synchronous=True)

    def _get(self, request: Request, async_id: str) -> Response:
        output = _OutputOptions.of(request)
        wait = request.args.get("wait_for_completion_timeout")
        keep_alive = request.args.get("keep_alive")
        task = self._find(async_id)
        if keep_alive is not None:
            task.expires_at = time.monotonic() + self._keep_alive_seconds(keep_alive)
        if wait is not None:
            task.wait(parse_time_value(wait, "wait_for_completion_timeout"))
            task = self._find(async_id)  # it may have been deleted or expired meanwhile
        if task.state(time.monotonic()) == "running":
            return self._running(task, output)
        return self._ended_task(task, output, include_id=True)

    def _delete(self, async_id: str) -> Response:
        task = self._find(async_id)
        with self._lock:
            task.deleted, task.deleted_at = True, time.monotonic()
            self._tasks.pop(async_id, None)
            self._ended[async_id] = "deleted"
        task.changed.set()
        return self._json({"acknowledged": True})

    def _stop(self, request: Request, async_id: str) -> Response:
        output = _OutputOptions.of(request)
        task = self._find(async_id)
        with self._lock:
            now = time.monotonic()
            if task.state(now) == "running":
                task.finishes_at = now
                task.fails_at = task.failure = None
                task.stopped_early = True
                task.changed.set()
        return self._ended_task(task, output, include_id=True)

    # -- tasks --

    def _query_request(self, request: Request, *, async_call: bool) -> _QueryRequest:
        body = self._body(request, _ASYNC_BODY_FIELDS if async_call else _QUERY_BODY_FIELDS)
        query_text = body.get("query")
        if query_text is None:
            raise EsqlError(
                "Validation Failed: 1: [query] is required;", error_type="action_request_validation_exception"
            )
        if not isinstance(query_text, str):
            raise _parse_error("[esql_query] failed to parse field [query]: expected a string")
        dsl_filter = body.get("filter")
        if dsl_filter is not None and not isinstance(dsl_filter, dict):
            raise _parse_error("[esql_query] failed to parse field [filter]: expected an object")
        for name in ("locale", "time_zone"):
            if body.get(name) is not None and not isinstance(body[name], str):
                raise _parse_error(f"[esql_query] failed to parse field [{name}]: expected a string")
        for name in ("include_ccs_metadata", "include_execution_metadata"):
            _body_flag(body, name)
        _url_flag(request, "allow_partial_results")
        wait = body.get("wait_for_completion_timeout", request.args.get("wait_for_completion_timeout"))
        keep_alive = body.get("keep_alive", request.args.get("keep_alive"))
        keep_on_completion = _body_flag(body, "keep_on_completion")
        if keep_on_completion is None:
            keep_on_completion = _url_flag(request, "keep_on_completion")
        compiled = compile_query(query_text, _params(body.get("params")), dsl_filter)
        return _QueryRequest(
            query=compiled,
            columnar=bool(_body_flag(body, "columnar")),
            profile=bool(_body_flag(body, "profile")),
            wait_seconds=DEFAULT_WAIT_SECONDS
            if wait is None
            else parse_time_value(wait, "wait_for_completion_timeout"),
            keep_alive_seconds=DEFAULT_KEEP_ALIVE_SECONDS
            if keep_alive is None
            else self._keep_alive_seconds(keep_alive),
            keep_on_completion=bool(keep_on_completion),
        )

    @staticmethod
    def _body(request: Request, allowed: frozenset[str]) -> dict[str, Any]:
        raw = request.get_data()
        if not raw.strip():
            raise EsqlError("request body is required", error_type="parse_exception")
        try:
            body = json.loads(raw)
        except ValueError as error:
            raise _parse_error(f"Failed to parse request body: {error}") from None
        if not isinstance(body, dict):
            raise _parse_error("[esql_query] Expected START_OBJECT but found a value")
        unknown = [name for name in body if name not in allowed]
        if unknown:
            raise _parse_error(f"[esql_query] unknown field [{unknown[0]}]")
        return body

    def _keep_alive_seconds(self, value: object) -> float:
        seconds = parse_time_value(value, "keep_alive")
        if seconds < self.config.min_keep_alive_seconds:
            raise EsqlError(
                f"Validation Failed: 1: keep_alive must be greater than "
                f"{self.config.min_keep_alive_seconds:g}s, got: {value};",
                error_type="action_request_validation_exception",
            )
        return seconds

    def _start(self, query_request: _QueryRequest) -> _Task:
        now = time.monotonic()
        duration = max(0.0, self.config.query_seconds)
        task = _Task(
            query=query_request.query,
            columnar=query_request.columnar,
            profile=query_request.profile,
            started_at=now,
            started_at_millis=round(time.time() * 1000),
            finishes_at=now + duration,
            expires_at=now + query_request.keep_alive_seconds,
        )
        with self._lock:
            self._every_task.append(task)
        if duration > query_request.wait_seconds:
            with self._lock:
                fail_after, self.config.fail_running_after = self.config.fail_running_after, None
            if fail_after is not None:
                task.fails_at = now + min(max(0.0, fail_after), duration)
                task.failure = error_for_status(
                    self.config.fail_running_status, "emulated failure of a running ES|QL query"
                )
        return task

    def _store(self, task: _Task) -> None:
        with self._lock:
            task.id = new_async_id(next(self._sequence))
            self._tasks[task.id] = task

    def _find(self, async_id: str) -> _Task:
        if not is_well_formed_async_id(async_id):
            raise EsqlError(f"invalid id: [{async_id}]")
        with self._lock:
            self._forget_expired(time.monotonic())
            task = self._tasks.get(async_id)
        if task is None:
            raise EsqlError(async_id, status=404, error_type="resource_not_found_exception")
        return task

    def _forget_expired(self, now: float) -> None:
        for task_id, task in list(self._tasks.items()):
            if task.state(now) == "expired":
                del self._tasks[task_id]
                self._ended[task_id] = "expired"
                task.changed.set()

    # -- answers --

    def _headers(self, task: _Task | None = None, *, running: bool | None = None) -> Headers:
        headers = Headers([PRODUCT_HEADER])
        if task is not None and task.id is not None:
            headers[ASYNC_ID_HEADER] = task.id
        if running is not None:
            headers[IS_RUNNING_HEADER] = "?1" if running else "?0"
        return headers

    def _json(self, body: object, status: int = 200, headers: Headers | None = None) -> Response:
        headers = headers if headers is not None else self._headers()
        return Response(json.dumps(body), status=status, headers=headers, content_type=JSON_TYPE)

    def _error(self, request: Request, error: EsqlError, extra: Mapping[str, str] | None = None) -> Response:
        headers = self._headers()
        for name, value in (extra or {}).items():
            headers[name] = value
        envelope = error.envelope()
        if error.status == 401:
            for challenge in _WWW_AUTHENTICATE:
                headers.add("WWW-Authenticate", challenge)
            challenges = {"WWW-Authenticate": list(_WWW_AUTHENTICATE)}
            root = envelope["error"]
            assert isinstance(root, dict)
            root["header"] = challenges
            root["root_cause"][0]["header"] = challenges
        content_type = _error_content_type(request)
        return Response(json.dumps(envelope), status=error.status, headers=headers, content_type=content_type)

    def _running(self, task: _Task, output: _OutputOptions) -> Response:
        headers = self._headers(task, running=True)
        if output.text_format is not None:
            return Response(b"", headers=headers, content_type=TEXT_FORMATS[output.text_format])
        body: dict[str, Any] = {"id": task.id, "is_running": True, "columns": [], "values": []}
        return Response(json.dumps(body), headers=headers, content_type=output.json_content_type)

    def _ended_task(
        self, task: _Task, output: _OutputOptions, *, include_id: bool, synchronous: bool = False
    ) -> Response:
        if task.state(time.monotonic(), check_expiry=False) == "failed" and task.failure is not None:
            return self._error_for_task(task)
        headers = self._headers(task if include_id else None, running=None if synchronous else False)
        if output.text_format is not None:
            body: Iterable[bytes] = text_result(task.query, output.text_format, delimiter=output.delimiter)
            return Response(body, headers=headers, content_type=TEXT_FORMATS[output.text_format])
        ended_at = task.ended_at()
        head: dict[str, Any] = {}
        if include_id:
            head["id"] = task.id
        if not synchronous:
            head["is_running"] = False
        head["took"] = round((ended_at - task.started_at) * 1000)
        head["is_partial"] = task.stopped_early
        if not synchronous:
            head["start_time_in_millis"] = task.started_at_millis
            head["expiration_time_in_millis"] = task.wall_millis(task.expires_at)
            head["completion_time_in_millis"] = task.wall_millis(ended_at)
        extra: dict[str, Any] | None = {"profile": {"drivers": []}} if task.profile else None
        body = json_result(
            head, task.query, columnar=task.columnar, drop_null_columns=output.drop_null_columns, extra=extra
        )
        return Response(body, headers=headers, content_type=output.json_content_type)

    def _error_for_task(self, task: _Task) -> Response:
        assert task.failure is not None
        headers = self._headers(task, running=False)
        return Response(
            json.dumps(task.failure.envelope()),
            status=task.failure.status,
            headers=headers,
            content_type=JSON_TYPE,
        )

    # -- control API (tests) --

    def _control(self, request: Request) -> Response:
        route = (request.method, request.path[len(self.control_prefix) :].rstrip("/"))
        try:
            if route == ("GET", "config"):
                return _control_json(asdict(self.config))
            if route == ("POST", "config"):
                return self._update_config(request)
            if route == ("GET", "faults"):
                return _control_json(self.faults.pending())
            if route == ("POST", "faults"):
                self.faults.arm_from_json(control_body(request))
                return _control_json(self.faults.pending())
            if route == ("DELETE", "faults"):
                self.faults.clear()
                return _control_json([])
            if route == ("GET", "tasks"):
                return _control_json(self.task_states())
            if route == ("GET", "requests"):
                return _control_json([entry._asdict() for entry in self.requests])
            if route == ("DELETE", "requests"):
                self.clear_requests()
                return _control_json([])
        except (TypeError, ValueError) as error:
            return _control_json({"error": str(error)}, status=400)
        return _control_json({"error": f"no control route {request.method} {request.path}"}, status=404)

    def _update_config(self, request: Request) -> Response:
        changes = control_body(request)
        known = {item.name for item in fields(self.config)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown config field [{unknown[0]}]; known: {sorted(known)}")
        for name, value in changes.items():
            if name == "fail_running_status":
                setattr(self.config, name, int(value))
            else:
                setattr(self.config, name, None if value is None else float(value))
        return _control_json(asdict(self.config))


def _error_content_type(request: Request) -> str:
    version = re.search(r"compatible-with=(\d+)", request.headers.get("Accept", ""))
    return f"application/vnd.elasticsearch+json;compatible-with={version.group(1)}" if version else JSON_TYPE


def _control_json(body: object, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type=JSON_TYPE)


def serve_forever(host: str, port: int, **kwargs: Any) -> None:
    """Serve an `EsqlEmulator(**kwargs)` on host:port until interrupted (`query-relay emulate esql`)."""
    EsqlEmulator(**kwargs).serve_forever(host, port)
