"""A small base for upstream emulators: a threaded werkzeug server on loopback, a request log and
a queue of injected faults. Each emulator subclasses `EmulatorServer` and answers `handle(request)`.

Vendor specifics (routes, error envelopes, auth schemes) stay in the subclasses; this module only
holds the plumbing they share, so Looker and Veza emulators behave like the ES|QL one in tests.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, Self

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

logger = logging.getLogger(__name__)

ANY_OPERATION = "any"
_POLL_SECONDS = 0.02


class RecordedRequest(NamedTuple):
    """One request an emulator received (control API calls under the emulator's prefix excluded)."""

    method: str
    path: str
    query: dict[str, str]


@dataclass(frozen=True)
class InjectedFault:
    """An error answer to give instead of handling the request."""

    operation: str
    status: int
    retry_after: float | None = None


class FaultQueue:
    """Faults armed by tests, consumed by the next matching requests (thread-safe)."""

    def __init__(self, operations: Iterable[str]) -> None:
        self._operations = frozenset(operations) | {ANY_OPERATION}
        self._lock = threading.Lock()
        self._armed: list[list[Any]] = []  # [fault, remaining times], oldest first

    def arm(self, operation: str, status: int, *, times: int = 1, retry_after: float | None = None) -> None:
        if operation not in self._operations:
            raise ValueError(f"unknown operation {operation!r}; expected one of {sorted(self._operations)}")
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {status}")
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        with self._lock:
            self._armed.append([InjectedFault(operation, status, retry_after), times])

    def take(self, operation: str) -> InjectedFault | None:
        """The oldest armed fault matching `operation` (or armed for any operation), if one is left."""
        with self._lock:
            for entry in self._armed:
                fault: InjectedFault = entry[0]
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
            return [
                {"operation": f.operation, "status": f.status, "retry_after": f.retry_after, "times": n}
                for f, n in self._armed
            ]


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
        self, operation: str, status: int, *, times: int = 1, retry_after: float | None = None
    ) -> None:
        """Answer the next `times` requests of `operation` with an error of `status`."""
        self.faults.arm(operation, status, times=times, retry_after=retry_after)

    def clear_requests(self) -> None:
        with self._requests_lock:
            self.requests.clear()

    def _make_server(self, host: str, port: int) -> BaseWSGIServer:
        server = make_server(host, port, self._wsgi_app, threaded=True, request_handler=_QuietRequestHandler)
        bound_host, bound_port = server.server_address[:2]
        self._base_url = f"http://{_url_host(str(bound_host))}:{bound_port}"
        return server

    def _wsgi_app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        if not request.path.startswith(self.control_prefix):
            with self._requests_lock:
                self.requests.append(
                    RecordedRequest(request.method, request.path, dict(request.args.items()))
                )
        response = self.handle(request)
        return response(environ, start_response)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
