"""Rows decoded a block at a time (one scan per chunk) are the rows decoded one by one.

A block ends at the last ``],[`` of the text read so far; that may be inside a string or between
two multi-valued fields of one row, and then the rows must still come out whole and in order.
Rows only counted (a native result) are checked a block at a time without being built, and
counted, refused or worded exactly as the rows decoded.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from query_relay.exceptions import UpstreamProtocolError
from query_relay.providers.esql import answer as esql_answer
from query_relay.upstream import rows as rows_module
from query_relay.upstream.errors import Where
from query_relay.upstream.rows import ArrayRows

COLUMNS = [{"name": name, "type": "keyword"} for name in ("a", "b", "c", "d")]

TRICKY_ROWS: list[list[Any]] = [
    ["plain", 1, 1.5, None],
    ["a string with ],[ inside", "and ]]],[[[ more", "],", "[,]"],
    [["x", "y"], ["z"], ["],["], []],  # adjacent multi-valued fields: a ],[ inside the row
    [{"k": [[1], [2]]}, [[3], [4]], "ünïcødé ✓ 日本", '\\ back\\slash "q" \n'],
    [18446744073709551615, -0.0, 1e300, True],
    [None, None, None, None],
    [["]"], ["["], [["],["]], "end"],
]


def answer(rows: list[list[Any]], *, indent: int | None = None) -> bytes:
    document = {"id": "x", "is_running": False, "columns": COLUMNS, "values": rows, "took": 1}
    document["_clusters"] = {"details": [[1], [2]]}  # a ],[ after the values
    return json.dumps(document, indent=indent, ensure_ascii=False).encode()


def read_rows(document: bytes, chunk_size: int) -> list[list[Any]]:
    reader = esql_answer.reader(Where("esql", "test", "esql fetch"), keep_rows=True)
    rows: list[list[Any]] = []
    for start in range(0, len(document), chunk_size):
        rows += reader.feed(document[start : start + chunk_size])
    rows += reader.finish()
    return rows


def count_rows(document: bytes, chunk_size: int) -> int:
    """The rows of ``document`` as a native result's reader counts them (keeping none)."""
    reader = esql_answer.reader(Where("esql", "test", "esql fetch"), keep_rows=False)
    for start in range(0, len(document), chunk_size):
        assert reader.feed(document[start : start + chunk_size]) == []
    assert reader.finish() == []
    return reader.item_count


def read_or_count(document: bytes, chunk_size: int, mode: str) -> Any:
    return read_rows(document, chunk_size) if mode == "read" else count_rows(document, chunk_size)


@pytest.mark.parametrize("chunk_size", [1, 5, 17, 64, 333, 4096, 1 << 20])
@pytest.mark.parametrize("indent", [None, 1])
def test_rows_with_brackets_everywhere_are_the_same_for_every_chunking(
    chunk_size: int, indent: int | None
) -> None:
    rows = TRICKY_ROWS * 40
    assert read_rows(answer(rows, indent=indent), chunk_size) == rows
    assert count_rows(answer(rows, indent=indent), chunk_size) == len(rows)


def test_a_chunk_of_whole_rows_is_decoded_as_one_block() -> None:
    text = b'["a",1],["b",[2,3]],["c",[4],[5]],["d"'
    row_text = ArrayRows()
    rows: list[list[Any]] = []
    assert row_text.feed(text, rows) == 3
    assert rows == [["a", 1], ["b", [2, 3]], ["c", [4], [5]]]
    assert row_text.feed(b',"e"]]', rows) == 1
    assert rows[-1] == ["d", "e"]
    assert row_text.done


def test_a_block_cut_between_two_multi_valued_fields_falls_back_to_row_by_row() -> None:
    row_text = ArrayRows()
    rows: list[list[Any]] = []
    # the last ],[ is inside the third row
    assert row_text.feed(b'["a"],["b"],["c",[1],[2', rows) == 2
    assert rows == [["a"], ["b"]]
    assert row_text.feed(b"]]]", rows) == 1
    assert rows[-1] == ["c", [1], [2]]


def test_lone_escaped_surrogates_in_a_block_become_question_marks() -> None:
    document = answer([["\\ud800"], ["x"]]).replace(b"\\\\ud800", b"\\ud800")
    assert read_rows(document, 1 << 20) == [["?"], ["x"]]
    assert count_rows(document, 1 << 20) == 2  # msgspec refuses a lone surrogate: the decoders count


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (b'[["a"],NaN,["b"],["c"]]', "NaN is not a JSON value"),
        (b'[["a"],[NaN],["b"],["c"]]', "NaN is not a JSON value"),
        (b'[["a"],[1e999],["b"],["c"]]', "numeric (floating point) overflow"),
        (b'[["a"],7,["b"],["c"]]', "something other than rows (number)"),
        (b'[["a"],{"k":1},["b"],["c"]]', "something other than rows (start_map)"),
        (b'[["a"] ["b"],["c"]]', "Expecting ',' delimiter"),
        (b'[["a"],[1E+400],["b"],["c"]]', "numeric (floating point) overflow"),
        (b'[["a"],[-2e0308],["b"],["c"]]', "numeric (floating point) overflow"),
        (b'[["a"],[' + b"9" * 400 + b'.5],["b"],["c"]]', "numeric (floating point) overflow"),
        (b'[["a"],["b",' + b"[" * 70 + b"]" * 70 + b'],["c"],["d"]]', "nests deeper than"),
    ],
)
@pytest.mark.parametrize("chunk_size", [3, 1 << 20])
@pytest.mark.parametrize("mode", ["read", "count"])
def test_an_error_inside_a_block_is_worded_as_row_by_row(
    values: bytes, problem: str, chunk_size: int, mode: str
) -> None:
    document = b'{"is_running":false,"columns":[{"name":"a","type":"keyword"}],"values":' + values + b"}"
    with pytest.raises(UpstreamProtocolError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        read_or_count(document, chunk_size, mode)


@pytest.mark.parametrize(
    "values",
    [
        b'[["a"],[1e308],[1E-400],["e000"],[123e45],["b"],["c"]]',  # no overflow: the numbers are read
        b'[["a"],["' + b"9" * 400 + b'"],[' + b"9" * 400 + b'],["b"]]',  # a string, an integer
        b'[["a"],["b",' + b"[" * 30 + b"]" * 30 + b'],["c"],["d"]]',  # nested, within the room
    ],
)
@pytest.mark.parametrize("chunk_size", [3, 1 << 20])
def test_rows_that_look_like_an_error_are_counted_as_they_are_read(values: bytes, chunk_size: int) -> None:
    document = b'{"is_running":false,"columns":[{"name":"a","type":"keyword"}],"values":' + values + b"}"
    assert count_rows(document, chunk_size) == len(read_rows(document, chunk_size)) == len(json.loads(values))


# Blocks are decoded by orjson, which reads an integer beyond 64 bits as a float: such text is read by
# the json module instead, so every integer comes out exact wherever it lies.
@pytest.mark.parametrize(
    "number",
    [
        2**64,  # 20 digits, one past the largest orjson keeps
        10**30,
        -(2**63) - 1,  # 19 digits and a minus sign
        -(10**40),
        2**64 - 1,  # still 64-bit: orjson's own
        -(2**63),
        1234567890123456789,
    ],
)
@pytest.mark.parametrize("chunk_size", [7, 1 << 20])
def test_integers_of_any_size_come_out_exact_from_a_block(number: int, chunk_size: int) -> None:
    rows: list[list[Any]] = [["a", index, 1.5] for index in range(50)]
    rows[25][1] = number
    read = read_rows(answer(rows), chunk_size)
    assert read == rows
    assert type(read[25][1]) is int
    assert count_rows(answer(rows), chunk_size) == len(rows)


def test_digits_in_strings_are_read_as_strings() -> None:
    rows: list[list[Any]] = [["1" * 40, "0" * 19, "-" + "9" * 25]] * 30
    assert read_rows(answer(rows), 1 << 20) == rows


def test_a_block_is_decoded_by_orjson_where_it_reads_as_json_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    decode_value = rows_module._decode_value

    def counting(text: str, index: int) -> tuple[Any, int]:
        calls.append(text[index : index + 10])
        return decode_value(text, index)

    monkeypatch.setattr(rows_module, "_decode_value", counting)

    def compact(rows: list[list[Any]]) -> bytes:  # as Elasticsearch writes it: a block ends at "],["
        return json.dumps(
            {"is_running": False, "columns": COLUMNS, "values": rows}, separators=(",", ":")
        ).encode()

    plain = [["a", index, 0.5, None] for index in range(100)]
    assert read_rows(compact(plain), 1 << 20) == plain
    assert len(calls) == 1, "only the row after the last ],[ reaches the json module"
    big = [["a", 10**20 + index, None, None] for index in range(100)]
    assert read_rows(compact(big), 1 << 20) == big
    assert len(calls) == 3, "a block that may hold an integer beyond 64 bits is read by the json module"


def test_rows_only_counted_are_not_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A native result's flat rows are checked by msgspec a block at a time and never built:
    neither decoder sees a block, and the json module only the row after the last ``],[``. (Rows
    with nested values are decoded, as kept rows are, when their brackets allow too deep a row.)"""
    blocks: list[str] = []
    rows_seen: list[str] = []
    decode_block, decode_value = rows_module._decode_block, rows_module._decode_value

    def watched_block(text: str, *, surrogates: bool) -> list[Any]:
        blocks.append(text[:10])
        return decode_block(text, surrogates=surrogates)

    def watched_value(text: str, index: int) -> tuple[Any, int]:
        rows_seen.append(text[index : index + 10])
        return decode_value(text, index)

    monkeypatch.setattr(rows_module, "_decode_block", watched_block)
    monkeypatch.setattr(rows_module, "_decode_value", watched_value)
    rows = [["a", index, 0.5, None, "x],y", True] for index in range(1000)]
    document = json.dumps({"is_running": False, "columns": COLUMNS, "values": rows}, separators=(",", ":"))
    assert count_rows(document.encode(), 1 << 20) == 1000
    assert (blocks, len(rows_seen)) == ([], 1)
    assert read_rows(document.encode(), 1 << 20) == rows
    assert len(blocks) == 1, "rows that are kept are decoded a block at a time"
