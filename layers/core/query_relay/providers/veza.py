"""Veza assessment query specs, async: ``POST /api/v1/assessments/query_spec:result_async_create``
starts a task, ``GET /api/v1/assessments/async_tasks/{id}`` reports it (see docs/upstreams/veza.md).

Every answer is an ``AsyncTask`` (with or without a ``{"task": ...}`` wrapper, enums as names or
numbers, 64-bit integers as strings or numbers, camelCase or snake_case keys): ``state`` goes
PENDING -> IN_PROGRESS -> COMPLETE, then ``status`` says SUCCEEDED (``result`` holds the answer),
FAILED (``error_reason``) or CANCELED. Answers are read incrementally (ijson's push interface):
Poll reads only as far as the state, and the nodes of a result flow to the writer one at a time.

A result is a count (one row ``{"count": N}``) or a page of nodes (one row per node). More pages
are asked for by creating a new task with the same spec plus ``page_token``; Fetch does that
itself, waiting for each page's task with short sleeps, so every page lands in the same job.
That is why Submit keeps the spec in the job's provider state. Veza documents no way to cancel
a task: ``can_cancel`` is False and a failed or timed-out job leaves its task to expire.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import httpx
import ijson
import ijson.common
import ijson.utils
from pydantic import BaseModel, Field, field_validator

from query_relay.exceptions import (
    InvalidConnection,
    InvalidJobSpec,
    UpstreamAuthFailed,
    UpstreamProtocolError,
    UpstreamQueryFailed,
    UpstreamRateLimited,
    UpstreamTaskExpired,
    UpstreamUnavailable,
)
from query_relay.http import UpstreamClient, parse_retry_after, read_error_body, translate_transport_errors
from query_relay.json_stream import ENDS, IJSON, STARTS, Subtree
from query_relay.models import BearerAuth, Column, Connection, OutputFormat, StrictModel
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

SUBMIT_PATH = "/api/v1/assessments/query_spec:result_async_create"
TASK_PATH = "/api/v1/assessments/async_tasks/{}"
_JSON_HEADERS = {"Accept": "application/json"}

# The spec rides in the execution state (to ask for later pages); keep it far below the 256 KiB
# Step Functions allows, as the job spec itself is there too.
SPEC_STATE_LIMIT_BYTES = 64 * 1024
# Step Functions keeps a failure's cause small; an upstream reason longer than this is cut.
REASON_LIMIT = 2000

STATES = ("UNKNOWN_STATE", "PENDING", "IN_PROGRESS", "COMPLETE")
STATUSES = ("UNKNOWN_STATUS", "SUCCEEDED", "FAILED", "CANCELED")
# gRPC status numbers, for gateways that put the number in an error's "code".
_GRPC_CODES = (
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
)
_QUERY_ERROR_CODES = frozenset({"InvalidArgument", "FailedPrecondition", "OutOfRange"})
_UNAVAILABLE_CODES = frozenset(
    {"Internal", "Unavailable", "DeadlineExceeded", "Aborted", "Unknown", "DataLoss"}
)

# The columns of a page of nodes: Veza's documented node keys, plus ``name`` (the node's own, else
# ``properties.name``) for readable CSVs and ``other_fields`` for any key not listed here, so that
# nothing an upstream adds is lost. Missing keys are null.
NODE_COLUMNS = (
    Column(name="id", type="string"),
    Column(name="type", type="string"),
    Column(name="name", type="string"),
    Column(name="risk_level", type="string"),
    Column(name="destination_node_count", type="long"),
    Column(name="properties", type="object"),
    Column(name="permissions", type="array"),
    Column(name="raw_permissions", type="array"),
    Column(name="effective_permissions", type="array"),
    Column(name="destination_node_ids", type="array"),
    Column(name="access_stats", type="object"),
    Column(name="engagement_access_stats", type="object"),
    Column(name="other_fields", type="object"),
)
COUNT_COLUMNS = (Column(name="count", type="long"),)
_NODE_KEYS = frozenset(column.name for column in NODE_COLUMNS) - {"other_fields"}

ResultKind = Literal["count", "nodes"]


# --- the job spec's query ------------------------------------------------------------------------


class VezaQuery(StrictModel):
    """The assessment query spec (Veza's ``GetAssessmentQuerySpecResultRequest``). Nested objects
    are Veza's own and pass through as given. ``page_token`` belongs to the provider, which follows
    the pages itself, so it is rejected here as an unknown field."""

    source_node_types: dict[str, Any]
    query_type: str | None = None
    relates_to_exp: dict[str, Any] | None = None
    access_filter: dict[str, Any] | None = None
    node_relationship_type: str | None = None
    result_value_type: str | None = None
    include_nodes: bool | None = None
    include_sub_permissions: bool | None = None
    include_permissions_summary: bool | None = None
    include_all_source_tags_in_results: bool | None = None
    include_all_destination_tags_in_results: bool | None = None
    no_relation: bool | None = None
    path_summary: Any = None
    snapshot_id: str | None = None
    customized_variables: list[Any] | None = None
    properties_to_get: list[str] | None = None
    order_by: str | None = None
    result_order_by: str | None = None
    fetch_cached_results: bool | None = None
    # Deprecated in favour of relates_to_exp, but specs copied from the Query Builder carry them.
    destination_node_types: dict[str, Any] | None = None
    required_intermediate_node_types: dict[str, Any] | None = None
    avoided_intermediate_node_types: dict[str, Any] | None = None
    raw_permissions: dict[str, Any] | None = None
    effective_permissions: dict[str, Any] | None = None
    # Nodes per page (Veza may return fewer); every page of the result lands in the job.
    page_size: int | None = Field(default=None, ge=1)

    @field_validator("source_node_types")
    @classmethod
    def _names_node_types(cls, value: dict[str, Any]) -> dict[str, Any]:
        nodes = value.get("nodes")
        if not isinstance(nodes, list) or not nodes:
            raise ValueError("needs 'nodes': a non-empty list of node specs")
        for position, node in enumerate(nodes):
            if (
                not isinstance(node, dict)
                or not isinstance(node.get("node_type"), str)
                or not node["node_type"]
            ):
                raise ValueError(f"nodes[{position}] needs a 'node_type' string")
        return value

    def request_body(self) -> dict[str, Any]:
        """The spec as sent: the fields given (top-level nulls left out, nested values untouched)."""
        return self.model_dump(mode="json", exclude_none=True)


# --- reading an AsyncTask incrementally ------------------------------------------------------------

_NODE_PATHS = frozenset({("result", "nodes_value", "values", "item"), ("result", "nodes_value", "item")})
_TOKEN_PATHS = frozenset({("result", "nodes_value", "next_page_token"), ("result", "next_page_token")})
_HAS_MORE_PATHS = frozenset({("result", "nodes_value", "has_more"), ("result", "has_more")})
_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _snake(key: str) -> str:
    return _CAMEL_HUMP.sub("_", key).lower()


class _TaskReader:
    """Parses one AsyncTask answer fed chunk by chunk, remembering the task's facts (id, state,
    status, error_reason, result kind, paging) and producing the nodes of a result as each one
    completes (or only counting them). Keys of the task and result are read in snake_case."""

    def __init__(self, where: str, *, keep_nodes: bool) -> None:
        self._where = where
        self._keep_nodes = keep_nodes
        self._events: Any = ijson.utils.sendable_list()
        self._parser: Any = IJSON.basic_parse_coro(self._events, use_float=True)
        self._stack: list[tuple[tuple[str, ...], bool]] = []  # open containers: (path, is_array)
        self._key = ""
        self._node: Subtree | None = None
        self.task_id: str | None = None
        self.state: str | None = None
        self.status: str | None = None
        self.error_reason: str | None = None
        self.result_type: str | None = None
        self.number_value: Any = None
        self.next_page_token: str | None = None
        self.has_more: bool | None = None
        self.result_seen = False
        self.result_ended = False
        self.nodes_seen = False
        self.node_count = 0
        self.complete = False

    # - feeding -

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        """Parse one more chunk; the nodes it completed (empty unless ``keep_nodes``)."""
        try:
            self._parser.send(chunk)
        except ijson.JSONError as error:
            raise self.protocol_error(f"the answer is not valid JSON ({_first_line(error)})") from None
        return self._consume()

    def finish(self) -> None:
        """The input ended: the document must be complete."""
        try:
            self._parser.close()
        except ijson.IncompleteJSONError:
            raise self.protocol_error("the answer ended before its JSON document did") from None
        except ijson.JSONError as error:
            raise self.protocol_error(f"the answer is not valid JSON ({_first_line(error)})") from None
        self._consume()
        if not self.complete:
            raise self.protocol_error("the answer ended before its JSON document did")

    # - what was read -

    @property
    def knows_outcome(self) -> bool:
        """Enough read to tell running / succeeded / failed (with its reason)."""
        if self.result_seen or self.complete:
            return True
        if self.state is None:
            return False
        if self.state != "COMPLETE":
            return True
        if self.status in ("FAILED", "CANCELED"):
            return self.error_reason is not None
        return self.status is not None

    @property
    def knows_kind(self) -> bool:
        """Enough read to tell a count from a page of nodes."""
        return (
            self.nodes_seen
            or self.number_value is not None
            or self.result_type is not None
            or self.result_ended
            or self.complete
        )

    def outcome(self) -> Literal["running", "succeeded", "failed", "canceled"]:
        """The task's outcome from what was read (call once ``knows_outcome``)."""
        state = self.state or "UNKNOWN_STATE"  # protobuf JSON may leave zero enums out
        if state != "COMPLETE":
            return "succeeded" if self.result_seen else "running"
        status = self.status or "UNKNOWN_STATUS"
        if status == "SUCCEEDED" or (status == "UNKNOWN_STATUS" and self.result_seen):
            return "succeeded"
        if status == "FAILED":
            return "failed"
        if status == "CANCELED":
            return "canceled"
        raise self.protocol_error("the task is COMPLETE but says neither SUCCEEDED, FAILED nor CANCELED")

    def kind(self) -> ResultKind:
        """Count or nodes (call once ``knows_kind`` on a succeeded task)."""
        if self.nodes_seen:
            return "nodes"
        if self.number_value is not None:
            return "count"
        result_type = (self.result_type or "").lower()
        if result_type in ("number", "count"):
            return "count"
        if result_type in ("nodes", "node"):
            return "nodes"
        if result_type:
            raise self.protocol_error(f"result_type {self.result_type!r} is not supported (nodes or number)")
        if not self.result_seen:
            raise self.protocol_error("the task SUCCEEDED but its answer carries no result")
        raise self.protocol_error("the result holds neither nodes_value nor number_value")

    def count(self) -> int:
        """The count of a finished count result (64-bit integers arrive as strings)."""
        value = self.number_value
        if value is None:
            return 0  # protobuf JSON leaves a zero out
        try:
            number = int(value) if isinstance(value, str) else value
        except ValueError:
            number = None
        if not isinstance(number, int) or isinstance(number, bool):
            raise self.protocol_error(f"number_value {value!r} is not an integer")
        return number

    def continuation(self) -> str | None:
        """The token of the next page, or None after the last one."""
        if not self.has_more:
            return None
        if not self.next_page_token:
            raise self.protocol_error("the page says has_more but gives no next_page_token")
        return self.next_page_token

    # - the event machine -

    def _consume(self) -> list[dict[str, Any]]:
        nodes: list[dict[str, Any]] = []
        for event, value in self._events:
            if self._node is not None:
                if self._node.event(event, value):
                    self.node_count += 1
                    if self._keep_nodes:
                        nodes.append(self._node.value)
                    self._node = None
            elif event == "map_key":
                self._key = _snake(value)
            elif event in ENDS:
                self._close_container()
            else:
                self._value(event, value)
        self._events.clear()
        return nodes

    def _value(self, event: str, value: Any) -> None:
        if not self._stack:
            if event != "start_map" or self.complete:
                raise self.protocol_error("the answer is not one JSON object")
            self._stack.append(((), False))
            return
        parent, parent_is_array = self._stack[-1]
        path = (*parent, "item" if parent_is_array else self._key)
        logical = path[1:] if path[:1] == ("task",) else path  # with or without the wrapper
        if event == "start_map" and logical in _NODE_PATHS:
            self._node = Subtree(build=self._keep_nodes)
            self._node.event(event, value)
        elif event in STARTS:
            self.result_seen |= logical == ("result",)
            self.nodes_seen |= logical == ("result", "nodes_value")
            self._stack.append((path, event == "start_array"))
        else:
            self._scalar(logical, value)

    def _close_container(self) -> None:
        path, _ = self._stack.pop()
        logical = path[1:] if path[:1] == ("task",) else path
        self.result_ended |= logical == ("result",)
        if not self._stack:
            self.complete = True

    def _scalar(self, logical: tuple[str, ...], value: Any) -> None:
        if value is None:
            return
        if logical == ("id",):
            self.task_id = str(value)
        elif logical == ("state",):
            self.state = self._enum(value, STATES, "state")
        elif logical == ("status",):
            self.status = self._enum(value, STATUSES, "status")
        elif logical == ("error_reason",):
            self.error_reason = str(value)
        elif logical == ("result", "result_type"):
            self.result_type = str(value)
        elif logical == ("result", "number_value"):
            self.number_value = value
        elif logical in _TOKEN_PATHS:
            self.next_page_token = str(value)
        elif logical in _HAS_MORE_PATHS:
            self.has_more = value is True or str(value).lower() == "true"

    def _enum(self, value: Any, names: tuple[str, ...], field: str) -> str:
        """An enum by name (what protobuf JSON emits) or by number (what some pages show)."""
        if isinstance(value, bool):
            raise self.protocol_error(f"{field} {value!r} is not one of {', '.join(names)}")
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            number = int(value)
            if 0 <= number < len(names):
                return names[number]
        elif isinstance(value, str) and value.upper() in names:
            return value.upper()
        raise self.protocol_error(
            f"{field} {value!r} is not one of {', '.join(names)} (or 0..{len(names) - 1})"
        )

    def protocol_error(self, problem: str) -> UpstreamProtocolError:
        return UpstreamProtocolError(f"{self._where}: {problem}")


class _TaskAnswer:
    """One AsyncTask answer on the wire: its head is read on demand (and kept for replay), then
    the rest flows out as nodes or as the untouched bytes."""

    def __init__(
        self, response: httpx.Response, reader: _TaskReader, *, connection_name: str, operation: str
    ) -> None:
        self.reader = reader
        self._chunks = response.iter_bytes()
        self._connection_name = connection_name
        self._operation = operation
        self._head_nodes: list[dict[str, Any]] = []
        self._head_chunks: list[bytes] = []
        self._ended = False

    def read_until(self, enough: Callable[[_TaskReader], bool]) -> None:
        """Read chunks until ``enough(reader)`` or the answer ends. A head holds at most the chunk
        that starts the nodes, however large the page."""
        with translate_transport_errors(self._connection_name, self._operation):
            while not self._ended and not enough(self.reader):
                chunk = next(self._chunks, None)
                if chunk is None:
                    self._ended = True
                    self.reader.finish()
                else:
                    self._head_chunks.append(chunk)
                    self._head_nodes += self.reader.feed(chunk)

    def nodes(self) -> Iterator[dict[str, Any]]:
        with translate_transport_errors(self._connection_name, self._operation):
            head, self._head_nodes, self._head_chunks = self._head_nodes, [], []
            yield from head
            if not self._ended:
                for chunk in self._chunks:
                    yield from self.reader.feed(chunk)
                self._ended = True
                self.reader.finish()

    def raw_chunks(self) -> Iterator[bytes]:
        with translate_transport_errors(self._connection_name, self._operation):
            head, self._head_chunks = self._head_chunks, []
            yield from head  # already parsed while reading the head
            if not self._ended:
                for chunk in self._chunks:
                    self.reader.feed(chunk)
                    yield chunk
                self._ended = True
                self.reader.finish()


# --- the provider --------------------------------------------------------------------------------


@dataclass
class _PageTally:
    pages: int = 0
    rows: int = 0


class VezaProvider(Provider):
    name: ClassVar[str] = "veza"
    query_model: ClassVar[type[BaseModel]] = VezaQuery
    can_cancel: ClassVar[bool] = False

    # Waiting for the task of a later page inside Fetch: sleeps grow from the first to the last
    # value; past the limit the page counts as unavailable (the state machine retries Fetch).
    PAGE_POLL_FIRST_SECONDS: ClassVar[float] = 0.2
    PAGE_POLL_MAX_SECONDS: ClassVar[float] = 3.0
    PAGE_WAIT_LIMIT_SECONDS: ClassVar[float] = 300.0

    def __init__(self, connection_name: str, connection: Connection) -> None:
        if not isinstance(connection.auth, BearerAuth):
            raise InvalidConnection(
                f"connection {connection_name!r}: veza connections take bearer auth "
                '({"type": "bearer", "token": "<Veza API key>"})'
            )
        super().__init__(connection_name, connection)
        self._http = UpstreamClient(connection_name, connection, headers=_JSON_HEADERS)

    # - submit -

    @contextmanager
    def submit(self, query: BaseModel, options: SubmitOptions) -> Iterator[Submission]:
        """Create the task. Veza has no long-poll: a task not finished at once is looked at again
        with short sleeps for up to ``options.wait_seconds``. A finished task's result is read by
        Fetch (the Submission carries none), so every page is handled in one place."""
        if not isinstance(query, VezaQuery):
            raise TypeError(f"VezaProvider.submit takes a VezaQuery, not {type(query).__name__}")
        spec = query.request_body()
        _check_state_size(spec)
        operation = "veza submit"
        with self._create_task(spec, operation) as answer:
            task_id = answer.reader.task_id
            finished = self._finished(answer.reader, task_id)
        if not task_id:
            raise answer.reader.protocol_error("the created task has no id")
        logger.info("veza task created", extra={"upstream_id": task_id, "finished": finished})
        options.started(task_id, {"spec": spec})
        if not finished and options.wait_seconds > 0:
            finished = self._wait_inline(task_id, options.wait_seconds)
        yield Submission(upstream_id=task_id, finished=finished, state={"spec": spec})

    # - poll -

    def poll(self, upstream_id: str, state: dict[str, Any], wait_seconds: float) -> PollStatus:
        """One look at the task (Veza does not long-poll); only its head is read."""
        operation = "veza poll"
        try:
            with self._open_task(upstream_id, operation) as answer:
                answer.read_until(lambda reader: reader.knows_outcome)
                finished = self._finished(answer.reader, upstream_id)
                detail = "finished" if finished else (answer.reader.state or "UNKNOWN_STATE").lower()
        except UpstreamRateLimited as error:
            # Not a failure of the job: the state machine waits as long as the upstream asked.
            return PollStatus(
                finished=False,
                retry_after_seconds=error.retry_after_seconds,
                detail="rate limited by the upstream",
            )
        logger.info("veza task polled", extra={"upstream_id": upstream_id, "detail": detail})
        return PollStatus(finished=finished, detail=detail)

    # - fetch -

    @contextmanager
    def fetch(
        self, upstream_id: str, state: dict[str, Any], output_format: OutputFormat
    ) -> Iterator[FetchedResult]:
        """The finished task's result, then every later page, as one stream of rows (or of the
        upstream's answers, one JSON document per line, for ``native``)."""
        spec = state.get("spec")
        keep_nodes = output_format != "native"
        with self._finished_page(upstream_id, "veza fetch", keep_nodes=keep_nodes) as first:
            kind = first.reader.kind()
            columns = list(COUNT_COLUMNS if kind == "count" else NODE_COLUMNS)
            if output_format == "native":
                native = NativeResult(chunks=iter(()), extension="jsonl", columns=columns)
                native.chunks = self._native_chunks(first, kind, spec, native)
                yield native
            else:
                yield TabularResult(columns=columns, rows=self._rows(first, kind, spec))

    # - cancel -

    def cancel(self, upstream_id: str, state: dict[str, Any]) -> bool:
        """Veza documents no cancel call for query tasks: nothing is sent, the task finishes and
        expires upstream on its own."""
        logger.info("veza has no cancel call; the task is left to expire", extra={"upstream_id": upstream_id})
        return False

    def close(self) -> None:
        self._http.close()

    # - rows and bytes of every page -

    def _rows(self, first: _TaskAnswer, kind: ResultKind, spec: Any) -> Iterator[list[Any]]:
        if kind == "count":
            for _ in first.nodes():  # a count answer holds no nodes; read it to its end
                pass
            yield [first.reader.count()]
            return
        tally = _PageTally()
        for answer in self._pages(first, spec, tally, keep_nodes=True):
            for node in answer.nodes():
                tally.rows += 1
                yield _node_row(node)
        logger.info("veza result read", extra={"pages": tally.pages, "rows": tally.rows})

    def _native_chunks(
        self, first: _TaskAnswer, kind: ResultKind, spec: Any, result: NativeResult
    ) -> Iterator[bytes]:
        """Each page's answer exactly as received, followed by a newline unless it ends with one."""
        tally = _PageTally()
        pages = self._pages(first, spec, tally, keep_nodes=False) if kind == "nodes" else iter([first])
        for answer in pages:
            last = b""
            for chunk in answer.raw_chunks():
                if chunk:
                    last = chunk
                    result.row_count = tally.rows + answer.reader.node_count
                    yield chunk
            if not last.endswith(b"\n"):
                yield b"\n"
            tally.rows += answer.reader.node_count
            result.row_count = tally.rows
        if kind == "count":
            first.reader.count()  # the count must be readable even though its bytes pass untouched
            result.row_count = 1

    def _pages(
        self, first: _TaskAnswer, spec: Any, tally: _PageTally, *, keep_nodes: bool
    ) -> Iterator[_TaskAnswer]:
        """The first page, then each later one (a new task created with ``page_token``), each
        answer yielded while it is still open and read by the caller before the next is asked for."""
        tally.pages = 1
        yield first
        token = first.reader.continuation()
        while token is not None:
            if not isinstance(spec, dict):
                raise first.reader.protocol_error(
                    "the result has more pages but the job state carries no query spec to ask for them"
                )
            tally.pages += 1
            with self._next_page(spec, token, tally.pages, keep_nodes=keep_nodes) as answer:
                if answer.reader.kind() != "nodes":
                    raise answer.reader.protocol_error(f"page {tally.pages} is not a page of nodes")
                yield answer
                token = answer.reader.continuation()

    @contextmanager
    def _next_page(
        self, spec: dict[str, Any], token: str, number: int, *, keep_nodes: bool
    ) -> Iterator[_TaskAnswer]:
        operation = f"veza fetch (page {number})"
        with self._create_task({**spec, "page_token": token}, operation, keep_nodes=keep_nodes) as answer:
            task_id = answer.reader.task_id
            if self._finished(answer.reader, task_id):
                answer.read_until(lambda reader: reader.knows_kind)
                yield answer
                return
        if not task_id:
            raise answer.reader.protocol_error("the created task has no id")
        logger.info("veza page task created", extra={"page": number, "page_task_id": task_id})
        with self._finished_page(task_id, operation, keep_nodes=keep_nodes) as answer:
            yield answer

    # - tasks -

    @contextmanager
    def _create_task(
        self, spec: dict[str, Any], operation: str, *, keep_nodes: bool = False
    ) -> Iterator[_TaskAnswer]:
        """POST the spec; yields the answer with its outcome read."""
        with self._http.stream("POST", SUBMIT_PATH, operation=operation, json=spec) as response:
            self._raise_for_error(response, operation)
            answer = self._answer(response, operation, keep_nodes=keep_nodes)
            answer.read_until(lambda reader: reader.knows_outcome)
            yield answer

    @contextmanager
    def _open_task(self, task_id: str, operation: str, *, keep_nodes: bool = False) -> Iterator[_TaskAnswer]:
        with self._http.stream(
            "GET",
            TASK_PATH.format(quote(task_id, safe="")),
            operation=operation,
            log_fields={"upstream_id": task_id},
        ) as response:
            self._raise_for_error(response, operation, task_id)
            yield self._answer(response, operation, keep_nodes=keep_nodes)

    @contextmanager
    def _finished_page(self, task_id: str, operation: str, *, keep_nodes: bool) -> Iterator[_TaskAnswer]:
        """The task's answer once it has finished, open at the start of its result. Looks again with
        growing sleeps while it runs (or the upstream asks us to slow down), for a bounded time."""
        deadline = time.monotonic() + self.PAGE_WAIT_LIMIT_SECONDS
        delay = self.PAGE_POLL_FIRST_SECONDS
        while True:
            retry_after: float | None = None
            try:
                with self._open_task(task_id, operation, keep_nodes=keep_nodes) as answer:
                    answer.read_until(lambda reader: reader.knows_outcome)
                    if self._finished(answer.reader, task_id):
                        answer.read_until(lambda reader: reader.knows_kind)
                        yield answer
                        return
            except UpstreamRateLimited as error:
                retry_after = error.retry_after_seconds
            pause = max(delay, retry_after or 0.0)
            if time.monotonic() + pause > deadline:
                raise UpstreamUnavailable(
                    f"{self._where(operation)}: task {task_id!r} not finished after "
                    f"{self.PAGE_WAIT_LIMIT_SECONDS:g}s"
                )
            time.sleep(pause)
            delay = min(delay * 2, self.PAGE_POLL_MAX_SECONDS)

    def _wait_inline(self, task_id: str, wait_seconds: float) -> bool:
        """Look at a new task until it finishes or ``wait_seconds`` pass: a quick query then skips
        the state machine's Wait and Poll states entirely."""
        deadline = time.monotonic() + wait_seconds
        delay = self.PAGE_POLL_FIRST_SECONDS
        while time.monotonic() + delay <= deadline:
            time.sleep(delay)
            delay = min(delay * 2, self.PAGE_POLL_MAX_SECONDS)
            try:
                with self._open_task(task_id, "veza submit") as answer:
                    answer.read_until(lambda reader: reader.knows_outcome)
                    if self._finished(answer.reader, task_id):
                        return True
            except UpstreamRateLimited:
                return False  # the state machine's Poll will look later
        return False

    def _finished(self, reader: _TaskReader, task_id: str | None) -> bool:
        """True once the task SUCCEEDED; its failure or cancellation raises UpstreamQueryFailed."""
        outcome = reader.outcome()
        if outcome in ("running", "succeeded"):
            return outcome == "succeeded"
        reason = self._http.redact(reader.error_reason or "no reason given")[:REASON_LIMIT]
        if outcome == "canceled":
            raise UpstreamQueryFailed(
                f"veza task {task_id!r} was canceled upstream: {reason} [connection {self.connection_name!r}]"
            )
        raise UpstreamQueryFailed(
            f"veza query failed: {reason} [task {task_id!r}, connection {self.connection_name!r}]"
        )

    def _answer(self, response: httpx.Response, operation: str, *, keep_nodes: bool) -> _TaskAnswer:
        reader = _TaskReader(self._where(operation), keep_nodes=keep_nodes)
        return _TaskAnswer(response, reader, connection_name=self.connection_name, operation=operation)

    # - errors -

    def _raise_for_error(self, response: httpx.Response, operation: str, task_id: str | None = None) -> None:
        """Veza's error envelope ``{"code", "message", "request_id", "details"}`` first (it names
        the failure), then the generic status classes."""
        status = response.status_code
        if 200 <= status < 300:
            return
        code, message, request_id = _error_envelope(read_error_body(response))
        message = self._http.redact(message)[:REASON_LIMIT]
        described = f"{code}: {message}" if code and message else code or message
        where = f"{self._where(operation)}, HTTP {status}" + (
            f", request_id {request_id}" if request_id else ""
        )
        suffix = f" ({described})" if described else ""
        if task_id is not None and (status == 404 or code == "NotFound"):
            raise UpstreamTaskExpired(
                f"{where}: the upstream no longer knows task {task_id!r} (unknown or expired){suffix}"
            )
        if status in (401, 403) or code in ("Unauthenticated", "PermissionDenied"):
            raise UpstreamAuthFailed(f"{where}: the upstream refused the credentials{suffix}")
        if status == 429 or code == "ResourceExhausted":
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            hint = f", retry after {retry_after:g}s" if retry_after is not None else ""
            raise UpstreamRateLimited(
                f"{where}: rate limited by the upstream{hint}{suffix}", retry_after_seconds=retry_after
            )
        if status >= 500 or status == 408 or code in _UNAVAILABLE_CODES:
            raise UpstreamUnavailable(f"{where}: the upstream is unavailable{suffix}")
        if task_id is not None and status == 400:
            # The id came from the upstream itself; refusing it means the exchange is broken.
            raise UpstreamProtocolError(f"{where}: the upstream rejected its own task id {task_id!r}{suffix}")
        if status == 400 or code in _QUERY_ERROR_CODES:
            raise UpstreamQueryFailed(f"veza query failed: {described or f'HTTP {status}'} [{where}]")
        raise UpstreamProtocolError(f"{where}: unexpected answer{suffix}")

    def _where(self, operation: str) -> str:
        return f"{operation} on connection {self.connection_name!r}"


def _node_row(node: Any) -> list[Any]:
    """One node as a row of NODE_COLUMNS: the node's own keys, ``name`` filled from
    ``properties.name`` when the node has none, and any other keys under ``other_fields``."""
    if not isinstance(node, dict):
        return [None] * (len(NODE_COLUMNS) - 1) + [{"value": node}]
    properties = node.get("properties")
    name = (
        node["name"] if "name" in node else properties.get("name") if isinstance(properties, dict) else None
    )
    other = {key: value for key, value in node.items() if key not in _NODE_KEYS}
    row: list[Any] = []
    for column in NODE_COLUMNS[:-1]:
        value = name if column.name == "name" else node.get(column.name)
        if column.type == "long" and isinstance(value, str) and value.lstrip("-").isdigit():
            value = int(value)  # a 64-bit integer sent as a string
        row.append(value)
    row.append(other or None)
    return row


def _check_state_size(spec: dict[str, Any]) -> None:
    size = len(json.dumps(spec, separators=(",", ":")).encode())
    if size > SPEC_STATE_LIMIT_BYTES:
        raise InvalidJobSpec(
            f"invalid job spec (veza query): the query spec is {size} bytes; at most "
            f"{SPEC_STATE_LIMIT_BYTES} fit in the job state that follows its pages"
        )


def _error_envelope(body: bytes) -> tuple[str, str, str]:
    """(code, message, request_id) of Veza's error envelope; a gRPC number in ``code`` becomes its
    name. ('', '', '') when the body is not an envelope (e.g. a gateway's HTML page)."""
    try:
        document = json.loads(body)
    except ValueError:
        return "", "", ""
    if not isinstance(document, dict):
        return "", "", ""
    code = document.get("code")
    if isinstance(code, int) and not isinstance(code, bool):
        code = _GRPC_CODES[code] if 0 <= code < len(_GRPC_CODES) else str(code)
    message = document.get("message") or document.get("error") or ""
    return str(code or ""), str(message), str(document.get("request_id") or "")


def _first_line(error: Exception) -> str:
    """yajl's messages draw a multi-line caret picture; the first line says what went wrong."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
