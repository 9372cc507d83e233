"""The upstream address policy through the whole state machine: what the functions do in AWS
(ALLOW_LOCAL_UPSTREAMS unset on Lambda, i.e. the public policy) with a connection that points at
loopback or plain http: the job fails InvalidConnection and nothing reaches the upstream."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from query_relay_local.emulators.esql import EsqlEmulator
from query_relay_local.stack import LocalStack

from .conftest import ES_CONNECTION, esql_connection, run_job

QUERY = {"query": "FROM employees | LIMIT 3"}


@pytest.mark.parametrize(
    ("base_url_of", "reason"),
    [
        (lambda emulator: emulator.base_url, "must use https"),
        (lambda emulator: emulator.base_url.replace("http://", "https://"), "forbidden upstream address"),
    ],
    ids=["plain-http", "https-to-loopback"],
)
def test_under_the_public_policy_a_loopback_upstream_fails_invalid_connection_and_is_never_called(
    stack: LocalStack, esql_emulator: EsqlEmulator, base_url_of: Callable[[EsqlEmulator], str], reason: str
) -> None:
    # Given the functions run with the policy they have in AWS, and a connection to loopback
    stack.load_connections(
        {ES_CONNECTION: esql_connection(esql_emulator) | {"base_url": base_url_of(esql_emulator)}}
    )
    os.environ["ALLOW_LOCAL_UPSTREAMS"] = "false"  # the stack puts its own value back when it stops
    # When a job runs on it
    final, _ = run_job(stack, {"connection": ES_CONNECTION, "query": QUERY, "job_id": "ssrf-1"})
    # Then it fails with the named error, saying why, and the upstream never saw a request
    assert (final["status"], final["error"]) == ("FAILED", "InvalidConnection")
    assert reason in final["cause"]
    assert esql_emulator.requests == []
