"""Parsed input documents: plain data beside a way to find any node's span.

Loaders turn text into plain Python values (dict, list, str, int, float,
bool, None) so the rest of kspec never sees parser types.  Positions live
beside the data, not inside it: ``Document.locate(path)`` answers the span of
any node by its path (a tuple of mapping keys and list indexes).  Loaders may
answer eagerly (a table built while parsing small kspec files) or lazily
(re-reading one document of a 200 MB manifest only when an error needs it),
which keeps the bulk path fast and the errors exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from kspec.diagnostics import LazySpan, Span

Path = tuple[str | int, ...]
Locator = Callable[[Path], Span | None]


@dataclass(eq=False, slots=True)
class Document:
    """One YAML/JSON/kspec document of one input file."""

    data: Any
    span: Span
    kind: str  # "kspec" | "manifest"
    locator: Locator | None = None
    index: int = 0  # position of the document in its file
    key_spans: dict[Path, Span] = field(default_factory=dict)

    def locate(self, path: Path = ()) -> Span:
        """The span of the node at ``path``; the nearest located ancestor if it is absent."""
        if not path:
            return self.span
        probe = tuple(path)
        while probe:
            span = self.key_spans.get(probe)
            if span is None and self.locator is not None:
                span = self.locator(probe)
            if span is not None:
                return span
            probe = probe[:-1]
        return self.span

    def key_span(self, path: Path) -> Span:
        """The span of the mapping *key* at ``path`` (for unknown-field errors)."""
        return self.locate(path + ("\x00key",)) if path else self.span


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a model object came from: its document and the path of its node.

    Kept on every model object so a finding can point at the object, or at
    one field of it, long after parsing; spans are resolved only on demand.
    """

    doc: Document | None
    path: Path = ()

    @property
    def span(self) -> Span:
        if self.doc is None:
            return Span("<default>", 1, 1, 1, 1)
        return self.doc.locate(self.path)

    def lazy(self, *sub: str | int) -> LazySpan:
        """The span of a sub-node, located only if a diagnostic asks for it."""
        return LazySpan(lambda: self.at(*sub))

    def at(self, *sub: str | int) -> Span:
        if self.doc is None:
            return self.span
        return self.doc.locate(self.path + tuple(sub))

    def key(self, *sub: str | int) -> Span:
        if self.doc is None:
            return self.span
        return self.doc.key_span(self.path + tuple(sub))

    def child(self, *sub: str | int) -> "Origin":
        return Origin(self.doc, self.path + tuple(sub))


SYNTHETIC = Origin(None, ())
