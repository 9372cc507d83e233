"""How each provider's column types land in a Parquet part (an Arrow type) and in the Glue Data
Catalog (a Hive type): one table per provider, which README "Column types in Parquet and Glue"
prints (tests/unit/test_column_types.py keeps the two the same).

A column's type is what its upstream says (``Column.type``, as the manifest has it), mapped to a
``Kind``. A type a provider's table does not name lands as ``string``: never a guess that could
refuse a value. Nothing here imports pyarrow: the manifest and the catalog need only the names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from query_relay.models import Column, ProviderName


@dataclass(frozen=True)
class Kind:
    """What a column's values become. ``name`` is one of KINDS; ``precision``/``scale`` are a
    decimal's."""

    name: str
    precision: int = 0
    scale: int = 0

    @property
    def arrow(self) -> str:
        """The Arrow type, spelt as pyarrow prints it (the manifest's ``arrow_schema``)."""
        if self.name == "decimal":
            return f"decimal128({self.precision}, {self.scale})"
        return _ARROW[self.name]

    @property
    def glue(self) -> str:
        """The Hive type a Glue table gives the column (what Athena reads it as)."""
        if self.name == "decimal":
            return f"decimal({self.precision},{self.scale})"
        return _GLUE[self.name]


# name -> (Arrow type, Glue type). "json" is a nested value (an object, an array, a VARIANT) held as
# its JSON text by the JSON rule; "timestamp" is an instant (UTC), "timestamp_local" a wall-clock time.
_ARROW = {
    "boolean": "bool",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "float32": "float",
    "float64": "double",
    "string": "string",
    "json": "string",
    "date": "date32[day]",
    "timestamp": "timestamp[us, tz=UTC]",
    "timestamp_local": "timestamp[us]",
}
_GLUE = {
    "boolean": "boolean",
    "int8": "tinyint",
    "int16": "smallint",
    "int32": "int",
    "int64": "bigint",
    "float32": "float",
    "float64": "double",
    "string": "string",
    "json": "string",
    "date": "date",
    "timestamp": "timestamp",
    "timestamp_local": "timestamp",
}
KINDS = (*_ARROW, "decimal")
# What a JSON Lines table holds as strings: ISO 8601 dates and times (the JSON SerDe reads no
# timestamps from them) and nested values (whose JSON text a string column gives).
JSON_TEXT_KINDS = frozenset({"date", "timestamp", "timestamp_local", "json"})
MAX_DECIMAL_PRECISION = 38  # decimal128, and Hive's decimal

STRING = Kind("string")
JSON = Kind("json")

# --- the tables ------------------------------------------------------------------------------------
# ES|QL: the types an ES|QL answer's columns carry. Dates are ISO 8601 instants (date_nanos too:
# every timestamp lands in microseconds). unsigned_long reaches 2^64 - 1, beyond a signed 64-bit
# integer: a decimal of 20 digits holds it.
ESQL = {
    "boolean": Kind("boolean"),
    "integer": Kind("int32"),
    "counter_integer": Kind("int32"),
    "long": Kind("int64"),
    "counter_long": Kind("int64"),
    "unsigned_long": Kind("decimal", 20, 0),
    "double": Kind("float64"),
    "counter_double": Kind("float64"),
    "float": Kind("float64"),
    "half_float": Kind("float64"),
    "scaled_float": Kind("float64"),
    "date": Kind("timestamp"),
    "date_nanos": Kind("timestamp"),
    "keyword": STRING,
    "text": STRING,
}
# Looker: json_detail's field types. A yesno field is "Yes"/"No" text; dates below the day
# (date_month "2026-11", date_week ...) are text too. Counts are whole numbers; other measures
# (sum, average, number ...) are doubles.
LOOKER = {
    "number": Kind("float64"),
    "sum": Kind("float64"),
    "sum_distinct": Kind("float64"),
    "average": Kind("float64"),
    "average_distinct": Kind("float64"),
    "median": Kind("float64"),
    "median_distinct": Kind("float64"),
    "percentile": Kind("float64"),
    "percentile_distinct": Kind("float64"),
    "count": Kind("int64"),
    "count_distinct": Kind("int64"),
    "date_date": Kind("date"),
    "date_time": Kind("timestamp_local"),
    "string": STRING,
    "object": JSON,
}
# Veza: the columns of an assessment query's nodes (and of a count).
VEZA = {
    "string": STRING,
    "long": Kind("int64"),
    "object": JSON,
    "array": JSON,
}
# Snowflake: rowType's types. FIXED is a decimal of its precision and scale, or a 64-bit integer
# when its scale is 0 and its precision fits one (18 digits). TIMESTAMP_TZ lands as its instant.
SNOWFLAKE = {
    "fixed": Kind("decimal", MAX_DECIMAL_PRECISION, 0),  # its own precision and scale (see kind_of)
    "real": Kind("float64"),
    "float": Kind("float64"),
    "double": Kind("float64"),
    "boolean": Kind("boolean"),
    "date": Kind("date"),
    "timestamp_ltz": Kind("timestamp"),
    "timestamp_tz": Kind("timestamp"),
    "timestamp_ntz": Kind("timestamp_local"),
    "variant": JSON,
    "object": JSON,
    "array": JSON,
    "map": JSON,
    "text": STRING,
}
# Databricks: the head of each column's type text (BIGINT and LONG alike). DECIMAL(p,s) keeps its
# precision and scale (DECIMAL alone is DECIMAL(10,0)). VARIANT arrives as its JSON text, kept so.
DATABRICKS = {
    "TINYINT": Kind("int8"),
    "BYTE": Kind("int8"),
    "SMALLINT": Kind("int16"),
    "SHORT": Kind("int16"),
    "INT": Kind("int32"),
    "INTEGER": Kind("int32"),
    "BIGINT": Kind("int64"),
    "LONG": Kind("int64"),
    "FLOAT": Kind("float32"),
    "REAL": Kind("float32"),
    "DOUBLE": Kind("float64"),
    "DECIMAL": Kind("decimal", 10, 0),  # its own precision and scale (see kind_of)
    "DEC": Kind("decimal", 10, 0),
    "NUMERIC": Kind("decimal", 10, 0),
    "BOOLEAN": Kind("boolean"),
    "DATE": Kind("date"),
    "TIMESTAMP": Kind("timestamp"),
    "TIMESTAMP_NTZ": Kind("timestamp_local"),
    "STRUCT": JSON,
    "ARRAY": JSON,
    "MAP": JSON,
    "STRING": STRING,
}
TABLES: dict[ProviderName, dict[str, Kind]] = {
    "esql": ESQL,
    "looker": LOOKER,
    "veza": VEZA,
    "snowflake": SNOWFLAKE,
    "databricks": DATABRICKS,
}

_TYPE_HEAD = re.compile(r"\s*([A-Za-z_]+)")
_DECIMAL_ARGUMENTS = re.compile(r"\s*[A-Za-z]+\s*\(\s*(\d{1,4})\s*(?:,\s*(\d{1,4})\s*)?\)")
_INT64_DIGITS = 18  # every 18-digit integer fits a signed 64-bit one


def kind_of(provider: ProviderName, column: Column) -> Kind:
    """The kind a column of ``provider`` lands as (``string`` for a type the table does not name)."""
    if provider == "databricks":
        match = _TYPE_HEAD.match(column.type)
        found = DATABRICKS.get(match.group(1).upper()) if match else None
        if found is not None and found.name == "decimal":
            return _decimal(_DECIMAL_ARGUMENTS.match(column.type), found)
        return found or STRING
    if provider == "snowflake":
        found = SNOWFLAKE.get(column.type.lower())
        if found is not None and found.name == "decimal":
            precision = column.precision if column.precision is not None else MAX_DECIMAL_PRECISION
            scale = column.scale or 0
            if scale == 0 and precision <= _INT64_DIGITS:
                return Kind("int64")
            return _checked_decimal(precision, scale)
        return found or STRING
    return TABLES[provider].get(column.type, STRING)


def kinds_of(provider: ProviderName, columns: list[Column]) -> list[Kind]:
    return [kind_of(provider, column) for column in columns]


def arrow_schema(provider: ProviderName, columns: list[Column]) -> list[Column]:
    """A Parquet result's columns as its parts hold them (the manifest's ``arrow_schema``): a
    repeated name once, where it first appears, typed as its last column (as a jsonl row has it)."""
    last = {column.name: column for column in columns}
    return [Column(name=name, type=kind_of(provider, column).arrow) for name, column in last.items()]


def _decimal(arguments: re.Match[str] | None, default: Kind) -> Kind:
    if arguments is None:
        return default
    return _checked_decimal(int(arguments.group(1)), int(arguments.group(2) or 0))


def _checked_decimal(precision: int, scale: int) -> Kind:
    """A decimal the formats can hold; else text (an upstream's precision beyond 38 digits)."""
    if not 1 <= precision <= MAX_DECIMAL_PRECISION or not 0 <= scale <= precision:
        return STRING
    return Kind("decimal", precision, scale)
