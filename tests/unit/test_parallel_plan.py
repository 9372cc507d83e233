"""How a split result is cut into parallel fetch branches (query_relay.parallel)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from query_relay.parallel import MAX_FETCH_BRANCHES, MAX_PARALLEL_FETCH, branch_runs, plan_fetch, weights
from query_relay.providers.base import Piece

MIB = 1024 * 1024


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=10**12), max_size=400),
    least=st.integers(min_value=1, max_value=10**10),
    most=st.integers(min_value=1, max_value=150),
)
def test_runs_cover_every_piece_once_in_order_and_never_number_more_than_allowed(
    sizes: list[int], least: int, most: int
) -> None:
    runs = branch_runs(sizes, least=least, most=most)
    # Contiguous, in order, every piece once
    assert [index for first, end in runs for index in range(first, end)] == list(range(len(sizes)))
    assert all(first < end for first, end in runs)
    # As many as the whole holds the smallest branch, never more than allowed
    assert len(runs) <= max(1, min(most, sum(sizes) // least))
    # Pieces of one size are shared out equally (the runs differ by one piece at most)
    if len(set(sizes)) == 1 and sizes[0] > 0:
        lengths = {end - first for first, end in runs}
        assert max(lengths) - min(lengths) <= 1


def test_two_pieces_of_about_one_branch_each_are_two_branches() -> None:
    assert branch_runs([2_877_669, 2_939_252], least=1, most=100) == [(0, 1), (1, 2)]
    assert branch_runs([10, 1, 1, 1, 10], least=1, most=2) == [(0, 2), (2, 5)]
    assert branch_runs([100, 1, 1], least=1, most=3) == [(0, 1), (1, 2), (2, 3)]
    assert branch_runs([0, 0, 0], least=1, most=3) == [(0, 3)]
    assert branch_runs([], least=1, most=3) == []


def test_a_result_below_the_smallest_branch_is_read_by_one_fetch() -> None:
    pieces = [Piece(rows=1000, bytes=10 * MIB)] * 6  # 60 MiB
    assert plan_fetch(pieces, max_parallel=8, min_bytes=64 * MIB) is None


def test_a_large_result_is_shared_out_in_branches_of_the_smallest_size_at_least() -> None:
    pieces = [Piece(rows=1000, bytes=16 * MIB)] * 40  # 640 MiB
    plan = plan_fetch(pieces, max_parallel=8, min_bytes=64 * MIB)
    assert plan is not None
    assert [(branch.first, branch.end) for branch in plan.branches] == [(4 * n, 4 * n + 4) for n in range(10)]
    assert [branch.index for branch in plan.branches] == list(range(10))
    assert plan.max_parallel == 8


def test_a_huge_result_keeps_to_the_most_branches() -> None:
    pieces = [Piece(bytes=100 * MIB)] * 5000  # 500 GB
    plan = plan_fetch(pieces, max_parallel=40, min_bytes=64 * MIB)
    assert plan is not None
    assert len(plan.branches) == MAX_FETCH_BRANCHES
    assert plan.max_parallel == MAX_PARALLEL_FETCH


@pytest.mark.parametrize(
    ("pieces", "max_parallel"),
    [(None, 8), ([], 8), ([Piece(bytes=10**12)], 8), ([Piece(bytes=10**12)] * 4, 1)],
)
def test_no_plan_for_an_unsplit_result_a_lone_piece_or_a_connection_that_fetches_one_at_a_time(
    pieces: list[Piece] | None, max_parallel: int
) -> None:
    assert plan_fetch(pieces, max_parallel=max_parallel, min_bytes=1) is None


def test_pieces_of_unknown_size_weigh_as_those_the_upstream_sizes_or_as_a_branch_each() -> None:
    assert weights([Piece(bytes=10), Piece(), Piece(bytes=30)], unknown=7) == [10, 20, 30]
    assert weights([Piece(rows=5), Piece()], unknown=7) == [7, 7]


def test_fewer_branches_than_the_connection_allows_run_all_at_once() -> None:
    plan = plan_fetch([Piece(bytes=MIB)] * 3, max_parallel=8, min_bytes=1)
    assert plan is not None
    assert len(plan.branches) == 3
    assert plan.max_parallel == 3
