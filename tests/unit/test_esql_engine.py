"""The ES|QL emulator's engine: each command, expressions, errors, determinism and laziness."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from query_relay_local.emulators.esql_engine import DEFAULT_LIMIT, ScanStats, compile_query, truncate_date
from query_relay_local.emulators.esql_types import (
    EsqlError,
    ParsingError,
    Row,
    Value,
    VerificationError,
    format_date,
    parse_date,
)


def run(
    query: str,
    params: Sequence[Value] | Mapping[str, Value] | None = None,
    dsl_filter: Mapping[str, Any] | None = None,
) -> tuple[list[tuple[str, str]], list[Row]]:
    compiled = compile_query(query, params, dsl_filter)
    return [(column.name, column.type) for column in compiled.columns], list(compiled.execute())


def values(query: str, params: Sequence[Value] | Mapping[str, Value] | None = None) -> list[Row]:
    return run(query, params)[1]


def date(text: str) -> int:
    millis = parse_date(text)
    assert millis is not None
    return millis


# --- sources ---------------------------------------------------------------------------------


def test_from_lists_an_index_columns_alphabetically_with_es_types() -> None:
    columns, rows = run("FROM employees | LIMIT 1")

    assert columns == [
        ("birth_date", "date"),
        ("department", "keyword"),
        ("emp_no", "integer"),
        ("first_name", "keyword"),
        ("gender", "keyword"),
        ("hire_date", "date"),
        ("languages", "integer"),
        ("last_name", "keyword"),
        ("salary", "integer"),
        ("still_hired", "boolean"),
    ]
    assert rows[0][2] == 10001


def test_indices_have_their_documented_sizes_and_types() -> None:
    assert values("FROM employees | STATS COUNT(*)") == [(1_000,)]
    assert values("FROM web_logs | STATS COUNT(*)") == [(100_000,)]
    assert values("FROM synthetic_12345 | STATS COUNT(*)") == [(12_345,)]
    assert dict(run("FROM web_logs | LIMIT 0")[0]) == {
        "@timestamp": "date",
        "bytes": "long",
        "client_ip": "ip",
        "host": "keyword",
        "message": "text",
        "response_ms": "double",
        "status": "integer",
        "url": "keyword",
    }


def test_a_query_without_limit_gets_es_default_limit_of_1000() -> None:
    assert len(values("FROM web_logs")) == DEFAULT_LIMIT
    assert len(values("FROM web_logs | LIMIT 2500")) == 2500


def test_from_several_indices_unions_their_columns_and_rows() -> None:
    columns, rows = run("FROM employees, web_logs | STATS n = COUNT(*), e = COUNT(emp_no), s = COUNT(status)")

    assert columns == [("n", "long"), ("e", "long"), ("s", "long")]
    assert rows == [(101_000, 1_000, 100_000)]


def test_from_wildcard_matches_the_fixed_indices() -> None:
    assert values("FROM web_* | STATS COUNT(*)") == [(100_000,)]
    assert values("FROM * | STATS COUNT(*)") == [(101_000,)]


def test_row_builds_one_row_from_literals() -> None:
    columns, rows = run('ROW a = 1, b = "x", c = 2.5, d = null, e = true, f = 3000000000')

    assert columns == [
        ("a", "integer"),
        ("b", "keyword"),
        ("c", "double"),
        ("d", "null"),
        ("e", "boolean"),
        ("f", "long"),
    ]
    assert rows == [(1, "x", 2.5, None, True, 3_000_000_000)]


# --- determinism and laziness ----------------------------------------------------------------


def _digest(query: str) -> str:
    rows = values(query)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def test_generated_data_is_the_same_on_every_run() -> None:
    # Pinned digests: the generated rows must not drift between runs, machines or versions,
    # since other tests and benchmarks depend on them. Change only on purpose.
    assert _digest("FROM employees | LIMIT 1000") == _digest("FROM employees | LIMIT 1000")
    assert {
        "employees": _digest("FROM employees | LIMIT 1000"),
        "web_logs": _digest("FROM web_logs | LIMIT 5000"),
        "synthetic": _digest("FROM synthetic_1000 | LIMIT 1000"),
    } == PINNED_DIGESTS


PINNED_DIGESTS = {
    "employees": "83e0abc537c29bcb",
    "web_logs": "9baea2e282e2b260",
    "synthetic": "fd6409faaa0d7aed",
}


def test_a_huge_synthetic_index_yields_its_first_row_without_reading_the_rest() -> None:
    rows = compile_query("FROM synthetic_999999999999 | WHERE id >= 0 | EVAL x = id + 1 | LIMIT 999999999999")

    first = next(rows.execute())

    assert first[4] == 0


def test_a_million_rows_stream_through_in_constant_memory() -> None:
    compiled = compile_query(
        "FROM synthetic_1000000 | WHERE count >= 0 | EVAL twice = value * 2 | KEEP id, twice | LIMIT 1000000"
    )
    stats = ScanStats()
    baseline = sys.getallocatedblocks()
    growth = 0
    count = 0

    for count, _row in enumerate(compiled.execute(stats), start=1):
        if count % 50_000 == 0:
            growth = max(growth, sys.getallocatedblocks() - baseline)

    assert count == 1_000_000
    assert stats.documents_found == 1_000_000
    assert growth < 20_000  # holding the rows would take millions of blocks


# --- WHERE -----------------------------------------------------------------------------------


def test_where_compares_and_combines_with_and_or_not() -> None:
    rows = values(
        "FROM employees | WHERE (salary >= 70000 AND NOT still_hired) OR emp_no == 10001 "
        "| KEEP emp_no, salary, still_hired | LIMIT 1000"
    )

    assert rows
    assert all(
        emp_no == 10001 or (isinstance(salary, int) and salary >= 70000 and not hired)
        for emp_no, salary, hired in rows
    )
    assert any(emp_no == 10001 for emp_no, _, _ in rows)


def test_where_is_null_and_is_not_null() -> None:
    nulls = values("FROM employees | WHERE gender IS NULL | KEEP gender | LIMIT 1000")
    non_nulls = values("FROM employees | WHERE gender IS NOT NULL | KEEP gender | LIMIT 1000")

    assert nulls
    assert all(row == (None,) for row in nulls)
    assert len(nulls) + len(non_nulls) == 1000


def test_comparisons_with_null_filter_the_row_out() -> None:
    with_languages = values("FROM employees | WHERE languages > 0 OR languages <= 0 | STATS COUNT(*)")
    missing = values("FROM employees | WHERE languages IS NULL | STATS COUNT(*)")

    assert with_languages[0][0] + missing[0][0] == 1000  # type: ignore[operator]


def test_like_uses_star_and_question_mark_wildcards() -> None:
    names = {
        row[0] for row in values('FROM employees | WHERE first_name LIKE "G*" | KEEP first_name | LIMIT 1000')
    }
    four = {
        row[0] for row in values('FROM employees | WHERE last_name LIKE "Pe??" | KEEP last_name | LIMIT 1000')
    }
    not_g = values('FROM employees | WHERE first_name NOT LIKE "G*" | KEEP first_name | LIMIT 1000')

    assert names == {"Georgi", "Guoxiang"}
    assert four == {"Peac", "Peha"}
    assert not any(str(row[0]).startswith("G") for row in not_g)


def test_in_and_not_in() -> None:
    statuses = {
        row[0] for row in values("FROM web_logs | WHERE status IN (500, 503) | KEEP status | LIMIT 10000")
    }
    others = {
        row[0] for row in values("FROM web_logs | WHERE status NOT IN (200, 304) | KEEP status | LIMIT 10000")
    }

    assert statuses == {500, 503}
    assert others == {404, 500, 503}


def test_dates_and_ips_compare_with_string_literals() -> None:
    rows = values(
        'FROM web_logs | WHERE @timestamp >= "2024-01-02" AND @timestamp < "2024-01-02T01:00:00Z" '
        '| WHERE client_ip >= "10.3.0.0" | KEEP @timestamp, client_ip | LIMIT 10000'
    )

    assert rows
    for timestamp, ip in rows:
        assert date("2024-01-02") <= timestamp < date("2024-01-02T01:00:00Z")  # type: ignore[operator]
        assert str(ip).startswith("10.3.")


def test_positional_and_named_parameters() -> None:
    positional = values(
        "FROM employees | WHERE emp_no == ? OR emp_no == ?2 | KEEP emp_no | SORT emp_no", [10002, 10003]
    )
    named = values(
        "FROM employees | WHERE first_name == ?name AND salary > ?floor | STATS COUNT(*)",
        {"name": "Georgi", "floor": 0},
    )

    assert positional == [(10002,), (10003,)]
    assert isinstance(named[0][0], int)
    assert named[0][0] > 0


# --- EVAL ------------------------------------------------------------------------------------


def test_eval_arithmetic_follows_es_types_and_null_rules() -> None:
    columns, rows = run(
        "ROW a = 7, b = 2, c = 2.0 | EVAL i = a / b, m = -7 % 3, d = a / c, z = a / 0, l = a * 3000000000"
    )

    assert columns[3:] == [
        ("i", "integer"),
        ("m", "integer"),
        ("d", "double"),
        ("z", "integer"),
        ("l", "long"),
    ]
    assert rows[0][3:] == (3, -1, 3.5, None, 21_000_000_000)


def test_eval_functions() -> None:
    rows = values(
        'ROW s = "MiXed", n = 2.345, h = 25, t = "2024-05-17T13:45:12.345Z" '
        '| EVAL up = TO_UPPER(s), low = TO_LOWER(s), len = LENGTH(s), cat = CONCAT(s, "-", low), '
        "r = ROUND(n, 2), r0 = ROUND(n), rn = ROUND(h, -1), rneg = ROUND(-2.5) "
        "| KEEP up, low, len, cat, r, r0, rn, rneg"
    )

    assert rows == [("MIXED", "mixed", 5, "MiXed-mixed", 2.35, 2.0, 30, -3.0)]


def test_eval_adds_columns_at_the_end_and_replaces_same_names() -> None:
    columns, rows = run("ROW a = 1, b = 2 | EVAL a = a + 10, c = a * 2")

    assert [name for name, _ in columns] == ["b", "a", "c"]
    assert rows == [(2, 11, 22)]


def test_unaliased_expressions_are_named_by_their_text() -> None:
    columns, _ = run("FROM employees | EVAL salary * 2 | STATS COUNT(*), MAX(salary * 2) | LIMIT 1")

    assert columns == [("COUNT(*)", "long"), ("MAX(salary * 2)", "integer")]


@pytest.mark.parametrize(
    ("span", "expected"),
    [
        ("1 hour", "2024-05-17T13:00:00.000Z"),
        ("1 day", "2024-05-17T00:00:00.000Z"),
        ("1 week", "2024-05-13T00:00:00.000Z"),
        ("1 month", "2024-05-01T00:00:00.000Z"),
        ("1 quarter", "2024-04-01T00:00:00.000Z"),
        ("1 year", "2024-01-01T00:00:00.000Z"),
        ("15 minutes", "2024-05-17T13:45:00.000Z"),
    ],
)
def test_date_trunc(span: str, expected: str) -> None:
    rows = values(f'ROW t = DATE_TRUNC({span}, "2024-05-17T13:45:12.345Z")')

    assert format_date(rows[0][0]) == expected  # type: ignore[arg-type]


def test_date_trunc_handles_dates_before_1970() -> None:
    assert format_date(truncate_date(date("1952-07-15T10:00:00Z"), 1, "y")) == "1952-01-01T00:00:00.000Z"
    assert format_date(truncate_date(date("1969-12-31T23:30:00Z"), 1, "h")) == "1969-12-31T23:00:00.000Z"


# --- STATS -----------------------------------------------------------------------------------


def test_stats_aggregates_by_groups_with_es_result_types() -> None:
    columns, rows = run(
        "FROM employees | STATS n = COUNT(*), langs = COUNT(languages), total = SUM(salary), "
        "avg = AVG(salary), low = MIN(salary), high = MAX(hire_date), names = COUNT_DISTINCT(first_name) "
        "BY department | SORT department"
    )

    assert columns == [
        ("n", "long"),
        ("langs", "long"),
        ("total", "long"),
        ("avg", "double"),
        ("low", "integer"),
        ("high", "date"),
        ("names", "long"),
        ("department", "keyword"),
    ]
    assert len(rows) == 8
    assert sum(row[0] for row in rows) == 1000  # type: ignore[misc]
    for n, langs, total, avg, low, _, names, _ in rows:
        assert langs <= n  # type: ignore[operator]
        assert avg == pytest.approx(total / n)  # type: ignore[operator]
        assert 25_000 <= low < 75_000  # type: ignore[operator]
        assert 1 <= names <= 40  # type: ignore[operator]


def test_stats_by_several_groups_includes_null_groups() -> None:
    rows = values("FROM employees | STATS n = COUNT(*) BY gender, still_hired | SORT gender, still_hired")

    assert (None, False) in [(gender, hired) for _, gender, hired in rows]
    assert sum(row[0] for row in rows) == 1000  # type: ignore[misc]


def test_stats_computes_expressions_over_aggregates() -> None:
    rows = values("FROM employees | STATS mean = SUM(salary) / COUNT(*), avg = AVG(salary)")

    mean, avg = rows[0]
    assert mean == int(avg)  # type: ignore[arg-type]


def test_stats_without_groups_on_no_rows_gives_one_row() -> None:
    assert values(
        "FROM employees | WHERE salary < 0 | STATS n = COUNT(*), s = SUM(salary), m = MAX(salary)"
    ) == [(0, None, None)]
    assert values("FROM employees | WHERE salary < 0 | STATS n = COUNT(*) BY department") == []


def test_stats_by_date_trunc_expression() -> None:
    columns, rows = run(
        "FROM web_logs | STATS hits = COUNT(*) BY day = DATE_TRUNC(1 day, @timestamp) | SORT day"
    )

    assert columns == [("hits", "long"), ("day", "date")]
    assert format_date(rows[0][1]) == "2024-01-01T00:00:00.000Z"  # type: ignore[arg-type]
    assert sum(row[0] for row in rows) == 100_000  # type: ignore[misc]


# --- SORT, KEEP, DROP, RENAME, LIMIT ---------------------------------------------------------


def test_sort_orders_with_nulls_last_ascending_and_first_descending() -> None:
    ascending = values("FROM employees | SORT languages, emp_no | KEEP languages | LIMIT 1000")
    descending = values("FROM employees | SORT languages DESC | KEEP languages | LIMIT 1000")
    nulls_first = values("FROM employees | SORT languages ASC NULLS FIRST | KEEP languages | LIMIT 1")

    assert ascending[0] == (1,)
    assert ascending[-1] == (None,)
    assert descending[0] == (None,)
    assert nulls_first == [(None,)]
    known = [row[0] for row in ascending if row[0] is not None]
    assert known == sorted(known)


def test_sort_by_several_keys_then_limit_keeps_the_top_rows() -> None:
    top = values("FROM employees | SORT department DESC, salary DESC | KEEP department, salary | LIMIT 3")
    everything = values(
        "FROM employees | SORT department DESC, salary DESC | KEEP department, salary | LIMIT 1000"
    )

    assert top == everything[:3]
    assert top[0][0] == "Support"


def test_keep_with_wildcards_and_exact_names_taking_precedence() -> None:
    columns, _ = run("FROM employees | KEEP *name, emp_no | LIMIT 1")
    reordered, _ = run("FROM employees | KEEP *, emp_no | LIMIT 1")

    assert [name for name, _ in columns] == ["first_name", "last_name", "emp_no"]
    assert [name for name, _ in reordered][-1] == "emp_no"
    assert len(reordered) == 10


def test_drop_and_rename() -> None:
    columns, rows = run(
        "FROM employees | DROP *_date, still_hired | RENAME emp_no AS id, gender AS g | LIMIT 1"
    )
    new_style, _ = run("FROM employees | RENAME id = emp_no | KEEP id | LIMIT 1")

    assert [name for name, _ in columns] == [
        "department",
        "id",
        "first_name",
        "g",
        "languages",
        "last_name",
        "salary",
    ]
    assert rows[0][1] == 10001
    assert new_style == [("id", "integer")]


def test_limit_applies_where_it_stands() -> None:
    assert len(values("FROM web_logs | LIMIT 5 | STATS n = COUNT(*)")) == 1
    assert values("FROM web_logs | LIMIT 5 | STATS n = COUNT(*)") == [(5,)]


def test_comments_and_triple_quoted_strings() -> None:
    rows = values('ROW a = """say "hi\\" """ // a comment\n /* block */ | KEEP a')

    assert rows == [('say "hi\\" ',)]


# --- Query DSL filter ------------------------------------------------------------------------


def test_dsl_filter_applies_before_the_query() -> None:
    dsl = {
        "bool": {
            "filter": [{"term": {"department": "Sales"}}, {"range": {"salary": {"gte": 50000, "lt": 60000}}}]
        }
    }

    _, rows = run("FROM employees | KEEP department, salary | LIMIT 1000", dsl_filter=dsl)

    assert rows
    assert all(dept == "Sales" and 50_000 <= salary < 60_000 for dept, salary in rows)  # type: ignore[operator]


def test_dsl_filter_on_dates_match_all_and_must_not() -> None:
    day = {"range": {"@timestamp": {"gte": "2024-01-03", "lt": "2024-01-04"}}}
    not_ok = {"bool": {"must": [{"match_all": {}}], "must_not": [{"term": {"status": 200}}]}}

    _, in_day = run("FROM web_logs | STATS n = COUNT(*)", dsl_filter=day)
    _, errors = run("FROM web_logs | STATS n = COUNT(*) BY status", dsl_filter=not_ok)

    assert in_day == [(3456,)]
    assert 200 not in {status for _, status in errors}


def test_dsl_filter_with_an_unknown_query_type_is_a_parsing_exception() -> None:
    with pytest.raises(EsqlError) as raised:
        compile_query("FROM employees", dsl_filter={"fuzzy_magic": {}})

    assert (raised.value.status, raised.value.error_type) == (400, "parsing_exception")
    assert raised.value.reason == "unknown query [fuzzy_magic]"


# --- errors ----------------------------------------------------------------------------------


EXPECTED_COMMANDS = "{'drop', 'eval', 'keep', 'limit', 'rename', 'sort', 'stats', 'where'}"


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("FROM employees | WHERE salary >", "line 1:32: mismatched input '<EOF>' expecting an expression"),
        ("FROM employees | FOO", f"line 1:18: mismatched input 'FOO' expecting {EXPECTED_COMMANDS}"),
        ("SELECT 1", "line 1:1: mismatched input 'SELECT' expecting {'from', 'row'}"),
        ("FROM employees\n| LIMIT x", "line 2:9: mismatched input 'x' expecting INTEGER_LITERAL"),
        ('ROW a = "open', "line 1:9: token recognition error at: '\"open'"),
        ("ROW a = 1 bananas", "line 1:9: Unexpected time interval qualifier: 'bananas'"),
        ("ROW a = ?", "line 1:9: Not enough actual parameters 0"),
    ],
)
def test_syntax_errors_are_parsing_exceptions_with_positions(query: str, reason: str) -> None:
    with pytest.raises(ParsingError) as raised:
        compile_query(query)

    assert raised.value.status == 400
    assert raised.value.error_type == "parsing_exception"
    assert raised.value.reason == reason


@pytest.mark.parametrize(
    ("query", "problems"),
    [
        ("FROM nope", ["line 1:6: Unknown index [nope]"]),
        ("FROM employees | KEEP nope", ["line 1:23: Unknown column [nope]"]),
        (
            "FROM employees | WHERE a > 1 AND b < 2",
            ["line 1:24: Unknown column [a]", "line 1:34: Unknown column [b]"],
        ),
        ("FROM employees | EVAL x = FROBNICATE(salary)", ["line 1:27: Unknown function [FROBNICATE]"]),
        ("FROM employees | DROP zz*", ["line 1:23: No matches found for pattern [zz*]"]),
        (
            'FROM employees | WHERE salary > "a lot"',
            [
                'line 1:24: first argument of [salary > "a lot"] is [integer] so second argument must '
                "also be [integer] but was [keyword]"
            ],
        ),
        (
            "FROM employees | EVAL c = COUNT(*)",
            ["line 1:27: aggregate function [COUNT(*)] not allowed outside STATS command"],
        ),
        (
            "FROM employees | WHERE salary",
            ["line 1:24: Condition expression needs to be boolean, found [INTEGER]"],
        ),
        (
            "FROM employees | STATS salary BY department",
            ["line 1:24: expected an aggregate function but found [salary]"],
        ),
    ],
)
def test_unknown_names_and_type_errors_are_verification_exceptions(query: str, problems: list[str]) -> None:
    with pytest.raises(VerificationError) as raised:
        compile_query(query)

    count = f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")
    assert raised.value.status == 400
    assert raised.value.error_type == "verification_exception"
    assert raised.value.reason == f"Found {count}\n" + "\n".join(problems)


def test_named_parameters_must_all_be_given() -> None:
    with pytest.raises(ParsingError) as raised:
        compile_query("FROM employees | WHERE emp_no == ?who", {"someone": 1})

    assert raised.value.reason == "line 1:34: Unknown query parameter [who]"
