"""Databricks SQL Statement Execution 2.0 (docs/upstreams/databricks.md): ``POST
/api/2.0/sql/statements`` runs a statement, ``GET .../{id}`` reports it, ``GET
.../{id}/result/chunks/{n}`` hands out the links to its result's chunks, ``POST .../{id}/cancel``
stops it.

Submit asks for ``EXTERNAL_LINKS`` in ``JSON_ARRAY`` with ``on_wait_timeout: CONTINUE`` and lets
Databricks hold the call for the submit's wait (``answer.wait_timeout``: below 5 s it answers at
once and the wait is spent looking again from here). A statement done by then goes straight to
Fetch, which reads every result in one place. Poll looks once: a GET cannot be held until the
statement ends. Fetch reads the manifest, then chunks 0 .. N-1 in order, each downloaded from cloud
storage with exactly its link's ``http_headers`` and none of our credentials, a link that expired
renewed by asking for its chunk again; values are typed by the manifest's column types, and
``native`` stores each chunk's body as received, one a line. A parallel fetch's branch reads a range
of the chunks (``pieces``, counted from ``manifest.chunks``) the same way.

Credentials: a bearer token (a PAT or an OAuth token), or OAuth M2M: ``POST /oidc/v1/token`` with
the client id and secret as HTTP Basic, the token cached per host, client and secret
(query_relay.upstream.auth.TokenAuth: one login an hour per warm Lambda, a new one on 401).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel

from query_relay.exceptions import (
    QueryRelayError,
    UpstreamAuthFailed,
    UpstreamPartialResult,
    UpstreamRateLimited,
    UpstreamTaskExpired,
    UpstreamUnavailable,
)
from query_relay.models import BearerAuth, ClientCredentialsAuth, OutputFormat
from query_relay.observability import logger
from query_relay.providers import base
from query_relay.providers.databricks import answer, chunks
from query_relay.providers.databricks.query import DatabricksQuery
from query_relay.upstream.auth import Token, TokenAuth, token_key
from query_relay.upstream.errors import (
    REASON_LIMIT,
    Envelope,
    ErrorAnswer,
    Where,
    read_error_body,
)
from query_relay.upstream.jsonpath import PathReader
from query_relay.upstream.stream import StreamedAnswer, as_line, small_object
from query_relay.upstream.waiting import attempts, growing

Answer = StreamedAnswer[PathReader]


class DatabricksState(base.ProviderState):
    """Whether the job lands a result Databricks marks ``truncated`` (``query.allow_partial_results``)."""

    allow_partial: bool = False


class DatabricksProvider(base.Provider[DatabricksQuery, DatabricksState]):
    name: ClassVar[str] = "databricks"
    query_model: ClassVar[type[BaseModel]] = DatabricksQuery
    state_model: ClassVar[type[base.ProviderState]] = DatabricksState
    auth_types: ClassVar[tuple[type, ...]] = (BearerAuth, ClientCredentialsAuth)
    auth_hint: ClassVar[str] = (
        "bearer auth (a personal access token or an OAuth access token) or client_credentials auth "
        '({"type": "client_credentials", "client_id", "client_secret"}: a service principal\'s OAuth '
        "secret, OAuth M2M)"
    )

    # Databricks cancels a statement nobody polled for 15 minutes: no gap between looks is longer
    # than 10 (a Wait state, a Poll's own time and its retries fit in the 5 left).
    max_check_gap_seconds: ClassVar[int | None] = 600
    # Results come in pieces (partitions, chunks) read on their own: a large one is fetched in parallel.
    splits_results: ClassVar[bool] = True

    # Looking again at a new statement inside Submit's wait: pauses grow from the first to the last.
    STATUS_POLL_FIRST_SECONDS: ClassVar[float] = 0.25
    STATUS_POLL_MAX_SECONDS: ClassVar[float] = 2.0

    def _auth(self) -> httpx.Auth | None:
        if isinstance(self.connection.auth, ClientCredentialsAuth):
            return TokenAuth(token_key(self.connection), self._login)
        return None  # bearer: the token as it is

    # - submit -

    @contextmanager
    def _submit(self, query: DatabricksQuery, options: base.SubmitOptions) -> Iterator[base.Submission]:
        """Start the statement; one done inside ``options.wait_seconds`` is finished, and Fetch
        reads its result (the Submission carries none)."""
        where = self.http.where("databricks submit")
        server_wait = answer.wait_timeout(options.wait_seconds)
        body = {
            **query.request_body(),
            "disposition": "EXTERNAL_LINKS",
            "format": "JSON_ARRAY",
            "wait_timeout": f"{server_wait}s",
            "on_wait_timeout": "CONTINUE",
        }
        began = time.monotonic()
        request: dict[str, Any] = {"json": body, "read_allowance_seconds": server_wait}
        with self._request("POST", answer.STATEMENTS_PATH, where, **request) as response:
            found = answer.read_statement(response, where)
        statement = found.statement_id
        if statement is None:
            raise where.protocol_error("the answer names no statement_id")
        state = DatabricksState(allow_partial=bool(query.allow_partial_results))
        options.started(statement, state)
        logger.info(
            "databricks statement started", extra={"upstream_id": statement, "state": found.status.state}
        )
        finished = answer.finished(found, statement, where)
        left = options.wait_seconds - (time.monotonic() - began)
        if not finished and left > 0:
            finished = self._wait_inline(statement, left)
        yield base.Submission(upstream_id=statement, finished=finished, state=state.dump())

    def _wait_inline(self, statement: str, wait_seconds: float) -> bool:
        where = self.http.where("databricks submit")
        pauses = growing(self.STATUS_POLL_FIRST_SECONDS, self.STATUS_POLL_MAX_SECONDS)
        for _ in attempts(pauses, seconds=wait_seconds, pause_first=True):
            try:
                if answer.finished(self._statement(statement, where), statement, where):
                    return True
            except (UpstreamRateLimited, UpstreamUnavailable):
                return False  # the statement is recorded: the state machine's Poll looks later
        return False

    # - poll -

    def _poll(self, upstream_id: str, state: DatabricksState, wait_seconds: float) -> base.PollStatus:
        """One look: PENDING and RUNNING go on, SUCCEEDED is finished, any other end fails the job."""
        where = self.http.where("databricks poll")
        found = self._statement(upstream_id, where)
        finished = answer.finished(found, upstream_id, where)
        logger.info("databricks statement polled", extra={"upstream_id": upstream_id, "finished": finished})
        return base.PollStatus(finished=finished, detail=found.status.state.lower())

    # - fetch -

    @contextmanager
    def _fetch(
        self, upstream_id: str, state: DatabricksState, output_format: OutputFormat
    ) -> Iterator[base.FetchedResult]:
        with self._read(upstream_id, state, output_format, None) as result:
            yield result

    @contextmanager
    def _fetch_pieces(
        self, upstream_id: str, state: DatabricksState, output_format: OutputFormat, pieces: range
    ) -> Iterator[base.FetchedResult]:
        with self._read(upstream_id, state, output_format, pieces) as result:
            yield result

    @contextmanager
    def _read(
        self, upstream_id: str, state: DatabricksState, output_format: OutputFormat, pieces: range | None
    ) -> Iterator[base.FetchedResult]:
        """The manifest, then the chunks of ``pieces`` (all of them when None), in order."""
        manifest, known = self._finished_result(upstream_id, state)
        wanted = range(manifest.chunk_count) if pieces is None else pieces
        if wanted.step != 1 or not 0 <= wanted.start <= wanted.stop <= manifest.chunk_count:
            raise self.http.where("databricks fetch").protocol_error(
                f"chunks {wanted.start} .. {wanted.stop - 1} were asked for; the result has "
                f"{manifest.chunk_count}"
            )
        columns = answer.columns(manifest)
        tally = chunks.Tally()
        reader = chunks.ChunkReader(self._request, self.http, upstream_id, manifest, known)
        pages = reader.pages(wanted, tally, keep_rows=output_format != "native")

        def partial() -> bool:
            return manifest.truncated

        if output_format == "native":
            yield base.NativeResult(
                chunks=self._native(pages),
                extension="jsonl",
                columns=columns,
                counted=lambda: tally.rows,
                partial=partial,
                pieces=manifest.pieces(),
            )
        else:
            rows = answer.typed_rows(manifest, self.http.where("databricks fetch"))(self._rows(pages))
            yield base.TabularResult(columns=columns, rows=rows, partial=partial, pieces=manifest.pieces())

    def _finished_result(
        self, statement: str, state: DatabricksState
    ) -> tuple[answer.Manifest, dict[int, answer.ExternalLink]]:
        """The finished statement's manifest, and the links it handed out with it (chunk 0's)."""
        where = self.http.where("databricks fetch")
        found = self._statement(statement, where, with_result=True)
        if not answer.finished(found, statement, where):
            raise where.protocol_error(f"statement {statement!r} is not finished")
        manifest = answer.manifest(found.manifest, where)
        if manifest.truncated:
            self._check_truncated(manifest, state, statement, where)
        first = found.result.get("external_links") if isinstance(found.result, dict) else None
        return manifest, chunks.links(first, where, 0)

    @staticmethod
    def _check_truncated(
        manifest: answer.Manifest, state: DatabricksState, statement: str, where: Where
    ) -> None:
        """A truncated result fails the job before a row is read, unless the job opted in."""
        if not state.allow_partial:
            raise UpstreamPartialResult(
                f"{where}: Databricks says the result of statement {statement!r} is truncated "
                f"(manifest.truncated: true, {manifest.total_row_count} rows kept; EXTERNAL_LINKS stop "
                "at 100 GiB); set query.allow_partial_results to land it"
            )
        logger.warning(
            "databricks result is truncated; landing it as the job allows",
            extra={"upstream_id": statement, "row_count": manifest.total_row_count},
        )

    @staticmethod
    def _rows(chunks: Iterator[Answer]) -> Iterator[list[Any]]:
        for page in chunks:
            yield from page.items()

    @staticmethod
    def _native(chunks: Iterator[Answer]) -> Iterator[bytes]:
        """Each chunk's body as received, followed by a newline unless it ends with one."""
        for page in chunks:
            yield from as_line(page.raw_chunks())

    # - cancel -

    def _cancel(self, upstream_id: str, state: DatabricksState) -> bool:
        """Only a statement still PENDING or RUNNING is worth stopping: Databricks answers 200 to a
        cancel of any statement it knows, so the state is read first. Databricks may still let it
        run to its end (it documents that it may not cancel)."""
        where = self.http.where("databricks cancel")
        try:
            found = self._statement(upstream_id, where)
        except UpstreamTaskExpired:
            return False
        if found.status.state not in answer.RUNNING_STATES:
            return False
        path = f"{answer.statement_path(upstream_id)}/cancel"
        with self._request("POST", path, where, task_id=upstream_id, check=False) as response:
            if response.status_code == 404:  # forgotten meanwhile: nothing runs any more
                read_error_body(response)
                return False
            self._raise_for(response, where, upstream_id)
            read_error_body(response)  # the empty acknowledgement; lets the connection be reused
            return True

    # - talking to Databricks -

    def _statement(self, statement_id: str, where: Where, *, with_result: bool = False) -> answer.Statement:
        with self._request(
            "GET", answer.statement_path(statement_id), where, task_id=statement_id
        ) as response:
            return answer.read_statement(response, where, with_result=with_result)

    def _login(self) -> Token:
        """OAuth M2M: ``POST /oidc/v1/token`` with the client id and secret as HTTP Basic (the one
        request that carries them; no bearer token), scope ``all-apis``."""
        where = self.http.where("databricks login")
        auth = self.connection.auth
        assert isinstance(auth, ClientCredentialsAuth)
        basic = httpx.BasicAuth(auth.client_id, auth.client_secret.get_secret_value())
        form = {"grant_type": "client_credentials", "scope": "all-apis"}
        with self._request("POST", answer.TOKEN_PATH, where, check=False, data=form, auth=basic) as response:
            if response.status_code in (400, 401, 403):  # OAuth's invalid_client, invalid_scope ...
                said = answer.envelope(read_error_body(response))
                reason = self.http.redact(": ".join(part for part in (said.code, said.message) if part))
                raise UpstreamAuthFailed(
                    f"{where}: Databricks refused the client credentials (HTTP {response.status_code}"
                    f"{', ' + reason[:REASON_LIMIT] if reason else ''}); check client_id, client_secret and "
                    "that the service principal may use this workspace"
                )
            self._raise_for(response, where)
            document = small_object(response, where)
        found = answer.token(document, where)
        logger.info(
            "logged in to databricks (OAuth M2M)",
            extra={"connection": self.connection_name, "expires_in": found.expires_in},
        )
        return found

    @staticmethod
    def _envelope(body: bytes) -> Envelope:
        return answer.envelope(body)

    def _classify(self, error: ErrorAnswer) -> QueryRelayError | None:
        return answer.classify(error)
