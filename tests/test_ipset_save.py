"""The ipset text parser: our ipset.rules round-trip, membership as the kernel answers it, real `ipset save`."""

from __future__ import annotations

import dataclasses
import subprocess
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kspec.compile import node_files
from kspec.dataplane import ipset_save as ips
from kspec.diagnostics import InputError
from kspec.frontend.assemble import Flags
from kspec.pipeline import load
from netns_support import netns_skip_reason

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*/cluster.kspec") if p.parent.name != "broken")
GOLDEN = sorted((ROOT / "tests" / "golden" / "ipvs").glob("*/ipset.rules"))


def ipvs_texts(path: Path, name: str) -> dict[str, str]:
    """Every node's compiled ``name`` for an example, compiled in IPVS mode whatever the example says."""
    cluster = load([str(path)], None, Flags()).cluster
    settings_ = cluster.settings
    cluster = dataclasses.replace(cluster, settings=dataclasses.replace(
        settings_, proxy=dataclasses.replace(settings_.proxy, mode="ipvs")))
    return {p: t for p, t in node_files(cluster, cluster.nodes) if p.endswith(name)}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.parent.name)
def test_round_trip_of_every_compiled_example(example):
    texts = ipvs_texts(example, "ipset.rules")
    assert texts
    for path, text in texts.items():
        sets = ips.parse(text, path)
        assert ips.render(sets) == text
        assert "KUBE-CLUSTER-IP" in sets.sets and sets.sets["KUBE-CLUSTER-IP"].family == 4


@pytest.mark.parametrize("golden", GOLDEN, ids=lambda p: p.parent.name)
def test_round_trip_of_golden_files(golden):
    text = golden.read_text()
    assert ips.render(ips.parse(text, str(golden))) == text


def test_membership_of_kube_proxy_set_types():
    sets = ips.parse("""\
create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536
add KUBE-CLUSTER-IP 10.96.0.10,udp:53
add KUBE-CLUSTER-IP 10.96.0.1,tcp:443
create KUBE-LOOP-BACK hash:ip,port,ip family inet hashsize 1024 maxelem 65536
add KUBE-LOOP-BACK 10.244.1.5,tcp:8080,10.244.1.5
create KUBE-LOAD-BALANCER-SOURCE-CIDR hash:ip,port,net family inet hashsize 1024 maxelem 65536
add KUBE-LOAD-BALANCER-SOURCE-CIDR 203.0.113.10,tcp:80,198.51.100.0/24
add KUBE-LOAD-BALANCER-SOURCE-CIDR 203.0.113.10,tcp:80,198.51.100.128/25 nomatch
create KUBE-NODE-PORT-TCP bitmap:port range 0-65535
add KUBE-NODE-PORT-TCP 30080
create BLOCKED hash:net family inet hashsize 1024 maxelem 65536
add BLOCKED 192.0.2.0/24
add BLOCKED 192.0.2.7
create KUBE-6-CLUSTER-IP hash:ip,port family inet6 hashsize 1024 maxelem 65536
add KUBE-6-CLUSTER-IP fd00::10,tcp:443
""", "ipset.rules")
    s = sets.sets
    assert ips.contains(s["KUBE-CLUSTER-IP"], "10.96.0.10,udp:53")
    assert not ips.contains(s["KUBE-CLUSTER-IP"], "10.96.0.10,tcp:53")
    assert ips.contains(s["KUBE-CLUSTER-IP"], "10.96.0.1,443")  # a bare port is TCP
    assert ips.contains(s["KUBE-LOOP-BACK"], "10.244.1.5,tcp:8080,10.244.1.5")
    assert not ips.contains(s["KUBE-LOOP-BACK"], "10.244.1.5,tcp:8080,10.244.1.6")
    cidr = s["KUBE-LOAD-BALANCER-SOURCE-CIDR"]
    assert ips.contains(cidr, "203.0.113.10,tcp:80,198.51.100.7")
    assert not ips.contains(cidr, "203.0.113.10,tcp:80,198.51.100.200")  # the more specific nomatch wins
    assert not ips.contains(cidr, "203.0.113.10,tcp:81,198.51.100.7")
    assert ips.contains(s["KUBE-NODE-PORT-TCP"], "30080") and not ips.contains(s["KUBE-NODE-PORT-TCP"], "30081")
    assert ips.contains(s["BLOCKED"], "192.0.2.200") and not ips.contains(s["BLOCKED"], "192.0.3.1")
    assert ips.contains(s["KUBE-6-CLUSTER-IP"], "fd00::10,tcp:443")


def test_packet_matches_follow_the_direction_flags():
    sets = ips.parse("create L hash:ip,port,ip family inet\nadd L 10.244.1.5,tcp:8080,10.244.1.5\n"
                     "create C hash:ip,port family inet\nadd C 10.96.0.1,tcp:443\n"
                     "create P bitmap:port range 0-65535\nadd P 30080\n", "x")
    loop, cip, ports = sets.sets["L"], sets.sets["C"], sets.sets["P"]
    # hairpin: the pod talks to itself through the service (dst ip, dst port, src ip)
    assert ips.match_packet(loop, ["dst", "dst", "src"], 6, "10.244.1.5", 40000, "10.244.1.5", 8080)
    assert not ips.match_packet(loop, ["dst", "dst", "src"], 6, "10.244.1.6", 40000, "10.244.1.5", 8080)
    assert ips.match_packet(cip, ["dst", "dst"], 6, "10.244.1.6", 40000, "10.96.0.1", 443)
    assert not ips.match_packet(cip, ["dst", "dst"], 17, "10.244.1.6", 40000, "10.96.0.1", 443)
    assert not ips.match_packet(cip, ["dst"], 6, "10.244.1.6", 40000, "10.96.0.1", 443)  # fewer flags than dims
    assert not ips.match_packet(cip, ["dst", "dst"], 6, "fd00::1", 40000, "fd00::2", 443)  # another family
    assert ips.match_packet(ports, ["dst"], 6, "203.0.113.7", 40000, "192.168.0.11", 30080)
    assert not ips.match_packet(ports, ["src"], 6, "203.0.113.7", 40000, "192.168.0.11", 30080)


def test_ranges_expand_as_ipset_stores_them():
    sets = ips.parse("create A hash:ip family inet\nadd A 10.9.9.0/30\ncreate B hash:ip,port family inet\n"
                     "add B 10.0.0.1,tcp:80-82\ncreate N hash:net family inet\nadd N 10.0.0.0-10.0.0.5\n"
                     "create M hash:ip family inet netmask 24\nadd M 10.1.2.3\n"
                     "create P bitmap:port range 1000-2000\nadd P 1500-1502\ndel P 1501\n", "x")
    assert ips.members(sets.sets["A"]) == {"10.9.9.0", "10.9.9.1", "10.9.9.2", "10.9.9.3"}
    assert ips.members(sets.sets["B"]) == {"10.0.0.1,tcp:80", "10.0.0.1,tcp:81", "10.0.0.1,tcp:82"}
    assert ips.members(sets.sets["N"]) == {"10.0.0.0/30", "10.0.0.4/31"}
    assert ips.contains(sets.sets["M"], "10.1.2.200")
    assert ips.members(sets.sets["P"]) == {"1500", "1502"}


def test_save_output_with_counters_comments_and_timeouts():
    text = ('create T hash:ip,port family inet hashsize 1024 maxelem 65536 timeout 100 counters comment '
            'bucketsize 12 initval 0x977c4e02\nadd T 1.2.3.4,tcp:5 timeout 49 packets 3 bytes 4 comment "hi there"\n')
    sets = ips.parse(text, "x")
    entry = sets.sets["T"].entries[0]
    assert entry.text == "1.2.3.4,tcp:5" and dict(entry.options)["comment"] == "hi there"
    assert ips.render(sets) == text


@pytest.mark.parametrize("text, line, col, words", [
    ("bogus KUBE-X\n", 1, 1, "unknown ipset command"),
    ("create X hash:foo\n", 1, 10, "unknown set type"),
    ("create X hash:ip family inet\nadd Y 10.0.0.1\n", 2, 5, "not created"),
    ("create X hash:ip family inet\nadd X 10.0.0.300\n", 2, 7, "not an address"),
    ("create X hash:ip,port family inet\nadd X 10.0.0.1\n", 2, 7, "part(s)"),
    ("create X hash:ip,port family inet\nadd X 10.0.0.1,tcp:70000\n", 2, 7, "out of 0-65535"),
    ("create X hash:ip family inet\nadd X fd00::1\n", 2, 7, "IPv6 address"),
    ("create X hash:ip family inet hashsize lots\n", 1, 39, "needs a number"),
    ("create X hash:ip family inet\ncreate X hash:ip family inet\n", 2, 8, "already created"),
    ("create X bitmap:port range 0-100\nadd X 200\n", 2, 7, "outside the set's range"),
    ("create X hash:ip family inet\nadd X 10.0.0.1 colour red\n", 2, 16, "unknown entry option"),
    ("create X hash:ip family inet\nadd X 10.0.0.0/8\n", 2, 7, "more than"),
    ("create X hash:ip family inet\ndel X 10.0.0.1\n", 2, 7, "is not in set"),
    ('create X hash:ip family inet comment\nadd X 10.0.0.1 comment "open\n', 2, 24, "double quote"),
])
def test_malformed_lines_are_located(text, line, col, words):
    with pytest.raises(InputError) as info:
        ips.parse(text, "ipset.rules")
    diag = info.value.diagnostics[0]
    assert (diag.span.file, diag.span.line, diag.span.col) == ("ipset.rules", line, col), diag.message
    assert words in diag.message and diag.hint


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("createadd KUBE-Xhash:ip,portfamilyinet6 0123456789./-\"\n")),
               max_size=120))
def test_any_text_parses_or_fails_with_a_located_error(text):
    try:
        ips.parse(text, "fuzz")
    except InputError as exc:
        span = exc.diagnostics[0].span
        assert span.file == "fuzz" and span.line >= 1 and span.col >= 1


def test_real_ipset_save_has_the_same_sets_and_members(tmp_path):
    reason = netns_skip_reason("ipset")
    if reason:
        pytest.skip(reason)
    text = ipvs_texts(ROOT / "examples" / "multi-namespace" / "cluster.kspec", "ipset.rules")[
        "nodes/worker-a/ipset.rules"]
    ns = f"ks-test-ipset-{uuid.uuid4().hex[:8]}"
    try:
        made = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True, check=False)
        if made.returncode != 0:
            pytest.skip(f"ip netns unavailable: {made.stderr.strip()}")
        loaded = subprocess.run(["ip", "netns", "exec", ns, "ipset", "restore"], input=text, check=False,
                                capture_output=True, text=True)
        if loaded.returncode != 0 and "Kernel error" in loaded.stderr:
            pytest.skip(f"the kernel has no ipset support here: {loaded.stderr.strip()}")
        assert loaded.returncode == 0, loaded.stderr
        saved = subprocess.run(["ip", "netns", "exec", ns, "ipset", "save"], capture_output=True, text=True,
                               check=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    ours, theirs = ips.parse(text, "ipset.rules"), ips.parse(saved, "ipset save")
    assert list(theirs.sets) == list(ours.sets)
    for name, mine in ours.sets.items():
        real = theirs.sets[name]
        assert (real.type, real.family, ips.members(real)) == (mine.type, mine.family, ips.members(mine)), name
        for entry in real.entries:
            assert ips.contains(mine, entry.text)
