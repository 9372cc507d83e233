"""query_relay.catalog against moto's Glue (with the local stack's fix: a stale table version is
refused, as AWS refuses it): two jobs widening one table at once both keep their columns; names
that differ only by case are refused; types follow the format."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from query_relay.catalog import Catalog, glue_columns
from query_relay.exceptions import CatalogRegistrationFailed, CatalogSchemaConflict
from query_relay.models import CatalogSpec, Column
from query_relay_local import moto_fixes
from tests.moto_server import moto_client


@pytest.fixture(scope="module")
def glue() -> Iterator[Any]:
    moto_fixes.install()
    with moto_client("glue") as client:
        client.create_database(DatabaseInput={"Name": "db"})
        yield client


def table(glue: Any, name: str) -> dict[str, Any]:
    found: dict[str, Any] = glue.get_table(DatabaseName="db", Name=name)["Table"]
    return found


def columns(*pairs: str) -> list[dict[str, str]]:
    return [{"Name": pair.split()[0], "Type": pair.split()[1]} for pair in pairs]


def test_two_jobs_widening_one_table_at_once_both_keep_their_columns(glue: Any) -> None:
    # Given a table, read by two jobs before either updates it
    name = f"t{uuid.uuid4().hex[:8]}"
    catalog = Catalog(glue, CatalogSpec(database="db", table=name), "parquet")
    catalog.register(columns("a int"), "s3://b/r/dt=2026-12-04/j1/", ["2026-12-04", "j1"])
    read_by_both = table(glue, name)
    # When one adds column b, and the other, from the version it read, adds column c
    catalog.register(columns("a int", "b string"), "s3://b/r/dt=2026-12-04/j2/", ["2026-12-04", "j2"])
    catalog._widen(read_by_both, columns("a int", "c double"))
    # Then the second update was refused as stale, read again and merged: both columns are there
    assert [(c["Name"], c["Type"]) for c in table(glue, name)["StorageDescriptor"]["Columns"]] == [
        ("a", "int"),
        ("b", "string"),
        ("c", "double"),
    ]


def test_a_stale_update_is_refused_by_the_local_glue_as_by_aws(glue: Any) -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    glue.create_table(DatabaseName="db", TableInput={"Name": name})
    version = table(glue, name)["VersionId"]
    glue.update_table(DatabaseName="db", TableInput={"Name": name}, VersionId=version)
    with pytest.raises(glue.exceptions.ConcurrentModificationException):
        glue.update_table(DatabaseName="db", TableInput={"Name": name}, VersionId=version)


def test_a_type_change_is_refused_naming_the_column_and_nothing_changes(glue: Any) -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    catalog = Catalog(glue, CatalogSpec(database="db", table=name), "parquet")
    catalog.register(columns("a int"), "s3://b/r/dt=2026-12-04/j1/", ["2026-12-04", "j1"])
    before = table(glue, name)
    with pytest.raises(CatalogSchemaConflict, match="column 'a' is int in the table and bigint here"):
        catalog.check(columns("a bigint"))
    with pytest.raises(CatalogSchemaConflict):
        catalog.register(columns("a bigint"), "s3://b/r/dt=2026-12-04/j2/", ["2026-12-04", "j2"])
    assert table(glue, name)["VersionId"] == before["VersionId"]
    assert len(glue.get_partitions(DatabaseName="db", TableName=name)["Partitions"]) == 1


def test_a_job_run_again_replaces_its_partition(glue: Any) -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    catalog = Catalog(glue, CatalogSpec(database="db", table=name), "parquet")
    for _ in range(2):
        catalog.register(columns("a int"), "s3://b/r/dt=2026-12-04/j1/", ["2026-12-04", "j1"])
    (partition,) = glue.get_partitions(DatabaseName="db", TableName=name)["Partitions"]
    assert partition["Values"] == ["2026-12-04", "j1"]


def test_a_missing_database_is_a_named_failure(glue: Any) -> None:
    catalog = Catalog(glue, CatalogSpec(database="nowhere", table="t"), "parquet")
    with pytest.raises(CatalogRegistrationFailed, match=r"GetTable on nowhere\.t: EntityNotFoundException"):
        catalog.check(columns("a int"))


def test_names_differing_only_by_case_are_refused_and_repeated_names_land_once() -> None:
    with pytest.raises(CatalogSchemaConflict, match="differ only by case"):
        glue_columns("parquet", "esql", [Column(name="ID", type="long"), Column(name="id", type="keyword")])
    repeated = [Column(name="a", type="long"), Column(name="a", type="keyword")]
    assert glue_columns("parquet", "esql", repeated) == columns("a string")


def test_each_format_types_its_columns_as_its_reader_can() -> None:
    found = [Column(name="N", type="long"), Column(name="At", type="date"), Column(name="doc", type="object")]
    assert glue_columns("parquet", "looker", found[:1]) == columns("n string")  # Looker has no "long"
    assert glue_columns("parquet", "esql", found[:2]) == columns("n bigint", "at timestamp")
    assert glue_columns("jsonl", "esql", found[:2]) == columns("n bigint", "at string")
    assert glue_columns("csv", "esql", found[:2]) == columns("n string", "at string")
    assert glue_columns("parquet", "veza", found[2:]) == columns("doc string")
