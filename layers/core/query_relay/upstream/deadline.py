"""Whole-exchange deadlines: an upstream that answers one byte at a time cannot hold a call open.

httpx's timeouts bound each socket operation (a connect, one read, one write), never a whole
exchange: an answer trickled a byte every few seconds, headers or body, never times out. Here
every socket operation of the upstream clients is also bounded by the deadline of the exchange
under way, so an exchange ends, at the latest, at its deadline with httpx's own timeout error
(UpstreamUnavailable, see ``Where.transport``).

An exchange's deadline is the earliest of:

- its own bound, for answers that are not a result (``UpstreamClient.stream``): the connection's
  ``timeout_seconds`` plus the time the upstream was asked to hold the answer (a long poll);
- the end of the invocation: a Lambda's remaining time less a margin to fail with a named error
  and clean up (``invocation_ends_within``, set by the workflow's steps). A result streams until
  then.

The deadlines live in context variables, set and reset around each exchange. An exchange's own
deadline never comes from another exchange (a re-login inside one has its own): a generator that
held an exchange open and was closed late cannot leave its deadline on later ones, nor on the next
invocation of a warm Lambda. The sockets are httpcore's own:
``transport`` is httpx's ``HTTPTransport`` over a connection pool whose network backend clamps
every operation's timeout to the time left.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

# The monotonic time by which the exchange under way must end (None: no deadline).
_EXCHANGE_ENDS: ContextVar[float | None] = ContextVar("exchange_ends", default=None)
# The monotonic time by which the invocation's upstream exchanges must end (None: no bound).
_INVOCATION_ENDS: ContextVar[float | None] = ContextVar("invocation_ends", default=None)


def _earliest(*times: float | None) -> float | None:
    known = [moment for moment in times if moment is not None]
    return min(known) if known else None


@contextmanager
def invocation_ends_within(seconds: float | None) -> Iterator[None]:
    """Every exchange started inside ends within ``seconds`` (None: no bound beyond their own)."""
    ends = None if seconds is None else time.monotonic() + max(seconds, 0.0)
    token = _INVOCATION_ENDS.set(_earliest(ends, _INVOCATION_ENDS.get()))
    try:
        yield
    finally:
        _INVOCATION_ENDS.reset(token)


@contextmanager
def exchange(seconds: float | None) -> Iterator[float | None]:
    """One exchange, ending within ``seconds`` (None: only the invocation's end bounds it). Yields
    the seconds it is given (None: unbounded)."""
    now = time.monotonic()
    own = None if seconds is None else now + max(seconds, 0.0)
    ends = _earliest(own, _INVOCATION_ENDS.get())
    token = _EXCHANGE_ENDS.set(ends)
    try:
        yield None if ends is None else ends - now
    finally:
        # Ended from another context than it began in (ValueError): a generator that held the
        # exchange open, finalized wherever its last reference went. That context never had this
        # deadline; the one that had it no longer runs the generator.
        with suppress(ValueError):
            _EXCHANGE_ENDS.reset(token)


def expired() -> bool:
    """Whether the exchange under way is past its deadline."""
    ends = _EXCHANGE_ENDS.get()
    return ends is not None and time.monotonic() >= ends


def _bounded(timeout: float | None, expiry: type[Exception]) -> float | None:
    """``timeout`` (httpcore's, None: none) clamped to the exchange's time left; ``expiry``
    (httpcore's timeout error for the operation) once none is left."""
    ends = _EXCHANGE_ENDS.get()
    if ends is None:
        return timeout
    left = ends - time.monotonic()
    if left <= 0:
        raise expiry("the exchange's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's synchronous sockets, every operation bounded by the exchange's deadline."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, bounded, local_address, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def transport(verify: bool) -> httpx.HTTPTransport:
    """httpx's transport with its default pool, over sockets bounded by the exchange's deadline."""
    ssl_context = httpx.create_ssl_context(verify=verify)
    built = httpx.HTTPTransport(verify=ssl_context)
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's DEFAULT_LIMITS
    # httpx has no parameter for the pool's network backend: its pool is replaced by an equal one.
    built._pool = httpcore.ConnectionPool(
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_DeadlineBackend(),
    )
    return built
