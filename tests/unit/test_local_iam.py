"""query_relay_local.iam without a stack: which resource each action the app calls is authorised
against (moto checks non-S3 actions against "*", which no scoped grant matches)."""

from __future__ import annotations

import gc
import logging
from typing import Any

import pytest

from query_relay_local.iam import _keys_to_delete, authorized_resources, request_resource, sam_translate
from query_relay_local.template import load_template

REGION, ACCOUNT = "eu-west-1", "111122223333"
TABLE = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/control"
BUS = f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/"
SCHEDULE = f"arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule/"
GLUE = f"arn:aws:glue:{REGION}:{ACCOUNT}:"


@pytest.mark.parametrize(
    ("service", "action", "params", "resource"),
    [
        ("dynamodb", "PutItem", {"TableName": "control"}, TABLE),
        ("dynamodb", "GetItem", {"TableName": TABLE}, TABLE),
        ("secretsmanager", "GetSecretValue", {"SecretId": "query-relay/connections/es"},
         f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:query-relay/connections/es"),
        ("states", "DescribeExecution", {"executionArn": "arn:aws:states:r:1:execution:m:j"},
         "arn:aws:states:r:1:execution:m:j"),
        ("states", "StartExecution", {"stateMachineArn": "arn:aws:states:r:1:stateMachine:m", "name": "j"},
         "arn:aws:states:r:1:stateMachine:m"),
        ("events", "PutEvents", {"Entries": [{"EventBusName": "jobs"}]},
         BUS + "jobs"),
        ("events", "PutEvents", {"Entries": [{"Source": "x"}]}, BUS + "default"),
        ("events", "PutEvents", {"Entries": [{"EventBusName": "a"}, {"EventBusName": "b"}]}, "*"),
        ("scheduler", "CreateSchedule", {"Name": "nightly", "GroupName": "g"},
         SCHEDULE + "g/nightly"),
        ("scheduler", "GetSchedule", {"Name": "nightly"}, SCHEDULE + "default/nightly"),
        ("scheduler", "ListSchedules", {"GroupName": "g"}, "*"),
        ("glue", "GetTable", {"DatabaseName": "analytics", "Name": "t"}, GLUE + "table/analytics/t"),
        ("glue", "CreateTable", {"DatabaseName": "analytics", "TableInput": {"Name": "t"}},
         GLUE + "table/analytics/t"),
        ("glue", "CreatePartition", {"DatabaseName": "analytics", "TableName": "t"},
         GLUE + "table/analytics/t"),
        ("glue", "GetDatabase", {"DatabaseName": "analytics"}, GLUE + "database/analytics"),
        ("sqs", "ReceiveMessage", {}, "*"),
    ],
)  # fmt: skip
def test_each_action_is_authorised_against_the_resource_aws_names(
    service: str, action: str, params: dict[str, Any], resource: str
) -> None:
    assert request_resource(service, action, params, REGION, ACCOUNT) == resource


def test_a_glue_table_action_is_authorised_on_the_catalog_the_database_and_the_table() -> None:
    # (AWS checks all three: a grant on the table alone is refused)
    assert authorized_resources(GLUE + "table/analytics/t") == [
        GLUE + "catalog",
        GLUE + "database/analytics",
        GLUE + "table/analytics/t",
    ]
    assert authorized_resources(GLUE + "database/analytics") == [
        GLUE + "catalog",
        GLUE + "database/analytics",
    ]
    assert authorized_resources(TABLE) == [TABLE]
    assert authorized_resources("*") == ["*"]


def test_the_keys_of_a_delete_objects_body_are_each_checked() -> None:
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<Object><Key>a/part-00000.jsonl</Key></Object><Object><Key>a/_manifest.json</Key></Object>"
        b"<Quiet>true</Quiet></Delete>"
    )
    assert _keys_to_delete(body) == ["a/part-00000.jsonl", "a/_manifest.json"]


def test_translating_the_template_writes_no_warning_and_leaves_the_loggers_as_they_were(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The translator warns for each feature toggle it asks about (make demo printed them)
    # and for the metrics it records, when they are collected unpublished (at any later time)
    toggles = logging.getLogger("samtranslator.feature_toggle.feature_toggle")
    before = toggles.level
    # SAM keeps the last translator's metrics (cfn-lint's own translator may have left some): ours
    # take their place, and what earlier tests left is collected, outside the capture
    sam_translate(load_template())
    gc.collect()
    with caplog.at_level(logging.WARNING):
        translated = sam_translate(load_template())
        sam_translate(load_template())  # SAM keeps the last translator's metrics: the first one's go
        gc.collect()
    assert "Resources" in translated
    assert [record.getMessage() for record in caplog.records if record.name.startswith("samtranslator")] == []
    assert toggles.level == before
