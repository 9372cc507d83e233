"""DatabricksProvider against the Databricks emulator over real HTTP on loopback: PATs and OAuth M2M
(one login for many calls, renewal, a 401 answered by one new login), the query model, submit (the
request it sends, the wait held by Databricks or spent looking again), poll, fetch (every type
typed, 40 chunks of EXTERNAL_LINKS in order, links renewed when they expire, downloads that carry
no Authorization, truncated results, native), cancel, every error class, and no secret in any
message."""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from werkzeug.wrappers import Request

from query_relay.exceptions import (
    InvalidConnection,
    InvalidJobSpec,
    QueryRelayError,
    UpstreamAuthFailed,
    UpstreamPartialResult,
    UpstreamProtocolError,
    UpstreamQueryFailed,
    UpstreamRateLimited,
    UpstreamTaskExpired,
    UpstreamUnavailable,
)
from query_relay.models import Connection, OutputFormat, parse_connection
from query_relay.providers import (
    NativeResult,
    Provider,
    SubmitOptions,
    TabularResult,
    open_provider,
    validate_query,
)
from query_relay.providers.databricks import DatabricksQuery
from query_relay.providers.databricks.chunks import LINK_RENEWALS
from query_relay.upstream.address import PUBLIC_POLICY
from query_relay.upstream.auth import TOKENS, HeaderAuth, TokenAuth, token_key
from query_relay.upstream.client import build_client
from query_relay_local.emulators import warehouse
from query_relay_local.emulators.databricks import STATEMENTS_PATH, WAREHOUSE_ID, DatabricksEmulator
from tests.conformance.harness_databricks import as_landed

PAT = "dapi-provider-test-pat-4b1c9e"
CLIENT_ID, CLIENT_SECRET = "relay-sp-2c7d", "relay-sp-secret-9f3a61"
UNKNOWN_ID = "01ef2b3c-0000-4d5e-8f90-00000000dead"


@pytest.fixture
def emulator() -> Iterator[DatabricksEmulator]:
    TOKENS.cache_clear()
    with DatabricksEmulator(token=PAT, client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as running:
        yield running
    TOKENS.cache_clear()


def pat(emulator: DatabricksEmulator, token: str = PAT) -> Connection:
    document = {
        "provider": "databricks",
        "base_url": emulator.base_url,
        "auth": {"type": "bearer", "token": token},
    }
    return parse_connection("lakehouse", document)


def m2m(emulator: DatabricksEmulator, secret: str = CLIENT_SECRET) -> Connection:
    auth = {"type": "client_credentials", "client_id": CLIENT_ID, "client_secret": secret}
    return parse_connection(
        "lakehouse", {"provider": "databricks", "base_url": emulator.base_url, "auth": auth}
    )


def options(output_format: OutputFormat = "jsonl", wait_seconds: float = 0.0, **more: Any) -> SubmitOptions:
    return SubmitOptions(output_format=output_format, wait_seconds=wait_seconds, timeout_seconds=600, **more)


def query(statement: str, **fields: Any) -> DatabricksQuery:
    validated = validate_query("databricks", {"statement": statement, "warehouse_id": WAREHOUSE_ID, **fields})
    assert isinstance(validated, DatabricksQuery)
    return validated


def submitted(provider: Provider[Any, Any], statement: str, wait_seconds: float = 10, **fields: Any) -> str:
    """A statement submitted and finished inside the wait: its id."""
    with provider.submit(query(statement, **fields), options(wait_seconds=wait_seconds)) as submission:
        assert submission.finished
        assert submission.upstream_id
        return submission.upstream_id


def run(connection: Connection, statement: str, output_format: OutputFormat = "jsonl", **fields: Any) -> Any:
    """Submit, fetch: (column names, rows), or for native (the bytes, the row count)."""
    provider = open_provider("lakehouse", connection)
    statement_id = submitted(provider, statement, **fields)
    state = {"allow_partial": True} if fields.get("allow_partial_results") else {}
    with provider.fetch(statement_id, state, output_format) as result:
        if isinstance(result, NativeResult):
            return b"".join(result.chunks), result.row_count
        assert isinstance(result, TabularResult)
        return [column.name for column in result.columns], list(result.rows)


def spy(emulator: DatabricksEmulator) -> list[tuple[str, dict[str, str]]]:
    """Every request the emulator routes from now on (API, token endpoint and storage alike), as
    (path, headers): a fault armed for any operation whose condition records and never matches."""
    seen: list[tuple[str, dict[str, str]]] = []

    def record(request: Request) -> bool:
        seen.append((request.path, {name.lower(): value for name, value in request.headers.items()}))
        return False

    emulator.fail_next("any", 500, when=record)
    return seen


def paths(emulator: DatabricksEmulator, part: str) -> list[str]:
    return [request.path for request in emulator.requests if part in request.path]


# --- auth ----------------------------------------------------------------------------------------


def test_a_pat_is_sent_as_a_bearer_token_and_an_unknown_one_is_refused(emulator: DatabricksEmulator) -> None:
    assert run(pat(emulator), "SELECT 1 AS one")[1] == [[1]]
    provider = open_provider("lakehouse", pat(emulator, "dapi-not-issued-7e"))
    with (
        pytest.raises(UpstreamAuthFailed, match="HTTP 403") as raised,
        provider.submit(query("SELECT 1"), options()),
    ):
        pass
    assert "dapi-not-issued-7e" not in str(raised.value)


def test_oauth_m2m_logs_in_once_for_every_call_and_the_login_carries_no_bearer(
    emulator: DatabricksEmulator,
) -> None:
    seen = spy(emulator)
    emulator.config.chunk_rows = 1
    assert run(m2m(emulator), "SELECT id FROM employees ORDER BY id LIMIT 3")[1] == [[1], [2], [3]]
    assert run(m2m(emulator), "SELECT 2 AS two")[1] == [[2]]  # a new provider, as the next Lambda call
    assert emulator.token_requests == 1
    assert len(emulator.requests) >= 8  # token, submits, statements, chunks, links
    token_headers = [headers for path, headers in seen if path == "/oidc/v1/token"]
    assert len(token_headers) == 1
    assert token_headers[0]["authorization"].startswith("Basic ")
    api_calls = [headers for path, headers in seen if path.startswith(STATEMENTS_PATH)]
    assert {headers["authorization"].split()[0] for headers in api_calls} == {"Bearer"}


def test_an_oauth_token_is_renewed_before_it_expires(emulator: DatabricksEmulator) -> None:
    emulator.config.oauth_token_seconds = 1  # renewed half way through a lifetime this short
    provider = open_provider("lakehouse", m2m(emulator))
    statement_id = submitted(provider, "SELECT 1 AS one")
    assert emulator.token_requests == 1
    time.sleep(0.6)
    assert provider.poll(statement_id, {}, 0).finished
    assert emulator.token_requests == 2


def test_a_token_refused_with_401_is_dropped_and_one_new_login_answers(emulator: DatabricksEmulator) -> None:
    emulator.config.oauth_token_seconds = 0.2
    stale = httpx.post(
        f"{emulator.base_url}/oidc/v1/token",
        data={"grant_type": "client_credentials", "scope": "all-apis"},
        auth=(CLIENT_ID, CLIENT_SECRET),
    ).json()["access_token"]
    time.sleep(0.3)
    emulator.config.oauth_token_seconds = 3600
    connection = m2m(emulator)
    TOKENS.put(token_key(connection), stale, 3600)  # cached as valid; Databricks says it expired
    provider = open_provider("lakehouse", connection)
    assert submitted(provider, "SELECT 1 AS one")
    assert emulator.token_requests == 2  # the stale one, then one new login


def test_wrong_client_credentials_fail_as_auth_and_no_form_of_them_is_echoed(
    emulator: DatabricksEmulator,
) -> None:
    provider = open_provider("lakehouse", m2m(emulator, "wrong-secret-51aa"))
    with (
        pytest.raises(UpstreamAuthFailed, match="invalid_client") as raised,
        provider.submit(query("SELECT 1"), options()),
    ):
        pass
    assert "wrong-secret-51aa" not in str(raised.value)
    emulator.fail_next("token", 401, echo_credentials=True)
    provider = open_provider("lakehouse", m2m(emulator))
    with pytest.raises(UpstreamAuthFailed) as echoed, provider.submit(query("SELECT 1"), options()):
        pass
    basic_pair = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    assert_no_secret(echoed.value, provider, CLIENT_SECRET, basic_pair)


def test_other_auth_types_and_token_types_are_refused_when_the_connection_loads(
    emulator: DatabricksEmulator,
) -> None:
    document = {
        "provider": "databricks",
        "base_url": emulator.base_url,
        "auth": {"type": "api_key", "api_key": "k"},
    }
    with pytest.raises(InvalidConnection, match="databricks connections take bearer auth"):
        open_provider("lakehouse", parse_connection("lakehouse", document))
    document["auth"] = {"type": "bearer", "token": PAT, "token_type": "OAUTH"}
    with pytest.raises(InvalidConnection, match=r"auth\.token_type is not used by databricks"):
        open_provider("lakehouse", parse_connection("lakehouse", document))


# --- the query model -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"statement": " ", "warehouse_id": "w"}, "statement"),
        ({"statement": "SELECT 1"}, "warehouse_id"),
        ({"statement": "SELECT 1", "warehouse_id": "w", "disposition": "INLINE"}, "disposition"),
        ({"statement": "SELECT 1", "warehouse_id": "w", "wait_timeout": "30s"}, "wait_timeout"),
        ({"statement": "SELECT 1", "warehouse_id": "w", "format": "CSV"}, "format"),
        ({"statement": "SELECT 1", "warehouse_id": "w", "row_limit": 10}, "row_limit"),
        ({"statement": "SELECT 1", "warehouse_id": "w", "schema_": "s"}, "schema_"),
        (
            {"statement": "SELECT 1", "warehouse_id": "w", "parameters": [{"value": "1"}]},
            r"parameters\.0\.name",
        ),
        (
            {"statement": "SELECT 1", "warehouse_id": "w", "parameters": [{"name": "a", "kind": "INT"}]},
            "parameters.0.kind",
        ),
        (
            {"statement": "SELECT 1", "warehouse_id": "w", "parameters": [{"name": "a", "value": 1}]},
            "parameters.0.value",
        ),
        (
            {"statement": "SELECT :a", "warehouse_id": "w", "parameters": [{"name": "a"}, {"name": "a"}]},
            "parameters",
        ),
    ],
)
def test_the_query_model_refuses_what_databricks_would_and_what_belongs_to_the_provider(
    fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidJobSpec, match=rf"query\.{named}"):
        validate_query("databricks", fields)


def test_the_request_body_holds_what_the_job_set() -> None:
    body = query(
        "SELECT :d", catalog="main", schema="sales", parameters=[{"name": "d", "type": "DATE"}]
    ).request_body()
    assert body == {
        "statement": "SELECT :d",
        "warehouse_id": WAREHOUSE_ID,
        "catalog": "main",
        "schema": "sales",
        "parameters": [{"name": "d", "type": "DATE"}],  # no value: SQL NULL
    }
    assert "allow_partial_results" not in query("SELECT 1", allow_partial_results=True).request_body()


# --- submit and poll -----------------------------------------------------------------------------


def test_submit_asks_for_external_links_in_json_array_and_records_the_statement_at_once(
    emulator: DatabricksEmulator,
) -> None:
    emulator.config.query_seconds = 30
    told: list[tuple[str, dict[str, Any]]] = []
    provider = open_provider("lakehouse", pat(emulator))
    started = options(wait_seconds=0, on_started=lambda upstream_id, state: told.append((upstream_id, state)))
    with provider.submit(query("SELECT 1", allow_partial_results=True), started) as submission:
        assert not submission.finished
    assert told == [(submission.upstream_id, {"allow_partial": True})]
    assert submission.state == {"allow_partial": True}
    body = emulator.submitted[-1]
    assert {name: body[name] for name in ("disposition", "format", "wait_timeout", "on_wait_timeout")} == {
        "disposition": "EXTERNAL_LINKS",
        "format": "JSON_ARRAY",
        "wait_timeout": "0s",
        "on_wait_timeout": "CONTINUE",
    }


def test_a_statement_done_inside_wait_timeout_is_finished_by_the_submit_alone(
    emulator: DatabricksEmulator,
) -> None:
    emulator.config.query_seconds = 0.4
    provider = open_provider("lakehouse", pat(emulator))
    began = time.monotonic()
    with provider.submit(query("SELECT 1 AS one"), options(wait_seconds=6.5)) as submission:
        assert submission.finished
        assert submission.result is None  # Fetch reads every result
    assert time.monotonic() - began < 3  # Databricks answered when the statement ended
    assert emulator.submitted[-1]["wait_timeout"] == "6s"
    assert [request.method for request in emulator.requests] == ["POST"]  # no look from here


def test_a_wait_too_short_for_databricks_is_spent_looking_again(emulator: DatabricksEmulator) -> None:
    emulator.config.query_seconds = 0.3
    provider = open_provider("lakehouse", pat(emulator))
    with provider.submit(query("SELECT 1 AS one"), options(wait_seconds=3)) as submission:
        assert submission.finished
    assert emulator.submitted[-1]["wait_timeout"] == "0s"
    assert len(paths(emulator, STATEMENTS_PATH + "/")) >= 1  # looked again from here


def test_a_slow_statement_is_polled_until_it_succeeds(emulator: DatabricksEmulator) -> None:
    emulator.config.query_seconds = 1.5
    provider = open_provider("lakehouse", pat(emulator))
    with provider.submit(query("SELECT 1 AS one"), options(wait_seconds=0)) as submission:
        assert submission.upstream_id
    status = provider.poll(submission.upstream_id, submission.state, 0)
    assert (status.finished, status.detail in ("pending", "running")) == (False, True)
    deadline = time.monotonic() + 10
    while not (status := provider.poll(submission.upstream_id, submission.state, 0)).finished:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert status.detail == "succeeded"


# --- fetch ---------------------------------------------------------------------------------------


def nan_as_text(rows: list[list[Any]]) -> list[list[Any]]:
    """NaN never equals itself: spelt "nan" on both sides of a comparison."""
    return [
        ["nan" if isinstance(value, float) and math.isnan(value) else value for value in row] for row in rows
    ]


def test_every_type_lands_typed(emulator: DatabricksEmulator) -> None:
    emulator.config.chunk_rows = 2
    provider = open_provider("lakehouse", pat(emulator))
    statement_id = submitted(provider, "SELECT * FROM all_types ORDER BY id")
    with provider.fetch(statement_id, {}, "jsonl") as result:
        assert isinstance(result, TabularResult)
        types = [column.type for column in result.columns]
        rows = [list(row) for row in result.rows]
    expected = warehouse.execute("SELECT * FROM all_types ORDER BY id")
    landed = [
        [as_landed(column, value) for column, value in zip(expected.columns, row, strict=True)]
        for row in expected.rows
    ]
    assert nan_as_text(rows) == nan_as_text(landed)
    assert types == [
        "BIGINT", "BIGINT", "DECIMAL(12,4)", "DOUBLE", "STRING", "BOOLEAN", "DATE", "STRING", "TIMESTAMP_NTZ",
        "TIMESTAMP", "BINARY", "STRING",
    ]  # fmt: skip


def test_a_result_of_40_chunks_lands_in_order_every_row_typed(emulator: DatabricksEmulator) -> None:
    emulator.config.chunk_rows = 125
    names, rows = run(pat(emulator), "SELECT n, square, label, ratio FROM numbers WHERE n <= 5000 ORDER BY n")
    assert names == ["n", "square", "label", "ratio"]
    assert [row[0] for row in rows] == list(range(1, 5001))
    assert rows[99] == [100, 10000, rows[99][2], pytest.approx(100 / 7)]
    asked = [int(path.rsplit("/", 1)[1]) for path in paths(emulator, "/result/chunks/")]
    assert asked == list(range(1, 40))  # chunk 0's link came with the statement
    assert len(paths(emulator, "/storage/")) == 40


def test_downloads_carry_the_links_headers_and_never_authorization(emulator: DatabricksEmulator) -> None:
    emulator.config.chunk_rows = 2
    emulator.config.link_headers = {
        "x-amz-server-side-encryption-customer-algorithm": "AES256",
        "x-extra": "7",
    }
    seen = spy(emulator)
    for connection in (pat(emulator), m2m(emulator)):
        assert len(run(connection, "SELECT id FROM employees ORDER BY id LIMIT 5")[1]) == 5
    downloads = [headers for path, headers in seen if path.startswith("/storage/")]
    assert len(downloads) == 6
    for headers in downloads:
        assert "authorization" not in headers
        assert headers["x-amz-server-side-encryption-customer-algorithm"] == "AES256"
        assert headers["x-extra"] == "7"


ADDRESSES = {"dbc-1.cloud.databricks.com": "52.95.110.1", "bucket.s3.amazonaws.com": "52.95.110.2"}
ADDRESSES |= {"storage.internal": "10.0.0.5"}


def on_aws(monkeypatch: pytest.MonkeyPatch, link: str) -> tuple[Provider[Any, Any], list[httpx.Request]]:
    """A provider under the public address policy (as on Lambda) whose upstream answers a finished
    statement of one row, its one chunk at ``link``: hosts resolve by ``ADDRESSES``, nothing leaves
    the process."""
    monkeypatch.setenv("ALLOW_LOCAL_UPSTREAMS", "false")
    document = {"provider": "databricks", "base_url": "https://dbc-1.cloud.databricks.com"}
    connection = parse_connection("lakehouse", {**document, "auth": {"type": "bearer", "token": PAT}})
    provider = open_provider("lakehouse", connection)
    sent: list[httpx.Request] = []
    manifest = {
        "format": "JSON_ARRAY",
        "schema": {"columns": [{"name": "one", "type_name": "INT", "type_text": "INT"}]},
        "total_chunk_count": 1,
        "chunks": [{"chunk_index": 0, "row_count": 1}],
    }
    statement = {
        "statement_id": "s-1",
        "status": {"state": "SUCCEEDED"},
        "manifest": manifest,
        "result": {"external_links": [{"chunk_index": 0, "row_count": 1, "external_link": link}]},
    }

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.path.startswith(STATEMENTS_PATH):
            return httpx.Response(200, json=statement)
        return httpx.Response(200, content=b'[["1"]]')

    provider.http.client.close()
    provider.http.client = build_client(
        connection,
        auth=provider.http.auth,
        connection_name="lakehouse",
        policy=PUBLIC_POLICY,
        resolver=lambda host, port: [(0, 0, 0, "", (ADDRESSES[host], port))],
        transport=httpx.MockTransport(answer),
    )
    return provider, sent


def fetched_rows(provider: Provider[Any, Any]) -> list[list[Any]]:
    with provider.fetch("s-1", {}, "jsonl") as result:
        assert isinstance(result, TabularResult)
        return [list(row) for row in result.rows]


def test_on_aws_a_link_is_held_to_the_address_policy_and_must_be_https(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider, sent = on_aws(monkeypatch, "https://bucket.s3.amazonaws.com/chunk-0?X-Amz-Signature=abc")
    assert fetched_rows(provider) == [[1]]
    api, download = sent
    assert api.headers["authorization"] == f"Bearer {PAT}"
    assert "authorization" not in download.headers
    assert download.url.host == "52.95.110.2"  # the address checked, as for any request
    private, _ = on_aws(monkeypatch, "https://storage.internal/chunk-0")
    with pytest.raises(InvalidConnection, match=r"resolves to 10\.0\.0\.5.*private network"):
        fetched_rows(private)
    plain, _ = on_aws(monkeypatch, "http://bucket.s3.amazonaws.com/chunk-0")
    with pytest.raises(UpstreamProtocolError, match="an external link is not https"):
        fetched_rows(plain)


def test_a_link_storage_refuses_as_expired_is_renewed_by_asking_for_the_chunk_again(
    emulator: DatabricksEmulator,
) -> None:
    emulator.config.chunk_rows = 2
    emulator.fail_next("link", expire=True, times=LINK_RENEWALS)
    rows = run(pat(emulator), "SELECT id FROM employees ORDER BY id LIMIT 4")[1]
    assert rows == [[1], [2], [3], [4]]
    assert len(paths(emulator, "/storage/")) == 2 + LINK_RENEWALS
    assert [path.rsplit("/", 1)[1] for path in paths(emulator, "/result/chunks/")] == ["0", "0", "1"]


def test_a_link_past_its_expiration_is_renewed_before_it_is_used(emulator: DatabricksEmulator) -> None:
    emulator.config.link_ttl_seconds = -60  # links handed out with the statement have expired

    def fresh_links_from_now(request: Request) -> bool:
        if "/result/chunks/" in request.path:
            emulator.config.link_ttl_seconds = 900
        return False

    emulator.fail_next("chunk", 500, when=fresh_links_from_now)
    assert run(pat(emulator), "SELECT id FROM employees ORDER BY id LIMIT 3")[1] == [[1], [2], [3]]
    assert len(paths(emulator, "/result/chunks/")) == 1  # chunk 0 asked for again
    assert len(paths(emulator, "/storage/")) == 1  # the expired link was never tried


def test_a_link_that_keeps_expiring_fails_fetch_once_renewals_run_out(emulator: DatabricksEmulator) -> None:
    emulator.fail_next("link", expire=True, times=LINK_RENEWALS + 1)
    with pytest.raises(
        UpstreamProtocolError, match=r"refused the chunk's link \(AccessDenied: Request has expired\)"
    ):
        run(pat(emulator), "SELECT 1 AS one")
    assert len(paths(emulator, "/storage/")) == LINK_RENEWALS + 1


def test_a_result_cloud_storage_no_longer_holds_has_expired(emulator: DatabricksEmulator) -> None:
    emulator.fail_next("link", 404)
    with pytest.raises(UpstreamTaskExpired, match="no longer holds the chunk"):
        run(pat(emulator), "SELECT 1 AS one")
    emulator.fail_next("link", 503, retry_after=3)
    with pytest.raises(UpstreamUnavailable):
        run(pat(emulator), "SELECT 1 AS one")


def test_a_truncated_result_fails_unless_the_job_allows_partial_results(emulator: DatabricksEmulator) -> None:
    emulator.config.truncate_after_rows = 3
    statement = "SELECT id FROM employees ORDER BY id"
    with pytest.raises(UpstreamPartialResult, match=r"truncated.*query\.allow_partial_results"):
        run(pat(emulator), statement)
    provider = open_provider("lakehouse", pat(emulator))
    statement_id = submitted(provider, statement, allow_partial_results=True)
    formats: tuple[OutputFormat, ...] = ("jsonl", "native")
    for output_format in formats:
        with provider.fetch(statement_id, {"allow_partial": True}, output_format) as result:
            if isinstance(result, TabularResult):
                assert list(result.rows) == [[1], [2], [3]]
            else:
                assert b"".join(result.chunks) == b'[["1"],["2"],["3"]]\n'
            assert result.partial()


def test_a_whole_result_is_not_partial_and_an_empty_one_has_columns_and_no_rows(
    emulator: DatabricksEmulator,
) -> None:
    provider = open_provider("lakehouse", pat(emulator))
    statement_id = submitted(provider, "SELECT n, label FROM numbers WHERE n < 0")
    with provider.fetch(statement_id, {}, "csv") as result:
        assert isinstance(result, TabularResult)
        assert [column.name for column in result.columns] == ["n", "label"]
        assert list(result.rows) == []
        assert not result.partial()


def test_native_stores_each_chunk_as_received_one_a_line(emulator: DatabricksEmulator) -> None:
    emulator.config.chunk_rows = 2
    data, count = run(pat(emulator), "SELECT id, name FROM employees ORDER BY id LIMIT 5", "native")
    documents = [json.loads(line) for line in data.splitlines()]
    assert count == 5
    assert len(documents) == 3
    assert [row[0] for document in documents for row in document] == ["1", "2", "3", "4", "5"]


# --- failures ------------------------------------------------------------------------------------


def test_a_failed_statement_is_upstream_query_failed_with_its_sql_state(emulator: DatabricksEmulator) -> None:
    provider = open_provider("lakehouse", pat(emulator))
    with (
        pytest.raises(UpstreamQueryFailed, match=r"TABLE_OR_VIEW_NOT_FOUND.*\(SQL state 42P01\)"),
        provider.submit(query("SELECT * FROM nowhere"), options(wait_seconds=5)),
    ):
        pass
    emulator.config.query_seconds = 0.2
    with provider.submit(
        query("SELECT :n", parameters=[{"name": "n", "value": "x", "type": "INT"}]), options()
    ) as s:
        assert s.upstream_id
    time.sleep(0.3)
    with pytest.raises(UpstreamQueryFailed, match=r"CAST_INVALID_INPUT.*\(SQL state 22018\)"):
        provider.poll(s.upstream_id, s.state, 0)


def test_a_request_databricks_refuses_is_upstream_query_failed(emulator: DatabricksEmulator) -> None:
    provider = open_provider("lakehouse", pat(emulator))
    with (
        pytest.raises(UpstreamQueryFailed, match="INVALID_PARAMETER_VALUE: Warehouse nope does not exist"),
        provider.submit(query("SELECT 1", warehouse_id="nope"), options()),
    ):
        pass


def test_statements_that_end_without_a_result_fail_by_name(emulator: DatabricksEmulator) -> None:
    provider = open_provider("lakehouse", pat(emulator))
    with pytest.raises(UpstreamTaskExpired):
        provider.poll(UNKNOWN_ID, {}, 0)
    emulator.config.query_seconds, emulator.config.abandon_after_seconds = 30, 0.2
    with provider.submit(query("SELECT 1"), options()) as abandoned:
        assert abandoned.upstream_id
    time.sleep(0.3)
    with pytest.raises(UpstreamQueryFailed, match="nobody polled it for 15 minutes"):
        provider.poll(abandoned.upstream_id, {}, 0)
    emulator.config.query_seconds = 0
    statement_id = submitted(provider, "SELECT 1 AS one")
    emulator.config.result_ttl_seconds = 0  # an hour has passed
    with pytest.raises(UpstreamTaskExpired, match="closed statement"):
        provider.poll(statement_id, {}, 0)
    with pytest.raises(UpstreamTaskExpired), provider.fetch(statement_id, {}, "jsonl"):
        pass


def test_rate_limits_and_outages_on_each_call(emulator: DatabricksEmulator) -> None:
    provider = open_provider("lakehouse", pat(emulator))
    emulator.fail_next("status", 429, retry_after=7)
    status = provider.poll(UNKNOWN_ID, {}, 0)
    assert (status.finished, status.retry_after_seconds) == (False, 7)
    emulator.fail_next("submit", 503, retry_after=4)
    with (
        pytest.raises(UpstreamUnavailable, match="TEMPORARILY_UNAVAILABLE"),
        provider.submit(query("SELECT 1"), options()),
    ):
        pass
    emulator.config.chunk_rows = 1
    emulator.fail_next("chunk", 429, retry_after=5)
    with pytest.raises(UpstreamRateLimited) as raised:
        run(pat(emulator), "SELECT id FROM employees LIMIT 2")
    assert raised.value.retry_after_seconds == 5


def test_cancel_stops_a_running_statement_and_is_quiet_about_an_ended_one(
    emulator: DatabricksEmulator,
) -> None:
    emulator.config.query_seconds = 30
    provider = open_provider("lakehouse", pat(emulator))
    with provider.submit(query("SELECT 1"), options()) as submission:
        assert submission.upstream_id
    assert provider.cancel(submission.upstream_id, submission.state)
    assert emulator.statement_states()[submission.upstream_id] == "canceled"
    assert not provider.cancel(submission.upstream_id, submission.state)  # already ended
    assert not provider.cancel(UNKNOWN_ID, {})
    emulator.config.cancel_ignored = True  # Databricks may not cancel: acknowledged all the same
    with provider.submit(query("SELECT 1"), options()) as ignored:
        assert ignored.upstream_id
    assert provider.cancel(ignored.upstream_id, {})
    assert emulator.statement_states()[ignored.upstream_id] in ("pending", "running")


# --- no secret in any message ----------------------------------------------------------------------


def assert_no_secret(error: QueryRelayError, provider: Provider[Any, Any], *secrets: str) -> None:
    """Neither the connection's secrets nor any token its auth handed out appear in the message."""
    auth = provider.http.auth
    handed_out = auth.secrets() if isinstance(auth, TokenAuth | HeaderAuth) else []
    text = str(error)
    for secret in (*secrets, *handed_out):
        assert secret not in text


def started(provider: Provider[Any, Any]) -> str:
    with provider.submit(query("SELECT id FROM employees LIMIT 2"), options()) as submission:
        assert submission.upstream_id
        return submission.upstream_id


def read_all(provider: Provider[Any, Any], statement_id: str) -> None:
    with provider.fetch(statement_id, {}, "jsonl") as result:
        assert isinstance(result, TabularResult)
        list(result.rows)


CALLS: dict[str, Callable[[Provider[Any, Any], str], object]] = {
    "submit": lambda provider, _: started(provider),
    "status": lambda provider, statement_id: provider.poll(statement_id, {}, 0),
    "chunk": read_all,
    "cancel": lambda provider, statement_id: provider.cancel(statement_id, {}),
}


@pytest.mark.parametrize("operation", sorted(CALLS))
def test_no_credential_an_upstream_echoes_reaches_a_message(
    emulator: DatabricksEmulator, operation: str
) -> None:
    emulator.config.query_seconds = 30 if operation == "cancel" else 0
    emulator.config.chunk_rows = 1
    for connection, secret in ((pat(emulator), PAT), (m2m(emulator), CLIENT_SECRET)):
        provider = open_provider("lakehouse", connection)
        statement_id = started(provider)
        emulator.fail_next(operation, 400, echo_credentials=True)
        with pytest.raises(QueryRelayError) as raised:
            CALLS[operation](provider, statement_id)
        assert_no_secret(raised.value, provider, secret)
