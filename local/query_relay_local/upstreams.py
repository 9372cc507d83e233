"""The upstreams the local tooling can emulate: how to start each emulator with credentials, the
connection document that reaches it, and the demo jobs that show it off. `query-relay emulate`
and `query-relay demo` read this table; a new provider adds one entry."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from query_relay_local.emulators.http import EmulatorServer


@dataclass(frozen=True)
class DemoJob:
    title: str
    spec: dict[str, Any]  # without "connection": the demo's own is added
    query_seconds: float  # how long the emulator takes to answer it


@dataclass(frozen=True)
class Upstream:
    name: str
    title: str
    # Emulator from a secret (None: accept any credentials).
    start: Callable[[str | None], EmulatorServer]
    connection: Callable[[str, str], dict[str, Any]]  # (base_url, secret) -> connection document
    demo_jobs: tuple[DemoJob, ...]

    def new_secret(self) -> str:
        return secrets.token_urlsafe(24)


def _esql(secret: str | None) -> EmulatorServer:
    from query_relay_local.emulators.esql import EsqlEmulator  # noqa: PLC0415 - load what is used

    return EsqlEmulator(api_key=secret)


def _looker(secret: str | None) -> EmulatorServer:
    from query_relay_local.emulators.looker import LookerEmulator  # noqa: PLC0415

    return LookerEmulator(client_id=LOOKER_CLIENT_ID if secret else None, client_secret=secret)


def _veza(secret: str | None) -> EmulatorServer:
    from query_relay_local.emulators.veza import VezaEmulator  # noqa: PLC0415

    return VezaEmulator(api_key=secret)


def _snowflake(secret: str | None) -> EmulatorServer:
    from query_relay_local.emulators.snowflake import SnowflakeEmulator  # noqa: PLC0415

    return SnowflakeEmulator(oauth_token=secret)


def _databricks(secret: str | None) -> EmulatorServer:
    from query_relay_local.emulators.databricks import DatabricksEmulator  # noqa: PLC0415

    return DatabricksEmulator(token=secret)


LOOKER_CLIENT_ID = "query-relay-local"
DATABRICKS_WAREHOUSE_ID = "5e1f0c2d3b4a6978"  # the emulator's (emulators.databricks.WAREHOUSE_ID)

UPSTREAMS: dict[str, Upstream] = {
    "esql": Upstream(
        name="esql",
        title="ES|QL",
        start=_esql,
        connection=lambda base_url, secret: {
            "provider": "esql",
            "base_url": base_url,
            "auth": {"type": "api_key", "api_key": secret},
        },
        demo_jobs=(
            DemoJob(
                "Average salary per department (answered inside the submit wait: no polling)",
                {
                    "query": {
                        "query": "FROM employees | STATS avg_salary = AVG(salary), employees = COUNT(*)"
                        " BY department | SORT department"
                    },
                    "output": {"format": "jsonl", "compression": "none"},
                },
                query_seconds=0.0,
            ),
            DemoJob(
                "Server errors in the web logs (a slower query: the workflow polls until it finishes)",
                {
                    "query": {
                        "query": "FROM web_logs | WHERE status >= 500 | KEEP @timestamp, host, status, bytes"
                        " | SORT @timestamp | LIMIT 500"
                    },
                    "output": {"format": "csv", "compression": "gzip"},
                    "polling": {"initial_seconds": 1, "max_seconds": 2, "timeout_seconds": 120},
                },
                query_seconds=4.0,
            ),
            DemoJob(
                "Employees as Parquet (typed columns), registered in the Glue catalog for Athena",
                {
                    "query": {
                        "query": "FROM employees | KEEP emp_no, first_name, salary, hire_date | SORT emp_no"
                        " | LIMIT 20"
                    },
                    "output": {"format": "parquet", "catalog": {"database": "demo", "table": "employees"}},
                },
                query_seconds=0.0,
            ),
        ),
    ),
    "looker": Upstream(
        name="looker",
        title="Looker",
        start=_looker,
        connection=lambda base_url, secret: {
            "provider": "looker",
            "base_url": base_url,
            "auth": {"type": "client_credentials", "client_id": LOOKER_CLIENT_ID, "client_secret": secret},
        },
        demo_jobs=(
            DemoJob(
                "Revenue by country from an inline Looker query (a query task, polled until complete)",
                {
                    "query": {
                        "model": "ecommerce",
                        "view": "orders",
                        "fields": ["users.country", "orders.count", "orders.total_revenue"],
                        "sorts": ["orders.total_revenue desc"],
                        "limit": 10,
                    },
                    "output": {"format": "jsonl", "compression": "none"},
                    "polling": {"initial_seconds": 1, "max_seconds": 2, "timeout_seconds": 120},
                },
                query_seconds=3.0,
            ),
        ),
    ),
    "veza": Upstream(
        name="veza",
        title="Veza",
        start=_veza,
        connection=lambda base_url, secret: {
            "provider": "veza",
            "base_url": base_url,
            "auth": {"type": "bearer", "token": secret},
        },
        demo_jobs=(
            DemoJob(
                "Active Okta users, 5 nodes a page (Fetch follows every page into the same job)",
                {
                    "query": {
                        "query_type": "SOURCE_TO_DESTINATION",
                        "include_nodes": True,
                        "source_node_types": {
                            "nodes": [
                                {
                                    "node_type": "OktaUser",
                                    "condition_expression": {
                                        "operator": "AND",
                                        "specs": [{"fn": "EQ", "property": "is_active", "value": True}],
                                    },
                                }
                            ]
                        },
                        "page_size": 5,
                    },
                    "output": {"format": "jsonl", "compression": "none"},
                    "polling": {"initial_seconds": 1, "max_seconds": 2, "timeout_seconds": 120},
                },
                query_seconds=2.0,
            ),
        ),
    ),
    "snowflake": Upstream(
        name="snowflake",
        title="Snowflake",
        start=_snowflake,
        connection=lambda base_url, secret: {
            "provider": "snowflake",
            "base_url": base_url,
            "auth": {"type": "bearer", "token": secret},  # an OAuth token (key pairs: see the README)
        },
        demo_jobs=(
            DemoJob(
                "3,000 typed rows from a SQL statement with a binding (3 partitions, fetched in parallel)",
                {
                    "query": {
                        "statement": "SELECT n, square, label, ratio FROM numbers WHERE n <= ? ORDER BY n",
                        "bindings": {"1": {"type": "FIXED", "value": "3000"}},
                        "warehouse": "COMPUTE_WH",
                    },
                    "output": {"format": "jsonl", "compression": "gzip"},
                },
                query_seconds=0.0,
            ),
        ),
    ),
    "databricks": Upstream(
        name="databricks",
        title="Databricks",
        start=_databricks,
        connection=lambda base_url, secret: {
            "provider": "databricks",
            "base_url": base_url,
            "auth": {"type": "bearer", "token": secret},  # a token (OAuth M2M: see the README)
        },
        demo_jobs=(
            DemoJob(
                "A named parameter, polled, 5 chunks fetched in parallel from external links",
                {
                    "query": {
                        "statement": "SELECT n, square, label FROM numbers WHERE n <= :last ORDER BY n",
                        "warehouse_id": DATABRICKS_WAREHOUSE_ID,
                        "parameters": [{"name": "last", "value": "5000", "type": "INT"}],
                    },
                    "output": {"format": "csv", "compression": "none"},
                    "polling": {"initial_seconds": 1, "max_seconds": 2, "timeout_seconds": 120},
                },
                query_seconds=3.0,
            ),
        ),
    ),
}
