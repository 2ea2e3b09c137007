"""Multi-document YAML manifests → plain data, fast and safe on hostile input.

PyYAML's constructor runs in Python and its C composer recurses (100,000
nested ``[`` crash it), so neither is used.  Instead one iterative loop turns
libyaml's C *events* into dicts and lists: about twice the speed of
``yaml.load_all(CSafeLoader)``, with bounded depth and bounded alias
expansion.

Plain scalars resolve as PyYAML's SafeLoader resolves them (YAML 1.1:
``yes``/``no``/``on``/``off`` booleans, octal ``017``, ``0b101``, ``0x1F``,
sexagesimal ``1:30``, ``1_000``, ``.inf``, ``~``; quoted scalars are strings),
with these deliberate differences:

* timestamps stay strings (Kubernetes reads them as RFC 3339 text);
* ``!!binary`` stays its base64 text, ``!!set`` a mapping of nulls, ``!!omap`` and
  ``!!pairs`` a list of one-key mappings: data stays JSON-shaped;
* tags kspec does not know (``!foo``) are ignored and the node is read by its
  shape, a scalar as a string, as kubectl does;
* duplicate keys, recursive aliases and alias bombs are errors;
* documents that are empty (or ``null``) are skipped, as kubectl skips them;
* merge keys ``<<`` are supported: explicit keys win, then the merged
  mappings in the order listed.

Positions are not stored per node: each document keeps its start span and
its character range, and its locator re-parses only that slice on demand.
"""

from __future__ import annotations

import re
from array import array
from typing import Any, Iterator

import yaml
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)

from kspec.gcpause import paused_gc
from kspec.diagnostics import Diagnostic, InputError, Span, error
from kspec.frontend.document import Document, Path

MAX_DEPTH = 256
MAX_ERRORS = 100
# Aliases may add at most max(_EXPANSION_FLOOR, _EXPANSION_RATIO x own nodes) nodes to a document.
_EXPANSION_FLOOR = 10_000
_EXPANSION_RATIO = 10
KEY = "\x00key"

_Loader = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader

_T = "tag:yaml.org,2002:"
_MAP_TAGS = frozenset({_T + "map", _T + "set"})
_SEQ_TAGS = frozenset({_T + "seq", _T + "omap", _T + "pairs"})
_STR_TAGS = frozenset({_T + "str", _T + "binary", _T + "timestamp", _T + "merge", _T + "value"})

_WORDS: dict[str, Any] = {
    w: v
    for words, v in (("yes true on", True), ("no false off", False), ("null", None))
    for base in words.split()
    for w in (base, base.capitalize(), base.upper())
}
_WORDS["~"] = None
_WORD_START = frozenset("yYnNtTfFoO~")
_NUM_START = frozenset("-+0123456789.")
_INT = re.compile(r"""[-+]?0b[0-1_]+
                    |[-+]?0[0-7_]+
                    |[-+]?(?:0|[1-9][0-9_]*)
                    |[-+]?0x[0-9a-fA-F_]+
                    |[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+""", re.X)
_FLOAT = re.compile(r"""[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
                    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
                    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN)""", re.X)
_NOT_PRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class _Problem(Exception):
    """A located, recoverable problem with one node (the loader goes on)."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class _Fatal(Exception):
    """A problem after which the rest of the file cannot be trusted."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


class _Special:
    """Placeholder keys: none pending, the merge key ``<<``, or a key to drop."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


_NOKEY = _Special("none")
_MERGE = _Special("<<")
_DROP = _Special("drop")


def _to_int(text: str) -> int:
    """An int the way YAML 1.1 spells it; ValueError if it cannot be one."""
    value = text.replace("_", "")
    sign = -1 if value[:1] == "-" else 1
    if value[:1] in ("-", "+"):
        value = value[1:]
    if value == "0":
        return 0
    if value.startswith("0b"):
        return sign * int(value[2:], 2)
    if value.startswith("0x"):
        return sign * int(value[2:], 16)
    if value[:1] == "0":
        return sign * int(value, 8)
    if ":" in value:
        total = 0
        for part in value.split(":"):
            total = total * 60 + int(part)
        return sign * total
    return sign * int(value)


def _to_float(text: str) -> float:
    value = text.replace("_", "").lower()
    sign = -1.0 if value[:1] == "-" else 1.0
    if value[:1] in ("-", "+"):
        value = value[1:]
    if value == ".inf":
        return sign * float("inf")
    if value == ".nan":
        return float("nan")
    if ":" in value:
        total = 0.0
        for part in value.split(":"):
            total = total * 60 + float(part)
        return sign * total
    return sign * float(value)


def _number(text: str) -> Any:
    """Resolve a plain scalar that starts like a number (int, float or string)."""
    try:
        if text.isdigit() and text.isascii() and (text[0] != "0" or len(text) == 1):
            return int(text)
        if _INT.fullmatch(text):
            return _to_int(text)
        if _FLOAT.fullmatch(text):
            return _to_float(text)
    except ValueError:
        raise _Problem(f"number {_clip(text)} is too long to read",
                       "quote it to keep it as a string, or shorten it") from None
    return text


def resolve_plain(text: str) -> Any:
    """The value of an untagged plain scalar, as PyYAML's SafeLoader resolves it.

    >>> resolve_plain("0x1F"), resolve_plain("off"), resolve_plain("10.0.0.1")
    (31, False, '10.0.0.1')
    """
    if not text:
        return None
    first = text[0]
    if first in _NUM_START:
        return _number(text)
    if first in _WORD_START:
        return _WORDS.get(text, text)
    return text


def _clip(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_T):] if tag.startswith(_T) else tag


def _tagged_scalar(tag: str, text: str) -> Any:
    """A scalar with an explicit tag: standard tags convert, unknown ones keep the text."""
    if not tag.startswith(_T) or tag in _STR_TAGS:
        return text
    name = tag[len(_T):]
    try:
        if name == "int":
            return _to_int(text)
        if name == "float":
            return _to_float(text)
    except (ValueError, IndexError):
        raise _Problem(f"{_clip(text)} is not a valid {_short_tag(tag)}",
                       "fix the value or drop the tag") from None
    if name == "bool":
        value = _WORDS.get(text.lower())
        if isinstance(value, bool):
            return value
        raise _Problem(f"{_clip(text)} is not a valid !!bool", "write true or false")
    if name == "null":
        return None
    raise _Problem(f"tag {_short_tag(tag)} does not fit a scalar",
                   "drop the tag or change the value to the kind of node it names")


def _check_container_tag(tag: str | None, is_map: bool) -> None:
    if tag is None or tag == "!" or not tag.startswith(_T):
        return
    if tag in (_MAP_TAGS if is_map else _SEQ_TAGS):
        return
    shape = "a mapping" if is_map else "a sequence"
    raise _Problem(f"tag {_short_tag(tag)} does not fit {shape}",
                   "drop the tag or change the value to the kind of node it names")


def _mark_span(name: str, start: Any, end: Any | None = None, line0: int = 0) -> Span:
    end = end or start
    return Span(name, start.line + line0 + 1, start.column + 1, end.line + line0 + 1, end.column + 1)


def _merge_into(mapping: dict, values: list) -> None:
    """Apply ``<<`` merges: explicit keys win, then the merged mappings in order."""
    sources: list[dict] = []
    for value in values:
        if isinstance(value, dict):
            sources.append(value)
        elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
            sources.extend(value)
        else:
            raise _Problem("a merge key << takes a mapping or a list of mappings",
                           "write `<<: *anchor` or `<<: [*a, *b]` with anchors of mappings")
    explicit = dict(mapping)
    mapping.clear()
    for source in reversed(sources):
        mapping.update(source)
    mapping.update(explicit)


def _syntax_diagnostic(exc: yaml.YAMLError, name: str, text: str) -> Diagnostic:
    """A located diagnostic for a scanner/parser/reader error of libyaml or PyYAML."""
    if isinstance(exc, yaml.reader.ReaderError) or not getattr(exc, "problem_mark", None):
        found = _NOT_PRINTABLE.search(text)
        offset = found.start() if found else 0
        line = text.count("\n", 0, offset) + 1
        col = offset - text.rfind("\n", 0, offset)
        what = f"character U+{ord(found.group()):04X}" if found else "a character"
        return error(f"{what} is not allowed in YAML", Span(name, line, col, line, col + 1),
                     "remove it, or escape it inside a double-quoted string (\"\\u0001\")")
    mark = exc.problem_mark
    problem = exc.problem or "invalid YAML"
    if "maximum nesting depth" in problem:  # newer libyaml builds stop deep nesting themselves
        span = Span(name, mark.line + 1, mark.column + 1, mark.line + 1, mark.column + 2)
        return error(f"nesting deeper than {MAX_DEPTH} levels", span,
                     "flatten the structure; no Kubernetes object nests this deep")
    message = f"invalid YAML: {problem}"
    context_mark = getattr(exc, "context_mark", None)
    if exc.context and context_mark is not None:
        message += f" ({exc.context} at line {context_mark.line + 1})"
    span = Span(name, mark.line + 1, mark.column + 1, mark.line + 1, mark.column + 2)
    return error(message, span, _syntax_hint(problem))


def _syntax_hint(problem: str) -> str:
    if "'\\t'" in problem or "tab" in problem:
        return "indent YAML with spaces, not tabs"
    if "mapping values are not allowed" in problem:
        return "quote a value that contains ': ', or fix the indentation of this line"
    if "expected ':'" in problem or "simple key" in problem:
        return "check the indentation and that each key is followed by ': '"
    if "block end" in problem or "indentation" in problem:
        return "check the indentation: items of one mapping or list must line up"
    if "quoted scalar" in problem or "end of stream" in problem:
        return "close the quote, bracket or brace opened before this point"
    return "check the indentation, quoting and brackets near this position"


class YamlLocator:
    """Finds a node's span by re-parsing only one document's (or item's) text.

    The slice starts at the node's first character; it is padded with as many
    spaces as that character's column, so columns stay true and only the
    line number needs the slice's first line added.
    """

    __slots__ = ("text", "name", "start", "end", "line", "col", "items")

    def __init__(self, text: str, name: str, start: int, end: int, line: int, col: int,
                 items: array | None = None) -> None:
        self.text = text
        self.name = name
        self.start = start
        self.end = end
        self.line = line
        self.col = col
        self.items = items  # flat (start, end, line, col) per element of a top-level "items" sequence

    def __call__(self, path: Path) -> Span | None:
        source = " " * self.col + self.text[self.start:self.end]
        try:
            loader = _Loader(source)
        except UnicodeError:
            return None
        try:
            return _walk(loader.get_event, tuple(path), self.name, self.line)
        except (yaml.YAMLError, StopIteration):
            return None
        finally:
            loader.dispose()

    def within(self, prefix: Path) -> "YamlLocator | None":
        """A locator for the item at ``("items", i)`` that re-reads only that item."""
        if (self.items is None or len(prefix) != 2 or prefix[0] != "items"
                or not isinstance(prefix[1], int) or not 0 <= prefix[1] < len(self.items) // 4):
            return None
        start, end, line, col = self.items[4 * prefix[1]:4 * prefix[1] + 4]
        return YamlLocator(self.text, self.name, start, end, line, col)


def _node_events(get_event: Any) -> Iterator[Any]:
    while True:
        event = get_event()
        if event is None or event.__class__ is StreamEndEvent:
            return
        yield event


def _walk(get_event: Any, path: Path, name: str, line0: int) -> Span | None:
    """Walk one document's events down ``path``; the deepest node found wins."""
    events = _node_events(get_event)
    node = next(e for e in events if e.__class__ not in (StreamStartEvent, DocumentStartEvent))
    for depth, step in enumerate(path):
        cls = node.__class__
        if cls is MappingStartEvent and step != KEY:
            found, merge_span = None, None
            for key in events:
                if key.__class__ is MappingEndEvent:
                    return merge_span or _mark_span(name, node.start_mark, key.end_mark, line0)
                matches = key.__class__ is ScalarEvent and _same_key(_key_value(key), step)
                _skip(key, events)
                value = next(events)
                if matches:
                    if depth + 1 < len(path) and path[depth + 1] == KEY:
                        return _mark_span(name, key.start_mark, key.end_mark, line0)
                    found = value
                    break
                if key.__class__ is ScalarEvent and key.value == "<<" and key.implicit[0] and key.tag is None:
                    merge_span = _node_span(value, events, name, line0)
                else:
                    _skip(value, events)
            node = found
        elif cls is SequenceStartEvent and isinstance(step, int) and not isinstance(step, bool):
            for _ in range(step):
                item = next(events)
                if item.__class__ is SequenceEndEvent:
                    return _mark_span(name, node.start_mark, item.end_mark, line0)
                _skip(item, events)
            item = next(events)
            if item.__class__ is SequenceEndEvent:
                return _mark_span(name, node.start_mark, item.end_mark, line0)
            node = item
        else:
            break
    return _node_span(node, events, name, line0)


def _same_key(value: Any, step: Any) -> bool:
    return type(value) is type(step) and value == step


def _key_value(event: Any) -> Any:
    if event.implicit[0] and event.tag in (None, "!"):
        try:
            return resolve_plain(event.value)
        except _Problem:
            return event.value
    return event.value


def _skip(event: Any, events: Iterator[Any]) -> Any:
    """Consume the rest of the node that ``event`` starts; return its last event."""
    if event.__class__ not in (MappingStartEvent, SequenceStartEvent):
        return event
    depth = 1
    for last in events:
        cls = last.__class__
        if cls is MappingStartEvent or cls is SequenceStartEvent:
            depth += 1
        elif cls is MappingEndEvent or cls is SequenceEndEvent:
            depth -= 1
            if depth == 0:
                return last
    return event


def _node_span(event: Any, events: Iterator[Any], name: str, line0: int) -> Span:
    last = _skip(event, events)
    return _mark_span(name, event.start_mark, last.end_mark, line0)


def _item_ranges(items: list[tuple[Any, Any]]) -> array | None:
    if not items:
        return None
    return array("q", [n for s, e in items for n in (s.index, e.index, s.line, s.column)])


def load_yaml(text: str, name: str) -> list[Document]:
    """Load every document of a YAML stream; raise InputError with all problems found.

    Each Document holds plain data, the span of its first node, and a locator
    that re-parses only its own text.  ``kind: List``-shaped documents keep
    their items' spans in ``key_spans[("items", i)]`` and ranges for
    :meth:`YamlLocator.within`, so they can be split cheaply.
    """
    with paused_gc():
        docs, problems = _load(text, name)
    if problems:
        raise InputError(problems)
    return docs


def _load(text: str, name: str) -> tuple[list[Document], list[Diagnostic]]:
    """Read the stream document by document; stop at the first fatal problem."""
    docs: list[Document] = []
    problems: list[Diagnostic] = []
    expansion_cap = _EXPANSION_RATIO * 2 * len(text) + _EXPANSION_FLOOR
    loader = None
    doc_index = -1
    try:
        loader = _Loader(text)
        get_event = loader.get_event
        while True:
            event = get_event()
            if event is None or event.__class__ is StreamEndEvent:
                break
            if event.__class__ is not DocumentStartEvent:
                continue
            doc_index += 1
            doc_start = event.start_mark
            data, root_start, root_end, items, end = _load_document(get_event, name, problems, expansion_cap)
            if data is None:
                continue
            locator = YamlLocator(text, name, doc_start.index - doc_start.column, end.end_mark.index,
                                  doc_start.line, 0, _item_ranges(items))
            key_spans = {("items", i): _mark_span(name, s, e) for i, (s, e) in enumerate(items)}
            docs.append(Document(data, _mark_span(name, root_start, root_end), "manifest",
                                 locator, doc_index, key_spans))
    except _Fatal as fatal:
        problems.append(fatal.diagnostic)
    except yaml.YAMLError as exc:
        problems.append(_syntax_diagnostic(exc, name, text))
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        col = exc.start - text.rfind("\n", 0, exc.start)
        problems.append(error("text is not valid Unicode (lone surrogate)", Span(name, line, col, line, col + 1),
                              "save the file as UTF-8"))
    finally:
        if loader is not None:
            loader.dispose()
    return docs, problems


def _add(problems: list[Diagnostic], diagnostic: Diagnostic) -> None:
    problems.append(diagnostic)
    if len(problems) >= MAX_ERRORS:
        raise _Fatal(error(f"too many errors in this file (stopped after {MAX_ERRORS})",
                           diagnostic.span, "fix the errors above first"))


def _load_document(get_event: Any, name: str, problems: list[Diagnostic],
                   expansion_cap: int) -> tuple[Any, Any, Any, list[tuple[Any, Any]], Any]:
    """Build one document's data in one iterative pass; no per-node positions kept.

    Returns (data, root start mark, root end mark, items, DocumentEndEvent);
    ``items`` are (start, end) marks of the elements of a top-level ``items``
    sequence, so ``kind: List`` documents split without re-parsing.
    """
    root: Any = None
    root_start = root_end = None
    stack: list[tuple[Any, bool, Any]] = []
    cur: Any = None
    is_map = False
    key: Any = _NOKEY
    anchors: dict[str, list] = {}
    open_anchors: dict[int, list] = {}
    merges: dict[int, tuple[list, Any]] = {}  # mapping id -> (merged values, mark of <<)
    items_list: Any = None
    items: list[tuple[Any, Any]] = []
    item_start = None
    nodes = 0
    extra = 0
    while True:
        event = get_event()
        cls = event.__class__
        try:
            if cls is ScalarEvent:
                nodes += 1
                value = event.value
                implicit = event.implicit
                if implicit[0]:
                    if value:
                        first = value[0]
                        if first in _NUM_START:
                            value = _number(value)
                        elif first in _WORD_START and value in _WORDS:
                            value = _WORDS[value]
                    else:
                        value = None
                elif not implicit[1] and event.tag is not None:
                    value = _tagged_scalar(event.tag, value)
                if event.anchor is not None:
                    anchors[event.anchor] = [value, 1]
                if is_map:
                    if key is _NOKEY:
                        if value in cur:
                            _duplicate(problems, name, event, value)
                            key = _DROP
                        elif value == "<<" and implicit[0] and event.tag is None:
                            if id(cur) in merges:
                                _duplicate(problems, name, event, value)
                                key = _DROP
                            else:
                                merges[id(cur)] = ([], event.start_mark)
                                key = _MERGE
                        else:
                            key = value
                    else:
                        if key.__class__ is _Special:
                            if key is _MERGE:
                                merges[id(cur)][0].append(value)
                        else:
                            cur[key] = value
                        key = _NOKEY
                elif cur is not None:
                    cur.append(value)
                    if cur is items_list:
                        items.append((event.start_mark, event.end_mark))
                else:
                    root, root_start, root_end = value, event.start_mark, event.end_mark
            elif cls is MappingStartEvent or cls is SequenceStartEvent:
                nodes += 1
                if len(stack) >= MAX_DEPTH:
                    raise _Fatal(error(f"nesting deeper than {MAX_DEPTH} levels",
                                       _mark_span(name, event.start_mark),
                                       "flatten the structure; no Kubernetes object nests this deep"))
                new: Any = {} if cls is MappingStartEvent else []
                if is_map:
                    if key is _NOKEY:
                        shape = "mapping" if cls is MappingStartEvent else "sequence"
                        _add(problems, error(f"a mapping key must be a scalar, not a {shape}",
                                             _mark_span(name, event.start_mark),
                                             "write keys as plain strings or numbers"))
                        key = _DROP
                    else:
                        if key.__class__ is _Special:
                            if key is _MERGE:
                                merges[id(cur)][0].append(new)
                        else:
                            cur[key] = new
                            if key == "items" and len(stack) == 1 and cls is SequenceStartEvent:
                                items_list = new
                        key = _NOKEY
                elif cur is not None:
                    cur.append(new)
                    if cur is items_list:
                        item_start = event.start_mark
                else:
                    root, root_start = new, event.start_mark
                stack.append((cur, is_map, key))
                cur, is_map, key = new, cls is MappingStartEvent, _NOKEY
                if event.anchor is not None:
                    entry = [new, None, nodes + extra]
                    anchors[event.anchor] = open_anchors[id(new)] = entry
                if event.tag is not None:
                    _check_container_tag(event.tag, is_map)
            elif cls is MappingEndEvent or cls is SequenceEndEvent:
                done = cur
                cur, is_map, key = stack.pop()
                if open_anchors:
                    entry = open_anchors.pop(id(done), None)
                    if entry is not None:
                        entry[1] = nodes + extra - entry.pop() + 1
                if cur is items_list and cur is not None:
                    items.append((item_start, event.end_mark))
                elif not stack:
                    root_end = event.end_mark
                if merges and id(done) in merges:
                    values, mark = merges.pop(id(done))
                    try:
                        _merge_into(done, values)
                    except _Problem as problem:
                        _add(problems, error(problem.message, _mark_span(name, mark), problem.hint))
            elif cls is AliasEvent:
                nodes += 1
                entry = anchors.get(event.anchor)
                if entry is None:
                    _add(problems, error(f"alias *{event.anchor} names no anchor defined before it",
                                         _mark_span(name, event.start_mark, event.end_mark),
                                         f"define &{event.anchor} earlier in this document"))
                    value = None
                elif entry[1] is None:
                    raise _Fatal(error(f"alias *{event.anchor} refers to a node that contains it",
                                       _mark_span(name, event.start_mark, event.end_mark),
                                       "recursive structures are not allowed; copy the values instead"))
                else:
                    value = entry[0]
                    extra += entry[1]
                    if extra > expansion_cap:
                        raise _Fatal(_bomb(name, event))
                if is_map:
                    if key is _NOKEY:
                        if isinstance(value, (dict, list)):
                            _add(problems, error("a mapping key must be a scalar, not an alias of a "
                                                 + ("mapping" if isinstance(value, dict) else "sequence"),
                                                 _mark_span(name, event.start_mark, event.end_mark),
                                                 "write keys as plain strings or numbers"))
                            key = _DROP
                        elif value in cur:
                            _duplicate(problems, name, event, value)
                            key = _DROP
                        else:
                            key = value
                    else:
                        if key.__class__ is _Special:
                            if key is _MERGE:
                                merges[id(cur)][0].append(value)
                        else:
                            cur[key] = value
                        key = _NOKEY
                elif cur is not None:
                    cur.append(value)
                    if cur is items_list:
                        items.append((event.start_mark, event.end_mark))
                else:
                    root, root_start, root_end = value, event.start_mark, event.end_mark
            elif cls is DocumentEndEvent:
                if extra > _EXPANSION_FLOOR and extra > _EXPANSION_RATIO * nodes:
                    raise _Fatal(_bomb(name, event, root_start))
                return root, root_start, root_end, items, event
        except _Problem as problem:
            _add(problems, error(problem.message, _mark_span(name, event.start_mark, event.end_mark),
                                 problem.hint))
            if cls is ScalarEvent:
                if is_map:
                    key = _DROP if key is _NOKEY else _NOKEY
                elif cur is not None:
                    cur.append(None)


def _duplicate(problems: list[Diagnostic], name: str, event: Any, key: Any) -> None:
    written = _clip(event.value) if event.__class__ is ScalarEvent else f"*{event.anchor}"
    same = "" if isinstance(key, str) and event.__class__ is ScalarEvent else f" (read as {key!r})"
    _add(problems, error(f"duplicate key {written}{same} in this mapping",
                         _mark_span(name, event.start_mark, event.end_mark),
                         "remove one of the two entries; Kubernetes rejects duplicate keys too"))


def _bomb(name: str, event: Any, start: Any = None) -> Diagnostic:
    return error("alias expansion too large (possible billion-laughs)",
                 _mark_span(name, start or event.start_mark),
                 "aliases may expand a document to at most ten times its own size; "
                 "write the repeated values out or reduce the aliases")
