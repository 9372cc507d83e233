"""Looker API 4.0 query tasks (docs/upstreams/looker.md): ``query`` is the job's query object,
``answer`` what Looker's answers and result formats mean, ``provider`` the calls."""

from query_relay.providers.looker.provider import RATE_LIMIT_DEFAULT_SECONDS, LookerProvider
from query_relay.providers.looker.query import LookerQuery, result_format_for
from query_relay.providers.looker.state import STATE_FIELDS_MAX, STATE_FIELDS_MAX_CHARS, LookerState
from query_relay.upstream.auth import TOKENS

__all__ = [
    "RATE_LIMIT_DEFAULT_SECONDS",
    "STATE_FIELDS_MAX",
    "STATE_FIELDS_MAX_CHARS",
    "TOKENS",
    "LookerProvider",
    "LookerQuery",
    "LookerState",
    "result_format_for",
]
