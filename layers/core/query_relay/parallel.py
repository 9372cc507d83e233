"""How a result that its upstream splits into pieces (Snowflake partitions, Databricks chunks) is
cut into the branches of a parallel fetch (the state machine's FetchBranches Map).

Each branch is a contiguous run of pieces, read by one Fetch invocation (or a few, when it runs
short of time) and landed as its own parts. Branches share the pieces' bytes out equally, as far
as the pieces allow: as many branches as the result holds ``min_bytes`` (a Lambda invocation and
the re-read of the result's metadata cost about a second, the time to land tens of MB), never more
than ``MAX_FETCH_BRANCHES`` (or what the execution's history budget leaves room for), which keeps
the Map's history (about ten events a branch) and its items far inside Step Functions' limits
whatever the result's size.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from fractions import Fraction
from itertools import accumulate, pairwise

from query_relay.providers.base import Piece
from query_relay.state import FetchBranch, FetchPlan

MAX_FETCH_BRANCHES = 100
# An Inline Map runs at most 40 iterations at a time
# (https://docs.aws.amazon.com/step-functions/latest/dg/state-map-inline.html).
MAX_PARALLEL_FETCH = 40


def plan_fetch(
    pieces: Sequence[Piece] | None, *, max_parallel: int, min_bytes: int, most: int = MAX_FETCH_BRANCHES
) -> FetchPlan | None:
    """The branches of a parallel fetch, or None when one Fetch reads the result (it is not split,
    the connection allows no parallel fetch, or it is too small to share out)."""
    if pieces is None or len(pieces) < 2 or max_parallel < 2:
        return None
    runs = branch_runs(weights(pieces, min_bytes), least=min_bytes, most=most)
    if len(runs) < 2:
        return None
    branches = [FetchBranch(index=index, first=first, end=end) for index, (first, end) in enumerate(runs)]
    return FetchPlan(branches=branches, max_parallel=min(max_parallel, len(branches), MAX_PARALLEL_FETCH))


def weights(pieces: Sequence[Piece], unknown: int) -> list[int]:
    """Each piece's size in bytes: as the upstream says; else the mean of those it sizes; else
    ``unknown`` (then every piece may be a branch of its own)."""
    known = [piece.bytes for piece in pieces if piece.bytes is not None]
    fill = sum(known) // len(known) if known else unknown
    return [fill if piece.bytes is None else piece.bytes for piece in pieces]


def branch_runs(sizes: Sequence[int], *, least: int, most: int) -> list[tuple[int, int]]:
    """Contiguous runs ``(first, end)`` covering every piece in order, as equal in size as the
    pieces allow: as many as the whole holds ``least`` bytes (one at least), never more than
    ``most`` nor more than there are pieces. The k-th of n runs ends at the edge between pieces
    nearest k/n of the whole (or just after the run before, when a large piece holds two edges)."""
    if most < 1 or least < 1:
        raise ValueError("least and most must be at least 1")
    total = sum(sizes)
    count = max(1, min(most, total // least, len(sizes)))
    reached = list(accumulate(sizes, initial=0))  # bytes before each edge, scaled below by count
    cuts: list[int] = []
    for number in range(1, count):
        boundary = total * number
        edge = bisect_left(reached, Fraction(boundary, count))
        if edge > 0 and (
            edge == len(reached) or boundary - reached[edge - 1] * count <= reached[edge] * count - boundary
        ):
            edge -= 1
        edge = max(edge, cuts[-1] + 1 if cuts else 1)
        if edge < len(sizes):
            cuts.append(edge)
    edges = [0, *cuts, len(sizes)] if sizes else []
    return list(pairwise(edges))
