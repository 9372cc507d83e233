"""What a Veza answer says (docs/upstreams/veza.md): the ``AsyncTask`` every task call answers,
the rows its nodes become, and Veza's gRPC-style error envelope.

An AsyncTask comes with or without a ``{"task": ...}`` wrapper, enums as names or numbers, 64-bit
integers as strings or numbers, camelCase or snake_case keys, and zero values left out (protobuf
JSON). ``reader`` reads every variant by one set of paths: the wrapper dropped, keys in
snake_case. ``state`` goes PENDING -> IN_PROGRESS -> COMPLETE, then ``status`` says SUCCEEDED
(``result`` holds a count or a page of nodes), FAILED (``error_reason``) or CANCELED. Nodes are
handed out one at a time as the answer streams, however large the page.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import quote

from query_relay.exceptions import QueryRelayError, UpstreamQueryFailed
from query_relay.models import Column
from query_relay.upstream.errors import REASON_LIMIT, Envelope, ErrorAnswer, Where, json_object
from query_relay.upstream.jsonpath import ITEM, Path, PathReader

SUBMIT_PATH = "/api/v1/assessments/query_spec:result_async_create"

STATES = ("UNKNOWN_STATE", "PENDING", "IN_PROGRESS", "COMPLETE")
STATUSES = ("UNKNOWN_STATUS", "SUCCEEDED", "FAILED", "CANCELED")

# The columns of a page of nodes: Veza's documented node keys, plus ``name`` (the node's own, else
# ``properties.name``) for readable CSVs and ``other_fields`` for any key not listed here, so that
# nothing an upstream adds is lost. Missing keys are null.
NODE_COLUMNS = (
    Column(name="id", type="string"), Column(name="type", type="string"),
    Column(name="name", type="string"), Column(name="risk_level", type="string"),
    Column(name="destination_node_count", type="long"), Column(name="properties", type="object"),
    Column(name="permissions", type="array"), Column(name="raw_permissions", type="array"),
    Column(name="effective_permissions", type="array"), Column(name="destination_node_ids", type="array"),
    Column(name="access_stats", type="object"), Column(name="engagement_access_stats", type="object"),
    Column(name="other_fields", type="object"),
)  # fmt: skip
COUNT_COLUMNS = (Column(name="count", type="long"),)
_NODE_KEYS = frozenset(column.name for column in NODE_COLUMNS) - {"other_fields"}

Outcome = Literal["running", "succeeded", "failed", "canceled"]
ResultKind = Literal["count", "nodes"]


def task_path(task_id: str) -> str:
    return f"/api/v1/assessments/async_tasks/{quote(task_id, safe='')}"


# --- the AsyncTask's fields ----------------------------------------------------------------------

# A page of nodes is ``nodes_value: {values, next_page_token, has_more}``, or a bare list of nodes.
_NODES = ("result.nodes_value.values.item", "result.nodes_value.item")
_TOKEN = ("result.nodes_value.next_page_token", "result.next_page_token")
_HAS_MORE = ("result.nodes_value.has_more", "result.has_more")
_FIELDS = ("id", "state", "status", "error_reason", "result.result_type", "result.number_value")
_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


@functools.lru_cache(maxsize=256)
def logical_path(prefix: Path) -> Path:
    """A path as this module names it: without the ``task`` wrapper, keys in snake_case
    (``task.result.nodesValue.values.item`` -> ``result.nodes_value.values.item``). Node objects
    themselves are built as sent: their keys are Veza's own."""
    if prefix[:1] == ("task",):
        prefix = prefix[1:]
    return tuple(part if part is ITEM else _CAMEL_HUMP.sub("_", part).lower() for part in prefix)


def reader(where: Where, *, keep_nodes: bool) -> PathReader:
    """A reader of one AsyncTask; nodes are kept (or only counted) as the result streams by."""
    return PathReader(
        where,
        items=_NODES,
        collect=(*_FIELDS, *_TOKEN, *_HAS_MORE),
        marks=("result", "result.nodes_value"),
        keep_items=keep_nodes,
        path=logical_path,
        object_only=True,
    )


def task_id(answer: PathReader) -> str | None:
    value = answer.first("id")
    return None if value is None else str(value)


def _enum(answer: PathReader, field: str, names: tuple[str, ...]) -> str | None:
    """An enum by name (what protobuf JSON emits) or by number (what some pages show); None when
    left out (protobuf JSON omits zero values)."""
    value = answer.first(field)
    if value is None:
        return None
    if isinstance(value, int | str) and not isinstance(value, bool):
        if isinstance(value, int) or value.isdigit():
            if 0 <= int(value) < len(names):
                return names[int(value)]
        elif value.upper() in names:
            return value.upper()
    raise answer.protocol_error(
        f"{field} {value!r} is not one of {', '.join(names)} (or 0..{len(names) - 1})"
    )


def state(answer: PathReader) -> str | None:
    return _enum(answer, "state", STATES)


def knows_outcome(answer: PathReader) -> bool:
    """Enough read to tell running / succeeded / failed (with its reason)."""
    if "result" in answer.opened or answer.complete:
        return True
    current = state(answer)
    if current is None:
        return False
    if current != "COMPLETE":
        return True
    status = _enum(answer, "status", STATUSES)
    if status in ("FAILED", "CANCELED"):
        return answer.has("error_reason")
    return status is not None


def knows_kind(answer: PathReader) -> bool:
    """Enough read to tell a count from a page of nodes."""
    return (
        "result.nodes_value" in answer.opened
        or answer.has("result.number_value")
        or answer.has("result.result_type")
        or "result" in answer.closed
        or answer.complete
    )


def outcome(answer: PathReader) -> Outcome:
    """The task's outcome from what was read (call once ``knows_outcome``)."""
    result_seen = "result" in answer.opened
    if (state(answer) or "UNKNOWN_STATE") != "COMPLETE":
        return "succeeded" if result_seen else "running"
    status = _enum(answer, "status", STATUSES) or "UNKNOWN_STATUS"
    if status == "SUCCEEDED" or (status == "UNKNOWN_STATUS" and result_seen):
        return "succeeded"
    if status == "FAILED":
        return "failed"
    if status == "CANCELED":
        return "canceled"
    raise answer.protocol_error("the task is COMPLETE but says neither SUCCEEDED, FAILED nor CANCELED")


def succeeded(answer: PathReader, task_id: str | None, redact: Callable[[str], str]) -> bool:
    """True once the task SUCCEEDED, False while it runs; its failure or cancellation raises
    UpstreamQueryFailed with Veza's reason (scrubbed and cut)."""
    ended = outcome(answer)
    if ended in ("running", "succeeded"):
        return ended == "succeeded"
    reason = redact(str(answer.first("error_reason") or "no reason given"))[:REASON_LIMIT]
    connection = answer.where.connection
    if ended == "canceled":
        raise UpstreamQueryFailed(
            f"veza task {task_id!r} was canceled upstream: {reason} [connection {connection!r}]"
        )
    raise UpstreamQueryFailed(f"veza query failed: {reason} [task {task_id!r}, connection {connection!r}]")


def kind(answer: PathReader) -> ResultKind:
    """Count or nodes (call once ``knows_kind`` on a succeeded task)."""
    if "result.nodes_value" in answer.opened:
        return "nodes"
    if answer.has("result.number_value"):
        return "count"
    result_type = str(answer.first("result.result_type") or "")
    if result_type.lower() in ("number", "count"):
        return "count"
    if result_type.lower() in ("nodes", "node"):
        return "nodes"
    if result_type:
        raise answer.protocol_error(f"result_type {result_type!r} is not supported (nodes or number)")
    if "result" not in answer.opened:
        raise answer.protocol_error("the task SUCCEEDED but its answer carries no result")
    raise answer.protocol_error("the result holds neither nodes_value nor number_value")


def count(answer: PathReader) -> int:
    """The count of a finished count result (64-bit integers arrive as strings)."""
    value = answer.first("result.number_value")
    if value is None:
        return 0  # protobuf JSON leaves a zero out
    try:
        number = int(value) if isinstance(value, str) else value
    except ValueError:
        number = None
    if not isinstance(number, int) or isinstance(number, bool):
        raise answer.protocol_error(f"number_value {value!r} is not an integer")
    return number


def continuation(answer: PathReader) -> str | None:
    """The token of the next page, or None after the last one (call once the page is read)."""
    has_more = next((answer.first(path) for path in _HAS_MORE if answer.has(path)), None)
    if not (has_more is True or str(has_more).lower() == "true"):
        return None
    token = next((answer.first(path) for path in _TOKEN if answer.has(path)), None)
    if not token:
        raise answer.protocol_error("the page says has_more but gives no next_page_token")
    return str(token)


def node_row(node: Any) -> list[Any]:
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


# --- errors --------------------------------------------------------------------------------------

# gRPC status names by number (0..16), for gateways that put the number in an error's "code".
_GRPC_CODES = (
    "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists",
    "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange",
    "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
)  # fmt: skip
_AUTH_CODES = frozenset({"Unauthenticated", "PermissionDenied"})
_QUERY_ERROR_CODES = frozenset({"InvalidArgument", "FailedPrecondition", "OutOfRange"})
_UNAVAILABLE_CODES = frozenset(
    {"Internal", "Unavailable", "DeadlineExceeded", "Aborted", "Unknown", "DataLoss"}
)


def envelope(body: bytes) -> Envelope:
    """``{"code", "message", "request_id", "details"}``, ``code`` a gRPC status name (a number
    becomes its name). Empty when the body is not an envelope (a gateway's HTML page, say)."""
    document = json_object(body)
    if document is None:
        return Envelope()
    code = document.get("code")
    if isinstance(code, int) and not isinstance(code, bool):
        code = _GRPC_CODES[code] if 0 <= code < len(_GRPC_CODES) else str(code)
    message = document.get("message") or document.get("error") or ""
    return Envelope(
        code=str(code or ""), message=str(message), request_id=str(document.get("request_id") or "")
    )


def classify(answer: ErrorAnswer) -> QueryRelayError | None:
    """Veza's gRPC code names the failure as much as the status does: ``NotFound`` about a task is
    an expired task, ``Unauthenticated`` refused credentials, ``Aborted`` a retry... A 400 about a
    task's own id is a broken exchange. What is left (a 400, an unknown status) the status decides."""
    code, status, task_id = answer.envelope.code, answer.status, answer.task_id
    if task_id is not None and (status == 404 or code == "NotFound"):
        return answer.task_expired()
    if status in (401, 403) or code in _AUTH_CODES:
        return answer.auth_failed()
    if status == 429 or code == "ResourceExhausted":
        return answer.rate_limited()
    if status >= 500 or status == 408 or code in _UNAVAILABLE_CODES:
        return answer.unavailable()
    if task_id is not None and status == 400:
        return answer.rejected_own_id()
    if code in _QUERY_ERROR_CODES:
        return answer.query_failed()
    return None
