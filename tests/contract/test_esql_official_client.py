"""The ES|QL emulator driven by the official `elasticsearch` client: if the client accepts it, so
will our provider's code paths that mirror the client's expectations."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from elasticsearch import ApiError, AuthenticationException, BadRequestError, Elasticsearch, NotFoundError

from query_relay_local.emulators.esql import EsqlEmulator

pytestmark = pytest.mark.contract

API_KEY = "cXVlcnktcmVsYXk6c2VjcmV0LWtleQ=="
USER, PASSWORD = "elastic", "changeme"
STATS_QUERY = (
    "FROM employees | STATS headcount = COUNT(*), avg_salary = AVG(salary) BY department | SORT department"
)


@pytest.fixture
def emulator() -> Iterator[EsqlEmulator]:
    with EsqlEmulator(api_key=API_KEY, basic=(USER, PASSWORD)) as running:
        yield running


@pytest.fixture
def client(emulator: EsqlEmulator) -> Iterator[Elasticsearch]:
    with Elasticsearch(emulator.base_url, api_key=API_KEY, request_timeout=10) as es:
        yield es


def test_fast_path_answers_the_result_at_once_without_an_id(
    client: Elasticsearch, emulator: EsqlEmulator
) -> None:
    response = client.esql.async_query(query=STATS_QUERY, wait_for_completion_timeout="5s")

    assert response["is_running"] is False
    assert "id" not in response
    assert response.meta.headers["X-Elasticsearch-Async-Is-Running"] == "?0"
    assert response["columns"] == [
        {"name": "headcount", "type": "long"},
        {"name": "avg_salary", "type": "double"},
        {"name": "department", "type": "keyword"},
    ]
    assert len(response["values"]) == 8
    assert sum(row[0] for row in response["values"]) == 1000
    assert emulator.task_states() == {}


def test_slow_path_returns_an_id_and_the_result_on_get(client: Elasticsearch, emulator: EsqlEmulator) -> None:
    emulator.config.query_seconds = 0.3

    submitted = client.esql.async_query(
        query=STATS_QUERY, wait_for_completion_timeout="0s", keep_alive="1m", keep_on_completion=False
    )
    async_id = submitted["id"]
    finished = client.esql.async_query_get(id=async_id, wait_for_completion_timeout="5s")

    assert submitted["is_running"] is True
    assert submitted.meta.headers["X-Elasticsearch-Async-Is-Running"] == "?1"
    assert submitted.meta.headers["X-Elasticsearch-Async-Id"] == async_id
    assert "=" in async_id  # the client must URL-quote it, and the emulator unquote it
    assert finished["is_running"] is False
    assert finished["id"] == async_id
    assert len(finished["values"]) == 8
    assert [entry.path for entry in emulator.requests] == ["/_query/async", f"/_query/async/{async_id}"]


def test_keep_on_completion_stores_a_fast_result(client: Elasticsearch, emulator: EsqlEmulator) -> None:
    submitted = client.esql.async_query(query=STATS_QUERY, keep_on_completion=True, keep_alive="5m")

    fetched = client.esql.async_query_get(id=submitted["id"])

    assert submitted["is_running"] is False
    assert fetched["values"] == submitted["values"]
    assert emulator.task_states() == {submitted["id"]: "finished"}


def test_delete_cancels_a_running_query(client: Elasticsearch, emulator: EsqlEmulator) -> None:
    emulator.config.query_seconds = 300
    async_id = client.esql.async_query(query=STATS_QUERY, wait_for_completion_timeout="0s")["id"]

    deleted = client.esql.async_query_delete(id=async_id)

    assert deleted["acknowledged"] is True
    assert emulator.task_states() == {async_id: "deleted"}
    with pytest.raises(NotFoundError):
        client.esql.async_query_get(id=async_id)


def test_stop_returns_the_result_of_a_running_query(client: Elasticsearch, emulator: EsqlEmulator) -> None:
    emulator.config.query_seconds = 300
    async_id = client.esql.async_query(query=STATS_QUERY, wait_for_completion_timeout="0s")["id"]

    stopped = client.esql.async_query_stop(id=async_id)

    assert stopped["is_running"] is False
    assert stopped["is_partial"] is True
    assert len(stopped["values"]) == 8


def test_csv_format_while_running_and_when_done(client: Elasticsearch, emulator: EsqlEmulator) -> None:
    emulator.config.query_seconds = 0.2

    running = client.esql.async_query(
        query="FROM employees | KEEP emp_no, last_name | SORT emp_no | LIMIT 2",
        format="csv",
        wait_for_completion_timeout="0s",
    )
    async_id = running.meta.headers["X-Elasticsearch-Async-Id"]
    done = client.esql.async_query_get(id=async_id, format="csv", wait_for_completion_timeout="5s")

    assert running.body == ""
    assert isinstance(done.body, str)
    assert done.body.splitlines()[0] == "emp_no,last_name"
    assert [line.split(",")[0] for line in done.body.splitlines()[1:]] == ["10001", "10002"]


def test_positional_and_named_params(client: Elasticsearch) -> None:
    positional = client.esql.async_query(
        query="FROM employees | WHERE emp_no >= ? AND emp_no < ? | KEEP emp_no | SORT emp_no",
        params=[10010, 10013],
    )
    named = client.esql.async_query(
        query="FROM employees | WHERE department == ?dept | STATS n = COUNT(*)", params=[{"dept": "Sales"}]
    )

    assert positional["values"] == [[10010], [10011], [10012]]
    assert named["values"][0][0] > 0


def test_filter_and_columnar(client: Elasticsearch) -> None:
    response = client.esql.async_query(
        query="FROM web_logs | STATS hits = COUNT(*) BY status | SORT status",
        filter={"range": {"@timestamp": {"gte": "2024-01-10", "lt": "2024-01-11"}}},
        columnar=True,
    )

    hits, statuses = response["values"]
    assert sum(hits) == 3456
    assert statuses == [200, 304, 404, 500, 503]


def test_a_bad_query_raises_bad_request_with_the_es_error_type(client: Elasticsearch) -> None:
    with pytest.raises(BadRequestError) as syntax:
        client.esql.async_query(query="FROM employees | WHERE")
    with pytest.raises(BadRequestError) as unknown:
        client.esql.async_query(query="FROM nope")

    assert syntax.value.error == "parsing_exception"
    assert syntax.value.body["error"]["root_cause"][0]["reason"].startswith("line 1:23: mismatched input")
    assert unknown.value.error == "verification_exception"
    assert unknown.value.body["error"]["reason"] == "Found 1 problem\nline 1:6: Unknown index [nope]"


def test_an_unknown_id_raises_not_found(client: Elasticsearch, emulator: EsqlEmulator) -> None:
    known = client.esql.async_query(query=STATS_QUERY, keep_on_completion=True)["id"]
    client.esql.async_query_delete(id=known)

    with pytest.raises(NotFoundError) as raised:
        client.esql.async_query_get(id=known)

    assert raised.value.error == "resource_not_found_exception"


def test_basic_auth_is_accepted(emulator: EsqlEmulator) -> None:
    with Elasticsearch(emulator.base_url, basic_auth=(USER, PASSWORD)) as es:
        response = es.esql.async_query(query="ROW a = 1")

    assert response["values"] == [[1]]


@pytest.mark.parametrize(
    "credentials",
    [{"api_key": "d3Jvbmc6a2V5"}, {"basic_auth": (USER, "wrong")}, {}],
    ids=["wrong-api-key", "wrong-password", "none"],
)
def test_wrong_or_missing_credentials_raise_authentication_exception(
    emulator: EsqlEmulator, credentials: dict[str, Any]
) -> None:
    with (
        Elasticsearch(emulator.base_url, **credentials) as es,
        pytest.raises(AuthenticationException) as raised,
    ):
        es.esql.async_query(query="ROW a = 1")

    assert raised.value.error == "security_exception"


def test_the_client_retries_an_injected_503_and_succeeds(
    client: Elasticsearch, emulator: EsqlEmulator
) -> None:
    emulator.fail_next("submit", 503)

    response = client.esql.async_query(query="ROW a = 1")

    assert response["values"] == [[1]]
    assert [entry.method for entry in emulator.requests] == ["POST", "POST"]


def test_persistent_429s_reach_the_caller_after_the_client_retries(
    client: Elasticsearch, emulator: EsqlEmulator
) -> None:
    emulator.fail_next("submit", 429, times=10, retry_after=1)

    with pytest.raises(ApiError) as raised:
        client.esql.async_query(query="ROW a = 1")

    assert raised.value.status_code == 429
    assert raised.value.error == "es_rejected_execution_exception"
    assert len(emulator.requests) == 4  # the first try and the client's three retries


def test_a_failure_after_submit_is_answered_by_get(client: Elasticsearch, emulator: EsqlEmulator) -> None:
    emulator.config.query_seconds = 60
    emulator.config.fail_running_after = 0.1
    async_id = client.esql.async_query(query=STATS_QUERY, wait_for_completion_timeout="0s")["id"]

    with pytest.raises(ApiError) as raised:
        client.esql.async_query_get(id=async_id, wait_for_completion_timeout="5s")

    assert raised.value.status_code == 500
    assert emulator.task_states() == {async_id: "failed"}
