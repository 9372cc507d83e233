"""Veza assessment query specs, async (docs/upstreams/veza.md): ``query`` is the job's query
object, ``answer`` what the upstream's AsyncTask answers mean, ``provider`` the calls."""

from query_relay.providers.veza.answer import COUNT_COLUMNS, NODE_COLUMNS
from query_relay.providers.veza.provider import VezaProvider, VezaState
from query_relay.providers.veza.query import SPEC_STATE_LIMIT_BYTES, VezaQuery

__all__ = [
    "COUNT_COLUMNS",
    "NODE_COLUMNS",
    "SPEC_STATE_LIMIT_BYTES",
    "VezaProvider",
    "VezaQuery",
    "VezaState",
]
