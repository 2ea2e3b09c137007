"""KS201-KS205 in kube-proxy's IPVS mode: clean rule sets prove, planted faults are caught by the right ID.

A node's IPVS-mode rule set is its iptables rules, its IPVS table and its
ipsets (and its routes); the texts here are what ``kspec compile`` writes
in IPVS mode, edited one fault at a time, or a real kernel's save output.
"""

from __future__ import annotations

import ipaddress
import itertools
import random
import re
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from backend_factories import cluster, ip, net, node, pod, port, service
from kspec.backends import ipset, ipvs, ipvs_iptables, routes
from kspec.dataplane import ipset_save, iptables_save
from kspec.frontend.assemble import Flags
from kspec.model import ClusterSettings, Node, ResolvedCluster
from kspec.pipeline import load
from kspec.verify import chains
from kspec.verify.encode import Intervals
from kspec.verify.ipvs_invariants import PACKET_IDS, SetResolver, check_node_ipvs, plan_node
from kspec.verify.result import PROVED, UNKNOWN, VIOLATED
from test_packet_invariants import HAND_BUILT, lab_cluster, scale_cluster
from test_planted_faults import small_clusters
from netns_support import netns_skip_reason

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*/*") if p.suffix in (".kspec", ".yaml") and
                  p.parent.name != "broken")
MULTI = ROOT / "examples" / "multi-namespace" / "cluster.kspec"


def ipvs_mode(c: ResolvedCluster, **proxy) -> ResolvedCluster:
    return replace(c, settings=replace(c.settings, proxy=replace(c.settings.proxy, mode="ipvs", **proxy)))


@dataclass(frozen=True)
class Texts:
    """One node's IPVS-mode files, as ``kspec compile`` writes them."""

    iptables: str
    ipvs: str
    ipset: str
    routes: str

    def with_(self, **changes: str) -> "Texts":
        return replace(self, **changes)


def compiled(c: ResolvedCluster, n: Node, family: int = 4) -> Texts:
    return Texts(ipvs_iptables.generate(c, n, family), ipvs.generate(c, n), ipset.generate(c, n),
                 routes.generate(c, n))


def verify(c: ResolvedCluster, n: Node, texts: Texts | None = None, family: int = 4, ids=PACKET_IDS) -> dict:
    texts = compiled(c, n, family) if texts is None else texts
    verdicts = check_node_ipvs(c, n, texts.iptables, f"nodes/{n.name}/iptables.rules", texts.ipvs,
                               f"nodes/{n.name}/ipvs.rules", texts.ipset, f"nodes/{n.name}/ipset.rules", texts.routes,
                               f"nodes/{n.name}/routes.batch", ids, 10, family)
    return {v.invariant: v for v in verdicts}


def problems(verdicts: dict) -> list[str]:
    return [f"{v.invariant} {v.status}: {v.reason}" + "".join(f"\n  {f.message}\n    {f.witness}" for f in v.findings)
            for v in verdicts.values() if v.status != PROVED]


def violated(verdicts: dict) -> set[str]:
    return {i for i, v in verdicts.items() if v.status == VIOLATED}


# --- clean rule sets prove ---------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_examples_in_ipvs_mode_verify_clean_on_every_node(path):
    c = ipvs_mode(load([str(path)], None, Flags()).cluster)
    for n in c.nodes:
        verdicts = verify(c, n)
        assert not problems(verdicts), f"{path.name}/{n.name}:\n" + "\n".join(problems(verdicts))
        assert verdicts["KS202"].checked and verdicts["KS205"].checked


@pytest.mark.parametrize("name", sorted(HAND_BUILT))
def test_hand_built_clusters_in_ipvs_mode_verify_clean_on_every_node(name):
    make, family = HAND_BUILT[name]
    c = ipvs_mode(make())
    for n in c.nodes:
        verdicts = verify(c, n, family=family)
        assert not problems(verdicts), f"{name}/{n.name}:\n" + "\n".join(problems(verdicts))
        assert all(verdicts[i].checked for i in ("KS201", "KS202", "KS203", "KS204", "KS205"))


def test_the_lab_cluster_meets_kube_proxys_ipvs_policies():
    """What the proxier does where it differs from iptables mode, on node-3 (no web-local/itp endpoint)."""
    c = ipvs_mode(lab_cluster())
    n3 = c.nodes[2]
    specs = {s.service.name: s for s in plan_node(c, n3, 4).ports}
    web = {e for e in specs["web"].internal}
    assert specs["web-local"].external == frozenset(web - {(int(ip("198.19.3.10")), 8080)})  # PR 97081 fallback
    assert specs["itp"].internal == frozenset() and specs["itp"].has_any  # internal Local, no local endpoint
    assert specs["term"].internal  # the serving-terminating fallback
    assert not specs["empty"].has_any and all(not t.servers for t in specs["empty"].targets)
    verdicts = verify(c, n3)
    assert all(v.status == PROVED for v in verdicts.values())
    assert verdicts["KS204"].checked >= 8  # cluster IP, external IP and nodePort of "empty", from everywhere


def test_a_virtual_server_without_real_servers_rejects_even_when_persistent():
    """KS204 in IPVS mode: kube-proxy keeps the virtual server; the kernel answers ICMP port unreachable."""
    n1 = node("node-1", "198.18.0.11", pod_cidrs=["198.19.1.0/24"])
    clients = [pod("default", "client", "node-1", "198.19.1.50")]
    sticky = replace(service("default", "sticky", port(80, "http"), cluster_ips=["198.18.128.30"]),
                     session_affinity="ClientIP", affinity_timeout=60)
    c = ipvs_mode(cluster([n1], clients, [sticky],
                          settings=ClusterSettings(pod_cidrs=(net("198.19.0.0/16"),),
                                                   service_cidrs=(net("198.18.128.0/20"),))))
    texts = compiled(c, n1)
    assert "-A -t 198.18.128.30:80 -s rr -p 60\n" in texts.ipvs and "-a -t 198.18.128.30:80" not in texts.ipvs
    assert verify(c, n1)["KS204"].status == PROVED
    gone = verify(c, n1, texts.with_(ipvs=texts.ipvs.replace("-A -t 198.18.128.30:80 -s rr -p 60\n", "")))
    finding = gone["KS204"].findings[0]
    assert gone["KS204"].status == VIOLATED and "reaches the node's own sockets" in finding.message
    assert "KS205" in violated(gone)


# --- the walker: ipset matches, IPVS, -m ipvs ----------------------------------------------------


@pytest.fixture(scope="module")
def lab_program():
    c = ipvs_mode(lab_cluster())
    n = c.nodes[0]
    texts = compiled(c, n)
    sets = ipset_save.parse(texts.ipset, "ipset.rules")
    resolver = SetResolver(sets, 4)
    from kspec.dataplane import ipvs_save
    from kspec.verify.ipvs_invariants import bound_addresses, walker_table

    table = ipvs_save.parse(texts.ipvs, "ipvs.rules")
    local = chains.local_intervals(["198.18.0.11", "198.19.1.1"], 4) | bound_addresses(resolver, table, n, 4)
    program = chains.Program(iptables_save.parse(texts.iptables, "iptables.rules"), local,
                             Intervals.of_network(ipaddress.ip_network("198.19.1.0/24")), "cbr0", sets=resolver,
                             ipvs=walker_table(table, 4), physdev=True)
    return program, sets


ADDRESSES = ["198.18.128.10", "198.18.128.15", "198.18.128.16", "198.18.128.20", "198.18.200.10", "198.18.200.11",
             "198.18.200.21", "198.18.0.11", "198.19.1.10", "198.19.2.10", "198.19.1.50", "198.18.64.9",
             "203.0.113.9", "127.0.0.1"]


def _outcome(leaf: chains.Leaf) -> tuple:
    return leaf.verdict, chains.dnat_text(leaf.dnat, 4), leaf.snat


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(ADDRESSES), st.sampled_from(ADDRESSES), st.sampled_from(["tcp", "udp"]),
       st.sampled_from([80, 53, 81, 30080, 30081, 30083, 32000, 8080]), st.sampled_from(["pod", "outside", "node"]),
       st.lists(st.booleans(), max_size=4))
def test_concrete_refined_and_symbolic_ipvs_walks_agree(lab_program, src, dst, proto, dport, origin, answers):
    """One packet: trace_packet's outcome is one the refine walk finds, and the symbolic walk's guards agree."""
    program, _ = lab_program
    iif = "cbr0" if origin == "pod" else None
    values = [int(ipaddress.ip_address(src)), int(ipaddress.ip_address(dst)), chains.protocol_number(proto), 40000,
              dport]
    refined = {_outcome(leaf) for leaf in chains.explore(program, origin, values, iif)}
    wide = [Intervals.span(values[0] - 3, values[0] + 3), Intervals.span(values[1] - 1, values[1] + 1),
            Intervals.point(values[2]), Intervals.span(1, 65535), Intervals.span(values[4] - 1, values[4] + 1)]
    symbolic = chains.explore(program, origin, wide, iif, symbolic=True)
    held = {_outcome(leaf) for leaf in symbolic
            if all((values[atom[1]] in atom[2]) == inside for atom, inside in leaf.guard_list())
            and all(values[f] in _as_set(d) for f, d in enumerate(leaf.initial))}
    assert refined == held
    trace = chains.trace_packet(program, chains.Hooks(origin, (), iif), chains.Packet(proto, src, 40000, dst, dport),
                                answers)
    assert (trace.verdict, trace.dnat, trace.snat) in refined


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(ADDRESSES), st.sampled_from(ADDRESSES), st.sampled_from(["tcp", "udp", "sctp"]),
       st.sampled_from([80, 53, 8080, 9100, 30080, 30081, 32000, 1]), st.sampled_from([40000, 8080, 80]),
       st.data())
def test_set_matches_agree_with_the_ipset_reader(lab_program, src, dst, proto, dport, sport, data):
    """``-m set --match-set NAME DIRS`` decided by the walker == ipset_save.match_packet, for every set."""
    _, sets = lab_program
    name = data.draw(st.sampled_from(sorted(sets.sets)))
    dims = len(sets.sets[name].dimensions)
    directions = tuple(data.draw(st.lists(st.sampled_from(["src", "dst"]), min_size=dims, max_size=dims)))
    rules = f"*raw\n-A PREROUTING -m set --match-set {name} {','.join(directions)} -j DROP\nCOMMIT\n"
    program = chains.Program(iptables_save.parse(rules, "r"), chains.local_intervals([], 4),
                             sets=SetResolver(sets, 4))
    packet = chains.Packet(proto, src, sport, dst, dport)
    dropped = chains.trace_packet(program, chains.Hooks("outside"), packet).verdict == "DROP"
    expected = ipset_save.match_packet(sets.sets[name], directions, chains.protocol_number(proto), src, sport, dst,
                                       dport)
    assert dropped == expected
    # the same packet inside a range of sources: the split keeps exactly the matching ones
    wide = [Intervals.span(int(ipaddress.ip_address(src)) - 2, int(ipaddress.ip_address(src)) + 2),
            int(ipaddress.ip_address(dst)), chains.protocol_number(proto), sport, dport]
    leaves = chains.explore(program, "outside", wide)
    hit = [leaf for leaf in leaves if int(ipaddress.ip_address(src)) in _as_set(leaf.domain(0))]
    assert [leaf.verdict == "DROP" for leaf in hit] == [expected]


def _as_set(value) -> Intervals:
    return value if isinstance(value, Intervals) else Intervals.point(value)


def test_a_load_balancer_the_node_may_not_reach_is_dropped_by_the_ipvs_match():
    """loadBalancerSourceRanges without the node: KUBE-IPVS-OUT-FILTER's -m ipvs rule drops the node's own packets."""
    c = ipvs_mode(lab_cluster())
    lb = next(s for s in c.services if s.name == "lb")
    c = replace(c, services=tuple(replace(s, load_balancer_source_ranges=(net("198.18.64.0/24"),)) if s is lb else s
                                  for s in c.services))
    n = c.nodes[0]
    texts = compiled(c, n)
    assert "-m ipvs --vaddr 198.18.200.10 --vproto tcp --vport 80 -j DROP" in texts.iptables
    verdicts = verify(c, n)
    assert not problems(verdicts)
    without = texts.with_(iptables="".join(line for line in texts.iptables.splitlines(keepends=True)
                                           if "-m ipvs" not in line))
    found = verify(c, n, without, ids=["KS203"])["KS203"]
    assert found.status == VIOLATED and "from node node-1" in found.findings[0].message
    assert "instead of being dropped" in found.findings[0].message


# --- planted faults, one at a time ---------------------------------------------------------------


@dataclass(frozen=True)
class Planted:
    fault: str
    texts: Texts
    expect: frozenset[str]  # every one of these must report it
    where: str


Fault = Callable[[ResolvedCluster, Node, Texts, random.Random], Planted | None]


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _pick(rng: random.Random, lines: list[str], pattern: str) -> int | None:
    spots = [i for i, line in enumerate(lines) if re.search(pattern, line)]
    return rng.choice(spots) if spots else None


def _servers(text: str) -> dict[str, list[int]]:
    """Virtual server line -> indexes of its real servers' lines."""
    out: dict[str, list[int]] = {}
    for i, line in enumerate(_lines(text)):
        words = line.split()
        key = f"{words[1]} {words[2]}"
        if words[0] == "-A":
            out[key] = []
        else:
            out[key].append(i)
    return out


def real_server_removed(c, n, t: Texts, rng) -> Planted | None:
    lines = _lines(t.ipvs)
    i = _pick(rng, lines, r"^-a ")
    if i is None:
        return None
    return Planted("real-server-removed", t.with_(ipvs="".join(lines[:i] + lines[i + 1:])),
                   frozenset({"KS205"}) | _packet_id(c, n, lines[i]), lines[i])


def real_server_wrong_port(c, n, t: Texts, rng) -> Planted | None:
    lines = _lines(t.ipvs)
    i = _pick(rng, lines, r"^-a ")
    if i is None:
        return None
    head, number, tail = re.match(r"(.* -r \S+:)(\d+)( .*)", lines[i], re.DOTALL).groups()
    lines[i] = f"{head}{int(number) + 1}{tail}"
    return Planted("real-server-wrong-port", t.with_(ipvs="".join(lines)),
                   frozenset({"KS205"}) | _packet_id(c, n, lines[i]), lines[i])


def only_endpoint_weight_zero(c, n, t: Texts, rng) -> Planted | None:
    lines = _lines(t.ipvs)
    single = [ids[0] for ids in _servers(t.ipvs).values() if len(ids) == 1]
    if not single:
        return None
    i = rng.choice(single)
    lines[i] = lines[i].replace(" -w 1", " -w 0")
    return Planted("only-endpoint-weight-0", t.with_(ipvs="".join(lines)), _packet_id(c, n, lines[i]), lines[i])


def virtual_server_of_a_deleted_service(c, n, t: Texts, rng) -> Planted | None:
    used = {int(a) for s in c.services for a in s.cluster_ips}
    service_net = next(x for x in c.settings.service_cidrs if x.version == 4)
    free = rng.choice([a for a in itertools.islice(service_net.hosts(), 200) if int(a) not in used])
    extra = f"-A -t {free}:80 -s rr\n-a -t {free}:80 -r 198.19.9.9:8080 -m -w 1\n"
    return Planted("virtual-server-of-a-deleted-service", t.with_(ipvs=t.ipvs + extra), frozenset({"KS205"}),
                   extra)


def virtual_server_missing(c, n, t: Texts, rng) -> Planted | None:
    lines = _lines(t.ipvs)
    i = _pick(rng, lines, r"^-A ")
    if i is None:
        return None
    key = " ".join(lines[i].split()[1:3]) + " "
    kept = "".join(line for line in lines if not line.startswith((f"-A {key}", f"-a {key}")))
    return Planted("virtual-server-missing", t.with_(ipvs=kept), frozenset({"KS205"}) | _packet_id(c, n, lines[i]),
                   lines[i])


def wrong_scheduler(c, n, t: Texts, rng) -> Planted | None:
    lines = _lines(t.ipvs)
    i = _pick(rng, lines, r"^-A ")
    if i is None:
        return None
    lines[i] = re.sub(r" -s (\S+)", lambda m: " -s " + ("wlc" if m.group(1) != "wlc" else "sh"), lines[i])
    return Planted("wrong-scheduler", t.with_(ipvs="".join(lines)), frozenset({"KS205"}), lines[i])


def persistence_missing(c, n, t: Texts, rng) -> Planted | None:
    lines = _lines(t.ipvs)
    i = _pick(rng, lines, r"^-A .* -p \d+")
    if i is None:
        return None
    lines[i] = re.sub(r" -p \d+", "", lines[i])
    return Planted("persistence-missing", t.with_(ipvs="".join(lines)), frozenset({"KS205"}), lines[i])


def cluster_ip_member_removed(c, n, t: Texts, rng) -> Planted | None:
    """Pods' packets to the cluster IP are then REJECTed by KUBE-IPVS-FILTER (the port is no service's),
    and the node's own packets from the service address lose their masquerade mark."""
    lines = _lines(t.ipset)
    with_endpoints = {f"{ipaddress.ip_address(s.cluster_ip)},{s.proto_name}:{s.port.port}"
                      for s in plan_node(c, n, 4).ports if s.internal}
    spots = [i for i, line in enumerate(lines) if line.startswith("add KUBE-CLUSTER-IP ")
             and line.split()[2] in with_endpoints]
    if not spots or not _has_pods(c, n):
        return None
    i = rng.choice(spots)
    return Planted("cluster-ip-member-removed", t.with_(ipset="".join(lines[:i] + lines[i + 1:])),
                   frozenset({"KS202", "KS205"}), lines[i])


def extra_node_port_local_member(c, n, t: Texts, rng) -> Planted | None:
    """An externalTrafficPolicy: Cluster nodePort in KUBE-NODE-PORT-LOCAL-*: its traffic is no longer masqueraded."""
    own = {int(a) for a in n.ips}
    ports = [s for s in plan_node(c, n, 4).ports if s.port.node_port and not s.external_local
             and any(e[0] not in own for e in s.external) and s.proto_name in ("tcp", "udp")
             and any(t_.what == "nodePort" for t_ in s.targets)]
    if not ports:
        return None
    spec = rng.choice(ports)
    name = f"KUBE-NODE-PORT-LOCAL-{spec.proto_name.upper()}"
    lines = _lines(t.ipset)
    at = next(i for i, line in enumerate(lines) if line.startswith(f"create {name} "))
    lines.insert(at + 1, f"add {name} {spec.port.node_port}\n")
    matched = f"--match-set {name} dst -j RETURN" in t.iptables  # kube-proxy omits the rule of an empty set
    return Planted("extra-node-port-local-member", t.with_(ipset="".join(lines)),
                   frozenset({"KS203", "KS205"} if matched else {"KS205"}), lines[at + 1])


def node_port_virtual_server_missing(c, n, t: Texts, rng) -> Planted | None:
    node_ip = str(n.ips[0])
    lines = _lines(t.ipvs)
    i = _pick(rng, lines, rf"^-A \S+ {re.escape(node_ip)}:")
    if i is None:
        return None
    key = " ".join(lines[i].split()[1:3]) + " "
    kept = "".join(line for line in lines if not line.startswith((f"-A {key}", f"-a {key}")))
    return Planted("node-port-virtual-server-missing", t.with_(ipvs=kept),
                   frozenset({"KS205"}) | _packet_id(c, n, lines[i]), lines[i])


def bound_address_removed(c, n, t: Texts, rng) -> Planted | None:
    """A cluster IP left out of KUBE-IPVS-IPS (kube-ipvs0): packets to it are not the node's, IPVS never sees them."""
    lines = _lines(t.ipset)
    with_endpoints = {str(ipaddress.ip_address(s.cluster_ip)) for s in plan_node(c, n, 4).ports if s.internal}
    spots = [i for i, line in enumerate(lines) if line.startswith("add KUBE-IPVS-IPS ")
             and line.split()[2] in with_endpoints]
    if not spots or not _has_pods(c, n):
        return None
    i = rng.choice(spots)
    return Planted("bound-address-removed", t.with_(ipset="".join(lines[:i] + lines[i + 1:])),
                   frozenset({"KS202", "KS205"}), lines[i])


def filter_return_removed(c, n, t: Texts, rng) -> Planted | None:
    """KUBE-IPVS-FILTER no longer lets service traffic through: it is rejected before IPVS."""
    lines = _lines(t.iptables)
    i = _pick(rng, lines, r"^-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN")
    if i is None or not _has_pods(c, n) or not any(s.internal for s in plan_node(c, n, 4).ports):
        return None
    return Planted("filter-return-removed", t.with_(iptables="".join(lines[:i] + lines[i + 1:])),
                   frozenset({"KS202"}), lines[i])


def masquerade_mark_removed(c, n, t: Texts, rng) -> Planted | None:
    """The node's own packets to a cluster IP leave from that address: without KUBE-MARK-MASQ they are lost."""
    lines = _lines(t.iptables)
    i = _pick(rng, lines, r"^-A KUBE-SERVICES .*--match-set KUBE-CLUSTER-IP \S+ .*-j KUBE-MARK-MASQ")
    if i is None or not any(s.internal and any(e[0] not in {int(a) for a in n.ips} for e in s.internal)
                            for s in plan_node(c, n, 4).ports):
        return None
    return Planted("masquerade-mark-removed", t.with_(iptables="".join(lines[:i] + lines[i + 1:])),
                   frozenset({"KS202"}), lines[i])


def _has_pods(c: ResolvedCluster, n: Node) -> bool:
    return any(p.node == n.name and not p.host_network and p.ips for p in c.pods)


def _packet_id(c: ResolvedCluster, n: Node, line: str) -> frozenset[str]:
    """The packet invariant a virtual server's fault shows in: KS202 (cluster IP), KS203 (the others),
    KS204 (a port without any endpoint)."""
    address = line.split()[2]
    host, _, number = address.rpartition(":")
    for spec in plan_node(c, n, 4).ports:
        for target in spec.targets:
            if (str(ipaddress.ip_address(target.addr)), target.port) == (host, int(number)):
                if not spec.has_any:
                    return frozenset({"KS204"})
                return frozenset({"KS202" if target.what == "cluster IP" else "KS203"})
    return frozenset()


FAULTS: dict[str, Fault] = {f.__name__: f for f in (
    real_server_removed, real_server_wrong_port, only_endpoint_weight_zero, virtual_server_of_a_deleted_service,
    virtual_server_missing, wrong_scheduler, persistence_missing, cluster_ip_member_removed,
    extra_node_port_local_member, node_port_virtual_server_missing, bound_address_removed, filter_return_removed,
    masquerade_mark_removed)}


def caught(c: ResolvedCluster, n: Node, planted: Planted) -> tuple[bool, set[str]]:
    found = violated(verify(c, n, planted.texts))
    return planted.expect <= found and bool(found), found


def test_detection_rate_is_total_with_no_false_positive():
    c = ipvs_mode(lab_cluster())
    multi = ipvs_mode(load([str(MULTI)], None, Flags()).cluster)
    targets = [(c, n) for n in c.nodes] + [(multi, n) for n in multi.nodes]
    false_positives = [n.name for cl, n in targets if problems(verify(cl, n))]
    planted = caught_count = 0
    misses = []
    for cl, n in targets:
        texts = compiled(cl, n)
        for name, fault in FAULTS.items():
            for seed in range(3):
                result = fault(cl, n, texts, random.Random(seed))
                if result is None:
                    continue
                planted += 1
                ok, found = caught(cl, n, result)
                caught_count += ok
                if not ok:
                    misses.append(f"{name} on {n.name}: {result.where.strip()!r} expected {sorted(result.expect)}, "
                                  f"found {sorted(found)}")
    print(f"\nIPVS mode: planted {planted} faults of {len(FAULTS)} kinds into {len(targets)} rule sets: caught "
          f"{caught_count} ({100.0 * caught_count / planted:.1f}%), false positives on the originals: "
          f"{len(false_positives)}")
    assert not misses, "\n".join(misses)
    assert caught_count == planted and planted >= 100
    assert not false_positives


def test_each_fault_kind_plants_somewhere():
    c = ipvs_mode(lab_cluster())
    multi = ipvs_mode(load([str(MULTI)], None, Flags()).cluster)
    for name, fault in FAULTS.items():
        assert any(fault(cl, n, compiled(cl, n), random.Random(0)) is not None
                   for cl in (c, multi) for n in cl.nodes), name


def test_the_findings_name_the_offending_line():
    """On the multi-namespace example: file:line of the virtual server, real server or set member at fault."""
    c = load([str(MULTI)], None, Flags()).cluster
    n = c.nodes_by_name["worker-a"]
    t = compiled(c, n)
    ipvs_lines = _lines(t.ipvs)
    sticky = next(i for i, line in enumerate(ipvs_lines) if " -p 600" in line)
    result = verify(c, n, t.with_(ipvs=t.ipvs.replace(" -p 600", "")), ids=["KS205"])["KS205"]
    assert result.status == VIOLATED and "sessionAffinity ClientIP needs -p 600" in result.findings[0].message
    assert result.findings[0].locations[0].span.file == "nodes/worker-a/ipvs.rules"
    assert result.findings[0].locations[0].span.line == sticky + 1
    assert result.findings[0].subject == "service shop/web"

    only = next(i for i, line in enumerate(ipvs_lines) if line.startswith("-a -t 10.98.217.59:9090"))
    zero = ipvs_lines[:only] + [ipvs_lines[only].replace("-w 1", "-w 0")] + ipvs_lines[only + 1:]
    ks202 = verify(c, n, t.with_(ipvs="".join(zero)), ids=["KS202"])["KS202"]
    assert ks202.status == VIOLATED and "rejected instead of reaching an endpoint" in ks202.findings[0].message
    assert "REJECT (no real server of weight > 0" in ks202.findings[0].witness

    lines = _lines(t.ipset)
    gone = next(i for i, line in enumerate(lines) if line.startswith("add KUBE-CLUSTER-IP 10.105.234.14,tcp:80"))
    both = verify(c, n, t.with_(ipset="".join(lines[:gone] + lines[gone + 1:])), ids=["KS202", "KS205"])
    messages = [f.message for f in both["KS202"].findings]
    assert any("from pods on worker-a is rejected" in m for m in messages)
    assert any("from the service address itself, not masqueraded" in m for m in messages)
    assert any(loc.span.file == "nodes/worker-a/iptables.rules" for f in both["KS202"].findings
               for loc in f.locations)  # KUBE-IPVS-FILTER's REJECT rule
    assert "lacks 10.105.234.14,tcp:80" in both["KS205"].findings[0].message


def test_a_set_missing_from_the_dump_is_undecided_never_proved():
    c = ipvs_mode(lab_cluster())
    n = c.nodes[0]
    t = compiled(c, n)
    without = "".join(line for line in _lines(t.ipset) if " KUBE-CLUSTER-IP " not in line)
    verdicts = verify(c, n, t.with_(ipset=without), ids=["KS202", "KS205"])
    assert verdicts["KS202"].status == UNKNOWN and "has no set KUBE-CLUSTER-IP" in verdicts["KS202"].reason
    assert verdicts["KS205"].status == VIOLATED


# --- random clusters, real kernel, scale ----------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_clusters(), st.sampled_from(["rr", "lc", "sh"]), st.booleans())
def test_random_clusters_in_ipvs_mode_compile_and_verify_clean(c, scheduler, masquerade_all):
    c = ipvs_mode(c, ipvs_scheduler=scheduler, masquerade_all=masquerade_all)
    for n in c.nodes:
        verdicts = verify(c, n)
        assert not problems(verdicts), f"{n.name}:\n" + "\n".join(problems(verdicts))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_clusters(), st.sampled_from(sorted(FAULTS)), st.integers(0, 2**32 - 1), st.data())
def test_a_random_fault_in_a_random_ipvs_cluster_is_caught(c, name, seed, data):
    c = ipvs_mode(c)
    n = c.nodes[data.draw(st.integers(0, len(c.nodes) - 1))]
    planted = FAULTS[name](c, n, compiled(c, n), random.Random(seed))
    assume(planted is not None)
    ok, found = caught(c, n, planted)
    assert ok, f"{name} not caught: {planted.where!r}: expected {sorted(planted.expect)}, found {sorted(found)}"


@pytest.mark.netns
@pytest.mark.skipif(netns_skip_reason("ipset", "iptables-restore", "iptables-save") is not None,
                    reason=str(netns_skip_reason("ipset", "iptables-restore", "iptables-save")))
def test_the_kernels_own_save_output_verifies_clean(tmp_path):
    """ipset.rules and iptables.rules loaded into a namespace and saved back (the kernel's canonical forms)."""
    c = ipvs_mode(load([str(ROOT / "examples" / "lab" / "cluster.kspec")], None, Flags()).cluster)
    n = c.nodes[0]
    t = compiled(c, n)
    name = f"ks-test-ipvs-{random.Random().randrange(1 << 30):x}"
    added = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if added.returncode != 0:
        pytest.skip(f"ip netns unavailable: {added.stderr.strip()}")
    try:
        def run(*argv: str, stdin: str = "") -> str:
            return subprocess.run(["ip", "netns", "exec", name, *argv], input=stdin, capture_output=True, text=True,
                                  check=True).stdout

        run("ipset", "restore", stdin=t.ipset)
        run("iptables-restore", stdin=t.iptables)
        saved = t.with_(iptables=run("iptables-save"), ipset=run("ipset", "save"))
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    assert "bucketsize" in saved.ipset or "hashsize" in saved.ipset
    verdicts = verify(c, n, saved)
    assert not problems(verdicts), "\n".join(problems(verdicts))


def scale(n_services: int) -> tuple[float, int]:
    """One node of a 100-node cluster in IPVS mode, ``n_services`` x 15 endpoints (compile + verify)."""
    c = scale_cluster(n_services)
    c = ipvs_mode(replace(c, settings=replace(c.settings, pod_cidrs=(net("10.64.0.0/16"),))))
    n = c.nodes[0]
    start = time.perf_counter()
    texts = compiled(c, n)
    verdicts = verify(c, n, texts)
    elapsed = time.perf_counter() - start
    assert all(v.status == PROVED for v in verdicts.values()), problems(verdicts)[:3]
    return elapsed, sum(x.count("\n") for x in (texts.iptables, texts.ipvs, texts.ipset))


def test_scale_1000_services():
    elapsed, lines = scale(1_000)
    print(f"\nIPVS mode, 1,000 services x 15 endpoints: {lines} lines verified in {elapsed:.2f}s")
    assert elapsed < 15


@pytest.mark.slow
def test_scale_10000_services():
    elapsed, lines = scale(10_000)
    print(f"\nIPVS mode, 10,000 services x 15 endpoints: {lines} lines verified in {elapsed:.1f}s")
    assert elapsed < 60
