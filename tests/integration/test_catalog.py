"""Results registered in the Glue Data Catalog (``output.catalog``) through the whole state machine on
the local stack, IAM enforced as on AWS: the table is created or widened, each job's partition
(dt, job_id) added after its manifest with its folder as location; a type change fails the job
CatalogSchemaConflict with nothing registered or landed unless the spec allows it; a spec naming a
database the stack may not write is refused before anything starts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from query_relay.models import OutputSpec
from query_relay_local.emulators.esql import EsqlEmulator
from query_relay_local.emulators.snowflake import SnowflakeEmulator
from query_relay_local.stack import LocalStack

from . import test_snowflake_jobs as snowflake
from .conftest import ES_CONNECTION, esql_connection
from .landed import landed_manifest, state_count
from .test_esql_jobs import DEPARTMENTS_QUERY, EMPLOYEES_QUERY, job
from .test_snowflake_jobs import snowflake_emulator

__all__ = ["snowflake_emulator"]  # a fixture

DATABASE = "analytics"


@pytest.fixture
def catalog_stack(esql_emulator: EsqlEmulator) -> Iterator[LocalStack]:
    with LocalStack(parameter_overrides={"CatalogDatabase": DATABASE}) as stack:
        stack.load_connections({ES_CONNECTION: esql_connection(esql_emulator)})
        stack.client("glue").create_database(DatabaseInput={"Name": DATABASE})
        yield stack


def employees(table: str, job_id: str, output_format: str = "parquet", **catalog: Any) -> dict[str, Any]:
    output = {"format": output_format, "catalog": {"database": DATABASE, "table": table, **catalog}}
    return job(EMPLOYEES_QUERY, [60000], job_id=job_id, output=output)


def table_of(stack: LocalStack, table: str) -> dict[str, Any]:
    found: dict[str, Any] = stack.client("glue").get_table(DatabaseName=DATABASE, Name=table)["Table"]
    return found


def partitions_of(stack: LocalStack, table: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = stack.client("glue").get_partitions(DatabaseName=DATABASE, TableName=table)[
        "Partitions"
    ]
    return sorted(found, key=lambda partition: partition["Values"])


def columns(described: dict[str, Any]) -> list[tuple[str, str]]:
    return [(column["Name"], column["Type"]) for column in described["StorageDescriptor"]["Columns"]]


def test_a_parquet_result_is_registered_as_its_own_partition_after_its_manifest(
    catalog_stack: LocalStack,
) -> None:
    # When two Parquet jobs land the same query into one table
    first, _ = catalog_stack.run_job(employees("employees", "employees-1"))
    second, _ = catalog_stack.run_job(employees("employees", "employees-2"))
    assert first["status"] == second["status"] == "SUCCEEDED", (first, second)
    # Then the table holds their typed columns, partitioned by dt and job_id, as Parquet
    table = table_of(catalog_stack, "employees")
    assert columns(table) == [
        ("emp_no", "int"),
        ("first_name", "string"),
        ("salary", "int"),
        ("hire_date", "timestamp"),
    ]
    assert [key["Name"] for key in table["PartitionKeys"]] == ["dt", "job_id"]
    storage = table["StorageDescriptor"]
    assert (
        storage["SerdeInfo"]["SerializationLibrary"]
        == "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
    )
    assert storage["Location"] == f"s3://{catalog_stack.bucket}/results/"
    # and the "Query Result Ready" event and the execution's output say where to query it
    ready = [
        event["detail"] for event in catalog_stack.events() if event["detail-type"] == "Query Result Ready"
    ]
    day = landed_manifest(catalog_stack, first)["objects"][0]["key"].split("/dt=")[1].split("/")[0]
    registered = {"database": DATABASE, "table": "employees", "dt": day, "job_id": "employees-1"}
    assert ready[0]["catalog"] == registered
    assert json.loads(first["output"])["catalog"] == registered
    # and each job is one partition whose location is its folder, holding exactly its parts and manifest
    partitions = partitions_of(catalog_stack, "employees")
    assert [partition["Values"][1] for partition in partitions] == ["employees-1", "employees-2"]
    for partition, final in zip(partitions, (first, second), strict=True):
        manifest = landed_manifest(catalog_stack, final)
        location = partition["StorageDescriptor"]["Location"]
        folder = location.removeprefix(f"s3://{catalog_stack.bucket}/")
        assert partition["Values"] == [folder.split("/")[1].removeprefix("dt="), manifest["job_id"]]
        parts = {entry["key"] for entry in manifest["objects"]}
        assert set(catalog_stack.keys(folder)) == parts | {folder + "_manifest.json"}
        assert columns(partition) == columns(table)


def test_jsonl_and_csv_tables_take_the_types_their_readers_can(catalog_stack: LocalStack) -> None:
    for output_format in ("jsonl", "csv"):
        final, _ = catalog_stack.run_job(
            employees(f"employees_{output_format}", f"e-{output_format}", output_format)
        )
        assert final["status"] == "SUCCEEDED", final
    jsonl, csv = table_of(catalog_stack, "employees_jsonl"), table_of(catalog_stack, "employees_csv")
    # JSON Lines: numbers typed, the ISO timestamp text a string; CSV: every column text
    assert columns(jsonl) == [
        ("emp_no", "int"),
        ("first_name", "string"),
        ("salary", "int"),
        ("hire_date", "string"),
    ]
    assert (
        jsonl["StorageDescriptor"]["SerdeInfo"]["SerializationLibrary"]
        == "org.openx.data.jsonserde.JsonSerDe"
    )
    assert {kind for _, kind in columns(csv)} == {"string"}
    assert csv["Parameters"]["skip.header.line.count"] == "1"
    assert (
        csv["StorageDescriptor"]["SerdeInfo"]["SerializationLibrary"]
        == "org.apache.hadoop.hive.serde2.OpenCSVSerde"
    )


def test_a_job_with_new_columns_widens_the_table(catalog_stack: LocalStack) -> None:
    final, _ = catalog_stack.run_job(employees("people", "people-1"))
    assert final["status"] == "SUCCEEDED", final
    narrower = job(
        "FROM employees | KEEP emp_no, languages | SORT emp_no | LIMIT 5",
        job_id="people-2",
        output={"format": "parquet", "catalog": {"database": DATABASE, "table": "people"}},
    )
    final, _ = catalog_stack.run_job(narrower)
    assert final["status"] == "SUCCEEDED", final
    # The table keeps its columns and gains the new one; the partition holds its own
    assert columns(table_of(catalog_stack, "people")) == [
        ("emp_no", "int"),
        ("first_name", "string"),
        ("salary", "int"),
        ("hire_date", "timestamp"),
        ("languages", "int"),
    ]
    assert columns(partitions_of(catalog_stack, "people")[1]) == [("emp_no", "int"), ("languages", "int")]


def test_a_type_change_fails_the_job_before_anything_is_registered_unless_allowed(
    catalog_stack: LocalStack, esql_emulator: EsqlEmulator
) -> None:
    # Given a table whose salary column is an int
    final, _ = catalog_stack.run_job(employees("pay", "pay-1"))
    assert final["status"] == "SUCCEEDED", final
    before = table_of(catalog_stack, "pay")
    # When a job lands salary as a double
    changed = "FROM employees | EVAL salary = salary * 1.5 | KEEP emp_no, salary | SORT emp_no"
    spec = job(
        changed,
        job_id="pay-2",
        output={"format": "parquet", "catalog": {"database": DATABASE, "table": "pay"}},
    )
    final, _ = catalog_stack.run_job(spec)
    # Then it fails with the named error, saying which column, and nothing is registered or landed
    assert (final["status"], final.get("error")) == ("FAILED", "CatalogSchemaConflict")
    assert "column 'salary' is int in the table and double here" in final["cause"]
    assert columns(table_of(catalog_stack, "pay")) == columns(before)
    assert len(partitions_of(catalog_stack, "pay")) == 1
    assert [key for key in catalog_stack.keys(prefix="results/") if "/pay-2/" in key] == []
    # When the spec allows type changes, the table takes the new type; the old partition keeps its own
    spec["output"]["catalog"]["allow_type_changes"] = True
    spec["job_id"] = "pay-3"
    final, _ = catalog_stack.run_job(spec)
    assert final["status"] == "SUCCEEDED", final
    assert ("salary", "double") in columns(table_of(catalog_stack, "pay"))
    first, third = partitions_of(catalog_stack, "pay")
    assert ("salary", "int") in columns(first)
    assert ("salary", "double") in columns(third)


def test_a_database_the_stack_may_not_write_is_refused_before_anything_starts(
    catalog_stack: LocalStack, esql_emulator: EsqlEmulator
) -> None:
    spec = job(
        DEPARTMENTS_QUERY, output={"format": "parquet", "catalog": {"database": "finance", "table": "t"}}
    )
    final, _ = catalog_stack.run_job(spec)
    assert (final["status"], final.get("error")) == ("FAILED", "InvalidJobSpec")
    assert "output.catalog.database: must be 'analytics'" in final["cause"]
    assert list(esql_emulator.requests) == []


def test_a_stack_without_a_catalog_database_refuses_every_catalog(
    stack: LocalStack, esql_emulator: EsqlEmulator
) -> None:
    spec = job(
        DEPARTMENTS_QUERY, output={"format": "parquet", "catalog": {"database": DATABASE, "table": "t"}}
    )
    final, _ = stack.run_job(spec)
    assert (final["status"], final.get("error")) == ("FAILED", "InvalidJobSpec")
    assert "CatalogDatabase" in final["cause"]
    assert list(esql_emulator.requests) == []


def test_a_missing_database_fails_the_job_named_with_nothing_landed(esql_emulator: EsqlEmulator) -> None:
    with LocalStack(parameter_overrides={"CatalogDatabase": DATABASE}) as stack:
        stack.load_connections({ES_CONNECTION: esql_connection(esql_emulator)})
        final, _ = stack.run_job(employees("employees", "no-database"))
        assert (final["status"], final.get("error")) == ("FAILED", "CatalogRegistrationFailed")
        assert "EntityNotFoundException" in final["cause"]
        assert list(stack.keys()) == []


def test_a_native_output_cannot_be_registered() -> None:
    with pytest.raises(ValueError, match="native result has no table format"):
        OutputSpec.model_validate({"format": "native", "catalog": {"database": "a", "table": "b"}})


def test_a_parallel_fetch_registers_once_and_a_conflict_stops_it_before_any_branch(
    snowflake_emulator: SnowflakeEmulator,
) -> None:
    # Given a stack that splits every result, and a Snowflake result of 40 partitions
    snowflake_emulator.config.partition_rows = 75
    overrides = {"FetchBranchMinBytes": "1", "CatalogDatabase": DATABASE}
    with LocalStack(parameter_overrides=overrides) as stack:
        stack.client("glue").create_database(DatabaseInput={"Name": DATABASE})
        connection = snowflake.snowflake_connection(snowflake_emulator) | {"max_parallel_fetch": 4}
        stack.load_connections({snowflake.SNOWFLAKE_CONNECTION: connection})
        catalog = {"database": DATABASE, "table": "numbers"}
        # When it lands as Parquet through the Map
        spec = snowflake.job(
            snowflake.NUMBERS, job_id="numbers-1", output={"format": "parquet", "catalog": catalog}
        )
        final, history = stack.run_job(spec, timeout=120)
        # Then the table and the one partition are registered after the manifest step
        assert final["status"] == "SUCCEEDED", final
        assert state_count(history, "MapIterationSucceeded") == 40
        assert columns(table_of(stack, "numbers"))[0] == ("n", "decimal(38,0)")
        assert [partition["Values"][1] for partition in partitions_of(stack, "numbers")] == ["numbers-1"]
        # When a job writes the same table as JSON Lines (another format), it fails before any branch
        spec = snowflake.job(
            snowflake.NUMBERS, job_id="numbers-2", output={"format": "jsonl", "catalog": catalog}
        )
        final, history = stack.run_job(spec, timeout=120)
        assert (final["status"], final.get("error")) == ("FAILED", "CatalogSchemaConflict")
        assert "this job writes jsonl" in final["cause"]
        assert state_count(history, "MapStateEntered") == 0
        assert len(partitions_of(stack, "numbers")) == 1
