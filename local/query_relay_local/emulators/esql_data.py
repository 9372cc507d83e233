"""The ES|QL emulator's indices: deterministic data generated from the row number.

Every cell is a pure function of (index seed, row number), computed with integer arithmetic
(splitmix64), so the same query gives the same rows on every run, machine and Python version, and
any row can be produced without the ones before it. Nothing is stored: `FROM synthetic_5000000`
streams five million rows in constant memory.

Indices:
- `employees`: 1,000 people (`emp_no` 10001..11000), with some null `gender` and `languages`.
- `web_logs`: 100,000 requests over January 2024, one every ~25 s; `bytes` is null for 304s.
- `synthetic_<N>` for any N: N rows of about 100 bytes each as JSON (a little less as CSV), for
  benchmarks. Wildcards in FROM (`web_*`) match `employees` and `web_logs` only.
Columns are listed in alphabetical order, as ES lists an index's fields.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from .esql_types import (
    BOOLEAN,
    DATE,
    DOUBLE,
    INTEGER,
    IP,
    KEYWORD,
    LONG,
    MILLIS_PER_DAY,
    TEXT,
    Column,
    Row,
    millis_of,
)

SYNTHETIC_PREFIX = "synthetic_"
_SYNTHETIC_NAME = re.compile(r"synthetic_(\d{1,12})")
_MASK64 = 2**64 - 1


@dataclass(frozen=True)
class GeneratedIndex:
    name: str
    columns: tuple[Column, ...]
    row_count: int
    make_row: Callable[[int], Row]

    def rows(self) -> Iterator[Row]:
        return map(self.make_row, range(self.row_count))


def _mix(value: int) -> int:
    """splitmix64: a cheap, well-spread 64-bit hash of an integer."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _millis(year: int, month: int, day: int) -> int:
    return millis_of(datetime(year, month, day))  # millis_of reads a naive time as UTC


# --- employees -------------------------------------------------------------------------------

_FIRST_NAMES = (
    "Georgi", "Bezalel", "Parto", "Chirstian", "Kyoichi", "Anneke", "Tzvetan", "Saniya", "Sumant",
    "Duangkaew", "Mary", "Patricio", "Eberhardt", "Berni", "Guoxiang", "Kazuhito", "Cristinel",
    "Kazuhide", "Lillian", "Mayuko", "Ramzi", "Shahaf", "Bojan", "Suzette", "Prasadram", "Yongqiao",
    "Divier", "Domenick", "Otmar", "Elvis", "Karsten", "Jeong", "Arif", "Bader", "Alain", "Adamantios",
    "Pradeep", "Huan", "Alejandro", "Weiyi",
)  # fmt: skip
_LAST_NAMES = (
    "Facello", "Simmel", "Bamford", "Koblick", "Maliniak", "Preusig", "Zielinski", "Kalloufi", "Peac",
    "Piveteau", "Sluis", "Bridgland", "Terkki", "Genin", "Nooteboom", "Cappelletti", "Bouloucos",
    "Peha", "Haddadi", "Warwick", "Erde", "Famili", "Montemayor", "Pettey", "Heyers", "Berztiss",
    "Reistad", "Tempesti", "Herbst", "Demeyer", "Joslin", "Reistad", "Merlo", "Swan", "Chappelet",
    "Portugali", "Lortz", "Brender", "Meriste", "Lenart",
)  # fmt: skip
_DEPARTMENTS = ("Engineering", "Finance", "Legal", "Marketing", "Operations", "Research", "Sales", "Support")
_EMPLOYEES_SEED = 0x5EED_0001
_BIRTH_FROM, _BIRTH_DAYS = _millis(1952, 2, 1), 4_700
_HIRE_FROM, _HIRE_DAYS = _millis(1985, 1, 1), 5_470

EMPLOYEES_COLUMNS = (
    Column("birth_date", DATE),
    Column("department", KEYWORD),
    Column("emp_no", INTEGER),
    Column("first_name", KEYWORD),
    Column("gender", KEYWORD),
    Column("hire_date", DATE),
    Column("languages", INTEGER),
    Column("last_name", KEYWORD),
    Column("salary", INTEGER),
    Column("still_hired", BOOLEAN),
)


def _employee(row_number: int) -> Row:
    first = _mix((_EMPLOYEES_SEED << 32) ^ row_number)
    second = _mix(first)
    gender_draw = first % 100
    languages_draw = (first >> 8) % 100
    return (
        _BIRTH_FROM + (second % _BIRTH_DAYS) * MILLIS_PER_DAY,
        _DEPARTMENTS[(first >> 16) % len(_DEPARTMENTS)],
        10_001 + row_number,
        _FIRST_NAMES[(first >> 24) % len(_FIRST_NAMES)],
        None if gender_draw < 3 else ("M" if gender_draw % 2 else "F"),
        _HIRE_FROM + ((second >> 16) % _HIRE_DAYS) * MILLIS_PER_DAY,
        None if languages_draw < 5 else 1 + languages_draw % 5,
        _LAST_NAMES[(first >> 32) % len(_LAST_NAMES)],
        25_000 + (second >> 32) % 50_000,
        bool((second >> 48) & 1),
    )


@lru_cache(maxsize=1)
def _employees() -> tuple[Row, ...]:
    return tuple(_employee(n) for n in range(1_000))


# --- web_logs --------------------------------------------------------------------------------

_WEB_LOGS_SEED = 0x5EED_0002
_WEB_LOGS_FROM = _millis(2024, 1, 1)
_WEB_LOGS_STEP_MILLIS = 25_000
_HOSTS = ("web-01", "web-02", "web-03", "web-04", "web-05")
_PAGES = ("/", "/products", "/products/{n}", "/search?q=item{n}", "/static/app.js", "/about")
_POSTS = ("/cart", "/checkout", "/api/v1/orders/{n}")

WEB_LOGS_COLUMNS = (
    Column("@timestamp", DATE),
    Column("bytes", LONG),
    Column("client_ip", IP),
    Column("host", KEYWORD),
    Column("message", TEXT),
    Column("response_ms", DOUBLE),
    Column("status", INTEGER),
    Column("url", KEYWORD),
)


def _status(draw: int) -> int:
    if draw < 78:
        return 200
    if draw < 84:
        return 304
    if draw < 93:
        return 404
    return 500 if draw < 97 else 503


def _web_log(row_number: int) -> Row:
    first = _mix((_WEB_LOGS_SEED << 32) ^ row_number)
    second = _mix(first)
    third = _mix(second)
    status = _status(first % 100)
    is_post = (first >> 8) % 10 == 0
    templates = _POSTS if is_post else _PAGES
    url = templates[(first >> 12) % len(templates)].replace("{n}", str((first >> 20) % 500))
    method = "POST" if is_post else "GET"
    return (
        _WEB_LOGS_FROM + row_number * _WEB_LOGS_STEP_MILLIS + second % _WEB_LOGS_STEP_MILLIS,
        None if status == 304 else 200 + (second >> 16) % 50_000,
        f"10.{(second >> 32) % 4}.{(second >> 36) % 256}.{(second >> 44) % 254 + 1}",
        _HOSTS[(first >> 28) % len(_HOSTS)],
        f"{method} {url} HTTP/1.1 {status}",
        (third % 200_000) / 100,
        status,
        url,
    )


# --- synthetic_<N> ---------------------------------------------------------------------------

_SYNTHETIC_SEED = 0x5EED_0003
_SYNTHETIC_FROM = _millis(2024, 1, 1)
_CATEGORIES = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")

SYNTHETIC_COLUMNS = (
    Column("@timestamp", DATE),
    Column("category", KEYWORD),
    Column("count", INTEGER),
    Column("flag", BOOLEAN),
    Column("id", LONG),
    Column("note", TEXT),
    Column("source_ip", IP),
    Column("value", DOUBLE),
)


def _synthetic(row_number: int) -> Row:
    draw = _mix((_SYNTHETIC_SEED << 40) ^ row_number)
    category = _CATEGORIES[draw & 7]
    return (
        _SYNTHETIC_FROM + row_number * 1000,
        category,
        (draw >> 3) % 1000,
        bool((draw >> 13) & 1),
        row_number,
        f"synthetic row {row_number} of {category}",
        f"192.168.{(draw >> 14) & 255}.{(draw >> 22) & 255}",
        ((draw >> 30) % 10_000_000) / 100,
    )


# --- catalog ---------------------------------------------------------------------------------

FIXED_INDICES: dict[str, GeneratedIndex] = {
    "employees": GeneratedIndex("employees", EMPLOYEES_COLUMNS, 1_000, lambda n: _employees()[n]),
    "web_logs": GeneratedIndex("web_logs", WEB_LOGS_COLUMNS, 100_000, _web_log),
}


def find_index(name: str) -> GeneratedIndex | None:
    """The index called exactly `name`, or None when there is no such index."""
    if name in FIXED_INDICES:
        return FIXED_INDICES[name]
    match = _SYNTHETIC_NAME.fullmatch(name)
    if match is None:
        return None
    return GeneratedIndex(name, SYNTHETIC_COLUMNS, int(match.group(1)), _synthetic)


def indices_matching(pattern: str) -> list[GeneratedIndex]:
    """The indices a FROM pattern names; wildcards only expand over the fixed indices."""
    if "*" not in pattern:
        index = find_index(pattern)
        return [] if index is None else [index]
    return [index for name, index in FIXED_INDICES.items() if fnmatch.fnmatchcase(name, pattern)]
