"""VezaProvider against the Veza emulator over real HTTP on loopback: the query model, submit
(inline wait), poll across every answer variant (wrapper or not, enum names or numbers, defaults
left out), fetch (a count, nodes over several pages with an empty page, native bytes), failures
and cancellations, every error class, and no secret in any message. Variants the emulator does
not produce (camelCase keys, gRPC numbers in error codes, broken answers) come from a canned
server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import pytest
from pydantic import ValidationError

from query_relay.exceptions import (
    InvalidConnection,
    InvalidJobSpec,
    QueryRelayError,
    UpstreamAuthFailed,
    UpstreamProtocolError,
    UpstreamQueryFailed,
    UpstreamRateLimited,
    UpstreamTaskExpired,
    UpstreamUnavailable,
)
from query_relay.models import Connection, OutputFormat, parse_connection
from query_relay.providers import NativeResult, SubmitOptions, TabularResult, open_provider, validate_query
from query_relay.providers.veza import COUNT_COLUMNS, NODE_COLUMNS, VezaProvider, VezaQuery
from query_relay_local.emulators.veza import VezaEmulator
from query_relay_local.emulators.veza_data import select_nodes

API_KEY = "veza-unit-key-5b1d9c7e"
WRONG_KEY = "veza-wrong-key-0e4a2f61"
SECRETS = (API_KEY, WRONG_KEY)

OKTA_USERS: dict[str, Any] = {
    "source_node_types": {"nodes": [{"node_type": "OktaUser"}]},
    "include_nodes": True,
}
OKTA_COUNT: dict[str, Any] = {"source_node_types": {"nodes": [{"node_type": "OktaUser"}]}}
NODE_NAMES = [column.name for column in NODE_COLUMNS]


def _options(output_format: OutputFormat = "jsonl", wait_seconds: float = 0.0) -> SubmitOptions:
    return SubmitOptions(output_format=output_format, wait_seconds=wait_seconds, timeout_seconds=600)


def _connection(base_url: str, token: str = API_KEY) -> Connection:
    return parse_connection(
        "veza-test", {"provider": "veza", "base_url": base_url, "auth": {"type": "bearer", "token": token}}
    )


def _assert_no_secret(error: BaseException) -> None:
    message = str(error)
    for secret in SECRETS:
        assert secret not in message
    assert "Bearer" not in message
    assert "'veza-test'" in message  # it names the connection


def _expected_rows(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows a spec must give, from the emulator's data: node keys, name, nothing else."""
    rows = []
    for node in select_nodes(spec):
        row = {name: node.get(name) for name in NODE_NAMES}
        row["name"] = node["properties"]["name"]
        row["other_fields"] = None
        rows.append(row)
    return rows


def _rows(result: Any) -> list[dict[str, Any]]:
    assert isinstance(result, TabularResult)
    names = [column.name for column in result.columns]
    return [dict(zip(names, row, strict=True)) for row in result.rows]


@pytest.fixture
def emulator() -> Iterator[VezaEmulator]:
    with VezaEmulator(api_key=API_KEY) as running:
        yield running


@pytest.fixture
def provider(emulator: VezaEmulator) -> Iterator[VezaProvider]:
    opened = VezaProvider("veza-test", _connection(emulator.base_url))
    yield opened
    opened.close()


def _submit(
    provider: VezaProvider, spec: dict[str, Any], wait_seconds: float = 0.0
) -> tuple[str, dict[str, Any]]:
    with provider.submit(VezaQuery.model_validate(spec), _options(wait_seconds=wait_seconds)) as submission:
        assert submission.upstream_id
        assert submission.result is None  # Fetch reads every result
        return submission.upstream_id, submission.state


def _finished_task(
    provider: VezaProvider, emulator: VezaEmulator, spec: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    emulator.config.query_seconds = 0
    upstream_id, state = _submit(provider, spec)
    assert provider.poll(upstream_id, state, 0).finished
    return upstream_id, state


def _poll_until_finished(provider: VezaProvider, upstream_id: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not provider.poll(upstream_id, {}, 0).finished:
        assert time.monotonic() < deadline, f"{upstream_id} did not finish"
        time.sleep(0.05)


# --- the query model -------------------------------------------------------------------------------


def test_a_query_spec_from_the_query_builder_is_accepted_as_is() -> None:
    # Given a spec as Veza's Query Builder shows it (deprecated fields null, nested nulls)
    spec = {
        "query_type": "SOURCE_TO_DESTINATION",
        "source_node_types": {
            "nodes": [{"node_type": "OktaUser", "condition_expression": None, "tags": []}],
            "nodes_operator": "AND",
        },
        "destination_node_types": None,
        "raw_permissions": None,
        "no_relation": False,
        "snapshot_id": "0",
        "access_filter": None,
        "node_relationship_type": "EFFECTIVE_ACCESS",
        "relates_to_exp": {
            "specs": [{"node_types": {"nodes": [{"node_type": "S3Bucket"}]}}],
            "operator": "AND",
        },
        "result_value_type": "SOURCE_NODES_WITH_COUNTS",
        "include_nodes": True,
        "include_sub_permissions": False,
        "include_permissions_summary": True,
        "page_size": "250",
    }
    # When it is validated and turned into the request body
    body = VezaQuery.model_validate(spec).request_body()
    # Then top-level nulls are left out, nested values pass untouched, page_size is a number
    assert "destination_node_types" not in body
    assert body["source_node_types"] == spec["source_node_types"]
    assert body["page_size"] == 250
    assert body["relates_to_exp"] == spec["relates_to_exp"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({**OKTA_USERS, "page_token": "abc"}, "query.page_token"),
        ({**OKTA_USERS, "limit": 5}, "query.limit"),
        ({"include_nodes": True}, "query.source_node_types"),
        ({"source_node_types": {"nodes": []}}, "query.source_node_types"),
        ({"source_node_types": {"nodes": [{"tags": []}]}}, "query.source_node_types"),
        ({**OKTA_USERS, "page_size": 0}, "query.page_size"),
        ({**OKTA_USERS, "include_nodes": "maybe"}, "query.include_nodes"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidJobSpec) as raised:
        validate_query("veza", spec)
    assert field in str(raised.value)


def test_a_spec_too_large_for_the_job_state_is_refused(
    provider: VezaProvider, emulator: VezaEmulator
) -> None:
    # Given a spec of more than 64 KiB (it rides in the execution state to follow pages)
    huge = {**OKTA_USERS, "properties_to_get": [f"property_{n:06d}" for n in range(8000)]}
    # When it is validated (as the CLI, the API and Submit do first), Then it is refused up front
    with pytest.raises(InvalidJobSpec, match="bytes"):
        validate_query("veza", huge)
    assert emulator.requests == []


@pytest.mark.parametrize(
    "auth",
    [
        {"type": "api_key", "api_key": API_KEY},
        {"type": "basic", "username": "u", "password": API_KEY},
        {"type": "client_credentials", "client_id": "c", "client_secret": API_KEY},
    ],
)
def test_only_bearer_connections_are_accepted(auth: dict[str, Any]) -> None:
    connection = parse_connection(
        "veza-test", {"provider": "veza", "base_url": "https://acme.vezacloud.com", "auth": auth}
    )
    with pytest.raises(InvalidConnection, match="bearer") as raised:
        open_provider("veza-test", connection)
    _assert_no_secret(raised.value)


# --- submit and poll -------------------------------------------------------------------------------


def test_a_task_finished_at_creation_is_reported_finished_and_keeps_the_spec(
    provider: VezaProvider, emulator: VezaEmulator
) -> None:
    # Given an upstream that answers at once
    emulator.config.query_seconds = 0
    # When a spec is submitted
    upstream_id, state = _submit(provider, OKTA_USERS)
    # Then the task is finished, and the spec (without page_token) is kept to ask for later pages
    assert emulator.task_states()[upstream_id] == "succeeded"
    assert state == {"spec": OKTA_USERS}
    assert emulator.submitted_specs == [OKTA_USERS]


def test_a_slow_task_is_left_running(provider: VezaProvider, emulator: VezaEmulator) -> None:
    emulator.config.query_seconds = 30
    with provider.submit(VezaQuery.model_validate(OKTA_USERS), _options()) as submission:
        assert not submission.finished
        assert submission.upstream_id in emulator.task_states()


def test_submit_waits_inline_for_a_quick_task(provider: VezaProvider, emulator: VezaEmulator) -> None:
    # Given a task that takes a moment, and a submit allowed to wait longer than that
    emulator.config.query_seconds = 0.3
    # When it is submitted
    with provider.submit(VezaQuery.model_validate(OKTA_USERS), _options(wait_seconds=10)) as submission:
        finished = submission.finished
    # Then the submit looked again until the task finished (no long-poll exists upstream)
    assert finished
    assert [request.method for request in emulator.requests][:2] == ["POST", "GET"]


VARIANTS = [
    pytest.param({}, id="wrapped-names"),
    pytest.param({"wrapped": False}, id="bare-names"),
    pytest.param({"enums_as_numbers": True}, id="wrapped-numbers"),
    pytest.param({"wrapped": False, "enums_as_numbers": True}, id="bare-numbers"),
    pytest.param({"omit_defaults": True, "enums_as_numbers": True}, id="defaults-left-out"),
    pytest.param({"int64_as_strings": False, "wrapped": False}, id="int64-as-numbers"),
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_poll_reads_every_answer_variant(
    provider: VezaProvider, emulator: VezaEmulator, variant: dict[str, Any]
) -> None:
    # Given an upstream answering in this variant, and a task that runs a little
    for name, value in variant.items():
        setattr(emulator.config, name, value)
    emulator.config.query_seconds = 0.5
    upstream_id, state = _submit(provider, OKTA_COUNT)
    # When it is polled while it runs, and after it ended
    running = provider.poll(upstream_id, state, 0)
    _poll_until_finished(provider, upstream_id)
    # Then the state reads right both times, and the count comes out as one integer row
    assert not running.finished
    assert running.detail in ("pending", "in_progress")
    with provider.fetch(upstream_id, state, "jsonl") as result:
        assert isinstance(result, TabularResult)
        assert result.columns == list(COUNT_COLUMNS)
        assert list(result.rows) == [[len(select_nodes(OKTA_USERS))]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_fetch_reads_nodes_in_every_answer_variant(
    provider: VezaProvider, emulator: VezaEmulator, variant: dict[str, Any]
) -> None:
    for name, value in variant.items():
        setattr(emulator.config, name, value)
    spec = {**OKTA_USERS, "page_size": 5}
    upstream_id, state = _finished_task(provider, emulator, spec)
    with provider.fetch(upstream_id, state, "jsonl") as result:
        assert _rows(result) == _expected_rows(spec)


def test_a_count_of_zero_left_out_by_protobuf_is_zero(provider: VezaProvider, emulator: VezaEmulator) -> None:
    # Given a count query that matches nothing, answered with defaults left out (no number_value)
    emulator.config.omit_defaults = True
    spec = {
        "source_node_types": {
            "nodes": [
                {
                    "node_type": "OktaUser",
                    "condition_expression": {"specs": [{"fn": "EQ", "property": "name", "value": "nobody"}]},
                }
            ]
        }
    }
    upstream_id, state = _finished_task(provider, emulator, spec)
    # When it is fetched, Then the count is 0
    with provider.fetch(upstream_id, state, "csv") as result:
        assert _rows(result) == [{"count": 0}]


def test_poll_of_a_failed_task_raises_its_reason(provider: VezaProvider, emulator: VezaEmulator) -> None:
    # Given a task that fails upstream after it was created
    emulator.config.fail_after_seconds = 0.2
    emulator.config.fail_reason = "graph query exceeded its memory budget"
    upstream_id, state = _submit(provider, OKTA_USERS)
    # When it is polled after its failure
    time.sleep(0.3)
    with pytest.raises(UpstreamQueryFailed) as raised:
        provider.poll(upstream_id, state, 0)
    # Then the upstream's reason and the task id are in the message
    assert "graph query exceeded its memory budget" in str(raised.value)
    assert upstream_id in str(raised.value)
    _assert_no_secret(raised.value)


@pytest.mark.parametrize("variant", [{}, {"enums_as_numbers": True, "wrapped": False}])
def test_poll_of_a_canceled_task_is_a_named_failure(
    provider: VezaProvider, emulator: VezaEmulator, variant: dict[str, Any]
) -> None:
    for name, value in variant.items():
        setattr(emulator.config, name, value)
    emulator.config.cancel_after_seconds = 0.2
    upstream_id, state = _submit(provider, OKTA_USERS)
    time.sleep(0.3)
    with pytest.raises(UpstreamQueryFailed, match="canceled upstream"):
        provider.poll(upstream_id, state, 0)


def test_a_task_failed_at_creation_fails_the_submit(provider: VezaProvider, emulator: VezaEmulator) -> None:
    emulator.config.fail_after_seconds = 0
    with (
        pytest.raises(UpstreamQueryFailed, match="memory budget"),
        provider.submit(VezaQuery.model_validate(OKTA_USERS), _options()),
    ):
        pass


def test_poll_of_an_unknown_task_is_expired(provider: VezaProvider) -> None:
    with pytest.raises(UpstreamTaskExpired) as raised:
        provider.poll("0b7d3c7e-0000-4000-8000-000000000000", {}, 0)
    assert "request_id" in str(raised.value)  # Veza support asks for it
    _assert_no_secret(raised.value)


def test_poll_of_an_expired_task_is_expired(provider: VezaProvider, emulator: VezaEmulator) -> None:
    emulator.config.task_ttl_seconds = 0
    upstream_id, state = _submit(provider, OKTA_USERS)
    with pytest.raises(UpstreamTaskExpired, match=upstream_id):
        provider.poll(upstream_id, state, 0)


def test_poll_rate_limited_returns_the_wait_the_upstream_asked_for(
    provider: VezaProvider, emulator: VezaEmulator
) -> None:
    upstream_id, state = _submit(provider, OKTA_USERS)
    emulator.fail_next("task", 429, retry_after=12)
    status = provider.poll(upstream_id, state, 0)
    assert (status.finished, status.retry_after_seconds) == (False, 12)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_poll_on_a_server_error_is_unavailable(
    provider: VezaProvider, emulator: VezaEmulator, status: int
) -> None:
    upstream_id, state = _submit(provider, OKTA_USERS)
    emulator.fail_next("task", status)
    with pytest.raises(UpstreamUnavailable) as raised:
        provider.poll(upstream_id, state, 0)
    assert f"HTTP {status}" in str(raised.value)
    _assert_no_secret(raised.value)


# --- fetch -----------------------------------------------------------------------------------------


def test_fetch_follows_every_page_including_an_empty_one(
    provider: VezaProvider, emulator: VezaEmulator
) -> None:
    # Given a nodes result of 14 nodes in pages of 4, with an empty page (has_more) before the last
    emulator.config.empty_page_before_last = True
    spec = {**OKTA_USERS, "page_size": 4}
    upstream_id, state = _finished_task(provider, emulator, spec)
    emulator.config.query_seconds = 0.2  # each later page's task runs a little
    # When it is fetched
    with provider.fetch(upstream_id, state, "jsonl") as result:
        rows = _rows(result)
    # Then every node arrived once, in order, and each later page was a new task with page_token
    assert rows == _expected_rows(spec)
    later = emulator.submitted_specs[1:]
    assert len(later) == 4  # pages 2, 3, 4 (the empty one), 5
    assert all(
        body["page_token"] and {**body, "page_token": None} == {**spec, "page_token": None} for body in later
    )
    assert len({body["page_token"] for body in later}) == 4


def test_fetch_of_a_richer_spec_gives_relations_and_counts(
    provider: VezaProvider, emulator: VezaEmulator
) -> None:
    spec = {
        "include_nodes": True,
        "source_node_types": {"nodes": [{"node_type": "OktaUser"}, {"node_type": "AzureADUser"}]},
        "relates_to_exp": {"specs": [{"node_types": {"nodes": [{"node_type": "S3Bucket"}]}}]},
        "result_value_type": "SOURCE_NODES_WITH_COUNTS",
        "page_size": 3,
    }
    upstream_id, state = _finished_task(provider, emulator, spec)
    with provider.fetch(upstream_id, state, "csv") as result:
        rows = _rows(result)
    assert rows == _expected_rows(spec)
    assert rows
    assert all(row["destination_node_count"] >= 1 and row["raw_permissions"] for row in rows)


def test_fetch_native_gives_each_pages_answer_on_its_own_line(
    provider: VezaProvider, emulator: VezaEmulator
) -> None:
    # Given a result of several pages
    emulator.config.empty_page_before_last = True
    spec = {**OKTA_USERS, "page_size": 6}
    upstream_id, state = _finished_task(provider, emulator, spec)
    # When it is fetched in native format
    with provider.fetch(upstream_id, state, "native") as result:
        assert isinstance(result, NativeResult)
        body = b"".join(result.chunks)
    # Then each line is one upstream answer (an AsyncTask), together holding every node
    lines = body.decode().splitlines()
    tasks = [json.loads(line)["task"] for line in lines]
    assert len(tasks) == 4  # 6 + 6 + empty + 2
    nodes = [node for task in tasks for node in task["result"]["nodes_value"]["values"]]
    assert nodes == select_nodes(spec)
    assert result.row_count == 14
    assert result.extension == "jsonl"
    assert result.columns == list(NODE_COLUMNS)
    # and the first line is the bytes of the first task's answer, untouched
    first = httpx.get(
        f"{emulator.base_url}/api/v1/assessments/async_tasks/{upstream_id}",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert body.split(b"\n")[0] == first.content


def test_fetch_native_of_a_count_is_the_answer_and_one_row(
    provider: VezaProvider, emulator: VezaEmulator
) -> None:
    upstream_id, state = _finished_task(provider, emulator, OKTA_COUNT)
    with provider.fetch(upstream_id, state, "native") as result:
        assert isinstance(result, NativeResult)
        body = b"".join(result.chunks)
    assert json.loads(body)["task"]["result"] == {"result_type": "number", "number_value": "14"}
    assert body.endswith(b"\n")
    assert result.row_count == 1
    assert result.columns == list(COUNT_COLUMNS)


def test_a_later_page_that_fails_fails_the_fetch(provider: VezaProvider, emulator: VezaEmulator) -> None:
    spec = {**OKTA_USERS, "page_size": 5}
    upstream_id, state = _finished_task(provider, emulator, spec)
    emulator.config.fail_after_seconds = 0.1  # the tasks of later pages fail
    with (
        pytest.raises(UpstreamQueryFailed, match="memory budget"),
        provider.fetch(upstream_id, state, "jsonl") as result,
    ):
        _rows(result)


def test_a_rate_limited_page_is_waited_for(provider: VezaProvider, emulator: VezaEmulator) -> None:
    spec = {**OKTA_USERS, "page_size": 5}
    upstream_id, state = _finished_task(provider, emulator, spec)
    emulator.config.query_seconds = 0.2
    emulator.fail_next("task", 429, times=2, retry_after=0.1)
    with provider.fetch(upstream_id, state, "jsonl") as result:
        assert _rows(result) == _expected_rows(spec)


def test_a_later_page_that_never_finishes_is_unavailable(
    provider: VezaProvider, emulator: VezaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a first page ready and later pages' tasks that run far longer than Fetch may wait
    spec = {**OKTA_USERS, "page_size": 5}
    upstream_id, state = _finished_task(provider, emulator, spec)
    emulator.config.query_seconds = 600
    monkeypatch.setattr(provider, "PAGE_WAIT_LIMIT_SECONDS", 0.5)
    # When it is fetched, Then the page is reported unavailable (the state machine retries Fetch)
    with (
        pytest.raises(UpstreamUnavailable, match="not finished after"),
        provider.fetch(upstream_id, state, "jsonl") as result,
    ):
        _rows(result)


def test_more_pages_without_the_spec_in_state_is_a_protocol_error(
    provider: VezaProvider, emulator: VezaEmulator
) -> None:
    upstream_id, _ = _finished_task(provider, emulator, {**OKTA_USERS, "page_size": 5})
    with (
        pytest.raises(UpstreamProtocolError, match="more pages"),
        provider.fetch(upstream_id, {}, "jsonl") as result,
    ):
        _rows(result)


def test_fetch_of_an_expired_task_is_expired(provider: VezaProvider, emulator: VezaEmulator) -> None:
    upstream_id, state = _finished_task(provider, emulator, OKTA_USERS)
    emulator.config.task_ttl_seconds = 0
    with pytest.raises(UpstreamTaskExpired), provider.fetch(upstream_id, state, "jsonl"):
        pass


@pytest.fixture
def emulator_process() -> Iterator[str]:
    """The emulator in a process of its own, so that memory measured here is the provider's alone."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve = (
        "from query_relay_local.emulators.veza import serve_forever; "
        f"serve_forever('127.0.0.1', {port}, api_key={API_KEY!r})"
    )
    process = subprocess.Popen([sys.executable, "-c", serve])
    try:
        base_url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                httpx.get(f"{base_url}/_emulator/config")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        httpx.post(f"{base_url}/_emulator/config", json={"synthetic_nodes": 40_000, "max_page_size": 20_000})
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_big_result_streams_one_node_at_a_time(emulator_process: str) -> None:
    # Given a result of 40,000 nodes in two pages of 20,000 (about 7 MB of JSON each)
    provider = VezaProvider("veza-test", _connection(emulator_process))
    spec = {
        "include_nodes": True,
        "source_node_types": {"nodes": [{"node_type": "SyntheticUser"}]},
        "page_size": 20_000,
    }
    # When its rows are iterated (and dropped) one by one while memory is traced
    tracemalloc.start()
    try:
        upstream_id, state = _submit(provider, spec, wait_seconds=30)
        with provider.fetch(upstream_id, state, "jsonl") as result:
            assert isinstance(result, TabularResult)
            row_count = sum(1 for _ in result.rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        provider.close()
    # Then every row arrived, and memory stayed a small fraction of one page
    assert row_count == 40_000
    assert peak < 3 * 1024 * 1024


# --- cancel ----------------------------------------------------------------------------------------


def test_cancel_is_documented_as_impossible_and_sends_nothing(
    provider: VezaProvider, emulator: VezaEmulator
) -> None:
    emulator.config.query_seconds = 30
    upstream_id, state = _submit(provider, OKTA_USERS)
    emulator.clear_requests()
    assert not VezaProvider.can_cancel
    assert provider.cancel(upstream_id, state) is False
    assert emulator.requests == []
    assert emulator.task_states()[upstream_id] == "pending"


# --- errors on submit ------------------------------------------------------------------------------


def test_a_spec_the_upstream_rejects_is_query_failed_with_its_reason(provider: VezaProvider) -> None:
    spec = {"include_nodes": True, "source_node_types": {"nodes": [{"node_type": "OktaUsr"}]}}
    with (
        pytest.raises(UpstreamQueryFailed) as raised,
        provider.submit(VezaQuery.model_validate(spec), _options()),
    ):
        pass
    message = str(raised.value)
    assert 'unknown node type "OktaUsr"' in message
    assert "InvalidArgument" in message
    assert "request_id" in message
    _assert_no_secret(raised.value)


def test_a_wrong_key_is_auth_failed_without_the_key(emulator: VezaEmulator) -> None:
    provider = VezaProvider("veza-test", _connection(emulator.base_url, token=WRONG_KEY))
    with (
        pytest.raises(UpstreamAuthFailed) as raised,
        provider.submit(VezaQuery.model_validate(OKTA_USERS), _options()),
    ):
        pass
    assert "Unauthenticated" in str(raised.value)
    _assert_no_secret(raised.value)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (403, UpstreamAuthFailed),
        (404, UpstreamProtocolError),
        (409, UpstreamUnavailable),
        (429, UpstreamRateLimited),
        (500, UpstreamUnavailable),
        (502, UpstreamUnavailable),
        (503, UpstreamUnavailable),
        (504, UpstreamUnavailable),
    ],
)
def test_submit_errors_are_named(
    provider: VezaProvider, emulator: VezaEmulator, status: int, error: type[QueryRelayError]
) -> None:
    emulator.fail_next("submit", status, retry_after=3)
    with pytest.raises(error) as raised, provider.submit(VezaQuery.model_validate(OKTA_USERS), _options()):
        pass
    if isinstance(raised.value, UpstreamRateLimited):
        assert raised.value.retry_after_seconds == 3
    _assert_no_secret(raised.value)


def test_a_closed_port_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = VezaProvider("veza-test", _connection(f"http://127.0.0.1:{port}"))
    with pytest.raises(UpstreamUnavailable) as raised:
        provider.poll("0b7d3c7e-0000-4000-8000-000000000000", {}, 0)
    _assert_no_secret(raised.value)


# --- answers the emulator does not give: a canned upstream ----------------------------------------


class _CannedUpstream(BaseHTTPRequestHandler):
    """Answers every request with the next canned (status, body); records the request bodies."""

    answers: ClassVar[list[tuple[int, bytes]]] = []
    bodies: ClassVar[list[bytes]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        type(self).bodies.append(self.rfile.read(length))
        status, body = type(self).answers.pop(0)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def canned() -> Iterator[tuple[list[tuple[int, bytes]], VezaProvider]]:
    _CannedUpstream.answers, _CannedUpstream.bodies = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CannedUpstream)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    provider = VezaProvider("veza-test", _connection(f"http://127.0.0.1:{server.server_address[1]}"))
    try:
        yield _CannedUpstream.answers, provider
    finally:
        provider.close()
        server.shutdown()
        server.server_close()


def _body(document: Any) -> bytes:
    return json.dumps(document, indent=2).encode()  # pretty-printed: line breaks inside the answer


def test_camel_case_keys_and_a_bare_node_list_are_read(
    canned: tuple[list[tuple[int, bytes]], VezaProvider],
) -> None:
    answers, provider = canned
    node = {"id": "n1", "type": "OktaUser", "properties": {"name": "ada"}, "riskLevel": "LOW"}
    answers.append(
        (200, _body({"task": {"id": "t1", "state": "3", "status": "1", "result": {"nodesValue": [node]}}}))
    )
    with provider.fetch("t1", {}, "jsonl") as result:
        rows = _rows(result)
    # node objects keep their own keys; an unknown one lands in other_fields
    assert rows[0]["name"] == "ada"
    assert rows[0]["other_fields"] == {"riskLevel": "LOW"}


def test_page_keys_in_camel_case_are_followed(canned: tuple[list[tuple[int, bytes]], VezaProvider]) -> None:
    answers, provider = canned
    first = {
        "id": "t1",
        "state": "COMPLETE",
        "status": "SUCCEEDED",
        "result": {
            "resultType": "nodes",
            "nodesValue": {
                "values": [{"id": "a", "destination_node_count": "7"}],
                "nextPageToken": "tok",
                "hasMore": True,
            },
        },
    }
    second = {
        "id": "t2",
        "state": "COMPLETE",
        "status": "SUCCEEDED",
        "result": {
            "resultType": "nodes",
            "nodesValue": {"values": [{"id": "b", "name": "own name", "properties": {"name": "p"}}]},
        },
    }
    answers += [(200, _body(first)), (200, _body(second))]
    with provider.fetch("t1", {"spec": OKTA_USERS}, "jsonl") as result:
        rows = _rows(result)
    assert [(row["id"], row["name"], row["destination_node_count"]) for row in rows] == [
        ("a", None, 7),
        ("b", "own name", None),
    ]
    assert json.loads(_CannedUpstream.bodies[1]) == {**OKTA_USERS, "page_token": "tok"}


def test_an_error_code_given_as_a_grpc_number_is_named(
    canned: tuple[list[tuple[int, bytes]], VezaProvider],
) -> None:
    answers, provider = canned
    answers.append((400, _body({"code": 3, "message": "bad relates_to_exp", "details": []})))
    with (
        pytest.raises(UpstreamQueryFailed, match="InvalidArgument: bad relates_to_exp"),
        provider.submit(VezaQuery.model_validate(OKTA_USERS), _options()),
    ):
        pass


def test_an_upstream_echoing_the_key_is_redacted(
    canned: tuple[list[tuple[int, bytes]], VezaProvider],
) -> None:
    answers, provider = canned
    answers.append((401, _body({"code": "Unauthenticated", "message": f"key {API_KEY} is revoked"})))
    with (
        pytest.raises(UpstreamAuthFailed) as raised,
        provider.submit(VezaQuery.model_validate(OKTA_USERS), _options()),
    ):
        pass
    _assert_no_secret(raised.value)
    assert "***" in str(raised.value)


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (b'{"task": {"id": "t1", "state": "COMPL', "ended before"),
        (b'{"task": {"id": "t1", "state": "COMPLETE"', "ended before"),
        (b"[1, 2]", "not one JSON object"),
        (b'{"task": {"id": "t1", "state": "DONE"}}', "state 'DONE'"),
        (b'{"task": {"id": "t1", "state": 7}}', "state 7"),
        (b'{"task": {"id": "t1", "state": "COMPLETE", "status": "SUCCEEDED"}}', "carries no result"),
        (
            b'{"id": "t1", "state": 3, "status": 1, "result": {"result_type": "timestamp"}}',
            "timestamp",
        ),
        (b'{"id": "t1", "state": "COMPLETE", "result": {"number_value": "six"}}', "not an integer"),
    ],
)
def test_answers_that_make_no_sense_are_protocol_errors(
    canned: tuple[list[tuple[int, bytes]], VezaProvider], answer: bytes, problem: str
) -> None:
    answers, provider = canned
    answers.append((200, answer))
    with pytest.raises(UpstreamProtocolError, match=problem), provider.fetch("t1", {}, "jsonl") as result:
        _rows(result)


def test_has_more_without_a_token_is_a_protocol_error(
    canned: tuple[list[tuple[int, bytes]], VezaProvider],
) -> None:
    answers, provider = canned
    answers.append(
        (
            200,
            _body(
                {
                    "id": "t1",
                    "state": 3,
                    "status": 1,
                    "result": {"nodes_value": {"values": [], "has_more": True}},
                }
            ),
        )
    )
    with (
        pytest.raises(UpstreamProtocolError, match="no next_page_token"),
        provider.fetch("t1", {"spec": OKTA_USERS}, "jsonl") as result,
    ):
        _rows(result)


def test_the_model_rejects_page_token_even_when_built_directly() -> None:
    with pytest.raises(ValidationError, match="page_token"):
        VezaQuery.model_validate({**OKTA_USERS, "page_token": "x"})
