"""The HTTP API over real HTTP: `query-relay serve`'s server in front of the real API handler, on the
local stack, against the ES|QL emulator."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from query_relay_local.api_server import LocalApiServer
from query_relay_local.emulators.esql import EsqlEmulator
from query_relay_local.stack import LocalStack

from .conftest import ES_CONNECTION, esql_connection

DEPARTMENTS_QUERY = "FROM employees | STATS n = COUNT(*) BY department | SORT department"
PATIENCE_SECONDS = 60.0  # how long a test waits for a job to get somewhere before it gives up


def spec(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "connection": ES_CONNECTION,
        "query": {"query": DEPARTMENTS_QUERY},
        "polling": {"initial_seconds": 1, "max_seconds": 1, "timeout_seconds": 60},
    }
    return document | changes


@pytest.fixture
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    with LocalApiServer(stack) as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


def wait_for(client: httpx.Client, job_id: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + PATIENCE_SECONDS
    while True:
        view: dict[str, Any] = client.get(f"/queries/{job_id}").raise_for_status().json()
        if done(view):
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} never got there: {view}")
        time.sleep(0.2)


def ended(view: dict[str, Any]) -> bool:
    return bool(view["status"] != "RUNNING")


def executions(stack: LocalStack) -> list[str]:
    listed = stack.sfn.list_executions(stateMachineArn=stack.state_machine_arn)["executions"]
    return [execution["name"] for execution in listed]


# --- start and follow ----------------------------------------------------------------------------


def test_a_started_job_is_followed_to_its_manifest_and_the_links_download_the_objects(
    api: httpx.Client, stack: LocalStack
) -> None:
    # Given a valid spec with a job id
    # When it is posted
    response = api.post("/queries", json=spec(job_id="api-job-1"))
    # Then the job is accepted and can be followed to the end
    assert response.status_code == 202
    assert response.json() == {
        "job_id": "api-job-1",
        "status": "RUNNING",
        "links": {"self": "/queries/api-job-1"},
    }
    view = wait_for(api, "api-job-1", ended)
    assert view["status"] == "SUCCEEDED"
    assert (view["connection"], view["provider"], view["polls"]) == (ES_CONNECTION, "esql", 0)
    assert view["error"] is None
    assert view["duration_seconds"] >= 0
    manifest = view["manifest"]
    assert manifest["job_id"] == "api-job-1"
    assert manifest["row_count"] > 0
    # and every presigned link downloads exactly the bytes the manifest describes
    downloads = view["downloads"]
    assert [link["key"] for link in downloads["objects"]] == [entry["key"] for entry in manifest["objects"]]
    for link, entry in zip(downloads["objects"], manifest["objects"], strict=True):
        body = httpx.get(link["url"]).raise_for_status().content
        assert hashlib.sha256(body).hexdigest() == entry["sha256"] == link["sha256"]
        assert len(body) == entry["bytes"]
    landed = httpx.get(downloads["manifest"]["url"]).raise_for_status().json()
    assert landed == manifest
    assert downloads["manifest"]["url"].startswith(stack.endpoint_url)


def test_a_job_without_a_job_id_gets_one(api: httpx.Client, stack: LocalStack) -> None:
    response = api.post("/queries", json=spec())
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    assert job_id.startswith("q-")
    assert executions(stack) == [job_id]


def test_the_same_job_id_and_spec_is_the_same_job_and_another_spec_conflicts(
    api: httpx.Client, stack: LocalStack
) -> None:
    # Given a started job
    first = api.post("/queries", json=spec(job_id="idempotent-1"))
    assert first.status_code == 202
    # When the same spec is posted again (a client retrying), before and after the job ends
    again = api.post("/queries", json=spec(job_id="idempotent-1"))
    wait_for(api, "idempotent-1", ended)
    after_end = api.post("/queries", json=spec(job_id="idempotent-1"))
    # Then it is the same job: one execution
    assert again.status_code == after_end.status_code == 202
    assert again.json()["job_id"] == "idempotent-1"
    assert after_end.json()["status"] == "SUCCEEDED"
    # and another spec under that job id is refused, starting nothing
    conflict = api.post("/queries", json=spec(job_id="idempotent-1", output={"format": "csv"}))
    assert conflict.status_code == 409
    assert conflict.json()["error"] == "JobConflict"
    assert executions(stack) == ["idempotent-1"]


# --- listing -------------------------------------------------------------------------------------


def test_jobs_are_listed_newest_first_in_pages_and_filtered_by_state(api: httpx.Client) -> None:
    # Given three jobs that have ended, the middle one failed
    for job_id, query in (
        ("list-1", DEPARTMENTS_QUERY),
        ("list-2", "FROM no_such_index | LIMIT 1"),
        ("list-3", DEPARTMENTS_QUERY),
    ):
        assert api.post("/queries", json=spec(job_id=job_id, query={"query": query})).status_code == 202
        wait_for(api, job_id, ended)
    # When they are listed two at a time
    first = api.get("/queries", params={"limit": 2}).json()
    second = api.get("/queries", params={"limit": 2, "next_token": first["next_token"]}).json()
    # Then they come newest first, over two pages
    assert [job["job_id"] for job in first["jobs"]] == ["list-3", "list-2"]
    assert [job["job_id"] for job in second["jobs"]] == ["list-1"]
    assert second["next_token"] is None
    # and the state filter keeps only the failed one
    failed = api.get("/queries", params={"state": "FAILED"}).json()
    assert [(job["job_id"], job["status"]) for job in failed["jobs"]] == [("list-2", "FAILED")]
    failed_view = api.get("/queries/list-2").json()
    assert failed_view["error"] == "UpstreamQueryFailed"
    assert "no_such_index" in failed_view["cause"]
    assert failed_view["manifest"] is None
    assert api.get("/queries", params={"state": "SOMETIMES"}).status_code == 400
    bad_token = api.get("/queries", params={"next_token": "not-a-token"})
    assert bad_token.status_code == 400
    assert [problem["field"] for problem in bad_token.json()["fields"]] == ["next_token"]


# --- cancel --------------------------------------------------------------------------------------


@contextlib.contextmanager
def polling_api(esql_emulator: EsqlEmulator) -> Iterator[tuple[LocalStack, httpx.Client]]:
    """A stack and its API whose ES|QL jobs run for a minute and poll (no submit wait, short
    long-polls): a job stays RUNNING long enough to be cancelled."""
    esql_emulator.config.query_seconds = 60
    overrides = {"SubmitWaitSeconds": "0", "LongPollMaxSeconds": "1"}
    with (
        LocalStack(parameter_overrides=overrides) as stack,
        LocalApiServer(stack) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as api,
    ):
        stack.load_connections({ES_CONNECTION: esql_connection(esql_emulator)})
        yield stack, api


def test_cancelling_a_polling_job_stops_it_deletes_the_upstream_task_and_announces_it(
    esql_emulator: EsqlEmulator,
) -> None:
    # Given a job polling a query that runs for a minute (short submit wait and long-polls)
    with polling_api(esql_emulator) as (stack, api):
        assert api.post("/queries", json=spec(job_id="cancel-1")).status_code == 202
        polling = wait_for(api, "cancel-1", lambda view: view["polls"] >= 1)
        upstream_id = polling["upstream_id"]
        assert esql_emulator.task_states()[upstream_id] == "running"
        # When it is cancelled
        response = api.delete("/queries/cancel-1")
        # Then the execution is aborted, the upstream task deleted and "Query Failed" sent
        assert response.status_code == 200
        assert response.json()["status"] == "ABORTED"
        assert esql_emulator.task_states()[upstream_id] == "deleted"
        failed = [event["detail"] for event in stack.events() if event["detail-type"] == "Query Failed"]
        assert failed == [
            {
                "job_id": "cancel-1",
                "connection": ES_CONNECTION,
                "provider": "esql",
                "error": "Cancelled",
                "cause": "cancelled through the query-relay API",
            }
        ]
        assert list(stack.keys()) == []
        # and cancelling it again answers the same, cleaning up nothing more; an unknown job is not found
        again = api.delete("/queries/cancel-1")
        assert again.status_code == 200
        assert again.json()["status"] == "ABORTED"
        assert len([event for event in stack.events() if event["detail-type"] == "Query Failed"]) == 1
        assert api.delete("/queries/no-such-job").status_code == 404


def test_five_deletes_of_one_running_job_at_once_clean_it_up_once(esql_emulator: EsqlEmulator) -> None:
    # Given a job polling a query that runs for a minute
    with polling_api(esql_emulator) as (stack, api):
        assert api.post("/queries", json=spec(job_id="cancel-5x")).status_code == 202
        upstream_id = wait_for(api, "cancel-5x", lambda view: view["polls"] >= 1)["upstream_id"]
        # When five clients cancel it at the same moment
        with ThreadPoolExecutor(max_workers=5) as pool:
            answers = list(pool.map(lambda _: api.delete("/queries/cancel-5x"), range(5)))
        # Then every one of them is answered with the job, stopped
        assert [answer.status_code for answer in answers] == [200] * 5
        assert {(answer.json()["job_id"], answer.json()["status"]) for answer in answers} == {
            ("cancel-5x", "ABORTED")
        }
        # and it was cleaned up once: one cancel reached the upstream, one "Query Failed" was sent
        assert esql_emulator.task_states()[upstream_id] == "deleted"
        deletes = [request for request in esql_emulator.requests if request.method == "DELETE"]
        assert len(deletes) == 1
        failed = [event["detail"] for event in stack.events() if event["detail-type"] == "Query Failed"]
        assert [(detail["job_id"], detail["error"]) for detail in failed] == [("cancel-5x", "Cancelled")]
        assert list(stack.keys()) == []


# --- bad requests --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"connection": "es-local", "query": ', "body"),
        (json.dumps(spec(polling={"initial_seconds": "soon"})).encode(), "polling.initial_seconds"),
        (json.dumps(spec(output={"fromat": "csv"})).encode(), "output.fromat"),
        (json.dumps(spec(colour="blue")).encode(), "colour"),
        (json.dumps(spec(job_id="has spaces")).encode(), "job_id"),
        (json.dumps(spec(query={"query": DEPARTMENTS_QUERY, "limit": 5})).encode(), "query.limit"),
        (b"[1, 2]", "body"),
    ],
    ids=["malformed-json", "wrong-type", "unknown-nested-field", "unknown-field", "bad-job-id",
         "unknown-query-field", "not-an-object"],
)  # fmt: skip
def test_a_bad_body_is_refused_with_400_naming_the_field_and_starts_nothing(
    api: httpx.Client, stack: LocalStack, body: bytes, field: str
) -> None:
    response = api.post("/queries", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    answer = response.json()
    assert field in [problem["field"] for problem in answer["fields"]], answer
    assert executions(stack) == []


def test_an_unknown_connection_is_not_found_and_named(api: httpx.Client, stack: LocalStack) -> None:
    response = api.post("/queries", json=spec(connection="es-nowhere"))
    assert response.status_code == 404
    assert response.json()["error"] == "ConnectionNotFound"
    assert "es-nowhere" in response.json()["message"]
    assert executions(stack) == []
    assert api.get("/queries/no-such-job").status_code == 404


# --- schedules -----------------------------------------------------------------------------------


def nightly(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": "nightly-departments",
        "expression": "cron(0 2 * * ? *)",
        "timezone": "Europe/Paris",
        "spec": spec(),
    }
    return document | changes


def test_schedules_are_created_listed_read_and_deleted(api: httpx.Client, stack: LocalStack) -> None:
    # When a schedule is created
    created = api.post("/schedules", json=nightly())
    # Then it is stored in the app's schedule group, targeting the state machine
    assert created.status_code == 201, created.text
    view = created.json()
    assert (view["name"], view["expression"], view["timezone"], view["enabled"]) == (
        "nightly-departments",
        "cron(0 2 * * ? *)",
        "Europe/Paris",
        True,
    )
    assert view["spec"]["connection"] == ES_CONNECTION
    group = stack.function_environment["SCHEDULE_GROUP"]
    stored = stack.client("scheduler").get_schedule(Name="nightly-departments", GroupName=group)
    assert stored["Target"]["Arn"] == stack.state_machine_arn
    assert json.loads(stored["Target"]["Input"])["scheduled_time"] == "<aws.scheduler.scheduled-time>"
    # and it is listed and read back; a second one of that name conflicts
    assert [item["name"] for item in api.get("/schedules").json()["schedules"]] == ["nightly-departments"]
    assert api.get("/schedules/nightly-departments").json() == view
    assert api.post("/schedules", json=nightly()).status_code == 409
    # When it is deleted, it is gone
    assert api.delete("/schedules/nightly-departments").status_code == 200
    assert api.get("/schedules/nightly-departments").status_code == 404
    assert api.delete("/schedules/nightly-departments").status_code == 404
    assert api.get("/schedules").json()["schedules"] == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"expression": "cron(0 2 * * *)"}, "expression"),
        ({"expression": "rate(5 minute)"}, "expression"),
        ({"expression": "every night"}, "expression"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"name": "no spaces please"}, "name"),
        ({"spec": spec(job_id="fixed")}, "spec.job_id"),
        ({"spec": spec(connection="es-nowhere")}, None),
    ],
    ids=["cron-5-fields", "rate-unit", "not-an-expression", "timezone", "name", "fixed-job-id", "connection"],
)
def test_an_invalid_schedule_is_refused_naming_the_field(
    api: httpx.Client, changes: dict[str, Any], field: str | None
) -> None:
    response = api.post("/schedules", json=nightly(**changes))
    if field is None:
        assert response.status_code == 404
        assert response.json()["error"] == "ConnectionNotFound"
    else:
        assert response.status_code == 400, response.text
        assert field in [problem["field"] for problem in response.json()["fields"]]
    assert api.get("/schedules").json()["schedules"] == []


def test_a_schedule_trigger_delivered_twice_runs_its_job_once(api: httpx.Client, stack: LocalStack) -> None:
    # Given a schedule, and the input Scheduler sends for its 02:00 run
    assert api.post("/schedules", json=nightly()).status_code == 201
    # When Scheduler delivers its 02:00 (Paris) trigger twice (it delivers at least once), as the
    # template's SchedulerRole
    launches = [stack.deliver_schedule("nightly-departments", "2026-11-25T01:00:00Z") for _ in (1, 2)]
    # Then both deliveries end quietly and exactly one job runs, named for the schedule and time
    assert [stack.wait(arn)["status"] for arn in launches] == ["SUCCEEDED", "SUCCEEDED"]
    job_id = "nightly-departments-2026-11-25T010000Z"
    launchers = [arn.rpartition(":")[2] for arn in launches]
    assert sorted(executions(stack)) == sorted([job_id, *launchers])
    view = wait_for(api, job_id, ended)
    assert view["status"] == "SUCCEEDED"
    assert view["manifest"]["job_id"] == job_id
    # and the listing holds the job, not the deliveries' launcher executions
    listed = api.get("/queries").raise_for_status().json()["jobs"]
    assert [entry["job_id"] for entry in listed] == [job_id]
    # while a delivery's own execution reads as a job without a result of its own
    delivery = api.get(f"/queries/{launchers[0]}").json()
    assert (delivery["status"], delivery["manifest"]) == ("SUCCEEDED", None)


# --- the OpenAPI document ------------------------------------------------------------------------


def test_the_openapi_document_describes_every_route(api: httpx.Client) -> None:
    response = api.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    assert document["openapi"].startswith("3.")
    operations = {(path, method) for path, item in document["paths"].items() for method in item}
    assert operations == {
        ("/queries", "post"),
        ("/queries", "get"),
        ("/queries/{job_id}", "get"),
        ("/queries/{job_id}", "delete"),
        ("/schedules", "post"),
        ("/schedules", "get"),
        ("/schedules/{name}", "get"),
        ("/schedules/{name}", "delete"),
        ("/schedules/{name}/runs", "post"),
    }
    schemas = document["components"]["schemas"]
    assert {"JobSpec", "JobAccepted", "JobView", "JobPage", "ScheduleRequest", "ScheduleView"} <= set(schemas)
    assert schemas["JobSpec"]["additionalProperties"] is False
