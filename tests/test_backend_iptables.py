"""The kube-proxy iptables backend against kube-proxy's own tests and real iptables.

Reference: kubernetes/kubernetes at 531be81208e2274ef42e72525a26610a9622bcdf,
``pkg/proxy/iptables/proxier_test.go``.  Each case folder under
``tests/golden/iptables/`` holds

* ``input.json``: the Services and EndpointSlices of one kube-proxy test
  (``source`` names it), its fake node and settings (NewFakeProxier: pod CIDR
  10.0.0.0/8, node test-node 192.168.0.2, nfacct counters present, no
  ``--random-fully``), and where the test has them its packet-flow
  expectations (``flows``) and per-chain expectations (``chain_checks``);
* ``kube-proxy.rules`` (when the kube-proxy test spells out the whole
  ruleset): the expected text copied from that test, compared the way its
  ``assertIPTablesRulesEqual`` compares (parse, sort chains and the
  KUBE-SERVICES/KUBE-NODEPORTS rules by service, print);
* ``expected.rules``: kspec's own byte-exact output (a regression golden;
  ``KSPEC_UPDATE_GOLDENS=1`` rewrites it, a mismatch writes ``.actual``).

Where kspec deliberately differs from the kube-proxy test harness this file
accounts for it explicitly: kspec adds the built-in chains and the jumps into
KUBE-* (stripped before comparing) and prints the masquerade mark as
NewProxier does (``%#08x`` = 0x00004000) where NewFakeProxier hard-codes
``0x4000``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kspec.backends import iptables, kube_chains
from kspec.diagnostics import InputError
from kspec.model import (
    Backend,
    ClusterSettings,
    Node,
    PortEndpoints,
    ProxySettings,
    ResolvedCluster,
    Service,
    ServiceEndpoints,
    ServicePort,
)
from netns_support import netns_skip_reason

GOLDEN = Path(__file__).parent / "golden" / "iptables"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "input.json").exists())
KUBE_PROXY_CASES = [c for c in CASES if (GOLDEN / c / "kube-proxy.rules").exists()]
FAKE_MARK = "0x4000"  # NewFakeProxier's masqueradeMark


# --- case loading ------------------------------------------------------------------


def _ips(values):
    return tuple(ipaddress.ip_address(v) for v in values)


def _nets(values):
    return tuple(ipaddress.ip_network(v) for v in values)


def load_case(name: str):
    spec = json.loads((GOLDEN / name / "input.json").read_text())
    raw_proxy = dict(spec["settings"].get("proxy", {}))
    if "nodeport_addresses" in raw_proxy:
        raw_proxy["nodeport_addresses"] = _nets(raw_proxy["nodeport_addresses"])
    settings = ClusterSettings(pod_cidrs=_nets(spec["settings"]["pod_cidrs"]), proxy=ProxySettings(**raw_proxy))
    node = Node(name=spec["node"]["name"], ips=_ips(spec["node"]["ips"]))
    services = []
    for s in spec["services"]:
        ports = tuple(
            ServicePort(
                port=p["port"],
                protocol=p["protocol"],
                name=p["name"],
                target_port=p.get("target_port"),
                node_port=p.get("node_port"),
            )
            for p in s["ports"]
        )
        services.append(
            Service(
                namespace=s["namespace"],
                name=s["name"],
                type=s["type"],
                ports=ports,
                cluster_ips=_ips(s["cluster_ips"]),
                external_ips=_ips(s.get("external_ips", ())),
                load_balancer_ips=_ips(s.get("load_balancer_ips", ())),
                load_balancer_source_ranges=_nets(s.get("load_balancer_source_ranges", ())),
                external_traffic_policy=s.get("external_traffic_policy", "Cluster"),
                internal_traffic_policy=s.get("internal_traffic_policy", "Cluster"),
                session_affinity=s.get("session_affinity", "None"),
                affinity_timeout=s.get("affinity_timeout", 10800),
                health_check_node_port=s.get("health_check_node_port"),
            )
        )
    endpoints = {}
    for sl in spec["endpoint_slices"]:
        key = tuple(sl["service"].split("/"))
        svc = next(s for s in services if s.key == key)
        per_port = []
        for sp in svc.ports:
            slice_port = next((p for p in sl["ports"] if (p["name"], p["protocol"]) == (sp.name, sp.protocol)), None)
            if slice_port is None:
                continue
            backends = tuple(
                Backend(
                    ip=ipaddress.ip_address(e["ip"]),
                    port=slice_port["port"],
                    protocol=sp.protocol,
                    ready=e.get("ready", True),
                    serving=e.get("serving", True),
                    terminating=e.get("terminating", False),
                    node=e.get("node"),
                    pod=None,
                )
                for e in sl["endpoints"]
            )
            per_port.append(PortEndpoints(sp, backends))
        endpoints[key] = ServiceEndpoints(key, tuple(per_port), "manual")
    cluster = ResolvedCluster(settings, (node,), (), tuple(services), endpoints)
    return cluster, node, spec["family"], spec


def generate_case(name: str) -> str:
    cluster, node, family, _ = load_case(name)
    return iptables.generate(cluster, node, family)


# --- pkg/util/iptables/testing/parse.go, in Python -----------------------------------

_DECLARE = re.compile(r"^:(\S+) (\S+) \[(\d+):(\d+)\]$")
_WORD = re.compile(r'(?:^|\s)("[^"]*"|[^"]\S*)')
_VALUE_PARAMS = {
    "-A", "--comment", "-p", "-s", "--src-type", "--sport", "-d", "--dst-type", "--dport", "--match-set",
    "-j", "--probability", "--to-destination", "--mark", "--ctstate", "--name", "--seconds", "--mode",
}  # fmt: skip
_BOOL_PARAMS = {"--random-fully", "--rcheck", "--set", "--reap"}


@dataclass
class Rule:
    raw: str
    params: dict[str, tuple[bool, str | bool]]  # param -> (negated, value)

    def get(self, param: str):
        return self.params.get(param)


@dataclass
class Chain:
    name: str
    rules: list[Rule] = field(default_factory=list)
    deleted: bool = False


@dataclass
class Table:
    name: str
    chains: list[Chain] = field(default_factory=list)

    def chain(self, name: str) -> Chain | None:
        return next((c for c in self.chains if c.name == name), None)


def parse_rule(raw: str) -> Rule:
    words = [w.strip('"') for w in _WORD.findall(raw)]
    params: dict = {}
    negated = False
    i = 0
    while i < len(words):
        w = words[i]
        if w == "-m" and i < len(words) - 1:
            i += 2
            continue
        if w == "!":
            negated, i = True, i + 1
            continue
        if w in _BOOL_PARAMS:
            params[w] = (negated, not negated)
            i += 1
        elif w in _VALUE_PARAMS:
            assert i + 1 < len(words), f"{w} needs an argument in {raw!r}"
            params[w] = (negated, words[i + 1])
            i += 2
        else:
            i += 1
        negated = False
    return Rule(raw, params)


def parse_dump(text: str) -> list[Table]:
    tables: list[Table] = []
    table = None
    for line in text.strip("\n").split("\n"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if table is None:
            assert line.startswith("*"), line
            table = Table(line[1:])
            tables.append(table)
        elif m := _DECLARE.match(line):
            assert not any(c.rules for c in table.chains), f"declaration after rules: {line}"
            table.chains.append(Chain(m.group(1)))
        elif line.startswith("-A "):
            rule = parse_rule(line)
            chain = table.chain(rule.get("-A")[1])
            assert chain is not None and not chain.deleted, f"rule in undeclared chain: {line}"
            chain.rules.append(rule)
        elif line.startswith("-X "):
            table.chain(line[3:]).deleted = True
        elif line == "COMMIT":
            table = None
        else:
            raise AssertionError(f"cannot parse {line!r}")
    assert table is None, "no COMMIT"
    return tables


def dump_string(tables: list[Table]) -> str:
    out = []
    for t in tables:
        out.append(f"*{t.name}")
        out += [f":{c.name} - [0:0]" for c in t.chains]
        out += [r.raw for c in t.chains for r in c.rules]
        out += [f"-X {c.name}" for c in t.chains if c.deleted]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def _service_comment(rule: Rule) -> str:
    comment = rule.get("--comment")
    assert comment is not None, f"rule without comment where kube-proxy sorts by comment: {rule.raw}"
    return comment[1]


def _service_of(rule: Rule) -> str:
    """orderByCommentServiceName: the comment up to the first space or colon."""
    return re.split(r"[ :]", _service_comment(rule), maxsplit=1)[0]


def sort_dump(tables: list[Table]) -> None:
    """sortIPTablesRules: tables by name, chains KUBE-NODEPORTS, KUBE-SERVICES, KUBE-*, rest."""
    tables.sort(key=lambda t: t.name)
    for t in tables:
        t.chains.sort(
            key=lambda c: (0, "")
            if c.name == kube_chains.KUBE_NODEPORTS
            else (1, "")
            if c.name == kube_chains.KUBE_SERVICES
            else (2 if c.name.startswith("KUBE-") else 3, c.name)
        )
        for c in t.chains:
            if c.name == kube_chains.KUBE_NODEPORTS or (c.name == kube_chains.KUBE_SERVICES and t.name == "filter"):
                c.rules.sort(key=_service_of)
            elif c.name == kube_chains.KUBE_SERVICES:
                c.rules.sort(key=lambda r: ("must be the last rule" in _service_comment(r), _service_of(r)))


def kube_proxy_view(text: str) -> list[Table]:
    """Our output as the kube-proxy test harness would hold it: no built-ins, fake mark."""
    tables = parse_dump(text.replace(kube_chains.masquerade_mark(14), FAKE_MARK))
    for t in tables:
        t.chains = [c for c in t.chains if c.name not in iptables.BUILTIN_CHAINS[t.name]]
    return tables


def check_rule_jumps(tables: list[Table]) -> None:
    """checkIPTablesRuleJumps: every jump goes to a declared, non-empty chain; no unused chains."""
    targets = {"ACCEPT", "REJECT", "DROP", "MARK", "RETURN", "DNAT", "SNAT", "MASQUERADE"}
    top = {
        kube_chains.KUBE_SERVICES, kube_chains.KUBE_EXTERNAL_SERVICES, kube_chains.KUBE_NODEPORTS,
        kube_chains.KUBE_POSTROUTING, kube_chains.KUBE_FORWARD, kube_chains.KUBE_MARK_MASQ,
        kube_chains.KUBE_PROXY_FIREWALL, kube_chains.KUBE_FIREWALL,
    }  # fmt: skip
    for t in tables:
        created = {c.name for c in t.chains if not c.deleted}
        filled = {c.name for c in t.chains if c.rules}
        jumped = {r.get("-j")[1] for c in t.chains for r in c.rules if r.get("-j")} - targets
        assert not (jumped | filled) - created, f"{t.name}: used but not created {(jumped | filled) - created}"
        assert not jumped - filled - {kube_chains.KUBE_NODEPORTS}, f"{t.name}: empty jump targets {jumped - filled}"
        assert not created - jumped - top, f"{t.name}: created but unused {created - jumped - top}"


# --- kube-proxy's packet tracer (tracePacket), in Python ------------------------------

TEST_NODE_IPS = ("192.168.0.2", "192.168.1.2", "192.168.99.11", "2001:db8::1", "2001:db8:1::2")


def _address_matches(value: tuple[bool, str], ip: str) -> bool:
    negated, text = value
    addr = ipaddress.ip_address(ip)
    if "/" in text:
        hit = addr in ipaddress.ip_network(text, strict=False)
    else:
        hit = addr == ipaddress.ip_address(text)
    return hit != negated


class Tracer:
    def __init__(self, tables: list[Table], local_ips):
        self.tables = {t.name: t for t in tables}
        self.local = {"127.0.0.1", "::1", *local_ips}
        self.matches: list[str] = []
        self.outputs: list[str] = []
        self.masq = False

    def _type_matches(self, value, ip: str) -> bool:
        kind = "LOCAL" if ip in self.local else "not-matched"
        return (value[1] == kind) != value[0]

    def _rule_matches(self, r: Rule, src: str, proto: str, dst: str, dport: str) -> bool:
        checks = (
            ("-s", lambda v: _address_matches(v, src)),
            ("--src-type", lambda v: self._type_matches(v, src)),
            ("-p", lambda v: (v[1] == proto) != v[0]),
            ("-d", lambda v: _address_matches(v, dst)),
            ("--dst-type", lambda v: self._type_matches(v, dst)),
            ("--dport", lambda v: (v[1] == dport) != v[0]),
        )
        if any(r.get(p) is not None and not check(r.get(p)) for p, check in checks):
            return False
        # rules about past state (affinity, marks, conntrack) never match a fresh packet
        return all(r.get(p) is None for p in ("--rcheck", "--mark", "--ctstate"))

    def run(self, table: str, chain: str, src: str, proto: str, dst: str, dport: str) -> bool:
        c = self.tables[table].chain(chain)
        if c is None:
            return False
        for r in c.rules:
            jump = r.get("-j")
            if jump is None or not self._rule_matches(r, src, proto, dst, dport):
                continue
            self.matches.append(r.raw)
            target = jump[1]
            if target == "KUBE-MARK-MASQ":
                self.masq = True
            elif target in ("ACCEPT", "REJECT", "DROP"):
                self.outputs.append(target)
                return True
            elif target == "DNAT":
                self.outputs.append(r.get("--to-destination")[1])
                return True
            elif self.run(table, target, src, proto, dst, dport) and r.get("--probability") is None:
                return True
        return False


def trace_packet(tables, src: str, proto: str, dst: str, dport: int):
    tracer = Tracer(tables, TEST_NODE_IPS)
    port = str(dport)
    tracer.run("nat", "PREROUTING", src, proto, dst, port)
    if tracer.outputs:
        dst = tracer.outputs[0].rsplit(":", 1)[0].strip("[]")
    for chain in (
        kube_chains.KUBE_SERVICES,
        kube_chains.KUBE_EXTERNAL_SERVICES,
        kube_chains.KUBE_NODEPORTS,
        kube_chains.KUBE_PROXY_FIREWALL,
    ):
        tracer.run("filter", chain, src, proto, dst, port)
    return tracer.matches, ", ".join(tracer.outputs), tracer.masq


# --- comparisons with kube-proxy's expectations ------------------------------------


@pytest.mark.parametrize("case", KUBE_PROXY_CASES)
def test_matches_kube_proxy_expected_rules(case):
    """Our rules, minus what kspec adds, equal the ruleset kube-proxy's test expects."""
    expected = (GOLDEN / case / "kube-proxy.rules").read_text().lstrip(" \t\n")
    ours = kube_proxy_view(generate_case(case))
    check_rule_jumps(ours)
    sort_dump(ours)
    assert dump_string(ours) == expected
    check_rule_jumps(parse_dump(expected))


def _cases_with(key: str) -> list[str]:
    return [c for c in CASES if key in json.loads((GOLDEN / c / "input.json").read_text())]


@pytest.mark.parametrize("case", _cases_with("flows"))
def test_packet_flows_as_kube_proxy_tests_expect(case):
    """Trace each packet of the kube-proxy test through our rules, as its tracePacket does."""
    _, _, _, spec = load_case(case)
    tables = parse_dump(generate_case(case))
    failures = []
    for flow in spec["flows"]:
        matched, output, masq = trace_packet(tables, flow["source"], flow["protocol"], flow["dest"], flow["port"])
        if (output, masq) != (flow["output"], flow["masq"]):
            failures.append(f"{flow['name']}: got {output!r} masq={masq}, want {flow['output']!r} "
                            f"masq={flow['masq']}\n  " + "\n  ".join(matched))  # fmt: skip
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("case", _cases_with("chain_checks"))
def test_chain_contents_as_kube_proxy_tests_expect(case):
    """assertIPTablesChainEqual: a chain's rules, in order."""
    _, _, _, spec = load_case(case)
    tables = {t.name: t for t in parse_dump(generate_case(case))}
    for check in spec["chain_checks"]:
        chain = tables[check["table"]].chain(check["chain"])
        got = "".join(r.raw + "\n" for r in chain.rules) if chain else ""
        assert got == check["rules"], check


@pytest.mark.parametrize("case", CASES)
def test_every_case_is_consistent(case):
    check_rule_jumps(kube_proxy_view(generate_case(case)))


@pytest.mark.parametrize("case", CASES)
def test_golden_output(case):
    """kspec's exact text, byte for byte (regression golden)."""
    path = GOLDEN / case / "expected.rules"
    ours = generate_case(case)
    if os.environ.get("KSPEC_UPDATE_GOLDENS") == "1":
        path.write_text(ours)
    assert path.exists(), f"{path} missing: run with KSPEC_UPDATE_GOLDENS=1"
    expected = path.read_text()
    if ours != expected:
        path.with_suffix(".actual").write_text(ours)
    assert ours == expected


def _fake_cluster(proxy: ProxySettings, services=(), endpoints=None) -> tuple[ResolvedCluster, Node]:
    node = Node(name="test-node", ips=_ips(TEST_NODE_IPS))
    settings = ClusterSettings(pod_cidrs=_nets(["10.0.0.0/8"]), proxy=proxy)
    return ResolvedCluster(settings, (node,), (), tuple(services), endpoints or {}), node


def _chain_rules(text: str, table: str, chain: str) -> str:
    t = next(t for t in parse_dump(text) if t.name == table)
    c = t.chain(chain)
    return "".join(r.raw + "\n" for r in c.rules) if c else ""


@pytest.mark.parametrize(
    "liberal,nfacct,drop_rule",
    [
        (False, False, "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n"),
        (False, True, "-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name "
                      "ct_state_invalid_dropped_pkts -j DROP\n"),
        (True, False, ""),
    ],
)  # fmt: skip
def test_drop_invalid_rule(liberal, nfacct, drop_rule):
    """TestDropInvalidRule."""
    cluster, node = _fake_cluster(ProxySettings(conntrack_tcp_be_liberal=liberal, nfacct=nfacct))
    text = iptables.generate(cluster, node).replace(kube_chains.masquerade_mark(14), FAKE_MARK)
    expected = drop_rule + (
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT\n'
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
    )
    assert _chain_rules(text, "filter", "KUBE-FORWARD") == expected


@pytest.mark.parametrize("random_fully", [False, True])
def test_masquerade_rule(random_fully):
    """TestMasqueradeRule."""
    cluster, node = _fake_cluster(ProxySettings(random_fully=random_fully))
    text = iptables.generate(cluster, node).replace(kube_chains.masquerade_mark(14), FAKE_MARK)
    assert _chain_rules(text, "nat", "KUBE-POSTROUTING") == (
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n"
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n"
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
        + (" --random-fully\n" if random_fully else "\n")
    )


def _clusterip(ns, name, ip, port_name, port, n_endpoints, first_ip):
    svc = Service(ns, name, ports=(ServicePort(port, "TCP", port_name),), cluster_ips=_ips([ip]))
    base = int(ipaddress.ip_address(first_ip))
    backends = tuple(
        Backend(ipaddress.ip_address(base + i), port, "TCP", True, True, False, None, None) for i in range(n_endpoints)
    )
    return svc, ServiceEndpoints(svc.key, (PortEndpoints(svc.ports[0], backends),), "manual")


def test_large_cluster_mode_drops_endpoint_comments():
    """TestSyncProxyRulesLargeClusterMode: comments go once endpoints exceed 1000."""
    proxy = ProxySettings(masquerade_all=True, nfacct=True, random_fully=False)
    s1, e1 = _clusterip("ns1", "svc1", "172.30.0.41", "p80", 80, 499, "10.0.0.0")
    s2, e2 = _clusterip("ns2", "svc2", "172.30.0.42", "p8080", 8080, 499, "10.1.0.0")
    cluster, node = _fake_cluster(proxy, (s1, s2), {s1.key: e1, s2.key: e2})
    text = iptables.generate(cluster, node)
    dnat = [line for line in text.splitlines() if line.startswith("-A KUBE-SEP-") and "-j DNAT" in line]
    assert len(dnat) == 998 and all("--comment" in line for line in dnat)
    first = "-A KUBE-SEP-DKGQUZGBKLTPAR56 -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT"
    assert f"{first} --to-destination 10.0.0.0:80" in dnat

    s3 = Service("ns3", "svc3", ports=(ServicePort(8081, "TCP", "p8081"),), cluster_ips=_ips(["172.30.0.43"]))
    b3 = tuple(
        Backend(ipaddress.ip_address(f"203.0.113.{i}"), 8081, "TCP", True, True, False, None, None) for i in (4, 8, 12)
    )
    e3 = ServiceEndpoints(s3.key, (PortEndpoints(s3.ports[0], b3),), "manual")
    cluster, node = _fake_cluster(proxy, (s1, s2, s3), {s1.key: e1, s2.key: e2, s3.key: e3})
    text = iptables.generate(cluster, node)
    dnat = [line for line in text.splitlines() if line.startswith("-A KUBE-SEP-") and "-j DNAT" in line]
    assert len(dnat) == 1001 and not any("--comment" in line for line in dnat)
    assert "-A KUBE-SEP-DKGQUZGBKLTPAR56 -m tcp -p tcp -j DNAT --to-destination 10.0.0.0:80" in dnat
    assert "-A KUBE-SEP-RUVVH7YV3PHQBDOS -m tcp -p tcp -j DNAT --to-destination 203.0.113.4:8081" in dnat


# --- names, numbers and formats --------------------------------------------------------


@pytest.mark.parametrize(
    "port_name,protocol,chain",
    [
        ("ns1/svc1:p80", "tcp", "XPGD46QRK7WJZT7O"),
        ("ns2/svc2:p80", "tcp", "GNZBNJ2PO5MGZ6GT"),
        ("ns3/svc3:p80", "tcp", "X27LE4BHSL4DOUIK"),
        ("ns4/svc4:p80", "tcp", "4SW47YFZTEDKD3PK"),
        ("ns5/svc5:p80", "tcp", "NUKIZ6OKUXPJNT4C"),
        ("ns2/svc2:p8080", "tcp", "2VJB64SDSIJUP5T6"),
    ],
)
def test_port_proto_hash_matches_kube_proxy(port_name, protocol, chain):
    assert kube_chains.port_proto_hash(port_name, protocol) == chain


@pytest.mark.parametrize(
    "port_name,endpoint,chain",
    [
        ("ns1/svc1:p80", "10.180.0.1:80", "KUBE-SEP-SXIVWICOYRO3J4NJ"),
        ("ns5/svc5:p80", "10.180.0.3:80", "KUBE-SEP-I77PXRDZVX7PMWMN"),
        ("ns4/svc4:p80", "10.180.0.5:80", "KUBE-SEP-C6EBXVWJJZMIWKLZ"),
        ("ns1/svc1:p80", "10.0.1.1:80", "KUBE-SEP-SNQ3ZNILQDEJNDQO"),
        ("ns3/svc3:p8081", "203.0.113.4:8081", "KUBE-SEP-RUVVH7YV3PHQBDOS"),
        ("ns4/svc4:p8082", "10.4.0.1:8082", "KUBE-SEP-SU5STNODRYEWJAUF"),
    ],
)
def test_endpoint_chain_matches_kube_proxy(port_name, endpoint, chain):
    assert kube_chains.endpoint_chain(port_name, "tcp", endpoint) == chain


def test_probability_formatting_matches_kube_proxy():
    """TestComputeProbability."""
    expected = {
        1: "1.0000000000", 2: "0.5000000000", 10: "0.1000000000", 100: "0.0100000000", 1000: "0.0010000000",
        10000: "0.0001000000", 100000: "0.0000100000", 100001: "0.0000099999",
    }  # fmt: skip
    assert {n: kube_chains.probability(n) for n in expected} == expected
    values = [float(kube_chains.probability(n)) for n in range(100000, 1, -1)]
    assert all(a < b for a, b in zip(values, values[1:]))


def test_masquerade_mark_is_go_percent_hash_08x():
    assert kube_chains.masquerade_mark(14) == "0x00004000"
    assert kube_chains.masquerade_mark(0) == "0x00000001"
    assert kube_chains.masquerade_mark(31) == "0x80000000"


def test_endpoints_sort_as_strings_like_kube_proxy():
    """byEndpoint: "10.1.1.11:11" sorts before "10.1.1.1:11" (TestUpdateEndpointsMap)."""
    svc = Service("ns1", "ep1", ports=(ServicePort(11, "UDP", "p11"),), cluster_ips=_ips(["172.30.0.1"]))
    backends = tuple(
        Backend(ipaddress.ip_address(ip), 11, "UDP", True, True, False, None, None) for ip in ("10.1.1.1", "10.1.1.11")
    )
    eps = ServiceEndpoints(svc.key, (PortEndpoints(svc.ports[0], backends),), "manual")
    cluster, node = _fake_cluster(ProxySettings(), (svc,), {svc.key: eps})
    text = iptables.generate(cluster, node)
    order = re.findall(r'"ns1/ep1:p11 -> ([0-9.:]+)"', text)
    assert order == ["10.1.1.11:11", "10.1.1.1:11"]


def test_headless_and_external_name_services_get_no_rules():
    headless = Service("ns", "headless", ports=(ServicePort(53, "UDP", "dns"),), headless=True)
    extname = Service("ns", "ext", type="ExternalName", external_name="example.com", ports=(ServicePort(80),),
                      cluster_ips=_ips(["172.30.0.9"]))  # fmt: skip
    cluster, node = _fake_cluster(ProxySettings(), (headless, extname))
    empty, _ = _fake_cluster(ProxySettings())
    assert iptables.generate(cluster, node) == iptables.generate(empty, node)


def test_unmodelled_detect_local_mode_is_an_input_error():
    cluster, node = _fake_cluster(ProxySettings(detect_local_mode="BridgeInterface"))
    with pytest.raises(InputError) as info:
        iptables.generate(cluster, node)
    assert "BridgeInterface" in info.value.diagnostics[0].message


def test_node_cidr_detection_uses_each_nodes_pod_cidr():
    cluster, *_ = load_case("etp-local")
    proxy = ProxySettings(detect_local_mode="NodeCIDR", random_fully=False)
    node_a = Node("test-node", _ips(["192.168.0.2"]), _nets(["10.0.7.0/24"]))
    node_b = Node("other", _ips(["192.168.0.3"]), _nets(["10.0.8.0/24"]))
    cluster = ResolvedCluster(ClusterSettings(pod_cidrs=_nets(["10.0.0.0/8"]), proxy=proxy), (node_a, node_b), (),
                              cluster.services, cluster.endpoints)  # fmt: skip
    prepared = iptables.prepare(cluster)
    a, b = iptables.render(prepared, node_a), iptables.render(prepared, node_b)
    assert "! -s 10.0.7.0/24 -j KUBE-MARK-MASQ" in a and "-s 10.0.7.0/24 -j KUBE-SVC-" in a
    assert "! -s 10.0.8.0/24 -j KUBE-MARK-MASQ" in b and "10.0.7.0/24" not in b


# --- one prepare, many nodes; determinism ------------------------------------------------


def test_render_per_node_equals_generate_and_differs_only_where_kube_proxy_would():
    cluster, node, family, _ = load_case("internal-external-masquerade")
    remote = Node("remote", _ips(["192.168.0.9"]))
    cluster = ResolvedCluster(cluster.settings, (node, remote), (), cluster.services, cluster.endpoints)
    prepared = iptables.prepare(cluster, family)
    assert iptables.render(prepared, node) == iptables.generate(cluster, node, family)
    assert iptables.render(prepared, remote) == iptables.generate(cluster, remote, family)
    # svc1 (all-Cluster policy) is shared; svc2/svc3 (Local policies) are rendered per node
    assert [chunk is not None for chunk in prepared.shared] == [True, False, False]
    here, there = iptables.render(prepared, node), iptables.render(prepared, remote)
    assert here != there
    svc1 = [line for line in here.splitlines() if "ns1/svc1" in line]
    assert svc1 == [line for line in there.splitlines() if "ns1/svc1" in line]


def test_generate_prepares_each_cluster_once(monkeypatch):
    cluster, node, family, _ = load_case("internal-external-masquerade")
    calls = []
    real = iptables.prepare
    monkeypatch.setattr(iptables, "prepare", lambda c, f=4: calls.append(f) or real(c, f))
    monkeypatch.setattr(iptables, "_PREPARED", {})
    other = Node("remote", _ips(["192.168.0.9"]))
    texts = [iptables.generate(cluster, n, family) for n in (node, other, node)]
    assert calls == [family] and texts[0] == texts[2] != texts[1]


def test_dual_stack_service_is_split_by_family():
    port = ServicePort(80, "TCP", "http")
    svc = Service("ns", "dual", ports=(port,), cluster_ips=_ips(["172.30.0.7", "fd00:172:30::7"]))
    backends = tuple(
        Backend(ipaddress.ip_address(ip), 8080, "TCP", True, True, False, "test-node", None)
        for ip in ("10.180.0.7", "fd00:10:180::7")
    )
    eps = {svc.key: ServiceEndpoints(svc.key, (PortEndpoints(port, backends),), "selector")}
    node = Node("test-node", _ips(TEST_NODE_IPS))
    settings = ClusterSettings(pod_cidrs=_nets(["10.0.0.0/8", "fd00:10::/64"]))
    cluster = ResolvedCluster(settings, (node,), (), (svc,), eps)
    v4, v6 = iptables.generate(cluster, node, 4), iptables.generate(cluster, node, 6)
    assert "-d 172.30.0.7 --dport 80" in v4 and "fd00" not in v4
    assert "-d fd00:172:30::7 --dport 80" in v6 and "--to-destination [fd00:10:180::7]:8080" in v6
    assert "! -s fd00:10::/64 -j KUBE-MARK-MASQ" in v6 and "172.30.0.7" not in v6
    assert "! -d ::1/128 -j KUBE-NODEPORTS" in v6 and "KUBE-FIREWALL" not in v6


def test_generation_is_repeatable():
    assert generate_case("overall") == generate_case("overall")


def test_output_does_not_depend_on_hash_seed():
    script = (
        "import hashlib, sys; sys.path.insert(0, %r); import test_backend_iptables as t; "
        "print(hashlib.sha256(''.join(t.generate_case(c) for c in t.CASES).encode()).hexdigest())"
    ) % str(Path(__file__).parent)
    digests = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    here = hashlib.sha256("".join(generate_case(c) for c in CASES).encode()).hexdigest()
    assert digests == {here}


# --- the real tools, inside a throw-away network namespace ------------------------------

_NFACCT_SCRIPT = r"""
import socket, struct, sys
for name in sys.argv[1:]:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
    s.bind((0, 0))
    nm = name.encode() + b"\0"
    attr = struct.pack("HH", 4 + len(nm), 1) + nm              # NFACCT_NAME
    attr += b"\0" * (-len(attr) % 4)
    body = struct.pack("BBH", 0, 0, 0) + attr                   # nfgenmsg
    s.send(struct.pack("IHHII", 16 + len(body), 7 << 8, 0x405, 1, 0) + body)  # ACCT_NEW, REQ|ACK|CREATE
    err = struct.unpack_from("i", s.recv(4096), 16)[0]
    if err not in (0, -17):
        sys.exit(f"nfacct {name}: errno {-err}")
"""


@pytest.fixture(scope="module")
def netns():
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    name = f"ks-test-ipt-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(
            ["ip", "netns", "exec", name, sys.executable, "-c", _NFACCT_SCRIPT,
             kube_chains.NFACCT_INVALID_DROPPED, kube_chains.NFACCT_LOCALHOST_NODEPORT],
            check=True, capture_output=True,
        )  # fmt: skip
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def _rules_files():
    return sorted((c, p.name) for c in CASES for p in (GOLDEN / c).glob("*.rules"))


def _tool(variant: str, family: int, verb: str) -> str:
    return f"{'ip6tables' if family == 6 else 'iptables'}-{variant}-{verb}"


def _in_ns(ns: str, argv: list[str], stdin: str = ""):
    return subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True)


@pytest.mark.netns
@pytest.mark.parametrize("variant", ["nft", "legacy"])
def test_golden_files_load_with_iptables_restore(netns, variant):
    """Every golden .rules file passes ``iptables-restore --test``; kspec's also load for real.

    After a real load, ``iptables-save`` must show every chain we declared with as many
    rules as we wrote, jumping to the same targets.
    """
    if shutil.which(_tool(variant, 4, "restore")) is None:
        pytest.skip(f"{_tool(variant, 4, 'restore')} is not installed")
    failures = []
    for case, filename in _rules_files():
        family = json.loads((GOLDEN / case / "input.json").read_text())["family"]
        text = (GOLDEN / case / filename).read_text()
        checked = _in_ns(netns, [_tool(variant, family, "restore"), "--test"], text)
        if checked.returncode != 0:
            failures.append(f"{case}/{filename} --test: {checked.stderr.strip()}")
        if filename != "expected.rules" or checked.returncode != 0:
            continue
        loaded = _in_ns(netns, [_tool(variant, family, "restore")], text)
        if loaded.returncode != 0:
            failures.append(f"{case}/{filename} load: {loaded.stderr.strip()}")
            continue
        saved = _in_ns(netns, [_tool(variant, family, "save")]).stdout
        failures += [f"{case}: {p}" for p in _saved_differs(text, saved)]
    assert not failures, "\n".join(failures)


def _saved_differs(restored: str, saved: str) -> list[str]:
    """Compare chain by chain: rule counts and jump targets survive the round trip."""
    problems = []
    ours = {t.name: t for t in parse_dump(restored)}
    theirs = {t.name: t for t in parse_dump(saved)}
    for name, table in ours.items():
        for chain in table.chains:
            live = theirs[name].chain(chain.name) if name in theirs else None
            if live is None:
                problems.append(f"{name}/{chain.name} missing after restore")
                continue
            want = [r.get("-j")[1] if r.get("-j") else None for r in chain.rules]
            got = [r.get("-j")[1] if r.get("-j") else None for r in live.rules]
            if want != got:
                problems.append(f"{name}/{chain.name}: saved {got} != restored {want}")
    return problems


# --- scale ---------------------------------------------------------------------------------


def scale_cluster(n_services: int = 10_000, per_service: int = 15, n_nodes: int = 100) -> ResolvedCluster:
    """10k ClusterIP/NodePort services x 15 endpoints spread over ``n_nodes`` nodes."""
    nodes = tuple(Node(f"node-{i}", _ips([f"198.18.{i // 250}.{i % 250 + 1}"])) for i in range(n_nodes))
    services, endpoints = [], {}
    pod = int(ipaddress.ip_address("10.0.0.0"))
    for i in range(n_services):
        kind = "NodePort" if i % 10 == 0 else "ClusterIP"
        port = ServicePort(80, "TCP", "http", 8080, 30000 + i // 10 if kind == "NodePort" else None)
        svc = Service(f"ns{i % 50}", f"svc{i}", type=kind, ports=(port,),
                      cluster_ips=(ipaddress.ip_address(int(ipaddress.ip_address("172.16.0.0")) + i),))  # fmt: skip
        backends = tuple(
            Backend(ipaddress.ip_address(pod + i * per_service + j), 8080, "TCP", True, True, False,
                    nodes[(i + j) % n_nodes].name, None)
            for j in range(per_service)
        )  # fmt: skip
        services.append(svc)
        endpoints[svc.key] = ServiceEndpoints(svc.key, (PortEndpoints(port, backends),), "selector")
    settings = ClusterSettings(pod_cidrs=_nets(["10.0.0.0/8"]))
    return ResolvedCluster(settings, nodes, (), tuple(services), endpoints)


@pytest.mark.slow
def test_scale_10k_services_15_endpoints():
    cluster = scale_cluster()
    start = time.perf_counter()
    prepared = iptables.prepare(cluster)
    prepared_at = time.perf_counter()
    text = iptables.render(prepared, cluster.nodes[0])
    rendered_at = time.perf_counter()
    iptables.render(prepared, cluster.nodes[1])
    second_at = time.perf_counter()
    lines = text.count("\n")
    print(f"\nprepare {prepared_at - start:.2f}s, render {rendered_at - prepared_at:.2f}s, "
          f"2nd node {second_at - rendered_at:.2f}s, {lines} lines, {len(text) / 1e6:.1f} MB")  # fmt: skip
    assert lines > 600_000
    assert prepared_at - start < 30 and second_at - rendered_at < 5
