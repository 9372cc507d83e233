"""SnowflakeProvider against the Snowflake emulator over real HTTP on loopback: key-pair JWTs, OAuth
and programmatic access tokens, the query model, submit (requestId: one statement however often a
submit is retried; the inline wait), poll, fetch (typed rows of every type, many gzipped
partitions, native), cancel, every error class, and no secret in any message."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from query_relay.exceptions import (
    InvalidConnection,
    InvalidJobSpec,
    UpstreamAuthFailed,
    UpstreamQueryFailed,
    UpstreamRateLimited,
    UpstreamTaskExpired,
)
from query_relay.models import Connection, OutputFormat, parse_connection
from query_relay.providers import NativeResult, SubmitOptions, TabularResult, open_provider, validate_query
from query_relay.providers.snowflake import SnowflakeQuery
from query_relay.providers.snowflake.auth import KeyPairJwtAuth, account_identifier
from query_relay.upstream.auth import TOKENS, Token
from query_relay_local.emulators import warehouse
from query_relay_local.emulators.snowflake import SnowflakeEmulator
from tests.conformance.harness_snowflake import as_landed

ACCOUNT, USER = "xy12345", "relay_user"
OAUTH_TOKEN = "snowflake-oauth-token-3b9e1f"
PAT = "snowflake-pat-7c2d4a0e"


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture(scope="module")
def keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


@pytest.fixture
def emulator(keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]) -> Iterator[SnowflakeEmulator]:
    public = (
        keys[0]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    TOKENS.cache_clear()
    with SnowflakeEmulator(
        account=ACCOUNT, user=USER, public_key_pem=public, oauth_token=OAUTH_TOKEN, pat=PAT
    ) as running:
        yield running
    TOKENS.cache_clear()


def key_pair(emulator: SnowflakeEmulator, key: rsa.RSAPrivateKey, **auth: Any) -> Connection:
    return parse_connection(
        "warehouse",
        {
            "provider": "snowflake",
            "base_url": emulator.base_url,
            "auth": {
                "type": "key_pair",
                "account": f"{ACCOUNT}.us-east-1",
                "user": USER,
                "private_key": _pem(key),
                **auth,
            },
        },
    )


def bearer(emulator: SnowflakeEmulator, token: str, token_type: str | None = None) -> Connection:
    auth = {"type": "bearer", "token": token, **({"token_type": token_type} if token_type else {})}
    return parse_connection(
        "warehouse", {"provider": "snowflake", "base_url": emulator.base_url, "auth": auth}
    )


def options(
    output_format: OutputFormat = "jsonl", wait_seconds: float = 0.0, key: str | None = "exec/job"
) -> SubmitOptions:
    return SubmitOptions(
        output_format=output_format, wait_seconds=wait_seconds, timeout_seconds=600, request_key=key
    )


def query(statement: str, **fields: Any) -> SnowflakeQuery:
    validated = validate_query("snowflake", {"statement": statement, **fields})
    assert isinstance(validated, SnowflakeQuery)
    return validated


def run(connection: Connection, statement: str, output_format: OutputFormat = "jsonl", **fields: Any) -> Any:
    """Submit, wait, fetch: the rows (or, for native, the bytes and the row count)."""
    provider = open_provider("warehouse", connection)
    submit_options = options(output_format, wait_seconds=5, key=f"exec/{uuid.uuid4()}")
    with provider.submit(query(statement, **fields), submit_options) as submission:
        assert submission.finished
        assert submission.upstream_id
    with provider.fetch(submission.upstream_id, submission.state, output_format) as result:
        if isinstance(result, NativeResult):
            return b"".join(result.chunks), result.row_count
        assert isinstance(result, TabularResult)
        return [column.name for column in result.columns], list(result.rows)


# --- auth ----------------------------------------------------------------------------------------


def test_key_pair_jwt_signs_once_for_every_request_of_a_job(
    emulator: SnowflakeEmulator,
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signed: list[str] = []
    sign = KeyPairJwtAuth._sign

    def counting(self: KeyPairJwtAuth) -> Token:
        token = sign(self)
        signed.append(token.value)
        return token

    monkeypatch.setattr(KeyPairJwtAuth, "_sign", counting)
    emulator.config.partition_rows = 1
    names, rows = run(key_pair(emulator, keys[0]), "SELECT id, name FROM employees ORDER BY id LIMIT 3")
    assert names == ["ID", "NAME"]
    assert [row[0] for row in rows] == [1, 2, 3]
    assert len(emulator.requests) >= 4  # submit, status, result, partitions 1 and 2
    assert len(signed) == 1  # cached: one JWT for all of them


def test_a_key_the_user_does_not_have_fails_as_auth(
    emulator: SnowflakeEmulator, keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    provider = open_provider("warehouse", key_pair(emulator, keys[1]))
    with pytest.raises(UpstreamAuthFailed) as raised, provider.submit(query("SELECT 1"), options()):
        pass
    assert "BEGIN PRIVATE KEY" not in str(raised.value)


def test_an_encrypted_key_needs_its_passphrase(
    emulator: SnowflakeEmulator, keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    encrypted = (
        keys[0]
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"p4ss-phrase-91"),
        )
        .decode()
    )
    document = {
        "provider": "snowflake",
        "base_url": emulator.base_url,
        "auth": {"type": "key_pair", "account": ACCOUNT, "user": USER, "private_key": encrypted},
    }
    with pytest.raises(InvalidConnection, match="private_key_passphrase") as raised:
        open_provider("warehouse", parse_connection("warehouse", document))
    assert "ENCRYPTED" not in str(raised.value)
    document["auth"]["private_key_passphrase"] = "p4ss-phrase-91"  # type: ignore[index]
    assert run(parse_connection("warehouse", document), "SELECT 7 AS seven")[1] == [[7]]


def test_oauth_and_programmatic_access_tokens_carry_their_token_type(emulator: SnowflakeEmulator) -> None:
    assert run(bearer(emulator, OAUTH_TOKEN), "SELECT 1 AS one")[1] == [[1]]
    assert run(bearer(emulator, PAT, "PROGRAMMATIC_ACCESS_TOKEN"), "SELECT 2 AS two")[1] == [[2]]
    with (
        pytest.raises(UpstreamAuthFailed),
        open_provider("warehouse", bearer(emulator, PAT)).submit(query("SELECT 1"), options()),
    ):
        pass  # a PAT sent as an OAuth token


def test_token_type_is_refused_by_providers_that_do_not_take_it() -> None:
    document = {
        "provider": "veza",
        "base_url": "https://veza.example.com",
        "auth": {"type": "bearer", "token": "t", "token_type": "OAUTH"},
    }
    with pytest.raises(InvalidConnection, match=r"auth\.token_type is not used by veza"):
        open_provider("v", parse_connection("v", document))


def test_account_identifier_follows_snowflakes_key_pair_rules() -> None:
    assert account_identifier("xy12345.us-east-1") == "XY12345"
    assert account_identifier("myorg-myaccount") == "MYORG-MYACCOUNT"
    assert account_identifier("myorg-myaccount.global") == "MYORG"


# --- the query model -----------------------------------------------------------------------------


def test_the_query_model_refuses_what_snowflake_would_and_what_belongs_to_the_provider() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"statement": " "}, "statement"),
        ({"statement": "SELECT ?", "bindings": {"2": {"type": "TEXT", "value": "x"}}}, "bindings"),
        ({"statement": "SELECT ?", "bindings": {"1": {"type": "STRING", "value": "x"}}}, "bindings.1.type"),
        ({"statement": "SELECT 1", "async": True}, "async"),
        ({"statement": "SELECT 1", "timeout": 604_801}, "timeout"),
    ]
    for bad, field in cases:
        with pytest.raises(InvalidJobSpec, match=rf"query\.{field}"):
            validate_query("snowflake", bad)
    body = query("SELECT 1", schema="PUBLIC", warehouse="WH").request_body()
    assert body == {"statement": "SELECT 1", "schema": "PUBLIC", "warehouse": "WH"}


# --- submit, poll, fetch -------------------------------------------------------------------------


def test_a_retried_submit_gets_the_statement_it_started(emulator: SnowflakeEmulator) -> None:
    provider = open_provider("warehouse", bearer(emulator, OAUTH_TOKEN))
    handles = []
    for _ in range(3):
        with provider.submit(query("SELECT 1 AS one"), options(key="arn:exec/job-1")) as submission:
            handles.append(submission.upstream_id)
    assert len(set(handles)) == 1
    assert emulator.statements_started == 1
    with provider.submit(query("SELECT 1 AS one"), options(key="arn:exec/job-2")) as submission:
        assert submission.upstream_id not in handles
    assert emulator.statements_started == 2


def test_a_slow_statement_is_polled_until_it_finishes(emulator: SnowflakeEmulator) -> None:
    emulator.config.query_seconds = 0.6
    provider = open_provider("warehouse", bearer(emulator, OAUTH_TOKEN))
    with provider.submit(query("SELECT 1 AS one"), options(wait_seconds=0)) as submission:
        assert not submission.finished
        assert submission.upstream_id
    assert not provider.poll(submission.upstream_id, submission.state, 0).finished
    emulator.config.query_seconds = 0
    time.sleep(0.7)
    assert provider.poll(submission.upstream_id, submission.state, 0).finished


def test_every_type_lands_typed(emulator: SnowflakeEmulator) -> None:
    names, rows = run(bearer(emulator, OAUTH_TOKEN), "SELECT * FROM all_types ORDER BY id")
    expected = warehouse.execute("SELECT * FROM all_types ORDER BY id")
    assert names == [column.name.upper() for column in expected.columns]
    landed = [
        [as_landed(column, value) for column, value in zip(expected.columns, row, strict=True)]
        for row in expected.rows
    ]
    assert nan_as_text(rows) == nan_as_text(landed)


def nan_as_text(rows: list[list[Any]]) -> list[list[Any]]:
    """NaN never equals itself: spelt "nan" on both sides of a comparison."""
    return [
        ["nan" if isinstance(value, float) and math.isnan(value) else value for value in row] for row in rows
    ]


def test_a_result_of_40_gzipped_partitions_lands_in_order_every_row_typed(
    emulator: SnowflakeEmulator,
) -> None:
    emulator.config.partition_rows = 125
    names, rows = run(
        bearer(emulator, OAUTH_TOKEN),
        "SELECT n, square, label, ratio FROM numbers WHERE n <= 5000 ORDER BY n",
    )
    assert names == ["N", "SQUARE", "LABEL", "RATIO"]
    assert [row[0] for row in rows] == list(range(1, 5001))
    assert rows[99] == [100, 10000, rows[99][2], pytest.approx(100 / 7)]
    partitions = [request.query["partition"] for request in emulator.requests if "partition" in request.query]
    assert partitions == [str(number) for number in range(1, 40)]


def test_native_stores_each_partition_as_received_one_a_line(emulator: SnowflakeEmulator) -> None:
    emulator.config.partition_rows = 2
    data, count = run(bearer(emulator, OAUTH_TOKEN), "SELECT id FROM employees ORDER BY id LIMIT 5", "native")
    documents = [json.loads(line) for line in data.splitlines()]
    assert count == 5
    assert len(documents) == 3
    assert documents[0]["resultSetMetaData"]["numRows"] == 5
    assert [row for document in documents for row in document["data"]] == [[str(n)] for n in range(1, 6)]


# --- failures ------------------------------------------------------------------------------------


def test_a_statement_snowflake_refuses_fails_with_its_sql_state(emulator: SnowflakeEmulator) -> None:
    provider = open_provider("warehouse", bearer(emulator, OAUTH_TOKEN))
    with (
        pytest.raises(UpstreamQueryFailed, match=r"42S02") as raised,
        provider.submit(query("SELECT * FROM nowhere"), options()),
    ):
        pass
    assert OAUTH_TOKEN not in str(raised.value)


def test_a_statement_that_fails_while_running_fails_on_poll(emulator: SnowflakeEmulator) -> None:
    emulator.config.query_seconds, emulator.config.fail_after_seconds = 5, 0.1
    provider = open_provider("warehouse", bearer(emulator, OAUTH_TOKEN))
    with provider.submit(query("SELECT 1"), options()) as submission:
        assert submission.upstream_id
    time.sleep(0.2)
    with pytest.raises(UpstreamQueryFailed, match="22000"):
        provider.poll(submission.upstream_id, submission.state, 0)


def test_an_unknown_statement_has_expired_and_a_rate_limit_is_a_wait(emulator: SnowflakeEmulator) -> None:
    provider = open_provider("warehouse", bearer(emulator, OAUTH_TOKEN))
    with pytest.raises(UpstreamTaskExpired):
        provider.poll("01b2c3d4-0000-1111-0000-000000000001", {}, 0)
    emulator.fail_next("status", 429, retry_after=7)
    status = provider.poll("01b2c3d4-0000-1111-0000-000000000001", {}, 0)
    assert not status.finished
    assert status.retry_after_seconds == 7
    emulator.fail_next("submit", 429)
    with pytest.raises(UpstreamRateLimited), provider.submit(query("SELECT 1"), options()):
        pass


def test_cancel_stops_a_running_statement_and_is_quiet_about_an_ended_one(
    emulator: SnowflakeEmulator,
) -> None:
    emulator.config.query_seconds = 30
    provider = open_provider("warehouse", bearer(emulator, OAUTH_TOKEN))
    with provider.submit(query("SELECT 1"), options()) as submission:
        assert submission.upstream_id
    assert provider.cancel(submission.upstream_id, submission.state)
    assert emulator.statement_states()[submission.upstream_id] == "canceled"
    assert not provider.cancel("01b2c3d4-0000-1111-0000-000000000009", {})
