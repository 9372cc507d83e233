"""Elasticsearch ES|QL async queries: ``POST /_query/async``, ``GET`` / ``DELETE
/_query/async/{id}`` (see docs/upstreams/esql.md).

Results are never loaded whole. Every answer is read as a stream and parsed incrementally by one
reader (``_AnswerReader``, over ijson's push interface): Submit reads only as far as it needs to
tell "running" from "finished", Poll reads only the headers (or the first fields), and the rows
or raw bytes of a finished answer flow to the caller chunk by chunk. The fast-path result of
Submit and the result of Fetch go through the same code.
"""

from __future__ import annotations

import codecs
import json
import json.scanner
import math
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
import ijson
import ijson.common
import ijson.utils
from pydantic import BaseModel, Field, field_validator

from query_relay.exceptions import (
    InvalidConnection,
    UpstreamProtocolError,
    UpstreamQueryFailed,
    UpstreamRateLimited,
    UpstreamTaskExpired,
)
from query_relay.http import UpstreamClient, read_error_body, translate_transport_errors
from query_relay.json_stream import ENDS, IJSON, STARTS, Subtree
from query_relay.models import ClientCredentialsAuth, Column, Connection, OutputFormat, StrictModel
from query_relay.observability import logger
from query_relay.providers.base import (
    FetchedResult,
    NativeResult,
    PollStatus,
    Provider,
    Submission,
    SubmitOptions,
    TabularResult,
)

ASYNC_ID_HEADER = "X-Elasticsearch-Async-Id"
ASYNC_IS_RUNNING_HEADER = "X-Elasticsearch-Async-Is-Running"
# The stored result must outlive the whole job (polling timeout) plus the time Fetch needs.
KEEP_ALIVE_MARGIN_SECONDS = 3600
# A GET right after completion can briefly answer 404 before the result is stored
# (docs/upstreams/esql.md, "Races and quirks").
NOT_FOUND_RECHECK_SECONDS = 1.0
# Step Functions keeps a failure's cause small; an upstream reason longer than this is cut.
REASON_LIMIT = 2000

_JSON_HEADERS = {"Accept": "application/json"}
_STRUCTURED_BOOLEANS = {"?1": True, "?0": False, "true": True, "false": False}


# --- the job spec's query ------------------------------------------------------------------------

Scalar = str | int | float | bool | None


class EsqlQuery(StrictModel):
    """The ES|QL request body a job may set. The async fields (``wait_for_completion_timeout``,
    ``keep_alive``, ``keep_on_completion``) and ``columnar`` belong to the provider, so they are
    rejected here as unknown fields."""

    query: str = Field(min_length=1)
    # Positional ``[v, ...]`` or named ``[{"name": v}, ...]`` (a named value may be an object such
    # as ``{"identifier": "field"}``); never both in one list.
    params: list[Scalar | dict[str, Scalar | dict[str, Any]]] | None = None
    filter: dict[str, Any] | None = None
    locale: str | None = None
    time_zone: str | None = None
    include_ccs_metadata: bool | None = None

    @field_validator("query")
    @classmethod
    def _query_is_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("params")
    @classmethod
    def _params_are_all_positional_or_all_named(
        cls, value: list[Scalar | dict[str, Any]] | None
    ) -> list[Scalar | dict[str, Any]] | None:
        if not value:
            return value
        named = [isinstance(param, dict) for param in value]
        if any(named) and not all(named):
            raise ValueError("mixes positional values and named {name: value} parameters")
        for param in value:
            if isinstance(param, dict) and len(param) != 1:
                raise ValueError("a named parameter is an object with exactly one key: {name: value}")
        return value


# --- reading an answer incrementally ------------------------------------------------------------

_STRUCTURE_EVENTS = frozenset(STARTS + ENDS)


def _plain(value: Any) -> Any:
    """ijson reads non-integral numbers as Decimal (exact, and safe for unsigned_long integers
    beyond 64-bit floats); rows carry floats like any JSON reader would give."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError("numeric (floating point) overflow")
    return value


# Rows are decoded by the json module's C scanner. As with ijson, NaN and Infinity are not JSON and a
# number too large for a float is an error (not infinity).
_ROW_DECODER = json.JSONDecoder(parse_constant=_no_constants, parse_float=_finite_float)
# The C scanner itself (what raw_decode calls, minus a Python frame per row): (value, end) at an index.
# (typeshed declares make_scanner's context as make_scanner itself; it takes the decoder.)
_scan_row: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(_ROW_DECODER)  # type: ignore[arg-type]
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
# A row that fails to decode this close to the end of the text read so far may only be cut short.
_CUT_SHORT_MARGIN = 8
# At most this many chunks are read row by row after a block of rows failed to decode whole.
_MAX_SKIPPED_BLOCKS = 15


class _RowText:
    """The ``values`` array of an answer, from just after its ``[``: rows are decoded whole from the
    text by the json module's C scanner (what ``JSONDecoder.raw_decode`` runs; several times faster
    than an ijson event per value). Only the text from the row being decoded on is kept, so memory
    stays bounded by one row and one chunk."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._text = ""
        self._pos = 0
        self._expect_row = True  # after "[" or ",": a row (or, right after "[", the end)
        self._first = True
        # A row cut short ends with a "]" yet to come: until one arrives, decoding it again is
        # pointless (a multi-valued field many chunks long would otherwise be decoded per chunk).
        self._cut_short = False
        # Whole blocks of rows are decoded in one scan (see _read_block); after a block that could
        # not be, the next few chunks go row by row.
        self._block_misses = 0
        self._skip_blocks = 0
        self.done = False
        self.rest = b""  # the bytes after the closing "]" once done

    def feed(self, chunk: bytes, rows: list[list[Any]] | None) -> int:
        """Decode the rows completed by ``chunk`` into ``rows`` (counted only, if None); their count."""
        text = self._decoder.decode(chunk)
        self._text = self._text[self._pos :] + text
        self._pos = 0
        if self._cut_short and "]" not in text:
            return 0
        return self._read(rows, final=False)

    def finish(self) -> None:
        """The input ended inside ``values``."""
        self._decoder.decode(b"", final=True)
        self._read(None, final=True)
        if not self.done:
            raise ValueError("premature EOF inside 'values'")

    def _read(self, rows: list[list[Any]] | None, *, final: bool) -> int:
        text, pos, end = self._text, self._pos, len(self._text)
        decode, whitespace = _scan_row, _JSON_WHITESPACE.match
        # ijson spells an escaped surrogate without its pair "?"; json keeps it (and UTF-8 cannot).
        surrogates = "\\ud" in text or "\\uD" in text
        count = 0
        if rows is not None and self._expect_row:
            count, pos = self._read_block(text, pos, rows, surrogates=surrogates)
        while True:
            if pos < end and text[pos] in " \t\n\r":
                blank = whitespace(text, pos)
                pos = blank.end() if blank is not None else pos
            if pos >= end:
                break
            char = text[pos]
            if not self._expect_row:
                if char == ",":
                    self._expect_row, pos = True, pos + 1
                    continue
                if char != "]":
                    raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
                self._finish_values(text, pos + 1)
                break
            if char == "]" and self._first:
                self._finish_values(text, pos + 1)
                break
            if char == "]":  # "[[...],]"
                raise json.JSONDecodeError("Expecting value", text, pos)
            try:
                try:
                    row, after = decode(text, pos)
                except StopIteration as missing:  # how the scanner says "Expecting value" at an index
                    raise json.JSONDecodeError("Expecting value", text, missing.value) from None
            except json.JSONDecodeError as error:
                cut_short = error.pos >= end - _CUT_SHORT_MARGIN or error.msg.startswith("Unterminated")
                if cut_short and not final:
                    self._cut_short = True
                    break  # cut short by the chunk: decoded again once more text arrived
                raise
            if type(row) is not list:
                raise _NotRows(_event_name(row))
            if surrogates:
                row = _without_lone_surrogates(row)
            if rows is not None:
                rows.append(row)
            count += 1
            pos, self._expect_row, self._first, self._cut_short = after, False, False, False
        self._pos = pos
        return count

    def _read_block(self, text: str, pos: int, rows: list[list[Any]], *, surrogates: bool) -> tuple[int, int]:
        """Decode every row that ends before the last ``],[`` of the text in one scan of the C
        scanner (no Python code per row): (rows decoded, position after them). The text up to that
        ``]`` is a prefix of the array's content, so wrapped in brackets it decodes completely only
        if it ends exactly at the end of a row: cut inside a string or inside a nested array, it
        decodes to an error or stops short, and the rows are read one by one instead (which also
        words any error in the text). (0, pos) when nothing was decoded here."""
        if self._skip_blocks:
            self._skip_blocks -= 1
            return 0, pos
        cut = text.rfind("],[", pos)
        if cut < 0:
            return 0, pos
        wrapped = "[" + text[pos : cut + 1] + "]"
        try:
            block, after = _scan_row(wrapped, 0)
            complete = after == len(wrapped) and set(map(type, block)) == {list}
        except (ValueError, StopIteration, RecursionError):
            complete = False
        if not complete:
            # Cut inside a row (adjacent multi-valued fields) or an error: back off for a while.
            self._block_misses += 1
            self._skip_blocks = min(2**self._block_misses - 1, _MAX_SKIPPED_BLOCKS)
            return 0, pos
        self._block_misses = 0
        if surrogates:
            block = [_without_lone_surrogates(row) for row in block]
        rows += block
        self._expect_row, self._first, self._cut_short = False, False, False
        return len(block), cut + 1

    def _finish_values(self, text: str, after: int) -> None:
        self.done = True
        pending, _ = self._decoder.getstate()
        self.rest = text[after:].encode() + pending
        self._text, self._pos = "", 0


def _without_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("?", value)
    if isinstance(value, list):
        return [_without_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_without_lone_surrogates(key): _without_lone_surrogates(item) for key, item in value.items()}
    return value


class _NotRows(ValueError):
    """``values`` holds a value that is not a row; ``event`` is the ijson event it starts with."""

    def __init__(self, event: str) -> None:
        super().__init__(event)
        self.event = event


def _event_name(value: Any) -> str:
    """The ijson event a decoded JSON value starts with (for messages that read the same)."""
    if isinstance(value, dict):
        return "start_map"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    return "null" if value is None else "number"


class _AnswerReader:
    """Parses one ES|QL JSON answer fed chunk by chunk (ijson's push interface), remembering the
    top-level facts (id, is_running, is_partial, columns) and producing ``values`` rows as they
    complete. Everything else (``_clusters``, ``profile``, ...) is skipped without being built.
    Rows that are kept are decoded whole from the text (``_RowText``): the head is fed to ijson in
    slices that end at a ``[``, so that the one opening ``values`` is the last byte ijson saw."""

    def __init__(self, where: str, *, keep_rows: bool) -> None:
        self._where = where
        self._keep_rows = keep_rows
        self._events: Any = ijson.utils.sendable_list()
        # Non-integral numbers as floats straight from the parser (rows carry floats anyway).
        self._parser: Any = IJSON.basic_parse_coro(self._events, use_float=True)
        self.upstream_id: str | None = None
        self.is_running: bool | None = None
        self.is_partial: bool | None = None
        self.columns: list[Column] | None = None
        self.row_count = 0
        self.in_values = False
        self.values_done = False
        self.complete = False
        self._depth = 0  # containers open outside rows and subtrees: 1 = top object, 2 = values
        self._key: str | None = None
        self._subtree: Subtree | None = None
        self._row: list[Any] | None = None
        self._cell: Subtree | None = None
        self._row_text: _RowText | None = None

    # - feeding -

    def feed(self, chunk: bytes) -> list[list[Any]]:
        """Parse one more chunk; the rows it completed (empty unless ``keep_rows``)."""
        if self._row_text is not None:
            return self._feed_row_text(chunk)
        if not self._keep_rows or self.values_done:
            return self._feed_events(chunk)
        rows: list[list[Any]] = []
        start = 0
        while (bracket := chunk.find(b"[", start)) >= 0:
            rows += self._feed_events(chunk[start : bracket + 1])
            start = bracket + 1
            if self.in_values:
                self._row_text = _RowText()
                rows += self._feed_row_text(chunk[start:])
                return rows
        if start == 0 or start < len(chunk):  # an empty chunk would tell ijson the input ended
            rows += self._feed_events(chunk[start:])
        return rows

    def _feed_events(self, chunk: bytes) -> list[list[Any]]:
        try:
            self._parser.send(chunk)
        except ijson.JSONError as error:
            raise self._protocol_error(f"the answer is not valid JSON ({_first_line(error)})") from None
        return self._consume()

    def _feed_row_text(self, chunk: bytes) -> list[list[Any]]:
        row_text = self._row_text
        assert row_text is not None
        rows: list[list[Any]] = []
        with self._row_errors():
            self.row_count += row_text.feed(chunk, rows)
        if row_text.done:
            # ijson saw the values' "[" last: the "]" closes them for it, then the rest follows.
            self._row_text = None
            rows += self._feed_events(b"]" + row_text.rest)
        return rows

    @contextmanager
    def _row_errors(self) -> Iterator[None]:
        try:
            yield
        except _NotRows as not_rows:
            raise self._protocol_error(
                f"'values' holds something other than rows ({not_rows.event})"
            ) from None
        except (ValueError, RecursionError) as error:
            problem = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
            raise self._protocol_error(f"the answer is not valid JSON ({problem})") from None

    def finish(self) -> None:
        """The input ended: the document must be complete."""
        if self._row_text is not None:
            with self._row_errors():
                self._row_text.finish()
        try:
            self._parser.close()
        except ijson.JSONError as error:
            raise self._protocol_error(f"the answer is not valid JSON ({_first_line(error)})") from None
        self._consume()
        if not self.complete:
            raise self._protocol_error("the answer ended before its JSON document did")

    # - what was read -

    @property
    def knows_state(self) -> bool:
        """Enough read to tell running from finished (and, if running, the id)."""
        if self.is_running is True:
            return self.upstream_id is not None or self.in_values or self.values_done or self.complete
        return self.is_running is False or self.in_values or self.values_done or self.complete

    @property
    def knows_columns(self) -> bool:
        return self.columns is not None or self.in_values or self.values_done or self.complete

    def running(self) -> bool:
        """Running or finished, from what was read so far (call once ``knows_state``)."""
        if self.is_running is not None:
            return self.is_running
        # No is_running field (servers answering like the synchronous API): a result is finished.
        if self.columns is not None or self.in_values or self.values_done:
            return False
        raise self._protocol_error("the answer says neither that the query runs nor its result")

    def result_columns(self) -> list[Column]:
        """The columns of a finished answer (call once ``knows_columns``)."""
        if self.is_running:
            raise self._protocol_error("the answer says the query is still running")
        if self.columns is None:
            raise self._protocol_error("the finished answer has no 'columns'")
        return list(self.columns)

    def check_result(self, upstream_id: str | None) -> None:
        """After the whole answer was read: it must be a finished result."""
        if self.is_running:
            raise self._protocol_error("the answer says the query is still running")
        if self.columns is None or not self.values_done:
            raise self._protocol_error("the finished answer lacks 'columns' or 'values'")
        if self.is_partial:
            logger.warning(
                "esql result is partial (is_partial: true); the upstream returned what it had",
                extra={"upstream_id": upstream_id, "row_count": self.row_count},
            )

    # - the event machine -

    def _consume(self) -> list[list[Any]]:
        rows: list[list[Any]] = []
        keep_rows = self._keep_rows
        for event, value in self._events:
            row = self._row
            if row is not None:
                # The hot path, inlined: a plain value in a row (most events of a large answer).
                if self._cell is None and event not in _STRUCTURE_EVENTS:
                    if keep_rows:
                        row.append(value)
                    continue
                self._row_event(event, value, rows)
            elif self._subtree is not None:
                if self._subtree.event(event, value):
                    self._subtree_done()
            elif self._depth == 2:
                self._values_event(event)
            else:
                self._top_event(event, value)
        self._events.clear()
        return rows

    def _row_event(self, event: str, value: Any, rows: list[list[Any]]) -> None:
        row = self._row
        assert row is not None
        if self._cell is not None:  # a multi-valued field or an object inside the row
            if self._cell.event(event, value):
                row.append(_plain(self._cell.value))
                self._cell = None
        elif event == "end_array":
            self.row_count += 1
            if self._keep_rows:
                rows.append(row)
            self._row = None
        elif event in STARTS:
            self._cell = Subtree(build=self._keep_rows)
            self._cell.event(event, value)
        elif self._keep_rows:
            row.append(float(value) if type(value) is Decimal else value)

    def _values_event(self, event: str) -> None:
        if event == "start_array":
            self._row = []
        elif event == "end_array":
            self._depth, self.in_values, self.values_done = 1, False, True
        else:
            raise self._protocol_error(f"'values' holds something other than rows ({event})")

    def _top_event(self, event: str, value: Any) -> None:
        if self._depth == 0:
            if event != "start_map" or self.complete:
                raise self._protocol_error("the answer is not one JSON object")
            self._depth = 1
        elif event == "map_key":
            self._key = value
        elif event == "end_map":
            self._depth, self.complete = 0, True
        elif event == "start_array" and self._key == "values":
            if self.columns is None and self._keep_rows:
                raise self._protocol_error("'values' arrived before 'columns'")
            self._depth, self.in_values = 2, True
        elif event in STARTS:
            self._subtree = Subtree(build=self._key == "columns")
            self._subtree.event(event, value)
        else:
            self._top_scalar(value)

    def _top_scalar(self, value: Any) -> None:
        if self._key == "id" and isinstance(value, str):
            self.upstream_id = value
        elif self._key == "is_running" and isinstance(value, bool):
            self.is_running = value
        elif self._key == "is_partial" and isinstance(value, bool):
            self.is_partial = value

    def _subtree_done(self) -> None:
        subtree, self._subtree = self._subtree, None
        if self._key == "columns" and subtree is not None:
            self.columns = self._parse_columns(subtree.value)

    def _parse_columns(self, value: Any) -> list[Column]:
        if not isinstance(value, list):
            raise self._protocol_error("'columns' is not a list")
        try:
            return [Column(name=column["name"], type=column["type"]) for column in value]
        except (TypeError, KeyError, ValueError):
            raise self._protocol_error("'columns' entries need a string 'name' and 'type'") from None

    def _protocol_error(self, problem: str) -> UpstreamProtocolError:
        return UpstreamProtocolError(f"{self._where}: {problem}")


class _StreamedAnswer:
    """One answer on the wire: its head is read on demand (and kept for replay), then the rest
    flows out as rows or as the untouched bytes."""

    def __init__(
        self, response: httpx.Response, reader: _AnswerReader, *, connection_name: str, operation: str
    ) -> None:
        self.reader = reader
        self._chunks = response.iter_bytes()
        self._connection_name = connection_name
        self._operation = operation
        self._head_rows: list[list[Any]] = []
        self._head_chunks: list[bytes] = []
        self._ended = False

    def read_until(self, enough: Callable[[_AnswerReader], bool]) -> None:
        """Read chunks until ``enough(reader)`` or the answer ends. Reading stops at the start of
        ``values`` at the latest, so a head is small whatever the size of the result."""
        while not self._ended and not enough(self.reader):
            chunk = next(self._chunks, None)
            if chunk is None:
                self._ended = True
                self.reader.finish()
            else:
                self._head_chunks.append(chunk)
                self._head_rows += self.reader.feed(chunk)

    def rows(self, upstream_id: str | None) -> Iterator[list[Any]]:
        with translate_transport_errors(self._connection_name, self._operation):
            head_rows, self._head_rows, self._head_chunks = self._head_rows, [], []
            yield from head_rows
            if not self._ended:
                for chunk in self._chunks:
                    yield from self.reader.feed(chunk)
                self.reader.finish()
        self.reader.check_result(upstream_id)

    def native_chunks(self, result: NativeResult, upstream_id: str | None) -> Iterator[bytes]:
        with translate_transport_errors(self._connection_name, self._operation):
            head_chunks, self._head_chunks = self._head_chunks, []
            yield from head_chunks  # already parsed while reading the head
            if not self._ended:
                for chunk in self._chunks:
                    self.reader.feed(chunk)
                    self._publish(result)
                    yield chunk
                self.reader.finish()
        self.reader.check_result(upstream_id)
        self._publish(result)

    def _publish(self, result: NativeResult) -> None:
        result.row_count = self.reader.row_count
        if self.reader.columns is not None and not result.columns:
            result.columns.extend(self.reader.columns)


# --- the provider --------------------------------------------------------------------------------


class EsqlProvider(Provider):
    name: ClassVar[str] = "esql"
    query_model: ClassVar[type[BaseModel]] = EsqlQuery
    can_cancel: ClassVar[bool] = True
    long_polls: ClassVar[bool] = True  # GET with wait_for_completion_timeout

    def __init__(self, connection_name: str, connection: Connection) -> None:
        if isinstance(connection.auth, ClientCredentialsAuth):
            raise InvalidConnection(
                f"connection {connection_name!r}: esql connections take api_key, basic or bearer auth"
            )
        super().__init__(connection_name, connection)
        self._http = UpstreamClient(connection_name, connection, headers=_JSON_HEADERS)

    # - submit -

    @contextmanager
    def submit(self, query: BaseModel, options: SubmitOptions) -> Iterator[Submission]:
        if not isinstance(query, EsqlQuery):
            raise TypeError(f"EsqlProvider.submit takes an EsqlQuery, not {type(query).__name__}")
        operation = "esql submit"
        body = {
            **query.model_dump(mode="json", exclude_none=True),
            "wait_for_completion_timeout": _duration(options.wait_seconds),
            "keep_alive": f"{options.timeout_seconds + KEEP_ALIVE_MARGIN_SECONDS}s",
            "keep_on_completion": False,
        }
        with self._http.stream(
            "POST",
            "/_query/async",
            operation=operation,
            json=body,
            read_allowance_seconds=options.wait_seconds,
        ) as response:
            self._raise_for_error(response, operation)
            answer = self._answer(response, operation, keep_rows=options.output_format != "native")
            running = _header_is_running(response)
            upstream_id = response.headers.get(ASYNC_ID_HEADER)
            if running is None or (running and upstream_id is None):
                answer.read_until(lambda reader: reader.knows_state)
                running = answer.reader.running() if running is None else running
                upstream_id = upstream_id or answer.reader.upstream_id
            if running:
                if not upstream_id:
                    raise self._protocol_error(operation, "the query runs but the answer carries no id")
                logger.info("esql query running upstream", extra={"upstream_id": upstream_id})
                options.started(upstream_id, {})
                yield Submission(upstream_id=upstream_id, finished=False)
                return
            logger.info(
                "esql query finished inside the submit (fast path)", extra={"upstream_id": upstream_id}
            )
            yield Submission(
                upstream_id=upstream_id,
                finished=True,
                result=self._result(answer, options.output_format, upstream_id),
            )

    # - poll -

    def poll(self, upstream_id: str, state: dict[str, Any], wait_seconds: float) -> PollStatus:
        """Long-poll: the upstream holds the GET until the query finishes or ``wait_seconds``
        pass. Only the headers (or the first fields) are read; Fetch reads the result."""
        operation = "esql poll"
        wait = max(wait_seconds, 0.0)
        try:
            with self._open_task(
                upstream_id,
                operation,
                params={"wait_for_completion_timeout": _duration(wait)},
                read_allowance_seconds=wait,
            ) as response:
                running = _header_is_running(response)
                if running is None:
                    answer = self._answer(response, operation, keep_rows=False)
                    answer.read_until(lambda reader: reader.knows_state)
                    running = answer.reader.running()
        except UpstreamRateLimited as error:
            # Not a failure of the job: the state machine waits as long as the upstream asked.
            return PollStatus(
                finished=False,
                retry_after_seconds=error.retry_after_seconds,
                detail="rate limited by the upstream",
            )
        logger.info("esql query polled", extra={"upstream_id": upstream_id, "running": running})
        return PollStatus(finished=not running, detail="running" if running else "finished")

    # - fetch -

    @contextmanager
    def fetch(
        self, upstream_id: str, state: dict[str, Any], output_format: OutputFormat
    ) -> Iterator[FetchedResult]:
        operation = "esql fetch"
        with self._open_task(upstream_id, operation) as response:
            if _header_is_running(response):
                raise self._protocol_error(operation, f"task {upstream_id!r} is still running")
            answer = self._answer(response, operation, keep_rows=output_format != "native")
            yield self._result(answer, output_format, upstream_id)

    # - cancel -

    def cancel(self, upstream_id: str, state: dict[str, Any]) -> bool:
        operation = "esql cancel"
        with self._http.stream(
            "DELETE", _task_path(upstream_id), operation=operation, log_fields={"upstream_id": upstream_id}
        ) as response:
            if response.status_code == 404:  # finished and dropped, or expired: nothing to stop
                read_error_body(response)
                return False
            self._raise_for_error(response, operation, upstream_id)
            read_error_body(response)  # the small acknowledgement; lets the connection be reused
            return True

    def release(self, upstream_id: str, state: dict[str, Any]) -> None:
        """The result is safely in S3: drop the stored copy now instead of keeping it for keep_alive."""
        self.cancel(upstream_id, state)

    def close(self) -> None:
        self._http.close()

    # - shared steps -

    @contextmanager
    def _open_task(
        self,
        upstream_id: str,
        operation: str,
        *,
        params: dict[str, str] | None = None,
        read_allowance_seconds: float = 0.0,
    ) -> Iterator[httpx.Response]:
        """GET the task, looking a second time after a pause when the first answer is 404: right
        after completion the upstream can briefly not find the result it is storing."""
        for attempt in (1, 2):
            with self._http.stream(
                "GET",
                _task_path(upstream_id),
                operation=operation,
                params=params,
                read_allowance_seconds=read_allowance_seconds,
                log_fields={"upstream_id": upstream_id},
            ) as response:
                if response.status_code == 404 and attempt == 1:
                    read_error_body(response)
                    logger.info("esql task not found; looking again", extra={"upstream_id": upstream_id})
                    time.sleep(NOT_FOUND_RECHECK_SECONDS)
                    continue
                self._raise_for_error(response, operation, upstream_id)
                yield response
                return

    def _answer(self, response: httpx.Response, operation: str, *, keep_rows: bool) -> _StreamedAnswer:
        reader = _AnswerReader(self._where(operation), keep_rows=keep_rows)
        return _StreamedAnswer(response, reader, connection_name=self.connection_name, operation=operation)

    def _result(
        self, answer: _StreamedAnswer, output_format: OutputFormat, upstream_id: str | None
    ) -> FetchedResult:
        """The one way a finished answer becomes a result, for the fast path and for Fetch."""
        if output_format == "native":
            native = NativeResult(chunks=iter(()), extension="json")
            native.chunks = answer.native_chunks(native, upstream_id)
            return native
        answer.read_until(lambda reader: reader.knows_columns)
        return TabularResult(columns=answer.reader.result_columns(), rows=answer.rows(upstream_id))

    def _raise_for_error(
        self, response: httpx.Response, operation: str, upstream_id: str | None = None
    ) -> None:
        """ES error envelopes first (they name the failure), then the generic status classes."""
        status = response.status_code
        if 200 <= status < 300:
            return
        error_type, reason = _error_envelope(read_error_body(response))
        reason = self._http.redact(reason)[:REASON_LIMIT]
        described = f"{error_type}: {reason}" if error_type else reason
        where = f"{self._where(operation)}, HTTP {status}"
        if status == 404 and upstream_id is not None:
            raise UpstreamTaskExpired(
                f"{where}: the upstream no longer knows task {upstream_id!r} (unknown or expired)"
                + (f" ({described})" if described else "")
            )
        if status == 400 and upstream_id is not None and _is_malformed_id(error_type, reason, upstream_id):
            # The id came from the upstream itself; refusing it means the exchange is broken (or the
            # id was altered in the execution state), not that the task aged out.
            raise UpstreamProtocolError(
                f"{where}: the upstream rejected its own task id {upstream_id!r} ({described})"
            )
        if status == 400:
            # On submit the request is the user's query; on GET a 400 is the stored failure of the query.
            raise UpstreamQueryFailed(f"esql query failed: {described or 'HTTP 400'} [{where}]")
        if upstream_id is not None and status >= 500 and _is_stored_failure(response, upstream_id):
            # The task itself ended in an error that ES stored (e.g. illegal_state_exception, 500):
            # asking again gives the same answer, unlike a gateway's or an overloaded node's 5xx.
            raise UpstreamQueryFailed(
                f"esql query failed while running: {described or f'HTTP {status}'} [{where}]"
            )
        self._http.raise_for_status(response, operation=operation, reason=described)

    def _where(self, operation: str) -> str:
        return f"{operation} on connection {self.connection_name!r}"

    def _protocol_error(self, operation: str, problem: str) -> UpstreamProtocolError:
        return UpstreamProtocolError(f"{self._where(operation)}: {problem}")


def _first_line(error: Exception) -> str:
    """yajl's messages draw a multi-line caret picture; the first line says what went wrong."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _task_path(upstream_id: str) -> str:
    return f"/_query/async/{quote(upstream_id, safe='')}"


def _duration(seconds: float) -> str:
    """An ES time value; whole milliseconds because ES refuses fractional units like '1.5s'."""
    return f"{max(round(seconds * 1000), 0)}ms"


def _is_stored_failure(response: httpx.Response, upstream_id: str) -> bool:
    """An error answer that carries the task's async headers (finished, same id) is the task's own
    stored outcome, not a transport or node failure."""
    return response.headers.get(ASYNC_ID_HEADER) == upstream_id and _header_is_running(response) is False


def _header_is_running(response: httpx.Response) -> bool | None:
    value = response.headers.get(ASYNC_IS_RUNNING_HEADER)
    return None if value is None else _STRUCTURED_BOOLEANS.get(value.strip().lower())


def _error_envelope(body: bytes) -> tuple[str, str]:
    """(type, reason) of ``{"error": {"type", "reason", "root_cause": [...]}, "status"}``; older
    answers carry ``"error": "text"``. ('', '') when the body is not an envelope. The body is
    small: ``read_error_body`` caps it."""
    try:
        document = json.loads(body)
    except ValueError:
        return "", ""
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, str):
        return "", error
    if not isinstance(error, dict):
        return "", ""
    root_causes = error.get("root_cause")
    first_cause = root_causes[0] if isinstance(root_causes, list) and root_causes else None
    first_cause = first_cause if isinstance(first_cause, dict) else {}
    error_type = error.get("type") or first_cause.get("type") or ""
    reason = error.get("reason") or first_cause.get("reason") or ""
    return str(error_type), str(reason)


def _is_malformed_id(error_type: str, reason: str, upstream_id: str) -> bool:
    return error_type == "illegal_argument_exception" and (
        upstream_id in reason or "invalid id" in reason.lower()
    )
