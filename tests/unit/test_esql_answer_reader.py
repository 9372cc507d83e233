"""The ES|QL answer reader gives the same rows however the bytes are split into chunks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from query_relay.exceptions import UpstreamProtocolError
from query_relay.providers.esql import answer
from query_relay.upstream.errors import Where
from query_relay.upstream.jsonpath import PathReader

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
