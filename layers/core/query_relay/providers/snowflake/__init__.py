"""Snowflake SQL API v2 statements (docs/upstreams/snowflake.md): ``query`` is the job's query object,
``answer`` what the API's answers mean and how each type spells its values, ``auth`` the key-pair
JWT and token headers, ``provider`` the calls."""

from query_relay.providers.snowflake.provider import SnowflakeProvider
from query_relay.providers.snowflake.query import SnowflakeQuery

__all__ = ["SnowflakeProvider", "SnowflakeQuery"]
