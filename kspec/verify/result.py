"""Verdicts and findings: what every checker returns and every report renders.

A checker answers per invariant with :class:`Verdict`: ``proved`` (no
finding), ``violated`` (one finding per counterexample) or ``unknown`` (the
solver gave up; never counted as proved).  A :class:`Finding` carries the
objects involved with their spans, a concrete witness and a fix hint, so the
text, JSON, SARIF and JUnit renderers all say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kspec.diagnostics import Span

PROVED, VIOLATED, UNKNOWN = "proved", "violated", "unknown"


@dataclass(frozen=True, slots=True)
class Location:
    """One object involved in a finding."""

    span: Span
    label: str  # e.g. "pod default/cart-2"


@dataclass(frozen=True, slots=True)
class Finding:
    invariant: str
    message: str
    locations: tuple[Location, ...]
    witness: str = ""
    hint: str = ""
    subject: str = ""  # what the finding is about, e.g. "service default/web" (JUnit per-service cases)
    suppressed: str | None = None  # reason, when an annotation or --disable silences it
    details: tuple[str, ...] = ()  # explain-why lines

    @property
    def primary(self) -> Span:
        return self.locations[0].span if self.locations else Span("<cluster>", 1, 1, 1, 1)

    def sort_key(self) -> tuple:
        span = self.primary
        return (self.invariant, span.file, span.line, span.col, self.subject, self.message)


@dataclass(frozen=True, slots=True)
class Verdict:
    invariant: str
    status: str  # proved | violated | unknown
    findings: tuple[Finding, ...] = ()
    checked: int = 0  # how many objects / questions were checked
    subjects: tuple[str, ...] = ()  # every subject checked (for per-service JUnit cases)
    reason: str = ""  # for unknown: why (timeout, solver answer)
    seconds: float = 0.0

    @property
    def active(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.suppressed is None)

    @property
    def effective_status(self) -> str:
        """Violated only by findings that are not suppressed."""
        if self.status == VIOLATED and not self.active:
            return PROVED
        return self.status


@dataclass
class Report:
    verdicts: list[Verdict] = field(default_factory=list)
    nodes_checked: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        statuses = {v.effective_status for v in self.verdicts}
        if VIOLATED in statuses:
            return 1
        if UNKNOWN in statuses:
            return 3
        return 0
