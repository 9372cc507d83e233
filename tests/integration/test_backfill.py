"""Backfill: a schedule run for past scheduled times (POST /schedules/{name}/runs, `query-relay
backfill`), with the job ids and the windows the schedule itself would have given, each run once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from query_relay_local import cli
from query_relay_local.api_server import LocalApiServer
from query_relay_local.emulators.esql import EsqlEmulator
from query_relay_local.stack import LocalStack

from .conftest import ES_CONNECTION
from .test_api import nightly
from .test_local_scheduler import WINDOWED_QUERY, landed_csv
from .test_long_jobs_and_concurrency import capped, most_at_once


@pytest.fixture
def server(stack: LocalStack) -> Iterator[LocalApiServer]:
    with LocalApiServer(stack) as started:
        yield started


@pytest.fixture
def api(server: LocalApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


def windowed(name: str = "windowed", **changes: Any) -> dict[str, Any]:
    document = nightly(name=name, **changes)
    document["spec"] |= {"query": WINDOWED_QUERY, "output": {"format": "csv", "compression": "gzip"}}
    return document


def test_a_backfill_over_three_past_windows_runs_three_jobs_each_with_its_window(
    api: httpx.Client, stack: LocalStack
) -> None:
    # Given a nightly 02:00 Paris schedule whose query takes its run's window
    assert api.post("/schedules", json=windowed()).status_code == 201
    # When three past nights are backfilled
    answer = api.post(
        "/schedules/windowed/runs", json={"from": "2026-11-20T00:00:00Z", "to": "2026-11-22T23:00:00Z"}
    )
    # Then three runs started, named as the schedule's own runs
    assert answer.status_code == 202, answer.text
    runs = answer.json()["runs"]
    days = ["2026-11-20", "2026-11-21", "2026-11-22"]
    assert [run["job_id"] for run in runs] == [f"windowed-{day}T010000Z" for day in days]
    assert all(run["started"] for run in runs)
    # and each queried its own window: from the night before to its own 02:00 Paris (01:00 UTC)
    for day in days:
        job_id = f"windowed-{day}T010000Z"
        assert stack.wait(stack.execution_arn(job_id))["status"] == "SUCCEEDED"
        since = (datetime.fromisoformat(f"{day}T01:00:00+00:00") - timedelta(days=1)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        assert landed_csv(stack, job_id) == [
            {"since": since, "until": f"{day}T01:00:00Z", "at": f"{day}T01:00:00Z"}
        ]
    # And the same backfill again starts nothing: the runs exist
    again = api.post(
        "/schedules/windowed/runs", json={"from": "2026-11-20T00:00:00Z", "to": "2026-11-22T23:00:00Z"}
    )
    assert [run["started"] for run in again.json()["runs"]] == [False, False, False]


def test_a_backfilled_run_is_the_run_the_scheduler_would_have_started(
    api: httpx.Client, stack: LocalStack
) -> None:
    # Given a run the scheduler delivered
    assert api.post("/schedules", json=windowed()).status_code == 201
    launcher = stack.deliver_schedule("windowed", "2026-11-25T01:00:00Z")
    assert stack.wait(launcher)["status"] == "SUCCEEDED"
    # When the same time is backfilled
    answer = api.post("/schedules/windowed/runs", json={"scheduled_time": "2026-11-25T01:00:00Z"})
    # Then it is that run, not started again
    assert answer.status_code == 202, answer.text
    assert answer.json()["runs"] == [
        {
            "job_id": "windowed-2026-11-25T010000Z",
            "scheduled_time": "2026-11-25T01:00:00Z",
            "started": False,
            "links": {"self": "/queries/windowed-2026-11-25T010000Z"},
        }
    ]


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"scheduled_time": "2026-11-25T01:30:00Z"}, "does not run at 2026-11-25T01:30:00Z"),
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-06-30T00:00:00Z"}, "more than 100 runs"),
        ({"from": "2026-11-25T02:00:00Z", "to": "2026-11-25T03:00:00Z"}, "no run in this range"),
        ({"scheduled_time": "2099-11-25T01:00:00Z"}, "still to come"),
        ({"from": "2026-11-25T02:00:00Z"}, 'both \\"from\\" and \\"to\\"'),
        ({}, 'give \\"scheduled_time\\"'),
    ],
)
def test_a_backfill_that_cannot_run_is_refused_naming_why(
    api: httpx.Client, body: dict[str, Any], names: str
) -> None:
    assert api.post("/schedules", json=windowed()).status_code == 201
    refused = api.post("/schedules/windowed/runs", json=body)
    assert refused.status_code == 400
    assert names in refused.text


def test_a_backfill_of_a_schedule_that_does_not_exist_is_404(api: httpx.Client) -> None:
    assert (
        api.post("/schedules/nowhere/runs", json={"scheduled_time": "2026-11-25T01:00:00Z"}).status_code
        == 404
    )


def test_the_cli_backfills_through_the_api(
    api: httpx.Client, server: LocalApiServer, stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert api.post("/schedules", json=windowed()).status_code == 201
    argv = ["backfill", "windowed", "--from", "2026-11-20T00:00:00Z", "--to", "2026-11-21T23:00:00Z"]
    assert cli.main([*argv, "--api", server.base_url]) == cli.EXIT_SUCCEEDED
    out = capsys.readouterr().out
    assert "windowed-2026-11-20T010000Z  2026-11-20T01:00:00Z  started" in out
    assert "windowed-2026-11-21T010000Z" in out
    assert (
        cli.main(["backfill", "windowed", "--at", "2026-11-25T01:30:00Z", "--api", server.base_url])
        == cli.EXIT_USAGE
    )
    assert "does not run at 2026-11-25T01:30:00Z" in capsys.readouterr().err
    for job_id in ("windowed-2026-11-20T010000Z", "windowed-2026-11-21T010000Z"):
        assert stack.wait(stack.execution_arn(job_id))["status"] == "SUCCEEDED"


def test_a_request_to_a_deployed_api_is_signed_for_execute_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-never-printed")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    url = "https://abc123.execute-api.eu-west-1.amazonaws.com/v1/schedules/n/runs"
    request = cli.signed(httpx.Request("POST", url, json={"scheduled_time": "2026-11-25T01:00:00Z"}))
    authorization = request.headers["Authorization"]
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/execute-api/aws4_request" in authorization
    assert "secret-never-printed" not in str(request.headers)
    assert datetime.now(UTC).strftime("%Y%m%d") in request.headers["X-Amz-Date"]


def test_a_backfill_s_runs_wait_for_their_connection_s_slots(esql_emulator: EsqlEmulator) -> None:
    # Given a connection capped at one job at a time and queries that run 2 s each
    esql_emulator.config.query_seconds = 2
    with (
        LocalStack() as stack,
        LocalApiServer(stack) as started,
        httpx.Client(base_url=started.base_url, timeout=30) as api,
    ):
        stack.load_connections({ES_CONNECTION: capped(esql_emulator, 1)})
        assert api.post("/schedules", json=windowed()).status_code == 201
        # When three nights are backfilled at once
        answer = api.post(
            "/schedules/windowed/runs", json={"from": "2026-11-20T00:00:00Z", "to": "2026-11-22T23:00:00Z"}
        )
        job_ids = [run["job_id"] for run in answer.json()["runs"]]
        finals = [stack.wait(stack.execution_arn(job_id), timeout=120) for job_id in job_ids]
        # Then all three landed, one query upstream at a time, the others waiting for the slot
        assert [final["status"] for final in finals] == ["SUCCEEDED"] * 3
        assert most_at_once(esql_emulator.running_intervals()) == 1
        waited = [
            sum(
                1
                for event in stack.history(final["executionArn"])
                if event["type"] == "WaitStateEntered"
                and event["stateEnteredEventDetails"]["name"] == "WaitForSlot"
            )
            for final in finals
        ]
        assert sum(waited) >= 2
