"""The Databricks SQL Statement Execution emulator over raw HTTP: PAT and OAuth M2M auth, the wait
of a submit (fast path, 0s, CONTINUE and CANCEL), statement states, typed JSON_ARRAY values and
parameters, chunks INLINE and through the storage listener of EXTERNAL_LINKS (presigned-URL rules),
truncation, cancel, expiry, faults and the control API. The official SDK's view is in
tests/contract/test_databricks_official_sdk.py."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from query_relay_local.emulators.databricks import STATEMENTS_PATH, WAREHOUSE_ID, DatabricksEmulator

TOKEN = "dapi-emulator-pat-5c1e"
CLIENT_ID = "sp-client-7a2f"
CLIENT_SECRET = "sp-secret-91d0"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# one client for the module: a new httpx client per call builds an SSL context each time (slow)
HTTP = httpx.Client(timeout=30)


@pytest.fixture(scope="module", autouse=True)
def _close_http_client() -> Iterator[None]:
    yield
    HTTP.close()


@pytest.fixture
def emulator() -> Iterator[DatabricksEmulator]:
    with DatabricksEmulator(token=TOKEN, client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as running:
        yield running


def submit(
    emulator: DatabricksEmulator, statement: str, headers: dict[str, str] | None = None, **fields: Any
) -> httpx.Response:
    body = {"statement": statement, "warehouse_id": WAREHOUSE_ID, **fields}
    return HTTP.post(
        f"{emulator.base_url}{STATEMENTS_PATH}", json=body, headers=AUTH if headers is None else headers
    )


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def run(emulator: DatabricksEmulator, statement: str, **fields: Any) -> dict[str, Any]:
    """A submit whose statement is done inside the wait (query_seconds is 0 by default)."""
    body = ok(submit(emulator, statement, **fields))
    assert body["status"]["state"] == "SUCCEEDED", body
    return body


def get(emulator: DatabricksEmulator, path: str) -> httpx.Response:
    return HTTP.get(f"{emulator.base_url}{path}", headers=AUTH)


def statement(emulator: DatabricksEmulator, statement_id: str) -> dict[str, Any]:
    return ok(get(emulator, f"{STATEMENTS_PATH}/{statement_id}"))


def chunk(emulator: DatabricksEmulator, statement_id: str, index: int) -> httpx.Response:
    return get(emulator, f"{STATEMENTS_PATH}/{statement_id}/result/chunks/{index}")


def download(link: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    """GET a chunk's external link as a client must: its http_headers, no Authorization."""
    return HTTP.get(
        link["external_link"], headers=link.get("http_headers", {}) if headers is None else headers
    )


def oauth_token(emulator: DatabricksEmulator, **form: str) -> httpx.Response:
    fields = {"grant_type": "client_credentials", "scope": "all-apis", **form}
    return HTTP.post(f"{emulator.base_url}/oidc/v1/token", data=fields, auth=(CLIENT_ID, CLIENT_SECRET))


# --- auth --------------------------------------------------------------------------------------------


def test_a_pat_is_accepted_and_missing_or_unknown_tokens_are_refused(emulator: DatabricksEmulator) -> None:
    missing = submit(emulator, "SELECT 1", headers={})
    basic = submit(emulator, "SELECT 1", headers={"Authorization": f"Basic {TOKEN}"})
    unknown = submit(emulator, "SELECT 1", headers={"Authorization": "Bearer dapi-not-issued"})

    run(emulator, "SELECT 1")
    for refused in (missing, basic):
        assert refused.status_code == 401
        assert refused.json()["error_code"] == "UNAUTHENTICATED"
    # Databricks answers an unknown token with a numeric error_code
    assert (unknown.status_code, unknown.json()) == (
        403,
        {"error_code": 403, "message": "Invalid access token."},
    )
    assert all(TOKEN not in answer.text and "dapi-not" not in answer.text for answer in (missing, unknown))
    assert len(emulator.submitted) == 1  # refused calls never reach the statement API


def test_oauth_m2m_issues_bearer_tokens_that_expire(emulator: DatabricksEmulator) -> None:
    emulator.config.oauth_token_seconds = 0.8
    issued_at = time.monotonic()
    issued = ok(oauth_token(emulator))
    by_form = HTTP.post(
        f"{emulator.base_url}/oidc/v1/token",
        data={
            "grant_type": "client_credentials",
            "scope": "all-apis",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        },
    )
    bearer = {"Authorization": f"Bearer {issued['access_token']}"}

    fresh = submit(emulator, "SELECT 1", headers=bearer)
    time.sleep(max(0.0, issued_at + 0.85 - time.monotonic()))
    expired = submit(emulator, "SELECT 1", headers=bearer)

    assert issued["token_type"] == "Bearer"
    assert issued["expires_in"] == 1  # a whole number of seconds, rounded up
    assert issued["scope"] == "all-apis"
    assert by_form.status_code == 200
    assert fresh.json()["status"]["state"] == "SUCCEEDED"
    assert (expired.status_code, expired.json()["error_code"]) == (401, "UNAUTHENTICATED")
    assert emulator.token_requests == 2


@pytest.mark.parametrize(
    ("form", "auth", "status", "error"),
    [
        ({}, (CLIENT_ID, "wrong"), 401, "invalid_client"),
        ({}, ("someone-else", CLIENT_SECRET), 401, "invalid_client"),
        ({}, None, 401, "invalid_client"),
        ({"grant_type": "password"}, (CLIENT_ID, CLIENT_SECRET), 400, "unsupported_grant_type"),
        ({"scope": ""}, (CLIENT_ID, CLIENT_SECRET), 400, "invalid_scope"),
        ({"scope": "everything"}, (CLIENT_ID, CLIENT_SECRET), 400, "invalid_scope"),
    ],
)
def test_the_token_endpoint_refuses_in_oauths_shape(
    emulator: DatabricksEmulator, form: dict[str, str], auth: tuple[str, str] | None, status: int, error: str
) -> None:
    fields = {"grant_type": "client_credentials", "scope": "all-apis", **form}
    response = HTTP.post(
        f"{emulator.base_url}/oidc/v1/token", data=fields, auth=auth or httpx.USE_CLIENT_DEFAULT
    )
    assert response.status_code == status
    assert response.json()["error"] == error
    assert CLIENT_SECRET not in response.text


def test_discovery_documents_need_no_credentials(emulator: DatabricksEmulator) -> None:
    host = ok(HTTP.get(f"{emulator.base_url}/.well-known/databricks-config"))
    oidc = ok(HTTP.get(f"{host['oidc_endpoint']}/.well-known/oauth-authorization-server"))
    assert host["oidc_endpoint"] == f"{emulator.base_url}/oidc"
    assert oidc["token_endpoint"] == f"{emulator.base_url}/oidc/v1/token"
    assert "client_credentials" in oidc["grant_types_supported"]


def test_without_credentials_configured_any_caller_is_let_in() -> None:
    with DatabricksEmulator() as open_emulator:
        assert submit(open_emulator, "SELECT 1", headers={}).json()["status"]["state"] == "SUCCEEDED"


# --- the wait and the states ---------------------------------------------------------------------------


def test_a_statement_done_within_the_wait_answers_with_its_result(emulator: DatabricksEmulator) -> None:
    emulator.config.query_seconds = 0.3
    started = time.monotonic()
    body = run(emulator, "SELECT id, name FROM employees WHERE id <= 3 ORDER BY id")
    assert time.monotonic() - started >= 0.3
    assert body["result"]["data_array"] == [
        ["1", "Grace Hopper"],
        ["2", "Alan Turing"],
        ["3", "Edsger Dijkstra"],
    ]
    assert body["manifest"]["total_row_count"] == 3
    assert set(body) == {"statement_id", "status", "manifest", "result"}


def test_with_0s_the_submit_answers_at_once_and_polls_follow_the_states(emulator: DatabricksEmulator) -> None:
    emulator.config.pending_seconds = 0.2
    emulator.config.query_seconds = 0.5
    started = time.monotonic()
    submitted = ok(submit(emulator, "SELECT 1 AS one", wait_timeout="0s"))
    answered_in = time.monotonic() - started
    statement_id = submitted["statement_id"]
    seen = [submitted["status"]["state"]]
    while seen[-1] in ("PENDING", "RUNNING"):
        time.sleep(0.05)
        seen.append(statement(emulator, statement_id)["status"]["state"])
    final = statement(emulator, statement_id)

    assert answered_in < 0.2
    assert seen[0] == "PENDING"
    assert "RUNNING" in seen
    assert seen[-1] == "SUCCEEDED"
    assert set(submitted) == {"statement_id", "status"}
    assert final["result"]["data_array"] == [["1"]]
    assert emulator.statement_states() == {statement_id: "succeeded"}


def test_with_0s_even_a_statement_done_at_once_answers_pending(emulator: DatabricksEmulator) -> None:
    submitted = ok(submit(emulator, "SELECT 1 AS one", wait_timeout="0s"))
    assert submitted["status"] == {"state": "PENDING"}
    assert statement(emulator, submitted["statement_id"])["status"] == {"state": "SUCCEEDED"}


@pytest.mark.parametrize(("on_wait_timeout", "state"), [("CONTINUE", "RUNNING"), ("CANCEL", "CANCELED")])
def test_when_the_wait_ends_first_continue_keeps_running_and_cancel_cancels(
    emulator: DatabricksEmulator, on_wait_timeout: str, state: str
) -> None:
    emulator.config.query_seconds = 30
    emulator.config.wait_scale = 0.05  # "5s" waits 0.25 s
    started = time.monotonic()
    body = ok(submit(emulator, "SELECT 1", wait_timeout="5s", on_wait_timeout=on_wait_timeout))
    assert 0.25 <= time.monotonic() - started < 2
    assert body["status"]["state"] == state
    assert emulator.statement_states()[body["statement_id"]] == state.lower()


def test_a_sql_error_is_a_failed_statement_answered_with_200(emulator: DatabricksEmulator) -> None:
    body = ok(submit(emulator, "SELECT * FROM no_such_table"))
    status = body["status"]
    assert status["state"] == "FAILED"
    assert status["error"]["error_code"] == "BAD_REQUEST"
    assert status["error"]["message"].startswith("[TABLE_OR_VIEW_NOT_FOUND]")
    assert status["sql_state"] == "42P01"
    assert "manifest" not in body
    assert statement(emulator, body["statement_id"])["status"] == status


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"wait_timeout": "3s"}, "wait_timeout"),
        ({"wait_timeout": "51s"}, "wait_timeout"),
        ({"wait_timeout": "10"}, "wait_timeout"),
        ({"warehouse_id": "no-such-warehouse"}, "no-such-warehouse"),
        ({"format": "CSV"}, "only with EXTERNAL_LINKS"),
        ({"disposition": "EXTERNAL_LINKS", "format": "ARROW_STREAM"}, "not supported by this emulator"),
        ({"disposition": "SOMEWHERE"}, "disposition"),
        ({"on_wait_timeout": "WAIT"}, "on_wait_timeout"),
        ({"row_limit": -1}, "row_limit"),
        ({"byte_limit": "lots"}, "byte_limit"),
        ({"limit": 3}, "unknown field"),
        ({"statement": ""}, "statement is required"),
        ({"parameters": [{"name": "x", "value": "1", "type": "ARRAY<INT>"}]}, "not supported"),
        ({"parameters": [{"name": "x", "value": 1}]}, "strings"),
        ({"parameters": [{"value": "1"}]}, "name"),
    ],
)
def test_a_request_the_service_would_refuse_is_a_400(
    emulator: DatabricksEmulator, fields: dict[str, Any], message: str
) -> None:
    response = submit(emulator, fields.pop("statement", "SELECT 1"), **fields)
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert message in response.json()["message"]
    assert emulator.statement_states() == {}


def test_unknown_statements_and_endpoints_are_404(emulator: DatabricksEmulator) -> None:
    unknown = get(emulator, f"{STATEMENTS_PATH}/01ef0000-0000-0000-0000-000000000000")
    no_api = get(emulator, "/api/2.0/sql/warehouses/x/statements")
    wrong_method = HTTP.delete(f"{emulator.base_url}{STATEMENTS_PATH}", headers=AUTH)
    assert (unknown.status_code, unknown.json()["error_code"]) == (404, "NOT_FOUND")
    assert (no_api.status_code, no_api.json()["error_code"]) == (404, "ENDPOINT_NOT_FOUND")
    assert wrong_method.status_code == 404


# --- values and parameters -------------------------------------------------------------------------


def test_every_warehouse_type_has_a_column_type_and_a_string_rendering(emulator: DatabricksEmulator) -> None:
    body = run(emulator, "SELECT * FROM all_types ORDER BY id")
    columns = {column["name"]: column for column in body["manifest"]["schema"]["columns"]}
    rows = body["result"]["data_array"]

    assert [(c["type_name"], c["type_text"]) for c in columns.values()] == [
        ("LONG", "BIGINT"),
        ("LONG", "BIGINT"),
        ("DECIMAL", "DECIMAL(12,4)"),
        ("DOUBLE", "DOUBLE"),
        ("STRING", "STRING"),
        ("BOOLEAN", "BOOLEAN"),
        ("DATE", "DATE"),
        ("STRING", "STRING"),  # time: Databricks has no TIME type
        ("TIMESTAMP_NTZ", "TIMESTAMP_NTZ"),
        ("TIMESTAMP", "TIMESTAMP"),
        ("BINARY", "BINARY"),
        ("STRING", "STRING"),  # json: its text
    ]
    assert [c["position"] for c in columns.values()] == list(range(12))
    assert (columns["c_decimal"]["type_precision"], columns["c_decimal"]["type_scale"]) == (12, 4)
    assert rows[0] == [
        "1",
        "42",
        "123.4500",
        "1.5",
        "plain text",
        "true",
        "2024-05-06",
        "12:34:56.123000",
        "2024-05-06T12:34:56.123456",
        "2024-05-06T10:34:56.500Z",
        "0001FEFF",
        '{"a":1,"b":[1,2,{"c":null}],"d":{"e":"f"}}',
    ]
    assert rows[1][1:4] == ["-9223372036854775808", "-98765432.1000", "-1.23E-4"]
    assert rows[1][4] == "unicode: héllo wörld ✓ 日本語 🎉"
    assert rows[1][7:11] == ["00:00:00", "1969-12-31T23:59:58.500", "1960-01-01T05:30:00.000Z", ""]
    assert rows[1][11] == '[1,"two",3.5,true,null,[],{}]'
    assert rows[2][3] == "Infinity"
    assert rows[2][9] == "2024-02-29T23:59:59.999999Z"
    assert rows[2][10] == bytes(range(256)).hex().upper()
    assert rows[3][3] == "NaN"
    assert rows[3][2] == "-0.5000"
    assert rows[4] == ["5"] + [None] * 11
    assert all(value is None or isinstance(value, str) for row in rows for value in row)


@pytest.mark.parametrize(
    ("type_text", "value", "shown"),
    [
        (None, "it's", "it's"),
        ("STRING", None, None),
        ("INT", " 42 ", "42"),
        ("BIGINT", "-9223372036854775808", "-9223372036854775808"),
        ("DOUBLE", "2.5", "2.5"),
        ("DOUBLE", "12345678.9", "1.23456789E7"),  # as Java prints a double
        ("DOUBLE", "0.00001", "1.0E-5"),
        ("FLOAT", "-0.001", "-0.001"),
        ("DECIMAL(10,2)", "3.14159", "3.14"),
        ("BOOLEAN", "yes", "true"),
        ("DATE", "2024-02-29", "2024-02-29"),
        ("TIMESTAMP", "2024-05-01 12:00:00+02:00", "2024-05-01T10:00:00.000Z"),
        ("TIMESTAMP_NTZ", "2024-05-01T12:00:00.25", "2024-05-01T12:00:00.250"),
        ("BINARY", "AB", "4142"),
    ],
)
def test_typed_parameters_bind_named_markers(
    emulator: DatabricksEmulator, type_text: str | None, value: str | None, shown: str | None
) -> None:
    parameter = {"name": "p", "value": value} | ({"type": type_text} if type_text else {})
    body = run(emulator, "SELECT :p AS p", parameters=[parameter])
    assert body["result"]["data_array"] == [[shown]]


def test_parameters_filter_rows(emulator: DatabricksEmulator) -> None:
    body = run(
        emulator,
        "SELECT id FROM employees WHERE hired >= :since ORDER BY id LIMIT 2",
        parameters=[{"name": "since", "value": "2020-01-01", "type": "DATE"}],
    )
    assert body["result"]["data_array"] == [["19"], ["20"]]


@pytest.mark.parametrize(
    ("parameter", "sql_state", "error_class"),
    [
        ({"name": "p", "value": "forty-two", "type": "INT"}, "22018", "CAST_INVALID_INPUT"),
        ({"name": "p", "value": "300", "type": "TINYINT"}, "22003", "CAST_OVERFLOW"),
        ({"name": "p", "value": "123456.7", "type": "DECIMAL(5,2)"}, "22003", "NUMERIC_VALUE_OUT_OF_RANGE"),
        ({"name": "other", "value": "1"}, "42P02", "UNBOUND_SQL_PARAMETER"),
    ],
)
def test_a_parameter_that_does_not_cast_fails_the_statement(
    emulator: DatabricksEmulator, parameter: dict[str, str], sql_state: str, error_class: str
) -> None:
    status = ok(submit(emulator, "SELECT :p AS p", parameters=[parameter]))["status"]
    assert (status["state"], status["sql_state"]) == ("FAILED", sql_state)
    assert status["error"]["message"].startswith(f"[{error_class}]")


# --- chunks ----------------------------------------------------------------------------------------


def test_forty_inline_chunks_follow_their_next_links(emulator: DatabricksEmulator) -> None:
    emulator.config.numbers_rows = 4000
    emulator.config.chunk_rows = 100
    body = run(emulator, "SELECT n, label FROM numbers")
    manifest = body["manifest"]
    statement_id = body["statement_id"]

    rows, result = [], body["result"]
    while True:
        rows.extend(result["data_array"])
        if "next_chunk_internal_link" not in result:
            break
        assert result["next_chunk_internal_link"].endswith(f"/result/chunks/{result['next_chunk_index']}")
        result = ok(get(emulator, result["next_chunk_internal_link"]))
    last_first = ok(chunk(emulator, statement_id, 39))  # any order

    assert manifest["total_chunk_count"] == 40
    assert manifest["total_row_count"] == 4000
    assert manifest["truncated"] is False
    assert manifest["chunks"][7] == {"chunk_index": 7, "row_offset": 700, "row_count": 100}
    assert "total_byte_count" not in manifest  # not available with INLINE
    assert [int(n) for n, _ in rows] == list(range(1, 4001))
    assert rows[41] == ["42", "number 0000042"]
    assert last_first["row_offset"] == 3900
    assert "next_chunk_index" not in last_first
    assert chunk(emulator, statement_id, 40).status_code == 400


def test_forty_chunks_through_external_links(emulator: DatabricksEmulator) -> None:
    emulator.config.numbers_rows = 2000
    emulator.config.chunk_rows = 50
    body = run(emulator, "SELECT n, ratio FROM numbers", disposition="EXTERNAL_LINKS")
    manifest = body["manifest"]
    statement_id = body["statement_id"]

    rows = []
    for info in manifest["chunks"]:
        links = ok(chunk(emulator, statement_id, info["chunk_index"]))["external_links"]
        assert len(links) == 1
        assert links[0]["chunk_index"] == info["chunk_index"]
        data = download(links[0])
        assert data.status_code == 200, data.text
        assert len(data.content) == info["byte_count"] == links[0]["byte_count"]
        rows.extend(json.loads(data.content))

    first = body["result"]["external_links"][0]
    assert manifest["total_chunk_count"] == 40
    assert manifest["total_byte_count"] == sum(info["byte_count"] for info in manifest["chunks"])
    assert "data_array" not in body["result"]
    assert first["external_link"].startswith(emulator.link_base_url + "/storage/")
    assert not first["external_link"].startswith(emulator.base_url)  # another origin, as cloud storage
    assert first["http_headers"] == {"x-amz-server-side-encryption-customer-algorithm": "AES256"}
    assert first["expiration"].endswith("Z")
    assert first["next_chunk_index"] == 1
    assert [int(n) for n, _ in rows] == list(range(1, 2001))
    assert rows[6] == ["7", "1.0"]


def test_external_links_obey_presigned_url_rules(emulator: DatabricksEmulator) -> None:
    emulator.config.link_headers = {"x-amz-server-side-encryption-customer-key": "a2V5"}
    body = run(emulator, "SELECT * FROM employees", disposition="EXTERNAL_LINKS")
    link = body["result"]["external_links"][0]
    headers = link["http_headers"]

    with_auth = download(link, headers | AUTH)
    without_headers = download(link, {})
    wrong_header = download(link, {"x-amz-server-side-encryption-customer-key": "b3RoZXI="})
    served = download(link)
    emulator.config.link_ttl_seconds = 0  # lowering the TTL expires links already issued
    expired = download(link)
    emulator.config.link_ttl_seconds = 900
    renewed = ok(chunk(emulator, body["statement_id"], 0))["external_links"][0]

    assert with_auth.status_code == 400
    assert "<Code>InvalidArgument</Code>" in with_auth.text
    assert without_headers.status_code == 400
    assert "<Code>InvalidRequest</Code>" in without_headers.text
    assert wrong_header.status_code == 403
    assert served.status_code == 200
    assert len(json.loads(served.content)) == 36
    assert expired.status_code == 403
    assert "<Message>Request has expired</Message>" in expired.text
    assert expired.headers["Content-Type"].startswith("application/xml")
    assert renewed["external_link"] != link["external_link"]
    assert download(renewed).content == served.content


def test_csv_chunks_carry_the_header_in_the_first_only_and_null_as_null(emulator: DatabricksEmulator) -> None:
    emulator.config.chunk_rows = 3
    body = run(
        emulator,
        "SELECT id, c_string, c_binary FROM all_types ORDER BY id",
        disposition="EXTERNAL_LINKS",
        format="CSV",
    )
    first = download(body["result"]["external_links"][0])
    second = download(ok(chunk(emulator, body["statement_id"], 1))["external_links"][0])

    first_rows = list(csv.reader(io.StringIO(first.text)))
    second_rows = list(csv.reader(io.StringIO(second.text)))
    assert body["manifest"]["format"] == "CSV"
    assert first_rows[0] == ["id", "c_string", "c_binary"]
    assert first_rows[3][1] == "quotes ' \" and\nnew\tlines, commas; and \\ backslash"
    assert second_rows == [["4", "", "null"], ["5", "null", "null"]]
    assert len(first.content) == body["manifest"]["chunks"][0]["byte_count"]


def test_limits_truncate_and_an_oversized_inline_result_fails(emulator: DatabricksEmulator) -> None:
    emulator.config.numbers_rows = 500
    by_rows = run(emulator, "SELECT n FROM numbers", row_limit=10)
    by_bytes = run(emulator, "SELECT n FROM numbers", byte_limit=100)
    whole = run(emulator, "SELECT n FROM numbers", row_limit=500)
    emulator.config.truncate_after_rows = 120  # as the 100 GiB cap of EXTERNAL_LINKS
    capped = run(emulator, "SELECT n FROM numbers", disposition="EXTERNAL_LINKS")
    emulator.config.inline_limit_bytes = 1000
    too_big = ok(submit(emulator, "SELECT n FROM numbers"))

    assert (by_rows["manifest"]["total_row_count"], by_rows["manifest"]["truncated"]) == (10, True)
    assert by_rows["result"]["data_array"][-1] == ["10"]
    assert by_bytes["manifest"]["truncated"] is True
    assert 0 < by_bytes["manifest"]["total_row_count"] < 500
    assert len(json.dumps(by_bytes["result"]["data_array"], separators=(",", ":"))) <= 100
    assert (whole["manifest"]["total_row_count"], whole["manifest"]["truncated"]) == (500, False)
    assert (capped["manifest"]["total_row_count"], capped["manifest"]["truncated"]) == (120, True)
    assert too_big["status"]["state"] == "FAILED"
    assert "EXTERNAL_LINKS" in too_big["status"]["error"]["message"]


def test_an_empty_result_has_no_chunks(emulator: DatabricksEmulator) -> None:
    body = run(emulator, "SELECT id FROM employees WHERE id > 1000")
    assert body["manifest"]["total_chunk_count"] == 0
    assert body["manifest"]["total_row_count"] == 0
    assert "result" not in body


# --- cancel, liveness, expiry ----------------------------------------------------------------------


def test_cancel_cancels_or_is_silently_ignored_when_configured(emulator: DatabricksEmulator) -> None:
    emulator.config.query_seconds = 30
    canceled = ok(submit(emulator, "SELECT 1", wait_timeout="0s"))["statement_id"]
    answer = HTTP.post(f"{emulator.base_url}{STATEMENTS_PATH}/{canceled}/cancel", headers=AUTH)
    emulator.config.cancel_ignored = True
    emulator.config.query_seconds = 0.3
    ignored = ok(submit(emulator, "SELECT 1", wait_timeout="0s"))["statement_id"]
    ignored_answer = HTTP.post(f"{emulator.base_url}{STATEMENTS_PATH}/{ignored}/cancel", headers=AUTH)
    time.sleep(0.35)
    unknown = HTTP.post(f"{emulator.base_url}{STATEMENTS_PATH}/nope/cancel", headers=AUTH)

    assert (answer.status_code, answer.json()) == (200, {})
    assert statement(emulator, canceled)["status"] == {"state": "CANCELED"}
    assert (ignored_answer.status_code, ignored_answer.json()) == (200, {})
    assert statement(emulator, ignored)["status"]["state"] == "SUCCEEDED"
    assert unknown.status_code == 404


def test_a_statement_nobody_polls_is_canceled(emulator: DatabricksEmulator) -> None:
    emulator.config.query_seconds = 30
    emulator.config.abandon_after_seconds = 0.5
    polled = ok(submit(emulator, "SELECT 1", wait_timeout="0s"))["statement_id"]
    forgotten = ok(submit(emulator, "SELECT 2", wait_timeout="0s"))["statement_id"]
    for _ in range(7):
        time.sleep(0.1)
        assert statement(emulator, polled)["status"]["state"] == "RUNNING"
    assert emulator.statement_states() == {polled: "running", forgotten: "canceled"}


def test_results_close_then_statements_are_forgotten(emulator: DatabricksEmulator) -> None:
    statement_id = run(emulator, "SELECT 1")["statement_id"]
    emulator.config.result_ttl_seconds = 0
    closed = statement(emulator, statement_id)
    closed_chunk = chunk(emulator, statement_id, 0)
    emulator.config.forget_after_seconds = 0
    gone = get(emulator, f"{STATEMENTS_PATH}/{statement_id}")

    assert closed == {"statement_id": statement_id, "status": {"state": "CLOSED"}}
    assert closed_chunk.status_code == 404
    assert (gone.status_code, gone.json()["error_code"]) == (404, "NOT_FOUND")
    assert emulator.statement_states() == {statement_id: "expired"}


def test_a_running_statement_has_no_chunks_yet(emulator: DatabricksEmulator) -> None:
    emulator.config.query_seconds = 30
    statement_id = ok(submit(emulator, "SELECT 1", wait_timeout="0s"))["statement_id"]
    response = chunk(emulator, statement_id, 0)
    assert response.status_code == 400
    assert "has no result: it is PENDING" in response.json()["message"]


# --- faults and the control API --------------------------------------------------------------------


def test_faults_answer_each_services_error_with_an_integer_retry_after(emulator: DatabricksEmulator) -> None:
    emulator.fail_next("submit", 429, retry_after=2.5)
    emulator.fail_next("token", 503, retry_after=1)
    emulator.fail_next("any", 502)
    limited = submit(emulator, "SELECT 1")
    token = oauth_token(emulator)
    gateway = submit(emulator, "SELECT 1")
    body = run(emulator, "SELECT * FROM employees", disposition="EXTERNAL_LINKS")
    emulator.fail_next("link", 503, retry_after=4)
    emulator.fail_next("status", 503, retry_after=1)
    slow_storage = download(body["result"]["external_links"][0])
    unavailable = get(emulator, f"{STATEMENTS_PATH}/{body['statement_id']}")

    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "3")
    assert limited.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert (token.status_code, token.headers["Retry-After"], token.json()["error"]) == (
        503,
        "1",
        "temporarily_unavailable",
    )
    assert (gateway.status_code, gateway.headers["Content-Type"].split(";")[0]) == (502, "text/html")
    assert (slow_storage.status_code, slow_storage.headers["Retry-After"]) == (503, "4")
    assert "<Code>SlowDown</Code>" in slow_storage.text
    assert (unavailable.status_code, unavailable.json()["error_code"]) == (503, "TEMPORARILY_UNAVAILABLE")
    assert emulator.token_requests == 1
    assert emulator.faults.pending() == []


def test_transport_faults_and_expiry_faults(emulator: DatabricksEmulator) -> None:
    body = run(emulator, "SELECT * FROM employees", disposition="EXTERNAL_LINKS")
    link = body["result"]["external_links"][0]
    emulator.fail_next("link", truncate_after_bytes=100)
    with pytest.raises(httpx.HTTPError):
        download(link)
    emulator.fail_next("link", expire=True)
    expired_link = download(link)
    emulator.fail_next("status", expire=True)
    forgotten = get(emulator, f"{STATEMENTS_PATH}/{body['statement_id']}")

    assert expired_link.status_code == 403
    assert forgotten.status_code == 404
    assert emulator.statement_states() == {body["statement_id"]: "expired"}


def test_the_control_api_changes_config_and_reads_state(emulator: DatabricksEmulator) -> None:
    base = f"{emulator.base_url}/_emulator"
    config = HTTP.post(
        f"{base}/config", json={"chunk_rows": 7, "truncate_after_rows": None, "link_headers": {}}
    )
    bad = HTTP.post(f"{base}/config", json={"no_such_knob": 1})
    faults = HTTP.post(f"{base}/faults", json={"operation": "chunk", "status": 500})
    body = run(emulator, "SELECT id FROM employees")
    failed_chunk = chunk(emulator, body["statement_id"], 1)
    statements = HTTP.get(f"{base}/statements").json()
    tokens = HTTP.get(f"{base}/tokens").json()
    requests = HTTP.get(f"{base}/requests").json()

    assert config.json()["chunk_rows"] == 7
    assert emulator.config.link_headers == {}
    assert bad.status_code == 400
    assert faults.json()[0]["operation"] == "chunk"
    assert body["manifest"]["total_chunk_count"] == 6
    assert failed_chunk.status_code == 500
    assert statements == {body["statement_id"]: "succeeded"}
    assert tokens == {"token_requests": 0}
    assert [entry["method"] for entry in requests] == ["POST", "GET"]
    assert emulator.submitted == [{"statement": "SELECT id FROM employees", "warehouse_id": WAREHOUSE_ID}]
