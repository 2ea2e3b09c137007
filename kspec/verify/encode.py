"""Packets as numbers: interval sets for exact slicing, bit-vectors for Z3, one solver wrapper.

A packet is five fields -- source and destination address, protocol, source
and destination port -- plus the mark, which the rule walk keeps concrete.
Every match iptables offers on these fields (``-s``, ``-d``, ``-p``,
``--dport``, ``multiport``, ``addrtype``) is "field in a set of intervals",
so :class:`Intervals` decides most questions exactly without a solver, and
:func:`member` states the rest to Z3, where a CIDR becomes a comparison of
its prefix bits (``Extract``), the cheapest form for the solver.

:class:`Solver` is the only way kspec talks to Z3: a fresh solver per
question (accumulated constraints slow every later query), a wall-clock
timeout and a deterministic resource limit, and ``unknown`` reported as
such, never as a proof.
"""

from __future__ import annotations

import bisect
import ipaddress
from dataclasses import dataclass
from typing import Iterable, Sequence

import z3

SRC, DST, PROTO, SPORT, DPORT = range(5)
FIELDS = ("src", "dst", "proto", "sport", "dport")
PORT_MAX = 65535
PROTO_MAX = 255
# rlimit units Z3 spends per second of bit-vector solving (measured on this 2-core machine: ~6M/s)
RLIMIT_PER_SECOND = 6_000_000


def address_bits(family: int) -> int:
    return 32 if family == 4 else 128


def field_bits(field: int, family: int) -> int:
    if field in (SRC, DST):
        return address_bits(family)
    return 8 if field == PROTO else 16


def field_max(field: int, family: int) -> int:
    return (1 << field_bits(field, family)) - 1


class Intervals:
    """A set of integers as sorted, disjoint, non-adjacent closed intervals (immutable).

    >>> a = Intervals.of_network(ipaddress.ip_network("10.0.0.0/8"))
    >>> (a - Intervals.point(int(ipaddress.ip_address("10.0.0.1")))).count()
    16777215
    """

    __slots__ = ("spans",)

    def __init__(self, spans: Iterable[tuple[int, int]] = ()) -> None:
        spans = spans if isinstance(spans, (list, tuple)) else list(spans)
        if len(spans) <= 1:  # the common case (one address, one network): nothing to sort or merge
            self.spans = tuple((lo, hi) for lo, hi in spans if lo <= hi)
            return
        merged: list[list[int]] = []
        for lo, hi in sorted(spans):
            if lo > hi:
                continue
            if merged and lo <= merged[-1][1] + 1:
                if hi > merged[-1][1]:
                    merged[-1][1] = hi
            else:
                merged.append([lo, hi])
        self.spans: tuple[tuple[int, int], ...] = tuple((lo, hi) for lo, hi in merged)

    @classmethod
    def _raw(cls, spans: tuple[tuple[int, int], ...]) -> "Intervals":
        new = cls.__new__(cls)
        new.spans = spans
        return new

    @classmethod
    def point(cls, value: int) -> "Intervals":
        return cls._raw(((value, value),))

    @classmethod
    def span(cls, lo: int, hi: int) -> "Intervals":
        return cls._raw(((lo, hi),) if lo <= hi else ())

    @classmethod
    def of_network(cls, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> "Intervals":
        return cls._raw(((int(net.network_address), int(net.broadcast_address)),))

    @classmethod
    def of_networks(cls, nets: Iterable) -> "Intervals":
        return cls((int(n.network_address), int(n.broadcast_address)) for n in nets)

    def __bool__(self) -> bool:
        return bool(self.spans)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Intervals) and self.spans == other.spans

    def __hash__(self) -> int:
        return hash(self.spans)

    def __repr__(self) -> str:
        return f"Intervals({list(self.spans)})"

    def __contains__(self, value: int) -> bool:
        spans = self.spans
        if len(spans) == 1:
            return spans[0][0] <= value <= spans[0][1]
        i = bisect.bisect_right(spans, (value, 1 << 130)) - 1
        return i >= 0 and spans[i][0] <= value <= spans[i][1]

    def __and__(self, other: "Intervals") -> "Intervals":
        a, b = self.spans, other.spans
        if not a or not b:
            return EMPTY
        if len(b) == 1 and len(a) == 1:
            lo, hi = max(a[0][0], b[0][0]), min(a[0][1], b[0][1])
            return Intervals._raw(((lo, hi),)) if lo <= hi else EMPTY
        out = []
        i = j = 0
        while i < len(a) and j < len(b):
            lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
            if lo <= hi:
                out.append((lo, hi))
            if a[i][1] < b[j][1]:
                i += 1
            else:
                j += 1
        return Intervals._raw(tuple(out))

    def __or__(self, other: "Intervals") -> "Intervals":
        return Intervals(self.spans + other.spans)

    def __sub__(self, other: "Intervals") -> "Intervals":
        out = []
        b = other.spans
        j = 0
        for lo, hi in self.spans:
            cur = lo
            while j < len(b) and b[j][1] < cur:
                j += 1
            k = j
            while k < len(b) and b[k][0] <= hi:
                if b[k][0] > cur:
                    out.append((cur, b[k][0] - 1))
                cur = max(cur, b[k][1] + 1)
                k += 1
            if cur <= hi:
                out.append((cur, hi))
        return Intervals._raw(tuple(out))

    def issubset(self, other: "Intervals") -> bool:
        return not (self - other)

    def disjoint(self, other: "Intervals") -> bool:
        return not (self & other)

    def count(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.spans)

    def first(self) -> int:
        return self.spans[0][0]

    def pick(self, preferred: Sequence[int] = ()) -> int:
        """A representative member: the first preferred value inside, else a host-looking low address."""
        for value in preferred:
            if value in self:
                return value
        lo, hi = self.spans[0]
        return lo + 1 if hi > lo and lo & 0xFF == 0 else lo


EMPTY = Intervals._raw(())


def universe(field: int, family: int) -> Intervals:
    return Intervals.span(0, field_max(field, family))


def ip_text(value: int, family: int) -> str:
    return str(ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value))


# --- Z3 --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PacketVars:
    """The symbolic packet: one bit-vector per field, of the family's widths."""

    family: int
    fields: tuple  # z3 BitVecRef per field index

    @classmethod
    def make(cls, family: int, prefix: str = "") -> "PacketVars":
        return cls(family, tuple(z3.BitVec(prefix + name, field_bits(i, family)) for i, name in enumerate(FIELDS)))


def member(var: z3.BitVecRef, intervals: Intervals) -> z3.BoolRef:
    """``var in intervals``: aligned blocks (CIDRs) as a prefix comparison, the rest as ranges."""
    width = var.size()
    terms = []
    for lo, hi in intervals.spans:
        size = hi - lo + 1
        if size & (size - 1) == 0 and lo % size == 0:
            shift = size.bit_length() - 1
            if shift == width:
                terms.append(z3.BoolVal(True))
            elif shift == 0:
                terms.append(var == z3.BitVecVal(lo, width))
            else:
                terms.append(z3.Extract(width - 1, shift, var) == z3.BitVecVal(lo >> shift, width - shift))
        else:
            terms.append(z3.And(z3.UGE(var, z3.BitVecVal(lo, width)), z3.ULE(var, z3.BitVecVal(hi, width))))
    if not terms:
        return z3.BoolVal(False)
    return terms[0] if len(terms) == 1 else z3.Or(terms)


def negation(term: z3.BoolRef) -> z3.BoolRef:
    return z3.Not(term)


def conjunction(terms: Sequence[z3.BoolRef]) -> z3.BoolRef:
    return z3.And(list(terms)) if terms else z3.BoolVal(True)


SAT, UNSAT, UNKNOWN = "sat", "unsat", "unknown"


@dataclass(frozen=True)
class Answer:
    status: str  # sat | unsat | unknown
    values: tuple[int, ...] = ()  # the model's packet fields, on sat
    reason: str = ""  # on unknown: timeout, resource limit, or Z3's own reason


class Solver:
    """Asks Z3 one question at a time, each in a fresh solver with a timeout and a resource limit.

    ``timeout`` (seconds, ``--timeout``) becomes a deterministic resource
    limit, so an answer is the same on a fast and a slow machine; the wall
    clock, at twice the timeout, only guards against a limit set too high.
    """

    def __init__(self, timeout: float, rlimit: int | None = None) -> None:
        self.timeout = timeout
        self.timeout_ms = max(1, int(timeout * 2000) + 1000)
        self.rlimit = rlimit if rlimit is not None else max(1, int(timeout * RLIMIT_PER_SECOND))
        self.queries = 0

    def check(self, packet: PacketVars, formulas: Sequence[z3.BoolRef]) -> Answer:
        self.queries += 1
        solver = z3.SolverFor("QF_BV")
        solver.set("timeout", self.timeout_ms)
        solver.set("rlimit", self.rlimit)
        solver.set("random_seed", 0)
        solver.add(*formulas)
        result = solver.check()
        if result == z3.unsat:
            return Answer(UNSAT)
        if result == z3.sat:
            model = solver.model()
            values = tuple(model.eval(v, model_completion=True).as_long() for v in packet.fields)
            return Answer(SAT, values)
        reason = solver.reason_unknown() or "unknown"
        if any(word in reason for word in ("canceled", "timeout", "resource")):
            reason = (f"the solver gave up at its limit ({self.rlimit} resource units, about {self.timeout:g} s "
                      "of solving; raise --timeout)")
        else:
            reason = f"the solver answered unknown ({reason})"
        return Answer(UNKNOWN, reason=reason)
