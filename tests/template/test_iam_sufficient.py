"""Enough privilege: every call the code makes is allowed by the role SAM builds from template.yaml.

The local stack enforces IAM at run time (tests/integration/test_iam_enforced.py), but moto's
matching of resources and conditions is partial and a test run may not take every path. So this
also checks statically: the translated template's policies (SAM policy templates expanded by
samtranslator, intrinsics resolved) are evaluated, with moto's policy evaluator, against the
(action, resource) pairs each function's code calls, on the resources AWS authorises them against.
The least-privilege test beside this one keeps the same grants narrow.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from moto.iam.access_control import IAMPolicy, PermissionResult

from query_relay_local.iam import TranslatedRoles, translate_roles
from query_relay_local.template import LOCAL_ACCOUNT_ID, LOCAL_REGION, load_template

TEMPLATE = load_template()
ROLES: TranslatedRoles = translate_roles(TEMPLATE)
ENV = next(iter(TEMPLATE.functions.values())).environment
ARN = f"arn:aws:{{}}:{LOCAL_REGION}:{LOCAL_ACCOUNT_ID}:{{}}"

BUCKET = f"arn:aws:s3:::{ENV['RESULTS_BUCKET']}"
OBJECT = f"{BUCKET}/results/dt=2026-12-02/job-1/part-00000.jsonl.gz"
SECRET = ARN.format("secretsmanager", f"secret:{ENV['CONNECTION_SECRET_PREFIX']}es-prod-AbCdEf")
TABLE = ARN.format("dynamodb", f"table/{ENV['CONTROL_TABLE']}")
STATE_MACHINE = TEMPLATE.state_machine.arn
EXECUTION = STATE_MACHINE.replace(":stateMachine:", ":execution:") + ":job-1"
API_ENV = TEMPLATE.functions["ApiFunction"].environment
BUS = ARN.format("events", f"event-bus/{API_ENV['EVENT_BUS_NAME']}")
SCHEDULE = ARN.format("scheduler", f"schedule/{API_ENV['SCHEDULE_GROUP']}/nightly")
SCHEDULER_ROLE = API_ENV["SCHEDULER_ROLE_ARN"]

READ_CONNECTION = [("secretsmanager:GetSecretValue", SECRET)]
# query_relay.results: a writer removes an earlier attempt's leftovers first; a discard the same.
DISCARD = [
    ("s3:ListBucket", BUCKET),
    ("s3:ListBucketMultipartUploads", BUCKET),
    ("s3:DeleteObject", OBJECT),
    ("s3:AbortMultipartUpload", OBJECT),
]
# PutObject: single and multipart uploads; ListParts: a native object's upload going on.
WRITE = [("s3:PutObject", OBJECT), ("s3:ListMultipartUploadParts", OBJECT), *DISCARD]

CALLS: dict[str, list[tuple[str, str]]] = {
    "SubmitFunction": [
        *READ_CONNECTION,
        *WRITE,
        ("dynamodb:GetItem", TABLE),
        ("dynamodb:PutItem", TABLE),
        ("dynamodb:UpdateItem", TABLE),
        ("states:DescribeExecution", EXECUTION),
    ],
    "PollFunction": READ_CONNECTION,
    "FetchFunction": [*READ_CONNECTION, *WRITE, ("dynamodb:UpdateItem", TABLE)],
    # PutItem: the one claim of an execution's cleanup (query_relay.claims).
    "CleanupFunction": [
        *READ_CONNECTION,
        *DISCARD,
        ("dynamodb:PutItem", TABLE),
        ("dynamodb:UpdateItem", TABLE),
    ],
    "ExecutionStoppedFunction": [
        *READ_CONNECTION,
        *DISCARD,
        ("dynamodb:PutItem", TABLE),
        ("dynamodb:UpdateItem", TABLE),
        ("events:PutEvents", BUS),
        ("states:DescribeExecution", EXECUTION),
        ("states:GetExecutionHistory", EXECUTION),
    ],
    "ApiFunction": [
        *READ_CONNECTION,
        *DISCARD,
        ("s3:GetObject", OBJECT),
        ("dynamodb:PutItem", TABLE),
        ("dynamodb:UpdateItem", TABLE),
        ("events:PutEvents", BUS),
        ("states:StartExecution", STATE_MACHINE),
        ("states:ListExecutions", STATE_MACHINE),
        ("states:DescribeExecution", EXECUTION),
        ("states:StopExecution", EXECUTION),
        ("states:GetExecutionHistory", EXECUTION),
        ("scheduler:CreateSchedule", SCHEDULE),
        ("scheduler:GetSchedule", SCHEDULE),
        ("scheduler:DeleteSchedule", SCHEDULE),
        ("scheduler:ListSchedules", "*"),
        ("iam:PassRole", SCHEDULER_ROLE),
    ],
    "UnannouncedResultFunction": [],  # logs and an EMF metric line only
    "ManifestConsumerFunction": [("s3:GetObject", OBJECT.replace("part-00000.jsonl.gz", "_manifest.json"))],
}
# The context AWS evaluates iam:PassRole in when CreateSchedule passes the Scheduler role.
CONDITIONS = {"iam:PassRole": {"iam:PassedToService": "scheduler.amazonaws.com"}}


def allowed(role_logical_id: str, action: str, resource: str) -> bool:
    role = ROLES.roles[role_logical_id]
    documents: list[dict[str, Any]] = [*role.policies.values()]
    documents += [ROLES.managed_policies[arn].document for arn in role.managed_policy_arns]
    results = [
        IAMPolicy(json.dumps(document)).is_action_permitted(
            action, resource, incoming_condition_values=CONDITIONS.get(action)
        )
        for document in documents
    ]
    return PermissionResult.PERMITTED in results and PermissionResult.DENIED not in results


def test_every_function_of_the_template_is_listed() -> None:
    assert set(CALLS) == set(TEMPLATE.functions)


@pytest.mark.parametrize("function", sorted(CALLS))
def test_each_function_role_allows_every_call_its_code_makes(function: str) -> None:
    role = ROLES.function_roles[function]
    missing = [
        (action, resource) for action, resource in CALLS[function] if not allowed(role, action, resource)
    ]
    assert missing == [], f"{function}'s role ({role}) lacks {missing}"


def test_the_state_machine_role_allows_its_tasks_and_integrations() -> None:
    role = ROLES.state_machine_roles[TEMPLATE.state_machine.logical_id]
    substitutions = TEMPLATE.state_machine.substitutions
    functions = [value for name, value in substitutions.items() if name.endswith("FunctionArn")]
    assert len(functions) >= 4
    calls = [
        *[("lambda:InvokeFunction", arn) for arn in functions],
        ("events:PutEvents", BUS),
        ("states:StartExecution", STATE_MACHINE),  # scheduled runs and ContinueAsNew
    ]
    missing = [(action, resource) for action, resource in calls if not allowed(role, action, resource)]
    assert missing == []


def test_the_scheduler_role_may_start_the_machine_and_nothing_else() -> None:
    assert allowed("SchedulerRole", "states:StartExecution", STATE_MACHINE)
    assert not allowed("SchedulerRole", "states:StopExecution", EXECUTION)
    assert not allowed("SchedulerRole", "states:StartExecution", STATE_MACHINE + "-other")


def test_the_checker_can_fail() -> None:
    # A call no role grants is reported missing (the evaluator is not vacuous).
    assert not allowed(ROLES.function_roles["PollFunction"], "s3:PutObject", OBJECT)
    assert not allowed(
        ROLES.function_roles["FetchFunction"], "s3:PutObject", "arn:aws:s3:::another-bucket/key"
    )
    assert not allowed(ROLES.function_roles["ApiFunction"], "iam:PassRole", SCHEDULER_ROLE + "-other")
