"""query_relay.upstream.jsonpath, rows and stream, by property: an answer reads the same however its
bytes are cut into chunks, a broken or cut-off answer is always an UpstreamProtocolError, and the
replayed bytes are the bytes received."""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from query_relay.exceptions import UpstreamProtocolError, UpstreamUnavailable
from query_relay.models import MAX_NESTING, nesting_depth
from query_relay.providers.base import FetchedResult, NativeResult
from query_relay.upstream.errors import Where
from query_relay.upstream.jsonpath import PathReader
from query_relay.upstream.rows import ArrayRows, RowTooDeep, _deeper_than
from query_relay.upstream.stream import DelimitedRecords, StreamedAnswer, small_object, text_lines

WHERE = Where("test", "conn", "test read")
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None)
FEW = settings(max_examples=30, deadline=None, derandomize=True, database=None)

# --- documents -----------------------------------------------------------------------------------

# JSON as the upstreams send it. Integers stay within 64 bits outside the rows: yajl (ijson's C
# backend) refuses larger ones (see test_a_big_integer_outside_the_rows_is_read).
INT64 = st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1)  # yajl refuses even -2**63
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
SCALARS = st.none() | st.booleans() | INT64 | FLOATS | st.text(max_size=12)
ROW_SCALARS = st.none() | st.booleans() | st.integers() | FLOATS | st.text(max_size=12)
KEYS = st.text(max_size=6)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)
ROWS = st.lists(st.lists(ROW_SCALARS, max_size=5), max_size=8)
# Rows whose values nest (multi-valued fields, objects): the fast block path must not be fooled
# by a "],[" inside a row.
NESTED_ROWS = st.lists(
    st.lists(
        st.recursive(
            ROW_SCALARS,
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
            max_leaves=6,
        ),
        max_size=4,
    ),
    max_size=6,
)

# How the document is written: json.dumps' default, compact (rows side by side as "],[", which the
# block path decodes), indented, and raw UTF-8 (multi-byte characters to cut across chunks).
DUMPS: dict[str, Callable[[Any], str]] = {
    "default": json.dumps,
    "compact": lambda document: json.dumps(document, separators=(",", ":")),
    "compact-utf8": lambda document: json.dumps(document, separators=(",", ":"), ensure_ascii=False),
    "indented-utf8": lambda document: json.dumps(document, indent=2, ensure_ascii=False),
}
STYLES = st.sampled_from(sorted(DUMPS))


def _dump(document: Any, style: str) -> bytes:
    return DUMPS[style](document).encode()


def _canonical(value: Any) -> str:
    """Equal only when the JSON types are equal too (1 is not 1.0 nor True)."""
    return json.dumps(value)


@st.composite
def chunkings(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at points hypothesis chooses: anything from one chunk to one byte per chunk.
    No chunk is empty (see test_an_empty_chunk_is_no_end_of_input)."""
    if len(data) > 1 and draw(st.integers(0, 9)) == 0:
        cuts = list(range(1, len(data)))
    else:
        cuts = sorted(draw(st.sets(st.integers(1, max(len(data) - 1, 1)), max_size=12)))
    bounds = [0, *[cut for cut in cuts if 0 < cut < len(data)], len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds) if end > start]


@st.composite
def row_documents(draw: st.DrawFn, rows: st.SearchStrategy[list[list[Any]]] = ROWS) -> dict[str, Any]:
    parts = {
        "id": draw(st.text(max_size=20)),
        "columns": draw(st.lists(VALUES, max_size=3)),
        "values": draw(rows),
        "extra": draw(VALUES),
    }
    order = draw(st.permutations(list(parts)))
    return {key: parts[key] for key in order}


@st.composite
def item_documents(draw: st.DrawFn) -> dict[str, Any]:
    nodes = draw(st.lists(st.dictionaries(KEYS, VALUES, max_size=4), max_size=6))
    parts = {
        "result": {"count": len(nodes), "nodes": nodes, "more": draw(VALUES)},
        "other": draw(VALUES),
    }
    order = draw(st.permutations(list(parts)))
    return {key: parts[key] for key in order}


def rows_reader() -> PathReader:
    return PathReader(WHERE, rows="values", collect=("id", "columns"), marks=("values",), object_only=True)


def items_reader() -> PathReader:
    return PathReader(WHERE, items=("result.nodes.item",), collect=("result.count",), object_only=True)


def read(reader: PathReader, chunks: Iterable[bytes]) -> list[Any]:
    found: list[Any] = []
    for chunk in chunks:
        found += reader.feed(chunk)
    return found + reader.finish()


# --- PathReader: rows ----------------------------------------------------------------------------


def _check_rows_read(document: dict[str, Any], reader: PathReader, rows: list[Any]) -> None:
    assert _canonical(rows) == _canonical(document["values"])
    assert rows == document["values"]
    assert reader.item_count == len(document["values"])
    assert reader.first("id") == document["id"]
    assert _canonical(reader.first("columns")) == _canonical(document["columns"])
    assert reader.opened == {"values"}
    assert reader.closed == {"values"}
    assert reader.complete
    assert not reader.in_rows


@SETTINGS
@given(st.data(), row_documents(), STYLES)
def test_rows_read_the_same_however_the_answer_is_chunked(
    data: st.DataObject, document: dict[str, Any], style: str
) -> None:
    body = _dump(document, style)
    chunks = data.draw(chunkings(body), label="chunks")

    reader = rows_reader()
    rows = read(reader, chunks)

    _check_rows_read(document, reader, rows)


@FEW
@given(st.data(), row_documents(NESTED_ROWS), STYLES)
def test_rows_with_nested_values_read_the_same_however_chunked(
    data: st.DataObject, document: dict[str, Any], style: str
) -> None:
    body = _dump(document, style)
    reader = rows_reader()
    rows = read(reader, data.draw(chunkings(body), label="chunks"))
    _check_rows_read(document, reader, rows)


@FEW
@given(st.data(), row_documents(), STYLES)
def test_rows_are_counted_when_not_kept(data: st.DataObject, document: dict[str, Any], style: str) -> None:
    body = _dump(document, style)
    reader = PathReader(WHERE, rows="values", collect=("id",), keep_items=False)
    assert read(reader, data.draw(chunkings(body), label="chunks")) == []
    assert reader.item_count == len(document["values"])
    assert reader.first("id") == document["id"]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"values": [1, 2]}', "'values' holds something other than rows (number)"),
        (b'{"values": [{"a": 1}]}', "'values' holds something other than rows (start_map)"),
        (b'{"values": [[1], "x"]}', "'values' holds something other than rows (string)"),
        (b'{"values": [[1],2,[3],[4]]}', "'values' holds something other than rows (number)"),
        (b'{"values": [[1e999]]}', "not valid JSON"),
        (b'{"values": [[NaN]]}', "not valid JSON"),
        (b'{"values": [[1],]}', "not valid JSON"),
        (b'{"values": [[1] [2]]}', "not valid JSON"),
        (b"[[1]]", "not one JSON object"),
        (b'"text"', "not one JSON object"),
        (b'{"values": [[1]]} {}', "not valid JSON"),
    ],
)
def test_a_broken_answer_is_a_protocol_error_naming_where(body: bytes, problem: str) -> None:
    for size in (1, 3, len(body)):
        with pytest.raises(UpstreamProtocolError) as caught:
            read(rows_reader(), [body[start : start + size] for start in range(0, len(body), size)])
        assert str(caught.value).startswith("test read on connection 'conn': ")
        assert problem in str(caught.value)


def test_rows_outside_the_top_level_values_are_not_rows() -> None:
    body = b'{"extra": {"values": [[1, 2]]}, "values": [[3]], "more": [[4]]}'
    reader = rows_reader()
    assert read(reader, [body]) == [[3]]
    assert reader.item_count == 1


def test_an_escaped_lone_surrogate_reads_as_a_question_mark_in_rows_and_elsewhere() -> None:
    # ijson spells a lone surrogate "?"; the fast row decoder does the same
    reader = rows_reader()
    assert read(reader, [b'{"id": "a\\ud800b", "values": [["x\\udc00y", "\\ud83d\\ude00"]]}']) == [
        ["x?y", "\U0001f600"]
    ]
    assert reader.first("id") == "a?b"


@pytest.mark.parametrize(
    ("escaped", "expected"),
    [
        (rb"\ud800\u0041", "?A"),  # yajl alone: U+10041, the "A" lost
        (rb"\ud800\ud800\udc00", "?\U00010000"),  # the second one is paired
        (rb"\ud83d\ude00\ud800\u00e9", "\U0001f600?\u00e9"),
        (rb"\\ud800\u0041", "\\ud800A"),  # an escaped backslash, then text
        (rb"\\\ud800\u0041", "\\?A"),
        (rb"\\\\ud800\u0041", "\\\\ud800A"),
        (rb"\ud800\n", "?\n"),
    ],
)
def test_a_lone_high_surrogate_before_another_escape_reads_the_same_at_every_cut(
    escaped: bytes, expected: str
) -> None:
    body = b'{"id": "' + escaped + b'"}'
    for cut in range(len(body) + 1):
        for chunks in (
            [body[:cut], body[cut:]],
            [body[:cut], *(body[i : i + 1] for i in range(cut, len(body)))],
        ):
            reader = PathReader(WHERE, collect=("id",))
            read(reader, chunks)
            assert reader.first("id") == expected, (cut, chunks)


def test_a_path_names_one_place_only() -> None:
    body = b'{"item": 1, "": {"x": 2}, "a.b": 3, "a": {"b": 4, "item": 5}, "l": [6, {"item": 7}]}'
    reader = PathReader(WHERE, collect=("item", "a.b", "a.item", "x", "l.item.item"), items=("l.item",))
    assert read(reader, [body]) == [6, {"item": 7}]
    assert reader.found == {"a.b": [4]}  # keys "item" and "a.b" are not the paths "item" and "a.b"


@pytest.mark.parametrize("body", [b"7", b'"s"', b"[1, {}]", b'{"a": [null]}'])
def test_the_whole_document_is_collected_by_the_empty_path(body: bytes) -> None:
    reader = PathReader(WHERE, collect=("",))
    read(reader, [body])
    assert reader.complete
    assert reader.first("") == json.loads(body)


# --- PathReader: items ---------------------------------------------------------------------------


@SETTINGS
@given(st.data(), item_documents(), STYLES)
def test_items_read_the_same_however_the_answer_is_chunked(
    data: st.DataObject, document: dict[str, Any], style: str
) -> None:
    body = _dump(document, style)
    reader = items_reader()

    items = read(reader, data.draw(chunkings(body), label="chunks"))

    nodes = document["result"]["nodes"]
    assert _canonical(items) == _canonical(nodes)
    assert reader.item_count == len(nodes)
    assert reader.first("result.count") == len(nodes)
    assert reader.complete


@FEW
@given(st.data(), st.lists(VALUES, max_size=6), STYLES)
def test_items_of_any_kind_are_read(data: st.DataObject, nodes: list[Any], style: str) -> None:
    body = _dump({"result": {"nodes": nodes}}, style)
    reader = items_reader()
    items = read(reader, data.draw(chunkings(body), label="chunks"))
    assert _canonical(items) == _canonical(nodes)
    assert reader.item_count == len(nodes)


@FEW
@given(st.data(), item_documents(), STYLES)
def test_items_are_counted_when_not_kept(data: st.DataObject, document: dict[str, Any], style: str) -> None:
    body = _dump(document, style)
    reader = PathReader(WHERE, items=("result.nodes.item",), keep_items=False)
    assert read(reader, data.draw(chunkings(body), label="chunks")) == []
    assert reader.item_count == len(document["result"]["nodes"])


# --- PathReader: cut off and garbage -------------------------------------------------------------


@SETTINGS
@given(st.data(), row_documents() | item_documents(), STYLES)
def test_a_cut_off_answer_is_a_protocol_error_at_the_end(
    data: st.DataObject, document: dict[str, Any], style: str
) -> None:
    body = _dump(document, style)
    cut = data.draw(st.integers(0, len(body) - 1), label="cut")
    chunks = data.draw(chunkings(body[:cut]), label="chunks")
    reader = rows_reader() if "values" in document else items_reader()

    # What came is a valid start: feeding it is no error
    for chunk in chunks:
        reader.feed(chunk)
    # and the end of the input says the document is cut off
    with pytest.raises(UpstreamProtocolError, match=r"^test read on connection 'conn': "):
        reader.finish()


def _read_anything(reader: PathReader, chunks: Iterable[bytes]) -> None:
    with contextlib.suppress(UpstreamProtocolError):
        read(reader, chunks)


@SETTINGS
@given(
    st.data(), st.binary(max_size=200), st.sampled_from([b"", b'{"values": [', b'{"id": "a", "values": [[1'])
)
def test_any_bytes_are_read_or_a_protocol_error(data: st.DataObject, noise: bytes, start: bytes) -> None:
    body = start + noise
    _read_anything(rows_reader(), data.draw(chunkings(body), label="chunks"))
    _read_anything(items_reader(), data.draw(chunkings(body), label="chunks"))


@SETTINGS
@given(st.data(), row_documents() | item_documents(), STYLES)
def test_an_altered_answer_is_read_or_a_protocol_error(
    data: st.DataObject, document: dict[str, Any], style: str
) -> None:
    # Given a real answer with a few bytes replaced, dropped or inserted (JSON's own punctuation
    # most of the time, so that the damage reaches the structure)
    body = bytearray(_dump(document, style))
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        at = data.draw(st.integers(0, len(body)), label="at")
        byte = data.draw(st.sampled_from([*b'[]{},:"\\ 0e-', 0xFF, 0xC3]), label="byte")
        edit = data.draw(st.sampled_from(["replace", "drop", "insert"]), label="edit")
        if edit == "insert" or at == len(body):
            body[at:at] = bytes([byte])
        elif edit == "drop":
            del body[at]
        else:
            body[at] = byte
    chunks = data.draw(chunkings(bytes(body)), label="chunks")

    # Then reading it ends well or with an UpstreamProtocolError, never another exception
    _read_anything(rows_reader(), chunks)
    _read_anything(items_reader(), chunks)


# --- StreamedAnswer ------------------------------------------------------------------------------


class Chunks(httpx.SyncByteStream):
    """A response body that arrives in the given chunks."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = list(chunks)

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks


def each_cut(body: bytes) -> list[list[bytes]]:
    """The body whole, cut once at every place, and a byte at a time."""
    once = [[body[:at], body[at:]] for at in range(1, len(body))]
    return [[body], *once, [bytes([byte]) for byte in body]]


def columns_and_rows(found: FetchedResult, chunks: list[bytes]) -> tuple[list[tuple[str, str]], Any]:
    """A provider's result as its columns, and its rows (or, native, its row count: the bytes
    handed on must be the body's, untouched)."""
    columns = [(column.name, column.type) for column in found.columns]
    if isinstance(found, NativeResult):
        assert b"".join(found.chunks) == b"".join(chunks)
        return columns, found.row_count
    return columns, [list(row) for row in found.rows]


CONDITIONS: dict[str, Callable[[PathReader], bool]] = {
    "id": lambda reader: reader.has("id"),
    "columns": lambda reader: reader.has("columns"),
    "in rows": lambda reader: reader.in_rows,
    "a row": lambda reader: reader.item_count > 0,
    "never": lambda reader: False,
    "at once": lambda reader: True,
}


def _answer(chunks: list[bytes]) -> StreamedAnswer[PathReader]:
    return StreamedAnswer(httpx.Response(200, stream=Chunks(chunks)), rows_reader(), WHERE)


@SETTINGS
@given(st.data(), row_documents(), STYLES, st.sampled_from(sorted(CONDITIONS)))
def test_streamed_items_after_a_head_are_every_row_once(
    data: st.DataObject, document: dict[str, Any], style: str, condition: str
) -> None:
    body = _dump(document, style)
    answer = _answer(data.draw(chunkings(body), label="chunks"))

    answer.read_until(CONDITIONS[condition])
    head = list(answer.head)
    rows = list(answer.items())

    assert rows == document["values"]
    assert rows[: len(head)] == head
    assert answer.reader.item_count == len(document["values"])
    assert answer.reader.first("id") == document["id"]
    assert list(answer.items()) == []  # handed out once


@SETTINGS
@given(st.data(), row_documents(), STYLES, st.sampled_from(sorted(CONDITIONS)))
def test_streamed_raw_chunks_are_the_bytes_received(
    data: st.DataObject, document: dict[str, Any], style: str, condition: str
) -> None:
    body = _dump(document, style)
    chunks = data.draw(chunkings(body), label="chunks")
    answer = _answer(chunks)

    answer.read_until(CONDITIONS[condition])
    replayed = list(answer.raw_chunks())

    assert replayed == chunks
    assert answer.reader.item_count == len(document["values"])  # still parsed and counted
    assert answer.reader.complete


def test_streamed_raw_chunks_of_a_cut_off_answer_end_in_a_protocol_error() -> None:
    answer = _answer([b'{"id": "a", "values": [[1], ', b"[2]"])
    answer.read_until(CONDITIONS["id"])
    replayed: list[bytes] = []
    with pytest.raises(UpstreamProtocolError, match="premature EOF inside the rows"):
        replayed.extend(answer.raw_chunks())
    assert replayed == [b'{"id": "a", "values": [[1], ', b"[2]"]


def test_streamed_answer_turns_a_broken_connection_into_unavailable() -> None:
    class Broken(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield b'{"id": "a", "values": [[1], '
            raise httpx.RemoteProtocolError("peer closed connection to https://user:pw@host/x")

    answer = StreamedAnswer(httpx.Response(200, stream=Broken()), rows_reader(), WHERE)
    answer.read_until(CONDITIONS["id"])
    with pytest.raises(UpstreamUnavailable) as caught:
        list(answer.items())
    assert "pw@host" not in str(caught.value)


def test_small_object_reads_a_json_object() -> None:
    assert small_object(httpx.Response(200, stream=Chunks([b'{"to', b'ken": "t"}'])), WHERE) == {"token": "t"}


@pytest.mark.parametrize("body", [b"[1]", b"<html>", b"", b'{"a": 1'])
def test_small_object_refuses_anything_else(body: bytes) -> None:
    with pytest.raises(UpstreamProtocolError, match=r"not a JSON object \(HTTP 200\)"):
        small_object(httpx.Response(200, stream=Chunks([body])), WHERE)


# --- text lines ----------------------------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8") | st.sampled_from(["\n", "\r", "é", "€", "😀", "\ufeff"]))


@SETTINGS
@given(st.data(), TEXT, st.booleans())
def test_text_lines_are_the_same_however_the_bytes_are_chunked(
    data: st.DataObject, text: str, bom: bool
) -> None:
    body = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    chunks = data.draw(chunkings(body), label="chunks")

    lines = list(text_lines(iter(chunks)))

    # The lines of the whole text as the csv module's docs ask to read them ("\n", "\r\n" or a lone
    # "\r" ends a line; ends kept), without the byte order mark
    expected = list(io.StringIO(text if bom else text.removeprefix("\ufeff"), newline=""))
    assert lines == expected
    assert all(line.endswith(("\n", "\r")) for line in lines[:-1])
    assert all("\n" not in line[:-1] and "\r" not in line[:-2] for line in lines)


def test_text_lines_drop_a_bom_cut_into_single_bytes() -> None:
    assert list(text_lines(iter([b"\xef", b"\xbb", b"\xbf", b"a\n", b"\xe2\x82", b"\xac"]))) == ["a\n", "€"]


@pytest.mark.parametrize(
    ("chunks", "lines"),
    [
        ([b"a\rb\r\nc\n\rd\r"], ["a\r", "b\r\n", "c\n", "\r", "d\r"]),
        ([b"a\r", b"\nb"], ["a\r\n", "b"]),  # a '\r' last in a chunk waits for what follows
        ([b"a\r", b"", b"\nb"], ["a\r\n", "b"]),
        ([b"a\r", b"\xc3", b"\xa9"], ["a\r", "é"]),  # nothing decoded yet: still waiting
        ([b"a\r", b"\r"], ["a\r", "\r"]),
        ([b"a\r", b"b\r", b"\r\n"], ["a\r", "b\r", "\r\n"]),
        ([b"a", b"b\r"], ["ab\r"]),
        ([b"\xef\xbb", b"\xbf\r", b"\n\r"], ["\r\n", "\r"]),
    ],
)
def test_text_lines_end_at_a_lone_cr_too(chunks: list[bytes], lines: list[str]) -> None:
    assert list(text_lines(iter(chunks))) == lines
    assert lines == list(io.StringIO(b"".join(chunks).decode("utf-8-sig"), newline=""))


@pytest.mark.parametrize("body", [b"\xef", b"\xef\xbb"])
def test_text_lines_refuse_a_body_that_is_the_start_of_a_bom(body: bytes) -> None:
    """utf-8-sig's incremental decoder keeps such bytes back, waiting for the rest of a BOM, and
    says nothing at the end; they are no UTF-8 text."""
    with pytest.raises(UnicodeDecodeError, match="unexpected end of data"):
        list(text_lines(iter([body])))
    records = DelimitedRecords(iter([body]), WHERE, keep_bytes=False)
    with pytest.raises(UpstreamProtocolError, match="not delimited UTF-8 text"):
        records.read_header()


# --- delimited records ---------------------------------------------------------------------------

CSV_TEXT = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00")
    | st.sampled_from(['"', ",", "\n", "\r", "\t", ";", " "]),
    max_size=8,
)


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[str], list[list[str]]]:
    width = draw(st.integers(1, 4))
    header = draw(st.lists(CSV_TEXT, min_size=width, max_size=width))
    rows = draw(st.lists(st.lists(CSV_TEXT, min_size=width, max_size=width), max_size=8))
    return header, rows


def _csv(records: Iterable[list[str]], delimiter: str) -> bytes:
    text = io.StringIO()
    csv.writer(text, delimiter=delimiter).writerows(records)
    return text.getvalue().encode()


DELIMITERS = st.sampled_from([",", "\t", ";"])


@SETTINGS
@given(st.data(), tables(), DELIMITERS)
def test_delimited_rows_round_trip_however_chunked(
    data: st.DataObject, table: tuple[list[str], list[list[str]]], delimiter: str
) -> None:
    header, rows = table
    body = _csv([header, *rows], delimiter)
    records = DelimitedRecords(
        iter(data.draw(chunkings(body), label="chunks")), WHERE, delimiter=delimiter, keep_bytes=False
    )

    assert records.read_header() == header
    assert list(records.rows()) == rows
    assert records.item_count == len(rows)


@SETTINGS
@given(st.data(), tables(), DELIMITERS)
def test_delimited_native_chunks_are_the_bytes_received(
    data: st.DataObject, table: tuple[list[str], list[list[str]]], delimiter: str
) -> None:
    header, rows = table
    body = _csv([header, *rows], delimiter)
    chunks = data.draw(chunkings(body), label="chunks")
    records = DelimitedRecords(iter(chunks), WHERE, delimiter=delimiter, keep_bytes=True)

    assert records.read_header() == header
    assert list(records.native_chunks()) == chunks
    assert records.item_count == len(rows)


@FEW
@given(st.data(), tables(), DELIMITERS)
def test_a_record_of_the_wrong_width_is_a_protocol_error(
    data: st.DataObject, table: tuple[list[str], list[list[str]]], delimiter: str
) -> None:
    header, rows = table
    at = data.draw(st.integers(0, len(rows)), label="at")
    wrong = [*data.draw(st.lists(CSV_TEXT, min_size=len(header), max_size=len(header))), "one too many"]
    body = _csv([header, *rows[:at], wrong, *rows[at:]], delimiter)
    records = DelimitedRecords(
        iter(data.draw(chunkings(body), label="chunks")), WHERE, delimiter=delimiter, keep_bytes=False
    )
    records.read_header()

    read: list[list[str]] = []
    with pytest.raises(UpstreamProtocolError) as caught:
        read.extend(records.rows())

    assert read == rows[:at]
    assert f"csv record {at + 1} has {len(header) + 1} values, the header {len(header)}" in str(caught.value)


def test_blank_lines_are_no_rows_unless_there_is_one_column() -> None:
    two = DelimitedRecords(iter([b"a,b\r\n1,2\r\n\r\n3,4\r\n"]), WHERE, keep_bytes=False)
    two.read_header()
    assert list(two.rows()) == [["1", "2"], ["3", "4"]]
    one = DelimitedRecords(iter([b"a\n1\n\n2\n"]), WHERE, keep_bytes=False)
    one.read_header()
    assert list(one.rows()) == [["1"], [""], ["2"]]
    assert one.item_count == 3


@pytest.mark.parametrize(
    ("chunks", "header", "rows"),
    [
        ([b"a\r\r"], ["a"], [[""]]),  # one column: a blank line ended by a lone '\r' is a row
        ([b"a\r", b"\r"], ["a"], [[""]]),
        ([b"a\r", b"1\r\r2\r"], ["a"], [["1"], [""], ["2"]]),
        ([b"a,b\r1,2\r\r3,4"], ["a", "b"], [["1", "2"], ["3", "4"]]),
        ([b'a,b\r1,"x\ry"\r'], ["a", "b"], [["1", "x\ry"]]),  # a '\r' inside quotes is the value's
        ([b'a,b\r\n1,"x\r', b'\ny"\r\n'], ["a", "b"], [["1", "x\r\ny"]]),
        ([b"a\tb\r1\t2"], ["a\tb"], [["1\t2"]]),  # the delimiter is ",": one column
    ],
)
def test_a_lone_cr_ends_a_record_as_the_csv_module_reads_it(
    chunks: list[bytes], header: list[str], rows: list[list[str]]
) -> None:
    read = list(csv.reader(io.StringIO(b"".join(chunks).decode(), newline="")))
    assert read[0] == header
    assert [record or [""] for record in read[1:] if record or len(header) == 1] == rows
    records = DelimitedRecords(iter(chunks), WHERE, keep_bytes=False)
    assert records.read_header() == header
    assert list(records.rows()) == rows
    assert records.item_count == len(rows)


def test_an_empty_body_has_an_empty_header_and_no_rows() -> None:
    records = DelimitedRecords(iter([]), WHERE, keep_bytes=False)
    assert records.read_header() == []
    assert list(records.rows()) == []


# --- toolkit bugs, shown ------------------------------------------------------------------------


def test_an_empty_chunk_is_no_end_of_input() -> None:
    reader = rows_reader()
    assert read(reader, [b'{"id": "a"', b"", b', "values": [[1]]}']) == [[1]]


def test_a_big_integer_outside_the_rows_is_read() -> None:
    """yajl (ijson's C backend) refuses integers beyond 64 bits unless it hands numbers on as text."""
    reader = items_reader()
    body = b'{"result": {"nodes": [{"n": 18446744073709551615}]}, "skipped": 18446744073709551616}'
    assert read(reader, [body]) == [{"n": 18446744073709551615}]


@pytest.mark.parametrize(
    "body",
    [b'{"id": "a\\udc00b"}', b'{"skipped": "\\udfff"}', b'{"\\udc00": 1}'],
    ids=["collected", "skipped", "key"],
)
def test_an_escaped_lone_low_surrogate_is_read_or_a_protocol_error(body: bytes) -> None:
    with contextlib.suppress(UpstreamProtocolError):
        read(rows_reader(), [body])


def test_the_message_for_invalid_utf8_is_one_line() -> None:
    with pytest.raises(UpstreamProtocolError) as caught:
        read(rows_reader(), [b'{"id": "\xff"}'])
    assert "right here" not in str(caught.value)


def test_a_delimited_body_that_is_not_utf8_is_a_protocol_error() -> None:
    records = DelimitedRecords(iter([b"a,b\n", b"1,\xff\n"]), WHERE, keep_bytes=False)
    records.read_header()
    with pytest.raises(UpstreamProtocolError):
        list(records.rows())


def test_deep_nesting_costs_memory_in_proportion() -> None:
    """ijson's prefixed events cost O(depth) each: N nested '[' cost O(N^2) (30 000 took 2 GiB)."""
    depth = 4000
    tracemalloc.start()
    try:
        with pytest.raises(UpstreamProtocolError):
            read(rows_reader(), [b'{"extra": ' + b"[" * depth])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"{peak / 2**20:.0f} MiB for {depth} bytes of '['"


@pytest.mark.parametrize("where", ["skipped", "collected", "item"])
def test_a_document_nesting_deeper_than_the_cap_is_a_protocol_error(where: str) -> None:
    deep = b"[" * (MAX_NESTING + 1) + b"]" * (MAX_NESTING + 1)
    body = {
        "skipped": b'{"extra": ' + deep + b', "result": {"nodes": []}}',
        "collected": b'{"result": {"count": ' + deep + b', "nodes": []}}',
        "item": b'{"result": {"nodes": [' + deep + b"]}}",
    }[where]
    with pytest.raises(UpstreamProtocolError, match=f"nests deeper than {MAX_NESTING} levels"):
        read(items_reader(), [body])


def test_a_document_nesting_up_to_the_cap_is_read() -> None:
    depth = MAX_NESTING - 3  # the document, result and nodes hold the item
    item = json.loads("[" * depth + "]" * depth)
    body = b'{"result": {"nodes": [' + json.dumps(item).encode() + b"]}}"
    assert read(items_reader(), [body]) == [item]


# --- the cap in the rows -------------------------------------------------------------------------

TOO_DEEP = f"nests deeper than {MAX_NESTING} levels"
# Where the rows lie: the path, the document around them, and the levels a row may take there
# (MAX_NESTING less the containers it lies in, the array of rows among them).
ROWS_AT: dict[str, tuple[Callable[[list[Any]], Any], int]] = {
    "values": (lambda values: {"id": "a", "values": values}, MAX_NESTING - 2),
    "result.page.values": (lambda values: {"result": {"page": {"values": values}}}, MAX_NESTING - 4),
}


def _nesting(levels: int) -> list[Any]:
    """A row nesting ``levels`` levels, itself included: lists and objects in turn below it."""
    value: Any = 1
    for level in range(levels - 1):
        value = {"k": value} if level % 2 else [value]
    return [value]


def _cut(body: bytes, size: int) -> list[bytes]:
    return [body[start : start + size] for start in range(0, len(body), size)]


def _compact(document: Any) -> bytes:
    """Rows side by side as "],[": what the block path decodes."""
    return json.dumps(document, separators=(",", ":")).encode()


def _read_unless_too_deep(reader: PathReader, chunks: list[bytes], rows: list[Any], extra: int) -> None:
    """The rows are read when they nest within the cap (``extra`` 0), refused one level past it."""
    if extra:
        with pytest.raises(UpstreamProtocolError, match=TOO_DEEP):
            read(reader, chunks)
    else:
        assert read(reader, chunks) == rows


@pytest.mark.parametrize("path", sorted(ROWS_AT))
@pytest.mark.parametrize("extra", [0, 1])
@pytest.mark.parametrize("chunk_size", [7, 1 << 20])
def test_a_row_may_nest_up_to_the_cap_wherever_the_rows_lie(path: str, extra: int, chunk_size: int) -> None:
    """The cap counts the containers the rows lie in, as for any other part of an answer: a
    document nesting exactly MAX_NESTING levels is read, one level more is refused."""
    around, room = ROWS_AT[path]
    flat: list[list[Any]] = [[1, "a"], [2, ["b", "c"]]]
    rows = [*flat, _nesting(room + extra), *flat]
    document = around(rows)
    assert nesting_depth(document) == MAX_NESTING + extra
    _read_unless_too_deep(PathReader(WHERE, rows=path), _cut(_compact(document), chunk_size), rows, extra)


@pytest.mark.parametrize("kept", [True, False])
@pytest.mark.parametrize("dumps", [json.dumps, _compact], ids=["default", "compact"])
@pytest.mark.parametrize("bare", [False, True], ids=["with values", "brackets only"])
@pytest.mark.parametrize("extra", [0, 1])
@pytest.mark.parametrize("room", [None, 3, 1])
def test_array_rows_hold_each_row_to_its_room(
    kept: bool, dumps: Callable[[Any], Any], bare: bool, extra: int, room: int | None
) -> None:
    """ArrayRows() reads an array that is the document: a row may take MAX_NESTING - 1 levels.
    Brackets only, the row is as short as its levels allow (a shorter one is never checked)."""
    reader = ArrayRows() if room is None else ArrayRows(room=room)
    levels = (MAX_NESTING - 1 if room is None else room) + extra
    values = [[1], json.loads("[" * levels + "]" * levels) if bare else _nesting(levels), [2]]
    text = dumps(values)[1:]
    text = text if isinstance(text, bytes) else text.encode()
    rows: list[list[Any]] | None = [] if kept else None
    if extra:
        with pytest.raises(RowTooDeep, match=TOO_DEEP):
            reader.feed(text, rows)
    else:
        assert reader.feed(text, rows) == 3
        assert reader.done
        assert rows in (values, None)


@pytest.mark.parametrize("extra", [0, 1])
@pytest.mark.parametrize("deep_part", ["before the big cell", "after the big cell"])
@pytest.mark.parametrize("chunk_size", [3, 4096])
def test_a_deep_row_arriving_in_many_chunks_is_held_to_the_cap(
    extra: int, deep_part: str, chunk_size: int
) -> None:
    """A row longer than a chunk is checked once whole, by the brackets ValueEnd counted while its
    text arrived (in chunks of 4096 bytes its deepest levels are skipped by one match, not counted
    one by one)."""
    room = ROWS_AT["values"][1]
    nest, cell = _nesting(room - 1 + extra), "x" * 20_000
    row = [nest, cell] if deep_part.startswith("before") else [cell, nest]
    rows = [[1], row, [2]]
    assert nesting_depth(row) == room + extra
    _read_unless_too_deep(rows_reader(), _cut(_compact({"values": rows}), chunk_size), rows, extra)


@pytest.mark.parametrize("extra", [0, 1])
@pytest.mark.parametrize("multi_valued", [False, True])
@pytest.mark.parametrize("chunk_size", [64 * 1024, 1 << 22])
def test_a_deep_row_among_many_flat_rows_is_held_to_the_cap(
    extra: int, multi_valued: bool, chunk_size: int
) -> None:
    """A deep row in a block of rows decoded in one scan: the brackets of the block allow it, so
    the rows are walked (as they are at every block when each row has a multi-valued field)."""
    flat = [
        ["2024-01-01T00:00:00.000Z", index, ["a", "b"] if multi_valued else "host-17", None]
        for index in range(3000)
    ]
    rows = [*flat[:1000], _nesting(ROWS_AT["values"][1] + extra), *flat[1000:]]
    _read_unless_too_deep(rows_reader(), _cut(_compact({"values": rows}), chunk_size), rows, extra)


@pytest.mark.parametrize("chunk_size", [4096, 1 << 22])
def test_a_row_past_the_json_modules_recursion_limit_is_too_deep(chunk_size: int) -> None:
    """The json module's C scanner raises RecursionError some thousands of levels down: the row is
    refused as too deep all the same."""
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(UpstreamProtocolError, match=TOO_DEEP):
        read(rows_reader(), _cut(b'{"values": [[1],' + deep + b"]}", chunk_size))


NESTED = st.recursive(
    ROW_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=30,
)


@SETTINGS
@given(rows=st.lists(st.lists(NESTED, max_size=3), min_size=1, max_size=4), room=st.integers(0, 10))
def test_the_depth_walk_is_nesting_depth(rows: list[list[Any]], room: int) -> None:
    """The walk of rows that text allowed too deep agrees with models.nesting_depth (empty lists
    and objects too: they are levels, with nothing in them)."""
    rows = json.loads(json.dumps(rows))  # as the decoder builds them
    assert _deeper_than(rows, room) == (max(map(nesting_depth, rows)) > room)


@pytest.mark.parametrize("number", [b"1e400", b"-1e400"])
def test_a_float_too_large_outside_the_rows_is_a_protocol_error(number: bytes) -> None:
    with pytest.raises(UpstreamProtocolError, match="overflow"):
        read(items_reader(), [b'{"result": {"nodes": [' + number + b"]}}"])


def test_numbers_outside_the_rows_read_as_json_loads_reads_them() -> None:
    body = b'{"result": {"nodes": [1.5, -0.0, 1e-7, 12345678901234567890123, 2.5e+300, 0]}}'
    found = read(items_reader(), [body])
    assert found == json.loads(body)["result"]["nodes"]
    assert [type(value) for value in found] == [float, float, float, int, float, int]
