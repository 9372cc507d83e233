"""Encoders for ES|QL results: JSON (rows or columnar), CSV and TSV, as generators of bytes.

Rows are encoded in batches as they come from the engine, so a result of any size streams out in
constant memory. Whatever needs a second look at the data (`columnar`, `drop_null_columns`) runs
the query again instead of holding rows: the emulator's data never changes.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from .esql_engine import CompiledQuery, ScanStats
from .esql_types import BOOLEAN, DATE, Column, Row, Value, format_date

_BATCH_ROWS = 1000
_COMPACT = {"separators": (",", ":"), "ensure_ascii": False}

JSON_TYPE = "application/json"
CSV_TYPE = "text/csv; charset=utf-8; header=present"
TSV_TYPE = "text/tab-separated-values; charset=utf-8"
TEXT_FORMATS = {"csv": CSV_TYPE, "tsv": TSV_TYPE}


def _dumps(value: Any) -> str:
    return json.dumps(value, **_COMPACT)  # type: ignore[arg-type]


def _batches(rows: Iterable[Row]) -> Iterator[list[Row]]:
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, _BATCH_ROWS)):
        yield batch


def _cell_converter(
    columns: Sequence[Column], text_booleans: bool
) -> Callable[[Row], Sequence[Value]] | None:
    """Per-row conversion of held values to their output form (dates -> ISO text), or None."""
    converters: list[tuple[int, Callable[[Any], Value]]] = []
    for position, column in enumerate(columns):
        if column.type == DATE:
            converters.append((position, format_date))
        elif column.type == BOOLEAN and text_booleans:
            converters.append((position, lambda value: "true" if value else "false"))
    if not converters:
        return None

    def convert(row: Row) -> list[Value]:
        cells = list(row)
        for position, converter in converters:
            if cells[position] is not None:
                cells[position] = converter(cells[position])
        return cells

    return convert


def _non_null_columns(query: CompiledQuery) -> list[int]:
    seen = [False] * len(query.columns)
    for row in query.execute():
        for position, value in enumerate(row):
            if value is not None:
                seen[position] = True
    return [position for position, found in enumerate(seen) if found]


def json_result(
    head: Mapping[str, Any],
    query: CompiledQuery,
    *,
    columnar: bool = False,
    drop_null_columns: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Iterator[bytes]:
    """`{...head, "columns", "values", "documents_found", "values_loaded", ...extra}`, streamed.

    The counters follow `values` (ES sends them before `columns`): they are only known once the
    rows have been read, and JSON readers do not depend on key order.
    """
    columns = list(query.columns)
    kept = list(range(len(columns)))
    document = dict(head)
    if drop_null_columns:
        document["all_columns"] = [column.as_json() for column in columns]
        kept = _non_null_columns(query)
    document["columns"] = [columns[position].as_json() for position in kept]
    yield (_dumps(document)[:-1] + ',"values":[').encode()
    stats = ScanStats()
    if columnar:
        yield from _columnar_values(query, columns, kept, stats)
    else:
        yield from _row_values(query.execute(stats), columns, kept)
    tail = {"documents_found": stats.documents_found, "values_loaded": stats.values_loaded, **(extra or {})}
    yield ("]," + _dumps(tail)[1:]).encode()


def _row_values(rows: Iterator[Row], columns: Sequence[Column], kept: Sequence[int]) -> Iterator[bytes]:
    if len(kept) != len(columns):
        rows = (tuple(row[position] for position in kept) for row in rows)
        columns = [columns[position] for position in kept]
    convert = _cell_converter(columns, text_booleans=False)
    separator = ""
    for batch in _batches(rows):
        cells = batch if convert is None else [convert(row) for row in batch]
        yield (separator + _dumps(cells)[1:-1]).encode()
        separator = ","


def _columnar_values(
    query: CompiledQuery, columns: Sequence[Column], kept: Sequence[int], stats: ScanStats
) -> Iterator[bytes]:
    for order, position in enumerate(kept):
        run_stats = stats if order == 0 else ScanStats()  # count what one run reads
        convert = format_date if columns[position].type == DATE else None
        yield b"," if order else b""
        yield b"["
        separator = ""
        for batch in _batches(query.execute(run_stats)):
            values = [row[position] for row in batch]
            if convert is not None:
                values = [None if value is None else convert(int(value)) for value in values]
            yield (separator + _dumps(values)[1:-1]).encode()
            separator = ","
        yield b"]"
    if not kept:
        for _ in query.execute(stats):
            pass


def text_result(query: CompiledQuery, text_format: str, *, delimiter: str = ",") -> Iterator[bytes]:
    """ES's `format=csv` (RFC 4180, CRLF, header line) or `format=tsv` body, streamed."""
    columns = list(query.columns)
    convert = _cell_converter(columns, text_booleans=True)
    header = [column.name for column in columns]
    if text_format == "tsv":
        yield from _tsv(header, query.execute(), convert)
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(header)
    for batch in _batches(query.execute()):
        writer.writerows(batch if convert is None else map(convert, batch))
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode()


_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _tsv(
    header: list[str], rows: Iterator[Row], convert: Callable[[Row], Sequence[Value]] | None
) -> Iterator[bytes]:
    def line(cells: Iterable[Value]) -> str:
        return "\t".join("" if cell is None else str(cell).translate(_TSV_ESCAPES) for cell in cells) + "\n"

    yield line(header).encode()
    for batch in _batches(rows):
        yield "".join(line(row if convert is None else convert(row)) for row in batch).encode()
