"""The kspec syntax layer: the YAML-subset promise, spans, errors, robustness.

The central property is differential: whatever parse_kspec accepts, PyYAML
reads as the same value (pure-Python SafeLoader and, when built, libyaml).
"""

from __future__ import annotations

import ipaddress
import pathlib
import random
import re
import time
from importlib import resources

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kspec.diagnostics import InputError, Span
from kspec.frontend.document import Document
from kspec.frontend.kspec_lang import classify_string, parse_kspec, parse_kspec_typed

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = pathlib.Path(__file__).resolve().parent / "data" / "kspec_lang"
LOADERS = [yaml.SafeLoader] + ([yaml.CSafeLoader] if getattr(yaml, "__with_libyaml__", False) else [])
HYPO = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def yaml_values(text: str) -> list:
    return [yaml.load(text, Loader=loader) for loader in LOADERS]


def assert_same_as_yaml(text: str) -> object:
    data = parse_kspec(text, "t.kspec").data
    for expected in yaml_values(text):
        assert data == expected
        assert repr(data) == repr(expected)  # same types and key order, not just ==
    return data


# ---- 1a. hand-written documents ------------------------------------------------------

HAND_WRITTEN = [
    (DATA / "product_sketch.kspec").read_text(),
    "",
    "# only a comment\n\n",
    "---\n# leading marker\na: 1\n",
    "\ufeffa: 1\n",
    "a: 1\r\nb:\r\n  c: [x, z]\r\n",
    "no-newline-at-end: 5",
    "a: b\n\n\n   \n# trailing\n  # comment\n",
    # block mappings, nesting, empty values
    "a:\n  b:\n    c: 1\n  d: 2\ne: 3\nf:\ng: ~\nh: null\n",
    "a:   # comment after the colon\n  b: 1 # after a value\n# between\n  c: 2\n",
    # block sequences: compact mappings, nested, indentless, empty entries
    "- a\n- b: 1\n  c: 2\n- - x\n  - z\n-\n- \n-   wide: 1\n    more: 2\n",
    "list:\n- a\n- b: 1\n  c:\n  - deep\nnext: 1\n",
    "a:\n  - x\n  -\n    w: 1\n  - - 1\n    - 2\n",
    "- a:\n  - 1\n  b: 2\n",
    # flow collections, spanning lines, trailing commas, empty
    "a: {b: 1, c: [x, z], d: {}}\ne: []\n",
    "a: [1,\n   2, # two\n   3,\n  ]\nb: {x: 1,\n  w: [a,\n    b]}\n",
    "[1, [2, [3, {a: b}]]]\n",
    '{"a":1, \'b\': [c]}\n',
    "a: {x: , w: null}\n",
    "a: [-, -1, -x]\n",
    # scalars: typed, selectors, quoted, escapes
    "ip: 10.0.0.1\nv6: fd00::1\nlo: ::1\nnet6: 2001:db8::/64\nall: '::'\nmapped: ::ffff:10.0.0.1\n",
    "cidr: 10.96.0.0/12\nrange: 30000-32767\ntcp: 8080/TCP\nudp: 53/UDP\nsctp: 9000/SCTP\n",
    "flow6: [fd00::1, 2001:db8::/64, '::1', 'fe80::']\n",
    "sel: app = search, tier notin (canary)\nsel2: app in (a, b), !legacy\nk: a#b\nsp: a  b\n",
    "zero: 0\nm: -17\np: +5\nbig: 1234567890123456789\nyes-ish: true\nf: false\n",
    "sq: 'it''s: # not a comment'\ndq: \"tab\\there \\\"q\\\" \\\\ \\x41 \\u00e9 \\U0001F600 \\/ \\0\"\n",
    "quoted keys: 1\n'yes': 2\n\"3\": 4\n'a: b': 5\n",
    "label: app.kubernetes.io/name\nurl: http://x:80/y\nv: v1.2.3\nq: what?\nz: a:b\n",
    "\u00e9t\u00e9: caf\u00e9 \u65e5\u672c\n",
    "a: [b]   \nc: d   \n",
    "[a, b]",
    "just a scalar",
]


@pytest.mark.parametrize("text", HAND_WRITTEN)
def test_hand_written_documents_read_like_yaml(text: str) -> None:
    assert_same_as_yaml(text)


def test_product_sketch_values_and_types() -> None:
    parsed = parse_kspec_typed((DATA / "product_sketch.kspec").read_text(), "sketch.kspec")
    data = parsed.document.data
    assert data["cluster"]["nodePortRange"] == "30000-32767"
    assert data["services"]["search"]["selector"] == "app = search, tier notin (canary)"
    assert data["services"]["search"]["ports"][0]["nodePort"] == 30080
    types = parsed.scalar_types
    assert types[("cluster", "podCIDR")] == "cidr4"
    assert types[("cluster", "nodePortRange")] == "portrange"
    assert types[("nodes", "node-1", "ip")] == "ipv4"
    assert types[("workloads", "search", "ports", "http")] == "portspec"
    assert types[("workloads", "search", "replicas")] == "int"
    assert types[("services", "search", "selector")] == "str"
    assert parsed.document.kind == "kspec"


def test_scalar_types_of_every_kind() -> None:
    text = ("a: 10.0.0.1\nb: fd00::1\nc: 10.0.0.0/8\nd: fd00::/64\ne: 1-2\nf: 53/UDP\ng: 7\nh: true\n"
            "i:\nj: hello\nk: '10.0.0.1'\nl: '7'\nm: \"1:2:3:4:5:6:7:8\"\no: [1, x]\n")
    types = parse_kspec_typed(text, "t.kspec").scalar_types
    assert types == {
        ("a",): "ipv4", ("b",): "ipv6", ("c",): "cidr4", ("d",): "cidr6", ("e",): "portrange",
        ("f",): "portspec", ("g",): "int", ("h",): "bool", ("i",): "null", ("j",): "str",
        ("k",): "ipv4", ("l",): "str", ("m",): "ipv6", ("o", 0): "int", ("o", 1): "str",
    }


# ---- 1b. the examples ------------------------------------------------------------------

EXAMPLES = sorted((ROOT / "examples").rglob("*.kspec"))


@pytest.mark.parametrize("path", EXAMPLES or [None], ids=lambda p: str(p.relative_to(ROOT)) if p else "none")
def test_examples_read_like_yaml(path: pathlib.Path | None) -> None:
    if path is None:
        pytest.skip("no examples/**/*.kspec yet")
    assert_same_as_yaml(path.read_text())


# ---- 1c. generated documents -----------------------------------------------------------

BOOLISH = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}
YAML12_NUMBER = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+|0o[0-7]+")


def yaml_reads(text: str, value: object) -> bool:
    try:
        return all(repr(v) == repr(value) for v in yaml_values(text))
    except yaml.YAMLError:
        return False


def plain_ok(s: str, flow: bool, key: bool) -> bool:
    """May ``s`` be written unquoted?  Judged by YAML itself plus kspec's extra refusals."""
    if not s or s != s.strip(" ") or s.lower() in BOOLISH | {"=", "<<"} or YAML12_NUMBER.fullmatch(s):
        return False
    if any(c in s for c in "\t\r\n\"'") or not s.isprintable() or s.endswith(":"):
        return False
    if flow:
        return yaml_reads("{" + s + ": 1}", {s: 1}) if key else yaml_reads("[" + s + "]", [s])
    return yaml_reads(s + ": 1", {s: 1}) if key else yaml_reads("k: " + s, {"k": s})


def double_quoted(s: str, rnd: random.Random) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append(rnd.choice(["\\t", "\t"]))
        elif not ch.isprintable() or ord(ch) in (0x85, 0x2028, 0x2029, 0xFEFF):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}" if ord(ch) < 0x10000
                       else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


class Writer:
    """Serialises a value tree as kspec text in randomly chosen YAML styles."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd

    def scalar(self, value: object, flow: bool, key: bool = False) -> str:
        rnd = self.rnd
        if value is None:
            return rnd.choice(["null", "~"])
        if value is True or value is False:
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        assert isinstance(value, str)
        if plain_ok(value, flow, key) and rnd.random() < 0.8:
            return value
        if "\n" not in value and value.isprintable() and rnd.random() < 0.5:
            return "'" + value.replace("'", "''") + "'"
        return double_quoted(value, rnd)

    def flow(self, value: object, indent: int) -> str:
        rnd = self.rnd
        if isinstance(value, dict):
            items = []
            for k, v in value.items():
                if v is None and rnd.random() < 0.3:
                    items.append(f"{self.scalar(k, True, True)}: ")
                else:
                    items.append(f"{self.scalar(k, True, True)}: {self.flow(v, indent)}")
            return "{" + self.join(items, indent) + "}"
        if isinstance(value, list):
            return "[" + self.join([self.flow(v, indent) for v in value], indent) + "]"
        return self.scalar(value, True)

    def join(self, items: list[str], indent: int) -> str:
        rnd = self.rnd
        if not items:
            return ""
        pieces = [items[0]]
        for item in items[1:]:
            sep = ", "
            if rnd.random() < 0.2:
                comment = " # c" if rnd.random() < 0.5 else ""
                sep = "," + comment + "\n" + " " * (indent + 1 + rnd.randrange(3))
            pieces.append(sep + item)
        tail = "," if rnd.random() < 0.1 else ""
        return "".join(pieces) + tail

    def comment(self) -> str:
        return "  # note: [x]" if self.rnd.random() < 0.15 else ""

    def block(self, value: object, indent: int) -> list[str]:
        rnd = self.rnd
        pad = " " * indent
        if isinstance(value, dict) and value:
            lines = []
            for k, v in value.items():
                key = self.scalar(k, False, True)
                if isinstance(v, (dict, list)) and v and rnd.random() < 0.7:
                    lines.append(f"{pad}{key}:{self.comment()}")
                    if isinstance(v, list) and rnd.random() < 0.4:
                        lines.extend(self.block(v, indent))  # a sequence at its key's indentation
                    else:
                        lines.extend(self.block(v, indent + rnd.choice([1, 2, 4])))
                elif v is None and rnd.random() < 0.5:
                    lines.append(f"{pad}{key}:{self.comment()}")
                else:
                    lines.append(f"{pad}{key}: {self.flow(v, indent)}{self.comment()}")
                if rnd.random() < 0.1:
                    lines.append(rnd.choice(["", " " * rnd.randrange(6) + "# between"]))
            return lines
        if isinstance(value, list) and value:
            lines = []
            for v in value:
                if isinstance(v, (dict, list)) and v and rnd.random() < 0.7:
                    width = rnd.choice([2, 3, 4])
                    inner = self.block(v, indent + width)
                    if rnd.random() < 0.7:  # compact: the first line shares the '- '
                        lines.append(pad + "-" + " " * (width - 1) + inner[0][indent + width:])
                        lines.extend(inner[1:])
                    else:
                        lines.append(f"{pad}-{self.comment()}")
                        lines.extend(inner)
                elif v is None and rnd.random() < 0.5:
                    lines.append(f"{pad}-")
                else:
                    lines.append(f"{pad}- {self.flow(v, indent)}{self.comment()}")
            return lines
        return [pad + self.flow(value, indent - 1)]

    def document(self, value: object) -> str:
        rnd = self.rnd
        head = rnd.choice(["", "---\n", "# header\n", "\n"])
        body = "\n".join(self.block(value, 0)) if rnd.random() < 0.9 else self.flow(value, -1)
        return head + body + rnd.choice(["", "\n", "\n\n# end\n"])


def ip_text(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, exploded: bool) -> str:
    return addr.exploded if exploded else str(addr)


words = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True).filter(lambda w: w not in BOOLISH)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**15), 10**15),
    words,
    st.builds(ip_text, st.ip_addresses(), st.booleans()),
    st.builds(lambda a, p: str(ipaddress.ip_network(f"{a}/{p}", strict=False)),
              st.ip_addresses(v=4), st.integers(0, 32)),
    st.builds(lambda a, p: str(ipaddress.ip_network(f"{a}/{p}", strict=False)),
              st.ip_addresses(v=6), st.integers(0, 128)),
    st.builds(lambda p, q: f"{p}/{q}", st.integers(1, 65535), st.sampled_from(["TCP", "UDP", "SCTP"])),
    st.builds(lambda a, b: f"{a}-{b}", st.integers(1, 65535), st.integers(1, 65535)),
    st.sampled_from(["app = search, tier notin (canary)", "app in (a, b)", "!legacy", "a#b", "x: y", "a - b",
                     "it's", "-x", "?q", ":z", "1.5", "0x1F", "010", "1:30", "2001-12-14", "yes", "Off", "<<",
                     "=", "~", "", " lead", "trail ", "1e5", "#hash", "a,b", "[x]", "{y}", "*s", "&a", "!t"]),
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=12),
)
keys = st.one_of(words, st.from_regex(r"[a-z][a-zA-Z0-9_./-]{0,12}", fullmatch=True),
                 st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=8))
trees = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=25,
)


@settings(HYPO, max_examples=100)
@given(value=st.dictionaries(keys, trees, max_size=5) | trees, rnd=st.randoms(use_true_random=False))
def test_generated_documents_round_trip(value: object, rnd: random.Random) -> None:
    text = Writer(rnd).document(value)
    assert yaml_reads(text, value), text  # the writer itself is right
    data = parse_kspec(text, "gen.kspec").data
    assert data == value, text


@HYPO
@given(addr=st.ip_addresses(v=6), exploded=st.booleans(), prefix=st.integers(0, 128) | st.none())
def test_ipv6_texts_are_typed_or_rejected_like_yaml(addr: ipaddress.IPv6Address, exploded: bool,
                                                    prefix: int | None) -> None:
    text = ip_text(addr, exploded) + ("" if prefix is None else f"/{prefix}")
    try:
        parsed = parse_kspec_typed(f"a: {text}\n", "t.kspec")
    except InputError as exc:
        # Only the forms YAML itself would not read as this string, or that end in ':'.
        assert not yaml_reads(f"a: {text}\n", {"a": text}) or text.endswith(":"), exc
        return
    assert parsed.document.data == {"a": text} == yaml.safe_load(f"a: {text}\n")
    assert parsed.scalar_types[("a",)] == ("ipv6" if prefix is None else "cidr6")


def test_ipv6_forms_yaml_reads_as_numbers_are_rejected() -> None:
    assert yaml.safe_load("a: 1:2:3:4:5:6:7:8") == {"a": 2895057742028}
    with pytest.raises(InputError) as info:
        parse_kspec("a: 1:2:3:4:5:6:7:8\n", "t.kspec")
    assert "1:2:3:4:5:6:7:8" in info.value.diagnostics[0].hint
    assert parse_kspec("a: '1:2:3:4:5:6:7:8'\n", "t.kspec").data == {"a": "1:2:3:4:5:6:7:8"}


@pytest.mark.parametrize("text,kind", [
    ("10.0.0.1", "ipv4"), ("255.255.255.255", "ipv4"), ("256.0.0.1", "str"), ("01.2.3.4", "str"),
    ("10.0.0.0/8", "cidr4"), ("10.0.0.0/33", "str"), ("::", "ipv6"), ("::ffff:1.2.3.4", "ipv6"),
    ("1:2:3:4:5:6:7:8:9", "str"), ("fd00::/129", "str"), ("fd00::/0", "cidr6"), ("80-90", "portrange"),
    ("80/TCP", "portspec"), ("80/tcp", "str"), ("app=x", "str"),
])
def test_classify_string(text: str, kind: str) -> None:
    assert classify_string(text) == kind


@given(st.text(alphabet="0123456789abcdef:./", max_size=45))
@settings(max_examples=300, deadline=None)
def test_ip_classification_agrees_with_ipaddress(text: str) -> None:
    kind = classify_string(text)
    try:
        addr = ipaddress.ip_address(text)
        expected = "ipv4" if addr.version == 4 else "ipv6"
    except ValueError:
        expected = None
    if expected is not None:
        assert kind == expected
    else:
        assert kind not in ("ipv4", "ipv6")


# ---- 2. spans ------------------------------------------------------------------------------

SPAN_DOC = """\
cluster:
  name: demo
  proxy: {mode: iptables, extra: [a, {b: 1}]}
list:
- first
- key: v
  other: [1,
    2]
-
  nested: x
empty:
"""


def test_spans_of_keys_and_values() -> None:
    doc = parse_kspec(SPAN_DOC, "s.kspec")

    def at(path: tuple) -> tuple[int, int, int, int]:
        span = doc.locate(path)
        assert span.file == "s.kspec"
        return (span.line, span.col, span.end_line, span.end_col)

    def key(path: tuple) -> tuple[int, int, int, int]:
        span = doc.key_span(path)
        return (span.line, span.col, span.end_line, span.end_col)

    assert doc.span.line == 1 and doc.span.col == 1
    assert key(("cluster",)) == (1, 1, 1, 8)
    assert at(("cluster",)) == (2, 3, 3, 46)
    assert key(("cluster", "name")) == (2, 3, 2, 7)
    assert at(("cluster", "name")) == (2, 9, 2, 13)
    assert at(("cluster", "proxy")) == (3, 10, 3, 46)
    assert key(("cluster", "proxy", "mode")) == (3, 11, 3, 15)
    assert at(("cluster", "proxy", "mode")) == (3, 17, 3, 25)
    assert at(("cluster", "proxy", "extra")) == (3, 34, 3, 45)
    assert at(("cluster", "proxy", "extra", 0)) == (3, 35, 3, 36)
    assert key(("cluster", "proxy", "extra", 1, "b")) == (3, 39, 3, 40)
    assert at(("cluster", "proxy", "extra", 1, "b")) == (3, 42, 3, 43)
    assert at(("list",)) == (5, 1, 10, 12)
    assert at(("list", 0)) == (5, 3, 5, 8)
    assert at(("list", 1)) == (6, 3, 8, 7)
    assert key(("list", 1, "other")) == (7, 3, 7, 8)
    assert at(("list", 1, "other")) == (7, 10, 8, 7)
    assert at(("list", 1, "other", 1)) == (8, 5, 8, 6)
    assert at(("list", 2, "nested")) == (10, 11, 10, 12)
    assert at(("empty",)) == (11, 7, 11, 7)
    # Every node is located eagerly, not by falling back to an ancestor.
    assert set(doc.key_spans) >= {("list", 2), ("list", 2, "nested", "\x00key"), ("empty", "\x00key")}


def test_spans_after_bom_and_crlf() -> None:
    doc = parse_kspec("\ufeffa:\r\n  b: 1\r\n", "c.kspec")
    assert doc.key_span(("a", "b")) == Span("c.kspec", 2, 3, 2, 4)
    assert doc.locate(("a", "b")) == Span("c.kspec", 2, 6, 2, 7)


# ---- 3. errors -------------------------------------------------------------------------------

REJECTED = [
    # (text, line, col, a word the message must contain)
    ("a:\n\tb: 1\n", 2, 1, "tab"),
    ("a: x\tb\n", 1, 5, "tab"),
    ("a: &x 1\n", 1, 4, "anchor"),
    ("a: *x\n", 1, 4, "alias"),
    ("a: !!str 1\n", 1, 4, "tag"),
    ("a: !local 1\n", 1, 4, "tag"),
    ("a: |\n  text\n", 1, 4, "block scalar"),
    ("a: >-\n  text\n", 1, 4, "block scalar"),
    ("a: 1\n---\nb: 2\n", 2, 1, "documents"),
    ("a: 1\n...\n", 2, 1, "end marker"),
    ("%YAML 1.1\n---\na: 1\n", 1, 1, "directive"),
    ("? a\n: b\n", 1, 1, "key"),
    ("[a]: 1\n", 1, 4, "key"),
    ("a:\n  {b: 1}: 2\n", 2, 9, "key"),
    ("a:\n    b: 1\n  c: 2\n", 3, 3, "indentation"),
    ("  a: 1\nb: 2\n", 2, 1, "indentation"),
    ("a: b\n  c\n", 2, 3, "indent"),
    ("a: [1,\n2]\n", 2, 1, "indented"),
    ("a: 'abc\nb: 1\n", 1, 4, "unterminated"),
    ('a: "abc\n', 1, 4, "unterminated"),
    ("a: [1, 2\nb: 3\n", 2, 1, "indented"),
    ("a: [1, 2\n  b: 3\n", 2, 3, "','"),
    ("a: [1, 2", 1, 4, "never closed"),
    ("a: {b: 1", 1, 4, "never closed"),
    ("a: 1\nfoo\n", 2, 1, "':'"),
    ("a:value\nb: 1\n", 1, 1, "key: value"),
    ("k: {a:1}\n", 1, 5, "':'"),
    ("a: b: c\n", 1, 5, "':'"),
    ("a: fe80::\n", 1, 9, "quoted"),
    ("k: [::1]\n", 1, 5, "':'"),
    ("a: - b\n", 1, 4, "'- '"),
    ("- a\nb: 1\n", 2, 1, "'- '"),
    ("a: 1\n- b\n", 2, 1, "'- '"),
    ("a: [b: 1]\n", 1, 6, "[ ]"),
    ("a: {b:, c: 1}\n", 1, 6, "space"),
    (": a\n", 1, 1, "missing mapping key"),
    ("- : a\n", 1, 3, "missing mapping key"),
    ("a: {b: 1]\n", 1, 9, "'}'"),
    ("a: [1, 2]]\n", 1, 10, "']'"),
    ("a:\n  -1\n  - 2\n", 3, 3, "'- '"),
    ("x" * 1100 + ": 1\n", 1, 1, "longer than"),
    ("a: {b\n  : 1}\n", 2, 3, "same line"),
    ("a: [1] x\n", 1, 8, "'x'"),
    ('a: "x"#c\n', 1, 7, "comment"),
    ("a: ]\n", 1, 4, "']'"),
    ('a: "\\q"\n', 1, 5, "escape"),
    ('a: "\\ud800"\n', 1, 5, "Unicode"),
    ('a: "\\x4"\n', 1, 5, "escape"),
    ("a: @x\n", 1, 4, "'@'"),
    ("a: 1\r2\n", 1, 5, "carriage return"),
    ("a: \u2028\n", 1, 4, "line separator"),
    ("a: x\x07\n", 1, 5, "control character"),
    # YAML 1.1 (and 1.2) traps
    ("a: yes\n", 1, 4, "boolean"),
    ("a: Off\n", 1, 4, "boolean"),
    ("a: y\n", 1, 4, "boolean"),
    ("a: N\n", 1, 4, "boolean"),
    ("a: True\n", 1, 4, "boolean"),
    ("a: NULL\n", 1, 4, "null"),
    ("a: 1:30\n", 1, 4, "base-60"),
    ("a: 1:2:3:4:5:6:7:8\n", 1, 4, "base-60"),
    ("a: 010\n", 1, 4, "octal"),
    ("a: 0o17\n", 1, 4, "number"),
    ("a: 0x1F\n", 1, 4, "hexadecimal"),
    ("a: 0b101\n", 1, 4, "binary"),
    ("a: 1_000\n", 1, 4, "'_'"),
    ("a: 1.5\n", 1, 4, "floating"),
    ("a: 1e5\n", 1, 4, "number"),
    ("a: 1.0e+5\n", 1, 4, "floating"),
    ("a: .inf\n", 1, 4, "floating"),
    ("a: -.Inf\n", 1, 4, "floating"),
    ("a: .NaN\n", 1, 4, "floating"),
    ("a: 2001-12-14\n", 1, 4, "date"),
    ("a: 2001-12-14t21:59:43.10-05:00\n", 1, 4, "date"),
    ("<<: {a: 1}\n", 1, 1, "merge"),
    ("a: =\n", 1, 4, "="),
    ("a: 12345678901234567890\n", 1, 4, "digits"),
    ("1: a\n", 1, 1, "key"),
    ("true: a\n", 1, 1, "key"),
    ("~: a\n", 1, 1, "key"),
    ("{on: 1}\n", 1, 2, "boolean"),
]


@pytest.mark.parametrize("text,line,col,word", REJECTED)
def test_rejected_constructs(text: str, line: int, col: int, word: str) -> None:
    with pytest.raises(InputError) as info:
        parse_kspec(text, "bad.kspec")
    first = info.value.diagnostics[0]
    assert (first.span.file, first.span.line, first.span.col) == ("bad.kspec", line, col), first
    assert word.lower() in first.message.lower()
    assert first.hint.strip()
    assert first.is_error


def test_every_duplicate_key_is_reported_at_its_second_occurrence() -> None:
    text = "a: 1\nb:\n  x: 1\n  x: 2\na: 3\nc: {k: 1, 'k': 2}\n"
    with pytest.raises(InputError) as info:
        parse_kspec(text, "dup.kspec")
    found = [(d.span.line, d.span.col, d.related[0][1].line, d.related[0][1].col) for d in info.value.diagnostics]
    assert found == [(4, 3, 3, 3), (5, 1, 1, 1), (6, 11, 6, 5)]
    assert all(d.hint for d in info.value.diagnostics)


def test_several_scalar_errors_are_reported_together() -> None:
    with pytest.raises(InputError) as info:
        parse_kspec("a: yes\nb: [010, 0x1]\nc: \"\\q\"\n", "m.kspec")
    assert [(d.span.line, d.span.col) for d in info.value.diagnostics] == [(1, 4), (2, 5), (2, 10), (3, 5)]


def test_grammar_ships_inside_the_package() -> None:
    grammar = resources.files("kspec").joinpath("grammar", "kspec.lark")
    assert grammar.is_file() and "typed_scalar" in grammar.read_text()


def test_source_is_registered_for_rendering() -> None:
    from kspec.diagnostics import SOURCES, render

    with pytest.raises(InputError) as info:
        parse_kspec("a: &x 1\n", "reg.kspec")
    assert SOURCES["reg.kspec"].line_text(1) == "a: &x 1"
    assert "a: &x 1" in render(info.value.diagnostics[0])


# ---- 4. robustness -------------------------------------------------------------------------

NOISE = st.sampled_from(list("\t\0'\"[]{}:,-#&*!|>?%@` \n\r~.=/\\") + ["- ", ": ", "  ", "\n  ", "---", "\ufeff"])


def parse_or_input_error(text: str) -> Document | None:
    try:
        doc = parse_kspec(text, "fuzz.kspec")
    except InputError as exc:
        assert exc.diagnostics and all(d.hint and d.span.line >= 1 and d.span.col >= 1 for d in exc.diagnostics)
        return None
    assert isinstance(doc, Document)
    return doc


@HYPO
@given(st.lists(NOISE | st.text(max_size=3), max_size=40).map("".join))
def test_random_text_parses_or_fails_cleanly(text: str) -> None:
    doc = parse_or_input_error(text)
    if doc is not None:
        for expected in yaml_values(text):
            assert doc.data == expected


@HYPO
@given(base=st.sampled_from(HAND_WRITTEN), edits=st.lists(
    st.tuples(st.sampled_from(["insert", "delete", "replace"]), st.floats(0, 1), NOISE), min_size=1, max_size=4))
def test_mutated_documents_parse_the_same_as_yaml_or_fail_cleanly(base: str, edits: list) -> None:
    text = base
    for op, where, piece in edits:
        i = int(where * len(text))
        if op == "insert":
            text = text[:i] + piece + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + 1:]
        else:
            text = text[:i] + piece + text[i + 1:]
    doc = parse_or_input_error(text)
    if doc is not None:  # accepted: then YAML must read exactly the same value
        for expected in yaml_values(text):
            assert repr(doc.data) == repr(expected), text


def fails_fast(text: str, limit: float = 1.0) -> InputError:
    start = time.perf_counter()
    with pytest.raises(InputError) as info:
        parse_kspec(text, "big.kspec")
    assert time.perf_counter() - start < limit
    return info.value


def test_deep_flow_nesting_is_an_error_not_a_crash() -> None:
    err = fails_fast("[" * 100_000)  # one line over the length limit
    assert err.diagnostics[0].span.line == 1
    err = fails_fast("a: " + "[" * 45_000 + "]" * 45_000 + "\n")
    assert "deep" in err.diagnostics[0].message
    err = fails_fast("\n".join("[" * 1000 for _ in range(100)))
    assert "deep" in err.diagnostics[0].message


def test_deep_block_nesting_is_an_error_not_a_crash() -> None:
    text = "".join(" " * i + f"k{i}:\n" for i in range(200))
    err = fails_fast(text)
    assert "deep" in err.diagnostics[0].message


def test_huge_line_is_rejected_quickly() -> None:
    err = fails_fast("a: " + "x" * 5_000_000 + "\n")
    assert "longer than" in err.diagnostics[0].message
    err = fails_fast("a: [" + "1, " * 2_000_000 + "]\n")
    assert err.diagnostics[0].span.line == 1


def test_nul_bytes_are_rejected_quickly() -> None:
    err = fails_fast("a: 1\n" + "\0" * 1_000_000)
    assert err.diagnostics[0].span.line == 2 and err.diagnostics[0].span.col == 1
    assert "NUL" in err.diagnostics[0].message


def test_long_lines_under_the_limit_are_fine() -> None:
    text = "a: [" + ", ".join(str(i) for i in range(15_000)) + "]\n"
    assert parse_kspec(text, "wide.kspec").data == {"a": list(range(15_000))}


def test_two_thousand_lines_parse_quickly() -> None:
    lines = ["nodes:"]
    for i in range(1000):
        lines.append(f"  node-{i}: {{ip: 192.168.{i // 256}.{i % 256}, podCIDR: 10.{i // 256}.{i % 256}.0/24}}")
    lines.append("services:")
    for i in range(200):
        lines += [f"  svc-{i}:", "    selector: app = x, tier notin (canary)",
                  f"    ports: [{{name: http, port: 80, targetPort: 8080/TCP, nodePort: {30000 + i}}}]",
                  "    labels:", "      - a", "      - b: 2"]
    text = "\n".join(lines) + "\n"
    assert text.count("\n") > 2000
    parse_kspec(text, "warm.kspec")
    start = time.perf_counter()
    doc = parse_kspec(text, "big.kspec")
    elapsed = time.perf_counter() - start
    assert len(doc.data["nodes"]) == 1000
    assert elapsed < 1.0, elapsed
