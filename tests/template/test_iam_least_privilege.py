"""Least privilege over every permission template.yaml grants: inline statements of SAM functions
and state machines, every AWS::IAM::Role's policies and trust policy, any AWS::IAM::Policy or
ManagedPolicy, and the parameters of SAM policy templates (S3CrudPolicy's BucketName, ...).

An Allow may not use a wildcard action or NotAction, may use Resource "*" only for actions that
AWS accepts on no narrower resource, and may not name a whole service's resources
("arn:...:secret:*"); a policy template's parameter may not be "*" either. Deny statements (the
bucket's TLS-only rule) narrow access and are left alone."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from .test_template import load_template

# Actions that take only Resource "*" (AWS Service Authorization Reference): vended-log delivery
# for the state machine's logging, and Scheduler's ListSchedules.
ONLY_STAR_RESOURCE = frozenset(
    {
        "logs:CreateLogDelivery",
        "logs:GetLogDelivery",
        "logs:UpdateLogDelivery",
        "logs:DeleteLogDelivery",
        "logs:ListLogDeliveries",
        "logs:PutResourcePolicy",
        "logs:DescribeResourcePolicies",
        "logs:DescribeLogGroups",
        "scheduler:ListSchedules",
    }
)
# arn:partition:service:region:account:* (everything of a service), or arn:aws:s3:::* (every bucket).
_WHOLE_SERVICE_ARN = re.compile(r"^arn:[^:]*:[^:]+:[^:]*:[^:]*:\*$")
_SAM_RESOURCES = ("AWS::Serverless::Function", "AWS::Serverless::StateMachine")


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def text_of(value: Any) -> str | None:
    """The literal text of a template value: a string, or the pattern of a Fn::Sub; None for
    Ref / Fn::GetAtt and other intrinsics (they name one resource of this stack)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Sub" in value:
        pattern = value["Fn::Sub"]
        return str(pattern[0] if isinstance(pattern, list) else pattern)
    return None


def is_unscoped(value: Any) -> bool:
    text = text_of(value)
    if text is None:
        return False
    text = re.sub(r"\$\{[^}]*\}", "x", text).strip()  # ${AWS::Region} holds colons of its own
    return text == "*" or bool(_WHOLE_SERVICE_ARN.match(text))


def statements(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, statement) for every IAM statement the template grants."""
    for logical_id, resource in template["Resources"].items():
        kind, properties = resource["Type"], resource.get("Properties", {})
        if kind in _SAM_RESOURCES:
            for policy in as_list(properties.get("Policies", [])):
                if isinstance(policy, dict) and "Statement" in policy:
                    for statement in as_list(policy["Statement"]):
                        yield f"{logical_id}.Policies", statement
        if kind == "AWS::IAM::Role":
            for statement in as_list(properties.get("AssumeRolePolicyDocument", {}).get("Statement", [])):
                yield f"{logical_id}.AssumeRolePolicyDocument", statement
            for policy in as_list(properties.get("Policies", [])):
                for statement in as_list(policy["PolicyDocument"]["Statement"]):
                    yield f"{logical_id}.{policy.get('PolicyName', 'Policies')}", statement
        if kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            for statement in as_list(properties["PolicyDocument"]["Statement"]):
                yield f"{logical_id}.PolicyDocument", statement


def policy_template_parameters(template: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(where, value) for every parameter of every SAM policy template (e.g. S3CrudPolicy)."""
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] not in _SAM_RESOURCES:
            continue
        for policy in as_list(resource.get("Properties", {}).get("Policies", [])):
            if not isinstance(policy, dict) or "Statement" in policy or "Ref" in policy:
                continue  # a managed policy (by name or Ref), or an inline statement (checked above)
            for template_name, parameters in policy.items():
                for name, value in (parameters or {}).items():
                    yield f"{logical_id}.{template_name}.{name}", value


def least_privilege_problems(template: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for where, statement in statements(template):
        if statement.get("Effect") != "Allow":
            continue
        if "NotAction" in statement or "NotResource" in statement:
            problems.append(f"{where}: NotAction/NotResource in an Allow")
        actions = [str(action) for action in as_list(statement.get("Action", []))]
        problems += [f"{where}: wildcard action {action!r}" for action in actions if "*" in action]
        principal = statement.get("Principal")
        if principal == "*" or (isinstance(principal, dict) and "*" in as_list(principal.get("AWS", []))):
            problems.append(f"{where}: any principal")
        resources = as_list(statement.get("Resource", []))
        if any(is_unscoped(resource) for resource in resources):
            too_broad = sorted(set(actions) - ONLY_STAR_RESOURCE)
            if too_broad:
                problems.append(f"{where}: Resource '*' (or a whole service) for {too_broad}")
    for where, value in policy_template_parameters(template):
        if is_unscoped(value):
            problems.append(f"{where}: {value!r} grants it on every resource")
    return problems


def test_every_grant_in_the_template_is_as_narrow_as_aws_allows() -> None:
    assert least_privilege_problems(load_template()) == []


def test_the_template_grants_are_all_seen() -> None:
    # The checks above must cover what the template really grants, not an empty list.
    template = load_template()
    wheres = {where.split(".")[0] for where, _ in statements(template)}
    assert {
        "ApiFunction",
        "SchedulerRole",
        "QueryStateMachine",
        "ResultsWritePolicy",
        "ResultsDiscardPolicy",
    } <= wheres
    parameters = dict(policy_template_parameters(template))
    assert any(where.endswith("EventBridgePutEventsPolicy.EventBusName") for where in parameters)
    assert any(where.endswith("AWSSecretsManagerGetSecretValuePolicy.SecretArn") for where in parameters)


def allow(**statement: Any) -> dict[str, Any]:
    return {"Statement": [{"Effect": "Allow", **statement}]}


OBJECTS = "arn:aws:s3:::bucket/*"
EVERY_SECRET = {"Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:*"}


@pytest.mark.parametrize(
    ("policy", "problem"),
    [
        (allow(Action="s3:*", Resource=OBJECTS), "wildcard action"),
        (allow(Action="s3:Get*", Resource=OBJECTS), "wildcard action"),
        (allow(Action="s3:GetObject", Resource="*"), "Resource '*'"),
        (allow(Action="secretsmanager:GetSecretValue", Resource=EVERY_SECRET), "whole service"),
        (allow(NotAction="iam:CreateUser", Resource="*"), "NotAction"),
        ({"S3CrudPolicy": {"BucketName": "*"}}, "every resource"),
        ({"AWSSecretsManagerGetSecretValuePolicy": {"SecretArn": EVERY_SECRET}}, "every resource"),
    ],
    ids=["service-wildcard", "prefix-wildcard", "star-resource", "whole-service-arn", "not-action",
         "bucket-star", "secret-star"],
)  # fmt: skip
def test_a_broad_grant_is_reported(policy: dict[str, Any], problem: str) -> None:
    template = {
        "Resources": {"Fn": {"Type": "AWS::Serverless::Function", "Properties": {"Policies": [policy]}}}
    }
    problems = least_privilege_problems(template)
    assert any(problem in found for found in problems), problems


def test_a_broad_grant_in_an_iam_role_is_reported() -> None:
    role = {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": {
                "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "sts:*"}]
            },
            "Policies": [
                {
                    "PolicyName": "p",
                    "PolicyDocument": {"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]},
                }
            ],
        },
    }
    problems = least_privilege_problems({"Resources": {"Role": role}})
    assert any("any principal" in problem for problem in problems)
    assert any("Role.p: wildcard action '*'" in problem for problem in problems)
