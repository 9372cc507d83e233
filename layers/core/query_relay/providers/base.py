"""The provider interface: what every upstream implements (submit / poll / fetch / cancel).

A provider turns one upstream's async-task protocol into these calls and maps every upstream
error to a named exception from ``query_relay.exceptions``. It never touches S3: results leave a
provider as a ``FetchedResult`` that the writer streams into S3 parts.

Adding an upstream means one module with a ``Provider`` subclass registered in
``query_relay.providers.PROVIDERS``, one emulator under local/, and one line in the conformance
suite.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

from query_relay.models import Column, Connection, OutputFormat


@dataclass
class TabularResult:
    """Rows in column order; ``columns`` is known before the first row is read."""

    columns: list[Column]
    rows: Iterator[Sequence[Any]]


@dataclass
class NativeResult:
    """The upstream's own bytes, untouched, plus how many rows they hold (counted on the way)."""

    chunks: Iterator[bytes]
    extension: str
    columns: list[Column] = field(default_factory=list)
    # Filled in by the provider while ``chunks`` is consumed; read it only after exhausting them.
    row_count: int = 0


FetchedResult = TabularResult | NativeResult


@dataclass
class Submission:
    """What a submit returned. ``result`` is set on the fast path: the query finished inside the
    submit's wait and its result is readable now, while the submit's context is open."""

    upstream_id: str | None
    finished: bool
    result: FetchedResult | None = None
    # Small provider-specific facts Poll/Fetch/Cancel need later (kept in the execution state).
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

    def started(self, upstream_id: str, state: dict[str, Any]) -> None:
        if self.on_started is not None:
            self.on_started(upstream_id, state)


class Provider(abc.ABC):
    name: ClassVar[str]
    # The model of this provider's ``query`` object in the job spec (unknown fields rejected).
    query_model: ClassVar[type[BaseModel]]
    # False when the upstream documents no way to cancel a task; Cleanup then skips it.
    can_cancel: ClassVar[bool] = True
    # True when ``poll`` blocks until the task ends or ``wait_seconds`` pass (a long-poll). Else Poll
    # checks again after short sleeps, and the schedule bounds how late a finished task is seen.
    long_polls: ClassVar[bool] = False

    def __init__(self, connection_name: str, connection: Connection) -> None:
        self.connection_name = connection_name
        self.connection = connection

    @abc.abstractmethod
    def submit(self, query: BaseModel, options: SubmitOptions) -> AbstractContextManager[Submission]:
        """Start the upstream task. On the fast path the result is readable inside the context."""

    @abc.abstractmethod
    def poll(self, upstream_id: str, state: dict[str, Any], wait_seconds: float) -> PollStatus:
        """Is the task finished? May block up to ``wait_seconds`` where the upstream long-polls."""

    @abc.abstractmethod
    def fetch(
        self, upstream_id: str, state: dict[str, Any], output_format: OutputFormat
    ) -> AbstractContextManager[FetchedResult]:
        """Open the finished task's result as a stream (rows, or native bytes)."""

    @abc.abstractmethod
    def cancel(self, upstream_id: str, state: dict[str, Any]) -> bool:
        """Stop the task (or drop its stored result). True when the upstream acknowledged it;
        an already finished or unknown task is not an error."""

    def release(self, upstream_id: str, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Drop the upstream's stored result once it is safely in S3 (best effort; default: keep
        it until the upstream expires it)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release network resources (HTTP clients)."""
