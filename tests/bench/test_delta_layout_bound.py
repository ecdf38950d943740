"""bench/delta_layout_bound.py's dynamic programme against brute force over every layout."""

from __future__ import annotations

import itertools

import pytest

from bench.delta_layout_bound import restart_on_bottom, smallest_repository


def brute_force(versions: int, full: float, rows: float, overhead: float, depth: int) -> float:
    """Every assignment of a parent (another version, or none: stored whole) to each version
    but the newest, which is whole; loops and chains deeper than ``depth`` are skipped."""
    newest = versions - 1
    best = float("inf")
    for parents in itertools.product(range(-1, versions), repeat=versions - 1):
        parent = dict(enumerate(parents))
        if any(p == v for v, p in parent.items()):
            continue
        cost = full
        for v, p in parent.items():
            d, node = 0, v
            while node != newest and parent[node] != -1 and d <= depth:
                node, d = parent[node], d + 1
            if d > depth:
                break
            cost += full if p == -1 else overhead + rows * abs(v - p)
        else:
            best = min(best, cost)
    return best


@pytest.mark.parametrize(("versions", "depth"), [(4, 1), (5, 1), (5, 2), (6, 1), (6, 2), (6, 3)])
@pytest.mark.parametrize(("full", "rows", "overhead"), [(10.0, 1.0, 0.3), (3.0, 1.0, 0.0)])
def test_the_programme_finds_the_brute_force_minimum(
    versions: int, depth: int, full: float, rows: float, overhead: float
) -> None:
    got = smallest_repository(versions, full, rows, overhead, depth)
    assert got == pytest.approx(brute_force(versions, full, rows, overhead, depth))


def test_one_unbounded_chain_is_the_floor() -> None:
    # Deep enough for one chain: the first night plus every night's rows (DUMPS.md's floor).
    assert smallest_repository(13, 10.4, 0.127, 0.0, 12) == pytest.approx(10.4 + 12 * 0.127)
    # One level less and a chain cannot hold them all: dearer than the floor.
    assert smallest_repository(13, 10.4, 0.127, 0.0, 11) > 10.4 + 12 * 0.127 + 0.01


@pytest.mark.parametrize(("versions", "depth", "overhead"), [(6, 1, 0.3), (6, 2, 0.0), (9, 3, 0.1)])
def test_todays_layout_is_never_below_the_minimum(
    versions: int, depth: int, overhead: float
) -> None:
    today = restart_on_bottom(versions, 3.0, 1.0, overhead, depth)
    best = smallest_repository(versions, 3.0, 1.0, overhead, depth)
    assert today >= best - 1e-9
    assert today == pytest.approx(brute_force_forward_policy(versions, 3.0, 1.0, overhead, depth))


def brute_force_forward_policy(
    versions: int, full: float, rows: float, overhead: float, depth: int
) -> float:
    """The restart-on-bottom rule written out night by night, as the docstring says it."""
    total, bottom, chain = full, 0, [0]
    for night in range(1, versions):
        if len(chain) - 1 < depth:
            total += overhead + rows
            chain.append(night)
        elif overhead + rows * (night - bottom) <= full / 2:
            total += overhead + rows * (night - bottom)
            chain = [bottom, night]
        else:
            total += full
            bottom, chain = night, [night]
    return total
