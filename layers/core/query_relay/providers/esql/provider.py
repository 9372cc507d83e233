"""Elasticsearch ES|QL async queries: ``POST /_query/async``, ``GET`` / ``DELETE
/_query/async/{id}`` (docs/upstreams/esql.md). The fast-path result of Submit and the result of
Fetch go through the same code (``_result``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel

from query_relay.exceptions import QueryRelayError
from query_relay.models import ApiKeyAuth, BasicAuth, BearerAuth, OutputFormat
from query_relay.observability import logger
from query_relay.providers import base
from query_relay.providers.esql import answer
from query_relay.providers.esql.query import EsqlQuery
from query_relay.upstream.errors import Envelope, ErrorAnswer, Where, read_error_body
from query_relay.upstream.jsonpath import PathReader
from query_relay.upstream.stream import StreamedAnswer
from query_relay.upstream.waiting import attempts

# The stored result must outlive the whole job (polling timeout) plus the time Fetch needs.
KEEP_ALIVE_MARGIN_SECONDS = 3600
# A GET right after completion can briefly answer 404 before the result is stored
# (docs/upstreams/esql.md, "Races and quirks"): look once more after this pause.
NOT_FOUND_RECHECK_SECONDS = 1.0


class EsqlState(base.ProviderState):
    """Whether the job lands an answer ES flags partial (``query.allow_partial_results``)."""

    allow_partial: bool = False


class EsqlProvider(base.Provider[EsqlQuery, EsqlState]):
    name: ClassVar[str] = "esql"
    state_model: ClassVar[type[base.ProviderState]] = EsqlState
    query_model: ClassVar[type[BaseModel]] = EsqlQuery
    auth_types: ClassVar[tuple[type, ...]] = (ApiKeyAuth, BasicAuth, BearerAuth)
    auth_hint: ClassVar[str] = "api_key, basic or bearer auth"
    long_polls: ClassVar[bool] = True  # GET with wait_for_completion_timeout

    @contextmanager
    def _submit(self, query: EsqlQuery, options: base.SubmitOptions) -> Iterator[base.Submission]:
        where = self.http.where("esql submit")
        body = {
            **query.request_body(),
            "wait_for_completion_timeout": answer.duration(options.wait_seconds),
            "keep_alive": f"{options.timeout_seconds + KEEP_ALIVE_MARGIN_SECONDS}s",
            "keep_on_completion": False,
        }
        state = EsqlState(allow_partial=bool(query.allow_partial_results))
        # A query finished within the wait answers with its result (the fast path): it streams.
        request: dict[str, Any] = {
            "json": body,
            "read_allowance_seconds": options.wait_seconds,
            "result": True,
        }
        if query.allow_partial_results:
            request["params"] = {"allow_partial_results": "true"}
        with self._request("POST", "/_query/async", where, **request) as response:
            streamed = self._answer(response, where, keep_rows=options.output_format != "native")
            running = answer.header_is_running(response.headers)
            upstream_id = response.headers.get(answer.ASYNC_ID_HEADER)
            if running is None or (running and upstream_id is None):
                streamed.read_until(answer.knows_state)
                running = answer.is_running(streamed.reader) if running is None else running
                upstream_id = upstream_id or answer.upstream_id(streamed.reader)
            if running:
                if not upstream_id:
                    raise where.protocol_error("the query runs but the answer carries no id")
                logger.info("esql query running upstream", extra={"upstream_id": upstream_id})
                options.started(upstream_id, state)
                yield base.Submission(upstream_id=upstream_id, finished=False, state=state.dump())
                return
            logger.info(
                "esql query finished inside the submit (fast path)", extra={"upstream_id": upstream_id}
            )
            result = answer.result(streamed, options.output_format, upstream_id, state.allow_partial)
            yield base.Submission(upstream_id=upstream_id, finished=True, result=result, state=state.dump())

    def _poll(self, upstream_id: str, state: EsqlState, wait_seconds: float) -> base.PollStatus:
        """Long-poll: the upstream holds the GET until the query finishes or ``wait_seconds``
        pass. Only the headers (or the first fields) are read; Fetch reads the result."""
        where = self.http.where("esql poll")
        wait = max(wait_seconds, 0.0)
        params = {"wait_for_completion_timeout": answer.duration(wait)}
        with self._open_task(upstream_id, where, params=params, read_allowance_seconds=wait) as response:
            running = answer.header_is_running(response.headers)
            if running is None:
                streamed = self._answer(response, where, keep_rows=False)
                streamed.read_until(answer.knows_state)
                running = answer.is_running(streamed.reader)
        logger.info("esql query polled", extra={"upstream_id": upstream_id, "running": running})
        return base.PollStatus(finished=not running, detail="running" if running else "finished")

    @contextmanager
    def _fetch(
        self, upstream_id: str, state: EsqlState, output_format: OutputFormat
    ) -> Iterator[base.FetchedResult]:
        where = self.http.where("esql fetch")
        with self._open_task(upstream_id, where, result=True) as response:
            if answer.header_is_running(response.headers):
                raise where.protocol_error(f"task {upstream_id!r} is still running")
            streamed = self._answer(response, where, keep_rows=output_format != "native")
            yield answer.result(streamed, output_format, upstream_id, state.allow_partial)

    def _cancel(self, upstream_id: str, state: EsqlState) -> bool:
        where = self.http.where("esql cancel")
        path = answer.task_path(upstream_id)
        with self._request("DELETE", path, where, task_id=upstream_id, check=False) as response:
            if response.status_code == 404:  # finished and dropped, or expired: nothing to stop
                read_error_body(response)
                return False
            self._raise_for(response, where, upstream_id)
            read_error_body(response)  # the small acknowledgement; lets the connection be reused
            return True

    def _release(self, upstream_id: str, state: EsqlState) -> None:
        """The result is safely in S3: drop the stored copy now instead of keeping it for keep_alive."""
        self._cancel(upstream_id, state)

    # - shared steps -

    @contextmanager
    def _open_task(self, upstream_id: str, where: Where, **request: Any) -> Iterator[httpx.Response]:
        """GET the task, looking a second time after a pause when the first answer is 404: right
        after completion the upstream can briefly not find the result it is storing."""
        path = answer.task_path(upstream_id)
        for attempt in attempts((NOT_FOUND_RECHECK_SECONDS,)):
            with self._request("GET", path, where, task_id=upstream_id, check=False, **request) as response:
                if response.status_code == 404 and attempt.number == 1:
                    read_error_body(response)
                    logger.info("esql task not found; looking again", extra={"upstream_id": upstream_id})
                    continue
                self._raise_for(response, where, upstream_id)
                yield response
                return

    def _answer(
        self, response: httpx.Response, where: Where, *, keep_rows: bool
    ) -> StreamedAnswer[PathReader]:
        return StreamedAnswer(response, answer.reader(where, keep_rows=keep_rows), where)

    @staticmethod
    def _envelope(body: bytes) -> Envelope:
        return answer.envelope(body)

    def _classify(self, error: ErrorAnswer) -> QueryRelayError | None:
        return answer.classify(error)
