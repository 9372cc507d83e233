"""A small base for upstream emulators: a threaded werkzeug server on loopback, a request log and
a queue of injected faults. Each emulator subclasses `EmulatorServer` and answers `handle(request)`.

Vendor specifics (routes, error envelopes, auth schemes) stay in the subclasses; this module only
holds the plumbing they share, so Looker and Veza emulators behave like the ES|QL one in tests.

Faults (`fail_next(operation, status=None, *, times=1, retry_after=None, delay_seconds=None,
reset=False, truncate_after_bytes=None, trickle_seconds=None, echo_credentials=False, expire=False)`),
each consumed by the next `times` requests of `operation` (after routing and authentication), kinds
combined in this order:

- `delay_seconds`: hold the request that long before answering (beyond a client's timeout, the
  client gives up; the emulator still does the work afterwards, as a real server would);
- `reset`: close the connection without answering (the client sees a transport error);
- `expire` (emulators that keep tasks): the task the request names expires first;
- `status` (+ `retry_after`): answer the vendor's error envelope for that status; without a status
  the request is handled normally;
- `truncate_after_bytes`: send only that many bytes of the body (chunked, no Content-Length), then
  close the connection (the client sees an incomplete body even when the whole body was shorter);
- `trickle_seconds`: send the answer's body one byte at a time, that long apart (every read of a
  client gets a byte in time: only a deadline on the whole exchange ends it);
- `echo_credentials` (with a status): every string of the error answer, its type and its reason
  alike, quotes the credentials the request carried (its Authorization header, the pair inside a
  Basic one, a login form's fields), as a careless or hostile upstream might.

`when` (in process only) is a predicate on the werkzeug Request: only requests it accepts get the
fault, e.g. ES|QL's Fetch GET (no `wait_for_completion_timeout`) and not its polls.

Over HTTP: `POST /_emulator/faults` with a JSON object of the same names (`arm_from_json`).
"""

from __future__ import annotations

import abc
import base64
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, Self

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

logger = logging.getLogger(__name__)

ANY_OPERATION = "any"
_POLL_SECONDS = 0.02
#: Where `answer_with_fault` leaves a fault the WSGI layer must act on (reset, truncate).
_FAULT_ENVIRON_KEY = "query_relay_local.fault"


class RecordedRequest(NamedTuple):
    """One request an emulator received (control API calls under the emulator's prefix excluded)."""

    method: str
    path: str
    query: dict[str, str]


@dataclass(frozen=True)
class InjectedFault:
    """What to do instead of (or around) handling one request; see the module doc for the kinds."""

    operation: str
    status: int | None = None
    retry_after: float | None = None
    delay_seconds: float | None = None
    reset: bool = False
    truncate_after_bytes: int | None = None
    trickle_seconds: float | None = None
    echo_credentials: bool = False
    expire: bool = False
    #: Only requests it accepts get the fault (in process only; e.g. a GET without a long-poll).
    when: Callable[[Request], bool] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {self.status}")
        if self.retry_after is not None and self.status is None:
            raise ValueError("retry_after goes with a status")
        if self.delay_seconds is not None and self.delay_seconds < 0:
            raise ValueError(f"delay_seconds must be at least 0, got {self.delay_seconds}")
        if self.truncate_after_bytes is not None and self.truncate_after_bytes < 0:
            raise ValueError(f"truncate_after_bytes must be at least 0, got {self.truncate_after_bytes}")
        if self.reset and (self.status is not None or self.truncate_after_bytes is not None):
            raise ValueError("a reset answers nothing: it takes no status and no truncate_after_bytes")
        if self.echo_credentials and self.status is None:
            raise ValueError("echo_credentials goes with a status (it is said in the error answer)")
        if self.trickle_seconds is not None and not self.trickle_seconds > 0:
            raise ValueError(f"trickle_seconds must be more than 0, got {self.trickle_seconds}")
        if self.trickle_seconds is not None and (self.reset or self.truncate_after_bytes is not None):
            raise ValueError("a trickled answer is whole: it takes no reset and no truncate_after_bytes")
        kinds = (self.status, self.delay_seconds, self.truncate_after_bytes, self.trickle_seconds)
        if all(kind is None for kind in kinds) and not (self.reset or self.expire):
            needs = "a status, delay_seconds, reset, truncate_after_bytes, trickle_seconds or expire"
            raise ValueError(f"a fault needs {needs}")

    def describe(self) -> dict[str, Any]:
        """operation, status and retry_after always; the other kinds only when set."""
        described: dict[str, Any] = {
            "operation": self.operation,
            "status": self.status,
            "retry_after": self.retry_after,
        }
        for name in ("delay_seconds", "truncate_after_bytes", "trickle_seconds"):
            if getattr(self, name) is not None:
                described[name] = getattr(self, name)
        for name in ("reset", "echo_credentials", "expire"):
            if getattr(self, name):
                described[name] = True
        if self.when is not None:
            described["when"] = getattr(self.when, "__name__", "a predicate")
        return described


_FAULT_FIELDS = frozenset(item.name for item in fields(InjectedFault) if item.name != "when") | {"times"}


class FaultQueue:
    """Faults armed by tests, consumed by the next matching requests (thread-safe)."""

    def __init__(self, operations: Iterable[str]) -> None:
        self._operations = frozenset(operations) | {ANY_OPERATION}
        self._lock = threading.Lock()
        self._armed: list[list[Any]] = []  # [fault, remaining times], oldest first

    def arm(
        self,
        operation: str,
        status: int | None = None,
        *,
        times: int = 1,
        retry_after: float | None = None,
        delay_seconds: float | None = None,
        reset: bool = False,
        truncate_after_bytes: int | None = None,
        trickle_seconds: float | None = None,
        echo_credentials: bool = False,
        expire: bool = False,
        when: Callable[[Request], bool] | None = None,
    ) -> None:
        if operation not in self._operations:
            raise ValueError(f"unknown operation {operation!r}; expected one of {sorted(self._operations)}")
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        fault = InjectedFault(
            operation,
            status,
            retry_after,
            delay_seconds=delay_seconds,
            reset=reset,
            truncate_after_bytes=truncate_after_bytes,
            trickle_seconds=trickle_seconds,
            echo_credentials=echo_credentials,
            expire=expire,
            when=when,
        )
        with self._lock:
            self._armed.append([fault, times])

    def arm_from_json(self, spec: Mapping[str, Any]) -> None:
        """Arm from a control API body: `{"operation", "status"?, "times"?, "retry_after"?, ...}`."""
        unknown = sorted(set(spec) - _FAULT_FIELDS)
        if unknown:
            raise ValueError(f"unknown fault field [{unknown[0]}]; known: {sorted(_FAULT_FIELDS)}")

        def number(name: str, kind: Callable[[Any], Any]) -> Any:
            return None if spec.get(name) is None else kind(spec[name])

        self.arm(
            str(spec.get("operation")),
            number("status", int),
            times=int(spec.get("times", 1)),
            retry_after=number("retry_after", float),
            delay_seconds=number("delay_seconds", float),
            reset=bool(spec.get("reset", False)),
            truncate_after_bytes=number("truncate_after_bytes", int),
            trickle_seconds=number("trickle_seconds", float),
            echo_credentials=bool(spec.get("echo_credentials", False)),
            expire=bool(spec.get("expire", False)),
        )

    def take(self, operation: str, request: Request | None = None) -> InjectedFault | None:
        """The oldest armed fault matching `operation` (or armed for any operation) and accepting
        `request` (when it has a `when`), if one is left."""
        with self._lock:
            for entry in self._armed:
                fault: InjectedFault = entry[0]
                if fault.when is not None and (request is None or not fault.when(request)):
                    continue
                if fault.operation in (operation, ANY_OPERATION):
                    entry[1] -= 1
                    if entry[1] == 0:
                        self._armed.remove(entry)
                    return fault
        return None

    def clear(self) -> None:
        with self._lock:
            self._armed.clear()

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{**fault.describe(), "times": n} for fault, n in self._armed]


class _QuietRequestHandler(WSGIRequestHandler):
    """werkzeug logs every request to stderr by default; emulators keep their own request log."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


class EmulatorServer(abc.ABC):
    """Serves `handle` on a loopback port from a background thread.

    `start()` returns the base URL (port 0 picks a free port); `stop()` shuts the server down.
    Use as a context manager in tests. Requests are answered concurrently (one thread each), so
    a long-poll never blocks other calls.
    """

    #: Paths under this prefix are the emulator's own control API: never logged, never faulted.
    control_prefix = "/_emulator/"

    def __init__(self, fault_operations: Iterable[str]) -> None:
        self.requests: list[RecordedRequest] = []
        self.faults = FaultQueue(fault_operations)
        self._requests_lock = threading.Lock()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None

    @abc.abstractmethod
    def handle(self, request: Request) -> Response:
        """Answer one request (the control API included)."""

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError(f"{type(self).__name__} is not running; call start() first")
        return self._base_url

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} is already running at {self._base_url}")
        self._server = self._make_server(host, port)
        self._thread = threading.Thread(
            # a short poll interval makes stop() quick (the default 0.5 s adds up over many tests)
            target=self._server.serve_forever,
            kwargs={"poll_interval": _POLL_SECONDS},
            name=f"{type(self).__name__}@{self._base_url}",
            daemon=True,
        )
        self._thread.start()
        logger.debug("%s listening on %s", type(self).__name__, self._base_url)
        return self.base_url

    def serve_forever(self, host: str, port: int) -> None:
        """Serve in the calling thread until interrupted (for `query-relay emulate`)."""
        self._server = self._make_server(host, port)
        logger.info("%s listening on %s", type(self).__name__, self._base_url)
        try:
            self._server.serve_forever()
        finally:
            self._server.server_close()
            self._server = None

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        self._base_url = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def fail_next(
        self,
        operation: str,
        status: int | None = None,
        *,
        times: int = 1,
        retry_after: float | None = None,
        delay_seconds: float | None = None,
        reset: bool = False,
        truncate_after_bytes: int | None = None,
        trickle_seconds: float | None = None,
        echo_credentials: bool = False,
        expire: bool = False,
        when: Callable[[Request], bool] | None = None,
    ) -> None:
        """Give the next `times` requests of `operation` a fault (see the module doc for the kinds):
        `fail_next("get", 503)` answers an error; `fail_next("get", reset=True)` drops the
        connection; `fail_next("get", delay_seconds=3)` answers late; `fail_next("get",
        truncate_after_bytes=4096)` cuts the body; `fail_next("get", trickle_seconds=2)` sends it a
        byte every 2 s; `fail_next("get", expire=True)` expires the
        task. `when` (a predicate on the request) narrows which requests of `operation` get it."""
        self.faults.arm(
            operation,
            status,
            times=times,
            retry_after=retry_after,
            delay_seconds=delay_seconds,
            reset=reset,
            truncate_after_bytes=truncate_after_bytes,
            trickle_seconds=trickle_seconds,
            echo_credentials=echo_credentials,
            expire=expire,
            when=when,
        )

    def answer_with_fault(
        self,
        request: Request,
        fault: InjectedFault,
        answer: Callable[[], Response],
        error: Callable[[InjectedFault], Response],
    ) -> Response:
        """Apply the transport-level kinds of `fault` around `answer` (the normal answer) or `error`
        (the vendor's error answer for `fault.status`). Subclasses handle `expire` before calling."""
        if fault.delay_seconds:
            time.sleep(fault.delay_seconds)
        if fault.reset or fault.truncate_after_bytes is not None or fault.trickle_seconds is not None:
            request.environ[_FAULT_ENVIRON_KEY] = fault  # acted on by _wsgi_app
        if fault.reset:
            return Response(status=500)  # never sent: the connection is dropped instead
        if fault.status is None:
            return answer()
        return _echoing(error(fault), request) if fault.echo_credentials else error(fault)

    def clear_requests(self) -> None:
        with self._requests_lock:
            self.requests.clear()

    def control(
        self,
        request: Request,
        config: Any,
        routes: Mapping[tuple[str, str], Callable[[], object]] | None = None,
        *,
        update: Callable[[dict[str, Any]], None] | None = None,
    ) -> Response:
        """Answer the control API (``/_emulator/...``) every emulator shares: ``config`` (a dataclass;
        GET it, POST changes: ``update``, by default ``update_config``), ``faults`` (GET, POST to
        arm, DELETE) and ``requests`` (GET, DELETE), plus the emulator's own ``routes``
        ((method, name) -> the JSON answer). A refused change is 400, an unknown route 404."""
        route = (request.method, request.path[len(self.control_prefix) :].rstrip("/"))

        def changed() -> object:
            (update or (lambda changes: update_config(config, changes)))(control_body(request))
            return asdict(config)

        def armed() -> object:
            self.faults.arm_from_json(control_body(request))
            return self.faults.pending()

        def cleared(clear: Callable[[], None]) -> Callable[[], object]:
            def answer() -> object:
                clear()
                return []

            return answer

        answers: dict[tuple[str, str], Callable[[], object]] = {
            ("GET", "config"): lambda: asdict(config),
            ("POST", "config"): changed,
            ("GET", "faults"): self.faults.pending,
            ("POST", "faults"): armed,
            ("DELETE", "faults"): cleared(self.faults.clear),
            ("GET", "requests"): lambda: [entry._asdict() for entry in self.requests],
            ("DELETE", "requests"): cleared(self.clear_requests),
            **(routes or {}),
        }
        answer = answers.get(route)
        if answer is None:
            return control_json({"error": f"no control route {request.method} {request.path}"}, 404)
        try:
            return control_json(answer())
        except (TypeError, ValueError) as error:
            return control_json({"error": str(error)}, 400)

    def _make_server(self, host: str, port: int) -> BaseWSGIServer:
        server = make_server(host, port, self._wsgi_app, threaded=True, request_handler=_QuietRequestHandler)
        bound_host, bound_port = server.server_address[:2]
        self._base_url = f"http://{url_host(str(bound_host))}:{bound_port}"
        return server

    def _wsgi_app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        if not request.path.startswith(self.control_prefix):
            with self._requests_lock:
                self.requests.append(
                    RecordedRequest(request.method, request.path, dict(request.args.items()))
                )
        response = self.handle(request)
        fault: InjectedFault | None = environ.get(_FAULT_ENVIRON_KEY)
        if fault is not None and fault.reset:
            _drop_connection(environ)
            raise ConnectionResetError("emulated fault: connection reset before the answer")
        if fault is not None and fault.truncate_after_bytes is not None:
            return _truncated(response(environ, _without_content_length(start_response)), fault, environ)
        if fault is not None and fault.trickle_seconds is not None:
            return _trickled(response(environ, start_response), fault.trickle_seconds)
        return response(environ, start_response)


def url_host(host: str) -> str:
    """A host as a URL writes it (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def _drop_connection(environ: WSGIEnvironment) -> None:
    """Shut the client's socket both ways: it reads end-of-stream where an answer (or the rest of
    one) should be. werkzeug then sees a dropped connection and ends the request quietly."""
    connection: socket.socket = environ["werkzeug.socket"]
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        logger.debug("the client had already closed the connection")


def _without_content_length(start_response: StartResponse) -> StartResponse:
    """No Content-Length: werkzeug answers chunked, so a cut body is incomplete whatever its length."""

    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        kept = [(name, value) for name, value in headers if name.lower() != "content-length"]
        return start_response(status, kept, exc_info)

    return start


def _echoing(response: Response, request: Request) -> Response:
    """``response`` with every string of its JSON body followed by the request's credentials."""
    authorization = request.headers.get("Authorization", "")
    _, _, credential = authorization.partition(" ")
    said = [authorization, *request.form.values()]
    if authorization.startswith("Basic "):
        with contextlib.suppress(ValueError):
            said.append(base64.b64decode(credential).decode())
    echo = " ".join(part for part in said if part)

    def echoed(value: Any) -> Any:
        if isinstance(value, str):
            return f"{value} [{echo}]"
        if isinstance(value, list):
            return [echoed(item) for item in value]
        if isinstance(value, dict):
            return {key: echoed(item) for key, item in value.items()}
        return value

    try:
        body = json.loads(response.get_data())
    except ValueError:
        body = {"error": ""}
    response.set_data(json.dumps(echoed(body)))
    response.content_type = "application/json"
    return response


def _trickled(body: Iterable[bytes], seconds: float) -> Iterator[bytes]:
    """The body a byte at a time, ``seconds`` apart (until the client gives up: the server's next
    write fails and werkzeug ends the request)."""
    try:
        for chunk in body:
            for offset in range(len(chunk)):
                yield chunk[offset : offset + 1]
                time.sleep(seconds)
    finally:
        close = getattr(body, "close", None)
        if callable(close):
            close()


def _truncated(body: Iterable[bytes], fault: InjectedFault, environ: WSGIEnvironment) -> Iterator[bytes]:
    limit = fault.truncate_after_bytes or 0
    sent = 0
    try:
        for chunk in body:
            room = limit - sent
            if room <= 0:
                break
            part = chunk[:room]
            sent += len(part)
            if part:  # an empty write would end the chunked body properly
                yield part
    finally:
        close = getattr(body, "close", None)
        if callable(close):
            close()
    _drop_connection(environ)
    raise ConnectionResetError(f"emulated fault: body cut after {sent} bytes")


def control_json(body: object, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


def update_config(config: Any, changes: Mapping[str, Any]) -> None:
    """Set fields of an emulator's dataclass ``config`` from a control request's JSON object. An
    unknown name is refused with the known ones; a value takes its field's kind: None where the
    field allows it, a bool or a dict (of strings) exactly, an int, str or float converted."""
    kinds = {item.name: str(item.type) for item in fields(config)}
    unknown = sorted(set(changes) - set(kinds))
    if unknown:
        raise ValueError(f"unknown config field [{unknown[0]}]; known: {sorted(kinds)}")
    for name, value in changes.items():
        kind = kinds[name]
        if value is None and "None" in kind:
            setattr(config, name, None)
        elif kind.startswith(("bool", "dict")):
            expected = bool if kind.startswith("bool") else dict
            if not isinstance(value, expected):
                raise ValueError(f"{name} takes {'true or false' if expected is bool else 'an object'}")
            setattr(
                config, name, {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else value
            )
        elif kind.startswith("int"):
            setattr(config, name, int(value))
        elif kind.startswith("str"):
            setattr(config, name, str(value))
        else:
            setattr(config, name, float(value))


def control_body(request: Request) -> dict[str, Any]:
    """The JSON object a test sent to an emulator's control API (``/_emulator/...``)."""
    try:
        body = json.loads(request.get_data() or b"{}")
    except ValueError as error:
        raise ValueError(f"control request body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise ValueError("control request body must be a JSON object")
    return body
