"""Shared test setup: the network is off except loopback, for every test.

The process has the template's POWERTOOLS_SERVICE_NAME and POWERTOOLS_METRICS_NAMESPACE, as a
function on Lambda has (set before any test imports query_relay).

The guard is pytest-socket, switched on by pyproject's addopts: ``--allow-hosts`` lets
``socket.socket.connect`` reach loopback only (127.0.0.0/8, ::1, IPv4-mapped 127/8,
``localhost``) and ``--allow-unix-socket`` unix sockets; anything else raises
``pytest_socket.SocketConnectBlockedError``. tests/unit/test_network_guard.py checks it.
"""

from __future__ import annotations

import socket

import pytest

from query_relay_local.template import apply_powertools_environment

# As Lambda gives the functions the template's service name and metrics namespace before their
# code is imported (query_relay.observability names neither): before any test module imports it.
apply_powertools_environment()

from tests.hostile import hostile  # noqa: E402, F401 - a fixture every test may ask for


@pytest.hookimpl
def pytest_runtest_call(item: pytest.Item) -> None:
    # pytest-socket lifts its guard in its own pytest_runtest_teardown, before any fixture is
    # finalized. This finalizer, the item's last, runs first and puts the same guard back, so
    # the test's fixtures stay loopback-only while they tear down too.
    guarded_connect = socket.socket.connect
    item.addfinalizer(lambda: setattr(socket.socket, "connect", guarded_connect))
