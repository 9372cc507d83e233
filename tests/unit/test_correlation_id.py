"""One job, one correlation id: every line a job's work logs carries the job id as Powertools'
``correlation_id``, in Submit, Poll, Fetch, Cleanup, UnannouncedResult, ExecutionStopped, the
consumer and the API (README "Logs: one job across every function"), and a warm function never
carries one job's id into the next invocation.

The handlers run as Lambda runs them (decorators included), one module per function kept for the
whole test module like a warm container, with the upstream, S3, Step Functions and EventBridge
replaced by fakes. Their log lines are read from the Powertools logger's own stream.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from query_relay import aws, workflow
from query_relay.api import jobs
from query_relay.exceptions import ConnectionNotFound
from query_relay.models import Manifest, parse_connection
from query_relay.observability import logger
from query_relay.providers import PollStatus, Submission, TabularResult
from query_relay.results import WrittenResult
from query_relay.settings import get_settings

ROOT = Path(__file__).resolve().parents[2]
CONNECTION = parse_connection(
    "es", {"provider": "esql", "base_url": "https://es.example", "auth": {"type": "api_key", "api_key": "k"}}
)
MACHINE = "arn:aws:states:us-east-1:123456789012:stateMachine:query-relay"
EXECUTION = "arn:aws:states:us-east-1:123456789012:execution:query-relay"
NOW = datetime(2026, 11, 25, 18, 0, tzinfo=UTC)

Lines = Callable[[], list[dict[str, Any]]]


# --- the functions, their context and their log ---------------------------------------------------


@pytest.fixture(scope="module")
def functions() -> dict[str, ModuleType]:
    """Each function's handler module, imported by path as Lambda does, once (warm)."""
    loaded: dict[str, ModuleType] = {}
    for name in ("submit", "poll", "fetch", "cleanup", "unannounced", "stopped", "consumer", "api"):
        spec = importlib.util.spec_from_file_location(
            f"correlation_{name}_app", ROOT / f"functions/{name}/app.py"
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        loaded[name] = module
    return loaded


def context(function: str, request_id: str) -> Any:
    return SimpleNamespace(
        function_name=function, memory_limit_in_mb=512, aws_request_id=request_id,
        invoked_function_arn=f"arn:aws:lambda:us-east-1:123456789012:function:{function}",
        get_remaining_time_in_millis=lambda: 60_000,
    )  # fmt: skip


@pytest.fixture
def log() -> Iterator[Lines]:
    """The JSON lines the Powertools logger writes from now on, read from its own stream (it holds
    the stdout of the moment it was created, so capsys would not see them)."""
    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    previous = handler.setStream(stream)
    logger.clear_state()  # no key of an earlier test outside a handler

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]

    try:
        yield lines
    finally:
        handler.setStream(previous)
        logger.clear_state()


def of_invocation(lines: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    """The lines one invocation (its Lambda request id) wrote; at least one."""
    written = [line for line in lines if line.get("function_request_id") == request_id]
    assert written, f"invocation {request_id} logged nothing"
    return written


def correlation_ids(lines: list[dict[str, Any]]) -> set[Any]:
    return {line.get("correlation_id") for line in lines}


# --- fakes: the upstream, S3, Step Functions, EventBridge ------------------------------------------


class FakeProvider:
    """An upstream whose task runs until polled once, then has an empty result."""

    long_polls = False
    can_cancel = True
    max_check_gap_seconds = None
    splits_results = False

    @contextmanager
    def submit(self, query: Any, options: Any) -> Iterator[Submission]:
        yield Submission(upstream_id="task-1", finished=False, state={})

    def poll(self, upstream_id: str, state: dict[str, Any], wait_seconds: float) -> PollStatus:
        return PollStatus(finished=True, detail="done")

    @contextmanager
    def fetch(self, upstream_id: str, state: dict[str, Any], output_format: str) -> Iterator[TabularResult]:
        yield TabularResult(columns=[], rows=iter(()))

    def cancel(self, upstream_id: str, state: dict[str, Any]) -> bool:
        return True

    def release(self, upstream_id: str, state: dict[str, Any]) -> None:
        return None

    def close(self) -> None:
        return None


class FakeWriter:
    bucket = "results"

    def write(self, prefix: str, result: Any, output: Any, **going_on: Any) -> WrittenResult:
        return WrittenResult(objects=[], columns=[], row_count=0, byte_count=0)

    def write_manifest(self, prefix: str, manifest: Manifest) -> str:
        return f"{prefix}_manifest.json"

    def discard(self, prefix: str) -> int:
        return 0


class ExecutionDoesNotExist(Exception):
    pass


class FakeSfn:
    """The Step Functions calls the API makes, over executions of the query machine by name."""

    exceptions = SimpleNamespace(ExecutionDoesNotExist=ExecutionDoesNotExist)

    def __init__(self) -> None:
        self.executions: dict[str, dict[str, Any]] = {}

    def add(self, name: str, status: str = "RUNNING") -> str:
        arn = f"{EXECUTION}:{name}"
        spec = {"job_id": name, "connection": "es", "query": {"query": "FROM x"}}
        self.executions[arn] = {
            "executionArn": arn, "name": name, "status": status, "startDate": NOW, "input": json.dumps(spec),
        }  # fmt: skip
        return arn

    def describe_execution(self, executionArn: str) -> dict[str, Any]:
        if executionArn not in self.executions:
            raise ExecutionDoesNotExist(executionArn)
        return self.executions[executionArn]

    def get_paginator(self, operation: str) -> Any:
        return SimpleNamespace(paginate=lambda **arguments: iter([{"events": []}]))

    def list_executions(self, **arguments: Any) -> dict[str, Any]:
        return {"executions": []}

    def start_execution(self, **arguments: Any) -> dict[str, Any]:
        return {"executionArn": self.add(arguments["name"])}


class FakeEvents:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.sent += Entries
        return {"FailedEntryCount": 0, "Entries": [{"EventId": "e-1"}]}


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The workflow's upstream and S3 are fakes; no control table, so no slots and no claims."""
    monkeypatch.setenv("RESULTS_BUCKET", "results")
    monkeypatch.delenv("CONTROL_TABLE", raising=False)
    get_settings.cache_clear()
    monkeypatch.setattr(workflow, "load_connection", lambda name: CONNECTION)
    monkeypatch.setattr(workflow, "validate_job", lambda name, connection, query: SimpleNamespace())
    monkeypatch.setattr(workflow, "open_provider", lambda name, connection: FakeProvider())
    monkeypatch.setattr(workflow, "_writer", FakeWriter)
    yield
    get_settings.cache_clear()  # no test after this one reads these settings


@pytest.fixture
def sfn(monkeypatch: pytest.MonkeyPatch, upstream: None) -> FakeSfn:
    fake = FakeSfn()
    monkeypatch.setattr(aws, "sfn", lambda: fake)
    monkeypatch.setattr(aws, "events", FakeEvents)
    monkeypatch.setattr(jobs, "load_connection", lambda name: CONNECTION)
    monkeypatch.setattr(jobs, "execution_arn", lambda job_id: f"{EXECUTION}:{job_id}")
    settings = SimpleNamespace(state_machine_arn=MACHINE, event_bus_name="bus", link_expiry_seconds=60)
    monkeypatch.setattr(jobs, "get_control_settings", lambda: settings)
    return fake


# --- the documents each function is handed -------------------------------------------------------


def spec(job_id: str) -> dict[str, Any]:
    return {"job_id": job_id, "connection": "es", "query": {"query": "FROM x"}}


def job_state(job_id: str, status: str = "RUNNING") -> dict[str, Any]:
    return {
        "job_id": job_id, "connection": "es", "provider": "esql", "upstream_id": "task-1", "status": status,
        "submitted_at": NOW.isoformat(), "deadline": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
    }  # fmt: skip


def step(job_id: str, status: str = "RUNNING") -> dict[str, Any]:
    """What Poll and Fetch are handed: the spec and the job state Submit (or a Poll) left."""
    return {"spec": spec(job_id), "execution": job_id, "job": job_state(job_id, status)}


def api_event(method: str, path: str, request_id: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "httpMethod": method, "path": path, "resource": path,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(body) if body is not None else None, "isBase64Encoded": False,
        "requestContext": {"requestId": request_id, "stage": "v1", "httpMethod": method, "path": path},
    }  # fmt: skip


# --- the workflow's functions ---------------------------------------------------------------------


@pytest.mark.usefixtures("upstream")
def test_every_line_of_a_job_s_submit_poll_fetch_and_cleanup_carries_its_id(
    functions: dict[str, ModuleType], log: Lines
) -> None:
    # When one job goes through Submit, Poll, Fetch, and a second one fails into Cleanup
    submitted = functions["submit"].lambda_handler(
        {"spec": spec("job-a"), "execution": "job-a", "job": None}, context("submit", "submit-1")
    )
    polled = functions["poll"].lambda_handler(step("job-a"), context("poll", "poll-1"))
    functions["fetch"].lambda_handler(step("job-a", polled["status"]), context("fetch", "fetch-1"))
    failure = functions["cleanup"].lambda_handler(
        {"spec": spec("job-b"), "execution": "job-b", "job": job_state("job-b"), "error": {"Error": "X"}},
        context("cleanup", "cleanup-1"),
    )
    # Then each invocation's lines all carry its job's id, as correlation id and as job_id
    lines = log()
    assert (submitted["status"], polled["status"], failure["error"]) == ("RUNNING", "FINISHED", "X")
    for request_id, job_id in (("submit-1", "job-a"), ("poll-1", "job-a"), ("fetch-1", "job-a")):
        written = of_invocation(lines, request_id)
        assert correlation_ids(written) == {job_id}, request_id
        assert {line["job_id"] for line in written} == {job_id}
    assert correlation_ids(of_invocation(lines, "cleanup-1")) == {"job-b"}
    assert {line["message"] for line in lines} >= {"submitted", "polled", "result landed", "job failed"}


@pytest.mark.usefixtures("upstream")
def test_a_warm_function_never_keeps_the_last_job_s_id(functions: dict[str, ModuleType], log: Lines) -> None:
    # Given one Poll container that polled job A, then job B
    functions["poll"].lambda_handler(step("job-a"), context("poll", "poll-a"))
    functions["poll"].lambda_handler(step("job-b"), context("poll", "poll-b"))
    # and one Cleanup container that cleaned up job A, then a job nothing names (no id known)
    functions["cleanup"].lambda_handler(
        {"spec": spec("job-a"), "execution": "job-a", "error": {"Error": "X"}},
        context("cleanup", "cleanup-a"),
    )
    functions["cleanup"].lambda_handler(
        {"spec": "not a spec", "execution": "", "error": {"Error": "X"}}, context("cleanup", "cleanup-none")
    )
    lines = log()
    # Then the second invocation of each logs no trace of job A
    assert correlation_ids(of_invocation(lines, "poll-a")) == {"job-a"}
    assert correlation_ids(of_invocation(lines, "poll-b")) == {"job-b"}
    assert correlation_ids(of_invocation(lines, "cleanup-a")) == {"job-a"}
    unnamed = of_invocation(lines, "cleanup-none")
    assert correlation_ids(unnamed) == {None}
    assert "job-a" not in json.dumps(unnamed)


@pytest.mark.usefixtures("upstream")
def test_a_result_that_could_not_be_announced_is_logged_under_its_job(
    functions: dict[str, ModuleType], log: Lines
) -> None:
    event = {"job_id": "job-c", "bucket": "results", "manifest_key": "k", "error": {"Error": "Boom"}}
    functions["unannounced"].lambda_handler(event, context("unannounced", "unannounced-1"))
    written = of_invocation(log(), "unannounced-1")
    assert correlation_ids(written) == {"job-c"}
    assert [line["level"] for line in written] == ["ERROR"]


# --- the API --------------------------------------------------------------------------------------


def test_a_request_about_a_job_is_logged_under_the_job_id_and_its_request_id(
    functions: dict[str, ModuleType], log: Lines, sfn: FakeSfn
) -> None:
    # Given a running job
    sfn.add("job-a")
    api = functions["api"].lambda_handler
    # When it is asked for, then a list is asked for, in the same warm container
    described = api(api_event("GET", "/queries/job-a", "gw-1"), context("api", "api-1"))
    listed = api(api_event("GET", "/queries", "gw-2"), context("api", "api-2"))
    assert (described["statusCode"], listed["statusCode"]) == (200, 200)
    lines = log()
    # Then the job's lines carry its id as correlation id, and API Gateway's request id as request_id
    about_the_job = of_invocation(lines, "api-1")
    assert correlation_ids(about_the_job) == {"job-a"}
    assert {line["request_id"] for line in about_the_job} == {"gw-1"}
    assert [line["message"] for line in about_the_job] == ["answered"]
    # and the list, about no job, keeps the request id as its correlation id, and no job id
    about_no_job = of_invocation(lines, "api-2")
    assert correlation_ids(about_no_job) == {"gw-2"}
    assert {line["request_id"] for line in about_no_job} == {"gw-2"}
    assert all("job_id" not in line for line in about_no_job)


def test_an_id_that_names_no_job_is_not_logged(
    functions: dict[str, ModuleType], log: Lines, sfn: FakeSfn
) -> None:
    asked = functions["api"].lambda_handler(
        api_event("GET", "/queries/no-such-job", "gw-3"), context("api", "api-3")
    )
    assert asked["statusCode"] == 404
    written = of_invocation(log(), "api-3")
    assert correlation_ids(written) == {"gw-3"}
    assert "no-such-job" not in json.dumps(written)


def test_a_started_job_and_a_refused_one_are_logged_under_their_job_ids(
    functions: dict[str, ModuleType], log: Lines, sfn: FakeSfn, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = functions["api"].lambda_handler
    started = api(api_event("POST", "/queries", "gw-4", spec("job-d")), context("api", "api-4"))
    generated = api(
        api_event("POST", "/queries", "gw-5", spec("job-e") | {"job_id": None}), context("api", "api-5")
    )

    def missing(name: str) -> Any:
        raise ConnectionNotFound(f"connection {name!r} not found")

    monkeypatch.setattr(jobs, "load_connection", missing)
    refused = api(api_event("POST", "/queries", "gw-6", spec("job-f")), context("api", "api-6"))
    assert (started["statusCode"], generated["statusCode"], refused["statusCode"]) == (202, 202, 404)
    lines = log()
    assert correlation_ids(of_invocation(lines, "api-4")) == {"job-d"}
    assert correlation_ids(of_invocation(lines, "api-5")) == {json.loads(generated["body"])["job_id"]}
    assert correlation_ids(of_invocation(lines, "api-6")) == {"job-f"}
    assert {line["request_id"] for line in of_invocation(lines, "api-6")} == {"gw-6"}


# --- the functions EventBridge invokes ------------------------------------------------------------


def test_a_stopped_execution_is_cleaned_up_under_its_job_id(
    functions: dict[str, ModuleType], log: Lines, sfn: FakeSfn
) -> None:
    # Given a job whose execution was stopped from the console
    arn = sfn.add("job-g", status="ABORTED")
    event = json.loads((ROOT / "events/execution_aborted.json").read_text())
    event["detail"] |= {"executionArn": arn, "name": "job-g"}
    # When the status change reaches the ExecutionStopped function
    answer = functions["stopped"].lambda_handler(event, context("stopped", "stopped-1"))
    # Then it cleaned up, and its lines name the execution and, from the cleanup on, the job
    assert answer["cleaned_up"] is True
    written = of_invocation(log(), "stopped-1")
    assert {line["execution_arn"] for line in written} == {arn}
    assert [(line["message"], line.get("correlation_id")) for line in written] == [("job failed", "job-g")]


def test_the_consumer_logs_a_result_under_its_job_id(
    functions: dict[str, ModuleType], log: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = Manifest(
        job_id="job-h", connection="es", provider="esql", upstream_id="task-1", format="jsonl",
        compression="none", row_count=7, byte_count=70, columns=[], objects=[],
        submitted_at=NOW, completed_at=NOW, polls=1,
    )  # fmt: skip
    body = io.BytesIO(manifest.model_dump_json().encode())
    s3 = SimpleNamespace(get_object=lambda Bucket, Key: {"Body": body})
    monkeypatch.setattr(aws, "s3", lambda: s3)
    event = json.loads((ROOT / "events/manifest_created.json").read_text())

    answer = functions["consumer"].lambda_handler(event, context("consumer", "consumer-1"))

    assert answer == {"job_id": "job-h", "row_count": 7, "keys": []}
    written = of_invocation(log(), "consumer-1")
    assert [(line["message"], line["correlation_id"], line["job_id"]) for line in written] == [
        ("result ready", "job-h", "job-h")
    ]
