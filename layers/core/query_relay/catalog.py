"""Registers a landed result in the Glue Data Catalog (``output.catalog``), so that Athena, Spark and
Glue jobs query it as soon as the "Query Result Ready" event arrives.

The table (created on a job's first landing, its schema widened by later ones) is partitioned by
``dt`` (the job's UTC day, as in its key prefix) and ``job_id``: each job's result is one partition
whose location is exactly its folder, added after its manifest is written, so a reader never sees
the parts of a job still landing, and a job run again replaces its own partition.

Column types come from ``query_relay.column_types`` as each format lets a reader take them:
Parquet's typed columns as they are; JSON Lines the same, but dates and timestamps (ISO 8601 text,
which the JSON SerDe does not read as timestamps) and nested values as strings; CSV every column a
string (OpenCSVSerde reads text). Names are lower-cased (Glue keeps them so; readers match
case-insensitively).

Before anything is registered, the job's columns are checked against the table's: a column whose
type changes, or a format that changes, is ``CatalogSchemaConflict`` unless the spec's
``allow_type_changes`` says a reader can follow (each partition keeps its own columns and format).
New columns are added to the table; columns a job lacks stay (its partition reads them as null).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from query_relay.column_types import JSON_TEXT_KINDS, kind_of
from query_relay.exceptions import CatalogRegistrationFailed, CatalogSchemaConflict, InvalidJobSpec
from query_relay.models import CatalogSpec, Column, JobSpec, OutputFormat, ProviderName
from query_relay.observability import logger

if TYPE_CHECKING:
    from mypy_boto3_glue import GlueClient

_UPDATE_ATTEMPTS = 3
PARTITION_KEYS = [{"Name": "dt", "Type": "string"}, {"Name": "job_id", "Type": "string"}]
_TEXT_INPUT = "org.apache.hadoop.mapred.TextInputFormat"
_TEXT_OUTPUT = "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat"
# format -> (input format, output format, SerDe, SerDe parameters, table parameters)
STORAGE: dict[str, tuple[str, str, str, dict[str, str], dict[str, str]]] = {
    "parquet": (
        "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
        "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
        "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
        {},
        {"classification": "parquet"},
    ),
    "jsonl": (
        _TEXT_INPUT,
        _TEXT_OUTPUT,
        "org.openx.data.jsonserde.JsonSerDe",
        {"case.insensitive": "TRUE"},
        {"classification": "json"},
    ),
    "csv": (
        _TEXT_INPUT,
        _TEXT_OUTPUT,
        "org.apache.hadoop.hive.serde2.OpenCSVSerde",
        {"separatorChar": ",", "quoteChar": '"', "escapeChar": "\\"},
        {"classification": "csv", "skip.header.line.count": "1"},
    ),
}


def glue_columns(
    output_format: OutputFormat, provider: ProviderName, columns: list[Column]
) -> list[dict[str, str]]:
    """The result's columns as a Glue table holds them: lower-cased names (a repeated one once,
    typed as its last column, as the parts hold it), each typed as the format lets a reader read it."""
    last: dict[str, Column] = {}
    for column in columns:
        last[column.name] = column
    typed: dict[str, str] = {}
    for name, column in last.items():
        lowered = name.lower()
        if lowered in typed:
            raise CatalogSchemaConflict(
                f"columns {name!r} and another differ only by case; a catalog table's names are "
                "lower-case, so it cannot hold both (rename one in the query)"
            )
        typed[lowered] = _glue_type(output_format, provider, column)
    return [{"Name": name, "Type": kind} for name, kind in typed.items()]


def _glue_type(output_format: OutputFormat, provider: ProviderName, column: Column) -> str:
    if output_format == "csv":
        return "string"
    kind = kind_of(provider, column)
    if output_format == "jsonl" and kind.name in JSON_TEXT_KINDS:
        return "string"
    return kind.glue


def check_allowed(spec: JobSpec, database: str | None) -> None:
    """A spec may register only in the stack's catalog database (its Fetch may write no other)."""
    catalog = spec.output.catalog
    if catalog is None or catalog.database == database:
        return
    if not database:
        raise InvalidJobSpec(
            "invalid job spec: output.catalog: this stack registers no catalog tables; deploy it with "
            "the CatalogDatabase parameter set"
        )
    raise InvalidJobSpec(
        f"invalid job spec: output.catalog.database: must be {database!r}, the stack's CatalogDatabase "
        "(its Fetch function may write no other)"
    )


@dataclass(frozen=True)
class Registered:
    database: str
    table: str
    partition: list[str]
    created: bool


class Catalog:
    """One job's table in the Glue Data Catalog."""

    def __init__(self, glue: GlueClient, catalog: CatalogSpec, output_format: OutputFormat) -> None:
        self._glue = glue
        self._spec = catalog
        self._format = output_format

    def check(self, columns: list[dict[str, str]]) -> None:
        """Raise CatalogSchemaConflict if the table exists and these columns (or this format) change
        it in a way the spec does not allow; nothing is written."""
        table = self._table()
        if table is not None:
            self._merged(table, columns)

    def register(self, columns: list[dict[str, str]], location: str, partition: list[str]) -> Registered:
        """Create the table or widen its schema, then add (or replace) the job's partition."""
        table = self._table()
        created = table is None and self._create(columns, location)
        if not created:
            self._widen(table, columns)
        self._put_partition(columns, location, partition)
        logger.info(
            "result registered in the catalog",
            extra={"table": self._name, "partition": partition, "table_created": created},
        )
        return Registered(self._spec.database, self._spec.table, partition, created)

    # --- the table ----------------------------------------------------------------------------------

    def _widen(self, table: dict[str, Any] | None, columns: list[dict[str, str]]) -> None:
        """Update the table to take ``columns``, if they change it. Two jobs landing at once may
        both update it: each names the version it read (Glue's optimistic lock), and one that lost
        reads the table again and merges again, so neither's new columns are lost."""
        for attempt in range(_UPDATE_ATTEMPTS):
            table = table or self._table()
            if table is None:  # pragma: no cover - deleted meanwhile
                raise CatalogRegistrationFailed(f"the table {self._name} vanished while being registered")
            merged, changed = self._merged(table, columns)
            if not changed:
                return
            arguments: Any = {"DatabaseName": self._spec.database, "TableInput": self._input(merged, table)}
            if table.get("VersionId"):
                arguments["VersionId"] = table["VersionId"]
            try:
                self._glue.update_table(**arguments)
            except ClientError as error:
                if _code(error) != "ConcurrentModificationException" or attempt == _UPDATE_ATTEMPTS - 1:
                    raise self._failed("UpdateTable", error) from None
                table = None  # read it again
            else:
                return

    @property
    def _name(self) -> str:
        return f"{self._spec.database}.{self._spec.table}"

    def _table(self) -> dict[str, Any] | None:
        try:
            answer = self._glue.get_table(DatabaseName=self._spec.database, Name=self._spec.table)
        except ClientError as error:
            if _code(error) == "EntityNotFoundException" and not _message(error).lower().startswith(
                "database"
            ):
                return None
            raise self._failed("GetTable", error) from None
        return dict(answer["Table"])

    def _create(self, columns: list[dict[str, str]], location: str) -> bool:
        """Create the table; False when another job created it first."""
        table_input = {
            "Name": self._spec.table,
            "Description": "Results landed by query-relay (partitions added by each job)",
            "TableType": "EXTERNAL_TABLE",
            "Parameters": {"EXTERNAL": "TRUE", **STORAGE[self._format][4]},
            "PartitionKeys": PARTITION_KEYS,
            "StorageDescriptor": self._storage(columns, _table_location(location)),
        }
        try:
            self._glue.create_table(DatabaseName=self._spec.database, TableInput=table_input)  # type: ignore[arg-type]
        except ClientError as error:
            if _code(error) == "AlreadyExistsException":
                return False
            raise self._failed("CreateTable", error) from None
        return True

    def _merged(
        self, table: dict[str, Any], columns: list[dict[str, str]]
    ) -> tuple[list[dict[str, str]], bool]:
        """The table's columns with this job's: new ones added, changed types taken if allowed."""
        have = [
            {"Name": column["Name"], "Type": column["Type"]}
            for column in table["StorageDescriptor"]["Columns"]
        ]
        types = {column["Name"]: column["Type"] for column in have}
        serde = table["StorageDescriptor"].get("SerdeInfo", {}).get("SerializationLibrary")
        problems = [
            f"column {column['Name']!r} is {types[column['Name']]} in the table and {column['Type']} here"
            for column in columns
            if column["Name"] in types and types[column["Name"]] != column["Type"]
        ]
        if serde != STORAGE[self._format][2]:
            problems.append(f"the table holds {serde} data and this job writes {self._format}")
        if problems and not self._spec.allow_type_changes:
            raise CatalogSchemaConflict(
                f"the result does not fit the catalog table {self._name}: {'; '.join(problems)}. Nothing "
                "was registered; set output.catalog.allow_type_changes if readers can follow (each "
                "partition keeps its own columns), or write to another table"
            )
        new = {column["Name"]: column["Type"] for column in columns}
        merged = [
            {"Name": column["Name"], "Type": new.get(column["Name"], column["Type"])} for column in have
        ]
        merged += [column for column in columns if column["Name"] not in types]
        return merged, merged != have or bool(problems)

    def _input(self, columns: list[dict[str, str]], table: dict[str, Any]) -> dict[str, Any]:
        location = table["StorageDescriptor"].get("Location", "")
        parameters = {**(table.get("Parameters") or {}), "EXTERNAL": "TRUE", **STORAGE[self._format][4]}
        return {
            "Name": self._spec.table,
            "Description": table.get("Description", ""),
            "TableType": table.get("TableType", "EXTERNAL_TABLE"),
            "Parameters": parameters,
            "PartitionKeys": table.get("PartitionKeys") or PARTITION_KEYS,
            "StorageDescriptor": self._storage(columns, location),
        }

    def _storage(self, columns: list[dict[str, str]], location: str) -> dict[str, Any]:
        input_format, output_format, serde, serde_parameters, _ = STORAGE[self._format]
        return {
            "Columns": columns,
            "Location": location,
            "InputFormat": input_format,
            "OutputFormat": output_format,
            "SerdeInfo": {"SerializationLibrary": serde, "Parameters": serde_parameters},
        }

    # --- the job's partition ------------------------------------------------------------------------

    def _put_partition(self, columns: list[dict[str, str]], location: str, values: list[str]) -> None:
        partition = {"Values": values, "StorageDescriptor": self._storage(columns, location)}
        try:
            self._glue.create_partition(
                DatabaseName=self._spec.database,
                TableName=self._spec.table,
                PartitionInput=partition,  # type: ignore[arg-type]
            )
        except ClientError as error:
            if _code(error) != "AlreadyExistsException":
                raise self._failed("CreatePartition", error) from None
            self._guarded(
                "UpdatePartition",
                lambda: self._glue.update_partition(
                    DatabaseName=self._spec.database,
                    TableName=self._spec.table,
                    PartitionValueList=values,
                    PartitionInput=partition,  # type: ignore[arg-type]
                ),
            )

    def _guarded(self, action: str, call: Callable[[], object]) -> None:
        try:
            call()
        except ClientError as error:
            raise self._failed(action, error) from None

    def _failed(self, action: str, error: ClientError) -> CatalogRegistrationFailed:
        return CatalogRegistrationFailed(
            f"Glue refused {action} on {self._name}: {_code(error)}: {_message(error)[:300]}"
        )


def _table_location(job_location: str) -> str:
    """The table's location: the output prefix that every job's dt=... folder lies under."""
    head, marker, _ = job_location.rpartition("/dt=")
    return head + "/" if marker else job_location


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message", ""))
