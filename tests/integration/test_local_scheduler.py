"""Schedules fire on the local stack as EventBridge Scheduler fires them (query_relay_local.scheduler):
each firing that came due since the last look is delivered once, as the schedule's role, and its
run lands as the job ``<schedule>-<scheduled time>``."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from query_relay_local.api_server import LocalApiServer
from query_relay_local.scheduler import LocalScheduler
from query_relay_local.stack import LocalStack

from .landed import read_object
from .test_api import nightly


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    with LocalApiServer(stack) as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


def test_a_cron_schedule_fires_at_its_wall_clock_time_once(api: httpx.Client, stack: LocalStack) -> None:
    # Given a schedule at 02:00 Paris time (01:00 UTC in winter), and a scheduler that last looked at 00:59
    assert api.post("/schedules", json=nightly()).status_code == 201
    scheduler = LocalScheduler(stack, clock=lambda: utc("2026-12-05T00:59:00"))
    # When it looks at 00:59:30, then at 01:00:30, then again at 01:00:45
    early = scheduler.fire_due(utc("2026-12-05T00:59:30"))
    due = scheduler.fire_due(utc("2026-12-05T01:00:30"))
    again = scheduler.fire_due(utc("2026-12-05T01:00:45"))
    # Then the 01:00 UTC run was delivered once, and it ran as the job the schedule names
    assert (early, again) == ([], [])
    assert [(firing.schedule, firing.scheduled_time, firing.error) for firing in due] == [
        ("nightly-departments", utc("2026-12-05T01:00:00"), None)
    ]
    assert due[0].execution_arn is not None
    assert stack.wait(due[0].execution_arn)["status"] == "SUCCEEDED"
    run = stack.wait(stack.execution_arn("nightly-departments-2026-12-05T010000Z"))
    assert run["status"] == "SUCCEEDED"


def test_a_rate_schedule_fires_from_its_creation_and_a_disabled_schedule_not_at_all(
    api: httpx.Client, stack: LocalStack
) -> None:
    # Given a schedule every 5 minutes, created now, and a scheduler looking 11 minutes later
    created = datetime.now(UTC)
    every_five = nightly(name="every-five", expression="rate(5 minutes)")
    assert api.post("/schedules", json=every_five).status_code == 201
    scheduler = LocalScheduler(stack, clock=lambda: created)
    fired = scheduler.fire_due(created + timedelta(minutes=11))
    # Then it fired when it was created (Scheduler runs a rate schedule at once), and 5 and 10 minutes on
    offsets = [round((firing.scheduled_time - created).total_seconds() / 60) for firing in fired]
    assert offsets == [0, 5, 10]
    assert all(firing.error is None for firing in fired)
    # and a schedule that is disabled does not fire
    stack.client("scheduler").update_schedule(**disabled(stack, "every-five"))
    assert scheduler.fire_due(created + timedelta(minutes=30)) == []


def landed_csv(stack: LocalStack, job_id: str) -> list[dict[str, str]]:
    output = json.loads(stack.sfn.describe_execution(executionArn=stack.execution_arn(job_id))["output"])
    manifest = json.loads(read_object(stack, output["manifest_key"]))
    text = gzip.decompress(read_object(stack, manifest["objects"][0]["key"])).decode()
    return list(csv.DictReader(io.StringIO(text)))


def disabled(stack: LocalStack, name: str) -> dict[str, Any]:
    """The schedule as it is, but DISABLED: UpdateSchedule replaces every field it is given."""
    group = stack.function_environment["SCHEDULE_GROUP"]
    current = stack.client("scheduler").get_schedule(Name=name, GroupName=group)
    keep = (
        "Name",
        "GroupName",
        "ScheduleExpression",
        "ScheduleExpressionTimezone",
        "Target",
        "FlexibleTimeWindow",
    )
    return {key: current[key] for key in keep if key in current} | {"State": "DISABLED"}


WINDOWED_QUERY = {
    "query": "FROM employees | EVAL since = ?since, until = ?until, at = ?at | KEEP since, until, at "
    "| LIMIT 1",
    "params": [{"since": "{{window_start}}"}, {"until": "{{window_end}}"}, {"at": "{{scheduled_time}}"}],
}


def test_each_run_of_a_windowed_schedule_queries_its_own_window(api: httpx.Client, stack: LocalStack) -> None:
    # Given a 02:00 Paris schedule whose query takes its run's window as named params
    windowed = nightly(name="windowed")
    windowed["spec"] |= {"query": WINDOWED_QUERY, "output": {"format": "csv", "compression": "gzip"}}
    assert api.post("/schedules", json=windowed).status_code == 201, api.get("/schedules/windowed").text
    # When it fires on two nights
    scheduler = LocalScheduler(stack, clock=lambda: utc("2026-12-04T00:00:00"))
    fired = scheduler.fire_due(utc("2026-12-05T02:00:00"))
    assert [firing.scheduled_time for firing in fired] == [
        utc("2026-12-04T01:00:00"),
        utc("2026-12-05T01:00:00"),
    ]
    # Then each run landed the window from the run before it to its own time
    assert [stack.wait(firing.execution_arn or "")["status"] for firing in fired] == ["SUCCEEDED"] * 2
    for day in ("2026-12-04", "2026-12-05"):
        job_id = f"windowed-{day}T010000Z"
        assert stack.wait(stack.execution_arn(job_id))["status"] == "SUCCEEDED"
        rows = landed_csv(stack, job_id)
        previous = (utc(f"{day}T01:00:00") - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert rows == [{"since": previous, "until": f"{day}T01:00:00Z", "at": f"{day}T01:00:00Z"}]


def test_a_schedule_or_job_with_a_misplaced_placeholder_is_refused_naming_it(api: httpx.Client) -> None:
    spliced = nightly(name="spliced")
    spliced["spec"]["query"] = {"query": 'FROM employees | WHERE hire_date > "{{window_start}}"'}
    refused = api.post("/schedules", json=spliced)
    assert refused.status_code == 400
    assert "query.query holds a placeholder among other text" in refused.text
    one_time = nightly(name="once", expression="at(2026-12-24T18:00:00)")
    one_time["spec"]["query"] = WINDOWED_QUERY
    refused = api.post("/schedules", json=one_time)
    assert refused.status_code == 400
    assert "a one-time schedule has no window" in refused.text
    # and a job that is no scheduled run cannot give them values
    job = nightly()["spec"] | {"query": WINDOWED_QUERY}
    refused = api.post("/queries", json=job)
    assert refused.status_code == 400
    assert "query.params[0].since: {{window_start}} has a value only in a schedule's runs" in refused.text


def test_a_look_that_fails_leaves_its_runs_to_the_next_look(
    api: httpx.Client, stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert api.post("/schedules", json=nightly()).status_code == 201
    scheduler = LocalScheduler(stack, clock=lambda: utc("2026-12-05T00:59:00"))
    # Given a look at 01:00:30 that cannot list the schedules
    monkeypatch.setattr(
        scheduler, "_schedules", lambda: (_ for _ in ()).throw(RuntimeError("Scheduler down"))
    )
    with pytest.raises(RuntimeError):
        scheduler.fire_due(utc("2026-12-05T01:00:30"))
    monkeypatch.undo()
    # When the next look works
    fired = scheduler.fire_due(utc("2026-12-05T01:00:40"))
    # Then the 01:00 run the failed look missed is delivered by it
    assert [firing.scheduled_time for firing in fired] == [utc("2026-12-05T01:00:00")]
