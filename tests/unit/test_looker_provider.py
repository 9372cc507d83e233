"""LookerProvider against the Looker emulator over real HTTP on loopback: the query model, login
and the token cache, query resolution (query_id, look_id, inline), the task's statuses, results in
every format, cancel, and every error Looker can give, with no secret or token in any message or
log line."""

from __future__ import annotations

import csv
import io
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from query_relay.exceptions import (
    InvalidConnection,
    InvalidJobSpec,
    QueryRelayError,
    UpstreamAuthFailed,
    UpstreamQueryFailed,
    UpstreamRateLimited,
    UpstreamTaskExpired,
    UpstreamUnavailable,
)
from query_relay.models import Connection, OutputFormat, parse_connection
from query_relay.providers import NativeResult, TabularResult, looker, open_provider, validate_query
from query_relay.providers.base import Submission, SubmitOptions
from query_relay.providers.looker import LookerProvider, LookerQuery, result_format_for
from query_relay_local.emulators.looker import LookerEmulator
from query_relay_local.emulators.looker_data import QuerySpec, run_query

CLIENT_ID = "provider-test-client"
SECRET = "provider-secret-do-not-print-9f3e"
WRONG_SECRET = "wrong-secret-do-not-print-2a7c"
BY_COUNTRY: dict[str, Any] = {
    "model": "ecommerce",
    "view": "orders",
    "fields": ["users.country", "orders.count", "orders.total_revenue"],
    "sorts": ["users.country"],
}
NOTHING_MATCHES: dict[str, Any] = {**BY_COUNTRY, "filters": {"orders.status": "Lost in space"}}
BAD_FIELD: dict[str, Any] = {
    "model": "ecommerce",
    "view": "orders",
    "fields": ["orders.status", "orders.nope"],
}


def _expected(query: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows the emulator's engine gives for an inline query (read without the provider)."""
    limit = query.get("limit")
    spec = QuerySpec(
        query["model"],
        query["view"],
        tuple(query.get("fields", ())),
        query.get("filters", {}),
        tuple(query.get("sorts", ())),
        None if limit is None else int(limit),
    )
    return run_query(spec).as_dicts()


@pytest.fixture(autouse=True)
def _no_cached_tokens() -> Iterator[None]:
    looker.TOKENS.cache_clear()
    yield
    looker.TOKENS.cache_clear()


@pytest.fixture
def emulator() -> Iterator[LookerEmulator]:
    with LookerEmulator(client_id=CLIENT_ID, client_secret=SECRET) as running:
        yield running


def _connection(base_url: str, secret: str = SECRET, auth: dict[str, Any] | None = None) -> Connection:
    auth = auth or {"type": "client_credentials", "client_id": CLIENT_ID, "client_secret": secret}
    return parse_connection("looker-test", {"provider": "looker", "base_url": base_url, "auth": auth})


@pytest.fixture
def provider(emulator: LookerEmulator) -> Iterator[LookerProvider]:
    opened = LookerProvider("looker-test", _connection(emulator.base_url))
    yield opened
    opened.close()


def _query(spec: dict[str, Any]) -> LookerQuery:
    query = validate_query("looker", spec)
    assert isinstance(query, LookerQuery)
    return query


def _submit(
    provider: LookerProvider, spec: dict[str, Any], output_format: OutputFormat = "jsonl", wait: float = 0.0
) -> Submission:
    options = SubmitOptions(output_format=output_format, wait_seconds=wait, timeout_seconds=600)
    with provider.submit(_query(spec), options) as submission:
        assert submission.upstream_id is not None
        return submission


def _finished(provider: LookerProvider, submission: Submission, timeout: float = 20) -> dict[str, Any]:
    """Poll until the task is complete; the provider state after the last poll."""
    assert submission.upstream_id is not None
    state = dict(submission.state)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = provider.poll(submission.upstream_id, state, 1.0)
        state = status.state if status.state is not None else state
        if status.finished:
            return state
        time.sleep(0.05)
    raise AssertionError("task not finished in time")


def _fetched(
    provider: LookerProvider, upstream_id: str, state: dict[str, Any], output_format: OutputFormat = "jsonl"
) -> tuple[list[str], list[dict[str, Any]]]:
    with provider.fetch(upstream_id, state, output_format) as result:
        assert isinstance(result, TabularResult)
        names = [column.name for column in result.columns]
        return names, [dict(zip(names, row, strict=True)) for row in result.rows]


def _calls(emulator: LookerEmulator) -> list[str]:
    """The requests the emulator saw, as 'METHOD /path' with task ids shortened to {id}."""
    return [
        f"{entry.method} {re.sub(r'[0-9a-f]{32}', '{id}', entry.path.removeprefix('/api/4.0'))}"
        for entry in emulator.requests
    ]


def _raw(emulator: LookerEmulator, path: str) -> httpx.Response:
    """A call to the emulator with a login of its own (not the provider's)."""
    api = f"{emulator.base_url}/api/4.0"
    token = httpx.post(f"{api}/login", data={"client_id": CLIENT_ID, "client_secret": SECRET}).json()
    return httpx.get(f"{api}{path}", headers={"Authorization": f"token {token['access_token']}"})


def _assert_no_secret(text: str, emulator: LookerEmulator) -> None:
    for secret in (SECRET, WRONG_SECRET, *emulator.issued_tokens()):
        assert secret not in text


# --- the query model -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"query_id": "1", "look_id": "2"}, "query.look_id"),
        ({}, "query.model"),
        ({"model": "ecommerce"}, "query.view"),
        ({"view": "orders"}, "query.model"),
        ({"look_id": "7", "model": "ecommerce", "view": "orders"}, "query.model"),
        ({"look_id": "7", "fields": ["orders.id"]}, "query.fields"),
        ({"query_id": "42", "filters": {"orders.status": "Complete"}}, "query.filters"),
        ({"query_id": "42", "result_format": "parquet"}, "query.result_format"),
        ({"query_id": "42", "limit": -2}, "query.limit"),
        ({"query_id": "42", "cache": "maybe"}, "query.cache"),
        ({"query_id": "4/2"}, "query.query_id"),
        ({**BY_COUNTRY, "fields": ["orders.id", " "]}, "query.fields"),
        ({**BY_COUNTRY, "wait_for_completion_timeout": "1s"}, "query.wait_for_completion_timeout"),
    ],
)
def test_invalid_queries_name_the_field(spec: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidJobSpec) as raised:
        validate_query("looker", spec)
    assert named in str(raised.value)


def test_ids_may_be_written_as_numbers() -> None:
    assert _query({"look_id": 7}).look_id == "7"
    assert _query({"query_id": 42}).query_id == "42"


def test_the_result_format_follows_the_output_format_unless_given() -> None:
    saved = _query({"query_id": "42"})
    assert [result_format_for(saved, output) for output in ("jsonl", "csv", "native")] == [
        "json",
        "csv",
        "json",
    ]
    assert (
        result_format_for(_query({"query_id": "42", "result_format": "json_detail"}), "csv") == "json_detail"
    )
    assert result_format_for(_query({"query_id": "42", "result_format": "xlsx"}), "native") == "xlsx"
    with pytest.raises(InvalidJobSpec, match=r"query\.result_format: 'xlsx' gives no rows"):
        result_format_for(_query({"query_id": "42", "result_format": "xlsx"}), "jsonl")


def test_an_inline_query_is_sent_as_looker_write_query() -> None:
    query = _query(
        {**BY_COUNTRY, "limit": 10, "dynamic_fields": [{"table_calculation": "x", "expression": "1"}]}
    )
    body = query.write_query()
    assert body["limit"] == "10"
    assert body["dynamic_fields"] == '[{"table_calculation": "x", "expression": "1"}]'
    assert "limit" not in query.task_params()  # an inline query carries its own limit


def test_task_settings_become_url_parameters() -> None:
    query = _query(
        {"look_id": "7", "cache": False, "apply_formatting": True, "limit": 25, "path_prefix": "/x"}
    )
    assert query.task_params() == {
        "cache": "false",
        "apply_formatting": "true",
        "path_prefix": "/x",
        "limit": "25",
    }


# --- connections and login -----------------------------------------------------------------------


def test_only_client_credentials_connections_are_accepted(emulator: LookerEmulator) -> None:
    connection = _connection(emulator.base_url, auth={"type": "bearer", "token": SECRET})
    with pytest.raises(InvalidConnection, match="client_credentials") as raised:
        open_provider("looker-test", connection)
    _assert_no_secret(str(raised.value), emulator)


def test_a_base_url_that_names_the_api_is_taken_as_is(emulator: LookerEmulator) -> None:
    provider = LookerProvider("looker-test", _connection(f"{emulator.base_url}/api/4.0/"))
    submission = _submit(provider, BY_COUNTRY, wait=5)
    assert submission.finished
    assert _calls(emulator)[:2] == ["POST /login", "POST /queries"]


def test_wrong_credentials_are_upstream_auth_failed_without_the_secret(emulator: LookerEmulator) -> None:
    provider = LookerProvider("looker-test", _connection(emulator.base_url, secret=WRONG_SECRET))
    with pytest.raises(UpstreamAuthFailed, match="refused the client credentials") as raised:
        _submit(provider, BY_COUNTRY)
    _assert_no_secret(str(raised.value), emulator)
    assert "'looker-test'" in str(raised.value)


@pytest.mark.parametrize(("status", "error"), [(429, UpstreamRateLimited), (503, UpstreamUnavailable)])
def test_login_trouble_is_named(
    provider: LookerProvider, emulator: LookerEmulator, status: int, error: type[QueryRelayError]
) -> None:
    emulator.fail_next("login", status)
    with pytest.raises(error, match="looker login"):
        _submit(provider, BY_COUNTRY)


def test_the_token_is_cached_across_providers_of_one_connection(emulator: LookerEmulator) -> None:
    # Given two providers (two warm Lambda invocations) on the same connection
    for _ in range(2):
        provider = LookerProvider("looker-test", _connection(emulator.base_url))
        _submit(provider, BY_COUNTRY)
        provider.close()
    # Then Looker saw one login only
    assert _calls(emulator).count("POST /login") == 1


def test_a_cached_token_is_not_lent_to_a_different_secret(
    provider: LookerProvider, emulator: LookerEmulator
) -> None:
    _submit(provider, BY_COUNTRY)
    impostor = LookerProvider("looker-test", _connection(emulator.base_url, secret=WRONG_SECRET))
    with pytest.raises(UpstreamAuthFailed):
        _submit(impostor, BY_COUNTRY)


def test_a_short_lived_token_is_renewed_before_it_expires(
    provider: LookerProvider, emulator: LookerEmulator
) -> None:
    # Given tokens that live 3 s (the provider renews them with half their life to spare)
    emulator.config.token_ttl_seconds = 3
    emulator.config.query_seconds = 60
    submission = _submit(provider, BY_COUNTRY)
    assert submission.upstream_id is not None
    # When the job polls once the renewal point has passed, well before the token expires
    time.sleep(1.6)
    assert not provider.poll(submission.upstream_id, submission.state, 0).finished
    # Then the provider logged in again first: no call was refused and retried
    assert _calls(emulator) == [
        "POST /login",
        "POST /queries",
        "POST /query_tasks",
        "POST /login",
        "GET /query_tasks/{id}",
    ]


def test_a_refused_token_mid_job_means_one_new_login_and_a_retry(
    provider: LookerProvider, emulator: LookerEmulator
) -> None:
    emulator.config.query_seconds = 60
    submission = _submit(provider, BY_COUNTRY)
    assert submission.upstream_id is not None
    emulator.revoke_tokens()  # e.g. the API user's sessions were ended in Looker

    status = provider.poll(submission.upstream_id, submission.state, 0)

    assert status.detail == "running"
    assert _calls(emulator)[-3:] == ["GET /query_tasks/{id}", "POST /login", "GET /query_tasks/{id}"]


def test_a_second_refusal_is_upstream_auth_failed(provider: LookerProvider, emulator: LookerEmulator) -> None:
    emulator.config.query_seconds = 60
    submission = _submit(provider, BY_COUNTRY)
    assert submission.upstream_id is not None
    emulator.fail_next("status", 401, times=2)

    with pytest.raises(UpstreamAuthFailed, match="HTTP 401"):
        provider.poll(submission.upstream_id, submission.state, 0)
    assert _calls(emulator).count("POST /login") == 2


# --- submit: resolving the query and starting the task -------------------------------------------


def test_a_look_is_resolved_to_its_query(provider: LookerProvider, emulator: LookerEmulator) -> None:
    submission = _submit(provider, {"look_id": "7", "cache": False, "limit": 3})
    assert submission.upstream_id is not None

    task = _raw(emulator, f"/query_tasks/{submission.upstream_id}").json()
    created = next(entry for entry in emulator.requests if entry.path == "/api/4.0/query_tasks")
    assert _calls(emulator)[:3] == ["POST /login", "GET /looks/7", "POST /query_tasks"]
    assert (task["query_id"], task["look_id"], task["source"]) == (
        emulator.look_query_id("7"),
        "7",
        "query-relay",
    )
    assert created.query == {"cache": "false", "limit": "3"}
    assert submission.state == {
        "result_format": "json",
        "fields": ["orders.status", "orders.count", "orders.total_revenue"],
    }
    names, rows = _fetched(provider, submission.upstream_id, _finished(provider, submission))
    assert names == ["orders.status", "orders.count", "orders.total_revenue"]
    assert len(rows) == 3


def test_a_saved_query_id_is_run_as_is(provider: LookerProvider, emulator: LookerEmulator) -> None:
    query_id = emulator.look_query_id("9")
    submission = _submit(provider, {"query_id": query_id}, output_format="csv")
    assert submission.upstream_id is not None

    assert _calls(emulator)[1:3] == [f"GET /queries/{query_id}", "POST /query_tasks"]
    assert submission.state["result_format"] == "csv"
    assert _raw(emulator, f"/query_tasks/{submission.upstream_id}").json()["query_id"] == query_id


def test_an_inline_query_is_saved_first(provider: LookerProvider, emulator: LookerEmulator) -> None:
    first = _submit(provider, BY_COUNTRY)
    second = _submit(provider, BY_COUNTRY)
    assert first.upstream_id is not None
    assert second.upstream_id is not None

    assert _calls(emulator).count("POST /queries") == 2
    task = _raw(emulator, f"/query_tasks/{first.upstream_id}").json()
    assert task["query_id"] == emulator.create_query(BY_COUNTRY)  # Looker kept one query
    assert first.upstream_id != second.upstream_id


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"look_id": "404"}, "Looker has no look '404'"),
        ({"query_id": "999999"}, "Looker has no query '999999'"),
        ({"model": "ecommerce", "view": "galaxies", "fields": ["a.b"]}, "query.view: not_found"),
    ],
)
def test_a_query_looker_does_not_have_is_upstream_query_failed(
    provider: LookerProvider, emulator: LookerEmulator, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(UpstreamQueryFailed, match=re.escape(message)):
        _submit(provider, spec)
    assert "POST /query_tasks" not in _calls(emulator)


def test_submit_with_no_wait_leaves_the_task_running(
    provider: LookerProvider, emulator: LookerEmulator
) -> None:
    submission = _submit(provider, BY_COUNTRY, wait=0)
    assert not submission.finished
    assert "GET /query_tasks/{id}" not in _calls(emulator)


def test_a_quick_query_is_finished_inside_the_submit_wait(provider: LookerProvider) -> None:
    submission = _submit(provider, BY_COUNTRY, wait=10)
    assert submission.finished
    assert submission.result is None  # Looker hands results over only on request
    assert submission.upstream_id is not None
    _, rows = _fetched(provider, submission.upstream_id, submission.state)
    assert rows == _expected(BY_COUNTRY)


def test_trouble_reading_the_status_while_submitting_leaves_it_to_poll(
    provider: LookerProvider, emulator: LookerEmulator
) -> None:
    emulator.fail_next("status", 503)
    submission = _submit(provider, BY_COUNTRY, wait=10)
    assert not submission.finished
    assert submission.upstream_id is not None
    assert provider.poll(submission.upstream_id, submission.state, 0).finished


@pytest.mark.parametrize(("status", "error"), [(429, UpstreamRateLimited), (500, UpstreamUnavailable)])
def test_task_creation_trouble_is_named(
    provider: LookerProvider, emulator: LookerEmulator, status: int, error: type[QueryRelayError]
) -> None:
    emulator.fail_next("create_task", status, retry_after=4)
    with pytest.raises(error, match="looker create query task") as raised:
        _submit(provider, BY_COUNTRY)
    if isinstance(raised.value, UpstreamRateLimited):
        assert raised.value.retry_after_seconds == 4


# --- a failing query -----------------------------------------------------------------------------


@pytest.mark.parametrize("result_format", ["json", "json_detail", "csv"])
def test_a_database_error_fails_the_submit_with_its_message(
    provider: LookerProvider, result_format: str
) -> None:
    with pytest.raises(UpstreamQueryFailed) as raised:
        _submit(provider, {**BAD_FIELD, "result_format": result_format}, wait=10)
    assert "Unknown column 'orders.nope' in 'field list'" in str(raised.value)


def test_a_database_error_found_by_poll(provider: LookerProvider) -> None:
    submission = _submit(provider, BAD_FIELD, wait=0)
    assert submission.upstream_id is not None
    with pytest.raises(UpstreamQueryFailed, match=r"Unknown column 'orders\.nope'.*looker poll"):
        _finished(provider, submission)


@pytest.mark.parametrize("result_format", ["json", "json_detail"])
def test_a_database_error_behind_a_complete_status_fails_the_fetch(
    provider: LookerProvider, emulator: LookerEmulator, result_format: str
) -> None:
    emulator.config.sql_error_status = "complete"
    submission = _submit(provider, {**BAD_FIELD, "result_format": result_format}, wait=10)
    assert submission.finished
    assert submission.upstream_id is not None
    with pytest.raises(UpstreamQueryFailed, match=r"Unknown column 'orders\.nope'"):
        _fetched(provider, submission.upstream_id, submission.state)


def test_a_killed_task_fails_the_job(provider: LookerProvider, emulator: LookerEmulator) -> None:
    emulator.config.query_seconds = 60
    submission = _submit(provider, BY_COUNTRY)
    assert submission.upstream_id is not None
    api = f"{emulator.base_url}/api/4.0"
    token = httpx.post(f"{api}/login", data={"client_id": CLIENT_ID, "client_secret": SECRET}).json()[
        "access_token"
    ]
    httpx.delete(
        f"{api}/running_queries/{submission.upstream_id}", headers={"Authorization": f"token {token}"}
    )

    with pytest.raises(UpstreamQueryFailed, match="was killed in Looker"):
        provider.poll(submission.upstream_id, submission.state, 0)


# --- poll ----------------------------------------------------------------------------------------


def test_a_first_expired_status_is_checked_again(provider: LookerProvider, emulator: LookerEmulator) -> None:
    # Given a running task whose next status read says "expired" (seen in the wild before completion)
    emulator.config.query_seconds = 60
    submission = _submit(provider, BY_COUNTRY)
    assert submission.upstream_id is not None
    emulator.config.spurious_expired = 1
    # When it is polled twice, carrying the state between polls
    first = provider.poll(submission.upstream_id, submission.state, 0)
    assert first.state is not None
    second = provider.poll(submission.upstream_id, first.state, 0)
    # Then the first poll only remembered it, and the second forgot it again
    assert (first.finished, first.state.get("expired_seen")) == (False, True)
    assert (second.finished, second.detail) == (False, "running")
    assert second.state == submission.state


def test_expired_twice_is_upstream_task_expired(provider: LookerProvider, emulator: LookerEmulator) -> None:
    emulator.config.result_ttl_seconds = 0  # finished results expire at once
    submission = _submit(provider, BY_COUNTRY)
    assert submission.upstream_id is not None
    first = provider.poll(submission.upstream_id, submission.state, 0)
    assert first.state is not None
    with pytest.raises(UpstreamTaskExpired, match="expired"):
        provider.poll(submission.upstream_id, first.state, 0)


def test_an_unknown_task_is_upstream_task_expired(provider: LookerProvider) -> None:
    with pytest.raises(UpstreamTaskExpired, match="no longer knows"):
        provider.poll("0" * 32, {}, 0)


@pytest.mark.parametrize(("retry_after", "expected"), [(None, looker.RATE_LIMIT_DEFAULT_SECONDS), (3, 3)])
def test_a_rate_limited_poll_asks_to_wait(
    provider: LookerProvider, emulator: LookerEmulator, retry_after: float | None, expected: float
) -> None:
    emulator.config.query_seconds = 60
    submission = _submit(provider, BY_COUNTRY)
    assert submission.upstream_id is not None
    emulator.fail_next("status", 429, retry_after=retry_after)
    status = provider.poll(submission.upstream_id, submission.state, 0)
    assert (status.finished, status.retry_after_seconds) == (False, expected)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_poll_on_a_failing_server_is_upstream_unavailable(
    provider: LookerProvider, emulator: LookerEmulator, status: int
) -> None:
    submission = _submit(provider, BY_COUNTRY)
    assert submission.upstream_id is not None
    emulator.fail_next("status", status)
    with pytest.raises(UpstreamUnavailable, match=f"HTTP {status}"):
        provider.poll(submission.upstream_id, submission.state, 0)


def test_an_unreachable_looker_is_upstream_unavailable(emulator: LookerEmulator) -> None:
    base_url = emulator.base_url
    emulator.stop()
    provider = LookerProvider("looker-test", _connection(base_url))
    with pytest.raises(UpstreamUnavailable, match="could not reach"):
        _submit(provider, BY_COUNTRY)


# --- fetch ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("output_format", ["jsonl", "csv"])
def test_json_results_become_rows_keyed_view_field(
    provider: LookerProvider, output_format: OutputFormat
) -> None:
    submission = _submit(provider, {**BY_COUNTRY, "result_format": "json"}, output_format=output_format)
    assert submission.upstream_id is not None
    with provider.fetch(submission.upstream_id, _finished(provider, submission), output_format) as result:
        assert isinstance(result, TabularResult)
        columns = [(column.name, column.type) for column in result.columns]
        rows = [list(row) for row in result.rows]
    assert columns == [
        ("users.country", "string"),
        ("orders.count", "number"),
        ("orders.total_revenue", "number"),
    ]
    assert rows == [list(row.values()) for row in _expected(BY_COUNTRY)]


def test_csv_results_keep_looker_header_and_text(provider: LookerProvider, emulator: LookerEmulator) -> None:
    submission = _submit(provider, BY_COUNTRY, output_format="csv")
    assert submission.upstream_id is not None
    raw = _raw(emulator, f"/queries/{emulator.create_query(BY_COUNTRY)}/run/csv").text

    names, rows = _fetched(provider, submission.upstream_id, _finished(provider, submission), "csv")

    assert names == ["Users Country", "Orders Count", "Orders Total Revenue"]
    assert rows == list(csv.DictReader(io.StringIO(raw)))


def test_json_detail_rows_are_unwrapped_and_typed_from_its_metadata(provider: LookerProvider) -> None:
    submission = _submit(provider, {**BY_COUNTRY, "result_format": "json_detail"})
    assert submission.upstream_id is not None
    with provider.fetch(submission.upstream_id, _finished(provider, submission), "jsonl") as result:
        assert isinstance(result, TabularResult)
        types = [column.type for column in result.columns]
        rows = [list(row) for row in result.rows]
    assert types == ["string", "count", "sum"]
    assert rows == [list(row.values()) for row in _expected(BY_COUNTRY)]


@pytest.mark.parametrize(
    ("result_format", "extension"), [("json", "json"), ("csv", "csv"), ("json_detail", "json")]
)
def test_native_results_are_the_upstream_bytes_with_rows_counted(
    provider: LookerProvider, emulator: LookerEmulator, result_format: str, extension: str
) -> None:
    submission = _submit(provider, {**BY_COUNTRY, "result_format": result_format}, output_format="native")
    assert submission.upstream_id is not None
    state = _finished(provider, submission)
    raw = _raw(emulator, f"/query_tasks/{submission.upstream_id}/results").content

    with provider.fetch(submission.upstream_id, state, "native") as result:
        assert isinstance(result, NativeResult)
        data = b"".join(result.chunks)

    assert data == raw
    assert (result.extension, result.row_count) == (extension, len(_expected(BY_COUNTRY)))
    assert result.columns[0].name in ("users.country", "Users Country")


def test_a_format_without_rows_is_stored_as_it_is(provider: LookerProvider, emulator: LookerEmulator) -> None:
    submission = _submit(provider, {**BY_COUNTRY, "result_format": "sql"}, output_format="native")
    assert submission.upstream_id is not None
    with provider.fetch(submission.upstream_id, _finished(provider, submission), "native") as result:
        assert isinstance(result, NativeResult)
        assert result.extension == "sql"
        assert b"".join(result.chunks).startswith(b"SELECT")
    with pytest.raises(InvalidJobSpec, match=r"query\.result_format"):
        _fetched(provider, submission.upstream_id, submission.state, "jsonl")


def test_an_empty_result_keeps_the_query_fields_as_columns(provider: LookerProvider) -> None:
    submission = _submit(provider, NOTHING_MATCHES)
    assert submission.upstream_id is not None
    names, rows = _fetched(provider, submission.upstream_id, _finished(provider, submission))
    assert (names, rows) == (BY_COUNTRY["fields"], [])


def test_fetch_without_state_asks_looker_for_the_format(
    provider: LookerProvider, emulator: LookerEmulator
) -> None:
    submission = _submit(provider, BY_COUNTRY, output_format="csv")
    assert submission.upstream_id is not None
    _finished(provider, submission)

    names, rows = _fetched(provider, submission.upstream_id, {}, "jsonl")

    assert names[0] == "Users Country"  # the task gives csv, whatever the job's output now is
    assert len(rows) == len(_expected(BY_COUNTRY))
    assert "GET /query_tasks/{id}" in _calls(emulator)


@pytest.mark.parametrize("not_ready_status", [202, 204])
def test_results_not_ready_yet_are_asked_for_again(
    provider: LookerProvider, emulator: LookerEmulator, not_ready_status: int
) -> None:
    # Given a complete task whose results Looker has not stored yet (202; 204 before 25.0)
    submission = _submit(provider, BY_COUNTRY, wait=10)
    assert submission.upstream_id is not None
    emulator.config.not_ready_status = not_ready_status
    emulator.config.not_ready_reads = 2
    # When it is fetched
    _, rows = _fetched(provider, submission.upstream_id, submission.state)
    # Then Fetch asked again inside the call until the result came
    assert rows == _expected(BY_COUNTRY)
    assert _calls(emulator).count("GET /query_tasks/{id}/results") == 3


def test_results_that_stay_not_ready_are_upstream_unavailable(
    provider: LookerProvider, emulator: LookerEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(looker.provider, "RESULTS_NOT_READY_PAUSES", (0.01, 0.01))
    emulator.config.query_seconds = 60
    submission = _submit(provider, BY_COUNTRY)
    assert submission.upstream_id is not None
    with pytest.raises(UpstreamUnavailable, match="not ready yet"):
        _fetched(provider, submission.upstream_id, submission.state)
    assert _calls(emulator).count("GET /query_tasks/{id}/results") == 3


def test_expired_results_are_upstream_task_expired(
    provider: LookerProvider, emulator: LookerEmulator
) -> None:
    emulator.config.result_ttl_seconds = 0
    submission = _submit(provider, BY_COUNTRY)
    assert submission.upstream_id is not None
    with pytest.raises(UpstreamTaskExpired, match="looker fetch"):
        _fetched(provider, submission.upstream_id, submission.state)


@pytest.mark.parametrize(("status", "error"), [(429, UpstreamRateLimited), (503, UpstreamUnavailable)])
def test_fetch_trouble_is_named(
    provider: LookerProvider, emulator: LookerEmulator, status: int, error: type[QueryRelayError]
) -> None:
    submission = _submit(provider, BY_COUNTRY, wait=10)
    assert submission.upstream_id is not None
    emulator.fail_next("results", status)
    with pytest.raises(error, match="looker fetch"):
        _fetched(provider, submission.upstream_id, submission.state)


# --- cancel --------------------------------------------------------------------------------------


def test_cancel_kills_a_running_task(provider: LookerProvider, emulator: LookerEmulator) -> None:
    emulator.config.query_seconds = 60
    submission = _submit(provider, BY_COUNTRY)
    assert submission.upstream_id is not None

    assert provider.cancel(submission.upstream_id, submission.state) is True
    assert emulator.task_states()[submission.upstream_id] == "killed"
    assert provider.cancel(submission.upstream_id, submission.state) is False


def test_cancel_of_a_finished_task_is_false(provider: LookerProvider, emulator: LookerEmulator) -> None:
    submission = _submit(provider, BY_COUNTRY, wait=10)
    assert submission.upstream_id is not None
    assert provider.cancel(submission.upstream_id, {}) is False
    assert emulator.task_states()[submission.upstream_id] == "complete"


def test_cancel_on_a_failing_server_is_upstream_unavailable(
    provider: LookerProvider, emulator: LookerEmulator
) -> None:
    emulator.fail_next("kill", 502)
    with pytest.raises(UpstreamUnavailable, match="looker cancel"):
        provider.cancel("0" * 32, {})


# --- secrets -------------------------------------------------------------------------------------


def test_no_secret_or_token_in_any_message_or_log_line(
    emulator: LookerEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a provider that logs in, is refused mid-job, fails a query, and one with a wrong secret
    caplog.set_level(logging.DEBUG)
    messages: list[str] = []
    provider = LookerProvider("looker-test", _connection(emulator.base_url))
    impostor = LookerProvider("looker-test", _connection(emulator.base_url, secret=WRONG_SECRET))
    emulator.config.query_seconds = 0.2
    submission = _submit(provider, BY_COUNTRY)
    assert submission.upstream_id is not None
    emulator.revoke_tokens()
    _fetched(provider, submission.upstream_id, _finished(provider, submission))
    emulator.fail_next("status", 401, times=2)
    for action in (
        lambda: provider.poll(submission.upstream_id or "", {}, 0),
        lambda: _submit(provider, BAD_FIELD, wait=10),
        lambda: _submit(impostor, BY_COUNTRY),
        lambda: provider.poll("f" * 32, {}, 0),
    ):
        with pytest.raises(QueryRelayError) as raised:
            action()
        messages.append(str(raised.value))
    # Then no message, log line or repr carries the secret or any token Looker issued
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert len(emulator.issued_tokens()) >= 3
    assert logged
    _assert_no_secret("\n".join(messages) + logged + repr(provider) + repr(looker.TOKENS.__dict__), emulator)
