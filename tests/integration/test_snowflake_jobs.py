"""Snowflake jobs through the whole state machine on the local stack (IAM enforced, as on AWS),
against the Snowflake emulator over HTTP: key-pair JWTs, typed rows from many gzipped partitions
in every output format, a statement polled until done, one statement however often Submit is
retried, failures with their SQL state, cancel on timeout, and no secret anywhere.

Fixtures: ``snowflake_emulator`` (a started ``SnowflakeEmulator`` that knows the test key) and
``snowflake_stack`` (a started ``LocalStack`` with the connection ``snowflake-local``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from query_relay_local.emulators import warehouse
from query_relay_local.emulators.snowflake import SnowflakeEmulator
from query_relay_local.stack import LocalStack

from ..conformance.harness_snowflake import as_landed, private_key, private_key_pem, public_key_pem
from .landed import as_json, csv_text, failed_events, landed_manifest, landed_rows, state_count

SNOWFLAKE_CONNECTION = "snowflake-local"
ACCOUNT, USER = "integration", "relay_loader"
STATEMENT = "SELECT * FROM all_types ORDER BY id"
NUMBERS = "SELECT n, square, label, ratio FROM numbers WHERE n <= 3000 ORDER BY n"


@pytest.fixture
def snowflake_emulator() -> Iterator[SnowflakeEmulator]:
    with SnowflakeEmulator(
        account=ACCOUNT, user=USER, public_key_pem=public_key_pem(private_key())
    ) as emulator:
        yield emulator


def snowflake_connection(emulator: SnowflakeEmulator, key_pem: str | None = None) -> dict[str, Any]:
    return {
        "provider": "snowflake",
        "base_url": emulator.base_url,
        "auth": {
            "type": "key_pair",
            "account": ACCOUNT,
            "user": USER,
            "private_key": key_pem or private_key_pem(private_key()),
        },
    }


@pytest.fixture
def snowflake_stack(snowflake_emulator: SnowflakeEmulator) -> Iterator[LocalStack]:
    with LocalStack() as stack:
        stack.load_connections({SNOWFLAKE_CONNECTION: snowflake_connection(snowflake_emulator)})
        yield stack


def job(statement: str, **changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "connection": SNOWFLAKE_CONNECTION,
        "query": {"statement": statement, "warehouse": "COMPUTE_WH"},
        "polling": {"initial_seconds": 1, "max_seconds": 1, "timeout_seconds": 60},
    }
    spec.update(changes)
    return spec


def expected_rows(statement: str) -> list[dict[str, Any]]:
    result = warehouse.execute(statement)
    return [
        {
            column.name.upper(): as_landed(column, value)
            for column, value in zip(result.columns, row, strict=True)
        }
        for row in result.rows
    ]


def native_rows(text: str) -> list[dict[str, Any]]:
    """A native object holds each partition's JSON on its own line: rows as Snowflake's text values."""
    documents = [json.loads(line) for line in text.splitlines()]
    names = [column["name"] for column in documents[0]["resultSetMetaData"]["rowType"]]
    return [dict(zip(names, row, strict=True)) for document in documents for row in document["data"]]


# --- results -------------------------------------------------------------------------------------


def test_every_type_lands_typed_through_the_state_machine(
    snowflake_stack: LocalStack, snowflake_emulator: SnowflakeEmulator
) -> None:
    # Given a statement over every Snowflake type, answered at once
    # When the job runs
    final, history = snowflake_stack.run_job(job(STATEMENT, job_id="snowflake-types-1"), timeout=60)
    # Then Submit saw it finished, Fetch landed the rows typed, the manifest names Snowflake's types
    assert final["status"] == "SUCCEEDED", final
    assert state_count(history, "WaitStateEntered") == 0
    manifest = landed_manifest(snowflake_stack, final)
    rows = landed_rows(snowflake_stack, manifest, native_rows)
    assert rows == as_json(expected_rows(STATEMENT))
    assert manifest["provider"] == "snowflake"
    # (FIXED with its precision and scale, which its type does not name: a Parquet column needs them)
    assert manifest["columns"][:3] == [
        {"name": "ID", "type": "fixed", "precision": 38, "scale": 0},
        {"name": "C_INTEGER", "type": "fixed", "precision": 38, "scale": 0},
        {"name": "C_DECIMAL", "type": "fixed", "precision": 12, "scale": 4},
    ]
    assert snowflake_emulator.statement_states()[manifest["upstream_id"]] == "succeeded"


@pytest.mark.parametrize(
    ("output_format", "compression"), [("jsonl", "gzip"), ("csv", "none"), ("native", "gzip")]
)
def test_a_result_of_many_partitions_lands_whole_in_every_format(
    snowflake_stack: LocalStack, snowflake_emulator: SnowflakeEmulator, output_format: str, compression: str
) -> None:
    # Given 3,000 rows in 24 partitions of 125 (partitions after the first gzipped on the wire)
    snowflake_emulator.config.partition_rows = 125
    spec = job(NUMBERS, output={"format": output_format, "compression": compression})
    # When the job runs
    final, _ = snowflake_stack.run_job(spec, timeout=90)
    # Then every row landed once, in order, in the format asked for
    assert final["status"] == "SUCCEEDED", final
    manifest = landed_manifest(snowflake_stack, final)
    rows = landed_rows(snowflake_stack, manifest, native_rows)
    assert manifest["row_count"] == 3000
    expected = expected_rows(NUMBERS)
    if output_format == "jsonl":
        assert rows == expected
    elif output_format == "csv":
        assert rows == [{name: csv_text(value) for name, value in row.items()} for row in expected]
    else:
        assert [row["N"] for row in rows] == [str(n) for n in range(1, 3001)]
    partitions = [
        request.query["partition"] for request in snowflake_emulator.requests if "partition" in request.query
    ]
    assert partitions == [str(number) for number in range(1, 24)]


def test_a_slow_statement_is_polled_until_done(snowflake_emulator: SnowflakeEmulator) -> None:
    snowflake_emulator.config.query_seconds = 4
    with LocalStack(parameter_overrides={"SubmitWaitSeconds": "1", "LongPollMaxSeconds": "1"}) as stack:
        stack.load_connections({SNOWFLAKE_CONNECTION: snowflake_connection(snowflake_emulator)})
        final, history = stack.run_job(job("SELECT id, name FROM employees ORDER BY id"), timeout=60)
        assert final["status"] == "SUCCEEDED", final
        manifest = landed_manifest(stack, final)
        assert manifest["polls"] >= 2
        assert state_count(history, "WaitStateEntered") == manifest["polls"]
        assert manifest["row_count"] == 36


def test_a_submit_retried_after_a_lost_answer_starts_one_statement(
    snowflake_stack: LocalStack, snowflake_emulator: SnowflakeEmulator
) -> None:
    # Given an upstream whose first submit answer is cut off after the statement started
    snowflake_emulator.fail_next("submit", reset=True)
    # When the job runs (the state machine retries Submit)
    final, history = snowflake_stack.run_job(job("SELECT 1 AS one"), timeout=60)
    # Then the retry carried the same requestId and got the same statement: one ran upstream
    assert final["status"] == "SUCCEEDED", final
    assert any(event["type"] == "LambdaFunctionFailed" for event in history)
    request_ids = {
        request.query.get("requestId") for request in snowflake_emulator.requests if request.method == "POST"
    }
    assert len(request_ids) == 1
    assert None not in request_ids
    assert snowflake_emulator.statements_started == 1


# --- failures ------------------------------------------------------------------------------------


def test_a_statement_snowflake_refuses_fails_with_its_sql_state_and_leaves_nothing(
    snowflake_stack: LocalStack,
) -> None:
    final, _ = snowflake_stack.run_job(
        job("SELECT * FROM no_such_table", job_id="snowflake-bad-1"), timeout=60
    )
    assert final["status"] == "FAILED"
    assert final["error"] == "UpstreamQueryFailed"
    assert "SQL state 42S02" in final["cause"]
    assert list(snowflake_stack.keys()) == []
    assert [detail["job_id"] for detail in failed_events(snowflake_stack)] == ["snowflake-bad-1"]


def test_a_job_past_its_timeout_cancels_the_statement(
    snowflake_stack: LocalStack, snowflake_emulator: SnowflakeEmulator
) -> None:
    snowflake_emulator.config.query_seconds = 120
    spec = job("SELECT 1 AS one", polling={"initial_seconds": 1, "max_seconds": 1, "timeout_seconds": 4})
    final, _ = snowflake_stack.run_job(spec, timeout=60)
    assert final["status"] == "FAILED"
    assert final["error"] == "QueryTimedOut"
    assert list(snowflake_emulator.statement_states().values()) == ["canceled"]
    assert any(request.path.endswith("/cancel") for request in snowflake_emulator.requests)


def test_no_secret_appears_in_history_logs_or_events(
    snowflake_stack: LocalStack, snowflake_emulator: SnowflakeEmulator
) -> None:
    # Given one good job and one whose connection holds a key Snowflake does not know
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

    wrong = private_key_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    snowflake_stack.load_connections({"snowflake-wrong": snowflake_connection(snowflake_emulator, wrong)})
    good = snowflake_stack.start_job(job("SELECT id FROM employees"))
    bad = snowflake_stack.start_job(job("SELECT id FROM employees", connection="snowflake-wrong"))
    assert snowflake_stack.wait(good, timeout=60)["status"] == "SUCCEEDED"
    refused = snowflake_stack.wait(bad, timeout=60)
    assert refused["status"] == "FAILED"
    assert refused["error"] == "UpstreamAuthFailed"
    everything = json.dumps([snowflake_stack.history(good), snowflake_stack.history(bad)], default=str)
    everything += (
        "\n".join(snowflake_stack.logs)
        + json.dumps(snowflake_stack.events())
        + json.dumps(refused, default=str)
    )
    for pem in (wrong, private_key_pem(private_key())):
        body = "".join(pem.splitlines()[1:-1])
        assert body[:40] not in everything.replace("\\n", "")
        assert pem.splitlines()[1] not in everything


def test_csv_of_every_type(snowflake_stack: LocalStack) -> None:
    final, _ = snowflake_stack.run_job(job(STATEMENT, output={"format": "csv"}), timeout=60)
    assert final["status"] == "SUCCEEDED", final
    manifest = landed_manifest(snowflake_stack, final)
    text = b"".join(
        snowflake_stack.s3.get_object(Bucket=snowflake_stack.bucket, Key=entry["key"])["Body"].read()
        for entry in manifest["objects"]
    ).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 5
    assert rows[0]["C_TIMESTAMP_TZ"] == "2024-05-06T12:34:56.500000000+02:00"
    assert rows[0]["C_BINARY"] == "0001FEFF"
