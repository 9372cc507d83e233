"""What Looker's answers mean (docs/upstreams/looker.md): the error envelope, a task's statuses,
and the result formats: where a JSON format keeps its rows, how a json_detail cell wraps its
value, which errors of a result are errors, and what a column's type is.

Results are never loaded whole: JSON is read by a ``PathReader`` (rows built, or only counted
once the first one named the columns), delimited text by ``DelimitedRecords``.

A JSON result's columns depend on the document alone, never on where its bytes were cut into
chunks. They are decided at the first row, from what lies before it in the document: the row's
keys, in its order, typed by json_detail's ``fields`` metadata when ``fields`` comes before the
array of rows (as Looker writes it), else (and for a name the metadata lacks) guessed from the
row's values. A result without rows has been read to its end when the columns are decided: the
query's field names, else the metadata's in its order, typed by the metadata wherever it lies.
The head is read until the first row, or until ``errors`` holds an error (the query failed);
``errors`` holding only warnings ends nothing early.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx

from query_relay.exceptions import QueryRelayError, UpstreamQueryFailed, UpstreamTaskExpired
from query_relay.models import Column
from query_relay.observability import logger
from query_relay.providers.base import FetchedResult, NativeResult, PollStatus, TabularResult
from query_relay.providers.looker.state import LookerState
from query_relay.upstream.auth import Token
from query_relay.upstream.errors import REASON_LIMIT, Envelope, ErrorAnswer, Where, json_object
from query_relay.upstream.jsonpath import PathReader
from query_relay.upstream.stream import DelimitedRecords, StreamedAnswer, raw_chunks

API_PATH = "/api/4.0"
# A task is still under way in these statuses; "complete" is done, anything else is an ending.
UNDER_WAY = ("added", "running")
EXTENSIONS = {
    "inline_json": "json", "json": "json", "json_detail": "json", "json_fe": "json",
    "json_bi": "json", "csv": "csv", "html": "html", "md": "md", "txt": "txt", "xlsx": "xlsx",
    "gsxml": "xml", "sql": "sql", "odc": "odc",
}  # fmt: skip
# Where the rows of a JSON format sit, for reading them or counting them.
JSON_ROWS = {"json": "item", "json_detail": "data.item", "json_bi": "rows.item"}
DELIMITERS = {"csv": ",", "txt": "\t"}


def quoted(identifier: str) -> str:
    return quote(identifier, safe="")


def string_list(value: Any) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    return None


def saved_id(value: Any) -> str | None:
    """A query's or look's id as Looker writes it (a string, or a number in older versions)."""
    if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
        return str(value)
    return None


# --- a task's status and the login ---------------------------------------------------------------


def interpret(
    task_id: str, status: str, state: LookerState, where: Where, failure_reason: Callable[[str], str]
) -> PollStatus:
    """What a task status means for the job; failures raise their named error (a failed task's
    reason is read from its results by ``failure_reason``)."""
    if status == "expired":
        if state.expired_seen:
            raise UpstreamTaskExpired(f"{where}: Looker says query task {task_id!r} expired (seen twice)")
        # Looker has answered "expired" just before completing a task: look once more next time.
        logger.warning("looker task reported expired; checking again", extra={"upstream_id": task_id})
        seen = state.model_copy(update={"expired_seen": True})
        return PollStatus(finished=False, detail="expired (checking again)", state=seen.dump())
    if status == "error":
        raise UpstreamQueryFailed(f"looker query failed: {failure_reason(task_id)} [{where}, task {task_id}]")
    if status == "killed":
        raise UpstreamQueryFailed(
            f"looker query task {task_id!r} was killed in Looker before it finished [{where}]"
        )
    if status != "complete" and status not in UNDER_WAY:
        logger.warning(
            "looker task status not understood; still waiting",
            extra={"upstream_id": task_id, "status": status},
        )
    forgotten = state.model_copy(update={"expired_seen": False}).dump() if state.expired_seen else None
    return PollStatus(finished=status == "complete", detail=status, state=forgotten)


def token(document: dict[str, Any], where: Where, default_seconds: float) -> Token:
    """The access token of a login answer ``{"access_token", "expires_in"}``."""
    value, expires_in = document.get("access_token"), document.get("expires_in")
    if not isinstance(value, str) or not value:
        raise where.protocol_error("the login answer has no access_token")
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        return Token(value, float(expires_in))
    return Token(value, default_seconds)


# --- errors --------------------------------------------------------------------------------------


def envelope(body: bytes) -> Envelope:
    """``{"message", "errors"?: [{"field", "code", "message"}]}``: the field errors say more than
    the message ("Validation Failed") where there are any."""
    document = json_object(body) or {}
    fields = []
    for error in document.get("errors") or []:
        if isinstance(error, dict):
            name = str(error.get("field") or "(query)")
            text = " ".join(str(part) for part in (error.get("code"), error.get("message")) if part)
            fields.append(f"query.{name}: {text}")
    message = document.get("message")
    return Envelope(message="; ".join(fields) or (message if isinstance(message, str) else ""))


def classify(answer: ErrorAnswer) -> QueryRelayError | None:
    """422: Looker validated the query and refused it (the status classes call 400 a failed query)."""
    return answer.query_failed("rejected the query") if answer.status == 422 else None


def query_errors(errors: Any) -> list[str]:
    """The messages of a result's ``errors`` that are errors (Looker also lists warnings)."""
    messages = []
    for error in errors if isinstance(errors, list) else []:
        if isinstance(error, dict):
            if str(error.get("level") or "error").lower() in ("warning", "info"):
                continue
            text = " ".join(
                str(part) for part in (error.get("message"), error.get("message_details")) if part
            )
            messages.append(text or json.dumps(error)[:200])
        elif error:
            messages.append(str(error))
    return messages


def failure_reason(body: bytes) -> str:
    """The database's message for a failed task, from its results: ``errors`` (json_detail) or
    the envelope's ``message`` (a 400)."""
    document = json_object(body) or {}
    message = document.get("message")
    messages = query_errors(document.get("errors")) or ([message] if isinstance(message, str) else [])
    return "; ".join(messages) or "Looker reported status 'error' without a message"


# --- JSON results --------------------------------------------------------------------------------


class ResultReader(PathReader):
    """A reader of a JSON result: its rows, json_detail's ``errors`` and ``fields``, and whether
    ``fields`` lies before the rows in the document (``fields_first``: decided when the array of
    rows opens, None until then). Until then chunks are fed in slices that end at a ``[``, so that
    the one opening the rows is the last byte read when it is decided, wherever the chunks end."""

    def __init__(self, where: Where, result_format: str) -> None:
        rows = JSON_ROWS[result_format]
        self._rows_array = rows.removesuffix("item").removesuffix(".")  # "" (json): the document
        marks = (self._rows_array,) if self._rows_array else ()
        super().__init__(where, items=(rows,), collect=("errors", "fields"), marks=marks, what="result")
        self.fields_first: bool | None = None

    def feed(self, chunk: bytes) -> list[Any]:
        if self.fields_first is not None or not self._rows_array:
            return super().feed(chunk)
        found: list[Any] = []
        start = 0
        while (bracket := chunk.find(b"[", start)) >= 0:
            found += super().feed(chunk[start : bracket + 1])
            start = bracket + 1
            if self._rows_array in self.opened:
                self.fields_first = self.has("fields")
                break
        return found + super().feed(chunk[start:])  # an empty slice reads nothing


def json_reader(where: Where, result_format: str) -> ResultReader:
    """A reader of a JSON result: its rows, and json_detail's ``errors`` and ``fields``."""
    return ResultReader(where, result_format)


def raise_query_errors(reader: PathReader, where: Where) -> None:
    messages = query_errors(reader.first("errors"))
    if messages:
        raise UpstreamQueryFailed(f"looker query failed: {'; '.join(messages)[:REASON_LIMIT]} [{where}]")


def columns(first_row: Any, reader: ResultReader, known_fields: list[str] | None) -> list[Column]:
    """The columns (see the module's doc), once the head is read: the first row's keys, typed by
    json_detail's ``fields`` if it came before the rows, else from the row's values; with no row
    (the result was read to its end), the query's fields, else the metadata's names, typed by the
    metadata wherever it lies."""
    # With a row read, only metadata from before the rows counts: what follows them may or may not
    # have arrived with the chunk that held the first row.
    metadata = reader.first("fields") if reader.fields_first or reader.item_count == 0 else None
    types = _metadata_types(metadata)
    if isinstance(first_row, dict):
        return [
            Column(name=name, type=types.get(name) or _value_type(cell_value(value)))
            for name, value in first_row.items()
        ]
    return [Column(name=name, type=types.get(name, "unknown")) for name in known_fields or list(types)]


def row_values(
    rows: Iterator[Any], names: list[str], where: Where, result_format: str
) -> Iterator[list[Any]]:
    for row in rows:
        if not isinstance(row, dict):
            raise where.protocol_error(f"a row of the {result_format} result is not an object")
        yield [cell_value(row.get(name)) for name in names]


def checked[T](items: Iterator[T], reader: PathReader, result_format: str) -> Iterator[T]:
    """``items`` (rows or bytes), then the checks of the whole result: no query error, and the
    shape the format promises (json: an array of rows; the others: an object)."""
    yield from items
    raise_query_errors(reader, reader.where)
    expected = "start_array" if result_format == "json" else "start_map"
    if reader.top_event != expected:
        shape = "an object" if expected == "start_map" else "an array of rows"
        raise reader.protocol_error(f"the {result_format} result is not {shape}")


def cell_value(cell: Any) -> Any:
    """json_detail wraps each value as {"value": v, "rendered"?: ..., "links"?: ...}."""
    return cell.get("value") if isinstance(cell, dict) and "value" in cell else cell


def _value_type(value: Any) -> str:
    """A column type guessed from a JSON value, in Looker's words where they exist."""
    if isinstance(value, bool):
        return "yesno"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, dict | list) else "unknown"


def _metadata_types(metadata: Any) -> dict[str, str]:
    """name -> Looker type from json_detail's ``fields`` ({"dimensions": [...], "measures": ...})."""
    types: dict[str, str] = {}
    for group in metadata.values() if isinstance(metadata, dict) else ():
        for item in group if isinstance(group, list) else []:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                types[item["name"]] = str(item.get("type") or "unknown")
    return types


# --- results -------------------------------------------------------------------------------------


def result(
    response: httpx.Response, where: Where, result_format: str, native: bool, fields: list[str] | None
) -> FetchedResult:
    """The task's results as rows, or as Looker's bytes (rows counted where the format has rows)."""
    if result_format in JSON_ROWS:
        return _json_result(response, where, result_format, native, fields)
    if result_format not in DELIMITERS:  # html, xlsx, sql ...: stored as they are, rows not counted
        return NativeResult(chunks=raw_chunks(response, where), extension=EXTENSIONS[result_format])
    records = DelimitedRecords(
        response.iter_bytes(), where, delimiter=DELIMITERS[result_format], keep_bytes=native
    )
    columns = [Column(name=name, type="string") for name in records.read_header()]
    if native:
        extension = EXTENSIONS[result_format]
        return NativeResult(records.native_chunks(), extension, columns, lambda: records.item_count)
    return TabularResult(columns=columns, rows=records.rows())


def _json_result(
    response: httpx.Response, where: Where, result_format: str, native: bool, fields: list[str] | None
) -> FetchedResult:
    """Read as far as the first row (to know the columns), or the end when there is none; the rest
    flows on as rows or bytes. ``errors`` holding an error fails the query as soon as it is read."""
    reader = json_reader(where, result_format)
    streamed = StreamedAnswer(response, reader, where)
    streamed.read_until(lambda read: read.item_count > 0 or bool(query_errors(read.first("errors"))))
    raise_query_errors(reader, where)
    found = columns(next(iter(streamed.head), None), reader, fields)
    if native:
        reader.keep_items = False  # the first row named the columns; the rest are only counted
        chunks = checked(streamed.raw_chunks(), reader, result_format)
        return NativeResult(chunks=chunks, extension="json", columns=found, counted=lambda: reader.item_count)
    rows = row_values(streamed.items(), [column.name for column in found], where, result_format)
    return TabularResult(columns=found, rows=checked(rows, reader, result_format))
