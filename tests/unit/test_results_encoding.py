"""The batch encoders write what the JSON rule says (README "Values in JSON"), and the bytes of the
row-by-row encoding they replaced wherever that rule does not change them.

Before: jsonl was ``json.dumps(dict(zip(names, row, strict=True)), separators=(",", ":"),
ensure_ascii=False, default=str) + "\\n"`` per row, UTF-8; csv was ``csv.writer.writerow`` per row,
booleans and nested values spelt as JSON. The rule (orjson) changes three things only: NaN and
infinities (not JSON) are null / an empty field, a lone surrogate (not UTF-8) is "?" instead of an
error, and a float of 1e-9 to 1e-4 is spelt without the exponent's zero padding (``7e-07`` is
``7e-7``, ``1e-05`` is ``0.00001``); values that are no JSON value (a datetime, a float subclass)
are spelt as orjson spells them. Parts roll right after the row that fills them, whatever the
batch sizes.
"""

from __future__ import annotations

import csv
import enum
import io
import json
import math
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import hypothesis
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from query_relay.models import Column
from query_relay.results import (
    _CsvEncoder,
    _encoded_batches,
    _JsonLinesEncoder,
    _PartTally,
    _RowEncoder,
    _RowSource,
)

SETTINGS = hypothesis.settings(max_examples=300, derandomize=True, database=None, deadline=None)


class Level(enum.IntEnum):
    LOW = 1


class Name(enum.StrEnum):
    ALICE = "alice"


class Ratio(float):
    pass


def columns(*names: str) -> list[Column]:
    return [Column(name=name, type="keyword") for name in names]


def jsonl_row_by_row(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """What the writer wrote before rows were encoded in batches."""
    return b"".join(
        (
            json.dumps(
                dict(zip(names, row, strict=True)), separators=(",", ":"), ensure_ascii=False, default=str
            )
            + "\n"
        ).encode()
        for row in rows
    )


def by_rule(value: Any) -> Any:
    """What the rule makes of a value before orjson spells it (a test's own walk)."""
    if type(value) is float and not math.isfinite(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return orjson.Fragment(str(int(value)))
    if isinstance(value, str):
        return "".join("?" if 0xD800 <= ord(char) <= 0xDFFF else char for char in value)
    if isinstance(value, list | tuple):
        return [by_rule(item) for item in value]
    if isinstance(value, dict):
        return {by_rule(key): by_rule(item) for key, item in value.items()}
    return value


def jsonl_by_rule(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """The rule, row by row: one orjson call per row's dict."""
    return b"".join(
        orjson.dumps(by_rule(dict(zip(names, row, strict=True))), default=str) + b"\n" for row in rows
    )


# Floats the rule spells otherwise than repr (exponents -5 to -9), and values that are no JSON value.
_RESPELT_FLOAT = re.compile(r"e-0[5-9]$")


def rule_changes(value: Any) -> bool:
    """Whether the rule writes ``value`` otherwise than json.dumps did."""
    if type(value) is float:
        return not math.isfinite(value) or bool(_RESPELT_FLOAT.search(repr(value)))
    if type(value) is str:
        return any(0xD800 <= ord(char) <= 0xDFFF for char in value)
    if type(value) in (list, tuple):
        return any(map(rule_changes, value))
    if type(value) is dict:
        return any(map(rule_changes, value)) or any(map(rule_changes, value.values()))
    return type(value) not in (int, bool, type(None))


def csv_row_by_row(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """Before, and by the rule: NaN and infinities an empty field, nested values by the JSON rule."""

    def field(value: Any) -> Any:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, list | dict):
            return orjson.dumps(by_rule(value), default=str).decode()
        return value

    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(names)
    for row in rows:
        writer.writerow([field(value) for value in row])
    return text.getvalue().encode("utf-8", "replace")


TRICKY_COLUMNS: dict[str, list[Any]] = {
    "text": [
        "plain",
        "",
        'q"uote',
        "back\\slash",
        "new\nline\ttab\r",
        "\x00\x1f\x7f",
        "Zoë 日本語 🎉",
        "\u2028",
    ],
    "ints": [0, -1, 2**63, -(2**70), 10**40, 7, 1, 42],
    "floats": [0.0, -0.0, 1.5, 1e-300, 1e300, 5e-324, 0.1 + 0.2, -2.5e16],
    "non_finite": [math.nan, math.inf, -math.inf, 1.0, 2.0, 3.0, 4.0, 5.0],
    "overflowing_sum": [1e308, 1e308, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    "bools": [True, False, True, True, False, False, True, False],
    "nulls": [None] * 8,
    "bools_and_nulls": [True, None, False, None, None, True, False, None],
    "ints_and_bools": [1, True, 0, False, 2, 3, 4, 5],
    "ints_and_floats": [1, 1.0, 2, 2.5, 3, 3.5, 4, 4.5],
    "text_and_nulls": ["a", None, "b", None, "", None, "c", None],
    "nested": [
        [1, "a"],
        {"k": [None, {"d": 1.5}]},
        [],
        {},
        [True, [False]],
        {"é": "日"},
        [1e300],
        {"": None},
    ],
    "subclasses": [Level.LOW, Name.ALICE, Ratio(2.5), Ratio(math.inf), Level.LOW, Name.ALICE, Ratio(0.5), 3],
    "others": [
        datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
        date(2024, 5, 1),
        Decimal("1.10"),
        b"bytes",
        (1, 2),
        {"when": datetime(2024, 1, 1, tzinfo=UTC)},
        1 + 2j,
        None,
    ],
}


def tricky_rows() -> tuple[list[str], list[list[Any]]]:
    names = list(TRICKY_COLUMNS)
    return names, [list(values) for values in zip(*TRICKY_COLUMNS.values(), strict=True)]


# --- jsonl ---------------------------------------------------------------------------------------


def test_jsonl_batch_is_the_rule_row_by_row_for_tricky_values() -> None:
    names, rows = tricky_rows()
    encoder = _JsonLinesEncoder(columns(*names))
    assert encoder.encode(rows) == jsonl_by_rule(names, rows)
    # and each row alone, and any split of the batch, gives the same bytes
    assert b"".join(encoder.encode([row]) for row in rows) == jsonl_by_rule(names, rows)
    assert encoder.encode(rows[:3]) + encoder.encode(rows[3:]) == jsonl_by_rule(names, rows)


@pytest.mark.parametrize("name", list(TRICKY_COLUMNS))
def test_jsonl_batch_of_one_tricky_column_is_what_json_dumps_wrote_unless_the_rule_changes_it(
    name: str,
) -> None:
    rows = [[value] for value in TRICKY_COLUMNS[name]]
    encoded = _JsonLinesEncoder(columns(name)).encode(rows)
    assert encoded == jsonl_by_rule([name], rows)
    lines, before = (
        encoded.splitlines(keepends=True),
        jsonl_row_by_row([name], rows).splitlines(keepends=True),
    )
    for row, line, line_before in zip(rows, lines, before, strict=True):
        if not rule_changes(row[0]):
            assert line == line_before, row


def test_jsonl_nan_and_infinities_are_null() -> None:
    rows = [[math.nan, [math.inf]], [-math.inf, {"x": math.nan}]]
    assert (
        _JsonLinesEncoder(columns("a", "b")).encode(rows)
        == b'{"a":null,"b":[null]}\n{"a":null,"b":{"x":null}}\n'
    )


def test_jsonl_integers_beyond_64_bits_are_their_exact_digits() -> None:
    rows = [[2**64, -(2**63) - 1, [10**40, {"k": -(10**30)}], 2**64 - 1]]
    encoded = _JsonLinesEncoder(columns("a", "b", "c", "d")).encode(rows)
    assert encoded == jsonl_row_by_row(list("abcd"), rows)
    assert json.loads(encoded) == dict(zip("abcd", rows[0], strict=True))


@pytest.mark.parametrize(
    ("value", "spelt"),
    [
        (1e-05, b"0.00001"),
        (7.579544029403025e-05, b"0.00007579544029403025"),
        (7e-07, b"7e-7"),
        (3.5e-09, b"3.5e-9"),
    ],
)
def test_jsonl_floats_of_1e_9_to_1e_4_lose_the_exponents_zero_padding(value: float, spelt: bytes) -> None:
    encoded = _JsonLinesEncoder(columns("f")).encode([[value]])
    assert encoded == b'{"f":' + spelt + b"}\n"
    assert json.loads(encoded)["f"] == value


def test_jsonl_repeated_column_names_keep_the_first_place_and_the_last_value() -> None:
    names = ["a", "b", "a", "c", "b"]
    rows: list[list[Any]] = [[1, 2, 3, 4, 5], ["x", None, "y", True, 2.5]]
    encoded = _JsonLinesEncoder(columns(*names)).encode(rows)
    assert encoded == jsonl_row_by_row(names, rows)
    assert encoded.splitlines()[0] == b'{"a":3,"b":5,"c":4}'


def test_jsonl_column_names_are_escaped_as_json_keys() -> None:
    names = ['q"uote', "new\nline", "日本", "%s", "{}", ""]
    rows = [[1, 2, 3, 4, 5, 6]]
    assert _JsonLinesEncoder(columns(*names)).encode(rows) == jsonl_row_by_row(names, rows)


def test_jsonl_without_columns_writes_empty_objects() -> None:
    assert _JsonLinesEncoder([]).encode([[], []]) == jsonl_row_by_row([], [[], []]) == b"{}\n{}\n"


def test_a_lone_surrogate_is_a_question_mark_as_the_readers_read_it() -> None:
    # json.dumps kept it, and UTF-8 could not encode it: the job failed
    with pytest.raises(UnicodeEncodeError):
        jsonl_row_by_row(["t"], [["\ud800"]])
    rows = [["a\ud800b", ["\udfff"]]]
    assert _JsonLinesEncoder(columns("\udc00", "n")).encode(rows) == b'{"?":"a?b","n":["?"]}\n'
    csv_encoder = _CsvEncoder(columns("\udc00", "n"))
    assert csv_encoder.header() + csv_encoder.encode(rows) == b'?,n\r\na?b,"[""?""]"\r\n'


@pytest.mark.parametrize("width", [1, 3])
def test_a_row_of_the_wrong_width_is_an_error_in_any_position(width: int) -> None:
    for encoder in (_JsonLinesEncoder(columns("a", "b")), _CsvEncoder(columns("a", "b"))):
        with pytest.raises(ValueError, match=f"a row has {width} values for 2 columns"):
            encoder.encode([[1, 2], [1, 2], list(range(width)), [1, 2]])


TEXT = st.text(alphabet=st.characters())
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | TEXT
    | st.text(alphabet=st.characters(max_codepoint=0x7F))
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
# A column is often of one type (the fast paths), sometimes of anything.
COLUMN_VALUES = st.sampled_from([JSON_VALUES, st.integers(), st.floats(), st.booleans(), st.none(), TEXT])


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[str], list[list[Any]]]:
    names = draw(st.lists(st.sampled_from(["a", "b", "c", "é", 'q"']), max_size=5))
    kinds = [draw(COLUMN_VALUES) for _ in names]
    count = draw(st.integers(min_value=1, max_value=6))
    return names, [[draw(kind) for kind in kinds] for _ in range(count)]


@SETTINGS
@given(tables())
def test_jsonl_batch_is_the_rule_and_what_json_dumps_wrote_where_the_rule_did_not_change(
    table: tuple[list[str], list[list[Any]]],
) -> None:
    names, rows = table
    encoded = _JsonLinesEncoder(columns(*names)).encode(rows)
    assert encoded == jsonl_by_rule(names, rows)
    if not rule_changes([names, rows]):
        assert encoded == jsonl_row_by_row(names, rows)


# --- csv -----------------------------------------------------------------------------------------


def test_csv_nan_and_infinities_are_empty_fields() -> None:
    encoder = _CsvEncoder(columns("a", "b"))
    assert (
        encoder.encode([[math.nan, 1.5], [math.inf, -math.inf], [1e308, 1e308]])
        == b",1.5\r\n,\r\n1e+308,1e+308\r\n"
    )


def test_csv_batch_is_what_the_csv_writer_wrote_row_by_row() -> None:
    names, rows = tricky_rows()
    encoder = _CsvEncoder(columns(*names))
    assert encoder.header() + encoder.encode(rows) == csv_row_by_row(names, rows)
    plain = [["a", 1, 2.5, None], ['q"uote, and\nline', -(2**70), 1e-300, ""]]
    assert encoder.header() + _CsvEncoder(columns(*"wxyz")).encode(plain) == (
        encoder.header() + csv_row_by_row(list("wxyz"), plain).split(b"\r\n", 1)[1]
    )


@pytest.mark.parametrize("name", list(TRICKY_COLUMNS))
@pytest.mark.parametrize("width", [1, 2, 3])
def test_csv_batch_of_tricky_columns_is_what_the_csv_writer_wrote(name: str, width: int) -> None:
    # One column of a kind, beside plain ones: the column-by-column path or the csv module's
    rows = [[value, *range(width - 1)] for value in TRICKY_COLUMNS[name]]
    names = [f"c{index}" for index in range(width)]
    encoder = _CsvEncoder(columns(*names))
    assert encoder.header() + encoder.encode(rows) == csv_row_by_row(names, rows)


# Text that csv quotes (the delimiter, the quote, line ends), or leaves as it is.
CSV_TEXT = st.text(alphabet=st.sampled_from(["a", " ", ",", '"', "\r", "\n", "é", "x"]), max_size=6)
CSV_COLUMN_VALUES = st.sampled_from(
    [
        CSV_TEXT,
        CSV_TEXT | st.none(),
        st.integers(),
        st.integers() | st.none(),
        st.floats(),
        st.floats(allow_nan=False, allow_infinity=False) | st.integers() | st.none(),
        st.booleans(),
        st.booleans() | st.none(),
        st.none(),
        JSON_VALUES,
    ]
)


@st.composite
def csv_tables(draw: st.DrawFn) -> tuple[list[str], list[list[Any]]]:
    kinds = [draw(CSV_COLUMN_VALUES) for _ in range(draw(st.integers(min_value=1, max_value=4)))]
    count = draw(st.integers(min_value=1, max_value=6))
    return [f"c{index}" for index in range(len(kinds))], [
        [draw(kind) for kind in kinds] for _ in range(count)
    ]


@SETTINGS
@given(csv_tables())
def test_csv_batch_is_what_the_csv_writer_wrote_row_by_row_for_generated_tables(
    table: tuple[list[str], list[list[Any]]],
) -> None:
    names, rows = table
    encoder = _CsvEncoder(columns(*names))
    assert encoder.header() + encoder.encode(rows) == csv_row_by_row(names, rows)


# --- parts ---------------------------------------------------------------------------------------


def encode_parts(encoder: _RowEncoder, rows: list[list[Any]], part_max_bytes: int) -> list[tuple[int, bytes]]:
    """(rows, bytes) of each part, as the writer cuts them (part 0 even without rows)."""
    source = _RowSource(iter(rows))
    parts: list[tuple[int, bytes]] = []
    while True:
        tally = _PartTally()
        data = b"".join(_encoded_batches(source, encoder, part_max_bytes, tally))
        assert tally.uncompressed_bytes == len(data)
        parts.append((tally.rows, data))
        if source.exhausted():
            return parts


def reference_parts(
    encoder: _RowEncoder, rows: list[list[Any]], part_max_bytes: int
) -> list[tuple[int, bytes]]:
    """One row at a time: a part ends right after the row that makes it reach part_max_bytes."""
    parts: list[tuple[int, bytes]] = []
    count, data = 0, encoder.header()
    for row in rows:
        data += encoder.encode([row])
        count += 1
        if len(data) >= part_max_bytes:
            parts.append((count, data))
            count, data = 0, encoder.header()
    if count or not parts:
        parts.append((count, data))
    return parts


def uneven_rows(count: int) -> list[list[Any]]:
    """Rows whose size jumps now and then (batch sizes adapt to the rows seen so far)."""
    return [[number, "x" * (5000 if number % 97 in (3, 4, 5) else number % 13)] for number in range(count)]


@pytest.mark.parametrize("part_max_bytes", [1, 50, 1000, 4096, 65_536, 10**9])
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_parts_roll_after_the_row_that_fills_them_whatever_the_batches(fmt: str, part_max_bytes: int) -> None:
    rows = uneven_rows(3000)
    make = _JsonLinesEncoder if fmt == "jsonl" else _CsvEncoder
    parts = encode_parts(make(columns("n", "s")), rows, part_max_bytes)
    assert parts == reference_parts(make(columns("n", "s")), rows, part_max_bytes)
    assert sum(count for count, _ in parts) == len(rows)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_no_rows_is_one_part_with_the_header_only(fmt: str) -> None:
    encoder = _JsonLinesEncoder(columns("n")) if fmt == "jsonl" else _CsvEncoder(columns("n"))
    assert encode_parts(encoder, [], 100) == [(0, b"" if fmt == "jsonl" else b"n\r\n")]
