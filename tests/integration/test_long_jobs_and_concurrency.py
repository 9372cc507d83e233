"""Long jobs continue as new executions before the history limit; a connection's max_concurrent caps
how many of its jobs run upstream at once. Whole state machine, local stack, ES|QL emulator."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from query_relay_local.api_server import LocalApiServer
from query_relay_local.emulators.esql import EsqlEmulator
from query_relay_local.stack import LocalStack

from .conftest import ES_CONNECTION, esql_connection
from .landed import landed_manifest, state_count

EMPLOYEES_QUERY = "FROM employees | KEEP emp_no, first_name, salary | SORT emp_no"
HISTORY_LIMIT = 200  # the smallest HistoryEventLimit: 7 Wait rounds per execution
# No in-Lambda long-poll and no submit wait: every check of the upstream is a Wait -> Poll round.
ROUND_PER_SECOND = {"SubmitWaitSeconds": "0", "LongPollMaxSeconds": "0"}


def job(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "connection": ES_CONNECTION,
        "query": {"query": EMPLOYEES_QUERY},
        "polling": {"initial_seconds": 1, "max_seconds": 1, "timeout_seconds": 120},
    }
    return spec | changes


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals that overlap at one moment."""
    moments = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, change in moments:  # an end sorts before a start at the same moment
        running += change
        peak = max(peak, running)
    return peak


def slot_holders(stack: LocalStack, connection: str = ES_CONNECTION) -> dict[str, Any]:
    (table,) = stack.template.tables.values()
    item = stack.client("dynamodb").get_item(
        TableName=table.name, Key={"pk": {"S": f"slots#{connection}"}}, ConsistentRead=True
    )
    holders: dict[str, Any] = item.get("Item", {}).get("holders", {}).get("M", {})
    return holders


def wait_until_holding(stack: LocalStack, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while job_id not in slot_holders(stack):
        assert time.monotonic() < deadline, f"{job_id} never took a slot"
        time.sleep(0.05)


def capped(emulator: EsqlEmulator, max_concurrent: int) -> dict[str, Any]:
    return esql_connection(emulator) | {"max_concurrent": max_concurrent}


def wait_until_continued(stack: LocalStack, job_id: str) -> None:
    """Wait until the job runs in its first continuation."""
    deadline = time.monotonic() + 60
    while len(stack.chain(stack.execution_arn(job_id))) < 2:
        assert time.monotonic() < deadline, "the job never continued"
        time.sleep(0.2)


@pytest.fixture
def long_job_stack(esql_emulator: EsqlEmulator) -> Iterator[LocalStack]:
    overrides = {"HistoryEventLimit": str(HISTORY_LIMIT), **ROUND_PER_SECOND}
    with LocalStack(parameter_overrides=overrides) as started:
        started.load_connections({ES_CONNECTION: esql_connection(esql_emulator)})
        yield started


@pytest.fixture
def api(long_job_stack: LocalStack) -> Iterator[httpx.Client]:
    with (
        LocalApiServer(long_job_stack) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as client,
    ):
        yield client


# --- continue-as-new -------------------------------------------------------------------------------


def test_a_job_longer_than_the_history_budget_continues_as_new_executions_and_lands_once(
    long_job_stack: LocalStack, esql_emulator: EsqlEmulator
) -> None:
    stack = long_job_stack
    # Given a query that runs ~18 s, checked once a second: ~18 rounds, 7 fit in one execution
    esql_emulator.config.query_seconds = 18
    first = stack.start_job(job(job_id="long-job"))
    # When the job runs to its end
    final = stack.wait(first, timeout=120)
    # Then it went on in numbered continuations, each far from the history limit
    chain = stack.chain(first)
    assert len(chain) >= 3, chain
    assert [arn.rsplit(":", 1)[1] for arn in chain] == ["long-job"] + [
        f"long-job.{n}" for n in range(1, len(chain))
    ]
    for arn in chain[:-1]:
        ended = stack.sfn.describe_execution(executionArn=arn)
        output = json.loads(ended["output"])
        assert ended["status"] == "SUCCEEDED"
        assert output["status"] == "CONTINUED"
        assert output["job_id"] == "long-job"
    for arn in chain:
        assert len(stack.history(arn)) <= HISTORY_LIMIT
    # and the last execution fetched the result once, with every poll of the job counted
    assert final["status"] == "SUCCEEDED", final
    manifest = landed_manifest(stack, final)
    assert manifest["job_id"] == "long-job"
    assert manifest["row_count"] > 0
    assert manifest["polls"] == sum(state_count(stack.history(arn), "WaitStateEntered") for arn in chain)
    ready = [event for event in stack.events() if event["detail-type"] == "Query Result Ready"]
    assert [event["detail"]["job_id"] for event in ready] == ["long-job"]
    assert list(esql_emulator.task_states().values()) == ["deleted"]  # one upstream task, released


def test_the_api_shows_a_continued_job_once_under_its_own_id(
    long_job_stack: LocalStack, esql_emulator: EsqlEmulator, api: httpx.Client
) -> None:
    stack = long_job_stack
    esql_emulator.config.query_seconds = 12
    api.post("/queries", json=job(job_id="api-long")).raise_for_status()
    # While it runs in a continuation, the job is RUNNING under its own id
    wait_until_continued(stack, "api-long")
    running = api.get("/queries/api-long").raise_for_status().json()
    assert running["status"] == "RUNNING"
    assert running["upstream_id"]
    again = api.post("/queries", json=job(job_id="api-long"))  # the same job: found, not restarted
    assert (again.status_code, again.json()["status"]) == (202, "RUNNING")
    listed = api.get("/queries", params={"state": "RUNNING"}).raise_for_status().json()["jobs"]
    assert [entry["job_id"] for entry in listed] == ["api-long"]
    # and once done, SUCCEEDED with its manifest, listed once
    final = stack.wait(stack.execution_arn("api-long"), timeout=60)
    assert final["status"] == "SUCCEEDED"
    view = api.get("/queries/api-long").raise_for_status().json()
    assert view["status"] == "SUCCEEDED"
    assert view["manifest"]["job_id"] == "api-long"
    listed = api.get("/queries").raise_for_status().json()["jobs"]
    assert [(entry["job_id"], entry["status"]) for entry in listed] == [("api-long", "SUCCEEDED")]


def test_cancelling_a_continued_job_stops_its_latest_execution_and_the_upstream_task(
    long_job_stack: LocalStack, esql_emulator: EsqlEmulator, api: httpx.Client
) -> None:
    stack = long_job_stack
    esql_emulator.config.query_seconds = 60
    api.post("/queries", json=job(job_id="cancel-long")).raise_for_status()
    wait_until_continued(stack, "cancel-long")
    view = api.delete("/queries/cancel-long").raise_for_status().json()
    assert view["status"] == "ABORTED"
    chain = stack.chain(stack.execution_arn("cancel-long"))
    assert stack.sfn.describe_execution(executionArn=chain[-1])["status"] == "ABORTED"
    assert list(esql_emulator.task_states().values()) == ["deleted"]
    failed = [event["detail"] for event in stack.events() if event["detail-type"] == "Query Failed"]
    assert [(detail["job_id"], detail["error"]) for detail in failed] == [("cancel-long", "Cancelled")]


# --- max_concurrent --------------------------------------------------------------------------------


def test_five_jobs_on_a_connection_capped_at_two_run_two_at_a_time_and_all_land(
    esql_emulator: EsqlEmulator,
) -> None:
    # Given a connection with max_concurrent 2 and queries that run 3 s each
    esql_emulator.config.query_seconds = 3
    with LocalStack() as stack:
        stack.load_connections({ES_CONNECTION: capped(esql_emulator, 2)})
        # When five jobs start at once
        arns = [stack.start_job(job(job_id=f"capped-{n}")) for n in range(5)]
        finals = [stack.wait(arn, timeout=120) for arn in arns]
        # Then every one succeeds
        assert [final["status"] for final in finals] == ["SUCCEEDED"] * 5, finals
        assert len({landed_manifest(stack, final)["upstream_id"] for final in finals}) == 5
        # and never more than two queries ran upstream at once (exactly two at the busiest moment)
        assert most_at_once(esql_emulator.running_intervals()) == 2
        # and the others waited in the machine: Wait states of a second or more, no hot loop
        histories = [stack.history(arn) for arn in arns]
        waits = [
            sum(1 for e in history if e.get("stateEnteredEventDetails", {}).get("name") == "WaitForSlot")
            for history in histories
        ]
        assert sum(waits) >= 3  # at least the three jobs that could not start at once
        for history, waited in zip(histories, waits, strict=True):
            submits = sum(1 for e in history if e.get("stateEnteredEventDetails", {}).get("name") == "Submit")
            assert submits == waited + 1  # one Submit per Wait, plus the first
            for event in history:
                details = event.get("stateEnteredEventDetails", {})
                if details.get("name") == "WaitForSlot":
                    assert json.loads(details["input"])["job"]["wait_seconds"] >= 1
        # and every slot was given back
        assert slot_holders(stack) == {}


def test_a_failed_or_cancelled_job_gives_its_slot_back(esql_emulator: EsqlEmulator) -> None:
    with LocalStack() as stack:
        stack.load_connections({ES_CONNECTION: capped(esql_emulator, 1)})
        # A job that fails upstream frees its slot
        failed = stack.wait(stack.start_job(job(job_id="bad", query={"query": "FROM nowhere"})), timeout=60)
        assert failed["status"] == "FAILED"
        assert slot_holders(stack) == {}
        # A job cancelled through the API frees its slot
        esql_emulator.config.query_seconds = 60
        with LocalApiServer(stack) as server, httpx.Client(base_url=server.base_url, timeout=30) as api:
            api.post("/queries", json=job(job_id="slow")).raise_for_status()
            wait_until_holding(stack, "slow")
            api.delete("/queries/slow").raise_for_status()
        assert slot_holders(stack) == {}
        # so the next job starts without waiting
        esql_emulator.config.query_seconds = 0
        final = stack.wait(stack.start_job(job(job_id="next")), timeout=60)
        assert final["status"] == "SUCCEEDED"
        history = stack.history(final["executionArn"])
        assert not any(e.get("stateEnteredEventDetails", {}).get("name") == "WaitForSlot" for e in history)


def test_a_slot_left_by_an_execution_that_ended_without_cleanup_is_freed(
    esql_emulator: EsqlEmulator,
) -> None:
    with LocalStack() as stack:
        stack.load_connections({ES_CONNECTION: capped(esql_emulator, 1)})
        # Given the only slot held by a job whose execution has ended (it never gave the slot back)
        ended = stack.wait(stack.start_job(job(job_id="gone")), timeout=60)
        (table,) = stack.template.tables.values()
        stack.client("dynamodb").update_item(
            TableName=table.name,
            Key={"pk": {"S": f"slots#{ES_CONNECTION}"}},
            UpdateExpression="SET holders.#job = :holder",
            ExpressionAttributeNames={"#job": "gone"},
            ExpressionAttributeValues={
                ":holder": {"M": {"execution": {"S": ended["executionArn"]}, "since": {"S": "x"}}}
            },
        )
        # When another job asks for a slot, it frees that one and runs at once
        final = stack.wait(stack.start_job(job(job_id="after")), timeout=60)
        assert final["status"] == "SUCCEEDED"
        assert slot_holders(stack) == {}
        assert any("freed the slot of a job that ended" in line for line in stack.logs)


def test_a_job_waiting_for_a_slot_past_its_timeout_fails_query_timed_out(
    esql_emulator: EsqlEmulator,
) -> None:
    esql_emulator.config.query_seconds = 30
    with LocalStack() as stack:
        stack.load_connections({ES_CONNECTION: capped(esql_emulator, 1)})
        holder = stack.start_job(job(job_id="holder"))
        wait_until_holding(stack, "holder")
        polling = {"initial_seconds": 1, "max_seconds": 1, "timeout_seconds": 4}
        waiting = stack.start_job(job(job_id="waiting", polling=polling))
        # While it waits, the API says so (and says the holder is not waiting)
        with LocalApiServer(stack) as server, httpx.Client(base_url=server.base_url, timeout=30) as api:
            deadline = time.monotonic() + 30
            while not (view := api.get("/queries/waiting").raise_for_status().json())["waiting_for_slot"]:
                assert time.monotonic() < deadline, view
                time.sleep(0.1)
            assert view["status"] == "RUNNING"
            assert view["upstream_id"] is None
            assert api.get("/queries/holder").json()["waiting_for_slot"] is False
        final = stack.wait(waiting, timeout=60)
        assert final["status"] == "FAILED"
        assert final["error"] == "QueryTimedOut"
        assert "max_concurrent" in final["cause"]
        assert set(slot_holders(stack)) == {"holder"}  # the waiting job never held one
        stack.sfn.stop_execution(executionArn=holder)


def test_a_queued_job_continues_as_new_while_it_waits_for_a_slot(esql_emulator: EsqlEmulator) -> None:
    # Given one slot, held by a query of ~14 s, and a small history budget (7 rounds)
    esql_emulator.config.query_seconds = 14
    overrides = {"HistoryEventLimit": str(HISTORY_LIMIT), **ROUND_PER_SECOND}
    with LocalStack(parameter_overrides=overrides) as stack:
        stack.load_connections({ES_CONNECTION: capped(esql_emulator, 1)})
        first = stack.start_job(job(job_id="first"))
        wait_until_holding(stack, "first")
        second = stack.start_job(job(job_id="second"))
        # When both run to their end
        assert stack.wait(first, timeout=120)["status"] == "SUCCEEDED"
        esql_emulator.config.query_seconds = 0
        final = stack.wait(second, timeout=120)
        # Then the second waited across executions and still landed its result
        assert final["status"] == "SUCCEEDED", final
        chain = stack.chain(second)
        assert len(chain) >= 2
        carried = json.loads(stack.sfn.describe_execution(executionArn=chain[1])["input"])["job"]
        assert carried["status"] == "QUEUED"
        assert landed_manifest(stack, final)["job_id"] == "second"
        assert slot_holders(stack) == {}
