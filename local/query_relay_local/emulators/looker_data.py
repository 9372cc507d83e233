"""The Looker emulator's model and query engine: one LookML-like model with generated data.

Model `ecommerce`, explores (a query's `view`):
- `orders`: 3,000 orders over 2024, each joined to its user and product (views orders, users,
  products);
- `users`: 500 users (view users); `products`: 60 products (view products).

Every value is a pure function of a row number (splitmix64 over integers), so the same query gives
the same rows on every run and machine. A query groups by its dimensions and aggregates its
measures like Looker's generated SQL does (`GROUP BY` every dimension; counts are distinct counts
of the view's primary key and sums add each primary key once: symmetric aggregates), then sorts
and limits.

Filters understand a useful part of Looker's filter expressions: strings (`Complete`,
`Shipped,Complete`, `-Cancelled`, `%shoe%`, `EMPTY`, `NULL`, `-NULL`), numbers (`>100`, `>=5`,
`<=10`, `5 to 10`, `[5,10)`, `NOT 3`, `>5 AND <10`, `NULL`), dates (`2024`, `2024-03`,
`2024-03-05`, `after 2024-06-01`, `before 2024-02-01`, `2024-01-01 to 2024-04-01`, `NULL`) and
yesno (`Yes`, `No`). A filter on a measure applies after aggregation (SQL `HAVING`). Anything else
is a `LookerQueryError`, the emulator's stand-in for a database error.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache, partial
from typing import Literal

Value = str | int | float | None
Row = dict[str, Value]

MODEL = "ecommerce"
DEFAULT_LIMIT = 500
_MASK64 = 2**64 - 1


class LookerQueryError(Exception):
    """A query Looker would send to the database and get an error back for."""

    def __init__(self, message: str, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


def _mix(value: int) -> int:
    """splitmix64: a cheap, well-spread 64-bit hash of an integer."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


# --- fields --------------------------------------------------------------------------------------

FilterKind = Literal["string", "number", "date", "yesno"]
Aggregate = Literal["count", "sum", "average"]


@dataclass(frozen=True)
class LookerField:
    """A dimension or measure as Looker describes it (json_detail `fields`, csv header labels)."""

    name: str  # "orders.status"
    label_short: str  # "Status"
    category: Literal["dimension", "measure"]
    type: str  # Looker's field type: "number", "string", "date_date", "yesno", "count", "sum", ...
    filter_kind: FilterKind
    sql: str
    # measures only: the primary key counted or de-duplicated, and the dimension summed
    aggregate: Aggregate | None = None
    key: str | None = None
    source: str | None = None

    @property
    def view(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def view_label(self) -> str:
        return self.view.replace("_", " ").title()

    @property
    def label(self) -> str:
        return f"{self.view_label} {self.label_short}"

    @property
    def is_measure(self) -> bool:
        return self.category == "measure"

    def describe(self) -> dict[str, object]:
        """The field as json_detail / json_bi metadata lists it."""
        return {
            "name": self.name,
            "label": self.label,
            "label_short": self.label_short,
            "view": self.view,
            "view_label": self.view_label,
            "category": self.category,
            "type": self.type,
            "is_numeric": self.filter_kind == "number" or self.is_measure,
            "measure": self.is_measure,
            "hidden": False,
            "sql": self.sql,
            "sortable": True,
        }


def _dimension(name: str, label: str, field_type: str, kind: FilterKind, sql: str) -> LookerField:
    return LookerField(name, label, "dimension", field_type, kind, sql)


def _measure(name: str, label: str, aggregate: Aggregate, key: str, source: str | None = None) -> LookerField:
    sql = f"${{{key}}}" if aggregate == "count" else f"${{{source}}}"
    return LookerField(name, label, "measure", aggregate, "number", sql, aggregate, key, source)


ORDERS_FIELDS = (
    _dimension("orders.id", "ID", "number", "number", "${TABLE}.id"),
    _dimension("orders.status", "Status", "string", "string", "${TABLE}.status"),
    _dimension("orders.created_date", "Created Date", "date_date", "date", "${TABLE}.created_at"),
    _dimension("orders.created_month", "Created Month", "date_month", "date", "${TABLE}.created_at"),
    _dimension("orders.created_year", "Created Year", "date_year", "date", "${TABLE}.created_at"),
    _dimension("orders.quantity", "Quantity", "number", "number", "${TABLE}.quantity"),
    _dimension("orders.total_amount", "Total Amount", "number", "number", "${TABLE}.total_amount"),
    _dimension("orders.is_gift", "Is Gift", "yesno", "yesno", "${TABLE}.is_gift"),
    _dimension("orders.user_id", "User ID", "number", "number", "${TABLE}.user_id"),
    _dimension("orders.product_id", "Product ID", "number", "number", "${TABLE}.product_id"),
    _measure("orders.count", "Count", "count", "orders.id"),
    _measure("orders.total_revenue", "Total Revenue", "sum", "orders.id", "orders.total_amount"),
    _measure("orders.average_amount", "Average Amount", "average", "orders.id", "orders.total_amount"),
)
USERS_FIELDS = (
    _dimension("users.id", "ID", "number", "number", "${TABLE}.id"),
    _dimension("users.country", "Country", "string", "string", "${TABLE}.country"),
    _dimension("users.age", "Age", "number", "number", "${TABLE}.age"),
    _dimension("users.created_date", "Created Date", "date_date", "date", "${TABLE}.created_at"),
    _measure("users.count", "Count", "count", "users.id"),
    _measure("users.average_age", "Average Age", "average", "users.id", "users.age"),
)
PRODUCTS_FIELDS = (
    _dimension("products.id", "ID", "number", "number", "${TABLE}.id"),
    _dimension("products.category", "Category", "string", "string", "${TABLE}.category"),
    _dimension("products.brand", "Brand", "string", "string", "${TABLE}.brand"),
    _dimension("products.name", "Name", "string", "string", "${TABLE}.name"),
    _dimension("products.retail_price", "Retail Price", "number", "number", "${TABLE}.retail_price"),
    _measure("products.count", "Count", "count", "products.id"),
)


# --- generated data ------------------------------------------------------------------------------

ORDER_COUNT, USER_COUNT, PRODUCT_COUNT = 3_000, 500, 60
_COUNTRIES = ("United States", "Germany", "France", "Japan", "Brazil", "Canada", "India", "Spain")
_CATEGORIES = ("Jeans", "Tops", "Shoes", "Outerwear", "Accessories", "Swim", "Sleepwear", "Socks")
_BRANDS = (
    "Allegra", "Bellmore", "Calvera", "Dunmore", "Ellery", "Fairview", "Granton", "Hollis",
    "Ivers", "Juniper", "Kestrel", "Linden",
)  # fmt: skip
_STATUSES = ("Complete", "Complete", "Complete", "Complete", "Complete", "Shipped", "Shipped", "Processing")
_RARE_STATUSES = ("Cancelled", "Returned")
_YEAR_START = date(2024, 1, 1)


def _user(number: int) -> Row:
    draw = _mix(0x05E7_0001 << 32 ^ number)
    age_draw = (draw >> 8) % 100
    return {
        "users.id": number,
        "users.country": _COUNTRIES[draw % len(_COUNTRIES)],
        "users.age": None if age_draw < 4 else 18 + (draw >> 16) % 60,
        "users.created_date": (date(2023, 1, 1) + timedelta(days=(draw >> 24) % 365)).isoformat(),
    }


def _product(number: int) -> Row:
    draw = _mix(0x05E7_0002 << 32 ^ number)
    category = _CATEGORIES[draw % len(_CATEGORIES)]
    brand = _BRANDS[(draw >> 8) % len(_BRANDS)]
    return {
        "products.id": number,
        "products.category": category,
        "products.brand": brand,
        "products.name": f"{brand} {category} No. {number}",
        "products.retail_price": round(5 + ((draw >> 16) % 19_500) / 100, 2),
    }


def _order(number: int, products: Sequence[Row]) -> Row:
    draw = _mix(0x05E7_0003 << 32 ^ number)
    second = _mix(draw)
    product_id = 1 + (draw >> 12) % PRODUCT_COUNT
    quantity = 1 + (draw >> 20) % 4
    price = products[product_id - 1]["products.retail_price"]
    assert isinstance(price, float | int)
    status_draw = draw % 20
    created = _YEAR_START + timedelta(days=(number - 1) * 366 // ORDER_COUNT)
    return {
        "orders.id": number,
        "orders.status": _RARE_STATUSES[status_draw % 2] if status_draw >= 16 else _STATUSES[status_draw % 8],
        "orders.created_date": created.isoformat(),
        "orders.created_month": created.isoformat()[:7],
        "orders.created_year": created.year,
        "orders.quantity": quantity,
        "orders.total_amount": round(price * quantity, 2),
        "orders.is_gift": "Yes" if (second % 10) == 0 else "No",
        "orders.user_id": 1 + (second >> 8) % USER_COUNT,
        "orders.product_id": product_id,
    }


@lru_cache(maxsize=1)
def _users() -> tuple[Row, ...]:
    return tuple(_user(number) for number in range(1, USER_COUNT + 1))


@lru_cache(maxsize=1)
def _products() -> tuple[Row, ...]:
    return tuple(_product(number) for number in range(1, PRODUCT_COUNT + 1))


@lru_cache(maxsize=1)
def _orders_explore_rows() -> tuple[Row, ...]:
    users, products = _users(), _products()
    rows = []
    for number in range(1, ORDER_COUNT + 1):
        order = _order(number, products)
        user_id, product_id = order["orders.user_id"], order["orders.product_id"]
        assert isinstance(user_id, int)
        assert isinstance(product_id, int)
        rows.append({**order, **users[user_id - 1], **products[product_id - 1]})
    return tuple(rows)


@dataclass(frozen=True)
class Explore:
    name: str
    base_table: str
    fields: tuple[LookerField, ...]
    rows: Callable[[], tuple[Row, ...]]
    joins: tuple[str, ...] = ()
    by_name: dict[str, LookerField] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {item.name: item for item in self.fields})


EXPLORES: dict[str, Explore] = {
    "orders": Explore(
        "orders",
        "ecommerce.orders",
        ORDERS_FIELDS + USERS_FIELDS + PRODUCTS_FIELDS,
        _orders_explore_rows,
        joins=("users", "products"),
    ),
    "users": Explore("users", "ecommerce.users", USERS_FIELDS, _users),
    "products": Explore("products", "ecommerce.products", PRODUCTS_FIELDS, _products),
}


def find_explore(model: str, view: str) -> Explore | None:
    return EXPLORES.get(view) if model == MODEL else None


# --- filters -------------------------------------------------------------------------------------

Predicate = Callable[[Value], bool]
_TOP_LEVEL_COMMA = re.compile(r",(?![^\[\(]*[\]\)])")  # commas outside [a,b] / (a,b) intervals
_NUMBER = r"-?\d+(?:\.\d+)?"
_INTERVAL = re.compile(rf"([\[\(])\s*({_NUMBER}|-inf)?\s*,\s*({_NUMBER}|inf)?\s*([\]\)])")
_COMPARISON = re.compile(rf"(>=|<=|!=|<>|>|<|=)?\s*({_NUMBER})")
_RANGE = re.compile(rf"({_NUMBER})\s+to\s+({_NUMBER})", re.IGNORECASE)
_DATE = re.compile(r"(\d{4})(?:[-/](\d{1,2}))?(?:[-/](\d{1,2}))?")


def compile_filter(target: LookerField, expression: object) -> Predicate:
    """A predicate over one field's values for a Looker filter expression."""
    if not isinstance(expression, str):
        raise LookerQueryError(f"Filter value for {target.name} must be a string, got {expression!r}")
    text = expression.strip()
    if text == "":
        return lambda value: True  # Looker treats an empty filter as "is any value"
    try:
        compilers = {
            "string": _string_filter,
            "number": _number_filter,
            "date": _date_filter,
            "yesno": _yesno_filter,
        }
        return compilers[target.filter_kind](text)
    except ValueError as error:
        raise LookerQueryError(
            f"Invalid filter expression for {target.name}: {expression!r}", details=str(error)
        ) from None


def _negated(test: Predicate, *, null_passes: bool = True) -> Predicate:
    """A negated term; Looker keeps NULLs under `-X` for strings but not under `NOT n` for numbers."""

    def passes(value: Value) -> bool:
        if value is None:
            return null_passes and not test(value)
        return not test(value)

    return passes


def _all_of(parts: Sequence[Predicate]) -> Predicate:
    def passes(value: Value) -> bool:
        return all(part(value) for part in parts)

    return passes


def _any_and_all(includes: list[Predicate], excludes: list[Predicate]) -> Predicate:
    """Looker's rule: positive terms are OR'ed, negated terms AND'ed."""

    def matches(value: Value) -> bool:
        if includes and not any(test(value) for test in includes):
            return False
        return all(test(value) for test in excludes)

    return matches


def _string_filter(text: str) -> Predicate:
    includes: list[Predicate] = []
    excludes: list[Predicate] = []
    for raw_term in text.split(","):
        term = raw_term.strip()
        negate = term.startswith("-")
        term = term[1:] if negate else term
        test = _string_term(term)
        if negate:
            excludes.append(_negated(test))
        else:
            includes.append(test)
    return _any_and_all(includes, excludes)


def _string_term(term: str) -> Predicate:
    if term == "NULL":
        return lambda value: value is None
    if term == "EMPTY":
        return lambda value: value is None or value == ""
    wanted = term.lower()
    if "%" in term or "_" in term:
        pattern = wanted.replace("*", "[*]").replace("?", "[?]").replace("%", "*").replace("_", "?")
        return lambda value: value is not None and fnmatch.fnmatchcase(str(value).lower(), pattern)
    return lambda value: value is not None and str(value).lower() == wanted


def _number_filter(text: str) -> Predicate:
    includes: list[Predicate] = []
    excludes: list[Predicate] = []
    for raw_term in _TOP_LEVEL_COMMA.split(text):
        term = raw_term.strip()
        upper = term.upper()
        if upper == "NULL":
            includes.append(lambda value: value is None)
        elif upper == "NOT NULL":
            excludes.append(lambda value: value is not None)
        elif upper.startswith("NOT "):
            inner = _number_term(term[4:].strip())
            excludes.append(_negated(inner, null_passes=False))
        else:
            parts = [_number_term(part.strip()) for part in re.split(r"\s+AND\s+", term, flags=re.IGNORECASE)]
            includes.append(_all_of(parts))
    return _any_and_all(includes, excludes)


def _number_term(term: str) -> Predicate:
    if match := _INTERVAL.fullmatch(term):
        opening, low, high, closing = match.groups()
        low_value = None if low in (None, "-inf") else float(low)
        high_value = None if high in (None, "inf") else float(high)
        return lambda value: _in_interval(value, low_value, high_value, opening == "[", closing == "]")
    if match := _RANGE.fullmatch(term):
        low_value, high_value = float(match.group(1)), float(match.group(2))
        return lambda value: _in_interval(value, low_value, high_value, True, True)
    if match := _COMPARISON.fullmatch(term):
        operator, number = match.group(1) or "=", float(match.group(2))
        return lambda value: _compare(value, operator, number)
    raise ValueError(f"not a number filter: {term!r}")


def _in_interval(
    value: Value, low: float | None, high: float | None, low_closed: bool, high_closed: bool
) -> bool:
    if not isinstance(value, int | float):
        return False
    if low is not None and (value < low or (value == low and not low_closed)):
        return False
    return high is None or value < high or (value == high and high_closed)


def _compare(value: Value, operator: str, number: float) -> bool:
    if not isinstance(value, int | float):
        return False
    checks = {
        "=": value == number,
        "!=": value != number,
        "<>": value != number,
        ">": value > number,
        ">=": value >= number,
        "<": value < number,
        "<=": value <= number,
    }
    return checks[operator]


def _date_filter(text: str) -> Predicate:
    includes: list[Predicate] = []
    excludes: list[Predicate] = []
    for raw_term in text.split(","):
        term = raw_term.strip()
        upper = term.upper()
        if upper == "NULL":
            includes.append(lambda value: value is None)
        elif upper == "NOT NULL":
            excludes.append(lambda value: value is not None)
        else:
            low, high = _date_range(term)
            includes.append(partial(_date_in, low=low, high=high))
    return _any_and_all(includes, excludes)


def _date_range(term: str) -> tuple[date | None, date | None]:
    """[low, high) for one date term."""
    lowered = term.lower()
    if lowered.startswith("after "):
        return _period(term[6:].strip())[0], None
    if lowered.startswith("before "):
        return None, _period(term[7:].strip())[0]
    bounds = re.split(r"\s+to\s+", term, flags=re.IGNORECASE)
    if len(bounds) == 2:
        return _period(bounds[0].strip())[0], _period(bounds[1].strip())[0]
    return _period(term)


def _period(text: str) -> tuple[date, date]:
    """The [start, end) of a year, month or day written YYYY, YYYY-MM or YYYY-MM-DD (or with /)."""
    match = _DATE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a date: {text!r}")
    year, month, day = (int(part) if part else None for part in match.groups())
    assert year is not None
    if month is None:
        return date(year, 1, 1), date(year + 1, 1, 1)
    start = date(year, month, day or 1)
    if day is not None:
        return start, start + timedelta(days=1)
    return start, date(year + month // 12, month % 12 + 1, 1)


def _date_in(value: Value, *, low: date | None, high: date | None) -> bool:
    if value is None:
        return False
    start, _ = _period(str(value))  # a day, month or year value: where its period starts
    return (low is None or start >= low) and (high is None or start < high)


def _yesno_filter(text: str) -> Predicate:
    wanted = text.strip().lower()
    if wanted not in ("yes", "no"):
        raise ValueError("a yesno filter is Yes or No")
    return lambda value: isinstance(value, str) and value.lower() == wanted


# --- running a query -----------------------------------------------------------------------------


@dataclass(frozen=True)
class QuerySpec:
    """The parts of a Looker query the engine reads."""

    model: str
    view: str
    fields: tuple[str, ...]
    filters: Mapping[str, object]
    sorts: tuple[str, ...]
    limit: int | None  # None: DEFAULT_LIMIT; -1: no limit


@dataclass(frozen=True)
class QueryResult:
    fields: tuple[LookerField, ...]
    rows: tuple[tuple[Value, ...], ...]
    sorts: tuple[tuple[str, bool], ...]  # (field, descending)
    sql: str

    def as_dicts(self) -> list[Row]:
        names = [item.name for item in self.fields]
        return [dict(zip(names, row, strict=True)) for row in self.rows]


def run_query(spec: QuerySpec) -> QueryResult:
    explore = find_explore(spec.model, spec.view)
    if explore is None:
        raise LookerQueryError(f"Unknown explore '{spec.model}::{spec.view}'")
    if not spec.fields:
        raise LookerQueryError("Must query at least one dimension or measure")
    selected = tuple(_field(explore, name) for name in spec.fields)
    filters = [
        (_field(explore, name), compile_filter(_field(explore, name), text))
        for name, text in spec.filters.items()
    ]
    sorts = _sorts(spec.sorts, selected)
    where = [(item.name, test) for item, test in filters if not item.is_measure]
    having = [(item.name, test) for item, test in filters if item.is_measure]
    grouped = _aggregate(explore, selected, where)
    measure_positions = {item.name: index for index, item in enumerate(selected) if item.is_measure}
    for name, test in having:
        if name not in measure_positions:
            raise LookerQueryError(f"Filter on measure {name} requires it in the query's fields")
        position = measure_positions[name]
        grouped = [row for row in grouped if test(row[position])]
    ordered = _sorted(grouped, selected, sorts)
    limit = DEFAULT_LIMIT if spec.limit is None else spec.limit
    limited = ordered if limit < 0 else ordered[:limit]
    return QueryResult(selected, tuple(limited), sorts, _sql(explore, selected, spec, sorts, limit))


def _field(explore: Explore, name: str) -> LookerField:
    try:
        return explore.by_name[name]
    except KeyError:
        raise LookerQueryError(
            f"Unknown column '{name}' in 'field list'",
            details=f"The field {name} does not exist in explore {explore.name}.",
        ) from None


def _sorts(requested: Iterable[str], selected: Sequence[LookerField]) -> tuple[tuple[str, bool], ...]:
    names = [item.name for item in selected]
    sorts: list[tuple[str, bool]] = []
    for text in requested:
        parts = text.split()
        if not parts or len(parts) > 2 or (len(parts) == 2 and parts[1].lower() not in ("asc", "desc")):
            raise LookerQueryError(f"Invalid sort '{text}': expected 'view.field' or 'view.field desc'")
        if parts[0] not in names:
            raise LookerQueryError(f"Sort field '{parts[0]}' is not among the query's fields")
        sorts.append((parts[0], len(parts) == 2 and parts[1].lower() == "desc"))
    if sorts:
        return tuple(sorts)
    # Looker's default: the first date dimension descending, else the first measure descending,
    # else the first dimension ascending.
    for item in selected:
        if item.filter_kind == "date" and not item.is_measure:
            return ((item.name, True),)
    for item in selected:
        if item.is_measure:
            return ((item.name, True),)
    return ((selected[0].name, False),)


def _aggregate(
    explore: Explore, selected: Sequence[LookerField], where: Sequence[tuple[str, Predicate]]
) -> list[tuple[Value, ...]]:
    dimensions = [item for item in selected if not item.is_measure]
    measures = [item for item in selected if item.is_measure]
    groups: dict[tuple[Value, ...], list[dict[Value, Value]]] = {}
    for row in explore.rows():
        if not all(test(row[name]) for name, test in where):
            continue
        key = tuple(row[item.name] for item in dimensions)
        # per measure: primary key -> value, so each row of the measured view counts once
        states = groups.setdefault(key, [{} for _ in measures])
        for state, measure in zip(states, measures, strict=True):
            assert measure.key is not None
            state[row[measure.key]] = row[measure.source] if measure.source else None
    if not dimensions and not groups:
        groups[()] = [{} for _ in measures]  # measures only: one row, even over no data
    result: list[tuple[Value, ...]] = []
    for key, states in groups.items():
        values = iter(key)
        measured = iter(
            _measure_value(measure, state) for measure, state in zip(measures, states, strict=True)
        )
        result.append(tuple(next(measured) if item.is_measure else next(values) for item in selected))
    return result


def _measure_value(measure: LookerField, state: Mapping[Value, Value]) -> Value:
    if measure.aggregate == "count":
        return len(state)
    numbers = [value for value in state.values() if isinstance(value, int | float)]
    if measure.aggregate == "sum":
        return round(sum(numbers), 2)
    return round(sum(numbers) / len(numbers), 4) if numbers else None


def _sorted(
    rows: list[tuple[Value, ...]], selected: Sequence[LookerField], sorts: Sequence[tuple[str, bool]]
) -> list[tuple[Value, ...]]:
    positions = {item.name: index for index, item in enumerate(selected)}
    ordered = list(rows)
    # Stable sorts from the last key to the first; nulls sort low (Looker's null_sort_treatment).
    for name, descending in reversed(sorts):
        position = positions[name]
        ordered.sort(key=partial(_sort_key_at, position), reverse=descending)
    return ordered


def _sort_key_at(position: int, row: Sequence[Value]) -> tuple[int, float, str]:
    return _sort_key(row[position])


def _sort_key(value: Value) -> tuple[int, float, str]:
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, int | float):
        return (1, float(value), "")
    return (1, 0.0, value)


def _sql(
    explore: Explore,
    selected: Sequence[LookerField],
    spec: QuerySpec,
    sorts: Sequence[tuple[str, bool]],
    limit: int,
) -> str:
    """A plausible SQL text for json_detail's `sql` and the `sql` result format."""
    columns = ",\n    ".join(f'{_column_sql(item)} AS "{item.name}"' for item in selected)
    lines = [f"SELECT\n    {columns}", f"FROM {explore.base_table} AS {explore.name}"]
    lines += [
        f"LEFT JOIN ecommerce.{view} AS {view} ON orders.{view[:-1]}_id = {view}.id" for view in explore.joins
    ]
    conditions = [f"({name} matches {text!r})" for name, text in spec.filters.items()]
    if conditions:
        lines.append("WHERE " + " AND ".join(conditions))
    dimensions = [str(index) for index, item in enumerate(selected, start=1) if not item.is_measure]
    if dimensions and len(dimensions) < len(selected):
        lines.append("GROUP BY " + ", ".join(dimensions))
    lines.append("ORDER BY " + ", ".join(f'"{name}"{" DESC" if desc else ""}' for name, desc in sorts))
    if limit >= 0:
        lines.append(f"FETCH NEXT {limit} ROWS ONLY")
    return "\n".join(lines)


def _column_sql(item: LookerField) -> str:
    table_column = item.sql.replace("${TABLE}", item.view)
    if not item.is_measure:
        return table_column
    if item.aggregate == "count":
        return f"COUNT(DISTINCT {item.key})"
    return f"{(item.aggregate or '').upper()}({item.source})"
