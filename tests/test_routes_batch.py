"""The ``ip -batch`` routes parser."""

from __future__ import annotations

import ipaddress

import pytest

from backend_factories import cluster, node
from kspec.backends import routes
from kspec.dataplane import routes_batch
from kspec.diagnostics import InputError


def test_compiled_routes_read_back():
    c = cluster([node("node-1", "192.168.0.11", pod_cidrs=["10.244.1.0/24", "fd00:1::/64"]),
                 node("node-2", "192.168.0.12", "fd00::12", pod_cidrs=["10.244.2.0/24", "fd00:2::/64"])])
    text = routes.generate(c, c.nodes[1])
    parsed = routes_batch.parse(text, "routes.batch")
    v4 = {str(r.prefix): r for r in parsed.family(4)}
    assert v4["10.244.2.0/24"].dev == "cbr0" and v4["10.244.2.0/24"].src == ipaddress.ip_address("10.244.2.1")
    assert v4["10.244.1.0/24"].via == ipaddress.ip_address("192.168.0.11")
    assert v4["10.244.1.0/24"].options == {"proto": "static"}
    v6 = {str(r.prefix): r for r in parsed.family(6)}
    assert v6["fd00:2::/64"].metric == 256 and "fd00:1::/64" not in v6  # node-1 has no IPv6 address
    assert [r.line for r in parsed.routes] == sorted(r.line for r in parsed.routes)


def test_commands_apply_in_order():
    text = """# comment
link add cbr0 type bridge
route add 10.0.0.0/24 via 192.168.0.1
route replace 10.0.0.0/24 via 192.168.0.2 proto static
route add 10.0.1.0/24 dev cbr0 metric 5
route add 10.0.1.0/24 dev eth0 metric 10
route del 10.0.1.0/24 dev cbr0 metric 5
route add blackhole 10.0.2.0/24
route add default via 192.168.0.254
route add 10.0.3.0/24 via 192.168.0.9 table 100
"""
    parsed = routes_batch.parse(text, "r")
    by_prefix = {(str(r.prefix), r.metric): r for r in parsed.effective}
    assert by_prefix[("10.0.0.0/24", None)].via == ipaddress.ip_address("192.168.0.2")
    assert by_prefix[("10.0.1.0/24", 10)].dev == "eth0" and ("10.0.1.0/24", 5) not in by_prefix
    assert by_prefix[("10.0.2.0/24", None)].type == "blackhole"
    assert by_prefix[("0.0.0.0/0", None)].via == ipaddress.ip_address("192.168.0.254")
    assert ("10.0.3.0/24", None) not in by_prefix  # another table: not the main lookup
    assert [c.text for c in parsed.other] == ["link add cbr0 type bridge"]


@pytest.mark.parametrize("text, col, words", [
    ("route add 10.0.0.1/24 via 1.2.3.4\n", 11, "host bits"),
    ("route add 10.0.0.0/24 via 1.2.3\n", 27, "not an address"),
    ("route add 10.0.0.0/24 via fd00::1\n", 27, "family"),
    ("route frob 10.0.0.0/24\n", 7, "unknown route verb"),
    ("route add 10.0.0.0/24 bogus 1\n", 23, "unknown route option"),
    ("route add 10.0.0.0/24 nexthop via 1.2.3.4\n", 23, "multipath"),
    ("route add 10.0.0.0/24 metric x\n", 30, "not a number"),
    ("route add 10.0.0.0/24 dev a\nroute add 10.0.0.0/24 dev b\n", 7, "already added"),
    ("route del 10.0.0.0/24\n", 7, "no such route"),
])
def test_errors_have_positions(text, col, words):
    with pytest.raises(InputError) as info:
        routes_batch.parse(text, "routes.batch")
    diag = info.value.diagnostics[0]
    assert diag.span.file == "routes.batch" and diag.span.col == col and words in diag.message and diag.hint
