"""How long to wait before the next poll.

A state transition on Step Functions Standard costs about as much as 15 s of a small arm64
Lambda, so the wait grows geometrically from ``initial_seconds`` to ``max_seconds`` (few
transitions on long queries, quick reaction on short ones) and never undercuts an upstream's
Retry-After. The wait is an integer because the Wait state's ``SecondsPath`` requires one.
"""

from __future__ import annotations

import math

from query_relay.models import PollingSpec

GROWTH = 1.5


def next_wait_seconds(
    polling: PollingSpec,
    polls_done: int,
    *,
    retry_after_seconds: float | None = None,
    seconds_left: float | None = None,
) -> int:
    """The wait before poll number ``polls_done + 1``; clamped to the time the job has left."""
    wait = min(polling.max_seconds, math.ceil(polling.initial_seconds * GROWTH**polls_done))
    if retry_after_seconds is not None:
        wait = max(wait, math.ceil(retry_after_seconds))
    if seconds_left is not None:
        wait = min(wait, math.ceil(seconds_left))
    return max(1, wait)
