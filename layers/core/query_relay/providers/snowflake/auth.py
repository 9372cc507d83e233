"""How Snowflake requests carry credentials (docs/upstreams/snowflake.md): ``Authorization: Bearer <token>``
plus ``X-Snowflake-Authorization-Token-Type`` naming what the token is.

- ``key_pair``: a JWT signed here with the user's RSA private key (RS256): ``iss`` is
  ``<ACCOUNT>.<USER>.SHA256:<fingerprint of the public key>``, ``sub`` ``<ACCOUNT>.<USER>``, valid
  for an hour at most. Signing needs no call to Snowflake; the token is cached like an OAuth
  token (query_relay.upstream.auth.TOKENS) and signed again before it expires or when refused.
- ``bearer``: an OAuth access token, or a programmatic access token when the connection says
  ``"token_type": "PROGRAMMATIC_ACCESS_TOKEN"``.

PyJWT and cryptography are imported only here, so only Snowflake jobs pay for them at cold start.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Generator
from typing import TYPE_CHECKING

import httpx

from query_relay.exceptions import InvalidConnection
from query_relay.models import BearerAuth, Connection, KeyPairAuth
from query_relay.upstream.auth import HeaderAuth, Token, TokenAuth, TokenKey

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

TOKEN_TYPE_HEADER = "X-Snowflake-Authorization-Token-Type"  # noqa: S105 - a header name
# Snowflake refuses a JWT valid for more than an hour; a minute less leaves room for clock skew.
JWT_LIFETIME_SECONDS = 3540


class KeyPairJwtAuth(TokenAuth):
    """JWTs signed with the connection's private key, cached and renewed as access tokens are."""

    def __init__(self, connection_name: str, connection: Connection) -> None:
        auth = connection.auth
        if not isinstance(auth, KeyPairAuth):
            raise TypeError("KeyPairJwtAuth takes a connection with key_pair auth")
        self._private_key = _load_private_key(connection_name, auth)
        self._account = account_identifier(auth.account)
        self._user = auth.user.upper()
        digest = hashlib.sha256(auth.private_key.get_secret_value().encode()).hexdigest()
        key: TokenKey = (connection.base_url, f"{self._account}.{self._user}", digest)
        super().__init__(key, self._sign)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        request.headers[TOKEN_TYPE_HEADER] = "KEYPAIR_JWT"
        yield from super().auth_flow(request)

    def _sign(self) -> Token:
        import jwt  # noqa: PLC0415 - Snowflake's jobs only
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        public = self._private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(public).digest()).decode("ascii")
        now = int(time.time())
        qualified = f"{self._account}.{self._user}"
        claims = {
            "iss": f"{qualified}.{fingerprint}",
            "sub": qualified,
            "iat": now,
            "exp": now + JWT_LIFETIME_SECONDS,
        }
        return Token(jwt.encode(claims, self._private_key, algorithm="RS256"), JWT_LIFETIME_SECONDS)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(account={self._account!r}, user={self._user!r})"


class TypedBearerAuth(HeaderAuth):
    """A static bearer token with the token type Snowflake needs to read it."""

    def __init__(self, token: str, token_type: str) -> None:
        super().__init__(f"Bearer {token}")
        self._token_type = token_type

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        request.headers[TOKEN_TYPE_HEADER] = self._token_type
        yield from super().auth_flow(request)


def snowflake_auth(connection_name: str, connection: Connection) -> httpx.Auth:
    auth = connection.auth
    if isinstance(auth, BearerAuth):
        return TypedBearerAuth(auth.token.get_secret_value(), auth.token_type or "OAUTH")
    return KeyPairJwtAuth(connection_name, connection)


def account_identifier(account: str) -> str:
    """The account as a JWT names it, by Snowflake's own key-pair sample: upper case, an account
    locator without its region and cloud (``xy12345.us-east-1`` -> ``XY12345``), a ``.global``
    account name without its suffix after the first ``-``; ``MYORG-MYACCOUNT`` stays as it is."""
    account = account.strip().upper()
    if ".GLOBAL" in account:
        return account.split("-", 1)[0]
    return account.split(".", 1)[0]


def _load_private_key(connection_name: str, auth: KeyPairAuth) -> RSAPrivateKey:
    """The RSA private key from its PEM text; a key that does not load is the connection's fault,
    said without a word of the key itself."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

    passphrase = (
        auth.private_key_passphrase.get_secret_value().encode() if auth.private_key_passphrase else None
    )
    try:
        key = serialization.load_pem_private_key(
            auth.private_key.get_secret_value().encode(), password=passphrase
        )
    except (ValueError, TypeError):
        raise InvalidConnection(
            f"connection {connection_name!r}: auth.private_key is not a PEM private key that loads"
            + (
                " with auth.private_key_passphrase"
                if passphrase
                else " (encrypted keys need auth.private_key_passphrase)"
            )
        ) from None
    except Exception:  # noqa: BLE001 - cryptography raises its own kinds for unsupported keys
        raise InvalidConnection(f"connection {connection_name!r}: auth.private_key cannot be used") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidConnection(f"connection {connection_name!r}: auth.private_key must be an RSA key")
    return key
