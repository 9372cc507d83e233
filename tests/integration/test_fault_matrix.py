"""The fault matrix: each upstream fault through the whole state machine on the local stack, for
every provider it applies to, checking the final state, the error name, the upstream task's final
state in the emulator and what is in S3 (exact rows and nothing else for a job that succeeds;
nothing at all for one that fails).

Every job here starts with no inline wait (``SubmitWaitSeconds`` 0) and long-polls of at most 1 s,
over a connection whose client timeout is 2 s; faults are armed per phase of the job:

- ``submit``: the call that starts the upstream task;
- ``poll``: a status read while the task runs (the query runs 2 s);
- ``fetch``: the read of the finished result (ES|QL: the GET without a long-poll; Looker: the
  results call; Veza: the first read of a task finished at once, its first page).

Transient faults must be absorbed (the state machine's or the provider's retries); persistent ones
must fail the job with a named error once the state machine's retries are spent.

The transient and persistent matrices run one job per case at once on one stack, each against its
own emulator (faults are per emulator), so that each provider's matrix takes as long as its slowest
case; a failure lists every case that broke.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from werkzeug.wrappers import Request

from query_relay_local.emulators.databricks import WAREHOUSE_ID, DatabricksEmulator
from query_relay_local.emulators.esql import EsqlEmulator
from query_relay_local.emulators.http import EmulatorServer
from query_relay_local.emulators.looker import LookerEmulator
from query_relay_local.emulators.snowflake import SnowflakeEmulator
from query_relay_local.emulators.veza import VezaEmulator
from query_relay_local.stack import LocalStack

from ..conformance.harness_snowflake import private_key, public_key_pem, signed_jwt
from .conftest import ES_CONNECTION, ESQL_API_KEY, esql_connection, run_job
from .landed import read_object
from .test_databricks_jobs import CLIENT_ID as DATABRICKS_CLIENT_ID
from .test_databricks_jobs import CLIENT_SECRET as DATABRICKS_CLIENT_SECRET
from .test_databricks_jobs import DATABRICKS_CONNECTION, databricks_connection
from .test_databricks_jobs import expected_rows as databricks_rows
from .test_esql_jobs import expected_rows as esql_rows
from .test_esql_jobs import upstream_answer
from .test_looker_jobs import (
    BAD_FIELD,
    LOOKER_CLIENT_ID,
    LOOKER_CLIENT_SECRET,
    LOOKER_CONNECTION,
    looker_connection,
    upstream_result,
)
from .test_snowflake_jobs import ACCOUNT as SNOWFLAKE_ACCOUNT
from .test_snowflake_jobs import SNOWFLAKE_CONNECTION, snowflake_connection
from .test_snowflake_jobs import USER as SNOWFLAKE_USER
from .test_snowflake_jobs import expected_rows as snowflake_rows
from .test_veza_jobs import OKTA_USERS, VEZA_API_KEY, VEZA_CONNECTION, veza_connection
from .test_veza_jobs import expected_rows as veza_rows

PHASES = ("submit", "poll", "fetch")
STACK_PARAMETERS = {"SubmitWaitSeconds": "0", "LongPollMaxSeconds": "1"}
CLIENT_TIMEOUT_SECONDS = 2
# Longer than the client's timeout plus the longest long-poll allowance on a read (1 s).
BEYOND_CLIENT_TIMEOUT_SECONDS = 4
QUERY_SECONDS = 2
ESQL_QUERY = (
    "FROM employees | KEEP emp_no, first_name, last_name, salary, hire_date | SORT emp_no | LIMIT 400"
)
LOOKER_QUERY: dict[str, Any] = {
    "model": "ecommerce",
    "view": "orders",
    "fields": ["orders.id", "orders.created_date", "orders.total_amount", "users.country"],
    "sorts": ["orders.id"],
    "limit": "400",
}
VEZA_QUERY: dict[str, Any] = {**OKTA_USERS, "page_size": 5}  # 14 nodes: three pages
# 400 rows in partitions of 50: Fetch reads the ResultSet (partition 0), then 7 gzipped partitions.
SNOWFLAKE_STATEMENT = "SELECT n, square, label, ratio FROM numbers WHERE n <= 400 ORDER BY n"
SNOWFLAKE_PARTITION_ROWS = 50
# The same rows in chunks of 50: Fetch downloads 8 external links from the storage listener.
DATABRICKS_CHUNK_ROWS = 50
TRUNCATE_AFTER_BYTES = 1500  # well inside every provider's first answer of the result
TRICKLE_SECONDS = 1.5  # a byte this often: inside the client's 2 s per-read timeout

Predicate = Callable[[Request], bool]


def _long_polls(request: Request) -> bool:
    return "wait_for_completion_timeout" in request.args


def _reads_result(request: Request) -> bool:
    return "wait_for_completion_timeout" not in request.args


@dataclass
class Upstream:
    """One provider's emulator, connection and query, and how its job's phases map to operations."""

    provider: str
    connection_name: str
    emulator: EmulatorServer
    connection: dict[str, Any]
    query: dict[str, Any]
    operations: dict[str, tuple[str, Predicate | None]]
    expected_rows: Callable[[], list[dict[str, Any]]]
    #: A task's state once its result is safely in S3.
    landed_state: str
    #: A task's state after a failed job cleaned it up (when a finished task cannot be cancelled).
    cleaned_finished_state: str
    set_query_seconds: Callable[[float], None]
    task_states: Callable[[], dict[str, str]]

    def job(self, job_id: str) -> dict[str, Any]:
        return {
            "job_id": job_id,
            "connection": self.connection_name,
            "query": self.query,
            "polling": {"initial_seconds": 1, "max_seconds": 1, "timeout_seconds": 60},
        }

    def prepare(self, phase: str) -> None:
        """Timing that makes `phase` happen: Veza reads a task finished at once only in Fetch."""
        fetch_at_once = self.provider == "veza" and phase == "fetch"
        self.set_query_seconds(0 if fetch_at_once else QUERY_SECONDS)

    def arm(self, phase: str, **fault: Any) -> None:
        operation, when = self.operations[phase]
        self.emulator.fail_next(operation, when=when, **fault)


def _esql(emulator: EsqlEmulator) -> Upstream:
    def set_seconds(seconds: float) -> None:
        emulator.config.query_seconds = seconds

    return Upstream(
        provider="esql",
        connection_name=ES_CONNECTION,
        emulator=emulator,
        connection={**esql_connection(emulator), "timeout_seconds": CLIENT_TIMEOUT_SECONDS},
        query={"query": ESQL_QUERY},
        operations={
            "submit": ("submit", None),
            "poll": ("get", _long_polls),
            "fetch": ("get", _reads_result),
        },
        expected_rows=lambda: esql_rows(upstream_answer(emulator, {"query": ESQL_QUERY})),
        landed_state="deleted",  # released once in S3
        cleaned_finished_state="deleted",
        set_query_seconds=set_seconds,
        task_states=emulator.task_states,
    )


def _looker(emulator: LookerEmulator) -> Upstream:
    def set_seconds(seconds: float) -> None:
        emulator.config.query_seconds = seconds

    return Upstream(
        provider="looker",
        connection_name=LOOKER_CONNECTION,
        emulator=emulator,
        connection={**looker_connection(emulator), "timeout_seconds": CLIENT_TIMEOUT_SECONDS},
        query=LOOKER_QUERY,
        operations={"submit": ("create_task", None), "poll": ("status", None), "fetch": ("results", None)},
        expected_rows=lambda: json.loads(upstream_result(emulator, LOOKER_QUERY, "json")),
        landed_state="complete",
        cleaned_finished_state="complete",  # Looker cannot kill a finished task
        set_query_seconds=set_seconds,
        task_states=emulator.task_states,
    )


def _veza(emulator: VezaEmulator) -> Upstream:
    def set_seconds(seconds: float) -> None:
        emulator.config.query_seconds = seconds

    return Upstream(
        provider="veza",
        connection_name=VEZA_CONNECTION,
        emulator=emulator,
        connection={**veza_connection(emulator), "timeout_seconds": CLIENT_TIMEOUT_SECONDS},
        query=VEZA_QUERY,
        operations={"submit": ("submit", None), "poll": ("task", None), "fetch": ("task", None)},
        expected_rows=lambda: veza_rows(VEZA_QUERY),
        landed_state="succeeded",
        cleaned_finished_state="succeeded",  # Veza has no cancel
        set_query_seconds=set_seconds,
        task_states=emulator.task_states,
    )


def _snowflake(emulator: SnowflakeEmulator) -> Upstream:
    def set_seconds(seconds: float) -> None:
        emulator.config.query_seconds = seconds

    emulator.config.partition_rows = SNOWFLAKE_PARTITION_ROWS
    return Upstream(
        provider="snowflake",
        connection_name=SNOWFLAKE_CONNECTION,
        emulator=emulator,
        connection={**snowflake_connection(emulator), "timeout_seconds": CLIENT_TIMEOUT_SECONDS},
        query={"statement": SNOWFLAKE_STATEMENT},
        # Fetch's own reads are the later partitions (the ResultSet is a status call, as Poll's).
        operations={"submit": ("submit", None), "poll": ("status", None), "fetch": ("partition", None)},
        expected_rows=lambda: snowflake_rows(SNOWFLAKE_STATEMENT),
        landed_state="succeeded",
        cleaned_finished_state="succeeded",  # a finished statement has nothing to cancel
        set_query_seconds=set_seconds,
        task_states=emulator.statement_states,
    )


def _databricks(emulator: DatabricksEmulator) -> Upstream:
    def set_seconds(seconds: float) -> None:
        emulator.config.query_seconds = seconds

    emulator.config.chunk_rows = DATABRICKS_CHUNK_ROWS
    return Upstream(
        provider="databricks",
        connection_name=DATABRICKS_CONNECTION,
        emulator=emulator,
        connection={**databricks_connection(emulator), "timeout_seconds": CLIENT_TIMEOUT_SECONDS},
        query={"statement": SNOWFLAKE_STATEMENT, "warehouse_id": WAREHOUSE_ID},
        # Fetch's own reads of the result are the links' downloads (another origin, no credentials).
        operations={"submit": ("submit", None), "poll": ("status", None), "fetch": ("link", None)},
        expected_rows=lambda: [
            {name.lower(): value for name, value in row.items()}
            for row in databricks_rows(SNOWFLAKE_STATEMENT)
        ],
        landed_state="succeeded",
        cleaned_finished_state="succeeded",  # a finished statement is not cancelled
        set_query_seconds=set_seconds,
        task_states=emulator.statement_states,
    )


@contextmanager
def started_upstream(provider: str, connection_name: str | None = None) -> Iterator[Upstream]:
    """A started emulator of `provider` and what a job needs to use it (under `connection_name`)."""
    emulator: EmulatorServer
    if provider == "esql":
        emulator = EsqlEmulator(api_key=ESQL_API_KEY)
    elif provider == "looker":
        emulator = LookerEmulator(client_id=LOOKER_CLIENT_ID, client_secret=LOOKER_CLIENT_SECRET)
    elif provider == "databricks":
        emulator = DatabricksEmulator(client_id=DATABRICKS_CLIENT_ID, client_secret=DATABRICKS_CLIENT_SECRET)
    elif provider == "snowflake":
        emulator = SnowflakeEmulator(
            account=SNOWFLAKE_ACCOUNT, user=SNOWFLAKE_USER, public_key_pem=public_key_pem(private_key())
        )
    else:
        emulator = VezaEmulator(api_key=VEZA_API_KEY)
    with emulator:
        if isinstance(emulator, EsqlEmulator):
            upstream = _esql(emulator)
        elif isinstance(emulator, LookerEmulator):
            upstream = _looker(emulator)
        elif isinstance(emulator, SnowflakeEmulator):
            upstream = _snowflake(emulator)
        elif isinstance(emulator, DatabricksEmulator):
            upstream = _databricks(emulator)
        else:
            assert isinstance(emulator, VezaEmulator)
            upstream = _veza(emulator)
        if connection_name is not None:
            upstream.connection_name = connection_name
        yield upstream


@pytest.fixture
def upstream(request: pytest.FixtureRequest) -> Iterator[Upstream]:
    with started_upstream(request.param) as started:
        yield started


@pytest.fixture
def stack(upstream: Upstream) -> Iterator[LocalStack]:
    with LocalStack(parameter_overrides=STACK_PARAMETERS) as started:
        started.load_connections({upstream.connection_name: upstream.connection})
        yield started


@dataclass(frozen=True)
class Case:
    """One fault armed for one phase of a job (`name` is also the job's id)."""

    name: str
    phase: str
    fault: dict[str, Any]


@dataclass
class Outcome:
    case: Case
    upstream: Upstream
    expected: list[dict[str, Any]]
    final: Any
    history: list[Any]


@contextmanager
def run_concurrently(provider: str, cases: list[Case]) -> Iterator[tuple[LocalStack, list[Outcome]]]:
    """Run one job per case at once on one stack, each against its own emulator (faults are per
    emulator): the matrix takes as long as its slowest case, not their sum."""
    with ExitStack() as resources:
        upstreams = [
            resources.enter_context(started_upstream(provider, f"{provider}-{index}"))
            for index in range(len(cases))
        ]
        stack = resources.enter_context(LocalStack(parameter_overrides=STACK_PARAMETERS))
        stack.load_connections({upstream.connection_name: upstream.connection for upstream in upstreams})
        expected = [upstream.expected_rows() for upstream in upstreams]  # before any fault is armed
        arns = []
        for case, upstream in zip(cases, upstreams, strict=True):
            upstream.prepare(case.phase)
            upstream.arm(case.phase, **case.fault)
            arns.append(stack.start_job(upstream.job(case.name)))
        outcomes = [
            Outcome(case, upstream, rows, stack.wait(arn, timeout=120), [])
            for case, upstream, rows, arn in zip(cases, upstreams, expected, arns, strict=True)
        ]
        for outcome, arn in zip(outcomes, arns, strict=True):
            outcome.history = stack.history(arn)
        yield stack, outcomes


def check_each(outcomes: list[Outcome], check: Callable[[Outcome], None]) -> None:
    """Run `check` on every outcome and report every case that fails it, not only the first."""
    problems = []
    for outcome in outcomes:
        try:
            check(outcome)
        except AssertionError as error:
            problems.append(f"{outcome.case.name} ({outcome.case.fault}): {error}")
    assert not problems, "\n".join(problems)


# --- what landed --------------------------------------------------------------------------------


def job_keys(stack: LocalStack, job_id: str) -> list[str]:
    every_key = stack.keys()
    return sorted(key for key in every_key if f"/{job_id}/" in key)


def assert_landed_exactly(stack: LocalStack, final: Any, expected: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's objects hold exactly `expected` (sizes and sha256 checked) and the job's
    prefix holds nothing but them and the manifest: no stray part of a failed attempt."""
    output = json.loads(final["output"])
    manifest: dict[str, Any] = json.loads(read_object(stack, output["manifest_key"]))
    rows: list[dict[str, Any]] = []
    for entry in manifest["objects"]:
        raw = read_object(stack, entry["key"])
        assert len(raw) == entry["bytes"]
        assert hashlib.sha256(raw).hexdigest() == entry["sha256"]
        part = [json.loads(line) for line in raw.decode().splitlines()]
        assert len(part) == entry["rows"]
        rows.extend(part)
    assert rows == expected
    assert manifest["row_count"] == len(expected) > 0
    listed = sorted([output["manifest_key"], *(entry["key"] for entry in manifest["objects"])])
    assert job_keys(stack, output["job_id"]) == listed
    return manifest


def failed_with(final: Any, error: str) -> str:
    assert (final["status"], final.get("error")) == ("FAILED", error), final
    cause: str = final["cause"]
    assert "Traceback" not in cause
    return cause


def lambda_errors(history: list[Any]) -> list[str]:
    return [
        event["lambdaFunctionFailedEventDetails"]["error"]
        for event in history
        if event["type"] == "LambdaFunctionFailed"
    ]


ALL = ("esql", "looker", "veza", "snowflake", "databricks")


def case_name(phase: str, fault: dict[str, Any]) -> str:
    kinds = "-".join(name if value is True else f"{name}-{value}" for name, value in fault.items())
    return f"{phase}-{kinds}".replace("_", "-").replace(".", "-")


# --- transient faults: absorbed, the job lands exactly the upstream's rows -----------------------

TRANSIENT_FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("submit", {"status": 429}),
    ("poll", {"status": 429, "retry_after": 1}),
    ("submit", {"status": 500}),
    ("poll", {"status": 502}),
    ("submit", {"status": 503, "times": 2}),
    ("fetch", {"status": 503}),
    ("poll", {"status": 504}),
    ("submit", {"reset": True}),
    ("poll", {"reset": True}),
    ("fetch", {"reset": True}),
    ("poll", {"delay_seconds": BEYOND_CLIENT_TIMEOUT_SECONDS}),
    ("fetch", {"delay_seconds": BEYOND_CLIENT_TIMEOUT_SECONDS}),
    ("fetch", {"truncate_after_bytes": TRUNCATE_AFTER_BYTES}),
    ("fetch", {"truncate_after_bytes": TRUNCATE_AFTER_BYTES, "times": 2}),
    # Every byte inside the client's per-read timeout: only the whole exchange's deadline (the
    # client timeout plus the long-poll's 1 s) ends it.
    ("poll", {"trickle_seconds": TRICKLE_SECONDS}),
]
# ES|QL's submit may carry the whole result (the fast path): its deadline is the Submit Lambda's
# end, minutes away, so its trickled submit is a unit test (test_upstream_deadline.py).
TRANSIENT_ONLY = {
    provider: [("submit", {"trickle_seconds": TRICKLE_SECONDS})]
    for provider in ("looker", "veza", "snowflake", "databricks")
}


def transient_cases(provider: str) -> list[Case]:
    faults = [*TRANSIENT_FAULTS, *TRANSIENT_ONLY.get(provider, [])]
    return [Case(case_name(phase, fault), phase, fault) for phase, fault in faults]


@pytest.mark.parametrize("provider", ALL)
def test_transient_faults_are_absorbed_and_each_job_lands_exactly_the_upstream_rows(provider: str) -> None:
    # Given one job per transient fault (429 with and without Retry-After, 5xx, a reset connection,
    # an answer later than the client's timeout, a body cut off, an answer trickled a byte every
    # 2 s), each armed for one phase
    # When the jobs run
    with run_concurrently(provider, transient_cases(provider)) as (stack, outcomes):
        # Then every fault was met, every job succeeded with exactly the upstream's rows and nothing
        # else under its prefix, and its upstream task ended as after any successful job
        def check(outcome: Outcome) -> None:
            upstream = outcome.upstream
            assert upstream.emulator.faults.pending() == [], "the fault was never met"
            assert outcome.final["status"] == "SUCCEEDED", outcome.final
            manifest = assert_landed_exactly(stack, outcome.final, outcome.expected)
            states = upstream.task_states()
            assert states, "the job ran no upstream task"
            if manifest["upstream_id"] is not None:
                assert states[manifest["upstream_id"]] == upstream.landed_state
            assert set(states.values()) == {upstream.landed_state}, states

        check_each(outcomes, check)


# --- persistent faults: the job fails with a named error, nothing lands -------------------------

PERSISTENT = [
    Case("submit-refused", "submit", {"status": 503, "times": 20}),
    Case("result-cut-off", "fetch", {"truncate_after_bytes": TRUNCATE_AFTER_BYTES, "times": 20}),
    Case("id-expired", "poll", {"expire": True}),
]


@pytest.mark.parametrize("provider", ALL)
def test_persistent_faults_fail_the_job_with_a_named_error_and_leave_nothing_in_s3(provider: str) -> None:
    # Given one job refused on every submit (503), one whose result is cut off on every read, and
    # one whose running task's id expires upstream just before a poll
    # When the jobs run
    with run_concurrently(provider, PERSISTENT) as (stack, outcomes):
        by_name = {outcome.case.name: outcome for outcome in outcomes}
        # Then each failed with its named error after the state machine's retries (if any), and
        # nothing of any of them is left in S3 (no manifest, no part)
        refused, cut_off, expired = (
            by_name["submit-refused"],
            by_name["result-cut-off"],
            by_name["id-expired"],
        )

        def check_refused(outcome: Outcome) -> None:
            failed_with(outcome.final, "UpstreamUnavailable")
            assert lambda_errors(outcome.history) == ["UpstreamUnavailable"] * 6  # 1 attempt + 5 retries
            assert outcome.upstream.task_states() == {}  # nothing ever ran upstream

        def check_cut_off(outcome: Outcome) -> None:
            failed_with(outcome.final, "UpstreamUnavailable")
            assert lambda_errors(outcome.history) == ["UpstreamUnavailable"] * 5  # 1 attempt + 4 retries
            assert set(outcome.upstream.task_states().values()) == {outcome.upstream.cleaned_finished_state}

        def check_expired(outcome: Outcome) -> None:
            failed_with(outcome.final, "UpstreamTaskExpired")
            assert list(outcome.upstream.task_states().values()) == ["expired"]

        check_each([refused], check_refused)
        check_each([cut_off], check_cut_off)
        check_each([expired], check_expired)
        assert list(stack.keys()) == []


# --- the upstream task's own life ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream", "esql_failure_status"),
    [
        pytest.param("esql", 400, id="esql-stored-400"),
        # ES answers some stored failures with 5xx (and the task's async headers): still the
        # query's own failure, not a transient one.
        pytest.param("esql", 500, id="esql-stored-500"),
        pytest.param("looker", None, id="looker"),
        pytest.param("veza", None, id="veza"),
        pytest.param("snowflake", None, id="snowflake"),
        pytest.param("databricks", None, id="databricks"),
    ],
    indirect=["upstream"],
)
def test_a_task_failing_after_running_a_while_fails_upstream_query_failed_with_its_reason(
    stack: LocalStack, upstream: Upstream, esql_failure_status: int | None
) -> None:
    # Given a task that runs a while and then fails upstream
    upstream.prepare("poll")
    spec = upstream.job("fails-late-1")
    emulator = upstream.emulator
    if isinstance(emulator, EsqlEmulator):
        assert esql_failure_status is not None
        emulator.config.fail_running_after = 1.5
        emulator.config.fail_running_status = esql_failure_status
        # Cleanup deletes the stored failure: ES keeps it for keep_alive otherwise.
        reason, failed_state = "emulated failure of a running ES|QL query", "deleted"
    elif isinstance(emulator, LookerEmulator):
        spec["query"] = BAD_FIELD  # the database rejects it once the task runs
        reason, failed_state = "Unknown column 'orders.nope'", "error"
    elif isinstance(emulator, SnowflakeEmulator):
        emulator.config.fail_after_seconds = 1.5
        reason, failed_state = emulator.config.fail_message, "failed"
    elif isinstance(emulator, DatabricksEmulator):
        spec["query"] = {**spec["query"], "statement": "SELECT * FROM no_such_table"}  # fails as it ends
        reason, failed_state = "TABLE_OR_VIEW_NOT_FOUND", "failed"
    else:
        assert isinstance(emulator, VezaEmulator)
        emulator.config.fail_after_seconds = 1.5
        reason, failed_state = emulator.config.fail_reason, "failed"
    # When the job runs
    final, history = run_job(stack, spec, timeout=60)
    # Then it fails UpstreamQueryFailed with the upstream's reason (no retry), and nothing landed
    assert reason in failed_with(final, "UpstreamQueryFailed")
    assert lambda_errors(history) == ["UpstreamQueryFailed"]
    assert list(upstream.task_states().values()) == [failed_state]
    assert list(stack.keys()) == []


# --- vendor-specific faults ---------------------------------------------------------------------


@pytest.mark.parametrize("upstream", ["looker"], indirect=True)
@pytest.mark.parametrize("phase", ["poll", "fetch"])
def test_a_looker_token_expiring_mid_job_is_renewed_and_the_job_succeeds(
    stack: LocalStack, upstream: Upstream, phase: str
) -> None:
    # Given Looker refusing the job's token (401) once in the middle of the job
    expected = upstream.expected_rows()
    upstream.prepare(phase)
    upstream.arm(phase, status=401)
    # When the job runs
    final, _ = run_job(stack, upstream.job("token-expiry-1"), timeout=60)
    # Then the provider logged in again, and the job landed exactly the rows
    assert upstream.emulator.faults.pending() == []
    assert final["status"] == "SUCCEEDED", final
    assert_landed_exactly(stack, final, expected)
    logins = [entry for entry in upstream.emulator.requests if entry.path.endswith("/login")]
    assert len(logins) == 3  # upstream_result's own, the job's first and its renewal
    assert list(upstream.task_states().values()) == ["complete"]


@pytest.mark.parametrize("upstream", ["looker"], indirect=True)
def test_a_looker_token_refused_again_after_renewal_fails_upstream_auth_failed(
    stack: LocalStack, upstream: Upstream
) -> None:
    # Given Looker refusing the token on a poll, and the renewed one too; the query runs long enough
    # that Cleanup finds it running however slowly a loaded machine gets there (it ran 2 s once, and
    # was complete before Cleanup came to kill it)
    upstream.set_query_seconds(60)
    upstream.arm("poll", status=401, times=2)
    # When the job runs
    final, _ = run_job(stack, upstream.job("token-refused-1"), timeout=60)
    # Then it fails UpstreamAuthFailed (not retried), the running task was killed, nothing landed
    failed_with(final, "UpstreamAuthFailed")
    assert list(upstream.task_states().values()) == ["killed"]
    assert list(stack.keys()) == []


@pytest.mark.parametrize("upstream", ["esql"], indirect=True)
@pytest.mark.parametrize("phase", ["poll", "fetch"])
def test_an_esql_404_right_after_completion_is_checked_again_and_the_job_succeeds(
    stack: LocalStack, upstream: Upstream, phase: str
) -> None:
    # Given ES answering 404 once for a task it is still storing (right after completion)
    expected = upstream.expected_rows()
    upstream.prepare(phase)
    upstream.arm(phase, status=404)
    # When the job runs
    final, history = run_job(stack, upstream.job("race-404-1"), timeout=60)
    # Then the provider looked again, and the job landed exactly the rows, with no failed attempt
    assert upstream.emulator.faults.pending() == []
    assert final["status"] == "SUCCEEDED", final
    assert lambda_errors(history) == []
    assert_landed_exactly(stack, final, expected)
    assert list(upstream.task_states().values()) == ["deleted"]


# --- the fault kinds themselves, over HTTP (what every emulator shares) --------------------------


@pytest.mark.parametrize("provider", ALL)
def test_each_fault_kind_reaches_the_client_as_a_real_transport_fault(provider: str) -> None:
    with started_upstream(provider) as upstream, httpx.Client(base_url=upstream.emulator.base_url) as http:
        emulator = upstream.emulator
        method, path, options = _AUTHENTICATED_REQUEST[provider]
        # a reset: no answer at all
        emulator.fail_next("any", reset=True)
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            http.request(method, path, **options)
        # a cut body: the client never sees its end, however short the body
        emulator.fail_next("any", status=503, truncate_after_bytes=10)
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
            http.request(method, path, **options)
        # a late answer: past the client's timeout
        emulator.fail_next("any", status=503, delay_seconds=1.5)
        with pytest.raises(httpx.ReadTimeout):
            http.request(method, path, timeout=0.5, **options)
        # and the emulator answers normally afterwards
        assert http.request(method, path, **options).status_code in (200, 404)
        assert emulator.faults.pending() == []


def test_faults_are_armed_and_listed_over_the_control_api() -> None:
    with started_upstream("veza") as upstream, httpx.Client(base_url=upstream.emulator.base_url) as http:
        armed = http.post(
            "/_emulator/faults",
            json={"operation": "task", "delay_seconds": 3, "truncate_after_bytes": 100, "times": 2},
        )
        refused = http.post("/_emulator/faults", json={"operation": "task", "reset": True, "status": 503})
        unknown = http.post("/_emulator/faults", json={"operation": "task", "explode": True})
        assert armed.json() == [
            {
                "operation": "task",
                "status": None,
                "retry_after": None,
                "delay_seconds": 3.0,
                "truncate_after_bytes": 100,
                "times": 2,
            }
        ]
        assert (refused.status_code, unknown.status_code) == (400, 400)
        assert "explode" in unknown.json()["error"]


_AUTHENTICATED_REQUEST: dict[str, tuple[str, str, dict[str, Any]]] = {
    "esql": ("GET", "/", {"headers": {"Authorization": f"ApiKey {ESQL_API_KEY}"}}),
    "looker": (
        "POST",
        "/api/4.0/login",
        {"data": {"client_id": LOOKER_CLIENT_ID, "client_secret": LOOKER_CLIENT_SECRET}},
    ),
    "veza": (
        "GET",
        "/api/v1/assessments/async_tasks/no-such-task",
        {"headers": {"Authorization": f"Bearer {VEZA_API_KEY}"}},
    ),
    "snowflake": (
        "GET",
        "/api/v2/statements/01b2c3d4-0000-4a5b-0000-00000000abcd",
        {
            "headers": {
                "Authorization": f"Bearer {signed_jwt(SNOWFLAKE_ACCOUNT, SNOWFLAKE_USER, private_key())}",
                "X-Snowflake-Authorization-Token-Type": "KEYPAIR_JWT",
            }
        },
    ),
    "databricks": (
        "POST",
        "/oidc/v1/token",
        {
            "data": {"grant_type": "client_credentials", "scope": "all-apis"},
            "auth": (DATABRICKS_CLIENT_ID, DATABRICKS_CLIENT_SECRET),
        },
    ),
}
