"""The ipvsadm-save parser: our ipvs.rules round-trip, lookups, restore commands, located errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ipset_save import EXAMPLES, ipvs_texts

from kspec.dataplane import ipvs_save as ipvs
from kspec.diagnostics import InputError

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = sorted((ROOT / "tests" / "golden" / "ipvs").glob("*/ipvs.rules"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.parent.name)
def test_round_trip_of_every_compiled_example(example):
    for path, text in ipvs_texts(example, "ipvs.rules").items():
        table = ipvs.parse(text, path)
        assert ipvs.render(table) == text
        lines = text.split("\n")
        for vs in table.services:  # every line number points at the line the object came from
            assert lines[vs.line - 1] == vs.text
            assert all(lines[rs.line - 1] == rs.text for rs in vs.real_servers)


@pytest.mark.parametrize("golden", GOLDEN, ids=lambda p: p.parent.name)
def test_round_trip_of_golden_files(golden):
    text = golden.read_text()
    assert ipvs.render(ipvs.parse(text, str(golden))) == text


def test_lookup_and_service_fields():
    table = ipvs.parse("""\
-A -t 10.96.0.10:53 -s rr
-a -t 10.96.0.10:53 -r 10.244.1.5:53 -m -w 1
-a -t 10.96.0.10:53 -r 10.244.2.5:53 -m -w 0
-A -u 10.96.0.10:53 -s sh -p 600
-a -u 10.96.0.10:53 -r 10.244.1.5:53 -m -w 1
-A --sctp-service 10.96.0.11:9 -s mh -b mh-port,mh-fallback
-A -t [fd00::10]:443 -s wrr -p
-a -t [fd00::10]:443 -r [fd00:10:244:1::5]:8443 -m -w 3
-A -f 100 -6 -s rr
-a -f 100 -6 -r [fd00::1]:80 -g -w 1
""", "ipvs.rules")
    tcp = table.lookup("tcp", "10.96.0.10", 53)
    assert tcp.scheduler == "rr" and [rs.address for rs in tcp.real_servers] == ["10.244.1.5:53", "10.244.2.5:53"]
    assert tcp.real_servers[1].weight == 0 and tcp.real_servers[0].method == "masq"
    udp = table.lookup("UDP", "10.96.0.10", 53)
    assert udp.persistence == 600 and udp.line == 4
    assert table.lookup("sctp", "10.96.0.11", 9).flags == ("mh-port", "mh-fallback")
    v6 = table.lookup("tcp", "fd00:0::10", 443)
    assert v6.persistence == ipvs.DEFAULT_PERSISTENCE and v6.real_servers[0].address == "[fd00:10:244:1::5]:8443"
    assert table.lookup("tcp", "10.96.0.10", 54) is None
    mark = table.services[-1]
    assert mark.fwmark == 100 and mark.family == 6 and mark.real_servers[0].method == "gate"
    assert table.addresses() == ("10.96.0.10", "10.96.0.11", "fd00::10")


def test_restore_commands_apply_in_order():
    table = ipvs.parse("""\
-A -t 10.96.0.10:80 -s rr
-a -t 10.96.0.10:80 -r 10.244.1.5:80 -m
-a -t 10.96.0.10:80 -r 10.244.1.6:80 -m -w 2
-e -t 10.96.0.10:80 -r 10.244.1.5:80 -m -w 5
-d -t 10.96.0.10:80 -r 10.244.1.6:80
-E -t 10.96.0.10:80 -s lc
-A -t 10.96.0.11:80 -s rr
-D -t 10.96.0.11:80
""", "restore")
    (vs,) = table.services
    assert vs.scheduler == "lc" and [(rs.address, rs.weight) for rs in vs.real_servers] == [("10.244.1.5:80", 5)]
    assert ipvs.parse("-A -t 10.96.0.10:80 -s rr\n-C\n", "x").services == ()


def test_real_server_without_port_takes_the_service_port():
    table = ipvs.parse("-A -t 10.96.0.10:80 -s rr\n-a -t 10.96.0.10:80 -r 10.244.1.5 -g\n", "x")
    assert table.services[0].real_servers[0].address == "10.244.1.5:80"


@pytest.mark.parametrize("text, line, col, words", [
    ("-X -t 10.0.0.1:80\n", 1, 1, "unknown ipvsadm command"),
    ("-A -t 10.0.0.1 -s rr\n", 1, 7, "has no port"),
    ("-A -t 10.0.0.1:80 -s fancy\n", 1, 22, "unknown IPVS scheduler"),
    ("-A -t fd00::1:80 -s rr\n", 1, 7, "without brackets"),
    ("-A -t 10.0.0.1:99999 -s rr\n", 1, 7, "not a number from 0 to 65535"),
    ("-A -t 10.0.0.1:80 -s rr\n-A -t 10.0.0.1:80 -s rr\n", 2, 4, "already exists"),
    ("-a -t 10.0.0.1:80 -r 10.244.0.1:80 -m\n", 1, 4, "not defined before"),
    ("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.244.0.1:80 -m -w heavy\n", 2, 42, "weight"),
    ("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -m -w 1\n", 2, 25, "missing the real server"),
    ("-A -t 10.0.0.1:80 -s rr --colour red\n", 1, 25, "unknown virtual service option"),
    ("-A -t 10.0.0.1:0 -s rr\n", 1, 4, "port 0"),
    ("-A -t myhost:80 -s rr\n", 1, 7, "not an IP address"),
    ("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.1.1.1:80 -m\n-a -t 10.0.0.1:80 -r 10.1.1.1:80 -m\n",
     3, 22, "already added"),
])
def test_malformed_lines_are_located(text, line, col, words):
    with pytest.raises(InputError) as info:
        ipvs.parse(text, "ipvs.rules")
    diag = info.value.diagnostics[0]
    assert (diag.span.file, diag.span.line, diag.span.col) == ("ipvs.rules", line, col), diag.message
    assert words in diag.message and diag.hint


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("-AatursmgwCpb 0123456789.:[]f\n")), max_size=80))
def test_any_text_parses_or_fails_with_a_located_error(text):
    try:
        ipvs.parse(text, "fuzz")
    except InputError as exc:
        span = exc.diagnostics[0].span
        assert span.file == "fuzz" and span.line >= 1 and span.col >= 1
