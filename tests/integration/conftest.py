"""Fixtures for integration tests: the whole state machine on the local stack against the ES|QL emulator.

- ``esql_emulator``: a started ``EsqlEmulator`` requiring the API key ``ESQL_API_KEY``, queries
  finishing at once (``config.query_seconds = 0``); tests change its config or arm faults as needed.
- ``stack``: a started ``LocalStack`` with the connection ``ES_CONNECTION`` (``es-local``) loaded,
  pointing at that emulator with that key.
- ``run_job(stack, spec, timeout=60)`` (import it from here): start one execution and wait for its
  end; returns the final ``describe_execution`` and the execution history.

Function scope for both fixtures: every test gets empty AWS state (moto is reset when a stack starts)
and a fresh emulator, so tests cannot see each other's jobs; a stack starts in a fraction of a
second. moto's state is global to a process, but these stacks run one after another and
pytest-xdist workers are separate processes, so the tests need no xdist group.

Every test in this directory is marked ``integration`` (``pytest -m integration``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from query_relay_local.emulators.esql import EsqlEmulator
from query_relay_local.stack import LocalStack

if TYPE_CHECKING:
    from mypy_boto3_stepfunctions.type_defs import DescribeExecutionOutputTypeDef, HistoryEventTypeDef

ES_CONNECTION = "es-local"
# A test value, distinctive so that security tests can look for it in logs, events and outputs.
ESQL_API_KEY = "integration-api-key-3c7d9e51"
_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def esql_emulator() -> Iterator[EsqlEmulator]:
    with EsqlEmulator(api_key=ESQL_API_KEY) as emulator:
        emulator.config.query_seconds = 0
        yield emulator


def esql_connection(emulator: EsqlEmulator, api_key: str = ESQL_API_KEY) -> dict[str, Any]:
    """The connection document for an emulator (what users keep in Secrets Manager)."""
    return {
        "provider": "esql",
        "base_url": emulator.base_url,
        "auth": {"type": "api_key", "api_key": api_key},
    }


@pytest.fixture
def stack(esql_emulator: EsqlEmulator) -> Iterator[LocalStack]:
    with LocalStack() as started:
        started.load_connections({ES_CONNECTION: esql_connection(esql_emulator)})
        yield started


def run_job(
    stack: LocalStack, spec: dict[str, Any], timeout: float = 60
) -> tuple[DescribeExecutionOutputTypeDef, list[HistoryEventTypeDef]]:
    """Run one job to its end: (final describe_execution, execution history)."""
    return stack.run_job(spec, timeout=timeout)
