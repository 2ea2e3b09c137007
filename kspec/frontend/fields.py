"""Reading fields of raw documents with located, typed errors.

:class:`Fields` wraps one mapping of a document together with its Origin, so
a reader can ask for ``spec.podCIDR`` and, when it is wrong, the diagnostic
points at that very node.  It also implements the "one edit away" check
that turns ``selctor`` into a warning with a "did you mean".
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterator

from kspec.diagnostics import DiagnosticSink, LazySpan
from kspec.frontend import values
from kspec.frontend.document import Origin


def one_edit_apart(a: str, b: str) -> bool:
    """True when b is a one-character insertion, deletion, substitution or transposition of a."""
    if a == b:
        return False
    la, lb = len(a), len(b)
    if abs(la - lb) > 1:
        return False
    if la == lb:
        diffs = [i for i in range(la) if a[i] != b[i]]
        if len(diffs) == 1:
            return True
        return len(diffs) == 2 and diffs[1] == diffs[0] + 1 and a[diffs[0]] == b[diffs[1]] and a[diffs[1]] == b[diffs[0]]
    if la > lb:
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    return a[i:] == b[i + 1 :]


@lru_cache(maxsize=1 << 14)
def _near_misses(key: str, read: frozenset[str]) -> list[str]:
    return sorted(f for f in read if one_edit_apart(key, f))


class Fields:
    """One mapping node of a document, read field by field."""

    __slots__ = ("data", "origin", "sink", "what")

    def __init__(self, data: Any, origin: Origin, sink: DiagnosticSink, what: str) -> None:
        self.data = data if isinstance(data, dict) else {}
        self.origin = origin
        self.sink = sink
        self.what = what

    @classmethod
    def of(cls, data: Any, origin: Origin, sink: DiagnosticSink, what: str) -> "Fields | None":
        """Fields for a mapping; None (after an error) when the node is something else."""
        if data is None:
            return cls({}, origin, sink, what)
        if not isinstance(data, dict):
            sink.error(f"{what or 'the document'} must be a mapping, not {values.describe(data)}", origin.span,
                       "write the fields as key: value pairs")
            return None
        return cls(data, origin, sink, what)

    def __contains__(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def raw(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key, default)
        return default if value is None else value

    def span(self, *path: str | int) -> LazySpan:
        origin = self.origin
        return LazySpan(lambda: origin.at(*path))

    def key_span(self, key: str) -> LazySpan:
        origin = self.origin
        return LazySpan(lambda: origin.key(key))

    def child(self, key: str) -> "Fields | None":
        return Fields.of(self.data.get(key), self.origin.child(key), self.sink, self._name(key))

    def _name(self, key: str | int) -> str:
        return f"{self.what}.{key}" if self.what else str(key)

    def items(self, key: str) -> Iterator[tuple[int, Any, Origin]]:
        """Elements of a list field (an absent or null field is an empty list)."""
        value = self.data.get(key)
        if value is None:
            return
        if not isinstance(value, list):
            self.sink.error(f"{self._name(key)} must be a list, not {values.describe(value)}", self.span(key),
                            "write the elements as a YAML list ('- item')")
            return
        for index, item in enumerate(value):
            yield index, item, self.origin.child(key, index)

    def children(self, key: str) -> Iterator[tuple[int, "Fields"]]:
        """Mapping elements of a list field."""
        for index, item, origin in self.items(key):
            fields = Fields.of(item, origin, self.sink, f"{self._name(key)}[{index}]")
            if fields is not None:
                yield index, fields

    def str(self, key: str, default: str | None = None) -> str | None:
        if key not in self:
            return default
        value = values.read_str(self.data[key], self.span(key), self.sink, f"{self._name(key)}")
        return default if value is None else value

    def bool(self, key: str, default: bool) -> bool:
        if key not in self:
            return default
        value = values.read_bool(self.data[key], self.span(key), self.sink, f"{self._name(key)}")
        return default if value is None else value

    def int(self, key: str, default: int | None, low: int, high: int) -> int | None:
        if key not in self:
            return default
        value = values.read_int(self.data[key], self.span(key), self.sink, f"{self._name(key)}", low, high)
        return default if value is None else value

    def enum(self, key: str, choices: tuple[str, ...], default: str) -> str:
        if key not in self:
            return default
        value = self.data[key]
        if value in choices:
            return value
        close = [c for c in choices if isinstance(value, str) and c.lower() == value.lower()]
        hint = f"did you mean {close[0]!r}?" if close else "use one of " + ", ".join(choices)
        self.sink.error(f"{self._name(key)} must be one of {', '.join(choices)}, not {values.describe(value)}",
                        self.span(key), hint)
        return default

    def string_map(self, key: str) -> dict[str, str]:
        origin = self.origin.child(key)
        return values.read_string_map(
            self.data.get(key), lambda k: origin.span if k is None else origin.at(k), self.sink, f"{self._name(key)}"
        )

    def warn_near_misses(self, read: frozenset[str], known: frozenset[str] = frozenset()) -> None:
        """Warn about keys one edit away from a field kspec reads (``selctor``).

        Keys that are real fields kspec does not model (``known``) are left
        alone: manifests carry many of those and they are not mistakes.
        """
        for key in self.data:
            if not isinstance(key, str) or key in read or key in known:
                continue
            matches = _near_misses(key, read)
            if matches:
                self.sink.warning(f"unknown field {self._name(key)} is ignored", self.key_span(key),
                                  f"did you mean {matches[0]!r}?")
