"""Shared test setup: the network is off except loopback, for every test.

The guard is pytest-socket, switched on by pyproject's addopts: ``--allow-hosts`` lets
``socket.socket.connect`` reach loopback only (127.0.0.0/8, ::1, IPv4-mapped 127/8,
``localhost``) and ``--allow-unix-socket`` unix sockets; anything else raises
``pytest_socket.SocketConnectBlockedError``. tests/unit/test_network_guard.py checks it.
"""

from __future__ import annotations

import socket

import pytest

from tests.hostile import hostile  # noqa: F401 - a fixture every test may ask for


@pytest.hookimpl
def pytest_runtest_call(item: pytest.Item) -> None:
    # pytest-socket lifts its guard in its own pytest_runtest_teardown, before any fixture is
    # finalized. This finalizer, the item's last, runs first and puts the same guard back, so
    # the test's fixtures stay loopback-only while they tear down too.
    guarded_connect = socket.socket.connect
    item.addfinalizer(lambda: setattr(socket.socket, "connect", guarded_connect))
