"""The template, the state machine and the library must agree: these checks keep them in step."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
from cfnlint.decode import decode_str

from query_relay.exceptions import ERRORS, TRANSIENT_ERRORS
from query_relay.models import PollingSpec
from query_relay.state import JobState, JobStatus

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "template.yaml"
ASL_PATH = ROOT / "statemachine" / "query.asl.json"
# Error names the ASL may use that belong to AWS rather than to our library: Step Functions' own,
# the Lambda service's, and the Lambda runtime's when a function dies (killed, timed out).
AWS_ERROR_PREFIXES = ("States.", "Lambda.", "StepFunctions.", "Runtime.", "Sandbox.")
# What AWS reports when a function invocation dies half-way (and States.Timeout, a task's own timeout).
CRASH_ERRORS = {"Runtime.ExitError", "Sandbox.Timedout", "States.Timeout"}
# Tasks whose work may be repeated after a crash: each attempt starts over and replaces its output.
RETRIED_AFTER_A_CRASH = {"Submit", "Poll", "Fetch"}
# Lambda tasks that never call an upstream, so have no transient upstream errors to retry.
NO_UPSTREAM_CALLS = {"Cleanup", "ReportNotAnnounced"}


def load_template() -> dict[str, Any]:
    template, problems = decode_str(TEMPLATE_PATH.read_text())
    assert not problems, problems
    return dict(template)


def resources_of_type(template: dict[str, Any], kind: str) -> dict[str, Any]:
    return {name: res for name, res in template["Resources"].items() if res["Type"] == kind}


def all_states(definition: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, state in definition["States"].items():
        yield name, state
        for branch in state.get("Branches", []):
            yield from all_states(branch)
        if "Iterator" in state:
            yield from all_states(state["Iterator"])
        if "ItemProcessor" in state:
            yield from all_states(state["ItemProcessor"])


def asl_error_names(definition: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for _, state in all_states(definition):
        for rule in state.get("Retry", []) + state.get("Catch", []):
            names.update(rule["ErrorEquals"])
    return names


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def definition() -> dict[str, Any]:
    return dict(json.loads(ASL_PATH.read_text()))


def test_every_substitution_in_the_asl_is_defined_by_the_template_and_used(
    template: dict[str, Any],
) -> None:
    # Given the state machine resource and the ASL text
    machine = template["Resources"]["QueryStateMachine"]["Properties"]
    defined = set(machine["DefinitionSubstitutions"])
    used = set(re.findall(r"\$\{(\w+)\}", ASL_PATH.read_text()))
    # Then each ${Name} has a substitution, and no substitution is dead
    assert used - defined == set(), "ASL uses undefined substitutions"
    assert defined - used == set(), "template defines substitutions the ASL never uses"
    assert machine["DefinitionUri"] == "statemachine/query.asl.json"


def test_every_error_name_in_the_asl_is_an_exception_class_and_vice_versa(
    definition: dict[str, Any],
) -> None:
    ours = {name for name in asl_error_names(definition) if not name.startswith(AWS_ERROR_PREFIXES)}
    assert ours - set(ERRORS) == set(), "ASL names errors the library does not define"
    # Every transient error is retried somewhere; every library error can reach the ASL by name
    # through Catch States.ALL, so the library may not define names the machine cannot tell apart.
    assert ours >= TRANSIENT_ERRORS
    assert set(ERRORS) - ours <= set(ERRORS) - TRANSIENT_ERRORS


def test_transient_errors_are_retried_with_backoff_jitter_and_a_delay_cap(
    template: dict[str, Any], definition: dict[str, Any]
) -> None:
    lambda_resources = {f"${{{name}}}" for name in function_timeouts(template)}
    for name, state in all_states(definition):
        if state["Type"] != "Task" or state["Resource"] not in lambda_resources:
            continue
        retries = [rule for rule in state.get("Retry", []) if set(rule["ErrorEquals"]) & TRANSIENT_ERRORS]
        if name in NO_UPSTREAM_CALLS:
            continue
        assert retries, f"{name} does not retry transient upstream errors"
        for rule in retries:
            assert rule["BackoffRate"] > 1, name
            assert rule["JitterStrategy"] == "FULL", name
            assert "MaxDelaySeconds" in rule, name


def test_a_crashed_or_timed_out_invocation_is_retried_with_backoff_jitter_and_a_delay_cap(
    definition: dict[str, Any],
) -> None:
    for name in RETRIED_AFTER_A_CRASH:
        rules = [
            rule
            for rule in definition["States"][name].get("Retry", [])
            if CRASH_ERRORS & set(rule["ErrorEquals"])
        ]
        assert rules, f"{name} does not retry a crashed invocation"
        assert {error for rule in rules for error in rule["ErrorEquals"]} >= CRASH_ERRORS, name
        for rule in rules:
            assert rule["BackoffRate"] > 1, name
            assert rule["JitterStrategy"] == "FULL", name
            assert "MaxDelaySeconds" in rule, name


def function_timeouts(template: dict[str, Any]) -> dict[str, int]:
    """Each function's Timeout in seconds, by the DefinitionSubstitutions name of its ARN."""
    default = int(template["Globals"]["Function"]["Timeout"])
    machine = template["Resources"]["QueryStateMachine"]["Properties"]
    timeouts: dict[str, int] = {}
    for name, value in machine["DefinitionSubstitutions"].items():
        if not isinstance(value, dict) or "Fn::GetAtt" not in value:
            continue
        target = value["Fn::GetAtt"]
        logical_id, attribute = target if isinstance(target, list) else target.split(".", 1)
        resource = template["Resources"][logical_id]
        if attribute == "Arn" and resource["Type"] == "AWS::Serverless::Function":
            timeouts[name] = int(resource["Properties"].get("Timeout", default))
    return timeouts


def test_every_lambda_task_times_out_a_little_after_its_function(
    template: dict[str, Any], definition: dict[str, Any]
) -> None:
    # Given each function's Timeout in the template
    timeouts = function_timeouts(template)
    lambda_tasks = [
        (name, state) for name, state in all_states(definition) if state.get("Resource", "")[2:-1] in timeouts
    ]
    assert {state["Resource"] for _, state in lambda_tasks} == {f"${{{name}}}" for name in timeouts}
    # Then every Lambda task gives up on a hung invocation, but only once Lambda has ended it (a
    # retry must never run next to an attempt that is still writing)
    for name, state in lambda_tasks:
        function_timeout = timeouts[state["Resource"][2:-1]]
        assert isinstance(state.get("TimeoutSeconds"), int), f"{name} has no TimeoutSeconds"
        assert function_timeout < state["TimeoutSeconds"] <= function_timeout + 60, name


def test_the_execution_times_out_only_after_the_longest_job_could_have_polled_and_fetched(
    definition: dict[str, Any],
) -> None:
    # Given the longest polling.timeout_seconds a job spec may ask for
    longest_job = max(getattr(rule, "le", 0) for rule in PollingSpec.model_fields["timeout_seconds"].metadata)
    assert longest_job > 0
    # Then the execution's own timeout (a last guard) leaves that job time to poll, then fetch
    fetch_timeout = definition["States"]["Fetch"]["TimeoutSeconds"]
    assert isinstance(definition.get("TimeoutSeconds"), int)
    assert definition["TimeoutSeconds"] >= longest_job + fetch_timeout


def _catches_all(state: dict[str, Any]) -> bool:
    return any("States.ALL" in rule["ErrorEquals"] for rule in state.get("Catch", []))


def test_every_task_that_can_fail_is_caught(definition: dict[str, Any]) -> None:
    for name, state in definition["States"].items():
        if state["Type"] == "Task":
            assert _catches_all(state), name
        if state["Type"] == "Map":
            # A branch's task fails its iteration, and so the Map, which must catch it (and stop
            # the other iterations): a Catch inside would keep a failed branch from failing the job.
            assert _catches_all(state), name
            for inner, nested in all_states(state["ItemProcessor"]):
                assert "Catch" not in nested, inner


def test_a_landed_result_whose_event_cannot_be_sent_still_succeeds(definition: dict[str, Any]) -> None:
    # Given the states after a result has landed
    states = definition["States"]
    (caught,) = states["PublishReady"]["Catch"]
    report = states[caught["Next"]]
    # Then a failed "Query Result Ready" is reported, and whether or not the report works, the
    # job ends in Succeeded saying it was not announced
    assert caught["ErrorEquals"] == ["States.ALL"]
    assert report["Type"] == "Task"
    assert {rule["Next"] for rule in report["Catch"]} == {report["Next"]}
    not_announced = states[report["Next"]]
    assert not_announced["Result"] == {"announced": False}
    assert not_announced["Next"] == states["PublishReady"]["Next"] == "Succeeded"
    assert states["Succeeded"]["Parameters"]["announced.$"] == f"{not_announced['ResultPath']}.announced"


def test_every_next_exists_and_every_state_is_reachable(definition: dict[str, Any]) -> None:
    states = definition["States"]
    targets = {definition["StartAt"]}
    for _, state in states.items():
        targets.update(t for t in [state.get("Next"), state.get("Default")] if t)
        targets.update(choice["Next"] for choice in state.get("Choices", []))
        targets.update(rule["Next"] for rule in state.get("Catch", []))
    assert targets - set(states) == set(), "transitions to states that do not exist"
    assert set(states) - targets == set(), "states nothing transitions to"


def test_every_function_handler_is_importable_from_its_code_uri(template: dict[str, Any]) -> None:
    functions = resources_of_type(template, "AWS::Serverless::Function")
    assert {"SubmitFunction", "PollFunction", "FetchFunction", "CleanupFunction"} <= set(functions)
    for logical_id, resource in functions.items():
        properties = resource["Properties"]
        module_name, function_name = properties["Handler"].rsplit(".", 1)
        path = ROOT / properties["CodeUri"] / f"{module_name}.py"
        spec = importlib.util.spec_from_file_location(f"handler_{logical_id}", path)
        assert spec is not None
        assert spec.loader is not None, logical_id
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert callable(getattr(module, function_name)), logical_id


def test_functions_run_python313_on_arm64_with_the_core_layer(template: dict[str, Any]) -> None:
    function_globals = template["Globals"]["Function"]
    assert function_globals["Runtime"] == "python3.13"
    assert function_globals["Architectures"] == ["arm64"]
    assert function_globals["Layers"] == [{"Ref": "CoreLayer"}]
    layer = template["Resources"]["CoreLayer"]
    assert layer["Metadata"]["BuildMethod"] == "python3.13"
    assert layer["Properties"]["ContentUri"] == "layers/core"


def _uv() -> str:
    """The uv the environment was synced with (the dev extra pins the Makefile's UV_VERSION)."""
    uv = Path(sys.executable).parent / "uv"
    assert uv.exists(), "no uv beside the test's python: run `make venv`"
    return str(uv)


def test_layer_requirements_are_the_locked_runtime() -> None:
    # What the layer ships is what the tests ran: the runtime dependencies of uv.lock, pinned.
    exported = subprocess.run(
        [_uv(), "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes", "--no-annotate",
         "--no-header", "--project", str(ROOT)],
        capture_output=True, text=True, check=True, env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
    ).stdout  # fmt: skip
    written = (ROOT / "layers/core/requirements.txt").read_text()
    pins = [line for line in written.splitlines() if line and not line.startswith("#")]
    assert pins == [line for line in exported.splitlines() if line and not line.startswith("#")], (
        "layers/core/requirements.txt is not uv.lock's runtime: run `make lock`"
    )
    assert all("==" in pin for pin in pins)


def test_the_environment_is_the_lock() -> None:
    # `uv sync --frozen` installed exactly uv.lock: nothing resolved on the fly, nothing missing.
    checked = subprocess.run(
        [_uv(), "sync", "--frozen", "--extra", "dev", "--check", "--project", str(ROOT)],
        capture_output=True, text=True, check=False,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_PROJECT_ENVIRONMENT": sys.prefix},
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr


def test_the_makefile_bootstraps_the_uv_the_lock_pins() -> None:
    makefile = (ROOT / "Makefile").read_text()
    bootstrapped = re.search(r"^UV_VERSION := (\S+)$", makefile, re.MULTILINE)
    assert bootstrapped is not None
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    assert [p["version"] for p in lock["package"] if p["name"] == "uv"] == [bootstrapped.group(1)]


def test_results_bucket_is_private_encrypted_and_tls_only(template: dict[str, Any]) -> None:
    bucket = template["Resources"]["ResultsBucket"]["Properties"]
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    statements = template["Resources"]["ResultsBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert any(
        s["Effect"] == "Deny" and s["Condition"]["Bool"]["aws:SecureTransport"] == "false" for s in statements
    )


def test_results_bucket_aborts_incomplete_multipart_uploads(template: dict[str, Any]) -> None:
    # A Fetch killed mid-upload leaves its multipart upload behind if no later attempt runs.
    rules = template["Resources"]["ResultsBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    aborting = [rule for rule in rules if "AbortIncompleteMultipartUpload" in rule]
    assert aborting, "no lifecycle rule aborts incomplete multipart uploads"
    for rule in aborting:
        assert rule["Status"] == "Enabled"
        assert "Prefix" not in rule  # the whole bucket
        assert "Filter" not in rule
        assert 1 <= rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] <= 7


def test_no_wildcard_actions_and_wildcard_resources_only_where_aws_allows_nothing_narrower(
    template: dict[str, Any],
) -> None:
    # Vended-logs delivery actions for Step Functions logging and Scheduler's ListSchedules accept
    # only "*" (AWS Service Authorization Reference).
    only_star_resource = {
        "logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery", "logs:DeleteLogDelivery",
        "logs:ListLogDeliveries", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies",
        "logs:DescribeLogGroups", "scheduler:ListSchedules",
    }  # fmt: skip
    for logical_id, resource in template["Resources"].items():
        for policy in resource.get("Properties", {}).get("Policies", []):
            if not isinstance(policy, dict) or "Statement" not in policy:
                continue  # SAM policy templates are scoped by their parameters
            for statement in policy["Statement"]:
                actions = (
                    statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                )
                assert all("*" not in action for action in actions), logical_id
                if statement.get("Resource") == "*":
                    assert set(actions) <= only_star_resource, logical_id


def test_every_job_field_and_status_the_asl_reads_is_one_the_library_writes(
    definition: dict[str, Any],
) -> None:
    text = json.dumps(definition)
    fields = set(re.findall(r"\$\.job\.([a-z_]+)", text))
    assert {"status", "wait_seconds", "continue_as_new", "next_execution"} <= fields
    assert fields <= set(JobState.model_fields)
    statuses = {
        choice["StringEquals"]
        for _, state in all_states(definition)
        for choice in state.get("Choices", [])
        if choice.get("Variable") == "$.job.status"
    }
    assert statuses == set(get_args(JobStatus)) - {"RUNNING"}  # RUNNING is every Choice's Default


def test_the_control_table_is_given_to_the_functions_that_take_or_give_back_slots(
    template: dict[str, Any],
) -> None:
    (table,) = resources_of_type(template, "AWS::DynamoDB::Table")
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["CONTROL_TABLE"] == {"Ref": table}
    functions = resources_of_type(template, "AWS::Serverless::Function")
    for name in (
        "SubmitFunction",
        "FetchFunction",
        "CleanupFunction",
        "ApiFunction",
        "ExecutionStoppedFunction",
    ):
        granted = {
            action
            for policy in functions[name]["Properties"]["Policies"]
            if isinstance(policy, dict) and "Statement" in policy
            for statement in policy["Statement"]
            if statement["Resource"] == {"Fn::GetAtt": [table, "Arn"]}
            for action in (
                statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            )
        }
        assert "dynamodb:UpdateItem" in granted, name
        if name == "SubmitFunction":  # records the task it started (query_relay.submissions)
            assert {"dynamodb:GetItem", "dynamodb:PutItem"} <= granted
        if name in ("CleanupFunction", "ApiFunction", "ExecutionStoppedFunction"):
            assert "dynamodb:PutItem" in granted, name  # claims an execution's cleanup (query_relay.claims)


def test_submit_is_told_whether_it_is_a_retry_so_only_a_retry_looks_for_a_started_task(
    definition: dict[str, Any],
) -> None:
    parameters = definition["States"]["Submit"]["Parameters"]
    assert parameters["retry_count.$"] == "$$.State.RetryCount"
    # every part of the state Submit reads is passed on, and Prepare gives $.job a value to pass
    assert {"spec.$", "execution.$", "execution_arn.$", "job.$"} <= set(parameters)
    assert definition["States"]["Prepare"]["Parameters"]["job"] is None
