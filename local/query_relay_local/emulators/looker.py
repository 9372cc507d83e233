"""A Looker API 4.0 emulator for query tasks: a real HTTP server the official `looker_sdk` accepts.

Endpoints (see docs/upstreams/looker.md), all under `/api/4.0`: `POST /login` (form or URL
`client_id`/`client_secret`), `DELETE /logout` (also `/api/logout`, where the SDK calls it),
`POST /queries`, `GET /queries/{id}`, `GET /queries/{id}/run/{result_format}` (synchronous),
`GET /looks/{id}`, `POST /query_tasks`, `GET /query_tasks/{id}`, `GET /query_tasks/{id}/results`,
`GET /query_tasks/multi_results?query_task_ids=a,b`, `DELETE /running_queries/{query_task_id}`.
Queries run on the generated `ecommerce` model (see looker_data).

Auth: log in with the client credentials for an access token (`expires_in` =
`config.token_ttl_seconds`); other calls send `Authorization: token <t>` (Looker's docs) or
`Bearer <t>` (the SDK). Wrong credentials answer 404 like Looker; a missing, unknown or expired
token answers 401 `Requires authentication.`. Without `client_id`/`client_secret` any pair logs in.

A task's life, from its creation: `added` for `config.queue_seconds`, `running` for
`config.query_seconds` (both read when it is created), then `complete` (or `error` for a query the
"database" rejects, e.g. an unknown field), and `expired` `config.result_ttl_seconds` later.
`DELETE /running_queries/{id}` turns an added or running task into `killed`. Results answer 200
once complete, `config.not_ready_status` (202; 204 like servers before 25.0) before, 404 for
unknown, killed or expired tasks. A failed query answers 200 with `errors` for `json_detail`, 400
with the database message for other formats.

Test hooks, in process and over HTTP (no auth, not logged in `requests`):
- `config` (`LookerEmulatorConfig`): the timings above, `not_ready_status`,
  `sql_error_status` ("error", or "complete": the task completes and its results carry the error),
  `spurious_expired` (the next N status reads of an unfinished task answer `expired`),
  `not_ready_reads` (the next N results reads of a finished task answer `not_ready_status`).
  HTTP: `GET|POST /_emulator/config`.
- `fail_next(operation, status=None, times=1, retry_after=None, ...)`: operations `login`,
  `create_query`, `query`, `run_query`, `look`, `create_task`, `status`, `results`,
  `multi_results`, `kill` or `any`; a status is answered with Looker's error envelope and
  `Retry-After` when `retry_after` is given (401 on a call with a token: the token expired).
  Other kinds (see emulators.http): `delay_seconds`, `reset`, `truncate_after_bytes`, and
  `expire` (the query task in the path expires now: status `expired`, results 404). HTTP:
  `POST /_emulator/faults` with `{"operation", "status"?, "times"?, "retry_after"?, ...}`.
- `revoke_tokens()`: every issued token stops working (HTTP: `DELETE /_emulator/tokens`);
  `issued_tokens()` lists every token handed out (to look for leaks in logs and messages).
- `task_states()` -> `{id: "added" | "running" | "complete" | "error" | "killed" | "expired"}`.
  HTTP: `GET /_emulator/tasks`.
- `requests`: the (method, path, query params) of every request. HTTP: `GET|DELETE
  /_emulator/requests`.

Known differences from Looker: one model; `pivots` are refused (422); `dynamic_fields`,
`fill_fields`, totals, `vis_config` and the formatting flags are stored and ignored; result
formats json, json_detail, json_bi, csv, txt and sql only (others: 422).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import hmac
import io
import itertools
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any, Literal

from werkzeug.wrappers import Request, Response

from .http import EmulatorServer, InjectedFault, control_body
from .looker_data import MODEL, LookerQueryError, QueryResult, QuerySpec, find_explore, run_query

logger = logging.getLogger(__name__)

__all__ = ["LookerEmulator", "LookerEmulatorConfig", "serve_forever"]

API_PREFIX = "/api/4.0"
DOCUMENTATION_URL = "https://cloud.google.com/looker/docs/r/api/"
JSON_TYPE = "application/json"
OPERATIONS = (
    "login",
    "create_query",
    "query",
    "run_query",
    "look",
    "create_task",
    "status",
    "results",
    "multi_results",
    "kill",
)
TASK_STATES = ("added", "running", "complete", "error", "killed", "expired")
RESULT_FORMATS = ("json", "json_detail", "json_bi", "csv", "txt", "sql")
# Every format the API documents; the emulator answers the ones above and refuses the rest clearly.
DOCUMENTED_RESULT_FORMATS = frozenset(
    {"inline_json", "json", "json_detail", "json_fe", "json_bi", "csv", "html", "md", "txt", "xlsx"}
    | {"gsxml", "sql", "odc"}
)
_CONTENT_TYPES = {
    "json": JSON_TYPE,
    "json_detail": JSON_TYPE,
    "json_bi": JSON_TYPE,
    "csv": "text/csv; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
    "sql": "text/plain; charset=utf-8",
}
_MESSAGES_BY_STATUS = {
    400: "Bad Request",
    401: "Requires authentication.",
    403: "Forbidden",
    404: "Not found",
    409: "Resource Already Exists",
    422: "Validation Failed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_WRITE_QUERY_FIELDS = (
    "model",
    "view",
    "fields",
    "pivots",
    "fill_fields",
    "filters",
    "filter_expression",
    "sorts",
    "limit",
    "column_limit",
    "total",
    "row_total",
    "subtotals",
    "vis_config",
    "filter_config",
    "visible_ui_sections",
    "dynamic_fields",
    "client_id",
    "query_timezone",
)
_LIST_FIELDS = ("fields", "pivots", "fill_fields", "sorts", "subtotals")
_TASK_FLAGS = (
    "apply_formatting",
    "apply_vis",
    "cache",
    "generate_drill_links",
    "force_production",
    "cache_only",
    "rebuild_pdts",
    "server_table_calcs",
)
_ROWS_PER_CHUNK = 64
_CAN_QUERY = {"run": True, "see_results": True, "explore": True, "create": True, "show": True}
_CAN_QUERY |= {"cost_estimate": True, "index": True, "see_sql": True, "download": True}
_CAN_LOOK = {"download": True, "index": True, "show": True, "copy": True, "run": True, "create": True}


@dataclass
class LookerEmulatorConfig:
    """Knobs tests turn at runtime (in process, or via `POST /_emulator/config`)."""

    query_seconds: float = 0.0
    queue_seconds: float = 0.0
    token_ttl_seconds: float = 3600.0
    result_ttl_seconds: float = 3600.0
    not_ready_status: int = 202
    sql_error_status: Literal["error", "complete"] = "error"
    spurious_expired: int = 0
    not_ready_reads: int = 0


class LookerApiError(Exception):
    """An error answer in Looker's envelope: `{"message", "documentation_url"}` (+ `errors` on 422)."""

    def __init__(
        self, status: int, message: str | None = None, errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message or _MESSAGES_BY_STATUS.get(status, "Error"))
        self.status = status
        self.message = message or _MESSAGES_BY_STATUS.get(status, "Error")
        self.errors = errors

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "documentation_url": DOCUMENTATION_URL}
        if self.errors is not None:
            body["errors"] = [{**error, "documentation_url": DOCUMENTATION_URL} for error in self.errors]
        return body


def _validation_error(field_name: str, code: str, message: str) -> LookerApiError:
    return LookerApiError(422, "Validation Failed", [{"field": field_name, "code": code, "message": message}])


# --- stored objects ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SavedQuery:
    id: str
    body: dict[str, Any]  # the WriteQuery fields as given (limit as a string)
    slug: str
    client_id: str

    def spec(self, limit_override: int | None = None) -> QuerySpec:
        limit = self.body.get("limit")
        return QuerySpec(
            model=self.body["model"],
            view=self.body["view"],
            fields=tuple(self.body.get("fields") or ()),
            filters=dict(self.body.get("filters") or {}),
            sorts=tuple(self.body.get("sorts") or ()),
            limit=limit_override if limit_override is not None else (None if limit is None else int(limit)),
        )

    def document(self, base_url: str) -> dict[str, Any]:
        """The Query object Looker answers."""
        body = {name: self.body.get(name) for name in _WRITE_QUERY_FIELDS}
        fields_param = ",".join(body["fields"] or [])
        explore_url = f"/explore/{body['model']}/{body['view']}?fields={fields_param}&qid={self.client_id}"
        return {
            "can": dict(_CAN_QUERY),
            "id": self.id,
            **body,
            "client_id": self.client_id,
            "slug": self.slug,
            "share_url": f"{base_url}/x/{self.client_id}",
            "expanded_share_url": f"{base_url}{explore_url}",
            "url": explore_url,
            "has_table_calculations": False,
        }


@dataclass(eq=False)
class _Task:
    """One query task's life, computed from its timestamps (monotonic seconds)."""

    id: str
    query: _SavedQuery
    result_format: str
    source: str | None
    look_id: str | None
    dashboard_id: str | None
    flags: dict[str, bool]
    path_prefix: str | None
    runs_at: float
    completes_at: float
    result: QueryResult | None
    error: LookerQueryError | None
    ran_at: str
    killed: bool = False
    expired: bool = False  # forced by an `expire` fault

    def state(self, now: float, config: LookerEmulatorConfig) -> str:
        if self.killed:
            return "killed"
        if self.expired:
            return "expired"
        if now < self.runs_at:
            return "added"
        if now < self.completes_at:
            return "running"
        if now >= self.completes_at + config.result_ttl_seconds:
            return "expired"
        return "error" if self.error is not None and config.sql_error_status == "error" else "complete"

    @property
    def runtime(self) -> float:
        return round(self.completes_at - self.runs_at, 3)

    def document(self, status: str) -> dict[str, Any]:
        """The QueryTask object Looker answers."""
        finished = status in ("complete", "error")
        return {
            "can": {"show": True, "cancel": status in ("added", "running")},
            "id": self.id,
            "query_id": self.query.id,
            "query": None,
            "generate_links": self.flags.get("generate_drill_links", False),
            "force_production": self.flags.get("force_production", False),
            "path_prefix": self.path_prefix,
            "cache": self.flags.get("cache", True),
            "server_table_calcs": self.flags.get("server_table_calcs", False),
            "cache_only": self.flags.get("cache_only", False),
            "cache_key": hashlib.sha1(self.query.id.encode(), usedforsecurity=False).hexdigest(),
            "status": status,
            "source": self.source,
            "runtime": self.runtime if finished else None,
            "rebuild_pdts": self.flags.get("rebuild_pdts", False),
            "result_source": "query" if finished else None,
            "look_id": self.look_id,
            "dashboard_id": self.dashboard_id,
            "result_format": self.result_format,
        }


# --- rendering results ---------------------------------------------------------------------------


def _json_rows(result: QueryResult) -> Iterator[bytes]:
    """`[{...}, ...]` a few rows per chunk, so readers see a body that arrives in pieces."""
    names = [item.name for item in result.fields]
    yield b"["
    for start in range(0, len(result.rows), _ROWS_PER_CHUNK):
        batch = result.rows[start : start + _ROWS_PER_CHUNK]
        text = ",".join(json.dumps(dict(zip(names, row, strict=True))) for row in batch)
        yield (("," if start else "") + text).encode()
    yield b"]"


def _fields_metadata(result: QueryResult) -> dict[str, Any]:
    return {
        "dimensions": [item.describe() for item in result.fields if not item.is_measure],
        "measures": [item.describe() for item in result.fields if item.is_measure],
        "table_calculations": [],
        "pivots": [],
    }


def _json_detail(task_id: str, result: QueryResult, ran_at: str, runtime: float) -> Iterator[bytes]:
    head = {
        "id": task_id,
        "from_cache": False,
        "added_params": {"sorts": [f"{name}{' desc' if desc else ''}" for name, desc in result.sorts]},
        "ran_at": ran_at,
        "runtime": f"{runtime:.3f}",
        "sql": result.sql,
        "sql_explain": None,
        "fields": _fields_metadata(result),
        "fill_fields": [],
        "has_row_totals": False,
        "has_totals": False,
        "null_sort_treatment": "low",
        "timezone": "UTC",
    }
    yield json.dumps(head)[:-1].encode() + b', "data": ['
    names = [item.name for item in result.fields]
    for start in range(0, len(result.rows), _ROWS_PER_CHUNK):
        batch = result.rows[start : start + _ROWS_PER_CHUNK]
        cells = ({name: {"value": value} for name, value in zip(names, row, strict=True)} for row in batch)
        text = ",".join(json.dumps(cell) for cell in cells)
        yield (("," if start else "") + text).encode()
    yield b"]}"


def _json_bi(result: QueryResult) -> Iterator[bytes]:
    metadata = {"fields": _fields_metadata(result), "pivots": [], "sql": result.sql}
    yield b'{"metadata": ' + json.dumps(metadata).encode() + b', "rows": '
    yield from _json_rows(result)
    yield b"}"


def _delimited(result: QueryResult, delimiter: str) -> Iterator[bytes]:
    """Header of field labels (as Looker writes its csv/txt), then one line per row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow([item.label for item in result.fields])
    for start in range(0, len(result.rows), _ROWS_PER_CHUNK):
        for row in result.rows[start : start + _ROWS_PER_CHUNK]:
            writer.writerow(["" if value is None else value for value in row])
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
    if buffer.getvalue():
        yield buffer.getvalue().encode()


def render(
    task_id: str, result: QueryResult, result_format: str, ran_at: str, runtime: float
) -> Iterator[bytes]:
    if result_format == "json":
        return _json_rows(result)
    if result_format == "json_detail":
        return _json_detail(task_id, result, ran_at, runtime)
    if result_format == "json_bi":
        return _json_bi(result)
    if result_format in ("csv", "txt"):
        return _delimited(result, "," if result_format == "csv" else "\t")
    return iter([result.sql.encode()])


def _error_detail(error: LookerQueryError) -> dict[str, Any]:
    return {
        "message": error.message,
        "message_details": error.details,
        "sql_error_loc": {"line": 1, "column": 1, "character": 1},
        "params": None,
        "level": "error",
    }


# --- request parsing -----------------------------------------------------------------------------


def _json_body(request: Request) -> dict[str, Any]:
    raw = request.get_data()
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError:
        raise LookerApiError(400, "Looker could not parse the JSON body of the request") from None
    if not isinstance(body, dict):
        raise LookerApiError(400, "The request body must be a JSON object")
    return body


def _flag(request: Request, name: str) -> bool | None:
    value = request.args.get(name)
    if value is None:
        return None
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise LookerApiError(400, f"Invalid value for parameter {name}: expected true or false, got {value!r}")


def _int_param(request: Request, name: str) -> int | None:
    value = request.args.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise LookerApiError(400, f"Invalid value for parameter {name}: expected an integer") from None


def _write_query(body: Mapping[str, Any]) -> dict[str, Any]:
    """The WriteQuery fields of a create_query body, checked like Looker's 422 validation."""
    for required in ("model", "view"):
        if not isinstance(body.get(required), str) or not body[required]:
            raise _validation_error(required, "missing", "This field is required.")
    query = {name: body.get(name) for name in _WRITE_QUERY_FIELDS if body.get(name) is not None}
    for name in _LIST_FIELDS:
        value = query.get(name)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(item, str) for item in value)
        ):
            raise _validation_error(name, "invalid", "must be an array of strings")
    if "filters" in query and not isinstance(query["filters"], dict):
        raise _validation_error("filters", "invalid", "must be an object of field: filter expression")
    for name in ("limit", "column_limit", "row_total"):
        if name in query:
            value = query[name]
            if isinstance(value, bool) or not re.fullmatch(r"-?\d+", str(value)):
                raise _validation_error(name, "invalid", "must be an integer written as a string")
            query[name] = str(value)
    if query.get("pivots"):
        raise _validation_error(
            "pivots", "invalid", "pivots are not supported by the query-relay Looker emulator"
        )
    model, view = str(query["model"]), str(query["view"])
    if model != MODEL:
        raise _validation_error("model", "not_found", f"Model '{model}' not found")
    if find_explore(model, view) is None:
        raise _validation_error("view", "not_found", f"Explore '{view}' not found in model '{MODEL}'")
    return query


def _canonical(query: Mapping[str, Any]) -> str:
    """Looker returns the existing query for an identical body: this is the identity."""
    return json.dumps({key: value for key, value in query.items() if key != "client_id"}, sort_keys=True)


def _selected_fields(document: dict[str, Any], request: Request) -> dict[str, Any]:
    """Honour Looker's `fields` URL parameter (a comma list of top-level keys)."""
    wanted = request.args.get("fields")
    if not wanted:
        return document
    names = {name.strip() for name in wanted.split(",")}
    return {key: value for key, value in document.items() if key in names}


# --- the emulator --------------------------------------------------------------------------------


class LookerEmulator(EmulatorServer):
    """The Looker emulator; `start()` it (or use `with`) and point a client at `base_url`."""

    def __init__(
        self,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        query_seconds: float = 0.0,
    ) -> None:
        super().__init__(OPERATIONS)
        self.config = LookerEmulatorConfig(query_seconds=query_seconds)
        self._client_id = client_id
        self._client_secret = client_secret
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}  # access token -> expiry (monotonic)
        self._issued: list[str] = []  # every token ever handed out, for tests that look for leaks
        self._queries: dict[str, _SavedQuery] = {}
        self._query_ids: dict[str, str] = {}  # canonical body -> id
        self._query_sequence = itertools.count(101)
        self._tasks: dict[str, _Task] = {}
        self._looks: dict[str, dict[str, Any]] = {}
        self._define_looks()

    def __repr__(self) -> str:
        required = self._client_id is not None or self._client_secret is not None
        return f"LookerEmulator(base_url={self._base_url!r}, credentials_required={required})"

    # -- test hooks --

    def task_states(self) -> dict[str, str]:
        now = time.monotonic()
        with self._lock:
            return {task_id: task.state(now, self.config) for task_id, task in self._tasks.items()}

    def issued_tokens(self) -> list[str]:
        """Every access token handed out so far (revoked and expired ones included)."""
        with self._lock:
            return list(self._issued)

    def revoke_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    def create_query(self, body: Mapping[str, Any]) -> str:
        """Save a query as `POST /queries` would (for tests); its id."""
        return self._save_query(_write_query(body)).id

    @property
    def look_ids(self) -> list[str]:
        return sorted(self._looks)

    def look_query_id(self, look_id: str) -> str:
        return str(self._looks[look_id]["query_id"])

    # -- dispatch --

    def handle(self, request: Request) -> Response:
        if request.path.startswith(self.control_prefix):
            return self._control(request)
        try:
            operation, action, needs_token = self._route(request)
            if needs_token:
                self._authenticate(request)
            fault = self.faults.take(operation, request)
            if fault is None:
                return action()
            if fault.expire:
                self._expire(request.path)
            return self.answer_with_fault(request, fault, lambda: self._guarded(action), self._fault)
        except LookerApiError as error:
            return self._error(error)
        except Exception:  # answer like Looker (JSON envelope) even when the emulator has a bug
            logger.exception("Looker emulator failed on %s %s", request.method, request.path)
            return self._error(LookerApiError(500, "unexpected error in the Looker emulator"))

    def _guarded(self, action: Callable[[], Response]) -> Response:
        """`action` answering its Looker error as `handle` would (faults run it outside that handler)."""
        try:
            return action()
        except LookerApiError as error:
            return self._error(error)

    def _fault(self, fault: InjectedFault) -> Response:
        assert fault.status is not None
        headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
        return self._error(LookerApiError(fault.status), headers)

    def _expire(self, path: str) -> None:
        """The query task a request names expires now (status `expired`, results 404)."""
        match = re.search(r"/(?:query_tasks|running_queries)/([^/]+)", path)
        if match is None:
            return
        with self._lock:
            task = self._tasks.get(match.group(1))
            if task is not None:
                task.expired = True

    def _route(self, request: Request) -> tuple[str, Callable[[], Response], bool]:
        if request.path == "/api/logout":  # where the official SDK logs out
            path = "/logout"
        elif request.path.startswith(API_PREFIX + "/"):
            path = request.path[len(API_PREFIX) :]
        else:
            raise LookerApiError(404)
        method = request.method
        table: list[tuple[str, str, str, Callable[..., Response]]] = [
            ("POST", r"/login", "login", lambda: self._login(request)),
            ("DELETE", r"/logout", "login", lambda: self._logout(request)),
            ("POST", r"/queries", "create_query", lambda: self._create_query(request)),
            ("GET", r"/queries/([^/]+)", "query", lambda query_id: self._get_query(request, query_id)),
            (
                "GET",
                r"/queries/([^/]+)/run/([^/]+)",
                "run_query",
                lambda query_id, result_format: self._run_query(request, query_id, result_format),
            ),
            ("GET", r"/looks/([^/]+)", "look", lambda look_id: self._get_look(request, look_id)),
            ("POST", r"/query_tasks", "create_task", lambda: self._create_task(request)),
            ("GET", r"/query_tasks/multi_results", "multi_results", lambda: self._multi_results(request)),
            ("GET", r"/query_tasks/([^/]+)", "status", lambda task_id: self._status(request, task_id)),
            ("GET", r"/query_tasks/([^/]+)/results", "results", self._results),
            ("DELETE", r"/running_queries/([^/]+)", "kill", self._kill),
        ]
        for route_method, pattern, operation, action in table:
            match = re.fullmatch(pattern, path)
            if match and route_method == method:
                return operation, functools.partial(action, *match.groups()), path != "/login"
        raise LookerApiError(404)

    def _authenticate(self, request: Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() in ("token", "bearer") and token:
            now = time.monotonic()
            with self._lock:
                expires_at = self._tokens.get(token)
                if expires_at is not None and now < expires_at:
                    return
                self._tokens.pop(token, None)
        raise LookerApiError(401)

    # -- login --

    def _login(self, request: Request) -> Response:
        client_id = request.form.get("client_id") or request.args.get("client_id") or ""
        client_secret = request.form.get("client_secret") or request.args.get("client_secret") or ""
        if not client_id or not client_secret or not self._accepts(client_id, client_secret):
            raise LookerApiError(404)  # Looker answers wrong credentials with 404 Not found
        token = secrets.token_urlsafe(30)
        ttl = max(self.config.token_ttl_seconds, 0.0)
        with self._lock:
            self._tokens[token] = time.monotonic() + ttl
            self._issued.append(token)
        return self._json(
            {"access_token": token, "token_type": "Bearer", "expires_in": round(ttl), "refresh_token": None}
        )

    def _accepts(self, client_id: str, client_secret: str) -> bool:
        if self._client_id is None and self._client_secret is None:
            return True
        id_ok = self._client_id is None or hmac.compare_digest(client_id, self._client_id)
        secret_ok = self._client_secret is None or hmac.compare_digest(client_secret, self._client_secret)
        return id_ok and secret_ok

    def _logout(self, request: Request) -> Response:
        _, _, token = request.headers.get("Authorization", "").partition(" ")
        with self._lock:
            self._tokens.pop(token.strip(), None)
        return Response(status=204)

    # -- queries and looks --

    def _create_query(self, request: Request) -> Response:
        saved = self._save_query(_write_query(_json_body(request)))
        return self._json(_selected_fields(saved.document(self.base_url), request))

    def _save_query(self, query: dict[str, Any]) -> _SavedQuery:
        identity = _canonical(query)
        with self._lock:
            existing = self._query_ids.get(identity)
            if existing is not None:
                return self._queries[existing]
            query_id = str(next(self._query_sequence))
            saved = _SavedQuery(
                id=query_id,
                body=query,
                slug=secrets.token_hex(4)[:7],
                client_id=query.get("client_id") or secrets.token_urlsafe(16)[:22],
            )
            self._queries[query_id] = saved
            self._query_ids[identity] = query_id
            return saved

    def _find_query(self, query_id: str) -> _SavedQuery:
        with self._lock:
            saved = self._queries.get(query_id)
        if saved is None:
            raise LookerApiError(404)
        return saved

    def _get_query(self, request: Request, query_id: str) -> Response:
        return self._json(_selected_fields(self._find_query(query_id).document(self.base_url), request))

    def _run_query(self, request: Request, query_id: str, result_format: str) -> Response:
        saved = self._find_query(query_id)
        if result_format not in RESULT_FORMATS:
            raise LookerApiError(
                400, f"Unsupported result format '{result_format}' (emulator: {', '.join(RESULT_FORMATS)})"
            )
        ran_at = datetime.now(UTC).isoformat()
        try:
            result = run_query(saved.spec(_int_param(request, "limit")))
        except LookerQueryError as error:
            return self._failed_result(query_id, result_format, error, ran_at, 0.0)
        return Response(
            render(query_id, result, result_format, ran_at, 0.0), content_type=_CONTENT_TYPES[result_format]
        )

    def _get_look(self, request: Request, look_id: str) -> Response:
        look = self._looks.get(look_id)
        if look is None:
            raise LookerApiError(404)
        query = self._find_query(str(look["query_id"])).document(self.base_url)
        return self._json(_selected_fields({**look, "query": query}, request))

    def _define_looks(self) -> None:
        definitions: list[tuple[str, str, dict[str, Any]]] = [
            (
                "7",
                "Orders by status",
                {
                    "fields": ["orders.status", "orders.count", "orders.total_revenue"],
                    "sorts": ["orders.status"],
                },
            ),
            (
                "8",
                "Revenue by country, 2024",
                {
                    "fields": ["users.country", "orders.count", "orders.total_revenue"],
                    "filters": {"orders.created_year": "2024"},
                    "sorts": ["orders.total_revenue desc"],
                },
            ),
            (
                "9",
                "Recent large orders",
                {
                    "fields": ["orders.id", "orders.created_date", "orders.total_amount", "users.country"],
                    "filters": {"orders.total_amount": ">300"},
                    "sorts": ["orders.created_date desc", "orders.id"],
                    "limit": "50",
                },
            ),
        ]
        for look_id, title, query in definitions:
            saved = self._save_query(_write_query({"model": MODEL, "view": "orders", **query}))
            self._looks[look_id] = {
                "can": dict(_CAN_LOOK),
                "content_metadata_id": str(100 + int(look_id)),
                "id": look_id,
                "title": title,
                "user_id": "1",
                "created_at": "2024-01-15T09:30:00.000+00:00",
                "updated_at": "2024-02-01T12:00:00.000+00:00",
                "deleted": False,
                "description": f"{title} (emulated)",
                "favorite_count": 0,
                "is_run_on_load": True,
                "model": {"id": MODEL, "label": "Ecommerce"},
                "public": False,
                "query_id": saved.id,
                "short_url": f"/x/{saved.slug}",
                "folder_id": "1",
                "user_name": "Emulated User",
                "view_count": 3,
                "url": f"/looks/{look_id}",
            }

    # -- query tasks --

    def _create_task(self, request: Request) -> Response:
        body = _json_body(request)
        query_id = body.get("query_id")
        if query_id is None or query_id == "":
            raise _validation_error("query_id", "missing", "This field is required.")
        result_format = body.get("result_format")
        if result_format is None:
            raise _validation_error("result_format", "missing", "This field is required.")
        if result_format not in DOCUMENTED_RESULT_FORMATS:
            raise _validation_error("result_format", "invalid", f"Invalid result_format '{result_format}'")
        if result_format not in RESULT_FORMATS:
            raise _validation_error(
                "result_format",
                "invalid",
                f"result_format '{result_format}' is not supported by the emulator",
            )
        saved = self._find_query(str(query_id))
        flags = {name: value for name in _TASK_FLAGS if (value := _flag(request, name)) is not None}
        limit = _int_param(request, "limit")
        now = time.monotonic()
        try:
            result, error = run_query(saved.spec(limit)), None
        except LookerQueryError as failure:
            result, error = None, failure
        task = _Task(
            id=secrets.token_hex(16),
            query=saved,
            result_format=str(result_format),
            source=body.get("source"),
            look_id=None if body.get("look_id") is None else str(body["look_id"]),
            dashboard_id=None if body.get("dashboard_id") is None else str(body["dashboard_id"]),
            flags=flags,
            path_prefix=request.args.get("path_prefix"),
            runs_at=now + max(self.config.queue_seconds, 0.0),
            completes_at=now + max(self.config.queue_seconds, 0.0) + max(self.config.query_seconds, 0.0),
            result=result,
            error=error,
            ran_at=datetime.now(UTC).isoformat(),
        )
        with self._lock:
            self._tasks[task.id] = task
        # Looker queues every new task: the creation answer always says "added".
        return self._json(_selected_fields(task.document("added"), request))

    def _find_task(self, task_id: str) -> tuple[_Task, str]:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                raise LookerApiError(404)
            return task, task.state(time.monotonic(), self.config)

    def _status(self, request: Request, task_id: str) -> Response:
        task, state = self._find_task(task_id)
        if state in ("added", "running"):
            with self._lock:
                if self.config.spurious_expired > 0:
                    self.config.spurious_expired -= 1
                    state = "expired"
        return self._json(_selected_fields(task.document(state), request))

    def _results(self, task_id: str) -> Response:
        task, state = self._find_task(task_id)
        if state in ("complete", "error"):
            with self._lock:
                if self.config.not_ready_reads > 0:  # the result is not stored yet
                    self.config.not_ready_reads -= 1
                    state = "running"
        if state in ("added", "running"):
            status = self.config.not_ready_status
            return Response(b"", status=status, content_type=None if status == 204 else JSON_TYPE)
        if state in ("killed", "expired"):
            raise LookerApiError(404)
        if task.error is not None:
            return self._failed_result(task.id, task.result_format, task.error, task.ran_at, task.runtime)
        assert task.result is not None
        body = render(task.id, task.result, task.result_format, task.ran_at, task.runtime)
        return Response(body, content_type=_CONTENT_TYPES[task.result_format])

    def _failed_result(
        self, result_id: str, result_format: str, error: LookerQueryError, ran_at: str, runtime: float
    ) -> Response:
        """json_detail carries the database error with HTTP 200; every other format answers 400."""
        if result_format == "json_detail":
            body = {
                "id": result_id,
                "from_cache": False,
                "ran_at": ran_at,
                "runtime": f"{runtime:.3f}",
                "sql": None,
                "errors": [_error_detail(error)],
                "data": [],
            }
            return self._json(body)
        if result_format == "json_bi":
            return self._json(
                {
                    "metadata": {"fields": {}, "pivots": [], "sql": None},
                    "rows": [{"looker_error": error.message}],
                }
            )
        raise LookerApiError(400, error.message)

    def _multi_results(self, request: Request) -> Response:
        ids = [part.strip() for part in request.args.get("query_task_ids", "").split(",") if part.strip()]
        if not ids:
            raise _validation_error("query_task_ids", "missing", "This field is required.")
        answer: dict[str, Any] = {}
        for task_id in ids:
            try:
                task, state = self._find_task(task_id)
            except LookerApiError:
                answer[task_id] = {"status": "missing"}
                continue
            answer[task_id] = self._multi_result(task, state)
        return self._json(answer)

    def _multi_result(self, task: _Task, state: str) -> dict[str, Any]:
        if state not in ("complete", "error"):
            return {"status": state}
        if task.error is not None:
            data: dict[str, Any] = {"id": task.id, "runtime": task.runtime, "sql": None}
            if task.result_format == "json_detail":
                data["errors"] = [_error_detail(task.error)]
            else:
                data["error"] = task.error.message
            return {"status": "error", "data": data}
        assert task.result is not None
        text = b"".join(render(task.id, task.result, task.result_format, task.ran_at, task.runtime)).decode()
        parsed = json.loads(text) if task.result_format.startswith("json") else text
        return {"status": "complete", "data": parsed}

    def _kill(self, task_id: str) -> Response:
        task, state = self._find_task(task_id)
        if state not in ("added", "running"):
            raise LookerApiError(404)  # finished, killed or expired: nothing runs any more
        with self._lock:
            task.killed = True
        return Response(status=204)

    # -- answers --

    def _json(self, body: object, status: int = 200) -> Response:
        return Response(json.dumps(body), status=status, content_type=JSON_TYPE)

    def _error(self, error: LookerApiError, headers: Mapping[str, str] | None = None) -> Response:
        response = self._json(error.body(), status=error.status)
        for name, value in (headers or {}).items():
            response.headers[name] = value
        return response

    # -- control API (tests) --

    def _control(self, request: Request) -> Response:
        route = (request.method, request.path[len(self.control_prefix) :].rstrip("/"))
        try:
            if route == ("GET", "config"):
                return self._json(asdict(self.config))
            if route == ("POST", "config"):
                return self._update_config(request)
            if route == ("GET", "faults"):
                return self._json(self.faults.pending())
            if route == ("POST", "faults"):
                self.faults.arm_from_json(control_body(request))
                return self._json(self.faults.pending())
            if route == ("DELETE", "faults"):
                self.faults.clear()
                return self._json([])
            if route == ("GET", "tasks"):
                return self._json(self.task_states())
            if route == ("DELETE", "tokens"):
                self.revoke_tokens()
                return self._json({})
            if route == ("GET", "requests"):
                return self._json([entry._asdict() for entry in self.requests])
            if route == ("DELETE", "requests"):
                self.clear_requests()
                return self._json([])
        except (TypeError, ValueError) as error:
            return self._json({"error": str(error)}, status=400)
        return self._json({"error": f"no control route {request.method} {request.path}"}, status=404)

    def _update_config(self, request: Request) -> Response:
        changes = control_body(request)
        known = {item.name: item for item in fields(self.config)}
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ValueError(f"unknown config field [{unknown[0]}]; known: {sorted(known)}")
        for name, value in changes.items():
            if name == "sql_error_status":
                if value not in ("error", "complete"):
                    raise ValueError("sql_error_status is 'error' or 'complete'")
                setattr(self.config, name, value)
            elif name in ("not_ready_status", "spurious_expired", "not_ready_reads"):
                setattr(self.config, name, int(value))
            else:
                setattr(self.config, name, float(value))
        return self._json(asdict(self.config))


def serve_forever(host: str, port: int, **kwargs: Any) -> None:
    """Serve a `LookerEmulator(**kwargs)` on host:port until interrupted (`query-relay emulate looker`)."""
    LookerEmulator(**kwargs).serve_forever(host, port)
