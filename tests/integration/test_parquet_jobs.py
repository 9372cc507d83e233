"""Parquet results through the whole state machine on the local stack: the parts read back with
pyarrow with the documented types (the manifest's ``arrow_schema``) and the rows a jsonl job of the
same query lands, by the README's rule; a parallel fetch lands Parquet branches; a value that does
not fit its column fails the job ColumnTypeMismatch with nothing left."""

from __future__ import annotations

import io
import math
from typing import Any

import pyarrow.parquet as pq
import pytest

from query_relay import column_types
from query_relay.column_types import Kind, kind_of
from query_relay.models import Column
from query_relay_local.emulators.snowflake import SnowflakeEmulator
from query_relay_local.stack import LocalStack
from tests.parquet_rule import expected

from . import test_snowflake_jobs as snowflake
from .conftest import run_job
from .landed import failed_events, landed_manifest, landed_rows, read_object
from .test_esql_jobs import EMPLOYEES_QUERY, job
from .test_parallel_fetch import snowflake_stack as parallel_snowflake_stack
from .test_snowflake_jobs import snowflake_emulator, snowflake_stack

__all__ = ["snowflake_emulator", "snowflake_stack"]  # fixtures


def as_parquet(manifest: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as a jsonl job landed them, as the Parquet rule reads them back."""
    kinds = {
        column["name"]: kind_of(manifest["provider"], Column.model_validate(column))
        for column in manifest["columns"]
    }
    return [{name: expected(kinds[name], value) for name, value in row.items()} for row in rows]


def schema_of(stack: LocalStack, key: str) -> list[tuple[str, str]]:
    part = pq.ParquetFile(io.BytesIO(read_object(stack, key)))
    return [(field.name, str(field.type)) for field in part.schema_arrow]


def same_rows(got: list[dict[str, Any]], wanted: list[dict[str, Any]]) -> bool:
    """Equal, a NaN equal to a NaN (Parquet holds one; JSON wrote it null)."""

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
            return math.isnan(b)
        return bool(a == b)

    return len(got) == len(wanted) and all(
        row.keys() == other.keys() and all(same(row[name], other[name]) for name in row)
        for row, other in zip(got, wanted, strict=True)
    )


def test_an_esql_parquet_job_lands_the_rows_of_its_jsonl_job_typed(stack: LocalStack) -> None:
    # Given the same query run as jsonl and as Parquet
    as_jsonl, _ = run_job(stack, job(EMPLOYEES_QUERY, [60000], job_id="employees-jsonl"))
    final, _ = run_job(
        stack, job(EMPLOYEES_QUERY, [60000], job_id="employees-parquet", output={"format": "parquet"})
    )
    assert final["status"] == as_jsonl["status"] == "SUCCEEDED", final
    # Then the Parquet manifest says its format, codec and Arrow schema, which every part holds
    manifest = landed_manifest(stack, final)
    assert (manifest["format"], manifest["compression"]) == ("parquet", "snappy")
    schema = [(column["name"], column["type"]) for column in manifest["arrow_schema"]]
    assert schema == [
        ("emp_no", "int32"),
        ("first_name", "string"),
        ("salary", "int32"),
        ("hire_date", "timestamp[us, tz=UTC]"),
    ]
    assert all(entry["key"].endswith(".parquet") for entry in manifest["objects"])
    assert all(schema_of(stack, entry["key"]) == schema for entry in manifest["objects"])
    # and its rows are the jsonl job's, by the rule (sizes and sha256 checked on the way)
    jsonl_manifest = landed_manifest(stack, as_jsonl)
    jsonl_rows = landed_rows(stack, jsonl_manifest, lambda text: [])
    rows = landed_rows(stack, manifest, lambda text: [])
    assert len(rows) > 10
    assert rows == as_parquet(jsonl_manifest, jsonl_rows)
    assert "arrow_schema" not in jsonl_manifest


def test_every_snowflake_type_lands_in_parquet_as_documented(
    snowflake_stack: LocalStack,
) -> None:
    final, _ = snowflake_stack.run_job(
        snowflake.job(snowflake.STATEMENT, output={"format": "parquet"}), timeout=60
    )
    assert final["status"] == "SUCCEEDED", final
    manifest = landed_manifest(snowflake_stack, final)
    rows = landed_rows(snowflake_stack, manifest, snowflake.native_rows)
    assert same_rows(rows, as_parquet(manifest, snowflake.expected_rows(snowflake.STATEMENT)))
    # FIXED columns carry their precision and scale, which make them integers or decimals
    fixed = [column for column in manifest["columns"] if column["type"] == "fixed"]
    assert fixed
    assert all("precision" in column and "scale" in column for column in fixed)
    kinds = {kind_of("snowflake", Column.model_validate(column)).name for column in manifest["columns"]}
    assert {"decimal", "float64", "boolean", "date", "timestamp", "timestamp_local", "json"} <= kinds


def test_a_parallel_fetch_lands_parquet_branches(snowflake_emulator: SnowflakeEmulator) -> None:
    # Given 3,000 rows in 40 partitions, fetched 4 branches at a time
    snowflake_emulator.config.partition_rows = 75
    with parallel_snowflake_stack(snowflake_emulator, max_parallel_fetch=4) as stack:
        spec = snowflake.job(snowflake.NUMBERS, output={"format": "parquet", "compression": "zstd"})
        final, _ = stack.run_job(spec, timeout=120)
        assert final["status"] == "SUCCEEDED", final
        manifest = landed_manifest(stack, final)
        # Then every branch landed its Parquet part, and the rows are all there in order (N is a
        # NUMBER(38,0): a decimal, as Snowflake's own Parquet unload has it)
        assert [entry["key"].rsplit("/", 1)[1] for entry in manifest["objects"]] == [
            f"part-{branch:05d}-00000.parquet" for branch in range(40)
        ]
        rows = landed_rows(stack, manifest, snowflake.native_rows)
        assert rows == as_parquet(manifest, snowflake.expected_rows(snowflake.NUMBERS))
        assert manifest["compression"] == "zstd"
        assert {schema_of(stack, entry["key"])[0] for entry in manifest["objects"]} == {
            ("N", "decimal128(38, 0)")
        }


def test_a_value_that_does_not_fit_its_column_fails_the_job_and_leaves_nothing(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given ES|QL keyword columns taken as integers (as a lying upstream's would be)
    monkeypatch.setitem(column_types.ESQL, "keyword", Kind("int64"))
    # When a Parquet job lands them
    final, _ = run_job(stack, job(EMPLOYEES_QUERY, [60000], output={"format": "parquet"}))
    # Then it fails with the named error, naming the column and the first row, and nothing stays
    assert (final["status"], final.get("error")) == ("FAILED", "ColumnTypeMismatch")
    assert "column 'first_name' (keyword, written as int64): row 1 holds text" in final["cause"]
    assert [event["error"] for event in failed_events(stack)] == ["ColumnTypeMismatch"]
    assert list(stack.keys()) == []
