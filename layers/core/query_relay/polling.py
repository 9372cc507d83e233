"""When to look at the upstream again, and whether to wait for it inside the Poll Lambda.

Prices that shape the schedule (Step Functions Standard, Lambda arm64): a state transition costs
$0.000025, as much as ~15 s of a 128 MB Lambda, and one Wait -> Poll -> Choice round is three of
them. So:

- The gap between checks grows (``initial_seconds`` x 1.5 per poll, up to ``max_seconds``) but
  never beyond ``LATENCY_SHARE`` of the job's running time: a finished query waits at most ~10 %
  longer than it ran before Fetch starts. Gaps are jittered down (never up) so that jobs started
  together drift apart, and never undercut an upstream's Retry-After.
- A gap shorter than a round's price in Lambda time is waited inside the Poll Lambda (a short
  sleep, or a long-poll where the upstream holds the request until the task ends) for as long as
  the Poll may hold; only then does the state machine run a Wait state.
- After a long-poll the Wait state is the shortest possible (1 s): while the state machine waits
  nobody is watching, while the Lambda long-polls completion is seen at once.

Wait states take whole seconds (``SecondsPath`` needs an integer >= 1); in-Lambda gaps do not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from query_relay.models import PollingSpec

GROWTH = 1.5
# A finished task should wait at most this share of the job's running time to be noticed.
LATENCY_SHARE = 0.1
# Gaps are drawn from [1 - JITTER, 1] x their nominal length.
JITTER = 0.2
# Shortest gap between two checks of an upstream that cannot long-poll.
MIN_GAP_SECONDS = 1.0
# A long-poll shorter than this is not worth a request: hand over to the state machine instead.
MIN_LONG_POLL_SECONDS = 1.0
# The Wait state after a long-poll, and the floor of every Wait state.
MIN_WAIT_SECONDS = 1

TRANSITION_PRICE = 0.000025  # USD per state transition (Standard workflows)
TRANSITIONS_PER_ROUND = 3  # Wait -> Poll -> Choice
LAMBDA_GB_SECOND_PRICE = 0.0000133334  # USD, arm64
POLL_MEMORY_MB = 128  # the Poll function's MemorySize in template.yaml

Jitter = Callable[[], float]  # a number in [0, 1), e.g. random.random


def break_even_seconds(memory_mb: int = POLL_MEMORY_MB) -> float:
    """How long a Lambda of ``memory_mb`` can wait for the price of one Wait -> Poll -> Choice round
    (45 s at 128 MB): a shorter gap is cheaper waited inside the Poll Lambda."""
    per_second = LAMBDA_GB_SECOND_PRICE * memory_mb / 1024
    return TRANSITIONS_PER_ROUND * TRANSITION_PRICE / per_second


def check_gap_seconds(
    polling: PollingSpec,
    polls_done: int,
    *,
    elapsed_seconds: float | None = None,
    retry_after_seconds: float | None = None,
    jitter: Jitter | None = None,
) -> float:
    """The gap before check number ``polls_done + 1`` (fractional seconds)."""
    gap = min(float(polling.max_seconds), polling.initial_seconds * GROWTH**polls_done)
    if elapsed_seconds is not None:
        gap = min(gap, max(MIN_GAP_SECONDS, LATENCY_SHARE * elapsed_seconds))
    if jitter is not None:
        gap = max(MIN_GAP_SECONDS, gap * (1 - JITTER * jitter()))
    if retry_after_seconds is not None:
        gap = max(gap, retry_after_seconds)
    return gap


def next_wait_seconds(
    polling: PollingSpec,
    polls_done: int,
    *,
    retry_after_seconds: float | None = None,
    seconds_left: float | None = None,
    elapsed_seconds: float | None = None,
    jitter: Jitter | None = None,
) -> int:
    """The Wait state's seconds before poll number ``polls_done + 1``; clamped to the time the job
    has left."""
    wait = math.ceil(
        check_gap_seconds(
            polling,
            polls_done,
            elapsed_seconds=elapsed_seconds,
            retry_after_seconds=retry_after_seconds,
            jitter=jitter,
        )
    )
    if seconds_left is not None:
        wait = min(wait, math.ceil(seconds_left))
    return max(MIN_WAIT_SECONDS, wait)


@dataclass(frozen=True)
class NextCheck:
    """What a Poll does after a check that found the task running: wait ``in_lambda_seconds`` here
    and check again, or (``in_lambda_seconds`` None) return and let a Wait state of
    ``wait_seconds`` run."""

    in_lambda_seconds: float | None
    wait_seconds: int


def plan_next_check(
    polling: PollingSpec,
    *,
    polls_done: int,
    elapsed_seconds: float,
    hold_left_seconds: float,
    job_seconds_left: float,
    long_polls: bool,
    retry_after_seconds: float | None = None,
    jitter: Jitter | None = None,
    memory_mb: int = POLL_MEMORY_MB,
) -> NextCheck:
    """Decide, after a check found the task running, how the next check happens.

    ``hold_left_seconds`` is how much longer this Poll may hold; ``long_polls`` says the upstream
    itself waits for the task to end (the next check then starts at once and blocks)."""
    if long_polls and retry_after_seconds is None:
        if hold_left_seconds >= MIN_LONG_POLL_SECONDS:
            return NextCheck(in_lambda_seconds=0.0, wait_seconds=MIN_WAIT_SECONDS)
        return NextCheck(in_lambda_seconds=None, wait_seconds=MIN_WAIT_SECONDS)
    gap = check_gap_seconds(
        polling,
        polls_done,
        elapsed_seconds=elapsed_seconds,
        retry_after_seconds=retry_after_seconds,
        jitter=jitter,
    )
    if gap <= min(hold_left_seconds, break_even_seconds(memory_mb)):
        return NextCheck(in_lambda_seconds=gap, wait_seconds=math.ceil(gap))
    wait = max(MIN_WAIT_SECONDS, min(math.ceil(gap), math.ceil(max(job_seconds_left, 0.0))))
    return NextCheck(in_lambda_seconds=None, wait_seconds=wait)
