"""Where a connection may point us: the upstream address policy (SSRF).

On AWS (the public policy) a base URL must be https and every request goes through
``AddressCheckingTransport``: a connection cannot point us at the metadata service or another
internal address. Locally (emulators on http://127.0.0.1) anything goes.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from query_relay.exceptions import InvalidConnection
from query_relay.models import Connection

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
        base_host: str | None = None,
    ) -> None:
        self._inner = inner
        self._connection_name = connection_name
        # The host of the connection's base_url: a refusal of another host (a link the upstream's
        # answer pointed to, such as a result chunk on cloud storage) says so instead.
        self._base_host = base_host
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
                which = (
                    f"base_url host {host!r}"
                    if self._base_host is None or host == self._base_host
                    else f"host {host!r} (a link the upstream's answer pointed to, not base_url)"
                )
                raise InvalidConnection(
                    f"connection {self._connection_name!r} is invalid: {which} resolves "
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
