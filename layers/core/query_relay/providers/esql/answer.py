"""What an ES|QL async answer says (docs/upstreams/esql.md): the async headers, the answer's
top-level fields (``id``, ``is_running``, ``is_partial``, ``columns``, ``values``), and the
error envelope.

Every answer is read as a stream by a ``PathReader``: Submit reads only as far as it needs to
tell "running" from "finished", Poll only the headers (or the first fields), and the rows of
``values`` flow on chunk by chunk, decoded a block at a time (query_relay.upstream.rows). An
answer whose ``values`` come before its ``columns`` is refused in every output format, however its
bytes were cut (``reader``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from query_relay.exceptions import QueryRelayError, UpstreamPartialResult
from query_relay.models import Column, OutputFormat
from query_relay.observability import logger
from query_relay.providers.base import FetchedResult, NativeResult, TabularResult
from query_relay.upstream.errors import Envelope, ErrorAnswer, Where, json_object
from query_relay.upstream.jsonpath import PathReader
from query_relay.upstream.stream import StreamedAnswer

ASYNC_ID_HEADER = "X-Elasticsearch-Async-Id"
ASYNC_IS_RUNNING_HEADER = "X-Elasticsearch-Async-Is-Running"
_STRUCTURED_BOOLEANS = {"?1": True, "?0": False, "true": True, "false": False}


def task_path(upstream_id: str) -> str:
    return f"/_query/async/{quote(upstream_id, safe='')}"


def duration(seconds: float) -> str:
    """An ES time value; whole milliseconds because ES refuses fractional units like '1.5s'."""
    return f"{max(round(seconds * 1000), 0)}ms"


def header_is_running(headers: httpx.Headers) -> bool | None:
    value = headers.get(ASYNC_IS_RUNNING_HEADER)
    return None if value is None else _STRUCTURED_BOOLEANS.get(value.strip().lower())


# --- the answer's fields -------------------------------------------------------------------------


def reader(where: Where, *, keep_rows: bool) -> PathReader:
    """A reader of one answer; rows are kept (or only counted) as ``values`` streams by.

    ``columns`` must come before ``values`` (ES writes them so): an answer whose ``values`` open
    first is refused the moment they open, whether the rows are kept or only counted (``native``).
    The rule is about the place in the document, so the outcome never depends on where the bytes
    were cut (a check of what had been read by the end of some chunk would)."""
    answer = PathReader(
        where,
        rows="values",
        collect=("id", "is_running", "is_partial", "columns"),
        marks=("values",),
        keep_items=keep_rows,
        object_only=True,
    )

    def columns_first() -> None:
        if not answer.has("columns"):
            raise answer.protocol_error("'values' arrived before 'columns'")

    answer.before_rows = columns_first
    return answer


def _flag(answer: PathReader, name: str) -> bool | None:
    value = answer.first(name)
    return value if isinstance(value, bool) else None


def upstream_id(answer: PathReader) -> str | None:
    value = answer.first("id")
    return value if isinstance(value, str) else None


def _in_result(answer: PathReader) -> bool:
    return answer.in_rows or "values" in answer.opened or answer.complete


def knows_state(answer: PathReader) -> bool:
    """Enough read to tell running from finished (and, if running, the id)."""
    running = _flag(answer, "is_running")
    if running is True:
        return upstream_id(answer) is not None or _in_result(answer)
    return running is False or _in_result(answer)


def knows_columns(answer: PathReader) -> bool:
    return answer.has("columns") or _in_result(answer)


def is_running(answer: PathReader) -> bool:
    """Running or finished, from what was read so far (call once ``knows_state``)."""
    running = _flag(answer, "is_running")
    if running is not None:
        return running
    # No is_running field (servers answering like the synchronous API): a result is finished.
    if answer.has("columns") or _in_result(answer):
        return False
    raise answer.protocol_error("the answer says neither that the query runs nor its result")


def columns(answer: PathReader) -> list[Column]:
    """The columns of a finished answer (call once ``knows_columns``)."""
    if _flag(answer, "is_running"):
        raise answer.protocol_error("the answer says the query is still running")
    if not answer.has("columns"):
        raise answer.protocol_error("the finished answer has no 'columns'")
    value = answer.first("columns")
    if not isinstance(value, list):
        raise answer.protocol_error("'columns' is not a list")
    try:
        return [Column(name=column["name"], type=column["type"]) for column in value]
    except (TypeError, KeyError, ValueError):
        raise answer.protocol_error("'columns' entries need a string 'name' and 'type'") from None


def checked[T](
    items: Iterator[T], answer: PathReader, task_id: str | None, allow_partial: bool
) -> Iterator[T]:
    """``items`` (rows or bytes), then the check that the whole answer was a finished result, and
    a whole one unless the job allows partial results."""
    yield from items
    if _flag(answer, "is_running"):
        raise answer.protocol_error("the answer says the query is still running")
    if not answer.has("columns") or "values" not in answer.closed:
        raise answer.protocol_error("the finished answer lacks 'columns' or 'values'")
    if _flag(answer, "is_partial"):
        if not allow_partial:
            raise UpstreamPartialResult(
                f"{answer.where}: ES says the answer is partial (is_partial: true: shards or clusters "
                f"failed) after {answer.item_count} rows; set query.allow_partial_results to land it"
            )
        logger.warning(
            "esql result is partial (is_partial: true); landing it as the job allows",
            extra={"upstream_id": task_id, "row_count": answer.item_count},
        )


def result(
    streamed: StreamedAnswer[PathReader],
    output_format: OutputFormat,
    upstream_id: str | None,
    allow_partial: bool,
) -> FetchedResult:
    """The one way a finished answer becomes a result, for the fast path and for Fetch."""
    streamed.read_until(knows_columns)
    found, reader = columns(streamed.reader), streamed.reader

    def partial() -> bool:
        return _flag(reader, "is_partial") is True

    if output_format == "native":
        chunks = checked(streamed.raw_chunks(), reader, upstream_id, allow_partial)
        return NativeResult(
            chunks=chunks, extension="json", columns=found, counted=lambda: reader.item_count, partial=partial
        )
    return TabularResult(
        partial=partial, columns=found, rows=checked(streamed.items(), reader, upstream_id, allow_partial)
    )


# --- errors --------------------------------------------------------------------------------------


def envelope(body: bytes) -> Envelope:
    """``{"error": {"type", "reason", "root_cause": [...]}, "status"}``; older answers carry
    ``"error": "text"``."""
    error = (json_object(body) or {}).get("error")
    if isinstance(error, str):
        return Envelope(message=error)
    if not isinstance(error, dict):
        return Envelope()
    root_causes = error.get("root_cause")
    first_cause: Any = root_causes[0] if isinstance(root_causes, list) and root_causes else None
    first_cause = first_cause if isinstance(first_cause, dict) else {}
    error_type = error.get("type") or first_cause.get("type") or ""
    reason = error.get("reason") or first_cause.get("reason") or ""
    return Envelope(code=str(error_type), message=str(reason))


def classify(answer: ErrorAnswer) -> QueryRelayError | None:
    """A 400 about a task's own id is a broken exchange; a 5xx that carries the task's async
    headers (finished, same id) is the task's stored failure, which asking again repeats."""
    task_id, status = answer.task_id, answer.status
    if task_id is None:
        return None
    if status == 400 and _is_malformed_id(answer.envelope, task_id):
        return answer.rejected_own_id()
    stored = answer.headers.get(ASYNC_ID_HEADER) == task_id and header_is_running(answer.headers) is False
    if status >= 500 and stored:
        return answer.query_failed("query failed while running")
    return None


def _is_malformed_id(envelope: Envelope, task_id: str) -> bool:
    return envelope.code == "illegal_argument_exception" and (
        task_id in envelope.message or "invalid id" in envelope.message.lower()
    )
