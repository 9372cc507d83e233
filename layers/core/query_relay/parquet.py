"""Parquet parts: a provider's rows as typed Arrow columns, written in row groups to a file in
/tmp, which ``results.ResultWriter`` then uploads whole.

pyarrow comes from the Fetch function's own layer (layers/parquet) and is imported by this module
only, which ``results`` imports only for a Parquet job: the other formats never load it.

Memory stays bounded: rows are turned into Arrow record batches a small batch at a time
(``BATCH_BYTES``), and the batches of one row group (``ROW_GROUP_BYTES`` of Arrow data) are held
until it is written. Each column's kind comes from ``query_relay.column_types``; a value that does
not fit it (text in an integer column, an ES|QL multi-valued field in a number column) fails the
job with ``ColumnTypeMismatch`` naming the column and the row, never the value (it is the user's
data, and the error goes to logs and events). Text columns take anything: a value that is not text
is written as its JSON text, by the JSON rule, as nested values are.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from query_relay.column_types import Kind
from query_relay.exceptions import ColumnTypeMismatch
from query_relay.json_rule import LONE_SURROGATE, encode_json
from query_relay.models import Column

# Arrow's buffers from the C library's allocator, which hands a freed row group's large blocks back
# at once; mimalloc and jemalloc keep them for reuse, and the part's upload then comes on top.
pa.set_memory_pool(pa.system_memory_pool())

ROW_GROUP_BYTES = 16 * 1024 * 1024  # Arrow data of one row group, held until it is written
BATCH_BYTES = 1024 * 1024  # rows are turned into Arrow a batch of about this much at a time
# A part's file stays below this whatever PartMaxBytes says: /tmp holds 512 MB unless the function
# is given more ephemeral storage.
PART_FILE_MAX_BYTES = 384 * 1024 * 1024
_HASH_READ_BYTES = 1024 * 1024

_CODECS = {"none": "NONE", "snappy": "SNAPPY", "gzip": "GZIP", "zstd": "ZSTD"}
# Python types a kind's values may have (None is null in every kind); the rest are refused.
_ACCEPTED: dict[str, frozenset[type]] = {
    "boolean": frozenset({bool}),
    "int8": frozenset({int}),
    "int16": frozenset({int}),
    "int32": frozenset({int}),
    "int64": frozenset({int}),
    "float32": frozenset({int, float}),
    "float64": frozenset({int, float}),
    "decimal": frozenset({int, float, str, Decimal}),
    "date": frozenset({str}),
    "timestamp": frozenset({str}),
    "timestamp_local": frozenset({str}),
}
_NONE = type(None)
# Microseconds are what Athena, Spark and Glue read: digits past the sixth are dropped.
_PAST_MICROSECONDS = r"(\.\d{6})\d+"
_DESCRIBED = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "text",
    list: "a list",
    dict: "an object",
}


def arrow_type(kind: Kind) -> pa.DataType:
    if kind.name == "decimal":
        return pa.decimal128(kind.precision, kind.scale)
    return {
        "boolean": pa.bool_(),
        "int8": pa.int8(),
        "int16": pa.int16(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "float32": pa.float32(),
        "float64": pa.float64(),
        "string": pa.string(),
        "json": pa.string(),
        "date": pa.date32(),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "timestamp_local": pa.timestamp("us"),
    }[kind.name]


class Layout:
    """The Parquet columns of a result: a repeated column name once, where it first appears, with
    its last column's values (as a jsonl row keys them)."""

    def __init__(self, columns: Sequence[Column], kinds: Sequence[Kind]) -> None:
        last = {column.name: index for index, column in enumerate(columns)}
        self.width = len(columns)
        self._fields = [(name, index, kinds[index], columns[index]) for name, index in last.items()]
        self.schema = pa.schema([(name, arrow_type(kind)) for name, _, kind, _ in self._fields])

    def batch(self, rows: Sequence[Sequence[Any]], first_row: int) -> pa.RecordBatch:
        """``rows`` as a record batch; ``first_row`` (the result's row number of the first, from 1)
        names a row whose value does not fit."""
        if set(map(len, rows)) - {self.width}:
            wrong = next(len(row) for row in rows if len(row) != self.width)
            raise ValueError(f"a row has {wrong} values for {self.width} columns")
        if not self._fields:
            # Parquet counts rows by its columns' values: rows of nothing cannot be stored.
            raise ColumnTypeMismatch("the result has rows but no columns, which a Parquet part cannot hold")
        values = list(zip(*rows, strict=True))
        arrays = [
            _array(kind, values[index], column, first_row, self.schema.field(position).type)
            for position, (_, index, kind, column) in enumerate(self._fields)
        ]
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


def _array(
    kind: Kind, values: Sequence[Any], column: Column, first_row: int, target: pa.DataType
) -> pa.Array:
    if kind.name == "json":
        return _text([None if value is None else encode_json(value) for value in values])
    if kind.name == "string":
        if not set(map(type, values)) <= {str, _NONE}:
            values = [_as_text(value) for value in values]
        return _text(values)
    found = set(map(type, values)) - {_NONE}
    refused = found - _ACCEPTED[kind.name]
    if refused:
        position = next(i for i, value in enumerate(values) if type(value) in refused)
        raise _mismatch(column, kind, first_row + position, _DESCRIBED.get(type(values[position]), "a value"))
    try:
        if kind.name == "decimal":
            return pa.array([_decimal(value) for value in values], type=target)
        if kind.name in ("date", "timestamp", "timestamp_local"):
            return _parsed(pa.array(values, type=pa.string()), kind, target)
        return pa.array(values, type=target)
    except (pa.ArrowException, OverflowError, InvalidOperation, ValueError):
        position = _first_unfit(kind, values, target)
        raise _mismatch(column, kind, first_row + position, "a value out of its range or form") from None


def _as_text(value: Any) -> str | None:
    return value if value is None or type(value) is str else encode_json(value)


def _text(values: Sequence[Any]) -> pa.Array:
    try:
        return pa.array(values, type=pa.string())
    except UnicodeEncodeError:  # a lone surrogate, which UTF-8 cannot hold: "?", by the JSON rule
        return pa.array([None if value is None else LONE_SURROGATE.sub("?", value) for value in values])


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    # A float's repr is the shortest text that reads back as it: the digits the upstream sent.
    number = Decimal(repr(value)) if type(value) is float else Decimal(value)
    if not number.is_finite():
        raise ValueError("not a finite decimal")
    return number


def _parsed(text: pa.Array, kind: Kind, target: pa.DataType) -> pa.Array:
    if kind.name != "date":
        text = pc.replace_substring_regex(text, pattern=_PAST_MICROSECONDS, replacement=r"\1")
    return text.cast(target)


def _first_unfit(kind: Kind, values: Sequence[Any], target: pa.DataType) -> int:
    """The position of the first value that does not convert on its own."""
    for position, value in enumerate(values):
        try:
            if kind.name == "decimal":
                pa.array([_decimal(value)], type=target)
            elif kind.name in ("date", "timestamp", "timestamp_local"):
                _parsed(pa.array([value], type=pa.string()), kind, target)
            else:
                pa.array([value], type=target)
        except (pa.ArrowException, OverflowError, InvalidOperation, ValueError):
            return position
    return 0


def _mismatch(column: Column, kind: Kind, row: int, what: str) -> ColumnTypeMismatch:
    return ColumnTypeMismatch(
        f"column {column.name!r} ({column.type}, written as {kind.arrow}): row {row} holds {what}, "
        f"which a Parquet column of {kind.arrow} cannot hold (a column holds one type: cast it in the "
        "query, or write jsonl or csv)"
    )


@dataclass
class PartFile:
    """One part being written: row groups appended to a file in /tmp."""

    layout: Layout
    compression: str
    rows: int = 0
    data_bytes: int = 0  # Arrow bytes of the rows added (the part's size before encoding)
    _pending: list[pa.RecordBatch] = field(default_factory=list)
    _pending_bytes: int = 0

    def __post_init__(self) -> None:
        handle, self.path = tempfile.mkstemp(prefix="query-relay-part-", suffix=".parquet")
        os.close(handle)
        self._closed = False
        self._writer = pq.ParquetWriter(
            self.path, self.layout.schema, compression=_CODECS[self.compression], write_statistics=True
        )

    def add(self, batch: pa.RecordBatch) -> None:
        self._pending.append(batch)
        self._pending_bytes += batch.nbytes
        self.rows += batch.num_rows
        self.data_bytes += batch.nbytes
        if self._pending_bytes >= ROW_GROUP_BYTES:
            self._write_row_group()

    @property
    def row_group_room(self) -> int:
        """The Arrow bytes the row group being gathered may still take."""
        return ROW_GROUP_BYTES - self._pending_bytes

    def file_bytes(self) -> int:
        return os.path.getsize(self.path)

    def close(self) -> Stored:
        """The finished file: its footer written, its size and sha256 read back."""
        if self._pending or self.rows == 0:
            self._write_row_group()
        self._closed = True
        self._writer.close()
        digest = hashlib.sha256()
        with open(self.path, "rb") as stored:
            while chunk := stored.read(_HASH_READ_BYTES):
                digest.update(chunk)
        return Stored(path=self.path, bytes=os.path.getsize(self.path), sha256=digest.hexdigest())

    def discard(self) -> None:
        """Close the file, if a failure left it open, and remove it."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(pa.ArrowException, OSError):
                self._writer.close()
        remove(self.path)

    def _write_row_group(self) -> None:
        table = pa.Table.from_batches(self._pending, schema=self.layout.schema)
        self._writer.write_table(table, row_group_size=max(1, table.num_rows))
        self._pending, self._pending_bytes = [], 0


@dataclass(frozen=True)
class Stored:
    path: str
    bytes: int
    sha256: str


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
