"""Snowflake SQL API v2 statements, async (docs/upstreams/snowflake.md):
``POST /api/v2/statements?async=true`` starts one, ``GET /api/v2/statements/{handle}`` reports it
(202 running, 200 its ResultSet, 422 failed), ``?partition=N`` reads the rest of its result,
``POST .../cancel`` stops it.

Submit sends a ``requestId`` derived from the job's execution and id, with ``retry=true``: a Submit
retried after its answer was lost gets the statement it started, never a second one. Snowflake
has no long-poll, so Submit looks again with short pauses for its inline wait and Poll looks once.
Fetch reads the ResultSet (its metadata and partition 0's rows), then partitions 1 .. N-1 in order,
every value typed by the column's ``rowType`` (``answer.converter``). ``native`` stores each
partition's JSON as received, one document a line. A parallel fetch's branch reads a range of the
partitions (``pieces``, counted from ``partitionInfo``): the ResultSet for its metadata, its rows
only when the range holds partition 0.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel

from query_relay.exceptions import QueryRelayError, UpstreamRateLimited
from query_relay.models import BearerAuth, KeyPairAuth, OutputFormat
from query_relay.observability import logger
from query_relay.providers import base
from query_relay.providers.snowflake import answer
from query_relay.providers.snowflake.auth import snowflake_auth
from query_relay.providers.snowflake.query import SnowflakeQuery
from query_relay.upstream.errors import Envelope, ErrorAnswer, Where, read_error_body
from query_relay.upstream.jsonpath import PathReader
from query_relay.upstream.stream import StreamedAnswer, as_line, small_object
from query_relay.upstream.waiting import attempts, growing

Answer = StreamedAnswer[PathReader]
# requestIds are UUIDs; ours are named by the submission's key in this namespace.
REQUEST_ID_NAMESPACE = uuid.UUID("6c1f1f9e-4a55-4d2b-9d55-7b2a3c0e5f10")


@dataclass
class _Tally:
    partitions: int = 0
    rows: int = 0


class SnowflakeProvider(base.Provider[SnowflakeQuery, base.ProviderState]):
    name: ClassVar[str] = "snowflake"
    query_model: ClassVar[type[BaseModel]] = SnowflakeQuery
    auth_types: ClassVar[tuple[type, ...]] = (KeyPairAuth, BearerAuth)
    auth_hint: ClassVar[str] = (
        'key_pair auth ({"type": "key_pair", "account", "user", "private_key"}) or bearer auth '
        "(an OAuth token, or a programmatic access token with "
        '"token_type": "PROGRAMMATIC_ACCESS_TOKEN")'
    )
    bearer_token_types: ClassVar[frozenset[str]] = frozenset({"OAUTH", "PROGRAMMATIC_ACCESS_TOKEN"})
    # Results come in pieces (partitions, chunks) read on their own: a large one is fetched in parallel.
    splits_results: ClassVar[bool] = True

    # Looking again at a new statement inside Submit's wait: pauses grow from the first to the last.
    STATUS_POLL_FIRST_SECONDS: ClassVar[float] = 0.25
    STATUS_POLL_MAX_SECONDS: ClassVar[float] = 2.0

    def _auth(self) -> httpx.Auth:
        return snowflake_auth(self.connection_name, self.connection)

    # - submit -

    @contextmanager
    def _submit(self, query: SnowflakeQuery, options: base.SubmitOptions) -> Iterator[base.Submission]:
        """Start the statement; a quick one finishes inside ``options.wait_seconds`` and Fetch reads
        its result (the Submission carries none: every partition is read in one place)."""
        where = self.http.where("snowflake submit")
        params = {"async": "true"}
        if options.request_key is not None:
            params |= {
                "requestId": str(uuid.uuid5(REQUEST_ID_NAMESPACE, options.request_key)),
                "retry": "true",
            }
        request: dict[str, Any] = {"json": query.request_body(), "params": params}
        with self._request("POST", answer.STATEMENTS_PATH, where, **request) as response:
            finished = response.status_code == 200
            status = self._status_document(response, where)
        statement = answer.handle(status)
        if statement is None:
            raise where.protocol_error("the answer names no statementHandle")
        logger.info("snowflake statement started", extra={"upstream_id": statement, "finished": finished})
        state = base.ProviderState()
        options.started(statement, state)
        if not finished and options.wait_seconds > 0:
            finished = self._wait_inline(statement, options.wait_seconds)
        yield base.Submission(upstream_id=statement, finished=finished, state=state.dump())

    def _status_document(self, response: httpx.Response, where: Where) -> dict[str, Any]:
        """A QueryStatus (202) read whole; a ResultSet (200) read only for its handle, its rows
        counted and dropped (Fetch reads them)."""
        if response.status_code != 200:
            return small_object(response, where)
        streamed = self._answer(response, where, keep_rows=False)
        streamed.drain()
        return {"statementHandle": answer.handle(streamed.reader)}

    def _wait_inline(self, statement: str, wait_seconds: float) -> bool:
        where = self.http.where("snowflake submit")
        pauses = growing(self.STATUS_POLL_FIRST_SECONDS, self.STATUS_POLL_MAX_SECONDS)
        for _ in attempts(pauses, seconds=wait_seconds, pause_first=True):
            try:
                if self._finished(statement, where):
                    return True
            except UpstreamRateLimited:
                return False  # the state machine's Poll looks later
        return False

    # - poll -

    def _poll(self, upstream_id: str, state: base.ProviderState, wait_seconds: float) -> base.PollStatus:
        """One look at the statement: 202 runs, 200 finished (its rows are left unread), 422 failed."""
        finished = self._finished(upstream_id, self.http.where("snowflake poll"))
        logger.info("snowflake statement polled", extra={"upstream_id": upstream_id, "finished": finished})
        return base.PollStatus(finished=finished, detail="finished" if finished else "running")

    def _finished(self, statement: str, where: Where) -> bool:
        with self._request("GET", answer.statement_path(statement), where, task_id=statement) as response:
            if response.status_code == 202:
                read_error_body(response)  # a small QueryStatus; lets the connection be reused
                return False
            if response.status_code != 200:
                raise where.protocol_error(f"unexpected HTTP {response.status_code} for a statement's status")
            return True  # the ResultSet's body is closed unread

    # - fetch -

    @contextmanager
    def _fetch(
        self, upstream_id: str, state: base.ProviderState, output_format: OutputFormat
    ) -> Iterator[base.FetchedResult]:
        with self._read(upstream_id, output_format, None) as result:
            yield result

    @contextmanager
    def _fetch_pieces(
        self, upstream_id: str, state: base.ProviderState, output_format: OutputFormat, pieces: range
    ) -> Iterator[base.FetchedResult]:
        with self._read(upstream_id, output_format, pieces) as result:
            yield result

    @contextmanager
    def _read(
        self, upstream_id: str, output_format: OutputFormat, pieces: range | None
    ) -> Iterator[base.FetchedResult]:
        """The ResultSet (its metadata, and partition 0's rows when ``pieces`` hold partition 0),
        then each later partition of ``pieces`` (all of them when None), in order."""
        keep_rows = output_format != "native"
        with ExitStack() as stack:
            first, found = stack.enter_context(self._result_set(upstream_id, keep_rows=keep_rows))
            columns = answer.columns(found)
            partitions = answer.partition_rows(found)
            wanted = _wanted(pieces, len(partitions), self.http.where("snowflake fetch"))
            if 0 not in wanted:
                stack.close()  # partition 0's rows belong to another branch
            tally = _Tally()
            pages = self._partitions(first, upstream_id, wanted, tally, keep_rows=keep_rows)
            if output_format == "native":
                chunks = self._native_chunks(pages, partitions, tally)
                yield base.NativeResult(
                    chunks=chunks,
                    extension="jsonl",
                    columns=columns,
                    counted=lambda: tally.rows,
                    pieces=answer.pieces(found),
                )
            else:
                typed = answer.typed_rows(found, self.http.where("snowflake fetch"))
                rows = typed(self._rows(pages, partitions, tally))
                yield base.TabularResult(columns=columns, rows=rows, pieces=answer.pieces(found))

    @contextmanager
    def _result_set(self, statement: str, *, keep_rows: bool) -> Iterator[tuple[Answer, answer.Metadata]]:
        """The finished statement's ResultSet, open and read up to its metadata."""
        where = self.http.where("snowflake fetch")
        path = answer.statement_path(statement)
        with self._request("GET", path, where, task_id=statement, result=True) as response:
            if response.status_code != 200:
                raise where.protocol_error(
                    f"statement {statement!r} is not finished (HTTP {response.status_code})"
                )
            first = self._answer(response, where, keep_rows=keep_rows, result_set=True)
            first.read_until(answer.knows_metadata)
            yield first, answer.metadata(first.reader)

    def _rows(
        self, pages: Iterator[tuple[int, Answer]], partitions: list[int | None], tally: _Tally
    ) -> Iterator[list[Any]]:
        for number, page in pages:
            yield from page.items()
            tally.rows += answer.counted(page.reader, partitions[number], number)
        logger.info("snowflake result read", extra={"partitions": tally.partitions, "rows": tally.rows})

    @staticmethod
    def _native_chunks(
        pages: Iterator[tuple[int, Answer]], partitions: list[int | None], tally: _Tally
    ) -> Iterator[bytes]:
        """Each partition's JSON as received (decompressed), followed by a newline unless it ends
        with one; ``tally.rows`` is the rows counted once the chunks are exhausted."""
        for number, page in pages:
            yield from as_line(page.raw_chunks())
            tally.rows += answer.counted(page.reader, partitions[number], number)

    def _partitions(
        self, first: Answer, statement: str, wanted: range, tally: _Tally, *, keep_rows: bool
    ) -> Iterator[tuple[int, Answer]]:
        """The ``wanted`` partitions with their numbers: partition 0 is the ResultSet's own rows;
        each later one is asked for and yielded open, read by the caller before the next."""
        for number in wanted:
            if number == 0:
                tally.partitions += 1
                yield 0, first
                continue
            where = self.http.where(f"snowflake fetch (partition {number})")
            path = answer.statement_path(statement)
            request: dict[str, Any] = {"params": {"partition": str(number)}, "result": True}
            with self._request("GET", path, where, task_id=statement, **request) as response:
                if response.status_code != 200:
                    raise where.protocol_error(f"unexpected HTTP {response.status_code} for a partition")
                tally.partitions += 1
                yield number, self._answer(response, where, keep_rows=keep_rows)

    # - cancel -

    def _cancel(self, upstream_id: str, state: base.ProviderState) -> bool:
        """A statement that already ended (422) or is unknown (404) has nothing to stop."""
        where = self.http.where("snowflake cancel")
        path = f"{answer.statement_path(upstream_id)}/cancel"
        with self._request("POST", path, where, task_id=upstream_id, check=False) as response:
            if response.status_code in (404, 422):
                read_error_body(response)
                return False
            self._raise_for(response, where, upstream_id)
            read_error_body(response)  # the small QueryStatus; lets the connection be reused
            return True

    # - shared steps -

    def _answer(
        self, response: httpx.Response, where: Where, *, keep_rows: bool, result_set: bool = False
    ) -> Answer:
        read = answer.result_reader if result_set else answer.reader
        return StreamedAnswer(response, read(where, keep_rows=keep_rows), where)

    @staticmethod
    def _envelope(body: bytes) -> Envelope:
        return answer.envelope(body)

    def _classify(self, error: ErrorAnswer) -> QueryRelayError | None:
        return answer.classify(error)


def _wanted(pieces: range | None, count: int, where: Where) -> range:
    """The partitions to read: all of them, or ``pieces``, which must lie among the ``count`` the
    ResultSet lists (a branch planned from another answer than this one is refused)."""
    if pieces is None:
        return range(count)
    if pieces.step != 1 or not 0 <= pieces.start < pieces.stop <= count:
        raise where.protocol_error(
            f"partitions {pieces.start} .. {pieces.stop - 1} were asked for; the result has {count}"
        )
    return pieces
