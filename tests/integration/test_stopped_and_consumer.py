"""The two event-driven functions, invoked like Lambda with the sample events in events/ (moto emits
neither Step Functions status-change events nor S3 "Object Created" ones)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from query_relay_local.emulators.esql import EsqlEmulator
from query_relay_local.stack import LocalStack

from .conftest import ES_CONNECTION, esql_connection

EVENTS = Path(__file__).resolve().parents[2] / "events"
PATIENCE_SECONDS = 60.0


def sample_event(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return event


def aborted_event(stack: LocalStack, execution_arn: str) -> dict[str, Any]:
    """events/execution_aborted.json about this execution."""
    event = sample_event("execution_aborted.json")
    event["resources"] = [execution_arn]
    event["detail"] |= {
        "executionArn": execution_arn,
        "stateMachineArn": stack.state_machine_arn,
        "name": execution_arn.rsplit(":", 1)[1],
    }
    return event


def invoke(stack: LocalStack, function: str, event: dict[str, Any]) -> dict[str, Any]:
    result = stack.invoke(function, event)
    assert result.function_error is None, result.payload
    answer: dict[str, Any] = json.loads(result.payload)
    return answer


def polling_job(stack: LocalStack, job_id: str) -> tuple[str, str]:
    """Start a long query and wait until it is being polled: (execution ARN, upstream id)."""
    spec = {
        "job_id": job_id,
        "connection": ES_CONNECTION,
        "query": {"query": "FROM employees | LIMIT 5"},
        "polling": {"initial_seconds": 1, "max_seconds": 1, "timeout_seconds": 60},
    }
    execution_arn = stack.start_job(spec)
    deadline = time.monotonic() + PATIENCE_SECONDS
    while time.monotonic() < deadline:
        for event in stack.history(execution_arn):
            details = event.get("stateExitedEventDetails")
            if event["type"] == "TaskStateExited" and details and details["name"] == "Submit":
                return execution_arn, json.loads(details["output"])["job"]["upstream_id"]
        time.sleep(0.1)
    raise AssertionError("the job never got past Submit")


def test_an_execution_stopped_from_the_console_is_cleaned_up_like_a_cancel_once(
    esql_emulator: EsqlEmulator,
) -> None:
    # Given a job polling a long query
    esql_emulator.config.query_seconds = 60
    overrides = {"SubmitWaitSeconds": "0", "LongPollMaxSeconds": "1"}
    with LocalStack(parameter_overrides=overrides) as stack:
        stack.load_connections({ES_CONNECTION: esql_connection(esql_emulator)})
        execution_arn, upstream_id = polling_job(stack, "console-stop-1")
        # When someone stops it in the console (no Catch state runs), giving no cause, as AWS
        # describes an ABORTED execution: without error or cause
        stack.sfn.stop_execution(executionArn=execution_arn)
        described = stack.sfn.describe_execution(executionArn=execution_arn)
        assert described["status"] == "ABORTED"
        assert {"error", "cause"}.isdisjoint(described)
        # and its status change arrives, then arrives again (EventBridge delivers at least once)
        event = aborted_event(stack, execution_arn)
        first, second = (
            invoke(stack, "ExecutionStoppedFunction", event),
            invoke(stack, "ExecutionStoppedFunction", event),
        )
        # Then it is cleaned up once: the upstream task deleted, one "Query Failed" for the cancellation
        assert first["cleaned_up"] is True
        assert second == {"cleaned_up": False, "failure": None}
        assert esql_emulator.task_states()[upstream_id] == "deleted"
        assert [request.method for request in esql_emulator.requests].count("DELETE") == 1
        failed = [event["detail"] for event in stack.events() if event["detail-type"] == "Query Failed"]
        assert failed == [
            {
                "job_id": "console-stop-1",
                "connection": ES_CONNECTION,
                "provider": "esql",
                "error": "Cancelled",
                "cause": "stopped outside query-relay (the console, the CLI or StopExecution)",
            }
        ]


def test_a_console_stop_racing_an_api_cancel_is_cleaned_up_once(esql_emulator: EsqlEmulator) -> None:
    # Given a job polling a long query
    esql_emulator.config.query_seconds = 60
    overrides = {"SubmitWaitSeconds": "0", "LongPollMaxSeconds": "1"}
    with LocalStack(parameter_overrides=overrides) as stack:
        stack.load_connections({ES_CONNECTION: esql_connection(esql_emulator)})
        execution_arn, upstream_id = polling_job(stack, "raced-stop-1")
        cancel = {
            "httpMethod": "DELETE",
            "path": "/queries/raced-stop-1",
            "requestContext": {"requestId": "r1"},
        }

        def console_stop() -> dict[str, Any]:
            stack.sfn.stop_execution(executionArn=execution_arn, cause="stopped by an operator")
            return invoke(stack, "ExecutionStoppedFunction", aborted_event(stack, execution_arn))

        # When an operator stops it in the console while a client cancels it through the API
        with ThreadPoolExecutor(max_workers=2) as pool:
            api_answer = pool.submit(invoke, stack, "ApiFunction", cancel)
            stop_answer = pool.submit(console_stop)
            answered, handled = api_answer.result(), stop_answer.result()
        # and the status change of the API's own stop arrives too
        late = invoke(stack, "ExecutionStoppedFunction", aborted_event(stack, execution_arn))
        # Then the API answers with the stopped job, and the job was cleaned up once, by one of them
        assert answered["statusCode"] == 200
        assert json.loads(answered["body"])["status"] == "ABORTED"
        assert late == {"cleaned_up": False, "failure": None}
        assert esql_emulator.task_states()[upstream_id] == "deleted"
        assert [request.method for request in esql_emulator.requests].count("DELETE") == 1
        failed = [event["detail"] for event in stack.events() if event["detail-type"] == "Query Failed"]
        assert [(detail["job_id"], detail["error"]) for detail in failed] == [("raced-stop-1", "Cancelled")]
        by_api = failed[0]["cause"] == "cancelled through the query-relay API"
        assert handled["cleaned_up"] is not by_api


def test_an_execution_that_timed_out_is_cleaned_up_and_gives_its_slot_back(
    esql_emulator: EsqlEmulator,
) -> None:
    # Given a job polling a long query on a connection with max_concurrent
    esql_emulator.config.query_seconds = 60
    overrides = {"SubmitWaitSeconds": "0", "LongPollMaxSeconds": "1"}
    with LocalStack(parameter_overrides=overrides) as stack:
        connection = esql_connection(esql_emulator) | {"max_concurrent": 1}
        stack.load_connections({ES_CONNECTION: connection})
        execution_arn, upstream_id = polling_job(stack, "timed-out-1")
        # When its execution ends TIMED_OUT (moto cannot wait out the machine's 8-day
        # TimeoutSeconds: the execution is stopped and the status change says TIMED_OUT)
        stack.sfn.stop_execution(executionArn=execution_arn, cause="the test ends it")
        event = aborted_event(stack, execution_arn)
        event["detail"]["status"] = "TIMED_OUT"
        answer = invoke(stack, "ExecutionStoppedFunction", event)
        # Then the upstream task is deleted, the slot is free, and the failure is named QueryTimedOut
        assert answer["cleaned_up"] is True
        assert esql_emulator.task_states()[upstream_id] == "deleted"
        (table,) = stack.template.tables.values()
        item = stack.client("dynamodb").get_item(
            TableName=table.name, Key={"pk": {"S": f"slots#{ES_CONNECTION}"}}
        )
        assert item["Item"]["holders"]["M"] == {}
        failed = [event["detail"] for event in stack.events() if event["detail-type"] == "Query Failed"]
        assert [(detail["job_id"], detail["error"]) for detail in failed] == [
            ("timed-out-1", "QueryTimedOut")
        ]


def test_an_execution_stopped_while_submit_runs_has_its_upstream_task_cancelled_by_submit(
    esql_emulator: EsqlEmulator,
) -> None:
    # Given a Submit that waits 3 s inline for a long query, on a connection with max_concurrent
    esql_emulator.config.query_seconds = 60
    with LocalStack(parameter_overrides={"SubmitWaitSeconds": "3"}) as stack:
        stack.load_connections({ES_CONNECTION: esql_connection(esql_emulator) | {"max_concurrent": 1}})
        spec = {
            "job_id": "stopped-in-submit",
            "connection": ES_CONNECTION,
            "query": {"query": "FROM employees"},
        }
        execution_arn = stack.start_job(spec)
        deadline = time.monotonic() + PATIENCE_SECONDS
        while not esql_emulator.running_intervals():  # the query reached the upstream, which holds it 3 s
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # When the execution is stopped before Submit returns (so no job state is recorded anywhere)
        stack.sfn.stop_execution(executionArn=execution_arn, cause="stopped by an operator")
        # Then Submit, on its way out, sees that and cancels the upstream task and frees the slot
        (table,) = stack.template.tables.values()
        key = {"pk": {"S": f"slots#{ES_CONNECTION}"}}

        def undone() -> bool:
            holders = stack.client("dynamodb").get_item(TableName=table.name, Key=key)["Item"]["holders"]["M"]
            return list(esql_emulator.task_states().values()) == ["deleted"] and holders == {}

        while not undone():
            assert time.monotonic() < deadline, esql_emulator.task_states()
            time.sleep(0.1)
        assert stack.sfn.describe_execution(executionArn=execution_arn)["status"] == "ABORTED"
        assert any("the execution ended while Submit ran" in line for line in stack.logs)


def test_a_result_the_fast_path_landed_after_the_execution_was_stopped_is_removed_by_submit(
    esql_emulator: EsqlEmulator,
) -> None:
    # Given a query that finishes inside Submit's inline wait (the fast path lands it at once)
    esql_emulator.config.query_seconds = 2
    with LocalStack(parameter_overrides={"SubmitWaitSeconds": "10"}) as stack:
        stack.load_connections({ES_CONNECTION: esql_connection(esql_emulator)})
        spec = {"job_id": "stopped-fast", "connection": ES_CONNECTION, "query": {"query": "FROM employees"}}
        execution_arn = stack.start_job(spec)
        deadline = time.monotonic() + PATIENCE_SECONDS
        while not esql_emulator.running_intervals():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # When the execution is stopped while the query still runs, before Submit lands the result
        stack.sfn.stop_execution(executionArn=execution_arn, cause="stopped by an operator")
        # Then Submit lands it, sees the execution ended, and removes what it wrote: nothing is left
        while not any("removed partial output" in line for line in stack.logs):
            assert time.monotonic() < deadline, "Submit did not remove the landed result"
            time.sleep(0.1)
        assert any("result landed" in line for line in stack.logs)
        left = stack.s3.list_objects_v2(Bucket=stack.bucket).get("Contents", [])
        assert [entry["Key"] for entry in left] == []


def test_an_execution_the_api_cancelled_is_not_cleaned_up_twice(esql_emulator: EsqlEmulator) -> None:
    # Given a job the API cancelled (it cleaned up and announced it already)
    esql_emulator.config.query_seconds = 60
    overrides = {"SubmitWaitSeconds": "0", "LongPollMaxSeconds": "1"}
    with LocalStack(parameter_overrides=overrides) as stack:
        stack.load_connections({ES_CONNECTION: esql_connection(esql_emulator)})
        execution_arn, _ = polling_job(stack, "api-cancel-1")
        cancel = {
            "httpMethod": "DELETE",
            "path": "/queries/api-cancel-1",
            "requestContext": {"requestId": "r1"},
        }
        assert invoke(stack, "ApiFunction", cancel)["statusCode"] == 200
        # When the status change for that stop arrives
        answer = invoke(stack, "ExecutionStoppedFunction", aborted_event(stack, execution_arn))
        # Then nothing more happens: one "Query Failed" event in all
        assert answer == {"cleaned_up": False, "failure": None}
        failed = [event for event in stack.events() if event["detail-type"] == "Query Failed"]
        assert len(failed) == 1


def test_the_sample_consumer_reads_the_manifest_that_landed(stack: LocalStack) -> None:
    # Given a job that succeeded
    spec = {
        "job_id": "consumed-1",
        "connection": ES_CONNECTION,
        "query": {"query": "FROM employees | LIMIT 7"},
    }
    final, _ = stack.run_job(spec, timeout=60)
    assert final["status"] == "SUCCEEDED"
    manifest_key = json.loads(final["output"])["manifest_key"]
    # When S3 announces its manifest (events/manifest_created.json about that object)
    event = sample_event("manifest_created.json")
    event["detail"]["bucket"]["name"] = stack.bucket
    event["detail"]["object"]["key"] = manifest_key
    answer = invoke(stack, "ManifestConsumerFunction", event)
    # Then the consumer has read it: the rows and the objects to fetch
    manifest = json.loads(stack.s3.get_object(Bucket=stack.bucket, Key=manifest_key)["Body"].read())
    assert answer == {
        "job_id": "consumed-1",
        "row_count": 7,
        "keys": [entry["key"] for entry in manifest["objects"]],
    }
    assert any('"result ready"' in line and '"rows":7' in line for line in stack.logs)
