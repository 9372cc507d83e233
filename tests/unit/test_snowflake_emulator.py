"""The Snowflake SQL API v2 emulator over real HTTP: key-pair JWT, OAuth and PAT auth, content
negotiation, the statement life (async and sync), every value encoding, bindings, requestId
idempotency, partitions (gzip, Link, sizes), cancel, SQL errors, expiry, injected faults and the
control API."""

from __future__ import annotations

import base64
import gzip
import hashlib
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from query_relay_local.emulators.snowflake import STATEMENTS_PATH, SnowflakeEmulator

ACCOUNT, USER = "myorg-acct1", "relay_user"
OAUTH_TOKEN = "oauth-token-3c7f1e"
PAT = "pat-secret-9d2b44"
JSON = {"Content-Type": "application/json", "Accept": "application/json"}


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def emulator(key: rsa.RSAPrivateKey) -> Iterator[SnowflakeEmulator]:
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with SnowflakeEmulator(
        account=ACCOUNT, user=USER, public_key_pem=public_pem, oauth_token=OAUTH_TOKEN, pat=PAT
    ) as running:
        yield running


@pytest.fixture
def auth(key: rsa.RSAPrivateKey) -> dict[str, str]:
    return jwt_headers(make_jwt(key))


def fingerprint(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode()


def make_jwt(
    key: rsa.RSAPrivateKey,
    *,
    account: str = ACCOUNT.upper(),
    user: str = USER.upper(),
    fingerprint_of: rsa.RSAPrivateKey | None = None,
    lifetime: int = 3540,
    issued_ago: int = 0,
) -> str:
    issued = int(time.time()) - issued_ago
    claims = {
        "iss": f"{account}.{user}.{fingerprint(fingerprint_of or key)}",
        "sub": f"{account}.{user}",
        "iat": issued,
        "exp": issued + lifetime,
    }
    return jwt.encode(claims, key, algorithm="RS256")


def jwt_headers(token: str, token_type: str | None = "KEYPAIR_JWT") -> dict[str, str]:
    headers = {**JSON, "Authorization": f"Bearer {token}", "User-Agent": "query-relay-tests/1.0"}
    if token_type is not None:
        headers["X-Snowflake-Authorization-Token-Type"] = token_type
    return headers


def submit(
    emulator: SnowflakeEmulator,
    headers: dict[str, str],
    statement: str = "SELECT 1 AS one",
    *,
    asynchronous: bool = True,
    params: dict[str, str] | None = None,
    **body: Any,
) -> httpx.Response:
    query = {"async": "true"} if asynchronous else {}
    return httpx.post(
        f"{emulator.base_url}{STATEMENTS_PATH}",
        params={**query, **(params or {})},
        json={"statement": statement, "timeout": 60, "warehouse": "RELAY_WH", **body},
        headers=headers,
    )


def get(emulator: SnowflakeEmulator, headers: dict[str, str], url: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{emulator.base_url}{url}", params=params, headers=headers)


def result_of(
    emulator: SnowflakeEmulator, headers: dict[str, str], statement: str, **body: Any
) -> dict[str, Any]:
    """The ResultSet of a statement run to completion (the emulator answers at once by default)."""
    response = submit(emulator, headers, statement, asynchronous=False, **body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def wait_done(emulator: SnowflakeEmulator, headers: dict[str, str], url: str) -> httpx.Response:
    deadline = time.monotonic() + 10
    while True:
        response = get(emulator, headers, url)
        if response.status_code != 202 or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


# --- auth ----------------------------------------------------------------------------------------------


def test_a_key_pair_jwt_signed_by_the_registered_key_is_accepted(
    emulator: SnowflakeEmulator, auth: dict[str, str]
) -> None:
    answer = result_of(emulator, auth, "SELECT 1 AS one")
    assert answer["data"] == [["1"]]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong key", "signature"),
        ("wrong fingerprint", "fingerprint"),
        ("expired", "expired"),
        ("exp too far", "one hour"),
        ("lower-case account", "sub"),
        ("another user", "sub"),
    ],
)
def test_a_bad_key_pair_jwt_is_refused_without_quoting_it(
    emulator: SnowflakeEmulator,
    key: rsa.RSAPrivateKey,
    other_key: rsa.RSAPrivateKey,
    case: str,
    reason: str,
) -> None:
    token = {
        "wrong key": lambda: make_jwt(other_key, fingerprint_of=key),
        "wrong fingerprint": lambda: make_jwt(key, fingerprint_of=other_key),
        "expired": lambda: make_jwt(key, issued_ago=3600, lifetime=3000),
        "exp too far": lambda: make_jwt(key, lifetime=7200),
        "lower-case account": lambda: make_jwt(key, account=ACCOUNT),
        "another user": lambda: make_jwt(key, user="SOMEONE_ELSE"),
    }[case]()
    response = submit(emulator, jwt_headers(token))
    assert response.status_code == 401
    body = response.json()
    assert body["code"] == "390144"
    assert body["message"].startswith("JWT token is invalid.")
    assert reason in body["message"]
    assert token not in response.text
    assert token.split(".")[2] not in response.text  # not even the signature
    assert emulator.statements_started == 0


def test_without_a_token_type_the_token_is_taken_as_oauth(
    emulator: SnowflakeEmulator, key: rsa.RSAPrivateKey
) -> None:
    as_oauth = submit(emulator, jwt_headers(OAUTH_TOKEN, token_type=None))
    jwt_as_oauth = submit(emulator, jwt_headers(make_jwt(key), token_type=None))
    assert as_oauth.status_code == 202
    assert (jwt_as_oauth.status_code, jwt_as_oauth.json()["code"]) == (401, "390303")


@pytest.mark.parametrize(
    ("token", "token_type", "status"),
    [
        (OAUTH_TOKEN, "OAUTH", 202),
        (PAT, "PROGRAMMATIC_ACCESS_TOKEN", 202),
        (PAT, "OAUTH", 401),
        (OAUTH_TOKEN, "PROGRAMMATIC_ACCESS_TOKEN", 401),
        ("wrong", "OAUTH", 401),
        (OAUTH_TOKEN, "SOMETHING_ELSE", 401),
    ],
)
def test_oauth_tokens_and_pats_are_compared_with_the_configured_ones(
    emulator: SnowflakeEmulator, token: str, token_type: str, status: int
) -> None:
    response = submit(emulator, jwt_headers(token, token_type))
    assert response.status_code == status
    if status == 401:
        assert token not in response.text


@pytest.mark.parametrize("authorization", [None, "Basic dXNlcjpwYXNz", "Bearer"])
def test_a_call_without_a_bearer_token_is_refused(
    emulator: SnowflakeEmulator, authorization: str | None
) -> None:
    headers = dict(JSON) if authorization is None else {**JSON, "Authorization": authorization}
    response = submit(emulator, headers)
    assert (response.status_code, response.json()["code"]) == (401, "390101")


def test_every_call_is_authenticated(emulator: SnowflakeEmulator, auth: dict[str, str]) -> None:
    handle = submit(emulator, auth).json()["statementHandle"]
    bad = jwt_headers("not-a-token")
    assert get(emulator, bad, f"{STATEMENTS_PATH}/{handle}").status_code == 401
    assert get(emulator, bad, f"{STATEMENTS_PATH}/{handle}", partition=0).status_code == 401
    assert httpx.post(f"{emulator.base_url}{STATEMENTS_PATH}/{handle}/cancel", headers=bad).status_code == 401


def test_without_credentials_configured_any_caller_is_accepted() -> None:
    with SnowflakeEmulator() as open_emulator:
        response = submit(open_emulator, {"Content-Type": "application/json"}, asynchronous=False)
    assert response.status_code == 200
    assert response.json()["data"] == [["1"]]


# --- content negotiation and routing ---------------------------------------------------------------


def test_a_body_that_is_not_json_is_415_but_no_content_type_is_taken_as_json(
    emulator: SnowflakeEmulator, auth: dict[str, str]
) -> None:
    url = f"{emulator.base_url}{STATEMENTS_PATH}?async=true"
    as_text = httpx.post(
        url, content=b'{"statement": "SELECT 1"}', headers={**auth, "Content-Type": "text/plain"}
    )
    without = {name: value for name, value in auth.items() if name != "Content-Type"}
    untyped = httpx.post(url, content=b'{"statement": "SELECT 1"}', headers=without)
    assert as_text.status_code == 415
    assert untyped.status_code == 202


@pytest.mark.parametrize(("accept", "status"), [("text/csv", 406), ("*/*", 202), ("application/*", 202)])
def test_the_accept_header_must_allow_json(
    emulator: SnowflakeEmulator, auth: dict[str, str], accept: str, status: int
) -> None:
    assert submit(emulator, {**auth, "Accept": accept}).status_code == status


@pytest.mark.parametrize("body", [b"not json", b"[1]", b'{"timeout": 5}', b'{"statement": "  "}'])
def test_a_malformed_submit_body_is_400(
    emulator: SnowflakeEmulator, auth: dict[str, str], body: bytes
) -> None:
    response = httpx.post(f"{emulator.base_url}{STATEMENTS_PATH}?async=true", content=body, headers=auth)
    assert response.status_code == 400
    assert emulator.statements_started == 0


def test_an_unknown_path_is_404_and_a_wrong_method_405(
    emulator: SnowflakeEmulator, auth: dict[str, str]
) -> None:
    assert get(emulator, auth, "/api/v2/nothing").status_code == 404
    assert get(emulator, auth, STATEMENTS_PATH).status_code == 405


# --- the statement life ------------------------------------------------------------------------------


def test_an_async_statement_runs_then_answers_its_result_set(
    emulator: SnowflakeEmulator, auth: dict[str, str]
) -> None:
    emulator.config.query_seconds = 0.4
    submitted = submit(emulator, auth, "SELECT id, name FROM employees WHERE id <= 3 ORDER BY id")
    assert submitted.status_code == 202
    status = submitted.json()
    assert status["code"] == "333334"
    assert status["message"].startswith("Asynchronous execution in progress")
    assert status["sqlState"] == "00000"
    assert status["statementStatusUrl"] == f"{STATEMENTS_PATH}/{status['statementHandle']}"
    assert isinstance(status["createdOn"], int)

    running = get(emulator, auth, status["statementStatusUrl"])
    assert (running.status_code, running.json()["code"]) == (202, "333334")
    assert emulator.statement_states() == {status["statementHandle"]: "running"}

    done = wait_done(emulator, auth, status["statementStatusUrl"])
    assert done.status_code == 200
    answer = done.json()
    assert answer["code"] == "090001"
    assert answer["message"] == "Statement executed successfully."
    assert answer["statementHandle"] == status["statementHandle"]
    meta = answer["resultSetMetaData"]
    assert meta["format"] == "jsonv2"
    assert meta["numRows"] == 3
    assert [column["name"] for column in meta["rowType"]] == ["ID", "NAME"]
    assert meta["partitionInfo"][0]["rowCount"] == 3
    assert answer["data"] == [["1", "Grace Hopper"], ["2", "Alan Turing"], ["3", "Edsger Dijkstra"]]
    assert emulator.submitted[0]["warehouse"] == "RELAY_WH"


def test_a_synchronous_submit_waits_for_the_result_up_to_its_limit(
    emulator: SnowflakeEmulator, auth: dict[str, str]
) -> None:
    emulator.config.query_seconds = 0.3
    answered = submit(emulator, auth, asynchronous=False)
    emulator.config.query_seconds, emulator.config.sync_wait_seconds = 5.0, 0.2
    started = time.monotonic()
    still_running = submit(emulator, auth, asynchronous=False)
    assert answered.status_code == 200
    assert still_running.status_code == 202
    assert 0.2 <= time.monotonic() - started < 2


def test_an_unknown_handle_is_404_000709(emulator: SnowflakeEmulator, auth: dict[str, str]) -> None:
    handle = str(uuid.uuid4())
    response = get(emulator, auth, f"{STATEMENTS_PATH}/{handle}")
    assert response.status_code == 404
    assert response.json()["code"] == "000709"
    assert handle in response.json()["message"]


def test_a_statement_is_forgotten_after_its_ttl(emulator: SnowflakeEmulator, auth: dict[str, str]) -> None:
    url = submit(emulator, auth).json()["statementStatusUrl"]
    assert get(emulator, auth, url).status_code == 200
    emulator.config.statement_ttl_seconds = 0.0
    assert get(emulator, auth, url).status_code == 404
    assert list(emulator.statement_states().values()) == ["expired"]


def test_a_statement_can_fail_while_running(emulator: SnowflakeEmulator, auth: dict[str, str]) -> None:
    emulator.config.query_seconds, emulator.config.fail_after_seconds = 5.0, 0.1
    url = submit(emulator, auth).json()["statementStatusUrl"]
    failed = wait_done(emulator, auth, url)
    assert failed.status_code == 422
    body = failed.json()
    assert (body["code"], body["sqlState"]) == ("100097", "22000")
    assert set(body) == {"code", "sqlState", "message", "statementHandle", "createdOn", "statementStatusUrl"}


def test_a_statement_longer_than_its_timeout_is_canceled_by_it(
    emulator: SnowflakeEmulator, auth: dict[str, str]
) -> None:
    emulator.config.query_seconds = 1.5
    url = submit(emulator, auth, timeout=1).json()["statementStatusUrl"]
    failed = wait_done(emulator, auth, url)
    assert failed.status_code == 422
    assert (failed.json()["code"], failed.json()["sqlState"]) == ("000630", "57014")


# --- values ------------------------------------------------------------------------------------------

ALL_TYPES_DATA = [
    [
        "1",
        "42",
        "123.4500",
        "1.5",
        "plain text",
        "true",
        "19849",
        "45296.123000000",
        "1714998896.123456000",
        "1714991696.500000000 1560",
        "0001FEFF",
        '{\n  "a": 1,\n  "b": [\n    1,\n    2,\n    {\n      "c": null\n    }\n  ],\n'
        '  "d": {\n    "e": "f"\n  }\n}',
    ],
    [
        "2",
        "-9223372036854775808",
        "-98765432.1000",
        "-0.000123",
        "unicode: héllo wörld ✓ 日本語 🎉",
        "false",
        "-165",
        "0.000000000",
        "-1.500000000",
        "-315599400.000000000 1110",
        "",
        '[\n  1,\n  "two",\n  3.5,\n  true,\n  null,\n  [],\n  {}\n]',
    ],
    [
        "3",
        "9223372036854775807",
        "0.0001",
        "inf",
        "quotes ' \" and\nnew\tlines, commas; and \\ backslash",
        "true",
        "2932896",
        "86399.999999000",
        "2147483648.000000000",
        "1709251199.999999000 1440",
        bytes(range(256)).hex().upper(),
        '{\n  "nested": {\n    "deeper": {\n      "deepest": [\n        "x",\n        {\n'
        '          "y": 1.25\n        }\n      ]\n    }\n  },\n  "empty": ""\n}',
    ],
    ["4", "0", "-0.5000", "NaN", "", "false", "0", None, None, None, None, "{}"],
    ["5", None, None, None, None, None, None, None, None, None, None, None],
]


def test_every_value_is_a_string_in_snowflakes_encoding_or_null(
    emulator: SnowflakeEmulator, auth: dict[str, str]
) -> None:
    answer = result_of(emulator, auth, "SELECT * FROM all_types ORDER BY id")
    assert answer["data"] == ALL_TYPES_DATA
    row_type = {column["name"]: column for column in answer["resultSetMetaData"]["rowType"]}
    assert {name: column["type"] for name, column in row_type.items()} == {
        "ID": "fixed",
        "C_INTEGER": "fixed",
        "C_DECIMAL": "fixed",
        "C_DOUBLE": "real",
        "C_STRING": "text",
        "C_BOOLEAN": "boolean",
        "C_DATE": "date",
        "C_TIME": "time",
        "C_TIMESTAMP": "timestamp_ntz",
        "C_TIMESTAMP_TZ": "timestamp_tz",
        "C_BINARY": "binary",
        "C_JSON": "variant",
    }
    assert (row_type["C_DECIMAL"]["precision"], row_type["C_DECIMAL"]["scale"]) == (12, 4)
    assert (row_type["C_INTEGER"]["precision"], row_type["C_INTEGER"]["scale"]) == (38, 0)
    assert row_type["C_TIMESTAMP_TZ"]["scale"] == 9
    assert row_type["ID"]["nullable"] is False
    assert row_type["C_STRING"]["nullable"] is True
    expected_keys = {
        "name",
        "database",
        "schema",
        "table",
        "type",
        "length",
        "precision",
        "scale",
        "nullable",
    }
    assert all(expected_keys | {"byteLength"} <= set(column) for column in row_type.values())


def test_nullable_false_writes_null_as_the_string_null(
    emulator: SnowflakeEmulator, auth: dict[str, str]
) -> None:
    response = submit(
        emulator, auth, "SELECT c_integer FROM all_types WHERE id = 5", params={"nullable": "false"}
    )
    answer = wait_done(emulator, auth, response.json()["statementStatusUrl"]).json()
    assert answer["data"] == [["null"]]
    assert answer["resultSetMetaData"]["nullable"] is False


def test_type_and_column_name_case_are_variants(emulator: SnowflakeEmulator, auth: dict[str, str]) -> None:
    emulator.config.uppercase_type_names = True
    emulator.config.uppercase_column_names = False
    row_type = result_of(emulator, auth, "SELECT id, c_json AS Doc FROM all_types")["resultSetMetaData"][
        "rowType"
    ]
    assert [(column["name"], column["type"]) for column in row_type] == [("id", "FIXED"), ("Doc", "VARIANT")]


# --- bindings ----------------------------------------------------------------------------------------


def test_bindings_of_every_type_become_typed_values(
    emulator: SnowflakeEmulator, auth: dict[str, str]
) -> None:
    bindings = {
        "1": {"type": "FIXED", "value": "42"},
        "2": {"type": "FIXED", "value": "-1.50"},
        "3": {"type": "REAL", "value": "2.5"},
        "4": {"type": "TEXT", "value": "héllo"},
        "5": {"type": "BOOLEAN", "value": "true"},
        "6": {"type": "DATE", "value": "2024-05-06"},
        "7": {"type": "DATE", "value": "86400000"},
        "8": {"type": "TIME", "value": "12:34:56.123"},
        "9": {"type": "TIMESTAMP_NTZ", "value": "1715000000123000000"},
        "10": {"type": "TIMESTAMP_TZ", "value": "1715000000000000000 1500"},
        "11": {"type": "BINARY", "value": "00ff"},
        "12": {"type": "TEXT", "value": None},
    }
    items = ", ".join(f"? AS v{n}" for n in range(1, 13))
    answer = result_of(emulator, auth, f"SELECT {items}", bindings=bindings)
    assert answer["data"] == [
        [
            "42",
            "-1.50",
            "2.5",
            "héllo",
            "true",
            "19849",
            "1",
            "45296.123000000",
            "1715000000.123000000",
            "1715000000.000000000 1500",
            "00FF",
            None,
        ]
    ]


def test_a_binding_filters_rows(emulator: SnowflakeEmulator, auth: dict[str, str]) -> None:
    bindings = {"1": {"type": "FIXED", "value": "3"}}
    answer = result_of(
        emulator, auth, "SELECT id FROM employees WHERE id <= ? ORDER BY id", bindings=bindings
    )
    assert answer["data"] == [["1"], ["2"], ["3"]]


def test_named_bindings_bind_named_markers(emulator: SnowflakeEmulator, auth: dict[str, str]) -> None:
    answer = result_of(
        emulator, auth, "SELECT :who AS who", bindings={"who": {"type": "TEXT", "value": "ada"}}
    )
    assert answer["data"] == [["ada"]]


@pytest.mark.parametrize(
    ("bindings", "sql_state"),
    [
        ({"1": {"type": "FIXED", "value": "abc"}}, "22018"),
        ({"1": {"type": "DATE", "value": "yesterday"}}, "22018"),
        ({"1": {"type": "GEOGRAPHY", "value": "POINT(1 2)"}}, "22018"),
        ({"2": {"type": "FIXED", "value": "1"}}, "07002"),
        ({}, "07002"),
    ],
)
def test_a_bad_binding_is_a_422_with_its_sql_state(
    emulator: SnowflakeEmulator, auth: dict[str, str], bindings: dict[str, Any], sql_state: str
) -> None:
    response = submit(emulator, auth, "SELECT ? AS v", bindings=bindings)
    assert response.status_code == 422
    assert response.json()["sqlState"] == sql_state


# --- requestId ---------------------------------------------------------------------------------------


def test_a_resubmit_with_the_same_request_id_starts_no_second_statement(
    emulator: SnowflakeEmulator, auth: dict[str, str]
) -> None:
    emulator.config.query_seconds = 5.0
    request_id = str(uuid.uuid4())
    first = submit(emulator, auth, params={"requestId": request_id})
    retried = submit(emulator, auth, params={"requestId": request_id, "retry": "true"})
    other = submit(emulator, auth, params={"requestId": str(uuid.uuid4())})
    assert first.status_code == retried.status_code == 202
    assert retried.json()["statementHandle"] == first.json()["statementHandle"]
    assert other.json()["statementHandle"] != first.json()["statementHandle"]
    assert emulator.statements_started == 2
    assert len(emulator.submitted) == 3


def test_two_submits_of_one_request_id_at_once_start_one_statement(
    emulator: SnowflakeEmulator, auth: dict[str, str]
) -> None:
    emulator.config.numbers_rows = 200_000  # the filter takes a moment: both submits are inside it
    request_id = str(uuid.uuid4())
    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(
            pool.map(
                lambda _: submit(
                    emulator, auth, "SELECT n FROM numbers WHERE n < 0", params={"requestId": request_id}
                ),
                range(2),
            )
        )
    assert {answer.json()["statementHandle"] for answer in answers} == set(emulator.statement_states())
    assert emulator.statements_started == 1


# --- partitions --------------------------------------------------------------------------------------


def numbers_data(count: int) -> list[list[str]]:
    return [[str(n), str(n * n), f"number {n:07d}", repr(n / 7)] for n in range(1, count + 1)]


def test_a_large_result_comes_in_partitions_each_gzipped(
    emulator: SnowflakeEmulator, auth: dict[str, str]
) -> None:
    emulator.config.numbers_rows, emulator.config.partition_rows = 5000, 125
    answer = result_of(emulator, auth, "SELECT * FROM numbers")
    meta = answer["resultSetMetaData"]
    assert meta["numRows"] == 5000
    assert len(meta["partitionInfo"]) == 40
    assert all(part["rowCount"] == 125 for part in meta["partitionInfo"])
    url = answer["statementStatusUrl"]

    rows = list(answer["data"])
    with httpx.Client(base_url=emulator.base_url, headers=auth) as client:
        for index in range(1, 40):
            with client.stream("GET", url, params={"partition": index}) as response:
                assert response.status_code == 200
                assert response.headers["Content-Encoding"] == "gzip"
                raw = b"".join(response.iter_raw())
            assert raw[:2] == b"\x1f\x8b"  # gzip's magic number: the body really is compressed
            body = httpx.Response(200, content=gzip.decompress(raw)).json()
            assert set(body) == {"data"}
            assert len(raw) == meta["partitionInfo"][index]["compressedSize"]
            assert len(gzip.decompress(raw)) == meta["partitionInfo"][index]["uncompressedSize"]
            rows.extend(body["data"])
    assert rows == numbers_data(5000)


def test_partitions_can_be_read_in_any_order_and_link_to_each_other(
    emulator: SnowflakeEmulator, auth: dict[str, str]
) -> None:
    emulator.config.numbers_rows, emulator.config.partition_rows = 30, 10
    url = result_of(emulator, auth, "SELECT n FROM numbers")["statementStatusUrl"]
    last = get(emulator, auth, url, partition=2)
    middle = get(emulator, auth, url, partition=1)
    first = get(emulator, auth, url, partition=0)
    assert [row[0] for row in last.json()["data"]] == [str(n) for n in range(21, 31)]
    assert [row[0] for row in middle.json()["data"]] == [str(n) for n in range(11, 21)]
    assert first.json()["code"] == "090001"  # partition 0 is the whole ResultSet
    assert middle.headers["Link"] == (
        f'<{url}?partition=0>; rel="first",<{url}?partition=0>; rel="prev",'
        f'<{url}?partition=2>; rel="next",<{url}?partition=2>; rel="last"'
    )


def test_a_partition_is_plain_json_when_the_client_does_not_take_gzip(
    emulator: SnowflakeEmulator, auth: dict[str, str]
) -> None:
    emulator.config.numbers_rows, emulator.config.partition_rows = 20, 10
    url = result_of(emulator, auth, "SELECT n FROM numbers")["statementStatusUrl"]
    plain = get(emulator, {**auth, "Accept-Encoding": "identity"}, url, partition=1)
    emulator.config.gzip_partitions = "always"
    forced = httpx.get(
        f"{emulator.base_url}{url}?partition=1", headers={**auth, "Accept-Encoding": "identity"}
    )
    assert "Content-Encoding" not in plain.headers
    assert plain.json()["data"][0] == ["11"]
    assert forced.headers["Content-Encoding"] == "gzip"


@pytest.mark.parametrize("status", [400, 422])
def test_a_partition_out_of_range_is_refused(
    emulator: SnowflakeEmulator, auth: dict[str, str], status: int
) -> None:
    emulator.config.partition_out_of_range_status = status
    url = result_of(emulator, auth, "SELECT 1 AS one")["statementStatusUrl"]
    assert get(emulator, auth, url, partition=1).status_code == status
    assert get(emulator, auth, url, partition=-1).status_code == status
    assert get(emulator, auth, url, partition="x").status_code == 400


def test_partition_sizes_of_a_huge_result_are_estimated_quickly(
    emulator: SnowflakeEmulator, auth: dict[str, str]
) -> None:
    emulator.config.numbers_rows, emulator.config.partition_rows = 1_000_000, 100_000
    started = time.monotonic()
    answer = result_of(emulator, auth, "SELECT * FROM numbers")
    info = answer["resultSetMetaData"]["partitionInfo"]
    assert len(info) == 10
    assert time.monotonic() - started < 5
    measured = len(
        get(
            emulator, {**auth, "Accept-Encoding": "identity"}, answer["statementStatusUrl"], partition=9
        ).content
    )
    assert abs(info[9]["uncompressedSize"] - measured) / measured < 0.1


# --- cancel ------------------------------------------------------------------------------------------


def test_cancel_stops_a_running_statement(emulator: SnowflakeEmulator, auth: dict[str, str]) -> None:
    emulator.config.query_seconds = 5.0
    status = submit(emulator, auth).json()
    canceled = httpx.post(f"{emulator.base_url}{status['statementStatusUrl']}/cancel", headers=auth)
    assert canceled.status_code == 200
    assert canceled.json()["code"] == "000604"
    assert canceled.json()["message"] == "SQL execution canceled"
    after = get(emulator, auth, status["statementStatusUrl"])
    assert after.status_code == 422
    assert (after.json()["code"], after.json()["sqlState"]) == ("000604", "57014")
    assert emulator.statement_states() == {status["statementHandle"]: "canceled"}


def test_cancel_of_a_finished_statement_leaves_its_result(
    emulator: SnowflakeEmulator, auth: dict[str, str]
) -> None:
    url = submit(emulator, auth).json()["statementStatusUrl"]
    refused = httpx.post(f"{emulator.base_url}{url}/cancel", headers=auth)
    assert refused.status_code == 422
    assert refused.json()["code"] == "000605"
    assert get(emulator, auth, url).status_code == 200
    emulator.config.cancel_ended_status = 200
    assert httpx.post(f"{emulator.base_url}{url}/cancel", headers=auth).status_code == 200
    assert get(emulator, auth, url).status_code == 200


def test_cancel_of_a_canceled_statement_answers_its_failure_status(
    emulator: SnowflakeEmulator, auth: dict[str, str]
) -> None:
    emulator.config.query_seconds = 30
    url = submit(emulator, auth).json()["statementStatusUrl"]
    assert httpx.post(f"{emulator.base_url}{url}/cancel", headers=auth).status_code == 200
    again = httpx.post(f"{emulator.base_url}{url}/cancel", headers=auth)
    assert again.status_code == 422
    assert again.json()["code"] == "000604"


def test_cancel_of_an_unknown_statement_is_404(emulator: SnowflakeEmulator, auth: dict[str, str]) -> None:
    response = httpx.post(f"{emulator.base_url}{STATEMENTS_PATH}/{uuid.uuid4()}/cancel", headers=auth)
    assert (response.status_code, response.json()["code"]) == (404, "000709")


# --- SQL errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "sql_state"),
    [("SELEC 1", "42000"), ("SELECT * FROM nope", "42S02"), ("SELECT who FROM employees", "42000")],
)
def test_a_statement_the_warehouse_refuses_is_a_422_with_its_sql_state(
    emulator: SnowflakeEmulator, auth: dict[str, str], statement: str, sql_state: str
) -> None:
    response = submit(emulator, auth, statement)
    assert response.status_code == 422
    body = response.json()
    assert body["sqlState"] == sql_state
    assert body["code"]
    assert body["message"]
    assert set(body) == {"code", "sqlState", "message", "statementHandle", "createdOn", "statementStatusUrl"}
    assert get(emulator, auth, body["statementStatusUrl"]).status_code == 422


def test_a_refused_statement_can_fail_late_instead(emulator: SnowflakeEmulator, auth: dict[str, str]) -> None:
    emulator.config.sql_errors_at_submit = False
    emulator.config.query_seconds = 0.2
    submitted = submit(emulator, auth, "SELECT * FROM nope")
    assert submitted.status_code == 202
    failed = wait_done(emulator, auth, submitted.json()["statementStatusUrl"])
    assert (failed.status_code, failed.json()["sqlState"]) == (422, "42S02")


# --- faults and the control API ----------------------------------------------------------------------


def test_an_injected_status_answers_snowflakes_envelope(
    emulator: SnowflakeEmulator, auth: dict[str, str]
) -> None:
    url = submit(emulator, auth).json()["statementStatusUrl"]
    emulator.fail_next("status", 429, retry_after=3)
    emulator.fail_next("status", 503)
    emulator.fail_next("status", 502)
    limited, unavailable, gateway, fine = (get(emulator, auth, url) for _ in range(4))
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "3")
    assert set(limited.json()) == {"code", "message"}
    assert unavailable.status_code == 503
    assert gateway.status_code == 502
    assert gateway.headers["Content-Type"].startswith("text/html")
    assert fine.status_code == 200


def test_a_partition_fault_leaves_status_calls_alone(
    emulator: SnowflakeEmulator, auth: dict[str, str]
) -> None:
    emulator.config.numbers_rows, emulator.config.partition_rows = 20, 10
    url = result_of(emulator, auth, "SELECT n FROM numbers")["statementStatusUrl"]
    emulator.fail_next("partition", 500)
    assert get(emulator, auth, url).status_code == 200
    assert get(emulator, auth, url, partition=1).status_code == 500
    assert get(emulator, auth, url, partition=1).status_code == 200


def test_a_submit_whose_answer_is_lost_is_retried_with_its_request_id(
    emulator: SnowflakeEmulator, auth: dict[str, str]
) -> None:
    request_id = str(uuid.uuid4())
    emulator.fail_next("submit", truncate_after_bytes=10)  # the statement starts; its answer is cut
    with pytest.raises(httpx.TransportError):
        submit(emulator, auth, params={"requestId": request_id})
    retried = submit(emulator, auth, params={"requestId": request_id, "retry": "true"})
    assert retried.status_code == 202
    assert emulator.statements_started == 1
    assert list(emulator.statement_states()) == [retried.json()["statementHandle"]]


def test_an_expire_fault_forgets_the_statement(emulator: SnowflakeEmulator, auth: dict[str, str]) -> None:
    url = submit(emulator, auth).json()["statementStatusUrl"]
    emulator.fail_next("status", expire=True)
    assert get(emulator, auth, url).status_code == 404
    assert httpx.post(f"{emulator.base_url}{url}/cancel", headers=auth).status_code == 404


def test_a_cancel_fault_can_answer_422(emulator: SnowflakeEmulator, auth: dict[str, str]) -> None:
    emulator.config.query_seconds = 5.0
    url = submit(emulator, auth).json()["statementStatusUrl"]
    emulator.fail_next("cancel", 422)
    assert httpx.post(f"{emulator.base_url}{url}/cancel", headers=auth).status_code == 422
    assert get(emulator, auth, url).status_code == 202  # the failed cancel canceled nothing


def test_the_control_api_configures_faults_and_shows_statements(
    emulator: SnowflakeEmulator, auth: dict[str, str]
) -> None:
    control = f"{emulator.base_url}/_emulator"
    configured = httpx.post(f"{control}/config", json={"query_seconds": 2, "partition_rows": 7})
    refused = httpx.post(f"{control}/config", json={"gzip_partitions": "sometimes"})
    unknown = httpx.post(f"{control}/config", json={"warp": 9})
    armed = httpx.post(f"{control}/faults", json={"operation": "submit", "status": 503})
    failed = submit(emulator, auth)
    started = submit(emulator, auth)
    statements = httpx.get(f"{control}/statements").json()
    requests = httpx.get(f"{control}/requests").json()
    assert configured.json()["query_seconds"] == 2.0
    assert configured.json()["partition_rows"] == 7
    assert refused.status_code == unknown.status_code == 400
    assert armed.json()[0]["status"] == 503
    assert failed.status_code == 503
    assert started.status_code == 202
    assert statements == {"states": {started.json()["statementHandle"]: "running"}, "started": 1}
    assert [entry["method"] for entry in requests] == ["POST", "POST"]
    assert httpx.delete(f"{control}/requests").json() == []
    assert emulator.requests == []
    assert emulator.submitted == []
