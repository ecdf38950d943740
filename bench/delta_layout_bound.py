"""The smallest repository any layout of delta chains can reach for N nights of a dump.

A model, not a measurement: N versions of one dump (night 0 and N-1 more), each night
changing a share of the rows at random. Every version is stored either whole (``--full``
MB) or as a delta of another version; a delta spanning s nights costs ``overhead + s x
rows`` MB (``--rows``: one night's changed rows compressed, measured by
bench/dump_dedup.py --nights; ``--overhead``: what one delta version costs beyond its rows:
frames, envelopes, index entries, the tree's list of chunk ids). Chains are at most
``depth`` deltas deep, and the newest version is stored whole, as issue 16's second
30-night bar (reading night 30 in at most 1.5x the time of night 1) needs. The minimum over
every such layout, forward, reverse or mixed, is found exactly by a dynamic programme over
intervals (in an optimal layout on a line every subtree covers contiguous nights); it was
checked against brute force over every parent assignment for up to 6 versions.

It answers: for which chain depth and per-delta overhead can a repository after 30
nights be at most 1.5x the first night's (issue 16's bar)? See bench/DUMPS.md
"30 nights: what any layout can reach".

    .venv/bin/python bench/delta_layout_bound.py [--versions 31] [--full 10.4] [--rows 0.127]
        [--depths 8,16,32] [--overheads 0.3,0.15,0.05,0]
"""

from __future__ import annotations

import argparse
from functools import cache

INF = float("inf")


def smallest_repository(
    versions: int, full: float, rows: float, overhead: float, depth: int
) -> float:
    """MB of the cheapest layout of ``versions`` versions, the newest stored whole, chains at
    most ``depth`` deltas deep (a version stored whole starts a new chain)."""

    def delta(span: int) -> float:
        return overhead + rows * span

    @cache
    def cover(a: int, b: int, parent: int, budget: int) -> float:
        # Cheapest way to store versions a..b, which lie on one side of ``parent`` and next
        # to it, each a delta of ``parent`` (while budget >= 1), of one of them, or whole.
        if a > b:
            return 0.0
        left = b < parent
        best = INF
        for u in range(a, b + 1):
            for head, below in ((delta(abs(parent - u)) if budget >= 1 else INF, budget - 1),
                                (full, depth)):  # fmt: skip
                if head == INF:
                    continue
                # Versions between u and parent hang under u; those beyond u are split
                # into a run under u and a run under parent.
                if left:
                    between = cover(u + 1, b, u, below)
                    lo, hi = a, u - 1
                else:
                    between = cover(a, u - 1, u, below)
                    lo, hi = u + 1, b
                if lo > hi:
                    best = min(best, head + between)
                    continue
                for m in range(lo, hi + 2):
                    if left:
                        rest = cover(m, hi, u, below) + cover(lo, m - 1, parent, budget)
                    else:
                        rest = cover(lo, m - 1, u, below) + cover(m, hi, parent, budget)
                    best = min(best, head + between + rest)
        return best

    return full + cover(0, versions - 2, versions - 1, depth)


def restart_on_bottom(
    versions: int, full: float, rows: float, overhead: float, depth: int
) -> float:
    """MB of the layout today's writers make (repo_format.md "When deltas are written"): each
    night a delta of the night before until the chain is ``depth`` deep, then a delta of the
    chain's bottom version (stored whole), one level deep, spanning every night since it, if
    that delta costs at most half a whole version; otherwise a whole version."""
    total, bottom, tip_depth = full, 0, 0
    for night in range(1, versions):
        if tip_depth < depth:
            total, tip_depth = total + overhead + rows, tip_depth + 1
        elif overhead + rows * (night - bottom) <= full / 2:
            total, tip_depth = total + overhead + rows * (night - bottom), 1
        else:
            total, bottom, tip_depth = total + full, night, 0
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=31, help="night 0 and 30 more")
    parser.add_argument("--full", type=float, default=10.4, help="MB of a whole version")
    parser.add_argument("--rows", type=float, default=0.127, help="MB of one night's rows")
    parser.add_argument("--depths", default="8,16,32")
    parser.add_argument("--overheads", default="0.3,0.15,0.05,0")
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    overheads = [float(o) for o in args.overheads.split(",")]
    for title, layout in (
        ("the best layout: MB a delta costs beyond its rows", smallest_repository),
        ("today's writers (restart on the bottom blob)", restart_on_bottom),
    ):
        print(f"| {title} | " + " | ".join(f"depth <= {d}" for d in depths) + " |")
        print("|---|" + "---|" * len(depths))
        for overhead in overheads:
            cells = [
                layout(args.versions, args.full, args.rows, overhead, d) / args.full for d in depths
            ]
            print(f"| {overhead:g} | " + " | ".join(f"{c:.2f}x" for c in cells) + " |")
        print()


if __name__ == "__main__":
    main()
