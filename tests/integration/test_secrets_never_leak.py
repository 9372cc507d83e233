"""No secret of any connection, nor anything derived from one, shows anywhere a person or another
system can read: execution history (every event, inputs and outputs), the functions' logs,
EventBridge events, error causes, the control table (DynamoDB), the HTTP API's answers and the
CLI's output.

For each provider, jobs run on the success path and on every failure path (credentials refused,
query refused, timeout) against its emulator over HTTP, then everything they left is searched for
each secret, its base64 form, the Authorization values built from it, and (Looker) every access
token the emulator issued."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from query_relay_local import cli
from query_relay_local.api_server import LocalApiServer
from query_relay_local.emulators.databricks import WAREHOUSE_ID, DatabricksEmulator
from query_relay_local.emulators.esql import EsqlEmulator
from query_relay_local.emulators.looker import LookerEmulator
from query_relay_local.emulators.snowflake import SnowflakeEmulator
from query_relay_local.emulators.veza import VezaEmulator
from query_relay_local.stack import LocalStack

from ..conformance.harness_snowflake import private_key, private_key_pem, public_key_pem
from .conftest import ESQL_API_KEY, esql_connection
from .test_looker_jobs import BAD_FIELD, BY_COUNTRY, LOOKER_CLIENT_ID, LOOKER_CLIENT_SECRET, looker_connection
from .test_veza_jobs import OKTA_USERS, VEZA_API_KEY, veza_connection

WRONG_SECRET = "wrong-secret-never-printed-4f8a2c61"
ES_USER, ES_PASSWORD = "relay-reader", "es-basic-password-71d3b0e9"
POLLING = {"initial_seconds": 1, "max_seconds": 1, "timeout_seconds": 60}
TIMING_OUT = {"initial_seconds": 1, "max_seconds": 1, "timeout_seconds": 4}
# Results of a few rows split as large ones do: Snowflake's and Databricks' go through the
# FetchBranches Map, whose iterations' inputs and outputs are searched too.
PARALLEL = {"FetchBranchMinBytes": "1"}


@dataclass(frozen=True)
class Upstream:
    """One provider's emulator, connection documents and queries, as the leak test needs them."""

    provider: str
    secret: str
    start: Callable[[ExitStack, float], Any]  # (exits, query_seconds) -> a started emulator
    connection: Callable[[Any, str], dict[str, Any]]  # (emulator, secret) -> connection document
    good_query: dict[str, Any]
    bad_query: dict[str, Any]
    # The call whose error answer echoes the credentials it was sent, and that error's status.
    echoed: tuple[str, int]

    def derived_secrets(self, emulators: list[Any]) -> set[str]:
        tokens: set[str] = set()
        for emulator in emulators:
            if isinstance(emulator, LookerEmulator):
                tokens |= set(emulator.issued_tokens())
            if isinstance(emulator, DatabricksEmulator):
                tokens |= set(emulator.issued_tokens())
            if isinstance(emulator, SnowflakeEmulator):
                tokens |= emulator.bearer_tokens_seen  # the JWTs the key signed
        if self.provider == "snowflake":  # and every line of either key, alone
            tokens |= {line for pem in (self.secret, wrong_key_pem()) for line in pem.splitlines()[1:-1]}
        return tokens


def _start_esql(exits: ExitStack, query_seconds: float) -> EsqlEmulator:
    emulator = EsqlEmulator(api_key=ESQL_API_KEY, basic=(ES_USER, ES_PASSWORD), query_seconds=query_seconds)
    return exits.enter_context(emulator)


def _start_looker(exits: ExitStack, query_seconds: float) -> LookerEmulator:
    emulator = exits.enter_context(
        LookerEmulator(client_id=LOOKER_CLIENT_ID, client_secret=LOOKER_CLIENT_SECRET)
    )
    emulator.config.query_seconds = query_seconds
    return emulator


def _start_veza(exits: ExitStack, query_seconds: float) -> VezaEmulator:
    return exits.enter_context(VezaEmulator(api_key=VEZA_API_KEY, query_seconds=query_seconds))


def _start_snowflake(exits: ExitStack, query_seconds: float) -> SnowflakeEmulator:
    emulator = exits.enter_context(
        SnowflakeEmulator(
            account=SNOWFLAKE_ACCOUNT, user=SNOWFLAKE_USER, public_key_pem=public_key_pem(private_key())
        )
    )
    emulator.config.query_seconds = query_seconds
    emulator.config.partition_rows = 2  # 5 rows in 3 partitions: a parallel fetch (PARALLEL)
    return emulator


@cache
def wrong_key_pem() -> str:
    return private_key_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def snowflake_connection(emulator: SnowflakeEmulator, secret: str) -> dict[str, Any]:
    """Key-pair auth; the wrong secret is a key Snowflake does not know (a PEM that loads)."""
    key = wrong_key_pem() if secret == WRONG_SECRET else secret
    auth = {"type": "key_pair", "account": SNOWFLAKE_ACCOUNT, "user": SNOWFLAKE_USER, "private_key": key}
    return {"provider": "snowflake", "base_url": emulator.base_url, "auth": auth}


SNOWFLAKE_ACCOUNT, SNOWFLAKE_USER = "leaks", "relay"
DATABRICKS_CLIENT_ID, DATABRICKS_CLIENT_SECRET = "leak-test-sp", "databricks-sp-secret-6f2b8d40"


def _start_databricks(exits: ExitStack, query_seconds: float) -> DatabricksEmulator:
    emulator = DatabricksEmulator(client_id=DATABRICKS_CLIENT_ID, client_secret=DATABRICKS_CLIENT_SECRET)
    started = exits.enter_context(emulator)
    started.config.query_seconds = query_seconds
    started.config.chunk_rows = 2  # 5 rows in 3 chunks: a parallel fetch (PARALLEL)
    return started


def databricks_connection(emulator: DatabricksEmulator, secret: str) -> dict[str, Any]:
    auth = {"type": "client_credentials", "client_id": DATABRICKS_CLIENT_ID, "client_secret": secret}
    return {"provider": "databricks", "base_url": emulator.base_url, "auth": auth}


UPSTREAMS = [
    Upstream(
        "esql",
        ESQL_API_KEY,
        _start_esql,
        esql_connection,
        {"query": "FROM employees | KEEP emp_no, salary | SORT emp_no | LIMIT 5"},
        {"query": "FROM no_such_index | LIMIT 3"},
        ("submit", 400),
    ),
    Upstream(
        "looker",
        LOOKER_CLIENT_SECRET,
        _start_looker,
        looker_connection,
        BY_COUNTRY,
        BAD_FIELD,
        ("login", 401),  # the form it echoes holds the client secret
    ),
    Upstream(
        "veza",
        VEZA_API_KEY,
        _start_veza,
        veza_connection,
        OKTA_USERS,
        {"include_nodes": True, "source_node_types": {"nodes": [{"node_type": "OktaUsr"}]}},
        ("submit", 400),
    ),
    Upstream(
        "snowflake",
        private_key_pem(private_key()),
        _start_snowflake,
        snowflake_connection,
        {"statement": "SELECT id, name FROM employees ORDER BY id LIMIT 5"},
        {"statement": "SELECT * FROM no_such_table"},
        ("submit", 400),  # the JWT it echoes is a credential for an hour
    ),
    Upstream(
        "databricks",
        DATABRICKS_CLIENT_SECRET,
        _start_databricks,
        databricks_connection,
        {"statement": "SELECT id, name FROM employees ORDER BY id LIMIT 5", "warehouse_id": WAREHOUSE_ID},
        {"statement": "SELECT * FROM no_such_table", "warehouse_id": WAREHOUSE_ID},
        ("token", 401),  # the Basic pair it echoes holds the client secret
    ),
]


def forms_of(secret: str) -> set[str]:
    """A secret and what could be derived from it and leak in its place."""
    encoded = base64.b64encode(secret.encode()).decode()
    return {secret, encoded, f"ApiKey {secret}", f"Bearer {secret}", f"token {secret}"}


def leaks(haystack: str, secrets: set[str]) -> list[str]:
    """The secrets found in ``haystack``, shown by length and first characters only."""
    return [f"{secret[:4]}...({len(secret)} chars)" for secret in sorted(secrets) if secret in haystack]


def spec(
    connection: str, query: dict[str, Any], job_id: str, polling: dict[str, int] = POLLING
) -> dict[str, Any]:
    return {"connection": connection, "query": query, "job_id": job_id, "polling": polling}


@pytest.fixture
def exits() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def test_the_leak_search_finds_a_secret_where_there_is_one() -> None:
    # The search itself must be able to fail: a log line that carries a Basic pair is a hit.
    pair = base64.b64encode(f"{ES_USER}:{ES_PASSWORD}".encode()).decode()
    assert leaks(f'{{"authorization": "Basic {pair}"}}', {pair}) != []
    assert leaks("ApiKey ***", forms_of(ESQL_API_KEY)) == []


@pytest.mark.parametrize("upstream", UPSTREAMS, ids=[upstream.provider for upstream in UPSTREAMS])
def test_no_secret_leaks_on_success_or_any_failure(
    upstream: Upstream,
    exits: ExitStack,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a fast emulator and a slow one (for the timeout), with good and wrong credentials, and
    # one whose error answer quotes the credentials it was sent in every string (type and reason)
    fast, slow, echoing = (upstream.start(exits, seconds) for seconds in (0.0, 120.0, 0.0))
    operation, status = upstream.echoed
    echoing.fail_next(operation, status, echo_credentials=True, times=10)
    connections = {
        "good": upstream.connection(fast, upstream.secret),
        "wrong": upstream.connection(fast, WRONG_SECRET),
        "slow": upstream.connection(slow, upstream.secret),
        "echo": upstream.connection(echoing, upstream.secret),
    }
    if upstream.provider == "esql":
        connections["basic"] = connections["good"] | {
            "auth": {"type": "basic", "username": ES_USER, "password": ES_PASSWORD}
        }
    jobs = {
        "ok": spec("good", upstream.good_query, "leak-ok"),
        "auth": spec("wrong", upstream.good_query, "leak-auth"),
        "query": spec("good", upstream.bad_query, "leak-query"),
        "timeout": spec("slow", upstream.good_query, "leak-timeout", TIMING_OUT),
        "echo": spec("echo", upstream.good_query, "leak-echo"),
    }
    if upstream.provider == "esql":
        jobs["basic"] = spec("basic", upstream.good_query, "leak-basic")
    seen: list[str] = []

    with LocalStack(parameter_overrides=PARALLEL) as stack:
        stack.load_connections(connections)
        # When every job runs to its end (the success job through the HTTP API)
        with LocalApiServer(stack) as server, httpx.Client(base_url=server.base_url, timeout=30) as api:
            started = api.post("/queries", json=jobs.pop("ok"))
            assert started.status_code == 202, started.text
            arns = {"ok": f"{stack.state_machine_arn.replace(':stateMachine:', ':execution:')}:leak-ok"}
            arns |= {name: stack.start_job(document) for name, document in jobs.items()}
            finals = {name: stack.wait(arn, timeout=90) for name, arn in arns.items()}
            seen += [started.text, api.get("/queries").text]
            seen += [api.get(f"/queries/leak-{name}").text for name in finals]
            refused = api.post("/queries", json=spec("wrong", {"query": 42}, "leak-refused"))
            seen.append(refused.text)
        # Then each job ended the way its path says
        outcomes = {name: (final["status"], final.get("error")) for name, final in finals.items()}
        assert outcomes["ok"] == ("SUCCEEDED", None), finals["ok"]
        assert outcomes["auth"] == ("FAILED", "UpstreamAuthFailed")
        assert outcomes["query"] == ("FAILED", "UpstreamQueryFailed")
        assert outcomes["timeout"] == ("FAILED", "QueryTimedOut")
        assert outcomes["echo"] in {("FAILED", "UpstreamQueryFailed"), ("FAILED", "UpstreamAuthFailed")}
        assert [fault["times"] for fault in echoing.faults.pending()] != [10], "no answer echoed"
        if "basic" in outcomes:
            assert outcomes["basic"] == ("SUCCEEDED", None), finals["basic"]
        seen += [json.dumps(final, default=str) for final in finals.values()]
        seen += [json.dumps(stack.history(arn), default=str) for arn in arns.values()]
        if upstream.provider in ("snowflake", "databricks"):  # the success went through the Map
            assert any(event["type"] == "MapStateEntered" for event in stack.history(arns["ok"]))
        seen += [*stack.logs, json.dumps(stack.events(), default=str)]
        # and what the control table holds (the tasks Submits started, with their provider state)
        for table in stack.template.tables.values():
            seen.append(json.dumps(stack.client("dynamodb").scan(TableName=table.name)["Items"]))

    # And the CLI, on the success path and with refused credentials, with the functions' logs shown
    (tmp_path / "connections.json").write_text(json.dumps(connections))
    for name, connection in (("cli-ok", "good"), ("cli-auth", "wrong")):
        (tmp_path / f"{name}.json").write_text(json.dumps(spec(connection, upstream.good_query, name)))
        argv = ["run", str(tmp_path / f"{name}.json"), "--connections", str(tmp_path / "connections.json")]
        status = cli.main([*argv, "--out", str(tmp_path / "out"), "--json", "--verbose"])
        assert status == (cli.EXIT_SUCCEEDED if name == "cli-ok" else cli.EXIT_FAILED)
        captured = capsys.readouterr()
        seen += [captured.out, captured.err]
    assert "UpstreamAuthFailed" in seen[-2]

    # Then no secret, nor any form of one, appears anywhere
    secrets = forms_of(upstream.secret) | forms_of(WRONG_SECRET)
    secrets |= upstream.derived_secrets([fast, slow, echoing])
    if upstream.provider == "esql":
        secrets |= forms_of(ES_PASSWORD) | forms_of(f"{ES_USER}:{ES_PASSWORD}")
    if upstream.provider == "looker":
        assert len(upstream.derived_secrets([fast, slow])) >= 2  # tokens were issued, so are searched
    if upstream.provider == "snowflake":
        assert len({token for emulator in (fast, slow) for token in emulator.bearer_tokens_seen}) >= 2
    if upstream.provider == "databricks":
        assert len(upstream.derived_secrets([fast, slow])) >= 2  # tokens were issued, so are searched
        secrets |= forms_of(f"{DATABRICKS_CLIENT_ID}:{DATABRICKS_CLIENT_SECRET}")
    haystack = "\n".join(seen)
    assert "leak-timeout" in haystack
    assert "UpstreamQueryFailed" in haystack
    assert "submission#" in haystack
    assert leaks(haystack, secrets) == []
