"""The Veza emulator over raw HTTP (no official Python client exists): auth, the AsyncTask life,
every answer variant, results (count, nodes, pages, empty page), what a spec can filter, error
envelopes, injected faults and the control API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from query_relay_local.emulators.veza import NODES_PATH, SUBMIT_PATH, VezaEmulator
from query_relay_local.emulators.veza_data import IDENTITY_COUNTS, graph, select_nodes

API_KEY = "veza-emulator-key-71c3"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def emulator() -> Iterator[VezaEmulator]:
    with VezaEmulator(api_key=API_KEY) as running:
        yield running


def create(
    emulator: VezaEmulator, spec: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        f"{emulator.base_url}{SUBMIT_PATH}", json=spec, headers=AUTH if headers is None else headers
    )


def get_task(emulator: VezaEmulator, task_id: str) -> httpx.Response:
    return httpx.get(f"{emulator.base_url}/api/v1/assessments/async_tasks/{task_id}", headers=AUTH)


def task_of(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    task: dict[str, Any] = body.get("task", body)
    return task


def nodes_spec(node_type: str = "OktaUser", **fields: Any) -> dict[str, Any]:
    return {"source_node_types": {"nodes": [{"node_type": node_type}]}, "include_nodes": True, **fields}


def where(*conditions: dict[str, Any], operator: str = "AND", **node: Any) -> dict[str, Any]:
    """A nodes spec on OktaUser with a condition expression."""
    expression = {"operator": operator, "specs": list(conditions)}
    return {
        "include_nodes": True,
        "source_node_types": {
            "nodes": [{"node_type": "OktaUser", "condition_expression": expression, **node}]
        },
    }


def names(spec: dict[str, Any]) -> list[str]:
    return [node["properties"]["name"] for node in select_nodes(spec)]


# --- auth and envelopes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"ApiKey {API_KEY}"}]
)
def test_calls_without_the_bearer_key_are_unauthenticated(
    emulator: VezaEmulator, headers: dict[str, str]
) -> None:
    response = create(emulator, nodes_spec(), headers=headers)
    assert response.status_code == 401
    body = response.json()
    assert body["code"] == "Unauthenticated"
    assert body["request_id"]
    assert body["details"] == []
    assert emulator.task_states() == {}


def test_an_unknown_task_is_not_found_in_vezas_envelope(emulator: VezaEmulator) -> None:
    response = get_task(emulator, "no-such-task")
    assert response.status_code == 404
    assert response.json()["code"] == "NotFound"


def test_a_wrong_method_and_an_unknown_path_answer_like_the_gateway(emulator: VezaEmulator) -> None:
    wrong_method = httpx.get(f"{emulator.base_url}{SUBMIT_PATH}", headers=AUTH)
    unknown = httpx.get(f"{emulator.base_url}/api/v1/nothing", headers=AUTH)
    assert (wrong_method.status_code, wrong_method.json()["code"]) == (405, "Unimplemented")
    assert (unknown.status_code, unknown.json()["code"]) == (404, "NotFound")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (nodes_spec("OktaUsr"), 'unknown node type "OktaUsr"'),
        ({**nodes_spec(), "limit": 3}, 'unknown field "limit"'),
        ({"include_nodes": True}, "source_node_types is required"),
        (where({"fn": "LIKE", "property": "name", "value": "a"}), 'fn "LIKE" is not supported'),
        (where({"fn": "IN", "property": "name", "value": "a"}), "IN takes a list"),
        (nodes_spec(result_value_type="DESTINATION_NODES"), "not supported by the emulator"),
        (
            {
                **nodes_spec(),
                "relates_to_exp": {"specs": [{"node_types": {"nodes": [{"node_type": "Bucket"}]}}]},
            },
            'unknown node type "Bucket"',
        ),
        (nodes_spec(page_token="not-a-token"), "invalid page_token"),
    ],
)
def test_a_spec_veza_would_refuse_is_invalid_argument_at_once(
    emulator: VezaEmulator, spec: dict[str, Any], message: str
) -> None:
    response = create(emulator, spec)
    assert response.status_code == 400
    assert response.json()["code"] == "InvalidArgument"
    assert message in response.json()["message"]
    assert emulator.task_states() == {}


# --- the task's life -------------------------------------------------------------------------------


def test_a_task_goes_pending_then_in_progress_then_complete(emulator: VezaEmulator) -> None:
    # Given a query that takes a moment
    emulator.config.query_seconds = 0.6
    emulator.config.pending_seconds = 0.2
    # When it is created and looked at until it completes
    created = task_of(create(emulator, nodes_spec()))
    seen = [created["state"]]
    while seen[-1] != "COMPLETE":
        time.sleep(0.05)
        task = task_of(get_task(emulator, created["id"]))
        if task["state"] != seen[-1]:
            seen.append(task["state"])
    # Then it went through every state in order, and only the completed task carries a result
    assert seen == ["PENDING", "IN_PROGRESS", "COMPLETE"]
    assert created["status"] == "UNKNOWN_STATUS"
    assert "result" not in created
    assert task["status"] == "SUCCEEDED"
    assert task["result"]["nodes_value"]["values"] == select_nodes(nodes_spec())
    assert emulator.task_states() == {created["id"]: "succeeded"}


def test_a_quick_task_is_complete_in_the_create_answer(emulator: VezaEmulator) -> None:
    task = task_of(create(emulator, nodes_spec()))
    assert (task["state"], task["status"]) == ("COMPLETE", "SUCCEEDED")
    assert len(task["result"]["nodes_value"]["values"]) == IDENTITY_COUNTS["OktaUser"]


def test_answers_come_bare_with_enum_numbers_when_configured(emulator: VezaEmulator) -> None:
    emulator.config.wrapped = False
    emulator.config.enums_as_numbers = True
    emulator.config.query_seconds = 30
    body = create(emulator, nodes_spec()).json()
    assert "task" not in body
    assert (body["state"], body["status"]) == (1, 0)


def test_defaults_are_left_out_when_configured(emulator: VezaEmulator) -> None:
    emulator.config.omit_defaults = True
    emulator.config.query_seconds = 30
    running = create(emulator, nodes_spec()).json()["task"]
    assert "status" not in running
    emulator.config.query_seconds = 0
    last_page = task_of(create(emulator, nodes_spec()))["result"]["nodes_value"]
    assert "has_more" not in last_page
    assert "next_page_token" not in last_page


@pytest.mark.parametrize(
    ("knob", "status", "reason"),
    [("fail_after_seconds", "FAILED", "memory budget"), ("cancel_after_seconds", "CANCELED", "canceled")],
)
def test_tasks_fail_or_are_canceled_when_configured(
    emulator: VezaEmulator, knob: str, status: str, reason: str
) -> None:
    setattr(emulator.config, knob, 0)
    task = task_of(create(emulator, nodes_spec()))
    assert (task["state"], task["status"]) == ("COMPLETE", status)
    assert reason in task["error_reason"]
    assert "result" not in task
    assert emulator.task_states() == {task["id"]: status.lower()}


def test_tasks_expire_after_their_ttl(emulator: VezaEmulator) -> None:
    task = task_of(create(emulator, nodes_spec()))
    emulator.config.task_ttl_seconds = 0
    assert get_task(emulator, task["id"]).status_code == 404
    assert emulator.task_states() == {task["id"]: "expired"}


# --- results ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("as_strings", "value"), [(True, "14"), (False, 14)])
def test_a_spec_without_include_nodes_counts(emulator: VezaEmulator, as_strings: bool, value: Any) -> None:
    emulator.config.int64_as_strings = as_strings
    task = task_of(create(emulator, {"source_node_types": {"nodes": [{"node_type": "OktaUser"}]}}))
    assert task["result"] == {"result_type": "number", "number_value": value}


def test_pages_follow_tokens_until_has_more_is_false(emulator: VezaEmulator) -> None:
    # Given a spec over 14 nodes with 5 per page
    spec = nodes_spec(page_size="5")
    pages: list[dict[str, Any]] = []
    token = ""
    # When each next page is asked for with the previous page's token
    while True:
        page = task_of(create(emulator, {**spec, "page_token": token} if token else spec))["result"][
            "nodes_value"
        ]
        pages.append(page)
        if not page["has_more"]:
            break
        token = page["next_page_token"]
    # Then the pages hold every node once, in order, with opaque tokens
    assert [len(page["values"]) for page in pages] == [5, 5, 4]
    assert [node for page in pages for node in page["values"]] == select_nodes(spec)
    assert pages[-1]["next_page_token"] == ""
    assert all(page["next_page_token"] and not page["next_page_token"].isdigit() for page in pages[:-1])


def test_an_empty_page_with_has_more_comes_before_the_last(emulator: VezaEmulator) -> None:
    emulator.config.empty_page_before_last = True
    first = task_of(create(emulator, nodes_spec(page_size=10)))["result"]["nodes_value"]
    empty = task_of(create(emulator, nodes_spec(page_size=10, page_token=first["next_page_token"])))
    empty_page = empty["result"]["nodes_value"]
    last = task_of(create(emulator, nodes_spec(page_size=10, page_token=empty_page["next_page_token"])))
    assert (len(first["values"]), first["has_more"]) == (10, True)
    assert (empty_page["values"], empty_page["has_more"]) == ([], True)
    assert (len(last["result"]["nodes_value"]["values"]), last["result"]["nodes_value"]["has_more"]) == (
        4,
        False,
    )


def test_a_token_of_another_spec_is_refused(emulator: VezaEmulator) -> None:
    token = task_of(create(emulator, nodes_spec(page_size=5)))["result"]["nodes_value"]["next_page_token"]
    response = create(emulator, nodes_spec("AzureADUser", page_size=5, page_token=token))
    assert response.status_code == 400
    assert "does not belong" in response.json()["message"]


def test_page_size_is_capped(emulator: VezaEmulator) -> None:
    emulator.config.max_page_size = 3
    page = task_of(create(emulator, nodes_spec(page_size=1000)))["result"]["nodes_value"]
    assert (len(page["values"]), page["has_more"]) == (3, True)


def test_the_synchronous_nodes_call_pages_through_query_parameters(emulator: VezaEmulator) -> None:
    response = httpx.post(
        f"{emulator.base_url}{NODES_PATH}",
        params={"page_size": "4"},
        json=nodes_spec("S3Bucket"),
        headers=AUTH,
    )
    page = response.json()
    assert len(page["values"]) == 4
    assert page["has_more"] is True
    assert page["path_values"] == []


def test_the_same_spec_gives_the_same_nodes_sorted_by_name() -> None:
    first, again = select_nodes(nodes_spec("AzureADUser")), select_nodes(nodes_spec("AzureADUser"))
    assert first == again
    keys = [(node["properties"]["name"].lower(), node["id"]) for node in first]
    assert keys == sorted(keys)


# --- what a spec can filter ------------------------------------------------------------------------


def okta_users() -> list[Any]:
    return graph().of_type("OktaUser")


@pytest.mark.parametrize(
    ("condition", "keeps"),
    [
        ({"fn": "EQ", "property": "is_active", "value": True}, lambda n: n.properties["is_active"]),
        (
            {"fn": "EQ", "property": "is_active", "value": True, "not": True},
            lambda n: not n.properties["is_active"],
        ),
        (
            {"fn": "NEQ", "property": "department", "value": "sales"},
            lambda n: n.properties["department"] != "sales",
        ),
        (
            {"fn": "CONTAINS", "property": "email", "value": "HOPPER"},
            lambda n: "hopper" in n.properties["email"],
        ),
        ({"fn": "STARTS_WITH", "property": "name", "value": "grace"}, lambda n: n.name.startswith("grace")),
        (
            {"fn": "ENDS_WITH", "property": "email", "value": "1@acme.example"},
            lambda n: n.name.endswith("1@acme.example"),
        ),
        (
            {"fn": "IN", "property": "risk_level", "value": ["HIGH", "CRITICAL"]},
            lambda n: n.risk_level in ("HIGH", "CRITICAL"),
        ),
        (
            {"fn": "GT", "property": "created_at", "value": "2022-06-01"},
            lambda n: n.properties["created_at"] > "2022-06-01",
        ),
        (
            {"fn": "LTE", "property": "created_at", "value": "2022-06-01"},
            lambda n: n.properties["created_at"] <= "2022-06-01",
        ),
        ({"fn": "EQ", "property": "id", "value": "nope"}, lambda n: False),
    ],
)
def test_conditions_filter_source_nodes(condition: dict[str, Any], keeps: Any) -> None:
    wanted = sorted(node.name for node in okta_users() if keeps(node))
    assert sorted(names(where(condition))) == wanted


def test_conditions_combine_with_or_and_child_expressions() -> None:
    active = {"fn": "EQ", "property": "is_active", "value": True}
    engineering = {"fn": "EQ", "property": "department", "value": "engineering"}
    spec = where(active, operator="OR")
    spec["source_node_types"]["nodes"][0]["condition_expression"]["child_expressions"] = [
        {"operator": "AND", "specs": [engineering], "not": True}
    ]
    wanted = sorted(
        node.name
        for node in okta_users()
        if node.properties["is_active"] or node.properties["department"] != "engineering"
    )
    assert sorted(names(spec)) == wanted


def test_relates_to_exp_keeps_nodes_with_access_and_counts_it() -> None:
    # Given identities with access to S3 buckets granting s3:PutObject
    spec = {
        "include_nodes": True,
        "source_node_types": {"nodes": [{"node_type": "OktaUser"}, {"node_type": "AwsIamUser"}]},
        "relates_to_exp": {
            "specs": [
                {
                    "node_types": {"nodes": [{"node_type": "S3Bucket"}]},
                    "raw_permissions": {"values": ["s3:PutObject"], "operator": "OR"},
                }
            ]
        },
        "result_value_type": "SOURCE_NODES_WITH_COUNTS",
    }
    built = graph()
    # When the spec is evaluated
    nodes = select_nodes(spec)
    # Then exactly those identities come, with what the matching relations grant
    expected = {
        node.id
        for node in built.nodes.values()
        if node.type in ("OktaUser", "AwsIamUser")
        and any(
            built.nodes[other].type == "S3Bucket" and "s3:PutObject" in permissions
            for other, permissions in built.related(node).items()
        )
    }
    assert {node["id"] for node in nodes} == expected
    assert expected
    assert all(
        "s3:PutObject" in node["raw_permissions"] and node["destination_node_count"] >= 1 for node in nodes
    )
    assert all("DataWrite" in node["effective_permissions"] for node in nodes)


def test_no_relation_keeps_nodes_without_access() -> None:
    spec = {
        "include_nodes": True,
        "source_node_types": {"nodes": [{"node_type": "SnowflakeUser"}]},
        "relates_to_exp": {
            "specs": [{"node_types": {"nodes": [{"node_type": "SnowflakeTable"}]}, "no_relation": True}]
        },
    }
    built = graph()
    expected = {node.id for node in built.of_type("SnowflakeUser") if not built.related(node)}
    assert {node["id"] for node in select_nodes(spec)} == expected
    assert expected


def test_source_nodes_without_counts_report_zero_destinations() -> None:
    assert {node["destination_node_count"] for node in select_nodes(nodes_spec("S3Bucket"))} == {0}
    with_counts = select_nodes(nodes_spec("S3Bucket", result_value_type="SOURCE_NODES_WITH_COUNTS"))
    assert sum(node["destination_node_count"] for node in with_counts) > 0


# --- faults and the control API --------------------------------------------------------------------


def test_injected_faults_answer_in_vezas_envelope_with_retry_after(emulator: VezaEmulator) -> None:
    emulator.fail_next("submit", 429, retry_after=4)
    emulator.fail_next("any", 502)
    limited = create(emulator, nodes_spec())
    gateway = create(emulator, nodes_spec())
    ok = create(emulator, nodes_spec())
    assert (limited.status_code, limited.json()["code"], limited.headers["Retry-After"]) == (
        429,
        "ResourceExhausted",
        "4",
    )
    assert gateway.status_code == 502
    assert gateway.headers["Content-Type"].startswith("text/html")
    assert ok.status_code == 200


def test_the_control_api_changes_config_and_reads_tasks_and_requests(emulator: VezaEmulator) -> None:
    control = f"{emulator.base_url}/_emulator"
    changed = httpx.post(
        f"{control}/config", json={"query_seconds": 30, "wrapped": False, "fail_after_seconds": None}
    )
    task = create(emulator, nodes_spec()).json()
    faults = httpx.post(f"{control}/faults", json={"operation": "task", "status": 503, "times": 2})
    assert changed.json()["query_seconds"] == 30
    assert emulator.config.wrapped is False
    # PENDING lasts config.pending_seconds (0.1 s): a loaded machine may already see it running
    assert httpx.get(f"{control}/tasks").json() in ({task["id"]: "pending"}, {task["id"]: "running"})
    assert faults.json() == [{"operation": "task", "status": 503, "retry_after": None, "times": 2}]
    assert httpx.get(f"{control}/requests").json() == [
        {"method": "POST", "path": SUBMIT_PATH, "query": {}},
    ]
    assert httpx.post(f"{control}/config", json={"no_such_knob": 1}).status_code == 400
    assert httpx.post(f"{control}/config", json={"wrapped": "yes"}).status_code == 400
    httpx.delete(f"{control}/requests")
    assert emulator.requests == []
    assert emulator.submitted_specs == []


def test_submitted_specs_keep_the_bodies_of_creates(emulator: VezaEmulator) -> None:
    create(emulator, nodes_spec(page_size=2))
    assert emulator.submitted_specs == [nodes_spec(page_size=2)]
