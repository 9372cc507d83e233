"""Bad input to the HTTP API, table-driven: every malformed request is refused with a 4xx that
names the field, over real HTTP (`query-relay serve`'s server), and starts or stores nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from query_relay.api.http import MAX_BODY_BYTES
from query_relay.api.models import SCHEDULE_NAME_MAX_CHARS
from query_relay.limits import JOB_SPEC_MAX_BYTES
from query_relay_local.api_server import LocalApiServer
from query_relay_local.stack import LocalStack

from .conftest import ES_CONNECTION

QUERY = {"query": "FROM employees | LIMIT 3"}
# A valid query too big to travel through the state machine beside the job's state, yet under the
# API's body limit (query_relay.limits).
# 100 levels: past query-relay's 64, well within what the json module can read.
NESTED: dict[str, Any] = {}
for _ in range(100):
    NESTED = {"bool": NESTED}
TOO_BIG_QUERY = {"query": "FROM employees | LIMIT 3 // " + "x" * JOB_SPEC_MAX_BYTES}


def spec(**changes: Any) -> dict[str, Any]:
    return {"connection": ES_CONNECTION, "query": QUERY} | changes


def schedule(**changes: Any) -> dict[str, Any]:
    return {"name": "nightly", "expression": "cron(0 2 * * ? *)", "spec": spec()} | changes


def encoded(document: Any) -> bytes:
    return json.dumps(document).encode()


def oversize(document: dict[str, Any]) -> bytes:
    """A document that is valid apart from its size: padded with a long description/query text."""
    padded = document | {"description": "x" * (MAX_BODY_BYTES + 1)}
    return json.dumps(padded).encode()


@pytest.fixture
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    with LocalApiServer(stack) as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


def started_executions(stack: LocalStack) -> int:
    return len(stack.sfn.list_executions(stateMachineArn=stack.state_machine_arn)["executions"])


def fields_of(response: httpx.Response) -> list[str]:
    return [problem["field"] for problem in response.json()["fields"]]


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/queries", b'{"connection": "es-local", "query": {', 400, "body"),
        ("/queries", b"", 400, "body"),
        ("/queries", b"null", 400, "body"),
        ("/queries", b'"a string"', 400, "body"),
        ("/queries", b"\xff\xfe not utf-8", 400, "body"),
        ("/queries", encoded(spec(query="FROM employees")), 400, "query"),
        ("/queries", encoded(spec(connection=42)), 400, "connection"),
        ("/queries", encoded(spec(polling={"initial_seconds": "soon"})), 400, "polling.initial_seconds"),
        ("/queries", encoded(spec(polling={"timeout_seconds": 0})), 400, "polling.timeout_seconds"),
        ("/queries", encoded(spec(output={"format": "orc"})), 400, "output.format"),
        ("/queries", encoded(spec(output={"prefix": "../escape/"})), 400, "output.prefix"),
        # this stack has no CatalogDatabase: no job may register
        ("/queries", encoded(spec(output={"catalog": {"database": "a", "table": "b"}})), 400,
         "output.catalog"),
        ("/queries", encoded(spec(output={"catalog": {"database": "A-B", "table": "b"}})), 400,
         "output.catalog.database"),
        ("/queries", encoded(spec(priority="high")), 400, "priority"),
        ("/queries", encoded(spec(output={"format": "csv", "colour": "red"})), 400, "output.colour"),
        ("/queries", encoded(spec(job_id="../../etc/passwd")), 400, "job_id"),
        ("/queries", encoded(spec(job_id="x" * 81)), 400, "job_id"),
        ("/queries", encoded(spec(job_id="")), 400, "job_id"),
        ("/queries", encoded(spec(job_id="tab\there")), 400, "job_id"),
        ("/queries", encoded(spec(connection="no/slashes")), 400, "connection"),
        ("/queries", encoded(spec(query=TOO_BIG_QUERY)), 400, "query"),
        ("/queries", oversize(spec()), 413, "body"),
        ("/queries", encoded(spec(query=QUERY | {"filter": NESTED})), 400, "body"),
        ("/queries", b"[" * 100_000, 400, "body"),
        ("/schedules", b'{"spec": ' + b"{" * 100_000, 400, "body"),
        ("/schedules", b"{not json", 400, "body"),
        ("/schedules", encoded(schedule(expression="cron(0 2 * * *)")), 400, "expression"),
        ("/schedules", encoded(schedule(expression="cron(61 2 * * ? *)")), 400, "expression"),
        ("/schedules", encoded(schedule(expression="cron(0 2 * * * *)")), 400, "expression"),
        ("/schedules", encoded(schedule(expression="rate(0 minutes)")), 400, "expression"),
        ("/schedules", encoded(schedule(expression="")), 400, "expression"),
        ("/schedules", encoded(schedule(timezone="Not/AZone")), 400, "timezone"),
        ("/schedules", encoded(schedule(enabled="sometimes")), 400, "enabled"),
        ("/schedules", encoded(schedule(owner="me")), 400, "owner"),
        ("/schedules", encoded(schedule(name="bad name!")), 400, "name"),
        ("/schedules", encoded(schedule(spec=spec(job_id="fixed"))), 400, "spec.job_id"),
        ("/schedules", encoded(schedule(name="n" * (SCHEDULE_NAME_MAX_CHARS + 1))), 400, "name"),
        ("/schedules", encoded(schedule(spec=spec(query=TOO_BIG_QUERY))), 400, "spec.query"),
        ("/schedules", oversize(schedule()), 413, "body"),
    ],
    ids=[
        "queries-malformed-json", "queries-empty", "queries-null", "queries-string", "queries-not-utf8",
        "queries-query-type", "queries-connection-type", "queries-polling-type", "queries-polling-range",
        "queries-format", "queries-prefix-escape", "queries-catalog-not-allowed",
        "queries-catalog-name", "queries-unknown-field", "queries-unknown-nested",
        "queries-job-id-path", "queries-job-id-long", "queries-job-id-empty", "queries-job-id-tab",
        "queries-connection-chars", "queries-spec-too-big-for-step-functions", "queries-oversize",
        "queries-nested-deep", "queries-nested-past-the-parser", "schedules-nested-past-the-parser",
        "schedules-malformed-json", "schedules-cron-5", "schedules-cron-minute", "schedules-cron-no-?",
        "schedules-rate-0", "schedules-empty-expression", "schedules-timezone", "schedules-enabled-type",
        "schedules-unknown-field", "schedules-name", "schedules-fixed-job-id",
        "schedules-name-too-long-for-its-runs", "schedules-spec-too-big-for-step-functions",
        "schedules-oversize",
    ],
)  # fmt: skip
def test_a_bad_body_is_refused_naming_the_field_and_nothing_starts(
    api: httpx.Client, stack: LocalStack, path: str, body: bytes, status: int, field: str
) -> None:
    # When a bad body is posted
    response = api.post(path, content=body, headers={"Content-Type": "application/json"})
    # Then it is refused with the expected 4xx, naming the field, and nothing was started or stored
    assert response.status_code == status, response.text
    assert field in fields_of(response), response.text
    assert started_executions(stack) == 0
    assert api.get("/schedules").json()["schedules"] == []


def test_a_body_under_the_limit_is_read_and_validated_as_usual(api: httpx.Client) -> None:
    # Given a body of 200 KiB, under the limit, whose only fault is an unknown query field
    document = spec(query={"query": "FROM employees | LIMIT 3", "pad": "x" * (200 * 1024)})
    assert len(encoded(document)) < MAX_BODY_BYTES
    # When it is posted, then it is parsed and refused for that field, not for its size
    response = api.post("/queries", json=document)
    assert response.status_code == 400, response.text
    assert "query.pad" in fields_of(response)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/queries/has%20space"),
        ("GET", "/queries/semi%3Bcolon"),
        ("GET", "/queries/" + "x" * 81),
        ("GET", "/queries/%00"),
        ("DELETE", "/queries/..%2F..%2Fetc"),
        ("DELETE", "/queries/arn:aws:states:x"),
        ("GET", "/schedules/bad%20name"),
        ("GET", "/schedules/" + "n" * 65),
        ("DELETE", "/schedules/dollar$sign"),
        ("DELETE", "/schedules/%E2%9C%93"),
        # a trailing newline once decoded: Powertools' route patterns would take "abc" out of it
        ("GET", "/queries/abc%0A"),
        ("DELETE", "/queries/abc%0A"),
        ("GET", "/schedules/nightly%0A"),
        ("GET", "/queries/a%09b"),
    ],
)
def test_an_id_with_bad_characters_is_a_4xx_and_touches_nothing(
    api: httpx.Client, stack: LocalStack, method: str, path: str
) -> None:
    response = api.request(method, path)
    assert 400 <= response.status_code < 500, response.text
    # the API's own refusal, or its 404 for a path no route matches, in its own shape
    body = response.json()
    refusals = ("JobNotFound", "ScheduleNotFound", "RouteNotFound", "MISSING_AUTHENTICATION_TOKEN")
    assert body["error"] in refusals, body
    assert set(body) == {"error", "message", "fields"}
    assert started_executions(stack) == 0


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/queries?limit=0", "limit"),
        ("/queries?limit=101", "limit"),
        ("/queries?limit=many", "limit"),
        ("/queries?state=DONE", "state"),
        ("/queries?next_token=not-a-token", "next_token"),
        ("/schedules?limit=-1", "limit"),
        ("/schedules?next_token=not-a-token", "next_token"),  # was a 502 (found by the fuzzer)
    ],
)
def test_a_bad_query_parameter_is_refused_naming_it(api: httpx.Client, path: str, field: str) -> None:
    response = api.get(path)
    assert response.status_code == 400, response.text
    assert field in fields_of(response)


# API Gateway answers these itself, as the template's GatewayResponses shape them (the local gateway
# does the same); the function's own RouteNotFound is for what reaches it unrouted.
@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [
        ("GET", "/nowhere", 403, "MISSING_AUTHENTICATION_TOKEN"),
        ("PUT", "/queries", 403, "MISSING_AUTHENTICATION_TOKEN"),
        ("PATCH", "/schedules/nightly", 403, "MISSING_AUTHENTICATION_TOKEN"),
        ("POST", "/queries/abc", 403, "MISSING_AUTHENTICATION_TOKEN"),
    ],
)
def test_a_route_that_does_not_exist_answers_in_the_apis_shape(
    api: httpx.Client, stack: LocalStack, method: str, path: str, status: int, error: str
) -> None:
    response = api.request(method, path)
    assert (response.status_code, response.json()) == (
        status,
        {"error": error, "message": response.json()["message"], "fields": []},
    )
    assert started_executions(stack) == 0


def test_a_body_that_is_not_json_is_415_in_the_apis_shape(api: httpx.Client, stack: LocalStack) -> None:
    response = api.post("/queries", content=b"<job/>", headers={"Content-Type": "application/xml"})
    body = response.json()
    assert response.status_code == 415
    assert body["error"] == "UnsupportedMediaType"
    assert [problem["field"] for problem in body["fields"]] == ["Content-Type"]
    assert started_executions(stack) == 0


@pytest.mark.parametrize("path", ["/queries/abc%0A", "/queries/abc%0D%0A", "/schedules/nightly%0A"])
def test_a_path_parameter_is_never_cut_short_at_a_newline(api: httpx.Client, path: str) -> None:
    # Powertools' route patterns end in "$", which matches before a trailing newline: the job (or
    # schedule) named without it must not answer
    response = api.get(path)
    assert (response.status_code, response.json()["error"]) == (404, "RouteNotFound")


def test_a_form_body_is_415_and_never_repeated(api: httpx.Client, stack: LocalStack) -> None:
    # curl -d sends a form: Powertools reads its text as one field name, which a 400 would list
    form = '{"connection": "sk-live-form-marker", "query": {}}'
    response = api.post(
        "/queries", content=form, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert (response.status_code, response.json()["error"]) == (415, "UnsupportedMediaType")
    assert "sk-live-form-marker" not in response.text
    assert started_executions(stack) == 0


@pytest.mark.parametrize(
    ("method", "path", "error"),
    [
        ("GET", "/queries/sk-live-7f3a9c1e", "JobNotFound"),
        ("DELETE", "/queries/sk-live-7f3a9c1e", "JobNotFound"),
        ("GET", "/schedules/sk-live-7f3a9c1e", "ScheduleNotFound"),
        ("DELETE", "/schedules/sk-live-7f3a9c1e", "ScheduleNotFound"),
    ],
)
def test_an_unknown_id_is_404_and_never_repeated(
    api: httpx.Client, method: str, path: str, error: str
) -> None:
    # a key pasted where an id goes is well formed: the 404 says what is missing, not the value
    response = api.request(method, path)
    assert response.status_code == 404, response.text
    assert response.json()["error"] == error
    assert "7f3a9c1e" not in response.text
