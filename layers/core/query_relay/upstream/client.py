"""Talking HTTP to an upstream: one ``httpx.Client`` per connection.

Every provider shares this so that timeouts, credentials, the User-Agent, the address policy and
the translation of wire failures behave the same for every upstream. Every call streams (a body
is read by whoever needs it, as far as it needs), and logs its status and elapsed time, never a
header or a URL.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

from query_relay import __version__
from query_relay.models import Connection
from query_relay.observability import logger
from query_relay.upstream import deadline
from query_relay.upstream.address import (
    AddressCheckingTransport,
    Resolver,
    UpstreamAddressPolicy,
    check_base_url_scheme,
    upstream_address_policy,
)
from query_relay.upstream.auth import Secrets, TokenAuth, static_auth
from query_relay.upstream.errors import Where

USER_AGENT = f"query-relay/{__version__}"
JSON_HEADERS = {"Accept": "application/json"}


def request_timeout(connection: Connection, read_allowance_seconds: float = 0.0) -> httpx.Timeout:
    """The connection's timeout for connect/write/pool; reads get ``read_allowance_seconds`` more
    so that a long-poll the upstream is asked to hold is not cut short by our own timer."""
    base = connection.timeout_seconds
    return httpx.Timeout(base, read=base + max(read_allowance_seconds, 0.0))


def build_client(
    connection: Connection,
    *,
    headers: Mapping[str, str] | None = None,
    auth: httpx.Auth | None = None,
    connection_name: str = "(unnamed)",
    policy: UpstreamAddressPolicy | None = None,
    resolver: Resolver | None = None,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """An ``httpx.Client`` for the connection: base URL, timeouts, TLS verification, our
    User-Agent and the credentials (``auth``, by default the connection's static ones).

    Under the public address policy (AWS) the base URL must be https and every request goes
    through ``AddressCheckingTransport`` (query_relay.upstream.address). ``policy`` defaults to
    the environment's; ``resolver`` (default: ``socket.getaddrinfo``) and ``transport`` (default:
    httpx's, with whole-exchange deadlines) are for tests."""
    policy = policy or upstream_address_policy()
    check_base_url_scheme(connection, connection_name, policy)
    transport = transport or deadline.transport(connection.verify_tls)
    if not policy.allow_local:
        transport = AddressCheckingTransport(
            transport,
            connection_name=connection_name,
            allow_private_network=connection.allow_private_network,
            resolver=resolver or socket.getaddrinfo,
            base_host=httpx.URL(connection.base_url).host,
        )
    return httpx.Client(
        base_url=connection.base_url,
        auth=auth if auth is not None else static_auth(connection),
        timeout=request_timeout(connection),
        verify=connection.verify_tls,
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        follow_redirects=False,
        transport=transport,
    )


class UpstreamClient:
    """An ``httpx.Client`` bound to one connection of one upstream."""

    def __init__(
        self,
        upstream: str,
        connection_name: str,
        connection: Connection,
        *,
        headers: Mapping[str, str] | None = JSON_HEADERS,
        auth: httpx.Auth | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.upstream = upstream
        self.connection_name = connection_name
        self.connection = connection
        auth = auth if auth is not None else static_auth(connection)
        self.auth = auth
        self.secrets = Secrets(connection, auth)
        self.client = build_client(
            connection, headers=headers, auth=auth, connection_name=connection_name, transport=transport
        )

    def where(self, operation: str) -> Where:
        return Where(self.upstream, self.connection_name, operation)

    @contextmanager
    def stream(
        self,
        method: str,
        url: str,
        *,
        where: Where,
        read_allowance_seconds: float = 0.0,
        task_id: str | None = None,
        result: bool = False,
        **request: Any,
    ) -> Iterator[httpx.Response]:
        """Send a request and yield the response with its body still unread. Transport failures,
        while connecting or while the caller reads the body inside the block, become
        UpstreamUnavailable. ``request`` goes to httpx (``auth=None`` sends no credentials).

        The whole exchange has a deadline (query_relay.upstream.deadline): an answer that may be
        a ``result`` streams until the invocation's end; any other must be complete within the
        connection's ``timeout_seconds`` plus ``read_allowance_seconds``, the time the upstream
        was asked to hold it. A 401 to a request that carried a renewable token is answered by
        one new login and one retry, whose answer stands."""
        timeout = request_timeout(self.connection, read_allowance_seconds)
        bound = None if result else self.connection.timeout_seconds + max(read_allowance_seconds, 0.0)
        for attempt in (1, 2):
            started = time.monotonic()
            with (
                deadline.exchange(bound),
                where.transport(),
                self.client.stream(method, url, timeout=timeout, **request) as response,
            ):
                logger.info(
                    "upstream answered",
                    extra={
                        "connection": self.connection_name,
                        "operation": where.operation,
                        "status_code": response.status_code,
                        "elapsed_ms": round((time.monotonic() - started) * 1000),
                        **({"upstream_id": task_id} if task_id else {}),
                    },
                )
                if attempt == 1 and self._renewed(response, request):
                    continue  # the 401's body is left unread: the connection is closed
                yield response
                return

    def _renewed(self, response: httpx.Response, request: dict[str, Any]) -> bool:
        """Whether ``response`` refused a token that is now dropped (so the request is worth
        sending again)."""
        if response.status_code != 401 or "auth" in request or not isinstance(self.auth, TokenAuth):
            return False
        self.auth.refused(response.request)
        return True

    def redact(self, text: str) -> str:
        return self.secrets.redact(text)

    def close(self) -> None:
        self.client.close()
