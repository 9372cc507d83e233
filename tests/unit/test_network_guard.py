"""The network guard every test runs under (pytest-socket, set in pyproject's addopts): a
connect may reach loopback and unix sockets, and nothing else."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_socket import SocketConnectBlockedError

BLOCKED = "tried to use socket.socket.connect"


@pytest.mark.parametrize(
    "address",
    [("192.0.2.1", 80), ("10.0.0.1", 80), ("169.254.169.254", 80), ("0.0.0.0", 80), ("example.com", 80)],
)
def test_a_connect_to_anything_but_loopback_is_blocked(address: tuple[str, int]) -> None:
    with (
        socket.socket() as sock,
        pytest.raises(SocketConnectBlockedError),
        pytest.warns(UserWarning, match=BLOCKED),
    ):
        sock.connect(address)


@pytest.mark.parametrize("address", [("2001:db8::1", 80, 0, 0), ("::ffff:192.0.2.1", 80, 0, 0)])
def test_a_connect_to_anything_but_ipv6_loopback_is_blocked(address: tuple[str, int, int, int]) -> None:
    with (
        socket.socket(socket.AF_INET6) as sock,
        pytest.raises(SocketConnectBlockedError),
        pytest.warns(UserWarning, match=BLOCKED),
    ):
        sock.connect(address)


@pytest.mark.parametrize(
    ("bind", "host"), [("127.0.0.1", "127.0.0.1"), ("127.8.9.10", "127.8.9.10"), ("127.0.0.1", "localhost")]
)
def test_a_connect_to_loopback_goes_through(bind: str, host: str) -> None:
    with socket.socket() as server:
        server.bind((bind, 0))
        server.listen()
        with socket.socket() as client:
            client.connect((host, server.getsockname()[1]))


def test_a_connect_to_a_unix_socket_goes_through() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = str(Path(directory) / "s")
        with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
            server.bind(path)
            server.listen()
            client.connect(path)


@pytest.fixture
def connects_out_on_teardown() -> Iterator[None]:
    yield
    # pytest.raises fails this fixture's teardown, and so the test, if the connect is let through
    with (
        socket.socket() as sock,
        pytest.raises(SocketConnectBlockedError),
        pytest.warns(UserWarning, match=BLOCKED),
    ):
        sock.connect(("192.0.2.1", 80))


@pytest.mark.usefixtures("connects_out_on_teardown")
def test_the_guard_holds_while_fixtures_tear_down() -> None:
    pass
