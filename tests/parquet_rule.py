"""The README's Parquet rule written out on its own, for the tests: what a value as a jsonl row holds
it reads back as from a Parquet part (pyarrow's to_pylist), by its column's kind."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from query_relay.column_types import Kind
from query_relay.json_rule import encode_json


def expected(kind: Kind, value: Any) -> Any:
    if value is None:
        return None
    if kind.name == "json":
        return encode_json(value)
    if kind.name == "string":
        return value if isinstance(value, str) else encode_json(value)
    if kind.name == "decimal":
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if kind.name == "date":
        return date.fromisoformat(value)
    if kind.name in ("timestamp", "timestamp_local"):
        head, dot, fraction = value.partition(".")
        zone = ""
        for mark in ("Z", "+", "-"):
            if dot and mark in fraction:
                fraction, zone = fraction.split(mark, 1)[0], mark + fraction.split(mark, 1)[1]
        text = head + (dot + fraction[:6] if dot else "") + zone
        moment = datetime.fromisoformat(text.replace(" ", "T"))
        return moment.astimezone(UTC) if kind.name == "timestamp" else moment
    return value
