"""AWS's payload and name limits, and its integration error names, on the local stack
(query_relay_local.aws_limits): what fails on AWS fails here, the way it fails there.

A small throwaway template runs each case: a Lambda task, a Pass state, and the
``states:startExecution`` and ``events:putEvents`` integrations, each caught by ``States.ALL``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import moto
import pytest
from botocore.exceptions import ClientError
from moto.core.exceptions import AWSError

from query_relay.limits import STATE_PAYLOAD_MAX_BYTES
from query_relay_local import aws_limits, moto_fixes
from query_relay_local.stack import LocalStack

HANDLER = """
def handle(event, context):
    if event.get("mode") == "big-result":
        return {"pad": "x" * 300_000}
    return {"mode": event.get("mode")}
"""

CAUGHT = [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Caught"}]
MACHINE = {
    "StartAt": "Route",
    "States": {
        "Route": {
            "Type": "Choice",
            "Choices": [
                {"Variable": "$.mode", "StringEquals": mode, "Next": state}
                for mode, state in (
                    ("big-result", "Call"),
                    ("big-parameters", "CallDoubled"),
                    ("big-output", "Double"),
                    ("launch", "Launch"),
                    ("announce", "Announce"),
                )
            ],
            "Default": "Done",
        },
        "Call": {"Type": "Task", "Resource": "${TinyArn}", "Catch": CAUGHT, "Next": "Done"},
        "CallDoubled": {
            "Type": "Task",
            "Resource": "${TinyArn}",
            "Parameters": {"a.$": "$.pad", "b.$": "$.pad"},
            "Catch": CAUGHT,
            "Next": "Done",
        },
        "Double": {"Type": "Pass", "Parameters": {"a.$": "$.pad", "b.$": "$.pad"}, "Next": "Done"},
        "Launch": {
            "Type": "Task",
            "Resource": "arn:aws:states:::states:startExecution",
            "Parameters": {"StateMachineArn.$": "$$.StateMachine.Id", "Name.$": "$.name", "Input": {}},
            "ResultPath": None,
            "Retry": [
                {
                    "ErrorEquals": [
                        "StepFunctions.ExecutionAlreadyExistsException",
                        "StepFunctions.InvalidNameException",
                        "StepFunctions.ValidationException",
                    ],
                    "MaxAttempts": 0,
                },
                {
                    "ErrorEquals": ["States.TaskFailed"],
                    "IntervalSeconds": 1,
                    "MaxAttempts": 2,
                    "BackoffRate": 1.0,
                },
            ],
            "Catch": CAUGHT,
            "Next": "Done",
        },
        "Announce": {
            "Type": "Task",
            "Resource": "arn:aws:states:::events:putEvents",
            "Parameters": {
                "Entries": [
                    {"Source": "tiny", "DetailType": "Tiny", "EventBusName": "${Bus}", "Detail": {"a": 1}}
                ]
            },
            "ResultPath": None,
            "Retry": [
                {"ErrorEquals": ["States.ALL"], "IntervalSeconds": 1, "MaxAttempts": 2, "BackoffRate": 1.0}
            ],
            "Catch": CAUGHT,
            "Next": "Done",
        },
        "Caught": {"Type": "Pass", "End": True},
        "Done": {"Type": "Succeed"},
    },
}

TEMPLATE = """
Parameters:
  EventBusName:
    Type: String
    Default: tiny-limits-bus
Globals:
  Function:
    Runtime: python3.13
    Timeout: 5
    Environment:
      Variables:
        POWERTOOLS_SERVICE_NAME: tiny-limits
Resources:
  Tiny:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: tiny
      Handler: app.handle
  Machine:
    Type: AWS::Serverless::StateMachine
    Properties:
      Name: tiny-limits
      DefinitionUri: machine.asl.json
      DefinitionSubstitutions:
        TinyArn: !GetAtt Tiny.Arn
        Bus: !Ref EventBusName
      Policies:
        - LambdaInvokePolicy:
            FunctionName: !Ref Tiny
        - StepFunctionsExecutionPolicy:
            StateMachineName: tiny-limits
        - EventBridgePutEventsPolicy:
            EventBusName: !Ref EventBusName
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("limits")
    (root / "tiny").mkdir()
    (root / "tiny" / "app.py").write_text(HANDLER)
    (root / "machine.asl.json").write_text(json.dumps(MACHINE))
    (root / "template.yaml").write_text(TEMPLATE)
    with LocalStack(root / "template.yaml") as started:
        yield started


def run(
    stack: LocalStack, name: str, document: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    arn = stack.sfn.start_execution(
        stateMachineArn=stack.state_machine_arn, name=name, input=json.dumps(document)
    )["executionArn"]
    final = stack.wait(arn, timeout=60)
    return dict(final), [dict(event) for event in stack.history(arn)]


def failed_tasks(history: list[dict[str, Any]]) -> list[str]:
    return [event["taskFailedEventDetails"]["error"] for event in history if event["type"] == "TaskFailed"]


def refusal(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


def padded(size: int) -> str:
    """A compact JSON document of exactly ``size`` bytes: ``{"pad":"xxx..."}``."""
    empty = json.dumps({"pad": ""}, separators=(",", ":"))
    return json.dumps({"pad": "x" * (size - len(empty))}, separators=(",", ":"))


# --- payloads ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "pad"),
    [("big-result", 0), ("big-parameters", 140_000), ("big-output", 140_000)],
    ids=["task-result", "task-input-after-parameters", "state-output"],
)
def test_a_payload_over_256_kib_fails_the_execution_even_with_a_states_all_catch(
    stack: LocalStack, mode: str, pad: int
) -> None:
    # Given a state whose result, input or output grows past 262,144 bytes
    final, history = run(stack, f"over-{mode}", {"mode": mode, "pad": "x" * pad})

    # Then the execution fails with States.DataLimitExceeded: the Catch on States.ALL never runs
    assert final["status"] == "FAILED"
    assert final["error"] == "States.DataLimitExceeded"
    assert "Caught" not in [
        e["stateEnteredEventDetails"]["name"] for e in history if "stateEnteredEventDetails" in e
    ]


def test_an_input_of_exactly_256_kib_runs_and_one_byte_more_is_refused(stack: LocalStack) -> None:
    # Given execution inputs of 262,144 and 262,145 bytes
    at_limit, over = padded(STATE_PAYLOAD_MAX_BYTES), padded(STATE_PAYLOAD_MAX_BYTES + 1)
    assert len(at_limit.encode()) == STATE_PAYLOAD_MAX_BYTES

    # Then the first runs, its states carrying it whole, and StartExecution refuses the second
    arn = stack.sfn.start_execution(stateMachineArn=stack.state_machine_arn, name="at-limit", input=at_limit)
    assert stack.wait(arn["executionArn"], timeout=60)["status"] == "SUCCEEDED"
    with pytest.raises(ClientError) as refused:
        stack.sfn.start_execution(stateMachineArn=stack.state_machine_arn, name="over-limit", input=over)
    assert refusal(refused) == "ValidationException"
    assert "Value at 'input'" in str(refused.value)
    assert str(STATE_PAYLOAD_MAX_BYTES) in str(refused.value)
    assert "over-limit" not in {
        e["name"] for e in stack.sfn.list_executions(stateMachineArn=stack.state_machine_arn)["executions"]
    }


# --- execution names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("n" * 81, "ValidationException"),
        ("has space", "InvalidName"),
        ("tab\there", "InvalidName"),
        ("colon:time", "InvalidName"),
        ("slash/name", "InvalidName"),
        ("brace{1}", "InvalidName"),
        ("star*", "InvalidName"),
        ("comma,semi;", "InvalidName"),
        ("delete\x7f", "InvalidName"),
        ("nbsp\u00a0", "InvalidName"),
    ],
)
def test_an_execution_name_aws_refuses_is_refused(stack: LocalStack, name: str, code: str) -> None:
    with pytest.raises(ClientError) as refused:
        stack.sfn.start_execution(stateMachineArn=stack.state_machine_arn, name=name, input="{}")
    assert refusal(refused) == code


def test_an_execution_name_of_80_characters_with_dots_and_dashes_is_taken(stack: LocalStack) -> None:
    name = "job.1-" + "n" * 73 + "_"
    assert len(name) == 80
    arn = stack.sfn.start_execution(stateMachineArn=stack.state_machine_arn, name=name, input="{}")
    assert stack.wait(arn["executionArn"], timeout=60)["status"] == "SUCCEEDED"


def test_an_execution_started_without_a_name_is_named_by_a_uuid_as_on_aws(stack: LocalStack) -> None:
    """moto left the name (and so ``$$.Execution.Name`` and the ARN's last part) None."""
    arn = stack.sfn.start_execution(stateMachineArn=stack.state_machine_arn, input="{}")["executionArn"]
    described = stack.sfn.describe_execution(executionArn=arn)
    assert str(uuid.UUID(described["name"])) == described["name"] == arn.rsplit(":", 1)[1]
    assert stack.wait(arn, timeout=60)["status"] == "SUCCEEDED"


# --- the error names of the states:startExecution and events:putEvents integrations ---------------


@pytest.mark.parametrize(
    ("name", "error"),
    [("n" * 81, "StepFunctions.ValidationException"), ("bad name", "StepFunctions.InvalidNameException")],
)
def test_a_start_the_api_refuses_fails_the_task_with_the_name_aws_gives_and_is_not_retried(
    stack: LocalStack, name: str, error: str
) -> None:
    final, history = run(stack, f"launch-{error.rsplit('.', 1)[1]}", {"mode": "launch", "name": name})

    assert final["status"] == "SUCCEEDED"
    assert json.loads(final["output"])["error"]["Error"] == error
    assert failed_tasks(history) == [error]  # MaxAttempts 0: not retried


def test_a_name_taken_already_is_execution_already_exists_and_not_retried(stack: LocalStack) -> None:
    # Given a child execution started once and ended
    first, _ = run(stack, "launcher-1", {"mode": "launch", "name": "child-taken"})
    assert json.loads(first["output"]) == {"mode": "launch", "name": "child-taken"}
    assert stack.wait(stack.execution_arn("child-taken"), timeout=60)["status"] == "SUCCEEDED"

    # When another launcher starts it again (a redelivered trigger)
    final, history = run(stack, "launcher-2", {"mode": "launch", "name": "child-taken"})

    # Then its task fails at once with StepFunctions.ExecutionAlreadyExistsException
    assert json.loads(final["output"])["error"]["Error"] == "StepFunctions.ExecutionAlreadyExistsException"
    assert failed_tasks(history) == ["StepFunctions.ExecutionAlreadyExistsException"]


def test_a_throttled_start_is_named_like_the_sdk_and_retried(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given StartExecution throttled once (an error its API does not model)
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend  # noqa: PLC0415

    start: Callable[..., Any] = StepFunctionsParserBackend.start_execution
    throttled: list[str] = []

    def throttle_once(self: Any, state_machine_arn: str, name: str | None = None, *args: Any) -> Any:
        if name == "child-throttled" and not throttled:
            throttled.append(name)
            raise AWSError("Rate exceeded", exception_type="ThrottlingException")
        return start(self, state_machine_arn, name, *args)

    monkeypatch.setattr(StepFunctionsParserBackend, "start_execution", throttle_once)

    # When a task starts it
    final, history = run(stack, "launcher-throttled", {"mode": "launch", "name": "child-throttled"})

    # Then the task fails as the SDK's base exception, is retried, and the child starts
    assert failed_tasks(history) == ["StepFunctions.AWSStepFunctionsException"]
    assert final["status"] == "SUCCEEDED"
    assert "error" not in json.loads(final["output"])
    assert stack.wait(stack.execution_arn("child-throttled"), timeout=60)["status"] == "SUCCEEDED"


def test_a_refused_put_events_is_a_task_error_that_retries(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given PutEvents refused once (moto would turn that into States.Runtime, which nothing handles)
    from moto.events.models import EventsBackend  # noqa: PLC0415

    put_events = EventsBackend.put_events
    refused: list[int] = []

    def refuse_once(self: Any, events: list[dict[str, Any]]) -> Any:
        if not refused:
            refused.append(1)
            raise AWSError("Rate exceeded", exception_type="ThrottlingException")
        return put_events(self, events)

    monkeypatch.setattr(EventsBackend, "put_events", refuse_once)

    final, history = run(stack, "announce-throttled", {"mode": "announce"})

    assert failed_tasks(history) == ["EventBridge.AmazonEventBridgeException"]
    assert final["status"] == "SUCCEEDED"
    assert "error" not in json.loads(final["output"])


@pytest.mark.parametrize(
    ("integration", "code", "name"),
    [
        ("sfn", "ExecutionAlreadyExists", "StepFunctions.ExecutionAlreadyExistsException"),
        ("sfn", "ExecutionLimitExceeded", "StepFunctions.ExecutionLimitExceededException"),
        ("sfn", "ValidationException", "StepFunctions.ValidationException"),
        ("sfn", "ThrottlingException", "StepFunctions.AWSStepFunctionsException"),
        ("sfn", "ServiceUnavailable", "StepFunctions.AWSStepFunctionsException"),
        ("events", "InternalException", "EventBridge.InternalException"),
        ("events", "ThrottlingException", "EventBridge.AmazonEventBridgeException"),
    ],
)
def test_integration_error_names_follow_the_api_model(integration: str, code: str, name: str) -> None:
    known = {"sfn": aws_limits._STEP_FUNCTIONS, "events": aws_limits._EVENTBRIDGE}
    assert aws_limits.integration_error_name(known[integration], code) == name


# --- EventBridge Scheduler names -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["g" * 65, "has space", "colon:name", "dollar$", "ümlaut", "star*"])
def test_a_schedule_or_group_name_scheduler_refuses_is_refused(stack: LocalStack, name: str) -> None:
    scheduler = stack.client("scheduler")
    with pytest.raises(ClientError) as group:
        scheduler.create_schedule_group(Name=name)
    with pytest.raises(ClientError) as schedule:
        scheduler.create_schedule(
            Name=name,
            ScheduleExpression="rate(1 day)",
            FlexibleTimeWindow={"Mode": "OFF"},
            Target={"Arn": stack.state_machine_arn, "RoleArn": "arn:aws:iam::123456789012:role/r"},
        )
    assert refusal(group) == refusal(schedule) == "ValidationException"


def test_a_name_of_64_allowed_characters_is_taken_by_scheduler(stack: LocalStack) -> None:
    name = "group.name-1_" + "g" * 51
    assert len(name) == 64
    scheduler = stack.client("scheduler")
    scheduler.create_schedule_group(Name=name)
    groups = scheduler.list_schedule_groups(NamePrefix="group.")["ScheduleGroups"]
    assert [group["Name"] for group in groups] == [name]


def test_installing_twice_changes_nothing(stack: LocalStack) -> None:
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend  # noqa: PLC0415

    patched = StepFunctionsParserBackend.start_execution
    aws_limits.install()
    assert StepFunctionsParserBackend.start_execution is patched


def test_another_moto_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(moto_fixes, "_applied", set())  # as in a new process
    monkeypatch.setattr(moto, "__version__", "9.9.9")
    with pytest.raises(RuntimeError, match=r"moto 5\.2\.5"):
        aws_limits.install()
