"""JSON by one rule (README "Values in JSON"): how every value a job read is written as JSON, in a
jsonl row, a CSV cell holding a nested value, or a Parquet column of JSON text.

Values are written by orjson: compact, UTF-8, strings escaped only where JSON requires it, a float
as the shortest text that reads back as the same double. NaN and infinities are not JSON: null.
An integer beyond 64 bits (which orjson refuses) is written as its exact digits, and a lone
surrogate (which UTF-8 cannot hold) as "?", as every reader reads one. Anything that is not a
JSON value is written as orjson writes it, or as its str().
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_ORJSON_INT_MIN, _ORJSON_INT_END = -(2**63), 2**64
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def json_bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=str)
    except orjson.JSONEncodeError:
        return orjson.dumps(_writable(value), default=str)


def _writable(value: Any) -> Any:
    """``value`` with what orjson refuses made writable by the rule (a copy where it changes)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if _ORJSON_INT_MIN <= value < _ORJSON_INT_END else orjson.Fragment(int.__repr__(value))
    if isinstance(value, str):
        return LONE_SURROGATE.sub("?", value)
    if isinstance(value, list | tuple):
        return [_writable(item) for item in value]
    if isinstance(value, dict):
        return {_writable(key): _writable(item) for key, item in value.items()}
    return value


def encode_json(value: Any) -> str:
    """The JSON text of ``value``, by the rule."""
    return json_bytes(value).decode()
