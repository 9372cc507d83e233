"""Veza assessment query specs, async: ``POST .../query_spec:result_async_create`` starts a task,
``GET .../async_tasks/{id}`` reports it (docs/upstreams/veza.md).

A result is a count (one row ``{"count": N}``) or a page of nodes (one row per node). More pages
are asked for by creating a new task with the same spec plus ``page_token``; Fetch does that
itself, waiting for each page's task with short pauses, so every page lands in the same job.
That is why Submit keeps the spec in the job's provider state. Veza documents no way to cancel
a task: ``can_cancel`` is False and a failed or timed-out job leaves its task to expire.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel

from query_relay.exceptions import QueryRelayError, UpstreamRateLimited, UpstreamUnavailable
from query_relay.models import BearerAuth, OutputFormat
from query_relay.observability import logger
from query_relay.providers import base
from query_relay.providers.veza import answer
from query_relay.providers.veza.answer import COUNT_COLUMNS, NODE_COLUMNS, ResultKind
from query_relay.providers.veza.query import VezaQuery
from query_relay.upstream.errors import Envelope, ErrorAnswer, Where
from query_relay.upstream.jsonpath import PathReader
from query_relay.upstream.stream import StreamedAnswer, as_line
from query_relay.upstream.waiting import attempts, growing

Answer = StreamedAnswer[PathReader]


class VezaState(base.ProviderState):
    """The spec as sent, to ask for later pages (stored executions keep it under ``spec``)."""

    spec: dict[str, Any] | None = None


@dataclass
class _PageTally:
    pages: int = 0
    rows: int = 0


class VezaProvider(base.Provider[VezaQuery, VezaState]):
    name: ClassVar[str] = "veza"
    query_model: ClassVar[type[BaseModel]] = VezaQuery
    state_model: ClassVar[type[base.ProviderState]] = VezaState
    auth_types: ClassVar[tuple[type, ...]] = (BearerAuth,)
    auth_hint: ClassVar[str] = 'bearer auth ({"type": "bearer", "token": "<Veza API key>"})'
    can_cancel: ClassVar[bool] = False

    # Waiting for a task (inside Submit's wait, and for a later page inside Fetch): pauses grow
    # from the first to the last value; past the limit a page counts as unavailable (the state
    # machine retries Fetch). Read from the instance, so a test may shorten them.
    PAGE_POLL_FIRST_SECONDS: ClassVar[float] = 0.2
    PAGE_POLL_MAX_SECONDS: ClassVar[float] = 3.0
    PAGE_WAIT_LIMIT_SECONDS: ClassVar[float] = 300.0

    @contextmanager
    def _submit(self, query: VezaQuery, options: base.SubmitOptions) -> Iterator[base.Submission]:
        """Create the task. Veza has no long-poll: a task not finished at once is looked at again
        with short pauses for up to ``options.wait_seconds``. A finished task's result is read by
        Fetch (the Submission carries none), so every page is handled in one place."""
        spec = query.request_body()
        where = self.http.where("veza submit")
        with self._create_task(spec, where) as streamed:
            task_id = answer.task_id(streamed.reader)
            finished = self._succeeded(streamed.reader, task_id)
        if not task_id:
            raise where.protocol_error("the created task has no id")
        logger.info("veza task created", extra={"upstream_id": task_id, "finished": finished})
        state = VezaState(spec=spec)
        options.started(task_id, state)
        if not finished and options.wait_seconds > 0:
            finished = self._wait_inline(task_id, options.wait_seconds)
        yield base.Submission(upstream_id=task_id, finished=finished, state=state.dump())

    def _poll(self, upstream_id: str, state: VezaState, wait_seconds: float) -> base.PollStatus:
        """One look at the task (Veza does not long-poll); only its head is read."""
        with self._open_task(upstream_id, self.http.where("veza poll")) as streamed:
            finished = self._succeeded(streamed.reader, upstream_id)
            detail = "finished" if finished else (answer.state(streamed.reader) or "UNKNOWN_STATE").lower()
        logger.info("veza task polled", extra={"upstream_id": upstream_id, "detail": detail})
        return base.PollStatus(finished=finished, detail=detail)

    @contextmanager
    def _fetch(
        self, upstream_id: str, state: VezaState, output_format: OutputFormat
    ) -> Iterator[base.FetchedResult]:
        """The finished task's result, then every later page, as one stream of rows (or of the
        upstream's answers, one JSON document per line, for ``native``)."""
        where = self.http.where("veza fetch")
        with self._finished_page(upstream_id, where, keep_nodes=output_format != "native") as first:
            kind = answer.kind(first.reader)
            columns = list(COUNT_COLUMNS if kind == "count" else NODE_COLUMNS)
            if output_format == "native":
                tally = _PageTally()
                chunks = self._native_chunks(first, kind, state.spec, tally)
                yield base.NativeResult(
                    chunks=chunks, extension="jsonl", columns=columns, counted=lambda: tally.rows
                )
            else:
                yield base.TabularResult(columns=columns, rows=self._rows(first, kind, state.spec))

    def _cancel(self, upstream_id: str, state: VezaState) -> bool:
        """Veza documents no cancel call for query tasks: nothing is sent, the task finishes and
        expires upstream on its own."""
        logger.info("veza has no cancel call; the task is left to expire", extra={"upstream_id": upstream_id})
        return False

    # - rows and bytes of every page -

    def _rows(self, first: Answer, kind: ResultKind, spec: dict[str, Any] | None) -> Iterator[list[Any]]:
        if kind == "count":
            first.drain()  # a count answer holds no nodes; read (and check) it to its end
            yield [answer.count(first.reader)]
            return
        tally = _PageTally()
        for page in self._pages(first, spec, tally, keep_nodes=True):
            for node in page.items():
                tally.rows += 1
                yield answer.node_row(node)
        logger.info("veza result read", extra={"pages": tally.pages, "rows": tally.rows})

    def _native_chunks(
        self, first: Answer, kind: ResultKind, spec: dict[str, Any] | None, tally: _PageTally
    ) -> Iterator[bytes]:
        """Each page's answer exactly as received, followed by a newline unless it ends with one.
        ``tally.rows`` counts the nodes (1 for a count) once the chunks are exhausted."""
        pages = self._pages(first, spec, tally, keep_nodes=False) if kind == "nodes" else iter([first])
        for page in pages:
            yield from as_line(page.raw_chunks())
            tally.rows += page.reader.item_count
        if kind == "count":
            answer.count(first.reader)  # the count must be readable even though its bytes pass untouched
            tally.rows = 1

    def _pages(
        self, first: Answer, spec: dict[str, Any] | None, tally: _PageTally, *, keep_nodes: bool
    ) -> Iterator[Answer]:
        """The first page, then each later one (a new task created with ``page_token``), each
        answer yielded while it is still open and read by the caller before the next is asked for
        (``has_more`` may follow the nodes)."""
        tally.pages = 1
        yield first
        token = answer.continuation(first.reader)
        while token is not None:
            if spec is None:
                raise first.reader.protocol_error(
                    "the result has more pages but the job state carries no query spec to ask for them"
                )
            tally.pages += 1
            with self._next_page(spec, token, tally.pages, keep_nodes=keep_nodes) as page:
                if answer.kind(page.reader) != "nodes":
                    raise page.reader.protocol_error(f"page {tally.pages} is not a page of nodes")
                yield page
                token = answer.continuation(page.reader)

    @contextmanager
    def _next_page(
        self, spec: dict[str, Any], token: str, number: int, *, keep_nodes: bool
    ) -> Iterator[Answer]:
        where = self.http.where(f"veza fetch (page {number})")
        page = {**spec, "page_token": token}
        with self._create_task(page, where, keep_nodes=keep_nodes, result=True) as streamed:
            task_id = answer.task_id(streamed.reader)
            if self._succeeded(streamed.reader, task_id):
                streamed.read_until(answer.knows_kind)
                yield streamed
                return
        if not task_id:
            raise where.protocol_error("the created task has no id")
        logger.info("veza page task created", extra={"page": number, "page_task_id": task_id})
        with self._finished_page(task_id, where, keep_nodes=keep_nodes) as streamed:
            yield streamed

    # - tasks -

    @contextmanager
    def _create_task(
        self, spec: dict[str, Any], where: Where, *, keep_nodes: bool = False, result: bool = False
    ) -> Iterator[Answer]:
        """POST the spec; yields the answer with its outcome read (``result``: it may be a page
        to read whole, see UpstreamClient.stream)."""
        with self._request("POST", answer.SUBMIT_PATH, where, json=spec, result=result) as response:
            yield self._answer(response, where, keep_nodes)

    @contextmanager
    def _open_task(
        self, task_id: str, where: Where, *, keep_nodes: bool = False, result: bool = False
    ) -> Iterator[Answer]:
        """GET the task; yields the answer with its outcome read (``result``: as ``_create_task``)."""
        path = answer.task_path(task_id)
        with self._request("GET", path, where, task_id=task_id, result=result) as response:
            yield self._answer(response, where, keep_nodes)

    def _pauses(self) -> Iterator[float]:
        return growing(self.PAGE_POLL_FIRST_SECONDS, self.PAGE_POLL_MAX_SECONDS)

    @contextmanager
    def _finished_page(self, task_id: str, where: Where, *, keep_nodes: bool) -> Iterator[Answer]:
        """The task's answer once it has finished, open at the start of its result. Looks again
        while it runs (longer when the upstream asks us to slow down), for a bounded time."""
        for attempt in attempts(self._pauses(), seconds=self.PAGE_WAIT_LIMIT_SECONDS):
            with ExitStack() as opened:
                # Only the opening is guarded: a rate limit raised while the caller reads the page
                # (asking for the next one) must not be taken for this task's.
                try:
                    streamed = opened.enter_context(
                        self._open_task(task_id, where, keep_nodes=keep_nodes, result=True)
                    )
                except UpstreamRateLimited as error:
                    attempt.at_least(error.retry_after_seconds)
                    continue
                if self._succeeded(streamed.reader, task_id):
                    streamed.read_until(answer.knows_kind)
                    yield streamed
                    return
        raise UpstreamUnavailable(
            f"{where}: task {task_id!r} not finished after {self.PAGE_WAIT_LIMIT_SECONDS:g}s"
        )

    def _wait_inline(self, task_id: str, wait_seconds: float) -> bool:
        """Look at a new task until it finishes or ``wait_seconds`` pass: a quick query then skips
        the state machine's Wait and Poll states entirely."""
        where = self.http.where("veza submit")
        for _ in attempts(self._pauses(), seconds=wait_seconds, pause_first=True):
            try:
                with self._open_task(task_id, where) as streamed:
                    if self._succeeded(streamed.reader, task_id):
                        return True
            except UpstreamRateLimited:
                return False  # the state machine's Poll will look later
        return False

    def _succeeded(self, reader: PathReader, task_id: str | None) -> bool:
        return answer.succeeded(reader, task_id, self.http.redact)

    def _answer(self, response: httpx.Response, where: Where, keep_nodes: bool) -> Answer:
        streamed = StreamedAnswer(response, answer.reader(where, keep_nodes=keep_nodes), where)
        streamed.read_until(answer.knows_outcome)
        return streamed

    @staticmethod
    def _envelope(body: bytes) -> Envelope:
        return answer.envelope(body)

    def _classify(self, error: ErrorAnswer) -> QueryRelayError | None:
        return answer.classify(error)
