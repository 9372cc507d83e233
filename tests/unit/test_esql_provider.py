"""EsqlProvider against the ES|QL emulator over real HTTP on loopback: submit (fast and slow
paths), long-poll, fetch (rows and native bytes), cancel, and every error the upstream can give,
with no secret in any message."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from query_relay.exceptions import (
    InvalidConnection,
    UpstreamAuthFailed,
    UpstreamPartialResult,
    UpstreamProtocolError,
    UpstreamQueryFailed,
    UpstreamRateLimited,
    UpstreamTaskExpired,
    UpstreamUnavailable,
)
from query_relay.models import Column, Connection, OutputFormat, parse_connection
from query_relay.providers import TabularResult, open_provider
from query_relay.providers.base import NativeResult, SubmitOptions
from query_relay.providers.esql import EsqlProvider, EsqlQuery
from query_relay_local.emulators.esql import EsqlEmulator, new_async_id
from query_relay_local.emulators.esql_data import find_index

API_KEY = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
WRONG_API_KEY = "d3Jvbmc6a2V5LXRoYXQtbXVzdC1ub3QtbGVhaw=="
PASSWORD = "hunter2-not-in-messages"
TOKEN = "bearer-token-not-in-messages"
SECRETS = (API_KEY, WRONG_API_KEY, PASSWORD, TOKEN)

BY_DEPARTMENT = "FROM employees | STATS count = COUNT(*) BY department | SORT department"
FAST = SubmitOptions(output_format="jsonl", wait_seconds=5.0, timeout_seconds=600)


def _options(output_format: OutputFormat = "jsonl", wait_seconds: float = 0.0) -> SubmitOptions:
    return SubmitOptions(output_format=output_format, wait_seconds=wait_seconds, timeout_seconds=600)


def _connection(base_url: str, auth: dict[str, Any] | None = None) -> Connection:
    auth = auth or {"type": "api_key", "api_key": API_KEY}
    return parse_connection("es-test", {"provider": "esql", "base_url": base_url, "auth": auth})


def _assert_no_secret(error: BaseException) -> None:
    message = str(error)
    for secret in SECRETS:
        assert secret not in message
    assert "Basic " not in message
    assert "'es-test'" in message  # it names the connection


def _department_counts() -> list[list[Any]]:
    """The expected answer to BY_DEPARTMENT, counted from the emulator's generated rows."""
    employees = find_index("employees")
    assert employees is not None
    position = [column.name for column in employees.columns].index("department")
    counts = Counter(str(row[position]) for row in employees.rows())
    return [[counts[department], department] for department in sorted(counts)]


@pytest.fixture
def emulator() -> Iterator[EsqlEmulator]:
    with EsqlEmulator(api_key=API_KEY) as running:
        yield running


@pytest.fixture
def provider(emulator: EsqlEmulator) -> Iterator[EsqlProvider]:
    opened = EsqlProvider("es-test", _connection(emulator.base_url))
    yield opened
    opened.close()


def _start_running(provider: EsqlProvider, emulator: EsqlEmulator, query: str, seconds: float = 0.5) -> str:
    """Submit a query that outlives the submit's wait; its upstream id."""
    emulator.config.query_seconds = seconds
    with provider.submit(EsqlQuery(query=query), _options(wait_seconds=0.0)) as submission:
        assert not submission.finished
        assert submission.upstream_id is not None
        return submission.upstream_id


def _finished_task(provider: EsqlProvider, emulator: EsqlEmulator, query: str = BY_DEPARTMENT) -> str:
    upstream_id = _start_running(provider, emulator, query, seconds=0.3)
    assert provider.poll(upstream_id, {}, wait_seconds=60).finished
    return upstream_id


def _raw_get(emulator: EsqlEmulator, upstream_id: str) -> bytes:
    """The emulator's own bytes for a stored task, read without the provider."""
    response = httpx.get(
        f"{emulator.base_url}/_query/async/{upstream_id}", headers={"Authorization": f"ApiKey {API_KEY}"}
    )
    assert response.status_code == 200
    return response.content


# --- the query model -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field", ["wait_for_completion_timeout", "keep_alive", "keep_on_completion", "columnar"]
)
def test_the_job_spec_may_not_set_the_async_fields(field: str) -> None:
    # Given a query that tries to set a field the provider owns
    # When it is validated / Then it is refused, naming the field
    with pytest.raises(ValidationError, match=field):
        EsqlQuery.model_validate({"query": "FROM employees", field: "1s"})


@pytest.mark.parametrize(
    "params",
    [[1, {"name": 2}], [{"a": 1, "b": 2}]],
    ids=["positional and named mixed", "named parameter with two keys"],
)
def test_params_are_all_positional_or_all_named(params: list[Any]) -> None:
    with pytest.raises(ValidationError, match="params"):
        EsqlQuery.model_validate({"query": "FROM employees", "params": params})


@pytest.mark.parametrize("query", ["", "   "])
def test_a_blank_query_is_refused(query: str) -> None:
    with pytest.raises(ValidationError, match="query"):
        EsqlQuery.model_validate({"query": query})


def test_the_query_model_keeps_the_request_fields() -> None:
    # Given every field a job may set
    document = {
        "query": "FROM employees | WHERE emp_no == ?emp",
        "params": [{"emp": 10001}],
        "filter": {"range": {"hire_date": {"gte": "1990-01-01"}}},
        "locale": "en-US",
        "time_zone": "Europe/Paris",
        "include_ccs_metadata": True,
    }

    # When validated / Then they are kept unchanged
    assert EsqlQuery.model_validate(document).model_dump(exclude_none=True) == document


def test_client_credentials_connections_are_refused() -> None:
    # Given a Looker-style connection named for an esql provider
    connection = parse_connection(
        "es-test",
        {
            "provider": "esql",
            "base_url": "http://127.0.0.1:9",
            "auth": {"type": "client_credentials", "client_id": "id", "client_secret": PASSWORD},
        },
    )

    # When the provider is opened / Then the connection is reported invalid, without the secret
    with pytest.raises(InvalidConnection, match="api_key, basic or bearer") as caught:
        open_provider("es-test", connection)
    _assert_no_secret(caught.value)


# --- submit --------------------------------------------------------------------------------------


@pytest.mark.parametrize("output_format", ["jsonl", "csv"])
def test_fast_path_yields_rows_without_an_id(provider: EsqlProvider, output_format: OutputFormat) -> None:
    # Given a query that finishes inside the submit's wait
    # When it is submitted
    with provider.submit(
        EsqlQuery(query=BY_DEPARTMENT), _options(output_format, wait_seconds=5)
    ) as submission:
        # Then the result is readable inside the submit, and nothing was stored upstream
        assert submission.finished
        assert submission.upstream_id is None
        assert isinstance(submission.result, TabularResult)
        assert submission.result.columns == [
            Column(name="count", type="long"),
            Column(name="department", type="keyword"),
        ]
        assert [list(row) for row in submission.result.rows] == _department_counts()


def test_fast_path_native_result_is_the_upstreams_json(provider: EsqlProvider) -> None:
    # Given a query that finishes inside the submit's wait, asked for in native format
    with provider.submit(EsqlQuery(query=BY_DEPARTMENT), _options("native", wait_seconds=5)) as submission:
        result = submission.result
        assert isinstance(result, NativeResult)
        # When its chunks are read
        body = b"".join(result.chunks)

    # Then they are the upstream's JSON, and the rows and columns were counted on the way
    document = json.loads(body)
    assert document["values"] == _department_counts()
    assert result.extension == "json"
    assert result.row_count == len(document["values"])
    assert [column.model_dump() for column in result.columns] == document["columns"]


def test_query_parameters_reach_the_upstream(provider: EsqlProvider) -> None:
    # Given a query with a named parameter
    query = EsqlQuery(query="FROM employees | WHERE emp_no == ?emp | KEEP emp_no", params=[{"emp": 10002}])

    # When it runs
    with provider.submit(query, FAST) as submission:
        assert isinstance(submission.result, TabularResult)
        rows = [list(row) for row in submission.result.rows]

    # Then the upstream used the value
    assert rows == [[10002]]


@pytest.mark.parametrize(
    ("emulator_auth", "connection_auth"),
    [
        ({"basic": ("elastic", PASSWORD)}, {"type": "basic", "username": "elastic", "password": PASSWORD}),
        ({"bearer": TOKEN}, {"type": "bearer", "token": TOKEN}),
    ],
    ids=["basic", "bearer"],
)
def test_basic_and_bearer_connections_authenticate(
    emulator_auth: dict[str, Any], connection_auth: dict[str, Any]
) -> None:
    # Given an upstream that accepts only this kind of credential
    with EsqlEmulator(**emulator_auth) as upstream:
        provider = EsqlProvider("es-test", _connection(upstream.base_url, connection_auth))

        # When a query is submitted / Then it runs
        with provider.submit(EsqlQuery(query="FROM employees | STATS n = COUNT(*)"), FAST) as submission:
            assert isinstance(submission.result, TabularResult)
            assert [list(row) for row in submission.result.rows] == [[1000]]
        provider.close()


def test_a_slow_query_is_left_running_with_its_id(provider: EsqlProvider, emulator: EsqlEmulator) -> None:
    # Given a query that takes longer than the submit waits
    emulator.config.query_seconds = 30

    # When it is submitted
    with provider.submit(EsqlQuery(query=BY_DEPARTMENT), _options(wait_seconds=0.05)) as submission:
        pass

    # Then the submission is not finished, carries the upstream's id, and the task runs upstream
    assert not submission.finished
    assert submission.result is None
    assert submission.upstream_id is not None
    assert emulator.task_states() == {submission.upstream_id: "running"}


# --- poll ----------------------------------------------------------------------------------------


def test_poll_reports_running_while_the_query_runs(provider: EsqlProvider, emulator: EsqlEmulator) -> None:
    # Given a query that runs for a long time
    upstream_id = _start_running(provider, emulator, BY_DEPARTMENT, seconds=60)

    # When it is polled with a short long-poll
    status = provider.poll(upstream_id, {}, wait_seconds=0.1)

    # Then it is running, and the long-poll asked the upstream to hold the GET that long
    assert not status.finished
    assert status.retry_after_seconds is None
    assert emulator.requests[-1].query == {"wait_for_completion_timeout": "100ms"}


@pytest.mark.timeout(30)
def test_poll_returns_when_the_query_ends_without_reading_the_result(
    provider: EsqlProvider, emulator: EsqlEmulator
) -> None:
    # Given a running query whose result is huge (50 million rows, ~5 GB: reading it takes minutes)
    upstream_id = _start_running(provider, emulator, "FROM synthetic_50000000 | LIMIT 50000000", seconds=0.5)

    # When it is polled with a long-poll far longer than the query (and than this test's timeout)
    status = provider.poll(upstream_id, {}, wait_seconds=120)

    # Then the poll answers as soon as the query ends, having read no more than the headers
    assert status.finished
    assert emulator.task_states()[upstream_id] == "finished"


def test_poll_looks_again_after_a_404_right_after_completion(
    provider: EsqlProvider, emulator: EsqlEmulator
) -> None:
    # Given a finished task whose first GET meets the known race (404 before the result is stored)
    upstream_id = _start_running(provider, emulator, BY_DEPARTMENT, seconds=0.1)
    emulator.fail_next("get", 404)

    # When it is polled
    status = provider.poll(upstream_id, {}, wait_seconds=10)

    # Then the provider looked again and found it finished
    assert status.finished
    assert [request.method for request in emulator.requests].count("GET") == 2


def test_poll_of_a_task_missing_twice_is_expired(provider: EsqlProvider, emulator: EsqlEmulator) -> None:
    # Given a task the upstream keeps not finding
    upstream_id = _start_running(provider, emulator, BY_DEPARTMENT)
    emulator.fail_next("get", 404, times=2)

    # When it is polled / Then it is reported expired
    with pytest.raises(UpstreamTaskExpired) as caught:
        provider.poll(upstream_id, {}, wait_seconds=1)
    _assert_no_secret(caught.value)


def test_poll_of_an_unknown_id_is_expired(provider: EsqlProvider) -> None:
    # Given an id the upstream never gave out (well formed)
    unknown = new_async_id(424242)

    # When it is polled / Then the task is reported expired, naming the operation
    with pytest.raises(UpstreamTaskExpired, match="esql poll") as caught:
        provider.poll(unknown, {}, wait_seconds=1)
    _assert_no_secret(caught.value)


def test_poll_of_a_malformed_id_is_a_protocol_error(provider: EsqlProvider) -> None:
    # Given an id the upstream cannot have given out (it rejects it with 400 illegal_argument)
    # When it is polled / Then it is a broken exchange, not an expired task
    with pytest.raises(UpstreamProtocolError, match="rejected its own task id") as caught:
        provider.poll("not-an-id", {}, wait_seconds=1)
    _assert_no_secret(caught.value)


@pytest.mark.parametrize("status", [400, 500], ids=["400", "500"])
def test_a_failure_stored_after_submit_is_raised_by_poll(
    provider: EsqlProvider, emulator: EsqlEmulator, status: int
) -> None:
    # Given a query that fails upstream after the submit returned
    emulator.config.fail_running_after = 0.1
    emulator.config.fail_running_status = status
    upstream_id = _start_running(provider, emulator, BY_DEPARTMENT, seconds=5)

    # When it is polled / Then the stored failure (a 500 carries the task's async headers, unlike a
    # node's or a gateway's 5xx) is the query's own failure, raised with the upstream's reason
    with pytest.raises(UpstreamQueryFailed, match=r"emulated failure of a running ES\|QL query") as caught:
        provider.poll(upstream_id, {}, wait_seconds=10)
    _assert_no_secret(caught.value)


def test_poll_rate_limited_returns_the_wait_the_upstream_asked_for(
    provider: EsqlProvider, emulator: EsqlEmulator
) -> None:
    # Given a running query and an upstream that answers the next GET with 429 Retry-After: 7
    upstream_id = _start_running(provider, emulator, BY_DEPARTMENT, seconds=60)
    emulator.fail_next("get", 429, retry_after=7)

    # When it is polled
    status = provider.poll(upstream_id, {}, wait_seconds=1)

    # Then it is not an error: the state machine waits as long as asked
    assert not status.finished
    assert status.retry_after_seconds == 7.0


def test_poll_on_a_503_is_unavailable(provider: EsqlProvider, emulator: EsqlEmulator) -> None:
    upstream_id = _start_running(provider, emulator, BY_DEPARTMENT, seconds=60)
    emulator.fail_next("get", 503)

    with pytest.raises(UpstreamUnavailable, match="HTTP 503") as caught:
        provider.poll(upstream_id, {}, wait_seconds=1)
    _assert_no_secret(caught.value)


# --- fetch ---------------------------------------------------------------------------------------


def test_fetch_yields_the_exact_columns_and_rows(provider: EsqlProvider, emulator: EsqlEmulator) -> None:
    # Given a finished task
    upstream_id = _finished_task(provider, emulator)

    # When its result is fetched as rows
    with provider.fetch(upstream_id, {}, "jsonl") as result:
        assert isinstance(result, TabularResult)
        columns = result.columns
        rows = [list(row) for row in result.rows]

    # Then the columns and rows are exactly the upstream's
    assert columns == [Column(name="count", type="long"), Column(name="department", type="keyword")]
    assert rows == _department_counts()


def test_fetch_native_passes_the_bytes_through_untouched(
    provider: EsqlProvider, emulator: EsqlEmulator
) -> None:
    # Given a finished task
    upstream_id = _finished_task(provider, emulator, "FROM employees | SORT emp_no | LIMIT 250")

    # When its result is fetched in native format
    with provider.fetch(upstream_id, {}, "native") as result:
        assert isinstance(result, NativeResult)
        body = b"".join(result.chunks)

    # Then the bytes are the upstream's own, and the rows and columns were read on the way
    assert body == _raw_get(emulator, upstream_id)
    assert result.row_count == 250
    assert [column.name for column in result.columns][:3] == ["birth_date", "department", "emp_no"]


@pytest.fixture
def emulator_process() -> Iterator[str]:
    """The emulator in a process of its own, so that memory measured here is the provider's alone."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve = (
        "from query_relay_local.emulators.esql import serve_forever; "
        f"serve_forever('127.0.0.1', {port}, api_key={API_KEY!r})"
    )
    process = subprocess.Popen([sys.executable, "-c", serve])
    try:
        _wait_until_listening(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_until_listening(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.05)
        else:
            return
    raise AssertionError(f"the emulator did not start listening on port {port}")


def test_a_big_result_streams_without_being_loaded(emulator_process: str) -> None:
    # Given a query whose result holds 200,000 rows (about 22 MB of JSON)
    provider = EsqlProvider("es-test", _connection(emulator_process))
    query = EsqlQuery(query="FROM synthetic_200000 | LIMIT 200000")

    # When its rows are iterated (and dropped) one by one while memory is traced
    tracemalloc.start()
    try:
        with provider.submit(query, _options(wait_seconds=60)) as submission:
            assert isinstance(submission.result, TabularResult)
            row_count = sum(1 for _ in submission.result.rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        provider.close()

    # Then every row arrived, and memory stayed a small fraction of the body
    assert row_count == 200_000
    assert peak < 4 * 1024 * 1024


@pytest.mark.parametrize("allowed", [False, True], ids=["refused", "allowed"])
def test_a_partial_result_fails_the_job_unless_it_allows_partial_results(
    provider: EsqlProvider, emulator: EsqlEmulator, caplog: pytest.LogCaptureFixture, allowed: bool
) -> None:
    # Given a task stopped early upstream (its result is flagged is_partial)
    upstream_id = _start_running(provider, emulator, BY_DEPARTMENT, seconds=60)
    stopped = httpx.post(
        f"{emulator.base_url}/_query/async/{upstream_id}/stop", headers={"Authorization": f"ApiKey {API_KEY}"}
    )
    assert stopped.status_code == 200
    state = {"allow_partial": True} if allowed else {}

    # When it is fetched
    with provider.fetch(upstream_id, state, "jsonl") as result:
        assert isinstance(result, TabularResult)
        if not allowed:
            # Then, not allowed, reading it to its end fails the job, named
            with pytest.raises(UpstreamPartialResult, match="is_partial"):
                list(result.rows)
            return
        rows = list(result.rows)

    # Then, allowed, the rows come through, flagged partial, with a warning
    assert len(rows) == len(_department_counts())
    assert result.partial()
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any("is_partial" in message for message in warnings)


def test_allow_partial_results_reaches_es_as_its_url_parameter(
    provider: EsqlProvider, emulator: EsqlEmulator
) -> None:
    query = EsqlQuery.model_validate({"query": BY_DEPARTMENT, "allow_partial_results": True})
    with provider.submit(query, _options()) as submission:
        assert submission.state == {"allow_partial": True}
    (submitted,) = [request for request in emulator.requests if request.method == "POST"]
    assert submitted.query.get("allow_partial_results") == "true"


def test_fetch_of_a_cancelled_task_is_expired(provider: EsqlProvider, emulator: EsqlEmulator) -> None:
    upstream_id = _finished_task(provider, emulator)
    assert provider.cancel(upstream_id, {})

    with (
        pytest.raises(UpstreamTaskExpired, match="esql fetch") as caught,
        provider.fetch(upstream_id, {}, "jsonl"),
    ):
        pass  # pragma: no cover - never reached
    _assert_no_secret(caught.value)


# --- cancel --------------------------------------------------------------------------------------


def test_cancel_stops_a_running_task(provider: EsqlProvider, emulator: EsqlEmulator) -> None:
    # Given a running task
    upstream_id = _start_running(provider, emulator, BY_DEPARTMENT, seconds=60)

    # When it is cancelled
    acknowledged = provider.cancel(upstream_id, {})

    # Then the upstream acknowledged it and the task is gone
    assert acknowledged
    assert emulator.task_states()[upstream_id] == "deleted"


def test_cancel_of_an_unknown_task_is_not_an_error(provider: EsqlProvider) -> None:
    assert provider.cancel(new_async_id(77), {}) is False


def test_cancel_on_a_503_is_unavailable(provider: EsqlProvider, emulator: EsqlEmulator) -> None:
    upstream_id = _start_running(provider, emulator, BY_DEPARTMENT, seconds=60)
    emulator.fail_next("delete", 503)

    with pytest.raises(UpstreamUnavailable) as caught:
        provider.cancel(upstream_id, {})
    _assert_no_secret(caught.value)


# --- servers that send no async headers ----------------------------------------------------------


class _HeaderStrippingProxy(BaseHTTPRequestHandler):
    """Relays to the emulator and drops X-Elasticsearch-Async-*: the state is in the body only."""

    protocol_version = "HTTP/1.1"

    def _relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        skipped = {"host", "content-length", "connection", "accept-encoding"}
        headers = {name: value for name, value in self.headers.items() if name.lower() not in skipped}
        upstream: str = self.server.upstream  # type: ignore[attr-defined]
        answer = httpx.request(
            self.command,
            upstream + self.path,
            content=self.rfile.read(length) if length else None,
            headers=headers,
            timeout=60,
        )
        self.send_response(answer.status_code)
        for name, value in answer.headers.items():
            dropped = name.lower() in (
                "content-length",
                "transfer-encoding",
                "connection",
                "content-encoding",
            )
            if not dropped and not name.lower().startswith("x-elasticsearch-async"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_POST = do_DELETE = _relay

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def headerless(emulator: EsqlEmulator) -> Iterator[EsqlProvider]:
    """A provider talking to the emulator through the header-stripping proxy."""
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _HeaderStrippingProxy)
    proxy.daemon_threads = True
    proxy.upstream = emulator.base_url  # type: ignore[attr-defined]
    thread = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    provider = EsqlProvider("es-test", _connection(f"http://127.0.0.1:{proxy.server_address[1]}"))
    yield provider
    provider.close()
    proxy.shutdown()
    proxy.server_close()
    thread.join(timeout=5)


def test_without_async_headers_the_fast_path_is_read_from_the_body(headerless: EsqlProvider) -> None:
    # Given a server that says nothing about the task in headers
    # When a quick query is submitted
    with headerless.submit(EsqlQuery(query=BY_DEPARTMENT), FAST) as submission:
        # Then the body tells it finished, and its rows are read
        assert submission.finished
        assert isinstance(submission.result, TabularResult)
        assert [list(row) for row in submission.result.rows] == _department_counts()


def test_without_async_headers_the_slow_path_is_read_from_the_body(
    headerless: EsqlProvider, emulator: EsqlEmulator
) -> None:
    # Given a server that says nothing about the task in headers, and a slow query
    emulator.config.query_seconds = 1.0

    # When it is submitted, polled while running, polled until done, and fetched
    with headerless.submit(EsqlQuery(query=BY_DEPARTMENT), _options(wait_seconds=0.0)) as submission:
        pass
    assert submission.upstream_id is not None
    running = headerless.poll(submission.upstream_id, {}, wait_seconds=0.0)
    finished = headerless.poll(submission.upstream_id, {}, wait_seconds=30)
    with headerless.fetch(submission.upstream_id, {}, "native") as result:
        assert isinstance(result, NativeResult)
        body = b"".join(result.chunks)

    # Then the id and each state came from the body, and the result is the upstream's
    assert not submission.finished
    assert emulator.task_states() == {submission.upstream_id: "finished"}
    assert not running.finished
    assert finished.finished
    assert body == _raw_get(emulator, submission.upstream_id)
    assert result.row_count == len(_department_counts())


# --- errors on submit ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("FROM employees |", "esql query failed: parsing_exception: line 1:17: mismatched input"),
        ("FROM employees | KEEP nosuchfield", "esql query failed: verification_exception: Found 1 problem"),
    ],
    ids=["parsing", "verification"],
)
def test_a_bad_query_fails_with_the_upstreams_reason(
    provider: EsqlProvider, query: str, expected: str
) -> None:
    with pytest.raises(UpstreamQueryFailed) as caught, provider.submit(EsqlQuery(query=query), FAST):
        pass  # pragma: no cover - never reached
    assert str(caught.value).startswith(expected)
    _assert_no_secret(caught.value)


def test_a_wrong_api_key_is_refused(emulator: EsqlEmulator) -> None:
    # Given a connection whose api key the upstream does not accept
    wrong = {"type": "api_key", "api_key": WRONG_API_KEY}
    provider = EsqlProvider("es-test", _connection(emulator.base_url, wrong))

    # When a query is submitted / Then authentication fails, and the key is not in the message
    with (
        pytest.raises(UpstreamAuthFailed, match="HTTP 401") as caught,
        provider.submit(EsqlQuery(query=BY_DEPARTMENT), FAST),
    ):
        pass  # pragma: no cover - never reached
    _assert_no_secret(caught.value)


def test_submit_on_a_503_is_unavailable(provider: EsqlProvider, emulator: EsqlEmulator) -> None:
    emulator.fail_next("submit", 503)

    with (
        pytest.raises(UpstreamUnavailable, match="no_shard_available_action_exception") as caught,
        provider.submit(EsqlQuery(query=BY_DEPARTMENT), FAST),
    ):
        pass  # pragma: no cover - never reached
    _assert_no_secret(caught.value)


def test_submit_rate_limited_carries_the_retry_after(provider: EsqlProvider, emulator: EsqlEmulator) -> None:
    emulator.fail_next("submit", 429, retry_after=7)

    with pytest.raises(UpstreamRateLimited) as caught, provider.submit(EsqlQuery(query=BY_DEPARTMENT), FAST):
        pass  # pragma: no cover - never reached
    assert caught.value.retry_after_seconds == 7.0
    _assert_no_secret(caught.value)


def test_a_closed_port_is_unavailable() -> None:
    # Given a connection to a port nothing listens on
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = EsqlProvider("es-test", _connection(f"http://127.0.0.1:{port}"))

    # When any call is made / Then the upstream is unavailable (a transient error)
    with (
        pytest.raises(UpstreamUnavailable, match="esql submit") as caught,
        provider.submit(EsqlQuery(query=BY_DEPARTMENT), FAST),
    ):
        pass  # pragma: no cover - never reached
    _assert_no_secret(caught.value)
    with pytest.raises(UpstreamUnavailable, match="esql poll") as caught:
        provider.poll(new_async_id(1), {}, wait_seconds=1)
    _assert_no_secret(caught.value)


def test_basic_credentials_never_appear_in_errors() -> None:
    # Given a basic-auth connection the upstream refuses
    with EsqlEmulator(basic=("elastic", "the-right-one")) as upstream:
        auth = {"type": "basic", "username": "elastic", "password": PASSWORD}
        provider = EsqlProvider("es-test", _connection(upstream.base_url, auth))

        # When a query is submitted / Then neither the password nor the header value shows
        with (
            pytest.raises(UpstreamAuthFailed) as caught,
            provider.submit(EsqlQuery(query=BY_DEPARTMENT), FAST),
        ):
            pass  # pragma: no cover - never reached
    _assert_no_secret(caught.value)
    assert base64.b64encode(f"elastic:{PASSWORD}".encode()).decode() not in str(caught.value)
