"""The local stack: Lambda answered in process (as Lambda answers), resources deployed from the template,
the process environment set and given back, events and logs captured.

Small throwaway templates with a tiny handler exercise the Lambda middleware and a state machine's
Retry/Catch; the project's template checks what the stack deploys for the application.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from moto.dynamodb.models import table as moto_table

from query_relay.providers import looker
from query_relay.settings import get_settings
from query_relay_local.stack import LocalStack, LocalStackError

HANDLER = """
import json
import os
import sys
import time
import warnings

from aws_lambda_powertools import Logger

logger = Logger(service="tiny-service")
INVOCATIONS = []  # module state: shows whether the "container" stays warm


class Flaky(Exception):
    pass


class Broken(Exception):
    pass


def handle(event, context):
    INVOCATIONS.append(event)
    logger.info("tiny handler called", extra={"marker": event.get("marker", "")})
    mode = event.get("mode", "ok")
    if mode == "flaky" and len([e for e in INVOCATIONS if e.get("mode") == "flaky"]) < 3:
        raise Flaky(f"flaky attempt {len(INVOCATIONS)}")
    if mode == "broken":
        raise Broken("broken on purpose")
    if mode == "slow":
        time.sleep(context.get_remaining_time_in_millis() / 1000 + 0.2)
    if mode == "chatty":
        print("printed-marker-91c2")
        print("stderr-marker-91c2", file=sys.stderr)
        warnings.warn("warned-marker-91c2", UserWarning, stacklevel=1)
    if mode == "unserialisable":
        return {"when": object()}
    if mode == "write":
        import boto3
        boto3.client("s3").put_object(Bucket=os.environ["DATA_BUCKET"], Key=event["key"], Body=b"x")
    return {
        "invocations": len(INVOCATIONS),
        "function_name": context.function_name,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "invoked_function_arn": context.invoked_function_arn,
        "aws_request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "data_bucket": os.environ["DATA_BUCKET"],
    }
"""

MACHINE = {
    "StartAt": "Call",
    "States": {
        "Call": {
            "Type": "Task",
            "Resource": "${TinyArn}",
            "Retry": [{"ErrorEquals": ["Flaky"], "IntervalSeconds": 1, "MaxAttempts": 3, "BackoffRate": 1.0}],
            "Catch": [{"ErrorEquals": ["Broken"], "ResultPath": "$.error", "Next": "Caught"}],
            "Next": "Announce",
        },
        "Announce": {
            "Type": "Task",
            "Resource": "arn:aws:states:::events:putEvents",
            "Parameters": {
                "Entries": [
                    {
                        "Source": "tiny",
                        "DetailType": "Tiny Done",
                        "EventBusName": "${Bus}",
                        "Detail": {"invocations.$": "$.invocations"},
                    }
                ]
            },
            "ResultPath": None,
            "End": True,
        },
        "Caught": {"Type": "Pass", "End": True},
    },
}

TEMPLATE = """
Parameters:
  EventBusName:
    Type: String
    Default: tiny-bus
Globals:
  Function:
    Runtime: python3.13
    Timeout: 2
    MemorySize: 192
    Environment:
      Variables:
        POWERTOOLS_SERVICE_NAME: tiny-service
        DATA_BUCKET: !Ref DataBucket
Resources:
  DataBucket:
    Type: AWS::S3::Bucket
  Tiny:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: tiny
      Handler: app.handle
      Policies:  # the local stack enforces IAM: grant what the handler and the machine call
        - S3WritePolicy:
            BucketName: !Ref DataBucket
  Machine:
    Type: AWS::Serverless::StateMachine
    Properties:
      DefinitionUri: machine.asl.json
      Policies:
        - LambdaInvokePolicy:
            FunctionName: !Ref Tiny
        - EventBridgePutEventsPolicy:
            EventBusName: !Ref EventBusName
      DefinitionSubstitutions:
        TinyArn: !GetAtt Tiny.Arn
        Bus: !Ref EventBusName
"""


@pytest.fixture
def tiny_template(tmp_path: Path) -> Path:
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "app.py").write_text(HANDLER)
    (tmp_path / "machine.asl.json").write_text(json.dumps(MACHINE))
    path = tmp_path / "template.yaml"
    path.write_text(TEMPLATE)
    return path


@pytest.fixture
def tiny_stack(tiny_template: Path) -> Iterator[LocalStack]:
    with LocalStack(tiny_template) as stack:
        yield stack


def invoke(stack: LocalStack, event: dict[str, Any], name: str = "Tiny", **kwargs: Any) -> dict[str, Any]:
    response: dict[str, Any] = stack.client("lambda").invoke(
        FunctionName=name, Payload=json.dumps(event).encode(), **kwargs
    )
    response["Payload"] = json.loads(response["Payload"].read() or b"null")
    return response


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- the Lambda middleware ----------------------------------------------------------------------


def test_an_invocation_returns_the_handler_result_with_a_lambda_context(tiny_stack: LocalStack) -> None:
    response = invoke(tiny_stack, {"mode": "ok"})

    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    payload = response["Payload"]
    assert payload["function_name"] == "Tiny"
    assert payload["memory_limit_in_mb"] == 192
    assert payload["invoked_function_arn"] == "arn:aws:lambda:us-east-1:123456789012:function:Tiny"
    assert len(payload["aws_request_id"]) == 36
    assert 0 < payload["remaining_ms"] <= 2000
    # the template's environment reaches the handler
    assert payload["data_bucket"] == tiny_stack.bucket == "query-relay-local-data-bucket"


def test_a_function_can_be_named_by_its_arn(tiny_stack: LocalStack) -> None:
    response = invoke(tiny_stack, {}, name="arn:aws:lambda:us-east-1:123456789012:function:Tiny")

    assert response["Payload"]["function_name"] == "Tiny"


def test_a_raised_exception_is_answered_like_lambda(tiny_stack: LocalStack) -> None:
    response = invoke(tiny_stack, {"mode": "broken"})

    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    payload = response["Payload"]
    assert payload["errorType"] == "Broken"
    assert payload["errorMessage"] == "broken on purpose"
    # the trace starts in the handler, as Lambda's does
    assert 'app.py", line' in payload["stackTrace"][0]
    assert "raise Broken" in payload["stackTrace"][-1]


def test_a_result_that_is_not_json_is_a_marshal_error(tiny_stack: LocalStack) -> None:
    response = invoke(tiny_stack, {"mode": "unserialisable"})

    assert response["FunctionError"] == "Unhandled"
    assert response["Payload"]["errorType"] == "Runtime.MarshalError"


def test_a_handler_that_outlives_its_timeout_fails_like_lambda(tiny_stack: LocalStack) -> None:
    response = invoke(tiny_stack, {"mode": "slow"})

    assert response["FunctionError"] == "Unhandled"
    assert response["Payload"]["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 2.00 seconds" in response["Payload"]["errorMessage"]


def test_the_module_stays_warm_within_a_stack_and_starts_cold_in_the_next(tiny_template: Path) -> None:
    with LocalStack(tiny_template) as stack:
        counts = [invoke(stack, {})["Payload"]["invocations"] for _ in range(3)]
    with LocalStack(tiny_template) as stack:
        after_restart = invoke(stack, {})["Payload"]["invocations"]

    assert counts == [1, 2, 3]
    assert after_restart == 1


def test_an_event_invocation_is_accepted_at_once_and_runs(tiny_stack: LocalStack) -> None:
    response = invoke(tiny_stack, {"mode": "write", "key": "async-proof"}, InvocationType="Event")

    assert response["StatusCode"] == 202
    assert wait_for(lambda: "async-proof" in list(tiny_stack.keys()))


def test_a_function_not_in_the_template_is_left_to_moto(tiny_stack: LocalStack) -> None:
    lambda_client = tiny_stack.client("lambda")

    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException):
        lambda_client.invoke(FunctionName="NotInTheTemplate", Payload=b"{}")


def test_a_missing_handler_file_is_an_import_error_like_lambda(tiny_template: Path) -> None:
    (tiny_template.parent / "tiny" / "app.py").unlink()

    with LocalStack(tiny_template) as stack:
        response = invoke(stack, {})

    assert response["FunctionError"] == "Unhandled"
    assert response["Payload"]["errorType"] == "Runtime.ImportModuleError"
    assert response["Payload"]["errorMessage"].startswith("Unable to import module 'app'")


def test_what_handlers_log_or_print_is_captured_not_shown(
    tiny_template: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LocalStack(tiny_template) as tiny_stack:
        invoke(tiny_stack, {"marker": "find-me-7f3a"})
        invoke(tiny_stack, {"mode": "chatty"})
        invoke(tiny_stack, {"mode": "broken"})
        print("the test's own output")

    printed = capsys.readouterr()
    assert "find-me-7f3a" not in printed.out + printed.err
    assert "marker-91c2" not in printed.out + printed.err
    assert printed.out == "the test's own output\n"
    for marker in ("printed-marker-91c2", "stderr-marker-91c2", "warned-marker-91c2"):
        assert any(marker in line for line in tiny_stack.logs), marker
    structured = [json.loads(line) for line in tiny_stack.logs if "find-me-7f3a" in line]
    assert structured[0]["service"] == "tiny-service"
    assert structured[0]["marker"] == "find-me-7f3a"
    # what the runtime itself writes when a handler fails is kept too
    assert any("Tiny failed: Broken" in line for line in tiny_stack.logs)


# --- the state machine on moto, with Retry and Catch on errorType -----------------------------


def test_retry_matches_the_error_type_and_the_machine_runs_on(tiny_stack: LocalStack) -> None:
    arn = tiny_stack.start_job({"mode": "flaky"})
    seen: list[str] = []

    final = tiny_stack.wait(arn, timeout=60, on_event=lambda event: seen.append(event["type"]))

    assert final["status"] == "SUCCEEDED"
    assert json.loads(final["output"])["invocations"] == 3
    assert seen.count("LambdaFunctionFailed") == 2
    assert seen == [event["type"] for event in tiny_stack.history(arn)]
    failed = [e for e in tiny_stack.history(arn) if e["type"] == "LambdaFunctionFailed"]
    assert {e["lambdaFunctionFailedEventDetails"]["error"] for e in failed} == {"Flaky"}
    # the PutEvents task reached the parameter-named bus, whose events the stack keeps
    events = tiny_stack.events()
    assert [(e["source"], e["detail-type"], e["detail"]) for e in events] == [
        ("tiny", "Tiny Done", {"invocations": 3})
    ]


def test_catch_matches_the_error_type(tiny_stack: LocalStack) -> None:
    arn = tiny_stack.start_job({"mode": "broken"}, job_id="caught-job")

    final = tiny_stack.wait(arn, timeout=60)

    assert final["status"] == "SUCCEEDED"
    assert arn.endswith(":caught-job")
    error = json.loads(final["output"])["error"]
    assert error["Error"] == "Broken"
    assert json.loads(error["Cause"])["errorMessage"] == "broken on purpose"
    assert tiny_stack.events() == []


# --- the application's stack -------------------------------------------------------------------


def test_the_application_is_deployed_from_the_template() -> None:
    with LocalStack() as stack:
        buckets = [b["Name"] for b in stack.s3.list_buckets()["Buckets"]]
        machine = stack.sfn.describe_state_machine(stateMachineArn=stack.state_machine_arn)

    assert buckets == [stack.bucket]
    assert stack.bucket == "query-relay-local-results-bucket"
    assert machine["name"] == stack.template.state_machine.name  # the template's Name, resolved
    assert stack.state_machine_arn == stack.template.state_machine.arn
    assert machine["type"] == "STANDARD"
    definition = json.loads(machine["definition"])
    assert definition["States"]["Submit"]["Resource"] == (
        "arn:aws:lambda:us-east-1:123456789012:function:SubmitFunction"
    )
    assert "${" not in machine["definition"]


def test_connections_become_secrets_and_are_replaced_when_loaded_again() -> None:
    first = {
        "provider": "esql",
        "base_url": "http://127.0.0.1:1",
        "auth": {"type": "api_key", "api_key": "k1"},
    }
    second = {**first, "base_url": "http://127.0.0.1:2"}
    with LocalStack() as stack:
        stack.load_connections({"es-one": first})
        stack.load_connections({"es-one": second})

        stored = stack.secretsmanager.get_secret_value(SecretId="query-relay/connections/es-one")

    assert json.loads(stored["SecretString"]) == second


def test_events_on_the_application_bus_are_captured() -> None:
    with LocalStack(parameter_overrides={"EventBusName": "query-relay-jobs"}) as stack:
        stack.client("events").put_events(
            Entries=[
                {
                    "Source": "query-relay",
                    "DetailType": "Query Failed",
                    "Detail": json.dumps({"job_id": "j1"}),
                    "EventBusName": "query-relay-jobs",
                }
            ]
        )

        events = stack.events()
        assert stack.events() == events  # reading again keeps what was read

    assert [(e["detail-type"], e["detail"]) for e in events] == [("Query Failed", {"job_id": "j1"})]


def test_the_environment_is_set_while_running_and_given_back_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESULTS_BUCKET", "before")
    monkeypatch.setenv("AWS_PROFILE", "a-profile-that-does-not-exist")
    monkeypatch.delenv("MOTO_PORT", raising=False)

    with LocalStack() as stack:
        during = dict(os.environ)

    assert during["RESULTS_BUCKET"] == stack.bucket
    assert during["AWS_ENDPOINT_URL"] == stack.endpoint_url
    assert during["MOTO_PORT"] == str(stack.port)
    assert during["SUBMIT_WAIT_SECONDS"] == "2"
    assert during["POWERTOOLS_TRACE_DISABLED"] == "true"
    assert "AWS_PROFILE" not in during
    assert os.environ["RESULTS_BUCKET"] == "before"
    assert os.environ["AWS_PROFILE"] == "a-profile-that-does-not-exist"
    assert "MOTO_PORT" not in os.environ
    assert "AWS_ENDPOINT_URL" not in os.environ


def test_the_library_caches_start_cold_with_each_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given settings the library read (and cached) before any stack ran
    monkeypatch.setenv("RESULTS_BUCKET", "read-before-the-stack")
    get_settings.cache_clear()
    assert get_settings().results_bucket == "read-before-the-stack"

    # When a stack starts, and after it stopped
    with LocalStack() as stack:
        during = get_settings().results_bucket
    after = get_settings().results_bucket

    # Then the library saw the stack's environment, then its own again
    assert during == stack.bucket
    assert after == "read-before-the-stack"


def test_a_later_stack_starts_empty() -> None:
    with LocalStack() as stack:
        stack.load_connections({"left-over": {"provider": "esql"}})
        stack.s3.put_object(Bucket=stack.bucket, Key="results/left-over", Body=b"x")

    with LocalStack() as stack:
        secrets = stack.secretsmanager.list_secrets()["SecretList"]
        keys = list(stack.keys())
        machines = stack.sfn.list_state_machines()["stateMachines"]

    assert secrets == []
    assert keys == []
    assert len(machines) == 1


def test_download_copies_objects_keeping_their_keys(tmp_path: Path) -> None:
    with LocalStack() as stack:
        for key in ("results/dt=2025-01-01/j1/part-00000.jsonl", "results/dt=2025-01-01/j1/_manifest.json"):
            stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=key.encode())
        stack.s3.put_object(Bucket=stack.bucket, Key="results/dt=2025-01-01/j2/other", Body=b"x")

        written = stack.download("results/dt=2025-01-01/j1/", tmp_path)

    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "results/dt=2025-01-01/j1/_manifest.json",
        "results/dt=2025-01-01/j1/part-00000.jsonl",
    ]
    assert (tmp_path / "results/dt=2025-01-01/j1/_manifest.json").read_text().endswith("_manifest.json")


def test_functions_that_disagree_on_a_variable_are_refused(tmp_path: Path) -> None:
    (tmp_path / "template.yaml").write_text(
        textwrap.dedent(
            """
            Resources:
              One:
                Type: AWS::Serverless::Function
                Properties: {CodeUri: one, Handler: app.handle, Environment: {Variables: {MODE: fast}}}
              Two:
                Type: AWS::Serverless::Function
                Properties: {CodeUri: two, Handler: app.handle, Environment: {Variables: {MODE: slow}}}
            """
        )
    )

    with pytest.raises(LocalStackError, match="One and Two set MODE to different values"):
        LocalStack(tmp_path / "template.yaml")


def test_conditional_writes_are_atomic_as_on_aws(
    tiny_stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a table, and twenty callers racing for one item with a condition that only one may pass;
    # moto made slow between reading the item and writing it, so that a race shows every time
    parse_condition = vars(moto_table)["get_filter_expression"]

    def slow_condition(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.05)
        return parse_condition(*args, **kwargs)

    monkeypatch.setattr(moto_table, "get_filter_expression", slow_condition)
    dynamodb = tiny_stack.client("dynamodb")
    dynamodb.create_table(
        TableName="claims",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )

    def claim(caller: int) -> bool:
        try:
            dynamodb.put_item(
                TableName="claims",
                Item={"pk": {"S": "cleanup#job"}, "caller": {"N": str(caller)}},
                ConditionExpression="attribute_not_exists(pk)",
            )
        except dynamodb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    # When they all write at once
    with ThreadPoolExecutor(max_workers=20) as pool:
        won = list(pool.map(claim, range(20)))
    # Then exactly one wins, as DynamoDB guarantees
    assert won.count(True) == 1


def test_a_stack_starts_with_no_upstream_token_of_an_earlier_one(tiny_template: Path) -> None:
    # Given a Looker token cached in this process (as a warm container holds one)
    key = ("looker.example", "client", "digest")
    looker.TOKENS.put(key, "token-of-an-earlier-stack", expires_in=3600)
    assert looker.TOKENS.get(key) == "token-of-an-earlier-stack"
    # When a stack starts (a new container, for the functions)
    with LocalStack(tiny_template):
        # Then the token is gone, like every other cache of the library
        assert looker.TOKENS.get(key) is None
