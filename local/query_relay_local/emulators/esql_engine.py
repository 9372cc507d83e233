"""The ES|QL emulator's engine: checks a parsed query against the indices and runs it lazily.

`compile_query(text, params, dsl_filter)` parses and verifies a query (raising `ParsingError`,
`VerificationError` or `EsqlError` worded like ES) and returns a `CompiledQuery` whose `execute()`
yields result rows. Running is lazy: FROM, WHERE, EVAL, KEEP, DROP, RENAME and LIMIT stream row by
row, so `FROM synthetic_5000000 | LIMIT 5000000` needs no memory; STATS and SORT hold what they
must (SORT followed by LIMIT keeps only the top N rows, as ES's TopN does). The data never
changes, so executing the same `CompiledQuery` twice yields the same rows (the HTTP layer relies
on this to re-read a stored result instead of keeping it).

ES behaviours kept: a query without LIMIT gets an implicit `LIMIT 1000` at its end (ES's default
`esql.query.result_truncation_default_size`); unlike ES, an explicit LIMIT is not capped at
10,000, so benchmarks can fetch very large results. Column types follow ES (COUNT and
COUNT_DISTINCT -> long, AVG -> double, SUM of integers -> long); null propagates through
operators and functions; division by zero gives null; SORT puts nulls last ascending and first
descending; unaliased EVAL/STATS columns are named by their source text (`COUNT(*)`).

Functions: ROUND, TO_UPPER, TO_LOWER, LENGTH, CONCAT, DATE_TRUNC; aggregates COUNT(*), COUNT,
COUNT_DISTINCT, SUM, AVG, MIN, MAX (also inside expressions: `STATS r = SUM(a) / COUNT(*)`).
"""

from __future__ import annotations

import fnmatch
import functools
import heapq
import ipaddress
import itertools
import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from . import esql_data
from .esql_parser import (
    Binary,
    Call,
    Drop,
    Eval,
    Expr,
    FieldRef,
    From,
    InList,
    IsNull,
    Keep,
    Like,
    Limit,
    Literal,
    NamePattern,
    Pos,
    Query,
    Rename,
    RowSource,
    Sort,
    Star,
    Stats,
    TimeSpan,
    Unary,
    Where,
    parse,
)
from .esql_types import (
    BOOLEAN,
    DATE,
    DOUBLE,
    INT_MAX,
    INT_MIN,
    INTEGER,
    IP,
    KEYWORD,
    LONG,
    LONG_MAX,
    LONG_MIN,
    MILLIS_PER_DAY,
    NULL,
    NUMERIC_TYPES,
    STRING_TYPES,
    TEXT,
    TIME_SPAN,
    UNSUPPORTED,
    Column,
    EsqlError,
    Problem,
    Row,
    Value,
    VerificationError,
    parse_date,
)

DEFAULT_LIMIT = 1000

RowFn = Callable[[Row], Value]
Stage = Callable[[Iterator[Row]], Iterator[Row]]


@dataclass
class ScanStats:
    """What a run read, for the response's `documents_found` / `values_loaded`."""

    columns_per_document: int = 0
    documents_found: int = 0

    @property
    def values_loaded(self) -> int:
        return self.documents_found * self.columns_per_document


@dataclass(frozen=True)
class CompiledQuery:
    columns: tuple[Column, ...]
    _source: Callable[[ScanStats], Iterator[Row]]
    _stages: tuple[Stage, ...]

    def execute(self, stats: ScanStats | None = None) -> Iterator[Row]:
        """A fresh, lazy run of the query; `stats` (when given) counts what it reads."""
        rows = self._source(stats if stats is not None else ScanStats())
        for stage in self._stages:
            rows = stage(rows)
        return rows


def compile_query(
    text: str,
    params: Sequence[Value] | Mapping[str, Value] | None = None,
    dsl_filter: Mapping[str, Any] | None = None,
) -> CompiledQuery:
    """Parse and verify `text` against the emulator's indices; `dsl_filter` is a Query DSL object."""
    query = parse(text, params)
    return _Planner(query, dsl_filter).plan()


# --- planning --------------------------------------------------------------------------------


class _Problems:
    def __init__(self) -> None:
        self.found: list[Problem] = []

    def add(self, pos: Pos, message: str) -> None:
        self.found.append(Problem(pos[0], pos[1], message))

    def raise_if_any(self) -> None:
        if self.found:
            raise VerificationError(self.found)


class _Planner:
    def __init__(self, query: Query, dsl_filter: Mapping[str, Any] | None) -> None:
        self._query = query
        self._dsl_filter = dsl_filter
        self._problems = _Problems()

    def plan(self) -> CompiledQuery:
        if isinstance(self._query.source, From):
            schema, source = self._from(self._query.source)
        else:
            schema, source = self._row(self._query.source)
        self._problems.raise_if_any()
        commands = list(self._query.commands)
        if not any(isinstance(command, Limit) for command in commands):
            commands.append(Limit(DEFAULT_LIMIT))
        stages: list[Stage] = []
        position = 0
        while position < len(commands):
            command = commands[position]
            following = commands[position + 1] if position + 1 < len(commands) else None
            if isinstance(command, Sort) and isinstance(following, Limit):
                schema, stage = self._sort(command, schema, top=following.count)
                position += 1  # the LIMIT is part of the top-N sort
            else:
                schema, stage = self._command(command, schema)
            self._problems.raise_if_any()
            stages.append(stage)
            position += 1
        return CompiledQuery(tuple(schema), source, tuple(stages))

    # -- sources --

    def _from(self, command: From) -> tuple[list[Column], Callable[[ScanStats], Iterator[Row]]]:
        indices: dict[str, esql_data.GeneratedIndex] = {}
        for pattern in command.sources:
            found = esql_data.indices_matching(pattern.text)
            if not found:
                self._problems.add(pattern.pos, f"Unknown index [{pattern.text}]")
            indices.update((index.name, index) for index in found)
        schema = _union_schema(list(indices.values()))
        readers = [
            (index, _remapping(index.columns, schema), _compile_dsl_filter(self._dsl_filter, index.columns))
            for index in indices.values()
        ]
        width = len(schema)

        def read(stats: ScanStats) -> Iterator[Row]:
            stats.columns_per_document = width
            for index, remap, predicate in readers:
                rows: Iterable[Row] = index.rows()
                if predicate is not None:
                    rows = filter(predicate, rows)
                if remap is not None:
                    rows = map(remap, rows)
                for row in rows:
                    stats.documents_found += 1
                    yield row

        return schema, read

    def _row(self, command: RowSource) -> tuple[list[Column], Callable[[ScanStats], Iterator[Row]]]:
        schema: list[Column] = []
        row: Row = ()
        for alias in command.fields:
            compiled = _ExpressionCompiler(schema, self._problems).compile(alias.expr)
            row, schema = _with_column(row, schema, alias.name, compiled.fn(row), compiled.type)
        result = row

        def read(_stats: ScanStats) -> Iterator[Row]:
            yield result

        return schema, read

    # -- processing commands --

    def _command(self, command: object, schema: list[Column]) -> tuple[list[Column], Stage]:
        if isinstance(command, Where):
            return schema, self._where(command, schema)
        if isinstance(command, Eval):
            return self._eval(command, schema)
        if isinstance(command, Stats):
            return self._stats(command, schema)
        if isinstance(command, Sort):
            return self._sort(command, schema, top=None)
        if isinstance(command, Keep):
            return self._project(schema, self._keep(command.patterns, schema))
        if isinstance(command, Drop):
            return self._project(schema, self._drop(command.patterns, schema))
        if isinstance(command, Rename):
            return self._rename(command, schema)
        if isinstance(command, Limit):
            count = command.count
            return schema, lambda rows: itertools.islice(rows, count)
        raise TypeError(f"unexpected command {command!r}")

    def _where(self, command: Where, schema: list[Column]) -> Stage:
        condition = _ExpressionCompiler(schema, self._problems).compile(command.condition)
        if condition.type not in (BOOLEAN, NULL):
            self._problems.add(
                command.condition.pos,
                f"Condition expression needs to be boolean, found [{condition.type.upper()}]",
            )
        predicate = condition.fn
        return lambda rows: (row for row in rows if predicate(row) is True)

    def _eval(self, command: Eval, schema: list[Column]) -> tuple[list[Column], Stage]:
        steps: list[Callable[[Row], Row]] = []
        for alias in command.fields:
            compiled = _ExpressionCompiler(schema, self._problems).compile(alias.expr)
            if compiled.type == TIME_SPAN:
                self._problems.add(
                    alias.expr.pos, f"time span [{alias.expr.text}] is only allowed in DATE_TRUNC"
                )
            steps.append(_appender(schema, alias.name, compiled.fn))
            schema = [column for column in schema if column.name != alias.name]
            schema.append(Column(alias.name, compiled.type))

        def run(rows: Iterator[Row]) -> Iterator[Row]:
            for row in rows:
                for step in steps:
                    row = step(row)  # noqa: PLW2901  (each step extends the row)
                yield row

        return schema, run

    def _stats(self, command: Stats, schema: list[Column]) -> tuple[list[Column], Stage]:
        group_compiler = _ExpressionCompiler(schema, self._problems)
        groups = [(alias.name, group_compiler.compile(alias.expr)) for alias in command.groups]
        slots = _AggregateSlots(schema, self._problems)
        outputs: list[tuple[str, _Compiled]] = []
        for alias in command.aggregates:
            before, problems_before = len(slots.specs), len(self._problems.found)
            outer = _ExpressionCompiler(
                [],
                self._problems,
                aggregates=slots,
                unknown_column="column [{name}] must appear in the "
                "STATS BY clause or be used in an aggregate function",
            ).compile(alias.expr)
            if len(slots.specs) == before and not isinstance(alias.expr, Literal):
                del self._problems.found[problems_before:]
                self._problems.add(
                    alias.expr.pos, f"expected an aggregate function but found [{alias.expr.text}]"
                )
            outputs.append((alias.name, outer))
        columns = [Column(name, compiled.type) for name, compiled in outputs]
        columns += [Column(name, compiled.type) for name, compiled in groups]
        kept = _last_occurrences([column.name for column in columns])
        specs = list(slots.specs)
        group_fns = [compiled.fn for _, compiled in groups]
        output_fns = [compiled.fn for _, compiled in outputs]

        def run(rows: Iterator[Row]) -> Iterator[Row]:
            table: dict[Row, list[_Accumulator]] = {}
            for row in rows:
                key = tuple(fn(row) for fn in group_fns)
                accumulators = table.get(key)
                if accumulators is None:
                    accumulators = table[key] = [spec.new() for spec in specs]
                for spec, accumulator in zip(specs, accumulators, strict=True):
                    accumulator.add(row if spec.argument is None else spec.argument(row))
            if not table and not group_fns:
                table[()] = [spec.new() for spec in specs]
            for key, accumulators in table.items():
                results = tuple(accumulator.result() for accumulator in accumulators)
                full = tuple(fn(results) for fn in output_fns) + key
                yield full if kept is None else tuple(full[i] for i in kept)

        return (columns if kept is None else [columns[i] for i in kept]), run

    def _sort(self, command: Sort, schema: list[Column], *, top: int | None) -> tuple[list[Column], Stage]:
        compiler = _ExpressionCompiler(schema, self._problems)
        keys: list[tuple[Callable[[Row], Any], bool, bool]] = []
        for key in command.keys:
            compiled = compiler.compile(key.expr)
            fn: Callable[[Row], Any] = compiled.fn
            if compiled.type == IP:
                fn = _ip_sort_key(compiled.fn)
            keys.append((fn, key.descending, key.nulls_first))
        by_keys = functools.cmp_to_key(_row_comparator([(desc, nulls) for _, desc, nulls in keys]))
        key_fns = [fn for fn, _, _ in keys]

        def run(rows: Iterator[Row]) -> Iterator[Row]:
            decorated = ((tuple(fn(row) for fn in key_fns), row) for row in rows)
            ordered = (
                sorted(decorated, key=lambda pair: by_keys(pair[0]))
                if top is None
                else heapq.nsmallest(top, decorated, key=lambda pair: by_keys(pair[0]))
            )
            return (row for _, row in ordered)

        return schema, run

    def _keep(self, patterns: Sequence[NamePattern], schema: list[Column]) -> list[int]:
        names = [column.name for column in schema]
        exact = {pattern.text for pattern in patterns if "*" not in pattern.text}
        chosen: list[int] = []
        for pattern in patterns:
            if "*" in pattern.text:
                matches = [i for i, name in enumerate(names) if fnmatch.fnmatchcase(name, pattern.text)]
                if not matches:
                    self._problems.add(pattern.pos, f"No matches found for pattern [{pattern.text}]")
                # A column named exactly elsewhere in the list takes that position (ES precedence).
                chosen += [i for i in matches if names[i] not in exact and i not in chosen]
            elif pattern.text in names:
                index = names.index(pattern.text)
                if index not in chosen:
                    chosen.append(index)
            else:
                self._problems.add(pattern.pos, f"Unknown column [{pattern.text}]")
        return chosen

    def _drop(self, patterns: Sequence[NamePattern], schema: list[Column]) -> list[int]:
        names = [column.name for column in schema]
        dropped: set[int] = set()
        for pattern in patterns:
            matches = {i for i, name in enumerate(names) if fnmatch.fnmatchcase(name, pattern.text)}
            if not matches:
                message = "No matches found for pattern" if "*" in pattern.text else "Unknown column"
                self._problems.add(pattern.pos, f"{message} [{pattern.text}]")
            dropped |= matches
        return [i for i in range(len(names)) if i not in dropped]

    def _rename(self, command: Rename, schema: list[Column]) -> tuple[list[Column], Stage]:
        columns = list(schema)
        for old, new in command.pairs:
            names = [column.name for column in columns]
            if old.text not in names:
                self._problems.add(old.pos, f"Unknown column [{old.text}]")
                continue
            index = names.index(old.text)
            columns[index] = Column(new, columns[index].type)
        kept = _last_occurrences([column.name for column in columns])
        if kept is None:
            return columns, lambda rows: rows
        return [columns[i] for i in kept], _projection(kept)

    @staticmethod
    def _project(schema: list[Column], indices: list[int]) -> tuple[list[Column], Stage]:
        if indices == list(range(len(schema))):
            return schema, lambda rows: rows
        return [schema[i] for i in indices], _projection(indices)


def _union_schema(indices: Sequence[esql_data.GeneratedIndex]) -> list[Column]:
    types: dict[str, str] = {}
    for index in indices:
        for column in index.columns:
            known = types.setdefault(column.name, column.type)
            if known != column.type:
                types[column.name] = UNSUPPORTED
    return [Column(name, types[name]) for name in sorted(types)]


def _remapping(columns: Sequence[Column], schema: Sequence[Column]) -> Callable[[Row], Row] | None:
    if [column.name for column in columns] == [column.name for column in schema] and all(
        column.type != UNSUPPORTED for column in schema
    ):
        return None
    positions = {column.name: i for i, column in enumerate(columns)}
    picks = [None if column.type == UNSUPPORTED else positions.get(column.name) for column in schema]
    return lambda row: tuple(None if i is None else row[i] for i in picks)


def _projection(indices: Sequence[int]) -> Stage:
    if len(indices) == 1:
        only = indices[0]
        return lambda rows: ((row[only],) for row in rows)
    pick = operator.itemgetter(*indices) if indices else (lambda _row: ())
    return lambda rows: map(pick, rows)


def _last_occurrences(names: Sequence[str]) -> list[int] | None:
    """Indices to keep when later columns shadow earlier ones of the same name (None: all)."""
    if len(set(names)) == len(names):
        return None
    last = {name: i for i, name in enumerate(names)}
    return [i for i, name in enumerate(names) if last[name] == i]


def _appender(schema: Sequence[Column], name: str, fn: RowFn) -> Callable[[Row], Row]:
    names = [column.name for column in schema]
    if name not in names:
        return lambda row: (*row, fn(row))
    keep = [i for i, existing in enumerate(names) if existing != name]
    return lambda row: (*(row[i] for i in keep), fn(row))


def _with_column(
    row: Row, schema: list[Column], name: str, value: Value, type_: str
) -> tuple[Row, list[Column]]:
    keep = [i for i, column in enumerate(schema) if column.name != name]
    return (*(row[i] for i in keep), value), [*(schema[i] for i in keep), Column(name, type_)]


def _row_comparator(directions: Sequence[tuple[bool, bool]]) -> Callable[[Row, Row], int]:
    def compare(left: Row, right: Row) -> int:
        for (descending, nulls_first), a, b in zip(directions, left, right, strict=True):
            if a is None or b is None:
                if a is None and b is None:
                    continue
                if a is None:
                    return -1 if nulls_first else 1
                return 1 if nulls_first else -1
            if a == b:
                continue
            order = -1 if a < b else 1  # type: ignore[operator]
            return -order if descending else order
        return 0

    return compare


# --- expressions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Compiled:
    fn: RowFn
    type: str
    constant: bool = False
    span: tuple[int, str] | None = None


def _constant(value: Value, type_: str) -> _Compiled:
    return _Compiled(lambda _row: value, type_, constant=True)


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_ARITHMETIC = frozenset("+-*/%")
AGGREGATES = frozenset({"COUNT", "COUNT_DISTINCT", "SUM", "AVG", "MIN", "MAX"})


class _ExpressionCompiler:
    """Turns an expression into a function of a row (positions taken from `schema`).

    Problems (unknown columns, type mismatches) are recorded and compiling goes on with a null
    stand-in, so one run reports every problem of a command, as ES does.
    """

    def __init__(
        self,
        schema: Sequence[Column],
        problems: _Problems,
        *,
        aggregates: _AggregateSlots | None = None,
        unknown_column: str = "Unknown column [{name}]",
    ) -> None:
        self._positions = {column.name: (i, column.type) for i, column in enumerate(schema)}
        self._problems = problems
        self._aggregates = aggregates
        self._unknown_column = unknown_column

    def compile(self, expr: Expr) -> _Compiled:
        if isinstance(expr, Literal):
            return _constant(expr.value, expr.type)
        if isinstance(expr, TimeSpan):
            return _Compiled(lambda _row: None, TIME_SPAN, constant=True, span=(expr.amount, expr.unit))
        if isinstance(expr, FieldRef):
            return self._field(expr)
        if isinstance(expr, Star):
            return self._problem(expr, "* is only allowed in COUNT(*)")
        if isinstance(expr, Unary):
            return self._unary(expr)
        if isinstance(expr, Binary):
            if expr.op in ("AND", "OR"):
                return self._logical(expr)
            if expr.op in _ARITHMETIC:
                return self._arithmetic(expr)
            return self._comparison(expr)
        if isinstance(expr, IsNull):
            operand = self.compile(expr.operand).fn
            if expr.negated:
                return _Compiled(lambda row: operand(row) is not None, BOOLEAN)
            return _Compiled(lambda row: operand(row) is None, BOOLEAN)
        if isinstance(expr, Like):
            return self._like(expr)
        if isinstance(expr, InList):
            return self._in(expr)
        if isinstance(expr, Call):
            return self._call(expr)
        raise TypeError(f"unexpected expression {expr!r}")

    def _problem(self, expr: Expr, message: str) -> _Compiled:
        self._problems.add(expr.pos, message)
        return _constant(None, NULL)

    def _field(self, expr: FieldRef) -> _Compiled:
        found = self._positions.get(expr.name)
        if found is None:
            return self._problem(expr, self._unknown_column.format(name=expr.name))
        position, type_ = found
        return _Compiled(operator.itemgetter(position), type_)

    def _unary(self, expr: Unary) -> _Compiled:
        operand = self.compile(expr.operand)
        fn = operand.fn
        if expr.op == "NOT":
            if operand.type not in (BOOLEAN, NULL):
                return self._argument_type_problem(expr, expr.operand, operand.type, "boolean")
            return _Compiled(lambda row: None if (value := fn(row)) is None else not value, BOOLEAN)
        if operand.type not in NUMERIC_TYPES | {NULL}:
            return self._argument_type_problem(expr, expr.operand, operand.type, "numeric")
        return _Compiled(lambda row: None if (value := fn(row)) is None else -value, operand.type)  # type: ignore[operator]

    def _argument_type_problem(self, expr: Expr, argument: Expr, found: str, wanted: str) -> _Compiled:
        return self._problem(
            expr,
            f"argument of [{expr.text}] must be [{wanted}], found value [{argument.text}] type [{found}]",
        )

    def _logical(self, expr: Binary) -> _Compiled:
        left, right = self.compile(expr.left), self.compile(expr.right)
        for operand, compiled in ((expr.left, left), (expr.right, right)):
            if compiled.type not in (BOOLEAN, NULL):
                return self._argument_type_problem(expr, operand, compiled.type, "boolean")
        lf, rf = left.fn, right.fn
        if expr.op == "AND":

            def both(row: Row) -> Value:
                a = lf(row)
                if a is False:
                    return False
                b = rf(row)
                if b is False:
                    return False
                return None if a is None or b is None else True

            return _Compiled(both, BOOLEAN)

        def either(row: Row) -> Value:
            a = lf(row)
            if a is True:
                return True
            b = rf(row)
            if b is True:
                return True
            return None if a is None or b is None else False

        return _Compiled(either, BOOLEAN)

    def _arithmetic(self, expr: Binary) -> _Compiled:
        left, right = self.compile(expr.left), self.compile(expr.right)
        for operand, compiled in ((expr.left, left), (expr.right, right)):
            if compiled.type not in NUMERIC_TYPES | {NULL}:
                return self._argument_type_problem(expr, operand, compiled.type, "numeric")
        result_type = _numeric_result_type(left.type, right.type)
        apply = _arithmetic_operator(expr.op, result_type)
        lf, rf = left.fn, right.fn

        def arithmetic(row: Row) -> Value:
            a, b = lf(row), rf(row)
            if a is None or b is None:
                return None
            return apply(a, b)

        return _Compiled(arithmetic, result_type)

    def _comparison(self, expr: Binary) -> _Compiled:
        left, right = self._comparable_pair(
            expr, (expr.left, self.compile(expr.left)), (expr.right, self.compile(expr.right))
        )
        if left is None or right is None:
            return _constant(None, BOOLEAN)
        compare, lf, rf = _COMPARISONS[expr.op], left.fn, right.fn

        def comparison(row: Row) -> Value:
            a, b = lf(row), rf(row)
            if a is None or b is None:
                return None
            return compare(a, b)

        return _Compiled(comparison, BOOLEAN)

    def _comparable_pair(
        self, expr: Expr, left_side: tuple[Expr, _Compiled], right_side: tuple[Expr, _Compiled]
    ) -> tuple[_Compiled | None, _Compiled | None]:
        """Both sides made comparable (string literals cast to date/ip like ES), or (None, None)."""
        (left_expr, left), (right_expr, right) = left_side, right_side
        if NULL in (left.type, right.type):
            return left, right
        if left.type in (DATE, IP) and right.type in STRING_TYPES:
            right = self._cast_literal(right_expr, right, left.type)
        elif right.type in (DATE, IP) and left.type in STRING_TYPES:
            left = self._cast_literal(left_expr, left, right.type)
        if NULL not in (left.type, right.type) and _type_family(left.type) != _type_family(right.type):
            self._problems.add(
                expr.pos,
                f"first argument of [{expr.text}] is [{left.type}] so second argument must also be "
                f"[{left.type}] but was [{right.type}]",
            )
            return None, None
        if left.type == IP:
            return _Compiled(_ip_sort_key(left.fn), IP), _Compiled(_ip_sort_key(right.fn), IP)
        return left, right

    def _cast_literal(self, expr: Expr, compiled: _Compiled, target: str) -> _Compiled:
        if not compiled.constant:
            return compiled  # reported as a type mismatch by the caller
        text = compiled.fn(())
        if target == DATE:
            millis = parse_date(str(text))
            if millis is None:
                self._problems.add(expr.pos, f"Cannot convert string [{text}] to [DATE]")
                return _constant(None, NULL)
            return _constant(millis, DATE)
        return _constant(text, IP)

    def _like(self, expr: Like) -> _Compiled:
        operand = self.compile(expr.operand)
        if operand.type not in STRING_TYPES | {NULL}:
            return self._problem(
                expr,
                f"first argument of [{expr.text}] must be [string], found value "
                f"[{expr.operand.text}] type [{operand.type}]",
            )
        matcher = _like_regex(expr.pattern).fullmatch
        fn, negated = operand.fn, expr.negated

        def like(row: Row) -> Value:
            value = fn(row)
            if value is None:
                return None
            return (matcher(str(value)) is None) if negated else (matcher(str(value)) is not None)

        return _Compiled(like, BOOLEAN)

    def _in(self, expr: InList) -> _Compiled:
        operand_side = (expr.operand, self.compile(expr.operand))
        pairs = [self._comparable_pair(expr, operand_side, (item, self.compile(item))) for item in expr.items]
        if any(left is None or right is None for left, right in pairs):
            return _constant(None, BOOLEAN)
        operand = pairs[0][0]
        assert operand is not None
        item_fns = [right.fn for _, right in pairs if right is not None]
        fn, negated = operand.fn, expr.negated

        def member(row: Row) -> Value:
            value = fn(row)
            if value is None:
                return None
            values = [item(row) for item in item_fns]
            if value in values:
                return not negated
            return None if None in values else negated

        return _Compiled(member, BOOLEAN)

    def _call(self, expr: Call) -> _Compiled:
        if expr.name in AGGREGATES:
            if self._aggregates is None:
                return self._problem(
                    expr, f"aggregate function [{expr.text}] not allowed outside STATS command"
                )
            return self._aggregates.register(expr)
        builder = _SCALAR_FUNCTIONS.get(expr.name)
        if builder is None:
            written = expr.text.split("(", 1)[0].strip()
            return self._problem(expr, f"Unknown function [{written}]")
        args = [self.compile(arg) for arg in expr.args]
        return builder(self, expr, args)


def _type_family(type_: str) -> str:
    if type_ in NUMERIC_TYPES:
        return "numeric"
    if type_ in STRING_TYPES:
        return "string"
    return type_


def _numeric_result_type(left: str, right: str) -> str:
    types = {left, right} - {NULL}
    if DOUBLE in types:
        return DOUBLE
    if LONG in types:
        return LONG
    return INTEGER


def _arithmetic_operator(op: str, result_type: str) -> Callable[[Any, Any], Value]:
    integral = result_type in (INTEGER, LONG)
    low, high = (INT_MIN, INT_MAX) if result_type == INTEGER else (LONG_MIN, LONG_MAX)

    def in_range(value: int | float) -> Value:
        # ES turns integer overflow into null (with a warning); doubles have no such limit here.
        return value if not integral or low <= value <= high else None

    def divide(a: Any, b: Any) -> Value:
        if b == 0:
            return None
        if integral:  # Java integer division truncates toward zero
            quotient = abs(a) // abs(b)
            return in_range(quotient if (a >= 0) == (b > 0) else -quotient)
        return float(a) / float(b)

    def remainder(a: Any, b: Any) -> Value:
        if b == 0:
            return None
        if integral:
            return in_range(int(math.fmod(a, b)) if abs(a) < 2**52 else a - b * int(a / b))
        return math.fmod(a, b)

    simple = {"+": operator.add, "-": operator.sub, "*": operator.mul}
    if op in simple:
        base = simple[op]
        if integral:
            return lambda a, b: in_range(base(a, b))
        return lambda a, b: float(base(a, b))
    return divide if op == "/" else remainder


def _like_regex(pattern: str) -> re.Pattern[str]:
    """ES LIKE: `*` any sequence, `?` one character, `\\` escapes; case-sensitive."""
    parts: list[str] = []
    escaped = False
    for char in pattern:
        if escaped:
            parts.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


@functools.lru_cache(maxsize=65536)
def _ip_key(text: str) -> tuple[int, int]:
    address = ipaddress.ip_address(text)
    return address.version, int(address)


def _ip_sort_key(fn: RowFn) -> RowFn:
    def key(row: Row) -> Any:
        value = fn(row)
        return None if value is None else _ip_key(str(value))

    return key


# --- scalar functions ------------------------------------------------------------------------

_FunctionBuilder = Callable[[_ExpressionCompiler, Call, list[_Compiled]], _Compiled]


def _check_arity(
    compiler: _ExpressionCompiler, call: Call, args: list[_Compiled], low: int, high: int
) -> bool:
    if low <= len(args) <= high:
        return True
    expected = f"exactly {low}" if low == high else f"between {low} and {high}"
    compiler._problem(call, f"function [{call.text}] expects {expected} arguments, got {len(args)}")
    return False


_Expected = tuple[frozenset[str], str]  # the types an argument may have, and how ES names them
_NUMERIC: _Expected = (NUMERIC_TYPES, "numeric")
_STRING: _Expected = (STRING_TYPES, "string")
_INTEGRAL: _Expected = (frozenset({INTEGER, LONG}), "integer")
_DATETIME: _Expected = (frozenset({DATE}), "datetime")
_ORDERABLE: _Expected = (
    NUMERIC_TYPES | STRING_TYPES | {DATE, BOOLEAN, IP},
    "representable except unsigned_long",
)


def _check_type(
    compiler: _ExpressionCompiler, call: Call, position: int, compiled: _Compiled, expected: _Expected
) -> bool:
    allowed, wanted = expected
    if compiled.type in allowed or compiled.type == NULL:
        return True
    ordinal = ("first", "second", "third")[min(position, 2)]
    compiler._problem(
        call,
        f"{ordinal} argument of [{call.text}] must be [{wanted}], found value "
        f"[{call.args[position].text}] type [{compiled.type}]",
    )
    return False


def _null_safe(fn: Callable[[Any], Value], argument: RowFn) -> RowFn:
    return lambda row: None if (value := argument(row)) is None else fn(value)


def _round_half_up(value: int | float, decimals: int) -> int | float:
    """ES rounds half away from zero (Python's round() rounds half to even)."""
    if isinstance(value, int):
        if decimals >= 0:
            return value
        step: int = 10**-decimals
        quotient, rest = divmod(abs(value), step)
        rounded = (quotient + (2 * rest >= step)) * step
        return rounded if value >= 0 else -rounded
    if math.isinf(value) or math.isnan(value):
        return value
    exponent = Decimal(1).scaleb(-decimals)
    return float(Decimal(repr(value)).quantize(exponent, rounding=ROUND_HALF_UP))


def _round(compiler: _ExpressionCompiler, call: Call, args: list[_Compiled]) -> _Compiled:
    if not _check_arity(compiler, call, args, 1, 2) or not _check_type(compiler, call, 0, args[0], _NUMERIC):
        return _constant(None, NULL)
    number = args[0].fn
    if len(args) == 1:
        return _Compiled(_null_safe(lambda v: _round_half_up(v, 0), number), args[0].type)
    if not _check_type(compiler, call, 1, args[1], _INTEGRAL):
        return _constant(None, NULL)
    decimals = args[1].fn

    def rounded(row: Row) -> Value:
        value, places = number(row), decimals(row)
        if value is None or places is None:
            return None
        return _round_half_up(value, int(places))  # type: ignore[arg-type]

    return _Compiled(rounded, args[0].type)


def _string_function(transform: Callable[[str], Value], result_type: str | None) -> _FunctionBuilder:
    def build(compiler: _ExpressionCompiler, call: Call, args: list[_Compiled]) -> _Compiled:
        if not _check_arity(compiler, call, args, 1, 1) or not _check_type(
            compiler, call, 0, args[0], _STRING
        ):
            return _constant(None, NULL)
        type_ = result_type or (KEYWORD if args[0].type == NULL else args[0].type)
        return _Compiled(_null_safe(lambda v: transform(str(v)), args[0].fn), type_)

    return build


def _concat(compiler: _ExpressionCompiler, call: Call, args: list[_Compiled]) -> _Compiled:
    if not _check_arity(compiler, call, args, 2, 100):
        return _constant(None, NULL)
    for position, compiled in enumerate(args):
        if not _check_type(compiler, call, position, compiled, _STRING):
            return _constant(None, NULL)
    fns = [compiled.fn for compiled in args]

    def concat(row: Row) -> Value:
        values = [fn(row) for fn in fns]
        return None if None in values else "".join(str(value) for value in values)

    return _Compiled(concat, KEYWORD)


_FIXED_SPANS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": MILLIS_PER_DAY, "w": 7 * MILLIS_PER_DAY}
_MONDAY_OFFSET = 3 * MILLIS_PER_DAY  # 1970-01-01 was a Thursday; ES weeks start on Monday
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def truncate_date(millis: int, amount: int, unit: str) -> int:
    """DATE_TRUNC in UTC: the start of the `amount` `unit` bucket holding `millis`."""
    if unit in _FIXED_SPANS:
        size = amount * _FIXED_SPANS[unit]
        offset = _MONDAY_OFFSET if unit == "w" else 0
        return ((millis + offset) // size) * size - offset
    moment = _EPOCH + timedelta(milliseconds=millis)
    if unit == "y":
        start = datetime(moment.year - moment.year % amount, 1, 1, tzinfo=UTC)
    else:
        months = amount * (3 if unit == "q" else 1)
        index = moment.year * 12 + moment.month - 1
        year, month = divmod(index - index % months, 12)
        start = datetime(year, month + 1, 1, tzinfo=UTC)
    return (start - _EPOCH) // timedelta(milliseconds=1)


def _date_trunc(compiler: _ExpressionCompiler, call: Call, args: list[_Compiled]) -> _Compiled:
    if not _check_arity(compiler, call, args, 2, 2):
        return _constant(None, NULL)
    span = args[0].span
    if span is None or span[0] <= 0:
        return compiler._problem(
            call,
            f"first argument of [{call.text}] must be a positive time span like [1 day], "
            f"found [{call.args[0].text}]",
        )
    date_arg = args[1]
    if date_arg.constant and date_arg.type in STRING_TYPES:  # ES casts string literals to dates
        date_arg = compiler._cast_literal(call.args[1], date_arg, DATE)
    if not _check_type(compiler, call, 1, date_arg, _DATETIME):
        return _constant(None, NULL)
    amount, unit = span
    return _Compiled(_null_safe(lambda v: truncate_date(int(v), amount, unit), date_arg.fn), DATE)


_SCALAR_FUNCTIONS: dict[str, _FunctionBuilder] = {
    "ROUND": _round,
    "TO_UPPER": _string_function(str.upper, None),
    "TO_LOWER": _string_function(str.lower, None),
    "LENGTH": _string_function(len, INTEGER),
    "CONCAT": _concat,
    "DATE_TRUNC": _date_trunc,
}


# --- aggregates ------------------------------------------------------------------------------


class _Accumulator:
    def add(self, value: Any) -> None:
        raise NotImplementedError

    def result(self) -> Value:
        raise NotImplementedError


class _CountRows(_Accumulator):
    def __init__(self) -> None:
        self.count = 0

    def add(self, value: Any) -> None:
        self.count += 1

    def result(self) -> Value:
        return self.count


class _CountValues(_CountRows):
    def add(self, value: Any) -> None:
        if value is not None:
            self.count += 1


class _CountDistinct(_Accumulator):
    def __init__(self) -> None:
        self.seen: set[Value] = set()

    def add(self, value: Any) -> None:
        if value is not None:
            self.seen.add(value)

    def result(self) -> Value:
        return len(self.seen)


class _Sum(_Accumulator):
    def __init__(self, as_float: bool) -> None:
        self.as_float = as_float
        self.total: int | float | None = None

    def add(self, value: Any) -> None:
        if value is not None:
            self.total = value if self.total is None else self.total + value

    def result(self) -> Value:
        if self.total is None:
            return None
        return float(self.total) if self.as_float else self.total


class _Average(_Accumulator):
    def __init__(self) -> None:
        self.total: float = 0.0
        self.count = 0

    def add(self, value: Any) -> None:
        if value is not None:
            self.total += value
            self.count += 1

    def result(self) -> Value:
        return self.total / self.count if self.count else None


class _Extreme(_Accumulator):
    def __init__(self, pick: Callable[[Any, Any], Any]) -> None:
        self.pick = pick
        self.best: Any = None

    def add(self, value: Any) -> None:
        if value is not None:
            self.best = value if self.best is None else self.pick(self.best, value)

    def result(self) -> Value:
        return self.best  # type: ignore[no-any-return]


@dataclass(frozen=True)
class _AggregateSpec:
    argument: RowFn | None  # None: the whole row (COUNT(*))
    new: Callable[[], _Accumulator]


@dataclass
class _AggregateSlots:
    """The aggregate calls of one STATS; each one fills a slot of the row its outputs read."""

    schema: Sequence[Column]
    problems: _Problems
    specs: list[_AggregateSpec] = field(default_factory=list)

    def register(self, call: Call) -> _Compiled:
        spec_and_type = self._spec(call)
        if spec_and_type is None:
            return _constant(None, NULL)
        spec, result_type = spec_and_type
        self.specs.append(spec)
        return _Compiled(operator.itemgetter(len(self.specs) - 1), result_type)

    def _spec(self, call: Call) -> tuple[_AggregateSpec, str] | None:
        compiler = _ExpressionCompiler(self.schema, self.problems)
        if call.name == "COUNT" and (not call.args or isinstance(call.args[0], Star)):
            return _AggregateSpec(None, _CountRows), LONG
        limit = 2 if call.name == "COUNT_DISTINCT" else 1
        args = [compiler.compile(arg) for arg in call.args]
        if not _check_arity(compiler, call, args, 1, limit):
            return None
        argument = args[0]
        if argument.type == TIME_SPAN:
            compiler._problem(call, f"time span [{call.args[0].text}] is only allowed in DATE_TRUNC")
            return None
        if call.name == "COUNT":
            return _AggregateSpec(argument.fn, _CountValues), LONG
        if call.name == "COUNT_DISTINCT":
            return _AggregateSpec(argument.fn, _CountDistinct), LONG
        if call.name in ("SUM", "AVG"):
            if not _check_type(compiler, call, 0, argument, _NUMERIC):
                return None
            if call.name == "AVG":
                return _AggregateSpec(argument.fn, _Average), DOUBLE
            as_float = argument.type == DOUBLE
            return _AggregateSpec(argument.fn, lambda: _Sum(as_float)), DOUBLE if as_float else LONG
        if not _check_type(compiler, call, 0, argument, _ORDERABLE):
            return None
        pick = min if call.name == "MIN" else max
        chooser: Callable[[Any, Any], Any] = (
            (lambda a, b: pick(a, b, key=_ip_key)) if argument.type == IP else pick
        )
        result_type = KEYWORD if argument.type == TEXT else argument.type
        return _AggregateSpec(argument.fn, lambda: _Extreme(chooser)), result_type


# --- Query DSL filter ------------------------------------------------------------------------

_Predicate = Callable[[Row], bool]


def _compile_dsl_filter(dsl: Mapping[str, Any] | None, columns: Sequence[Column]) -> _Predicate | None:
    """A predicate for the request's `filter` (term, terms, range, match, exists, match_all, bool)."""
    if dsl is None:
        return None
    return _DslCompiler({column.name: (i, column.type) for i, column in enumerate(columns)}).compile(dsl)


class _DslCompiler:
    def __init__(self, positions: dict[str, tuple[int, str]]) -> None:
        self._positions = positions

    def compile(self, query: Any) -> _Predicate:
        if not isinstance(query, Mapping) or len(query) != 1:
            raise EsqlError(
                "[_na] query malformed, must start with start_object", error_type="parsing_exception"
            )
        ((kind, body),) = query.items()
        handlers: dict[str, Callable[[Any], _Predicate]] = {
            "bool": self._bool,
            "exists": self._exists,
            "match": self._match,
            "match_all": self._match_all,
            "match_none": self._match_none,
            "range": self._range,
            "term": self._term,
            "terms": self._terms,
        }
        handler = handlers.get(kind)
        if handler is None:
            raise EsqlError(f"unknown query [{kind}]", error_type="parsing_exception")
        return handler(body)

    def _match_all(self, _body: Any) -> _Predicate:
        return lambda _row: True

    def _match_none(self, _body: Any) -> _Predicate:
        return lambda _row: False

    def _bool(self, body: Any) -> _Predicate:
        if not isinstance(body, Mapping):
            raise EsqlError("[bool] query malformed", error_type="parsing_exception")
        unknown = set(body) - {"must", "filter", "should", "must_not", "minimum_should_match", "boost"}
        if unknown:
            raise EsqlError(
                f"[bool] query does not support [{sorted(unknown)[0]}]", error_type="parsing_exception"
            )

        def clauses(name: str) -> list[_Predicate]:
            value = body.get(name, [])
            return [self.compile(item) for item in (value if isinstance(value, list) else [value])]

        required = clauses("must") + clauses("filter")
        optional, excluded = clauses("should"), clauses("must_not")
        minimum = int(body.get("minimum_should_match", 0 if required else 1)) if optional else 0

        def matches(row: Row) -> bool:
            if not all(predicate(row) for predicate in required):
                return False
            if any(predicate(row) for predicate in excluded):
                return False
            return sum(1 for predicate in optional if predicate(row)) >= minimum

        return matches

    def _field_and_value(self, body: Any, kind: str, value_key: str) -> tuple[str, Any]:
        if not isinstance(body, Mapping) or len(body) != 1:
            raise EsqlError(f"[{kind}] query doesn't support multiple fields", error_type="parsing_exception")
        ((name, spec),) = body.items()
        if isinstance(spec, Mapping):
            if value_key not in spec:
                raise EsqlError(f"[{kind}] query requires [{value_key}]", error_type="parsing_exception")
            spec = spec[value_key]
        return str(name), spec

    def _cell(self, name: str) -> tuple[int, str] | None:
        return self._positions.get(name)

    def _term(self, body: Any) -> _Predicate:
        name, value = self._field_and_value(body, "term", "value")
        return self._equals_any(name, [value])

    def _terms(self, body: Any) -> _Predicate:
        fields = {key: value for key, value in (body or {}).items() if key != "boost"}
        if len(fields) != 1 or not isinstance(next(iter(fields.values())), list):
            raise EsqlError(
                "[terms] query requires one field and an array of values", error_type="parsing_exception"
            )
        ((name, values),) = fields.items()
        return self._equals_any(name, values)

    def _equals_any(self, name: str, values: list[Any]) -> _Predicate:
        cell = self._cell(name)
        if cell is None:
            return lambda _row: False
        position, type_ = cell
        wanted = {_dsl_value(value, type_) for value in values} - {None}
        if type_ == TEXT:
            tokens = {str(value).lower() for value in wanted}
            return lambda row: row[position] is not None and bool(tokens & set(_words(str(row[position]))))
        return lambda row: row[position] in wanted

    def _match(self, body: Any) -> _Predicate:
        name, value = self._field_and_value(body, "match", "query")
        cell = self._cell(name)
        if cell is None:
            return lambda _row: False
        position, type_ = cell
        if type_ not in STRING_TYPES:
            return self._equals_any(name, [value])
        tokens = set(_words(str(value)))
        return lambda row: row[position] is not None and bool(tokens & set(_words(str(row[position]))))

    def _exists(self, body: Any) -> _Predicate:
        if not isinstance(body, Mapping) or "field" not in body:
            raise EsqlError("[exists] must be provided with a [field]", error_type="parsing_exception")
        cell = self._cell(str(body["field"]))
        if cell is None:
            return lambda _row: False
        position = cell[0]
        return lambda row: row[position] is not None

    def _range(self, body: Any) -> _Predicate:
        if not isinstance(body, Mapping) or len(body) != 1:
            raise EsqlError("[range] query doesn't support multiple fields", error_type="parsing_exception")
        ((name, bounds),) = body.items()
        if not isinstance(bounds, Mapping):
            raise EsqlError(
                f"[range] query malformed, no start_object after [{name}]", error_type="parsing_exception"
            )
        cell = self._cell(str(name))
        if cell is None:
            return lambda _row: False
        position, type_ = cell
        checks: list[tuple[Callable[[Any, Any], bool], Any]] = []
        for key, compare in (
            ("gt", operator.gt),
            ("gte", operator.ge),
            ("lt", operator.lt),
            ("lte", operator.le),
        ):
            if bounds.get(key) is not None:
                bound = _dsl_value(bounds[key], type_)
                if bound is None:
                    raise EsqlError(
                        f"failed to parse [{bounds[key]}] for field [{name}] of type [{type_}]",
                        error_type="parsing_exception",
                    )
                checks.append((compare, _ip_key(str(bound)) if type_ == IP else bound))

        def in_range(row: Row) -> bool:
            value = row[position]
            if value is None:
                return False
            key = _ip_key(str(value)) if type_ == IP else value
            return all(compare(key, bound) for compare, bound in checks)

        return in_range


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _dsl_value(value: Any, type_: str) -> Value:
    """A Query DSL value as stored in a column of `type_` (None when it cannot be one)."""
    try:
        if type_ in (INTEGER, LONG):
            return int(value)
        if type_ == DOUBLE:
            return float(value)
        if type_ == DATE:
            return int(value) if isinstance(value, int | float) else parse_date(str(value))
        if type_ == BOOLEAN:
            return value if isinstance(value, bool) else {"true": True, "false": False}.get(str(value))
    except (TypeError, ValueError):
        return None
    return None if value is None else str(value)
