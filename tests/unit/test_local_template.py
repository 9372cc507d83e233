"""The local stack reads template.yaml: functions, environment, the state machine and its substitutions."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from query_relay_local.template import (
    LOCAL_ACCOUNT_ID,
    LOCAL_REGION,
    LOCAL_STACK_NAME,
    POWERTOOLS_VARIABLES,
    TemplateError,
    apply_powertools_environment,
    load_template,
    local_function_arn,
)

ROOT = Path(__file__).resolve().parents[2]

WORKFLOW_FUNCTIONS = (
    "SubmitFunction",
    "PollFunction",
    "FetchFunction",
    "CleanupFunction",
    "UnannouncedResultFunction",
)


def write_template(directory: Path, body: str) -> Path:
    path = directory / "template.yaml"
    path.write_text(textwrap.dedent(body))
    return path


# --- the project's template -----------------------------------------------------------------------


def test_every_function_of_the_template_is_found_with_a_handler_file() -> None:
    # Given the project's template
    # When it is loaded for the local stack
    template = load_template()

    # Then each function has its CodeUri directory and an existing handler file
    assert set(template.functions) == {
        *WORKFLOW_FUNCTIONS,
        "ApiFunction",
        "ExecutionStoppedFunction",
        "ManifestConsumerFunction",
    }
    for function in template.functions.values():
        assert function.code_uri.parent == ROOT / "functions"
        assert function.handler == "app.lambda_handler"
        assert function.handler_file == function.code_uri / "app.py"
        assert function.handler_file.is_file()
        assert function.handler_function == "lambda_handler"


def test_function_settings_merge_globals_with_the_function() -> None:
    template = load_template()

    submit = template.functions["SubmitFunction"]
    cleanup = template.functions["CleanupFunction"]

    # Function values win over Globals; Globals fill the rest
    assert (submit.timeout_seconds, submit.memory_mb) == (120, 512)
    assert (cleanup.timeout_seconds, cleanup.memory_mb) == (60, 256)
    # Globals environment plus the function's own variables, intrinsics resolved
    assert submit.environment["SUBMIT_WAIT_SECONDS"] == "2"
    assert submit.environment["POWERTOOLS_SERVICE_NAME"] == LOCAL_STACK_NAME  # !Ref AWS::StackName
    assert submit.environment["POWERTOOLS_LOG_LEVEL"] == "INFO"
    assert submit.environment["CONNECTION_SECRET_PREFIX"] == "query-relay/connections/"
    assert submit.environment["RESULTS_BUCKET"] == template.buckets["ResultsBucket"]
    # A function's own variables stay its own
    api = template.functions["ApiFunction"]
    assert api.environment["STATE_MACHINE_ARN"] == template.state_machine.arn
    assert "STATE_MACHINE_ARN" not in cleanup.environment


def test_substitutions_resolve_to_local_function_arns_and_parameter_defaults() -> None:
    template = load_template()

    substitutions = template.state_machine.substitutions

    for name in ("Submit", "Poll", "Fetch", "Cleanup", "UnannouncedResult"):
        assert substitutions[f"{name}FunctionArn"] == (
            f"arn:aws:lambda:{LOCAL_REGION}:{LOCAL_ACCOUNT_ID}:function:{name}Function"
        )
    assert substitutions["EventBusName"] == "default"


def test_the_definition_has_every_substitution_applied_and_names_only_template_functions() -> None:
    template = load_template()

    definition = json.loads(template.state_machine.definition())

    assert template.state_machine.definition_path == ROOT / "statemachine" / "query.asl.json"
    lambda_resources = {
        state["Resource"]
        for state in definition["States"].values()
        if state.get("Resource", "").startswith("arn:aws:lambda:")
    }
    assert lambda_resources == {template.functions[name].arn for name in WORKFLOW_FUNCTIONS}
    assert all(template.function(arn) is not None for arn in lambda_resources)


def test_parameter_overrides_reach_environment_and_substitutions() -> None:
    template = load_template(parameter_overrides={"EventBusName": "jobs", "LogLevel": "DEBUG"})

    assert template.state_machine.substitutions["EventBusName"] == "jobs"
    assert template.functions["PollFunction"].environment["POWERTOOLS_LOG_LEVEL"] == "DEBUG"
    assert template.parameter_values["LogRetentionDays"] == "30"


def test_an_unknown_parameter_override_is_refused() -> None:
    with pytest.raises(TemplateError, match="NoSuchParameter"):
        load_template(parameter_overrides={"NoSuchParameter": "x"})


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("SubmitFunction", "SubmitFunction"),
        ("SubmitFunction:$LATEST", "SubmitFunction"),
        (local_function_arn("PollFunction"), "PollFunction"),
        (local_function_arn("PollFunction") + ":$LATEST", "PollFunction"),
        ("NoSuchFunction", None),
        ("arn:aws:lambda:us-east-1:123456789012:function:Elsewhere", None),
    ],
)
def test_invoke_names_find_their_function(name: str, expected: str | None) -> None:
    function = load_template().function(name)

    assert (function.logical_id if function else None) == expected


# --- intrinsic functions, on small templates ----------------------------------------------------


def test_sub_resolves_parameters_pseudo_parameters_attributes_and_escapes(tmp_path: Path) -> None:
    # Given a template whose environment uses every form of Fn::Sub the resolver supports
    path = write_template(
        tmp_path,
        """
        Parameters:
          Stage:
            Type: String
            Default: dev
        Resources:
          Store:
            Type: AWS::S3::Bucket
          Worker:
            Type: AWS::Serverless::Function
            Properties:
              CodeUri: src
              Handler: pkg.module.handle
              Environment:
                Variables:
                  PLAIN: !Sub "${Stage}-${AWS::Region}-${AWS::AccountId}-${AWS::Partition}-${AWS::StackName}"
                  ATTRIBUTE: !Sub "${Store.Arn}/*"
                  ESCAPED: !Sub "${!NotAVariable}"
                  LIST_FORM: !Sub ["${Name}@${Stage}", {Name: !Ref Store}]
                  SELF: !GetAtt Worker.Arn
                  NUMBER: 42
        """,
    )

    # When it is loaded
    worker = load_template(path).functions["Worker"]

    # Then every variable holds the local value
    bucket = "query-relay-local-store"
    assert worker.environment == {
        "PLAIN": f"dev-{LOCAL_REGION}-{LOCAL_ACCOUNT_ID}-aws-query-relay-local",
        "ATTRIBUTE": f"arn:aws:s3:::{bucket}/*",
        "ESCAPED": "${NotAVariable}",
        "LIST_FORM": f"{bucket}@dev",
        "SELF": local_function_arn("Worker"),
        "NUMBER": "42",
    }
    assert worker.handler_file == tmp_path / "src" / "pkg" / "module.py"
    assert worker.handler_function == "handle"
    # Lambda's defaults when the template gives none
    assert (worker.timeout_seconds, worker.memory_mb) == (3, 128)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "!Ref Nowhere",
            r"Worker\.Environment\.Variables\.BROKEN: Nowhere is neither a parameter nor a resource",
        ),
        ("!GetAtt Worker.Name", r"Fn::GetAtt Worker\.Name has no local stand-in"),
        ("!Base64 text", r"cannot resolve"),
        ("!Select [0, !Ref Nowhere]", r"Nowhere is neither a parameter nor a resource"),
    ],
)
def test_an_unresolvable_reference_is_reported_with_its_place(
    tmp_path: Path, value: str, message: str
) -> None:
    path = write_template(
        tmp_path,
        f"""
        Resources:
          Worker:
            Type: AWS::Serverless::Function
            Properties:
              CodeUri: src
              Handler: app.handler
              Environment:
                Variables:
                  BROKEN: {value}
        """,
    )

    with pytest.raises(TemplateError, match=message):
        load_template(path)


def test_a_placeholder_without_substitution_is_reported(tmp_path: Path) -> None:
    # Given an ASL that uses a ${Name} the template does not substitute
    (tmp_path / "machine.asl.json").write_text(
        json.dumps({"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "${Missing}", "End": True}}})
    )
    path = write_template(
        tmp_path,
        """
        Resources:
          Machine:
            Type: AWS::Serverless::StateMachine
            Properties:
              DefinitionUri: machine.asl.json
        """,
    )
    machine = load_template(path).state_machine

    with pytest.raises(TemplateError, match="no DefinitionSubstitutions for Missing"):
        machine.definition()


def test_a_template_that_does_not_parse_is_reported(tmp_path: Path) -> None:
    path = write_template(tmp_path, "Resources: [unclosed\n")

    with pytest.raises(TemplateError, match="cannot parse"):
        load_template(path)


def test_a_function_without_a_local_code_uri_is_reported(tmp_path: Path) -> None:
    document: dict[str, Any] = {
        "Resources": {
            "Worker": {
                "Type": "AWS::Serverless::Function",
                "Properties": {"CodeUri": {"Bucket": "b", "Key": "k"}, "Handler": "app.handler"},
            }
        }
    }
    path = tmp_path / "template.json"
    path.write_text(json.dumps(document))

    with pytest.raises(TemplateError, match="Worker: CodeUri must be a string"):
        load_template(path)


def test_tables_are_read_with_their_keys_and_referenced_by_name() -> None:
    template = load_template()
    (table,) = template.tables.values()
    assert table.logical_id == "ControlTable"
    assert table.name == "query-relay-local-control-table"
    assert table.key_schema == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert table.attribute_definitions == [{"AttributeName": "pk", "AttributeType": "S"}]
    assert template.functions["SubmitFunction"].environment["CONTROL_TABLE"] == table.name


def test_join_select_and_split_resolve_like_cloudformation(tmp_path: Path) -> None:
    # Given names built from the stack's id, as template.yaml builds them
    path = write_template(
        tmp_path,
        """
        Resources:
          Worker:
            Type: AWS::Serverless::Function
            Properties:
              CodeUri: src
              Handler: app.handler
              Environment:
                Variables:
                  STACK_UUID: !Select [2, !Split ["/", !Ref AWS::StackId]]
                  GROUP: !Join ["", ["group-", !Select [2, !Split ["/", !Ref AWS::StackId]]]]
                  PARTS: !Join [",", [a, !Ref AWS::StackName, c]]
        """,
    )
    stack_uuid = "0f9e8d7c-aaaa-bbbb-cccc-1234567890ab"
    stack_id = f"arn:aws-cn:cloudformation:cn-north-1:123456789012:stack/other-stack/{stack_uuid}"

    # When it is loaded for another stack's pseudo parameters
    environment = (
        load_template(path, pseudo_parameters={"AWS::StackId": stack_id, "AWS::StackName": "other-stack"})
        .functions["Worker"]
        .environment
    )

    # Then each intrinsic gives what CloudFormation would
    assert environment["STACK_UUID"] == stack_uuid
    assert environment["GROUP"] == f"group-{stack_uuid}"
    assert environment["PARTS"] == "a,other-stack,c"


def test_the_powertools_environment_is_the_templates_and_never_overrides_the_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for variable in POWERTOOLS_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    # Without a template (installed from the wheel): Powertools' own defaults, nothing raised
    apply_powertools_environment(tmp_path / "template.yaml")
    assert [variable for variable in POWERTOOLS_VARIABLES if variable in os.environ] == []
    # With one: the service is the local stack's name, the namespace the template's
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Mine")
    apply_powertools_environment()
    assert os.environ["POWERTOOLS_SERVICE_NAME"] == LOCAL_STACK_NAME
    assert os.environ["POWERTOOLS_METRICS_NAMESPACE"] == "Mine"
