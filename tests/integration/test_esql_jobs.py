"""ES|QL jobs through the whole state machine on the local stack, against the emulator over HTTP."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from query_relay_local.emulators.esql import EsqlEmulator
from query_relay_local.stack import LocalStack

from .conftest import ES_CONNECTION, ESQL_API_KEY, esql_connection, run_job
from .landed import landed_manifest, landed_rows, state_count

DEPARTMENTS_QUERY = "FROM employees | STATS n = COUNT(*), top = MAX(salary) BY department | SORT department"
EMPLOYEES_QUERY = (
    "FROM employees | WHERE salary > ? | KEEP emp_no, first_name, salary, hire_date | SORT emp_no"
)


def job(text: str, params: list[Any] | None = None, **changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "connection": ES_CONNECTION,
        "query": {"query": text, **({"params": params} if params is not None else {})},
        "polling": {"initial_seconds": 1, "max_seconds": 1, "timeout_seconds": 60},
    }
    spec.update(changes)
    return spec


def upstream_answer(emulator: EsqlEmulator, body: dict[str, Any]) -> dict[str, Any]:
    """What the emulator itself answers for a query: the expected rows."""
    saved, emulator.config.query_seconds = emulator.config.query_seconds, 0
    try:
        response = httpx.post(
            f"{emulator.base_url}/_query/async",
            json={**body, "wait_for_completion_timeout": "30s"},
            headers={"Authorization": f"ApiKey {ESQL_API_KEY}"},
        )
    finally:
        emulator.config.query_seconds = saved
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


def expected_rows(answer: dict[str, Any]) -> list[dict[str, Any]]:
    names = [column["name"] for column in answer["columns"]]
    return [dict(zip(names, values, strict=True)) for values in answer["values"]]


def esql_native_rows(text: str) -> list[dict[str, Any]]:
    """ES|QL's own JSON answer: columns, then rows of values."""
    document = json.loads(text)
    names = [column["name"] for column in document["columns"]]
    return [dict(zip(names, values, strict=True)) for values in document["values"]]


def rows_of(stack: LocalStack, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return landed_rows(stack, manifest, esql_native_rows)


def as_csv_strings(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    def text(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return [{name: text(value) for name, value in row.items()} for row in rows]


def test_a_query_finished_inside_the_submit_wait_runs_no_wait_state(
    stack: LocalStack, esql_emulator: EsqlEmulator
) -> None:
    # Given a query the emulator answers at once
    spec = job(DEPARTMENTS_QUERY, job_id="fast-path-1")
    # When the job runs
    final, history = run_job(stack, spec)
    # Then it succeeds without any Wait or Poll, and the manifest holds exactly the upstream's rows
    assert final["status"] == "SUCCEEDED", final
    assert state_count(history, "WaitStateEntered") == 0
    manifest = landed_manifest(stack, final)
    expected = expected_rows(upstream_answer(esql_emulator, {"query": DEPARTMENTS_QUERY}))
    assert rows_of(stack, manifest) == expected
    assert manifest["row_count"] == len(expected) > 0
    assert manifest["upstream_id"] is None  # nothing kept upstream on the fast path
    assert manifest["polls"] == 0
    assert manifest["columns"][0] == {"name": "n", "type": "long"}
    assert manifest["byte_count"] == sum(entry["bytes"] for entry in manifest["objects"])
    assert manifest["objects"][0]["key"].startswith("results/dt=")
    assert manifest["objects"][0]["key"].endswith("/fast-path-1/part-00000.jsonl")
    output = json.loads(final["output"])
    assert output == {
        "job_id": "fast-path-1",
        "status": "SUCCEEDED",
        "connection": ES_CONNECTION,
        "provider": "esql",
        "bucket": stack.bucket,
        "manifest_key": manifest["objects"][0]["key"].rsplit("/", 1)[0] + "/_manifest.json",
        "row_count": len(expected),
        "byte_count": manifest["byte_count"],
        "catalog": None,  # registered nowhere (no output.catalog)
        "polls": 0,
        "announced": True,
    }
    ready = [event for event in stack.events() if event["detail-type"] == "Query Result Ready"]
    assert [event["detail"]["job_id"] for event in ready] == ["fast-path-1"]
    assert ready[0]["detail"]["catalog"] is None
    assert ready[0]["detail"]["manifest_key"] == output["manifest_key"]
    assert ready[0]["detail"]["row_count"] == len(expected)


def test_a_slow_query_is_polled_until_finished_then_fetched(esql_emulator: EsqlEmulator) -> None:
    # Given a query that runs 5 s, a 1 s submit wait and 1 s long-polls (no long-poll covers it all)
    esql_emulator.config.query_seconds = 5
    params = [60000]
    overrides = {"SubmitWaitSeconds": "1", "LongPollMaxSeconds": "1"}
    with LocalStack(parameter_overrides=overrides) as stack:
        stack.load_connections({ES_CONNECTION: esql_connection(esql_emulator)})
        # When the job runs
        final, history = run_job(stack, job(EMPLOYEES_QUERY, params))
        # Then it waited and polled several times, fetched, and the rows are exactly the upstream's
        assert final["status"] == "SUCCEEDED", final
        manifest = landed_manifest(stack, final)
        assert manifest["polls"] >= 2
        assert state_count(history, "WaitStateEntered") == manifest["polls"]
        assert manifest["upstream_id"]
        expected = expected_rows(upstream_answer(esql_emulator, {"query": EMPLOYEES_QUERY, "params": params}))
        assert rows_of(stack, manifest) == expected
    # and the stored async result was released upstream once it was safely in S3
    assert esql_emulator.task_states()[manifest["upstream_id"]] == "deleted"


@pytest.mark.parametrize("output_format", ["jsonl", "csv", "native"])
@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_every_output_format_and_compression_holds_the_upstream_rows(
    stack: LocalStack, esql_emulator: EsqlEmulator, output_format: str, compression: str
) -> None:
    # Given a slow query (so Fetch, not Submit, writes the result) and an output choice
    esql_emulator.config.query_seconds = 3
    spec = job(EMPLOYEES_QUERY, [70000])
    spec["output"] = {"format": output_format, "compression": compression, "prefix": "exports/team-a/"}
    # When the job runs
    final, _ = run_job(stack, spec)
    # Then the objects hold the rows in that format
    assert final["status"] == "SUCCEEDED", final
    manifest = landed_manifest(stack, final)
    expected = expected_rows(upstream_answer(esql_emulator, {"query": EMPLOYEES_QUERY, "params": [70000]}))
    got = rows_of(stack, manifest)
    assert got == (as_csv_strings(expected) if output_format == "csv" else expected)
    assert manifest["row_count"] == len(expected)
    suffix = {"jsonl": ".jsonl", "csv": ".csv", "native": ".json"}[output_format]
    suffix += ".gz" if compression == "gzip" else ""
    assert all(entry["key"].startswith("exports/team-a/dt=") for entry in manifest["objects"])
    assert all(entry["key"].endswith(suffix) for entry in manifest["objects"])
    assert [column["name"] for column in manifest["columns"]] == [
        "emp_no",
        "first_name",
        "salary",
        "hire_date",
    ]


def test_a_bad_query_fails_with_a_named_error_and_leaves_no_output(
    stack: LocalStack, esql_emulator: EsqlEmulator
) -> None:
    final, _ = run_job(stack, job("FROM no_such_index | LIMIT 3", job_id="bad-query-1"))
    assert final["status"] == "FAILED"
    assert final["error"] == "UpstreamQueryFailed"
    assert "no_such_index" in final["cause"]
    assert "Traceback" not in final["cause"]
    assert list(stack.keys()) == []
    failed = [event for event in stack.events() if event["detail-type"] == "Query Failed"]
    assert failed[0]["detail"] == {
        "job_id": "bad-query-1",
        "connection": ES_CONNECTION,
        "provider": "esql",
        "error": "UpstreamQueryFailed",
        "cause": final["cause"],
    }


def test_transient_upstream_errors_are_retried_and_the_job_succeeds(
    stack: LocalStack, esql_emulator: EsqlEmulator
) -> None:
    # Given an upstream that answers 503 twice to the submit, and 429 once to a poll
    esql_emulator.config.query_seconds = 3
    esql_emulator.fail_next("submit", 503, times=2)
    esql_emulator.fail_next("get", 429, times=1, retry_after=1)
    # When the job runs
    final, history = run_job(stack, job(DEPARTMENTS_QUERY))
    # Then Submit was retried by the state machine and the job succeeded with the right rows
    assert final["status"] == "SUCCEEDED", final
    failed_attempts = [e for e in history if e["type"] == "LambdaFunctionFailed"]
    assert len(failed_attempts) == 2
    assert all(
        e["lambdaFunctionFailedEventDetails"]["error"] == "UpstreamUnavailable" for e in failed_attempts
    )
    manifest = landed_manifest(stack, final)
    assert rows_of(stack, manifest) == expected_rows(
        upstream_answer(esql_emulator, {"query": DEPARTMENTS_QUERY})
    )


def test_a_job_past_its_timeout_cancels_the_upstream_task_and_fails_query_timed_out(
    stack: LocalStack, esql_emulator: EsqlEmulator
) -> None:
    # Given a query that runs far longer than the job may
    esql_emulator.config.query_seconds = 120
    spec = job(DEPARTMENTS_QUERY, polling={"initial_seconds": 1, "max_seconds": 1, "timeout_seconds": 4})
    # When the job runs
    final, _ = run_job(stack, spec)
    # Then it fails QueryTimedOut and the upstream task was deleted
    assert final["status"] == "FAILED"
    assert final["error"] == "QueryTimedOut"
    states = esql_emulator.task_states()
    assert list(states.values()) == ["deleted"]
    assert list(stack.keys()) == []


def test_an_invalid_spec_started_directly_fails_invalid_job_spec_and_never_reaches_upstream(
    stack: LocalStack, esql_emulator: EsqlEmulator
) -> None:
    final, _ = run_job(stack, job(DEPARTMENTS_QUERY, output={"format": "orc"}))
    assert final["status"] == "FAILED"
    assert final["error"] == "InvalidJobSpec"
    assert "output.format" in final["cause"]
    assert list(esql_emulator.requests) == []


def test_an_unknown_connection_fails_connection_not_found(stack: LocalStack) -> None:
    final, _ = run_job(stack, job(DEPARTMENTS_QUERY, connection="es-nowhere"))
    assert final["status"] == "FAILED"
    assert final["error"] == "ConnectionNotFound"
    assert "es-nowhere" in final["cause"]


def test_wrong_credentials_fail_upstream_auth_failed_without_printing_the_key(
    stack: LocalStack, esql_emulator: EsqlEmulator
) -> None:
    wrong_key = "wrong-key-5f1e2d3c"
    stack.load_connections({"es-wrong": esql_connection(esql_emulator, api_key=wrong_key)})
    execution_arn = stack.start_job(job(DEPARTMENTS_QUERY, connection="es-wrong"))
    final = stack.wait(execution_arn, timeout=60)
    assert final["status"] == "FAILED"
    assert final["error"] == "UpstreamAuthFailed"
    everything = json.dumps(stack.history(execution_arn), default=str) + "\n".join(stack.logs)
    everything += json.dumps(stack.events())
    assert wrong_key not in everything
    assert ESQL_API_KEY not in everything


@pytest.mark.parametrize("allowed", [False, True], ids=["refused", "allowed"])
def test_a_partial_answer_fails_the_job_unless_the_spec_allows_partial_results(
    stack: LocalStack, esql_emulator: EsqlEmulator, allowed: bool
) -> None:
    # Given a running query that ES then stops early (its answer flagged is_partial: true)
    esql_emulator.config.query_seconds = 60
    spec = job(DEPARTMENTS_QUERY, job_id=f"partial-{allowed}".lower())
    if allowed:
        spec["query"]["allow_partial_results"] = True
    arn = stack.start_job(spec)
    deadline = time.monotonic() + 30
    while not esql_emulator.task_states():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (task_id,) = esql_emulator.task_states()
    stopped = httpx.post(
        f"{esql_emulator.base_url}/_query/async/{task_id}/stop",
        headers={"Authorization": f"ApiKey {ESQL_API_KEY}"},
    )
    assert stopped.status_code == 200
    final = stack.wait(arn, timeout=60)
    if not allowed:
        # Then, not allowed, the job fails named and nothing is left in S3
        assert (final["status"], final.get("error")) == ("FAILED", "UpstreamPartialResult")
        assert "allow_partial_results" in final["cause"]
        assert list(stack.keys()) == []
    else:
        # Then, allowed, it lands and its manifest says it is partial
        assert final["status"] == "SUCCEEDED", final
        assert landed_manifest(stack, final)["is_partial"] is True
