"""The conformance suite's view of the Looker provider and its emulator.

Submit's faults go to task creation (``POST /query_tasks``), Poll's to the task status, Fetch's
to the results, Cancel's to ``DELETE /running_queries``. A cancelled task is ``killed`` in Looker.
The failing query names a field the explore does not have: Looker accepts the query, the task
ends in ``error`` and the provider reports the database's message.
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx

from query_relay_local.emulators.looker import LookerEmulator

from .harnesses import ProviderHarness, Step

LOOKER_CLIENT_ID = "conformance-looker-client"
LOOKER_CLIENT_SECRET = "conformance-looker-secret-8d2f"


class LookerHarness(ProviderHarness):
    provider = "looker"
    cancelled_state = "killed"
    unknown_task_id = "0123456789abcdef0123456789abcdef"
    ok_query: ClassVar[dict[str, Any]] = {
        "model": "ecommerce",
        "view": "orders",
        "fields": ["users.country", "orders.count", "orders.total_revenue"],
        "filters": {"orders.status": "Complete,Shipped"},
        "sorts": ["users.country"],
    }
    failing_query: ClassVar[dict[str, Any]] = {
        "model": "ecommerce",
        "view": "orders",
        "fields": ["orders.status", "orders.no_such_field"],
    }
    _steps: ClassVar[dict[Step, str]] = {
        "submit": "create_task",
        "poll": "status",
        "fetch": "results",
        "cancel": "kill",
    }

    def emulator(self) -> LookerEmulator:
        return LookerEmulator(client_id=LOOKER_CLIENT_ID, client_secret=LOOKER_CLIENT_SECRET)

    def connection(self, emulator: LookerEmulator, *, valid: bool = True) -> dict[str, Any]:
        return {
            "provider": "looker",
            "base_url": emulator.base_url,
            "auth": {
                "type": "client_credentials",
                "client_id": LOOKER_CLIENT_ID,
                "client_secret": LOOKER_CLIENT_SECRET if valid else "not-the-key",
            },
        }

    def expected_rows(self, emulator: LookerEmulator) -> list[dict[str, Any]]:
        """The emulator's own synchronous run of the query (``GET /queries/{id}/run/json``)."""
        api = f"{emulator.base_url}/api/4.0"
        login = httpx.post(
            f"{api}/login", data={"client_id": LOOKER_CLIENT_ID, "client_secret": LOOKER_CLIENT_SECRET}
        )
        login.raise_for_status()
        headers = {"Authorization": f"token {login.json()['access_token']}"}
        query_id = emulator.create_query(self.ok_query)
        answer = httpx.get(f"{api}/queries/{query_id}/run/json", headers=headers)
        answer.raise_for_status()
        rows: list[dict[str, Any]] = answer.json()
        return rows

    def set_query_seconds(self, emulator: LookerEmulator, seconds: float) -> None:
        emulator.config.query_seconds = seconds

    def fail_next(
        self,
        emulator: LookerEmulator,
        step: Step,
        status: int,
        *,
        times: int = 1,
        retry_after: float | None = None,
    ) -> None:
        emulator.fail_next(self._steps[step], status, times=times, retry_after=retry_after)

    def task_state(self, emulator: LookerEmulator, upstream_id: str) -> str | None:
        return emulator.task_states().get(upstream_id)
