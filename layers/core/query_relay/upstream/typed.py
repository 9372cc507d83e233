"""Rows whose values arrive as text, typed by their columns' types (the warehouses' JSON answers:
Snowflake's ``jsonv2`` and Databricks' ``JSON_ARRAY`` spell every value as a JSON string or null).

A provider maps each column's type to a ``Converter`` (text -> value) or to None where the text is
the value. ``typed_rows`` applies them a block of rows at a time, column by column, so that a
column left as text costs nothing and the others cost one call per value, not a Python step per
row. A value a converter cannot read (a hostile or broken answer) is an UpstreamProtocolError
naming the row and the column, never an unnamed error; null stays None whatever the type.

The converters here are the ones both warehouses need alike; a provider adds its own (Snowflake's
dates as days since the epoch, for instance).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import orjson

from query_relay.models import MAX_NESTING, nesting_depth
from query_relay.upstream.errors import Where

Converter = Callable[[str], Any]

# Rows are typed this many at a time: few enough that a block of wide rows stays small.
TYPED_BLOCK_ROWS = 256
# A decimal with at most this many significant digits reads back from a double exactly (IEEE 754
# binary64 keeps 15 decimal digits), so it is written as a JSON number; a longer one as its text.
EXACT_FLOAT_DIGITS = 15

_TEXT_OR_NULL = frozenset({str, type(None)})
_BOOLEANS = {"true": True, "false": False, "TRUE": True, "FALSE": False, "True": True, "False": False}


def integer(text: str) -> int:
    if not text.lstrip("+-").isdigit():  # int() would also take "1_000", " 7" and Unicode digits
        raise ValueError("not an integer")
    return int(text)


def floating(text: str) -> float:
    """A float; the spellings of NaN and the infinities included (the JSON rule writes them null)."""
    return float(text)


def boolean(text: str) -> bool:
    return _BOOLEANS[text]


def json_text(text: str) -> Any:
    """A value held as JSON text (a VARIANT, a STRUCT ...), as the value it spells; nested no
    deeper than a row may be (a row is one level, so MAX_NESTING - 1)."""
    value = orjson.loads(text)
    # Brackets in the text bound the depth: only a text with many is walked.
    if (text.count("[") + text.count("{") >= MAX_NESTING - 1) and nesting_depth(value) > MAX_NESTING - 1:
        raise ValueError(f"nested deeper than {MAX_NESTING - 1} levels")
    return value


def decimal(precision: int | None, scale: int | None) -> Converter:
    """A fixed-point number: an integer when its scale is 0; else a float when the column's
    precision keeps every digit exact in one (``EXACT_FLOAT_DIGITS``), else its text as given."""
    if not scale:
        return integer
    if precision is not None and precision <= EXACT_FLOAT_DIGITS:
        return _exact_float
    return _decimal_text


def _exact_float(text: str) -> float:
    value = Decimal(text)
    if not value.is_finite():
        raise ValueError("not a finite decimal")
    return float(value)


def _decimal_text(text: str) -> str:
    if not Decimal(text).is_finite():
        raise ValueError("not a finite decimal")
    return text


class TypedRows:
    """Rows typed by their columns: ``converters[i]`` reads column ``i``'s text (None: the text is
    the value). Every value must be text or null: a warehouse that sends anything else is not
    answering as documented."""

    def __init__(self, columns: Sequence[str], converters: Sequence[Converter | None], where: Where) -> None:
        self._columns = list(columns)
        self._converters = list(converters)
        self._where = where

    def __call__(self, rows: Iterator[Sequence[Any]]) -> Iterator[list[Any]]:
        typed = [(index, convert) for index, convert in enumerate(self._converters) if convert is not None]
        read = 0
        for block in itertools.batched(rows, TYPED_BLOCK_ROWS, strict=False):
            values = [list(row) for row in block]
            for index, convert in typed:
                column = [row[index] for row in values]
                if not set(map(type, column)) <= _TEXT_OR_NULL:
                    raise self._unreadable(column, index, read)
                try:
                    converted = [None if value is None else convert(value) for value in column]
                except (ValueError, KeyError, ArithmeticError):  # JSONDecodeError is a ValueError
                    raise self._unreadable(column, index, read) from None
                for row, value in zip(values, converted, strict=True):
                    row[index] = value
            if len(typed) < len(self._converters):
                self._check_text(values, read)
            read += len(values)
            yield from values

    def _check_text(self, rows: list[list[Any]], read: int) -> None:
        """The columns kept as text hold text or null (the typed ones are checked as they convert)."""
        kept = [index for index, convert in enumerate(self._converters) if convert is None]
        if {type(row[index]) for row in rows for index in kept} <= _TEXT_OR_NULL:
            return
        for index in kept:
            self._raise_unless_text([row[index] for row in rows], index, read)

    def _raise_unless_text(self, column: list[Any], index: int, read: int) -> None:
        for number, value in enumerate(column, read + 1):
            if not isinstance(value, str | None):
                raise self._error(number, index, f"a {type(value).__name__}, not text")

    def _unreadable(self, column: list[Any], index: int, read: int) -> Exception:
        """The protocol error for the first value of ``column`` its converter refuses."""
        self._raise_unless_text(column, index, read)
        convert = self._converters[index]
        assert convert is not None
        for number, value in enumerate(column, read + 1):
            if value is None:
                continue
            try:
                convert(value)
            except (ValueError, KeyError, ArithmeticError) as error:
                nested = "nested deeper" in str(error)
                return self._error(number, index, str(error) if nested else "a value its type does not read")
        return self._where.protocol_error(f"column {self._columns[index]!r}: a value its type does not read")

    def _error(self, number: int, index: int, problem: str) -> Exception:
        return self._where.protocol_error(f"row {number}, column {self._columns[index]!r}: {problem}")
