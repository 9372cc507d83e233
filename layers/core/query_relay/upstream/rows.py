"""Rows that arrive as a JSON array of arrays (ES|QL's ``values``; the warehouses' ``data`` and
``data_array`` are the same shape), decoded fast.

Rows are decoded whole by the json module's C scanner, several times faster than an ijson event
per value, and whole blocks of rows in one scan where the text allows. Only the text from the row
being decoded on is kept, so memory stays bounded by one row and one chunk.
"""

from __future__ import annotations

import codecs
import json
import json.scanner
import math
import re
from collections.abc import Callable
from typing import Any


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError("numeric (floating point) overflow")
    return value


# Rows are decoded by the json module's C scanner. As with ijson, NaN and Infinity are not JSON and a
# number too large for a float is an error (not infinity).
_ROW_DECODER = json.JSONDecoder(parse_constant=_no_constants, parse_float=_finite_float)
# The C scanner itself (what raw_decode calls, minus a Python frame per row): (value, end) at an index.
# (typeshed declares make_scanner's context as make_scanner itself; it takes the decoder.)
_scan_row: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(_ROW_DECODER)  # type: ignore[arg-type]
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
# A row that fails to decode this close to the end of the text read so far may only be cut short.
_CUT_SHORT_MARGIN = 8
# At most this many chunks are read row by row after a block of rows failed to decode whole.
_MAX_SKIPPED_BLOCKS = 15


class ArrayRows:
    """An array of rows (arrays), from just after its ``[``, such as ES|QL's ``values``. Rows are
    decoded whole by the json module's C scanner (what ``JSONDecoder.raw_decode`` runs). Only the
    text from the row being decoded on is kept, so memory stays bounded by one row and one chunk."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._text = ""
        self._pos = 0
        self._expect_row = True  # after "[" or ",": a row (or, right after "[", the end)
        self._first = True
        # A row cut short ends with a "]" yet to come: until one arrives, decoding it again is
        # pointless (a multi-valued field many chunks long would otherwise be decoded per chunk).
        self._cut_short = False
        # Whole blocks of rows are decoded in one scan (see _read_block); after a block that could
        # not be, the next few chunks go row by row.
        self._block_misses = 0
        self._skip_blocks = 0
        self.done = False
        self.rest = b""  # the bytes after the closing "]" once done

    def feed(self, chunk: bytes, rows: list[list[Any]] | None) -> int:
        """Decode the rows completed by ``chunk`` into ``rows`` (counted only, if None); their count."""
        text = self._decoder.decode(chunk)
        self._text = self._text[self._pos :] + text
        self._pos = 0
        if self._cut_short and "]" not in text:
            return 0
        return self._read(rows, final=False)

    def finish(self) -> None:
        """The input ended inside ``values``."""
        self._decoder.decode(b"", final=True)
        self._read(None, final=True)
        if not self.done:
            raise ValueError("premature EOF inside the rows")

    def _read(self, rows: list[list[Any]] | None, *, final: bool) -> int:
        text, pos, end = self._text, self._pos, len(self._text)
        decode, whitespace = _scan_row, _JSON_WHITESPACE.match
        # ijson spells an escaped surrogate without its pair "?"; json keeps it (and UTF-8 cannot).
        surrogates = "\\ud" in text or "\\uD" in text
        count = 0
        if rows is not None and self._expect_row:
            count, pos = self._read_block(text, pos, rows, surrogates=surrogates)
        while True:
            if pos < end and text[pos] in " \t\n\r":
                blank = whitespace(text, pos)
                pos = blank.end() if blank is not None else pos
            if pos >= end:
                break
            char = text[pos]
            if not self._expect_row:
                if char == ",":
                    self._expect_row, pos = True, pos + 1
                    continue
                if char != "]":
                    raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
                self._finish_values(text, pos + 1)
                break
            if char == "]" and self._first:
                self._finish_values(text, pos + 1)
                break
            if char == "]":  # "[[...],]"
                raise json.JSONDecodeError("Expecting value", text, pos)
            try:
                try:
                    row, after = decode(text, pos)
                except StopIteration as missing:  # how the scanner says "Expecting value" at an index
                    raise json.JSONDecodeError("Expecting value", text, missing.value) from None
            except json.JSONDecodeError as error:
                cut_short = error.pos >= end - _CUT_SHORT_MARGIN or error.msg.startswith("Unterminated")
                if cut_short and not final:
                    self._cut_short = True
                    break  # cut short by the chunk: decoded again once more text arrived
                raise
            if type(row) is not list:
                raise NotRows(_event_name(row))
            if surrogates:
                row = _without_lone_surrogates(row)
            if rows is not None:
                rows.append(row)
            count += 1
            pos, self._expect_row, self._first, self._cut_short = after, False, False, False
        self._pos = pos
        return count

    def _read_block(self, text: str, pos: int, rows: list[list[Any]], *, surrogates: bool) -> tuple[int, int]:
        """Decode every row that ends before the last ``],[`` of the text in one scan of the C
        scanner (no Python code per row): (rows decoded, position after them). The text up to that
        ``]`` is a prefix of the array's content, so wrapped in brackets it decodes completely only
        if it ends exactly at the end of a row: cut inside a string or inside a nested array, it
        decodes to an error or stops short, and the rows are read one by one instead (which also
        words any error in the text). (0, pos) when nothing was decoded here."""
        if self._skip_blocks:
            self._skip_blocks -= 1
            return 0, pos
        cut = text.rfind("],[", pos)
        if cut < 0:
            return 0, pos
        wrapped = "[" + text[pos : cut + 1] + "]"
        try:
            block, after = _scan_row(wrapped, 0)
            complete = after == len(wrapped) and set(map(type, block)) == {list}
        except (ValueError, StopIteration, RecursionError):
            complete = False
        if not complete:
            # Cut inside a row (adjacent multi-valued fields) or an error: back off for a while.
            self._block_misses += 1
            self._skip_blocks = min(2**self._block_misses - 1, _MAX_SKIPPED_BLOCKS)
            return 0, pos
        self._block_misses = 0
        if surrogates:
            block = [_without_lone_surrogates(row) for row in block]
        rows += block
        self._expect_row, self._first, self._cut_short = False, False, False
        return len(block), cut + 1

    def _finish_values(self, text: str, after: int) -> None:
        self.done = True
        pending, _ = self._decoder.getstate()
        self.rest = text[after:].encode() + pending
        self._text, self._pos = "", 0


def _without_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("?", value)
    if isinstance(value, list):
        return [_without_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_without_lone_surrogates(key): _without_lone_surrogates(item) for key, item in value.items()}
    return value


class NotRows(ValueError):
    """``values`` holds a value that is not a row; ``event`` is the ijson event it starts with."""

    def __init__(self, event: str) -> None:
        super().__init__(event)
        self.event = event


def _event_name(value: Any) -> str:
    """The ijson event a decoded JSON value starts with (for messages that read the same)."""
    if isinstance(value, dict):
        return "start_map"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    return "null" if value is None else "number"
