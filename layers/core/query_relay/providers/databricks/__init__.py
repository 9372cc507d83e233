"""Databricks SQL Statement Execution 2.0 (docs/upstreams/databricks.md): ``query`` is the job's
query object, ``answer`` what the API's answers mean and how each type spells its values,
``provider`` the calls (and the OAuth M2M login)."""

from query_relay.providers.databricks.provider import DatabricksProvider
from query_relay.providers.databricks.query import DatabricksQuery

__all__ = ["DatabricksProvider", "DatabricksQuery"]
