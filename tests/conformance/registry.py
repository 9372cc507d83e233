"""The providers the conformance suite runs against: one line per provider."""

from __future__ import annotations

from .harness_databricks import DatabricksHarness
from .harness_looker import LookerHarness
from .harness_snowflake import SnowflakeHarness
from .harness_veza import VezaHarness
from .harnesses import EsqlHarness, ProviderHarness

HARNESSES: list[ProviderHarness] = [
    EsqlHarness(),
    LookerHarness(),
    VezaHarness(),
    SnowflakeHarness(),
    DatabricksHarness(),
]
