"""The upstream address policy (SSRF): in AWS a connection may only reach https upstreams on
globally routable addresses (private ones when it says so). The network stays off: literal IPs
and a stubbed resolver, and an inner transport that answers instead of a socket."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import httpx
import pytest

from query_relay.exceptions import InvalidConnection, UpstreamUnavailable
from query_relay.models import Connection, parse_connection
from query_relay.upstream.address import (
    LOCAL_POLICY,
    PUBLIC_POLICY,
    AddressCheckingTransport,
    forbidden_address_reason,
    upstream_address_policy,
)
from query_relay.upstream.client import UpstreamClient, build_client

SECRET = "policy-test-secret-5b1e"
PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:4700:4700::1111"

FORBIDDEN_ALWAYS = {
    "loopback-127.0.0.1": "127.0.0.1",
    "loopback-127.8.9.10": "127.8.9.10",
    "loopback-v6": "::1",
    "metadata": "169.254.169.254",
    "link-local-v4": "169.254.0.1",
    "link-local-v6": "fe80::1",
    "unspecified-v4": "0.0.0.0",
    "unspecified-v6": "::",
    "mapped-loopback": "::ffff:127.0.0.1",
    "mapped-metadata": "::ffff:169.254.169.254",
    "multicast": "224.0.0.1",
    "reserved": "240.0.0.1",
    "broadcast": "255.255.255.255",
    "documentation": "192.0.2.1",
}
PRIVATE = {
    "10/8": "10.1.2.3",
    "10/8-edge": "10.255.255.255",
    "172.16/12-low": "172.16.0.1",
    "172.16/12-high": "172.31.255.254",
    "192.168/16": "192.168.1.1",
    "cgnat-100.64/10": "100.64.0.1",
    "fc00::/7-fd": "fd12:3456::1",
    "fc00::/7-fc": "fc00::1",
    "mapped-private": "::ffff:10.0.0.1",
}


def connection(base_url: str = "https://search.example.com:9200", **changes: Any) -> Connection:
    document = {"provider": "esql", "base_url": base_url, "auth": {"type": "api_key", "api_key": SECRET}}
    return parse_connection("policy-test", document | changes)


def resolver_of(*answers: Sequence[str]) -> tuple[list[str], Any]:
    """A getaddrinfo stand-in answering each call with the next list of addresses; records hosts."""
    asked: list[str] = []
    remaining = list(answers)

    def resolve(host: str, port: int) -> list[tuple[Any, ...]]:
        asked.append(host)
        addresses = remaining.pop(0) if len(remaining) > 1 else remaining[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in addresses]

    return asked, resolve


def recording_transport(seen: list[httpx.Request]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    return httpx.MockTransport(answer)


@pytest.mark.parametrize("address", FORBIDDEN_ALWAYS.values(), ids=FORBIDDEN_ALWAYS.keys())
def test_loopback_link_local_and_other_special_addresses_are_always_refused(address: str) -> None:
    assert forbidden_address_reason(address) is not None
    assert forbidden_address_reason(address, allow_private_network=True) is not None


@pytest.mark.parametrize("address", PRIVATE.values(), ids=PRIVATE.keys())
def test_private_ranges_are_refused_unless_the_connection_allows_them(address: str) -> None:
    assert "private network" in (forbidden_address_reason(address) or "")
    assert forbidden_address_reason(address, allow_private_network=True) is None


@pytest.mark.parametrize("address", [PUBLIC_V4, PUBLIC_V6, "8.8.8.8", "::ffff:8.8.8.8"])
def test_globally_routable_addresses_are_allowed(address: str) -> None:
    assert forbidden_address_reason(address) is None


def test_the_metadata_address_is_named_link_local() -> None:
    assert "link-local" in (forbidden_address_reason("169.254.169.254") or "")
    assert forbidden_address_reason("::ffff:127.0.0.1") == "loopback"


@pytest.mark.parametrize(
    ("environment", "allow_local"),
    [
        ({}, True),
        ({"AWS_LAMBDA_FUNCTION_NAME": "submit"}, False),
        ({"AWS_LAMBDA_FUNCTION_NAME": "submit", "ALLOW_LOCAL_UPSTREAMS": "true"}, True),
        ({"ALLOW_LOCAL_UPSTREAMS": "false"}, False),
        ({"ALLOW_LOCAL_UPSTREAMS": "TRUE"}, True),
    ],
    ids=["outside-lambda", "on-lambda", "local-stack", "forced-public", "case"],
)
def test_the_policy_comes_from_the_environment(environment: dict[str, str], allow_local: bool) -> None:
    assert upstream_address_policy(environment).allow_local is allow_local


def test_plain_http_is_refused_under_the_public_policy_and_allowed_locally() -> None:
    with pytest.raises(InvalidConnection, match="must use https") as refused:
        build_client(connection("http://search.example.com:9200"), policy=PUBLIC_POLICY)
    assert SECRET not in str(refused.value)
    build_client(connection("http://127.0.0.1:9200"), policy=LOCAL_POLICY).close()


@pytest.mark.parametrize(
    "addresses",
    [["169.254.169.254"], ["127.0.0.1"], ["10.0.0.7"], [PUBLIC_V4, "192.168.0.10"], ["::ffff:127.0.0.1"]],
    ids=["metadata", "loopback", "private", "one-of-several", "mapped"],
)
def test_a_host_resolving_to_any_forbidden_address_is_refused_before_anything_is_sent(
    addresses: list[str],
) -> None:
    # Given a name that resolves to (among others) a forbidden address
    _, resolve = resolver_of(addresses)
    seen: list[httpx.Request] = []
    transport = AddressCheckingTransport(
        recording_transport(seen),
        connection_name="policy-test",
        allow_private_network=False,
        resolver=resolve,
    )
    # When a request is sent, then it is refused with InvalidConnection naming host and address
    with (
        httpx.Client(base_url="https://search.example.com", transport=transport) as client,
        pytest.raises(InvalidConnection, match=r"'search\.example\.com' resolves to .*forbidden"),
    ):
        client.get("/_query")
    assert seen == []


def test_a_link_to_another_host_is_held_to_the_policy_and_named_as_a_link() -> None:
    # Given a public base_url, and a link an answer pointed to whose host resolves to the metadata address
    asked, resolve = resolver_of(["169.254.169.254"])
    client = build_client(connection(), policy=PUBLIC_POLICY, resolver=resolve)
    # When the link is fetched, then it is refused, naming the link's host, not base_url's
    with client, pytest.raises(InvalidConnection) as raised:
        client.get("https://storage.example.net/chunk-0")
    message = str(raised.value)
    assert "host 'storage.example.net' (a link the upstream's answer pointed to, not base_url)" in message
    assert "base_url host" not in message
    assert "link-local" in message
    assert asked == ["storage.example.net"]


@pytest.mark.parametrize("literal", ["https://169.254.169.254", "https://[::1]:9200", "https://10.0.0.1"])
def test_a_literal_forbidden_ip_in_the_base_url_is_refused_without_resolving(literal: str) -> None:
    asked, resolve = resolver_of([PUBLIC_V4])
    client = build_client(connection(literal), policy=PUBLIC_POLICY, resolver=resolve)
    with client, pytest.raises(InvalidConnection, match="forbidden upstream address"):
        client.get("/")
    assert asked == []


def test_a_private_upstream_is_reached_when_the_connection_allows_private_networks() -> None:
    _, resolve = resolver_of(["10.20.30.40"])
    seen: list[httpx.Request] = []
    transport = AddressCheckingTransport(
        recording_transport(seen), connection_name="vpc", allow_private_network=True, resolver=resolve
    )
    with httpx.Client(base_url="https://es.internal:9200", transport=transport) as client:
        assert client.get("/").status_code == 200
    assert seen[0].url.host == "10.20.30.40"


def test_the_checked_address_is_the_one_connected_to_so_dns_rebinding_cannot_switch_it() -> None:
    # Given a name that first resolves to a public address, then (rebinding) to the metadata address
    asked, resolve = resolver_of([PUBLIC_V4], ["169.254.169.254"])
    seen: list[httpx.Request] = []
    transport = AddressCheckingTransport(
        recording_transport(seen),
        connection_name="policy-test",
        allow_private_network=False,
        resolver=resolve,
    )
    with httpx.Client(base_url="https://search.example.com:9200", transport=transport) as client:
        # When the first request goes out, it goes to the address that was checked, under the name
        assert client.get("/_query").status_code == 200
        # and the next resolution, now pointing at the metadata service, is refused
        with pytest.raises(InvalidConnection, match=r"169\.254\.169\.254"):
            client.get("/_query")
    assert asked == ["search.example.com", "search.example.com"]
    assert [str(request.url) for request in seen] == [f"https://{PUBLIC_V4}:9200/_query"]
    assert seen[0].headers["Host"] == "search.example.com:9200"
    assert seen[0].extensions["sni_hostname"] == "search.example.com"  # TLS checks the name's certificate


def test_a_name_that_does_not_resolve_is_an_unavailable_upstream_not_a_crash() -> None:
    def failing(host: str, port: int) -> list[tuple[Any, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    upstream = UpstreamClient("esql", "policy-test", connection())
    upstream.client.close()
    upstream.client = build_client(connection(), policy=PUBLIC_POLICY, resolver=failing)
    with (
        pytest.raises(UpstreamUnavailable, match="could not reach the upstream") as failed,
        upstream.stream("GET", "/", where=upstream.where("probe")),
    ):
        pass
    upstream.close()
    assert SECRET not in str(failed.value)


def test_the_connection_field_defaults_to_no_private_network() -> None:
    assert connection().allow_private_network is False
    assert connection(allow_private_network=True).allow_private_network is True
