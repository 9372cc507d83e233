"""The conformance suite's view of the Veza provider and its emulator.

Register with one line in ``harnesses.HARNESSES``: ``VezaHarness()``. Veza documents no cancel
call, so ``cancelled_state`` is None and the suite checks that the provider says so.
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx

from query_relay_local.emulators.veza import NODES_PATH, VezaEmulator

from .harnesses import ProviderHarness, Step

VEZA_KEY = "conformance-veza-key-8d2f"

# The provider's rows: Veza's node keys in this order, ``name`` from properties, the rest in
# ``other_fields`` (see query_relay.providers.veza.NODE_COLUMNS).
NODE_KEYS = (
    "id",
    "type",
    "name",
    "risk_level",
    "destination_node_count",
    "properties",
    "permissions",
    "raw_permissions",
    "effective_permissions",
    "destination_node_ids",
    "access_stats",
    "engagement_access_stats",
)


def node_as_row(node: dict[str, Any]) -> dict[str, Any]:
    """How a node of Veza's answer becomes a row, written out independently of the provider."""
    row = {key: node.get(key) for key in NODE_KEYS}
    row["name"] = node["name"] if "name" in node else node.get("properties", {}).get("name")
    row["other_fields"] = {key: value for key, value in node.items() if key not in NODE_KEYS} or None
    return row


def nodes_of(emulator: VezaEmulator, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node the emulator selects for ``spec``, read through its synchronous nodes call."""
    nodes: list[dict[str, Any]] = []
    token = ""
    while True:
        answer = httpx.post(
            f"{emulator.base_url}{NODES_PATH}",
            params={"page_size": "1000", "page_token": token},
            json=spec,
            headers={"Authorization": f"Bearer {VEZA_KEY}"},
        )
        answer.raise_for_status()
        page = answer.json()
        nodes += page["values"]
        if not page["has_more"]:
            return nodes
        token = page["next_page_token"]


class VezaHarness(ProviderHarness):
    provider = "veza"
    cancelled_state = None  # Veza documents no cancel call for query tasks
    unknown_task_id = "3f2b7c1e-9a41-4c55-8e0d-5b6a7f8e9d10"
    ok_query: ClassVar[dict[str, Any]] = {
        "query_type": "SOURCE_TO_DESTINATION",
        "include_nodes": True,
        "source_node_types": {
            "nodes": [
                {
                    "node_type": "OktaUser",
                    "condition_expression": {
                        "operator": "AND",
                        "specs": [{"fn": "EQ", "property": "is_active", "value": True, "not": False}],
                    },
                }
            ]
        },
        "result_value_type": "SOURCE_NODES_WITH_COUNTS",
    }
    failing_query: ClassVar[dict[str, Any]] = {
        "include_nodes": True,
        "source_node_types": {"nodes": [{"node_type": "NoSuchNodeType"}]},
    }
    _steps: ClassVar[dict[Step, str]] = {
        "submit": "submit",
        "poll": "task",
        "fetch": "task",
        "cancel": "task",
    }

    def emulator(self) -> VezaEmulator:
        return VezaEmulator(api_key=VEZA_KEY)

    def connection(self, emulator: VezaEmulator, *, valid: bool = True) -> dict[str, Any]:
        token = VEZA_KEY if valid else "not-the-key"
        return {"provider": "veza", "base_url": emulator.base_url, "auth": {"type": "bearer", "token": token}}

    def expected_rows(self, emulator: VezaEmulator) -> list[dict[str, Any]]:
        return [node_as_row(node) for node in nodes_of(emulator, self.ok_query)]

    def set_query_seconds(self, emulator: VezaEmulator, seconds: float) -> None:
        emulator.config.query_seconds = seconds

    def fail_next(
        self,
        emulator: VezaEmulator,
        step: Step,
        status: int,
        *,
        times: int = 1,
        retry_after: float | None = None,
    ) -> None:
        emulator.fail_next(self._steps[step], status, times=times, retry_after=retry_after)

    def task_state(self, emulator: VezaEmulator, upstream_id: str) -> str | None:
        return emulator.task_states().get(upstream_id)
