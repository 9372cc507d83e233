"""The ES|QL emulator over raw HTTP: protocol details the official client hides from its callers."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import httpx
import pytest

from query_relay_local.emulators.esql import EsqlEmulator, is_well_formed_async_id, new_async_id

SMALL_QUERY = "FROM employees | KEEP emp_no, first_name, hire_date, still_hired | SORT emp_no | LIMIT 3"
VENDOR_JSON = "application/vnd.elasticsearch+json; compatible-with=9"


@pytest.fixture
def emulator() -> Iterator[EsqlEmulator]:
    with EsqlEmulator() as running:
        yield running


@pytest.fixture
def http(emulator: EsqlEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.base_url, timeout=10) as client:
        yield client


def submit(
    http: httpx.Client, query: str = SMALL_QUERY, url: str = "/_query/async", **body: Any
) -> httpx.Response:
    return http.post(url, json={"query": query, **body})


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    assert body["status"] == response.status_code
    assert body["error"]["root_cause"][0]["type"] == body["error"]["type"]
    return response.status_code, body["error"]["type"], body["error"]["reason"]


# --- fast path and headers -------------------------------------------------------------------


def test_a_query_that_finishes_in_time_answers_its_result_without_an_id(
    http: httpx.Client, emulator: EsqlEmulator
) -> None:
    response = submit(http, wait_for_completion_timeout="2s")

    body = response.json()
    assert response.status_code == 200
    assert response.headers["X-Elastic-Product"] == "Elasticsearch"
    assert response.headers["X-Elasticsearch-Async-Is-Running"] == "?0"
    assert "X-Elasticsearch-Async-Id" not in response.headers
    assert "id" not in body
    assert body["is_running"] is False
    assert body["is_partial"] is False
    assert body["columns"] == [
        {"name": "emp_no", "type": "integer"},
        {"name": "first_name", "type": "keyword"},
        {"name": "hire_date", "type": "date"},
        {"name": "still_hired", "type": "boolean"},
    ]
    assert [row[0] for row in body["values"]] == [10001, 10002, 10003]
    assert body["values"][0][2].endswith("T00:00:00.000Z")
    assert body["documents_found"] == 1000
    for key in ("took", "start_time_in_millis", "expiration_time_in_millis", "completion_time_in_millis"):
        assert isinstance(body[key], int)
    assert emulator.task_states() == {}


def test_keep_on_completion_stores_a_fast_result_under_an_id(
    http: httpx.Client, emulator: EsqlEmulator
) -> None:
    response = submit(http, keep_on_completion=True)

    async_id = response.json()["id"]
    assert response.headers["X-Elasticsearch-Async-Id"] == async_id
    assert emulator.task_states() == {async_id: "finished"}
    again = http.get(f"/_query/async/{async_id}")
    assert again.json()["values"] == response.json()["values"]
    assert again.headers["X-Elasticsearch-Async-Is-Running"] == "?0"


def test_json_content_type_follows_the_compatible_with_accept_header(http: httpx.Client) -> None:
    vendor = http.post("/_query/async", json={"query": SMALL_QUERY}, headers={"Accept": VENDOR_JSON})
    plain = submit(http)

    assert vendor.headers["Content-Type"] == "application/vnd.elasticsearch+json;compatible-with=9"
    assert plain.headers["Content-Type"] == "application/json"


def test_columnar_answers_one_array_per_column(http: httpx.Client) -> None:
    body = submit(http, columnar=True).json()

    assert body["values"][0] == [10001, 10002, 10003]
    assert len(body["values"]) == 4


def test_drop_null_columns_lists_all_columns_separately(http: httpx.Client) -> None:
    response = http.post(
        "/_query/async?drop_null_columns=true",
        json={"query": "ROW a = 1, b = null, c = 2 | EVAL d = b"},
    )

    body = response.json()
    assert [column["name"] for column in body["all_columns"]] == ["a", "b", "c", "d"]
    assert [column["name"] for column in body["columns"]] == ["a", "c"]
    assert body["values"] == [[1, 2]]


def test_url_params_are_accepted_for_async_settings_like_older_clients_send(
    http: httpx.Client, emulator: EsqlEmulator
) -> None:
    emulator.config.query_seconds = 30
    response = http.post(
        "/_query/async?wait_for_completion_timeout=0s&keep_alive=2m&keep_on_completion=true",
        json={"query": SMALL_QUERY},
    )

    assert response.json()["is_running"] is True


# --- slow path -------------------------------------------------------------------------------


def test_a_slow_query_answers_an_id_then_its_result_on_get(
    http: httpx.Client, emulator: EsqlEmulator
) -> None:
    emulator.config.query_seconds = 0.3

    submitted = submit(http, wait_for_completion_timeout="0s")
    async_id = submitted.json()["id"]
    finished = http.get(f"/_query/async/{async_id}", params={"wait_for_completion_timeout": "30s"})

    assert submitted.json() == {"id": async_id, "is_running": True, "columns": [], "values": []}
    assert submitted.headers["X-Elasticsearch-Async-Is-Running"] == "?1"
    assert submitted.headers["X-Elasticsearch-Async-Id"] == async_id
    assert finished.headers["X-Elasticsearch-Async-Is-Running"] == "?0"
    assert finished.json()["id"] == async_id
    assert finished.json()["is_running"] is False
    assert [row[0] for row in finished.json()["values"]] == [10001, 10002, 10003]
    assert finished.json()["took"] >= 300
    assert emulator.task_states() == {async_id: "finished"}


def test_get_without_wait_answers_the_running_state_at_once(
    http: httpx.Client, emulator: EsqlEmulator
) -> None:
    emulator.config.query_seconds = 60
    async_id = submit(http, wait_for_completion_timeout="0s").json()["id"]

    response = http.get(f"/_query/async/{async_id}")

    assert response.json()["is_running"] is True
    assert emulator.task_states() == {async_id: "running"}


def test_a_long_poll_returns_as_soon_as_the_query_finishes(emulator: EsqlEmulator) -> None:
    emulator.config.query_seconds = 0.5
    # The client gives up after 10 s: a GET that sat out its whole 120 s wait would fail this test.
    with httpx.Client(base_url=emulator.base_url, timeout=10) as http:
        async_id = submit(http, wait_for_completion_timeout="0s").json()["id"]

        response = http.get(f"/_query/async/{async_id}", params={"wait_for_completion_timeout": "120s"})

    assert response.json()["is_running"] is False


def test_a_long_poll_wakes_up_when_the_query_is_deleted(emulator: EsqlEmulator) -> None:
    emulator.config.query_seconds = 300
    with httpx.Client(base_url=emulator.base_url, timeout=10) as http:
        async_id = submit(http, wait_for_completion_timeout="0s").json()["id"]
        answers: list[httpx.Response] = []
        poller = threading.Thread(
            target=lambda: answers.append(
                http.get(f"/_query/async/{async_id}", params={"wait_for_completion_timeout": "120s"})
            )
        )
        poller.start()
        while not any(
            entry.query.get("wait_for_completion_timeout") == "120s" for entry in emulator.requests
        ):
            time.sleep(0.01)

        deleted = http.delete(f"/_query/async/{async_id}")
        poller.join(timeout=10)

    assert deleted.json() == {"acknowledged": True}
    assert [answer.status_code for answer in answers] == [404]


def test_csv_answers_an_empty_body_while_running_and_rows_when_done(
    http: httpx.Client, emulator: EsqlEmulator
) -> None:
    emulator.config.query_seconds = 0.2

    running = http.post(
        "/_query/async?format=csv", json={"query": SMALL_QUERY, "wait_for_completion_timeout": "0s"}
    )
    async_id = running.headers["X-Elasticsearch-Async-Id"]
    done = http.get(
        f"/_query/async/{async_id}", params={"format": "csv", "wait_for_completion_timeout": "10s"}
    )

    assert running.content == b""
    assert running.headers["X-Elasticsearch-Async-Is-Running"] == "?1"
    assert running.headers["Content-Type"].startswith("text/csv")
    assert done.headers["X-Elasticsearch-Async-Is-Running"] == "?0"
    lines = done.text.split("\r\n")
    assert lines[0] == "emp_no,first_name,hire_date,still_hired"
    assert lines[1].startswith("10001,")
    assert lines[1].endswith((",true", ",false"))
    assert lines[-1] == ""


def test_csv_quotes_values_and_honours_the_delimiter(http: httpx.Client) -> None:
    response = http.post(
        "/_query/async?format=csv&delimiter=;",
        json={"query": 'ROW a = "x;y", b = "say \\"hi\\"", c = null, d = 1.5'},
    )

    assert response.text == 'a;b;c;d\r\n"x;y";"say ""hi""";;1.5\r\n'


def test_format_follows_the_accept_header_and_tsv_is_served(http: httpx.Client) -> None:
    csv = http.post("/_query/async", json={"query": "ROW a = 1, b = true"}, headers={"Accept": "text/csv"})
    tsv = http.post("/_query/async?format=tsv", json={"query": 'ROW a = "tab\\there", b = 2'})

    assert csv.text == "a,b\r\n1,true\r\n"
    assert tsv.text == "a\tb\ntab\\there\t2\n"


def test_stop_ends_a_running_query_with_its_result_marked_partial(
    http: httpx.Client, emulator: EsqlEmulator
) -> None:
    emulator.config.query_seconds = 300
    async_id = submit(http, wait_for_completion_timeout="0s").json()["id"]

    stopped = http.post(f"/_query/async/{async_id}/stop")

    assert stopped.json()["is_running"] is False
    assert stopped.json()["is_partial"] is True
    assert len(stopped.json()["values"]) == 3
    assert emulator.task_states() == {async_id: "finished"}


def test_delete_of_a_finished_query_drops_its_result(http: httpx.Client, emulator: EsqlEmulator) -> None:
    async_id = submit(http, keep_on_completion=True).json()["id"]

    deleted = http.delete(f"/_query/async/{async_id}")
    after = http.get(f"/_query/async/{async_id}")

    assert deleted.json() == {"acknowledged": True}
    assert error_of(after) == (404, "resource_not_found_exception", async_id)
    assert emulator.task_states() == {async_id: "deleted"}


def test_a_task_disappears_after_its_keep_alive(http: httpx.Client, emulator: EsqlEmulator) -> None:
    emulator.config.min_keep_alive_seconds = 0.05
    emulator.config.query_seconds = 300
    async_id = submit(http, wait_for_completion_timeout="0s", keep_alive="100ms").json()["id"]

    time.sleep(0.3)
    response = http.get(f"/_query/async/{async_id}")

    assert error_of(response)[:2] == (404, "resource_not_found_exception")
    assert emulator.task_states() == {async_id: "expired"}


def test_a_get_keep_alive_extends_the_expiry(http: httpx.Client, emulator: EsqlEmulator) -> None:
    emulator.config.min_keep_alive_seconds = 0.05
    emulator.config.query_seconds = 300
    async_id = submit(http, wait_for_completion_timeout="0s", keep_alive="100ms").json()["id"]

    extended = http.get(f"/_query/async/{async_id}", params={"keep_alive": "5m"})
    time.sleep(0.3)

    assert extended.json()["is_running"] is True
    assert http.get(f"/_query/async/{async_id}").json()["is_running"] is True


def test_keep_alive_below_one_second_is_refused_like_es(http: httpx.Client) -> None:
    response = submit(http, keep_alive="500ms")

    assert error_of(response)[:2] == (400, "action_request_validation_exception")


# --- ids -------------------------------------------------------------------------------------


def test_ids_are_base64url_with_padding_and_arrive_quoted(http: httpx.Client, emulator: EsqlEmulator) -> None:
    async_id = submit(http, keep_on_completion=True).json()["id"]
    quoted = async_id.replace("=", "%3D")

    response = http.get(f"/_query/async/{quoted}")

    assert async_id.endswith("=")
    assert is_well_formed_async_id(async_id)
    base64.urlsafe_b64decode(async_id)
    assert response.status_code == 200
    assert response.json()["id"] == async_id


def test_a_malformed_id_is_a_bad_request_and_an_unknown_one_is_not_found(http: httpx.Client) -> None:
    unknown = new_async_id(987654)

    malformed = http.get("/_query/async/not-an-id!")
    missing = http.get(f"/_query/async/{unknown}")
    missing_delete = http.delete(f"/_query/async/{unknown}")

    assert error_of(malformed) == (400, "illegal_argument_exception", "invalid id: [not-an-id!]")
    assert error_of(missing) == (404, "resource_not_found_exception", unknown)
    assert error_of(missing_delete)[:2] == (404, "resource_not_found_exception")


# --- request validation ----------------------------------------------------------------------


def test_an_unknown_body_field_is_refused(http: httpx.Client) -> None:
    response = submit(http, wait_for_completion="1s")

    assert error_of(response) == (
        400,
        "x_content_parse_exception",
        "[esql_query] unknown field [wait_for_completion]",
    )


def test_an_unknown_url_parameter_is_refused(http: httpx.Client) -> None:
    response = http.post("/_query/async?timeout=1s", json={"query": SMALL_QUERY})

    assert error_of(response) == (
        400,
        "illegal_argument_exception",
        "request [/_query/async] contains unrecognized parameter: [timeout]",
    )


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        ({}, "action_request_validation_exception"),
        ({"query": SMALL_QUERY, "params": [1, {"name": 2}]}, "x_content_parse_exception"),
        ({"query": SMALL_QUERY, "wait_for_completion_timeout": "soon"}, "illegal_argument_exception"),
        ({"query": SMALL_QUERY, "columnar": "yes"}, "x_content_parse_exception"),
        ({"query": "FROM employees | WHERE", "params": []}, "parsing_exception"),
        ({"query": "FROM employees | KEEP nope"}, "verification_exception"),
    ],
)
def test_bad_requests_get_es_error_envelopes(
    http: httpx.Client, body: dict[str, Any], error_type: str
) -> None:
    response = http.post("/_query/async", json=body)

    assert error_of(response)[:2] == (400, error_type)


def test_a_body_that_is_not_json_is_refused(http: httpx.Client) -> None:
    response = http.post("/_query/async", content=b"{not json", headers={"Content-Type": "application/json"})

    assert error_of(response)[:2] == (400, "x_content_parse_exception")


def test_params_positional_and_named_reach_the_query(http: httpx.Client) -> None:
    positional = submit(http, "FROM employees | WHERE emp_no == ? | KEEP emp_no", params=[10007])
    named = submit(http, "FROM employees | WHERE emp_no == ?id | KEEP emp_no", params=[{"id": 10008}])

    assert positional.json()["values"] == [[10007]]
    assert named.json()["values"] == [[10008]]


def test_filter_narrows_the_documents_read(http: httpx.Client) -> None:
    response = submit(
        http,
        "FROM employees | STATS n = COUNT(*)",
        filter={"bool": {"filter": [{"term": {"emp_no": 10001}}]}},
    )

    assert response.json()["values"] == [[1]]
    assert response.json()["documents_found"] == 1


def test_wrong_method_and_unknown_path(http: httpx.Client) -> None:
    wrong_method = http.get("/_query/async")
    unknown_path = http.get("/_nothing_here")

    assert error_of(wrong_method)[:2] == (405, "illegal_argument_exception")
    assert error_of(unknown_path)[:2] == (400, "illegal_argument_exception")


def test_the_synchronous_query_endpoint_answers_the_result(http: httpx.Client) -> None:
    response = submit(http, url="/_query")

    body = response.json()
    assert "is_running" not in body
    assert "id" not in body
    assert len(body["values"]) == 3
    assert "X-Elasticsearch-Async-Is-Running" not in response.headers


def test_large_results_are_streamed_in_chunks(http: httpx.Client) -> None:
    with http.stream(
        "POST", "/_query/async", json={"query": "FROM synthetic_50000 | LIMIT 50000", "columnar": False}
    ) as response:
        chunks = list(response.iter_raw())

    body = json.loads(b"".join(chunks))
    assert "Content-Length" not in response.headers
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert len(body["values"]) == 50_000
    assert body["values"][-1][4] == 49_999


# --- auth ------------------------------------------------------------------------------------


@pytest.fixture
def secured() -> Iterator[EsqlEmulator]:
    with EsqlEmulator(
        api_key="a2V5LWlkOmtleS1zZWNyZXQ=", basic=("elastic", "changeme"), bearer="tok-123"
    ) as running:
        yield running


@pytest.mark.parametrize(
    "authorization",
    [
        "ApiKey a2V5LWlkOmtleS1zZWNyZXQ=",
        "Basic " + base64.b64encode(b"elastic:changeme").decode(),
        "Bearer tok-123",
    ],
)
def test_each_configured_credential_is_accepted(secured: EsqlEmulator, authorization: str) -> None:
    response = httpx.post(
        f"{secured.base_url}/_query/async",
        json={"query": SMALL_QUERY},
        headers={"Authorization": authorization},
    )

    assert response.status_code == 200


def test_missing_credentials_are_refused_with_a_challenge(secured: EsqlEmulator) -> None:
    response = httpx.post(f"{secured.base_url}/_query/async", json={"query": SMALL_QUERY})

    status, error_type, reason = error_of(response)
    assert (status, error_type) == (401, "security_exception")
    assert reason == "missing authentication credentials for REST request [/_query/async]"
    assert 'Basic realm="security", charset="UTF-8"' in response.headers.get_list("WWW-Authenticate")


def test_wrong_credentials_are_refused_without_echoing_them(secured: EsqlEmulator) -> None:
    response = httpx.post(
        f"{secured.base_url}/_query/async",
        json={"query": SMALL_QUERY},
        headers={"Authorization": "ApiKey d3Jvbmc6a2V5"},
    )

    assert error_of(response)[:2] == (401, "security_exception")
    assert "d3Jvbmc6a2V5" not in response.text
    assert "a2V5LWlkOmtleS1zZWNyZXQ=" not in repr(secured)


# --- test hooks: faults, failures, control API -----------------------------------------------


def test_an_injected_429_carries_retry_after_and_is_used_up(
    http: httpx.Client, emulator: EsqlEmulator
) -> None:
    emulator.fail_next("submit", 429, retry_after=2)

    rejected = submit(http)
    accepted = submit(http)

    assert error_of(rejected)[:2] == (429, "es_rejected_execution_exception")
    assert rejected.headers["Retry-After"] == "2"
    assert rejected.headers["X-Elastic-Product"] == "Elasticsearch"
    assert accepted.status_code == 200


def test_faults_target_one_operation_or_any_and_repeat(http: httpx.Client, emulator: EsqlEmulator) -> None:
    async_id = submit(http, keep_on_completion=True).json()["id"]
    emulator.fail_next("get", 503, times=2)
    emulator.fail_next("any", 500)

    statuses = [http.get(f"/_query/async/{async_id}").status_code for _ in range(3)]
    after_get_faults = submit(http)
    last = submit(http)

    assert statuses == [503, 503, 500]  # faults are used oldest first
    assert after_get_faults.status_code == 200
    assert last.status_code == 200


def test_an_injected_503_is_no_shard_available(http: httpx.Client, emulator: EsqlEmulator) -> None:
    emulator.fail_next("any", 503)

    assert error_of(submit(http))[:2] == (503, "no_shard_available_action_exception")


def test_an_echoing_error_quotes_the_credentials_in_every_string(emulator: EsqlEmulator) -> None:
    emulator.fail_next("submit", 400, echo_credentials=True)
    with httpx.Client(base_url=emulator.base_url, timeout=10) as client:
        answer = client.post("/_query/async", json={"query": SMALL_QUERY}, auth=("reader", "pa55word"))
    body = answer.json()
    assert answer.status_code == 400
    for said in (body["error"]["type"], body["error"]["reason"], body["error"]["root_cause"][0]["type"]):
        assert "reader:pa55word" in said
        assert "Basic " in said


def test_a_trickled_answer_arrives_a_byte_at_a_time(emulator: EsqlEmulator) -> None:
    emulator.fail_next("submit", trickle_seconds=0.002)
    with (
        httpx.Client(base_url=emulator.base_url, timeout=10) as client,
        client.stream("POST", "/_query/async", json={"query": SMALL_QUERY}) as answer,
    ):
        pieces = list(answer.iter_raw())
    assert len(pieces) > 10
    assert {len(piece) for piece in pieces} == {1}
    assert json.loads(b"".join(pieces))["is_running"] is False


@pytest.mark.parametrize(
    ("fault", "problem"),
    [
        ({"echo_credentials": True}, "echo_credentials goes with a status"),
        ({"trickle_seconds": 0}, "trickle_seconds must be more than 0"),
        ({"trickle_seconds": 1, "reset": True}, "a trickled answer is whole"),
    ],
)
def test_fail_next_refuses_new_kinds_out_of_place(
    emulator: EsqlEmulator, fault: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        emulator.fail_next("submit", **fault)


def test_fail_next_rejects_unknown_operations(emulator: EsqlEmulator) -> None:
    with pytest.raises(ValueError, match="unknown operation"):
        emulator.fail_next("fetch", 500)


def test_a_running_query_can_fail_after_submit_and_get_answers_the_stored_error(
    http: httpx.Client, emulator: EsqlEmulator
) -> None:
    emulator.config.query_seconds = 60
    emulator.config.fail_running_after = 0.2
    emulator.config.fail_running_status = 500

    submitted = submit(http, wait_for_completion_timeout="0s")
    async_id = submitted.json()["id"]
    failed = http.get(f"/_query/async/{async_id}", params={"wait_for_completion_timeout": "30s"})
    next_one = submit(http, wait_for_completion_timeout="0s")

    assert submitted.json()["is_running"] is True
    assert error_of(failed)[:2] == (500, "illegal_state_exception")
    assert emulator.task_states()[async_id] == "failed"
    assert asdict(emulator.config)["fail_running_after"] is None  # one-shot
    assert next_one.json()["is_running"] is True


def test_the_control_api_drives_the_same_hooks_over_http(http: httpx.Client, emulator: EsqlEmulator) -> None:
    config = http.post("/_emulator/config", json={"query_seconds": 60}).json()
    armed = http.post("/_emulator/faults", json={"operation": "get", "status": 429, "retry_after": 1}).json()
    async_id = submit(http, wait_for_completion_timeout="0s").json()["id"]
    rejected = http.get(f"/_query/async/{async_id}")
    tasks = http.get("/_emulator/tasks").json()
    logged = http.get("/_emulator/requests").json()
    bad = http.post("/_emulator/config", json={"query_secs": 1})

    assert config["query_seconds"] == 60
    assert emulator.config.query_seconds == 60
    assert armed == [{"operation": "get", "status": 429, "retry_after": 1.0, "times": 1}]
    assert rejected.status_code == 429
    assert tasks == {async_id: "running"}
    assert [(entry["method"], entry["path"]) for entry in logged] == [
        ("POST", "/_query/async"),
        ("GET", f"/_query/async/{async_id}"),
    ]
    assert bad.status_code == 400


def test_the_request_log_records_method_path_and_params(http: httpx.Client, emulator: EsqlEmulator) -> None:
    http.post("/_query/async?format=csv", json={"query": SMALL_QUERY})

    assert [tuple(entry) for entry in emulator.requests] == [("POST", "/_query/async", {"format": "csv"})]
