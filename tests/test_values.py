"""Typed scalar readers: strict, located, with hints."""

import ipaddress

import pytest

from kspec.diagnostics import DiagnosticSink, Span
from kspec.frontend import values
from kspec.frontend.fields import one_edit_apart

SPAN = Span("f.kspec", 3, 7, 3, 20)


def run(fn, *args):
    sink = DiagnosticSink()
    result = fn(*args, SPAN, sink) if fn is not values.read_ips else None
    return result, sink


@pytest.mark.parametrize("text,expected", [
    ("10.244.0.0/16", ipaddress.ip_network("10.244.0.0/16")),
    ("fd00:10:244::/56", ipaddress.ip_network("fd00:10:244::/56")),
])
def test_cidr_ok(text, expected):
    result, sink = run(values.read_cidr, text)
    assert result == expected and not sink.items


@pytest.mark.parametrize("text,hint", [
    ("10.244.1.1/16", "did you mean 10.244.0.0/16?"),
    ("10.244.0.0", "add the prefix length"),
    ("10.244.0.300/16", "write a network"),
    (16, "write a network"),
])
def test_cidr_errors_are_located_with_hints(text, hint):
    result, sink = run(values.read_cidr, text)
    assert result is None
    assert sink.items[0].span == SPAN
    assert hint in sink.items[0].hint


@pytest.mark.parametrize("raw,ok", [("10.0.0.1", True), ("fd00::1", True), ("fe80::1%eth0", False),
                                    ("10.0.0.1/32", False), ("999.1.1.1", False), (None, False), (True, False)])
def test_ip(raw, ok):
    result, sink = run(values.read_ip, raw)
    assert (result is not None) == ok
    assert bool(sink.items) != ok


@pytest.mark.parametrize("raw,expected", [(8080, (8080, "TCP")), ("8080/TCP", (8080, "TCP")),
                                          ("53/UDP", (53, "UDP")), ("9000/SCTP", (9000, "SCTP"))])
def test_port_spec_ok(raw, expected):
    result, sink = run(values.read_port_spec, raw)
    assert result == expected and not sink.items


@pytest.mark.parametrize("raw,hint", [("70000/TCP", "1 to 65535"), ("80/tcp", "upper case"), ("http", "PORT"),
                                      (0, "1 to 65535"), ("80/ICMP", "TCP, UDP or SCTP")])
def test_port_spec_errors(raw, hint):
    result, sink = run(values.read_port_spec, raw)
    assert result is None and hint in sink.items[0].hint


@pytest.mark.parametrize("raw,expected", [("30000-32767", (30000, 32767)), ("30080", (30080, 30080))])
def test_port_range_ok(raw, expected):
    result, sink = run(values.read_port_range, raw)
    assert result == expected and not sink.items


@pytest.mark.parametrize("raw", ["32767-30000", "1-70000", "a-b", True])
def test_port_range_errors(raw):
    result, sink = run(values.read_port_range, raw)
    assert result is None and sink.has_errors


def test_dual_stack_lists_need_two_families():
    sink = DiagnosticSink()
    got = values.read_ips(["10.0.0.1", "10.0.0.2"], lambda i: SPAN, sink, "ip")
    assert len(got) == 2 and "different IP families" in sink.items[0].message


def test_label_values_must_be_strings():
    sink = DiagnosticSink()
    got = values.read_string_map({"app": "web", "version": 2, "on": True}, lambda k: SPAN, sink, "labels")
    assert got == {"app": "web"}
    assert [d.hint for d in sink.items] == ['quote it: "2"', 'quote it: "true"']


@pytest.mark.parametrize("a,b,expected", [("selctor", "selector", True), ("targetPrt", "targetPort", True),
                                          ("selecotr", "selector", True), ("selector", "selector", False),
                                          ("podIPs", "podIP", True), ("ports", "port", True),
                                          ("spec", "status", False)])
def test_one_edit_apart(a, b, expected):
    assert one_edit_apart(a, b) is expected
