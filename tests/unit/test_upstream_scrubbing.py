"""No secret of a connection leaves through what an upstream says (issue 13, "Secrets leak").

An upstream can echo a credential anywhere: an error's type, its reason, a value our reader
quotes in a protocol error, a status we log, a database error inside a result. Each case runs a
real provider against a hostile upstream over HTTP (or the vendor's emulator) and looks for the
secret, in every form a server could echo it, in the error and in the log records.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any
from urllib.parse import quote

import pytest

from query_relay.exceptions import (
    InvalidConnection,
    QueryRelayError,
    UpstreamProtocolError,
    UpstreamQueryFailed,
)
from query_relay.models import Connection, parse_connection
from query_relay.providers import NativeResult, SubmitOptions, open_provider, validate_query
from query_relay.upstream.auth import Secrets, forms
from query_relay_local.emulators.looker import LookerEmulator
from tests.hostile import Hostile

# A secret with characters that JSON, URLs and base64 each write differently.
SECRET = 'k3y/with+odd"chars&=s3cr3t'
LOOKER_ID, LOOKER_SECRET = "scrub-client", "looker-secret-echoed-7b1d"


def _connection(provider: str, base_url: str, auth: dict[str, Any]) -> Connection:
    return parse_connection("scrub-test", {"provider": provider, "base_url": base_url, "auth": auth})


def _echoes(secret: str) -> list[str]:
    """How a server could write the secret back."""
    return [
        secret,
        json.dumps(secret)[1:-1],
        quote(secret, safe=""),
        base64.b64encode(secret.encode()).decode(),
    ]


def _assert_clean(text: str, *secrets: str) -> None:
    for secret in secrets:
        for form in _echoes(secret):
            assert form not in text, f"a form of the secret ({len(form)} chars) leaked"


def _options() -> SubmitOptions:
    return SubmitOptions(output_format="jsonl", wait_seconds=0, timeout_seconds=60)


def _submit(connection: Connection, query: dict[str, Any]) -> QueryRelayError:
    provider = open_provider("scrub-test", connection)
    try:
        with (
            pytest.raises(QueryRelayError) as raised,
            provider.submit(validate_query(connection.provider, query), _options()),
        ):
            pass
    finally:
        provider.close()
    return raised.value


# --- the forms a secret is echoed in -------------------------------------------------------------


@pytest.mark.parametrize("echo", _echoes(SECRET), ids=["as-sent", "json-escaped", "url-encoded", "base64"])
def test_every_form_of_a_secret_is_scrubbed(echo: str) -> None:
    secrets = Secrets(_connection("esql", "https://es.example", {"type": "api_key", "api_key": SECRET}), None)
    assert secrets.redact(f"the server said: {echo}!") == "the server said: ***!"


def test_a_basic_pair_is_scrubbed_in_every_form() -> None:
    connection = _connection(
        "esql", "https://es.example", {"type": "basic", "username": "reader", "password": SECRET}
    )
    pair = base64.b64encode(f"reader:{SECRET}".encode()).decode()
    text = " ".join([*_echoes(SECRET), pair, quote(pair, safe="")])
    assert Secrets(connection, None).redact(text).replace("***", "").strip() == ""


def test_short_encodings_are_not_scrubbed_by_chance() -> None:
    assert forms("ab") == {"ab"}


def test_a_base_url_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(InvalidConnection) as raised:
        _connection(
            "esql", f"https://elastic:{quote(SECRET, safe='')}@es.example", {"type": "bearer", "token": "t"}
        )
    assert "base_url" in str(raised.value)
    assert "must not carry credentials" in str(raised.value)
    _assert_clean(str(raised.value), SECRET)


# --- what an upstream says, by provider ----------------------------------------------------------


def test_an_esql_error_type_that_echoes_the_api_key(hostile: Hostile) -> None:
    hostile.routes[("POST", "/_query/async")] = (
        400,
        {"error": {"type": f"bad_key[{SECRET}]", "reason": f"key {json.dumps(SECRET)[1:-1]} refused"}},
    )
    connection = _connection("esql", hostile.base_url, {"type": "api_key", "api_key": SECRET})
    error = _submit(connection, {"query": "FROM x"})
    assert isinstance(error, UpstreamQueryFailed)
    assert "bad_key[***]" in str(error)
    _assert_clean(str(error), SECRET)


def test_a_veza_state_that_echoes_the_token_is_a_clean_protocol_error(
    hostile: Hostile, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a Veza-like upstream whose task state is the caller's own token, URL-encoded
    hostile.routes[("POST", "/api/v1/assessments/")] = (200, {"id": "t1", "state": quote(SECRET, safe="")})
    connection = _connection("veza", hostile.base_url, {"type": "bearer", "token": SECRET})
    # When a job is submitted
    with caplog.at_level(logging.DEBUG):
        error = _submit(connection, {"source_node_types": {"nodes": [{"node_type": "OktaUser"}]}})
    # Then the named error quotes the state without the token
    assert isinstance(error, UpstreamProtocolError)
    assert "state '***'" in str(error)
    _assert_clean(str(error) + repr(error.args), SECRET)


def test_a_looker_database_error_inside_a_result_that_quotes_the_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a query whose database error quotes the client secret (a field named after it), and a
    # Looker that reports the error inside a json_detail result of a "complete" task
    with LookerEmulator(client_id=LOOKER_ID, client_secret=LOOKER_SECRET) as emulator:
        emulator.config.sql_error_status = "complete"
        auth = {"type": "client_credentials", "client_id": LOOKER_ID, "client_secret": LOOKER_SECRET}
        connection = _connection("looker", emulator.base_url, auth)
        query = {"model": "ecommerce", "view": "orders", "fields": [f"orders.{LOOKER_SECRET}"]}
        provider = open_provider("scrub-test", connection)
        options = SubmitOptions(output_format="native", wait_seconds=10, timeout_seconds=60)
        with caplog.at_level(logging.DEBUG):
            with provider.submit(
                validate_query("looker", query | {"result_format": "json_detail"}), options
            ) as sub:
                assert sub.finished
                assert sub.upstream_id is not None
            # When the result is fetched
            with (
                pytest.raises(UpstreamQueryFailed) as raised,
                provider.fetch(sub.upstream_id, sub.state, "native") as result,
            ):
                b"".join(result.chunks if isinstance(result, NativeResult) else [])
        provider.close()
    # Then the database's message is there, the secret is not: in the error nor in any log line
    assert "Unknown column 'orders.***'" in str(raised.value)
    logged = "\n".join(f"{record.getMessage()} {vars(record)}" for record in caplog.records)
    _assert_clean(str(raised.value) + logged, LOOKER_SECRET)


def test_a_logged_upstream_status_that_echoes_the_secret(
    hostile: Hostile, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a Looker-like upstream whose task status is the client secret
    hostile.routes[("POST", "/api/4.0/login")] = (200, {"access_token": "tok-123456", "expires_in": 3600})
    hostile.routes[("GET", "/api/4.0/query_tasks/")] = (200, {"id": "task-1", "status": LOOKER_SECRET})
    auth = {"type": "client_credentials", "client_id": LOOKER_ID, "client_secret": LOOKER_SECRET}
    provider = open_provider("scrub-test", _connection("looker", hostile.base_url, auth))
    # When the task is polled (the status is not understood, so it is logged)
    with caplog.at_level(logging.DEBUG):
        status = provider.poll("task-1", {}, 0)
    provider.close()
    # Then the log line is there without the secret
    assert not status.finished
    understood = [record for record in caplog.records if "not understood" in record.getMessage()]
    assert understood
    logged = "\n".join(f"{record.getMessage()} {vars(record)}" for record in caplog.records)
    _assert_clean(logged + status.detail, LOOKER_SECRET)
