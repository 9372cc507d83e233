"""Rows that arrive as a JSON array of arrays (ES|QL's ``values``; the warehouses' ``data`` and
``data_array`` are the same shape), decoded fast.

Whole blocks of rows are decoded in one call of orjson where the text allows (everything up to the
last ``],[`` of a chunk, wrapped in brackets); otherwise rows are decoded one at a time by the json
module (``JSONDecoder.raw_decode``), whose messages word what is wrong. Only the text from the row
being decoded on is kept, so memory stays bounded by one row and one chunk.

Values are read as ``json.loads`` reads them (README "Values in JSON"): orjson reads an integer
beyond 64 bits as a float and refuses an escaped lone surrogate, so text that may hold either (a run
of 19 digits, a ``\\ud`` escape) is decoded by the json module instead. NaN and Infinity are not
JSON, and a number too large for a float is an error, not infinity.

A row longer than a chunk (one cell of 100 MB) is decoded once, when its end has arrived: until then
its text is kept in pieces and only the new text is scanned for that end (``ValueEnd``). Decoding it
again at every chunk would cost time in the square of its size (issue 13: 142 s for 128 MB).

Rows are held to MAX_NESTING as every other part of an answer is, at almost no cost: rows nest no
deeper than the brackets in their text allow, which C-speed counts tell (for a row that arrived in
pieces, what ``ValueEnd`` counted of them); only when those allow too deep a row are the decoded
rows walked (``_deeper_than``).
"""

from __future__ import annotations

import codecs
import functools
import gc
import json
import math
import re
from typing import TYPE_CHECKING, Any

import orjson

from query_relay.models import MAX_NESTING

if TYPE_CHECKING:
    import msgspec


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError("numeric (floating point) overflow")
    return value


# Rows decoded one at a time, and blocks orjson cannot read as json.loads would. As with ijson, NaN
# and Infinity are not JSON and a number too large for a float is an error (not infinity).
_ROW_DECODER = json.JSONDecoder(parse_constant=_no_constants, parse_float=_finite_float)
# (value, position after it) for the JSON value at an index of a text.
_decode_value = _ROW_DECODER.raw_decode
# Every ASCII digit as "0": a run of 19 zeros in a chunk so translated may be an integer orjson
# would read as a float (at least 20 digits, or 19 with a minus sign). Two C passes over the bytes.
_DIGITS_AS_ZERO = bytes(ord("0") if ord("0") <= byte <= ord("9") else byte for byte in range(256))
_LONG_NUMBER = b"0" * 19
# Rows only counted are checked by msgspec, which does not read their numbers: a float too large
# for a double (which the rule refuses) has an exponent of three digits or more, or hundreds of
# digits before it. With every digit "0", "E" "e" and "+" dropped, either is found by one search.
_NUMBER_SHAPES = _DIGITS_AS_ZERO.translate(bytes.maketrans(b"E", b"e"))
_LONG_EXPONENT = b"e000"
_HUGE_MANTISSA = b"0" * 300  # the largest double has 309 digits; shorter ones cannot overflow
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
# A row that fails to decode this close to the end of the text read so far may only be cut short.
_CUT_SHORT_MARGIN = 8
# Text outside strings as JSON has it, brackets and quotes apart, and NaN and Infinity, which the
# decoder words as such (\s would let in more than JSON's whitespace). Any other character is an
# error the decoder is left to word.
_OUTSIDE_STRINGS = r"[-+.0-9,: \t\n\raefilnrstuyEIN]++"
# A string of at most 64 characters: longer ones are scanned by str.find for their closing quote
# (a character class costs sre some 13 ns a character, find a fraction of one).
_SHORT_STRING = r'"(?:[^"\\]|\\[\s\S]){0,64}+"'
# Containers nested this deep below the one being read are skipped by one regular expression match.
_SKIPPED_LEVELS = 4


def _skip_pattern(levels: int) -> re.Pattern[str]:
    """Runs of text that leave the depth of brackets as it was: text outside strings, short strings,
    and containers of those nested up to ``levels`` deep (the kind of bracket is not matched: the
    decoder checks). Possessive throughout: a container not closed in the text fails in time linear
    in what it scanned, never backtracking."""
    atom = f"{_OUTSIDE_STRINGS}|{_SHORT_STRING}"
    balanced = atom
    for _ in range(levels):
        balanced = rf"{atom}|[\[{{](?:{balanced})*+[\]}}]"
    return re.compile(f"(?:{balanced})*+")


_SKIP = _skip_pattern(_SKIPPED_LEVELS)
# At most this many chunks are read row by row after a block of rows failed to decode whole.
_MAX_SKIPPED_BLOCKS = 15


class ValueEnd:
    """Where a JSON value that began in text already read may end, found in one pass over the text
    however it arrives: the depth of brackets outside strings, back to 0 at the value's end. Runs
    that leave the depth as it was (numbers, short strings, containers nested a few levels below)
    are skipped by one regular expression match and long strings by ``str.find`` of their quotes,
    so Python code runs only for the brackets of the outermost levels and for long strings.

    It does not check the text: it says only when decoding the value may succeed (``feed`` is
    True), and whether the value's text is then all there (``whole``: a decoder that still finds the
    value cut short finds it wrong), which it also is at a character no JSON has outside strings.

    ``deepest`` is the deepest the brackets it counted itself went (the value's own is 1): what a
    match skips nests at most ``_SKIPPED_LEVELS`` below, so a value that decodes nests at most
    ``deepest + _SKIPPED_LEVELS`` levels."""

    def __init__(self, text: str, pos: int) -> None:
        """The value starts at ``text[pos]`` (not whitespace); the text after it is scanned too."""
        self.whole = False
        self.deepest = 0
        self._depth = 0
        self._in_string = False
        self._carry = ""  # an escape cut by the end of the text, to scan again with the next text
        self._scalar = False  # a number or a literal: any more text may end it
        first = text[pos : pos + 1]
        if first in ("[", "{"):
            self._depth = self.deepest = 1
        elif first == '"':
            self._in_string = True
        else:
            self._scalar = True
            return
        self.feed(text, pos + 1)

    def feed(self, text: str, pos: int = 0) -> bool:
        """Scan ``text[pos:]``, the next text of the value: True when decoding it may now succeed."""
        if pos >= len(text):
            return False
        if self._scalar:
            return True
        if self._carry:
            text, pos, self._carry = self._carry + text[pos:], 0, ""
        end, depth = len(text), self._depth
        while pos < end:
            if self._in_string:
                pos = self._string_end(text, pos)
                if pos < 0:
                    self._depth = depth
                    return False
                self._in_string = False
                if depth == 0:  # the value was a string
                    self.whole = True
                    return True
                continue
            match = _SKIP.match(text, pos)
            pos = match.end() if match is not None else pos
            if pos >= end:
                break
            char = text[pos]
            pos += 1
            if char == '"':
                self._in_string = True
            elif char in "[{":
                depth += 1
                self.deepest = max(self.deepest, depth)
            elif char in "]}":
                depth -= 1
                if depth == 0:
                    self.whole = True
                    return True
            else:  # no JSON
                self.whole = True
                return True
        self._depth = depth
        return False

    def _string_end(self, text: str, pos: int) -> int:
        """Just after the end of the string ``text[pos:]`` is inside, or -1 when it goes on after
        the text (an escape cut by its end is carried to the next text). Any character may follow
        a backslash here: the decoder judges the escapes."""
        while (quote := text.find('"', pos)) >= 0:
            backslash = quote
            while backslash > pos and text[backslash - 1] == "\\":
                backslash -= 1
            if (quote - backslash) % 2 == 0:  # not escaped
                return quote + 1
            pos = quote + 1
        backslash = len(text)
        while backslash > pos and text[backslash - 1] == "\\":
            backslash -= 1
        if (len(text) - backslash) % 2:  # the last one escapes what the next text begins with
            self._carry = "\\"
        return -1


class ArrayRows:
    """An array of rows (arrays), from just after its ``[``, such as ES|QL's ``values``. Rows are
    decoded whole by the json module's C scanner (what ``JSONDecoder.raw_decode`` runs). Only the
    text from the row being decoded on is kept, so memory stays bounded by one row and one chunk.

    A row may nest ``room`` levels, itself included (``RowTooDeep`` past them): ``MAX_NESTING``
    less the levels of the containers the rows lie in, the array of rows among them (one level when
    it is the document)."""

    def __init__(self, room: int = MAX_NESTING - 1) -> None:
        self._room = room
        # A row of at most this many characters nests at most room levels (each takes a "[" and a "]").
        self._short_row = 2 * room + 1
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._text = ""
        self._pos = 0
        self._expect_row = True  # after "[" or ",": a row (or, right after "[", the end)
        self._first = True
        # A row cut short by the end of a chunk: its text so far, in pieces, and where it may end.
        # It is decoded again only once ValueEnd says it may be whole, so that a row many chunks
        # long is decoded (and its text joined) once.
        self._pieces: list[str] = []
        self._end: ValueEnd | None = None
        # Whole blocks of rows are decoded in one scan (see _read_block); after a block that could
        # not be, the next few chunks go row by row.
        self._block_misses = 0
        self._skip_blocks = 0
        self.done = False
        self.rest = b""  # the bytes after the closing "]" once done

    def feed(self, chunk: bytes, rows: list[list[Any]] | None) -> int:
        """Decode the rows completed by ``chunk`` into ``rows`` (counted only, if None); their count."""
        text = self._decoder.decode(chunk)
        if self._end is not None:
            self._pieces.append(text)
            if not self._end.feed(text):
                return 0
            text, self._pieces = "".join(self._pieces), []
        self._text, self._pos = text, 0
        return self._read(rows, final=False)

    def finish(self) -> None:
        """The input ended inside ``values``."""
        self._decoder.decode(b"", final=True)
        if self._end is not None:
            self._text, self._pos, self._pieces = "".join(self._pieces), 0, []
        self._read(None, final=True)
        if not self.done:
            raise ValueError("premature EOF inside the rows")

    def _read(self, rows: list[list[Any]] | None, *, final: bool) -> int:
        text, pos, end = self._text, self._pos, len(self._text)
        whitespace = _JSON_WHITESPACE.match
        # ijson spells an escaped surrogate without its pair "?"; json keeps it (and UTF-8 cannot).
        # Rows only counted are not spelt: a block holding one is still read (row by row).
        surrogates = rows is not None and ("\\ud" in text or "\\uD" in text)
        count = 0
        # A row that was cut short is decoded by itself, the rows after it a block at a time.
        blocks = self._end is None
        while True:
            if blocks and self._expect_row:
                read, pos = self._read_block(text, pos, rows, surrogates=surrogates)
                count += read
                blocks = False
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
            decoded = self._decode_row(text, pos, final=final)
            if decoded is None:  # cut short: kept in self._pieces until ValueEnd says it may be whole
                self._text, pos = "", 0
                break
            row, after = decoded
            if type(row) is not list:
                raise NotRows(_event_name(row))
            if after - pos > self._short_row and not self._shallow_by_end():
                self._check_depth([row], text, pos, after)
            if surrogates:
                row = _without_lone_surrogates(row)
            if rows is not None:
                rows.append(row)
            count += 1
            pos, self._expect_row, self._first = after, False, False
            if self._end is not None:
                self._end, blocks = None, True
        if pos >= end:  # nothing left to keep (the text may be a row of 100 MB)
            self._text, pos = "", 0
        self._pos = pos
        return count

    def _decode_row(self, text: str, pos: int, *, final: bool) -> tuple[Any, int] | None:
        """The value at ``pos`` and the position after it, or None when the text ends before it does
        (its text is then kept in ``_pieces``, and ``_end`` follows it)."""
        if not final and self._end is None and text.find("]", pos) < 0:
            # No row ends in this text (the last of a chunk, mostly): cut short, unless ValueEnd
            # finds it whole (a character no JSON has), which the decoder then words.
            end = ValueEnd(text, pos)
            if not end.whole:
                self._end, self._pieces = end, [text[pos:]]
                return None
        try:
            try:
                return _decode_value(text, pos)
            except RecursionError:  # nested thousands of levels deep: far past any room
                raise RowTooDeep from None
        except json.JSONDecodeError as error:
            cut_short = error.pos >= len(text) - _CUT_SHORT_MARGIN or error.msg.startswith("Unterminated")
            if final or not cut_short:
                raise
            if self._end is None:
                self._end = ValueEnd(text, pos)
            if self._end.whole:  # all of it is there: not cut short but wrong
                raise
            self._pieces = [text[pos:]]
            return None

    def _read_block(
        self, text: str, pos: int, rows: list[list[Any]] | None, *, surrogates: bool
    ) -> tuple[int, int]:
        """Read every row that ends before the last ``],[`` of the text in one call (no Python
        code per row): (rows read, position after them). The text up to that ``]`` is a prefix of
        the array's content, so wrapped in brackets it is JSON only if it ends exactly at the end of
        a row: cut inside a string or inside a nested array, it is an error, and the rows are read
        one by one instead (which also words any error in the text). (0, pos) when nothing was
        read here. Rows only counted (``rows`` None) are checked, not built, where msgspec can."""
        if self._skip_blocks:
            self._skip_blocks -= 1
            return 0, pos
        cut = text.rfind("],[", pos)
        if cut < 0:
            return 0, pos
        wrapped = "[" + text[pos : cut + 1] + "]"
        counted = None if rows is not None else _counted_rows(wrapped, self._room)
        if counted is None:
            try:
                block = _decode_block(wrapped, surrogates=surrogates)
                complete = set(map(type, block)) == {list}
            except (ValueError, RecursionError):
                complete = False
            if not complete:
                # Cut inside a row (adjacent multi-valued fields) or an error: back off for a while.
                self._block_misses += 1
                self._skip_blocks = min(2**self._block_misses - 1, _MAX_SKIPPED_BLOCKS)
                return 0, pos
            self._check_depth(block, text, pos, cut + 1)
            if rows is not None:
                rows += [_without_lone_surrogates(row) for row in block] if surrogates else block
            counted = len(block)
        self._block_misses = 0
        self._expect_row, self._first = False, False
        return counted, cut + 1

    def _shallow_by_end(self) -> bool:
        """Whether the row just decoded from pieces nests within the room by what ``ValueEnd``
        counted of its brackets while its text arrived (no count over the text of a huge row)."""
        end = self._end
        return end is not None and end.deepest + _SKIPPED_LEVELS <= self._room

    def _check_depth(self, rows: list[Any], text: str, start: int, end: int) -> None:
        """Raise RowTooDeep if one of ``rows``, decoded from ``text[start:end]``, nests deeper than
        the room. No row holds more containers than the brackets of that text beyond the rows' own
        (those in strings count too: the bound is only looser), so the rows are walked only when
        those brackets would allow too deep a row: never for flat rows (two C-speed counts; a search
        for "{" spares the second count when there is none)."""
        inner = text.count("[", start, end) - len(rows)
        if text.find("{", start, end) >= 0:
            inner += text.count("{", start, end)
        if 1 + inner > self._room and _deeper_than(rows, self._room):
            raise RowTooDeep

    def _finish_values(self, text: str, after: int) -> None:
        self.done = True
        pending, _ = self._decoder.getstate()
        self.rest = text[after:].encode() + pending
        self._text, self._pos = "", 0


def _decode_block(text: str, *, surrogates: bool) -> list[Any]:
    """The JSON array ``text``, read as ``json.loads`` reads it: by orjson, unless the text may hold
    what orjson reads otherwise (an escaped surrogate, an integer beyond 64 bits), then by the json
    module. ValueError when it is not whole JSON."""
    data = text.encode()
    if surrogates or data.translate(_DIGITS_AS_ZERO).find(_LONG_NUMBER) >= 0:
        block, after = _decode_value(text, 0)
        if after != len(text):
            raise ValueError("text after the rows")
        return block  # type: ignore[no-any-return]
    return orjson.loads(data)  # type: ignore[no-any-return]


def _counted_rows(text: str, room: int) -> int | None:
    """How many rows the JSON array ``text`` holds, checked by msgspec without building a Python
    object per value, or None when it cannot tell that json.loads reads them as rows within the
    room (then the rows are decoded to be sure, and errors worded). msgspec checks the syntax (it
    refuses NaN, and a lone surrogate escape, which the rule reads as "?") but not what a number
    reads as: a float that may overflow is left to the decoders. UTF-8 was checked as the chunk was
    decoded. Each row must be an array: joined with a NUL (no JSON text holds one raw), every
    row but the first follows a NUL, and the first is the joined text's first character."""
    data = text.encode()
    shapes = data.translate(_NUMBER_SHAPES, b"+")
    if shapes.find(_LONG_EXPONENT) >= 0 or shapes.find(_HUGE_MANTISSA) >= 0:
        return None
    try:
        found = _raw_rows().decode(data)
    except ValueError:  # msgspec.DecodeError
        return None
    if not found:  # no rows: not a block of rows (an empty "[]" is never one)
        return None
    # As _check_depth: the brackets beyond the wrapping one and the rows' own bound how deep a row
    # nests; when they allow too deep a row, the decoded rows are walked.
    inner = data.count(b"[") - 1 - len(found)
    if data.find(b"{") >= 0:
        inner += data.count(b"{")
    if 1 + inner > room:
        return None
    joined = b"\x00".join(found)
    if joined[:1] != b"[" or joined.count(b"\x00[") != len(found) - 1:
        return None
    return len(found)


@functools.cache
def _raw_rows() -> msgspec.json.Decoder[list[msgspec.Raw]]:
    """A JSON array's items as their text, checked and not decoded (imported on first use: only
    rows that are counted need msgspec, and a Fetch that writes them pays its import)."""
    import msgspec  # noqa: PLC0415

    return msgspec.json.Decoder(list[msgspec.Raw])


def _deeper_than(rows: list[list[Any]], room: int) -> bool:
    """Whether one of ``rows`` nests deeper than ``room`` levels, itself included: walked a level
    at a time, no recursion however deep. ``gc.get_referents`` hands out the values that the lists
    and dicts of a level hold (their tp_traverse visits every item and value; a scalar has nothing
    to hand out) in one C call, three times faster than a comprehension over the values: this
    matters, as rows with a multi-valued field each are walked at every block (their brackets allow
    a level per row)."""
    level: list[Any] = rows  # the values one level down, then two, ...
    for _ in range(room):
        level = gc.get_referents(*level)
        if not level:  # nothing below: no container deeper than the levels walked
            return False
    # Values lie room + 1 levels down: too deep if one of them is a container (even an empty one).
    return any(value.__class__ is list or value.__class__ is dict for value in level)


def _without_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("?", value)
    if isinstance(value, list):
        return [_without_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_without_lone_surrogates(key): _without_lone_surrogates(item) for key, item in value.items()}
    return value


class RowTooDeep(ValueError):
    """A row nests deeper than its room allows: the document it is in, deeper than MAX_NESTING."""

    def __init__(self) -> None:
        super().__init__(f"a row nests deeper than {MAX_NESTING} levels")


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
