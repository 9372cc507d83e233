"""Snowflake's jsonv2 values typed by their rowType (every value arrives as text), the rows typed a
block at a time (query_relay.upstream.typed), and what refuses a hostile value: always an
UpstreamProtocolError naming the row and the column, never another exception."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from query_relay.exceptions import UpstreamProtocolError
from query_relay.models import MAX_NESTING
from query_relay.providers.snowflake import answer
from query_relay.providers.snowflake.answer import Metadata, RowType
from query_relay.upstream.errors import Where

WHERE = Where("snowflake", "warehouse", "snowflake fetch")


def typed(row_type: dict[str, Any], *values: str | None) -> list[Any]:
    found = Metadata.model_validate({"rowType": [{"name": "c", **row_type}]})
    return [row[0] for row in answer.typed_rows(found, WHERE)(iter([[value] for value in values]))]


@pytest.mark.parametrize(
    ("row_type", "text", "value"),
    [
        ({"type": "fixed", "precision": 38, "scale": 0}, "42", 42),
        (
            {"type": "fixed", "precision": 38, "scale": 0},
            "-170141183460469231731687303715884105728",
            -(2**127),
        ),
        ({"type": "fixed", "precision": 10, "scale": 2}, "123.45", 123.45),
        ({"type": "fixed", "precision": 10, "scale": 2}, "-0.05", -0.05),
        (
            {"type": "fixed", "precision": 38, "scale": 10},
            "12345678901234567890.0123456789",
            "12345678901234567890.0123456789",
        ),
        ({"type": "real"}, "1.5", 1.5),
        ({"type": "real"}, "-2.5e-300", -2.5e-300),
        ({"type": "text"}, 'héllo, "world"', 'héllo, "world"'),
        ({"type": "boolean"}, "true", True),
        ({"type": "boolean"}, "false", False),
        ({"type": "date"}, "0", "1970-01-01"),
        ({"type": "date"}, "19849", "2024-05-06"),
        ({"type": "date"}, "-1", "1969-12-31"),
        ({"type": "time", "scale": 9}, "45296.123000000", "12:34:56.123000000"),
        ({"type": "time", "scale": 0}, "0", "00:00:00"),
        ({"type": "timestamp_ntz", "scale": 9}, "1715000000.123000000", "2024-05-06T12:53:20.123000000"),
        ({"type": "timestamp_ntz", "scale": 3}, "-1.500", "1969-12-31T23:59:58.500"),
        ({"type": "timestamp_ltz", "scale": 0}, "1715000000", "2024-05-06T12:53:20Z"),
        ({"type": "timestamp_tz", "scale": 3}, "1715000000.000 1500", "2024-05-06T13:53:20.000+01:00"),
        ({"type": "timestamp_tz", "scale": 0}, "1715000000 1140", "2024-05-06T07:53:20-05:00"),
        ({"type": "binary"}, "48454C4C4F", "48454C4C4F"),
        ({"type": "variant"}, '{\n  "a": [1, 2.5, null]\n}', {"a": [1, 2.5, None]}),
        ({"type": "array"}, "[]", []),
        ({"type": "object"}, '{"k": "v"}', {"k": "v"}),
        ({"type": "geography"}, '{"type": "Point"}', '{"type": "Point"}'),
    ],
)
def test_each_type_is_read_from_its_text(row_type: dict[str, Any], text: str, value: Any) -> None:
    assert typed(row_type, text) == [value]


def test_null_stays_null_whatever_the_type() -> None:
    for kind in ("fixed", "real", "text", "boolean", "date", "time", "timestamp_tz", "variant"):
        assert typed({"type": kind}, None) == [None]


def test_nan_and_infinities_are_floats_the_json_rule_writes_as_null() -> None:
    nan, inf, minus_inf = typed({"type": "real"}, "NaN", "inf", "-inf")
    assert math.isnan(nan)
    assert inf == math.inf
    assert minus_inf == -math.inf


@pytest.mark.parametrize(
    ("row_type", "text"),
    [
        ({"type": "fixed", "scale": 0}, "4.5"),
        ({"type": "fixed", "scale": 0}, "1_000"),
        ({"type": "fixed", "precision": 10, "scale": 2}, "NaN"),
        ({"type": "boolean"}, "yes"),
        ({"type": "date"}, "99999999999"),
        ({"type": "time", "scale": 0}, "86400"),
        ({"type": "timestamp_tz", "scale": 0}, "1715000000"),
        ({"type": "timestamp_tz", "scale": 0}, "1715000000 9999"),
        ({"type": "timestamp_ntz", "scale": 0}, "1715000000 1500"),
        ({"type": "timestamp_ltz", "scale": 0}, "1e30"),
        ({"type": "variant"}, "{not json"),
    ],
)
def test_a_value_its_type_does_not_read_is_a_protocol_error_naming_row_and_column(
    row_type: dict[str, Any], text: str
) -> None:
    with pytest.raises(
        UpstreamProtocolError, match=r"row 2, column 'c': a value its type does not read"
    ) as raised:
        typed(row_type, None, text)
    assert text not in str(raised.value)  # the upstream's value is not repeated


def test_a_value_that_is_not_text_is_refused_in_typed_and_untyped_columns() -> None:
    with pytest.raises(UpstreamProtocolError, match=r"row 1, column 'c': a int, not text"):
        typed({"type": "fixed", "scale": 0}, 5)  # type: ignore[arg-type]
    with pytest.raises(UpstreamProtocolError, match=r"row 3, column 'c': a list, not text"):
        typed({"type": "text"}, "a", None, ["b"])  # type: ignore[arg-type]


def test_a_variant_nested_deeper_than_a_row_may_be_is_refused() -> None:
    deep = "[" * (MAX_NESTING - 1) + "]" * (MAX_NESTING - 1)
    assert typed({"type": "variant"}, deep)  # as deep as a row's value may be
    with pytest.raises(UpstreamProtocolError, match="nested deeper than"):
        typed({"type": "variant"}, "[" + deep + "]")


def test_rows_are_typed_column_by_column_across_blocks_with_row_numbers_counted_on() -> None:
    found = Metadata.model_validate(
        {"rowType": [{"name": "n", "type": "fixed", "scale": 0}, {"name": "s", "type": "text"}]}
    )
    rows = [[str(n), f"s{n}"] for n in range(600)]
    assert list(answer.typed_rows(found, WHERE)(iter(rows))) == [[n, f"s{n}"] for n in range(600)]
    rows[555][0] = "x"
    with pytest.raises(UpstreamProtocolError, match="row 556, column 'n'"):
        list(answer.typed_rows(found, WHERE)(iter(rows)))


SCALARS = st.one_of(st.none(), st.text(max_size=30), st.integers(), st.floats(), st.booleans())
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
ROW_TYPES = st.builds(
    lambda kind, precision, scale: {"name": "c", "type": kind, "precision": precision, "scale": scale},
    st.sampled_from(
        [
            "fixed",
            "real",
            "text",
            "boolean",
            "date",
            "time",
            "timestamp_ntz",
            "timestamp_ltz",
            "timestamp_tz",
            "variant",
            "binary",
            "vector",
        ]
    ),
    st.none() | st.integers(1, 38),
    st.none() | st.integers(0, 9),
)


@settings(max_examples=300, deadline=None)
@given(
    ROW_TYPES,
    st.lists(
        st.one_of(VALUES, st.from_regex(r"-?[0-9]{1,25}(\.[0-9]{0,12})?( [0-9]{1,5})?", fullmatch=True)),
        max_size=5,
    ),
)
def test_any_answer_is_typed_or_refused_by_name(row_type: dict[str, Any], values: list[Any]) -> None:
    found = Metadata.model_validate({"rowType": [row_type]})
    with contextlib.suppress(UpstreamProtocolError):  # anything else fails the test
        list(answer.typed_rows(found, WHERE)(iter([[value] for value in values])))


def test_metadata_columns_and_partition_rows() -> None:
    found = Metadata.model_validate(
        {
            "format": "jsonv2",
            "numRows": 3,
            "rowType": [{"name": "ID", "type": "fixed", "scale": 0, "nullable": False, "length": None}],
            "partitionInfo": [{"rowCount": 2, "uncompressedSize": 10}, {"rowCount": 1}],
        }
    )
    assert [(column.name, column.type) for column in answer.columns(found)] == [("ID", "fixed")]
    assert answer.partition_rows(found) == [2, 1]
    assert answer.partition_rows(Metadata(rowType=[RowType(name="x", type="text")])) == [None]


def test_error_bodies_name_code_sql_state_and_message() -> None:
    envelope = answer.envelope(
        b'{"code": "002003", "sqlState": "42S02", "message": "SQL compilation error: Object does not exist"}'
    )
    assert envelope.code == "002003 (SQL state 42S02)"
    assert envelope.message == "SQL compilation error: Object does not exist"
    assert answer.envelope(b"<html>502</html>").code == ""


def test_a_partition_with_other_rows_than_partition_info_says_is_not_the_result() -> None:
    reader = answer.reader(WHERE, keep_rows=False)
    reader.feed(b'{"data": [["1"], ["2"]]}')
    reader.finish()
    assert answer.counted(reader, 2, 3) == 2
    assert answer.counted(reader, None, 3) == 2  # no partitionInfo: nothing to hold it to
    with pytest.raises(UpstreamProtocolError, match="partition 3 holds 2 rows where partitionInfo says 3"):
        answer.counted(reader, 3, 3)


def test_the_result_set_must_say_its_metadata_before_its_rows() -> None:
    reader = answer.result_reader(WHERE, keep_rows=True)
    with pytest.raises(UpstreamProtocolError, match="'data' arrived before 'resultSetMetaData'"):
        reader.feed(b'{"data": [["1"]], "resultSetMetaData": {"rowType": []}}')
