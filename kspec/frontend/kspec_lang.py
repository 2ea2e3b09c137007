"""The kspec language's syntax layer: ``*.kspec`` text to a Document with exact spans.

kspec is a strict subset of YAML (grammar/kspec.lark).  Accepting only a
subset is what lets us promise that every kspec file is also YAML that means
the same thing: whatever PyYAML (YAML 1.1) or a YAML 1.2 reader would resolve
differently from the plain reading (``yes``, ``010``, ``1:30``, ``1e3``,
``2001-12-14``, ``<<``...) is rejected with a hint to quote it, instead of
silently becoming a bool, an octal int or a date.

The parse is Lark LALR with a column-aware postlex (:class:`_Layout`) that
turns YAML's indentation rules into _INDENT/_DEDENT tokens; Lark's LALR loop
and the tree-to-data pass are iterative, and nesting is capped at
:data:`MAX_DEPTH` before it reaches either, so hostile input cannot overflow
the stack.  Every problem is a Diagnostic raised in an InputError.

    >>> parse_kspec("nodes:\\n  node-1: {ip: 10.0.0.1}\\n", "c.kspec").data
    {'nodes': {'node-1': {'ip': '10.0.0.1'}}}
"""

from __future__ import annotations

import re
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable, Iterator

import yaml
from lark import Lark, Token, Transformer
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.lark import PostLex

from kspec.diagnostics import Diagnostic, InputError, Severity, Source, Span, error, register_source
from kspec.frontend.document import Document, Path

MAX_DEPTH = 64  # nested blocks plus flow brackets
MAX_LINE = 100_000  # characters in one line
MAX_KEY = 1000  # characters from a key's start to its ':' (PyYAML's limit is 1024)
MAX_INT_DIGITS = 19  # beyond int64 a number is surely not what the author meant
MAX_ERRORS = 50

#: The values ``ParsedKspec.scalar_types`` uses.  int/bool/null come only from
#: plain scalars; a quoted scalar is a string, typed by its shape.
SCALAR_TYPES = ("ipv4", "ipv6", "cidr4", "cidr6", "portrange", "portspec", "int", "bool", "null", "str")

_TYPED_MARKS = frozenset(".:/-")
_SHAPE_MAX = 64  # longer than any typed scalar ("ffff:...:255.255.255.255/128" is 49)

# Grammar terminal -> scalar type, in the order they are tried.
_PLAIN_TERMINALS = (("NULL", "null"), ("BOOL", "bool"), ("INT", "int"))
_STRING_TERMINALS = (
    ("PORTRANGE", "portrange"),
    ("PORTSPEC", "portspec"),
    ("CIDR4", "cidr4"),
    ("CIDR6", "cidr6"),
    ("IPV4", "ipv4"),
    ("IPV6", "ipv6"),
)


@dataclass(frozen=True, slots=True)
class ParsedKspec:
    """A parsed kspec file plus the type of every scalar value, by path.

    ``scalar_types[path]`` is one of :data:`SCALAR_TYPES`, for every scalar
    (and empty) value node; keys are always strings and are not listed.  It
    lets the semantic layer say "expected a CIDR" about ``podCIDR: 10.0.0.1``.
    """

    document: Document
    scalar_types: dict[Path, str]


def parse_kspec(text: str, filename: str) -> Document:
    """Parse kspec text into a Document (``kind="kspec"``), or raise InputError."""
    return parse_kspec_typed(text, filename).document


def parse_kspec_typed(text: str, filename: str) -> ParsedKspec:
    """Parse kspec text, keeping each scalar's type; raise InputError listing every problem found.

    ``data`` is exactly what ``yaml.safe_load`` returns for the same text;
    ``key_spans`` holds the span of every value node by path, and of every
    mapping key at ``path + ("\\x00key",)``.
    """
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte order mark is not a column an editor shows
    source = register_source(filename, text)
    problems = _prescan(text, source)
    if problems:
        raise InputError(problems)
    text = _blank_document_start(text)
    root = _parse_tree(text.rstrip(" \r\n"), source)
    return _build(root, source)


def classify_string(value: str) -> str:
    """The shape of a string: ipv4, ipv6, cidr4, cidr6, portrange, portspec or str."""
    if len(value) > _SHAPE_MAX or not _TYPED_MARKS.intersection(value):
        return "str"  # every typed shape is short and has one of . : / -
    return _classify(value)


@lru_cache(maxsize=16384)
def _classify(value: str) -> str:
    patterns = _patterns()
    for _name, kind in _STRING_TERMINALS:
        if patterns[kind].fullmatch(value):
            return kind
    return "str"


# ---- the parser -------------------------------------------------------------------


class _Failure(Exception):
    """A syntax error found outside Lark (in the postlex), already located."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


class _Node:
    """One node of the syntax tree, as the LALR reductions build it bottom-up."""

    __slots__ = ("kind", "span", "token", "items")

    def __init__(self, kind: str, span: tuple[int, int, int, int],
                 token: Token | None = None, items: list | None = None) -> None:
        self.kind = kind  # "scalar" | "null" | "map" | "seq"
        self.span = span  # (line, col, end_line, end_col), 1-based, end-exclusive
        self.token = token
        self.items = items  # map: [(key node, colon token, value node)]; seq: [value node]


def _tok_span(tok: Token) -> tuple[int, int, int, int]:
    return (tok.line, tok.column, tok.end_line, tok.end_column)


def _after(tok: Token) -> _Node:
    """An empty value, located just after the ':' or '-' that introduced it."""
    return _Node("null", (tok.end_line, tok.end_column, tok.end_line, tok.end_column))


def _joined(first: tuple[int, int, int, int], last: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return (first[0], first[1], last[2], last[3])


class _Build(Transformer):
    """Embedded in the LALR parser: reductions build _Node objects, no Lark tree."""

    def document(self, c: list) -> _Node | None:
        return c[0] if c else None

    def scalar(self, c: list) -> _Node:
        return _Node("scalar", _tok_span(c[0]), c[0])

    key = flow_key = flow_scalar = scalar

    def pair_inline(self, c: list) -> tuple:
        return (c[0], c[1], c[2])

    pair_nested = pair_inline

    def pair_empty(self, c: list) -> tuple:
        return (c[0], c[1], _after(c[1]))

    def block_map(self, pairs: list) -> _Node:
        return _Node("map", _joined(pairs[0][0].span, pairs[-1][2].span), items=pairs)

    def entry_compact(self, c: list) -> tuple:
        return (c[0], c[1])

    entry_nested = entry_compact

    def entry_empty(self, c: list) -> tuple:
        return (c[0], _after(c[0]))

    def block_seq(self, entries: list) -> _Node:
        span = _joined(_tok_span(entries[0][0]), entries[-1][1].span)
        return _Node("seq", span, items=[node for _dash, node in entries])

    def flow_seq(self, c: list) -> _Node:
        return _Node("seq", _joined(_tok_span(c[0]), _tok_span(c[-1])), items=c[1:-1])

    def flow_map(self, c: list) -> _Node:
        return _Node("map", _joined(_tok_span(c[0]), _tok_span(c[-1])), items=c[1:-1])

    def flow_pair(self, c: list) -> tuple:
        return (c[0], c[1], c[2] if len(c) > 2 else _after(c[1]))


_LAYOUT: ContextVar["_Layout"] = ContextVar("kspec_layout")
_LAYOUT_TOKENS = frozenset(["_NL", "_INDENT", "_DEDENT"])
_CLOSER = {"LSQB": "RSQB", "LBRACE": "RBRACE"}


class _LayoutPostLex(PostLex):
    """Lark's hook for the per-parse :class:`_Layout` (Lark keeps one postlex per parser)."""

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        return _LAYOUT.get().run(stream)


@lru_cache(maxsize=1)
def _lark() -> Lark:
    grammar = resources.files("kspec").joinpath("grammar", "kspec.lark").read_text(encoding="utf-8")
    return Lark(
        grammar,
        parser="lalr",
        lexer="contextual",
        start=["document", "typed_scalar"],
        postlex=_LayoutPostLex(),
        transformer=_Build(),
        maybe_placeholders=False,
    )


@lru_cache(maxsize=1)
def _patterns() -> dict[str, re.Pattern]:
    """The typed-scalar terminals of the grammar by scalar type, compiled for full matches."""
    lark = _lark()
    return {kind: re.compile(lark.get_terminal(name).pattern.to_regexp())
            for name, kind in _PLAIN_TERMINALS + _STRING_TERMINALS}


def _parse_tree(text: str, source: Source) -> _Node | None:
    layout = _Layout(source.name)
    reset = _LAYOUT.set(layout)
    try:
        return _lark().parse(text, start="document")
    except _Failure as failure:
        raise InputError([failure.diagnostic]) from None
    except UnexpectedInput as exc:
        raise InputError([_explain(exc, layout, source, text)]) from None
    except LarkError as exc:
        raise InputError([error(f"syntax error: {exc}", layout.where(),
                                "check the indentation and punctuation of this line")]) from None
    finally:
        _LAYOUT.reset(reset)


# ---- layout: indentation to _INDENT/_DEDENT ---------------------------------------


def _synthetic(kind: str, line: int, column: int, pos: int) -> Token:
    return Token(kind, "", pos, line, column, line, column, pos)


class _Layout:
    """Per-parse postlex state: YAML's block structure as _INDENT/_DEDENT tokens.

    A block opens at the column of its first token: the first token of a more
    indented line, or the entry after ``- `` (so ``- a: 1`` opens a mapping at
    the column of ``a``).  A line that is less indented closes blocks until its
    column matches one; matching none is an error.  Inside ``[ ]``/``{ }`` line
    breaks vanish, but continuation lines must stay right of the enclosing
    block (YAML 1.2 requires it even where PyYAML does not).
    """

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.levels: list[int] = []  # 0-based columns of the open blocks
        self.fresh = False  # the next token is the first of the innermost block
        self.brackets: list[Token] = []
        self.flow_min = 0  # leftmost column for a continuation line of the outermost bracket
        self.last: Token | None = None  # the last token handed to the parser
        self.real: deque[Token] = deque(maxlen=2)  # the last two that are not layout tokens
        self.heads: dict[int, str] = {}  # column -> type of the last token that started a line there
        self.line_start = True
        self.replaced: tuple[Token | None, str | None] = (None, None)  # last head token, the head it replaced

    def where(self) -> Span:
        tok = self.last
        if tok is None or tok.line is None:
            return Span(self.filename, 1, 1, 1, 1)
        return Span(self.filename, tok.line, tok.column, tok.line, tok.column)

    def head(self, tok: Token) -> str | None:
        """The type of the token that last started a line at ``tok``'s column, before ``tok``."""
        if self.replaced[0] is tok:
            return self.replaced[1]
        return self.heads.get(tok.column - 1)

    def before(self, tok: Token) -> Token | None:
        """The last real token before ``tok`` (which the parser may or may not have seen)."""
        for candidate in reversed(self.real):
            if candidate is not tok:
                return candidate
        return None

    def _emit(self, tok: Token) -> Token:
        self.last = tok
        if tok.type == "_NL":
            self.line_start = True
        elif tok.type not in _LAYOUT_TOKENS:
            self.real.append(tok)
            if self.line_start:
                self.replaced = (tok, self.heads.get(tok.column - 1))
                self.heads[tok.column - 1] = tok.type
                self.line_start = False
        return tok

    def _fail(self, message: str, line: int, col: int, hint: str, width: int = 1) -> _Failure:
        return _Failure(error(message, Span(self.filename, line, col, line, col + width), hint))

    def run(self, stream: Iterator[Token]) -> Iterator[Token]:
        for tok in stream:
            kind = tok.type
            if kind == "_NL":
                if self.brackets:
                    self._flow_line(tok)
                elif self.levels:
                    yield from self._line(tok)
                continue  # blank and comment lines before the first content vanish
            if not self.levels:
                self.levels.append(tok.column - 1)
                self.fresh = True
            if kind == "FCOLON" and self.real and self.real[-1].end_line != tok.line:
                raise self._fail("':' must be on the same line as its key", tok.line, tok.column,
                                 "move the ':' up to the end of the key's line")
            if kind in ("LSQB", "LBRACE"):
                self._open_bracket(tok)
            elif kind in ("RSQB", "RBRACE") and self.brackets and _CLOSER[self.brackets[-1].type] == kind:
                self.brackets.pop()
            yield self._emit(tok)
            self.fresh = False
            if kind == "DASH" and not self.brackets:
                yield self._push(tok.column - 1 + len(tok.value), tok.line, tok.end_pos)
        if self.brackets:
            opener = self.brackets[-1]
            closer = "]" if opener.type == "LSQB" else "}"
            raise self._fail(f"'{opener.value}' is never closed", opener.line, opener.column,
                             f"add the matching '{closer}'")
        last = self.last
        if last is None:
            return
        line, col, pos = last.end_line, last.end_column, last.end_pos
        if last.type != "_NL":
            yield self._emit(_synthetic("_NL", line, col, pos))
        while len(self.levels) > 1:
            self.levels.pop()
            yield self._emit(_synthetic("_DEDENT", line, col, pos))

    def _push(self, column: int, line: int, pos: int) -> Token:
        if len(self.levels) + len(self.brackets) >= MAX_DEPTH:
            raise self._fail(f"nested more than {MAX_DEPTH} levels deep", line, column + 1,
                             "flatten the structure")
        self.levels.append(column)
        self.fresh = True
        return self._emit(_synthetic("_INDENT", line, column + 1, pos))

    def _line(self, nl: Token) -> Iterator[Token]:
        yield self._emit(nl)
        indent = nl.value.rsplit("\n", 1)[1]
        if indent.lstrip(" ").startswith("#"):
            return  # only comment lines follow: the end of the file
        column, line, pos = len(indent), nl.end_line, nl.end_pos
        closed = False
        while len(self.levels) > 1 and column < self.levels[-1]:
            self.levels.pop()
            closed = True
            yield self._emit(_synthetic("_DEDENT", line, column + 1, pos))
        if column < self.levels[-1] or (closed and column > self.levels[-1]):
            candidates = " or ".join(str(c + 1) for c in reversed(self.levels))
            raise self._fail(f"inconsistent indentation: column {column + 1} matches no enclosing block",
                             line, column + 1,
                             f"indent this line to column {candidates}, like the lines it belongs with")
        if column > self.levels[-1]:
            yield self._push(column, line, pos)

    def _open_bracket(self, tok: Token) -> None:
        if not self.brackets:
            if self.fresh:  # the collection opened this block: its parent is the block outside
                parent = self.levels[-2] if len(self.levels) > 1 else -1
            else:
                parent = self.levels[-1]
            self.flow_min = parent + 1
        if len(self.levels) + len(self.brackets) >= MAX_DEPTH:
            raise self._fail(f"nested more than {MAX_DEPTH} levels deep", tok.line, tok.column,
                             "flatten the structure")
        self.brackets.append(tok)

    def _flow_line(self, nl: Token) -> None:
        indent = nl.value.rsplit("\n", 1)[1]
        if indent.lstrip(" ").startswith("#"):
            return  # end of file inside the brackets: reported as unclosed
        if len(indent) < self.flow_min:
            opener = self.brackets[0]
            raise self._fail(
                f"this continuation of the '{opener.value}' opened at line {opener.line} must be indented "
                f"to column {self.flow_min + 1} or more",
                nl.end_line, len(indent) + 1,
                f"indent every line inside [ ] or {{ }} (including the closing bracket) more than the key or '-' "
                f"it belongs to, or close the '{opener.value}' if it should have ended",
            )


# ---- error messages for Lark's exceptions -----------------------------------------

_WHAT = {
    "COLON": "':'", "FCOLON": "':'", "_COMMA": "','", "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'",
    "RBRACE": "'}'", "DASH": "'- '", "DASH_ALONE": "'-'", "_NL": "a line break", "_INDENT": "an indented block",
    "_DEDENT": "the end of a block", "$END": "the end of the file", "PLAIN": "a value", "FLOW_PLAIN": "a value",
    "SQUOTED": "a quoted string", "DQUOTED": "a quoted string",
}
_VALUES = frozenset(["PLAIN", "FLOW_PLAIN", "SQUOTED", "DQUOTED", "NULL", "BOOL", "INT", "PORTRANGE", "PORTSPEC",
                     "CIDR4", "CIDR6", "IPV4", "IPV6"])


def _what(tok: Token) -> str:
    if tok.type in _VALUES:
        return repr(_clip(tok.value))
    return _WHAT.get(tok.type, repr(_clip(str(tok.value))))


def _expected(names: Iterable[str]) -> str:
    shown = sorted({_WHAT.get(n, "a value" if n in _VALUES else n) for n in names if n != "_NL"})
    return ", ".join(shown) if shown else "nothing"


def _span_of(tok: Token, source: Source) -> Span:
    return Span(source.name, tok.line, tok.column, tok.end_line, tok.end_column)


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_CHAR_PROBLEMS = {
    "&": ("anchors (&name) are not supported", "write the value out again instead of anchoring it"),
    "*": ("aliases (*name) are not supported", "write the value out again instead of referring to an anchor"),
    "!": ("tags (!name, !!str) are not supported", "quote the value to make it a string, or remove the tag"),
    "|": ("block scalars (| and >) are not supported",
          "write the text as a quoted string on one line; use \\n for line breaks"),
    ">": ("block scalars (| and >) are not supported",
          "write the text as a quoted string on one line; use \\n for line breaks"),
    "?": ("explicit keys ('? ') and complex keys are not supported",
          "write mapping keys as `key: value` with a plain or quoted key"),
    "@": ("a plain value cannot start with '@'", "quote the value"),
    "`": ("a plain value cannot start with '`'", "quote the value"),
    "#": ("a comment needs a space before '#'", "put a space before '#', or quote the value if '#' is part of it"),
}


def _explain(exc: UnexpectedInput, layout: _Layout, source: Source, text: str) -> Diagnostic:
    """Turn a Lark error into a located Diagnostic with a human message and a fix hint."""
    if isinstance(exc, UnexpectedCharacters):
        return _explain_chars(exc.pos_in_stream, layout, source, text)
    if isinstance(exc, UnexpectedToken):
        return _explain_token(exc.token, set(exc.expected), layout, source, text)
    return error("unexpected end of the file", layout.where(), "check for an unfinished line at the end")


def _explain_chars(pos: int, layout: _Layout, source: Source, text: str) -> Diagnostic:
    span = source.span(pos, pos + 1)
    ch = text[pos]
    nxt = text[pos + 1 : pos + 2]
    if ch == "\t" or (ch in "-:?" and nxt == "\t"):
        tab = pos if ch == "\t" else pos + 1
        return error("tab character outside a quoted string", source.span(tab, tab + 1),
                     "indent and separate with spaces; YAML does not allow tabs here")
    if ch in "'\"":
        kind = "single" if ch == "'" else "double"
        return error(f"unterminated {kind}-quoted string", span,
                     f"close it with {ch} on the same line; kspec strings cannot span lines (use \\n in double quotes)")
    if ch == "%" and span.col == 1:
        return error("directives (%YAML, %TAG) are not supported", span, "remove the directive line")
    if ch == ":":
        if layout.brackets and nxt and nxt in ",?[]{}":
            return error(f"missing space between ':' and '{nxt}' inside [ ] or {{ }}", span,
                         "put a space after ':' (YAML readers disagree about this form)")
        if layout.brackets:
            return error("inside [ ] or { }, a value cannot start with ':'", span,
                         "quote it, e.g. '::1' (an IPv6 address that starts with '::')")
        return error("unexpected ':'", span, "a key needs text before ': '; quote values that start with ':'")
    if ch in _CHAR_PROBLEMS:
        message, hint = _CHAR_PROBLEMS[ch]
        return error(message, span, hint)
    return error(f"unexpected character {ch!r}", span, "quote the value if the character is part of it")


def _explain_token(tok: Token, expected: set[str], layout: _Layout, source: Source, text: str) -> Diagnostic:
    kind = tok.type
    if kind == "$END" or tok.line is None:
        end = source.span(len(text))
        return error("unexpected end of the file", end, f"the file ends where {_expected(expected)} was expected")
    span = Span(source.name, tok.line, tok.column, tok.end_line, tok.end_column)
    before = layout.before(tok)
    value_before = before is not None and before.type in _VALUES
    in_flow = bool(layout.brackets)
    same_line = before is not None and before.end_line == tok.line and kind not in _LAYOUT_TOKENS

    if kind == "_INDENT":
        if value_before:
            return error("unexpected indentation: a value cannot continue on a more indented line", span,
                         "put the whole value on one line (quote it if it contains ': ' or ' #'), "
                         "or align this line with the keys above it")
        return error("unexpected indentation", span, "align this line with the lines it belongs with")
    if in_flow and tok.value.startswith(":") and text[tok.start_pos + 1 : tok.start_pos + 2] in tuple(",?[]{}"):
        return _explain_chars(tok.start_pos, layout, source, text)
    if in_flow and tok.value.startswith(":") and len(tok.value) > 1 and "FLOW_PLAIN" in expected:
        return error("inside [ ] or { }, a value cannot start with ':'", span,
                     "quote it, e.g. '::1' (an IPv6 address that starts with '::')")
    if ({"COLON", "FCOLON"} & expected) and value_before and kind not in _VALUES:
        key_span = _span_of(before, source)
        hint = ("put a space after ':' to separate the key from its value" if ":" in before.value
                else "every line of a mapping is `key: value`; quote the text if it belongs to the value above")
        return error(f"expected ':' after the mapping key {_what(before)}", key_span, hint)
    if kind in ("COLON", "FCOLON"):
        if not same_line or before.type in ("LSQB", "LBRACE", "_COMMA", "DASH", "COLON", "FCOLON"):
            return error("missing mapping key before ':'", span,
                         "write `key: value`; empty (null) keys are not supported")
        if before.type in ("RSQB", "RBRACE"):
            return error("a [ ] or { } collection cannot be a mapping key (complex keys are not supported)",
                         span, "use a plain or quoted string as the key")
        if in_flow and layout.brackets[-1].type == "LSQB":
            return error("a `key: value` pair cannot stand directly inside [ ]", span,
                         "wrap it in braces, e.g. [{name: http}]")
        if value_before and before.value.endswith(":") and before.end_pos == tok.start_pos:
            return error(f"a value ending in ':' must be quoted: {_what(before)}", span,
                         f"write '{_clip(before.value + ':')}' in quotes (for example an IPv6 address like 'fe80::')")
        if in_flow:
            return error("unexpected ':'", span, "separate flow entries with ','")
        return error("unexpected ':' in a value", span,
                     "a value cannot be a `key: value` pair on the same line; quote the whole value, "
                     "or put the nested mapping on its own, more indented lines")
    if kind in ("DASH", "DASH_ALONE"):
        if in_flow:
            return error("'- ' entries are not allowed inside [ ] or { }", span, "separate flow entries with ','")
        if value_before and before.type == "PLAIN" and before.value.startswith("-") and not same_line:
            return error("a '- ' entry after the value " + _what(before), span,
                         f"{_what(before)} is one value, not an entry: write '- {_clip(before.value[1:])}' "
                         "with a space after '-'")
        if same_line:
            return error("a '- ' sequence entry must start its own line", span,
                         "move the entry to the next line, indented under its key")
        return error("a '- ' entry where a mapping key was expected", span,
                     "a block holds either `key: value` lines or `- ` entries, not both at the same indentation")
    if kind in ("LSQB", "LBRACE") and not same_line:
        return error("a [ ] or { } collection cannot be a mapping key (complex keys are not supported)",
                     span, "use a plain or quoted string as the key")
    if kind in ("RSQB", "RBRACE", "_COMMA") and not in_flow:
        return error(f"unexpected {_what(tok)} outside [ ] or {{ }}", span,
                     "quote the value if the character is part of it")
    if in_flow and ("_COMMA" in expected or "RSQB" in expected or "RBRACE" in expected):
        opener = layout.brackets[-1]
        closer = "']'" if opener.type == "LSQB" else "'}'"
        return error(f"expected ',' or {closer} in the flow collection opened at line {opener.line}, "
                     f"found {_what(tok)}", span,
                     "separate entries with ','; a value with spaces on several lines must be quoted on one line")
    if kind in _VALUES and same_line:
        return error(f"unexpected {_what(tok)} after a complete value", span,
                     "quote the whole value if it is one string; put further entries on their own lines")
    if kind in _VALUES:
        if not same_line and layout.head(tok) in ("DASH", "DASH_ALONE"):
            return error(f"expected a '- ' entry, found {_what(tok)}", span,
                         "a block holds either `key: value` lines or `- ` entries, not both at the same indentation")
        if value_before and before.type == "PLAIN" and ":" in before.value:
            return error(f"{_what(before)} is not a `key: value` line", _span_of(before, source),
                         "put a space after ':' to separate the key from its value")
        if before is None:
            return error(f"unexpected {_what(tok)}", span, f"expected {_expected(expected)}")
        return error(f"unexpected {_what(tok)}: the line above ended with the complete value {_what(before)}",
                     span, "a value cannot continue on the next line; indent this line like the keys of the "
                     "mapping it belongs to")
    return error(f"unexpected {_what(tok)}", span, f"expected {_expected(expected)}")


# ---- checks on the raw text --------------------------------------------------------

_BAD_CHARS = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]|\r(?!\n)"
)
_MARKER = re.compile(r"^(?:---|\.\.\.)(?=[ \t]|\r?$)", re.M)
_PREAMBLE = re.compile(r"(?:(?:[ ]*(?:#[^\r\n]*)?|%[^\r\n]*)\r?\n)*")  # blank, comment, directive lines
_DIRECTIVE = re.compile(r"^%[^\r\n]*", re.M)
_MARKER_REST = re.compile(r"[ ]*(?:#[^\r\n]*)?(?:\r?\n|$)")


def _char_problem(ch: str) -> tuple[str, str]:
    if ch == "\r":
        return "carriage return without a line feed", "end lines with \\n or \\r\\n"
    if ch in "\x85\u2028\u2029":
        return (f"Unicode line separator U+{ord(ch):04X} (YAML treats it as a line break)",
                "remove it; in a double-quoted string write it as an escape (\\N, \\L, \\P)")
    if ch == "\ufeff":
        return "byte order mark inside the text", "remove it (only the very first character may be one)"
    name = "NUL character" if ch == "\0" else "control character"
    return (f"{name} U+{ord(ch):04X} is not allowed",
            f"remove it; in a double-quoted string write it as \\x{ord(ch):02X}")


def _prescan(text: str, source: Source) -> list[Diagnostic]:
    """Problems visible without parsing: bad characters, huge lines, document markers."""
    problems: list[Diagnostic] = []
    for match in _BAD_CHARS.finditer(text):
        message, hint = _char_problem(match.group())
        problems.append(error(message, source.span(match.start(), match.start() + 1), hint))
        if len(problems) >= MAX_ERRORS:
            return problems
    if text and max(map(len, text.split("\n"))) > MAX_LINE:
        for number, line in enumerate(text.split("\n"), 1):
            if len(line) > MAX_LINE:
                problems.append(error(f"line {number} is longer than {MAX_LINE} characters",
                                      Span(source.name, number, 1, number, 2),
                                      "split long flow collections over several lines"))
                if len(problems) >= MAX_ERRORS:
                    return problems
    for match in _DIRECTIVE.finditer(text):
        problems.append(error("directives (%YAML, %TAG) are not supported", source.span(match.start(), match.end()),
                              "remove the directive line"))
    for index, match in enumerate(_MARKER.finditer(text)):
        marker = match.group()
        rest_ok = _MARKER_REST.match(text, match.end()) is not None
        if marker == "---" and index == 0 and rest_ok and _PREAMBLE.fullmatch(text, 0, match.start()):
            continue
        span = source.span(match.start(), match.end())
        if marker == "...":
            problems.append(error("the document end marker '...' is not supported", span, "remove the line"))
        elif index == 0 and _PREAMBLE.fullmatch(text, 0, match.start()):
            problems.append(error("content on the '---' line is not supported", span,
                                  "start the content on the next line"))
        else:
            problems.append(error("multiple documents in one kspec file are not supported", span,
                                  "put each document in its own .kspec file, or remove the '---' line"))
    return problems[:MAX_ERRORS]


def _blank_document_start(text: str) -> str:
    """Replace an accepted leading ``---`` with spaces, keeping every offset."""
    match = _MARKER.search(text)
    if match and match.group() == "---" and _PREAMBLE.fullmatch(text, 0, match.start()):
        return text[: match.start()] + "   " + text[match.end() :]
    return text


# ---- scalars ------------------------------------------------------------------------

_RESOLVER = yaml.resolver.Resolver()
_STR_TAG = "tag:yaml.org,2002:str"
_BOOL_WORDS = frozenset(["y", "n", "yes", "no", "on", "off", "true", "false"])
_YAML12_NUMBER = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+|0o[0-7]+")
_INT_KINDS = (
    (re.compile(r"[-+]?0b[0-1_]+"), "a binary"),
    (re.compile(r"[-+]?0x[0-9a-fA-F_]+"), "a hexadecimal"),
    (re.compile(r"[-+]?0[0-7_]+"), "an octal"),
    (re.compile(r".*:.*"), "a base-60 (sexagesimal)"),
    (re.compile(r".*_.*"), "a digit-grouped ('_')"),
)
_ESCAPES = {
    "0": "\0", "a": "\x07", "b": "\x08", "t": "\t", "\t": "\t", "n": "\n", "v": "\x0b", "f": "\x0c", "r": "\r",
    "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\", "N": "\x85", "_": "\xa0", "L": "\u2028", "P": "\u2029",
}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _quote(text: str) -> str:
    text = _clip(text)
    return f"'{text}'" if "'" not in text else '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _plain(text: str) -> tuple[Any, str, tuple[str, str] | None]:
    """Value, type and (message, hint) problem of a plain scalar, judged as PyYAML would read it."""
    return _plain_short(text) if len(text) <= _SHAPE_MAX else _resolve_plain(text)


@lru_cache(maxsize=16384)
def _plain_short(text: str) -> tuple[Any, str, tuple[str, str] | None]:
    return _resolve_plain(text)  # short values repeat (names, protocols): worth a cache


def _resolve_plain(text: str) -> tuple[Any, str, tuple[str, str] | None]:
    tag = _RESOLVER.resolve(yaml.ScalarNode, text, (True, False))
    kind = tag.rsplit(":", 1)[1]
    shown = repr(_clip(text))
    if kind == "str":
        lower = text.lower()
        if lower in _BOOL_WORDS:
            return text, "str", (f"{shown} is a boolean to YAML 1.1 readers",
                                 f"write true or false for a boolean, or quote it ({_quote(text)}) for the string")
        if lower == "null":
            return text, "str", (f"{shown} looks like null", f"write null, or quote it ({_quote(text)}) for the string")
        if _YAML12_NUMBER.fullmatch(text):
            return text, "str", (f"{shown} is a number in YAML 1.2", f"quote it ({_quote(text)}) if it is text")
        return text, classify_string(text), None
    if kind == "int":
        if _patterns()["int"].fullmatch(text):
            if len(text.lstrip("+-")) > MAX_INT_DIGITS:
                return text, "str", (f"integer {shown} has more than {MAX_INT_DIGITS} digits",
                                     f"quote it ({_quote(text)}) if it is text")
            return int(text), "int", None
        form = next(name for pattern, name in _INT_KINDS if pattern.fullmatch(text))
        hint = f"quote it ({_quote(text)}) if it is text; write numbers in plain decimal"
        if _patterns()["ipv6"].fullmatch(text):
            hint = f"quote the IPv6 address: {_quote(text)}"
        return text, "str", (f"YAML 1.1 reads {shown} as {form} integer", hint)
    if kind == "bool":
        if text in ("true", "false"):
            return text == "true", "bool", None
        return text, "str", (f"YAML 1.1 reads {shown} as a boolean",
                             f"write true or false for a boolean, or quote it ({_quote(text)}) for the string")
    if kind == "null":
        if text in ("null", "~"):
            return None, "null", None
        return text, "str", (f"YAML reads {shown} as null", f"write null, or quote it ({_quote(text)}) for the string")
    if kind == "float":
        return text, "str", (f"YAML reads {shown} as a floating-point number; kspec has no floats",
                             f"quote it ({_quote(text)}) if it is text, such as a version")
    if kind == "timestamp":
        return text, "str", (f"YAML reads {shown} as a date", f"quote it ({_quote(text)})")
    if kind == "merge":
        return text, "str", ("merge keys ('<<') are not supported", "write the merged entries out")
    return text, "str", (f"YAML gives {shown} a special meaning ({kind})", f"quote it ({_quote(text)})")


def _double_quoted(tok: Token, source: Source, problems: list[Diagnostic]) -> str:
    body = tok.value[1:-1]
    if "\\" not in body:
        return body
    out: list[str] = []
    i = 0
    while True:
        j = body.find("\\", i)
        if j < 0:
            out.append(body[i:])
            return "".join(out)
        out.append(body[i:j])
        ch = body[j + 1]
        col = tok.column + 1 + j
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
            i = j + 2
            continue
        width = _HEX_ESCAPES.get(ch)
        digits = body[j + 2 : j + 2 + width] if width else ""
        if width is None or len(digits) != width or not _HEX_DIGITS.issuperset(digits):
            shown = f"\\{ch}" if width is None else f"\\{ch}{digits}"
            problems.append(error(f"invalid escape {shown!r} in a double-quoted string",
                                  Span(source.name, tok.line, col, tok.line, col + len(shown)),
                                  "valid escapes: \\\\ \\\" \\n \\t \\r \\0 \\xHH \\uHHHH \\UHHHHHHHH; "
                                  "write a literal backslash as \\\\"))
            i = j + 2
            continue
        code = int(digits, 16)
        if 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
            problems.append(error(f"escape '\\{ch}{digits}' is not a Unicode character",
                                  Span(source.name, tok.line, col, tok.line, col + 2 + width),
                                  "write the character itself, or \\U with its code point"))
        else:
            out.append(chr(code))
        i = j + 2 + width


def _scalar(tok: Token, source: Source, problems: list[Diagnostic]) -> tuple[Any, str]:
    if tok.type == "SQUOTED":
        value = tok.value[1:-1].replace("''", "'")
        return value, classify_string(value)
    if tok.type == "DQUOTED":
        value = _double_quoted(tok, source, problems)
        return value, classify_string(value)
    value, kind, problem = _plain(tok.value)
    if problem is not None:
        problems.append(error(problem[0], Span(source.name, *_tok_span(tok)), problem[1]))
    return value, kind


# ---- syntax tree to data -------------------------------------------------------------


def _build(root: _Node | None, source: Source) -> ParsedKspec:
    """Walk the tree top-down without recursion: data, spans, types and the errors left."""
    name = source.name
    end_line, end_col = source.position(len(source.text))
    doc_span = Span(name, 1, 1, end_line, end_col)
    problems: list[Diagnostic] = []
    spans: dict[Path, Span] = {}
    types: dict[Path, str] = {}
    holder: list[Any] = [None]
    stack: list[tuple[_Node, Path, Any, Any]] = [(root, (), holder, 0)] if root is not None else []
    while stack:
        node, path, parent, slot = stack.pop()
        if path:
            spans[path] = Span(name, *node.span)
        if node.kind == "scalar":
            parent[slot], types[path] = _scalar(node.token, source, problems)
        elif node.kind == "null":
            parent[slot], types[path] = None, "null"
        elif node.kind == "seq":
            items: list[Any] = [None] * len(node.items)
            parent[slot] = items
            stack.extend((child, path + (i,), items, i) for i, child in reversed(list(enumerate(node.items))))
        else:
            mapping: dict[str, Any] = {}
            parent[slot] = mapping
            jobs = []
            for key_node, colon, value in node.items:
                key = _key(key_node, colon, source, problems)
                key_span = Span(name, *key_node.span)
                if key in mapping:
                    first = spans[path + (key, "\x00key")]
                    problems.append(Diagnostic(
                        Severity.ERROR, f"duplicate key {_quote(key)} in this mapping", key_span,
                        f"remove one of the two entries, or merge them (the first is at line {first.line}, "
                        f"column {first.col})", related=(("first defined here", first),)))
                    continue
                mapping[key] = None
                spans[path + (key, "\x00key")] = key_span
                jobs.append((value, path + (key,), mapping, key))
            stack.extend(reversed(jobs))
    if problems:
        raise InputError(sorted(problems, key=Diagnostic.sort_key)[:MAX_ERRORS])
    document = Document(data=holder[0], span=doc_span, kind="kspec", key_spans=spans)
    return ParsedKspec(document, types)


def _key(node: _Node, colon: Token, source: Source, problems: list[Diagnostic]) -> str:
    tok = node.token
    span = Span(source.name, *node.span)
    if colon.start_pos - tok.start_pos > MAX_KEY:
        problems.append(error(f"mapping key longer than {MAX_KEY} characters", span, "use a shorter key"))
    value, kind = _scalar(tok, source, problems)
    if kind in ("int", "bool", "null"):
        problems.append(error(f"mapping key {tok.value!r} is read by YAML as {'a number' if kind == 'int' else kind}; "
                              f"kspec keys are strings", span, f"quote it: {_quote(tok.value)}"))
        return tok.value
    return value
