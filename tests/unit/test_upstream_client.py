"""query_relay.upstream.client: the client every provider builds, and the mapping of wire failures
to named errors. A tiny loopback server stands in for an upstream; status mapping is checked on
real httpx responses."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from query_relay import __version__
from query_relay.exceptions import (
    UpstreamAuthFailed,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from query_relay.models import Connection, parse_connection
from query_relay.upstream.auth import Secrets, static_auth
from query_relay.upstream.client import UpstreamClient, build_client
from query_relay.upstream.errors import (
    Envelope,
    Where,
    parse_retry_after,
    raise_for_response,
    read_error_body,
)

WHERE = Where("esql", "es-prod", "esql poll")


def redact(text: str, connection: Connection) -> str:
    return Secrets(connection, static_auth(connection)).redact(text)


API_KEY = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
PASSWORD = "hunter2-not-in-logs"
TOKEN = "bearer-token-not-in-logs"


class _UpstreamStandIn(BaseHTTPRequestHandler):
    """GET /echo -> the request's path and headers as JSON; /slow -> answers once released;
    /big -> a 1 MiB body; anything else -> 200 '{}'."""

    protocol_version = "HTTP/1.1"
    release: threading.Event

    def do_GET(self) -> None:
        if self.path.endswith("/slow"):
            self.server.release.wait(timeout=30)  # type: ignore[attr-defined]
        if self.path.endswith("/big"):
            body = b"x" * (1024 * 1024)
        elif self.path.endswith("/echo"):
            body = json.dumps({"path": self.path, "headers": dict(self.headers.items())}).encode()
        else:
            body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # the test output stays clean
        return


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out has gone; writing to it fails, which is expected here."""


@dataclass
class StandIn:
    url: str
    release: threading.Event  # /slow answers once this is set


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    server = _QuietServer(("127.0.0.1", 0), _UpstreamStandIn)
    server.daemon_threads = True
    server.release = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield StandIn(f"http://127.0.0.1:{server.server_address[1]}", server.release)  # type: ignore[attr-defined]
    server.release.set()  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def upstream(stand_in: StandIn) -> str:
    return stand_in.url


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _connection(base_url: str, auth: dict[str, Any] | None = None, **extra: Any) -> Connection:
    return parse_connection(
        "test-conn",
        {
            "provider": "esql",
            "base_url": base_url,
            "auth": auth or {"type": "api_key", "api_key": API_KEY},
            **extra,
        },
    )


def _echo(client: httpx.Client, path: str = "/echo") -> dict[str, Any]:
    answer: dict[str, Any] = client.get(path).json()
    return answer


# --- the client ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ({"type": "api_key", "api_key": API_KEY}, f"ApiKey {API_KEY}"),
        (
            {"type": "basic", "username": "elastic", "password": PASSWORD},
            f"Basic {base64.b64encode(f'elastic:{PASSWORD}'.encode()).decode()}",
        ),
        ({"type": "bearer", "token": TOKEN}, f"Bearer {TOKEN}"),
    ],
    ids=["api_key", "basic", "bearer"],
)
def test_client_sends_the_connections_authorization_and_user_agent(
    upstream: str, auth: dict[str, Any], expected: str
) -> None:
    # Given a connection with static credentials
    connection = _connection(upstream, auth)

    # When the client built from it calls the upstream
    with build_client(connection) as client:
        headers = _echo(client)["headers"]

    # Then the upstream sees the Authorization scheme the vendors document, and our User-Agent
    assert headers["Authorization"] == expected
    assert headers["User-Agent"] == f"query-relay/{__version__}"


def test_client_credentials_connections_get_no_static_authorization(upstream: str) -> None:
    # Given a connection that must log in first (the provider sends the token it obtains)
    connection = _connection(
        upstream, {"type": "client_credentials", "client_id": "id", "client_secret": "s3cr3t"}
    )

    # When the client calls the upstream
    with build_client(connection, headers={"Accept": "application/json"}) as client:
        headers = _echo(client)["headers"]

    # Then no Authorization is sent, and extra headers are
    assert "Authorization" not in headers
    assert headers["Accept"] == "application/json"


def test_client_keeps_the_base_urls_path_prefix(upstream: str) -> None:
    # Given an upstream served under a path prefix (a proxy, a Kibana-style mount)
    connection = _connection(f"{upstream}/es/")

    # When the client requests an absolute API path
    with build_client(connection) as client:
        path = _echo(client, "/_query/echo")["path"]

    # Then the prefix is kept
    assert path == "/es/_query/echo"


def test_client_reprs_never_show_the_secret(upstream: str) -> None:
    # Given a client carrying an api key
    with build_client(_connection(upstream)) as client:
        # When its headers and a request are rendered for a log line or a traceback
        rendered = repr(client.headers) + repr(client.build_request("GET", "/x").headers)

    # Then the secret is masked
    assert API_KEY not in rendered


# --- transport failures --------------------------------------------------------------------------


def test_connection_refused_becomes_upstream_unavailable(closed_port_url: str) -> None:
    # Given nothing listens on the connection's port
    client = UpstreamClient("esql", "test-conn", _connection(closed_port_url))

    # When a call is made
    with (
        pytest.raises(UpstreamUnavailable) as caught,
        client.stream("GET", "/x", where=client.where("esql submit")),
    ):
        pass  # pragma: no cover - never reached

    # Then the error names the connection and the operation, and neither the URL nor the secret
    message = str(caught.value)
    assert "esql submit" in message
    assert "'test-conn'" in message
    assert "refused" in message
    assert closed_port_url not in message
    assert API_KEY not in message


def test_a_read_slower_than_the_timeout_becomes_upstream_unavailable(upstream: str) -> None:
    # Given an upstream that does not answer within the connection's timeout
    client = UpstreamClient("esql", "test-conn", _connection(upstream, timeout_seconds=0.2))

    # When a call is made
    with (
        pytest.raises(UpstreamUnavailable) as caught,
        client.stream("GET", "/slow", where=client.where("esql poll")),
    ):
        pass  # pragma: no cover - never reached

    # Then it is reported as a timeout on that operation
    assert "esql poll on connection 'test-conn'" in str(caught.value)
    assert "did not answer in time" in str(caught.value)


def test_a_read_allowance_lets_a_long_poll_outlast_the_connection_timeout(stand_in: StandIn) -> None:
    # Given an upstream that holds the request (a long-poll) past the connection timeout
    client = UpstreamClient("esql", "test-conn", _connection(stand_in.url, timeout_seconds=0.2))
    threading.Timer(1.0, stand_in.release.set).start()

    # When the call asks for a read allowance covering the long-poll
    with client.stream(
        "GET", "/slow", where=client.where("esql poll"), read_allowance_seconds=30
    ) as response:
        body = response.read()

    # Then the answer arrives instead of a timeout
    assert response.status_code == 200
    assert body == b"{}"


# --- reading answers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, UpstreamAuthFailed),
        (403, UpstreamAuthFailed),
        (408, UpstreamUnavailable),
        (429, UpstreamRateLimited),
        (500, UpstreamUnavailable),
        (502, UpstreamUnavailable),
        (503, UpstreamUnavailable),
        (504, UpstreamUnavailable),
        (404, UpstreamProtocolError),
        (409, UpstreamProtocolError),
        (302, UpstreamProtocolError),
    ],
)
def test_status_classes_map_to_named_errors(status: int, error: type[Exception]) -> None:
    # Given an answer the provider did not handle itself
    response = httpx.Response(status)

    # When it is mapped
    with pytest.raises(error) as caught:
        raise_for_response(response, WHERE, envelope=lambda body: Envelope(message="why"))

    # Then the message names the operation, the connection, the status and the reason
    assert str(caught.value).startswith(f"esql poll on connection 'es-prod', HTTP {status}: ")
    assert str(caught.value).endswith(" (why)")


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_success_statuses_pass(status: int) -> None:
    raise_for_response(httpx.Response(status), WHERE)


def test_429_carries_the_retry_after() -> None:
    # Given a 429 asking to come back in 7 seconds
    response = httpx.Response(429, headers={"Retry-After": "7"})

    # When it is mapped
    with pytest.raises(UpstreamRateLimited) as caught:
        raise_for_response(response, WHERE)

    # Then the delay travels with the error
    assert caught.value.retry_after_seconds == 7.0
    assert "retry after 7s" in str(caught.value)


def test_429_without_retry_after_has_no_delay() -> None:
    with pytest.raises(UpstreamRateLimited) as caught:
        raise_for_response(httpx.Response(429), WHERE)
    assert caught.value.retry_after_seconds is None


NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        (format_datetime(datetime(2025, 3, 1, 12, 0, 30, tzinfo=UTC), usegmt=True), 30.0),
        ("Sat, 01 Mar 2025 12:01:00 GMT", 60.0),
        ("Sat, 01 Mar 2025 11:00:00 GMT", 0.0),  # in the past: now
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1.5", 1.5),  # RFC 9110 wants an integer; a fraction is still a clear answer
    ],
)
def test_retry_after_reads_seconds_and_http_dates(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_read_error_body_stops_at_the_limit(upstream: str) -> None:
    # Given an answer far larger than any error envelope
    client = UpstreamClient("esql", "test-conn", _connection(upstream))

    # When its body is read as an error body
    with client.stream("GET", "/big", where=client.where("op")) as response:
        body = read_error_body(response, limit=1000)

    # Then only the first bytes are kept
    assert body == b"x" * 1000


def test_redact_scrubs_secrets_and_url_userinfo() -> None:
    # Given a basic-auth connection and a text an upstream might echo
    connection = _connection(
        "http://127.0.0.1:9", {"type": "basic", "username": "elastic", "password": PASSWORD}
    )
    text = f"failed for https://elastic:{PASSWORD}@es.example:9200/_query with password {PASSWORD}"

    # When it is redacted
    scrubbed = redact(text, connection)

    # Then neither the password nor the userinfo remains
    assert PASSWORD not in scrubbed
    assert scrubbed == "failed for https://***@es.example:9200/_query with password ***"


def test_upstream_client_redacts_the_reason_it_is_given() -> None:
    # Given an upstream reason that echoes the api key
    client = UpstreamClient("esql", "test-conn", _connection("http://127.0.0.1:9"))

    # When the generic mapping raises
    with pytest.raises(UpstreamAuthFailed) as caught:
        raise_for_response(
            httpx.Response(401, json={"reason": f"bad key {API_KEY}"}),
            client.where("esql submit"),
            envelope=lambda body: Envelope(message=json.loads(body)["reason"]),
            redact=client.redact,
        )

    # Then the key is not in the message
    assert API_KEY not in str(caught.value)
    assert "bad key ***" in str(caught.value)
