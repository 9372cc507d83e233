"""Talking HTTP to an upstream: one ``httpx.Client`` per connection, and the translation of what
goes wrong on the wire into the named errors of ``query_relay.exceptions``.

Every provider shares this so that timeouts, authentication, the User-Agent, Retry-After and the
generic status classes behave the same for every upstream. A provider handles its own error
envelopes first (they say more), then hands the rest to ``raise_for_upstream_status``.

Secrets stay out of everything this module writes: messages name the connection and the
operation, never a URL (it may carry userinfo) or a header, and ``redact`` scrubs any secret an
upstream might echo back in a reason.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from query_relay import __version__
from query_relay.exceptions import (
    InvalidConnection,
    UpstreamAuthFailed,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from query_relay.models import ApiKeyAuth, BasicAuth, BearerAuth, ClientCredentialsAuth, Connection
from query_relay.observability import logger

USER_AGENT = f"query-relay/{__version__}"
# Error bodies are read to learn the upstream's reason; more than this is not an error envelope.
ERROR_BODY_LIMIT = 64 * 1024
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")


# --- building the client -------------------------------------------------------------------------


def authorization_header(connection: Connection) -> str | None:
    """The static ``Authorization`` value for the connection's auth; None for auth that needs a
    login first (client_credentials: the provider obtains and sends its own token)."""
    auth = connection.auth
    if isinstance(auth, ApiKeyAuth):
        return f"ApiKey {auth.api_key.get_secret_value()}"
    if isinstance(auth, BasicAuth):
        pair = f"{auth.username}:{auth.password.get_secret_value()}".encode()
        return f"Basic {base64.b64encode(pair).decode('ascii')}"
    if isinstance(auth, BearerAuth):
        return f"Bearer {auth.token.get_secret_value()}"
    return None


def request_timeout(connection: Connection, read_allowance_seconds: float = 0.0) -> httpx.Timeout:
    """The connection's timeout for connect/write/pool; reads get ``read_allowance_seconds`` more
    so that a long-poll the upstream is asked to hold is not cut short by our own timer."""
    base = connection.timeout_seconds
    return httpx.Timeout(base, read=base + max(read_allowance_seconds, 0.0))


def build_client(
    connection: Connection,
    *,
    headers: Mapping[str, str] | None = None,
    connection_name: str = "(unnamed)",
    policy: UpstreamAddressPolicy | None = None,
    resolver: Resolver | None = None,
) -> httpx.Client:
    """An ``httpx.Client`` for the connection: base URL, timeouts, TLS verification, our
    User-Agent and, where the auth is static, the Authorization header (httpx masks it in reprs).

    Under the public address policy (AWS) the base URL must be https and every request goes
    through ``AddressCheckingTransport``: a connection cannot point us at the metadata service or
    another internal address (SSRF). ``policy`` defaults to the environment's
    (``upstream_address_policy``); ``resolver`` is for tests (default: ``socket.getaddrinfo``)."""
    policy = policy or upstream_address_policy()
    check_base_url_scheme(connection, connection_name, policy)
    default_headers = {"User-Agent": USER_AGENT}
    authorization = authorization_header(connection)
    if authorization is not None:
        default_headers["Authorization"] = authorization
    default_headers.update(headers or {})
    transport: httpx.BaseTransport | None = None
    if not policy.allow_local:
        transport = AddressCheckingTransport(
            httpx.HTTPTransport(verify=connection.verify_tls),
            connection_name=connection_name,
            allow_private_network=connection.allow_private_network,
            resolver=resolver or socket.getaddrinfo,
        )
    return httpx.Client(
        base_url=connection.base_url,
        timeout=request_timeout(connection),
        verify=connection.verify_tls,
        headers=default_headers,
        follow_redirects=False,
        transport=transport,
    )


# --- upstream address policy (SSRF) --------------------------------------------------------------

# "true": the local stack and tests, whose upstreams are emulators on http://127.0.0.1. "false":
# the public policy. Unset: public on Lambda (AWS_LAMBDA_FUNCTION_NAME is always set there), local
# elsewhere (unit tests and scripts that drive a provider against an emulator).
ALLOW_LOCAL_UPSTREAMS = "ALLOW_LOCAL_UPSTREAMS"
Resolver = Callable[[str, int], Sequence[tuple[Any, ...]]]
# Ranges a connection may reach only with ``allow_private_network: true``.
_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(cidr)
    for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


class UpstreamAddressPolicy:
    """Public (AWS): https only, and only globally routable addresses (private ones where the
    connection allows them). Local: anything goes (http, loopback): emulators on this machine."""

    def __init__(self, *, allow_local: bool) -> None:
        self.allow_local = allow_local

    def __repr__(self) -> str:
        return f"UpstreamAddressPolicy(allow_local={self.allow_local})"


PUBLIC_POLICY = UpstreamAddressPolicy(allow_local=False)
LOCAL_POLICY = UpstreamAddressPolicy(allow_local=True)


def upstream_address_policy(environ: Mapping[str, str] | None = None) -> UpstreamAddressPolicy:
    """The policy the environment asks for (``ALLOW_LOCAL_UPSTREAMS``; see its comment)."""
    environ = os.environ if environ is None else environ
    value = environ.get(ALLOW_LOCAL_UPSTREAMS, "").strip().lower()
    if value in ("true", "1", "yes"):
        return LOCAL_POLICY
    if value in ("false", "0", "no") or environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        return PUBLIC_POLICY
    return LOCAL_POLICY


def check_base_url_scheme(
    connection: Connection, connection_name: str, policy: UpstreamAddressPolicy
) -> None:
    if not policy.allow_local and not connection.base_url.lower().startswith("https://"):
        raise InvalidConnection(
            f"connection {connection_name!r} is invalid: base_url must use https "
            "(plain http would send the credentials in clear)"
        )


def forbidden_address_reason(address: str, *, allow_private_network: bool = False) -> str | None:
    """Why the public policy refuses this IP address (e.g. 'link-local'), or None when allowed.

    IPv4-mapped IPv6 (::ffff:a.b.c.d) is judged as the IPv4 address it carries, so it cannot
    smuggle 127.0.0.1 or 169.254.169.254 past the check."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not part of the address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    checks = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local (the instance metadata service lives there)"),
        (ip.is_multicast, "multicast"),
        (ip.is_reserved, "reserved"),
    )
    for matched, reason in checks:
        if matched:
            return reason
    if any(ip in network for network in _PRIVATE_NETWORKS):
        return None if allow_private_network else "private network (set allow_private_network: true)"
    if not ip.is_global:
        return "not globally routable"
    return None


class AddressCheckingTransport(httpx.BaseTransport):
    """Resolves the request's host itself, refuses it (InvalidConnection) if any address it
    resolves to is forbidden, then connects to the address it checked: the URL's host is replaced
    by that IP, with the Host header and TLS SNI/certificate check still on the name. A DNS answer
    that changes between the check and the connect (rebinding) therefore cannot take effect."""

    def __init__(
        self,
        inner: httpx.BaseTransport,
        *,
        connection_name: str,
        allow_private_network: bool,
        resolver: Resolver,
    ) -> None:
        self._inner = inner
        self._connection_name = connection_name
        self._allow_private_network = allow_private_network
        self._resolver = resolver

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        address = self._checked_address(
            host, request.url.port or (443 if request.url.scheme == "https" else 80)
        )
        if address != host:
            request.url = request.url.copy_with(host=address)
            request.extensions = {**request.extensions, "sni_hostname": host}
        return self._inner.handle_request(request)

    def _checked_address(self, host: str, port: int) -> str:
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            addresses = self._resolve(host, port)
        for address in addresses:
            reason = forbidden_address_reason(address, allow_private_network=self._allow_private_network)
            if reason is not None:
                raise InvalidConnection(
                    f"connection {self._connection_name!r} is invalid: base_url host {host!r} resolves "
                    f"to {address}, a forbidden upstream address ({reason})"
                )
        return addresses[0]

    def _resolve(self, host: str, port: int) -> list[str]:
        try:
            answers = self._resolver(host, port)
        except (OSError, UnicodeError) as error:
            raise httpx.ConnectError(
                f"could not resolve the upstream host ({type(error).__name__})"
            ) from None
        addresses = list(dict.fromkeys(str(answer[4][0]) for answer in answers))
        if not addresses:
            raise httpx.ConnectError("the upstream host resolves to no address")
        return addresses

    def close(self) -> None:
        self._inner.close()


# --- reading answers -----------------------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: delay-seconds or an HTTP date. None when absent or
    unreadable; never negative (a date in the past means 'now')."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.replace(".", "", 1).isdigit():  # delay-seconds (RFC 9110 says an integer; some send 1.5)
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; parsedate_to_datetime leaves '-0000' naive
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def read_error_body(response: httpx.Response, limit: int = ERROR_BODY_LIMIT) -> bytes:
    """At most ``limit`` bytes of a (streamed) error answer: enough for any error envelope, and a
    misbehaving upstream cannot make us hold a huge body in memory."""
    collected = bytearray()
    for chunk in response.iter_bytes():
        collected += chunk
        if len(collected) >= limit:
            break
    return bytes(collected[:limit])


def redact(text: str, connection: Connection) -> str:
    """``text`` with URL userinfo and every secret of the connection replaced by '***'."""
    scrubbed = _URL_USERINFO.sub(r"\1***@", text)
    for secret in _secret_values(connection):
        scrubbed = scrubbed.replace(secret, "***")
    return scrubbed


def _secret_values(connection: Connection) -> list[str]:
    auth = connection.auth
    secrets: list[str] = []
    if isinstance(auth, ApiKeyAuth):
        secrets.append(auth.api_key.get_secret_value())
    elif isinstance(auth, BasicAuth):
        password = auth.password.get_secret_value()
        pair = f"{auth.username}:{password}".encode()
        secrets += [password, base64.b64encode(pair).decode("ascii")]
    elif isinstance(auth, BearerAuth):
        secrets.append(auth.token.get_secret_value())
    elif isinstance(auth, ClientCredentialsAuth):
        secrets.append(auth.client_secret.get_secret_value())
    # Longest first so a secret that contains another is replaced whole; empty ones match everything.
    return sorted((secret for secret in secrets if secret), key=len, reverse=True)


def raise_for_upstream_status(
    response: httpx.Response, *, connection_name: str, operation: str, reason: str = ""
) -> None:
    """Map the generic status classes; providers call this after handling their own envelopes.

    2xx returns. 401/403 -> UpstreamAuthFailed; 429 -> UpstreamRateLimited (with Retry-After);
    408 and 5xx -> UpstreamUnavailable; anything else -> UpstreamProtocolError (an answer the
    provider did not expect). ``reason`` (already redacted) is appended to the message.
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    suffix = f": {reason}" if reason else ""
    where = f"{operation} on connection {connection_name!r}"
    if status in (401, 403):
        raise UpstreamAuthFailed(f"{where}: the upstream refused the credentials (HTTP {status}){suffix}")
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        hint = f", retry after {retry_after:g}s" if retry_after is not None else ""
        raise UpstreamRateLimited(
            f"{where}: rate limited by the upstream (HTTP 429{hint}){suffix}", retry_after_seconds=retry_after
        )
    if status == 408 or status >= 500:
        raise UpstreamUnavailable(f"{where}: the upstream is unavailable (HTTP {status}){suffix}")
    raise UpstreamProtocolError(f"{where}: unexpected answer HTTP {status}{suffix}")


@contextmanager
def translate_transport_errors(connection_name: str, operation: str) -> Iterator[None]:
    """Turn httpx's transport failures (refused, reset, timed out, broken framing) into
    UpstreamUnavailable. Only the exception's class goes into the message: httpx's own text can
    quote the request URL."""
    try:
        yield
    except httpx.TimeoutException as error:
        raise UpstreamUnavailable(
            f"{operation} on connection {connection_name!r}: the upstream did not answer in time "
            f"({type(error).__name__})"
        ) from None
    except httpx.TransportError as error:
        raise UpstreamUnavailable(
            f"{operation} on connection {connection_name!r}: could not reach the upstream "
            f"({type(error).__name__}{_errno_hint(error)})"
        ) from None


def _errno_hint(error: Exception) -> str:
    """'connection refused'-style detail from the OS error under httpx's, which carries no URL."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return f": {cause.strerror.lower()}"
        cause = cause.__cause__ or cause.__context__
    return ""


# --- one client per connection -------------------------------------------------------------------


class UpstreamClient:
    """An ``httpx.Client`` bound to one connection: every call streams, logs its status and
    elapsed time (never headers), and raises named errors for transport failures."""

    def __init__(
        self, connection_name: str, connection: Connection, *, headers: Mapping[str, str] | None = None
    ) -> None:
        self.connection_name = connection_name
        self.connection = connection
        self.client = build_client(connection, headers=headers, connection_name=connection_name)

    @contextmanager
    def stream(
        self,
        method: str,
        url: str,
        *,
        operation: str,
        read_allowance_seconds: float = 0.0,
        log_fields: Mapping[str, Any] | None = None,
        **request: Any,
    ) -> Iterator[httpx.Response]:
        """Send a request and yield the response with its body still unread. Transport failures,
        while connecting or while the caller reads the body inside the block, become
        UpstreamUnavailable."""
        started = time.monotonic()
        timeout = request_timeout(self.connection, read_allowance_seconds)
        with (
            translate_transport_errors(self.connection_name, operation),
            self.client.stream(method, url, timeout=timeout, **request) as response,
        ):
            logger.info(
                "upstream answered",
                extra={
                    "connection": self.connection_name,
                    "operation": operation,
                    "status_code": response.status_code,
                    "elapsed_ms": round((time.monotonic() - started) * 1000),
                    **(log_fields or {}),
                },
            )
            yield response

    def raise_for_status(self, response: httpx.Response, *, operation: str, reason: str = "") -> None:
        raise_for_upstream_status(
            response, connection_name=self.connection_name, operation=operation, reason=self.redact(reason)
        )

    def redact(self, text: str) -> str:
        return redact(text, self.connection)

    def close(self) -> None:
        self.client.close()
