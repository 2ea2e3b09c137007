"""Kubernetes label selectors: parsing, canonical form and matching.

Three inputs build the same :class:`Selector`: the kubectl string syntax
(``app=web, tier notin (canary)``), a plain label map (a Service's
``spec.selector``) and a ``metav1.LabelSelector`` mapping (``matchLabels`` /
``matchExpressions``).  Matching follows k8s.io/apimachinery exactly:
``!=`` and ``notin`` also match objects that lack the key, ``=`` and ``in``
require it.  Requirements and values are kept sorted, so two selectors
that say the same thing compare equal and print the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Iterable, Mapping

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from kspec import names
from kspec.diagnostics import Diagnostic, InputError, Span, error
from kspec.frontend.document import Origin

OPS = ("=", "!=", "in", "notin", "exists", "!")
_ONE_VALUE = frozenset({"=", "!="})
_SOME_VALUES = frozenset({"in", "notin"})
_NO_VALUES = frozenset({"exists", "!"})

KEY_HINT = ("a label key is an optional DNS subdomain prefix and '/', then a name of at most 63 "
            "characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit "
            "(e.g. 'app' or 'example.com/tier')")
VALUE_HINT = ("label values must be 63 characters or less, start and end with an alphanumeric character, "
              "and contain only letters, digits, '-', '_' and '.' in between (or be empty)")
_OPS_TEXT = "=, ==, !=, in, notin"
_SELECTOR_FILE = "<selector>"


@dataclass(frozen=True, slots=True, order=True)
class Requirement:
    """One condition on one label key; construction normalises '==' and the value order."""

    key: str
    op: str  # one of OPS; "==" is accepted and stored as "="
    values: tuple[str, ...] = ()  # sorted, without duplicates

    def __post_init__(self) -> None:
        if self.op == "==":
            object.__setattr__(self, "op", "=")
        values = tuple(sorted(set(self.values)))
        object.__setattr__(self, "values", values)
        op = self.op
        if op not in OPS:
            raise ValueError(f"unknown selector operator {op!r}")
        if (op in _ONE_VALUE and len(values) != 1) or (op in _SOME_VALUES and not values) or \
                (op in _NO_VALUES and values):
            raise ValueError(f"operator {op!r} cannot take the values {values!r}")

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.op
        if op == "exists":
            return self.key in labels
        if op == "!":
            return self.key not in labels
        if self.key not in labels:
            return op in ("!=", "notin")
        found = labels[self.key] in self.values
        return found if op in ("=", "in") else not found

    def __str__(self) -> str:
        op = self.op
        if op == "exists":
            return self.key
        if op == "!":
            return f"!{self.key}"
        if op in _ONE_VALUE:
            return f"{self.key}{op}{self.values[0]}"
        return f"{self.key} {op} ({','.join(self.values)})"


@dataclass(frozen=True, slots=True)
class Selector:
    """An AND of requirements; the empty selector matches every label set."""

    requirements: tuple[Requirement, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "requirements", tuple(sorted(set(self.requirements))))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(requirement) for requirement in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements

    def equality_terms(self) -> tuple[tuple[str, str], ...]:
        """(key, value) pairs every matching label set must contain, for index look-ups."""
        terms = {(r.key, r.values[0]) for r in self.requirements
                 if r.op == "=" or (r.op == "in" and len(r.values) == 1)}
        return tuple(sorted(terms))


# --- the string syntax --------------------------------------------------------

@cache
def _parser() -> Lark:
    text = resources.files("kspec").joinpath("grammar", "selector.lark").read_text(encoding="utf-8")
    return Lark(text, start="selector", parser="lalr", lexer="basic", maybe_placeholders=True)


def _locate(span: Span | None, start: int, end: int) -> Span:
    """The span of text[start:end], assuming the text starts at ``span`` on one line."""
    end = max(end, start + 1)
    if span is None:
        return Span(_SELECTOR_FILE, 1, 1 + start, 1, 1 + end)
    return Span(span.file, span.line, span.col + start, span.line, span.col + end)


def parse_selector(text: str, span: Span | None = None) -> Selector:
    """Parse kubectl selector syntax; ``span`` is where the text's first character sits."""
    if not isinstance(text, str):
        where = span or Span.whole(_SELECTOR_FILE)
        raise InputError(error(f"a label selector must be a string, not {type(text).__name__}", where,
                               "write requirements like 'app=web, tier in (a,b)', or a map of labels"))
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as exc:
        raise InputError(_syntax_error(text, exc, span)) from None
    problems: list[Diagnostic] = []
    requirements = [_requirement(node, span, problems) for node in tree.children if node is not None]
    if problems:
        raise InputError(problems)
    return Selector(tuple(r for r in requirements if r is not None))


def _word(node: Tree | None) -> Token | None:
    return None if node is None else node.children[0]


def _requirement(node: Tree, span: Span | None, problems: list[Diagnostic]) -> Requirement | None:
    kind = node.data
    if kind == "not_exists":
        key_tok = _word(node.children[1])
        _check_key(key_tok, span, problems)
        return Requirement(str(key_tok), "!")
    key_tok = _word(node.children[0])
    _check_key(key_tok, span, problems)
    key = str(key_tok)
    if kind == "exists":
        return Requirement(key, "exists")
    op_tok = _word(node.children[1])
    if kind == "set":
        value_toks = [_word(item) for item in node.children[2].children]
    else:
        value_toks = [_word(node.children[2])]
    for tok in value_toks:
        if tok is not None:
            problem = names.check_label_value(str(tok))
            if problem:
                problems.append(error(f"invalid label value {str(tok)!r} for key {key!r}: {problem}",
                                      _locate(span, tok.start_pos, tok.end_pos), VALUE_HINT))
    if kind == "order":
        problems.append(error(f"the operator {str(op_tok)!r} is not supported in label selectors",
                              _locate(span, op_tok.start_pos, op_tok.end_pos),
                              f"Service and LabelSelector selectors support {_OPS_TEXT}, 'key' (exists) and "
                              f"'!key'; '>' and '<' exist only in node affinity"))
        return None
    return Requirement(key, str(op_tok), tuple("" if tok is None else str(tok) for tok in value_toks))


def _check_key(tok: Token, span: Span | None, problems: list[Diagnostic]) -> None:
    key = str(tok)
    problem = names.check_label_key(key)
    if not problem:
        return
    hint = KEY_HINT
    head, colon, tail = key.partition(":")
    if colon and not names.check_label_key(head) and not names.check_label_value(tail):
        hint = f"selectors use '=', not ':': did you mean '{head}={tail}'?"
    problems.append(error(f"invalid label key {key!r}: {problem}", _locate(span, tok.start_pos, tok.end_pos), hint))


def _context(tokens: Iterable[Token]) -> tuple[str, str, str]:
    """Where a valid prefix of tokens leaves the parser: (state, current key, last operator).

    Lets a syntax error say what was expected in the user's terms; the
    states mirror the grammar, which is regular enough to walk by hand.
    """
    state, key, op = "start", "", ""
    for tok in tokens:
        kind = tok.type
        if state == "start":
            state, key = ("bang", key) if kind == "BANG" else ("key", str(tok))
        elif state == "bang":
            state, key = "bangkey", str(tok)
        elif state == "key" and kind != "COMMA":
            state, op = ("setop" if kind in ("IN", "NOTIN") else "exactop"), str(tok)
        elif state == "setop":
            state = "open"
        elif state == "open":
            state = {"COMMA": "open", "RPAR": "after"}.get(kind, "listvalue")
        elif state == "listvalue":
            state = "open" if kind == "COMMA" else "after"
        elif state == "exactop" and kind != "COMMA":
            state = "after"
        else:
            state = "start"
    return state, key, op


_AND_WORDS = frozenset({"and", "&&", "&", "AND"})
_OR_WORDS = frozenset({"or", "||", "|", "OR"})


def _blank_hint(word: str) -> str:
    if word in _AND_WORDS:
        return "requirements are joined with ',' (a comma means AND)"
    if word in _OR_WORDS:
        return "a label selector cannot express OR; use 'key in (a,b)' for alternative values of one key"
    return "keys and values cannot contain blanks; separate requirements with ','"


def _syntax_error(text: str, exc: UnexpectedInput, span: Span | None) -> Diagnostic:
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        start, end, kind, found = exc.token.start_pos, exc.token.end_pos, exc.token.type, str(exc.token)
    elif isinstance(exc, UnexpectedCharacters):
        start, kind, found = exc.pos_in_stream, "CHAR", text[exc.pos_in_stream]
        end = start + 1
    else:
        start = len(text.rstrip(" \t\r\n"))
        end, kind, found = start + 1, "$END", ""
    where = _locate(span, start, end)
    shown = "the end of the selector" if kind == "$END" else repr(found)
    before = [tok for tok in _parser().lex(text) if tok.start_pos < start]
    state, key, op = _context(before)
    if state == "start":
        if kind == "$END":
            return error("the selector ends with ','", where, "remove the trailing ','")
        if kind == "COMMA":
            return error("empty requirement between commas", where, "remove the extra ','")
        return error(f"expected a label key or '!key', found {shown}", where,
                     "each requirement starts with a label key, e.g. 'app=web', 'tier in (a,b)', 'env', '!legacy'")
    if state == "bang":
        return error(f"expected a label key after '!', found {shown}", where,
                     "'!key' selects objects that do not have the label 'key'")
    if state == "bangkey":
        if kind in ("EQ", "DEQ", "NEQ"):
            return error(f"'!{key}' takes no operator or value", where,
                         f"write '{key}!=value' to exclude one value, or '!{key}' alone for objects without the label")
        return error(f"expected ',' or the end of the selector after '!{key}', found {shown}", where,
                     _blank_hint(found) if kind == "WORD" else "separate requirements with ','")
    if state == "key":
        return error(f"expected an operator ({_OPS_TEXT}), ',' or the end of the selector after {key!r}, "
                     f"found {shown}", where, _after_key_hint(key, kind, found, text[end:]))
    if state == "exactop":
        hint = (f"use '{key} in (v1,v2)' for a set of values" if kind == "LPAR" else VALUE_HINT)
        return error(f"expected a label value after '{op}', found {shown}", where, hint)
    if state == "setop":
        return error(f"expected '(' after '{op}', found {shown}", where,
                     f"write the values in parentheses: '{key} {op} (v1,v2)'")
    if state == "open":
        if kind == "$END":
            return error("unclosed '(': expected a value, ',' or ')'", where, "close the list of values with ')'")
        return error(f"expected a label value, ',' or ')', found {shown}", where, VALUE_HINT)
    if state == "listvalue":
        if kind == "$END":
            return error("unclosed '(': expected ',' or ')'", where, "close the list of values with ')'")
        hint = "separate values with ','" if kind == "WORD" else "label values cannot contain '=', '!', '<', '>' or '('"
        return error(f"expected ',' or ')' after a value, found {shown}", where, hint)
    if kind == "WORD":
        hint = _blank_hint(found)
    elif kind == "LPAR":
        hint = f"use '{key} in (v1,v2)' for a set of values"
    else:
        hint = "label values cannot contain '=', '!', '<', '>', '(' or ')'; separate requirements with ','"
    return error(f"expected ',' or the end of the selector, found {shown}", where, hint)


def _after_key_hint(key: str, kind: str, found: str, rest: str) -> str:
    if kind == "WORD":
        if found == "not" and rest.lstrip().startswith("in"):
            return "did you mean 'notin'?"
        if found.lower() in ("in", "notin"):
            return f"operators are lower case: did you mean '{found.lower()}'?"
        if found.lower() in ("not_in", "not-in", "nin"):
            return "did you mean 'notin'?"
        if key.endswith(":"):
            return f"selectors use '=', not ':': did you mean '{key[:-1]}={found}'?"
        return _blank_hint(found)
    if kind == "LPAR":
        return f"did you mean '{key} in (...)'?"
    if kind == "BANG":
        return f"did you mean '{key}!=value'?"
    return "a requirement is 'key', '!key', 'key=value', 'key!=value' or 'key in (v1,v2)'"


# --- label maps and metav1.LabelSelector --------------------------------------

def selector_from_labels(labels: Mapping[str, str], origin: Origin | None = None) -> Selector:
    """The selector of a Service's ``spec.selector`` or a ``matchLabels`` map: key=value for each entry.

    Keys and values are validated; errors point at ``origin.at(key)`` when an
    origin is given.
    """
    problems: list[Diagnostic] = []
    requirements = [Requirement(key, "=", (value,))
                    for key, value in _checked_labels(labels, origin, (), problems)]
    if problems:
        raise InputError(problems)
    return Selector(tuple(requirements))


def _checked_labels(labels: Any, origin: Origin | None, path: tuple[str | int, ...],
                    problems: list[Diagnostic]) -> list[tuple[str, str]]:
    def at(*sub: str | int) -> Span:
        return origin.at(*path, *sub) if origin is not None else Span.whole(_SELECTOR_FILE)

    if not isinstance(labels, Mapping):
        problems.append(error(f"expected a map of labels, not {type(labels).__name__}", at(),
                              "write labels as 'key: value' lines"))
        return []
    result = []
    for key, value in labels.items():
        key_problem = names.check_label_key(key)
        value_problem = names.check_label_value(value) if isinstance(value, str) else None
        if key_problem:
            problems.append(error(f"invalid label key {key!r}: {key_problem}", at(key), KEY_HINT))
        elif not isinstance(value, str):
            shown = "null" if value is None else repr(value)
            hint = (f"write {key}: \"\" for the empty value" if value is None
                    else f"quote the value: {key}: \"{value}\"" if isinstance(value, (int, float, bool))
                    else VALUE_HINT)
            problems.append(error(f"label {key!r} must have a string value, not {shown}", at(key), hint))
        elif value_problem:
            problems.append(error(f"invalid label value {value!r} for key {key!r}: {value_problem}", at(key),
                                  VALUE_HINT))
        else:
            result.append((key, value))
    return result


_EXPRESSION_OPS = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
_SELECTOR_FIELDS = ("matchLabels", "matchExpressions")
_EXPRESSION_FIELDS = ("key", "operator", "values")


def selector_from_label_selector(obj: Mapping, origin: Origin) -> Selector:
    """A ``metav1.LabelSelector``: matchLabels AND matchExpressions, validated like the API server.

    Unknown fields are errors, not ignored: a misspelt ``matchLabels`` would
    otherwise leave an empty selector that matches everything.
    """
    if not isinstance(obj, Mapping):
        raise InputError(error("a label selector must be a mapping with matchLabels and/or matchExpressions",
                               origin.span, "e.g. selector: {matchLabels: {app: web}}"))
    problems: list[Diagnostic] = []
    _reject_unknown(obj, _SELECTOR_FIELDS, origin, (), problems)
    requirements: list[Requirement] = []
    if obj.get("matchLabels") is not None:
        requirements += [Requirement(key, "=", (value,))
                         for key, value in _checked_labels(obj["matchLabels"], origin, ("matchLabels",), problems)]
    expressions = obj.get("matchExpressions")
    if expressions is not None and not isinstance(expressions, list):
        problems.append(error("matchExpressions must be a list", origin.at("matchExpressions"),
                              "write '- {key: k, operator: In, values: [v]}' items"))
    elif expressions:
        for index, item in enumerate(expressions):
            requirement = _expression(item, origin, ("matchExpressions", index), problems)
            if requirement is not None:
                requirements.append(requirement)
    if problems:
        raise InputError(problems)
    return Selector(tuple(requirements))


def _reject_unknown(obj: Mapping, known: tuple[str, ...], origin: Origin, path: tuple[str | int, ...],
                    problems: list[Diagnostic]) -> None:
    for field in obj:
        if field not in known:
            close = [name for name in known if name.lower() == str(field).lower() or
                     _one_edit_apart(name.lower(), str(field).lower())]
            hint = f"did you mean '{close[0]}'?" if close else f"a label selector has only {', '.join(known)}"
            problems.append(error(f"unknown field {field!r} in label selector", origin.key(*path, field), hint))


def _one_edit_apart(a: str, b: str) -> bool:
    """True when one insertion, deletion, substitution or adjacent swap turns a into b."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


def _expression(item: Any, origin: Origin, path: tuple[str | int, ...],
                problems: list[Diagnostic]) -> Requirement | None:
    if not isinstance(item, Mapping):
        problems.append(error("a matchExpressions item must be a mapping", origin.at(*path),
                              "write {key: k, operator: In, values: [v]}"))
        return None
    count = len(problems)
    _reject_unknown(item, _EXPRESSION_FIELDS, origin, path, problems)
    key = item.get("key")
    key_problem = "is missing" if key is None else names.check_label_key(key)
    if key_problem:
        problems.append(error(f"matchExpressions key {key!r}: {key_problem}" if key is not None
                              else "matchExpressions item has no key", origin.at(*path, "key"), KEY_HINT))
    operator = item.get("operator")
    op = _EXPRESSION_OPS.get(operator) if isinstance(operator, str) else None
    if op is None:
        fixed = {name.lower(): name for name in _EXPRESSION_OPS}.get(re.sub("[^a-z]", "", str(operator).lower()))
        hint = f"did you mean '{fixed}'?" if fixed else f"the operator is one of {', '.join(_EXPRESSION_OPS)}"
        problems.append(error(f"unsupported matchExpressions operator {operator!r}",
                              origin.at(*path, "operator"), hint))
    raw_values = item.get("values")
    values: list[str] = []
    if raw_values is not None and not isinstance(raw_values, list):
        problems.append(error("values must be a list of strings", origin.at(*path, "values"), "write values: [a, b]"))
    else:
        for index, value in enumerate(raw_values or ()):
            problem = ("must be a string" if not isinstance(value, str) else names.check_label_value(value))
            if problem:
                problems.append(error(f"invalid label value {value!r}: {problem}", origin.at(*path, "values", index),
                                      VALUE_HINT if isinstance(value, str) else f"quote the value: \"{value}\""))
            else:
                values.append(value)
        if op in _SOME_VALUES and not raw_values:
            problems.append(error(f"operator {operator} needs at least one value", origin.at(*path, "values"),
                                  "list the values, e.g. values: [a], or use Exists"))
        if op in _NO_VALUES and raw_values:
            problems.append(error(f"operator {operator} takes no values", origin.at(*path, "values"),
                                  "remove values, or use In / NotIn to compare values"))
    if len(problems) > count or op is None:
        return None
    return Requirement(key, op, tuple(values))
