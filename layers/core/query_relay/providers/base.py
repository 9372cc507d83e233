"""The provider interface: what every upstream implements (submit / poll / fetch / cancel).

A provider turns one upstream's async-task protocol into these calls and maps every upstream
error to a named exception from ``query_relay.exceptions``. It never touches S3: results leave a
provider as a ``FetchedResult`` that the writer streams into S3 parts.

``Provider`` is a template: it checks the connection's auth and the query's type, makes the HTTP
client (query_relay.upstream), turns the execution state's dict into the provider's typed state,
answers a rate-limited Poll with a later look, and closes the client. A provider package
implements ``_submit``, ``_poll``, ``_fetch`` and ``_cancel`` (and ``_release`` where the upstream
keeps results); adding an upstream means one package registered in
``query_relay.providers.PROVIDERS``, one emulator under local/, and one line in the conformance
suite.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from query_relay.exceptions import (
    InvalidConnection,
    QueryRelayError,
    UpstreamProtocolError,
    UpstreamRateLimited,
)
from query_relay.models import Column, Connection, OutputFormat
from query_relay.upstream.client import UpstreamClient
from query_relay.upstream.errors import Envelope, ErrorAnswer, Where, no_envelope, raise_for_response


def _none_counted() -> int:
    return 0


def _whole() -> bool:
    return False


# Rows are checked against their columns this many at a time (see _of_width).
_WIDTH_CHECK_ROWS = 128  # few enough that holding them costs little memory (a Veza node is KiBs)


@dataclass(frozen=True)
class Piece:
    """One piece of a finished result that the upstream serves on its own (a Snowflake partition, a
    Databricks chunk): the rows it holds and its size, where the upstream says them. Pieces are
    numbered from 0 in result order; ``Provider.fetch`` can read any contiguous range of them."""

    rows: int | None = None
    bytes: int | None = None


@dataclass
class TabularResult:
    """Rows in column order; ``columns`` is known before the first row is read."""

    columns: list[Column]
    rows: Iterator[Sequence[Any]]
    # True when the upstream said the answer is partial (and the spec allowed it); final once
    # ``rows`` are exhausted.
    partial: Callable[[], bool] = _whole
    # The pieces the whole result is split into, from an upstream that splits results (known
    # before a row is read: a Fetch may hand them to a parallel fetch instead of reading them).
    pieces: list[Piece] | None = None


@dataclass
class NativeResult:
    """The upstream's own bytes, untouched, plus how many rows they hold (counted on the way:
    ``row_count`` is final once ``chunks`` are exhausted)."""

    chunks: Iterator[bytes]
    extension: str
    columns: list[Column] = field(default_factory=list)
    counted: Callable[[], int] = _none_counted
    partial: Callable[[], bool] = _whole
    pieces: list[Piece] | None = None

    @property
    def row_count(self) -> int:
        return self.counted()


FetchedResult = TabularResult | NativeResult


class ProviderState(BaseModel):
    """The small facts Poll, Fetch and Cancel need later, kept in the execution state
    (``job.provider_state``). Keys a newer or older version wrote are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=True)


@dataclass
class Submission:
    """What a submit returned. ``result`` is set on the fast path: the query finished inside the
    submit's wait and its result is readable now, while the submit's context is open."""

    upstream_id: str | None
    finished: bool
    result: FetchedResult | None = None
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PollStatus:
    finished: bool
    # The upstream asked us to come back later (Retry-After) or a provider-specific hint.
    retry_after_seconds: float | None = None
    detail: str = ""
    state: dict[str, Any] | None = None


@dataclass(frozen=True)
class SubmitOptions:
    """Job-level settings a provider may use: how long to wait inline on submit, and how long the
    whole job may take (to size the upstream's keep-alive)."""

    output_format: OutputFormat
    wait_seconds: float
    timeout_seconds: int
    # Told the task's id (and the state Poll and Fetch need) the moment the upstream names it, before
    # any inline wait, so that a retried Submit can resume the task (query_relay.submissions).
    on_started: Callable[[str, dict[str, Any]], None] | None = None
    # The same for every attempt at this job's submit (its execution and job id): an upstream that
    # takes a request id (Snowflake's requestId) starts one statement however often Submit is retried.
    request_key: str | None = None

    def started(self, upstream_id: str, state: ProviderState) -> None:
        if self.on_started is not None:
            self.on_started(upstream_id, state.dump())


T = TypeVar("T")


class Provider[Q: BaseModel, S: ProviderState](abc.ABC):
    name: ClassVar[str]
    # The model of this provider's ``query`` object in the job spec (unknown fields rejected).
    query_model: ClassVar[type[BaseModel]]
    state_model: ClassVar[type[ProviderState]] = ProviderState
    # The connection auth types this upstream takes, and how to say so.
    auth_types: ClassVar[tuple[type, ...]]
    auth_hint: ClassVar[str]
    # False when the upstream documents no way to cancel a task; Cleanup then skips it.
    can_cancel: ClassVar[bool] = True
    # True when ``poll`` blocks until the task ends or ``wait_seconds`` pass (a long-poll). Else Poll
    # checks again after short sleeps, and the schedule bounds how late a finished task is seen.
    long_polls: ClassVar[bool] = False
    # How long a rate-limited Poll waits when the upstream sends no Retry-After (None: the schedule's).
    rate_limit_default_seconds: ClassVar[float | None] = None
    # The longest the upstream lets a running task go unlooked-at (Databricks cancels a statement
    # nobody polled for 15 minutes): every gap between checks, Retry-After included, stays under it.
    max_check_gap_seconds: ClassVar[int | None] = None
    # The ``auth.token_type`` values a bearer connection may name (none: the field is refused).
    bearer_token_types: ClassVar[frozenset[str]] = frozenset()
    # True when the upstream splits a finished result into pieces read on their own (partitions,
    # chunks): its results list them (``pieces``) and ``fetch`` reads a range of them (a parallel
    # fetch's branch).
    splits_results: ClassVar[bool] = False

    @classmethod
    def check_connection(cls, connection_name: str, connection: Connection) -> None:
        """Refuse a connection this upstream cannot use (its auth type), before anything starts."""
        if not isinstance(connection.auth, cls.auth_types):
            raise InvalidConnection(
                f"connection {connection_name!r}: {cls.name} connections take {cls.auth_hint}, "
                f"not {connection.auth.type}"
            )
        token_type = getattr(connection.auth, "token_type", None)
        if token_type is not None and token_type not in cls.bearer_token_types:
            raise InvalidConnection(
                f"connection {connection_name!r}: auth.token_type is not used by {cls.name} connections"
            )

    def __init__(self, connection_name: str, connection: Connection) -> None:
        self.check_connection(connection_name, connection)
        self.connection_name = connection_name
        self.connection = connection
        self.http = UpstreamClient(self.name, connection_name, connection, auth=self._auth())

    def _auth(self) -> httpx.Auth | None:
        """The requests' credentials; None: the connection's static ones (api_key, basic, bearer)."""
        return None

    # - talking to the upstream -

    @staticmethod
    def _envelope(body: bytes) -> Envelope:
        """What this upstream's error body says (its code or type, message, request id)."""
        return no_envelope(body)

    def _classify(self, answer: ErrorAnswer) -> QueryRelayError | None:
        """The named error for an answer only this upstream's codes explain; None: the status
        classes decide (query_relay.upstream.errors.status_error)."""
        return None

    @contextmanager
    def _request(
        self,
        method: str,
        url: str,
        where: Where,
        *,
        task_id: str | None = None,
        check: bool = True,
        **request: Any,
    ) -> Iterator[httpx.Response]:
        """One streamed request; unless ``check`` is off, a non-2xx answer raises its named error."""
        with self.http.stream(method, url, where=where, task_id=task_id, **request) as response:
            if check:
                self._raise_for(response, where, task_id)
            yield response

    def _raise_for(self, response: httpx.Response, where: Where, task_id: str | None = None) -> None:
        raise_for_response(
            response,
            where,
            envelope=self._envelope,
            classify=self._classify,
            redact=self.http.redact,
            task_id=task_id,
        )

    # - what the workflow calls -

    @contextmanager
    def submit(self, query: BaseModel, options: SubmitOptions) -> Iterator[Submission]:
        """Start the upstream task. On the fast path the result is readable inside the context."""
        if not isinstance(query, self.query_model):
            wanted, given = self.query_model.__name__, type(query).__name__
            raise TypeError(f"{type(self).__name__}.submit takes a {wanted}, not {given}")
        with self._scrubbing(), self._submit(query, options) as submission:  # type: ignore[arg-type]
            if submission.result is not None:
                submission.result = self._scrubbed_result(submission.result)
            yield submission

    def poll(self, upstream_id: str, state: dict[str, Any], wait_seconds: float) -> PollStatus:
        """Is the task finished? May block up to ``wait_seconds`` where the upstream long-polls. A
        rate limit is not a failure of the job: the state machine waits as long as asked."""
        try:
            with self._scrubbing():
                status = self._poll(upstream_id, self._state(state), wait_seconds)
            return dataclasses.replace(status, detail=self.http.redact(status.detail))  # upstream's words
        except UpstreamRateLimited as error:
            return PollStatus(
                finished=False,
                retry_after_seconds=error.retry_after_seconds or self.rate_limit_default_seconds,
                detail="rate limited by the upstream",
            )

    @contextmanager
    def fetch(
        self,
        upstream_id: str,
        state: dict[str, Any],
        output_format: OutputFormat,
        *,
        pieces: range | None = None,
    ) -> Iterator[FetchedResult]:
        """Open the finished task's result as a stream (rows, or native bytes): all of it, or only
        the ``pieces`` (a range of those the whole result's ``pieces`` lists) of an upstream that
        splits results."""
        if pieces is not None and not self.splits_results:
            raise TypeError(f"{self.name} results are not split into pieces")
        with self._scrubbing():
            typed = self._state(state)
            if pieces is None:
                opened = self._fetch(upstream_id, typed, output_format)
            else:
                opened = self._fetch_pieces(upstream_id, typed, output_format, pieces)
            with opened as result:
                yield self._scrubbed_result(result)

    def cancel(self, upstream_id: str, state: dict[str, Any]) -> bool:
        """Stop the task (or drop its stored result). True when the upstream acknowledged it;
        an already finished or unknown task is not an error."""
        with self._scrubbing():
            return self._cancel(upstream_id, self._state(state))

    def release(self, upstream_id: str, state: dict[str, Any]) -> None:
        """Drop the upstream's stored result once it is safely in S3 (best effort)."""
        with self._scrubbing():
            self._release(upstream_id, self._state(state))

    # - no secret in what a provider raises -

    @contextmanager
    def _scrubbing(self) -> Iterator[None]:
        """Every named error raised inside leaves scrubbed of the connection's secrets, whatever
        upstream words (an error type, a reason, a value quoted in a protocol error) it carries."""
        try:
            yield
        except QueryRelayError as error:
            error.scrub(self.http.redact)
            raise

    def _scrubbed_result(self, result: FetchedResult) -> FetchedResult:
        """The result, its rows or bytes read under ``_scrubbing`` (they are read after fetch returns)."""
        if isinstance(result, TabularResult):
            rows = _of_width(result.rows, len(result.columns), self.http.where("result"))
            return dataclasses.replace(result, rows=self._scrubbed_items(rows))
        return dataclasses.replace(result, chunks=self._scrubbed_items(result.chunks))

    def _scrubbed_items(self, items: Iterator[T]) -> Iterator[T]:
        with self._scrubbing():
            yield from items

    def close(self) -> None:
        self.http.close()

    def _state(self, state: dict[str, Any]) -> S:
        try:
            return self.state_model.model_validate(state)  # type: ignore[return-value]
        except ValidationError as error:
            raise UpstreamProtocolError(
                f"{self.name} job state on connection {self.connection_name!r} is not understood "
                f"({error.error_count()} problems)"
            ) from None

    # - what a provider implements -

    @abc.abstractmethod
    def _submit(self, query: Q, options: SubmitOptions) -> AbstractContextManager[Submission]: ...

    @abc.abstractmethod
    def _poll(self, upstream_id: str, state: S, wait_seconds: float) -> PollStatus: ...

    @abc.abstractmethod
    def _fetch(
        self, upstream_id: str, state: S, output_format: OutputFormat
    ) -> AbstractContextManager[FetchedResult]: ...

    @abc.abstractmethod
    def _cancel(self, upstream_id: str, state: S) -> bool: ...

    # An upstream that splits results (``splits_results``) implements this, and sets its whole
    # results' ``pieces``.

    def _fetch_pieces(
        self, upstream_id: str, state: S, output_format: OutputFormat, pieces: range
    ) -> AbstractContextManager[FetchedResult]:
        raise NotImplementedError

    def _release(self, upstream_id: str, state: S) -> None:  # noqa: B027 - an optional hook
        """Default: keep the result until the upstream expires it."""


def _of_width(rows: Iterator[Sequence[Any]], width: int, where: Where) -> Iterator[Sequence[Any]]:
    """The rows, each checked to hold one value per column: a row narrower or wider than the
    columns the upstream announced is a broken answer, not data to land. (Checked a block at a
    time, by C code: a Python step per row would cost a tenth of Fetch's time.)"""
    read = 0
    while block := list(itertools.islice(rows, _WIDTH_CHECK_ROWS)):
        if set(map(len, block)) != {width}:
            number, wrong = next((n, len(row)) for n, row in enumerate(block, read + 1) if len(row) != width)
            raise where.protocol_error(f"row {number} has {wrong} values for {width} columns")
        read += len(block)
        yield from block
