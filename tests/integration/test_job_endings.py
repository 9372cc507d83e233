"""How a job ends, on the local stack: one cleanup per execution however it stops (the machine's
Cleanup state takes part in the claim too, query_relay.claims), and a landed result whose "Query
Result Ready" event cannot be sent still ends SUCCEEDED."""

from __future__ import annotations

import json
import time
from typing import Any

from query_relay_local.emulators.esql import EsqlEmulator
from query_relay_local.stack import LocalStack

from .conftest import ES_CONNECTION, esql_connection, run_job


def failing_spec(job_id: str) -> dict[str, Any]:
    """A job the upstream fails after it has started it (so Cleanup has a task to cancel)."""
    return {"job_id": job_id, "connection": ES_CONNECTION, "query": {"query": "FROM no_such_index | LIMIT 1"}}


def claim(stack: LocalStack, execution_arn: str, claimant: str, error: str, cause: str) -> None:
    """Put a cleanup claim in the control table, as a party that got there first leaves it."""
    (table,) = stack.template.tables.values()
    stack.client("dynamodb").put_item(
        TableName=table.name,
        Item={
            "pk": {"S": f"cleanup#{execution_arn}"},
            "claimant": {"S": claimant},
            "error": {"S": error},
            "cause": {"S": cause},
            "claimed_at": {"S": "2026-01-01T00:00:00+00:00"},
            "expires_at": {"N": str(int(time.time()) + 3600)},
        },
    )


def query_failed(stack: LocalStack) -> list[dict[str, Any]]:
    return [event["detail"] for event in stack.events() if event["detail-type"] == "Query Failed"]


def test_a_job_failing_while_the_api_cancels_it_leaves_the_cleanup_to_the_api(stack: LocalStack) -> None:
    # Given an API cancel has claimed the job's cleanup (it is about to stop the execution)
    claim(
        stack,
        stack.execution_arn("failing-while-cancelled"),
        "api:0123456789abcdef",
        "Cancelled",
        "cancelled through the query-relay API",
    )
    # When the job fails on its own meanwhile and the machine's Cleanup state runs
    final, history = run_job(stack, failing_spec("failing-while-cancelled"))
    # Then the machine undoes nothing and sends no event (the API does both), and ends with the
    # cancel's error rather than a second, different story
    assert (final["status"], final.get("error")) == ("FAILED", "Cancelled")
    entered = [
        event["stateEnteredEventDetails"]["name"] for event in history if "stateEnteredEventDetails" in event
    ]
    assert "PublishFailed" not in entered
    assert query_failed(stack) == []
    assert any('"another party cleans up after this execution"' in line for line in stack.logs)


def test_a_retried_cleanup_finds_its_own_claim_and_finishes(stack: LocalStack) -> None:
    # Given an earlier attempt of this execution's Cleanup claimed its cleanup and died
    execution_arn = stack.execution_arn("cleanup-retried")
    claim(stack, execution_arn, "state-machine", "UpstreamQueryFailed", "an earlier attempt's cause")
    # When the job fails and Cleanup runs (again)
    final, _ = run_job(stack, failing_spec("cleanup-retried"))
    # Then it cleans up and announces the failure, once
    assert (final["status"], final.get("error")) == ("FAILED", "UpstreamQueryFailed")
    assert [(detail["job_id"], detail["error"]) for detail in query_failed(stack)] == [
        ("cleanup-retried", "UpstreamQueryFailed")
    ]


def test_a_failed_job_is_cleaned_up_once_and_a_late_stop_handler_does_nothing(stack: LocalStack) -> None:
    # Given a job that failed: its Cleanup state cleaned up and announced it
    final, _ = run_job(stack, failing_spec("failed-once"))
    assert final["status"] == "FAILED"
    # When the stop handler hears about that execution anyway (a stray status change)
    event = {
        "version": "0",
        "id": "a-stray-event",
        "detail-type": "Step Functions Execution Status Change",
        "source": "aws.states",
        "account": "123456789012",
        "time": "2026-01-01T00:00:00Z",
        "region": "us-east-1",
        "resources": [final["executionArn"]],
        "detail": {
            "executionArn": final["executionArn"],
            "stateMachineArn": stack.state_machine_arn,
            "name": "failed-once",
            "status": "ABORTED",
        },
    }
    result = stack.invoke("ExecutionStoppedFunction", event)
    # Then it leaves the execution alone: one "Query Failed" in all
    assert result.function_error is None, result.payload
    assert json.loads(result.payload) == {"cleaned_up": False, "failure": None}
    assert [detail["error"] for detail in query_failed(stack)] == ["UpstreamQueryFailed"]


def test_a_landed_result_whose_event_cannot_be_sent_still_succeeds_and_is_reported(
    esql_emulator: EsqlEmulator,
) -> None:
    # Given a stack whose event bus is gone by the time the result lands
    with LocalStack(parameter_overrides={"EventBusName": "query-relay-jobs"}) as stack:
        stack.load_connections({ES_CONNECTION: esql_connection(esql_emulator)})
        events = stack.client("events")
        for rule in events.list_rules(EventBusName="query-relay-jobs")["Rules"]:
            targets = events.list_targets_by_rule(Rule=rule["Name"], EventBusName="query-relay-jobs")[
                "Targets"
            ]
            events.remove_targets(
                Rule=rule["Name"], EventBusName="query-relay-jobs", Ids=[target["Id"] for target in targets]
            )
            events.delete_rule(Name=rule["Name"], EventBusName="query-relay-jobs")
        events.delete_event_bus(Name="query-relay-jobs")
        # When a job runs, and "Query Result Ready" fails even after its retries
        final, history = run_job(
            stack,
            {
                "job_id": "unannounced-1",
                "connection": ES_CONNECTION,
                "query": {"query": "FROM employees | LIMIT 3"},
            },
        )
        # Then the job has succeeded, saying it was not announced, and its manifest is there
        assert final["status"] == "SUCCEEDED"
        output = json.loads(final["output"])
        assert (output["announced"], output["row_count"]) == (False, 3)
        manifest = json.loads(
            stack.s3.get_object(Bucket=stack.bucket, Key=output["manifest_key"])["Body"].read()
        )
        assert (manifest["job_id"], manifest["row_count"]) == ("unannounced-1", 3)
        failed_puts = [event for event in history if event["type"] == "TaskFailed"]
        assert failed_puts
        # and an alarm has an ERROR line and a ResultNotAnnounced metric to watch
        errors = [
            json.loads(line) for line in stack.logs if '"result landed but its Query Result Ready' in line
        ]
        assert len(errors) == 1
        assert errors[0]["level"] == "ERROR"
        assert (errors[0]["job_id"], errors[0]["manifest_key"]) == ("unannounced-1", output["manifest_key"])
        assert errors[0]["error"]
        metric_lines = [
            json.loads(line) for line in stack.logs if '"_aws"' in line and "ResultNotAnnounced" in line
        ]
        assert len(metric_lines) == 1
        (directive,) = metric_lines[0]["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "QueryRelay"
        assert {"Name": "ResultNotAnnounced", "Unit": "Count"} in directive["Metrics"]
        assert metric_lines[0]["ResultNotAnnounced"] == [1.0] or metric_lines[0]["ResultNotAnnounced"] == 1.0


def test_an_announced_result_says_so(stack: LocalStack) -> None:
    final, _ = run_job(
        stack,
        {
            "job_id": "announced-1",
            "connection": ES_CONNECTION,
            "query": {"query": "FROM employees | LIMIT 2"},
        },
    )
    assert final["status"] == "SUCCEEDED"
    assert json.loads(final["output"])["announced"] is True
    ready = [event["detail"] for event in stack.events() if event["detail-type"] == "Query Result Ready"]
    assert [detail["job_id"] for detail in ready] == ["announced-1"]
