"""moto's bugs that the local stack depends on, fixed in place: one function a bug, each with its
upstream report where one exists, applied once per process by :func:`install`, and only on the
moto version they were written against (each reaches into moto's internals; another version
needs each checked first; ``tests/unit/test_moto_fixes.py`` shows whether the bugs still
reproduces without its fix).

The other ways moto is more lenient than AWS live beside what they model: IAM enforcement in
``query_relay_local.iam``, payload and name limits and integration error names in
``query_relay_local.aws_limits``. All three modules patch through :func:`apply_once`, which checks
:data:`MOTO_VERSION`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import moto

MOTO_VERSION = "5.2.5"
_lock = threading.Lock()
_applied: set[str] = set()


def check_moto_version(module: str) -> None:
    """Refuse a moto other than the one ``module``'s patches were written against."""
    if moto.__version__ != MOTO_VERSION:
        raise RuntimeError(
            f"{module} patches moto {MOTO_VERSION}'s internals, but moto is {moto.__version__}: "
            "check each patch against it (tests/unit/test_moto_fixes.py), then update MOTO_VERSION"
        )


def apply_once(owner: str, *patches: Callable[[], None]) -> None:
    """Apply ``owner``'s patches of moto once per process (moto's classes are process-wide), after
    checking the moto version they were written against."""
    with _lock:
        if owner in _applied:
            return
        check_moto_version(owner)
        for patch in patches:
            patch()
        _applied.add(owner)


def install() -> None:
    """Apply every fix below; idempotent."""
    apply_once(
        __name__,
        fix_step_functions_integration_parameters,
        fix_stop_execution,
        fix_dynamodb_atomicity,
        fix_glue_table_versions,
    )


def camel_to_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def fix_step_functions_integration_parameters() -> None:
    """Let ASL tasks start executions (``arn:aws:states:::states:startExecution``) on moto.

    moto's ASL interpreter (ported from LocalStack) leaves out the step that renames a task's
    parameters (``StateMachineArn``, as ASL spells them) to the SDK's (``stateMachineArn``), so the
    call fails with ``KeyError: 'StateMachineArn'``. This puts that step back for the Step Functions
    integration only, with moto's own renaming helper and botocore's model of the operation; and
    renames the answer's fields back (``executionArn`` -> ``ExecutionArn``, as AWS hands it over).
    The schedule launcher and ContinueAsNew need it (statemachine/query.asl.json).
    Upstream: https://github.com/getmoto/moto/issues/10076 (fix proposed in getmoto/moto#10101).
    """
    from botocore.session import get_session  # noqa: PLC0415 - only the local stack needs these
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (  # noqa: PLC0415
        state_task_service_sfn,
    )

    service = state_task_service_sfn.StateTaskServiceSfn
    original = service._normalise_parameters

    def normalise_parameters(
        self: Any,
        parameters: dict[str, Any],
        boto_service_name: str | None = None,
        service_action_name: str | None = None,
    ) -> None:
        original(self, parameters, boto_service_name, service_action_name)
        model = get_session().get_service_model(self._get_boto_service_name(boto_service_name))
        action = self._get_boto_service_action(service_action_name)
        operation = next(name for name in model.operation_names if camel_to_snake(name) == action)
        self._to_boto_request(parameters, model.operation_model(operation).input_shape)

    original_eval = service._eval_service_task

    def eval_service_task(self: Any, env: Any, *args: Any, **kwargs: Any) -> None:
        original_eval(self, env, *args, **kwargs)
        env.stack.append(_as_integration_result(env.stack.pop()))

    setattr(service, "_normalise_parameters", normalise_parameters)  # noqa: B010 - patching moto
    setattr(service, "_eval_service_task", eval_service_task)  # noqa: B010 - patching moto


def _as_integration_result(response: Any) -> Any:
    """What the Step Functions integration hands the state: the API's answer with its field names
    as the API spells them (``ExecutionArn``, where boto3 says ``executionArn``) and times as text."""
    if not isinstance(response, dict):
        return response
    return {
        name[:1].upper() + name[1:]: value.isoformat() if isinstance(value, datetime) else value
        for name, value in response.items()
    }


def fix_dynamodb_atomicity() -> None:
    """Make each DynamoDB request atomic, as on AWS. moto checks a ConditionExpression and then
    writes, without a lock, and this server answers requests on many threads: two conditional
    PutItems racing for one slot or one cleanup claim could both succeed here, never on AWS."""
    from moto.dynamodb.responses import DynamoHandler  # noqa: PLC0415

    original = DynamoHandler.call_action
    lock = threading.Lock()

    def call_action(self: Any) -> Any:
        with lock:
            return original(self)

    setattr(DynamoHandler, "call_action", call_action)  # noqa: B010 - patching moto


def fix_glue_table_versions() -> None:
    """Refuse an UpdateTable that names a table version other than the latest, as AWS does
    (ConcurrentModificationException: Glue's optimistic lock, which query_relay.catalog relies on
    when two jobs widen one table at once); moto ignores VersionId and takes any update. Each
    update is atomic too (moto reads the version, then writes, without a lock)."""
    from moto.core.exceptions import JsonRESTError  # noqa: PLC0415
    from moto.glue.responses import GlueResponse  # noqa: PLC0415

    original = GlueResponse.update_table
    lock = threading.Lock()

    def update_table(self: Any) -> Any:
        version = self.parameters.get("VersionId")
        with lock:
            if version is not None:
                table_input = self.parameters.get("TableInput") or {}
                table = self.glue_backend.get_table(
                    self.parameters.get("DatabaseName"), table_input.get("Name")
                )
                if str(version) != str(table._current_version):
                    raise JsonRESTError(
                        "ConcurrentModificationException",
                        f"Update table failed: version {version} is not the latest "
                        f"({table._current_version}); another update came first",
                    )
            return original(self)

    setattr(GlueResponse, "update_table", update_table)  # noqa: B010 - patching moto


def fix_stop_execution() -> None:
    """Make StopExecution act at once, as on AWS: mark the execution ABORTED right away (moto's
    interpreter notices a stop only once the state it is in, e.g. a running Lambda task, has ended,
    and reports RUNNING until then). The stop's ``error`` and ``cause`` are not kept for
    DescribeExecution: AWS documents those fields for FAILED executions only, so nothing here may
    come to rely on them for an ABORTED one (who cleans up is settled by a claim, query_relay.claims)."""
    from moto.stepfunctions.parser.api import ExecutionStatus  # noqa: PLC0415
    from moto.stepfunctions.responses import StepFunctionResponse  # noqa: PLC0415

    original = StepFunctionResponse.stop_execution

    def stop_execution(self: Any) -> Any:
        answer = original(self)
        execution = self.stepfunction_backend.describe_execution(self._get_param("executionArn"))
        if getattr(execution, "exec_status", None) == ExecutionStatus.RUNNING:
            execution.exec_status = ExecutionStatus.ABORTED
            execution.stop_date = datetime.now(UTC)
        return answer

    setattr(StepFunctionResponse, "stop_execution", stop_execution)  # noqa: B010 - patching moto
