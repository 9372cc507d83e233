"""The emulators' shared SQL warehouse: its tables, the SELECT subset, markers, conversions and the
errors it raises, and a property test: any statement either runs or raises SqlError."""

from __future__ import annotations

import datetime as dt
import math
import time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from query_relay_local.emulators.warehouse import (
    TABLES,
    WAREHOUSE_TYPES,
    LazyRows,
    SqlError,
    WColumn,
    execute,
    table,
)


def column_names(statement: str, params: Any = ()) -> list[str]:
    return [column.name for column in execute(statement, params).columns]


def rows_of(statement: str, params: Any = (), **kwargs: Any) -> list[list[Any]]:
    return list(execute(statement, params, **kwargs).rows)


def sql_state(statement: str, params: Any = ()) -> str:
    with pytest.raises(SqlError) as refused:
        execute(statement, params)
    return refused.value.sql_state


# --- the tables ------------------------------------------------------------------------------------


def test_employees_mix_types_with_a_null_salary_and_null_tags() -> None:
    result = table("employees")
    assert [(c.name, c.type) for c in result.columns] == [
        ("id", "integer"),
        ("name", "string"),
        ("department", "string"),
        ("salary", "decimal"),
        ("hired", "date"),
        ("active", "boolean"),
        ("updated_at", "timestamp_tz"),
        ("tags", "json"),
    ]
    assert result.columns[3] == WColumn("salary", "decimal", 10, 2)
    assert len(result.rows) == 36
    assert [row[0] for row in result.rows] == list(range(1, 37))
    salaries = [row[3] for row in result.rows]
    assert salaries.count(None) == 1
    assert all(s.as_tuple().exponent == -2 for s in salaries if s is not None)
    assert all(row[6].tzinfo is not None for row in result.rows)
    assert {row[6].utcoffset() for row in result.rows} >= {dt.timedelta(0), dt.timedelta(hours=-5)}
    assert [row[7] for row in result.rows].count(None) == 1


def test_all_types_has_a_column_of_every_type_and_a_row_of_nulls() -> None:
    result = table("all_types")
    assert [c.type for c in result.columns[1:]] == list(WAREHOUSE_TYPES)
    assert result.rows[-1][1:] == [None] * len(WAREHOUSE_TYPES)
    by_name = {c.name: [row[i] for row in result.rows] for i, c in enumerate(result.columns)}
    assert any(isinstance(v, Decimal) and v < 0 for v in by_name["c_decimal"])
    assert any(isinstance(v, float) and math.isinf(v) for v in by_name["c_double"])
    assert any(isinstance(v, float) and math.isnan(v) for v in by_name["c_double"])
    assert any(isinstance(v, str) and "日本語" in v for v in by_name["c_string"])
    assert b"\x00\x01\xfe\xff" in by_name["c_binary"]
    assert any(isinstance(v, dict) and isinstance(v.get("b"), list) for v in by_name["c_json"])
    assert any(v is not None and v.microsecond and v.tzinfo is None for v in by_name["c_timestamp"])
    assert any(v is not None and v.tzinfo is not None for v in by_name["c_timestamp_tz"])
    assert any(v is not None and v < dt.date(1970, 1, 1) for v in by_name["c_date"])


def test_numbers_are_computed_when_read_so_millions_cost_nothing() -> None:
    started = time.monotonic()
    result = execute("SELECT * FROM numbers", numbers_rows=2_000_000)
    assert len(result.rows) == 2_000_000
    assert result.rows[-1] == [2_000_000, 4_000_000_000_000, "number 2000000", 2_000_000 / 7]
    assert result.rows[:3][2] == [3, 9, "number 0000003", 3 / 7]
    assert [row[0] for row in result.rows[10:20:5]] == [11, 16]
    assert time.monotonic() - started < 1.0
    assert len(table("numbers").rows) == 100_000
    with pytest.raises(IndexError):
        result.rows[2_000_000]


def test_the_tables_are_the_same_on_every_call_and_a_caller_cannot_change_them() -> None:
    first = table("employees")
    first.rows[0][1] = "changed"
    first.rows[0][7]["level"] = 99
    again = table("employees")
    assert again.rows[0][1] != "changed"
    assert again.rows[0][7]["level"] != 99
    assert rows_of("SELECT * FROM all_types")[:3] == list(table("all_types").rows)[:3]


def test_lazy_rows_behave_as_a_sequence() -> None:
    rows = LazyRows(5, lambda i: [i])
    assert list(rows) == [[0], [1], [2], [3], [4]]
    assert rows[-1] == [4]
    assert list(rows[1:4]) == [[1], [2], [3]]
    assert list(rows[::-2]) == [[4], [2], [0]]
    assert len(rows[10:]) == 0
    assert [3] in rows


# --- SELECT ------------------------------------------------------------------------------------------


def test_values_with_aliases_are_typed_from_the_value() -> None:
    result = execute("SELECT 1 AS one, -1.50 AS price, 1e3 AS big, 'it''s' AS s, TRUE AS t, NULL AS n")
    assert list(result.rows) == [[1, Decimal("-1.50"), 1000.0, "it's", True, None]]
    assert result.columns == [
        WColumn("one", "integer", nullable=False),
        WColumn("price", "decimal", 3, 2, nullable=False),
        WColumn("big", "double", nullable=False),
        WColumn("s", "string", nullable=False),
        WColumn("t", "boolean", nullable=False),
        WColumn("n", "string", nullable=True),
    ]


def test_a_value_without_alias_is_named_by_its_text() -> None:
    assert column_names("select 42, 'x', ?", [1]) == ["42", "'x'", "?"]


def test_positional_markers_bind_a_sequence_in_order() -> None:
    moment = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    result = execute("SELECT ? AS a, ? AS b, ? AS c", [7, moment, b"\x01"])
    assert list(result.rows) == [[7, moment, b"\x01"]]
    assert [c.type for c in result.columns] == ["integer", "timestamp_tz", "binary"]


def test_named_markers_bind_a_mapping() -> None:
    result = execute("SELECT :name AS b, :when AS w", {"name": "x", "when": dt.date(2024, 1, 2)})
    assert list(result.rows) == [["x", dt.date(2024, 1, 2)]]
    assert [c.type for c in result.columns] == ["string", "date"]


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (1, "integer"),
        (Decimal("12.345"), "decimal"),
        (1.5, "double"),
        ("s", "string"),
        (False, "boolean"),
        (dt.date(2024, 1, 1), "date"),
        (dt.time(1, 2, 3), "time"),
        (dt.datetime(2024, 1, 1), "timestamp"),
        (dt.datetime(2024, 1, 1, tzinfo=dt.UTC), "timestamp_tz"),
        (b"x", "binary"),
        ({"a": [1]}, "json"),
        ([1, 2], "json"),
    ],
)
def test_every_python_value_has_its_warehouse_type(value: Any, kind: str) -> None:
    assert execute("SELECT ? AS v", [value]).columns[0].type == kind


def test_a_decimal_parameter_keeps_its_precision_and_scale() -> None:
    assert execute("SELECT ? AS d", [Decimal("-123.4500")]).columns[0] == WColumn(
        "d", "decimal", 7, 4, nullable=False
    )


def test_columns_keep_their_names_and_aliases_are_kept_as_written() -> None:
    assert column_names("SELECT ID, name AS Who FROM Employees LIMIT 1") == ["id", "Who"]
    assert column_names("SELECT *, 1 AS one FROM numbers LIMIT 1") == ["n", "square", "label", "ratio", "one"]


def test_keywords_are_case_insensitive_and_a_trailing_semicolon_is_fine() -> None:
    assert rows_of("select n from NUMBERS where N <= 2 order by n desc limit 5;") == [[2], [1]]


@pytest.mark.parametrize(
    ("where", "ids"),
    [
        ("id = 3", [3]),
        ("id != 3", [1, 2, 4, 5]),
        ("id <> 3", [1, 2, 4, 5]),
        ("id < 3", [1, 2]),
        ("id <= 3", [1, 2, 3]),
        ("id > 3", [4, 5]),
        ("id >= 3", [3, 4, 5]),
    ],
)
def test_comparisons(where: str, ids: list[int]) -> None:
    assert [row[0] for row in rows_of(f"SELECT id FROM all_types WHERE {where}")] == ids


def test_null_never_compares_true_but_is_null_finds_it() -> None:
    assert rows_of("SELECT id FROM all_types WHERE c_integer = NULL") == []
    assert rows_of("SELECT id FROM all_types WHERE c_integer != 0") == [[1], [2], [3]]
    assert rows_of("SELECT id FROM all_types WHERE c_time IS NULL") == [[4], [5]]
    assert rows_of("SELECT id FROM all_types WHERE c_time is not null") == [[1], [2], [3]]


@pytest.mark.parametrize(
    ("where", "params", "ids"),
    [
        ("c_date < ?", ["1970-01-01"], [2]),
        ("c_date = ?", [dt.date(2024, 5, 6)], [1]),
        ("c_decimal > ?", ["0"], [1, 3]),
        ("c_decimal > ?", [0.5], [1]),
        ("c_double > ?", [Decimal("1")], [1, 3]),
        ("c_boolean = ?", ["TRUE"], [1, 3]),
        ("c_timestamp < ?", ["1970-01-01T00:00:00"], [2]),
        ("c_timestamp_tz = ?", ["2024-05-06T10:34:56.5+00:00"], [1]),
        ("c_timestamp_tz > ?", [dt.datetime(2024, 1, 1)], [1, 3]),
        ("c_time > ?", ["12:00"], [1, 3]),
        ("c_binary = ?", ["0001feff"], [1]),
        ("c_json = ?", [{}], [4]),
        ("c_string = ?", [""], [4]),
    ],
)
def test_a_value_is_converted_to_the_columns_type(where: str, params: list[Any], ids: list[int]) -> None:
    assert [row[0] for row in rows_of(f"SELECT id FROM all_types WHERE {where}", params)] == ids


def test_order_by_puts_nulls_last_ascending_and_first_descending() -> None:
    ascending = rows_of("SELECT id, c_integer FROM all_types ORDER BY c_integer")
    descending = rows_of("SELECT id FROM all_types ORDER BY c_integer DESC")
    assert [row[0] for row in ascending] == [2, 4, 1, 3, 5]
    assert [row[0] for row in descending] == [5, 3, 1, 4, 2]


def test_order_by_takes_an_alias_an_unselected_column_or_an_ordinal() -> None:
    by_alias = rows_of(
        "SELECT salary AS pay FROM employees WHERE salary IS NOT NULL ORDER BY pay DESC LIMIT 2"
    )
    by_column = rows_of("SELECT id FROM employees ORDER BY salary DESC LIMIT 2")
    by_ordinal = rows_of("SELECT id, salary FROM employees WHERE salary IS NOT NULL ORDER BY 2 ASC LIMIT 1")
    by_star_ordinal = rows_of("SELECT * FROM numbers ORDER BY 1 DESC LIMIT 1", numbers_rows=10)
    assert by_alias[0][0] >= by_alias[1][0]
    assert by_column[0] == [7]  # the NULL salary comes first, descending
    assert by_ordinal[0][1] == min(row[3] for row in table("employees").rows if row[3] is not None)
    assert by_star_ordinal == [[10, 100, "number 0000010", 10 / 7]]


def test_limit_cuts_and_limit_zero_gives_no_rows_but_the_columns() -> None:
    assert len(rows_of("SELECT * FROM employees LIMIT 4")) == 4
    empty = execute("SELECT id FROM employees LIMIT 0")
    assert list(empty.rows) == []
    assert [c.name for c in empty.columns] == ["id"]


def test_a_statement_without_from_gives_one_row() -> None:
    assert rows_of("SELECT 1 AS one ORDER BY one LIMIT 3") == [[1]]


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "params", "state"),
    [
        ("", (), "42000"),
        ("SELEC 1", (), "42000"),
        ("SELECT", (), "42000"),
        ("SELECT 1,", (), "42000"),
        ("SELECT 'unterminated", (), "42000"),
        ("SELECT 1 FROM", (), "42000"),
        ("SELECT # FROM employees", (), "42000"),
        ("SELECT * FROM employees WHERE", (), "42000"),
        ("SELECT * FROM employees WHERE id", (), "42000"),
        ("SELECT * FROM employees WHERE id = = 1", (), "42000"),
        ("SELECT * FROM employees LIMIT -1", (), "42000"),
        ("SELECT * FROM employees LIMIT 1.5", (), "42000"),
        ("SELECT * FROM employees ORDER BY 0", (), "42000"),
        ("SELECT * FROM employees ORDER BY 99", (), "42000"),
        ("SELECT * FROM employees ORDER BY tags", (), "42000"),
        ("SELECT * FROM employees WHERE tags > 1", (), "42000"),
        ("SELECT 1; SELECT 2", (), "42000"),
        ("SELECT *", (), "42000"),
        ("SELECT nope FROM employees", (), "42000"),
        ("SELECT id FROM employees WHERE nope = 1", (), "42000"),
        ("SELECT 1 WHERE id = 1", (), "42000"),
        ("SELECT * FROM nope", (), "42S02"),
        ("SELECT 1 FROM employees2", (), "42S02"),
        ("SELECT * FROM employees WHERE salary = 'lots'", (), "22018"),
        ("SELECT * FROM employees WHERE active = 3", (), "22018"),
        ("SELECT * FROM employees WHERE hired < 'yesterday'", (), "22018"),
        ("SELECT * FROM employees WHERE name = 1", (), "22018"),
        ("SELECT * FROM employees WHERE id = ?", [True], "22018"),
        ("SELECT ? AS v", [object()], "22018"),
        ("SELECT ? AS v", [10**40], "22018"),
        (f"SELECT {'9' * 50}", (), "22018"),
        ("SELECT ?, ?", [1], "07002"),
        ("SELECT :a", {"b": 1}, "07002"),
        ("SELECT :a", [1], "07002"),
        ("SELECT ?", {"a": 1}, "07002"),
    ],
)
def test_what_the_warehouse_refuses_has_a_sql_state(statement: str, params: Any, state: str) -> None:
    assert sql_state(statement, params) == state


def test_an_error_message_names_what_is_wrong() -> None:
    with pytest.raises(SqlError, match="NOPE"):
        execute("SELECT * FROM nope")
    with pytest.raises(SqlError, match="invalid identifier 'WHO'"):
        execute("SELECT who FROM employees")


def test_params_given_as_a_string_are_a_programming_error() -> None:
    with pytest.raises(TypeError):
        execute("SELECT ?", "abc")


# --- property: any statement runs or raises SqlError ---------------------------------------------------

_FRAGMENTS = [
    "SELECT", "FROM", "WHERE", "ORDER", "BY", "LIMIT", "AS", "ASC", "DESC", "IS", "NOT", "NULL", "TRUE",
    "FALSE", *TABLES, "nope", "*", ",", ";", "-", "=", "!=", "<>", "<", "<=", ">", ">=", "?", ":a", ":b",
    "id", "n", "salary", "tags", "c_json", "c_double", "c_timestamp_tz", "c_binary", "c_date", "label",
    "0", "1", "42", "-7", "1.50", "1e3", "1e999", "'x'", "'2024-01-01'", "''", "'it''s'", "'", "(", ")",
    "#", "::", "999999999999999999999999999999999999999",
]  # fmt: skip
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.floats(),
    st.text(max_size=8),
    st.dates(),
    st.times(),
    st.datetimes(timezones=st.none() | st.just(dt.UTC) | st.just(dt.timezone(dt.timedelta(hours=-5)))),
    st.binary(max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.lists(st.integers(), max_size=2),
    st.just(object()),
)
_STATEMENTS = st.one_of(
    st.lists(st.sampled_from(_FRAGMENTS), max_size=14).map(" ".join),
    st.builds(
        lambda items, source, where, order, limit: f"SELECT {items} {source} {where} {order} {limit}",
        st.lists(
            st.sampled_from(["*", "id", "n", "?", ":a", "1 AS one", "'s'", "c_json"]), min_size=1, max_size=3
        ).map(", ".join),
        st.sampled_from(["", *[f"FROM {name}" for name in TABLES], "FROM nope"]),
        st.sampled_from(
            [
                "",
                "WHERE id = ?",
                "WHERE n >= :a",
                "WHERE c_date < ?",
                "WHERE tags IS NULL",
                "WHERE c_double > ?",
            ]
        ),
        st.sampled_from(["", "ORDER BY 1", "ORDER BY id DESC", "ORDER BY c_json", "ORDER BY 9"]),
        st.sampled_from(["", "LIMIT 3", "LIMIT 0"]),
    ),
    st.text(max_size=30),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    statement=_STATEMENTS,
    params=st.one_of(st.lists(_VALUES, max_size=3), st.dictionaries(st.sampled_from(["a", "b"]), _VALUES)),
)
def test_any_statement_either_runs_or_raises_sql_error(statement: str, params: Any) -> None:
    refusal: SqlError | None = None
    try:
        result = execute(statement, params, numbers_rows=50)
    except SqlError as error:
        refusal = error
    if refusal is not None:
        assert refusal.sql_state in ("42000", "42S02", "22018", "07002")
        assert refusal.message
        return
    assert all(column.type in WAREHOUSE_TYPES for column in result.columns)
    for row in result.rows:  # reading the rows runs the comparisons and projections
        assert len(row) == len(result.columns)
