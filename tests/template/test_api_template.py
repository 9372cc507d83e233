"""The API, schedules and event consumers in template.yaml: routes as in docs/contracts.md, IAM auth,
and each role allowed only what it needs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode_str

ROOT = Path(__file__).resolve().parents[2]
DESIGN_ROUTES = {
    ("post", "/queries"),
    ("get", "/queries"),
    ("get", "/queries/{job_id}"),
    ("delete", "/queries/{job_id}"),
    ("post", "/schedules"),
    ("get", "/schedules"),
    ("get", "/schedules/{name}"),
    ("delete", "/schedules/{name}"),
    ("post", "/schedules/{name}/runs"),
    ("get", "/openapi.json"),
}


@pytest.fixture(scope="module")
def resources() -> dict[str, Any]:
    template, problems = decode_str((ROOT / "template.yaml").read_text())
    assert not problems, problems
    return dict(template["Resources"])


def statements(resource: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for policy in resource["Properties"].get("Policies", []):
        if isinstance(policy, dict) and "Statement" in policy:
            found.extend(policy["Statement"])
        if isinstance(policy, dict) and "PolicyDocument" in policy:
            found.extend(policy["PolicyDocument"]["Statement"])
    return found


def test_the_api_serves_the_design_routes_behind_iam_auth(resources: dict[str, Any]) -> None:
    api = resources["QueryApi"]["Properties"]
    assert api["Auth"]["DefaultAuthorizer"] == "AWS_IAM"
    events = resources["ApiFunction"]["Properties"]["Events"].values()
    routes = {(event["Properties"]["Method"], event["Properties"]["Path"]) for event in events}
    assert routes == DESIGN_ROUTES
    assert all(
        event["Type"] == "Api" and event["Properties"]["RestApiId"] == {"Ref": "QueryApi"} for event in events
    )


def test_the_scheduler_role_may_only_start_the_query_state_machine(resources: dict[str, Any]) -> None:
    role = resources["SchedulerRole"]["Properties"]
    trust = role["AssumeRolePolicyDocument"]["Statement"]
    assert [statement["Principal"] for statement in trust] == [{"Service": "scheduler.amazonaws.com"}]
    assert statements(resources["SchedulerRole"]) == [
        {"Effect": "Allow", "Action": "states:StartExecution", "Resource": {"Ref": "QueryStateMachine"}}
    ]


def test_the_api_may_pass_the_scheduler_role_only_to_scheduler(resources: dict[str, Any]) -> None:
    passes = [s for s in statements(resources["ApiFunction"]) if s["Action"] == "iam:PassRole"]
    assert passes == [
        {
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": {"Fn::GetAtt": ["SchedulerRole", "Arn"]},
            "Condition": {"StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}},
        }
    ]


def test_stopped_executions_and_landed_manifests_trigger_their_functions(resources: dict[str, Any]) -> None:
    aborted = resources["ExecutionStoppedFunction"]["Properties"]["Events"]["Aborted"]["Properties"][
        "Pattern"
    ]
    assert aborted["detail-type"] == ["Step Functions Execution Status Change"]
    assert aborted["detail"] == {
        "status": ["ABORTED", "TIMED_OUT"],
        "stateMachineArn": [{"Ref": "QueryStateMachine"}],
    }
    consumer = resources["ManifestConsumerFunction"]
    assert consumer["Condition"] == "CreateSampleConsumer"
    landed = consumer["Properties"]["Events"]["ManifestLanded"]["Properties"]["Pattern"]
    assert landed["detail"]["object"]["key"] == [{"suffix": "_manifest.json"}]
    bucket = resources["ResultsBucket"]["Properties"]
    assert bucket["NotificationConfiguration"]["EventBridgeConfiguration"]["EventBridgeEnabled"] is True


def test_the_sample_schedule_is_off_by_default_and_names_its_runs_like_the_api(
    resources: dict[str, Any],
) -> None:
    schedule = resources["SampleSchedule"]
    assert schedule["Condition"] == "CreateSampleSchedule"
    target = schedule["Properties"]["Target"]
    assert target["Arn"] == {"Ref": "QueryStateMachine"}
    text = target["Input"]["Fn::Sub"]
    document = json.loads(re.sub(r"\$\{\w+\}", "es-prod", text))
    assert document["scheduled_time"] == "<aws.scheduler.scheduled-time>"
    assert document["schedule"] == schedule["Properties"]["Name"]
    assert "job_id" not in document["spec"]


@pytest.mark.parametrize("response_type", ["DEFAULT_4XX", "DEFAULT_5XX"])
def test_api_gateways_own_errors_come_in_the_apis_error_shape(
    resources: dict[str, Any], response_type: str
) -> None:
    response = resources["QueryApi"]["Properties"]["GatewayResponses"][response_type]
    template = response["ResponseTemplates"]["application/json"]
    # $context.error.messageString is a quoted JSON string already; fill the others with samples
    sample = template.replace("$context.error.responseType", "MISSING_AUTHENTICATION_TOKEN").replace(
        "$context.error.messageString", json.dumps("Missing Authentication Token")
    )
    assert set(json.loads(sample)) == {"error", "message", "fields"}
