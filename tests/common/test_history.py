"""thin_evenly: at most ``limit`` points spread evenly from the first to the last."""

from __future__ import annotations

from itertools import pairwise

import pytest

from common.history import thin_evenly


@pytest.mark.parametrize("length", [0, 1, 5, 10])
def test_short_sequences_are_returned_whole(length: int) -> None:
    """With no more items than the limit, every item comes back, in order."""
    items = list(range(length))
    assert thin_evenly(items, 10) == items


def test_a_short_sequence_comes_back_as_a_new_list() -> None:
    """The result is a list of its own, whatever sequence came in."""
    items = (1, 2, 3)
    thinned = thin_evenly(items, 10)
    assert thinned == [1, 2, 3]
    assert isinstance(thinned, list)


@pytest.mark.parametrize(("length", "limit"), [(11, 10), (100, 7), (1000, 2), (5001, 500)])
def test_first_and_last_are_kept(length: int, limit: int) -> None:
    """Thinning keeps the oldest and the newest item."""
    thinned = thin_evenly(list(range(length)), limit)
    assert (thinned[0], thinned[-1]) == (0, length - 1)


@pytest.mark.parametrize(("length", "limit"), [(11, 10), (100, 7), (1000, 2), (5001, 500)])
def test_exactly_limit_items_are_kept(length: int, limit: int) -> None:
    """A longer sequence is thinned to exactly ``limit`` distinct items."""
    thinned = thin_evenly(list(range(length)), limit)
    assert len(thinned) == len(set(thinned)) == limit


@pytest.mark.parametrize(("length", "limit"), [(100, 7), (1000, 13), (5001, 500), (12, 11)])
def test_kept_items_are_evenly_spread_in_order(length: int, limit: int) -> None:
    """The gaps between kept items are increasing positions that differ by at most one."""
    thinned = thin_evenly(list(range(length)), limit)
    gaps = [later - earlier for earlier, later in pairwise(thinned)]
    assert min(gaps) >= 1
    assert max(gaps) - min(gaps) <= 1


def test_an_exact_division_picks_every_nth_item() -> None:
    """101 items thinned to 11 are every tenth one."""
    assert thin_evenly(list(range(101)), 11) == list(range(0, 101, 10))


def test_a_limit_of_one_keeps_the_newest() -> None:
    """With room for one point, it is the newest."""
    assert thin_evenly(["old", "middle", "new"], 1) == ["new"]
