"""Looker API 4.0 query tasks (docs/upstreams/looker.md).

Submit resolves the query (a saved query id, a Look's query, or an inline query saved first with
``POST /queries``) and starts a query task with ``POST /query_tasks``. Looker never answers a
result inline: within the submit's wait Submit only watches the task's status. Poll reads
``GET /query_tasks/{id}`` once (Looker cannot long-poll), Fetch streams
``GET /query_tasks/{id}/results``, Cancel kills the running query with
``DELETE /running_queries/{id}``. Every call carries an access token from ``POST /login``
(query_relay.upstream.auth.TokenAuth: cached per host, client and secret; one new login on 401).

Choices where Looker's documentation is silent:
- A task whose status is ``killed`` fails the job with UpstreamQueryFailed ("killed in Looker").
- ``expired`` has been seen just before a task completed: the first one is remembered in the
  provider state and only a second consecutive one fails the job (UpstreamTaskExpired).
- A rate-limited Poll waits ``RATE_LIMIT_DEFAULT_SECONDS`` when Looker sends no Retry-After (it
  documents none).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel

from query_relay.exceptions import (
    QueryRelayError,
    UpstreamAuthFailed,
    UpstreamQueryFailed,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from query_relay.models import ClientCredentialsAuth, OutputFormat
from query_relay.observability import logger
from query_relay.providers import base
from query_relay.providers.looker import answer
from query_relay.providers.looker.query import LookerQuery, check_formats, result_format_for
from query_relay.providers.looker.state import LookerState
from query_relay.upstream.auth import Token, TokenAuth, token_key
from query_relay.upstream.errors import REASON_LIMIT, Envelope, ErrorAnswer, Where, read_error_body
from query_relay.upstream.stream import small_object
from query_relay.upstream.waiting import attempts, then_every

TASK_SOURCE = "query-relay"
DEFAULT_TOKEN_SECONDS = 3600.0
# Looker documents no Retry-After; a rate-limited Poll comes back after this long.
RATE_LIMIT_DEFAULT_SECONDS = 10.0
# Inside the submit's wait, the task's status is read after these pauses (then every second).
SUBMIT_STATUS_PAUSES = (0.1, 0.2, 0.4, 0.8)
SUBMIT_STATUS_PAUSE_MAX = 1.0
# Results that answer 202/204 (not ready) are asked for again after these pauses, then Fetch
# fails UpstreamUnavailable so that the state machine retries it later.
RESULTS_NOT_READY_PAUSES = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class _Target:
    """The saved query a task runs, and its field names when Looker told them."""

    query_id: str
    look_id: str | None
    fields: list[str] | None


class LookerProvider(base.Provider[LookerQuery, LookerState]):
    name: ClassVar[str] = "looker"
    query_model: ClassVar[type[BaseModel]] = LookerQuery
    state_model: ClassVar[type[base.ProviderState]] = LookerState
    auth_types: ClassVar[tuple[type, ...]] = (ClientCredentialsAuth,)
    auth_hint: ClassVar[str] = (
        'client_credentials auth ({"type": "client_credentials", "client_id", "client_secret"}: '
        "a Looker API key)"
    )
    rate_limit_default_seconds: ClassVar[float | None] = RATE_LIMIT_DEFAULT_SECONDS

    def _auth(self) -> httpx.Auth:
        base_path = httpx.URL(self.connection.base_url).path.rstrip("/")
        # A base_url that already ends in /api/4.0 is taken as it is.
        self._api_path = "" if base_path.endswith(answer.API_PATH) else answer.API_PATH
        return TokenAuth(token_key(self.connection), self._login)

    # - submit -

    @contextmanager
    def _submit(self, query: LookerQuery, options: base.SubmitOptions) -> Iterator[base.Submission]:
        result_format = result_format_for(query, options.output_format)
        target = self._resolve(query)
        task_id, status = self._create_task(query, target, result_format)
        state = LookerState.of_task(result_format, target.fields)
        options.started(task_id, state)
        logger.info(
            "looker query task created",
            extra={"upstream_id": task_id, "query_id": target.query_id, "result_format": result_format},
        )
        status = self._watch_briefly(task_id, status, options.wait_seconds)
        outcome = answer.interpret(
            task_id, status, state, self.http.where("looker submit"), self._failure_reason
        )
        yield base.Submission(
            upstream_id=task_id, finished=outcome.finished, state=outcome.state or state.dump()
        )

    def _resolve(self, query: LookerQuery) -> _Target:
        if query.query_id is not None:
            document = self._get(
                f"/queries/{answer.quoted(query.query_id)}",
                self.http.where("looker get query"),
                params={"fields": "id,fields"},
                missing=f"Looker has no query {query.query_id!r} (or this API user cannot see it)",
            )
            return _Target(query.query_id, None, answer.string_list(document.get("fields")))
        if query.look_id is not None:
            where = self.http.where("looker get look")
            document = self._get(
                f"/looks/{answer.quoted(query.look_id)}",
                where,
                params={"fields": "id,query_id,query"},
                missing=f"Looker has no look {query.look_id!r} (or this API user cannot see it)",
            )
            saved = document.get("query")
            saved = saved if isinstance(saved, dict) else {}
            query_id = answer.saved_id(document.get("query_id")) or answer.saved_id(saved.get("id"))
            if query_id is None:
                raise where.protocol_error(f"look {query.look_id!r} names no query_id")
            return _Target(query_id, query.look_id, answer.string_list(saved.get("fields")))
        where = self.http.where("looker create query")
        params = {"fields": "id,fields"}
        with self._request(
            "POST", self._api("/queries"), where, params=params, json=query.write_query()
        ) as sent:
            document = small_object(sent, where)
        query_id = answer.saved_id(document.get("id"))
        if query_id is None:
            raise where.protocol_error("the saved query has no id")
        return _Target(query_id, None, answer.string_list(document.get("fields")) or query.fields)

    def _create_task(self, query: LookerQuery, target: _Target, result_format: str) -> tuple[str, str]:
        where = self.http.where("looker create query task")
        body: dict[str, Any] = {
            "query_id": target.query_id,
            "result_format": result_format,
            "source": TASK_SOURCE,
        }
        if target.look_id is not None:
            body["look_id"] = target.look_id
        with self._request(
            "POST", self._api("/query_tasks"), where, params=query.task_params(), json=body
        ) as sent:
            document = small_object(sent, where)
        task_id, status = document.get("id"), document.get("status")
        if not isinstance(task_id, str) or not task_id:
            raise where.protocol_error("the query task has no id")
        return task_id, str(status or "added")

    def _watch_briefly(self, task_id: str, status: str, wait_seconds: float) -> str:
        """Read the task's status a few times while the submit may wait: a quick query is then
        finished before the first Wait state. Trouble reading it only ends the watch early."""
        pauses = then_every(SUBMIT_STATUS_PAUSES, SUBMIT_STATUS_PAUSE_MAX)
        for _ in attempts(pauses, seconds=wait_seconds, pause_first=True):
            if status not in answer.UNDER_WAY:
                break
            try:
                status = self._task(task_id, self.http.where("looker submit"), "status")
            except (UpstreamRateLimited, UpstreamUnavailable) as error:
                logger.info(
                    "looker status unavailable while submitting; Poll will look",
                    extra={"reason": type(error).__name__},
                )
                break
        return status

    # - poll -

    def _poll(self, upstream_id: str, state: LookerState, wait_seconds: float) -> base.PollStatus:
        """One status read: Looker cannot hold the request until the task ends."""
        where = self.http.where("looker poll")
        status = self._task(upstream_id, where, "status")
        logger.info("looker query task polled", extra={"upstream_id": upstream_id, "status": status})
        return answer.interpret(upstream_id, status, state, where, self._failure_reason)

    def _failure_reason(self, task_id: str) -> str:
        """The database's message for a failed task, from its results. Best effort: the job
        fails either way."""
        where = self.http.where("looker read failure")
        try:
            with self._request("GET", self._results_path(task_id), where, check=False) as response:
                body = read_error_body(response)
        except QueryRelayError:
            return "Looker reported status 'error' (its message could not be read)"
        return self.http.redact(answer.failure_reason(body))[:REASON_LIMIT]

    # - fetch -

    @contextmanager
    def _fetch(
        self, upstream_id: str, state: LookerState, output_format: OutputFormat
    ) -> Iterator[base.FetchedResult]:
        where = self.http.where("looker fetch")
        result_format = state.result_format or self._task(upstream_id, where, "result_format")
        if result_format not in answer.EXTENSIONS:
            raise where.protocol_error(f"query task {upstream_id!r} has an unknown result_format")
        check_formats(result_format, output_format)
        with self._open_results(upstream_id, where) as response:
            yield answer.result(response, where, result_format, output_format == "native", state.fields)

    @contextmanager
    def _open_results(self, task_id: str, where: Where) -> Iterator[httpx.Response]:
        """The results once ready. 202 (204 before Looker 25.0) means not ready yet: ask again
        after short pauses, then give the state machine the retry (UpstreamUnavailable)."""
        path, status = self._results_path(task_id), 0
        for attempt in attempts(RESULTS_NOT_READY_PAUSES):
            with self._request("GET", path, where, task_id=task_id, result=True) as response:
                status = response.status_code
                if status not in (202, 204):
                    yield response
                    return
                read_error_body(response)
                logger.info(
                    "looker results not ready", extra={"upstream_id": task_id, "attempt": attempt.number}
                )
        raise UpstreamUnavailable(
            f"{where}: the results of task {task_id!r} are not ready yet (HTTP {status}) "
            "although the task is complete"
        )

    # - cancel -

    def _cancel(self, upstream_id: str, state: LookerState) -> bool:
        where = self.http.where("looker cancel")
        path = self._api(f"/running_queries/{answer.quoted(upstream_id)}")
        with self._request("DELETE", path, where, task_id=upstream_id, check=False) as response:
            if response.status_code == 404:  # finished (or unknown): nothing runs any more
                read_error_body(response)
                return False
            self._raise_for(response, where, upstream_id)
            read_error_body(response)
            return True

    # - talking to Looker -

    def _api(self, path: str) -> str:
        return f"{self._api_path}{path}"

    def _results_path(self, task_id: str) -> str:
        return self._api(f"/query_tasks/{answer.quoted(task_id)}/results")

    def _login(self) -> Token:
        """``POST /login`` with the client credentials (sent as the form body, no auth header)."""
        where = self.http.where("looker login")
        auth = self.connection.auth
        assert isinstance(auth, ClientCredentialsAuth)
        credentials = {"client_id": auth.client_id, "client_secret": auth.client_secret.get_secret_value()}
        with self._request(
            "POST", self._api("/login"), where, check=False, data=credentials, auth=None
        ) as response:
            if response.status_code in (401, 403, 404):  # Looker answers unknown credentials with 404
                read_error_body(response)
                raise UpstreamAuthFailed(
                    f"{where}: Looker refused the client credentials (HTTP {response.status_code}); "
                    "check client_id and client_secret"
                )
            self._raise_for(response, where)
            document = small_object(response, where)
        token = answer.token(document, where, DEFAULT_TOKEN_SECONDS)
        logger.info(
            "logged in to looker", extra={"connection": self.connection_name, "expires_in": token.expires_in}
        )
        return token

    def _task(self, task_id: str, where: Where, field: str) -> str:
        """One field of the task (its status, lowercased, or its result format)."""
        path = f"/query_tasks/{answer.quoted(task_id)}"
        document = self._get(path, where, params={"fields": f"id,{field}"}, task_id=task_id)
        value = document.get(field)
        if not isinstance(value, str) or not value:
            raise where.protocol_error(f"query task {task_id!r} has no {field}")
        return value.lower() if field == "status" else value

    def _get(
        self,
        path: str,
        where: Where,
        *,
        params: dict[str, str],
        task_id: str | None = None,
        missing: str = "",
    ) -> dict[str, Any]:
        with self._request(
            "GET", self._api(path), where, task_id=task_id, check=False, params=params
        ) as response:
            if response.status_code == 404 and missing:
                read_error_body(response)
                raise UpstreamQueryFailed(f"{missing} [{where}]")
            self._raise_for(response, where, task_id)
            return small_object(response, where)

    @staticmethod
    def _envelope(body: bytes) -> Envelope:
        return answer.envelope(body)

    def _classify(self, error: ErrorAnswer) -> QueryRelayError | None:
        return answer.classify(error)
