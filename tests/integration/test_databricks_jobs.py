"""Databricks jobs through the whole state machine on the local stack (IAM enforced, as on AWS),
against the Databricks emulator over HTTP: OAuth M2M and personal access tokens, typed rows from
many chunks fetched through external links (another origin, no Authorization) in every output
format, a statement polled until done, a failed statement with its SQL state, a truncated result
refused or landed as partial, cancel on timeout, and no secret anywhere.

Fixtures: ``databricks_emulator`` (a started ``DatabricksEmulator`` knowing a service principal
and a PAT) and ``databricks_stack`` (a started ``LocalStack`` with the connection
``databricks-local``, OAuth M2M).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from query_relay_local.emulators import warehouse
from query_relay_local.emulators.databricks import WAREHOUSE_ID, DatabricksEmulator
from query_relay_local.stack import LocalStack

from ..conformance.harness_databricks import as_landed
from .landed import as_json, csv_text, failed_events, landed_manifest, landed_rows, state_count

DATABRICKS_CONNECTION = "databricks-local"
CLIENT_ID, CLIENT_SECRET = "relay-service-principal", "integration-sp-secret-5c7e9a21"
PAT = "dapi-integration-pat-0b8d4e6f"
STATEMENT = "SELECT * FROM all_types ORDER BY id"
NUMBERS = "SELECT n, square, label, ratio FROM numbers WHERE n <= 4000 ORDER BY n"


@pytest.fixture
def databricks_emulator() -> Iterator[DatabricksEmulator]:
    with DatabricksEmulator(token=PAT, client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as emulator:
        yield emulator


def databricks_connection(emulator: DatabricksEmulator, secret: str = CLIENT_SECRET) -> dict[str, Any]:
    auth = {"type": "client_credentials", "client_id": CLIENT_ID, "client_secret": secret}
    return {"provider": "databricks", "base_url": emulator.base_url, "auth": auth}


def pat_connection(emulator: DatabricksEmulator, token: str = PAT) -> dict[str, Any]:
    return {
        "provider": "databricks",
        "base_url": emulator.base_url,
        "auth": {"type": "bearer", "token": token},
    }


@pytest.fixture
def databricks_stack(databricks_emulator: DatabricksEmulator) -> Iterator[LocalStack]:
    with LocalStack() as stack:
        stack.load_connections({DATABRICKS_CONNECTION: databricks_connection(databricks_emulator)})
        yield stack


def job(statement: str, **changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "connection": DATABRICKS_CONNECTION,
        "query": {"statement": statement, "warehouse_id": WAREHOUSE_ID},
        "polling": {"initial_seconds": 1, "max_seconds": 1, "timeout_seconds": 60},
    }
    spec.update(changes)
    return spec


def expected_rows(statement: str) -> list[dict[str, Any]]:
    result = warehouse.execute(statement)
    return [
        {column.name: as_landed(column, value) for column, value in zip(result.columns, row, strict=True)}
        for row in result.rows
    ]


def native_rows(text: str) -> list[dict[str, Any]]:
    """A native object holds each chunk's JSON array as downloaded, one a line: rows of text."""
    return [{"n": row[0]} for line in text.splitlines() for row in json.loads(line)]


def storage_requests(emulator: DatabricksEmulator) -> list[Any]:
    return [request for request in emulator.requests if request.path.startswith("/storage/")]


# --- results -------------------------------------------------------------------------------------


def test_every_type_lands_typed_through_the_state_machine(
    databricks_stack: LocalStack, databricks_emulator: DatabricksEmulator
) -> None:
    # Given a statement over every type, answered inside the submit's wait
    # When the job runs
    final, history = databricks_stack.run_job(job(STATEMENT, job_id="databricks-types-1"), timeout=60)
    # Then no Wait state ran, the rows landed typed, the manifest names Databricks' types
    assert final["status"] == "SUCCEEDED", final
    assert state_count(history, "WaitStateEntered") == 0
    manifest = landed_manifest(databricks_stack, final)
    rows = landed_rows(databricks_stack, manifest, native_rows)
    assert rows == as_json(expected_rows(STATEMENT))
    assert manifest["provider"] == "databricks"
    assert {"name": "c_decimal", "type": "DECIMAL(12,4)"} in manifest["columns"]
    assert databricks_emulator.statement_states()[manifest["upstream_id"]] == "succeeded"
    assert databricks_emulator.token_requests == 1  # one OAuth token for Submit and Fetch


@pytest.mark.parametrize(
    ("output_format", "compression"), [("jsonl", "gzip"), ("csv", "none"), ("native", "none")]
)
def test_a_result_of_40_chunks_lands_whole_through_external_links(
    databricks_stack: LocalStack,
    databricks_emulator: DatabricksEmulator,
    output_format: str,
    compression: str,
) -> None:
    # Given 4,000 rows in 40 chunks of 100, each served by a link on another origin
    databricks_emulator.config.chunk_rows = 100
    spec = job(NUMBERS, output={"format": output_format, "compression": compression})
    # When the job runs
    final, _ = databricks_stack.run_job(spec, timeout=90)
    # Then every row landed once, in order, and every link was fetched without credentials
    assert final["status"] == "SUCCEEDED", final
    manifest = landed_manifest(databricks_stack, final)
    rows = landed_rows(databricks_stack, manifest, native_rows)
    assert manifest["row_count"] == 4000
    expected = expected_rows(NUMBERS)
    if output_format == "jsonl":
        assert rows == expected
    elif output_format == "csv":
        assert rows == [{name: csv_text(value) for name, value in row.items()} for row in expected]
    else:
        assert [row["n"] for row in rows] == [str(n) for n in range(1, 4001)]
    assert len(storage_requests(databricks_emulator)) == 40


def test_a_slow_statement_is_polled_until_done(databricks_emulator: DatabricksEmulator) -> None:
    databricks_emulator.config.query_seconds = 4
    with LocalStack(parameter_overrides={"SubmitWaitSeconds": "1", "LongPollMaxSeconds": "1"}) as stack:
        stack.load_connections({DATABRICKS_CONNECTION: pat_connection(databricks_emulator)})
        final, history = stack.run_job(job("SELECT id, name FROM employees ORDER BY id"), timeout=60)
        assert final["status"] == "SUCCEEDED", final
        manifest = landed_manifest(stack, final)
        assert manifest["polls"] >= 1
        assert state_count(history, "WaitStateEntered") == manifest["polls"]
        assert manifest["row_count"] == 36


# --- failures ------------------------------------------------------------------------------------


def test_a_failed_statement_fails_the_job_with_its_sql_state_and_leaves_nothing(
    databricks_stack: LocalStack,
) -> None:
    final, _ = databricks_stack.run_job(
        job("SELECT * FROM no_such_table", job_id="databricks-bad-1"), timeout=60
    )
    assert final["status"] == "FAILED"
    assert final["error"] == "UpstreamQueryFailed"
    assert "42P01" in final["cause"]
    assert list(databricks_stack.keys()) == []
    assert [detail["job_id"] for detail in failed_events(databricks_stack)] == ["databricks-bad-1"]


def test_a_truncated_result_fails_unless_the_job_lands_partial_results(
    databricks_stack: LocalStack, databricks_emulator: DatabricksEmulator
) -> None:
    # Given results Databricks cuts at 25 rows (as it cuts at 100 GiB)
    databricks_emulator.config.truncate_after_rows = 25
    # When one job refuses partial results and one opts in
    refused, _ = databricks_stack.run_job(job("SELECT id FROM employees ORDER BY id"), timeout=60)
    opted_in = job("SELECT id FROM employees ORDER BY id")
    opted_in["query"]["allow_partial_results"] = True
    landed, _ = databricks_stack.run_job(opted_in, timeout=60)
    # Then the first fails UpstreamPartialResult with nothing landed, the second lands 25 rows marked partial
    assert refused["status"] == "FAILED"
    assert refused["error"] == "UpstreamPartialResult"
    assert landed["status"] == "SUCCEEDED", landed
    manifest = landed_manifest(databricks_stack, landed)
    assert manifest["is_partial"] is True
    assert manifest["row_count"] == 25


def test_a_job_past_its_timeout_cancels_the_statement(
    databricks_stack: LocalStack, databricks_emulator: DatabricksEmulator
) -> None:
    databricks_emulator.config.query_seconds = 120
    spec = job("SELECT 1 AS one", polling={"initial_seconds": 1, "max_seconds": 1, "timeout_seconds": 4})
    final, _ = databricks_stack.run_job(spec, timeout=60)
    assert final["status"] == "FAILED"
    assert final["error"] == "QueryTimedOut"
    assert list(databricks_emulator.statement_states().values()) == ["canceled"]


def test_no_secret_appears_in_history_logs_or_events(
    databricks_stack: LocalStack, databricks_emulator: DatabricksEmulator
) -> None:
    # Given one good job and one whose service principal's secret is wrong
    wrong = "wrong-databricks-secret-7e1a90c4"
    databricks_stack.load_connections({"databricks-wrong": databricks_connection(databricks_emulator, wrong)})
    good = databricks_stack.start_job(job("SELECT id FROM employees"))
    bad = databricks_stack.start_job(job("SELECT id FROM employees", connection="databricks-wrong"))
    assert databricks_stack.wait(good, timeout=60)["status"] == "SUCCEEDED"
    refused = databricks_stack.wait(bad, timeout=60)
    assert refused["status"] == "FAILED"
    assert refused["error"] == "UpstreamAuthFailed"
    everything = json.dumps([databricks_stack.history(good), databricks_stack.history(bad)], default=str)
    everything += (
        "\n".join(databricks_stack.logs)
        + json.dumps(databricks_stack.events())
        + json.dumps(refused, default=str)
    )
    for secret in (wrong, CLIENT_SECRET, *databricks_emulator.issued_tokens()):
        assert secret not in everything
    assert databricks_emulator.issued_tokens()  # a token was issued, so it was searched for
