"""query_relay.upstream.auth: static credentials as one header, access tokens (cache, renewal,
one re-login on 401) through a real httpx.Client on a mock transport, and Secrets, which scrubs
credentials from any text."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from query_relay.exceptions import InvalidConnection
from query_relay.models import Connection, parse_connection
from query_relay.upstream import auth
from query_relay.upstream.auth import (
    TOKEN_RENEW_MARGIN_SECONDS,
    TOKENS,
    HeaderAuth,
    Secrets,
    Token,
    TokenAuth,
    TokenCache,
    static_auth,
    token_key,
)
from query_relay.upstream.client import UpstreamClient

BASE_URL = "https://looker.example:19999"
API_KEY = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
PASSWORD = "hunter2-not-in-logs"
BEARER = "bearer-token-not-in-logs"
CLIENT_SECRET = "client-secret-not-in-logs"


def _connection(auth_document: dict[str, Any], base_url: str = BASE_URL) -> Connection:
    return parse_connection("test-conn", {"provider": "looker", "base_url": base_url, "auth": auth_document})


def _client_credentials(
    secret: str = CLIENT_SECRET, client_id: str = "client-1", base_url: str = BASE_URL
) -> Connection:
    return _connection(
        {"type": "client_credentials", "client_id": client_id, "client_secret": secret}, base_url
    )


API_KEY_CONNECTION = _connection({"type": "api_key", "api_key": API_KEY})
BASIC_CONNECTION = _connection({"type": "basic", "username": "elastic", "password": PASSWORD})
BEARER_CONNECTION = _connection({"type": "bearer", "token": BEARER})
BASIC_PAIR = base64.b64encode(f"elastic:{PASSWORD}".encode()).decode()


class FakeMonotonic:
    """Stands in for ``time.monotonic`` inside the auth module only."""

    def __init__(self, now: float = 5000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeMonotonic:
    fake = FakeMonotonic()
    monkeypatch.setattr(auth, "time", SimpleNamespace(monotonic=fake))
    return fake


# --- static credentials --------------------------------------------------------------------------


def _sent_headers(auth_: httpx.Auth) -> httpx.Headers:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    with httpx.Client(transport=httpx.MockTransport(handler), auth=auth_) as client:
        client.get("https://upstream.example/x")
    assert len(seen) == 1
    return seen[0].headers


def test_header_auth_sets_the_authorization_header() -> None:
    headers = _sent_headers(HeaderAuth("Scheme value-1"))
    assert headers["Authorization"] == "Scheme value-1"


def test_header_auth_replaces_an_authorization_already_set() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(200)

    with httpx.Client(transport=httpx.MockTransport(handler), auth=HeaderAuth("Bearer ours")) as client:
        client.get("https://upstream.example/x", headers={"Authorization": "Bearer theirs"})
    assert seen == ["Bearer ours"]


def test_header_auth_repr_hides_the_value() -> None:
    header = HeaderAuth(f"ApiKey {API_KEY}")
    assert API_KEY not in repr(header)
    assert API_KEY not in str(header)
    assert repr(header) == "HeaderAuth(***)"
    assert header.secrets() == [API_KEY]


@pytest.mark.parametrize(
    ("connection", "expected"),
    [
        (API_KEY_CONNECTION, f"ApiKey {API_KEY}"),
        (BASIC_CONNECTION, f"Basic {BASIC_PAIR}"),
        (BEARER_CONNECTION, f"Bearer {BEARER}"),
    ],
    ids=["api_key", "basic", "bearer"],
)
def test_static_auth_sends_the_documented_scheme(connection: Connection, expected: str) -> None:
    static = static_auth(connection)
    assert static is not None
    assert _sent_headers(static)["Authorization"] == expected


def test_static_auth_basic_pair_decodes_to_user_and_password() -> None:
    static = static_auth(BASIC_CONNECTION)
    assert static is not None
    scheme, pair = _sent_headers(static)["Authorization"].split(" ")
    assert scheme == "Basic"
    assert base64.b64decode(pair).decode() == f"elastic:{PASSWORD}"


def test_static_auth_is_none_for_client_credentials() -> None:
    assert static_auth(_client_credentials()) is None


# --- the token cache -----------------------------------------------------------------------------

KEY = ("https://a.example", "client-1", "digest-1")


def test_token_cache_gives_back_what_was_put(clock: FakeMonotonic) -> None:
    cache = TokenCache()
    assert cache.get(KEY) is None
    cache.put(KEY, "tok-1", expires_in=3600)
    assert cache.get(KEY) == "tok-1"
    assert cache.get(("https://a.example", "client-1", "other-digest")) is None


def test_token_cache_renews_the_margin_before_expiry(clock: FakeMonotonic) -> None:
    # Given a token that lives an hour
    cache = TokenCache()
    cache.put(KEY, "tok-1", expires_in=3600)

    # Then it is handed out until the renewal margin begins, and not from then on
    clock.now += 3600 - TOKEN_RENEW_MARGIN_SECONDS - 0.001
    assert cache.get(KEY) == "tok-1"
    clock.now += 0.001
    assert cache.get(KEY) is None


def test_token_cache_margin_is_at_most_half_a_short_lifetime(clock: FakeMonotonic) -> None:
    # Given a token that lives 100 s (less than twice the margin)
    cache = TokenCache()
    cache.put(KEY, "tok-1", expires_in=100)

    # Then it is renewed half-way rather than never handed out
    clock.now += 49.999
    assert cache.get(KEY) == "tok-1"
    clock.now += 0.001
    assert cache.get(KEY) is None


def test_token_cache_put_replaces_the_token(clock: FakeMonotonic) -> None:
    cache = TokenCache()
    cache.put(KEY, "tok-1", expires_in=3600)
    cache.put(KEY, "tok-2", expires_in=3600)
    assert cache.get(KEY) == "tok-2"


def test_token_cache_drops_only_the_refused_value(clock: FakeMonotonic) -> None:
    # Given a cache already holding a newer token than the one refused
    cache = TokenCache()
    cache.put(KEY, "tok-2", expires_in=3600)

    # When the older token is dropped, the newer one stays
    cache.drop(KEY, "tok-1")
    assert cache.get(KEY) == "tok-2"

    # When the token held is dropped, it goes
    cache.drop(KEY, "tok-2")
    assert cache.get(KEY) is None

    # And dropping what is not there is no error
    cache.drop(KEY, "tok-2")
    cache.drop(("x", "y", "z"), "tok-2")


def test_token_cache_clear_forgets_every_token(clock: FakeMonotonic) -> None:
    cache = TokenCache()
    other = ("https://b.example", "client-2", "digest-2")
    cache.put(KEY, "tok-1", expires_in=3600)
    cache.put(other, "tok-2", expires_in=3600)
    cache.cache_clear()
    assert cache.get(KEY) is None
    assert cache.get(other) is None


# --- token keys ----------------------------------------------------------------------------------


def test_token_key_is_the_same_for_the_same_credentials() -> None:
    key = token_key(_client_credentials())
    assert key == token_key(_client_credentials(base_url=BASE_URL + "/"))  # base_url is normalised
    assert key[:2] == (BASE_URL, "client-1")


def test_token_key_holds_a_digest_never_the_secret() -> None:
    key = token_key(_client_credentials())
    assert CLIENT_SECRET not in repr(key)
    assert len(key[2]) == 64  # sha256 hex


@pytest.mark.parametrize(
    "other",
    [
        _client_credentials(secret=CLIENT_SECRET + "x"),
        _client_credentials(client_id="client-2"),
        _client_credentials(base_url="https://other.example:19999"),
    ],
    ids=["secret", "client_id", "base_url"],
)
def test_token_key_differs_when_any_part_differs(other: Connection) -> None:
    assert token_key(other) != token_key(_client_credentials())


@pytest.mark.parametrize("connection", [API_KEY_CONNECTION, BASIC_CONNECTION, BEARER_CONNECTION])
def test_token_key_takes_only_client_credentials(connection: Connection) -> None:
    with pytest.raises(TypeError, match="client_credentials"):
        token_key(connection)


# --- TokenAuth through httpx ---------------------------------------------------------------------


@dataclass
class Upstream:
    """A mock upstream: ``accepts`` says which tokens it takes; it records the tokens it saw."""

    accepts: Callable[[str], bool] = lambda token: True
    seen: list[str] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        authorization = request.headers.get("Authorization", "")
        scheme, _, token = authorization.partition(" ")
        assert scheme == "Bearer"
        self.seen.append(token)
        return httpx.Response(200 if self.accepts(token) else 401, json={"path": request.url.path})

    def client(self, auth_: httpx.Auth) -> Caller:
        return Caller(self.handler, auth_)


class Caller:
    """Requests through an UpstreamClient (which answers a 401 to a token with one new login and
    one retry) to a mock transport."""

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response], auth_: httpx.Auth) -> None:
        transport = httpx.MockTransport(handler)
        self.http = UpstreamClient(
            "looker", "auth-test", _client_credentials(), auth=auth_, transport=transport
        )

    def get(self, path: str) -> httpx.Response:
        with self.http.stream("GET", path, where=self.http.where("test")) as response:
            response.read()
            return response

    def __enter__(self) -> Caller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()


@dataclass
class Login:
    """Hands out tok-1, tok-2, ... one per call, and counts the calls."""

    expires_in: float = 3600.0
    calls: int = 0
    before: Callable[[], None] = lambda: None

    def __call__(self) -> Token:
        self.before()
        self.calls += 1
        return Token(f"tok-{self.calls}", self.expires_in)


@pytest.fixture
def key() -> auth.TokenKey:
    return token_key(_client_credentials())


def test_token_auth_logs_in_once_and_reuses_the_token(key: auth.TokenKey) -> None:
    upstream, login = Upstream(), Login()
    with upstream.client(TokenAuth(key, login, cache=TokenCache())) as client:
        answers = [client.get(f"/q/{n}") for n in range(3)]

    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert login.calls == 1
    assert upstream.seen == ["tok-1", "tok-1", "tok-1"]


def test_token_auth_shares_the_token_between_instances_with_the_same_key(key: auth.TokenKey) -> None:
    # Given two providers' auths for the same credentials (a warm Lambda's next call)
    cache, upstream = TokenCache(), Upstream()
    first_login, second_login = Login(), Login()

    with upstream.client(TokenAuth(key, first_login, cache=cache)) as client:
        client.get("/q")
    with upstream.client(TokenAuth(key, second_login, cache=cache)) as client:
        client.get("/q")

    # Then the second one uses the first one's token without logging in
    assert (first_login.calls, second_login.calls) == (1, 0)
    assert upstream.seen == ["tok-1", "tok-1"]


def test_token_auth_does_not_share_with_a_different_secret(key: auth.TokenKey) -> None:
    cache, upstream = TokenCache(), Upstream()
    other_key = token_key(_client_credentials(secret="another-secret"))
    first_login, second_login = Login(), Login()

    with upstream.client(TokenAuth(key, first_login, cache=cache)) as client:
        client.get("/q")
    with upstream.client(TokenAuth(other_key, second_login, cache=cache)) as client:
        client.get("/q")

    assert (first_login.calls, second_login.calls) == (1, 1)


def test_the_default_cache_is_process_wide(key: auth.TokenKey) -> None:
    TOKENS.cache_clear()
    try:
        upstream, login = Upstream(), Login()
        with upstream.client(TokenAuth(key, login)) as client:
            client.get("/q")
        assert TOKENS.get(key) == "tok-1"
        with upstream.client(TokenAuth(key, Login())) as client:
            client.get("/q")
        assert upstream.seen == ["tok-1", "tok-1"]
    finally:
        TOKENS.cache_clear()


def test_token_auth_logs_in_again_once_the_token_is_due_for_renewal(
    key: auth.TokenKey, clock: FakeMonotonic
) -> None:
    upstream, login = Upstream(), Login(expires_in=1000)
    with upstream.client(TokenAuth(key, login, cache=TokenCache())) as client:
        client.get("/q")
        clock.now += 1000 - TOKEN_RENEW_MARGIN_SECONDS
        client.get("/q")

    assert login.calls == 2
    assert upstream.seen == ["tok-1", "tok-2"]


def test_a_401_drops_the_token_logs_in_once_more_and_retries_once(key: auth.TokenKey) -> None:
    # Given an upstream that has revoked the first token
    cache = TokenCache()
    upstream, login = Upstream(accepts=lambda token: token != "tok-1"), Login()

    with upstream.client(TokenAuth(key, login, cache=cache)) as client:
        # When a request is made
        answer = client.get("/q")
        # Then the refused token gave way to a new login, and the retry's answer is returned
        assert answer.status_code == 200
        assert login.calls == 2
        assert upstream.seen == ["tok-1", "tok-2"]
        assert cache.get(key) == "tok-2"

        # And the next request uses the new token without logging in
        assert client.get("/q").status_code == 200
    assert login.calls == 2
    assert upstream.seen == ["tok-1", "tok-2", "tok-2"]


def test_a_second_401_stands(key: auth.TokenKey) -> None:
    # Given an upstream that refuses every token
    upstream, login = Upstream(accepts=lambda token: False), Login()

    with upstream.client(TokenAuth(key, login, cache=TokenCache())) as client:
        answer = client.get("/q")

    # Then the request is retried exactly once, and the second 401 is the answer
    assert answer.status_code == 401
    assert login.calls == 2
    assert upstream.seen == ["tok-1", "tok-2"]


def test_a_401_after_another_caller_renewed_keeps_the_new_token(key: auth.TokenKey) -> None:
    # Given a cache holding tok-1, which another caller replaces while our request is in flight
    cache = TokenCache()
    cache.put(key, "tok-1", expires_in=3600)

    def handler(request: httpx.Request) -> httpx.Response:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        seen.append(token)
        if token == "tok-1":
            cache.put(key, "tok-from-elsewhere", expires_in=3600)
            return httpx.Response(401)
        return httpx.Response(200)

    seen: list[str] = []
    login = Login()
    with Caller(handler, TokenAuth(key, login, cache=cache)) as client:
        answer = client.get("/q")

    # Then the retry uses the other caller's token: no login, and it is not dropped
    assert answer.status_code == 200
    assert login.calls == 0
    assert seen == ["tok-1", "tok-from-elsewhere"]
    assert cache.get(key) == "tok-from-elsewhere"


def test_a_failing_login_caches_nothing(key: auth.TokenKey) -> None:
    cache = TokenCache()

    def login() -> Token:
        raise RuntimeError("login refused")

    token_auth = TokenAuth(key, login, cache=cache)
    with pytest.raises(RuntimeError, match="login refused"):
        token_auth.token()
    assert cache.get(key) is None


def test_concurrent_token_calls_log_in_once(key: auth.TokenKey) -> None:
    # Given a slow login and several threads that need a token at the same moment
    threads_count = 8
    start = threading.Barrier(threads_count)
    login = Login(before=lambda: time.sleep(0.05))
    token_auth = TokenAuth(key, login, cache=TokenCache())
    tokens: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        start.wait(timeout=5)
        token = token_auth.token()
        with lock:
            tokens.append(token)

    threads = [threading.Thread(target=worker) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    # Then one login served them all
    assert login.calls == 1
    assert tokens == ["tok-1"] * threads_count


def test_token_auth_repr_names_the_client_only(key: auth.TokenKey) -> None:
    cache = TokenCache()
    token_auth = TokenAuth(key, Login(), cache=cache)
    token_auth.token()
    assert repr(token_auth) == "TokenAuth(client_id='client-1')"
    assert "tok-1" not in repr(token_auth)
    assert key[2] not in repr(token_auth)
    assert "tok-1" not in repr(Token("tok-1", 60))


# --- Secrets -------------------------------------------------------------------------------------


def _redact(connection: Connection, text: str, auth_: httpx.Auth | None = None) -> str:
    return Secrets(connection, auth_ if auth_ is not None else static_auth(connection)).redact(text)


def test_redact_removes_an_api_key() -> None:
    text = f"invalid key [{API_KEY}] in header ApiKey {API_KEY}"
    assert _redact(API_KEY_CONNECTION, text) == "invalid key [***] in header ApiKey ***"


def test_redact_removes_a_basic_password_and_its_base64_pair() -> None:
    text = f"password {PASSWORD}; header Basic {BASIC_PAIR}"
    scrubbed = _redact(BASIC_CONNECTION, text)
    assert scrubbed == "password ***; header Basic ***"


def test_redact_removes_the_basic_pair_without_the_auth_object() -> None:
    # The connection alone knows the pair: a Secrets built without auth still scrubs it
    scrubbed = Secrets(BASIC_CONNECTION, None).redact(f"Basic {BASIC_PAIR} / {PASSWORD}")
    assert scrubbed == "Basic *** / ***"


def test_redact_removes_a_bearer_token() -> None:
    assert _redact(BEARER_CONNECTION, f"token {BEARER} refused") == "token *** refused"


def test_redact_removes_a_client_secret() -> None:
    assert Secrets(_client_credentials(), None).redact(f"secret={CLIENT_SECRET}&x=1") == "secret=***&x=1"


def test_redact_removes_the_token_a_token_auth_holds(key: auth.TokenKey) -> None:
    cache = TokenCache()
    token_auth = TokenAuth(key, lambda: Token("access-token-123", 3600), cache=cache)
    secrets = Secrets(_client_credentials(), token_auth)
    assert secrets.redact("before login: access-token-123") == "before login: access-token-123"

    token_auth.token()

    assert secrets.redact(f"token access-token-123 and secret {CLIENT_SECRET}") == "token *** and secret ***"


def test_redact_still_removes_a_token_inside_its_renewal_margin(
    key: auth.TokenKey, clock: FakeMonotonic
) -> None:
    # Given a token sent with a request just before its renewal margin began
    cache = TokenCache()
    token_auth = TokenAuth(key, lambda: Token("access-token-123", 3600), cache=cache)
    token_auth.token()

    # When the upstream's error, echoing it, is redacted a moment later (the token still valid)
    clock.now += 3600 - TOKEN_RENEW_MARGIN_SECONDS
    scrubbed = Secrets(_client_credentials(), token_auth).redact("bad token access-token-123")

    # Then the token is still scrubbed
    assert "access-token-123" not in scrubbed


def test_redact_removes_a_refused_token_after_a_new_login(key: auth.TokenKey) -> None:
    # Given a token the upstream refused (a 401, then a new login)
    upstream, login = Upstream(accepts=lambda token: token != "tok-1"), Login()
    token_auth = TokenAuth(key, login, cache=TokenCache())
    with upstream.client(token_auth) as client:
        client.get("/q")
    assert upstream.seen == ["tok-1", "tok-2"]

    # When a text echoing either token is redacted
    scrubbed = Secrets(_client_credentials(), token_auth).redact("refused tok-1, now tok-2")

    # Then both are scrubbed: the refused one was sent, and an upstream may echo it
    assert scrubbed == "refused ***, now ***"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see https://user:pw@host.example/x", "see https://***@host.example/x"),
        ("HTTP://admin@host.example", "HTTP://***@host.example"),
        ("two http://a:b@h1 and git+ssh://c:d@h2/", "two http://***@h1 and git+ssh://***@h2/"),
        ("mail me at a@b.example", "mail me at a@b.example"),
        ("https://host.example/path@v2", "https://host.example/path@v2"),
    ],
)
def test_redact_removes_url_userinfo(text: str, expected: str) -> None:
    assert Secrets(API_KEY_CONNECTION, None).redact(text) == expected


def test_redact_replaces_a_secret_that_contains_another_whole() -> None:
    # Given a client secret that is the start of the token the auth holds
    secret = "s3cr3t"
    connection = _client_credentials(secret=secret)
    cache = TokenCache()
    token_auth = TokenAuth(token_key(connection), lambda: Token(f"{secret}-token-xyz", 3600), cache=cache)
    token_auth.token()

    # When a text with both is redacted
    scrubbed = Secrets(connection, token_auth).redact(f"token {secret}-token-xyz, secret {secret}")

    # Then the longer one is replaced whole, leaving no tail of it behind
    assert scrubbed == "token ***, secret ***"


def test_an_empty_secret_is_refused_and_never_scrubs_everything() -> None:
    # A connection cannot hold one (an empty string would match everywhere) ...
    with pytest.raises(InvalidConnection, match="must not be empty"):
        _connection({"type": "api_key", "api_key": ""})
    # ... and a token that is empty is no form to scrub
    assert auth.forms("") == set()


def test_redact_ignores_a_token_auth_with_nothing_cached(key: auth.TokenKey) -> None:
    token_auth = TokenAuth(key, Login(), cache=TokenCache())
    assert token_auth.secrets() == []
    assert Secrets(_client_credentials(), token_auth).redact("plain text") == "plain text"


@pytest.fixture(autouse=True)
def _no_token_left_behind() -> Iterator[None]:
    """The process-wide cache is left as found (empty in a fresh test process)."""
    yield
    TOKENS.cache_clear()
