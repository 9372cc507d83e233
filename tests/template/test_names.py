"""Names and ARNs that hold in any stack: the longest stack name, every partition, and the error
names AWS's service integrations really raise.

CloudFormation allows stack names of 128 characters; a state machine name holds 80, a schedule
group name 64. Names the template builds are resolved here (query_relay_local.template) for the
longest stack name and checked against the constraints of CloudFormation's own resource schemas
(cfn-lint's copy), in the partition of AWS GovCloud.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

from query_relay.api.models import SCHEDULE_NAME_MAX_CHARS
from query_relay.limits import EXECUTION_NAME_MAX_CHARS, SCHEDULED_RUN_SUFFIX, SCHEDULER_NAME_PATTERN
from query_relay_local.aws_limits import execution_name_problem
from query_relay_local.template import LocalTemplate, decode_template, load_template

from .test_template import ASL_PATH, ROOT, TEMPLATE_PATH, all_states

# CloudFormation stack names: a letter, then letters, digits and '-', 128 characters at most.
LONGEST_STACK_NAME = "q" + "-relay-stack" * 10 + "x" * 7
STACK_UUID = "3f1d2c4b-5a69-4e87-9c0b-a1b2c3d4e5f6"
PARTITION, REGION = "aws-us-gov", "us-gov-west-1"
STACK = {
    "AWS::StackName": LONGEST_STACK_NAME,
    "AWS::StackId": (
        f"arn:{PARTITION}:cloudformation:{REGION}:123456789012:stack/{LONGEST_STACK_NAME}/{STACK_UUID}"
    ),
    "AWS::Partition": PARTITION,
    "AWS::Region": REGION,
}
# A resource type's naming property -> the CloudFormation type and property whose schema bounds it.
NAME_PROPERTIES = {
    "AWS::Serverless::StateMachine": ("Name", "AWS::StepFunctions::StateMachine", "StateMachineName"),
    "AWS::Serverless::Function": ("FunctionName", "AWS::Lambda::Function", "FunctionName"),
    "AWS::Serverless::LayerVersion": ("LayerName", "AWS::Lambda::LayerVersion", "LayerName"),
    "AWS::Scheduler::ScheduleGroup": ("Name", "AWS::Scheduler::ScheduleGroup", "Name"),
    "AWS::Scheduler::Schedule": ("Name", "AWS::Scheduler::Schedule", "Name"),
    "AWS::Logs::LogGroup": ("LogGroupName", "AWS::Logs::LogGroup", "LogGroupName"),
    "AWS::IAM::Role": ("RoleName", "AWS::IAM::Role", "RoleName"),
    "AWS::IAM::ManagedPolicy": ("ManagedPolicyName", "AWS::IAM::ManagedPolicy", "ManagedPolicyName"),
    "AWS::DynamoDB::Table": ("TableName", "AWS::DynamoDB::Table", "TableName"),
    "AWS::S3::Bucket": ("BucketName", "AWS::S3::Bucket", "BucketName"),
}
# The errors of a refused StartExecution that must not be retried: the name is taken (a
# redelivered schedule trigger) or refused.
FINAL_START_ERRORS = {"StepFunctions.ExecutionAlreadyExistsException", "StepFunctions.InvalidNameException"}


@pytest.fixture(scope="module")
def longest() -> LocalTemplate:
    assert len(LONGEST_STACK_NAME) == 128
    return load_template(TEMPLATE_PATH, pseudo_parameters=STACK)


@pytest.fixture(scope="module")
def resources() -> dict[str, Any]:
    return dict(decode_template(TEMPLATE_PATH)["Resources"])


def name_constraints(resource_type: str, prop: str) -> dict[str, Any]:
    schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema(region="us-east-1", resource_type=resource_type)
    return dict(schema.schema["properties"][prop])


def test_every_name_the_template_builds_fits_for_the_longest_stack_name(
    longest: LocalTemplate, resources: dict[str, Any]
) -> None:
    # Given every name the template gives a resource, resolved for a 128-character stack name
    named = {
        logical_id: (
            NAME_PROPERTIES[resource["Type"]],
            resource["Properties"][NAME_PROPERTIES[resource["Type"]][0]],
        )
        for logical_id, resource in resources.items()
        if resource["Type"] in NAME_PROPERTIES
        and NAME_PROPERTIES[resource["Type"]][0] in resource.get("Properties", {})
    }
    assert {"QueryStateMachine", "ScheduleGroup"} <= set(named)
    problems = []
    for logical_id, ((prop, schema_type, schema_prop), value) in named.items():
        name = str(longest.resolve(value, f"{logical_id}.{prop}"))
        constraints = name_constraints(schema_type, schema_prop)
        # Then each satisfies CloudFormation's schema for that property
        if not constraints.get("minLength", 1) <= len(name) <= constraints.get("maxLength", len(name)):
            problems.append(f"{logical_id}.{prop}: {len(name)} characters, {constraints} ({name})")
        if "pattern" in constraints and not re.search(constraints["pattern"], name):
            problems.append(f"{logical_id}.{prop}: {name!r} does not match {constraints['pattern']}")
    assert problems == []
    # and the state machine's name is one Step Functions takes (its characters, too)
    assert execution_name_problem(longest.state_machine.name) is None


def test_names_stay_the_same_for_the_life_of_a_stack_and_differ_between_stacks(
    resources: dict[str, Any],
) -> None:
    def names(stack_id: str) -> tuple[str, str]:
        template = load_template(TEMPLATE_PATH, pseudo_parameters={**STACK, "AWS::StackId": stack_id})
        group = template.resolve(resources["ScheduleGroup"]["Properties"]["Name"], "ScheduleGroup.Name")
        return template.state_machine.name, str(group)

    first = names(STACK["AWS::StackId"])
    assert names(STACK["AWS::StackId"]) == first
    other = STACK["AWS::StackId"].replace(STACK_UUID, "0a0b0c0d-1e1f-4a2b-8c3d-4e5f6a7b8c9d")
    assert set(names(other)).isdisjoint(first)


def test_what_names_the_state_machine_before_it_exists_names_it(
    longest: LocalTemplate, resources: dict[str, Any]
) -> None:
    # Given the machine's name, which its own policy and Submit's cannot Ref (a circular reference)
    name = longest.state_machine.name
    machine = resources["QueryStateMachine"]["Properties"]
    (execution_policy,) = [p for p in machine["Policies"] if "StepFunctionsExecutionPolicy" in p]
    described = [
        statement["Resource"]
        for policy in resources["SubmitFunction"]["Properties"]["Policies"]
        if isinstance(policy, dict) and "Statement" in policy
        for statement in policy["Statement"]
        if statement["Action"] == "states:DescribeExecution"
    ]
    # Then the expressions they spell out resolve to that same name
    parameter = execution_policy["StepFunctionsExecutionPolicy"]["StateMachineName"]
    assert longest.resolve(parameter, "StepFunctionsExecutionPolicy") == name
    assert [longest.resolve(resource, "SubmitFunction") for resource in described] == [
        f"arn:{PARTITION}:states:{REGION}:123456789012:execution:{name}:*"
    ]


def test_the_api_is_given_the_schedule_group_and_scheduled_run_ids_fit_an_execution_name(
    longest: LocalTemplate, resources: dict[str, Any]
) -> None:
    group = longest.functions["ApiFunction"].environment["SCHEDULE_GROUP"]
    assert group == longest.resolve(resources["ScheduleGroup"]["Properties"]["Name"], "ScheduleGroup.Name")
    assert re.fullmatch(SCHEDULER_NAME_PATTERN, group)
    # the longest schedule name the API takes, plus "-<scheduled time>", is still an execution name
    run = "n" * SCHEDULE_NAME_MAX_CHARS + SCHEDULED_RUN_SUFFIX
    assert len(run) <= EXECUTION_NAME_MAX_CHARS
    assert execution_name_problem(run) is None


@pytest.mark.parametrize("partition", ["aws", "aws-cn", "aws-us-gov"])
def test_service_integrations_are_in_the_stack_partition(partition: str) -> None:
    # Given the definition CloudFormation would deploy in the partition
    template = load_template(TEMPLATE_PATH, pseudo_parameters={"AWS::Partition": partition})
    definition = json.loads(template.state_machine.definition())
    integrations = {
        state["Resource"] for _, state in all_states(definition) if ":states:::" in state.get("Resource", "")
    }
    # Then each service integration is named in that partition
    assert integrations == {
        f"arn:{partition}:states:::states:startExecution",
        f"arn:{partition}:states:::events:putEvents",
    }


def test_no_arn_names_a_partition_of_its_own() -> None:
    # The partition comes from the template (AWS::Partition) or from an ARN at hand, never a literal.
    sources = [
        ASL_PATH,
        TEMPLATE_PATH,
        *ROOT.glob("layers/core/query_relay/**/*.py"),
        *ROOT.glob("functions/*/*.py"),
    ]
    literal = [str(path.relative_to(ROOT)) for path in sources if "arn:aws:" in Path(path).read_text()]
    assert literal == []


def start_execution_states(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: state
        for name, state in all_states(definition)
        if state.get("Resource") == "${StartExecutionArn}"
    }


def test_a_refused_start_is_final_and_anything_else_is_retried() -> None:
    definition = json.loads(ASL_PATH.read_text())
    states = start_execution_states(definition)
    assert set(states) == {"StartScheduledRun", "ContinueAsNew"}
    for name, state in states.items():
        final, *retried = state["Retry"]
        # A name taken (a redelivered trigger) or refused goes straight to the Catch...
        assert set(final["ErrorEquals"]) >= FINAL_START_ERRORS, name
        assert final["MaxAttempts"] == 0, name
        # ...and any other failure, throttling and 5xx included whatever AWS calls them, is retried
        (rule,) = [rule for rule in retried if "States.TaskFailed" in rule["ErrorEquals"]]
        assert rule["MaxAttempts"] >= 3, name
        assert rule["BackoffRate"] > 1, name
        assert rule["JitterStrategy"] == "FULL", name
        assert "MaxDelaySeconds" in rule, name
    # The redelivered trigger is recognised by either spelling of ExecutionAlreadyExists
    (choice,) = definition["States"]["WasRunStartedAlready"]["Choices"]
    assert choice["Variable"] == "$.error.Error"
    assert re.fullmatch(
        choice["StringMatches"].replace("*", ".*"), "StepFunctions.ExecutionAlreadyExistsException"
    )


def test_an_event_that_cannot_be_put_is_retried() -> None:
    definition = json.loads(ASL_PATH.read_text())
    publishing = {
        name: state for name, state in all_states(definition) if state.get("Resource") == "${PutEventsArn}"
    }
    assert set(publishing) == {"PublishReady", "PublishFailed"}
    for name, state in publishing.items():
        # EventBridge.FailedEntry, throttling and 5xx: States.ALL matches each
        (rule,) = [rule for rule in state["Retry"] if rule["ErrorEquals"] == ["States.ALL"]]
        assert rule["BackoffRate"] > 1, name
        assert rule["JitterStrategy"] == "FULL", name
        assert "MaxDelaySeconds" in rule, name
