"""Whole-exchange deadlines (issue 13, "a submit body trickled one byte every 2 s never times out").

A hostile upstream over real HTTP trickles its answer, the head or the body, a byte at a time, each
byte well inside the per-read timeout. Every exchange still ends by its deadline with a named
error: a small answer within the connection's ``timeout_seconds`` (plus any hold asked for), a
result by the end of the invocation.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from query_relay.exceptions import QueryRelayError, UpstreamAuthFailed, UpstreamUnavailable
from query_relay.models import Connection, parse_connection
from query_relay.providers import SubmitOptions, open_provider, validate_query
from query_relay.upstream.client import UpstreamClient
from query_relay.upstream.deadline import exchange, invocation_ends_within
from tests.hostile import Answer, Hostile

TIMEOUT = 1.0  # the connection's timeout_seconds
LONG = b'{"id": "' + b"x" * 200 + b'"}'  # trickled: 40 s at 0.2 s a byte, past every bound here
LOGIN = ("POST", "/api/4.0/login")
CREATE_QUERY = (("POST", "/api/4.0/queries"), (200, {"id": "q1"}))
TOKEN = (200, {"access_token": "tok-1", "expires_in": 3600})


def _connection(base_url: str, provider: str = "esql", auth: dict[str, Any] | None = None) -> Connection:
    return parse_connection(
        "deadline-test",
        {
            "provider": provider,
            "base_url": base_url,
            "auth": auth or {"type": "api_key", "api_key": "k3y"},
            "timeout_seconds": TIMEOUT,
        },
    )


@contextmanager
def _client(hostile: Hostile) -> Iterator[UpstreamClient]:
    client = UpstreamClient("esql", "deadline-test", _connection(hostile.base_url))
    try:
        yield client
    finally:
        client.close()


def _read(client: UpstreamClient, *, result: bool = False, hold: float = 0.0) -> bytes:
    where = client.where("test read")
    with (
        client.stream("GET", "/answer", where=where, result=result, read_allowance_seconds=hold) as response,
        where.transport(),
    ):
        return response.read()


def _timed(call: Any) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        call()
    except Exception as error:  # noqa: BLE001 - handed back to be checked
        return time.monotonic() - started, error
    return time.monotonic() - started, None


# --- one exchange -------------------------------------------------------------------------------


@pytest.mark.parametrize("trickle", ["head", "body"])
def test_a_trickled_small_answer_ends_by_the_connections_timeout(hostile: Hostile, trickle: str) -> None:
    hostile.routes[("GET", "/answer")] = Answer(200, LONG, trickle=trickle)  # type: ignore[arg-type]
    with _client(hostile) as client:
        elapsed, error = _timed(lambda: _read(client))
    assert isinstance(error, UpstreamUnavailable)
    assert "whole exchange's deadline passed" in str(error)
    assert "test read on connection 'deadline-test'" in str(error)
    assert TIMEOUT <= elapsed < TIMEOUT + 1.0


def test_a_hold_asked_for_extends_a_small_answers_deadline(hostile: Hostile) -> None:
    hostile.routes[("GET", "/answer")] = Answer(200, LONG, trickle="body")
    with _client(hostile) as client:
        elapsed, error = _timed(lambda: _read(client, hold=1.0))
    assert isinstance(error, UpstreamUnavailable)
    assert TIMEOUT + 1.0 <= elapsed < TIMEOUT + 2.0


def test_a_result_streams_past_the_connections_timeout(hostile: Hostile) -> None:
    # Given a result that takes 2 s to arrive, twice the connection's timeout, every byte in time
    hostile.routes[("GET", "/answer")] = Answer(200, b"y" * 10, trickle="body")
    with _client(hostile) as client:
        elapsed, error = _timed(lambda: _read(client, result=True))
    assert error is None
    assert elapsed >= 1.8


@pytest.mark.parametrize("trickle", ["head", "body"])
def test_a_trickled_result_ends_by_the_invocations_end(hostile: Hostile, trickle: str) -> None:
    hostile.routes[("GET", "/answer")] = Answer(200, LONG, trickle=trickle)  # type: ignore[arg-type]
    with _client(hostile) as client, invocation_ends_within(0.8):
        elapsed, error = _timed(lambda: _read(client, result=True))
    assert isinstance(error, UpstreamUnavailable)
    assert 0.8 <= elapsed < 1.8


def test_an_exchange_has_its_own_deadline_within_the_invocations() -> None:
    with invocation_ends_within(10.0), exchange(0.5) as outer, exchange(60.0) as inner:
        assert outer is not None
        assert inner is not None
        assert outer <= 0.5
        assert 9.0 < inner <= 10.0  # the invocation's end, not the outer exchange's


def test_an_exchange_left_open_leaves_no_deadline_on_the_next() -> None:
    # Given an exchange whose generator was abandoned open (its deadline never reset)
    def abandoned() -> Generator[None]:
        with exchange(0.01):
            yield

    left_open = abandoned()
    next(left_open)
    time.sleep(0.02)
    # Then a later exchange is not bound by it
    with exchange(None) as left:
        assert left is None
    left_open.close()


def test_outside_any_invocation_an_unbounded_exchange_has_no_deadline() -> None:
    with exchange(None) as left:
        assert left is None


def test_an_invocation_already_over_fails_the_exchange_at_once(hostile: Hostile) -> None:
    hostile.routes[("GET", "/answer")] = (200, {"ok": True})
    with _client(hostile) as client, invocation_ends_within(-5):
        elapsed, error = _timed(lambda: _read(client, result=True))
    assert isinstance(error, UpstreamUnavailable)
    assert elapsed < 0.5


def test_the_next_exchange_has_its_own_deadline(hostile: Hostile) -> None:
    # Given one exchange that ran into its deadline
    hostile.routes[("GET", "/answer")] = [Answer(200, LONG, trickle="body"), (200, {"ok": True})]
    with _client(hostile) as client:
        _, error = _timed(lambda: _read(client))
        assert isinstance(error, UpstreamUnavailable)
        # Then the next one, on the same client, is not cut short by it
        assert _read(client) == b'{"ok": true}'


# --- every provider -----------------------------------------------------------------------------


def _submit(connection: Connection, query: dict[str, Any]) -> QueryRelayError | None:
    provider = open_provider("deadline-test", connection)
    options = SubmitOptions(output_format="jsonl", wait_seconds=0, timeout_seconds=60)
    try:
        with provider.submit(validate_query(connection.provider, query), options):
            return None
    except QueryRelayError as error:
        return error
    finally:
        provider.close()


LOOKER_AUTH = {"type": "client_credentials", "client_id": "id", "client_secret": "s3cret"}
LOOKER_QUERY: dict[str, Any] = {"model": "m", "view": "v", "fields": ["v.a"]}
VEZA_QUERY: dict[str, Any] = {"source_node_types": {"nodes": [{"node_type": "OktaUser"}]}}


@pytest.mark.parametrize("trickle", ["head", "body"])
@pytest.mark.parametrize("provider", ["looker", "veza"])
def test_a_trickled_submit_fails_named_within_the_connections_timeout(
    hostile: Hostile, provider: str, trickle: str
) -> None:
    answer = Answer(200, LONG, trickle=trickle)  # type: ignore[arg-type]
    if provider == "looker":
        hostile.routes[LOGIN] = TOKEN
        hostile.routes[CREATE_QUERY[0]] = CREATE_QUERY[1]
        hostile.routes[("POST", "/api/4.0/query_tasks")] = answer
        connection, query = _connection(hostile.base_url, "looker", LOOKER_AUTH), LOOKER_QUERY
    else:
        hostile.routes[("POST", "/api/v1/assessments/")] = answer
        connection = _connection(hostile.base_url, "veza", {"type": "bearer", "token": "t0ken"})
        query = VEZA_QUERY
    elapsed, error = _timed(lambda: _raise(_submit(connection, query)))
    assert isinstance(error, UpstreamUnavailable)
    assert "whole exchange's deadline passed" in str(error)
    assert elapsed < TIMEOUT + 1.5


@pytest.mark.parametrize("trickle", ["head", "body"])
def test_a_trickled_esql_submit_fails_named_by_the_invocations_end(hostile: Hostile, trickle: str) -> None:
    # ES|QL's submit may carry the whole result (a query finished within the wait): it streams
    # until the invocation's end, not the connection's timeout.
    hostile.routes[("POST", "/_query/async")] = Answer(200, LONG, trickle=trickle)  # type: ignore[arg-type]
    with invocation_ends_within(1.5):
        elapsed, error = _timed(lambda: _raise(_submit(_connection(hostile.base_url), {"query": "FROM x"})))
    assert isinstance(error, UpstreamUnavailable)
    assert 1.5 <= elapsed < 2.5


def _raise(error: BaseException | None) -> None:
    if error is not None:
        raise error


# --- a 401 is never read whole ------------------------------------------------------------------


def test_a_401_to_a_token_is_answered_by_a_new_login_without_reading_its_body(hostile: Hostile) -> None:
    # Given a Looker whose first answer is a 401 with a body that would take 40 s to read
    hostile.routes[LOGIN] = TOKEN
    hostile.routes[CREATE_QUERY[0]] = CREATE_QUERY[1]
    refused = Answer(401, LONG, trickle="body")
    hostile.routes[("POST", "/api/4.0/query_tasks")] = [refused, (200, {"id": "task-1", "status": "added"})]
    connection = _connection(hostile.base_url, "looker", LOOKER_AUTH)

    # When a query is submitted
    elapsed, error = _timed(lambda: _raise(_submit(connection, LOOKER_QUERY)))

    # Then it logs in again and is accepted at once, the 401's body left unread
    assert error is None
    assert elapsed < TIMEOUT
    assert [path for method, path in hostile.requests if method == "POST"].count("/api/4.0/login") == 2


def test_a_second_401_after_a_new_login_stands(hostile: Hostile) -> None:
    hostile.routes[LOGIN] = TOKEN
    hostile.routes[CREATE_QUERY[0]] = CREATE_QUERY[1]
    hostile.routes[("POST", "/api/4.0/query_tasks")] = (401, {"message": "Requires authentication."})
    error = _submit(_connection(hostile.base_url, "looker", LOOKER_AUTH), LOOKER_QUERY)
    assert isinstance(error, UpstreamAuthFailed)
