"""A tiny SQL warehouse shared by the Snowflake and Databricks emulators: three generated tables
and just enough SELECT to query them. Each emulator renders a `WResult` in its own wire format.

Tables (deterministic: the same on every run and machine):

- `employees` (36 rows): `id` integer, `name` string, `department` string, `salary`
  decimal(10,2) (NULL for one row), `hired` date, `active` boolean, `updated_at` timestamp_tz (in
  several UTC offsets, with microseconds), `tags` json (an object, NULL for one row);
- `all_types` (5 rows): `id` integer then one column of every warehouse type, `c_<type>`, with
  edge values (a negative decimal, inf and NaN, unicode, quotes and newlines, bytes 00 and FF,
  nested json, dates and timestamps before 1970, fractions of a second) and a row of NULLs;
- `numbers` (`numbers_rows` rows, default `NUMBERS_ROWS`): `n` integer 1..N, `square` integer,
  `label` string, `ratio` double (n / 7). Rows are computed when read, so millions cost nothing
  until a statement filters or sorts them.

SQL (keywords and names case-insensitive; one statement, an optional trailing `;`):

    SELECT <item>, ... [FROM <table>] [WHERE <column> <op> <value> | <column> IS [NOT] NULL]
        [ORDER BY <name or ordinal> [ASC | DESC]] [LIMIT <n>]

An item is `*`, a column, or a value (`42`, `-1.50`, `1e3`, `'it''s'`, `TRUE`, `FALSE`, `NULL`, a
positional marker `?`, a named marker `:name`), each with an optional `AS alias`. `op` is one of
`= != <> < <= > >=`; the value is converted to the column's type (a string to a number, date,
timestamp...; a failed conversion is 22018). NULL never compares true. ORDER BY puts NULLs last
ascending and first descending (as Snowflake does) and takes an output name, a table column or
an ordinal. Result names: a table column keeps its (lower-case) name, an alias is kept as written,
a value without alias is named by its text.

Markers: a Sequence of params binds `?` in order; a Mapping binds `:name`. Values arrive typed as
Python values (see `WResult.rows`); their warehouse type is inferred (`infer_column`).

Errors are `SqlError(message, sql_state)`: 42000 syntax or unknown column, 42S02 unknown table,
22018 a value that does not fit, 07002 a marker without a value. Nothing else escapes `execute`
for any statement text (a property test checks it).
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import operator
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any, NoReturn, overload

__all__ = [
    "NUMBERS_ROWS",
    "TABLES",
    "WAREHOUSE_TYPES",
    "LazyRows",
    "SqlError",
    "WColumn",
    "WResult",
    "execute",
    "infer_column",
    "table",
]

WAREHOUSE_TYPES = (
    "integer",
    "decimal",
    "double",
    "string",
    "boolean",
    "date",
    "time",
    "timestamp",
    "timestamp_tz",
    "binary",
    "json",
)
NUMBERS_ROWS = 100_000
MAX_DIGITS = 38  # the widest number Snowflake (NUMBER(38)) and Databricks (DECIMAL(38)) hold
TABLES = ("employees", "all_types", "numbers")

SYNTAX_ERROR = "42000"
UNKNOWN_TABLE = "42S02"
BAD_VALUE = "22018"
MISSING_BINDING = "07002"


@dataclass(frozen=True)
class WColumn:
    name: str
    type: str  # one of WAREHOUSE_TYPES
    precision: int | None = None  # decimal only
    scale: int | None = None  # decimal only
    nullable: bool = True


@dataclass(frozen=True)
class WResult:
    """Columns and rows of Python values: int, Decimal, float, str, bool, date, time, datetime
    (naive for "timestamp", aware for "timestamp_tz"), bytes, dict/list (json); None is NULL."""

    columns: list[WColumn]
    rows: Sequence[list[Any]]


class SqlError(Exception):
    """A statement the warehouse refuses, with the SQLSTATE a real warehouse would give."""

    def __init__(self, message: str, sql_state: str) -> None:
        super().__init__(message)
        self.message = message
        self.sql_state = sql_state


class LazyRows(Sequence[list[Any]]):
    """`length` rows, row `i` computed by `row_at(i)` when read; slices stay lazy."""

    def __init__(self, length: int, row_at: Callable[[int], list[Any]]) -> None:
        self._length = max(0, length)
        self._row_at = row_at

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> list[Any]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[list[Any]]: ...
    def __getitem__(self, index: int | slice) -> list[Any] | Sequence[list[Any]]:
        if isinstance(index, int):  # the hot path: keep it to a bounds check
            if index < 0:
                index += self._length
            if not 0 <= index < self._length:
                raise IndexError("row index out of range")
            return self._row_at(index)
        positions = range(self._length)[index]  # range does the slice's bounds and negative steps
        if positions.step == 1:
            start, row_at = positions.start, self._row_at
            return LazyRows(len(positions), lambda i: row_at(start + i))
        return LazyRows(len(positions), lambda i: self._row_at(positions[i]))

    def __iter__(self) -> Iterator[list[Any]]:
        return map(self._row_at, range(self._length))


def execute(
    statement: str, params: Mapping[str, Any] | Sequence[Any] = (), *, numbers_rows: int = NUMBERS_ROWS
) -> WResult:
    """Run one SELECT; raises `SqlError` for anything the warehouse refuses."""
    if isinstance(params, str | bytes):
        raise TypeError("params is a Sequence of values or a Mapping of names to values, not a string")
    query = _Parser(_tokenize(statement), params).statement()
    return _run(query, numbers_rows)


def table(name: str, numbers_rows: int = NUMBERS_ROWS) -> WResult:
    """A whole table (as `SELECT * FROM name`)."""
    if name == "numbers":
        return _numbers(numbers_rows)
    if name in _STATIC_TABLES:
        whole = _STATIC_TABLES[name]()  # cached: callers get their own copy to keep or change
        return WResult(list(whole.columns), copy.deepcopy(list(whole.rows)))
    raise SqlError(f"Object '{name.upper()}' does not exist or not authorized.", UNKNOWN_TABLE)


def infer_column(name: str, value: Any) -> WColumn:
    """The column a literal or bound value makes; a value of no warehouse type is 22018."""
    nullable = value is None
    kind: str
    match value:
        case None | str():
            kind = "string"
        case bool():
            kind = "boolean"
        case int() if len(str(abs(value))) <= MAX_DIGITS:
            kind = "integer"
        case Decimal() if value.is_finite():
            digits, exponent = len(value.as_tuple().digits), int(value.as_tuple().exponent)
            scale = max(0, -exponent)
            precision = max(digits + max(0, exponent), scale, 1)
            if precision > MAX_DIGITS:
                raise SqlError(f"Decimal value {value} does not fit NUMBER(38)", BAD_VALUE)
            return WColumn(name, "decimal", precision, scale, nullable)
        case float():
            kind = "double"
        case dt.datetime():
            kind = "timestamp" if value.tzinfo is None else "timestamp_tz"
        case dt.date():
            kind = "date"
        case dt.time():
            kind = "time"
        case bytes():
            kind = "binary"
        case dict() | list():
            kind = "json"
        case _:
            raise SqlError(f"unsupported value of type {type(value).__name__}", BAD_VALUE)
    return WColumn(name, kind, nullable=nullable)


# --- tokens ----------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<string>'(?:[^']|'')*')
    | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<name>[A-Za-z_][A-Za-z0-9_$]*)
    | (?P<named>:[A-Za-z_][A-Za-z0-9_]*)
    | (?P<positional>\?)
    | (?P<op><=|>=|<>|!=|=|<|>)
    | (?P<punct>[,*;\-])
    """,
    re.VERBOSE,
)
_KEYWORDS = frozenset(
    {"SELECT", "FROM", "WHERE", "ORDER", "BY", "LIMIT", "AS", "ASC", "DESC"}
    | {"TRUE", "FALSE", "NULL", "IS", "NOT", "AND", "OR"}
)


@dataclass(frozen=True)
class _Token:
    kind: str  # string, number, name, keyword, named, positional, op, punct, end
    text: str


def _tokenize(statement: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(statement):
        match = _TOKEN.match(statement, position)
        if match is None:
            raise SqlError(f"syntax error: unexpected '{statement[position]}' at {position}", SYNTAX_ERROR)
        kind, text = match.lastgroup or "", match.group()
        if kind == "name" and text.upper() in _KEYWORDS:
            kind, text = "keyword", text.upper()
        if kind != "space":
            tokens.append(_Token(kind, text))
        position = match.end()
    tokens.append(_Token("end", ""))
    return tokens


# --- parsing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    """One SELECT item: `*`, a table column (`column`), or a constant (`value` typed by `typed`)."""

    star: bool = False
    column: str | None = None
    alias: str | None = None
    value: Any = None
    typed: WColumn | None = None


@dataclass(frozen=True)
class _Condition:
    column: str
    op: str  # one of _COMPARISONS, or "is null" / "is not null"
    value: Any = None


@dataclass(frozen=True)
class _Select:
    items: list[_Item]
    table: str | None
    where: _Condition | None
    order_by: str | int | None
    descending: bool
    limit: int | None


class _Parser:
    """Recursive descent over the tokens; markers are bound to their values as they are read."""

    def __init__(self, tokens: list[_Token], params: Mapping[str, Any] | Sequence[Any]) -> None:
        self._tokens = tokens
        self._at = 0
        self._params = params
        self._next_positional = 0

    def statement(self) -> _Select:
        self._keyword("SELECT")
        items = [self._item()]
        while self._accept("punct", ","):
            items.append(self._item())
        table = self._name() if self._accept("keyword", "FROM") else None
        where = self._condition() if self._accept("keyword", "WHERE") else None
        order_by: str | int | None = None
        descending = False
        if self._accept("keyword", "ORDER"):
            self._keyword("BY")
            order_by = self._ordinal() if self._peek().kind == "number" else self._name()
            descending = self._accept("keyword", "DESC") is not None
            if not descending:
                self._accept("keyword", "ASC")
        limit = self._ordinal(allow_zero=True) if self._accept("keyword", "LIMIT") else None
        self._accept("punct", ";")
        if self._peek().kind != "end":
            self._unexpected()
        return _Select(items, table, where, order_by, descending, limit)

    def _item(self) -> _Item:
        if self._accept("punct", "*"):
            return _Item(star=True)
        token = self._peek()
        if token.kind == "name":
            self._at += 1
            return _Item(column=token.text.lower(), alias=self._alias())
        value, text = self._value()
        alias = self._alias()
        return _Item(value=value, alias=alias, typed=infer_column(alias or text, value))

    def _alias(self) -> str | None:
        return self._name() if self._accept("keyword", "AS") else None

    def _condition(self) -> _Condition:
        column = self._name().lower()
        if self._accept("keyword", "IS"):
            negated = self._accept("keyword", "NOT") is not None
            self._keyword("NULL")
            return _Condition(column, "is not null" if negated else "is null")
        op = self._peek()
        if op.kind != "op":
            self._unexpected()
        self._at += 1
        value, _ = self._value()
        return _Condition(column, "!=" if op.text == "<>" else op.text, value)

    def _value(self) -> tuple[Any, str]:
        """A literal or a marker's bound value, and the text that stood for it."""
        token = self._peek()
        self._at += 1
        if token.kind == "punct" and token.text == "-" and self._peek().kind == "number":
            number = self._peek().text
            self._at += 1
            value = _number(number)
            # copy_negate: unary minus on a Decimal would round it to the context's 28 digits
            return (value.copy_negate() if isinstance(value, Decimal) else -value), f"-{number}"
        if token.kind == "number":
            return _number(token.text), token.text
        if token.kind == "string":
            return token.text[1:-1].replace("''", "'"), token.text
        if token.kind == "keyword" and token.text in ("TRUE", "FALSE", "NULL"):
            return {"TRUE": True, "FALSE": False, "NULL": None}[token.text], token.text
        if token.kind == "positional":
            return self._positional(), "?"
        if token.kind == "named":
            return self._named(token.text[1:]), token.text
        self._at -= 1
        return self._unexpected()

    def _positional(self) -> Any:
        if isinstance(self._params, Mapping):
            raise SqlError("positional marker ? used with named parameters", MISSING_BINDING)
        index = self._next_positional
        self._next_positional += 1
        if index >= len(self._params):
            raise SqlError(f"Bind variable ? (number {index + 1}) not set.", MISSING_BINDING)
        return self._params[index]

    def _named(self, name: str) -> Any:
        if not isinstance(self._params, Mapping):
            raise SqlError(f"named marker :{name} used with positional parameters", MISSING_BINDING)
        if name not in self._params:
            raise SqlError(f"No value was given for the parameter :{name}", MISSING_BINDING)
        return self._params[name]

    def _ordinal(self, *, allow_zero: bool = False) -> int:
        token = self._peek()
        if token.kind != "number" or not token.text.isdigit() or len(token.text) > 18:
            self._unexpected()
        if int(token.text) == 0 and not allow_zero:
            self._unexpected()
        self._at += 1
        return int(token.text)

    def _name(self) -> str:
        token = self._peek()
        if token.kind != "name":
            self._unexpected()
        self._at += 1
        return token.text

    def _keyword(self, word: str) -> None:
        if self._accept("keyword", word) is None:
            self._unexpected(expected=word)

    def _accept(self, kind: str, text: str) -> _Token | None:
        token = self._peek()
        if token.kind == kind and token.text == text:
            self._at += 1
            return token
        return None

    def _peek(self) -> _Token:
        return self._tokens[self._at]

    def _unexpected(self, expected: str = "") -> NoReturn:
        token = self._peek()
        found = "end of statement" if token.kind == "end" else f"'{token.text}'"
        wanted = f", expected {expected}" if expected else ""
        raise SqlError(f"syntax error: unexpected {found}{wanted}", SYNTAX_ERROR)


def _number(text: str) -> int | Decimal | float:
    if "e" in text.lower():
        return float(text)
    if len(text.replace(".", "").lstrip("0")) > MAX_DIGITS:
        raise SqlError(
            f"Numeric value '{text[:40]}' is out of range (at most {MAX_DIGITS} digits)", BAD_VALUE
        )
    return Decimal(text) if "." in text else int(text)


# --- running ---------------------------------------------------------------------------------------

_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _run(query: _Select, numbers_rows: int) -> WResult:
    source = table(query.table.lower(), numbers_rows) if query.table else WResult([], [[]])
    rows = source.rows
    if query.where is not None:
        keep = _predicate(query.where, source.columns)
        rows = [row for row in rows if keep(row)]
    columns, project = _projection(query.items, source.columns)
    if query.order_by is not None:
        rows = _sorted(rows, _sort_key_index(query, source.columns), query.descending)
    if query.limit is not None:
        rows = rows[: query.limit]
    row_at = rows.__getitem__
    return WResult(columns, LazyRows(len(rows), lambda i: project(row_at(i))))


def _column_index(name: str, columns: list[WColumn]) -> int:
    for index, column in enumerate(columns):
        if column.name == name.lower():
            return index
    raise SqlError(f"SQL compilation error: invalid identifier '{name.upper()}'", SYNTAX_ERROR)


def _projection(
    items: list[_Item], columns: list[WColumn]
) -> tuple[list[WColumn], Callable[[list[Any]], list[Any]]]:
    """The output columns, and a function from a source row to an output row."""
    output: list[WColumn] = []
    # positions in the source row followed by the constants: one itemgetter picks a whole row
    picks: list[int] = []
    constants: list[Any] = []
    for item in items:
        if item.star:
            if not columns:
                raise SqlError("SQL compilation error: SELECT * with no table", SYNTAX_ERROR)
            output.extend(columns)
            picks.extend(range(len(columns)))
        elif item.column is not None:
            index = _column_index(item.column, columns)
            column = columns[index]
            output.append(column if item.alias is None else _renamed(column, item.alias))
            picks.append(index)
        else:
            assert item.typed is not None
            output.append(item.typed)
            picks.append(len(columns) + len(constants))
            constants.append(item.value)
    if len(picks) == 1:
        (only,) = picks
        return output, lambda row: [[*row, *constants][only]]
    getter = operator.itemgetter(*picks)
    if constants:
        return output, lambda row: list(getter([*row, *constants]))
    return output, lambda row: list(getter(row))


def _renamed(column: WColumn, name: str) -> WColumn:
    return WColumn(name, column.type, column.precision, column.scale, column.nullable)


def _sort_key_index(query: _Select, columns: list[WColumn]) -> int | None:
    """The source column ORDER BY sorts on (None: a constant, nothing to sort)."""
    key = query.order_by
    chosen: _Item | None = None
    if isinstance(key, int):
        visible = [item for item in query.items if not item.star]
        if any(item.star for item in query.items):
            return _ordinal_with_star(query.items, key, columns)
        if key > len(visible):
            raise SqlError(f"ORDER BY position {key} is not in the select list", SYNTAX_ERROR)
        chosen = visible[key - 1]
    else:
        assert key is not None
        named = [item for item in query.items if (item.alias or item.column or "").lower() == key.lower()]
        chosen = named[0] if named else _Item(column=key.lower())
    if chosen.column is None:
        return None
    index = _column_index(chosen.column, columns)
    if columns[index].type == "json":
        raise SqlError(f"ORDER BY on a json column '{key}' is not supported", SYNTAX_ERROR)
    return index


def _ordinal_with_star(items: list[_Item], key: int, columns: list[WColumn]) -> int | None:
    expanded: list[_Item] = []
    for item in items:
        expanded.extend([_Item(column=column.name) for column in columns] if item.star else [item])
    if key > len(expanded):
        raise SqlError(f"ORDER BY position {key} is not in the select list", SYNTAX_ERROR)
    column = expanded[key - 1].column
    if column is None:
        return None
    index = _column_index(column, columns)
    if columns[index].type == "json":
        raise SqlError("ORDER BY on a json column is not supported", SYNTAX_ERROR)
    return index


def _sorted(rows: Sequence[list[Any]], index: int | None, descending: bool) -> Sequence[list[Any]]:
    if index is None:
        return rows

    def key(row: list[Any]) -> tuple[bool, Any]:
        value = row[index]
        # NULLs sort after every value ascending (and so before them descending)
        return (value is None, value if value is not None else 0)

    return sorted(rows, key=key, reverse=descending)


def _predicate(condition: _Condition, columns: list[WColumn]) -> Callable[[list[Any]], bool]:
    index = _column_index(condition.column, columns)
    column = columns[index]
    if condition.op == "is null":
        return lambda row: row[index] is None
    if condition.op == "is not null":
        return lambda row: row[index] is not None
    if column.type == "json" and condition.op not in ("=", "!="):
        raise SqlError(f"json column '{column.name}' only compares with = and !=", SYNTAX_ERROR)
    wanted = _coerce(condition.value, column.type)
    compare = _COMPARISONS[condition.op]
    if wanted is None:
        return lambda row: False  # comparing with NULL is never true
    if column.type in ("integer", "decimal", "double"):
        return lambda row: row[index] is not None and compare(*_comparable(row[index], wanted))
    return lambda row: row[index] is not None and compare(row[index], wanted)


def _comparable(left: Any, right: Any) -> tuple[Any, Any]:
    """Two numbers as Python compares them without raising: a Decimal meets a float (which may be
    NaN, which Decimal refuses to order) as a float; int and Decimal compare exactly."""
    if isinstance(left, float) or isinstance(right, float):
        return float(left), float(right)
    return left, right


def _coerce(value: Any, kind: str) -> Any:
    """`value` in the Python domain of a column of `kind` (22018 when it does not convert)."""
    if value is None:
        return None
    try:
        converted = _CONVERTERS[kind](value)
    except (ValueError, TypeError, ArithmeticError):
        converted = _NOT_CONVERTED
    if converted is _NOT_CONVERTED:
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
        raise SqlError(f"{kind} value {shown} is not recognized", BAD_VALUE)
    return converted


_NOT_CONVERTED = object()


def _to_number(value: Any) -> Any:
    if isinstance(value, bool):
        return _NOT_CONVERTED
    if isinstance(value, str):
        value = Decimal(value.strip())
    if isinstance(value, Decimal):
        return value if value.is_finite() else float(value)
    if isinstance(value, int) and len(str(abs(value))) > MAX_DIGITS:
        return _NOT_CONVERTED  # also keeps float() of it (for a double column) from overflowing
    return value if isinstance(value, int | float) else _NOT_CONVERTED


def _to_boolean(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return value if isinstance(value, bool) else _NOT_CONVERTED


def _to_date(value: Any) -> Any:
    if isinstance(value, str):
        return dt.date.fromisoformat(value.strip())
    is_date = isinstance(value, dt.date) and not isinstance(value, dt.datetime)
    return value if is_date else _NOT_CONVERTED


def _to_time(value: Any) -> Any:
    if isinstance(value, str):
        value = dt.time.fromisoformat(value.strip())
    return value.replace(tzinfo=None) if isinstance(value, dt.time) else _NOT_CONVERTED


def _to_datetime(value: Any) -> dt.datetime | None:
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value.strip())
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    return None


def _to_timestamp(value: Any) -> Any:
    moment = _to_datetime(value)
    if moment is None:
        return _NOT_CONVERTED
    return moment if moment.tzinfo is None else moment.astimezone(dt.UTC).replace(tzinfo=None)


def _to_timestamp_tz(value: Any) -> Any:
    moment = _to_datetime(value)
    if moment is None:
        return _NOT_CONVERTED
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _to_binary(value: Any) -> Any:
    if isinstance(value, str):
        return bytes.fromhex(value)
    return value if isinstance(value, bytes) else _NOT_CONVERTED


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "integer": _to_number,
    "decimal": _to_number,
    "double": _to_number,
    "string": lambda value: value if isinstance(value, str) else _NOT_CONVERTED,
    "boolean": _to_boolean,
    "date": _to_date,
    "time": _to_time,
    "timestamp": _to_timestamp,
    "timestamp_tz": _to_timestamp_tz,
    "binary": _to_binary,
    "json": lambda value: value if isinstance(value, dict | list) else _NOT_CONVERTED,
}


# --- the tables ------------------------------------------------------------------------------------

_FIRST = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Radia")
_LAST = ("Lovelace", "Hopper", "Turing", "Dijkstra")
_DEPARTMENTS = ("Engineering", "Finance", "Sales", "Support", "Research")
_SKILLS = ("sql", "python", "rust", "excel", "ops", "ml")
_OFFSETS_MINUTES = (0, 60, -300, 330, 545, -210)  # UTC, CET, EST, IST, NPT, NST
EMPLOYEE_COUNT = 36


@cache
def _employees() -> WResult:
    columns = [
        WColumn("id", "integer", nullable=False),
        WColumn("name", "string", nullable=False),
        WColumn("department", "string"),
        WColumn("salary", "decimal", 10, 2),
        WColumn("hired", "date"),
        WColumn("active", "boolean"),
        WColumn("updated_at", "timestamp_tz"),
        WColumn("tags", "json"),
    ]
    rows: list[list[Any]] = []
    for number in range(1, EMPLOYEE_COUNT + 1):
        offset = dt.timezone(dt.timedelta(minutes=_OFFSETS_MINUTES[number % len(_OFFSETS_MINUTES)]))
        updated = dt.datetime(2024, 5, 1, 9, 30, tzinfo=dt.UTC) + dt.timedelta(
            hours=number * 17, microseconds=number * 1234
        )
        rows.append(
            [
                number,
                f"{_FIRST[number % len(_FIRST)]} {_LAST[number % len(_LAST)]}",
                _DEPARTMENTS[number % len(_DEPARTMENTS)],
                None if number == 7 else Decimal(f"{42_000 + number * 7919 % 90_000}.{number:02d}"),
                dt.date(2015, 1, 5) + dt.timedelta(days=number * 97),
                number % 5 != 0,
                updated.astimezone(offset),
                None
                if number == 11
                else {"level": number % 4 + 1, "skills": [_SKILLS[number % 6], _SKILLS[(number * 5) % 6]]},
            ]
        )
    return WResult(columns, rows)


@cache
def _all_types() -> WResult:
    columns = [
        WColumn("id", "integer", nullable=False),
        WColumn("c_integer", "integer"),
        WColumn("c_decimal", "decimal", 12, 4),
        WColumn("c_double", "double"),
        WColumn("c_string", "string"),
        WColumn("c_boolean", "boolean"),
        WColumn("c_date", "date"),
        WColumn("c_time", "time"),
        WColumn("c_timestamp", "timestamp"),
        WColumn("c_timestamp_tz", "timestamp_tz"),
        WColumn("c_binary", "binary"),
        WColumn("c_json", "json"),
    ]
    plus_two = dt.timezone(dt.timedelta(hours=2))
    minus_five_thirty = dt.timezone(-dt.timedelta(hours=5, minutes=30))
    rows: list[list[Any]] = [
        [
            1,
            42,
            Decimal("123.4500"),
            1.5,
            "plain text",
            True,
            dt.date(2024, 5, 6),
            dt.time(12, 34, 56, 123000),
            dt.datetime(2024, 5, 6, 12, 34, 56, 123456),
            dt.datetime(2024, 5, 6, 12, 34, 56, 500000, tzinfo=plus_two),
            b"\x00\x01\xfe\xff",
            {"a": 1, "b": [1, 2, {"c": None}], "d": {"e": "f"}},
        ],
        [
            2,
            -9_223_372_036_854_775_808,
            Decimal("-98765432.1000"),
            -0.000123,
            "unicode: héllo wörld ✓ 日本語 🎉",
            False,
            dt.date(1969, 7, 20),
            dt.time(0, 0, 0),
            dt.datetime(1969, 12, 31, 23, 59, 58, 500000),
            dt.datetime(1960, 1, 1, 0, 0, tzinfo=minus_five_thirty),
            b"",
            [1, "two", 3.5, True, None, [], {}],
        ],
        [
            3,
            9_223_372_036_854_775_807,
            Decimal("0.0001"),
            math.inf,
            "quotes ' \" and\nnew\tlines, commas; and \\ backslash",
            True,
            dt.date(9999, 12, 31),
            dt.time(23, 59, 59, 999999),
            dt.datetime(2038, 1, 19, 3, 14, 8),
            dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=dt.UTC),
            bytes(range(256)),
            {"nested": {"deeper": {"deepest": ["x", {"y": 1.25}]}}, "empty": ""},
        ],
        [4, 0, Decimal("-0.5000"), math.nan, "", False, dt.date(1970, 1, 1), None, None, None, None, {}],
        [5, None, None, None, None, None, None, None, None, None, None, None],
    ]
    return WResult(columns, rows)


_STATIC_TABLES: dict[str, Callable[[], WResult]] = {"employees": _employees, "all_types": _all_types}

_NUMBERS_COLUMNS = [
    WColumn("n", "integer", nullable=False),
    WColumn("square", "integer", nullable=False),
    WColumn("label", "string", nullable=False),
    WColumn("ratio", "double", nullable=False),
]


def _numbers(count: int) -> WResult:
    def row_at(index: int) -> list[Any]:
        n = index + 1
        return [n, n * n, f"number {n:07d}", n / 7]

    return WResult(list(_NUMBERS_COLUMNS), LazyRows(count, row_at))
