"""The ES|QL answer reader gives the same rows however the bytes are split into chunks, and refuses
an answer whose 'values' come before its 'columns' in every output format, wherever it is cut."""

from __future__ import annotations

import itertools
import json
from typing import Any

import httpx
import pytest

from query_relay.exceptions import UpstreamProtocolError
from query_relay.models import OutputFormat
from query_relay.providers.esql import answer
from query_relay.upstream.errors import Where
from query_relay.upstream.jsonpath import PathReader
from query_relay.upstream.stream import StreamedAnswer
from tests.unit.test_upstream_readers import Chunks, columns_and_rows, each_cut

ANSWER: dict[str, Any] = {
    "id": "FmNJRUZ1YWZCU3dH=",
    "is_running": False,
    "took": 12,
    "is_partial": False,
    "columns": [
        {"name": "name", "type": "keyword"},
        {"name": "n", "type": "long"},
        {"name": "score", "type": "double"},
        {"name": "tags", "type": "keyword"},
        {"name": "ok", "type": "boolean"},
    ],
    "values": [
        ['a "quoted" name, with [brackets] and ]', 1, 1.5, ["x", "y"], True],
        ["ünïcødé ✓ \\ back\\slash", 18446744073709551615, -0.25, None, False],
        [None, -9, 1e300, [], None],
        ["", 0, 0.0, ["]", "["], True],
    ],
    "documents_found": 4,
    "_clusters": {"total": 1, "details": {"local": {"status": "successful"}}},
}


def read_rows(document: bytes, chunk_size: int) -> tuple[PathReader, list[list[Any]]]:
    reader = answer.reader(Where("esql", "test", "esql fetch"), keep_rows=True)
    rows: list[list[Any]] = []
    for start in range(0, len(document), chunk_size):
        rows.extend(reader.feed(document[start : start + chunk_size]))
    rows.extend(reader.finish())
    return reader, rows


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize("indent", [None, 2])
def test_rows_are_the_same_for_every_chunking(chunk_size: int, indent: int | None) -> None:
    document = json.dumps(ANSWER, indent=indent, ensure_ascii=False).encode()
    reader, rows = read_rows(document, chunk_size)
    assert rows == ANSWER["values"]
    assert [column.name for column in answer.columns(reader)] == ["name", "n", "score", "tags", "ok"]
    facts = (answer.upstream_id(reader), reader.first("is_running"), reader.first("is_partial"))
    assert facts == ("FmNJRUZ1YWZCU3dH=", False, False)


@pytest.mark.parametrize("cut", [10, 200, -40, -2])
def test_an_answer_cut_off_is_a_protocol_error(cut: int) -> None:
    document = json.dumps(ANSWER).encode()[:cut]
    with pytest.raises(UpstreamProtocolError):
        read_rows(document, 5)


# --- 'values' before 'columns': refused in every format, wherever the bytes are cut ---------------

WHERE = Where("esql", "test", "esql fetch")
COLUMNS = b'"columns": [{"name": "n", "type": "long"}, {"name": "s", "type": "keyword"}]'
VALUES_FIRST = b'{"is_running": false, "values": [[1, "a"], [2, "b"]], ' + COLUMNS + b"}"
COLUMNS_FIRST = b'{"is_running": false, ' + COLUMNS + b', "values": [[1, "a"], [2, "b"]]}'


def cut_at(body: bytes, *cuts: int) -> list[bytes]:
    ends = (0, *cuts, len(body))
    return [body[start:end] for start, end in itertools.pairwise(ends)]


def fetched(chunks: list[bytes], output_format: OutputFormat) -> tuple[list[tuple[str, str]], Any]:
    """The columns, and the rows (or, native, the row count) of a finished answer's result."""
    reader = answer.reader(WHERE, keep_rows=output_format != "native")
    streamed = StreamedAnswer(httpx.Response(200, stream=Chunks(chunks)), reader, WHERE)
    found = answer.result(streamed, output_format, "t1", False)
    return columns_and_rows(found, chunks)


@pytest.mark.parametrize("output_format", ["jsonl", "csv", "native"])
@pytest.mark.parametrize(
    "head",
    [
        b'{"is_running": false, "values": [',  # the chunk ends where the values open
        b'{"is_running": false, "values": [[1, "a"]',  # inside the values
        b'{"is_running": false, "values": [[1, "a"], [2, "b"]]',  # after them
        b'{"is_running": false, "values": [[1, "a"], [2, "b"]], "columns": [{"name"',  # in the columns
        VALUES_FIRST,  # whole
    ],
    ids=["at the values", "inside the values", "after the values", "inside the columns", "whole"],
)
def test_values_before_columns_are_refused_wherever_the_answer_is_cut(
    output_format: OutputFormat, head: bytes
) -> None:
    assert VALUES_FIRST.startswith(head)
    with pytest.raises(UpstreamProtocolError, match="'values' arrived before 'columns'"):
        fetched(cut_at(VALUES_FIRST, len(head)), output_format)


@pytest.mark.parametrize("output_format", ["jsonl", "native"])
def test_values_before_columns_are_refused_at_every_cut(output_format: OutputFormat) -> None:
    for chunks in each_cut(VALUES_FIRST):
        with pytest.raises(UpstreamProtocolError, match="'values' arrived before 'columns'"):
            fetched(chunks, output_format)


@pytest.mark.parametrize("output_format", ["jsonl", "native"])
def test_columns_before_values_are_read_the_same_at_every_cut(output_format: OutputFormat) -> None:
    rows: Any = [[1, "a"], [2, "b"]] if output_format == "jsonl" else 2
    for chunks in each_cut(COLUMNS_FIRST):
        assert fetched(chunks, output_format) == ([("n", "long"), ("s", "keyword")], rows)


def test_a_counting_reader_refuses_values_before_columns_too() -> None:
    reader = answer.reader(WHERE, keep_rows=False)
    with pytest.raises(UpstreamProtocolError, match="'values' arrived before 'columns'"):
        reader.feed(b'{"values": [')
