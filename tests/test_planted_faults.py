"""Plant one fault at a time into compiled rules (or routes) and require the right invariant to catch it.

Each fault in :data:`FAULTS` picks, with a seeded random generator, a place
where it changes what packets experience, edits the text there, and names
the invariant(s) that must report it. The untouched originals must verify
clean: 100% of planted faults caught, no false positive.
"""

from __future__ import annotations

import ipaddress
import random
import re
from dataclasses import dataclass, replace
from typing import Callable

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kspec.backends import iptables, kube_chains, routes
from kspec.model import (
    Backend,
    ClusterSettings,
    Node,
    Pod,
    PortEndpoints,
    ResolvedCluster,
    Service,
    ServiceEndpoints,
    ServicePort,
)
from kspec.verify.packet_invariants import PACKET_IDS, check_node, port_specs
from kspec.verify.result import PROVED, VIOLATED
from test_packet_invariants import lab_cluster, lab_cluster_v6
from netns_support import netns_skip_reason

A = ipaddress.ip_address
N = ipaddress.ip_network


@dataclass(frozen=True)
class Planted:
    fault: str
    rules: str
    routes: str
    expect: frozenset[str]  # the invariant IDs allowed to catch it (at least one must)
    where: str


@dataclass(frozen=True)
class Target:
    """One node's compiled files and what the spec says, for faults to choose a place."""

    cluster: ResolvedCluster
    node: Node
    family: int
    rules: str
    routes: str

    @property
    def lines(self) -> list[str]:
        return self.rules.split("\n")


def _edit(target: Target, index: int, new: list[str]) -> str:
    lines = target.lines
    return "\n".join(lines[:index] + new + lines[index + 1:])


def _insert(target: Target, index: int, new: list[str]) -> str:
    lines = target.lines
    return "\n".join(lines[:index] + new + lines[index:])


def _indexes(target: Target, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return [i for i, line in enumerate(target.lines) if regex.search(line)]


def _table_range(target: Target, table: str) -> tuple[int, int]:
    lines = target.lines
    start = lines.index(f"*{table}")
    return start, lines.index("COMMIT", start)


def _declare(target: Target, text: str, table: str, names: list[str]) -> str:
    """Add chain declarations right after the table header."""
    lines = text.split("\n")
    at = lines.index(f"*{table}") + 1
    return "\n".join(lines[:at] + [f":{n} - [0:0]" for n in names] + lines[at:])


def _pod_network(target: Target) -> str:
    return str(next(c for c in target.cluster.settings.pod_cidrs if c.version == target.family))


def _plant(name: str, target: Target, rules: str | None = None, routes_text: str | None = None,
           expect: tuple[str, ...] = (), where: str = "") -> Planted:
    return Planted(name, rules if rules is not None else target.rules,
                   routes_text if routes_text is not None else target.routes, frozenset(expect), where)


# --- the catalogue --------------------------------------------------------------------------------


def drop_sep_jump(t: Target, rng: random.Random) -> Planted | None:
    """The statistic rule that chooses one endpoint disappears from a KUBE-SVC/SVL chain.

    (Not the chain's last, unconditional jump: without it the chain falls
    through, and for externalTrafficPolicy: Local KUBE-EXT then tries KUBE-SVL,
    which may hold the same endpoint, so nothing observable changes.)
    """
    spots = _indexes(t, r"^-A KUBE-SV[CL]-\S+ .*--probability \S+ -j KUBE-SEP-")
    if not spots:
        return None
    i = rng.choice(spots)
    return _plant("drop-sep-jump", t, _edit(t, i, []), expect=("KS202", "KS203"), where=t.lines[i])


def wrong_dnat_port(t: Target, rng: random.Random) -> Planted | None:
    spots = _indexes(t, r"-j DNAT --to-destination ")
    if not spots:
        return None
    i = rng.choice(spots)
    line = t.lines[i]
    port = int(line.rsplit(":", 1)[1])
    bad = f"{line.rsplit(':', 1)[0]}:{port + 1 if port < 65535 else 1}"
    return _plant("wrong-dnat-port", t, _edit(t, i, [bad]), expect=("KS202", "KS203"), where=bad)


def wrong_dnat_address(t: Target, rng: random.Random) -> Planted | None:
    spots = _indexes(t, r"-j DNAT --to-destination ")
    if not spots:
        return None
    i = rng.choice(spots)
    line = t.lines[i]
    head, _, dest = line.partition("--to-destination ")
    host, _, port = dest.rpartition(":")
    host = host.strip("[]")
    used = {int(b.ip) for eps in t.cluster.endpoints.values() for pe in eps.ports for b in pe.backends}
    other = int(A(host)) + 1
    while other in used:
        other += 1
    address = str(A(other))
    dest = f"[{address}]:{port}" if t.family == 6 else f"{address}:{port}"
    return _plant("wrong-dnat-address", t, _edit(t, i, [head + "--to-destination " + dest]),
                  expect=("KS202", "KS203"), where=dest)


def masquerade_pod_traffic(t: Target, rng: random.Random) -> Planted | None:
    """Something masquerades traffic between pods (in POSTROUTING, or by marking it for KUBE-POSTROUTING)."""
    net = _pod_network(t)
    elsewhere = "203.0.113.0/24" if t.family == 4 else "2001:db8::/32"
    variants = [
        ("nat", "POSTROUTING", f"-A POSTROUTING -s {net} -d {net} -j MASQUERADE"),
        ("nat", "POSTROUTING", f"-A POSTROUTING ! -s {elsewhere} -d {net} -j MASQUERADE"),
        ("nat", "KUBE-POSTROUTING", f"-A KUBE-POSTROUTING -s {net} -j MASQUERADE"),
        ("nat", "PREROUTING", f"-A PREROUTING -s {net} -d {net} -j KUBE-MARK-MASQ"),
    ]
    table, chain, rule = rng.choice(variants)
    start, end = _table_range(t, table)
    spots = [i for i in range(start, end) if t.lines[i].startswith(f"-A {chain} ")] or [end]
    if chain == "KUBE-POSTROUTING":
        spots = spots[:1]  # below its first rule, unmarked (pod-to-pod) packets have already returned
    return _plant("masquerade-pod-traffic", t, _insert(t, rng.choice(spots), [rule]), expect=("KS201",), where=rule)


def drop_pod_traffic(t: Target, rng: random.Random) -> Planted | None:
    net = _pod_network(t)
    rule = f"-A FORWARD -s {net} -d {net} -j {rng.choice(['DROP', 'REJECT'])}"
    start, end = _table_range(t, "filter")
    spots = [i for i in range(start, end) if t.lines[i].startswith("-A FORWARD ")] or [end]
    return _plant("drop-pod-traffic", t, _insert(t, rng.choice(spots), [rule]), expect=("KS201",), where=rule)


def dnat_pod_traffic(t: Target, rng: random.Random) -> Planted | None:
    pods = [p for p in t.cluster.pods if not p.host_network and any(ip.version == t.family for ip in p.ips)]
    if len(pods) < 2:
        return None
    a, b = rng.sample(pods, 2)
    ip_a = next(ip for ip in a.ips if ip.version == t.family)
    ip_b = next(ip for ip in b.ips if ip.version == t.family)
    dest = f"[{ip_b}]:80" if t.family == 6 else f"{ip_b}:80"
    rule = f"-A PREROUTING -d {ip_a} -p tcp -m tcp --dport 80 -j DNAT --to-destination {dest}"
    start, end = _table_range(t, "nat")
    spots = [i for i in range(start, end) if t.lines[i].startswith("-A PREROUTING ")] or [end]
    return _plant("dnat-pod-traffic", t, _insert(t, rng.choice(spots), [rule]), expect=("KS201",), where=rule)


def missing_reject(t: Target, rng: random.Random) -> Planted | None:
    spots = _indexes(t, r"-j REJECT$")
    if not spots:
        return None
    i = rng.choice(spots)
    return _plant("missing-reject", t, _edit(t, i, []), expect=("KS204",), where=t.lines[i])


def reject_becomes_drop(t: Target, rng: random.Random) -> Planted | None:
    spots = _indexes(t, r"-j REJECT$")
    if not spots:
        return None
    i = rng.choice(spots)
    return _plant("reject-becomes-drop", t, _edit(t, i, [t.lines[i][:-len("REJECT")] + "DROP"]),
                  expect=("KS204",), where=t.lines[i])


def probability_unreachable(t: Target, rng: random.Random) -> Planted | None:
    """A probability of 1 before the last endpoint, or of 0: some endpoint is never chosen."""
    spots = _indexes(t, r"--probability \S+ ")
    if not spots:
        return None
    i = rng.choice(spots)
    value = rng.choice(["1.0000000000", "0.0000000000", "0"])
    line = re.sub(r"--probability \S+", f"--probability {value}", t.lines[i])
    return _plant("probability-unreachable", t, _edit(t, i, [line]), expect=("KS202", "KS203"), where=line)


def deleted_service(t: Target, rng: random.Random) -> Planted | None:
    """Rules of a service the spec no longer has (kube-proxy failed to clean up, or a stale dump)."""
    net = next(c for c in t.cluster.settings.service_cidrs if c.version == t.family)
    used = {ip for s in t.cluster.services for ip in s.cluster_ips}
    vip = next(net.network_address + k for k in range(10, 10_000) if net.network_address + k not in used)
    name = f"gone/old-{rng.randrange(1000)}:http"
    chain = kube_chains.SVC_PREFIX + kube_chains.port_proto_hash(name, "tcp")
    sep = kube_chains.endpoint_chain(name, "tcp", "x")
    pods = [ip for p in t.cluster.pods for ip in p.ips if ip.version == t.family] or [vip]
    dest = f"[{pods[0]}]:8080" if t.family == 6 else f"{pods[0]}:8080"
    dispatch = f'-A KUBE-SERVICES -m comment --comment "{name} cluster IP" -m tcp -p tcp -d {vip} --dport 80 -j {chain}'
    body = [f"-A {chain} -j {sep}", f"-A {sep} -m tcp -p tcp -j DNAT --to-destination {dest}"]
    start, end = _table_range(t, "nat")
    spots = [i for i in range(start, end) if t.lines[i].startswith("-A KUBE-SERVICES ")] or [end]
    text = _insert(t, end, body)
    spot = rng.choice(spots)
    lines = text.split("\n")
    text = "\n".join(lines[:spot] + [dispatch] + lines[spot:])
    return _plant("deleted-service", t, _declare(t, text, "nat", [chain, sep]), expect=("KS205",), where=dispatch)


def duplicate_dispatch(t: Target, rng: random.Random) -> Planted | None:
    """A copy of one service's dispatch rule that jumps to another service's chain."""
    spots = _indexes(t, r"^-A KUBE-(SERVICES|NODEPORTS) .*-j KUBE-(SVC|SVL|EXT|FW)-")
    targets = sorted({m.group(0)[3:] for line in t.lines for m in [re.search(r"-j KUBE-(SVC|EXT|FW)-\S+$", line)] if m})
    if not spots or len(targets) < 2:
        return None
    i = rng.choice(spots)
    mine = t.lines[i].rsplit("-j ", 1)[1][-16:]
    others = [x for x in targets if not x.endswith(mine)]
    if not others:
        return None
    copy = t.lines[i].rsplit("-j ", 1)[0] + "-j " + rng.choice(others)
    at = i if rng.random() < 0.5 else i + 1
    return _plant("duplicate-dispatch", t, _insert(t, at, [copy]), expect=("KS205",), where=copy)


def wrong_dispatch_port(t: Target, rng: random.Random) -> Planted | None:
    spots = _indexes(t, r"^-A KUBE-(SERVICES|NODEPORTS) .*--dport \d+ -j KUBE-(SVC|SVL|EXT|FW)-")
    if not spots:
        return None
    i = rng.choice(spots)
    port = int(re.search(r"--dport (\d+)", t.lines[i]).group(1))
    line = t.lines[i].replace(f"--dport {port} ", f"--dport {port + 1 if port < 65535 else 1} ")
    return _plant("wrong-dispatch-port", t, _edit(t, i, [line]), expect=("KS205",), where=line)


def drop_service_portals(t: Target, rng: random.Random) -> Planted | None:
    """The jump from PREROUTING or OUTPUT into kube-proxy's nat KUBE-SERVICES is gone."""
    dispatches = _indexes(t, r"^-A KUBE-(SERVICES|NODEPORTS) .*-j KUBE-(SVC|SVL|EXT|FW)-")
    spots = _indexes(t, r"^-A (PREROUTING|OUTPUT) .*-j KUBE-SERVICES$")
    start, end = _table_range(t, "nat")
    spots = [i for i in spots if start < i < end]
    if not dispatches or not spots:
        return None
    i = rng.choice(spots)
    return _plant("drop-service-portals", t, _edit(t, i, []), expect=("KS202", "KS203", "KS205"), where=t.lines[i])


def drop_source_range(t: Target, rng: random.Random) -> Planted | None:
    """A loadBalancerSourceRanges rule disappears (where its sources would otherwise reach endpoints)."""
    serving = {s.hash for s in port_specs(t.cluster, t.node, t.family) if s.external.dnat}
    spots = []
    for i in _indexes(t, r"^-A KUBE-FW-\S+ .*-s (\S+) -j KUBE-EXT-"):
        source = t.lines[i].split(" -s ", 1)[1].split()[0]
        if "/" in source and not source.endswith(("/32", "/128")) and t.lines[i].split()[1][8:] in serving:
            spots.append(i)  # a range, not the node's own "-s <LB IP>" allowance
    if not spots:
        return None
    i = rng.choice(spots)
    return _plant("drop-source-range", t, _edit(t, i, []), expect=("KS203",), where=t.lines[i])


def missing_route(t: Target, rng: random.Random) -> Planted | None:
    lines = t.routes.split("\n")
    spots = [i for i, line in enumerate(lines) if line.startswith("route ")]
    if not spots:
        return None
    i = rng.choice(spots)
    return _plant("missing-route", t, routes_text="\n".join(lines[:i] + lines[i + 1:]), expect=("KS201",),
                  where=lines[i])


def wrong_route(t: Target, rng: random.Random) -> Planted | None:
    lines = t.routes.split("\n")
    spots = [i for i, line in enumerate(lines) if " via " in line]
    if not spots:
        return None
    i = rng.choice(spots)
    via = lines[i].split(" via ", 1)[1].split()[0]
    other = str(A(via) + 77)
    return _plant("wrong-route", t, routes_text="\n".join(lines[:i] + [lines[i].replace(via, other)] + lines[i + 1:]),
                  expect=("KS201",), where=lines[i])


FAULTS: dict[str, Callable[[Target, random.Random], Planted | None]] = {
    f.__name__.replace("_", "-"): f for f in (
        drop_sep_jump, wrong_dnat_port, wrong_dnat_address, masquerade_pod_traffic, drop_pod_traffic,
        dnat_pod_traffic, missing_reject, reject_becomes_drop, probability_unreachable, deleted_service,
        duplicate_dispatch, wrong_dispatch_port, drop_service_portals, drop_source_range, missing_route, wrong_route)
}


# --- running them -------------------------------------------------------------------------------------


def targets_of(c: ResolvedCluster, family: int = 4) -> list[Target]:
    return [Target(c, n, family, iptables.generate(c, n, family), routes.generate(c, n)) for n in c.nodes]


def run(t: Target, rules: str, route_text: str) -> dict[str, str]:
    verdicts = check_node(t.cluster, t.node, rules, f"nodes/{t.node.name}/iptables.rules", route_text,
                          f"nodes/{t.node.name}/routes.batch", PACKET_IDS, 10, t.family)
    return {v.invariant: v.status for v in verdicts}


def caught(t: Target, planted: Planted) -> tuple[bool, dict[str, str]]:
    statuses = run(t, planted.rules, planted.routes)
    return any(statuses[i] == VIOLATED for i in planted.expect), statuses


def sweep(targets: list[Target], seeds: range) -> tuple[int, int, list[str]]:
    planted_count = caught_count = 0
    misses = []
    for t in targets:
        for name, fault in FAULTS.items():
            for seed in seeds:
                planted = fault(t, random.Random(f"{name}/{t.node.name}/{seed}"))
                if planted is None:
                    continue
                planted_count += 1
                ok, statuses = caught(t, planted)
                caught_count += ok
                if not ok:
                    misses.append(f"{name} on {t.node.name}: {planted.where!r} -> {statuses}")
    return planted_count, caught_count, misses


def test_originals_verify_clean():
    for c, family in ((lab_cluster(), 4), (lab_cluster_v6(), 6)):
        for t in targets_of(c, family):
            statuses = run(t, t.rules, t.routes)
            assert set(statuses.values()) == {PROVED}, (t.node.name, statuses)


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_each_fault_is_caught_with_its_invariant(name):
    for c, family in ((lab_cluster(), 4), (lab_cluster_v6(), 6)):
        for t in targets_of(c, family):
            planted = FAULTS[name](t, random.Random(f"{name}/{t.node.name}"))
            if planted is None:
                continue
            ok, statuses = caught(t, planted)
            assert ok, f"{name} on {t.node.name} (IPv{family}) not caught: {planted.where!r} -> {statuses}"


def test_detection_rate_is_total_with_no_false_positive():
    targets = targets_of(lab_cluster()) + targets_of(lab_cluster_v6(), 6)
    false_positives = [t.node.name for t in targets if set(run(t, t.rules, t.routes).values()) != {PROVED}]
    planted, caught_count, misses = sweep(targets, range(3))
    kinds = {name for name in FAULTS}
    print(f"\nplanted {planted} faults of {len(kinds)} kinds into {len(targets)} rule sets: caught {caught_count} "
          f"({100.0 * caught_count / planted:.1f}%), false positives on the originals: {len(false_positives)}")
    assert not misses, "\n".join(misses)
    assert caught_count == planted and planted >= 100
    assert not false_positives


# --- random small valid clusters ---------------------------------------------------------------------


@st.composite
def small_clusters(draw) -> ResolvedCluster:
    """1-3 nodes, a few pods each, 1-4 services of every kind and policy, endpoints drawn from the pods."""
    n_nodes = draw(st.integers(1, 3))
    nodes = [Node(f"n{i}", (A(f"192.168.5.{10 + i}"),), (N(f"10.250.{i}.0/24"),)) for i in range(n_nodes)]
    pods: list[Pod] = []
    for i in range(n_nodes):
        for j in range(draw(st.integers(0, 3))):
            ready = draw(st.booleans()) or j == 0
            pods.append(Pod("default", f"p{i}-{j}", f"n{i}", (A(f"10.250.{i}.{10 + j}"),), ready=ready,
                            terminating=not ready and draw(st.booleans())))
    services: list[Service] = []
    endpoints: dict = {}
    for k in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
        proto = draw(st.sampled_from(["TCP", "UDP"]))
        sp = ServicePort(80 + k, proto, "p", 8080, 30100 + k if kind != "ClusterIP" else None)
        members = [p for p in pods if draw(st.booleans())]
        etp = draw(st.sampled_from(["Cluster", "Local"])) if kind != "ClusterIP" else "Cluster"
        svc = Service("default", f"s{k}", type=kind, ports=(sp,), cluster_ips=(A(f"10.96.0.{10 + k}"),),
                      external_traffic_policy=etp,
                      internal_traffic_policy=draw(st.sampled_from(["Cluster", "Local"])),
                      session_affinity=draw(st.sampled_from(["None", "ClientIP"])),
                      load_balancer_ips=(A(f"203.0.113.{10 + k}"),) if kind == "LoadBalancer" else (),
                      load_balancer_source_ranges=(N(f"198.51.{k}.0/24"),) if kind == "LoadBalancer" and
                      draw(st.booleans()) else (),
                      external_ips=(A(f"192.0.2.{10 + k}"),) if draw(st.booleans()) else (),
                      health_check_node_port=31000 + k if kind == "LoadBalancer" and etp == "Local" else None)
        backends = tuple(Backend(p.ips[0], 8080, proto, p.ready and not p.terminating, p.ready or p.terminating,
                                 p.terminating, p.node, p.key) for p in members)
        services.append(svc)
        endpoints[svc.key] = ServiceEndpoints(svc.key, (PortEndpoints(sp, backends),), "selector")
    settings = ClusterSettings(pod_cidrs=(N("10.250.0.0/16"),))
    return ResolvedCluster(settings, tuple(nodes), tuple(pods), tuple(services), endpoints)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_clusters())
def test_random_clusters_compile_and_verify_clean(c):
    for t in targets_of(c):
        statuses = run(t, t.rules, t.routes)
        assert set(statuses.values()) == {PROVED}, (t.node.name, statuses)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_clusters(), st.sampled_from(sorted(FAULTS)), st.integers(0, 2**32 - 1), st.data())
def test_a_random_fault_in_a_random_place_is_caught(c, name, seed, data):
    t = targets_of(c)[data.draw(st.integers(0, len(c.nodes) - 1))]
    planted = FAULTS[name](t, random.Random(seed))
    assume(planted is not None)
    ok, statuses = caught(t, planted)
    assert ok, f"{name} not caught: {planted.where!r} -> {statuses}"


# --- the real dump form ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def namespace():

    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    import subprocess
    import uuid

    name = f"ks-test-faults-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.mark.netns
@pytest.mark.parametrize("variant", ["nft", "legacy"])
def test_iptables_save_dumps_verify_clean_and_faults_in_them_are_caught(namespace, variant):
    """What a live node prints (canonical forms, sorted chains, counters) proves like the compiled text."""
    from test_iptables_save import save_roundtrip

    for c, family in ((lab_cluster(), 4), (lab_cluster_v6(), 6)):
        for t in targets_of(c, family):
            saved = save_roundtrip(namespace, t.rules, variant, family, counters=True)
            dumped = replace(t, rules=saved)
            statuses = run(dumped, saved, t.routes)
            assert set(statuses.values()) == {PROVED}, (variant, t.node.name, statuses)
            for name in ("wrong-dnat-port", "probability-unreachable", "deleted-service", "missing-reject"):
                planted = FAULTS[name](dumped, random.Random(name))
                if planted is not None:
                    assert caught(dumped, planted)[0], (variant, t.node.name, name, planted.where)
