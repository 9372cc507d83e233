"""Reading what a job landed in S3, shared by the integration tests of every provider."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
from collections.abc import Callable
from typing import Any

import pyarrow.parquet as pq

from query_relay_local.stack import LocalStack

# How a provider's native objects turn into rows: the object's text -> row dicts.
NativeRows = Callable[[str], list[dict[str, Any]]]


def state_count(history: list[Any], event_type: str) -> int:
    return sum(1 for event in history if event["type"] == event_type)


def read_object(stack: LocalStack, key: str) -> bytes:
    body: bytes = stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
    return body


def landed_manifest(stack: LocalStack, final: Any) -> dict[str, Any]:
    output = json.loads(final["output"])
    manifest: dict[str, Any] = json.loads(read_object(stack, output["manifest_key"]))
    return manifest


def landed_rows(stack: LocalStack, manifest: dict[str, Any], native_rows: NativeRows) -> list[dict[str, Any]]:
    """Read every object the manifest lists, checking its size, sha256 and row count on the way."""
    rows: list[dict[str, Any]] = []
    for entry in manifest["objects"]:
        raw = read_object(stack, entry["key"])
        assert len(raw) == entry["bytes"]
        assert hashlib.sha256(raw).hexdigest() == entry["sha256"]
        if manifest["format"] == "parquet":  # its compression is its columns' codec
            part = pq.read_table(io.BytesIO(raw)).to_pylist()
            assert len(part) == entry["rows"]
            rows.extend(part)
            continue
        text = (gzip.decompress(raw) if manifest["compression"] == "gzip" else raw).decode()
        if manifest["format"] == "jsonl":
            part = [json.loads(line) for line in text.splitlines()]
        elif manifest["format"] == "csv":
            part = list(csv.DictReader(io.StringIO(text)))
        else:
            part = native_rows(text)
        assert len(part) == entry["rows"]
        rows.extend(part)
    return rows


def failed_events(stack: LocalStack) -> list[dict[str, Any]]:
    return [event["detail"] for event in stack.events() if event["detail-type"] == "Query Failed"]


def as_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as JSON writes them (README "Values in JSON"): NaN and the infinities are null."""
    return [
        {
            name: None if isinstance(value, float) and not math.isfinite(value) else value
            for name, value in row.items()
        }
        for row in rows
    ]


def csv_text(value: Any) -> str:
    """A value as a CSV field holds it (README "Values in JSON"): empty for null, booleans and
    nested values as JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)
