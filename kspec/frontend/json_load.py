"""JSON manifests (``kubectl get -o json``) → plain data with exact positions.

``json.loads`` is fast but positionless, so the loader walks only the top
level itself and hands every member value, and every element of a top-level
``items`` array, to the C decoder (``raw_decode``) at its own offset.  That
keeps C speed and yields the offset of each object, so each item of a
``kind: List`` gets its real line:col.  Deeper positions are found on demand
by walking one item's text, again skipping siblings with ``raw_decode``.

Accepted: one or more concatenated JSON values, a top-level array (each
element is a document), ``kind: List`` objects.  Duplicate keys are errors
(checked in an ``object_pairs_hook``, which costs ~3%); so are ``NaN`` and
``Infinity`` (not JSON) and numbers too long for Python's int.  Nesting is
bounded by the C decoder's recursion guard (about 1,000 levels); a document
that hits it is reported at the first level deeper than 256, like YAML.
"""

from __future__ import annotations

import json
import re
from array import array
from typing import Any

from kspec.gcpause import paused_gc
from kspec.diagnostics import Diagnostic, InputError, Span, error
from kspec.frontend.document import Document, Path

MAX_DEPTH = 256
MAX_ERRORS = 100
KEY = "\x00key"
_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_CONSTANT = re.compile(r"-?Infinity|NaN")
_SYNTAX_HINT = "check the brackets, commas and quotes near this position"


class _Duplicate(Exception):
    """Raised inside the decoder; the slow walker then finds where."""


class _Constant(Exception):
    """NaN / Infinity: Python accepts them, JSON and Kubernetes do not."""


class _Syntax(Exception):
    """A fatal syntax problem at a character offset."""

    def __init__(self, message: str, offset: int, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.hint = hint or _SYNTAX_HINT


def _checked_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _Duplicate()
    return result


def _reject_constant(name: str) -> Any:
    raise _Constant(name)


_STRICT = json.JSONDecoder(object_pairs_hook=_checked_pairs, parse_constant=_reject_constant).raw_decode
_LENIENT = json.JSONDecoder().raw_decode


class _Positions:
    """Offset → (line, col) for one text, counting only from a known nearby point."""

    __slots__ = ("text", "name")

    def __init__(self, text: str, name: str) -> None:
        self.text = text
        self.name = name

    def point(self, offset: int, base: int = 0, base_line: int = 1) -> tuple[int, int]:
        line = base_line + self.text.count("\n", base, offset)
        return line, offset - self.text.rfind("\n", 0, offset)

    def span(self, start: int, end: int, base: int = 0, base_line: int = 1) -> Span:
        line, col = self.point(start, base, base_line)
        end_line, end_col = self.point(end, start, line)
        return Span(self.name, line, col, end_line, end_col)


class JsonLocator:
    """Finds a node's span by walking one document's JSON text from its offset."""

    __slots__ = ("positions", "start", "line", "items")

    def __init__(self, positions: _Positions, start: int, line: int, items: array | None = None) -> None:
        self.positions = positions
        self.start = start
        self.line = line
        self.items = items  # flat (start, end, line) per element of a top-level "items" array

    def __call__(self, path: Path) -> Span | None:
        try:
            start, end = _walk(self.positions.text, self.start, tuple(path))
        except (ValueError, IndexError, RecursionError, _Duplicate, _Constant, _Syntax):
            return None
        return self.positions.span(start, end, self.start, self.line)

    def within(self, prefix: Path) -> "JsonLocator | None":
        """A locator for the item at ``("items", i)`` that walks only that item."""
        if (self.items is None or len(prefix) != 2 or prefix[0] != "items"
                or not isinstance(prefix[1], int) or not 0 <= prefix[1] < len(self.items) // 3):
            return None
        i = 3 * prefix[1]
        return JsonLocator(self.positions, self.items[i], self.items[i + 2])


def _walk(text: str, pos: int, path: Path) -> tuple[int, int]:
    """Offsets of the deepest node on ``path`` (or of its key, for the ``\\x00key`` step)."""
    ws = _WS.match
    for depth, step in enumerate(path):
        opener = text[pos]
        if opener == "{" and isinstance(step, str) and step != KEY:
            p = ws(text, pos + 1).end()
            found = None
            while text[p] == '"':
                key, key_end = _LENIENT(text, p)
                value = ws(text, ws(text, key_end).end() + 1).end()
                if key == step:
                    if depth + 1 < len(path) and path[depth + 1] == KEY:
                        return p, key_end
                    found = value
                    break
                p = ws(text, _LENIENT(text, value)[1]).end()
                if text[p] != ",":
                    break
                p = ws(text, p + 1).end()
            if found is None:
                break
            pos = found
        elif opener == "[" and isinstance(step, int) and not isinstance(step, bool) and step >= 0:
            p = ws(text, pos + 1).end()
            for _ in range(step):
                if text[p] == "]":
                    break
                p = ws(text, _LENIENT(text, p)[1]).end()
                if text[p] != ",":
                    break
                p = ws(text, p + 1).end()
            if text[p] in ",]":
                break
            pos = p
        else:
            break
    return pos, _LENIENT(text, pos)[1]


def _is_list(value: Any) -> bool:
    kind = value.get("kind") if isinstance(value, dict) else None
    return isinstance(kind, str) and kind.endswith("List") and isinstance(value.get("items"), list)


def load_json(text: str, name: str) -> list[Document]:
    """Load every JSON value in ``text``; raise InputError with all problems found.

    A top-level array yields one Document per element.  An object keeps the
    spans of its top-level ``items`` elements in ``key_spans[("items", i)]``
    and offsets for :meth:`JsonLocator.within`, so a ``kind: List`` splits
    into per-item documents without re-reading anything.
    """
    with paused_gc():
        docs, problems = _Loader(text, name).run()
    if problems:
        raise InputError(problems)
    return docs


class _Loader:
    """One pass over one text: documents out, problems collected."""

    def __init__(self, text: str, name: str) -> None:
        self.text = text
        self.name = name
        self.positions = _Positions(text, name)
        self.docs: list[Document] = []
        self.problems: list[Diagnostic] = []
        self.ws = _WS.match
        self.last = (0, 1)  # (offset, line) of the last document start, to count lines incrementally
        self.count = 0  # documents seen, null ones included

    def run(self) -> tuple[list[Document], list[Diagnostic]]:
        text, ws = self.text, self.ws
        pos = ws(text, 0).end()
        try:
            while pos < len(text):
                if text[pos] == "[":
                    pos = self._array_of_documents(pos)
                else:
                    pos = self._document(pos)
                pos = ws(text, pos).end()
        except _Syntax as problem:
            message = problem.message
            if not message.startswith("invalid JSON"):
                message = "invalid JSON: " + message
            self._problem(message, problem.offset, problem.offset + 1, problem.hint)
        except _TooMany:
            pass
        return self.docs, self.problems

    def _problem(self, message: str, start: int, end: int, hint: str) -> None:
        self.problems.append(error(message, self.positions.span(start, max(end, start + 1)), hint or _SYNTAX_HINT))
        if len(self.problems) >= MAX_ERRORS:
            self.problems.append(error(f"too many errors in this file (stopped after {MAX_ERRORS})",
                                       self.positions.span(start, start + 1), "fix the errors above first"))
            raise _TooMany()

    def _add(self, value: Any, start: int, end: int, items: list[tuple[int, int]] | None = None) -> None:
        self.count += 1
        if value is None:
            return
        line, _ = self.positions.point(start, *self.last)
        self.last = (start, line)
        span = self.positions.span(start, end, start, line)
        key_spans: dict[Path, Span] = {}
        flat = None
        if items:
            flat = array("q")
            base, base_line = start, line
            for i, (item_start, item_end) in enumerate(items):
                item_line = base_line + self.text.count("\n", base, item_start)
                flat.extend((item_start, item_end, item_line))
                key_spans[("items", i)] = self.positions.span(item_start, item_end, item_start, item_line)
                base, base_line = item_start, item_line
        locator = JsonLocator(self.positions, start, line, flat)
        self.docs.append(Document(value, span, "manifest", locator, self.count - 1, key_spans))

    def _document(self, pos: int) -> int:
        if self.text[pos] != "{":
            value, end = self._value(pos)
            self._add(value, pos, end)
            return end
        value, end, items = self._object(pos)
        self._add(value, pos, end, items)
        return end

    def _array_of_documents(self, pos: int) -> int:
        text, ws = self.text, self.ws
        p = ws(text, pos + 1).end()
        if text.startswith("]", p):
            return p + 1
        while True:
            value, end = self._value(p, 1)
            if _is_list(value):
                value, end, items = self._object(p)
                self._add(value, p, end, items)
            else:
                self._add(value, p, end)
            p, closed = self._after(end, "]")
            if closed:
                return p

    def _after(self, end: int, closer: str) -> tuple[int, bool]:
        """Skip past the ``,`` after a member (True: past the closer instead)."""
        text, ws = self.text, self.ws
        p = ws(text, end).end()
        c = text[p:p + 1]
        if c == ",":
            return ws(text, p + 1).end(), False
        if c == closer:
            return p + 1, True
        raise _Syntax(f"expected ',' or '{closer}'" + (" but the text ended" if not c else ""), p)

    def _object(self, pos: int) -> tuple[dict[str, Any], int, list[tuple[int, int]] | None]:
        """A top-level object member by member; elements of ``items`` one by one."""
        text, ws = self.text, self.ws
        result: dict[str, Any] = {}
        items = None
        p = ws(text, pos + 1).end()
        if text.startswith("}", p):
            return result, p + 1, None
        while True:
            if not text.startswith('"', p):
                raise _Syntax("expected a key in double quotes", p)
            key, key_end = self._value(p)
            colon = ws(text, key_end).end()
            if not text.startswith(":", colon):
                raise _Syntax("expected ':' after the key", colon)
            start = ws(text, colon + 1).end()
            if key == "items" and text.startswith("[", start):
                value, end, items = self._items(start)
            else:
                value, end = self._value(start, 1)
            if key in result:
                self._problem(f"duplicate key {key!r} in this object", p, key_end,
                              "remove one of the two entries; Kubernetes rejects duplicate keys too")
            result[key] = value
            p, closed = self._after(end, "}")
            if closed:
                return result, p, items

    def _items(self, pos: int) -> tuple[list[Any], int, list[tuple[int, int]]]:
        text, ws = self.text, self.ws
        values: list[Any] = []
        offsets: list[tuple[int, int]] = []
        p = ws(text, pos + 1).end()
        if text.startswith("]", p):
            return values, p + 1, offsets
        value_at = self._value
        while True:
            value, end = value_at(p, 2)
            values.append(value)
            offsets.append((p, end))
            p = ws(text, end).end()
            c = text[p:p + 1]
            if c == ",":
                p = ws(text, p + 1).end()
            elif c == "]":
                return values, p + 1, offsets
            else:
                raise _Syntax("expected ',' or ']'" + (" but the text ended" if not c else ""), p)

    def _value(self, pos: int, depth: int = 0) -> tuple[Any, int]:
        """Decode one value (``depth`` containers deep) at C speed; on trouble, find the place slowly."""
        try:
            return _STRICT(self.text, pos)
        except json.JSONDecodeError as exc:
            raise _Syntax(_syntax_message(exc.msg), exc.pos) from None
        except (_Duplicate, _Constant, ValueError, RecursionError):
            pass
        problems, end = _diagnose(self.text, pos, depth)
        if not problems:
            problems = [(pos, pos + 1, "this value cannot be read",
                         "check it for very long numbers or deep nesting")]
        for start, stop, message, hint in problems:
            self._problem(message, start, stop, hint)
        if end is None:
            raise _TooMany()
        only_duplicates = all(message.startswith("duplicate key") for _, _, message, _ in problems)
        return (_LENIENT(self.text, pos)[0] if only_duplicates else None), end


class _TooMany(Exception):
    """Stop reading this file: a fatal problem has been recorded."""


def _syntax_message(msg: str) -> str:
    return "invalid JSON: " + msg[0].lower() + msg[1:]


def _diagnose(text: str, pos: int, depth: int = 0) -> tuple[list[tuple[int, int, str, str]], int | None]:
    """Walk one value slowly and iteratively, naming each problem and where it is.

    Returns the problems (start, end, message, hint) and the offset after the
    value, or None when the value cannot be skipped (too deep, bad syntax).
    """
    ws = _WS.match
    problems: list[tuple[int, int, str, str]] = []
    stack: list[set[str] | None] = []  # a set of seen keys per open object, None per array
    p = ws(text, pos).end()
    expect_key = False
    while True:
        if len(problems) >= MAX_ERRORS:
            return problems, None
        c = text[p:p + 1]
        if expect_key:
            if c != '"':
                return problems + [(p, p + 1, "invalid JSON: expected a key in double quotes", "")], None
            key, key_end = _LENIENT(text, p)
            if key in stack[-1]:
                problems.append((p, key_end, f"duplicate key {key!r} in this object",
                                 "remove one of the two entries; Kubernetes rejects duplicate keys too"))
            stack[-1].add(key)
            colon = ws(text, key_end).end()
            if not text.startswith(":", colon):
                return problems + [(colon, colon + 1, "invalid JSON: expected ':' after the key", "")], None
            p = ws(text, colon + 1).end()
            expect_key = False
            continue
        if c in ("{", "["):
            if len(stack) + depth >= MAX_DEPTH:
                return problems + [(p, p + 1, f"nesting deeper than {MAX_DEPTH} levels",
                                    "flatten the structure; no Kubernetes object nests this deep")], None
            stack.append(set() if c == "{" else None)
            p = ws(text, p + 1).end()
            if text.startswith("}" if c == "{" else "]", p):
                stack.pop()
                p += 1
            else:
                expect_key = c == "{"
                continue
        else:
            p = _scalar(text, p, problems)
            if p is None:
                return problems, None
        while True:
            if not stack:
                return problems, p
            p = ws(text, p).end()
            c = text[p:p + 1]
            closer = "]" if stack[-1] is None else "}"
            if c == ",":
                p = ws(text, p + 1).end()
                expect_key = stack[-1] is not None
                break
            if c != closer:
                return problems + [(p, p + 1, f"invalid JSON: expected ',' or '{closer}'", "")], None
            stack.pop()
            p += 1


def _scalar(text: str, p: int, problems: list[tuple[int, int, str, str]]) -> int | None:
    """Skip one scalar at ``p``, recording a problem if it is not acceptable."""
    try:
        return _LENIENT(text, p)[1] if not _CONSTANT.match(text, p) else _bad_constant(text, p, problems)
    except json.JSONDecodeError as exc:
        problems.append((exc.pos, exc.pos + 1, _syntax_message(exc.msg), ""))
        return None
    except ValueError:
        number = _NUMBER.match(text, p)
        end = number.end() if number else p + 1
        problems.append((p, end, f"number of {end - p} characters is too long to read",
                         "Kubernetes numbers are 64-bit; write a shorter number or a quoted string"))
        return end


def _bad_constant(text: str, p: int, problems: list[tuple[int, int, str, str]]) -> int:
    end = _CONSTANT.match(text, p).end()
    problems.append((p, end, f"{text[p:end]} is not valid JSON",
                     "write a number, or quote it as a string"))
    return end
