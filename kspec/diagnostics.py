"""Source spans, diagnostics and their rendering.

Every user-facing problem is a :class:`Diagnostic` with a :class:`Span`, so
the text, JSON, SARIF and JUnit renderers all point at the same place and
tests can assert codes and positions instead of wording.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, Sequence


class Source:
    """The text of one input, with a lazily built line index.

    Sources are registered by name in :data:`SOURCES` so that a diagnostic
    can show the offending line without carrying the text around.
    """

    __slots__ = ("name", "text", "_line_starts")

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.text = text
        self._line_starts: list[int] | None = None

    def _starts(self) -> list[int]:
        if self._line_starts is None:
            starts = [0]
            find = self.text.find
            pos = find("\n")
            while pos >= 0:
                starts.append(pos + 1)
                pos = find("\n", pos + 1)
            self._line_starts = starts
        return self._line_starts

    def position(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of a character offset."""
        starts = self._starts()
        index = bisect.bisect_right(starts, offset) - 1
        return index + 1, offset - starts[index] + 1

    def line_text(self, line: int) -> str:
        starts = self._starts()
        if line < 1 or line > len(starts):
            return ""
        start = starts[line - 1]
        end = starts[line] - 1 if line < len(starts) else len(self.text)
        return self.text[start:end].rstrip("\r")

    def span(self, start: int, end: int | None = None) -> "Span":
        line, col = self.position(start)
        if end is None or end <= start:
            return Span(self.name, line, col, line, col)
        end_line, end_col = self.position(end)
        return Span(self.name, line, col, end_line, end_col)


SOURCES: dict[str, Source] = {}


def register_source(name: str, text: str) -> Source:
    source = Source(name, text)
    SOURCES[name] = source
    return source


@dataclass(frozen=True, slots=True, order=True)
class Span:
    """A 1-based, end-exclusive region of one input file."""

    file: str
    line: int
    col: int
    end_line: int = 0
    end_col: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    @staticmethod
    def whole(file: str) -> "Span":
        return Span(file, 1, 1, 1, 1)


class LazySpan:
    """A span computed only when a diagnostic needs it.

    Readers check hundreds of thousands of fields and almost all are fine;
    locating each one in a 300 MB JSON dump up front would dominate the run.
    """

    __slots__ = ("_compute",)

    def __init__(self, compute) -> None:
        self._compute = compute

    def resolve(self) -> Span:
        return self._compute()


def resolve_span(span: "Span | LazySpan") -> Span:
    return span.resolve() if isinstance(span, LazySpan) else span


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem found in the input, located and with a fix hint."""

    severity: Severity
    message: str
    span: Span
    hint: str = ""
    code: str = ""
    related: tuple[tuple[str, Span], ...] = ()

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def sort_key(self) -> tuple:
        return (self.span.file, self.span.line, self.span.col, self.severity.value, self.message)


def error(message: str, span: "Span | LazySpan", hint: str = "", code: str = "") -> Diagnostic:
    return Diagnostic(Severity.ERROR, message, resolve_span(span), hint, code)


def warning(message: str, span: "Span | LazySpan", hint: str = "", code: str = "") -> Diagnostic:
    return Diagnostic(Severity.WARNING, message, resolve_span(span), hint, code)


def note(message: str, span: "Span | LazySpan", hint: str = "", code: str = "") -> Diagnostic:
    return Diagnostic(Severity.NOTE, message, resolve_span(span), hint, code)


class InputError(Exception):
    """Raised to abort a stage with one or more error diagnostics."""

    def __init__(self, diagnostics: Sequence[Diagnostic] | Diagnostic) -> None:
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics = list(diagnostics)
        super().__init__("; ".join(f"{d.span}: {d.message}" for d in self.diagnostics))


@dataclass
class DiagnosticSink:
    """Collects diagnostics so a stage can report every error, not only the first."""

    items: list[Diagnostic] = field(default_factory=list)

    def add(self, diagnostic: Diagnostic) -> None:
        self.items.append(diagnostic)

    def extend(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.items.extend(diagnostics)

    def error(self, message: str, span: "Span | LazySpan", hint: str = "", code: str = "") -> None:
        self.items.append(error(message, span, hint, code))

    def warning(self, message: str, span: "Span | LazySpan", hint: str = "", code: str = "") -> None:
        self.items.append(warning(message, span, hint, code))

    @property
    def has_errors(self) -> bool:
        return any(d.is_error for d in self.items)

    def sorted(self) -> list[Diagnostic]:
        unique = {(d.severity, d.message, d.span, d.hint): d for d in self.items}
        return sorted(unique.values(), key=Diagnostic.sort_key)


def _display(line: str, col: int) -> tuple[str, int]:
    """Expand tabs and clip very long lines around the column."""
    line = line.replace("\t", " ")
    if len(line) > 160:
        start = max(0, col - 80)
        clipped = line[start : start + 160]
        return ("..." if start else "") + clipped + "...", col - start + (3 if start else 0)
    return line, col


def render(diagnostic: Diagnostic, color: bool = False) -> str:
    """Render as ``file:line:col: severity: message`` + source line + caret + hint."""
    span = diagnostic.span
    sev = diagnostic.severity.value
    if color:
        colour = {"error": "\x1b[1;31m", "warning": "\x1b[1;33m", "note": "\x1b[1;36m"}[sev]
        sev = f"{colour}{sev}\x1b[0m"
    code = f" [{diagnostic.code}]" if diagnostic.code else ""
    lines = [f"{span}: {sev}: {diagnostic.message}{code}"]
    source = SOURCES.get(span.file)
    if source is not None:
        text = source.line_text(span.line)
        if text.strip():
            shown, col = _display(text, span.col)
            width = 1
            if span.end_line == span.line and span.end_col > span.col:
                width = min(span.end_col - span.col, max(1, len(shown) - col + 1))
            lines.append(f"  {span.line:>5} | {shown}")
            lines.append(f"        | {' ' * (col - 1)}{'^' * width}")
    for label, rel in diagnostic.related:
        lines.append(f"  {rel}: note: {label}")
    if diagnostic.hint:
        lines.append(f"  hint: {diagnostic.hint}")
    return "\n".join(lines)
