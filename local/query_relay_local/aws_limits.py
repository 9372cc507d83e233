"""AWS's payload and name limits, and its service-integration error names, on the local stack.

moto 5.2.5 differs from AWS in each point below; :func:`install` puts AWS's behaviour back at the
narrowest place in moto (one method or function each), so that whatever fails on AWS fails here.

Step Functions (https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html):

- StartExecution refuses an input over 262,144 bytes of UTF-8 (the API's length constraint on
  ``input``: ``ValidationException``), a name over 80 characters (``ValidationException``, as
  moto's own ``NameTooLongException`` words it) and a name holding whitespace, brackets,
  wildcards, ``"#%\\^|~`$&,;:/`` or control characters (``InvalidName``)
  (https://docs.aws.amazon.com/step-functions/latest/apireference/API_StartExecution.html). moto's
  ASL backend checks neither. This holds for the ``states:startExecution`` integration too, which
  calls the same API.
- A state whose payload is over 262,144 bytes fails the execution with
  ``States.DataLimitExceeded``: a task's result, a state's output, and a task's input once its
  ``Parameters`` are applied. moto checks results and outputs, but refuses a payload of exactly
  262,144 bytes, and never checks a task's input.
- ``States.ALL`` catches neither ``States.DataLimitExceeded`` nor ``States.Runtime``
  (https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html); in moto it
  matches every error, in a Catch and in a Retry.
- A service integration that the service refuses fails with ``<Service>.<Error>``, the error's
  name ending in ``Exception`` (https://docs.aws.amazon.com/step-functions/latest/dg/supported-services-awssdk.html);
  an error the service's API does not model (throttling, a 5xx) takes the SDK's base exception
  name, as AWS documents for the Lambda integration (``Lambda.AWSLambdaException``,
  https://docs.aws.amazon.com/step-functions/latest/dg/sfn-best-practices.html). moto names a
  refused ``states:startExecution`` ``StepFunctions.<code>Exception`` whatever the code (so
  ``StepFunctions.ValidationExceptionException``), turns a refused ``events:putEvents`` into
  ``States.Runtime``, which no Retry or Catch may handle, and names every refused Invoke of a
  Lambda task ``Exception`` (AWS: ``Lambda.AWSLambdaException`` for an AccessDeniedException).

EventBridge Scheduler (https://docs.aws.amazon.com/scheduler/latest/APIReference/API_CreateSchedule.html):

- schedule names and schedule group names are 1-64 of ``[0-9a-zA-Z-_.]``
  (``ValidationException``); moto takes any name.

:func:`install` is idempotent and refuses another moto version: each patch reaches into moto's
internals, so a new version needs each one checked (and this module's tests run) first.
"""

from __future__ import annotations

import inspect
import json
import re
import uuid
from collections.abc import Callable
from datetime import date
from functools import cache
from typing import Any

from botocore.exceptions import ClientError
from botocore.session import get_session

from query_relay.limits import (
    EXECUTION_NAME_MAX_CHARS,
    SCHEDULER_NAME_MAX_CHARS,
    STATE_PAYLOAD_MAX_BYTES,
)
from query_relay_local.moto_fixes import apply_once

# StartExecution's name may hold none of these, nor whitespace (API_StartExecution.html).
FORBIDDEN_NAME_CHARACTERS = frozenset('<>{}[]?*"#%\\^|~`$&,;:/')
_SCHEDULER_NAME = re.compile(r"[0-9a-zA-Z._-]+")
_SCHEDULER_NAME_PATTERN = "^[0-9a-zA-Z-_.]+$"  # as Scheduler's API reference spells it
# The integrations whose errors this module names: (boto3 service, operation, error prefix, the
# SDK's base exception for errors the API does not model).
_STEP_FUNCTIONS = ("stepfunctions", "StartExecution", "StepFunctions", "AWSStepFunctionsException")
_EVENTBRIDGE = ("events", "PutEvents", "EventBridge", "AmazonEventBridgeException")
_LAMBDA = ("lambda", "Invoke", "Lambda", "AWSLambdaException")


def install() -> None:
    """Put AWS's limits and error names into moto (module docstring); safe to call again."""
    apply_once(
        __name__,
        _limit_start_execution,
        _limit_state_payloads,
        _keep_terminal_errors_from_states_all,
        _name_integration_errors,
        _limit_scheduler_names,
    )


# --- names -------------------------------------------------------------------------------------


def execution_name_problem(name: str) -> tuple[str, str] | None:
    """(error code, message) StartExecution answers for ``name``, or None when AWS takes it."""
    if not name or len(name) > EXECUTION_NAME_MAX_CHARS:
        bound = (
            "greater than or equal to 1" if not name else f"less than or equal to {EXECUTION_NAME_MAX_CHARS}"
        )
        return (
            "ValidationException",
            f"1 validation error detected: Value '{name}' at 'name' failed to satisfy constraint: "
            f"Member must have length {bound}",
        )
    if any(_forbidden_in_name(character) for character in name):
        return "InvalidName", f"Invalid Name: '{name}'"
    return None


def _forbidden_in_name(character: str) -> bool:
    code = ord(character)
    return (
        character in FORBIDDEN_NAME_CHARACTERS or character.isspace() or code <= 0x1F or 0x7F <= code <= 0x9F
    )


def scheduler_name_problem(field: str, name: str) -> str | None:
    """The ValidationException message Scheduler answers for ``name`` in ``field``, or None."""
    prefix = f"1 validation error detected: Value '{name}' at '{field}' failed to satisfy constraint: "
    if not 1 <= len(name) <= SCHEDULER_NAME_MAX_CHARS:
        return f"{prefix}Member must have length between 1 and {SCHEDULER_NAME_MAX_CHARS}"
    if not _SCHEDULER_NAME.fullmatch(name):
        return f"{prefix}Member must satisfy regular expression pattern: {_SCHEDULER_NAME_PATTERN}"
    return None


def payload_bytes(value: Any) -> int:
    """A payload's size as Step Functions counts it: bytes of its UTF-8 JSON."""
    text = (
        value
        if isinstance(value, str)
        else json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    )
    return len(text.encode("utf-8"))


def _json_default(value: Any) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


# --- Step Functions: StartExecution ------------------------------------------------------------


def _limit_start_execution() -> None:
    from moto.stepfunctions.exceptions import InvalidName, ValidationException  # noqa: PLC0415
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend  # noqa: PLC0415

    original: Callable[..., Any] = StepFunctionsParserBackend.start_execution

    def start_execution(
        self: Any,
        state_machine_arn: str,
        name: str | None = None,
        execution_input: str | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        if name is None:  # AWS names an execution started without one by a UUID; moto left it None
            name = str(uuid.uuid4())
        problem = execution_name_problem(name)
        if problem is not None:
            code, message = problem
            raise InvalidName(message) if code == "InvalidName" else ValidationException(message)
        if execution_input is not None and payload_bytes(execution_input) > STATE_PAYLOAD_MAX_BYTES:
            # 'input' is sensitive in the API's model: AWS leaves its value out of the message.
            raise ValidationException(
                "1 validation error detected: Value at 'input' failed to satisfy constraint: "
                f"Member must have length less than or equal to {STATE_PAYLOAD_MAX_BYTES}"
            )
        return original(self, state_machine_arn, name, execution_input, *args, **kwargs)

    setattr(StepFunctionsParserBackend, "start_execution", start_execution)  # noqa: B010 - patching moto


# --- Step Functions: payloads and the errors States.ALL leaves alone ----------------------------


def _within_quota(value: Any) -> bool:
    return payload_bytes(value) <= STATE_PAYLOAD_MAX_BYTES


def _limit_state_payloads() -> None:
    from moto.stepfunctions.parser import quotas  # noqa: PLC0415
    from moto.stepfunctions.parser.asl.component.state import state  # noqa: PLC0415
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import (  # noqa: PLC0415
        state_task,
        state_task_lambda,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (  # noqa: PLC0415
        state_task_service,
    )

    # moto's check (results, outputs) imported by name where it is used: rebind it in each place.
    for module in (quotas, state, state_task_lambda, state_task_service):
        setattr(module, "is_within_size_quota", _within_quota)  # noqa: B010 - patching moto
    # A task's input once its Parameters are applied (moto never checks it).
    for task in (state_task.StateTask, state_task_lambda.StateTaskLambda):
        setattr(task, "_eval_parameters", _checking_parameters(task._eval_parameters))  # noqa: B010


def _checking_parameters(original: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    def eval_parameters(self: Any, env: Any) -> dict[str, Any]:
        parameters = original(self, env)
        if not _within_quota(parameters):
            raise _data_limit_exceeded(
                env,
                f"The state/task '{self.name}' has an input with a size exceeding the maximum number "
                "of bytes service limit.",
            )
        return parameters

    return eval_parameters


def _data_limit_exceeded(env: Any, cause: str) -> Exception:
    from moto.stepfunctions.parser.api import HistoryEventType, TaskFailedEventDetails  # noqa: PLC0415
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (  # noqa: PLC0415
        FailureEvent,
        FailureEventException,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import (  # noqa: PLC0415
        StatesErrorName,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (  # noqa: PLC0415
        StatesErrorNameType,
    )

    error = StatesErrorNameType.StatesStatesDataLimitExceeded
    return FailureEventException(
        failure_event=FailureEvent(
            env=env,
            error_name=StatesErrorName(typ=error),
            event_type=HistoryEventType.TaskFailed,
            event_details=_task_failed(TaskFailedEventDetails(error=error.to_name(), cause=cause)),
        )
    )


def _task_failed(details: Any) -> Any:
    """moto's EventDetails for a TaskFailed event (a TypedDict whose other keys are left out)."""
    return {"taskFailedEventDetails": details}


def _keep_terminal_errors_from_states_all() -> None:
    from moto.stepfunctions.parser.asl.component.common.error_name.error_equals_decl import (  # noqa: PLC0415
        ErrorEqualsDecl,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import (  # noqa: PLC0415
        StatesErrorName,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (  # noqa: PLC0415
        StatesErrorNameType,
    )

    terminal = {StatesErrorNameType.StatesStatesDataLimitExceeded, StatesErrorNameType.StatesRuntime}
    states_all = StatesErrorName(typ=StatesErrorNameType.StatesALL)
    original = ErrorEqualsDecl._eval_body

    def eval_body(self: Any, env: Any) -> None:
        error_name = env.stack[-1]  # what the original pops: the error to match
        is_terminal = isinstance(error_name, StatesErrorName) and error_name.typ in terminal
        if is_terminal and states_all in self.error_names:
            env.stack.pop()
            env.stack.append(False)  # not matched: the execution fails with it
            return
        original(self, env)

    setattr(ErrorEqualsDecl, "_eval_body", eval_body)  # noqa: B010 - patching moto


# --- Step Functions: the error names of a refused integration call ------------------------------


def integration_error_name(integration: tuple[str, str, str, str], code: str) -> str:
    """The error a task fails with when the integration's API call is refused with ``code``."""
    service, operation, prefix, base = integration
    if code not in _modeled_errors(service, operation):
        return f"{prefix}.{base}"
    return f"{prefix}.{code}" if code.endswith("Exception") else f"{prefix}.{code}Exception"


def sdk_error(integration: tuple[str, str, str, str], label: str, ex: ClientError) -> tuple[str, str]:
    """(error, cause) of a task whose service call was refused, as Step Functions (on the AWS SDK
    for Java) reports them: the cause ends "(Service: <label>; Status Code: 403; Error Code: ...)"."""
    error, metadata = ex.response.get("Error", {}), ex.response.get("ResponseMetadata", {})
    code = str(error.get("Code", ""))
    cause = (
        f"{error.get('Message', '')} (Service: {label}; Status Code: {metadata.get('HTTPStatusCode')}; "
        f"Error Code: {code}; Request ID: {metadata.get('RequestId', '')}; Proxy: null)"
    )
    return integration_error_name(integration, code), cause


@cache
def _modeled_errors(service: str, operation: str) -> frozenset[str]:
    model = get_session().get_service_model(service).operation_model(operation)
    return frozenset(getattr(shape, "error_code", None) or shape.name for shape in model.error_shapes)


def _name_integration_errors() -> None:
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (  # noqa: PLC0415
        state_task_service_events,
        state_task_service_sfn,
    )

    for task, integration, label in (
        (state_task_service_sfn.StateTaskServiceSfn, _STEP_FUNCTIONS, "AWSStepFunctions"),
        (state_task_service_events.StateTaskServiceEvents, _EVENTBRIDGE, "AmazonEventBridge"),
    ):
        setattr(task, "_from_error", _naming_client_errors(task._from_error, integration, label))  # noqa: B010
    _name_lambda_task_errors()


def _name_lambda_task_errors() -> None:
    """A Lambda task whose Invoke the Lambda API refuses (AccessDeniedException, throttling) fails
    with ``Lambda.<modeled error>`` or ``Lambda.AWSLambdaException``; moto names it ``Exception``."""
    from moto.stepfunctions.parser.api import HistoryEventType, LambdaFunctionFailedEventDetails  # noqa: PLC0415
    from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import (  # noqa: PLC0415
        CustomErrorName,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (  # noqa: PLC0415
        FailureEvent,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.state_task_lambda import (  # noqa: PLC0415
        StateTaskLambda,
    )
    from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails  # noqa: PLC0415

    original = StateTaskLambda._from_error

    def from_error(self: Any, env: Any, ex: Exception) -> Any:
        if not isinstance(ex, ClientError):
            return original(self, env, ex)
        name, cause = sdk_error(_LAMBDA, "AWSLambda", ex)
        return FailureEvent(
            env=env,
            error_name=CustomErrorName(name),
            event_type=HistoryEventType.LambdaFunctionFailed,
            event_details=EventDetails(  # type: ignore[typeddict-item]
                lambdaFunctionFailedEventDetails=LambdaFunctionFailedEventDetails(error=name, cause=cause)
            ),
        )

    setattr(StateTaskLambda, "_from_error", from_error)  # noqa: B010 - patching moto


def _naming_client_errors(
    original: Callable[..., Any], integration: tuple[str, str, str, str], label: str
) -> Callable[..., Any]:
    def from_error(self: Any, env: Any, ex: Exception) -> Any:
        if not isinstance(ex, ClientError):
            return original(self, env, ex)
        from moto.stepfunctions.parser.api import HistoryEventType, TaskFailedEventDetails  # noqa: PLC0415
        from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import (  # noqa: PLC0415
            CustomErrorName,
        )
        from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (  # noqa: PLC0415
            FailureEvent,
        )

        name, cause = sdk_error(integration, label, ex)
        return FailureEvent(
            env=env,
            error_name=CustomErrorName(name),
            event_type=HistoryEventType.TaskFailed,
            event_details=_task_failed(
                TaskFailedEventDetails(
                    error=name,
                    cause=cause,
                    resource=self._get_sfn_resource(),
                    resourceType=self._get_sfn_resource_type(),
                )
            ),
        )

    return from_error


# --- EventBridge Scheduler: names --------------------------------------------------------------


def _limit_scheduler_names() -> None:
    from moto.scheduler.exceptions import ValidationException  # noqa: PLC0415
    from moto.scheduler.models import EventBridgeSchedulerBackend  # noqa: PLC0415

    # backend method -> {its parameter: the API's field name}
    checked = {
        "create_schedule": {"name": "name", "group_name": "groupName"},
        "update_schedule": {"name": "name", "group_name": "groupName"},
        "get_schedule": {"name": "name", "group_name": "groupName"},
        "delete_schedule": {"name": "name", "group_name": "groupName"},
        "create_schedule_group": {"name": "name"},
        "get_schedule_group": {"group_name": "name"},
        "delete_schedule_group": {"name": "name"},
    }
    for method_name, fields in checked.items():
        original = getattr(EventBridgeSchedulerBackend, method_name)
        setattr(
            EventBridgeSchedulerBackend,
            method_name,
            _checking_names(original, fields, ValidationException),
        )


def _checking_names(
    original: Callable[..., Any], fields: dict[str, str], refusal: Callable[[str], Exception]
) -> Callable[..., Any]:
    signature = inspect.signature(original)

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        arguments = signature.bind(self, *args, **kwargs).arguments
        for parameter, field in fields.items():
            value = arguments.get(parameter)
            problem = None if value is None else scheduler_name_problem(field, str(value))
            if problem is not None:
                raise refusal(problem)
        return original(self, *args, **kwargs)

    return method
