"""What the Databricks SQL Statement Execution API answers mean (docs/upstreams/databricks.md): a
statement's ``status`` (its state, and the error of a FAILED one), the ``manifest`` of a finished one
(columns, chunks, ``truncated``), the ``external_links`` of its chunks, each chunk's body (a bare JSON
array of rows), the error bodies of the API, of its OAuth token endpoint and of cloud storage, and
how each column type spells its values (every value is text or null in ``JSON_ARRAY``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from query_relay.exceptions import (
    QueryRelayError,
    UpstreamProtocolError,
    UpstreamQueryFailed,
    UpstreamTaskExpired,
)
from query_relay.models import Column
from query_relay.providers.base import Piece
from query_relay.upstream import typed
from query_relay.upstream.auth import Token
from query_relay.upstream.errors import REASON_LIMIT, Envelope, ErrorAnswer, Where, json_object
from query_relay.upstream.jsonpath import PathReader
from query_relay.upstream.stream import StreamedAnswer

STATEMENTS_PATH = "/api/2.0/sql/statements"
TOKEN_PATH = "/oidc/v1/token"  # noqa: S105 - a path
DEFAULT_TOKEN_SECONDS = 3600.0
RUNNING_STATES = frozenset({"PENDING", "RUNNING"})
# ``wait_timeout`` is "0s" (answer at once) or 5 to 50 seconds.
LEAST_SERVER_WAIT_SECONDS, MOST_SERVER_WAIT_SECONDS = 5, 50
# The fields of a statement kept when it is read: the rest (INLINE rows, which this provider never
# asks for) is skipped unbuilt.
_STATUS_FIELDS = ("statement_id", "status")
_RESULT_FIELDS = (*_STATUS_FIELDS, "manifest", "result")


def statement_path(statement_id: str) -> str:
    return f"{STATEMENTS_PATH}/{quote(statement_id, safe='')}"


def chunk_path(statement_id: str, index: int) -> str:
    return f"{statement_path(statement_id)}/result/chunks/{index}"


def wait_timeout(wait_seconds: float) -> int:
    """The submit's wait as Databricks takes it: whole seconds, 0 below 5 (the time left is spent
    looking again from here), at most 50. Never longer than the wait: rounding up could hold the
    Submit past the time its invocation has."""
    seconds = int(max(wait_seconds, 0.0))
    return 0 if seconds < LEAST_SERVER_WAIT_SECONDS else min(seconds, MOST_SERVER_WAIT_SECONDS)


# --- a statement -----------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class StatementError(_Model):
    error_code: str | int | None = None
    message: str | None = None


class Status(_Model):
    state: str
    error: StatementError | None = None
    sql_state: str | None = None


@dataclass(frozen=True)
class Statement:
    statement_id: str | None
    status: Status
    manifest: Any = None
    result: Any = None


def read_statement(response: httpx.Response, where: Where, *, with_result: bool = False) -> Statement:
    """A StatementResponse, streamed: its id and status, and with ``with_result`` its manifest and
    chunk 0's links."""
    reader = PathReader(where, collect=_RESULT_FIELDS if with_result else _STATUS_FIELDS, object_only=True)
    StreamedAnswer(response, reader, where).drain()
    statement_id = reader.first("statement_id")
    try:
        status = Status.model_validate(reader.first("status"))
    except ValidationError:
        raise where.protocol_error("the statement's 'status' is missing or not understood") from None
    return Statement(
        statement_id if isinstance(statement_id, str) and statement_id else None,
        status,
        reader.first("manifest"),
        reader.first("result"),
    )


def finished(statement: Statement, statement_id: str, where: Where) -> bool:
    """PENDING and RUNNING: not yet; SUCCEEDED: the result is there. A statement that ended any
    other way fails the job, each with its error name."""
    status = statement.status
    if status.state in RUNNING_STATES:
        return False
    if status.state == "SUCCEEDED":
        return True
    if status.state == "FAILED":
        error = status.error or StatementError()
        said = ": ".join(str(part) for part in (error.error_code, error.message) if part) or "no reason given"
        sql_state = f" (SQL state {status.sql_state})" if status.sql_state else ""
        raise UpstreamQueryFailed(f"databricks statement failed: {said[:REASON_LIMIT]}{sql_state} [{where}]")
    if status.state == "CANCELED":
        raise UpstreamQueryFailed(
            f"databricks statement {statement_id!r} was canceled upstream (by a user, or because nobody "
            f"polled it for 15 minutes) [{where}]"
        )
    if status.state == "CLOSED":
        raise UpstreamTaskExpired(
            f"{where}: databricks closed statement {statement_id!r}: its result is no longer kept (an "
            "hour after it succeeded, or closed by a user)"
        )
    raise where.protocol_error(f"statement {statement_id!r} is in an unknown state {status.state[:40]!r}")


# --- the manifest, and how each type spells its values ----------------------------------------------


class ColumnInfo(_Model):
    name: str
    type_name: str | None = None
    type_text: str | None = None
    type_precision: int | None = None
    type_scale: int | None = Field(default=None, ge=0)

    @property
    def type(self) -> str:
        return self.type_text or self.type_name or ""


class Schema(_Model):
    columns: list[ColumnInfo] = Field(default_factory=list)


class ChunkInfo(_Model):
    chunk_index: int = Field(ge=0)
    row_count: int = Field(ge=0)
    byte_count: int | None = Field(default=None, ge=0)


class Manifest(_Model):
    format: str = "JSON_ARRAY"
    schema_: Schema = Field(default_factory=Schema, alias="schema")
    total_chunk_count: int | None = Field(default=None, ge=0)
    total_row_count: int | None = Field(default=None, ge=0)
    chunks: list[ChunkInfo] = Field(default_factory=list)
    truncated: bool = False

    @property
    def chunk_count(self) -> int:
        return len(self.chunks) if self.total_chunk_count is None else self.total_chunk_count

    def chunk_rows(self, index: int) -> int | None:
        """The rows chunk ``index`` holds, by ``chunks`` (None when the manifest lists none)."""
        return self.chunks[index].row_count if self.chunks else None

    def pieces(self) -> list[Piece]:
        """Each chunk as a piece a parallel fetch's branch can read: its rows and bytes, where listed."""
        if not self.chunks:
            return [Piece() for _ in range(self.chunk_count)]
        return [Piece(rows=chunk.row_count, bytes=chunk.byte_count) for chunk in self.chunks]


def manifest(document: Any, where: Where) -> Manifest:
    if not isinstance(document, dict):
        raise where.protocol_error("the finished statement has no 'manifest'")
    try:
        found = Manifest.model_validate(document)
    except ValidationError as error:
        raise where.protocol_error(f"'manifest' is not understood ({error.error_count()} problems)") from None
    if found.format != "JSON_ARRAY":
        raise where.protocol_error("the result is not in the JSON_ARRAY format")
    if any(not column.type for column in found.schema_.columns):
        raise where.protocol_error("a column of the manifest has neither type_text nor type_name")
    if found.chunks and [chunk.chunk_index for chunk in found.chunks] != list(range(found.chunk_count)):
        raise where.protocol_error("'manifest.chunks' does not list chunks 0 .. total_chunk_count - 1")
    return found


def columns(found: Manifest) -> list[Column]:
    """Each column typed by its ``type_text`` (``DECIMAL(10,2)``, ``ARRAY<INT>``: Databricks' SQL)."""
    return [Column(name=column.name, type=column.type) for column in found.schema_.columns]


def typed_rows(found: Manifest, where: Where) -> typed.TypedRows:
    infos = found.schema_.columns
    return typed.TypedRows([info.name for info in infos], [converter(info) for info in infos], where)


# type_text's SQL names for the type_names they are (type_name may be absent: TIMESTAMP_NTZ ...).
_TYPE_NAMES = {"BIGINT": "LONG", "INTEGER": "INT", "SMALLINT": "SHORT", "TINYINT": "BYTE", "REAL": "FLOAT"}
_TYPE_NAMES |= {"DEC": "DECIMAL", "NUMERIC": "DECIMAL"}
_TYPE_HEAD = re.compile(r"\s*([A-Za-z_]+)")
_DECIMAL_TEXT = re.compile(r"\s*[A-Za-z]+\s*\(\s*(\d{1,4})\s*(?:,\s*(\d{1,4})\s*)?\)")
# Databricks' DECIMAL without a precision is DECIMAL(10, 0).
_DEFAULT_DECIMAL = (10, 0)


def type_name(column: ColumnInfo) -> str:
    head = column.type_name or ""
    if not head.strip():
        match = _TYPE_HEAD.match(column.type_text or "")
        head = match.group(1) if match else ""
    head = head.strip().upper()
    return _TYPE_NAMES.get(head, head)


def converter(column: ColumnInfo) -> typed.Converter | None:
    """The reader of a column's text; None where the text is the value (STRING, DATE and the
    timestamps in ISO 8601, BINARY, INTERVAL, and whatever type this provider does not know)."""
    kind = type_name(column)
    if kind in ("LONG", "INT", "SHORT", "BYTE"):
        return typed.integer
    if kind == "DECIMAL":
        return typed.decimal(*_precision_and_scale(column))
    if kind in ("DOUBLE", "FLOAT"):
        return typed.floating
    if kind == "BOOLEAN":
        return typed.boolean
    if kind in ("STRUCT", "ARRAY", "MAP"):
        return typed.json_text
    return None


def _precision_and_scale(column: ColumnInfo) -> tuple[int | None, int | None]:
    if column.type_scale is not None:
        return column.type_precision, column.type_scale
    match = _DECIMAL_TEXT.match(column.type_text or "")
    if match is None:
        return _DEFAULT_DECIMAL
    return int(match.group(1)), int(match.group(2) or 0)


# --- chunks and their links ------------------------------------------------------------------------


class ExternalLink(_Model):
    external_link: str = Field(min_length=1)
    chunk_index: int | None = Field(default=None, ge=0)
    row_count: int | None = Field(default=None, ge=0)
    expiration: datetime | None = None
    http_headers: dict[str, str] = Field(default_factory=dict)

    def expired(self, now: datetime) -> bool:
        if self.expiration is None:
            return False
        expiration = self.expiration if self.expiration.tzinfo else self.expiration.replace(tzinfo=UTC)
        return expiration <= now


def links(value: Any, where: Where, index: int, *, https_only: bool) -> dict[int, ExternalLink]:
    """The ``external_links`` of a chunk's answer by the chunk each is for (``index`` where a link
    does not say). A link is an absolute URL on cloud storage, fetched with no credentials of ours:
    one that carries userinfo (httpx would send it as Basic auth) is refused, and so, where the
    public address policy holds, is one that is not https (its headers may hold an encryption key)."""
    if value is None:
        return {}
    try:
        found = [ExternalLink.model_validate(link) for link in value]
    except (ValidationError, TypeError):
        raise where.protocol_error("'external_links' is not understood") from None
    for link in found:
        parts = urlsplit(link.external_link)
        if parts.scheme not in ("https", "http") or not parts.hostname or "@" in parts.netloc:
            raise where.protocol_error("an external link is not an absolute URL without userinfo")
        if https_only and parts.scheme != "https":
            raise where.protocol_error("an external link is not https")
    return {index if link.chunk_index is None else link.chunk_index: link for link in found}


def chunk_reader(where: Where, *, keep_rows: bool) -> PathReader:
    """A chunk's body: the document is the array of rows."""
    return PathReader(where, rows="", keep_items=keep_rows, what="chunk")


def counted(reader: PathReader, expected: int | None, index: int) -> int:
    """The rows a chunk held once read: a JSON array of as many rows as the manifest said (a cut or
    altered body must not land as a shorter result)."""
    if reader.top_event != "start_array":
        raise reader.protocol_error(f"chunk {index} is not a JSON array of rows")
    if expected is not None and reader.item_count != expected:
        raise reader.protocol_error(f"chunk {index} holds {reader.item_count} rows, the manifest {expected}")
    return reader.item_count


# --- tokens and errors -----------------------------------------------------------------------------


def token(document: dict[str, Any], where: Where) -> Token:
    """The access token of an OAuth answer ``{"access_token", "expires_in", ...}``."""
    value, expires_in = document.get("access_token"), document.get("expires_in")
    if not isinstance(value, str) or not value:
        raise where.protocol_error("the token answer has no access_token")
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        return Token(value, float(expires_in))
    return Token(value, DEFAULT_TOKEN_SECONDS)


def envelope(body: bytes) -> Envelope:
    """``{"error_code", "message", "details"}`` (``error_code`` a name, or a number for some auth
    errors); the token endpoint's ``{"error", "error_description"}``."""
    document = json_object(body) or {}
    code = document.get("error_code", document.get("error"))
    message = document.get("message", document.get("error_description"))
    request_id = ""
    for detail in document.get("details") or []:
        if isinstance(detail, dict) and isinstance(detail.get("request_id"), str):
            request_id = detail["request_id"]
    return Envelope(
        code=str(code) if isinstance(code, str | int) and not isinstance(code, bool) else "",
        message=message if isinstance(message, str) else "",
        request_id=request_id,
    )


def classify(answer: ErrorAnswer) -> QueryRelayError | None:
    """A 400 about a statement (a chunk out of range, an id refused) is a broken exchange, not the
    query's failure; the rest is the status classes' (400 on submit: the query was refused)."""
    if answer.status == 400 and answer.task_id is not None:
        return UpstreamProtocolError(
            f"{answer.located}: a request about the statement was refused{answer.suffix}"
        )
    return None


_STORAGE_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_STORAGE_MESSAGE = re.compile(rb"<Message>([^<]{1,500})</Message>")


def storage_envelope(body: bytes) -> Envelope:
    """Cloud storage's XML error (S3, Azure Blob and GCS alike): ``<Code>`` and ``<Message>``."""
    code, message = _STORAGE_CODE.search(body), _STORAGE_MESSAGE.search(body)
    return Envelope(
        code=code.group(1).decode("utf-8", "replace") if code else "",
        message=message.group(1).decode("utf-8", "replace") if message else "",
    )


def classify_download(answer: ErrorAnswer) -> QueryRelayError | None:
    """A link's answer: 404, the result is gone; 400/401/403 (once fresh links were tried), the
    storage refuses the link as we send it. 408, 429 and 5xx: the status classes (try later)."""
    if answer.status == 404:
        return UpstreamTaskExpired(
            f"{answer.located}: cloud storage no longer holds the chunk{answer.suffix}"
        )
    if answer.status in (400, 401, 403):
        return UpstreamProtocolError(
            f"{answer.located}: cloud storage refused the chunk's link{answer.suffix}"
        )
    return None
