"""The Looker emulator driven by the official `looker_sdk` (API 4.0): the SDK deserializes every
answer into its models, so an emulator it accepts speaks Looker's shapes, not just its paths."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import looker_sdk
import pytest
from looker_sdk import error as sdk_error
from looker_sdk.sdk.api40 import methods as methods40
from looker_sdk.sdk.api40 import models as models40

from query_relay_local.emulators.looker import LookerEmulator

pytestmark = pytest.mark.contract

CLIENT_ID = "sdk-contract-client"
CLIENT_SECRET = "sdk-contract-secret-71c4"
BY_COUNTRY = models40.WriteQuery(
    model="ecommerce",
    view="orders",
    fields=["users.country", "orders.count", "orders.total_revenue"],
    filters={"orders.status": "Complete"},
    sorts=["users.country"],
    limit="500",
)


@pytest.fixture
def emulator() -> Iterator[LookerEmulator]:
    with LookerEmulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as running:
        yield running


def _sdk(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, base_url: str, secret: str
) -> methods40.Looker40SDK:
    monkeypatch.chdir(tmp_path)  # no stray looker.ini may configure the SDK
    monkeypatch.setenv("LOOKERSDK_BASE_URL", base_url)
    monkeypatch.setenv("LOOKERSDK_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("LOOKERSDK_CLIENT_SECRET", secret)
    monkeypatch.setenv("LOOKERSDK_VERIFY_SSL", "false")
    monkeypatch.setenv("LOOKERSDK_TIMEOUT", "10")
    return looker_sdk.init40()


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, emulator: LookerEmulator) -> methods40.Looker40SDK:
    return _sdk(monkeypatch, tmp_path, emulator.base_url, CLIENT_SECRET)


def _task(sdk: methods40.Looker40SDK, query_id: str, result_format: str = "json") -> models40.QueryTask:
    body = models40.WriteCreateQueryTask(
        query_id=query_id, result_format=models40.ResultFormat(result_format), source="contract-test"
    )
    return sdk.create_query_task(body=body, cache=False)


def _until_finished(sdk: methods40.Looker40SDK, task_id: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = sdk.query_task(task_id).status
        assert status is not None
        if status not in ("added", "running"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} still running after {timeout}s")


def test_login_is_implicit_and_create_query_answers_a_query_model(
    sdk: methods40.Looker40SDK, emulator: LookerEmulator
) -> None:
    created = sdk.create_query(body=BY_COUNTRY)

    assert isinstance(created, models40.Query)
    assert isinstance(created.id, str)
    assert (created.model, created.view) == ("ecommerce", "orders")
    assert list(created.fields or []) == ["users.country", "orders.count", "orders.total_revenue"]
    assert created.limit == "500"
    assert created.client_id is not None
    assert len(created.client_id) == 22
    # Looker stores an identical query once
    assert sdk.create_query(body=BY_COUNTRY).id == created.id
    assert sdk.query(created.id).filters == {"orders.status": "Complete"}
    assert emulator.requests[0].path == "/api/4.0/login"


def test_a_look_carries_its_query(sdk: methods40.Looker40SDK) -> None:
    look = sdk.look("9")

    assert isinstance(look, models40.LookWithQuery)
    assert look.title == "Recent large orders"
    assert look.created_at is not None
    assert look.created_at.year == 2024
    assert look.model is not None
    assert look.model.id == "ecommerce"
    assert look.query is not None
    assert look.query.id == look.query_id
    assert look.query.filters == {"orders.total_amount": ">300"}


def test_a_query_task_goes_from_added_to_complete_and_its_results_match_the_query(
    sdk: methods40.Looker40SDK, emulator: LookerEmulator
) -> None:
    query_id = sdk.create_query(body=BY_COUNTRY).id
    assert query_id is not None
    emulator.config.query_seconds = 60
    slow = _task(sdk, query_id)
    emulator.config.query_seconds = 0.3
    task = _task(sdk, query_id)
    assert slow.id is not None
    assert task.id is not None

    early_results = sdk.query_task_results(slow.id)
    status = _until_finished(sdk, task.id)
    results = json.loads(sdk.query_task_results(task.id))

    assert re.fullmatch(r"[0-9a-f]{32}", task.id)
    assert task.status == "added"
    assert task.result_format == "json"
    assert task.source == "contract-test"
    assert sdk.query_task(slow.id).status == "running"
    assert early_results == ""  # 202 Accepted: not ready, no body
    assert status == "complete"
    assert sdk.query_task(task.id).runtime == 0.3
    assert results == json.loads(sdk.run_query(query_id, "json"))
    assert [set(row) for row in results] == [{"users.country", "orders.count", "orders.total_revenue"}] * 8
    assert [row["users.country"] for row in results] == sorted(row["users.country"] for row in results)


def test_servers_before_25_answer_204_while_the_task_runs(
    sdk: methods40.Looker40SDK, emulator: LookerEmulator
) -> None:
    emulator.config.query_seconds = 5
    emulator.config.not_ready_status = 204
    query_id = sdk.create_query(body=BY_COUNTRY).id
    assert query_id is not None
    task = _task(sdk, query_id)
    assert task.id is not None

    assert sdk.query_task_results(task.id) == ""


def test_csv_and_json_detail_results(sdk: methods40.Looker40SDK) -> None:
    query_id = sdk.create_query(body=BY_COUNTRY).id
    assert query_id is not None
    csv_task, detail_task = _task(sdk, query_id, "csv"), _task(sdk, query_id, "json_detail")
    assert csv_task.id is not None
    assert detail_task.id is not None
    _until_finished(sdk, csv_task.id)
    _until_finished(sdk, detail_task.id)

    table = list(csv.reader(io.StringIO(sdk.query_task_results(csv_task.id))))
    detail = json.loads(sdk.query_task_results(detail_task.id))

    assert table[0] == ["Users Country", "Orders Count", "Orders Total Revenue"]
    assert len(table) == 9
    assert [field["name"] for field in detail["fields"]["measures"]] == [
        "orders.count",
        "orders.total_revenue",
    ]
    assert detail["data"][0]["users.country"] == {"value": table[1][0]}
    assert "errors" not in detail


def test_multi_results_report_each_task(sdk: methods40.Looker40SDK, emulator: LookerEmulator) -> None:
    query_id = sdk.create_query(body=BY_COUNTRY).id
    assert query_id is not None
    done = _task(sdk, query_id)
    assert done.id is not None
    _until_finished(sdk, done.id)
    emulator.config.query_seconds = 30
    running = _task(sdk, query_id)
    assert running.id is not None

    answer = sdk.query_task_multi_results(models40.DelimSequence([done.id, running.id, "f" * 32]))

    assert answer[done.id]["status"] == "complete"
    assert answer[done.id]["data"] == json.loads(sdk.run_query(query_id, "json"))
    assert answer[running.id] == {"status": "added"} or answer[running.id] == {"status": "running"}
    assert answer["f" * 32] == {"status": "missing"}


def test_a_database_error_fails_the_task_and_is_reported_by_format(
    sdk: methods40.Looker40SDK,
) -> None:
    bad = models40.WriteQuery(model="ecommerce", view="orders", fields=["orders.status", "orders.bogus"])
    query_id = sdk.create_query(body=bad).id
    assert query_id is not None
    as_json, as_detail = _task(sdk, query_id, "json"), _task(sdk, query_id, "json_detail")
    assert as_json.id is not None
    assert as_detail.id is not None

    assert _until_finished(sdk, as_json.id) == "error"
    _until_finished(sdk, as_detail.id)
    with pytest.raises(sdk_error.SDKError) as raised:
        sdk.query_task_results(as_json.id)
    detail = json.loads(sdk.query_task_results(as_detail.id))
    multi: dict[str, Any] = dict(sdk.query_task_multi_results(models40.DelimSequence([as_json.id])))

    assert "Unknown column 'orders.bogus'" in raised.value.message
    assert detail["data"] == []
    assert "orders.bogus" in detail["errors"][0]["message"]
    assert multi[as_json.id]["status"] == "error"
    assert "orders.bogus" in multi[as_json.id]["data"]["error"]


def test_kill_query_stops_a_running_task(sdk: methods40.Looker40SDK, emulator: LookerEmulator) -> None:
    emulator.config.query_seconds = 30
    query_id = sdk.create_query(body=BY_COUNTRY).id
    assert query_id is not None
    task = _task(sdk, query_id)
    assert task.id is not None

    sdk.kill_query(task.id)

    assert sdk.query_task(task.id).status == "killed"
    assert emulator.task_states()[task.id] == "killed"
    with pytest.raises(sdk_error.SDKError) as raised:  # nothing runs any more
        sdk.kill_query(task.id)
    assert raised.value.message == "Not found"


def test_validation_errors_use_looker_422_envelope(sdk: methods40.Looker40SDK) -> None:
    with pytest.raises(sdk_error.SDKError) as raised:
        sdk.create_query(body=models40.WriteQuery(model="no_such_model", view="orders"))

    assert raised.value.message == "Validation Failed"
    assert [(detail.field, detail.code) for detail in raised.value.errors] == [("model", "not_found")]


def test_unknown_credentials_are_refused_at_login(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, emulator: LookerEmulator
) -> None:
    sdk = _sdk(monkeypatch, tmp_path, emulator.base_url, "not-the-secret")

    with pytest.raises(sdk_error.SDKError) as raised:
        sdk.look("7")

    assert json.loads(str(raised.value.args[0]))["message"] == "Not found"


def test_a_revoked_token_is_refused_with_requires_authentication(
    sdk: methods40.Looker40SDK, emulator: LookerEmulator
) -> None:
    sdk.look("7")
    emulator.revoke_tokens()

    with pytest.raises(sdk_error.SDKError) as raised:
        sdk.look("7")

    assert raised.value.message == "Requires authentication."


def test_logout_ends_the_session(sdk: methods40.Looker40SDK, emulator: LookerEmulator) -> None:
    sdk.look("7")
    sdk.auth.logout()

    assert ("DELETE", "/api/logout") in [(request.method, request.path) for request in emulator.requests]
    assert sdk.look("7").id == "7"  # the SDK logs in again
