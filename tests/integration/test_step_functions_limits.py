"""The application's state machine within AWS's limits, on the local stack that enforces them
(query_relay_local.aws_limits): a spec too big beside its job state fails cleanly before anything
starts upstream, and a scheduled run whose start is throttled is retried, while a redelivered
trigger is recognised at once."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from moto.core.exceptions import AWSError

from query_relay.limits import JOB_SPEC_MAX_BYTES, STATE_PAYLOAD_MAX_BYTES, json_size
from query_relay_local.emulators.esql import EsqlEmulator
from query_relay_local.stack import LocalStack

from .conftest import ES_CONNECTION, run_job

QUERY = {"query": "FROM employees | STATS n = COUNT(*) BY department | SORT department"}
TRIGGER = {
    "schedule": "nightly",
    "scheduled_time": "2026-11-25T02:00:00Z",
    "spec": {"connection": ES_CONNECTION, "query": QUERY},
}
RUN = "nightly-2026-11-25T020000Z"


def failed_tasks(stack: LocalStack, arn: str) -> list[str]:
    return [e["taskFailedEventDetails"]["error"] for e in stack.history(arn) if e["type"] == "TaskFailed"]


def test_a_spec_too_big_beside_its_job_state_fails_before_anything_starts_upstream(
    stack: LocalStack, esql_emulator: EsqlEmulator
) -> None:
    # Given a spec started directly (not through the API or the CLI, which refuse it): it fits an
    # execution's input, but not beside the job state and an error in Cleanup's payload
    spec = {
        "connection": ES_CONNECTION,
        "query": {"query": QUERY["query"] + " // " + "x" * JOB_SPEC_MAX_BYTES},
    }
    assert JOB_SPEC_MAX_BYTES < json_size(spec) < STATE_PAYLOAD_MAX_BYTES

    # When it runs
    final, _ = run_job(stack, spec)

    # Then Submit refuses it by name, Cleanup runs, and the upstream never heard of it
    assert final["status"] == "FAILED"
    assert final["error"] == "InvalidJobSpec"
    assert "query: the job spec is" in final["cause"]
    assert list(esql_emulator.requests) == []


def test_a_throttled_scheduled_start_is_retried_and_a_redelivered_trigger_starts_nothing(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given StartExecution throttled once for the run's name
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend  # noqa: PLC0415

    start: Callable[..., Any] = StepFunctionsParserBackend.start_execution
    throttled: list[str] = []

    def throttle_once(self: Any, state_machine_arn: str, name: str | None = None, *args: Any) -> Any:
        if name == RUN and not throttled:
            throttled.append(name)
            raise AWSError("Rate exceeded", exception_type="ThrottlingException")
        return start(self, state_machine_arn, name, *args)

    monkeypatch.setattr(StepFunctionsParserBackend, "start_execution", throttle_once)

    # When the schedule's trigger arrives
    launcher = stack.sfn.start_execution(
        stateMachineArn=stack.state_machine_arn, name="trigger-1", input=json.dumps(TRIGGER)
    )["executionArn"]

    # Then the launcher retries the throttled start, and the run happens
    assert stack.wait(launcher, timeout=120)["status"] == "SUCCEEDED"
    assert failed_tasks(stack, launcher) == ["StepFunctions.AWSStepFunctionsException"]
    assert stack.wait(stack.execution_arn(RUN), timeout=120)["status"] == "SUCCEEDED"

    # When the same trigger is delivered again
    again = stack.sfn.start_execution(
        stateMachineArn=stack.state_machine_arn, name="trigger-2", input=json.dumps(TRIGGER)
    )["executionArn"]

    # Then it finds the run (ExecutionAlreadyExists, not retried) and ends without a second one
    assert stack.wait(again, timeout=120)["status"] == "SUCCEEDED"
    assert failed_tasks(stack, again) == ["StepFunctions.ExecutionAlreadyExistsException"]
    runs = [
        execution["name"]
        for execution in stack.sfn.list_executions(stateMachineArn=stack.state_machine_arn)["executions"]
        if execution["name"].startswith("nightly-")
    ]
    assert runs == [RUN]
