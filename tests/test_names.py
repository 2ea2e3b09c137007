"""Kubernetes name checks against apimachinery's rules, restated here as regular expressions."""

from __future__ import annotations

import re
import string
from typing import Callable

import pytest
from hypothesis import given, settings, strategies as st

from kspec import names

LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
SUBDOMAIN = LABEL + r"(\." + LABEL + r")*"
QNAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"


def _re(pattern: str, max_len: int) -> Callable[[str], bool]:
    compiled = re.compile(pattern)
    return lambda s: len(s) <= max_len and compiled.fullmatch(s) is not None


def _qualified(s: str) -> bool:
    parts = s.split("/")
    if len(parts) > 2:
        return False
    if len(parts) == 2 and not _re(SUBDOMAIN, 253)(parts[0]):
        return False
    return _re(QNAME, 63)(parts[-1])


def _port_name(s: str) -> bool:
    return (len(s) <= 15 and re.fullmatch(r"[-a-z0-9]+", s) is not None and re.search("[a-z]", s) is not None
            and "--" not in s and not s.startswith("-") and not s.endswith("-"))


REFERENCE: dict[str, tuple[Callable[[str], str | None], Callable[[str], bool]]] = {
    "dns1123_label": (names.check_dns1123_label, _re(LABEL, 63)),
    "dns1035_label": (names.check_dns1035_label, _re(r"[a-z]([-a-z0-9]*[a-z0-9])?", 63)),
    "dns1123_subdomain": (names.check_dns1123_subdomain, _re(SUBDOMAIN, 253)),
    "label_key": (names.check_label_key, _qualified),
    "annotation_key": (names.check_annotation_key, lambda s: _qualified(s.translate(
        str.maketrans(string.ascii_uppercase, string.ascii_lowercase)))),
    "label_value": (names.check_label_value, lambda s: s == "" or _re(QNAME, 63)(s)),
    "port_name": (names.check_port_name, _port_name),
}

TABLE = [
    # check, value, valid?, word of the message
    ("dns1123_label", "default", True, ""),
    ("dns1123_label", "kube-system", True, ""),
    ("dns1123_label", "0abc9", True, ""),
    ("dns1123_label", "a" * 63, True, ""),
    ("dns1123_label", "a" * 64, False, "no more than 63"),
    ("dns1123_label", "", False, "empty"),
    ("dns1123_label", "Default", False, "lower case"),
    ("dns1123_label", "my_ns", False, "'_'"),
    ("dns1123_label", "a.b", False, "'.'"),
    ("dns1123_label", "-a", False, "start"),
    ("dns1123_label", "a-", False, "end"),
    ("dns1035_label", "web", True, ""),
    ("dns1035_label", "w3-b", True, ""),
    ("dns1035_label", "3web", False, "start with a lower case letter"),
    ("dns1035_label", "web-", False, "end"),
    ("dns1035_label", "a" * 64, False, "63"),
    ("dns1123_subdomain", "web-0.example", True, ""),
    ("dns1123_subdomain", "node-1", True, ""),
    ("dns1123_subdomain", ("a" * 70 + ".") * 3 + "b", True, ""),
    ("dns1123_subdomain", "a" * 254, False, "253"),
    ("dns1123_subdomain", "a..b", False, "'..'"),
    ("dns1123_subdomain", ".a", False, "'.'"),
    ("dns1123_subdomain", "a.", False, "'.'"),
    ("dns1123_subdomain", "a.-b", False, "part 2"),
    ("dns1123_subdomain", "Node1", False, "'N'"),
    ("dns1123_subdomain", "a b", False, "' '"),
    ("label_key", "app", True, ""),
    ("label_key", "App.Name_x-1", True, ""),
    ("label_key", "example.com/tier", True, ""),
    ("label_key", "kubernetes.io/metadata.name", True, ""),
    ("label_key", "k" * 63, True, ""),
    ("label_key", "k" * 64, False, "63"),
    ("label_key", "", False, "empty"),
    ("label_key", "/app", False, "prefix"),
    ("label_key", "example.com/", False, "name part must not be empty"),
    ("label_key", "a/b/c", False, "at most one '/'"),
    ("label_key", "Example.com/app", False, "prefix"),
    ("label_key", "_app", False, "start"),
    ("label_key", "app.", False, "end"),
    ("label_key", "app name", False, "' '"),
    ("label_key", "app\n", False, "'\\n'"),
    ("annotation_key", "Example.COM/Note", True, ""),
    ("annotation_key", "kspec.dev/ignore", True, ""),
    ("annotation_key", "a/b/c", False, "'/'"),
    ("annotation_key", "\u212a8s.io/x", False, "'\u212a'"),
    ("label_value", "", True, ""),
    ("label_value", "v1.2_3-X", True, ""),
    ("label_value", "x" * 63, True, ""),
    ("label_value", "x" * 64, False, "63"),
    ("label_value", "-v", False, "start"),
    ("label_value", "v.", False, "end"),
    ("label_value", "a/b", False, "'/'"),
    ("label_value", "it's", False, "\"'\""),
    ("port_name", "http", True, ""),
    ("port_name", "h2c-9", True, ""),
    ("port_name", "a" * 15, True, ""),
    ("port_name", "a" * 16, False, "15"),
    ("port_name", "", False, "empty"),
    ("port_name", "8080", False, "at least one letter"),
    ("port_name", "http--alt", False, "consecutive hyphens"),
    ("port_name", "-http", False, "begin or end with a hyphen"),
    ("port_name", "http-", False, "begin or end with a hyphen"),
    ("port_name", "HTTP", False, "lower case"),
    ("port_name", "http_alt", False, "'_'"),
]


@pytest.mark.parametrize("check,value,valid,word", TABLE)
def test_name_table(check: str, value: str, valid: bool, word: str) -> None:
    problem = REFERENCE[check][0](value)
    if valid:
        assert problem is None
    else:
        assert problem is not None and word in problem


@pytest.mark.parametrize("check", sorted(REFERENCE))
@pytest.mark.parametrize("value", [None, 12, b"app"])
def test_non_strings_are_refused(check: str, value: object) -> None:
    assert "must be a string" in REFERENCE[check][0](value)  # type: ignore[arg-type]


NAME_CHARS = st.sampled_from(list("abz09AZ-_./") + [" ", "\n", "'", '"', ";", "$", "é", "\u212a", "--", "a" * 60])
NAMES = st.one_of(st.lists(NAME_CHARS, max_size=12).map("".join), st.text(max_size=20))
SAFE = frozenset(string.ascii_letters + string.digits + "-_./")


@settings(max_examples=300, deadline=None)
@given(NAMES)
def test_checks_agree_with_apimachinery_rules(value: str) -> None:
    for name, (check, reference) in REFERENCE.items():
        assert (check(value) is None) == reference(value), name


@settings(max_examples=300, deadline=None)
@given(NAMES)
def test_accepted_names_contain_only_safe_characters(value: str) -> None:
    for name, (check, _) in REFERENCE.items():
        if check(value) is None:
            assert set(value) <= SAFE, name
            assert value.isascii() and value.isprintable()


@settings(max_examples=100, deadline=None)
@given(st.from_regex(re.compile(LABEL), fullmatch=True).filter(lambda s: len(s) <= 63))
def test_generated_dns_labels_are_accepted(value: str) -> None:
    assert names.check_dns1123_label(value) is None
    assert names.check_dns1123_subdomain(value) is None
    assert names.check_label_key(value) is None
    assert names.check_label_value(value) is None
