"""Label selectors: syntax as apimachinery accepts it, matching, canonical form, errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from kspec.diagnostics import InputError, Span
from kspec.frontend.document import Document, Origin
from kspec.selector import (
    Requirement,
    Selector,
    parse_selector,
    selector_from_label_selector,
    selector_from_labels,
)

R = Requirement


def reqs(*items: Requirement) -> tuple[Requirement, ...]:
    return Selector(items).requirements


# --- valid syntax -------------------------------------------------------------

VALID = [
    ("", ()),
    ("   ", ()),
    ("app", (R("app", "exists"),)),
    ("!app", (R("app", "!"),)),
    ("! app", (R("app", "!"),)),
    ("app=web", (R("app", "=", ("web",)),)),
    ("app==web", (R("app", "=", ("web",)),)),
    ("app!=web", (R("app", "!=", ("web",)),)),
    (" app = web ", (R("app", "=", ("web",)),)),
    ("app=", (R("app", "=", ("",)),)),
    ("app!=", (R("app", "!=", ("",)),)),
    ("app=,tier", (R("app", "=", ("",)), R("tier", "exists"))),
    ("app in (a,b)", (R("app", "in", ("a", "b")),)),
    ("app in(b, a, a)", (R("app", "in", ("a", "b")),)),
    ("app notin (a)", (R("app", "notin", ("a",)),)),
    ("app in ()", (R("app", "in", ("",)),)),
    ("app in (,)", (R("app", "in", ("",)),)),
    ("app in (a,)", (R("app", "in", ("", "a")),)),
    ("app in (,a)", (R("app", "in", ("", "a")),)),
    ("x in (foo,,baz),y,z notin ()",
     (R("x", "in", ("", "baz", "foo")), R("y", "exists"), R("z", "notin", ("",)))),
    ("in in (in, notin)", (R("in", "in", ("in", "notin")),)),
    ("notin", (R("notin", "exists"),)),
    ("!in", (R("in", "!"),)),
    ("inx in (a)", (R("inx", "in", ("a",)),)),
    ("app = search, tier notin (canary)", (R("app", "=", ("search",)), R("tier", "notin", ("canary",)))),
    ("example.com/tier=front-end_1.2", (R("example.com/tier", "=", ("front-end_1.2",)),)),
    ("a=b,a=b", (R("a", "=", ("b",)),)),
    ("b=1,a=2", (R("a", "=", ("2",)), R("b", "=", ("1",)))),
    ("a\t=\r\nb", (R("a", "=", ("b",)),)),
    ("A.b_c-D=X" + "y" * 61 + "Z", (R("A.b_c-D", "=", ("X" + "y" * 61 + "Z",)),)),
]


@pytest.mark.parametrize("text,expected", VALID)
def test_valid_selectors(text: str, expected: tuple[Requirement, ...]) -> None:
    selector = parse_selector(text)
    assert selector.requirements == reqs(*expected)
    assert parse_selector(str(selector)) == selector


# --- invalid syntax: message, hint and the column inside the string ---------

INVALID = [
    # text, offset of the offending character, a word of the message, a word of the hint
    ("a=b c", 4, "expected ','", "blanks"),
    ("a,", 2, "ends with ','", "trailing"),
    (",a", 0, "empty requirement", "extra ','"),
    ("a,,b", 2, "empty requirement", "extra ','"),
    ("a in b", 5, "expected '('", "parentheses"),
    ("a in (b", 7, "unclosed '('", "')'"),
    ("a in (", 6, "unclosed '('", "')'"),
    ("a in (b c)", 8, "expected ',' or ')'", "separate values"),
    ("a not in (b)", 2, "expected an operator", "did you mean 'notin'?"),
    ("a NOTIN (b)", 2, "expected an operator", "did you mean 'notin'?"),
    ("a IN (b)", 2, "expected an operator", "did you mean 'in'?"),
    ("!a=b", 2, "'!a' takes no operator", "a!=value"),
    ("a=b=c", 3, "expected ','", "cannot contain '='"),
    ("a!==b", 3, "expected a label value", "63 characters"),
    ("=a", 0, "expected a label key", "starts with a label key"),
    ("!", 1, "label key after '!'", "do not have"),
    ("a=(b)", 2, "expected a label value", "a in (v1,v2)"),
    ("a(b)", 1, "expected an operator", "a in (...)"),
    ("a=b and c=d", 4, "expected ','", "comma means AND"),
    ("a=b || c=d", 4, "expected ','", "cannot express OR"),
    ("a: b", 3, "expected an operator", "did you mean 'a=b'?"),
    ("a:b", 0, "invalid label key 'a:b'", "did you mean 'a=b'?"),
    ("a>5", 1, "'>' is not supported", "node affinity"),
    ("a<5", 1, "'<' is not supported", "node affinity"),
    ("A_=b", 0, "invalid label key 'A_'", "label key"),
    ("x/y/z", 0, "at most one '/'", "label key"),
    ("Example.com/a", 0, "invalid label key", "label key"),
    ("a=b_", 2, "invalid label value 'b_'", "start and end with an alphanumeric character"),
    ("a=" + "v" * 64, 2, "no more than 63 characters", "63 characters or less"),
    ("a in (ok, -bad)", 10, "invalid label value '-bad'", "alphanumeric"),
    ("k" * 64, 0, "no more than 63", "label key"),
    ("a\x00b", 0, "invalid label key", "label key"),
    ("café=1", 0, "invalid label key", "label key"),
]


@pytest.mark.parametrize("text,offset,message,hint", INVALID)
def test_invalid_selectors_point_inside_the_string(text: str, offset: int, message: str, hint: str) -> None:
    span = Span("svc.kspec", 7, 20, 7, 20 + len(text))
    with pytest.raises(InputError) as info:
        parse_selector(text, span)
    first = info.value.diagnostics[0]
    assert message in first.message
    assert hint in first.hint
    assert (first.span.file, first.span.line, first.span.col) == ("svc.kspec", 7, 20 + offset)
    assert first.span.end_col > first.span.col


def test_error_span_covers_the_offending_word() -> None:
    with pytest.raises(InputError) as info:
        parse_selector("app=ok, tier=bad_", Span("f", 1, 5, 1, 5))
    span = info.value.diagnostics[0].span
    assert (span.col, span.end_col) == (5 + 13, 5 + 17)


def test_every_invalid_key_and_value_is_reported() -> None:
    with pytest.raises(InputError) as info:
        parse_selector("A_=x_, b in (-c, d), e_")
    assert [d.span.col for d in info.value.diagnostics] == [1, 4, 14, 22]


def test_without_a_span_errors_use_a_placeholder_file() -> None:
    with pytest.raises(InputError) as info:
        parse_selector("a in b")
    assert info.value.diagnostics[0].span == Span("<selector>", 1, 6, 1, 7)


@pytest.mark.parametrize("value", [None, 3, ["a=b"], {"a": "b"}])
def test_non_string_input_is_an_input_error(value: object) -> None:
    with pytest.raises(InputError) as info:
        parse_selector(value, Span("f", 2, 3, 2, 4))  # type: ignore[arg-type]
    assert info.value.diagnostics[0].span == Span("f", 2, 3, 2, 4)


# --- matching semantics (apimachinery Requirement.Matches) --------------------

MATCHING = [
    # requirement, labels, expected
    (R("a", "=", ("x",)), {"a": "x"}, True),
    (R("a", "=", ("x",)), {"a": "y"}, False),
    (R("a", "=", ("x",)), {}, False),
    (R("a", "=", ("",)), {"a": ""}, True),
    (R("a", "=", ("",)), {}, False),
    (R("a", "!=", ("x",)), {"a": "x"}, False),
    (R("a", "!=", ("x",)), {"a": "y"}, True),
    (R("a", "!=", ("x",)), {}, True),
    (R("a", "!=", ("",)), {"a": ""}, False),
    (R("a", "in", ("x", "y")), {"a": "y"}, True),
    (R("a", "in", ("x", "y")), {"a": "z"}, False),
    (R("a", "in", ("x", "y")), {}, False),
    (R("a", "in", ("",)), {"a": ""}, True),
    (R("a", "notin", ("x", "y")), {"a": "y"}, False),
    (R("a", "notin", ("x", "y")), {"a": "z"}, True),
    (R("a", "notin", ("x", "y")), {}, True),
    (R("a", "exists"), {"a": ""}, True),
    (R("a", "exists"), {"b": "a"}, False),
    (R("a", "!"), {"a": ""}, False),
    (R("a", "!"), {"b": "a"}, True),
]


@pytest.mark.parametrize("requirement,labels,expected", MATCHING)
def test_requirement_matching(requirement: Requirement, labels: dict[str, str], expected: bool) -> None:
    assert requirement.matches(labels) is expected
    assert Selector((requirement,)).matches(labels) is expected


def test_selector_is_the_and_of_its_requirements() -> None:
    selector = parse_selector("app=web, tier notin (canary), !legacy")
    assert selector.matches({"app": "web", "tier": "stable"})
    assert selector.matches({"app": "web"})
    assert not selector.matches({"app": "web", "tier": "canary"})
    assert not selector.matches({"app": "web", "legacy": "true"})
    assert not selector.matches({"tier": "stable"})


def test_empty_selector_matches_everything() -> None:
    assert Selector().empty
    assert parse_selector(" ").empty
    assert Selector().matches({}) and Selector().matches({"a": "b"})
    assert not parse_selector("a").empty


# --- normalisation and canonical form -----------------------------------------

def test_requirement_normalises_operator_and_values() -> None:
    assert R("a", "==", ("x",)) == R("a", "=", ("x",))
    assert R("a", "in", ("b", "a", "b")).values == ("a", "b")


@pytest.mark.parametrize("op,values", [("=", ()), ("=", ("a", "b")), ("in", ()), ("exists", ("a",)),
                                       ("!", ("a",)), ("~", ("a",)), (">", ("1",))])
def test_requirement_rejects_impossible_shapes(op: str, values: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        R("a", op, values)


def test_equal_selectors_compare_equal_whatever_the_order() -> None:
    one = parse_selector("b in (y, x), a=1, !c")
    two = parse_selector("!c,a==1,b in (x,y,x)")
    assert one == two
    assert hash(one) == hash(two)
    assert str(one) == str(two) == "a=1,b in (x,y),!c"


@pytest.mark.parametrize("text,canonical", [
    ("app = web", "app=web"),
    ("tier notin ( b , a )", "tier notin (a,b)"),
    ("x in (,b)", "x in (,b)"),
    ("x in ()", "x in ()"),
    ("x=", "x="),
    ("! gone, here", "!gone,here"),
    ("here, ! gone", "!gone,here"),
    ("in in (notin)", "in in (notin)"),
])
def test_canonical_string(text: str, canonical: str) -> None:
    assert str(parse_selector(text)) == canonical
    assert str(parse_selector(canonical)) == canonical


def test_equality_terms() -> None:
    selector = parse_selector("app=web, tier in (front), zone in (a,b), env!=prod, x, y=")
    assert selector.equality_terms() == (("app", "web"), ("tier", "front"), ("y", ""))
    assert parse_selector("a notin (b), !c").equality_terms() == ()


def test_equality_terms_are_required_by_every_match() -> None:
    selector = parse_selector("app=web, tier in (front)")
    labels = {"app": "web", "tier": "front", "extra": "1"}
    assert selector.matches(labels)
    for key, value in selector.equality_terms():
        assert labels.get(key) == value


# --- label maps and metav1.LabelSelector ----------------------------------------

def test_selector_from_labels() -> None:
    selector = selector_from_labels({"tier": "front", "app": "web"})
    assert selector == parse_selector("app=web,tier=front")
    assert selector.equality_terms() == (("app", "web"), ("tier", "front"))
    assert selector_from_labels({}).empty


def _origin(path: tuple[str | int, ...] = ("spec", "selector")) -> tuple[Origin, dict]:
    spans: dict = {}
    doc = Document(data=None, span=Span("d.yaml", 1, 1, 1, 1), kind="manifest", key_spans=spans)
    return Origin(doc, path), spans


def test_selector_from_labels_points_at_the_bad_entry() -> None:
    origin, spans = _origin()
    spans[("spec", "selector", "bad key")] = Span("d.yaml", 9, 5, 9, 12)
    with pytest.raises(InputError) as info:
        selector_from_labels({"app": "web", "bad key": "x"}, origin)
    (diag,) = info.value.diagnostics
    assert diag.span == Span("d.yaml", 9, 5, 9, 12)
    assert "bad key" in diag.message


@pytest.mark.parametrize("value,hint", [(None, '""'), (3, 'quote'), (True, 'quote')])
def test_label_values_must_be_strings(value: object, hint: str) -> None:
    with pytest.raises(InputError) as info:
        selector_from_labels({"app": value})  # type: ignore[dict-item]
    assert hint in info.value.diagnostics[0].hint


def test_label_selector_combines_match_labels_and_expressions() -> None:
    origin, _ = _origin()
    obj = {
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["b", "a"]},
            {"key": "track", "operator": "NotIn", "values": ["canary"]},
            {"key": "zone", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist", "values": []},
        ],
    }
    selector = selector_from_label_selector(obj, origin)
    assert selector == parse_selector("app=web, tier in (a,b), track notin (canary), zone, !legacy")
    assert selector_from_label_selector({}, origin).empty


@pytest.mark.parametrize("obj,path,message,hint", [
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["x"]},
                           {"key": "b", "operator": "in", "values": ["x"]}]},
     ("matchExpressions", 1, "operator"), "unsupported matchExpressions operator", "did you mean 'In'?"),
    ({"matchExpressions": [{"key": "b", "operator": "Equals", "values": ["x"]}]},
     ("matchExpressions", 0, "operator"), "unsupported", "In, NotIn, Exists, DoesNotExist"),
    ({"matchExpressions": [{"key": "b", "operator": "NotIn", "values": []}]},
     ("matchExpressions", 0, "values"), "needs at least one value", "Exists"),
    ({"matchExpressions": [{"key": "b", "operator": "In"}]},
     ("matchExpressions", 0, "values"), "needs at least one value", "values: [a]"),
    ({"matchExpressions": [{"key": "b", "operator": "Exists", "values": ["x"]}]},
     ("matchExpressions", 0, "values"), "takes no values", "remove values"),
    ({"matchExpressions": [{"key": "-b", "operator": "Exists"}]},
     ("matchExpressions", 0, "key"), "matchExpressions key '-b'", "label key"),
    ({"matchExpressions": [{"operator": "Exists"}]},
     ("matchExpressions", 0, "key"), "has no key", "label key"),
    ({"matchExpressions": [{"key": "b", "operator": "In", "values": ["ok", "no way"]}]},
     ("matchExpressions", 0, "values", 1), "invalid label value 'no way'", "63 characters"),
    ({"matchExpressions": [{"key": "b", "operator": "In", "values": [1]}]},
     ("matchExpressions", 0, "values", 0), "must be a string", "quote"),
    ({"matchExpressions": "app=web"}, ("matchExpressions",), "must be a list", "key"),
    ({"matchLabels": {"app": "-web"}}, ("matchLabels", "app"), "invalid label value '-web'", "63 characters"),
    ({"matchLabels": ["app"]}, ("matchLabels",), "expected a map of labels", "key: value"),
])
def test_label_selector_errors_point_at_the_field(obj: dict, path: tuple, message: str, hint: str) -> None:
    origin, spans = _origin()
    target = Span("d.yaml", 20, 9, 20, 15)
    spans[origin.path + path] = target
    with pytest.raises(InputError) as info:
        selector_from_label_selector(obj, origin)
    (diag,) = info.value.diagnostics
    assert message in diag.message
    assert hint in diag.hint
    assert diag.span == target


def test_label_selector_unknown_field_is_an_error_at_the_key() -> None:
    origin, spans = _origin()
    spans[("spec", "selector", "matchLabel", "\x00key")] = Span("d.yaml", 4, 5, 4, 15)
    with pytest.raises(InputError) as info:
        selector_from_label_selector({"matchLabel": {"app": "web"}}, origin)
    (diag,) = info.value.diagnostics
    assert diag.span == Span("d.yaml", 4, 5, 4, 15)
    assert diag.hint == "did you mean 'matchLabels'?"


@pytest.mark.parametrize("obj", [None, "app=web", ["app"]])
def test_label_selector_must_be_a_mapping(obj: object) -> None:
    origin, _ = _origin()
    with pytest.raises(InputError):
        selector_from_label_selector(obj, origin)  # type: ignore[arg-type]


# --- properties ----------------------------------------------------------------

KEYS = st.sampled_from(["app", "tier", "in", "notin", "example.com/zone", "a.b_c-d", "K8s"])
VALUES = st.sampled_from(["", "web", "db", "in", "notin", "v1.2_3-x", "A"])
OPS = st.sampled_from(["=", "==", "!=", "in", "notin", "exists", "!"])


@st.composite
def requirement_specs(draw: st.DrawFn) -> tuple[str, str, list[str]]:
    """A requirement as plain data, independent of the code under test."""
    op = draw(OPS)
    if op in ("=", "==", "!="):
        values = [draw(VALUES)]
    elif op in ("in", "notin"):
        values = draw(st.lists(VALUES, min_size=1, max_size=4))
    else:
        values = []
    return draw(KEYS), op, values


BLANK = st.sampled_from(["", " ", "  ", "\t"])


@st.composite
def spelled(draw: st.DrawFn, specs: list[tuple[str, str, list[str]]]) -> str:
    """One of the many ways to write the specs in selector syntax."""
    parts = []
    for key, op, values in specs:
        b = lambda: draw(BLANK)  # noqa: E731
        if op == "exists":
            parts.append(key)
        elif op == "!":
            parts.append(f"!{b()}{key}")
        elif op in ("in", "notin"):
            parts.append(f"{key} {op}{b()}({','.join(b() + v + b() for v in values)})")
        else:
            parts.append(f"{key}{b()}{op}{b()}{values[0]}")
    return ",".join(draw(BLANK) + part + draw(BLANK) for part in parts)


def reference_match(specs: list[tuple[str, str, list[str]]], labels: dict[str, str]) -> bool:
    """apimachinery's rules restated from its documentation, one requirement at a time."""
    for key, op, values in specs:
        present = key in labels
        if op in ("=", "==", "in") and not (present and labels[key] in values):
            return False
        if op in ("!=", "notin") and present and labels[key] in values:
            return False
        if op == "exists" and not present:
            return False
        if op == "!" and present:
            return False
    return True


@settings(max_examples=200, deadline=None)
@given(st.data(), st.lists(requirement_specs(), max_size=5),
       st.dictionaries(KEYS, VALUES, max_size=5))
def test_matches_agrees_with_reference(data: st.DataObject, specs: list, labels: dict[str, str]) -> None:
    text = data.draw(spelled(specs))
    selector = parse_selector(text)
    assert selector.matches(labels) == reference_match(specs, labels)


@st.composite
def selectors(draw: st.DrawFn) -> Selector:
    built = []
    for key, op, values in draw(st.lists(requirement_specs(), max_size=5)):
        built.append(Requirement(key, op, tuple(values)))
    return Selector(tuple(built))


@settings(max_examples=200, deadline=None)
@given(selectors())
def test_str_round_trip(selector: Selector) -> None:
    text = str(selector)
    assert parse_selector(text) == selector
    assert str(parse_selector(text)) == text


SELECTOR_CHARS = st.sampled_from(list("ab=!(),<> \t\n_-./:") + ["in", "notin", "not", "x" * 64, "é", "\x00"])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=30), st.lists(SELECTOR_CHARS, max_size=20).map("".join)))
def test_random_text_raises_only_input_errors(text: str) -> None:
    try:
        selector = parse_selector(text, Span("f", 1, 10, 1, 10))
    except InputError as exc:
        assert exc.diagnostics
        for diag in exc.diagnostics:
            assert diag.span.file == "f" and diag.span.line == 1
            assert 10 <= diag.span.col <= 10 + len(text)
            assert diag.message and diag.hint
    else:
        assert parse_selector(str(selector)) == selector
