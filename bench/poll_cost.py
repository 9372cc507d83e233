"""What polling a long query costs: the real state machine on the local stack against each upstream
emulator, next to a fixed 5-second poller (the common pattern in AWS samples) in the same run.

    .venv/bin/python -m bench.poll_cost [--query-minutes 10] [--factor 20] [--upstream esql]

Time is scaled down by ``--factor`` so that a run takes well under a minute: the upstream's query
duration, the Poll's long-poll hold (LongPollMaxSeconds) and the submit wait (SubmitWaitSeconds)
are divided by it, and so is every Wait state (moto's interpreter is patched in this process to
sleep ``Seconds / factor``: Wait states take whole seconds, so the job's schedule keeps its real
values and only the sleeping is scaled). Measured durations are multiplied back by the factor.

Upstreams that cannot long-poll (Looker, Veza) are checked again from inside the Poll Lambda after
short sleeps whose length depends on how long the job has run. For them the workflow's clocks are
patched in this process too: ``query_relay.workflow`` sees time run ``factor`` times faster (its
wall clock and the Poll's monotonic clock) and its in-Lambda sleeps last ``1 / factor`` as long, so
the Poll hold (LongPollMaxSeconds) keeps its real value and the schedule is the production one.

Per run it prints: state transitions (StateEntered events, what Step Functions bills), Lambda
invocations and GB-seconds (durations from the history x each function's MemorySize in
template.yaml), detection latency (upstream completion -> Fetch entered), and $ per 1,000 queries.
The latency is given as measured and in real time: the part of it spent in a Wait state or an
in-Lambda sleep is blind time and is scaled back up, the rest (invocation and HTTP overhead) is not.

Adding an upstream: one ``Upstream`` entry in ``UPSTREAMS``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from query_relay_local.emulators.esql import EsqlEmulator
from query_relay_local.emulators.http import EmulatorServer
from query_relay_local.emulators.looker import LookerEmulator
from query_relay_local.emulators.veza import VezaEmulator
from query_relay_local.stack import LocalStack
from query_relay_local.template import DEFAULT_TEMPLATE_PATH, apply_powertools_environment, load_template

# As Lambda gives the functions the template's service name and metrics namespace before their code
# is imported (query_relay.observability names neither): the local stack runs them in this process.
apply_powertools_environment()

from query_relay import workflow  # noqa: E402

if TYPE_CHECKING:
    from mypy_boto3_stepfunctions.type_defs import HistoryEventTypeDef

TRANSITION_PRICE = 0.000025  # USD, Step Functions Standard
GB_SECOND_PRICE = 0.0000133334  # USD, Lambda arm64
REQUEST_PRICE = 0.20 / 1_000_000  # USD per Lambda invocation
BASELINE_WAIT_SECONDS = 5
GOAL_TRANSITION_RATIO = 0.2
CONNECTION = "bench-upstream"
# Their durations are mostly (scaled) waiting for the upstream, so they are scaled back up; Fetch's
# is real work and is taken as measured.
WAITING_FUNCTIONS = frozenset({"SubmitFunction", "PollFunction"})


# --- upstreams -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upstream:
    """How to run one upstream's emulator for this benchmark."""

    name: str
    long_polls: bool  # detection goal: 2 s with a long-poll, else 10 % of the elapsed time
    emulator: Callable[[], EmulatorServer]  # a new, not yet started emulator
    connection: Callable[[EmulatorServer], dict[str, Any]]  # the connection document for it
    query: dict[str, Any]  # the job spec's "query"
    set_query_seconds: Callable[[EmulatorServer, float], None]


def _esql_query_seconds(emulator: EmulatorServer, seconds: float) -> None:
    assert isinstance(emulator, EsqlEmulator)
    emulator.config.query_seconds = seconds


def _looker_query_seconds(emulator: EmulatorServer, seconds: float) -> None:
    assert isinstance(emulator, LookerEmulator)
    emulator.config.query_seconds = seconds


def _veza_query_seconds(emulator: EmulatorServer, seconds: float) -> None:
    assert isinstance(emulator, VezaEmulator)
    emulator.config.query_seconds = seconds


UPSTREAMS: dict[str, Upstream] = {
    "esql": Upstream(
        name="esql",
        long_polls=True,
        emulator=EsqlEmulator,
        connection=lambda emulator: {
            "provider": "esql",
            "base_url": emulator.base_url,
            "auth": {"type": "api_key", "api_key": "bench"},
        },
        query={"query": "FROM employees | STATS n = COUNT(*) BY department | SORT department"},
        set_query_seconds=_esql_query_seconds,
    ),
    "looker": Upstream(
        name="looker",
        long_polls=False,
        emulator=LookerEmulator,
        connection=lambda emulator: {
            "provider": "looker",
            "base_url": emulator.base_url,
            "auth": {"type": "client_credentials", "client_id": "bench", "client_secret": "bench"},
        },
        query={
            "model": "ecommerce",
            "view": "orders",
            "fields": ["users.country", "orders.count", "orders.total_revenue"],
            "sorts": ["users.country"],
        },
        set_query_seconds=_looker_query_seconds,
    ),
    "veza": Upstream(
        name="veza",
        long_polls=False,
        emulator=VezaEmulator,
        connection=lambda emulator: {
            "provider": "veza",
            "base_url": emulator.base_url,
            "auth": {"type": "bearer", "token": "bench"},
        },
        query={"include_nodes": True, "source_node_types": {"nodes": [{"node_type": "OktaUser"}]}},
        set_query_seconds=_veza_query_seconds,
    ),
}


# --- time scaling ----------------------------------------------------------------------------------


@contextlib.contextmanager
def scaled_wait_states(factor: float) -> Iterator[None]:
    """Make every Wait state of moto's ASL interpreter sleep ``Seconds / factor`` (this process)."""
    from moto.stepfunctions.parser.asl.component.state.wait.wait_function.wait_function import (  # noqa: PLC0415
        WaitFunction,
    )

    original = WaitFunction._wait_interval

    def scaled(self: Any, env: Any, wait_seconds: int) -> None:
        if wait_seconds > 0:
            env.program_state_event.wait(wait_seconds / factor)

    WaitFunction._wait_interval = scaled  # type: ignore[method-assign]
    try:
        yield
    finally:
        WaitFunction._wait_interval = original  # type: ignore[method-assign]


@dataclass
class InLambdaSleeps:
    """The (start, end) wall-clock moments of every in-Lambda sleep of the Poll, as measured."""

    spans: list[tuple[float, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def seconds_within(self, start: float, end: float) -> float:
        with self.lock:
            return sum(max(0.0, min(to, end) - max(since, start)) for since, to in self.spans)


@contextlib.contextmanager
def scaled_workflow_time(factor: float) -> Iterator[InLambdaSleeps]:
    """Make ``query_relay.workflow`` see time run ``factor`` times faster (this process): its wall
    clock (job elapsed time and deadline), the Poll's hold clock, and its in-Lambda sleeps."""
    wall_anchor, monotonic_anchor = datetime.now(UTC), time.monotonic()
    sleeps = InLambdaSleeps()

    def fast_now() -> datetime:
        return wall_anchor + (datetime.now(UTC) - wall_anchor) * factor

    def fast_monotonic() -> float:
        return monotonic_anchor + (time.monotonic() - monotonic_anchor) * factor

    def short_sleep(seconds: float) -> None:
        started = time.time()
        time.sleep(seconds / factor)
        with sleeps.lock:
            sleeps.spans.append((started, time.time()))

    original_now = workflow._now
    defaults = workflow.watch_upstream.__kwdefaults__
    assert defaults is not None
    original_defaults = dict(defaults)
    workflow._now = fast_now
    defaults.update(clock=fast_monotonic, sleep=short_sleep)
    try:
        yield sleeps
    finally:
        workflow._now = original_now
        defaults.clear()
        defaults.update(original_defaults)


class FirstRequestClock:
    """Wraps an emulator's ``handle`` to note when the first upstream request of a job arrived."""

    def __init__(self, emulator: EmulatorServer) -> None:
        self._handle = emulator.handle
        self._lock = threading.Lock()
        self.first_at: float | None = None
        emulator.handle = self._timed  # type: ignore[method-assign]

    def _timed(self, request: Any) -> Any:
        with self._lock:
            if self.first_at is None and not request.path.startswith(EmulatorServer.control_prefix):
                self.first_at = time.time()
        return self._handle(request)

    def reset(self) -> None:
        self.first_at = None


# --- one run ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFigures:
    label: str
    status: str
    transitions: int
    invocations: int
    gb_seconds: float  # real time
    latency_measured: float
    latency_real: float
    polls: int

    @property
    def dollars_per_thousand(self) -> float:
        per_query = (
            self.transitions * TRANSITION_PRICE
            + self.gb_seconds * GB_SECOND_PRICE
            + self.invocations * REQUEST_PRICE
        )
        return per_query * 1000


def _seconds(moment: datetime) -> float:
    return moment.timestamp()


def analyse(
    label: str,
    stack: LocalStack,
    history: list[HistoryEventTypeDef],
    status: str,
    completed_at: float,
    factor: float,
    sleeps: InLambdaSleeps | None = None,
) -> RunFigures:
    transitions = sum(1 for event in history if event["type"].endswith("StateEntered"))
    invocations, gb_seconds = 0, 0.0
    scheduled: dict[int, tuple[float, int, bool]] = {}  # event id -> (time, memory MB, scaled)
    fetch_entered: float | None = None
    blind = 0.0  # seconds of the detection latency spent in a Wait state (scaled)
    wait_started: float | None = None
    for event in history:
        kind, at = event["type"], _seconds(event["timestamp"])
        if kind == "LambdaFunctionScheduled":
            resource = event["lambdaFunctionScheduledEventDetails"]["resource"]
            function = stack.template.function(resource)
            scaled = function is not None and function.logical_id in WAITING_FUNCTIONS
            scheduled[event["id"]] = (at, function.memory_mb if function else 128, scaled)
        elif kind in ("LambdaFunctionSucceeded", "LambdaFunctionFailed", "LambdaFunctionTimedOut"):
            started = scheduled.get(_scheduled_id(history, event))
            if started is not None:
                invocations += 1
                duration = (at - started[0]) * (factor if started[2] else 1.0)
                gb_seconds += duration * started[1] / 1024
        elif kind == "WaitStateEntered":
            wait_started = at
        elif kind == "WaitStateExited" and wait_started is not None:
            if at > completed_at:
                blind += at - max(wait_started, completed_at)
            wait_started = None
        elif kind == "TaskStateEntered" and event["stateEnteredEventDetails"]["name"] == "Fetch":
            fetch_entered = at
    measured = (fetch_entered - completed_at) if fetch_entered is not None else float("nan")
    if sleeps is not None and fetch_entered is not None:
        blind += sleeps.seconds_within(completed_at, fetch_entered)
    polls = sum(
        1
        for event in history
        if event["type"] == "TaskStateEntered" and event["stateEnteredEventDetails"]["name"] == "Poll"
    )
    return RunFigures(
        label=label,
        status=status,
        transitions=transitions,
        invocations=invocations,
        gb_seconds=gb_seconds,
        latency_measured=measured,
        latency_real=measured - blind + blind * factor,
        polls=polls,
    )


def _scheduled_id(history: list[HistoryEventTypeDef], event: HistoryEventTypeDef) -> int:
    """The LambdaFunctionScheduled event an outcome belongs to: the latest one before it."""
    for earlier in reversed(history[: history.index(event)]):
        if earlier["type"] == "LambdaFunctionScheduled":
            return earlier["id"]
    return -1


def fixed_interval_machine(stack: LocalStack, seconds: int) -> str:
    """The application's own state machine with its Wait made a fixed ``seconds`` (the baseline)."""
    described = stack.sfn.describe_state_machine(stateMachineArn=stack.state_machine_arn)
    definition = json.loads(described["definition"])
    definition["States"]["WaitForUpstream"] = {"Type": "Wait", "Seconds": seconds, "Next": "Poll"}
    created = stack.sfn.create_state_machine(
        name="fixed-interval-baseline", definition=json.dumps(definition), roleArn=described["roleArn"]
    )
    return created["stateMachineArn"]


def run_once(
    upstream: Upstream,
    emulator: EmulatorServer,
    clock: FirstRequestClock,
    *,
    label: str,
    baseline: bool,
    query_seconds: float,
    factor: float,
    overrides: Mapping[str, str],
    sleeps: InLambdaSleeps | None,
) -> RunFigures:
    spec = {
        "connection": CONNECTION,
        "query": upstream.query,
        "output": {"format": "jsonl", "compression": "none"},
        "polling": {"initial_seconds": 1, "max_seconds": 60, "timeout_seconds": 7200},
    }
    if baseline:
        spec["polling"] = {
            "initial_seconds": BASELINE_WAIT_SECONDS,
            "max_seconds": BASELINE_WAIT_SECONDS,
            "timeout_seconds": 7200,
        }
    upstream.set_query_seconds(emulator, query_seconds / factor)
    clock.reset()
    with LocalStack(parameter_overrides=overrides) as stack:
        stack.load_connections({CONNECTION: upstream.connection(emulator)})
        machine = (
            fixed_interval_machine(stack, BASELINE_WAIT_SECONDS) if baseline else stack.state_machine_arn
        )
        started = stack.sfn.start_execution(stateMachineArn=machine, input=json.dumps(spec))
        final = stack.wait(started["executionArn"], timeout=query_seconds / factor * 3 + 60)
        history = stack.history(started["executionArn"])
        if clock.first_at is None:
            raise RuntimeError(f"{upstream.name}: the upstream saw no request")
        completed_at = clock.first_at + query_seconds / factor
        return analyse(label, stack, history, final["status"], completed_at, factor, sleeps)


# --- report ----------------------------------------------------------------------------------------


def report(upstream: Upstream, ours: RunFigures, base: RunFigures, query_seconds: float, out: Any) -> bool:
    rows = [
        ("status", ours.status, base.status),
        ("state transitions", ours.transitions, base.transitions),
        ("Poll invocations", ours.polls, base.polls),
        ("Lambda invocations", ours.invocations, base.invocations),
        ("Lambda GB-s (real time)", f"{ours.gb_seconds:.2f}", f"{base.gb_seconds:.2f}"),
        ("detection latency measured (s)", f"{ours.latency_measured:.2f}", f"{base.latency_measured:.2f}"),
        ("detection latency real time (s)", f"{ours.latency_real:.2f}", f"{base.latency_real:.2f}"),
        ("$ per 1,000 queries", f"{ours.dollars_per_thousand:.3f}", f"{base.dollars_per_thousand:.3f}"),
    ]
    print(f"{'':34}{'query-relay':>14}{'fixed 5 s':>14}", file=out)
    for name, mine, theirs in rows:
        print(f"  {name:32}{mine!s:>14}{theirs!s:>14}", file=out)
    # The local stack's per-round overhead (tens of ms) is not scaled down with the Waits, so the
    # measured baseline runs fewer rounds than a real one; the ideal one polls every 5 s exactly.
    ideal_polls = math.ceil(query_seconds / BASELINE_WAIT_SECONDS)
    ideal = base.transitions - 3 * base.polls + 3 * ideal_polls
    print(f"  fixed 5 s poller without local overhead: {ideal_polls} polls, {ideal} transitions", file=out)
    ratio = ours.transitions / ideal
    cost_ratio = ours.dollars_per_thousand / base.dollars_per_thousand
    print(
        f"  transitions ratio {ratio:.3f} against the ideal poller, "
        f"{ours.transitions / base.transitions:.3f} against the measured one "
        f"(goal <= {GOAL_TRANSITION_RATIO}); "
        f"$ ratio {cost_ratio:.3f} against the measured one",
        file=out,
    )
    latency_goal = "2 s" if upstream.long_polls else "10 % of the query time"
    share = ours.latency_real / query_seconds
    print(f"  detection latency goal: <= {latency_goal} (seen: {share:.1%} of the query time)", file=out)
    return ours.status == base.status == "SUCCEEDED"


@contextlib.contextmanager
def _workflow_time(upstream: Upstream, factor: float) -> Iterator[InLambdaSleeps | None]:
    """A long-poll waits on the upstream's side, in its (scaled) real time: leave the clocks alone."""
    if upstream.long_polls:
        yield None
        return
    with scaled_workflow_time(factor) as sleeps:
        yield sleeps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--query-minutes", type=float, default=10.0, help="the query's real duration (10)")
    parser.add_argument("--factor", type=float, default=20.0, help="time is divided by this (20)")
    parser.add_argument("--upstream", choices=sorted(UPSTREAMS), action="append", help="default: all")
    parser.add_argument(
        "--long-poll-seconds",
        type=float,
        help="the Poll's hold in real seconds (default: template.yaml's LongPollMaxSeconds)",
    )
    args = parser.parse_args(argv)
    query_seconds = args.query_minutes * 60
    factor: float = args.factor
    template_defaults = load_template(DEFAULT_TEMPLATE_PATH).parameter_values
    hold = args.long_poll_seconds
    if hold is None:
        hold = float(template_defaults["LongPollMaxSeconds"])
    submit_wait = float(template_defaults["SubmitWaitSeconds"])
    scaled_hold = {
        "LongPollMaxSeconds": f"{hold / factor:g}",
        "SubmitWaitSeconds": f"{submit_wait / factor:g}",
    }
    # Where the workflow's own clocks run faster, the hold is measured by them: keep its real value.
    real_hold = {"LongPollMaxSeconds": f"{hold:g}", "SubmitWaitSeconds": f"{submit_wait / factor:g}"}
    base_overrides = {"LongPollMaxSeconds": "0", "SubmitWaitSeconds": f"{submit_wait / factor:g}"}
    print(
        f"poll cost: a {args.query_minutes:g}-minute query, time divided by {factor:g} "
        f"(query {query_seconds / factor:g} s; Poll hold {hold:g} s -> {hold / factor:g} s; "
        f"submit wait {submit_wait:g} s -> {submit_wait / factor:g} s; "
        f"Wait states sleep Seconds/{factor:g}; without a long-poll the workflow's clocks run "
        f"x{factor:g} and its in-Lambda sleeps /{factor:g}).\n"
        f"Baseline: the same machine with a fixed {BASELINE_WAIT_SECONDS} s Wait and no long-poll.",
        flush=True,
    )
    ok = True
    with scaled_wait_states(factor):
        for name in args.upstream or sorted(UPSTREAMS):
            upstream = UPSTREAMS[name]
            print(f"\n== {name}", flush=True)
            ours_overrides = scaled_hold if upstream.long_polls else real_hold
            with _workflow_time(upstream, factor) as sleeps, upstream.emulator() as emulator:
                clock = FirstRequestClock(emulator)
                common = {"query_seconds": query_seconds, "factor": factor, "sleeps": sleeps}
                ours = run_once(
                    upstream,
                    emulator,
                    clock,
                    label="ours",
                    baseline=False,
                    overrides=ours_overrides,
                    **common,
                )
                base = run_once(
                    upstream, emulator, clock, label="base", baseline=True, overrides=base_overrides, **common
                )
            ok = report(upstream, ours, base, query_seconds, sys.stdout) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
