"""How requests carry a connection's credentials: ``httpx.Auth`` classes.

Static credentials (api_key, basic, bearer) are one header (``HeaderAuth``). Client credentials
are exchanged for an access token by the provider's ``login`` (Looker's ``POST /login``, an
OAuth token endpoint ...): ``TokenAuth`` keeps the token in a process-wide cache, so that a warm
Lambda logs in once an hour rather than once a call, and answers a 401 (a token revoked or
expired early) with one new login and one retry of the request.

``secrets()`` lists what must never be printed: ``Secrets`` scrubs them from any text an
upstream echoes back.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus

import httpx

from query_relay.models import (
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    ClientCredentialsAuth,
    Connection,
    KeyPairAuth,
)
from query_relay.observability import logger

# Renew a token this long before the upstream says it expires (capped at half its lifetime).
TOKEN_RENEW_MARGIN_SECONDS = 300.0
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")


class HeaderAuth(httpx.Auth):
    """Sends one fixed ``Authorization`` value (kept out of ``repr``)."""

    def __init__(self, value: str) -> None:
        self._value = value

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        request.headers["Authorization"] = self._value
        yield request

    def secrets(self) -> list[str]:
        return [self._value.split(" ", 1)[-1]]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(***)"


def static_auth(connection: Connection) -> HeaderAuth | None:
    """The header auth for api_key, basic and bearer credentials; None for client credentials."""
    auth = connection.auth
    if isinstance(auth, ApiKeyAuth):
        return HeaderAuth(f"ApiKey {auth.api_key.get_secret_value()}")
    if isinstance(auth, BasicAuth):
        pair = f"{auth.username}:{auth.password.get_secret_value()}".encode()
        return HeaderAuth(f"Basic {base64.b64encode(pair).decode('ascii')}")
    if isinstance(auth, BearerAuth):
        return HeaderAuth(f"Bearer {auth.token.get_secret_value()}")
    return None


# --- access tokens -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)
    expires_in: float


@dataclass(frozen=True)
class _Held:
    value: str = field(repr=False)
    renew_at: float  # time.monotonic()


TokenKey = tuple[str, str, str]


class TokenCache:
    """Access tokens by (base URL, client id, digest of the secret), shared by every connection in
    the process. The secret's digest is part of the key so that a token is never handed to a caller
    that presents a different secret."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[TokenKey, _Held] = {}

    def get(self, key: TokenKey) -> str | None:
        with self._lock:
            held = self._tokens.get(key)
        if held is None or time.monotonic() >= held.renew_at:
            return None
        return held.value

    def put(self, key: TokenKey, value: str, expires_in: float) -> None:
        margin = min(TOKEN_RENEW_MARGIN_SECONDS, expires_in / 2)
        with self._lock:
            self._tokens[key] = _Held(value, time.monotonic() + expires_in - margin)

    def drop(self, key: TokenKey, value: str) -> None:
        """Forget a refused token, unless another thread already replaced it."""
        with self._lock:
            held = self._tokens.get(key)
            if held is not None and held.value == value:
                del self._tokens[key]

    def cache_clear(self) -> None:
        """Forget every token (named like functools' caches: a new container, or the local stack
        starting afresh, empties every ``cache_clear`` of the library)."""
        with self._lock:
            self._tokens.clear()


TOKENS = TokenCache()


def token_key(connection: Connection) -> TokenKey:
    auth = connection.auth
    if not isinstance(auth, ClientCredentialsAuth):
        raise TypeError("token_key takes a connection with client_credentials auth")
    digest = hashlib.sha256(auth.client_secret.get_secret_value().encode()).hexdigest()
    return (connection.base_url, auth.client_id, digest)


class TokenAuth(httpx.Auth):
    """Bearer tokens from ``login`` (called with no auth of its own), cached in ``TOKENS``; a 401
    is answered by dropping the token, one new login and one retry, whose answer stands."""

    def __init__(self, key: TokenKey, login: Callable[[], Token], *, cache: TokenCache = TOKENS) -> None:
        self._key = key
        self._login = login
        self._cache = cache
        self._lock = threading.Lock()
        # Every token handed out here, still valid or not: an upstream may echo any of them.
        self._handed_out: set[str] = set()

    def token(self) -> str:
        cached = self._cache.get(self._key)
        if cached is None:
            with self._lock:  # one login at a time per connection
                cached = self._cache.get(self._key)
                if cached is None:
                    token = self._login()
                    self._cache.put(self._key, token.value, token.expires_in)
                    cached = token.value
        self._handed_out.add(cached)
        return cached

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        yield request

    def refused(self, request: httpx.Request) -> None:
        """The upstream answered ``request`` 401: the token it carried is dropped, so that the next
        request logs in again. (``UpstreamClient.stream`` sends that one retry itself: an
        ``httpx.Auth`` flow would have httpx read the 401's body whole, however large.)"""
        self._cache.drop(self._key, request.headers.get("Authorization", "").removeprefix("Bearer "))
        logger.info("the upstream refused the access token; logging in again")

    def secrets(self) -> list[str]:
        return list(self._handed_out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(client_id={self._key[1]!r})"


# --- keeping secrets out of text -----------------------------------------------------------------

# Shorter than this, an encoded form is too likely to occur by chance (a secret itself is always
# scrubbed, whatever its length).
_MIN_ENCODED_CHARS = 6


def forms(secret: str) -> set[str]:
    """A secret as a server could echo it: as sent, base64, URL-encoded (both ways), and escaped
    inside a JSON string."""
    if not secret:
        return set()
    encoded = {
        base64.b64encode(secret.encode()).decode("ascii"),
        quote(secret, safe=""),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }
    return {secret} | {form for form in encoded if len(form) >= _MIN_ENCODED_CHARS}


class Secrets:
    """Scrubs a connection's secrets (and those its auth holds, such as the tokens it handed out)
    from text, in every form ``forms`` lists. Every ``Secrets`` alive is also applied to the
    library's log records (``_ScrubLogRecords``)."""

    def __init__(self, connection: Connection, auth: httpx.Auth | None) -> None:
        self._fixed = set().union(*map(forms, _connection_secrets(connection)))
        self._auth = auth
        with _ALIVE_LOCK:
            _ALIVE.add(self)

    def redact(self, text: str) -> str:
        """``text`` with URL userinfo and every form of every secret replaced by '***'."""
        scrubbed = _URL_USERINFO.sub(r"\1***@", text)
        held = self._auth.secrets() if isinstance(self._auth, TokenAuth | HeaderAuth) else []
        known = self._fixed.union(*map(forms, held))
        # Longest first so a secret that contains another is replaced whole.
        for secret in sorted(known, key=len, reverse=True):
            scrubbed = scrubbed.replace(secret, "***")
        return scrubbed


def _connection_secrets(connection: Connection) -> list[str]:
    auth = connection.auth
    if isinstance(auth, ApiKeyAuth):
        return [auth.api_key.get_secret_value()]
    if isinstance(auth, BasicAuth):
        password = auth.password.get_secret_value()
        pair = f"{auth.username}:{password}".encode()
        return [password, base64.b64encode(pair).decode("ascii")]
    if isinstance(auth, BearerAuth):
        return [auth.token.get_secret_value()]
    if isinstance(auth, KeyPairAuth):
        passphrase = auth.private_key_passphrase
        return [auth.private_key.get_secret_value(), *([passphrase.get_secret_value()] if passphrase else [])]
    # Client credentials may travel as HTTP Basic (an OAuth token endpoint): that pair is a form too.
    secret = auth.client_secret.get_secret_value()
    return [secret, base64.b64encode(f"{auth.client_id}:{secret}".encode()).decode("ascii")]


_ALIVE: weakref.WeakSet[Secrets] = weakref.WeakSet()
_ALIVE_LOCK = threading.Lock()  # providers are opened on other threads than those that log
# What every log record carries besides the message and the caller's extras.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({})))


def redact_everywhere(text: str) -> str:
    """``text`` scrubbed by every connection's ``Secrets`` in this process."""
    with _ALIVE_LOCK:
        alive = list(_ALIVE)
    for secrets in alive:
        text = secrets.redact(text)
    return text


class _ScrubLogRecords(logging.Filter):
    """A log line's message and string extras scrubbed of every live connection's secrets (an
    upstream's words, logged as a status or a detail, can quote one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _ALIVE:
            return True
        if isinstance(record.msg, str):
            record.msg, record.args = redact_everywhere(record.getMessage()), None
        for name, value in list(vars(record).items()):
            if name not in _RECORD_FIELDS and isinstance(value, str):
                setattr(record, name, redact_everywhere(value))
        return True


logger.addFilter(_ScrubLogRecords())
