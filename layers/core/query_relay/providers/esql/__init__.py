"""Elasticsearch ES|QL async queries (docs/upstreams/esql.md): ``query`` is the job's query
object, ``answer`` what the upstream's answers mean, ``provider`` the calls."""

from query_relay.providers.esql.provider import EsqlProvider
from query_relay.providers.esql.query import EsqlQuery

__all__ = ["EsqlProvider", "EsqlQuery"]
