"""Which sources (and source ports) a set of walk leaves covers, and whether unmodelled matches could
change that.

The iptables and IPVS checkers both decide "is this endpoint reachable from every source" and "is this
packet wrong whatever the unmodelled matches answer" the same way, so the interval arithmetic is shared.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterable, Sequence

from kspec.verify.chains import Leaf
from kspec.verify.encode import SPORT, SRC, Intervals
from kspec.verify.node_context import NodeContext


def covers(assignments: Sequence[Sequence[tuple[int, str, bool]]], depth: int = 0) -> bool:
    """Whether leaves with these opaque answers (in the order the walk asked) cover every possible answer.

    A leaf that asked nothing more covers everything; otherwise some opaque
    match asked next must be covered both when it matches and when it does not.
    """
    groups: dict[tuple[int, str], tuple[list, list]] = {}
    for seq in assignments:
        if len(seq) <= depth:
            return True
        line, text, value = seq[depth]
        groups.setdefault((line, text), ([], []))[0 if value else 1].append(seq)
    return any(yes and no and covers(yes, depth + 1) and covers(no, depth + 1) for yes, no in groups.values())


def as_set(value: int | Intervals) -> Intervals:
    return Intervals.point(value) if type(value) is int else value


def union_of(sets: Iterable[Intervals]) -> Intervals:
    spans: list[tuple[int, int]] = []
    for part in sets:
        spans.extend(part.spans)
    return Intervals(spans)


def uncovered_cells(ctx: NodeContext, region: Intervals, reach: list[Leaf]) -> tuple[Intervals, Intervals]:
    """(sources that surely miss the endpoint, sources that miss it only for some unmodelled-match answers).

    Sources and source ports are cut into cells no leaf splits; in each cell
    the leaves that reach the endpoint must cover every opaque answer.
    """
    src_bounds = {lo for lo, _ in region.spans}
    sport_bounds = {ctx.sports.first()}
    for leaf in reach:
        for lo, hi in as_set(leaf.domain(SRC)).spans:
            src_bounds.update((lo, hi + 1))
        for lo, hi in as_set(leaf.domain(SPORT)).spans:
            sport_bounds.update((lo, hi + 1))
    cuts = sorted(src_bounds)
    sports = [p for p in sorted(sport_bounds) if p in ctx.sports]
    missing: list[tuple[int, int]] = []
    undecided: list[tuple[int, int]] = []
    for lo, hi in region.spans:
        inner = [c for c in cuts[bisect_left(cuts, lo + 1):bisect_left(cuts, hi + 1)]]
        for start, stop in zip([lo] + inner, inner + [hi + 1]):
            holding = [leaf for leaf in reach if start in as_set(leaf.domain(SRC))]
            for sport in sports:
                here = [leaf.opaque_list() for leaf in holding if sport in as_set(leaf.domain(SPORT))]
                if not here:
                    missing.append((start, stop - 1))
                    break
                if not covers(here):
                    undecided.append((start, stop - 1))
                    break
    return Intervals(missing), Intervals(undecided)


def leaf_holds(leaf: Leaf, values: Sequence[int]) -> bool:
    """Whether the packet ``values`` (src, dst, proto, sport, dport as it entered) reaches ``leaf``."""
    return all(v in as_set(leaf.domain(f)) for f, v in enumerate(values))
