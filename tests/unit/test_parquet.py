"""Parquet parts (query_relay.parquet through ResultWriter, into moto's S3): every provider's column
types land as the documented Arrow types with the exact values; values that do not fit fail with
ColumnTypeMismatch naming the column and the row, never the value."""

from __future__ import annotations

import io
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from query_relay import column_types, parquet
from query_relay.column_types import Kind, kind_of
from query_relay.exceptions import ColumnTypeMismatch
from query_relay.json_rule import encode_json
from query_relay.models import Column, OutputSpec, ProviderName
from query_relay.providers.base import TabularResult
from query_relay.results import Landed, ResultWriter, WrittenResult
from tests.moto_server import moto_client
from tests.parquet_rule import expected


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    with moto_client("s3") as client:
        client.create_bucket(Bucket=BUCKET)
        yield client


BUCKET = "parquet-results"
PARQUET = OutputSpec.model_validate({"format": "parquet"})


def write(
    s3: Any,
    provider: ProviderName,
    columns: list[Column],
    rows: Sequence[Sequence[Any]],
    *,
    output: OutputSpec = PARQUET,
    part_max_bytes: int = 2**30,
) -> tuple[str, WrittenResult]:
    prefix = f"{uuid.uuid4().hex}/"
    writer = ResultWriter(s3, BUCKET, part_max_bytes=part_max_bytes)
    result = TabularResult(columns=columns, rows=iter(rows))
    return prefix, writer.write(prefix, result, output, provider=provider)


def parts(s3: Any, written: WrittenResult) -> list[pq.ParquetFile]:
    return [
        pq.ParquetFile(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=entry.key)["Body"].read()))
        for entry in written.objects
    ]


def read_back(s3: Any, written: WrittenResult) -> list[dict[str, Any]]:
    return [row for part in parts(s3, written) for row in part.read().to_pylist()]


def sample(kind: Kind) -> list[Any]:
    """Values of a kind as the providers give them (None among them)."""
    samples: dict[str, list[Any]] = {
        "boolean": [True, False, None],
        "int8": [-128, 127, None],
        "int16": [-32768, 32767, None],
        "int32": [-(2**31), 2**31 - 1, None],
        "int64": [-(2**63), 2**63 - 1, None],
        "float32": [1.5, -2, None],
        "float64": [0.1, 1e300, -7, None],
        "string": ["plain", "ünïcode ✓", None],
        "json": [{"a": [1, 2.5, None]}, [1, "x"], "text", None],
        "date": ["2024-02-29", "1970-01-01", None],
        "timestamp": [
            "2024-02-29T23:59:59.123456789Z",
            "1969-12-31T23:59:59Z",
            "2026-03-29T02:30:00+02:00",
            None,
        ],
        "timestamp_local": ["2024-02-29T23:59:59.5", "2024-02-29 01:02:03", None],
        "decimal": [
            "9" * (kind.precision - kind.scale) + ("." + "9" * kind.scale if kind.scale else ""),
            0,
            None,
        ],
    }
    return samples[kind.name]


def every_type() -> list[tuple[ProviderName, Column]]:
    found: list[tuple[ProviderName, Column]] = []
    for provider, table in column_types.TABLES.items():
        for type_name in table:
            if provider == "snowflake" and type_name == "fixed":
                found += [
                    (provider, Column(name="fixed", type="fixed", precision=18, scale=0)),
                    (provider, Column(name="fixed", type="fixed", precision=38, scale=0)),
                    (provider, Column(name="fixed", type="fixed", precision=12, scale=2)),
                ]
            elif provider == "databricks" and type_name == "DECIMAL":
                found += [
                    (provider, Column(name="d", type="DECIMAL(10,2)")),
                    (provider, Column(name="d", type="decimal(38, 10)")),
                    (provider, Column(name="d", type="DECIMAL")),
                ]
            else:
                found.append((provider, Column(name=type_name, type=type_name)))
        found.append((provider, Column(name="unknown", type="NO_SUCH_TYPE")))
    return found


@pytest.mark.parametrize(("provider", "column"), every_type(), ids=lambda item: getattr(item, "type", item))
def test_every_documented_type_lands_as_its_arrow_type_with_its_values(
    s3: Any, provider: ProviderName, column: Column
) -> None:
    # Given a column of the type, with values as the provider gives them
    kind = kind_of(provider, column)
    values = sample(kind)
    # When it is written as Parquet
    _, written = write(s3, provider, [column], [[value] for value in values])
    # Then its Arrow type is the documented one and every value reads back by the rule
    (part,) = parts(s3, written)
    assert str(part.schema_arrow.field(0).type) == kind.arrow
    assert [row[column.name] for row in part.read().to_pylist()] == [expected(kind, v) for v in values]
    assert written.row_count == len(values)


def test_types_map_as_documented() -> None:
    # Snowflake FIXED: an integer up to 18 digits at scale 0, else the decimal it is
    assert kind_of("snowflake", Column(name="a", type="FIXED", precision=18, scale=0)).arrow == "int64"
    assert kind_of("snowflake", Column(name="a", type="fixed", precision=19, scale=0)).arrow == (
        "decimal128(19, 0)"
    )
    assert kind_of("snowflake", Column(name="a", type="fixed")).glue == "decimal(38,0)"
    assert kind_of("databricks", Column(name="a", type="DECIMAL(12, 3)")).glue == "decimal(12,3)"
    assert kind_of("databricks", Column(name="a", type="ARRAY<INT>")).name == "json"
    assert kind_of("databricks", Column(name="a", type="timestamp_ntz")).arrow == "timestamp[us]"
    assert kind_of("esql", Column(name="a", type="unsigned_long")).glue == "decimal(20,0)"
    # Beyond 38 digits, or a type nobody documented: text
    assert kind_of("databricks", Column(name="a", type="DECIMAL(40,2)")).name == "string"
    assert kind_of("looker", Column(name="a", type="tier")).name == "string"
    assert kind_of("veza", Column(name="a", type="LONG")).name == "string"  # Veza's types are lower case


@pytest.mark.parametrize(
    ("provider", "column", "rows", "row", "what"),
    [
        ("esql", Column(name="n", type="long"), [[1], [2], ["three"]], 3, "text"),
        ("esql", Column(name="n", type="long"), [[1], [[1, 2]]], 2, "a list"),
        ("esql", Column(name="n", type="integer"), [[2**31]], 1, "out of its range"),
        ("esql", Column(name="ok", type="boolean"), [[True], [1]], 2, "an integer"),
        ("esql", Column(name="at", type="date"), [["2024-01-01T00:00:00Z"], ["yesterday"]], 2, "form"),
        ("esql", Column(name="at", type="date"), [["2024-01-01T00:00:00"]], 1, "form"),  # no zone
        ("snowflake", Column(name="x", type="fixed", precision=5, scale=2), [["1.234"]], 1, "form"),
        ("databricks", Column(name="d", type="DATE"), [["2024-02-30"]], 1, "form"),
        ("looker", Column(name="n", type="count"), [[1.5]], 1, "a float"),
    ],
)
def test_a_value_that_does_not_fit_its_column_is_named_by_column_and_row_never_by_value(
    s3: Any,
    provider: ProviderName,
    column: Column,
    rows: list[list[Any]],
    row: int,
    what: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a value that the column's Parquet type cannot hold (part files in a /tmp of the test's own)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # When the result is written as Parquet
    with pytest.raises(ColumnTypeMismatch) as raised:
        write(s3, provider, [column], rows)
    # Then the error names the column, its type and the row, and not the value
    message = str(raised.value)
    assert f"column {column.name!r} ({column.type}" in message
    assert f"row {row} holds" in message
    assert what in message
    bad = rows[row - 1][0]
    if isinstance(bad, str):
        assert bad not in message
    # and no part file is left in /tmp
    assert list(tmp_path.iterdir()) == []


def test_the_row_named_counts_from_the_rows_an_earlier_fetch_landed(s3: Any) -> None:
    columns = [Column(name="n", type="long")]
    prefix, written = write(s3, "esql", columns, [[1], [2]], part_max_bytes=1)
    landed = Landed(objects=written.objects[:1], rows=written.objects[0].rows)
    writer = ResultWriter(s3, BUCKET, part_max_bytes=1)
    result = TabularResult(columns=columns, rows=iter([[1], [2], ["x"]]))
    with pytest.raises(ColumnTypeMismatch, match="row 3 holds"):
        writer.write(prefix, result, PARQUET, landed=landed, provider="esql")


def test_text_columns_take_any_value_as_json_text_and_a_lone_surrogate_as_a_question_mark(s3: Any) -> None:
    # Given an ES|QL keyword column holding a multi-valued field, a number, and a lone surrogate
    rows: list[list[Any]] = [[["a", "b"]], [7], [True], ["bad \ud800 text"], [None]]
    _, written = write(s3, "esql", [Column(name="k", type="keyword")], rows)
    # Then they read back as JSON text, by the JSON rule, and text as text
    assert [row["k"] for row in read_back(s3, written)] == ['["a","b"]', "7", "true", "bad ? text", None]


def test_a_repeated_column_name_lands_once_with_its_last_columns_values_as_in_jsonl(s3: Any) -> None:
    columns = [
        Column(name="a", type="long"),
        Column(name="b", type="keyword"),
        Column(name="a", type="double"),
    ]
    _, written = write(s3, "esql", columns, [[1, "x", 2.5]])
    (part,) = parts(s3, written)
    assert [(field.name, str(field.type)) for field in part.schema_arrow] == [
        ("a", "double"),
        ("b", "string"),
    ]
    assert part.read().to_pylist() == [{"a": 2.5, "b": "x"}]
    schema = column_types.arrow_schema("esql", columns)
    assert [(column.name, column.type) for column in schema] == [("a", "double"), ("b", "string")]


def test_zero_rows_land_one_part_with_the_schema(s3: Any) -> None:
    columns = [Column(name="n", type="long"), Column(name="at", type="date")]
    _, written = write(s3, "esql", columns, [])
    (part,) = parts(s3, written)
    assert (written.row_count, part.metadata.num_rows) == (0, 0)
    assert str(part.schema_arrow) == "n: int64\nat: timestamp[us, tz=UTC]"


def test_a_result_with_rows_but_no_columns_is_refused(s3: Any) -> None:
    with pytest.raises(ColumnTypeMismatch, match="no columns"):
        write(s3, "esql", [], [[], []])


def test_parts_roll_at_the_part_size_and_hold_row_groups_of_bounded_size(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 60,000 rows, parts of 256 KiB of Arrow data and row groups of 64 KiB
    monkeypatch.setattr(parquet, "ROW_GROUP_BYTES", 64 * 1024)
    columns = [Column(name="n", type="long"), Column(name="text", type="keyword")]
    rows = [[number, f"row {number:06d}"] for number in range(60_000)]
    _, written = write(s3, "esql", columns, rows, part_max_bytes=256 * 1024)
    # Then every row lands once, in order, across several parts of several row groups each
    files = parts(s3, written)
    assert len(files) >= 4
    assert all(part.metadata.num_row_groups >= 3 for part in files[:-1])
    assert [row["n"] for row in read_back(s3, written)] == list(range(60_000))
    assert [entry.rows for entry in written.objects] == [part.metadata.num_rows for part in files]
    # and each object's size and sha256 in the manifest are the stored object's
    for entry in written.objects:
        stored = s3.get_object(Bucket=BUCKET, Key=entry.key)
        assert stored["ContentType"] == "application/vnd.apache.parquet"
        assert stored["ContentLength"] == entry.bytes
        assert entry.key.endswith(".parquet")


@pytest.mark.parametrize(
    ("compression", "codec"),
    [("snappy", "SNAPPY"), ("zstd", "ZSTD"), ("gzip", "GZIP"), ("none", "UNCOMPRESSED")],
)
def test_the_compression_is_the_codec_of_every_column_chunk(s3: Any, compression: str, codec: str) -> None:
    output = OutputSpec.model_validate({"format": "parquet", "compression": compression})
    _, written = write(s3, "esql", [Column(name="n", type="long")], [[1], [2]], output=output)
    (part,) = parts(s3, written)
    assert part.metadata.row_group(0).column(0).compression == codec
    assert written.objects[0].key.endswith("part-00000.parquet")


def test_parquet_is_snappy_unless_the_spec_says_otherwise_and_its_codecs_are_parquets_only() -> None:
    assert OutputSpec.model_validate({"format": "parquet"}).compression == "snappy"
    assert OutputSpec.model_validate({"format": "jsonl"}).compression == "none"
    with pytest.raises(ValueError, match="'zstd' is a Parquet codec"):
        OutputSpec.model_validate({"format": "csv", "compression": "zstd"})


# --- properties: text the warehouses send reads back as the value it spells ----------------------

MOMENTS = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(moments=st.lists(st.one_of(st.none(), MOMENTS), max_size=20), nanos=st.integers(0, 999))
def test_any_instant_as_iso_text_reads_back_to_the_microsecond(
    s3: Any, moments: list[datetime | None], nanos: int
) -> None:
    texts = [
        None
        if moment is None
        else moment.replace(tzinfo=None).isoformat(timespec="microseconds") + f"{nanos:03d}Z"
        for moment in moments
    ]
    _, written = write(s3, "esql", [Column(name="at", type="date")], [[text] for text in texts])
    assert [row["at"] for row in read_back(s3, written)] == moments


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(
        st.one_of(st.none(), st.decimals(min_value=-(10**10), max_value=10**10, places=4, allow_nan=False)),
        max_size=20,
    )
)
def test_any_decimal_as_text_reads_back_exactly(s3: Any, values: list[Decimal | None]) -> None:
    column = Column(name="x", type="fixed", precision=16, scale=4)
    texts = [None if value is None else str(value) for value in values]
    _, written = write(s3, "snowflake", [column], [[text] for text in texts])
    assert [row["x"] for row in read_back(s3, written)] == values


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.one_of(st.none(), st.text(), st.integers(), st.lists(st.integers())), max_size=20))
def test_any_value_in_a_text_column_reads_back_as_itself_or_its_json_text(s3: Any, values: list[Any]) -> None:
    _, written = write(s3, "esql", [Column(name="k", type="keyword")], [[value] for value in values])
    wanted = [
        None if value is None else (value if isinstance(value, str) else encode_json(value))
        for value in values
    ]
    wanted = [None if text is None else text.encode("utf-8", "replace").decode() for text in wanted]
    assert [row["k"] for row in read_back(s3, written)] == wanted


def test_a_day_offset_is_an_instant() -> None:
    # (The oracle above is checked against a known case.)
    kind = Kind("timestamp")
    assert expected(kind, "2026-03-29T02:30:00+02:00") == datetime(2026, 3, 29, 0, 30, tzinfo=UTC)
    assert expected(kind, "2024-01-01T00:00:00.1234567Z") == datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert expected(Kind("timestamp_local"), "2024-01-01 00:00:00") == datetime(2024, 1, 1)
