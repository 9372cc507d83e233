"""What the Snowflake SQL API answers mean (docs/upstreams/snowflake.md): the
QueryStatus of a statement that runs or failed, the ResultSet of a finished one (its
``resultSetMetaData`` and partition 0's ``data``), a later partition (``{"data": [...]}``), the
error body, and how each ``rowType`` spells its values.

A ResultSet is read as a stream: ``resultSetMetaData`` must come before ``data`` (Snowflake writes
them so), so that rows are typed as they arrive; an answer whose ``data`` opens first is refused
whatever the output format.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from query_relay.exceptions import QueryRelayError
from query_relay.models import Column
from query_relay.providers.base import Piece
from query_relay.upstream import typed
from query_relay.upstream.errors import Envelope, ErrorAnswer, Where, json_object
from query_relay.upstream.jsonpath import PathReader

STATEMENTS_PATH = "/api/v2/statements"
# QueryStatus codes (docs/upstreams/snowflake.md): running, and the codes of a statement that ended badly.
RUNNING_CODES = frozenset({"333333", "333334"})
CANCELED_CODE = "000604"

_EPOCH_DAY = date(1970, 1, 1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# TIMESTAMP_TZ carries its offset as minutes plus 1440 (so that it is never negative).
_TZ_OFFSET_BIAS = 1440


def statement_path(handle: str) -> str:
    return f"{STATEMENTS_PATH}/{quote(handle, safe='')}"


# --- the metadata and the rows ------------------------------------------------------------------


class RowType(BaseModel):
    """One column of ``resultSetMetaData.rowType`` (fields beyond these are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    type: str = Field(min_length=1)
    precision: int | None = None
    scale: int | None = Field(default=None, ge=0, le=38)


class Partition(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    rowCount: int = Field(ge=0)
    uncompressedSize: int | None = Field(default=None, ge=0)


class Metadata(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    format: str = "jsonv2"
    rowType: list[RowType]
    partitionInfo: list[Partition] = Field(default_factory=list)


def reader(where: Where, *, keep_rows: bool, what: str = "answer") -> PathReader:
    """A reader of a ResultSet or of a later partition: rows of ``data`` kept (or only counted)."""
    return PathReader(
        where,
        rows="data",
        collect=("resultSetMetaData", "statementHandle", "code", "sqlState", "message"),
        marks=("data",),
        keep_items=keep_rows,
        object_only=True,
        what=what,
    )


def result_reader(where: Where, *, keep_rows: bool) -> PathReader:
    """A reader of the ResultSet (partition 0): its metadata must come before its rows."""
    answer = reader(where, keep_rows=keep_rows)

    def metadata_first() -> None:
        if not answer.has("resultSetMetaData"):
            raise answer.protocol_error("'data' arrived before 'resultSetMetaData'")

    answer.before_rows = metadata_first
    return answer


def knows_metadata(answer: PathReader) -> bool:
    return answer.has("resultSetMetaData") or answer.in_rows or answer.complete


def metadata(answer: PathReader) -> Metadata:
    value = answer.first("resultSetMetaData")
    if value is None:
        raise answer.protocol_error("the result has no 'resultSetMetaData'")
    try:
        found = Metadata.model_validate(value)
    except ValidationError as error:
        raise answer.protocol_error(
            f"'resultSetMetaData' is not understood ({error.error_count()} problems)"
        ) from None
    if found.format.lower() != "jsonv2":
        raise answer.protocol_error("the result is not in the jsonv2 format")
    return found


def handle(document: dict[str, Any] | PathReader) -> str | None:
    value = (
        document.first("statementHandle")
        if isinstance(document, PathReader)
        else document.get("statementHandle")
    )
    return value if isinstance(value, str) and value else None


def columns(found: Metadata) -> list[Column]:
    """Each column by its type; a FIXED one with its precision and scale (query_relay.column_types
    makes it a decimal or an integer by them)."""
    return [
        Column(name=column.name, type=column.type, precision=column.precision, scale=column.scale)
        if column.type.lower() == "fixed"
        else Column(name=column.name, type=column.type)
        for column in found.rowType
    ]


def typed_rows(found: Metadata, where: Where) -> typed.TypedRows:
    return typed.TypedRows(
        [column.name for column in found.rowType], [converter(column) for column in found.rowType], where
    )


def partition_rows(found: Metadata) -> list[int | None]:
    """The rows each partition holds, by ``partitionInfo``; one partition of unknown size (partition
    0, all in the ResultSet) when it is absent."""
    return [partition.rowCount for partition in found.partitionInfo] or [None]


def pieces(found: Metadata) -> list[Piece]:
    """Each partition as a piece a parallel fetch's branch can read: its rows and uncompressed size."""
    if not found.partitionInfo:
        return [Piece()]
    return [Piece(rows=part.rowCount, bytes=part.uncompressedSize) for part in found.partitionInfo]


def counted(reader: PathReader, expected: int | None, number: int) -> int:
    """The rows a partition held once read: as many as ``partitionInfo`` said, or it is not the
    result Snowflake described (a cut or altered answer must not land as a shorter result)."""
    if expected is not None and reader.item_count != expected:
        raise reader.protocol_error(
            f"partition {number} holds {reader.item_count} rows where partitionInfo says {expected}"
        )
    return reader.item_count


# --- how each type spells its values (every value is text in jsonv2) ------------------------------


def converter(column: RowType) -> typed.Converter | None:
    """The reader of a column's text; None where the text is the value (TEXT, BINARY as hex, and
    the types this provider does not know: GEOGRAPHY, VECTOR ...)."""
    kind = column.type.lower()
    scale = column.scale or 0
    if kind == "fixed":
        return typed.decimal(column.precision, scale)
    if kind in ("real", "float", "double"):
        return typed.floating
    if kind == "boolean":
        return typed.boolean
    if kind in ("variant", "object", "array", "map"):
        return typed.json_text
    if kind == "date":
        return _date
    if kind == "time":
        return _clock(scale)
    if kind in ("timestamp_ntz", "timestamp_ltz", "timestamp_tz"):
        return _timestamp(kind, scale)
    return None


def _date(text: str) -> str:
    """Days since 1970-01-01 -> ``YYYY-MM-DD``."""
    return (_EPOCH_DAY + timedelta(days=typed.integer(text))).isoformat()


def _seconds(text: str, scale: int) -> tuple[int, str]:
    """Seconds with a fraction -> whole seconds (floored: -1.5 is 1.5 s before the epoch) and the
    fraction as ``.ddd`` of ``scale`` digits ('' at scale 0)."""
    value = Decimal(text)
    if not value.is_finite():
        raise ValueError("not a finite number of seconds")
    whole = math.floor(value)
    fraction = f"{value - whole:.{scale}f}"[1:] if scale else ""
    return whole, fraction


def _clock(scale: int) -> typed.Converter:
    def read(text: str) -> str:
        whole, fraction = _seconds(text, scale)
        if not 0 <= whole < 86_400:
            raise ValueError("not a time of day")
        return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}{fraction}"

    return read


def _timestamp(kind: str, scale: int) -> typed.Converter:
    """ISO 8601 with the column's fraction digits: NTZ as wall-clock time (no zone), LTZ as the
    UTC instant (``Z``), TZ as the local time with its offset (``epoch offset+1440`` on the wire)."""

    def read(text: str) -> str:
        epoch, _, offset_text = text.partition(" ")
        offset = 0
        if kind == "timestamp_tz":
            offset = typed.integer(offset_text) - _TZ_OFFSET_BIAS
            if not -_TZ_OFFSET_BIAS < offset < _TZ_OFFSET_BIAS:
                raise ValueError("not a time zone offset")
        elif offset_text:
            raise ValueError("an offset where the type has none")
        whole, fraction = _seconds(epoch, scale)
        moment = _EPOCH + timedelta(seconds=whole, minutes=offset)  # OverflowError past year 9999
        text = moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction
        if kind == "timestamp_ltz":
            return text + "Z"
        if kind == "timestamp_tz":
            sign, minutes = "+" if offset >= 0 else "-", abs(offset)
            return f"{text}{sign}{minutes // 60:02d}:{minutes % 60:02d}"
        return text

    return read


# --- errors --------------------------------------------------------------------------------------


def envelope(body: bytes) -> Envelope:
    """A QueryStatus or error body: ``{"code", "sqlState", "message", "statementHandle", ...}``."""
    document = json_object(body) or {}
    code, state, message = (document.get(name) for name in ("code", "sqlState", "message"))
    code = str(code) if isinstance(code, str | int) else ""
    if isinstance(state, str) and state:
        code = f"{code} (SQL state {state})" if code else f"SQL state {state}"
    return Envelope(code=code, message=message if isinstance(message, str) else "")


def classify(answer: ErrorAnswer) -> QueryRelayError | None:
    """422: the statement failed (or was canceled) upstream; 408 about a statement: it ran past its
    timeout and Snowflake canceled it. Both are the query's failure, which asking again repeats."""
    if answer.status == 422:
        return answer.query_failed("statement failed")
    if answer.status == 408 and answer.task_id is not None:
        return answer.query_failed("statement exceeded its timeout")
    return None
