"""Lambda, in process: a WSGI middleware in front of moto that answers the Invoke API by calling the
real handlers from template.yaml.

moto cannot run Lambda code without Docker, but its Step Functions interpreter calls Lambda through
the Invoke API on the moto server. This middleware takes those calls (and any boto3 ``invoke`` the
tests make): it imports the handler file named by CodeUri + Handler, calls it with a Lambda-like
context and answers exactly as Lambda does, including ``X-Amz-Function-Error: Unhandled`` with
``{"errorType", "errorMessage", "stackTrace"}`` when the handler raises, so the ASL's Retry and Catch
match ``errorType`` as on AWS. Every other request goes to moto.

Differences from Lambda, on purpose: a handler module is imported once per runtime and then reused
like one warm container, also by concurrent invocations (module-level state is shared between
threads); only the handler file is imported by path, so sibling modules in a CodeUri directory are
not importable (ours keep their code in the layer); a handler that outlives its Timeout is not
killed, its answer is replaced by Lambda's ``Sandbox.Timedout`` error.

Tests simulate a function dying mid-invocation (killed, out of memory, timed out) by raising
``SimulatedCrash`` from inside the handler: the runtime answers with the error AWS reports for that
death (``Runtime.ExitError``, ``Sandbox.Timedout``) and no stack trace, as Lambda does.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import itertools
import json
import logging
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, TextIO

from werkzeug.wrappers import Request, Response

from query_relay_local.template import Function, LocalTemplate

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

logger = logging.getLogger(__name__)

_INVOKE_PATH = re.compile(r"/2015-03-31/functions/(?P<name>[^/]+)/invocations")
_module_numbers = itertools.count(1)
# Marks the threads running a handler, whose stdout/stderr the captured logs take (see CapturedLogs).
_invocation = threading.local()

Handler = Callable[[Any, Any], Any]


class LocalLambdaContext:
    """The attributes and method of the Python runtime's context object that handlers use."""

    def __init__(self, function: Function, request_id: str) -> None:
        self.function_name = function.name
        self.function_version = "$LATEST"
        self.invoked_function_arn = function.arn
        self.memory_limit_in_mb = function.memory_mb
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{function.name}"
        self.log_stream_name = f"local/[$LATEST]{request_id.replace('-', '')}"
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + function.timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class SimulatedCrash(Exception):
    """Raised from inside a handler (by a test) to stand for the function dying there.

    An ``Exception``, not a ``BaseException``: it must travel like any error through the threads
    that read the handler's streams (s3transfer's) to reach the handler's frame and this runtime.
    """

    MESSAGES: ClassVar[dict[str, str]] = {
        "Runtime.ExitError": "Runtime exited with error: signal: killed",
        "Sandbox.Timedout": "Task timed out",
    }

    def __init__(self, error_type: str = "Runtime.ExitError") -> None:
        if error_type not in self.MESSAGES:
            raise ValueError(f"Lambda reports no crash as {error_type!r}")
        super().__init__(error_type)
        self.error_type = error_type


class HandlerNotFound(Exception):
    """The handler file has no function of the handler's name."""


@dataclass(frozen=True)
class InvocationResult:
    payload: bytes
    function_error: str | None = None  # "Unhandled" when the handler failed, as Lambda says


_METRICS_LOCK = threading.RLock()


def _serialize_powertools_metrics() -> None:
    """Lambda runs one invocation per sandbox; here concurrent invocations are threads of one
    process, sharing Powertools' class-level metric set. Unserialized, one invocation's flush can
    clear the set between another's emptiness check and its serialization, which then raises
    SchemaValidationError ("Must contain at least one metric") in place of the handler's answer.
    Adding and flushing metrics is therefore done one invocation at a time (idempotent)."""
    from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import (  # noqa: PLC0415
        AmazonCloudWatchEMFProvider as Provider,
    )

    for name in ("add_metric", "flush_metrics", "serialize_metric_set", "clear_metrics"):
        original = getattr(Provider, name)
        if getattr(original, "serialized_locally", False):
            continue

        def serialized(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            with _METRICS_LOCK:
                return _original(*args, **kwargs)

        wrapped = functools.wraps(original)(serialized)
        wrapped.serialized_locally = True  # type: ignore[attr-defined]
        setattr(Provider, name, wrapped)


class LocalLambdaRuntime:
    """The template's functions, imported on first use and kept warm for the runtime's life."""

    def __init__(
        self,
        template: LocalTemplate,
        before_invoke: Callable[[], None] | None = None,
        acting_as: Callable[[Function], AbstractContextManager[None]] | None = None,
    ) -> None:
        self.template = template
        self._before_invoke = before_invoke
        # Around each invocation: the AWS identity its calls carry (the function's execution role).
        self._acting_as = acting_as
        self._handlers: dict[str, Handler] = {}
        self._module_names: list[str] = []
        self._import_lock = threading.Lock()
        self._in_flight = 0
        self._idle = threading.Condition()
        _serialize_powertools_metrics()

    def invoke(self, function: Function, event: Any) -> InvocationResult:
        request_id = str(uuid.uuid4())
        context = LocalLambdaContext(function, request_id)
        started = time.monotonic()
        with self._idle:
            self._in_flight += 1
        _invocation.active = True
        try:
            with self._acting_as(function) if self._acting_as else contextlib.nullcontext():
                result = self._run(function, event, context)
        finally:
            _invocation.active = False
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()
        elapsed = time.monotonic() - started
        if elapsed > function.timeout_seconds:
            result = _error_result(
                "Sandbox.Timedout",
                f"RequestId: {request_id} Error: Task timed out after {function.timeout_seconds:.2f} seconds",
                [],
                request_id,
            )
        logger.debug(
            "invoked %s in %.3fs: %s",
            function.name,
            elapsed,
            "ok" if result.function_error is None else json.loads(result.payload).get("errorType"),
        )
        return result

    def wait_until_idle(self, timeout: float) -> bool:
        """Wait for in-flight invocations to return; False when some still run after ``timeout``."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout)

    def close(self) -> None:
        """Forget the imported handlers: the next runtime starts cold."""
        with self._import_lock:
            for name in self._module_names:
                sys.modules.pop(name, None)
            self._module_names.clear()
            self._handlers.clear()

    def _run(self, function: Function, event: Any, context: LocalLambdaContext) -> InvocationResult:
        request_id = context.aws_request_id
        try:
            handler = self._handler(function)
        except ImportError as error:
            logger.warning("%s: cannot import its handler", function.name, exc_info=True)
            module = function.handler.rpartition(".")[0]
            return _error_result(
                "Runtime.ImportModuleError", f"Unable to import module '{module}': {error}", [], request_id
            )
        except HandlerNotFound as error:
            return _error_result("Runtime.HandlerNotFound", str(error), [], request_id)
        except Exception as error:
            # Module-level code failed (the init phase): Lambda names the exception.
            logger.warning("%s: its module failed to initialise", function.name, exc_info=True)
            return _error_result(type(error).__name__, str(error), [], request_id)
        if self._before_invoke is not None:
            self._before_invoke()  # after the import, which may have created the handlers' loggers
        try:
            returned = handler(event, context)
        except SimulatedCrash as crash:
            logger.warning("%s crashed (simulated): %s", function.name, crash.error_type)
            message = f"RequestId: {request_id} Error: {SimulatedCrash.MESSAGES[crash.error_type]}"
            return _error_result(crash.error_type, message, [], request_id)
        except Exception as error:
            # What the Python runtime writes to the function's log before answering.
            logger.warning("%s failed: %s", function.name, type(error).__name__, exc_info=True)
            # Like Lambda, the trace starts in the handler: this runtime's own frame is left out.
            handler_frames = error.__traceback__.tb_next if error.__traceback__ else None
            frames = traceback.format_list(traceback.extract_tb(handler_frames))
            return _error_result(type(error).__name__, str(error), frames, request_id)
        try:
            return InvocationResult(json.dumps(returned).encode())
        except (TypeError, ValueError) as error:
            return _error_result(
                "Runtime.MarshalError", f"Unable to marshal response: {error}", [], request_id
            )

    def _handler(self, function: Function) -> Handler:
        with self._import_lock:
            handler = self._handlers.get(function.logical_id)
            if handler is None:
                handler = self._import_handler(function)
                self._handlers[function.logical_id] = handler
            return handler

    def _import_handler(self, function: Function) -> Handler:
        path = function.handler_file
        module_name = f"query_relay_local_function_{function.logical_id}_{next(_module_numbers)}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None or not path.is_file():
            raise ImportError(f"{function.logical_id}: no handler file {path}")
        module: ModuleType = importlib.util.module_from_spec(spec)
        # Registered so that tools resolving names through the module (pydantic, dataclasses) work.
        sys.modules[module_name] = module
        self._module_names.append(module_name)
        spec.loader.exec_module(module)
        handler = getattr(module, function.handler_function, None)
        if not callable(handler):
            raise HandlerNotFound(
                f"{function.logical_id}: {path.name} has no function {function.handler_function}"
            )
        return handler  # type: ignore[no-any-return]


def _error_result(error_type: str, message: str, frames: list[str], request_id: str) -> InvocationResult:
    body = {"errorMessage": message, "errorType": error_type, "requestId": request_id, "stackTrace": frames}
    return InvocationResult(json.dumps(body).encode(), function_error="Unhandled")


# Checks an Invoke request (its signature, lambda:InvokeFunction on the function) as Lambda would:
# None when allowed, else the error answer.
InvokeAuthorizer = Callable[[Request, Function], "Response | None"]


class LambdaInvokeMiddleware:
    """WSGI: Invoke calls for the template's functions go to the runtime, the rest to ``app``."""

    def __init__(
        self, app: WSGIApplication, runtime: LocalLambdaRuntime, authorize: InvokeAuthorizer | None = None
    ) -> None:
        self.app = app
        self.runtime = runtime
        self.authorize = authorize

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        match = _INVOKE_PATH.fullmatch(environ.get("PATH_INFO", ""))
        if environ.get("REQUEST_METHOD") == "POST" and match:
            function = self.runtime.template.function(match["name"])
            if function is not None:
                return self._invoke(function, Request(environ))(environ, start_response)
        return self.app(environ, start_response)

    def _invoke(self, function: Function, request: Request) -> Response:
        body = request.get_data()
        if self.authorize is not None:
            refused = self.authorize(request, function)
            if refused is not None:
                return refused
        try:
            event = json.loads(body) if body.strip() else {}
        except ValueError:
            return service_error(
                400, "InvalidRequestContentException", "Could not parse request body into json"
            )
        invocation_type = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if invocation_type == "DryRun":
            return Response(status=204)
        if invocation_type == "Event":
            threading.Thread(
                target=self.runtime.invoke,
                args=(function, event),
                name=f"invoke-{function.name}",
                daemon=True,
            ).start()
            return Response(status=202)
        result = self.runtime.invoke(function, event)
        headers = {"X-Amz-Executed-Version": "$LATEST"}
        if result.function_error:
            headers["X-Amz-Function-Error"] = result.function_error
        return Response(result.payload, status=200, headers=headers, content_type="application/json")


def service_error(status: int, error_type: str, message: str) -> Response:
    """An error answer of the Lambda API (not of the function): ``x-amzn-ErrorType`` names it."""
    body = json.dumps({"Type": "User", "message": message})
    return Response(
        body, status=status, headers={"x-amzn-ErrorType": error_type}, content_type="application/json"
    )


class CapturedLogs:
    """What the functions write, kept as lines: what CloudWatch Logs would hold for them.

    Handlers run in this process, so their output would land on the user's terminal (and in the
    CLI's ``--json`` stdout). While attached:
    - what an invocation thread writes to ``sys.stdout`` / ``sys.stderr`` (print, EMF metrics,
      warnings) is kept here; other threads write through as before;
    - the stream handlers of the Powertools service loggers write here (they hold the stream they
      were created with, possibly the real stdout);
    - a root logging handler keeps every other record (libraries, moto, warnings) and keeps them
      off stderr.
    """

    def __init__(self, service_loggers: Iterable[str], echo: TextIO | None = None) -> None:
        self._service_loggers = sorted(set(service_loggers))
        self._echo = echo
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._partial: dict[int, str] = {}  # per writing thread: text not yet ended by a newline
        self._redirected: list[tuple[logging.StreamHandler[Any], Any]] = []
        self._redirected_loggers: set[str] = set()
        self._root_handler = _KeepRecords(self)
        self._root_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        self._routers: list[tuple[str, _InvocationOutput]] = []
        self._captures_warnings = False

    @property
    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def attach(self) -> None:
        logging.getLogger().addHandler(self._root_handler)
        for name in ("stdout", "stderr"):
            router = _InvocationOutput(getattr(sys, name), self)
            setattr(sys, name, router)
            self._routers.append((name, router))
        # Warnings become log records (kept by the root handler) instead of lines on stderr.
        self._captures_warnings = not _warnings_are_captured()
        if self._captures_warnings:
            logging.captureWarnings(True)
        self.redirect_service_handlers()

    def redirect_service_handlers(self) -> None:
        """Point the service loggers' stream handlers here (idempotent; Powertools creates them when
        the library is first imported, which may happen inside the first invocation)."""
        for name in self._service_loggers:
            for handler in logging.getLogger(name).handlers:
                if type(handler) is logging.StreamHandler and handler.stream is not self:
                    with self._lock:
                        self._redirected.append((handler, _swap_stream(handler, self)))
                        self._redirected_loggers.add(name)

    def detach(self) -> None:
        logging.getLogger().removeHandler(self._root_handler)
        if self._captures_warnings:
            logging.captureWarnings(False)
            self._captures_warnings = False
        for name, router in reversed(self._routers):
            router.detach()  # a stream handler may still hold it: from now on it writes through
            if getattr(sys, name) is router:
                setattr(sys, name, router.original)
        self._routers.clear()
        with self._lock:
            redirected, self._redirected = self._redirected, []
            self._redirected_loggers.clear()
        for handler, original in redirected:
            _swap_stream(handler, original)
        self._keep_unfinished_lines()

    # The file-like side, for redirected stream handlers and invocation threads.
    def write(self, text: str) -> int:
        thread = threading.get_ident()
        with self._lock:
            complete, _, rest = (self._partial.pop(thread, "") + text).rpartition("\n")
            if rest:
                self._partial[thread] = rest
        if complete or text.endswith("\n"):
            for line in complete.split("\n"):
                self.append(line)
        return len(text)

    def flush(self) -> None:
        """Lines are kept when they end; a stream handler flushing after each record changes nothing."""

    def _keep_unfinished_lines(self) -> None:
        with self._lock:
            rests, self._partial = list(self._partial.values()), {}
        for rest in rests:
            self.append(rest)

    def append(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)
        if self._echo is not None:
            self._echo.write(f"{line}\n")
            self._echo.flush()

    def is_redirected(self, logger_name: str) -> bool:
        with self._lock:
            return any(
                logger_name == name or logger_name.startswith(f"{name}.") for name in self._redirected_loggers
            )


class _InvocationOutput:
    """Stands in for sys.stdout or sys.stderr: invocation threads write to the captured logs, every
    other thread to the original stream."""

    def __init__(self, original: TextIO, logs: CapturedLogs) -> None:
        self.original = original
        self._logs: CapturedLogs | None = logs

    def detach(self) -> None:
        self._logs = None

    def write(self, text: str) -> int:
        logs = self._logs
        if logs is not None and getattr(_invocation, "active", False):
            return logs.write(text)
        return self.original.write(text)

    def flush(self) -> None:
        self.original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


def _warnings_are_captured() -> bool:
    """Whether ``logging.captureWarnings(True)`` is already in force (then it is not ours to undo)."""
    return getattr(logging, "_warnings_showwarning", None) is not None


def _swap_stream(handler: logging.StreamHandler[Any], stream: Any) -> Any:
    """Like ``StreamHandler.setStream`` without flushing the old stream, which may be closed (pytest's
    capture of an earlier test, for one)."""
    handler.acquire()
    try:
        previous, handler.stream = handler.stream, stream
    finally:
        handler.release()
    return previous


class _KeepRecords(logging.Handler):
    def __init__(self, logs: CapturedLogs) -> None:
        super().__init__()
        self._logs = logs

    def emit(self, record: logging.LogRecord) -> None:
        if self._logs.is_redirected(record.name):
            return
        try:
            for line in self.format(record).splitlines():
                self._logs.append(line)
        except Exception:  # noqa: BLE001 - logging.Handler's contract: report, never raise
            self.handleError(record)
