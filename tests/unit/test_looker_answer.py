"""A Looker JSON result's columns depend on the document only, never on where its bytes were cut
into chunks: they are decided at the first row from what comes before it (json_detail's ``fields``
typing them if it came before ``data``, else the row's values), and a result without rows is read
to its end (see the module doc of query_relay.providers.looker.answer)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from query_relay.exceptions import UpstreamProtocolError, UpstreamQueryFailed
from query_relay.providers.looker import answer
from tests.unit.test_upstream_readers import WHERE, Chunks, columns_and_rows, each_cut

FIELDS = {
    "dimensions": [{"name": "users.country", "type": "string"}],
    "measures": [{"name": "orders.count", "type": "count"}, {"name": "orders.total", "type": "sum"}],
}
ROWS = [
    {"orders.count": {"value": 3}, "users.country": {"value": "FR"}, "orders.total": {"value": 1.5}},
    {"orders.count": {"value": 4}, "users.country": {"value": "DE"}, "orders.total": {"value": 2.5}},
]
WARNING = [{"level": "warning", "message": "the cache is cold"}]
FAILED = [{"level": "error", "message": "Unknown column 'orders.nope'"}]
# The first row's keys, typed by the metadata or guessed from the row's values.
BY_METADATA = [("orders.count", "count"), ("users.country", "string"), ("orders.total", "sum")]
BY_VALUES = [("orders.count", "number"), ("users.country", "string"), ("orders.total", "number")]
BY_FIELDS = [("users.country", "string"), ("orders.count", "count"), ("orders.total", "sum")]


def body(*parts: tuple[str, Any]) -> bytes:
    """A json_detail result with its members in the order given."""
    return json.dumps({"id": "t1", **dict(parts), "sql": "SELECT 1"}).encode()


def fetched(chunks: list[bytes], native: bool, fields: list[str] | None = None) -> tuple[Any, Any]:
    """The columns, and the rows (or, native, the row count) of a json_detail result."""
    found = answer.result(httpx.Response(200, stream=Chunks(chunks)), WHERE, "json_detail", native, fields)
    return columns_and_rows(found, chunks)


def rows_of(native: bool) -> Any:
    return len(ROWS) if native else [[3, "FR", 1.5], [4, "DE", 2.5]]


@pytest.mark.parametrize("native", [False, True], ids=["rows", "native"])
@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (body(("fields", FIELDS), ("data", ROWS)), BY_METADATA),
        (body(("fields", FIELDS), ("errors", WARNING), ("data", ROWS)), BY_METADATA),
        (body(("errors", WARNING), ("fields", FIELDS), ("data", ROWS)), BY_METADATA),
        (body(("data", ROWS), ("fields", FIELDS)), BY_VALUES),
        (body(("errors", WARNING), ("data", ROWS), ("fields", FIELDS)), BY_VALUES),
        (body(("data", ROWS), ("errors", WARNING)), BY_VALUES),
    ],
    ids=[
        "fields, data",
        "fields, errors, data",
        "errors, fields, data",
        "data, fields",
        "errors, data, fields",
        "no fields",
    ],
)
def test_the_columns_are_the_first_rows_wherever_the_result_is_cut(
    document: bytes, expected: list[tuple[str, str]], native: bool
) -> None:
    for chunks in each_cut(document):
        assert fetched(chunks, native) == (expected, rows_of(native)), chunks


@pytest.mark.parametrize("native", [False, True], ids=["rows", "native"])
@pytest.mark.parametrize(
    "document",
    [
        body(("fields", FIELDS), ("data", [])),
        body(("data", []), ("fields", FIELDS)),
        body(("errors", WARNING), ("data", []), ("fields", FIELDS)),
        body(("data", []), ("errors", WARNING), ("fields", FIELDS)),
    ],
    ids=["fields, data", "data, fields", "errors, data, fields", "data, errors, fields"],
)
def test_a_result_without_rows_takes_the_metadata_wherever_it_lies(document: bytes, native: bool) -> None:
    for chunks in each_cut(document):
        assert fetched(chunks, native) == (BY_FIELDS, 0 if native else []), chunks
        # The query's fields name the columns where they are known, typed by the metadata.
        known = ["orders.total", "users.country", "orders.nope"]
        typed = [("orders.total", "sum"), ("users.country", "string"), ("orders.nope", "unknown")]
        assert fetched(chunks, native, known) == (typed, 0 if native else [])


@pytest.mark.parametrize("native", [False, True], ids=["rows", "native"])
def test_only_metadata_before_the_rows_types_a_first_row_that_is_not_an_object(native: bool) -> None:
    known = ["users.country"]
    before = body(("fields", FIELDS), ("data", [1]))
    after = body(("data", [1]), ("fields", FIELDS))
    for document, expected in (
        (before, [("users.country", "string")]),
        (after, [("users.country", "unknown")]),
    ):
        for chunks in each_cut(document):
            if native:
                assert fetched(chunks, native, known) == (expected, 1), chunks
            else:
                with pytest.raises(UpstreamProtocolError, match="is not an object"):
                    fetched(chunks, native, known)


@pytest.mark.parametrize("native", [False, True], ids=["rows", "native"])
@pytest.mark.parametrize(
    "document",
    [
        body(("errors", FAILED), ("data", [])),
        body(("errors", FAILED), ("fields", FIELDS), ("data", ROWS)),
        body(("fields", FIELDS), ("data", ROWS), ("errors", FAILED)),
    ],
    ids=["errors, no rows", "errors before the rows", "errors after the rows"],
)
def test_an_error_in_errors_fails_the_query_wherever_the_result_is_cut(document: bytes, native: bool) -> None:
    for chunks in each_cut(document):
        with pytest.raises(UpstreamQueryFailed, match=r"Unknown column 'orders\.nope'"):
            fetched(chunks, native)


def test_the_place_of_fields_is_decided_when_the_rows_open() -> None:
    document = body(("fields", FIELDS), ("data", ROWS))
    at = document.index(b'"data": [') + len(b'"data": [')
    reader = answer.json_reader(WHERE, "json_detail")
    decided = []
    for chunk in (document[: at - 1], document[at - 1 :]):  # the second opens the rows
        reader.feed(chunk)
        decided.append(reader.fields_first)
    assert decided == [None, True]
    reader = answer.json_reader(WHERE, "json_detail")
    reader.feed(body(("data", ROWS), ("fields", FIELDS)))  # one chunk holds the fields after the rows
    assert reader.fields_first is False
    assert reader.has("fields")
