"""A Veza assessment-query emulator: async query-spec tasks over real HTTP (docs/upstreams/veza.md).

Endpoints:
- `POST /api/v1/assessments/query_spec:result_async_create` (body: the query spec, with optional
  `page_size` / `page_token`) answers an `AsyncTask`;
- `GET /api/v1/assessments/async_tasks/{id}` answers the task: `state` PENDING -> IN_PROGRESS ->
  COMPLETE, then `status` SUCCEEDED with `result`, or FAILED with `error_reason`, or CANCELED;
- `POST /api/v1/assessments/query_spec:nodes?page_size=&page_token=` is the synchronous nodes
  call (`{"values", "path_values", "next_page_token", "has_more"}`), handy for checking results.
Every call needs `Authorization: Bearer <api_key>` when the emulator was given a key (401
`Unauthenticated` otherwise). Errors use Veza's envelope `{"code", "message", "request_id",
"details"}`. What a spec can select from the generated graph is described in `veza_data`.

Results: a spec with `include_nodes: true` gives a page of nodes (`result_type` "nodes",
`nodes_value: {values, next_page_token, has_more}`); otherwise a count (`result_type` "number",
`number_value`). A page holds `page_size` nodes (default `config.default_page_size`, capped at
`config.max_page_size`); the next page is another task created with `page_token`. Page tokens are
opaque and bound to the spec: a token from another spec is a 400.

Time: a task is PENDING for `config.pending_seconds`, IN_PROGRESS until `config.query_seconds`
after its creation (both read when it is created), then COMPLETE. The create call answers the
task's state at once, so with `query_seconds` 0 it is already COMPLETE (with its result). Tasks are
forgotten `config.task_ttl_seconds` after creation (then 404 `NotFound`; the TTL is read when a
task is looked at, so lowering it expires existing tasks).

`SyntheticUser` nodes number `config.synthetic_nodes` (for large results).

Answer variants (`config`, all changeable at runtime): `wrapped` (`{"task": AsyncTask}` or the bare
task), `enums_as_numbers` (`"state": 3` instead of `"COMPLETE"`), `int64_as_strings`
(`"number_value": "6"` or `6`), `omit_defaults` (leave out zero enums, false, "" and empty lists,
as protobuf JSON may), `empty_page_before_last` (the last page of nodes is preceded by an empty
page with `has_more: true`), `fail_after_seconds` / `cancel_after_seconds` (tasks created while
set end FAILED with `fail_reason` / CANCELED that long after creation).

Test hooks, in process and over HTTP (no auth, not logged in `requests`):
- `config` (`VezaEmulatorConfig`); HTTP `GET|POST /_emulator/config`.
- `fail_next(operation, status=None, times=1, retry_after=None, ...)`: operations `submit`,
  `task`, `nodes` or `any`; a status is answered with the envelope for it (429 `ResourceExhausted`
  with Retry-After, 502 an HTML gateway page, 503 `Unavailable`, ...). Other kinds (see
  emulators.http): `delay_seconds`, `reset`, `truncate_after_bytes`, and `expire` (the task in
  the path expires now: 404 `NotFound`). HTTP `POST|GET|DELETE /_emulator/faults`.
- `task_states()` -> `{id: "pending" | "running" | "succeeded" | "failed" | "canceled" | "expired"}`;
  HTTP `GET /_emulator/tasks`.
- `requests` (method, path, query) and `submitted_specs` (the JSON bodies of creates, in order);
  HTTP `GET|DELETE /_emulator/requests`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from werkzeug.wrappers import Request, Response

from .http import EmulatorServer
from .veza_data import SpecError, select_nodes

logger = logging.getLogger(__name__)

__all__ = ["VezaEmulator", "VezaEmulatorConfig", "serve_forever"]

JSON_TYPE = "application/json"
API = "/api/v1/assessments"
SUBMIT_PATH = f"{API}/query_spec:result_async_create"
NODES_PATH = f"{API}/query_spec:nodes"
TASK_PATH = re.compile(rf"{re.escape(API)}/async_tasks/([^/]+)")
OPERATIONS = ("submit", "task", "nodes")

STATES = ("UNKNOWN_STATE", "PENDING", "IN_PROGRESS", "COMPLETE")
STATUSES = ("UNKNOWN_STATUS", "SUCCEEDED", "FAILED", "CANCELED")

# The fields of the query spec request that the emulator accepts (protobuf JSON rejects others).
SPEC_FIELDS = frozenset(
    {
        "query_type",
        "source_node_types",
        "relates_to_exp",
        "access_filter",
        "node_relationship_type",
        "result_value_type",
        "include_nodes",
        "include_sub_permissions",
        "include_permissions_summary",
        "include_all_source_tags_in_results",
        "include_all_destination_tags_in_results",
        "no_relation",
        "path_summary",
        "snapshot_id",
        "customized_variables",
        "properties_to_get",
        "order_by",
        "result_order_by",
        "fetch_cached_results",
        "destination_node_types",
        "required_intermediate_node_types",
        "avoided_intermediate_node_types",
        "raw_permissions",
        "effective_permissions",
        "page_size",
        "page_token",
    }
)

_ERRORS_BY_STATUS = {
    400: ("InvalidArgument", "emulated invalid argument"),
    401: ("Unauthenticated", "emulated: invalid or expired API key"),
    403: ("PermissionDenied", "emulated: the API key may not run assessment queries"),
    404: ("NotFound", "emulated: not found"),
    409: ("Aborted", "emulated conflict"),
    429: ("ResourceExhausted", "emulated: rate limit exceeded, retry later"),
    500: ("Internal", "emulated internal error"),
    503: ("Unavailable", "emulated: the service is unavailable"),
    504: ("DeadlineExceeded", "emulated: the request timed out"),
}
_DEFAULT_VALUES: tuple[Any, ...] = (False, "", [], 0, "0", "UNKNOWN_STATE", "UNKNOWN_STATUS")
_GATEWAY_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
)


@dataclass
class VezaEmulatorConfig:
    """Knobs tests turn at runtime (in process, or via `POST /_emulator/config`)."""

    query_seconds: float = 0.0
    pending_seconds: float = 0.1
    default_page_size: int = 100
    max_page_size: int = 1000
    task_ttl_seconds: float = 3600.0
    synthetic_nodes: int = 1000
    wrapped: bool = True
    enums_as_numbers: bool = False
    int64_as_strings: bool = True
    omit_defaults: bool = False
    empty_page_before_last: bool = False
    fail_after_seconds: float | None = None
    fail_reason: str = "emulated failure: the graph query exceeded its memory budget"
    cancel_after_seconds: float | None = None


class VezaApiError(Exception):
    """An error answer in Veza's envelope."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_for_status(status: int, message: str | None = None) -> VezaApiError:
    code, default = _ERRORS_BY_STATUS.get(status, ("Unknown", f"emulated error {status}"))
    return VezaApiError(status, code, message or default)


# --- tasks ---------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Task:
    """One query task; its life is computed from its timestamps (monotonic seconds)."""

    id: str
    spec: dict[str, Any]
    created_at: float
    created_at_wall: str
    running_at: float
    finishes_at: float
    outcome: str = "SUCCEEDED"  # how it ends: SUCCEEDED, FAILED or CANCELED
    error_reason: str = ""

    def state(self, now: float) -> str:
        if now >= self.finishes_at:
            return "COMPLETE"
        return "IN_PROGRESS" if now >= self.running_at else "PENDING"

    def life(self, now: float, ttl_seconds: float) -> str:
        if now >= self.created_at + ttl_seconds:
            return "expired"
        state = self.state(now)
        if state == "COMPLETE":
            return self.outcome.lower()
        return "running" if state == "IN_PROGRESS" else "pending"


@dataclass(frozen=True)
class _Page:
    nodes: list[dict[str, Any]]
    next_page_token: str
    has_more: bool


def _fingerprint(spec: dict[str, Any]) -> str:
    """Identifies a spec without its paging fields: a page token only works for its own spec."""
    core = {key: value for key, value in spec.items() if key not in ("page_size", "page_token")}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def _encode_token(fingerprint: str, offset: int, empty_served: bool) -> str:
    raw = json.dumps({"f": fingerprint, "o": offset, "e": int(empty_served)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_token(token: str, fingerprint: str) -> tuple[int, bool]:
    try:
        padded = token + "=" * (-len(token) % 4)
        document = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        offset, empty_served, token_fingerprint = int(document["o"]), bool(document["e"]), document["f"]
    except (binascii.Error, UnicodeEncodeError, ValueError, KeyError, TypeError):
        raise SpecError("invalid page_token") from None
    if token_fingerprint != fingerprint or offset < 0:
        raise SpecError("page_token does not belong to this query spec")
    return offset, empty_served


# --- the emulator --------------------------------------------------------------------------------


class VezaEmulator(EmulatorServer):
    """The Veza emulator; `start()` it (or use `with`) and point a client at `base_url`."""

    def __init__(self, *, api_key: str | None = None, query_seconds: float = 0.0) -> None:
        super().__init__(OPERATIONS)
        self.config = VezaEmulatorConfig(query_seconds=query_seconds)
        self._api_key = api_key
        self._lock = threading.Lock()
        self._tasks: dict[str, _Task] = {}
        self.submitted_specs: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return f"VezaEmulator(base_url={self._base_url!r}, auth_required={self._api_key is not None})"

    def task_states(self) -> dict[str, str]:
        now = time.monotonic()
        with self._lock:
            ttl = self.config.task_ttl_seconds
            return {task_id: task.life(now, ttl) for task_id, task in self._tasks.items()}

    def clear_requests(self) -> None:
        super().clear_requests()
        with self._lock:
            self.submitted_specs.clear()

    # -- dispatch --

    def handle(self, request: Request) -> Response:
        if request.path.startswith(self.control_prefix):
            return self._control(request)
        request_id = uuid.uuid4().hex
        try:
            operation, answer = self._route(request)
            self._authenticate(request)
            fault = self.faults.take(operation, request)
            if fault is None:
                return answer()
            if fault.expire:
                self._expire(request.path)
            return self.answer_with_fault(
                request,
                fault,
                lambda: self._guarded(answer, request_id),
                lambda f: self._fault(f.status or 500, f.retry_after, request_id),
            )
        except VezaApiError as error:
            return self._error(error, request_id)
        except SpecError as error:
            return self._error(VezaApiError(400, "InvalidArgument", str(error)), request_id)
        except Exception:  # answer in Veza's envelope even when the emulator has a bug
            logger.exception("Veza emulator failed on %s %s", request.method, request.path)
            return self._error(error_for_status(500, "unexpected error in the Veza emulator"), request_id)

    def _guarded(self, answer: Callable[[], Response], request_id: str) -> Response:
        """`answer` giving its Veza error as `handle` would (faults run it outside that handler)."""
        try:
            return answer()
        except VezaApiError as error:
            return self._error(error, request_id)
        except SpecError as error:
            return self._error(VezaApiError(400, "InvalidArgument", str(error)), request_id)

    def _expire(self, path: str) -> None:
        """The task a request names expires now (404 `NotFound` from then on, as after its TTL)."""
        match = TASK_PATH.fullmatch(path)
        if match is None:
            return
        with self._lock:
            task = self._tasks.get(match.group(1))
            if task is not None:
                task.created_at -= self.config.task_ttl_seconds + (time.monotonic() - task.created_at)

    def _route(self, request: Request) -> tuple[str, Callable[[], Response]]:
        path, method = request.path, request.method
        if path == SUBMIT_PATH:
            operation, allowed, answer = "submit", "POST", lambda: self._submit(request)
        elif path == NODES_PATH:
            operation, allowed, answer = "nodes", "POST", lambda: self._nodes(request)
        elif match := TASK_PATH.fullmatch(path):
            task_id = match.group(1)
            operation, allowed, answer = "task", "GET", lambda: self._get_task(task_id)
        else:
            raise VezaApiError(404, "NotFound", "Not Found")
        if method != allowed:
            raise VezaApiError(405, "Unimplemented", "Method Not Allowed")
        return operation, answer

    def _authenticate(self, request: Request) -> None:
        if self._api_key is None:
            return
        scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), self._api_key):
            return
        raise VezaApiError(401, "Unauthenticated", "invalid or missing API key")

    # -- endpoints --

    def _submit(self, request: Request) -> Response:
        spec = self._spec(request)
        with self._lock:
            self.submitted_specs.append(spec)
        self._select(spec)  # a spec Veza would refuse is refused now, not when the task runs
        _page_size(spec.get("page_size"), self.config)
        if spec.get("page_token"):
            _decode_token(str(spec["page_token"]), _fingerprint(spec))
        task = self._create(spec)
        return self._json(self._wrap(self._render_task(task, time.monotonic())))

    def _get_task(self, task_id: str) -> Response:
        now = time.monotonic()
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None or task.life(now, self.config.task_ttl_seconds) == "expired":
            raise VezaApiError(404, "NotFound", f"async task {task_id} not found")
        return self._json(self._wrap(self._render_task(task, now)))

    def _nodes(self, request: Request) -> Response:
        spec = self._spec(request)
        for name in ("page_size", "page_token"):
            if name in request.args:
                spec[name] = request.args[name]
        page = self._page(spec, self._select(spec))
        return self._json(
            {
                "values": page.nodes,
                "path_values": [],
                "next_page_token": page.next_page_token,
                "has_more": page.has_more,
            }
        )

    # -- tasks --

    def _spec(self, request: Request) -> dict[str, Any]:
        try:
            body = json.loads(request.get_data() or b"")
        except ValueError as error:
            raise SpecError(f"request body is not valid JSON: {error}") from None
        if not isinstance(body, dict):
            raise SpecError("request body must be a JSON object (the query spec)")
        unknown = sorted(set(body) - SPEC_FIELDS)
        if unknown:
            raise SpecError(f'proto: unknown field "{unknown[0]}"')
        return body

    def _create(self, spec: dict[str, Any]) -> _Task:
        now = time.monotonic()
        config = self.config
        duration = max(0.0, config.query_seconds)
        task = _Task(
            id=str(uuid.uuid4()),
            spec=spec,
            created_at=now,
            created_at_wall=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            running_at=now + min(max(0.0, config.pending_seconds), duration),
            finishes_at=now + duration,
        )
        endings = [
            (seconds, outcome)
            for seconds, outcome in (
                (config.fail_after_seconds, "FAILED"),
                (config.cancel_after_seconds, "CANCELED"),
            )
            if seconds is not None
        ]
        if endings:
            seconds, task.outcome = min(endings)
            task.finishes_at = now + max(0.0, seconds)
            task.running_at = min(task.running_at, task.finishes_at)
            task.error_reason = config.fail_reason if task.outcome == "FAILED" else "the task was canceled"
        with self._lock:
            self._tasks[task.id] = task
        return task

    def _render_task(self, task: _Task, now: float) -> dict[str, Any]:
        state = task.state(now)
        status = task.outcome if state == "COMPLETE" else "UNKNOWN_STATUS"
        body: dict[str, Any] = {
            "id": task.id,
            "state": self._enum(STATES, state),
            "status": self._enum(STATUSES, status),
            "created_at": task.created_at_wall,
        }
        if status == "SUCCEEDED":
            body["result"] = self._result(task.spec)
        elif status in ("FAILED", "CANCELED"):
            body["error_reason"] = task.error_reason
        return self._trim(body)

    def _select(self, spec: dict[str, Any]) -> list[dict[str, Any]]:
        return select_nodes(spec, synthetic_count=max(0, self.config.synthetic_nodes))

    def _result(self, spec: dict[str, Any]) -> dict[str, Any]:
        nodes = self._select(spec)
        if not spec.get("include_nodes"):
            count: int | str = str(len(nodes)) if self.config.int64_as_strings else len(nodes)
            return {"result_type": "number", "number_value": count}
        page = self._page(spec, nodes)
        source_types = spec["source_node_types"]["nodes"]
        return {
            "result_type": "nodes",
            "result_node_type": source_types[0]["node_type"],
            "nodes_value": {
                "values": page.nodes,
                "next_page_token": page.next_page_token,
                "has_more": page.has_more,
            },
        }

    def _page(self, spec: dict[str, Any], nodes: list[dict[str, Any]]) -> _Page:
        size = _page_size(spec.get("page_size"), self.config)
        fingerprint = _fingerprint(spec)
        offset, empty_served = 0, False
        if spec.get("page_token"):
            offset, empty_served = _decode_token(str(spec["page_token"]), fingerprint)
        is_last = offset + size >= len(nodes)
        if self.config.empty_page_before_last and is_last and not empty_served:
            return _Page([], _encode_token(fingerprint, offset, True), has_more=True)
        if is_last:
            return _Page(nodes[offset:], "", has_more=False)
        return _Page(nodes[offset : offset + size], _encode_token(fingerprint, offset + size, False), True)

    # -- answers --

    def _enum(self, names: tuple[str, ...], name: str) -> str | int:
        return names.index(name) if self.config.enums_as_numbers else name

    def _trim(self, body: dict[str, Any]) -> dict[str, Any]:
        return _without_defaults(body) if self.config.omit_defaults else body

    def _wrap(self, task: dict[str, Any]) -> dict[str, Any]:
        return {"task": task} if self.config.wrapped else task

    @staticmethod
    def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        text = json.dumps(body, separators=(",", ":"))
        return Response(text, status=status, headers=headers, content_type=JSON_TYPE)

    def _error(self, error: VezaApiError, request_id: str, headers: dict[str, str] | None = None) -> Response:
        envelope = {"code": error.code, "message": error.message, "request_id": request_id, "details": []}
        return self._json(envelope, status=error.status, headers=headers)

    def _fault(self, status: int, retry_after: float | None, request_id: str) -> Response:
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        if status == 502:  # what a load balancer in front of the API answers
            return Response(_GATEWAY_PAGE, status=502, headers=headers, content_type="text/html")
        return self._error(error_for_status(status), request_id, headers)

    # -- control API (tests) --

    def _control(self, request: Request) -> Response:
        return self.control(request, self.config, {("GET", "tasks"): self.task_states})


def _without_defaults(value: dict[str, Any]) -> dict[str, Any]:
    """The answer as protobuf JSON may give it: zero enums, false, "" and empty lists left out
    (node objects, inside lists, keep their shape)."""
    return {
        key: _without_defaults(item) if isinstance(item, dict) else item
        for key, item in value.items()
        if item not in _DEFAULT_VALUES
    }


def _page_size(value: Any, config: VezaEmulatorConfig) -> int:
    if value in (None, "", 0, "0"):
        return config.default_page_size
    try:
        size = int(value)  # protobuf JSON takes int64 as a number or a string
    except (TypeError, ValueError):
        raise SpecError(f'invalid page_size "{value}"') from None
    if size < 0:
        raise SpecError("page_size must not be negative")
    # "Fewer results may be returned even when more pages exist."
    return min(size, config.max_page_size)


def serve_forever(host: str, port: int, **kwargs: Any) -> None:
    """Serve a `VezaEmulator(**kwargs)` on host:port until interrupted (`query-relay emulate veza`)."""
    VezaEmulator(**kwargs).serve_forever(host, port)
