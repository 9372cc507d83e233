"""The Looker emulator over real HTTP: login and tokens, saved queries and looks, the query engine
(filters, sorts, limits, aggregation), a task's life, results by format, faults and test hooks."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from query_relay_local.emulators.looker import LookerEmulator
from query_relay_local.emulators.looker_data import ORDER_COUNT, QuerySpec, run_query

CLIENT_ID, CLIENT_SECRET = "emulator-client", "emulator-secret-5b1a"
ORDERS = {"model": "ecommerce", "view": "orders"}


class Api:
    """A logged-in HTTP client for the emulator's /api/4.0."""

    def __init__(self, emulator: LookerEmulator, scheme: str = "token") -> None:
        self.base = f"{emulator.base_url}/api/4.0"
        login = httpx.post(
            f"{self.base}/login", data={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
        )
        assert login.status_code == 200, login.text
        self.token = login.json()["access_token"]
        self.headers = {"Authorization": f"{scheme} {self.token}"}

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", params=params, headers=self.headers)

    def post(self, path: str, body: dict[str, Any], **params: Any) -> httpx.Response:
        return httpx.post(f"{self.base}{path}", json=body, params=params, headers=self.headers)

    def delete(self, path: str) -> httpx.Response:
        return httpx.delete(f"{self.base}{path}", headers=self.headers)

    def query_id(self, **query: Any) -> str:
        response = self.post("/queries", {**ORDERS, **query})
        assert response.status_code == 200, response.text
        query_id: str = response.json()["id"]
        return query_id

    def rows(self, **query: Any) -> list[dict[str, Any]]:
        response = self.get(f"/queries/{self.query_id(**query)}/run/json")
        assert response.status_code == 200, response.text
        rows: list[dict[str, Any]] = response.json()
        return rows

    def task(self, query_id: str, result_format: str = "json", **params: Any) -> str:
        response = self.post("/query_tasks", {"query_id": query_id, "result_format": result_format}, **params)
        assert response.status_code == 200, response.text
        task_id: str = response.json()["id"]
        return task_id

    def status(self, task_id: str) -> str:
        status: str = self.get(f"/query_tasks/{task_id}").json()["status"]
        return status


@pytest.fixture
def emulator() -> Iterator[LookerEmulator]:
    with LookerEmulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as running:
        yield running


@pytest.fixture
def api(emulator: LookerEmulator) -> Api:
    return Api(emulator)


# --- login and tokens ----------------------------------------------------------------------------


def test_login_answers_a_bearer_token_for_an_hour(emulator: LookerEmulator) -> None:
    answer = httpx.post(
        f"{emulator.base_url}/api/4.0/login", data={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    ).json()
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] == 3600
    assert len(answer["access_token"]) >= 32


def test_login_takes_the_credentials_from_url_parameters_too(emulator: LookerEmulator) -> None:
    response = httpx.post(
        f"{emulator.base_url}/api/4.0/login", params={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    "credentials",
    [
        {"client_id": CLIENT_ID, "client_secret": "wrong"},
        {"client_id": "someone", "client_secret": CLIENT_SECRET},
        {},
    ],
)
def test_wrong_credentials_answer_404_like_looker(
    emulator: LookerEmulator, credentials: dict[str, str]
) -> None:
    response = httpx.post(f"{emulator.base_url}/api/4.0/login", data=credentials)
    assert response.status_code == 404
    assert response.json()["message"] == "Not found"
    assert "documentation_url" in response.json()


def test_without_configured_credentials_any_pair_logs_in() -> None:
    with LookerEmulator() as open_emulator:
        response = httpx.post(
            f"{open_emulator.base_url}/api/4.0/login", data={"client_id": "a", "client_secret": "b"}
        )
    assert response.status_code == 200


@pytest.mark.parametrize("scheme", ["token", "Bearer", "bearer"])
def test_both_token_schemes_are_accepted(emulator: LookerEmulator, scheme: str) -> None:
    assert Api(emulator, scheme).get("/looks/7").status_code == 200


@pytest.mark.parametrize("authorization", [None, "token nope", "Basic abc", "Bearer"])
def test_a_call_without_a_valid_token_is_401(emulator: LookerEmulator, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = httpx.get(f"{emulator.base_url}/api/4.0/looks/7", headers=headers)
    assert response.status_code == 401
    assert response.json()["message"] == "Requires authentication."


def test_tokens_expire_after_the_configured_lifetime(emulator: LookerEmulator) -> None:
    emulator.config.token_ttl_seconds = 0
    api = Api(emulator)
    assert api.get("/looks/7").status_code == 401


def test_revoked_tokens_stop_working_and_a_new_login_works(emulator: LookerEmulator, api: Api) -> None:
    emulator.revoke_tokens()
    assert api.get("/looks/7").status_code == 401
    assert Api(emulator).get("/looks/7").status_code == 200


def test_logout_revokes_the_token(emulator: LookerEmulator, api: Api) -> None:
    assert api.delete("/logout").status_code == 204
    assert api.get("/looks/7").status_code == 401


# --- queries and looks ---------------------------------------------------------------------------


def test_an_identical_query_is_stored_once(api: Api) -> None:
    first = api.query_id(fields=["orders.status"], filters={"orders.status": "Complete"})
    assert api.query_id(fields=["orders.status"], filters={"orders.status": "Complete"}) == first
    assert api.query_id(fields=["orders.status"]) != first
    stored = api.get(f"/queries/{first}").json()
    assert stored["id"] == first
    assert stored["share_url"].endswith(stored["client_id"])


def test_the_fields_parameter_narrows_an_answer(api: Api) -> None:
    query_id = api.query_id(fields=["orders.status"])
    assert api.get(f"/queries/{query_id}", fields="id,fields").json() == {
        "id": query_id,
        "fields": ["orders.status"],
    }


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"view": "orders"}, "model", "missing"),
        ({"model": "ecommerce"}, "view", "missing"),
        ({"model": "other", "view": "orders"}, "model", "not_found"),
        ({"model": "ecommerce", "view": "nope"}, "view", "not_found"),
        ({**ORDERS, "fields": "orders.id"}, "fields", "invalid"),
        ({**ORDERS, "limit": "many"}, "limit", "invalid"),
        ({**ORDERS, "pivots": ["orders.status"]}, "pivots", "invalid"),
    ],
)
def test_invalid_queries_answer_422_naming_the_field(
    api: Api, body: dict[str, Any], field: str, code: str
) -> None:
    response = api.post("/queries", body)
    assert response.status_code == 422
    assert response.json()["message"] == "Validation Failed"
    assert [(error["field"], error["code"]) for error in response.json()["errors"]] == [(field, code)]


def test_looks_carry_their_query(api: Api, emulator: LookerEmulator) -> None:
    look = api.get("/looks/8").json()
    assert look["query_id"] == emulator.look_query_id("8")
    assert look["query"]["fields"] == ["users.country", "orders.count", "orders.total_revenue"]
    assert emulator.look_ids == ["7", "8", "9"]
    assert api.get("/looks/404").status_code == 404


# --- the query engine ----------------------------------------------------------------------------


def test_measures_aggregate_over_the_dimensions(api: Api) -> None:
    by_status = api.rows(fields=["orders.status", "orders.count", "orders.total_revenue"])
    orders = api.rows(fields=["orders.id", "orders.status", "orders.total_amount"], limit="-1")
    assert len(orders) == ORDER_COUNT
    assert sum(row["orders.count"] for row in by_status) == ORDER_COUNT
    for row in by_status:
        amounts = [
            order["orders.total_amount"] for order in orders if order["orders.status"] == row["orders.status"]
        ]
        assert row["orders.count"] == len(amounts)
        assert row["orders.total_revenue"] == pytest.approx(sum(amounts), abs=0.01)
    assert {row["orders.status"] for row in by_status} == {
        "Complete",
        "Shipped",
        "Processing",
        "Cancelled",
        "Returned",
    }


def test_counts_of_a_joined_view_are_distinct(api: Api) -> None:
    (row,) = api.rows(fields=["orders.count", "users.count"])
    users = api.rows(fields=["orders.user_id"], limit="-1")
    assert row == {"orders.count": ORDER_COUNT, "users.count": len(users)}
    assert row["users.count"] < ORDER_COUNT


def test_the_default_limit_is_500_and_minus_one_removes_it(api: Api, emulator: LookerEmulator) -> None:
    assert len(api.rows(fields=["orders.id"])) == 500
    assert len(api.rows(fields=["orders.id"], limit="-1")) == ORDER_COUNT
    # a task's limit parameter overrides the saved query's
    task_id = api.task(api.query_id(fields=["orders.id"]), limit=7)
    assert len(api.get(f"/query_tasks/{task_id}/results").json()) == 7


@pytest.mark.parametrize(
    ("field", "expression", "check"),
    [
        ("orders.status", "Complete", lambda value: value == "Complete"),
        ("orders.status", "Shipped,Complete", lambda value: value in ("Shipped", "Complete")),
        ("orders.status", "-Complete,-Shipped", lambda value: value not in ("Shipped", "Complete")),
        ("orders.status", "%ipp%", lambda value: value == "Shipped"),
        ("orders.total_amount", ">300", lambda value: value > 300),
        ("orders.total_amount", ">=100 AND <120", lambda value: 100 <= value < 120),
        ("orders.total_amount", "[50,60)", lambda value: 50 <= value < 60),
        ("orders.quantity", "1 to 2", lambda value: 1 <= value <= 2),
        ("orders.quantity", "NOT 1", lambda value: value != 1),
        ("orders.quantity", "3,4", lambda value: value in (3, 4)),
        ("orders.created_date", "2024-03", lambda value: value.startswith("2024-03")),
        ("orders.created_date", "2024-03-05", lambda value: value == "2024-03-05"),
        ("orders.created_date", "after 2024-12-01", lambda value: value >= "2024-12-01"),
        ("orders.created_date", "before 2024-01-15", lambda value: value < "2024-01-15"),
        (
            "orders.created_date",
            "2024-02-01 to 2024-02-03",
            lambda value: "2024-02-01" <= value < "2024-02-03",
        ),
        ("orders.created_date", "2024/06/30", lambda value: value == "2024-06-30"),
        ("orders.is_gift", "Yes", lambda value: value == "Yes"),
        ("users.age", "NULL", lambda value: value is None),
        ("users.age", "NOT NULL", lambda value: value is not None),
    ],
)
def test_filter_expressions(api: Api, field: str, expression: str, check: Any) -> None:
    rows = api.rows(fields=["orders.id", field], filters={field: expression}, limit="-1")
    everything = api.rows(fields=["orders.id", field], limit="-1")
    expected = [row for row in everything if row[field] is not None and check(row[field])]
    if expression == "NULL":
        expected = [row for row in everything if row[field] is None]
    assert rows  # every expression here matches some orders
    assert sorted(row["orders.id"] for row in rows) == sorted(row["orders.id"] for row in expected)


def test_a_filter_on_a_measure_applies_after_aggregation(api: Api) -> None:
    rows = api.rows(fields=["users.country", "orders.count"], filters={"orders.count": ">400"})
    everything = api.rows(fields=["users.country", "orders.count"])
    assert rows == [row for row in everything if row["orders.count"] > 400]
    assert 0 < len(rows) < len(everything)


def test_sorts_and_the_default_sort(api: Api) -> None:
    by_revenue = api.rows(fields=["users.country", "orders.total_revenue"], sorts=["orders.total_revenue"])
    by_default = api.rows(fields=["users.country", "orders.total_revenue"])
    dated = api.rows(fields=["orders.created_date", "orders.count"])
    revenues = [row["orders.total_revenue"] for row in by_revenue]
    assert revenues == sorted(revenues)
    assert by_default == by_revenue[::-1]  # first measure descending
    assert dated[0]["orders.created_date"] == "2024-12-31"  # first date descending


def test_data_is_the_same_in_every_emulator() -> None:
    spec = QuerySpec("ecommerce", "orders", ("products.brand", "orders.total_revenue"), {}, (), None)
    assert run_query(spec).rows == run_query(spec).rows
    assert len(run_query(spec).rows) == 12


# --- a task's life -------------------------------------------------------------------------------


def test_a_task_is_added_then_runs_then_completes(api: Api, emulator: LookerEmulator) -> None:
    query_id = api.query_id(fields=["orders.status", "orders.count"])
    emulator.config.queue_seconds = 60
    queued = api.task(query_id)
    emulator.config.queue_seconds, emulator.config.query_seconds = 0, 60
    running = api.task(query_id)
    emulator.config.query_seconds = 0
    done = api.task(query_id)
    created = api.post(
        "/query_tasks", {"query_id": query_id, "result_format": "json", "source": "unit"}
    ).json()

    assert (api.status(queued), api.status(running), api.status(done)) == ("added", "running", "complete")
    assert created["status"] == "added"  # Looker queues every new task
    assert created["source"] == "unit"
    assert len(created["id"]) == 32
    assert int(created["id"], 16) >= 0
    assert emulator.task_states()[queued] == "added"
    assert api.get(f"/query_tasks/{done}").json()["runtime"] == 0


def test_results_answer_202_until_complete_or_204_like_older_servers(
    api: Api, emulator: LookerEmulator
) -> None:
    emulator.config.query_seconds = 60
    task_id = api.task(api.query_id(fields=["orders.status"]))
    assert api.get(f"/query_tasks/{task_id}/results").status_code == 202
    emulator.config.not_ready_status = 204
    response = api.get(f"/query_tasks/{task_id}/results")
    assert (response.status_code, response.content) == (204, b"")


def test_finished_results_can_be_not_ready_for_a_few_reads(api: Api, emulator: LookerEmulator) -> None:
    task_id = api.task(api.query_id(fields=["orders.status"]))
    emulator.config.not_ready_reads = 1
    assert [api.get(f"/query_tasks/{task_id}/results").status_code for _ in range(2)] == [202, 200]
    assert api.status(task_id) == "complete"


def test_results_expire_after_their_time_to_live(api: Api, emulator: LookerEmulator) -> None:
    emulator.config.result_ttl_seconds = 0
    task_id = api.task(api.query_id(fields=["orders.status"]))
    assert api.status(task_id) == "expired"
    assert api.get(f"/query_tasks/{task_id}/results").status_code == 404


def test_unknown_tasks_are_404(api: Api) -> None:
    assert api.get(f"/query_tasks/{'a' * 32}").status_code == 404
    assert api.get(f"/query_tasks/{'a' * 32}/results").status_code == 404
    assert api.delete(f"/running_queries/{'a' * 32}").status_code == 404


def test_killing_a_running_task(api: Api, emulator: LookerEmulator) -> None:
    emulator.config.query_seconds = 60
    task_id = api.task(api.query_id(fields=["orders.status"]))
    assert api.delete(f"/running_queries/{task_id}").status_code == 204
    assert api.status(task_id) == "killed"
    assert api.get(f"/query_tasks/{task_id}/results").status_code == 404
    assert api.delete(f"/running_queries/{task_id}").status_code == 404


def test_a_finished_task_cannot_be_killed(api: Api) -> None:
    task_id = api.task(api.query_id(fields=["orders.status"]))
    assert api.delete(f"/running_queries/{task_id}").status_code == 404
    assert api.status(task_id) == "complete"


def test_a_spurious_expired_status_is_answered_once(api: Api, emulator: LookerEmulator) -> None:
    emulator.config.query_seconds = 60
    task_id = api.task(api.query_id(fields=["orders.status"]))
    emulator.config.spurious_expired = 1
    assert [api.status(task_id) for _ in range(2)] == ["expired", "running"]


# --- results by format ---------------------------------------------------------------------------


def test_json_csv_txt_and_sql_results(api: Api) -> None:
    query_id = api.query_id(fields=["users.country", "orders.count"], sorts=["users.country"])
    as_json = api.get(f"/query_tasks/{api.task(query_id)}/results")
    as_csv = api.get(f"/query_tasks/{api.task(query_id, 'csv')}/results")
    as_txt = api.get(f"/query_tasks/{api.task(query_id, 'txt')}/results")
    as_sql = api.get(f"/query_tasks/{api.task(query_id, 'sql')}/results")

    rows = as_json.json()
    table = list(csv.reader(io.StringIO(as_csv.text)))
    assert as_json.headers["content-type"] == "application/json"
    assert table[0] == ["Users Country", "Orders Count"]
    assert table[1:] == [[row["users.country"], str(row["orders.count"])] for row in rows]
    assert as_txt.text.splitlines()[0] == "Users Country\tOrders Count"
    assert as_sql.text.startswith("SELECT")
    assert "COUNT(DISTINCT orders.id)" in as_sql.text


def test_json_detail_and_json_bi_results(api: Api) -> None:
    query_id = api.query_id(fields=["users.country", "orders.count"], sorts=["users.country"])
    rows = api.get(f"/queries/{query_id}/run/json").json()
    detail = api.get(f"/query_tasks/{api.task(query_id, 'json_detail')}/results").json()
    bi = api.get(f"/query_tasks/{api.task(query_id, 'json_bi')}/results").json()

    assert [{name: cell["value"] for name, cell in row.items()} for row in detail["data"]] == rows
    assert detail["fields"]["dimensions"][0]["name"] == "users.country"
    assert detail["fields"]["measures"][0]["type"] == "count"
    assert bi["rows"] == rows
    assert bi["metadata"]["fields"]["measures"][0]["name"] == "orders.count"


def test_a_database_error_ends_the_task_in_error(api: Api) -> None:
    query_id = api.query_id(fields=["orders.status", "orders.nope"])
    as_json, as_detail = api.task(query_id), api.task(query_id, "json_detail")

    failed = api.get(f"/query_tasks/{as_json}/results")
    detail = api.get(f"/query_tasks/{as_detail}/results")
    assert api.status(as_json) == "error"
    assert failed.status_code == 400
    assert failed.json()["message"] == "Unknown column 'orders.nope' in 'field list'"
    assert detail.status_code == 200
    assert detail.json()["data"] == []
    assert detail.json()["errors"][0]["message"] == failed.json()["message"]


@pytest.mark.parametrize(
    ("filters", "sorts"),
    [({"orders.status": "Complete"}, ["orders.id sideways"]), ({"orders.total_amount": "lots"}, [])],
)
def test_bad_sorts_and_filters_are_database_errors(
    api: Api, filters: dict[str, str], sorts: list[str]
) -> None:
    task_id = api.task(api.query_id(fields=["orders.id"], filters=filters, sorts=sorts))
    assert api.status(task_id) == "error"


def test_the_error_can_arrive_with_a_complete_status(api: Api, emulator: LookerEmulator) -> None:
    emulator.config.sql_error_status = "complete"
    task_id = api.task(api.query_id(fields=["orders.nope"]))
    assert api.status(task_id) == "complete"
    assert api.get(f"/query_tasks/{task_id}/results").status_code == 400


@pytest.mark.parametrize(
    ("result_format", "reason"), [("xlsx", "not supported by the emulator"), ("pdf", "Invalid")]
)
def test_result_formats_the_emulator_cannot_give_are_422(api: Api, result_format: str, reason: str) -> None:
    response = api.post(
        "/query_tasks", {"query_id": api.query_id(fields=["orders.id"]), "result_format": result_format}
    )
    assert response.status_code == 422
    assert reason in response.json()["errors"][0]["message"]


def test_multi_results(api: Api, emulator: LookerEmulator) -> None:
    good, bad = api.query_id(fields=["orders.status"]), api.query_id(fields=["orders.nope"])
    done, failed = api.task(good), api.task(bad)
    emulator.config.query_seconds = 60
    running = api.task(good)

    answer = api.get(
        "/query_tasks/multi_results", query_task_ids=f"{done},{failed},{running},{'0' * 32}"
    ).json()

    assert answer[done] == {"status": "complete", "data": api.get(f"/queries/{good}/run/json").json()}
    assert answer[failed]["status"] == "error"
    assert "orders.nope" in answer[failed]["data"]["error"]
    assert answer[running] == {"status": "running"}
    assert answer["0" * 32] == {"status": "missing"}


# --- faults and the control API ------------------------------------------------------------------


def test_injected_faults_use_looker_envelope_and_retry_after(api: Api, emulator: LookerEmulator) -> None:
    emulator.fail_next("look", 429, retry_after=7)
    limited = api.get("/looks/7")
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "7")
    assert limited.json()["message"] == "Too Many Requests"
    assert api.get("/looks/7").status_code == 200


def test_faults_for_any_operation_and_for_login(emulator: LookerEmulator) -> None:
    emulator.fail_next("login", 503)
    response = httpx.post(
        f"{emulator.base_url}/api/4.0/login", data={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    )
    assert response.status_code == 503
    api = Api(emulator)
    emulator.fail_next("any", 500, times=2)
    assert [api.get("/looks/7").status_code for _ in range(3)] == [500, 500, 200]


def test_the_control_api(emulator: LookerEmulator, api: Api) -> None:
    control = f"{emulator.base_url}/_emulator"
    assert httpx.post(f"{control}/config", json={"query_seconds": 60}).json()["query_seconds"] == 60
    task_id = api.task(api.query_id(fields=["orders.status"]))
    assert httpx.get(f"{control}/tasks").json() == {task_id: "running"}
    httpx.post(f"{control}/faults", json={"operation": "status", "status": 502})
    assert api.get(f"/query_tasks/{task_id}").status_code == 502
    httpx.delete(f"{control}/tokens")
    assert api.get(f"/query_tasks/{task_id}").status_code == 401
    assert httpx.post(f"{control}/config", json={"nope": 1}).status_code == 400
    logged = httpx.get(f"{control}/requests").json()
    assert all(not entry["path"].startswith("/_emulator") for entry in logged)
    assert json.loads(httpx.get(f"{control}/config").text)["query_seconds"] == 60
