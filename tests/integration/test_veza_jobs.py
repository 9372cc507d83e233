"""Veza jobs through the whole state machine on the local stack, against the Veza emulator over HTTP.

Fixtures live here: ``veza_emulator`` (a started ``VezaEmulator`` requiring ``VEZA_API_KEY``, tasks
finishing at once) and ``veza_stack`` (a started ``LocalStack`` with the connection ``veza-local``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from query_relay_local.emulators.veza import VezaEmulator
from query_relay_local.emulators.veza_data import select_nodes
from query_relay_local.stack import LocalStack

from ..conformance.harness_veza import node_as_row
from .landed import csv_text, failed_events, landed_manifest, landed_rows, state_count

VEZA_CONNECTION = "veza-local"
# A test value, distinctive so that it can be looked for in logs, events and outputs.
VEZA_API_KEY = "integration-veza-key-9e27b4d1"
NODE_COLUMNS = [
    {"name": "id", "type": "string"},
    {"name": "type", "type": "string"},
    {"name": "name", "type": "string"},
    {"name": "risk_level", "type": "string"},
    {"name": "destination_node_count", "type": "long"},
    {"name": "properties", "type": "object"},
    {"name": "permissions", "type": "array"},
    {"name": "raw_permissions", "type": "array"},
    {"name": "effective_permissions", "type": "array"},
    {"name": "destination_node_ids", "type": "array"},
    {"name": "access_stats", "type": "object"},
    {"name": "engagement_access_stats", "type": "object"},
    {"name": "other_fields", "type": "object"},
]
# Identities with write access to an S3 bucket, with counts: a spec as the Query Builder writes it.
S3_WRITERS: dict[str, Any] = {
    "query_type": "SOURCE_TO_DESTINATION",
    "include_nodes": True,
    "source_node_types": {
        "nodes": [{"node_type": "OktaUser"}, {"node_type": "AzureADUser"}, {"node_type": "AwsIamUser"}],
        "nodes_operator": "OR",
    },
    "relates_to_exp": {
        "specs": [
            {
                "node_types": {"nodes": [{"node_type": "S3Bucket"}]},
                "effective_permissions": {"values": ["DataWrite"], "operator": "OR"},
                "no_relation": False,
            }
        ],
        "operator": "AND",
    },
    "node_relationship_type": "EFFECTIVE_ACCESS",
    "result_value_type": "SOURCE_NODES_WITH_COUNTS",
    "include_permissions_summary": True,
}
OKTA_USERS: dict[str, Any] = {
    "include_nodes": True,
    "source_node_types": {"nodes": [{"node_type": "OktaUser"}]},
}


@pytest.fixture
def veza_emulator() -> Iterator[VezaEmulator]:
    with VezaEmulator(api_key=VEZA_API_KEY) as emulator:
        yield emulator


def veza_connection(emulator: VezaEmulator, api_key: str = VEZA_API_KEY) -> dict[str, Any]:
    return {"provider": "veza", "base_url": emulator.base_url, "auth": {"type": "bearer", "token": api_key}}


@pytest.fixture
def veza_stack(veza_emulator: VezaEmulator) -> Iterator[LocalStack]:
    with LocalStack() as stack:
        stack.load_connections({VEZA_CONNECTION: veza_connection(veza_emulator)})
        yield stack


def job(query: dict[str, Any], **changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "connection": VEZA_CONNECTION,
        "query": query,
        "polling": {"initial_seconds": 1, "max_seconds": 1, "timeout_seconds": 60},
    }
    spec.update(changes)
    return spec


def expected_rows(query: dict[str, Any]) -> list[dict[str, Any]]:
    return [node_as_row(node) for node in select_nodes(query)]


def veza_native_rows(text: str) -> list[dict[str, Any]]:
    """Native objects hold one upstream answer per line; their nodes become rows as the provider's do."""
    tasks = [json.loads(line)["task"] for line in text.splitlines()]
    return [node_as_row(node) for task in tasks for node in task["result"]["nodes_value"]["values"]]


def rows_of(stack: LocalStack, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    rows = landed_rows(stack, manifest, veza_native_rows)
    assert manifest["row_count"] == len(rows)
    assert manifest["byte_count"] == sum(entry["bytes"] for entry in manifest["objects"])
    return rows


def as_csv_strings(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{name: csv_text(value) for name, value in row.items()} for row in rows]


# --- results -------------------------------------------------------------------------------------


def test_a_quick_query_is_fetched_without_any_wait(
    veza_stack: LocalStack, veza_emulator: VezaEmulator
) -> None:
    # Given a spec the upstream answers at once
    spec = job(S3_WRITERS, job_id="veza-fast-1")
    # When the job runs
    final, history = veza_stack.run_job(spec, timeout=60)
    # Then Submit saw the task finished, Fetch landed exactly the upstream's nodes, nothing waited
    assert final["status"] == "SUCCEEDED", final
    assert state_count(history, "WaitStateEntered") == 0
    manifest = landed_manifest(veza_stack, final)
    expected = expected_rows(S3_WRITERS)
    assert rows_of(veza_stack, manifest) == expected
    assert len(expected) >= 3
    assert manifest["columns"] == NODE_COLUMNS
    assert manifest["polls"] == 0
    assert manifest["provider"] == "veza"
    assert manifest["upstream_id"] in veza_emulator.task_states()
    assert manifest["objects"][0]["key"].endswith("/veza-fast-1/part-00000.jsonl")
    ready = [event["detail"] for event in veza_stack.events() if event["detail-type"] == "Query Result Ready"]
    assert [(detail["job_id"], detail["row_count"]) for detail in ready] == [("veza-fast-1", len(expected))]


def test_a_slow_query_is_polled_until_finished_then_fetched(veza_emulator: VezaEmulator) -> None:
    # Given a task that runs 4 s and a submit that waits only 1 s
    veza_emulator.config.query_seconds = 4
    with LocalStack(parameter_overrides={"SubmitWaitSeconds": "1", "LongPollMaxSeconds": "1"}) as stack:
        stack.load_connections({VEZA_CONNECTION: veza_connection(veza_emulator)})
        # When the job runs
        final, history = stack.run_job(job(S3_WRITERS), timeout=60)
        # Then it waited and polled several times, and the rows are exactly the upstream's
        assert final["status"] == "SUCCEEDED", final
        manifest = landed_manifest(stack, final)
        assert manifest["polls"] >= 2
        assert state_count(history, "WaitStateEntered") == manifest["polls"]
        assert rows_of(stack, manifest) == expected_rows(S3_WRITERS)


def test_every_page_lands_in_the_same_job(veza_stack: LocalStack, veza_emulator: VezaEmulator) -> None:
    # Given 14 nodes in pages of 3, an empty page (has_more) before the last, each page's task slow
    veza_emulator.config.query_seconds = 0.3
    veza_emulator.config.empty_page_before_last = True
    query = {**OKTA_USERS, "page_size": 3}
    # When the job runs
    final, _ = veza_stack.run_job(job(query), timeout=60)
    # Then one job holds every node once, in order, fetched over 6 page tasks
    assert final["status"] == "SUCCEEDED", final
    manifest = landed_manifest(veza_stack, final)
    assert rows_of(veza_stack, manifest) == expected_rows(query)
    assert len(veza_emulator.submitted_specs) == 6  # 3+3+3+3, the empty page, 2
    assert "page_token" not in veza_emulator.submitted_specs[0]


@pytest.mark.parametrize("output_format", ["jsonl", "csv", "native"])
@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_every_output_format_and_compression_holds_the_upstream_rows(
    veza_stack: LocalStack, veza_emulator: VezaEmulator, output_format: str, compression: str
) -> None:
    # Given a result of several pages and an output choice
    query = {**S3_WRITERS, "page_size": 2}
    spec = job(query, output={"format": output_format, "compression": compression, "prefix": "veza/audit/"})
    # When the job runs
    final, _ = veza_stack.run_job(spec, timeout=60)
    # Then the objects hold exactly the upstream's rows in that format
    assert final["status"] == "SUCCEEDED", final
    manifest = landed_manifest(veza_stack, final)
    expected = expected_rows(query)
    assert rows_of(veza_stack, manifest) == (as_csv_strings(expected) if output_format == "csv" else expected)
    assert manifest["columns"] == NODE_COLUMNS
    suffix = {"jsonl": ".jsonl", "csv": ".csv", "native": ".jsonl"}[output_format]
    suffix += ".gz" if compression == "gzip" else ""
    assert all(entry["key"].startswith("veza/audit/dt=") for entry in manifest["objects"])
    assert all(entry["key"].endswith(suffix) for entry in manifest["objects"])


@pytest.mark.parametrize("output_format", ["jsonl", "csv"])
def test_a_count_query_lands_one_row(veza_stack: LocalStack, output_format: str) -> None:
    query = {"source_node_types": {"nodes": [{"node_type": "OktaUser"}]}}
    final, _ = veza_stack.run_job(job(query, output={"format": output_format}), timeout=60)
    assert final["status"] == "SUCCEEDED", final
    manifest = landed_manifest(veza_stack, final)
    assert manifest["columns"] == [{"name": "count", "type": "long"}]
    assert rows_of(veza_stack, manifest) == [{"count": 14 if output_format == "jsonl" else "14"}]


# --- failures ------------------------------------------------------------------------------------


def test_a_spec_veza_rejects_fails_query_failed_and_leaves_no_output(
    veza_stack: LocalStack, veza_emulator: VezaEmulator
) -> None:
    query = {"include_nodes": True, "source_node_types": {"nodes": [{"node_type": "OktaUsr"}]}}
    final, _ = veza_stack.run_job(job(query, job_id="veza-bad-1"), timeout=60)
    assert final["status"] == "FAILED"
    assert final["error"] == "UpstreamQueryFailed"
    assert 'unknown node type "OktaUsr"' in final["cause"]
    assert list(veza_stack.keys()) == []
    assert failed_events(veza_stack) == [
        {
            "job_id": "veza-bad-1",
            "connection": VEZA_CONNECTION,
            "provider": "veza",
            "error": "UpstreamQueryFailed",
            "cause": final["cause"],
        }
    ]
    assert veza_emulator.task_states() == {}


def test_a_task_that_fails_upstream_fails_the_job_with_its_reason(
    veza_stack: LocalStack, veza_emulator: VezaEmulator
) -> None:
    # Given tasks that fail upstream 3 s after they start (after the 2 s submit wait)
    veza_emulator.config.fail_after_seconds = 3
    # When the job runs
    final, _ = veza_stack.run_job(job(OKTA_USERS, job_id="veza-failed-1"), timeout=60)
    # Then Poll reports the named failure with the upstream's reason; nothing is written
    assert final["status"] == "FAILED"
    assert final["error"] == "UpstreamQueryFailed"
    assert "exceeded its memory budget" in final["cause"]
    assert list(veza_stack.keys()) == []
    assert [detail["error"] for detail in failed_events(veza_stack)] == ["UpstreamQueryFailed"]


def test_a_job_past_its_timeout_fails_query_timed_out_and_leaves_the_task_to_expire(
    veza_stack: LocalStack, veza_emulator: VezaEmulator
) -> None:
    # Given a task that runs far longer than the job may
    veza_emulator.config.query_seconds = 120
    spec = job(OKTA_USERS, polling={"initial_seconds": 1, "max_seconds": 1, "timeout_seconds": 4})
    # When the job runs
    final, _ = veza_stack.run_job(spec, timeout=60)
    # Then it fails QueryTimedOut; Cleanup skipped the (undocumented) cancel and said so
    assert final["status"] == "FAILED"
    assert final["error"] == "QueryTimedOut"
    assert "upstream has no cancel call; leaving the task to expire" in "\n".join(veza_stack.logs)
    assert list(veza_emulator.task_states().values()) == ["running"]  # left alone upstream
    assert {request.method for request in veza_emulator.requests} == {"POST", "GET"}
    assert list(veza_stack.keys()) == []
    assert [detail["error"] for detail in failed_events(veza_stack)] == ["QueryTimedOut"]


def test_transient_upstream_errors_are_retried_and_the_job_succeeds(
    veza_stack: LocalStack, veza_emulator: VezaEmulator
) -> None:
    # Given an upstream that answers 503 twice to the create, then 429 once to a task read
    veza_emulator.config.query_seconds = 3
    veza_emulator.fail_next("submit", 503, times=2)
    veza_emulator.fail_next("task", 429, retry_after=1)
    # When the job runs
    final, history = veza_stack.run_job(job(S3_WRITERS), timeout=60)
    # Then Submit was retried by the state machine and the job landed the right rows
    assert final["status"] == "SUCCEEDED", final
    failed_attempts = [e for e in history if e["type"] == "LambdaFunctionFailed"]
    assert [e["lambdaFunctionFailedEventDetails"]["error"] for e in failed_attempts] == [
        "UpstreamUnavailable"
    ] * 2
    assert rows_of(veza_stack, landed_manifest(veza_stack, final)) == expected_rows(S3_WRITERS)


def test_a_spec_carrying_page_token_never_reaches_the_upstream(
    veza_stack: LocalStack, veza_emulator: VezaEmulator
) -> None:
    final, _ = veza_stack.run_job(job({**OKTA_USERS, "page_token": "abc"}), timeout=60)
    assert final["status"] == "FAILED"
    assert final["error"] == "InvalidJobSpec"
    assert "query.page_token" in final["cause"]
    assert veza_emulator.requests == []


def test_no_secret_appears_in_history_logs_or_events(
    veza_stack: LocalStack, veza_emulator: VezaEmulator
) -> None:
    # Given one good job and one whose connection has a wrong key
    wrong_key = "wrong-veza-key-3a8c5e0f"
    veza_stack.load_connections({"veza-wrong": veza_connection(veza_emulator, api_key=wrong_key)})
    good = veza_stack.start_job(job(S3_WRITERS))
    bad = veza_stack.start_job(job(S3_WRITERS, connection="veza-wrong"))
    # When both have run
    assert veza_stack.wait(good, timeout=60)["status"] == "SUCCEEDED"
    refused = veza_stack.wait(bad, timeout=60)
    # Then the wrong key failed UpstreamAuthFailed, and neither key is anywhere
    assert refused["status"] == "FAILED"
    assert refused["error"] == "UpstreamAuthFailed"
    everything = json.dumps([veza_stack.history(good), veza_stack.history(bad)], default=str)
    everything += (
        "\n".join(veza_stack.logs) + json.dumps(veza_stack.events()) + json.dumps(refused, default=str)
    )
    assert wrong_key not in everything
    assert VEZA_API_KEY not in everything
