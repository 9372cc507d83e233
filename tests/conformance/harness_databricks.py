"""The conformance suite's view of the Databricks provider and its emulator.

The connection uses OAuth M2M (a service principal's client id and secret: what automation uses);
wrong credentials are a wrong secret, refused by the token endpoint. Submit's faults go to ``POST
/api/2.0/sql/statements``, Poll's to the statement's GET, Fetch's to the chunk calls (chunk 0's
link comes with the statement, so the result is cut into chunks of 5 rows), Cancel's to ``.../cancel``.
The failing query names a table the warehouse does not have: the statement FAILS (HTTP 200) with
SQL state 42P01. The expected rows come from the emulator's warehouse, typed as
docs/upstreams/databricks.md says each type lands, independently of the provider's converters
(``as_landed``).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, ClassVar

from query_relay_local.emulators import warehouse
from query_relay_local.emulators.databricks import WAREHOUSE_ID, DatabricksEmulator

from .harnesses import ProviderHarness, Step

CLIENT_ID, CLIENT_SECRET = "conformance-sp", "conformance-sp-secret-8d41"
OK_STATEMENT = (
    "SELECT id, name, department, salary, hired, active, updated_at, tags FROM employees "
    "WHERE id <= :max_id ORDER BY id"
)
# A decimal of at most this precision lands as a float (every digit exact in a double).
EXACT_FLOAT_PRECISION = 15


def _fraction(moment: dt.datetime | dt.time) -> str:
    """Databricks shows 3 digits of a second's fraction, or 6 when they are needed."""
    micros = moment.microsecond
    return f".{micros // 1000:03d}" if micros % 1000 == 0 else f".{micros:06d}"


def as_landed(column: warehouse.WColumn, value: Any) -> Any:
    """How a warehouse value lands through Databricks (docs/upstreams/databricks.md, "Types"):
    numbers and booleans typed, a decimal of precision <= 15 a float (else its text with every
    scale digit), timestamps in ISO 8601 (TIMESTAMP in UTC with ``Z``), binary upper-case hex, a
    time as the STRING Databricks holds it, JSON as the compact text of a STRING column."""
    if value is None:
        return None
    kind = column.type
    if kind == "decimal":
        precision, scale = column.precision or 38, column.scale or 0
        return float(value) if precision <= EXACT_FLOAT_PRECISION and scale else f"{value:.{scale}f}"
    if kind in ("date", "time"):
        return value.isoformat()
    if kind == "timestamp":
        return value.strftime("%Y-%m-%dT%H:%M:%S") + _fraction(value)
    if kind == "timestamp_tz":
        utc = value.astimezone(dt.UTC)
        return utc.strftime("%Y-%m-%dT%H:%M:%S") + _fraction(utc) + "Z"
    if kind == "binary":
        return value.hex().upper()
    if kind == "json":
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value


class DatabricksHarness(ProviderHarness):
    provider = "databricks"
    cancelled_state = "canceled"
    unknown_task_id = "01ef2b3c-0000-4d5e-8f90-000000000abc"
    ok_query: ClassVar[dict[str, Any]] = {
        "statement": OK_STATEMENT,
        "warehouse_id": WAREHOUSE_ID,
        "parameters": [{"name": "max_id", "value": "20", "type": "INT"}],
    }
    failing_query: ClassVar[dict[str, Any]] = {
        "statement": "SELECT * FROM no_such_table",
        "warehouse_id": WAREHOUSE_ID,
    }
    _steps: ClassVar[dict[Step, str]] = {
        "submit": "submit",
        "poll": "status",
        "fetch": "chunk",
        "cancel": "cancel",
    }

    def emulator(self) -> DatabricksEmulator:
        return DatabricksEmulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)

    def connection(self, emulator: DatabricksEmulator, *, valid: bool = True) -> dict[str, Any]:
        return {
            "provider": "databricks",
            "base_url": emulator.base_url,
            "auth": {
                "type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET if valid else "not-the-key",
            },
        }

    def expected_rows(self, emulator: DatabricksEmulator) -> list[dict[str, Any]]:
        result = warehouse.execute(OK_STATEMENT, {"max_id": 20})
        return [
            {column.name: as_landed(column, value) for column, value in zip(result.columns, row, strict=True)}
            for row in result.rows
        ]

    def set_query_seconds(self, emulator: DatabricksEmulator, seconds: float) -> None:
        emulator.config.query_seconds = seconds

    def fail_next(
        self,
        emulator: DatabricksEmulator,
        step: Step,
        status: int,
        *,
        times: int = 1,
        retry_after: float | None = None,
    ) -> None:
        if step == "fetch":
            emulator.config.chunk_rows = 5  # so that Fetch asks for chunks beyond the first
        emulator.fail_next(self._steps[step], status, times=times, retry_after=retry_after)

    def split_results(self, emulator: Any, rows: int) -> None:
        emulator.config.chunk_rows = rows

    def task_state(self, emulator: DatabricksEmulator, upstream_id: str) -> str | None:
        return emulator.statement_states().get(upstream_id)
