"""A row narrower or wider than the columns the upstream announced is a broken answer
(issue 13: it was a bare ValueError from the result writer): UpstreamProtocolError, naming the row."""

from __future__ import annotations

from typing import Any

import pytest

from query_relay.exceptions import UpstreamProtocolError
from query_relay.models import parse_connection
from query_relay.providers import TabularResult, open_provider
from tests.hostile import Hostile

COLUMNS = [{"name": "a", "type": "long"}, {"name": "b", "type": "keyword"}]


def _fetch_rows(hostile: Hostile, values: list[list[Any]]) -> list[Any]:
    answer = {"id": "t1", "is_running": False, "columns": COLUMNS, "values": values}
    hostile.routes[("GET", "/_query/async/t1")] = (200, answer)
    connection = parse_connection(
        "widths",
        {"provider": "esql", "base_url": hostile.base_url, "auth": {"type": "api_key", "api_key": "k"}},
    )
    provider = open_provider("widths", connection)
    try:
        with provider.fetch("t1", {}, "jsonl") as result:
            assert isinstance(result, TabularResult)
            return list(result.rows)
    finally:
        provider.close()


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ([[1, "x"], [2]], "row 2 has 1 values for 2 columns"),
        ([[1, "x", "extra"]], "row 1 has 3 values for 2 columns"),
        ([[]], "row 1 has 0 values for 2 columns"),
        ([[1, "x"]] * 300 + [[2]], "row 301 has 1 values for 2 columns"),  # past the first blocks
    ],
    ids=["narrower", "wider", "empty", "late"],
)
def test_a_row_of_the_wrong_width_is_a_protocol_error(
    hostile: Hostile, values: list[list[Any]], problem: str
) -> None:
    with pytest.raises(UpstreamProtocolError, match=problem) as raised:
        _fetch_rows(hostile, values)
    assert "connection 'widths'" in str(raised.value)


def test_rows_of_the_columns_width_are_read(hostile: Hostile) -> None:
    assert _fetch_rows(hostile, [[1, "x"], [None, None]]) == [[1, "x"], [None, None]]
