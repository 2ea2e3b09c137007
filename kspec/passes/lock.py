"""kspec.lock.json: every value kspec chose, so the next run chooses the same.

The lock is honoured value by value: a locked value still valid (inside its
range, not taken by a value the input now states) is kept, anything else is
allocated afresh.  Reading is strict and located; writing is canonical
(sorted keys, one trailing newline) so the file diffs cleanly in review.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from kspec.diagnostics import DiagnosticSink, Span, register_source
from kspec.model import Allocation

LOCK_VERSION = 1
KINDS = ("node", "podCIDR", "podIP", "clusterIP", "nodePort", "healthCheckNodePort")


@dataclass
class Lock:
    """kind -> owner -> value(s), as strings (ports as ints)."""

    entries: dict[str, dict[str, object]] = field(default_factory=lambda: {k: {} for k in KINDS})

    def get(self, kind: str, owner: str) -> object | None:
        return self.entries.get(kind, {}).get(owner)


def parse_lock(text: str, name: str, sink: DiagnosticSink) -> Lock:
    """Read a lock file; a malformed one is an input error, never silently ignored."""
    register_source(name, text)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        line = getattr(exc, "lineno", 1)
        col = getattr(exc, "colno", 1)
        sink.error(f"the lock file is not valid JSON: {getattr(exc, 'msg', exc)}", Span(name, line, col, line, col + 1),
                   "fix the file, or delete it to allocate everything afresh")
        return Lock()
    where = Span(name, 1, 1, 1, 1)
    if not isinstance(data, dict) or data.get("version") != LOCK_VERSION or not isinstance(data.get("allocations"), dict):
        sink.error(f"{name} is not a kspec lock file (version {LOCK_VERSION})", where,
                   "delete it to allocate everything afresh")
        return Lock()
    lock = Lock()
    for kind, table in data["allocations"].items():
        if kind not in KINDS or not isinstance(table, dict):
            sink.error(f"unknown allocation kind {kind!r} in the lock file", where, "expected one of " + ", ".join(KINDS))
            continue
        for owner, value in table.items():
            if isinstance(value, (str, int)) and not isinstance(value, bool) or \
                    isinstance(value, list) and all(isinstance(v, str) for v in value):
                lock.entries[kind][owner] = value
            else:
                sink.error(f"bad lock entry {kind} {owner}: {value!r}", where, "delete the entry to allocate it afresh")
    return lock


def render_lock(allocations: tuple[Allocation, ...]) -> str:
    """The lock file text for a set of allocations (deterministic)."""
    table: dict[str, dict[str, object]] = {k: {} for k in KINDS}
    for allocation in allocations:
        value: object = allocation.value
        if allocation.kind in ("podCIDR", "podIP", "clusterIP"):
            value = allocation.value.split(",")
        elif allocation.kind in ("nodePort", "healthCheckNodePort"):
            value = int(allocation.value)
        table[allocation.kind][allocation.owner] = value
    body = {"version": LOCK_VERSION,
            "allocations": {k: dict(sorted(v.items())) for k, v in table.items()}}
    return json.dumps(body, indent=2, sort_keys=False) + "\n"
