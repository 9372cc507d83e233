"""The whole application on one machine, in this process: moto as an HTTP server with Step Functions
execution on, the template's functions answered in process, resources "deployed" from template.yaml.

    with LocalStack() as stack:
        stack.load_connections({"es-local": {...}})
        arn = stack.start_job(spec)
        final = stack.wait(arn)

Process-wide state, and why:

- moto's backends are global to the process. A stack resets them when it starts and when it
  stops, so stacks run one after another in one process each start empty. Two stacks must not run
  at the same time in one process; pytest-xdist workers are separate processes, so they may.
- The handlers run in this process and read their configuration from ``os.environ`` (as on Lambda),
  so the stack sets the union of every function's template environment process-wide (a variable
  two functions set differently is an error) plus the endpoint and fake credentials, and restores
  the previous values when it stops.
- The library caches things for the life of the process, as a warm container does: settings read
  from the environment, boto3 clients (which hold the endpoint URL), secrets. A new environment on
  Lambda means a new container, so a stack empties those caches when it starts and when it stops:
  every cache defined in a ``query_relay`` module (``functools`` caches and any object with a
  ``cache_clear()``, such as the Looker token cache) and Powertools' parameter caches.
  The handler modules themselves are imported afresh by each stack.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TextIO

from aws_lambda_powertools.utilities import parameters
from botocore.config import Config
from moto.core.config import default_user_config
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import ThreadedWSGIServer

from query_relay.history import continued_as
from query_relay_local import aws_limits, iam, moto_fixes
from query_relay_local.iam import LocalIam, Principal, acting_as, translated_roles
from query_relay_local.lambda_runtime import (
    CapturedLogs,
    InvocationResult,
    LambdaInvokeMiddleware,
    LocalLambdaRuntime,
)
from query_relay_local.template import (
    DEFAULT_TEMPLATE_PATH,
    LOCAL_ACCOUNT_ID,
    LOCAL_REGION,
    LOCAL_STACK_NAME,
    LocalTemplate,
    load_template,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_stepfunctions import SFNClient
    from mypy_boto3_stepfunctions.type_defs import DescribeExecutionOutputTypeDef, HistoryEventTypeDef

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
LIBRARY_PACKAGE = "query_relay"  # the layer: its caches are emptied like a cold start
# Set for every stack, over the template's values: what makes the functions run here.
_LOCAL_ENVIRONMENT = {
    "AWS_DEFAULT_REGION": LOCAL_REGION,
    "AWS_REGION": LOCAL_REGION,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",  # moto accepts any credentials
    # No X-Ray daemon here. (Metrics stay on: their EMF lines land in the captured logs.)
    "POWERTOOLS_TRACE_DISABLED": "true",
    # The emulators listen on http://127.0.0.1: relax the upstream address policy
    # (query_relay.upstream.address).
    "ALLOW_LOCAL_UPSTREAMS": "true",
}
# Removed while a stack runs: they would send boto3 elsewhere or fail its credential lookup.
_CONFLICTING_ENVIRONMENT_PREFIXES = ("AWS_ENDPOINT_URL_",)
_CONFLICTING_ENVIRONMENT = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
)
_LOOPBACK_NAMES = "127.0.0.1,localhost"
# Signs the stack's setup calls, which run before any IAM user exists and are not checked.
_SETUP_PRINCIPAL = Principal(
    arn="setup",
    access_key_id=_LOCAL_ENVIRONMENT["AWS_ACCESS_KEY_ID"],
    secret_access_key=_LOCAL_ENVIRONMENT["AWS_SECRET_ACCESS_KEY"],
)
IAM_SWITCH = "QUERY_RELAY_LOCAL_IAM"
_STOP_GRACE_SECONDS = 10.0

EventCallback = Callable[["HistoryEventTypeDef"], None]


class LocalStackError(RuntimeError):
    """The local stack cannot start or do what was asked."""


class LocalStack:
    """The application on moto in this process; a context manager (start on enter, stop on exit)."""

    def __init__(
        self,
        template_path: Path = DEFAULT_TEMPLATE_PATH,
        *,
        parameter_overrides: Mapping[str, str] | None = None,
        echo_logs: TextIO | None = None,
        enforce_iam: bool | None = None,
    ) -> None:
        self.template: LocalTemplate = load_template(template_path, parameter_overrides)
        self.function_environment = _merged_environment(self.template)
        # IAM as AWS enforces it (query_relay_local.iam); QUERY_RELAY_LOCAL_IAM=off turns it off.
        self.enforce_iam = iam_enforced_by_default() if enforce_iam is None else enforce_iam
        self.iam = LocalIam(translated_roles(self.template))
        service_loggers = {
            env["POWERTOOLS_SERVICE_NAME"]
            for env in (f.environment for f in self.template.functions.values())
            if "POWERTOOLS_SERVICE_NAME" in env
        }
        self._logs = CapturedLogs(service_loggers, echo=echo_logs)
        self._runtime = LocalLambdaRuntime(
            self.template,
            before_invoke=self._logs.redirect_service_handlers,
            acting_as=lambda function: acting_as(self.iam.for_function(function.logical_id)),
        )
        self._server: _TrackingServer | None = None
        self._thread: threading.Thread | None = None
        self._saved_environment: dict[str, str | None] = {}
        self._saved_sfn_config: dict[str, Any] | None = None  # moto's, restored when the stack stops
        self._events: list[dict[str, Any]] = []
        self._events_queue_url = ""
        self._clients: dict[str, Any] = {}  # boto3 clients of this stack's endpoint, by service
        self._clients_lock = threading.Lock()
        self.port = 0
        self.state_machine_arn = ""

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Self:
        if self._server is not None:
            raise LocalStackError("this stack is already started")
        try:
            iam.enforce(False)  # the stack's own setup runs as an administrator, unchecked
            self._serve()
            # Step Functions executes the machine (moto's own configuration call).
            self._saved_sfn_config = dict(default_user_config.get("stepfunctions") or {})
            self._moto_api(
                "config", {"stepfunctions": {**self._saved_sfn_config, "execute_state_machine": True}}
            )
            self._apply_environment()
            # After the environment: patching imports moto modules that read it (an AWS_PROFILE
            # of the user's would be looked up).
            moto_fixes.install()
            aws_limits.install()  # AWS's payload and name limits (query_relay_local.aws_limits)
            iam.patch_moto()
            self._logs.attach()
            self._reset_moto()
            self._deploy()
            iam.enforce(self.enforce_iam)
        except BaseException:
            self.stop()
            raise
        logger.debug("local stack up at %s", self.endpoint_url)
        return self

    def stop(self) -> None:
        """Stop running executions, let in-flight invocations return, shut the server down, reset
        moto and give the process its environment back. Safe to call more than once."""
        if self._server is not None:
            self._stop_running_executions()
            if not self._runtime.wait_until_idle(_STOP_GRACE_SECONDS):
                logger.warning("stopping while a function invocation still runs")
            try:
                self._reset_moto()
                if self._saved_sfn_config is not None:
                    self._moto_api("config", {"stepfunctions": self._saved_sfn_config})
                    self._saved_sfn_config = None
            except OSError:
                logger.warning("could not reset moto", exc_info=True)
            self._server.shutdown()
            self._server.close_open_connections()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._clients.clear()
        self._runtime.close()
        self._logs.detach()
        iam.enforce(False)
        iam.uninstall()
        iam.sign_state_machine_calls_with(None)
        self._restore_environment()

    # --- what callers use --------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def bucket(self) -> str:
        """The results bucket: the one the functions are given (RESULTS_BUCKET), else the template's first."""
        return self.function_environment.get("RESULTS_BUCKET") or next(iter(self.template.buckets.values()))

    @property
    def logs(self) -> list[str]:
        """Every line the functions (and libraries, and moto) logged while this stack ran."""
        return self._logs.lines

    @property
    def s3(self) -> S3Client:
        return self._client("s3")  # type: ignore[no-any-return]

    @property
    def sfn(self) -> SFNClient:
        return self._client("stepfunctions")  # type: ignore[no-any-return]

    @property
    def secretsmanager(self) -> SecretsManagerClient:
        return self._client("secretsmanager")  # type: ignore[no-any-return]

    def client(self, service: str) -> Any:
        """A boto3 client for any service of the stack."""
        return self._client(service)

    def invoke(self, function_name: str, event: Any) -> InvocationResult:
        """Invoke one of the template's functions in this process, as Lambda's Invoke API would."""
        function = self.template.function(function_name)
        if function is None:
            raise LocalStackError(f"template.yaml has no function {function_name!r}")
        return self._runtime.invoke(function, event)

    def load_connections(self, connections: Mapping[str, Mapping[str, Any]]) -> None:
        """Store each connection document as the secret the functions read (created or replaced)."""
        prefix = self.function_environment.get("CONNECTION_SECRET_PREFIX")
        if prefix is None:
            raise LocalStackError("the template gives the functions no CONNECTION_SECRET_PREFIX")
        client = self.secretsmanager
        for name, document in connections.items():
            secret_name, secret_string = f"{prefix}{name}", json.dumps(document)
            try:
                client.create_secret(Name=secret_name, SecretString=secret_string)
            except client.exceptions.ResourceExistsException:
                client.put_secret_value(SecretId=secret_name, SecretString=secret_string)
        # A warm Lambda would see a changed secret only after its cache expires; locally at once.
        _forget_environment_caches()

    def start_job(self, spec: Mapping[str, Any], job_id: str | None = None) -> str:
        """Start one execution (name = the spec's job_id, else ``job_id``, else a new one); its ARN."""
        name = spec.get("job_id") or job_id or new_job_id()
        response = self.sfn.start_execution(
            stateMachineArn=self.state_machine_arn, name=str(name), input=json.dumps(spec)
        )
        return response["executionArn"]

    def wait(
        self, execution_arn: str, timeout: float = 300.0, on_event: EventCallback | None = None
    ) -> DescribeExecutionOutputTypeDef:
        """Wait for the job to end, handing each new history event to ``on_event``; a job that
        continues as a new execution (query_relay.history) is followed to its last execution,
        whose description this returns."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            described = self.sfn.describe_execution(executionArn=execution_arn)
            events = self.history(execution_arn)
            for event in events[seen:]:
                if on_event is not None:
                    on_event(event)
            seen = len(events)
            if described["status"] != "RUNNING":
                following = continued_as(described)
                if following is None:
                    return described
                execution_arn, seen = following, 0
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"{execution_arn} still running after {timeout:.0f}s")
            time.sleep(0.1)

    def deliver_schedule(self, name: str, scheduled_time: str, group: str | None = None) -> str:
        """Do what EventBridge Scheduler does when schedule ``name`` fires for ``scheduled_time``
        (moto stores schedules but never fires them): start its target with its input (the
        ``<aws.scheduler.scheduled-time>`` placeholder filled in), signed as the role the schedule
        names, as Scheduler assumes it. Returns the started execution's ARN; a role that may not
        start it makes this raise AccessDeniedException, as Scheduler's delivery would fail."""
        group = group or self.function_environment.get("SCHEDULE_GROUP") or "default"
        target = self._client("scheduler").get_schedule(Name=name, GroupName=group)["Target"]
        principal = self.iam.for_role_arn(target["RoleArn"])
        if principal is None:
            raise LocalStackError(f"schedule {name!r} names {target['RoleArn']}, not a role of the template")
        payload = str(target.get("Input", "{}")).replace("<aws.scheduler.scheduled-time>", scheduled_time)
        client = principal.client("stepfunctions", self.endpoint_url)
        started = client.start_execution(
            stateMachineArn=target["Arn"], name=f"scheduler-{secrets.token_hex(8)}", input=payload
        )
        return str(started["executionArn"])

    def execution_arn(self, name: str) -> str:
        """The ARN of this stack's execution named ``name`` (a job id)."""
        return f"{self.state_machine_arn.replace(':stateMachine:', ':execution:', 1)}:{name}"

    def chain(self, execution_arn: str) -> list[str]:
        """The execution and every continuation of its job so far, in order."""
        arns = [execution_arn]
        while (following := continued_as(self.sfn.describe_execution(executionArn=arns[-1]))) is not None:
            arns.append(following)
        return arns

    def run_job(
        self, spec: Mapping[str, Any], job_id: str | None = None, timeout: float = 300.0
    ) -> tuple[DescribeExecutionOutputTypeDef, list[HistoryEventTypeDef]]:
        """Start one execution and wait for its end: (final describe_execution, its history)."""
        execution_arn = self.start_job(spec, job_id)
        final = self.wait(execution_arn, timeout=timeout)
        return final, self.history(execution_arn)

    def history(self, execution_arn: str) -> list[HistoryEventTypeDef]:
        events: list[HistoryEventTypeDef] = []
        for page in self.sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn):
            events.extend(page["events"])
        return events

    def events(self) -> list[dict[str, Any]]:
        """Every EventBridge event put on the application's bus so far, oldest first."""
        sqs = self._client("sqs")
        while True:
            received = sqs.receive_message(QueueUrl=self._events_queue_url, MaxNumberOfMessages=10)
            messages = received.get("Messages", [])
            if not messages:
                return list(self._events)
            for message in messages:
                self._events.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=self._events_queue_url, ReceiptHandle=message["ReceiptHandle"])

    def download(self, prefix: str, out_dir: Path) -> list[Path]:
        """Copy every object under ``prefix`` into ``out_dir``, keeping its key as the path."""
        root = out_dir.resolve()
        written: list[Path] = []
        for key in self.keys(prefix):
            target = (root / key).resolve()
            if not target.is_relative_to(root):
                raise LocalStackError(f"object key {key!r} would land outside {out_dir}")
            target.parent.mkdir(parents=True, exist_ok=True)
            self.s3.download_file(self.bucket, key, str(target))
            written.append(target)
        return written

    def keys(self, prefix: str = "") -> Iterator[str]:
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for entry in page.get("Contents", []):
                yield entry["Key"]

    # --- internals ---------------------------------------------------------------------------

    def _client(self, service: str) -> Any:
        """A client signing as the stack's administrator (before it exists, during the unchecked
        setup, with any keys)."""
        with self._clients_lock:
            client = self._clients.get(service)
            if client is None:
                signer = self.iam.admin or _SETUP_PRINCIPAL
                client = signer.client(
                    service, self.endpoint_url, config=Config(retries={"mode": "standard"})
                )
                self._clients[service] = client
            return client

    def _serve(self) -> None:
        app = LambdaInvokeMiddleware(
            DomainDispatcherApplication(create_backend_app), self._runtime, authorize=iam.authorize_invoke
        )
        self._server = _TrackingServer(HOST, 0, app, handler=_RequestHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="local-stack", daemon=True
        )
        self._thread.start()

    def _apply_environment(self) -> None:
        environment = {
            **self.function_environment,
            **_LOCAL_ENVIRONMENT,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            # moto's ASL interpreter calls Lambda and EventBridge at localhost:MOTO_PORT.
            "MOTO_PORT": str(self.port),
        }
        for variable in ("NO_PROXY", "no_proxy"):
            current = os.environ.get(variable)
            environment[variable] = f"{current},{_LOOPBACK_NAMES}" if current else _LOOPBACK_NAMES
        removed = [
            name
            for name in os.environ
            if name in _CONFLICTING_ENVIRONMENT or name.startswith(_CONFLICTING_ENVIRONMENT_PREFIXES)
        ]
        for name in [*environment, *removed]:
            self._saved_environment.setdefault(name, os.environ.get(name))
        for name in removed:
            del os.environ[name]
        os.environ.update(environment)
        _forget_environment_caches()

    def _restore_environment(self) -> None:
        for name, value in self._saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_environment.clear()
        _forget_environment_caches()

    def _reset_moto(self) -> None:
        """Empty every moto backend (the documented server-mode reset call)."""
        self._moto_api("reset")

    def _moto_api(self, call: str, body: Mapping[str, Any] | None = None) -> None:
        """POST one of moto's own server-mode calls (``/moto-api/reset``, ``/moto-api/config``)."""
        url = f"{self.endpoint_url}/moto-api/{call}"  # our own loopback http URL, hence the noqa
        data = None if body is None else json.dumps(body).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
        request = urllib.request.Request(url, data=data, method="POST", headers=headers)  # noqa: S310
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            response.read()

    def _deploy(self) -> None:
        """Create what template.yaml declares, as far as the local stack needs it, and the IAM
        principals every caller signs as (query_relay_local.iam)."""
        admin = self.iam.create_admin(self._client("iam"))
        self._clients.clear()  # from now on the stack's own calls sign as the administrator
        iam.install(admin)
        self.iam.create_roles()
        for bucket in self.template.buckets.values():
            self.s3.create_bucket(Bucket=bucket)
        for table in self.template.tables.values():
            self._client("dynamodb").create_table(
                TableName=table.name,
                KeySchema=table.key_schema,
                AttributeDefinitions=table.attribute_definitions,
                BillingMode="PAY_PER_REQUEST",
            )
        bus = self.template.parameter_values.get("EventBusName", "default")
        if bus != "default":
            self._client("events").create_event_bus(Name=bus)
        self._capture_events(bus)
        schedule_group = self.function_environment.get("SCHEDULE_GROUP")
        if schedule_group:  # where the API keeps schedules (stored by moto, never fired)
            self._client("scheduler").create_schedule_group(Name=schedule_group)
        state_machine = self.template.state_machine
        role = self.iam.translated.state_machine_roles.get(state_machine.logical_id)
        if role is None:
            raise LocalStackError(f"{state_machine.logical_id}: SAM gives it no role of this template")
        created = self.sfn.create_state_machine(
            name=state_machine.name,
            definition=state_machine.definition(),
            roleArn=self.iam.translated.roles[role].arn,
            type=state_machine.type,  # type: ignore[arg-type]
        )
        self.state_machine_arn = created["stateMachineArn"]
        if self.state_machine_arn != state_machine.arn:
            raise LocalStackError(
                f"moto named the state machine {self.state_machine_arn}, not {state_machine.arn}"
            )
        iam.sign_state_machine_calls_with(self.iam)

    def _capture_events(self, bus: str) -> None:
        sqs, events = self._client("sqs"), self._client("events")
        self._events.clear()
        self._events_queue_url = sqs.create_queue(QueueName=f"{LOCAL_STACK_NAME}-events")["QueueUrl"]
        queue_arn = f"arn:aws:sqs:{LOCAL_REGION}:{LOCAL_ACCOUNT_ID}:{LOCAL_STACK_NAME}-events"
        rule = f"{LOCAL_STACK_NAME}-capture-all"
        # Every event put on the bus comes from this account: the pattern keeps them all.
        events.put_rule(Name=rule, EventBusName=bus, EventPattern=json.dumps({"account": [LOCAL_ACCOUNT_ID]}))
        events.put_targets(Rule=rule, EventBusName=bus, Targets=[{"Id": "capture", "Arn": queue_arn}])

    def _stop_running_executions(self) -> None:
        if not self.state_machine_arn:
            return
        try:
            running = self.sfn.list_executions(stateMachineArn=self.state_machine_arn, statusFilter="RUNNING")
            for execution in running["executions"]:
                self.sfn.stop_execution(executionArn=execution["executionArn"], cause="local stack stopped")
        except Exception:
            logger.warning("could not stop the running executions", exc_info=True)


def iam_enforced_by_default() -> bool:
    """IAM is enforced unless ``QUERY_RELAY_LOCAL_IAM`` says off (for debugging a policy)."""
    return os.environ.get(IAM_SWITCH, "on").strip().lower() not in ("off", "0", "false", "no")


def new_job_id() -> str:
    return f"job-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def _merged_environment(template: LocalTemplate) -> dict[str, str]:
    """The union of the functions' environments; they share this process, so they must agree."""
    merged: dict[str, str] = {}
    origin: dict[str, str] = {}
    for function in template.functions.values():
        for name, value in function.environment.items():
            if name in merged and merged[name] != value:
                raise LocalStackError(
                    f"{origin[name]} and {function.logical_id} set {name} to different values; "
                    "the local stack runs every function in one process and needs one value"
                )
            merged[name], origin[name] = value, function.logical_id
    return merged


def _forget_environment_caches() -> None:
    """Empty the library's process-wide caches, as a new container would start (see module doc)."""
    parameters.clear_caches()  # type: ignore[no-untyped-call]
    for name, module in list(sys.modules.items()):
        if name != LIBRARY_PACKAGE and not name.startswith(f"{LIBRARY_PACKAGE}."):
            continue
        for value in list(vars(module).values()):
            # functools caches, and the library's own (the Looker token cache): what a module
            # defines and can empty with cache_clear(), classes left out.
            if isinstance(value, type) or getattr(value, "__module__", None) != name:
                continue
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()


class _TrackingServer(ThreadedWSGIServer):
    """Keeps its open connections, so that stopping closes the keep-alive ones too (their threads
    would otherwise keep serving this stack's app)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def close_open_connections(self) -> None:
        with self.connections_lock:
            connections, self.open_connections = self.open_connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)


class _RequestHandler(MotoRequestHandler):
    server: _TrackingServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.open_connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.open_connections.discard(self.connection)
        super().finish()

    def log(self, type: str, message: str, *args: Any) -> None:  # werkzeug's signature
        # werkzeug would install a handler printing every request on stderr.
        logger.debug("%s %s", type, message % args)
