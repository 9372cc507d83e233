"""What the conformance suite needs to know about each provider and its emulator.

A harness starts the provider's emulator, builds connection documents for it, names a query that
succeeds and one the upstream rejects, knows the rows the good query must give, and can slow the
emulator down, arm faults on it and read a task's state. Registering a new provider with the
suite is one line in ``registry.HARNESSES``.
"""

from __future__ import annotations

import abc
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Literal

import httpx

from query_relay.models import ProviderName
from query_relay_local.emulators.esql import EsqlEmulator, new_async_id
from query_relay_local.emulators.http import EmulatorServer

Step = Literal["submit", "poll", "fetch", "cancel"]


class ProviderHarness(abc.ABC):
    provider: ClassVar[ProviderName]
    # The emulator's name for a task that was cancelled (None: the provider cannot cancel).
    cancelled_state: ClassVar[str | None]
    # An id of the upstream's shape that the emulator never issued.
    unknown_task_id: ClassVar[str]
    ok_query: ClassVar[dict[str, Any]]
    failing_query: ClassVar[dict[str, Any]]

    @abc.abstractmethod
    def emulator(self) -> AbstractContextManager[EmulatorServer]:
        """A started emulator that requires the credentials ``connection`` uses."""

    @abc.abstractmethod
    def connection(self, emulator: Any, *, valid: bool = True) -> dict[str, Any]:
        """A connection document for the emulator; ``valid=False`` gives wrong credentials."""

    @abc.abstractmethod
    def expected_rows(self, emulator: Any) -> list[dict[str, Any]]:
        """The rows ``ok_query`` must give, read from the emulator by other means than the provider."""

    @abc.abstractmethod
    def set_query_seconds(self, emulator: Any, seconds: float) -> None: ...

    @abc.abstractmethod
    def fail_next(
        self, emulator: Any, step: Step, status: int, *, times: int = 1, retry_after: float | None = None
    ) -> None: ...

    @abc.abstractmethod
    def task_state(self, emulator: Any, upstream_id: str) -> str | None: ...

    def split_results(self, emulator: Any, rows: int) -> None:
        """Make the emulator split results into pieces of ``rows`` rows (upstreams that split them)."""
        raise NotImplementedError(f"{self.provider} results are not split")

    def __repr__(self) -> str:
        return self.provider


ESQL_KEY = "conformance-esql-key-41b7"


class EsqlHarness(ProviderHarness):
    provider = "esql"
    cancelled_state = "deleted"
    unknown_task_id = new_async_id(987_654)
    ok_query: ClassVar[dict[str, Any]] = {
        "query": "FROM employees | WHERE languages >= ? | KEEP emp_no, last_name, salary, still_hired"
        " | SORT emp_no",
        "params": [4],
    }
    failing_query: ClassVar[dict[str, Any]] = {"query": "FROM employees | WHERE no_such_column > 1"}
    _steps: ClassVar[dict[Step, str]] = {
        "submit": "submit",
        "poll": "get",
        "fetch": "get",
        "cancel": "delete",
    }

    def emulator(self) -> EsqlEmulator:
        return EsqlEmulator(api_key=ESQL_KEY)

    def connection(self, emulator: EsqlEmulator, *, valid: bool = True) -> dict[str, Any]:
        key = ESQL_KEY if valid else "not-the-key"
        return {
            "provider": "esql",
            "base_url": emulator.base_url,
            "auth": {"type": "api_key", "api_key": key},
        }

    def expected_rows(self, emulator: EsqlEmulator) -> list[dict[str, Any]]:
        saved, emulator.config.query_seconds = emulator.config.query_seconds, 0
        try:
            answer = httpx.post(
                f"{emulator.base_url}/_query",
                json=self.ok_query,
                headers={"Authorization": f"ApiKey {ESQL_KEY}"},
            ).json()
        finally:
            emulator.config.query_seconds = saved
        names = [column["name"] for column in answer["columns"]]
        return [dict(zip(names, row, strict=True)) for row in answer["values"]]

    def set_query_seconds(self, emulator: EsqlEmulator, seconds: float) -> None:
        emulator.config.query_seconds = seconds

    def fail_next(
        self,
        emulator: EsqlEmulator,
        step: Step,
        status: int,
        *,
        times: int = 1,
        retry_after: float | None = None,
    ) -> None:
        emulator.fail_next(self._steps[step], status, times=times, retry_after=retry_after)

    def task_state(self, emulator: EsqlEmulator, upstream_id: str) -> str | None:
        return emulator.task_states().get(upstream_id)
