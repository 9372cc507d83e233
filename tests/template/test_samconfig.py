"""samconfig.toml's environments (default, dev, prod) must deploy template.yaml as README "Deploying"
says: each names its stack and acknowledges the IAM roles, every parameter it overrides exists with
a value the template allows, prod shows its change sets, dev syncs with --watch and `sam sync`
refuses every other environment. dev and prod can live in one account and Region."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from typing import Any

import pytest

from query_relay_local import template as local_template
from query_relay_local.iam import sam_translate

from .test_template import ROOT, load_template

SAMCONFIG_PATH = ROOT / "samconfig.toml"
ENVIRONMENTS = ("default", "dev", "prod")
# The commands README "Deploying" runs with --config-env; each must find its stack in the file.
STACK_COMMANDS = ("deploy", "sync", "list_stack_outputs")
# Properties that name a resource account- or Region-wide (Scheduler schedules are named within
# their group, itself named for the stack).
NAME_PROPERTIES = {
    "AWS::Serverless::LayerVersion": "LayerName",
    "AWS::Serverless::StateMachine": "Name",
    "AWS::Serverless::Function": "FunctionName",
    "AWS::Scheduler::ScheduleGroup": "Name",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::IAM::Role": "RoleName",
    "AWS::IAM::ManagedPolicy": "ManagedPolicyName",
    "AWS::Events::Rule": "Name",
    "AWS::DynamoDB::Table": "TableName",
    "AWS::S3::Bucket": "BucketName",
}


@pytest.fixture(scope="module")
def samconfig() -> dict[str, Any]:
    return tomllib.loads(SAMCONFIG_PATH.read_text())


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def settings(samconfig: dict[str, Any], env: str, command: str) -> dict[str, Any]:
    """What `sam <command> --config-env <env>` reads: [env.global.parameters], overridden by
    [env.<command>.parameters] (SAM CLI's precedence)."""
    sections = samconfig.get(env, {})
    merged = dict(sections.get("global", {}).get("parameters", {}))
    merged.update(sections.get(command, {}).get("parameters", {}))
    return merged


def as_list(value: Any) -> list[str]:
    """A samconfig option that takes several values: a space-separated string, or a TOML list."""
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    return [str(item) for item in value]


def parse_overrides(value: Any) -> dict[str, str]:
    """parameter_overrides, as a string "Key=Value Key2='a b'" or a list of "Key=Value"."""
    tokens = (
        shlex.split(value) if isinstance(value, str) else [t for item in value for t in shlex.split(item)]
    )
    overrides: dict[str, str] = {}
    for token in tokens:
        key, separator, parameter_value = token.partition("=")
        assert separator, f"parameter_overrides entry {token!r} is not Key=Value"
        assert key not in overrides, f"parameter_overrides sets {key} twice"
        overrides[key] = parameter_value
    return overrides


def all_overrides(samconfig: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """Every parameter_overrides in the file: (environment, command section, value)."""
    found = []
    for env, sections in samconfig.items():
        if not isinstance(sections, dict):
            continue  # version
        for command, section in sections.items():
            value = section.get("parameters", {}).get("parameter_overrides")
            if value is not None:
                found.append((env, command, value))
    return found


def parameter_problems(spec: dict[str, Any], value: str) -> list[str]:
    """Why CloudFormation would refuse this value for a template parameter, if it would."""
    problems = []
    allowed = spec.get("AllowedValues")
    if allowed is not None and value not in [str(v) for v in allowed]:
        problems.append(f"{value!r} is not one of {allowed}")
    if "AllowedPattern" in spec and not re.fullmatch(spec["AllowedPattern"], value):
        problems.append(f"{value!r} does not match {spec['AllowedPattern']}")
    if len(value) < spec.get("MinLength", 0) or len(value) > spec.get("MaxLength", len(value)):
        problems.append(f"{value!r} has a length outside MinLength/MaxLength")
    if spec.get("Type") == "Number":
        try:
            number = float(value)
        except ValueError:
            return [*problems, f"{value!r} is not a number"]
        if "MinValue" in spec and number < float(spec["MinValue"]):
            problems.append(f"{value} is below MinValue {spec['MinValue']}")
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            problems.append(f"{value} is above MaxValue {spec['MaxValue']}")
    return problems


def test_default_dev_and_prod_environments_exist(samconfig: dict[str, Any]) -> None:
    assert samconfig["version"] == 0.1
    for env in ENVIRONMENTS:
        assert env in samconfig, f"samconfig.toml has no [{env}.*] environment"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_each_deploy_names_its_stack_and_acknowledges_the_iam_roles(
    samconfig: dict[str, Any], template: dict[str, Any], env: str
) -> None:
    deploy = settings(samconfig, env, "deploy")
    assert deploy.get("stack_name"), f"{env}: sam deploy has no stack_name"
    # template.yaml declares AWS::IAM::Role resources (and SAM creates the functions' roles):
    # CloudFormation refuses the change set without this capability.
    assert any(res["Type"] == "AWS::IAM::Role" for res in template["Resources"].values())
    assert "CAPABILITY_IAM" in as_list(deploy.get("capabilities")), env
    assert deploy.get("resolve_s3") is True, f"{env}: no artifact bucket (resolve_s3)"
    assert deploy.get("region"), f"{env}: the stack's Region is left to whatever profile is active"


def test_environments_deploy_different_stacks(samconfig: dict[str, Any]) -> None:
    stacks = [settings(samconfig, env, "deploy")["stack_name"] for env in ENVIRONMENTS]
    assert len(set(stacks)) == len(stacks), stacks
    assert settings(samconfig, "dev", "deploy")["stack_name"] == "query-relay-dev"
    assert settings(samconfig, "prod", "deploy")["stack_name"] == "query-relay-prod"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_command_of_an_environment_finds_the_same_stack(samconfig: dict[str, Any], env: str) -> None:
    # sam sync and sam list stack-outputs read their stack_name and region from the same file.
    targets = {
        command: (
            settings(samconfig, env, command).get("stack_name"),
            settings(samconfig, env, command).get("region"),
        )
        for command in STACK_COMMANDS
    }
    assert len(set(targets.values())) == 1, targets


def test_every_overridden_parameter_exists_with_an_allowed_value(
    samconfig: dict[str, Any], template: dict[str, Any]
) -> None:
    parameters = template["Parameters"]
    found = all_overrides(samconfig)
    assert {env for env, _, _ in found} >= {"dev", "prod"}
    problems = []
    for env, command, value in found:
        for name, parameter_value in parse_overrides(value).items():
            where = f"[{env}.{command}.parameters] {name}"
            if name not in parameters:
                problems.append(f"{where}: template.yaml has no such parameter")
                continue
            problems.extend(f"{where}: {p}" for p in parameter_problems(parameters[name], parameter_value))
    assert not problems, problems


# SAM CLI lives in an environment of its own (tools/, `make tools`): its parser runs there.
SAM_PARSES = """
import json, sys
from samcli.cli.types import CfnParameterOverridesType
convert = CfnParameterOverridesType().convert
print(json.dumps([convert(values, None, None) for values in json.load(sys.stdin)]))
"""


def test_sam_cli_reads_the_overrides_as_this_test_does(samconfig: dict[str, Any]) -> None:
    tools_python = ROOT / ".tools/bin/python"
    assert tools_python.exists(), "no SAM CLI environment: run `make tools`"
    overrides = list(all_overrides(samconfig))
    values = [[value] if isinstance(value, str) else list(value) for _, _, value in overrides]
    parsed = subprocess.run(
        [str(tools_python), "-c", SAM_PARSES],
        input=json.dumps(values),
        capture_output=True,
        text=True,
        check=True,
    )
    for (env, command, value), by_sam in zip(overrides, json.loads(parsed.stdout), strict=True):
        assert by_sam == parse_overrides(value), (env, command)


def test_dev_and_prod_differ_where_they_should(samconfig: dict[str, Any]) -> None:
    dev = parse_overrides(settings(samconfig, "dev", "deploy")["parameter_overrides"])
    prod = parse_overrides(settings(samconfig, "prod", "deploy")["parameter_overrides"])
    assert dev["LogLevel"] == "DEBUG"
    assert prod["LogLevel"] == "INFO"
    assert int(prod["LogRetentionDays"]) > int(dev["LogRetentionDays"])
    assert prod["DeploySampleSchedule"] == prod["DeploySampleConsumer"] == "false"
    # Each stack may read only secrets under its own prefix (the functions' policies end in
    # "<prefix>*"): dev's prefix must not cover prod's secrets, nor prod's dev's.
    dev_prefix, prod_prefix = dev["ConnectionSecretPrefix"], prod["ConnectionSecretPrefix"]
    assert not dev_prefix.startswith(prod_prefix)
    assert not prod_prefix.startswith(dev_prefix)


def test_prod_shows_its_change_sets_and_dev_does_not_wait(samconfig: dict[str, Any]) -> None:
    assert settings(samconfig, "prod", "deploy")["confirm_changeset"] is True
    assert settings(samconfig, "default", "deploy")["confirm_changeset"] is True
    assert settings(samconfig, "dev", "deploy")["confirm_changeset"] is False


def test_dev_syncs_with_watch(samconfig: dict[str, Any]) -> None:
    sync = settings(samconfig, "dev", "sync")
    assert sync.get("watch") is True
    assert sync.get("template_file", "template.yaml") == "template.yaml"
    assert sync.get("parameter_overrides") == settings(samconfig, "dev", "deploy").get("parameter_overrides")
    if "capabilities" in sync:
        assert "CAPABILITY_IAM" in as_list(sync["capabilities"])


@pytest.mark.parametrize("env", ["default", "prod"])
def test_sam_sync_refuses_every_environment_but_dev(samconfig: dict[str, Any], env: str) -> None:
    # sam sync changes code through the service APIs behind CloudFormation's back; it points
    # these environments at a template that does not exist, so it stops before any AWS call.
    template_file = settings(samconfig, env, "sync").get("template_file")
    assert template_file, f"`sam sync --config-env {env}` would sync the {env} stack"
    assert not (ROOT / template_file).exists()


def test_account_wide_names_differ_between_stacks(template: dict[str, Any]) -> None:
    # dev and prod may share an account and Region: whatever the template names itself must be
    # derived from the stack (its name, or its id). SAM names an unnamed layer after its logical
    # id, the same in every stack.
    problems = []
    for logical_id, resource in template["Resources"].items():
        prop = NAME_PROPERTIES.get(resource["Type"])
        if prop is None:
            continue
        name = resource.get("Properties", {}).get(prop)
        if name is None and resource["Type"] == "AWS::Serverless::LayerVersion":
            problems.append(f"{logical_id}: no LayerName (SAM would use {logical_id!r} in every stack)")
        elif name is not None and not re.search(r"AWS::Stack(Name|Id)\b", json.dumps(name)):
            problems.append(f"{logical_id}.{prop} = {name!r} is the same in every stack")
    assert not problems, problems


def deployed_resource_types() -> set[str]:
    """The CloudFormation resource types template.yaml becomes once the SAM transform has run."""
    translated = sam_translate(local_template.load_template())
    return {resource["Type"] for resource in translated["Resources"].values()}


def test_the_deploying_users_permissions_cover_every_resource_type(template: dict[str, Any]) -> None:
    # README "IAM permissions the deploying user needs" derives its list from the resource types
    # the stack holds: a type added to (or gone from) the template must show there.
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### IAM permissions the deploying user needs", 1)[1]
    section = re.split(r"^#{1,3} ", section, maxsplit=1, flags=re.MULTILINE)[0]
    documented = set(re.findall(r"AWS::[A-Za-z0-9]+::[A-Za-z0-9]+", section))
    deployed = deployed_resource_types()
    assert deployed == documented, {
        "undocumented": deployed - documented,
        "not deployed": documented - deployed,
    }
