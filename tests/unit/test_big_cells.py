"""A row or a line many chunks long (one huge cell) reads as it does in one piece, and costs work in
proportion to its size (issue 13: a 128 MB cell took 142 s, decoded again at every chunk).

The work is counted, not timed: the characters handed to json's C scanner, those scanned for the
end of a row cut short, and those the line splitter concatenates and splits.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import tracemalloc
from collections.abc import Iterable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from query_relay.exceptions import UpstreamProtocolError
from query_relay.upstream import rows as rows_module
from query_relay.upstream import stream as stream_module
from query_relay.upstream.errors import Where
from query_relay.upstream.jsonpath import PathReader
from query_relay.upstream.rows import ArrayRows, ValueEnd
from query_relay.upstream.stream import CSV_FIELD_MAX_CHARS, DelimitedRecords, text_lines

WHERE = Where("test", "conn", "test read")
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None)

# Characters that matter to a scan for the end of a value (brackets, quotes, escapes, separators),
# multi-byte ones to cut inside, and plain text.
TRICKY = ['"', "\\", "]", "[", ",", "{", "}", ":", "],[", "\\u", "é", "€", "😀", "\n", "\x00", "a", "text "]


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


def _cut_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted({cut for cut in cuts if 0 < cut < len(data)}), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


def read_array_rows(chunks: Iterable[bytes]) -> tuple[list[list[Any]], bytes]:
    """The rows of the text after a ``values``' ``[`` and the bytes after its ``]``."""
    reader = ArrayRows()
    rows: list[list[Any]] = []
    after = b""
    for chunk in chunks:
        if reader.done:
            after += chunk
        else:
            reader.feed(chunk, rows)
    if not reader.done:
        reader.finish()
    return rows, reader.rest + after


def values_text(values: list[list[Any]]) -> bytes:
    """``values`` as they follow their ``[``, with what follows the array."""
    return json.dumps(values, ensure_ascii=False)[1:].encode() + b', "took": 1}'


BIG_ROW: list[Any] = [
    "a" + '\\"],[{}'.join(TRICKY) * 3,
    [["],["], {"k]": ["\\", '"']}, [[[[[1, 2.5e-3, None, True]]]]]],
    {"deep": [[[[[[["x"]]]]]]], "s": "é€😀" * 5},
    -12.5e10,
    "\\u1234 \\\\",
]
BIG_VALUES = [["before"], BIG_ROW, ["after", [1]], BIG_ROW]


# --- ArrayRows: the same rows however the text is cut ---------------------------------------------


def test_a_big_row_reads_the_same_cut_in_two_anywhere() -> None:
    text = values_text(BIG_VALUES)
    for cut in range(1, len(text)):
        assert read_array_rows([text[:cut], text[cut:]]) == (BIG_VALUES, b', "took": 1}'), cut


@pytest.mark.parametrize("size", [*range(1, 24), 61, 100, 255])
def test_a_big_row_reads_the_same_in_chunks_of_any_size(size: int) -> None:
    text = values_text(BIG_VALUES)
    assert read_array_rows(_chunks(text, size)) == (BIG_VALUES, b', "took": 1}')


@st.composite
def big_cells(draw: st.DrawFn) -> Any:
    """A string, or an array or object of strings and numbers, of some KB of tricky text."""
    pieces = draw(st.lists(st.sampled_from(TRICKY), min_size=1, max_size=40))
    text = "".join(pieces) * draw(st.integers(1, 200))
    shape = draw(st.sampled_from(["string", "array", "object", "nested"]))
    if shape == "string":
        return text
    parts = [text[start : start + 97] for start in range(0, len(text), 97)]
    if shape == "array":
        return [*parts, 1, -2.5, None]
    if shape == "object":
        return {f"{index}{part[:5]}": [part, index] for index, part in enumerate(parts)}
    return [[[part, [index]]] for index, part in enumerate(parts)]


@st.composite
def cut_points(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at up to 60 points hypothesis picks, or into chunks of one size."""
    if draw(st.booleans()):
        return _chunks(data, draw(st.integers(1, 4096)))
    return _cut_at(data, draw(st.lists(st.integers(1, max(len(data) - 1, 1)), max_size=60)))


@SETTINGS
@given(st.data(), st.lists(big_cells(), min_size=1, max_size=3), st.booleans())
def test_rows_with_big_cells_read_as_json_loads_reads_them(
    data: st.DataObject, cells: list[Any], indent: bool
) -> None:
    values = [["small", 1], cells, ["small", 2], [cells[-1]]]
    document = {"id": "x", "values": values, "after": [[1], [2]]}
    body = json.dumps(document, ensure_ascii=False, indent=1 if indent else None).encode()
    reader = PathReader(WHERE, rows="values", collect=("id",), object_only=True)

    read: list[Any] = []
    for chunk in data.draw(cut_points(body), label="chunks"):
        read += reader.feed(chunk)
    read += reader.finish()

    assert read == json.loads(body)["values"]
    assert reader.item_count == 4
    assert reader.first("id") == "x"


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (b'[["a"],["' + b"x" * 5000 + b'", NaN]]', "NaN is not a JSON value"),
        (b'[["a"],["' + b"x" * 5000 + b'", Infinity]]', "Infinity is not a JSON value"),
        (b'[["a"],[["' + b"x" * 5000 + b'"] ["b"]]]', "Expecting ',' delimiter"),
        (b'[["a"],["' + b"x" * 5000 + b'\\q"]]', "Invalid \\escape"),
        (b'[["a"],["' + b"x" * 5000 + b'\x01"]]', "Invalid control character"),
        (b'[["a"],[{"k' + b"x" * 5000 + b'" 1}]]', "Expecting ':' delimiter"),
        (b'[["a"],[1, 2 x' + b"y" * 5000 + b"]]", "Expecting ',' delimiter"),
        (b'[["a"],"' + b"x" * 5000 + b'",["b"]]', "something other than rows (string)"),
        (b'[["a"],["' + b"x" * 5000 + b'"],]', "Expecting value"),
        (b'[["a"],["' + b"x" * 5000, "Unterminated string"),
    ],
)
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000, 1 << 20])
def test_a_broken_big_row_is_the_same_protocol_error_however_chunked(
    values: bytes, problem: str, chunk_size: int
) -> None:
    body = b'{"values":' + values + b"}"
    reader = PathReader(WHERE, rows="values", object_only=True)

    def read() -> None:
        for chunk in _chunks(body, chunk_size):
            reader.feed(chunk)
        reader.finish()

    with pytest.raises(UpstreamProtocolError) as raised:
        read()
    assert problem in str(raised.value)


# --- ValueEnd: says a value may end exactly where it does -----------------------------------------


TRICKY_TEXT = st.lists(st.sampled_from(TRICKY), max_size=30).map("".join)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TRICKY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TRICKY_TEXT, inner, max_size=4),
    max_leaves=20,
)


@SETTINGS
@given(st.data(), JSON_VALUES.filter(lambda value: isinstance(value, list | dict | str)))
def test_value_end_says_whole_in_the_piece_where_the_value_ends(data: st.DataObject, value: Any) -> None:
    text = json.dumps(value, ensure_ascii=False) + ', ["next"], "more"]'
    end = len(json.dumps(value, ensure_ascii=False))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(text) - 1), max_size=12), label="cuts")))
    bounds = [0, *cuts, len(text)]
    first_end = bounds[1]
    finder = ValueEnd(text[:first_end], 0)
    said = [finder.whole]
    for start, stop in itertools.pairwise(bounds[1:]):
        if said[-1]:
            break
        said.append(finder.feed(text[start:stop]))
    # True (and whole) first in the piece holding the value's last character, never before
    ends_in = next(index for index, bound in enumerate(bounds[1:]) if bound >= end)
    assert said.index(True) == ends_in
    assert finder.whole


def test_value_end_carries_an_escape_cut_by_the_end_of_a_piece() -> None:
    finder = ValueEnd('"ab\\', 0)
    assert not finder.feed('"')  # an escaped quote
    assert not finder.feed("\\")
    assert not finder.feed("\\")  # an escaped backslash: the next quote ends the string
    assert finder.feed('"')
    assert finder.whole


def test_value_end_says_a_character_no_json_has_makes_the_value_whole() -> None:
    finder = ValueEnd("[1, 2", 0)
    assert not finder.whole
    assert finder.feed(" x")
    assert finder.whole


def test_value_end_lets_a_number_or_literal_be_decoded_again_at_each_piece() -> None:
    finder = ValueEnd("tr", 0)
    assert not finder.whole
    assert finder.feed("u")
    assert finder.feed("e")
    assert not finder.feed("")


# --- ArrayRows: work and memory in proportion to the row --------------------------------------------


class Counted(str):
    """A decoded chunk that counts the characters every concatenation and split of it handles."""

    handled = 0

    def __add__(self, other: str) -> Counted:
        Counted.handled += len(self) + len(other)
        return Counted(str.__add__(self, other))

    def __radd__(self, other: str) -> Counted:
        Counted.handled += len(other) + len(self)
        return Counted(str.__add__(other, self))

    def split(self, sep: str | None = None, maxsplit: int = -1) -> list[str]:  # type: ignore[override]
        Counted.handled += len(self)
        return str.split(self, sep, maxsplit)


class CountingDecoder(codecs.IncrementalDecoder):
    def __init__(self, encoding: str, errors: str = "strict") -> None:
        super().__init__(errors)
        self._decoder = codecs.getincrementaldecoder(encoding)(errors)

    def decode(self, data: bytes, final: bool = False) -> str:  # type: ignore[override]
        return Counted(self._decoder.decode(data, final))

    def getstate(self) -> tuple[bytes, int]:
        state: tuple[bytes, int] = self._decoder.getstate()
        return state


CELLS = {
    "string": "lorem ipsum " * 40_000,
    "brackets": '"],[\\,' * 80_000,  # a "]" in every chunk: the old reader decoded the row at each
    "nested": [[index, "a", [index]] for index in range(20_000)],
    "object": {f"k{index}": [index, "v]"] for index in range(20_000)},
}


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_a_big_row_costs_work_in_proportion_to_its_size(monkeypatch: pytest.MonkeyPatch, cell: str) -> None:
    text = values_text([["small"], [1, CELLS[cell]], ["small"]])
    decode_value, decode_block = rows_module._decode_value, rows_module._decode_block
    decoded: list[int] = []  # characters from where each decoding started to the end of its text

    def counting_value(string: str, index: int) -> tuple[Any, int]:
        decoded.append(len(string) - index)
        return decode_value(string, index)

    def counting_block(string: str, *, surrogates: bool) -> list[Any]:
        decoded.append(len(string))
        return decode_block(string, surrogates=surrogates)

    scanned: list[int] = []
    feed = ValueEnd.feed

    def counting_feed(self: ValueEnd, string: str, pos: int = 0) -> bool:
        scanned.append(len(string) - pos)
        return feed(self, string, pos)

    monkeypatch.setattr(rows_module, "_decode_value", counting_value)
    monkeypatch.setattr(rows_module, "_decode_block", counting_block)
    monkeypatch.setattr(ValueEnd, "feed", counting_feed)
    reader = ArrayRows()
    monkeypatch.setattr(reader, "_decoder", CountingDecoder("utf-8"))
    Counted.handled = 0
    rows: list[list[Any]] = []
    for chunk in _chunks(text, 1024):  # some 500 chunks
        reader.feed(chunk, rows)

    assert rows == [["small"], [1, CELLS[cell]], ["small"]]
    assert reader.done
    assert len(decoded) <= 6, "the big row is decoded once cut short and once whole"
    assert sum(decoded) <= 3 * len(text)
    assert sum(scanned) <= 2 * len(text)
    assert Counted.handled <= 2 * len(text), "the row's text is joined once, not at every chunk"


def test_a_big_string_cell_costs_memory_in_proportion() -> None:
    cell = "x" * 4_000_000
    text = values_text([[cell]])
    chunks = _chunks(text, 64 * 1024)
    tracemalloc.start()
    try:
        rows, _ = read_array_rows(chunks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == [[cell]]
    # the row's text in pieces, then joined, then the decoded cell: json.loads takes twice the cell
    assert peak < 4 * len(cell), f"{peak / len(cell):.1f} times the cell"


# --- text lines and delimited records ---------------------------------------------------------------


LONG_TEXT = "short\n" + ("a long line, with é€😀 and \r inside " * 50) + "\n\nend" + ("no newline " * 30)


def test_text_lines_are_the_same_cut_in_two_anywhere() -> None:
    body = LONG_TEXT.encode()
    expected = list(io.StringIO(LONG_TEXT, newline=""))
    for cut in range(1, len(body)):
        assert list(text_lines(iter([body[:cut], body[cut:]]))) == expected, cut


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64, 1000])
def test_text_lines_are_the_same_in_chunks_of_any_size(size: int) -> None:
    assert list(text_lines(iter(_chunks(LONG_TEXT.encode(), size)))) == list(
        io.StringIO(LONG_TEXT, newline="")
    )


CSV_PIECES = ['"', ",", "\n", "\r\n", "\r", "é", "😀", "a", "plain text ", ";", "\t"]


@SETTINGS
@given(
    st.data(),
    st.lists(st.lists(st.sampled_from(CSV_PIECES), max_size=40).map("".join), min_size=1, max_size=3),
    st.integers(1, 300),
)
def test_delimited_rows_with_big_cells_read_as_csv_reader_reads_them(
    data: st.DataObject, cells: list[str], repeat: int
) -> None:
    big = [cell * repeat for cell in cells]
    header = [f"c{index}" for index in range(len(big) + 1)]
    records = [header, ["1", *big], ["2", *reversed(big)]]
    text = io.StringIO()
    csv.writer(text).writerows(records)
    body = text.getvalue().encode()
    reader = DelimitedRecords(iter(data.draw(cut_points(body), label="chunks")), WHERE, keep_bytes=False)

    assert reader.read_header() == header
    assert list(reader.rows()) == list(csv.reader(io.StringIO(text.getvalue())))[1:]


class CountingLineDecoder(CountingDecoder):
    def __init__(self, errors: str = "strict") -> None:
        super().__init__("utf-8-sig", errors)


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
def test_a_long_line_costs_work_in_proportion_to_its_length(
    monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    line = "x" * 1_000_000 + end

    def decoders(encoding: str) -> type[codecs.IncrementalDecoder]:
        assert encoding == "utf-8-sig"
        return CountingLineDecoder

    def string_io(text: str, newline: str) -> io.StringIO:  # what a text with a '\r' is cut with
        Counted.handled += len(text)
        return io.StringIO(text, newline=newline)

    monkeypatch.setattr(stream_module, "codecs", SimpleNamespace(getincrementaldecoder=decoders))
    monkeypatch.setattr(stream_module, "io", SimpleNamespace(StringIO=string_io))
    Counted.handled = 0
    lines = list(text_lines(iter(_chunks((line * 2).encode(), 1024))))

    assert lines == [line, line]
    assert Counted.handled <= 2 * len(line) * 2, "each character split once, not at every chunk"


def test_a_csv_cell_of_1_mb_is_read_past_the_csv_modules_default_field_limit() -> None:
    """The csv module refuses a field longer than 131,072 characters unless its limit, one for the
    whole process, is raised: stream.py raises it when imported, as a cell has no bound of its own
    (the JSON readers take one of any size)."""
    cell = _repeat_to('lorem, "ipsum"\r\n dolor é€😀 ', 1_000_000)
    text = io.StringIO()
    csv.writer(text).writerows([["a", "b"], ["1", cell], ["2", "x"]])
    reader = DelimitedRecords(iter(_chunks(text.getvalue().encode(), 64 * 1024)), WHERE, keep_bytes=False)

    assert reader.read_header() == ["a", "b"]
    assert list(reader.rows()) == [["1", cell], ["2", "x"]]
    assert csv.field_size_limit() == CSV_FIELD_MAX_CHARS > 1_000_000


def _repeat_to(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def _many_lines() -> Iterator[bytes]:
    yield b"a,b\n"
    for index in range(5000):
        yield f"{index},x\n".encode()


def test_many_short_lines_still_read_one_by_one() -> None:
    reader = DelimitedRecords(_many_lines(), WHERE, keep_bytes=False)
    assert reader.read_header() == ["a", "b"]
    assert sum(1 for _ in reader.rows()) == 5000
