"""The manifest loaders: same data as the reference parsers, exact positions, safe on hostile input."""

from __future__ import annotations

import importlib.util
import io
import json
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kspec.diagnostics import InputError, Span
from kspec.frontend import inputs, yaml_load
from kspec.frontend.inputs import decode, parse, read_inputs, sniff, split_lists
from kspec.frontend.json_load import load_json
from kspec.frontend.yaml_load import load_yaml, resolve_plain

HAS_KSPEC = importlib.util.find_spec("kspec.frontend.kspec_lang") is not None
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class _Reference(yaml.SafeLoader):
    """PyYAML's SafeLoader, but timestamps stay strings (as ours do)."""


_Reference.add_constructor("tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node))


def reference(text: str) -> list:
    return [doc for doc in yaml.load_all(text, Loader=_Reference) if doc is not None]


def at(text: str, needle: str, nth: int = 0) -> tuple[int, int]:
    """1-based (line, col) of the nth occurrence of ``needle``."""
    offset = -1
    for _ in range(nth + 1):
        offset = text.index(needle, offset + 1)
    return text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset)


def start(span: Span) -> tuple[int, int]:
    return span.line, span.col


def errors_of(call, *args) -> list:
    with pytest.raises(InputError) as caught:
        call(*args)
    return caught.value.diagnostics


# --------------------------------------------------------------------------- YAML data

CORPUS = [
    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {app: web, tier: \"1\"}\n"
    "spec:\n  containers:\n  - name: c\n    ports:\n    - containerPort: 8080\n      protocol: TCP\n",
    "a: 1\nb: [1, 2, {c: d}]\n---\n- x\n- y: z\n---\n\n---\n# only a comment\n",
    "a: yes\nb: No\nc: on\nd: OFF\ne: ~\nf: null\ng:\ni: 0x1F\nj: 017\nk: 0b101\nl: 1_000\nm: 1:30\n"
    "n: -1:30\no: 1.5\np: .inf\nq: -.Inf\nr: 1:30.5\ns: 1e5\nt: 1.0e+5\nu: '123'\nv: \"yes\"\n"
    "w: 2024-01-01\nx: 2001-12-14t21:59:43.10-05:00\ny: 09\nz: +12\naa: -0\nab: 0.\nac: True\n",
    "base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  y: 3\ne: {<<: [*b, {z: 4}], x: 9}\nl: &l [1, 2]\nm: *l\nn: &s str\no: *s\n",
    "a: !!str 123\nb: !!int '42'\nc: !!float '1.5'\nd: !!bool 'yes'\ne: !!null ''\nf: ! 12\ng: ! '12'\n",
    "? a\n: 1\n'b': |\n  text\n  more\nc: >\n  folded\n  text\nd: \"esc\\u00e9\\n\"\n",
    "1: a\n2.5: b\nfalse: c\n~: d\n",
    "- - - 1\n  - 2\n- []\n- {}\n- ''\n- \"\"\n",
    "a: '<<'\n'<<': 1\n",
    "%YAML 1.1\n---\na: 1\n...\n---\nb: 2\n",
    "apiVersion: v1\nitems:\n- kind: Pod\n  metadata: {name: a}\nkind: List\n",
]


@pytest.mark.parametrize("text", CORPUS)
def test_yaml_data_equals_safe_load(text):
    assert [doc.data for doc in load_yaml(text, "c.yaml")] == reference(text)


@pytest.mark.parametrize("text", CORPUS)
def test_yaml_pure_python_events_give_the_same_data(text, monkeypatch):
    monkeypatch.setattr(yaml_load, "_Loader", yaml.SafeLoader)
    assert [doc.data for doc in load_yaml(text, "c.yaml")] == reference(text)


def test_yaml_aliases_share_the_built_object():
    doc = load_yaml("a: &x [1, 2]\nb: *x\n", "a.yaml")[0]
    assert doc.data["a"] is doc.data["b"]


def test_yaml_merge_keys_explicit_wins_then_first_listed():
    data = load_yaml("a: &a {x: 1, y: 1}\nb: &b {y: 2, z: 2}\nc: {<<: [*a, *b], x: 0}\n", "m.yaml")[0].data
    assert data["c"] == {"x": 0, "y": 1, "z": 2}


def test_yaml_unknown_tags_read_by_node_shape():
    data = load_yaml("a: !custom 12\nb: !thing {x: 1}\nc: !!binary aGk=\n", "t.yaml")[0].data
    assert data == {"a": "12", "b": {"x": 1}, "c": "aGk="}


def test_resolve_plain_first_character_dispatch():
    assert resolve_plain("0x1F") == 31 and resolve_plain("off") is False and resolve_plain("~") is None
    assert resolve_plain("10.244.0.1") == "10.244.0.1" and resolve_plain("1.25") == 1.25
    assert math.isnan(resolve_plain(".nan")) and resolve_plain("-.inf") == -math.inf
    assert resolve_plain("nginx") == "nginx" and resolve_plain("") is None


keys = st.text(max_size=8).filter(lambda key: key != "\x00key")  # the key-span sentinel itself
json_scalars = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
                | st.floats(allow_nan=False) | st.text(max_size=12))
yaml_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=25)


@FAST
@given(st.lists(yaml_values, min_size=1, max_size=3), st.booleans(), st.sampled_from([2, 4]))
def test_yaml_hypothesis_equals_safe_load(values, flow, indent):
    text = yaml.safe_dump_all(values, default_flow_style=flow, indent=indent, allow_unicode=True)
    assert [doc.data for doc in load_yaml(text, "h.yaml")] == reference(text)


# --------------------------------------------------------------------------- JSON data

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=25)


@FAST
@given(st.dictionaries(keys, json_values, max_size=5), st.sampled_from([None, 0, 2, 4]))
def test_json_object_equals_json_loads(value, indent):
    text = json.dumps(value, indent=indent)
    assert [doc.data for doc in load_json(text, "h.json")] == [json.loads(text)]


@FAST
@given(st.lists(json_values, max_size=5))
def test_json_top_level_array_is_one_document_per_element(values):
    text = json.dumps(values, indent=1)
    assert [doc.data for doc in load_json(text, "a.json")] == [v for v in json.loads(text) if v is not None]


def test_json_concatenated_objects():
    text = '{"kind": "Pod", "a": 1}\n{"kind": "Service", "b": [2]}\n'
    docs = load_json(text, "c.json")
    assert [d.data for d in docs] == [{"kind": "Pod", "a": 1}, {"kind": "Service", "b": [2]}]
    assert [start(d.span) for d in docs] == [(1, 1), (2, 1)] and [d.index for d in docs] == [0, 1]


# --------------------------------------------------------------------------- positions

SERVICE = """\
# a comment first
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 8080
---
apiVersion: v1
kind: Pod
metadata: {name: p, labels: {app: web, tier: "x"}}
spec:
  base: &b {nodeName: n1}
  more:
    <<: *b
    extra: 1
"""


def test_yaml_locate_deep_paths_keys_and_ancestors():
    service, pod = load_yaml(SERVICE, "s.yaml")
    assert start(service.span) == (2, 1) and start(pod.span) == (14, 1)
    assert start(service.locate(("spec", "ports", 0, "targetPort"))) == at(SERVICE, "8080")
    assert start(service.key_span(("spec", "ports", 0, "targetPort"))) == at(SERVICE, "targetPort")
    assert start(service.locate(("spec", "selector", "\x00key"))) == at(SERVICE, "selector")
    assert start(service.locate(("spec", "nope", "deeper"))) == at(SERVICE, "selector")  # the spec mapping
    assert start(service.locate(("spec", "ports", 7))) == at(SERVICE, "- name")
    assert start(pod.locate(("metadata", "labels", "tier"))) == at(SERVICE, '"x"')
    assert start(pod.key_span(("metadata", "labels", "app"))) == at(SERVICE, "app", 1)
    assert start(pod.locate(("spec", "more", "nodeName"))) == at(SERVICE, "*b")  # merged: the << value
    span = service.locate(("metadata", "name"))
    assert (span.line, span.col, span.end_line, span.end_col) == (5, 9, 5, 12)


def test_yaml_locate_after_directives_and_document_end():
    text = "%YAML 1.1\n---\na: {b: [1, 2]}\n...\n---\nc:\n  d: 3\n"
    first, second = load_yaml(text, "d.yaml")
    assert start(first.locate(("a", "b", 1))) == (3, 12)
    assert start(second.locate(("c", "d"))) == (7, 6)


def test_json_locate_deep_paths_and_keys():
    text = json.dumps({"kind": "Service", "spec": {"ports": [{"name": "a", "port": 1}, {"name": "b", "port": 2}]}},
                      indent=4)
    doc = load_json(text, "s.json")[0]
    assert start(doc.locate(("spec", "ports", 1, "port"))) == at(text, "2\n")
    assert start(doc.key_span(("spec", "ports", 1, "port"))) == at(text, '"port"', 1)
    assert start(doc.locate(("spec", "ports", 5))) == at(text, "[")
    assert start(doc.locate(("spec", "missing"))) == at(text, "{", 1)


LIST_YAML = """\
apiVersion: v1
items:
- apiVersion: v1
  kind: Pod
  metadata:
    name: a
- apiVersion: v1
  kind: Pod
  metadata:
    name: b
  spec:
    nodeName: n1
    containers:
    - ports: [{containerPort: 80}, {containerPort: 81}]
kind: List
metadata:
  resourceVersion: ""
"""


def test_yaml_kind_list_splits_with_item_spans_and_locators():
    docs = parse(LIST_YAML, "l.yaml", "yaml")
    assert [d.data["metadata"]["name"] for d in docs] == ["a", "b"]
    assert [start(d.span) for d in docs] == [(3, 3), (7, 3)]
    assert start(docs[1].locate(("spec", "nodeName"))) == (12, 15)
    assert start(docs[1].key_span(("spec", "nodeName"))) == (12, 5)
    assert start(docs[1].locate(("spec", "containers", 0, "ports", 1, "containerPort"))) == at(LIST_YAML, "81")
    assert start(docs[0].locate(("metadata", "name"))) == at(LIST_YAML, " a\n")[0:1] + (11,)


def test_yaml_flow_list_items_keep_their_columns():
    text = "kind: PodList\nitems: [{kind: Pod, metadata: {name: a}}, {kind: Pod,\n  metadata: {name: b}}]\n"
    docs = parse(text, "f.yaml", "yaml")
    assert [start(d.span) for d in docs] == [at(text, "{kind"), at(text, "{kind", 1)]
    assert start(docs[1].locate(("metadata", "name"))) == at(text, "b}")


def test_json_kind_list_splits_with_item_spans_and_locators():
    pods = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{i}"},
             "spec": {"containers": [{"ports": [{"containerPort": 8000 + i}]}]}} for i in range(3)]
    text = json.dumps({"apiVersion": "v1", "items": pods, "kind": "List", "metadata": {}}, indent=4)
    docs = parse(text, "l.json", "json")
    assert [d.data for d in docs] == pods
    assert [start(d.span) for d in docs] == [at(text, "{", 1 + 5 * i) for i in range(3)]
    assert start(docs[2].locate(("spec", "containers", 0, "ports", 0, "containerPort"))) == at(text, "8002")
    assert start(docs[2].key_span(("metadata", "name"))) == at(text, '"name"', 2)


def test_split_lists_without_loader_help_prefixes_paths():
    from kspec.frontend.document import Document

    calls = []

    def locator(path):
        calls.append(path)
        return Span("x", len(path), 1, len(path), 2)

    doc = Document({"kind": "ServiceList", "items": [{"a": 1}]}, Span("x", 1, 1), "manifest", locator)
    (item,) = split_lists([doc])
    assert item.data == {"a": 1} and start(item.locate(("a",))) == (3, 1) and calls[-1] == ("items", 0, "a")


# --------------------------------------------------------------------------- errors

def test_duplicate_keys_reported_at_the_second_key():
    (dup,) = errors_of(load_yaml, "a: 1\nb:\n  c: 1\n  c: 2\n", "d.yaml")
    assert start(dup.span) == (4, 3) and "duplicate key 'c'" in dup.message
    text = '{"a": {"b": 1,\n  "b": 2}, "a": 3}'
    first, second = errors_of(load_json, text, "d.json")
    assert start(first.span) == (2, 3) and start(second.span) == at(text, '"a"', 1)


def test_yaml_syntax_error_is_located_with_hint():
    (problem,) = errors_of(load_yaml, "a:\n  b: 1\n c: 2\n", "e.yaml")
    assert problem.span.file == "e.yaml" and problem.span.line == 3 and problem.hint


def test_json_syntax_error_is_located():
    (problem,) = errors_of(load_json, '{"a": 1,\n "b" 2}', "e.json")
    assert start(problem.span) == (2, 6) and problem.message.startswith("invalid JSON")


def test_yaml_standard_tag_misuse_and_bad_values():
    problems = errors_of(load_yaml, "a: !!int xyz\nb: !!str [1]\nc: !!bool maybe\nd: *nope\n", "t.yaml")
    assert [p.span.line for p in problems] == [1, 2, 3, 4]


def test_yaml_non_scalar_and_recursive_keys():
    assert start(errors_of(load_yaml, "{[a]: 1}", "k.yaml")[0].span) == (1, 2)
    assert "contains it" in errors_of(load_yaml, "a: &a [1, *a]\n", "r.yaml")[0].message


LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(c)}: &{chr(c)} [" + ", ".join([f"*{chr(c - 1)}"] * 9) + "]\n" for c in range(ord("b"), ord("k")))

HOSTILE_YAML = {
    "billion_laughs": (LAUGHS, "possible billion-laughs"),
    "deep_block": ("- " * 100_000 + "x\n", "nesting deeper than 256"),
    "deep_block_map": ("".join(" " * i + f"k{i}:\n" for i in range(400)), "nesting deeper than 256"),
    "deep_flow": ("[" * 100_000 + "]" * 100_000, "nesting deeper than 256"),
    "deep_flow_unclosed": ("{a: " * 100_000, "nesting deeper than 256"),
    "huge_int": ("a: " + "7" * 100_000 + "\n", "too long"),
    "control_char": ("a: 1\nb: x\x01y\n", "U+0001"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_YAML))
def test_hostile_yaml_ends_in_located_input_error(case):
    text, words = HOSTILE_YAML[case]
    problems = errors_of(load_yaml, text, "h.yaml")
    assert words in problems[0].message and problems[0].span.line >= 1 and problems[0].span.file == "h.yaml"


def test_hostile_yaml_with_pure_python_events(monkeypatch):
    monkeypatch.setattr(yaml_load, "_Loader", yaml.SafeLoader)
    assert "nesting" in errors_of(load_yaml, "[" * 100_000, "p.yaml")[0].message
    assert "billion" in errors_of(load_yaml, LAUGHS, "p.yaml")[0].message


def test_hostile_json_ends_in_located_input_error():
    (deep,) = errors_of(load_json, "[" * 100_000 + "]" * 100_000, "h.json")
    assert start(deep.span) == (1, 257) and "nesting" in deep.message
    (deep_obj,) = errors_of(load_json, '{"a": ' * 100_000 + "1" + "}" * 100_000, "h.json")
    assert "nesting" in deep_obj.message
    text = '{"kind": "Pod",\n "n": ' + "9" * 100_000 + "}"
    (huge,) = errors_of(load_json, text, "h.json")
    assert start(huge.span) == (2, 7) and "too long" in huge.message
    (nan,) = errors_of(load_json, '{"items": [1, NaN]}', "h.json")
    assert start(nan.span) == (1, 15)


def test_nul_and_invalid_utf8_are_located():
    (nul,) = errors_of(decode, b"a: 1\nb: x\x00\n", "n.yaml")
    assert start(nul.span) == (2, 5)
    (bad,) = errors_of(decode, "a: 1\nbé: \xff\n".encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff"),
                       "u.yaml")
    assert start(bad.span) == (2, 5) and "UTF-8" in bad.message
    assert "UTF-16" in errors_of(decode, "a: 1".encode("utf-16"), "w.yaml")[0].hint


def test_bom_is_dropped_and_long_single_line_loads():
    assert decode(b"\xef\xbb\xbfa: 1\n", "b.yaml") == "a: 1\n"
    line = '{"kind": "ConfigMap", "data": {"big": "' + "x" * 5_000_000 + '"}}'
    assert len(load_json(line, "big.json")[0].data["data"]["big"]) == 5_000_000
    assert len(load_yaml(line, "big.yaml")[0].data["data"]["big"]) == 5_000_000


VALID = SERVICE + "---\n" + LIST_YAML
STRUCTURAL = st.sampled_from(list("{}[]:,-&*!|>'\"\n #\t?%@`\\\x00\x85") + ["---", "...", "<<", "é", "\ud800"])


def _only_input_errors(text: str) -> None:
    for fmt in ("yaml", "json", sniff(text)):
        try:
            parse(text, "fuzz", fmt)
        except InputError as failure:
            assert failure.diagnostics and all(d.span.file == "fuzz" for d in failure.diagnostics)


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_input_error(data):
    try:
        text = decode(data, "fuzz")
    except InputError:
        return
    _only_input_errors(text)


@FAST
@given(st.lists(st.tuples(st.integers(0, len(VALID)), st.integers(0, 3), STRUCTURAL), min_size=1, max_size=6))
def test_mutated_manifests_only_raise_input_error(edits):
    text = VALID
    for position, deleted, inserted in edits:
        text = text[:position] + inserted + text[position + deleted:]
    _only_input_errors(text)
    _only_input_errors(json.dumps(load_yaml(VALID, "v")[0].data)[: edits[0][0] % 200] + edits[0][2])


# --------------------------------------------------------------------------- read_inputs

def test_read_inputs_walks_directories_sorted_and_collects_all_errors(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.yml").write_text("kind: Pod\nmetadata: {name: z}\n")
    (tmp_path / "a.yaml").write_text("kind: Pod\nmetadata: {name: a}\n---\nkind: Pod\nmetadata: {name: a2}\n")
    (tmp_path / "b-c.json").write_text('{"kind": "Pod", "metadata": {"name": "j"}}')
    (tmp_path / "broken.yaml").write_text("a: [1\n")
    (tmp_path / ".hidden.yaml").write_text("kind: Secret\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.yaml").write_text("kind: Secret\n")
    (tmp_path / "notes.txt").write_text("not read")
    docs, problems = read_inputs([str(tmp_path), str(tmp_path / "missing.yaml")], None)
    assert [d.data["metadata"]["name"] for d in docs] == ["a", "a2", "z", "j"]  # component-wise: b/ before b-c.json
    assert docs[2].span.file == str(tmp_path / "b" / "z.yml")
    assert [p.span.file for p in problems] == [str(tmp_path / "broken.yaml"), str(tmp_path / "missing.yaml")]


def test_read_inputs_empty_directory_and_missing_stdin(tmp_path):
    docs, problems = read_inputs([str(tmp_path), "-"], None)
    assert docs == [] and len(problems) == 2 and all(p.hint for p in problems)


def test_read_inputs_refuses_oversized_input(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_BYTES", 10)
    (tmp_path / "big.yaml").write_text("a: 123456789012\n")
    _, (problem,) = read_inputs([str(tmp_path / "big.yaml")], None)
    assert "larger than" in problem.message


def test_stdin_is_sniffed():
    docs, problems = read_inputs(["-"], io.StringIO('  {"kind": "List", "items": [{"kind": "Pod"}]}'))
    assert not problems and docs[0].data == {"kind": "Pod"} and docs[0].span == Span("<stdin>", 1, 30, 1, 45)
    docs, problems = read_inputs(["-"], io.TextIOWrapper(io.BytesIO(b"\xef\xbb\xbfkind: Pod\n")))
    assert not problems and docs[0].data == {"kind": "Pod"}
    assert sniff("# c\n---\ncluster:\n  name: x\n") == "kspec"
    assert sniff("pods:\n  a: {}\n---\nkind: Pod\n") == "yaml"
    assert sniff("\n\n[1]") == "json" and sniff("apiVersion: v1\n") == "yaml"


@pytest.mark.skipif(not HAS_KSPEC, reason="kspec.frontend.kspec_lang is not written yet")
def test_kspec_files_go_to_the_kspec_parser(tmp_path):
    (tmp_path / "c.kspec").write_text("cluster:\n  name: demo\n")
    docs, problems = read_inputs([str(tmp_path / "c.kspec")], None)
    assert not problems and docs[0].kind == "kspec" and docs[0].data["cluster"]["name"] == "demo"
    docs, problems = read_inputs(["-"], io.StringIO("cluster:\n  name: demo\n"))
    assert not problems and docs[0].kind == "kspec"


def _paths(value, path=()):
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, path + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, path + (index,))


def _composed_marks(node, path):
    """(value start, key start) of ``path`` in PyYAML's composed node tree (the reference)."""
    key_mark = None
    for step in path:
        if isinstance(node, yaml.MappingNode):
            key_node, node = next((k, v) for k, v in node.value if _Reference("").construct_object(k) == step)
            key_mark = key_node.start_mark
        else:
            node, key_mark = node.value[step], None
    return (node.start_mark.line + 1, node.start_mark.column + 1), key_mark


@FAST
@given(st.dictionaries(keys, yaml_values, min_size=1, max_size=4), st.booleans())
def test_yaml_locate_matches_composed_node_marks(value, flow):
    text = "# header\n---\n" + yaml.safe_dump(value, default_flow_style=flow)
    (doc,) = load_yaml(text, "p.yaml")
    (node,) = yaml.compose_all(text, Loader=yaml.SafeLoader)
    for path in list(_paths(doc.data))[:60]:
        expected, key_mark = _composed_marks(node, path)
        assert start(doc.locate(path)) == expected
        if key_mark is not None:
            assert start(doc.key_span(path)) == (key_mark.line + 1, key_mark.column + 1)


@FAST
@given(st.lists(st.dictionaries(keys, json_values, max_size=4), max_size=4), st.sampled_from([None, 2]))
def test_json_locate_points_at_the_value(items, indent):
    text = json.dumps({"kind": "List", "items": items}, indent=indent)
    lines = text.split("\n")
    docs = parse(text, "p.json", "json")
    for doc, item in zip(docs, items, strict=True):
        for path in list(_paths(item))[:60]:
            span = doc.locate(path)
            offset = sum(len(line) + 1 for line in lines[: span.line - 1]) + span.col - 1
            node = item
            for step in path:
                node = node[step]
            assert json.JSONDecoder().raw_decode(text, offset)[0] == node
