"""Looker jobs through the whole state machine on the local stack, against the Looker emulator over
HTTP: several polls, every output format, a failing query, a timeout that kills the task,
transient errors, and no secret of the connection anywhere."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from query_relay_local.emulators.looker import LookerEmulator
from query_relay_local.stack import LocalStack

from .conftest import run_job
from .landed import landed_manifest, landed_rows, state_count

LOOKER_CONNECTION = "looker-local"
LOOKER_CLIENT_ID = "integration-looker-client"
# A test value, distinctive so that security tests can look for it in logs, events and outputs.
LOOKER_CLIENT_SECRET = "integration-looker-secret-6e2b90d4"
BY_COUNTRY: dict[str, Any] = {
    "model": "ecommerce",
    "view": "orders",
    "fields": ["users.country", "orders.count", "orders.total_revenue"],
    "filters": {"orders.status": "Complete,Shipped"},
    "sorts": ["users.country"],
}
BAD_FIELD: dict[str, Any] = {
    "model": "ecommerce",
    "view": "orders",
    "fields": ["orders.status", "orders.nope"],
}
SLOW = {"SubmitWaitSeconds": "1", "LongPollMaxSeconds": "1"}


def looker_connection(emulator: LookerEmulator, secret: str = LOOKER_CLIENT_SECRET) -> dict[str, Any]:
    return {
        "provider": "looker",
        "base_url": emulator.base_url,
        "auth": {"type": "client_credentials", "client_id": LOOKER_CLIENT_ID, "client_secret": secret},
    }


@pytest.fixture
def looker_emulator() -> Iterator[LookerEmulator]:
    with LookerEmulator(client_id=LOOKER_CLIENT_ID, client_secret=LOOKER_CLIENT_SECRET) as emulator:
        yield emulator


@pytest.fixture
def looker_stack(looker_emulator: LookerEmulator) -> Iterator[LocalStack]:
    with LocalStack() as started:
        started.load_connections({LOOKER_CONNECTION: looker_connection(looker_emulator)})
        yield started


def job(query: dict[str, Any], **changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "connection": LOOKER_CONNECTION,
        "query": query,
        "polling": {"initial_seconds": 1, "max_seconds": 1, "timeout_seconds": 60},
    }
    spec.update(changes)
    return spec


def upstream_result(emulator: LookerEmulator, query: dict[str, Any], result_format: str) -> str:
    """What the emulator itself answers for the query (``GET /queries/{id}/run/{format}``)."""
    api = f"{emulator.base_url}/api/4.0"
    login = httpx.post(
        f"{api}/login", data={"client_id": LOOKER_CLIENT_ID, "client_secret": LOOKER_CLIENT_SECRET}
    )
    headers = {"Authorization": f"token {login.json()['access_token']}"}
    answer = httpx.get(f"{api}/queries/{emulator.create_query(query)}/run/{result_format}", headers=headers)
    answer.raise_for_status()
    return answer.text


def rows_of(stack: LocalStack, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    # native: Looker's own json, an array of row objects
    return landed_rows(stack, manifest, json.loads)


def test_a_slow_query_is_polled_until_complete_then_fetched(looker_emulator: LookerEmulator) -> None:
    # Given a query that runs 5 s, a 1 s submit wait and 1 s polls
    looker_emulator.config.query_seconds = 5
    with LocalStack(parameter_overrides=SLOW) as stack:
        stack.load_connections({LOOKER_CONNECTION: looker_connection(looker_emulator)})
        # When the job runs
        final, history = run_job(stack, job(BY_COUNTRY, job_id="looker-slow-1"))
        # Then it waited and polled, fetched, and the rows are exactly the upstream's
        assert final["status"] == "SUCCEEDED", final
        manifest = landed_manifest(stack, final)
        assert manifest["polls"] >= 2
        assert state_count(history, "WaitStateEntered") >= 2
        assert re.fullmatch(r"[0-9a-f]{32}", manifest["upstream_id"])
        assert manifest["provider"] == "looker"
        expected = json.loads(upstream_result(looker_emulator, BY_COUNTRY, "json"))
        assert rows_of(stack, manifest) == expected
        assert manifest["row_count"] == len(expected) > 0
        assert manifest["columns"] == [
            {"name": "users.country", "type": "string"},
            {"name": "orders.count", "type": "number"},
            {"name": "orders.total_revenue", "type": "number"},
        ]
        assert manifest["byte_count"] == sum(entry["bytes"] for entry in manifest["objects"])
    # and the warm process logged in to Looker once for Submit, every Poll and Fetch
    logins = [entry for entry in looker_emulator.requests if entry.path.endswith("/login")]
    assert len(logins) == 2  # the provider's, and upstream_result's own
    assert looker_emulator.task_states()[manifest["upstream_id"]] == "complete"


@pytest.mark.parametrize("output_format", ["jsonl", "csv", "native"])
@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_every_output_format_and_compression_holds_the_upstream_rows(
    looker_stack: LocalStack, looker_emulator: LookerEmulator, output_format: str, compression: str
) -> None:
    # Given an output choice (csv asks Looker for its csv, the others for json)
    spec = job(BY_COUNTRY)
    spec["output"] = {"format": output_format, "compression": compression, "prefix": "exports/looker/"}
    # When the job runs
    final, _ = run_job(looker_stack, spec)
    # Then the objects hold exactly the upstream's rows in that format
    assert final["status"] == "SUCCEEDED", final
    manifest = landed_manifest(looker_stack, final)
    if output_format == "csv":
        expected: list[dict[str, Any]] = list(
            csv.DictReader(io.StringIO(upstream_result(looker_emulator, BY_COUNTRY, "csv")))
        )
        names = ["Users Country", "Orders Count", "Orders Total Revenue"]  # Looker's csv header
    else:
        expected = json.loads(upstream_result(looker_emulator, BY_COUNTRY, "json"))
        names = BY_COUNTRY["fields"]
    assert rows_of(looker_stack, manifest) == expected
    assert manifest["row_count"] == len(expected) > 0
    assert [column["name"] for column in manifest["columns"]] == names
    suffix = {"jsonl": ".jsonl", "csv": ".csv", "native": ".json"}[output_format]
    suffix += ".gz" if compression == "gzip" else ""
    assert all(entry["key"].startswith("exports/looker/dt=") for entry in manifest["objects"])
    assert all(entry["key"].endswith(suffix) for entry in manifest["objects"])


def test_a_look_with_json_detail_lands_its_rows(
    looker_stack: LocalStack, looker_emulator: LookerEmulator
) -> None:
    final, _ = run_job(looker_stack, job({"look_id": "9", "result_format": "json_detail"}))
    assert final["status"] == "SUCCEEDED", final
    manifest = landed_manifest(looker_stack, final)
    look_query = {
        "model": "ecommerce",
        "view": "orders",
        "fields": ["orders.id", "orders.created_date", "orders.total_amount", "users.country"],
        "filters": {"orders.total_amount": ">300"},
        "sorts": ["orders.created_date desc", "orders.id"],
        "limit": "50",
    }
    assert rows_of(looker_stack, manifest) == json.loads(upstream_result(looker_emulator, look_query, "json"))
    assert manifest["row_count"] == 50
    assert [column["type"] for column in manifest["columns"]] == ["number", "date_date", "number", "string"]


def test_a_failing_query_fails_with_the_database_message_and_leaves_no_output(
    looker_stack: LocalStack, looker_emulator: LookerEmulator
) -> None:
    final, _ = run_job(looker_stack, job(BAD_FIELD, job_id="looker-bad-1"))
    assert final["status"] == "FAILED"
    assert final["error"] == "UpstreamQueryFailed"
    assert "Unknown column 'orders.nope'" in final["cause"]
    assert "Traceback" not in final["cause"]
    assert list(looker_stack.keys()) == []
    failed = [event for event in looker_stack.events() if event["detail-type"] == "Query Failed"]
    assert failed[0]["detail"] == {
        "job_id": "looker-bad-1",
        "connection": LOOKER_CONNECTION,
        "provider": "looker",
        "error": "UpstreamQueryFailed",
        "cause": final["cause"],
    }


def test_a_job_past_its_timeout_kills_the_looker_task_and_fails_query_timed_out(
    looker_stack: LocalStack, looker_emulator: LookerEmulator
) -> None:
    looker_emulator.config.query_seconds = 120
    spec = job(BY_COUNTRY, polling={"initial_seconds": 1, "max_seconds": 1, "timeout_seconds": 4})
    final, _ = run_job(looker_stack, spec)
    assert final["status"] == "FAILED"
    assert final["error"] == "QueryTimedOut"
    assert list(looker_emulator.task_states().values()) == ["killed"]
    assert list(looker_stack.keys()) == []


def test_transient_looker_errors_are_retried_and_the_job_succeeds(
    looker_stack: LocalStack, looker_emulator: LookerEmulator
) -> None:
    # Given Looker answers 503 to the first task creation and 429 to the first status read
    looker_emulator.config.query_seconds = 3
    looker_emulator.fail_next("create_task", 503)
    looker_emulator.fail_next("status", 429, retry_after=1)
    # When the job runs
    final, history = run_job(looker_stack, job(BY_COUNTRY))
    # Then Submit was retried by the state machine and the job landed the rows
    assert final["status"] == "SUCCEEDED", final
    failed_attempts = [e for e in history if e["type"] == "LambdaFunctionFailed"]
    assert [e["lambdaFunctionFailedEventDetails"]["error"] for e in failed_attempts] == [
        "UpstreamUnavailable"
    ]
    expected = json.loads(upstream_result(looker_emulator, BY_COUNTRY, "json"))
    assert rows_of(looker_stack, landed_manifest(looker_stack, final)) == expected


def test_no_secret_or_token_anywhere_in_history_logs_or_events(
    looker_stack: LocalStack, looker_emulator: LookerEmulator
) -> None:
    # Given a job whose token is refused once mid-job, and a connection with a wrong secret
    wrong_secret = "wrong-looker-secret-0c9a7f21"
    looker_stack.load_connections({"looker-wrong": looker_connection(looker_emulator, wrong_secret)})
    looker_emulator.config.query_seconds = 2
    looker_emulator.fail_next("status", 401)
    good = looker_stack.start_job(job(BY_COUNTRY))
    bad = looker_stack.start_job(job(BY_COUNTRY, connection="looker-wrong"))
    # When both run to their end
    assert looker_stack.wait(good, timeout=60)["status"] == "SUCCEEDED"
    final_bad = looker_stack.wait(bad, timeout=60)
    # Then the wrong one failed on its credentials, and nothing anywhere shows a secret or a token
    assert (final_bad["status"], final_bad["error"]) == ("FAILED", "UpstreamAuthFailed")
    everything = json.dumps(looker_stack.history(good), default=str) + json.dumps(
        looker_stack.history(bad), default=str
    )
    everything += "\n".join(looker_stack.logs) + json.dumps(looker_stack.events())
    tokens = looker_emulator.issued_tokens()
    assert len(tokens) >= 2  # the refused token was renewed
    for secret in (LOOKER_CLIENT_SECRET, wrong_secret, *tokens):
        assert secret not in everything
