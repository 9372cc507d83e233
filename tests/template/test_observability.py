"""The dashboard and alarms of template.yaml (README "Dashboard and alarms") against the code.

Every metric the code emits (``metrics.add_metric`` in query_relay and the functions, read from
the source) is on the dashboard, in the namespace and with the dimension the functions emit it
with, and the dashboard shows no metric of the app's namespace the code does not emit. The
dashboard body is JSON once CloudFormation has substituted it, with or without the sample
consumer; every alarm watches what it says, notifies ``AlarmTopicArn`` only when one is given, and
every function of the stack is under an errors alarm and the throttles alarm.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from query_relay import observability
from query_relay_local.template import decode_template

from .test_names import LONGEST_STACK_NAME
from .test_template import ASL_PATH, ROOT, TEMPLATE_PATH, all_states

# Where the code that runs in Lambda lives: the core layer's library and the functions' handlers.
SOURCE_DIRS = (ROOT / "layers" / "core" / "query_relay", ROOT / "functions")
# Powertools calls that would emit a metric add_metric does not describe (another namespace or
# dimension set): the dashboard reads none of them, so the collector refuses to go on.
UNREAD_METRIC_CALLS = {
    "single_metric",
    "add_dimension",
    "set_default_dimensions",
    "EphemeralMetrics",
    "put_metric_data",
}
FUNCTION_TYPES = {"AWS::Serverless::Function", "AWS::Lambda::Function"}
ALARM = "AWS::CloudWatch::Alarm"
# Pseudo parameters, as CloudFormation would substitute them for some stack.
PSEUDO = {
    "AWS::Region": "us-gov-west-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws-us-gov",
    "AWS::StackName": "query-relay-prod",
    "AWS::StackId": "arn:aws-us-gov:cloudformation:us-gov-west-1:123456789012:stack/query-relay-prod/x",
    "AWS::URLSuffix": "amazonaws.com",
}
# Alarm -> the metric it watches (namespace, name, dimension, the resource or value the dimension names).
SINGLE_METRIC_ALARMS = {
    "FailedJobsAlarm": ("QueryRelay", "JobsFailed", "service", {"Ref": "AWS::StackName"}),
    "ResultNotAnnouncedAlarm": (
        "AWS/Lambda",
        "Invocations",
        "FunctionName",
        {"Ref": "UnannouncedResultFunction"},
    ),
    "ExecutionsFailedAlarm": (
        "AWS/States",
        "ExecutionsFailed",
        "StateMachineArn",
        {"Ref": "QueryStateMachine"},
    ),
    "ExecutionsTimedOutAlarm": (
        "AWS/States",
        "ExecutionsTimedOut",
        "StateMachineArn",
        {"Ref": "QueryStateMachine"},
    ),
}
ERRORS_ALARMS = ("TaskFunctionErrorsAlarm", "UnexpectedFunctionErrorsAlarm")
THROTTLES_ALARM = "FunctionThrottlesAlarm"
# The functions that raise a job's error on purpose, for the state machine to retry or catch.
TASK_FUNCTIONS = {"SubmitFunction", "PollFunction", "FetchFunction"}
# CloudWatch: a metric math alarm reads at most 10 metrics.
MAX_ALARM_METRICS = 10
# The functions whose log holds the "job failed" line: they call query_relay.workflow.undo (the
# Cleanup state; a console stop or a timeout; an API cancel).
JOB_FAILED_LOGGERS = {"CleanupFunction", "ExecutionStoppedFunction", "ApiFunction"}
_SUB_VARIABLE = re.compile(r"\$\{([^}!][^}]*)\}")


@dataclass(frozen=True)
class EmittedMetric:
    name: str
    unit: str | None
    where: str


@dataclass(frozen=True)
class DashboardMetric:
    namespace: str
    name: str
    dimensions: dict[str, str]
    options: dict[str, Any]
    widget: str


def metric_calls(source: str, where: str) -> tuple[list[EmittedMetric], list[str]]:
    """The add_metric calls in ``source``, and a problem for each metric call that cannot be read
    (a name that is not a literal, or a Powertools call the dashboard does not know)."""
    emitted: list[EmittedMetric] = []
    problems: list[str] = []
    for node in ast.walk(ast.parse(source, filename=where)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = (
            func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        )
        at = f"{where}:{node.lineno}"
        if called in UNREAD_METRIC_CALLS:
            problems.append(f"{at}: {called}(...) emits metrics this test cannot read")
        if called == "Metrics" and Path(where).name != "observability.py":
            problems.append(f"{at}: a second Metrics(...) (query_relay.observability holds the one)")
        if called != "add_metric":
            continue
        keywords = {keyword.arg: keyword.value for keyword in node.keywords}
        name_node = keywords.get("name", node.args[0] if node.args else None)
        unit_node = keywords.get("unit", node.args[1] if len(node.args) > 1 else None)
        if None in keywords or not (isinstance(name_node, ast.Constant) and isinstance(name_node.value, str)):
            problems.append(f"{at}: add_metric without a literal name: {ast.unparse(node)}")
            continue
        unit = unit_node.value if isinstance(unit_node, ast.Constant) else None
        emitted.append(EmittedMetric(name_node.value, str(unit) if unit is not None else None, at))
    return emitted, problems


def source_files() -> Iterator[Path]:
    for directory in SOURCE_DIRS:
        yield from sorted(directory.rglob("*.py"))


@pytest.fixture(scope="module")
def emitted() -> dict[str, list[EmittedMetric]]:
    """Every metric name the code emits, with where; fails on a metric call it cannot read."""
    found: dict[str, list[EmittedMetric]] = {}
    problems: list[str] = []
    for path in source_files():
        metrics, unreadable = metric_calls(path.read_text(), str(path.relative_to(ROOT)))
        problems += unreadable
        for metric in metrics:
            found.setdefault(metric.name, []).append(metric)
    if problems:
        pytest.fail("metric calls this test cannot read:\n" + "\n".join(problems))
    assert found, f"no add_metric call found under {[str(d) for d in SOURCE_DIRS]}"
    return found


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return dict(json.loads(json.dumps(decode_template(TEMPLATE_PATH))))


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return dict(template["Resources"])


def functions_of(resources: dict[str, Any]) -> dict[str, Any]:
    return {name: res for name, res in resources.items() if res["Type"] in FUNCTION_TYPES}


def alarms_of(resources: dict[str, Any]) -> dict[str, Any]:
    return {name: res for name, res in resources.items() if res["Type"] == ALARM}


def substitute(text: str, variables: dict[str, str], template: dict[str, Any], where: str) -> str:
    """``text`` as Fn::Sub would make it: each ${Name} must be a variable, a pseudo parameter, a
    parameter, a resource or a resource's attribute. Resources stand for their logical id."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in variables:
            return variables[name]
        if name in PSEUDO:
            return PSEUDO[name]
        if name in template.get("Parameters", {}):
            return str(template["Parameters"][name].get("Default", ""))
        target, _, attribute = name.partition(".")
        assert target in template["Resources"], f"{where}: ${{{name}}} names nothing in the template"
        return f"arn:test:{target}:{attribute}" if attribute else target

    return _SUB_VARIABLE.sub(replace, text).replace("${!", "${")


def referenced_resources(text: str, template: dict[str, Any]) -> set[str]:
    names = {match.group(1).partition(".")[0] for match in _SUB_VARIABLE.finditer(text)}
    return names & set(template["Resources"])


def resolve_variable(value: Any, conditions: dict[str, bool], template: dict[str, Any], where: str) -> str:
    """A variable of the dashboard's Fn::Sub: a string, a Fn::Sub, or a Fn::If of those."""
    if isinstance(value, str):
        return value
    (function, argument), *_ = value.items()
    if function == "Fn::If":
        condition, when_true, when_false = argument
        chosen = when_true if conditions[condition] else when_false
        if conditions[condition]:
            # A conditional resource may be named only under its own condition.
            for name in referenced_resources(json.dumps(when_true), template):
                assert template["Resources"][name].get("Condition") in (None, condition), (where, name)
        return resolve_variable(chosen, conditions, template, where)
    if function == "Fn::Sub":
        assert isinstance(argument, str), f"{where}: a nested Fn::Sub takes no variables here"
        return substitute(argument, {}, template, where)
    raise AssertionError(f"{where}: {function} is not read by this test")


def dashboard_body(template: dict[str, Any], *, consumer: bool) -> dict[str, Any]:
    """The dashboard's body as CloudWatch would receive it, with the sample consumer or without."""
    (dashboard,) = [
        res for res in template["Resources"].values() if res["Type"] == "AWS::CloudWatch::Dashboard"
    ]
    body = dashboard["Properties"]["DashboardBody"]
    text, raw_variables = (body["Fn::Sub"], {}) if isinstance(body["Fn::Sub"], str) else body["Fn::Sub"]
    conditions = {"CreateSampleConsumer": consumer}
    variables = {
        name: resolve_variable(value, conditions, template, f"DashboardBody.{name}")
        for name, value in raw_variables.items()
    }
    # The body itself names no conditional resource: those are only in the variables under Fn::If.
    conditional = {
        name for name in referenced_resources(text, template) if "Condition" in template["Resources"][name]
    }
    assert conditional == set(), (
        f"the dashboard body names conditional resources outside a Fn::If: {conditional}"
    )
    substituted = substitute(text, variables, template, "DashboardBody")
    try:
        return dict(json.loads(substituted))
    except json.JSONDecodeError as error:
        lines = substituted.splitlines()
        pytest.fail(f"DashboardBody is not JSON (consumer={consumer}): {error}\n{lines[error.lineno - 1]}")


def dashboard_metrics(body: dict[str, Any]) -> list[DashboardMetric]:
    """The metrics of every metric widget (expressions aside)."""
    found: list[DashboardMetric] = []
    for widget in body["widgets"]:
        if widget["type"] != "metric":
            continue
        title = widget["properties"]["title"]
        for entry in widget["properties"]["metrics"]:
            if len(entry) == 1 and "expression" in entry[0]:
                continue
            options = entry[-1] if isinstance(entry[-1], dict) else {}
            names = [item for item in entry if isinstance(item, str)]
            # The "." shorthand (same as the line above) is not used: each line reads on its own.
            assert "." not in names, f"{title}: spell every metric out, no '.' shorthand: {entry}"
            namespace, name, *pairs = names
            assert len(pairs) % 2 == 0, f"{title}: dimensions come in name, value pairs: {entry}"
            dimensions = dict(zip(pairs[::2], pairs[1::2], strict=True))
            found.append(DashboardMetric(namespace, name, dimensions, options, title))
    return found


@pytest.fixture(scope="module", params=[False, True], ids=["without-consumer", "with-consumer"])
def consumer(request: pytest.FixtureRequest) -> bool:
    """Whether the stack has the sample consumer (DeploySampleConsumer)."""
    return bool(request.param)


@pytest.fixture(scope="module")
def body(template: dict[str, Any], consumer: bool) -> dict[str, Any]:
    return dashboard_body(template, consumer=consumer)


def deployed_functions(resources: dict[str, Any], *, consumer: bool) -> set[str]:
    return {
        name
        for name, res in functions_of(resources).items()
        if consumer or res.get("Condition") != "CreateSampleConsumer"
    }


@pytest.fixture(scope="module")
def app_environment(template: dict[str, Any]) -> dict[str, Any]:
    """The functions' Globals environment, as the stack named PSEUDO's gets it."""
    variables = dict(template["Globals"]["Function"]["Environment"]["Variables"])
    return {
        name: PSEUDO[value["Ref"]] if isinstance(value, dict) and value.get("Ref") in PSEUDO else value
        for name, value in variables.items()
    }


# --- the metrics the code emits ----------------------------------------------------------------


def test_the_collector_refuses_a_metric_call_it_cannot_read() -> None:
    # Given calls a reader of literal names cannot follow
    source = (
        "metrics.add_metric(name='Fine', unit='Count', value=1)\n"
        "metrics.add_metric(name=NAME, unit='Count', value=1)\n"
        "metrics.add_metric(**fields)\n"
        "with single_metric(name='Other', unit='Count', value=1) as metric: ...\n"
    )
    emitted, problems = metric_calls(source, "example.py")
    # Then the literal one is read, and each other one is a problem
    assert [metric.name for metric in emitted] == ["Fine"]
    assert len(problems) == 3, problems


def test_the_code_names_no_service_or_namespace_and_the_template_gives_the_stacks_own(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    # Powertools reads both from the environment: observability creates Logger, Metrics and Tracer
    # with no arguments (one place, the template)
    tree = ast.parse(Path(observability.__file__).read_text())
    created = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in {"Logger", "Metrics", "Tracer"}
    ]
    assert sorted(node.func.id for node in created if isinstance(node.func, ast.Name)) == [
        "Logger",
        "Metrics",
        "Tracer",
    ]
    assert [(node.args, node.keywords) for node in created] == [([], [])] * 3
    # The service (each metric's one dimension) is the stack: two stacks in one account never add up
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["POWERTOOLS_SERVICE_NAME"] == {"Ref": "AWS::StackName"}
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == "QueryRelay"
    # and no function is given a service or namespace of its own
    overridden = [
        (name, variable)
        for name, res in functions_of(resources).items()
        for variable in ("POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_SERVICE_NAME")
        if variable in ((res["Properties"].get("Environment") or {}).get("Variables") or {})
    ]
    assert overridden == []


def test_the_code_emits_its_metrics_in_the_namespace_and_service_the_process_is_given() -> None:
    # tests/conftest.py gave this process the local stack's, as Lambda gives a function the template's
    from query_relay_local.template import LOCAL_STACK_NAME  # noqa: PLC0415

    assert observability.metrics.service == LOCAL_STACK_NAME
    assert observability.logger.service == LOCAL_STACK_NAME


def test_every_metric_the_code_emits_is_on_the_dashboard(
    emitted: dict[str, list[EmittedMetric]], body: dict[str, Any], app_environment: dict[str, Any]
) -> None:
    namespace = app_environment["POWERTOOLS_METRICS_NAMESPACE"]
    shown = {metric.name for metric in dashboard_metrics(body) if metric.namespace == namespace}
    missing = {name: [m.where for m in emitted[name]] for name in set(emitted) - shown}
    assert missing == {}, "emitted but not on the dashboard"


def test_every_metric_of_the_app_on_the_dashboard_is_one_the_code_emits_as_it_emits_it(
    emitted: dict[str, list[EmittedMetric]], body: dict[str, Any], app_environment: dict[str, Any]
) -> None:
    namespace = app_environment["POWERTOOLS_METRICS_NAMESPACE"]
    service = app_environment["POWERTOOLS_SERVICE_NAME"]
    app_metrics = [metric for metric in dashboard_metrics(body) if metric.namespace == namespace]
    stale = {(metric.widget, metric.name) for metric in app_metrics if metric.name not in emitted}
    assert stale == set(), "on the dashboard but emitted nowhere"
    # Powertools adds the one dimension service=<service>: a line with other dimensions stays empty
    wrong = {
        (m.widget, m.name, str(m.dimensions)) for m in app_metrics if m.dimensions != {"service": service}
    }
    assert wrong == set()


def test_the_dashboard_reads_its_metrics_with_a_statistic_that_suits_their_unit(
    emitted: dict[str, list[EmittedMetric]], body: dict[str, Any], app_environment: dict[str, Any]
) -> None:
    # Counts and bytes are added up (Sum), or counted (SampleCount: how many results landed)
    by_title = {widget["properties"].get("title"): widget["properties"] for widget in body["widgets"]}
    for metric in dashboard_metrics(body):
        if metric.namespace != app_environment["POWERTOOLS_METRICS_NAMESPACE"]:
            continue
        stat = metric.options.get("stat", by_title[metric.widget].get("stat"))
        units = {m.unit for m in emitted[metric.name]}
        assert units <= {"Count", "Bytes"}, (metric.name, units)
        assert stat in {"Sum", "SampleCount"}, (metric.widget, metric.name, stat)


# --- the dashboard's body ----------------------------------------------------------------------


def test_the_dashboard_body_is_json_and_its_widgets_fit_the_grid_without_overlapping(
    template: dict[str, Any], consumer: bool
) -> None:
    # Given the body CloudFormation substitutes (each ${...} a variable, parameter or resource)
    body = dashboard_body(template, consumer=consumer)
    cells: dict[tuple[int, int], str] = {}
    for widget in body["widgets"]:
        properties = widget["properties"]
        name = properties.get("title") or widget["type"]
        assert widget["x"] >= 0, name
        assert widget["x"] + widget["width"] <= 24, name
        if widget["type"] in {"metric", "log", "alarm"}:
            assert properties.get("title"), widget
        if widget["type"] in {"metric", "log"}:
            assert properties["region"] == PSEUDO["AWS::Region"], name
        for x in range(widget["x"], widget["x"] + widget["width"]):
            for y in range(widget["y"], widget["y"] + widget["height"]):
                assert (x, y) not in cells, f"{name} overlaps {cells[(x, y)]}"
                cells[(x, y)] = name


def test_each_expression_reads_metrics_of_its_own_widget(body: dict[str, Any]) -> None:
    for widget in body["widgets"]:
        if widget["type"] != "metric":
            continue
        lines = widget["properties"]["metrics"]
        ids = {line[-1]["id"] for line in lines if isinstance(line[-1], dict) and "id" in line[-1]}
        for line in lines:
            if len(line) == 1 and "expression" in line[0]:
                # identifiers are lower case; metric math functions (FILL, SUM) upper case
                used = set(re.findall(r"\b[a-z][A-Za-z0-9_]*\b", line[0]["expression"]))
                assert used, widget["properties"]["title"]
                assert used <= ids - {line[0]["id"]}, (widget["properties"]["title"], used, ids)


def test_the_dashboard_shows_the_state_machine_every_function_and_the_api(
    body: dict[str, Any], resources: dict[str, Any], consumer: bool
) -> None:
    metrics = dashboard_metrics(body)

    def shown(namespace: str, name: str, dimension: str) -> set[str]:
        return {m.dimensions[dimension] for m in metrics if (m.namespace, m.name) == (namespace, name)}

    # The state machine's executions, by outcome
    for outcome in ("Started", "Succeeded", "Failed", "TimedOut", "Aborted"):
        assert shown("AWS/States", f"Executions{outcome}", "StateMachineArn") == {"QueryStateMachine"}, (
            outcome
        )
    # Each function's errors, throttles and duration (the sample consumer's when it is deployed)
    deployed = deployed_functions(resources, consumer=consumer)
    for name in ("Errors", "Throttles"):
        assert shown("AWS/Lambda", name, "FunctionName") == deployed, name
    assert shown("AWS/Lambda", "Duration", "FunctionName") >= deployed - {"ManifestConsumerFunction"}
    # The API's stage: API Gateway names its metrics by the API's name (SAM: the stack's) and stage
    stage = resources["QueryApi"]["Properties"]["StageName"]
    api_lines = [m for m in metrics if m.namespace == "AWS/ApiGateway"]
    assert {m.name for m in api_lines} >= {"Count", "4XXError", "5XXError", "Latency"}
    assert {(m.dimensions["ApiName"], m.dimensions["Stage"]) for m in api_lines} == {
        (PSEUDO["AWS::StackName"], stage)
    }


def test_failed_jobs_by_error_name_reads_the_line_each_failed_job_logs(body: dict[str, Any]) -> None:
    # Given the line query_relay.workflow.undo logs for every failed job, its error name a field
    workflow = (ROOT / "layers" / "core" / "query_relay" / "workflow.py").read_text()
    assert re.search(
        r'logger\.warning\(\s*"job failed",\s*extra=failure\.model_dump\(include=\{[^}]*"error"', workflow
    )
    (widget,) = [w for w in body["widgets"] if w["properties"].get("title") == "Failed jobs by error name"]
    query = widget["properties"]["query"]
    # Then the widget counts that line by error, in the log of every function that logs it
    assert "filter message = 'job failed'" in query
    assert "stats count(*) as jobs by error" in query
    assert set(re.findall(r"SOURCE '/aws/lambda/([A-Za-z]+)'", query)) == JOB_FAILED_LOGGERS


def test_the_dashboard_shows_the_state_of_every_alarm(
    body: dict[str, Any], resources: dict[str, Any]
) -> None:
    (widget,) = [w for w in body["widgets"] if w["type"] == "alarm"]
    assert set(widget["properties"]["alarms"]) == {f"arn:test:{name}:Arn" for name in alarms_of(resources)}


def test_the_dashboard_is_named_for_its_stack(resources: dict[str, Any]) -> None:
    (dashboard,) = [res for res in resources.values() if res["Type"] == "AWS::CloudWatch::Dashboard"]
    # One dashboard per stack (dev and prod may share an account), and a name CloudWatch takes
    # for the longest stack name: 255 characters at most, letters, digits, '-' and '_'.
    assert dashboard["Properties"]["DashboardName"] == {"Ref": "AWS::StackName"}
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,255}", LONGEST_STACK_NAME)


# --- the alarms ----------------------------------------------------------------------------------


def test_each_alarm_watches_its_metric(resources: dict[str, Any]) -> None:
    for name, (namespace, metric, dimension, value) in SINGLE_METRIC_ALARMS.items():
        properties = resources[name]["Properties"]
        assert (properties["Namespace"], properties["MetricName"]) == (namespace, metric), name
        assert properties["Dimensions"] == [{"Name": dimension, "Value": value}], name
        assert properties["Statistic"] == "Sum", name
        assert properties["ComparisonOperator"] == "GreaterThanThreshold", name
    # The job counts have a threshold of their own; a timeout or an unannounced result is never expected
    assert resources["FailedJobsAlarm"]["Properties"]["Threshold"] == {"Ref": "FailedJobsAlarmThreshold"}
    assert resources["ExecutionsFailedAlarm"]["Properties"]["Threshold"] == {
        "Ref": "FailedJobsAlarmThreshold"
    }
    assert resources["ExecutionsTimedOutAlarm"]["Properties"]["Threshold"] == 0
    assert resources["ResultNotAnnouncedAlarm"]["Properties"]["Threshold"] == 0
    assert resources["TaskFunctionErrorsAlarm"]["Properties"]["Threshold"] == {
        "Ref": "TaskErrorsAlarmThreshold"
    }
    assert resources["UnexpectedFunctionErrorsAlarm"]["Properties"]["Threshold"] == 0
    assert resources[THROTTLES_ALARM]["Properties"]["Threshold"] == 0


def test_the_failed_jobs_alarm_watches_a_metric_the_code_emits(
    emitted: dict[str, list[EmittedMetric]], app_environment: dict[str, Any], template: dict[str, Any]
) -> None:
    namespace, metric, dimension, value = SINGLE_METRIC_ALARMS["FailedJobsAlarm"]
    assert metric in emitted
    assert namespace == app_environment["POWERTOOLS_METRICS_NAMESPACE"]
    assert (dimension, value) == (
        "service",
        template["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"],
    )


def test_the_unannounced_function_runs_only_when_a_result_was_not_announced(
    resources: dict[str, Any],
) -> None:
    # So that its invocations count the results not announced (ResultNotAnnouncedAlarm)
    function = resources["UnannouncedResultFunction"]["Properties"]
    assert "Events" not in function
    substitutions = resources["QueryStateMachine"]["Properties"]["DefinitionSubstitutions"]
    placeholders = {
        f"${{{key}}}"
        for key, value in substitutions.items()
        if value == {"Fn::GetAtt": ["UnannouncedResultFunction", "Arn"]}
    }
    definition = json.loads(ASL_PATH.read_text())
    invoking = [name for name, state in all_states(definition) if state.get("Resource") in placeholders]
    assert invoking == ["ReportNotAnnounced"]
    (caught,) = definition["States"]["PublishReady"]["Catch"]
    assert caught["Next"] == "ReportNotAnnounced"
    # and nothing else may invoke it: only the state machine's role names it
    granted = [
        name
        for name, res in resources.items()
        if res["Type"] in FUNCTION_TYPES | {"AWS::Serverless::StateMachine"}
        and "UnannouncedResultFunction" in json.dumps(res["Properties"].get("Policies", []))
    ]
    assert granted == ["QueryStateMachine"]


def test_every_alarm_notifies_the_topic_only_when_one_is_given(template: dict[str, Any]) -> None:
    parameter = template["Parameters"]["AlarmTopicArn"]
    assert parameter["Default"] == ""
    assert re.fullmatch(parameter["AllowedPattern"], "")
    assert re.fullmatch(
        parameter["AllowedPattern"], "arn:aws-us-gov:sns:us-gov-west-1:123456789012:query-relay-alarms"
    )
    assert template["Conditions"]["HasAlarmTopic"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]
    }
    notify = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
    alarms = alarms_of(template["Resources"])
    assert set(alarms) == {*SINGLE_METRIC_ALARMS, *ERRORS_ALARMS, THROTTLES_ALARM}
    for name, alarm in alarms.items():
        properties = alarm["Properties"]
        assert properties["AlarmActions"] == notify, name
        assert properties["OKActions"] == notify, name
        # Each watches a count that is only there when something happens: quiet is OK
        assert properties["TreatMissingData"] == "notBreaching", name
        assert properties["EvaluationPeriods"] >= 1, name
        assert "AlarmName" not in properties, f"{name}: CloudFormation names alarms after the stack"


def alarm_metrics(alarm: dict[str, Any], *, consumer: bool) -> tuple[str, dict[str, Any]]:
    """A metric math alarm's expression and its metrics by id, with the sample consumer or without."""
    expressions: list[str] = []
    metrics: dict[str, Any] = {}
    for declared in alarm["Properties"]["Metrics"]:
        query = declared
        if "Fn::If" in declared:
            condition, when_true, when_false = declared["Fn::If"]
            assert condition == "CreateSampleConsumer"
            query = when_true if consumer else when_false
            if query == {"Ref": "AWS::NoValue"}:
                continue
        if "Expression" in query:
            expression = query["Expression"]
            if isinstance(expression, dict):
                condition, when_true, when_false = expression["Fn::If"]
                assert condition == "CreateSampleConsumer"
                expression = when_true if consumer else when_false
            assert query["ReturnData"] is True
            expressions.append(expression)
        else:
            assert query["ReturnData"] is False
            metrics[query["Id"]] = query["MetricStat"]
    (expression,) = expressions
    return expression, metrics


def test_every_function_is_under_an_errors_alarm_and_the_throttles_alarm(
    resources: dict[str, Any], consumer: bool
) -> None:
    functions = deployed_functions(resources, consumer=consumer)
    covered: dict[str, list[str]] = {"Errors": [], "Throttles": []}
    for alarm_name in (*ERRORS_ALARMS, THROTTLES_ALARM):
        expression, metrics = alarm_metrics(resources[alarm_name], consumer=consumer)
        assert len(metrics) <= MAX_ALARM_METRICS, alarm_name
        # The expression adds up exactly the metrics the alarm reads under this condition
        assert set(re.findall(r"\b[a-z][A-Za-z0-9_]*\b", expression)) == set(metrics), alarm_name
        for stat in metrics.values():
            metric = stat["Metric"]
            assert metric["Namespace"] == "AWS/Lambda"
            assert stat["Stat"] == "Sum"
            ((dimension,),) = [metric["Dimensions"]]
            assert dimension["Name"] == "FunctionName"
            covered[metric["MetricName"]].append(dimension["Value"]["Ref"])
    # Then each function's errors are under exactly one errors alarm, its throttles under the throttles alarm
    assert sorted(covered["Errors"]) == sorted(functions)
    assert sorted(covered["Throttles"]) == sorted(functions)
    _, task_metrics = alarm_metrics(resources["TaskFunctionErrorsAlarm"], consumer=consumer)
    assert {
        stat["Metric"]["Dimensions"][0]["Value"]["Ref"] for stat in task_metrics.values()
    } == TASK_FUNCTIONS


def test_a_conditional_function_is_named_only_under_its_condition(resources: dict[str, Any]) -> None:
    conditional = {
        name: res["Condition"] for name, res in functions_of(resources).items() if "Condition" in res
    }
    for alarm_name in (*ERRORS_ALARMS, THROTTLES_ALARM):
        for query in resources[alarm_name]["Properties"]["Metrics"]:
            named = set(re.findall(r'"Ref": "([A-Za-z]+)"', json.dumps(query))) & set(conditional)
            if named:
                (function,) = named
                assert query["Fn::If"][0] == conditional[function], (alarm_name, function)


# --- README --------------------------------------------------------------------------------------


def test_the_readme_names_every_metric_alarm_and_parameter(
    emitted: dict[str, list[EmittedMetric]], template: dict[str, Any]
) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Dashboard and alarms", 1)[1]
    section = re.split(r"^#{1,3} ", section, maxsplit=1, flags=re.MULTILINE)[0]
    names = {
        *emitted,
        *alarms_of(template["Resources"]),
        "AlarmTopicArn",
        "FailedJobsAlarmThreshold",
        "TaskErrorsAlarmThreshold",
        "DashboardUrl",
    }
    assert {name for name in names if f"`{name}`" not in section} == set()
