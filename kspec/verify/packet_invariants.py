"""KS201-KS205: what a node's iptables rules (and routes) really do to packets.

The rule TEXT is parsed (:mod:`kspec.dataplane.iptables_save`), compiled for
the node (:class:`~kspec.verify.chains.Program`) and walked, so a compiler
bug or a hand edit on a live node is a finding. Two kinds of question:

* **about one service port** (KS202, KS203, KS204, KS205 "missing"): the
  packets to one (address, port, protocol) from a class of sources (the
  node's pods, the node itself, the outside world). The walk is exact over
  interval sets of sources and forks at every ``statistic``/``recent`` rule,
  so its leaves are *all* the outcomes, each with the exact sources that
  reach it and a non-zero probability path; comparing them with what
  kube-proxy's endpoint selection says (ready endpoints, the serving-
  terminating fallback, internal/external traffic policy, source ranges)
  decides the invariant without a solver. It only visits the rules indexed
  under that destination, so 10,000 services cost 10,000 small walks.
* **about all packets** (KS201: no pod-to-pod packet is rewritten, dropped or
  masqueraded; KS205: no rule sends packets the spec does not have into a
  service's chains): the walk keeps the packet symbolic and Z3 decides
  whether any packet reaches a bad leaf; a rule whose own match already
  pins a point the spec allows needs no solver.

Every counterexample is replayed through :func:`~kspec.verify.chains.trace_packet`
before it is shown; a violation that depends on a match kspec does not model
(``-m set``, ``physdev``...) is UNKNOWN with the reason, never PROVED.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from kspec.backends import kube_chains as kc
from kspec.dataplane import iptables_save, routes_batch
from kspec.diagnostics import register_source
from kspec.model import Backend, Node, ResolvedCluster, Service, ServicePort
from kspec.verify import chains
from kspec.verify.chains import Leaf, Packet
from kspec.verify.encode import (
    DPORT,
    DST,
    EMPTY,
    PROTO,
    SAT,
    SPORT,
    SRC,
    UNKNOWN as Z3_UNKNOWN,
    Intervals,
    PacketVars,
    conjunction,
    member,
    negation,
    universe,
)
from kspec.verify.findings import (
    SPORT_WITNESS,
    Problem,
    backend_label,
    build_verdict,
    deciding_line,
    describe_question,
    endpoint_list,
    endpoint_locations,
    opaque_reason,
    packet_values,
    pod_key,
    pod_problem,
    replay_leaf,
    service_problem,
    verb,
    witness_packet,
    witness_preferences,
)
from kspec.verify.leaf_cover import as_set, covers, leaf_holds, uncovered_cells, union_of
from kspec.verify.node_context import BRIDGE, NodeContext
from kspec.verify.node_context import node_hooks as node_hooks  # re-exported: callers take it from here
from kspec.verify.result import Verdict
from kspec.verify.routes_check import pod_routes
from kspec.verify.spans import located, suppression

PACKET_IDS = ("KS201", "KS202", "KS203", "KS204", "KS205")
SERVICE_CHAIN_PREFIXES = (kc.SVC_PREFIX, kc.SVL_PREFIX, kc.EXT_PREFIX, kc.FW_PREFIX)
# kube-proxy's own shared chains (the per-service ones are recognised by their prefixes)
KUBE_PROXY_CHAINS = frozenset({kc.KUBE_SERVICES, kc.KUBE_EXTERNAL_SERVICES, kc.KUBE_NODEPORTS, kc.KUBE_POSTROUTING,
                               kc.KUBE_MARK_MASQ, kc.KUBE_FORWARD, kc.KUBE_PROXY_FIREWALL, "KUBE-PROXY-CANARY"})


# --- the spec, as kube-proxy's endpoint selection reads it -------------------------------


@dataclass(frozen=True, slots=True)
class Expect:
    """What must happen to a packet: DNAT to one of ``endpoints`` (each reachable), or a refusal."""

    endpoints: frozenset[tuple[int, int]] = frozenset()
    refuse: str = ""  # "REJECT" | "DROP" when no endpoint may be used
    masquerade: bool | None = None  # for external sources: SNAT expected (eTP Cluster) or forbidden (Local)

    @property
    def dnat(self) -> bool:
        return not self.refuse


@dataclass(frozen=True)
class PortSpec:
    """One service port of one IP family, and what this node must do with its traffic."""

    service: Service
    port: ServicePort
    name: str  # ns/name:port, kube-proxy's ServicePortName
    proto: int
    hash: str
    cluster_ip: int
    external_ips: tuple[int, ...]
    lb_ips: tuple[int, ...]
    source_ranges: Intervals | None
    node_port: int
    hc_port: int
    has_any: bool
    internal: Expect  # pods and the node to the cluster IP
    external: Expect  # outside clients to node ports, external and load-balancer IPs
    pod_external: Expect  # pods to those external destinations (short-circuited to all endpoints)
    node_external: Expect  # the node itself to them (kube-proxy always sends it to all endpoints)
    endpoints: dict[tuple[int, int], Backend] = field(hash=False)

    @property
    def label(self) -> str:
        return f"service {self.service.namespace}/{self.service.name}"

    @property
    def port_label(self) -> str:
        return f"port {self.port.name or self.port.port}/{self.port.protocol}"


def port_specs(cluster: ResolvedCluster, node: Node, family: int) -> list[PortSpec]:
    """Every proxied service port of ``family`` with the outcomes kube-proxy's rules must have on ``node``."""
    out = []
    detector = _has_detector(cluster, node, family)
    for svc in sorted(cluster.services, key=lambda s: (s.namespace, s.name)):
        if svc.headless or svc.type == "ExternalName" or svc.external_name is not None:
            continue
        cluster_ip = next((ip for ip in svc.cluster_ips if ip.version == family), None)
        if cluster_ip is None:
            continue
        eps = cluster.endpoints.get(svc.key)
        by_port = {(pe.port.name, pe.port.protocol): pe.backends for pe in eps.ports} if eps else {}
        for port in sorted(svc.ports, key=lambda p: (p.name, p.protocol)):
            backends = [b for b in by_port.get((port.name, port.protocol), ()) if b.ip.version == family]
            out.append(_port_spec(svc, port, int(cluster_ip), backends, node.name, family, detector))
    return out


def _has_detector(cluster: ResolvedCluster, node: Node, family: int) -> bool:
    """Whether kube-proxy can tell pod traffic apart (its LocalTrafficDetector), which short-circuits
    pods' traffic to external destinations of an externalTrafficPolicy: Local service to all endpoints."""
    proxy = cluster.settings.proxy
    cidrs = node.pod_cidrs if proxy.detect_local_mode == "NodeCIDR" else cluster.settings.pod_cidrs
    return any(c.version == family for c in cidrs)


def _port_spec(svc: Service, port: ServicePort, cluster_ip: int, backends: list[Backend], node: str,
               family: int, detector: bool) -> PortSpec:
    name = kc.service_port_name(svc.namespace, svc.name, port.name)
    proto = port.protocol.lower()
    chosen: dict[tuple[int, int], Backend] = {}
    for b in backends:  # kube-proxy keeps one endpoint per ip:port, the local copy if there is one
        key = (int(b.ip), b.port)
        if key not in chosen or (b.node == node and chosen[key].node != node):
            chosen[key] = b
    eps = list(chosen.items())
    accessible = svc.type in ("NodePort", "LoadBalancer") or (svc.type == "ClusterIP" and bool(svc.external_ips))
    internal_local = svc.internal_traffic_policy == "Local"
    external_local = accessible and svc.external_traffic_policy == "Local"
    uses_cluster = not internal_local or accessible
    uses_local = internal_local or external_local

    def fallback(pool: list) -> frozenset:
        ready = frozenset(k for k, b in pool if b.ready)
        return ready or frozenset(k for k, b in pool if b.serving and b.terminating)

    cluster_eps = fallback(eps) if uses_cluster else frozenset()
    has_any = bool(cluster_eps) or (uses_local and any(b.ready or (b.serving and b.terminating) for _, b in eps))
    local_eps = fallback([(k, b) for k, b in eps if b.node == node]) if uses_local else frozenset()
    refusal = "DROP" if has_any else "REJECT"

    def policy(local: bool, masquerade: bool | None) -> Expect:
        pool = local_eps if local else cluster_eps
        if not has_any or not pool:
            return Expect(refuse=refusal)
        return Expect(pool, masquerade=masquerade)

    node_port = port.node_port or 0 if svc.type in ("NodePort", "LoadBalancer") else 0
    ranges = [c for c in svc.load_balancer_source_ranges if c.version == family]
    lb_ips = tuple(int(ip) for ip in svc.load_balancer_ips if ip.version == family) if svc.type == "LoadBalancer" \
        else ()
    hc = svc.health_check_node_port if svc.type == "LoadBalancer" and external_local else None
    return PortSpec(
        service=svc, port=port, name=name, proto=chains.protocol_number(proto),
        hash=kc.port_proto_hash(name, proto), cluster_ip=cluster_ip,
        external_ips=tuple(int(ip) for ip in svc.external_ips if ip.version == family),
        lb_ips=lb_ips, source_ranges=Intervals.of_networks(ranges) if ranges else None,
        node_port=node_port, hc_port=hc or 0, has_any=has_any,
        internal=policy(internal_local, None), external=policy(external_local, not external_local),
        pod_external=policy(external_local and not detector, None), node_external=policy(False, None),
        endpoints=dict(eps),
    )


# --- the questions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Question:
    """Packets from one class of sources to one destination, and what must happen to them."""

    invariant: str
    spec: PortSpec
    what: str  # "cluster IP", "external IP", "load-balancer IP", "nodePort"
    origin: str
    iif: str | None
    src: Intervals
    dst: int
    dport: int
    regions: tuple[tuple[Intervals, Expect], ...]
    sources: str  # "pods on node-1", "node node-1", "outside sources"


# --- the entry point ---------------------------------------------------------------------------


def check_node(cluster: ResolvedCluster, node: Node, rules_text: str, rules_name: str, routes_text: str | None,
               routes_name: str | None, ids: Sequence[str], timeout: float, family: int | None = None
               ) -> list[Verdict]:
    """Decide the requested KS2xx invariants for ``node``'s rule set (and routes); one Verdict per ID.

    ``rules_text`` is iptables-restore input or iptables-save output (IPv4
    unless it holds IPv6 addresses or ``family=6``); ``routes_text`` the node's
    ``ip -batch`` routes (None: KS201 checks the rules only). Malformed text
    raises :class:`~kspec.diagnostics.InputError` at file:line:col.
    """
    wanted = [i for i in PACKET_IDS if i in set(ids)]
    if not wanted:
        return []
    start = time.perf_counter()
    register_source(rules_name, rules_text)
    ruleset = iptables_save.parse(rules_text, rules_name, family)
    routes = None
    if routes_text is not None:
        routes_name = routes_name or "<routes>"
        register_source(routes_name, routes_text)
        routes = routes_batch.parse(routes_text, routes_name)
    ctx = NodeContext(cluster, node, ruleset, rules_name, routes, routes_name, timeout)
    specs = port_specs(cluster, node, ctx.family)
    problems: list[Problem] = []
    subjects: dict[str, list[str]] = {i: [] for i in wanted}
    checked: dict[str, int] = dict.fromkeys(wanted, 0)
    per_service = {"KS202", "KS203", "KS204", "KS205"} & set(wanted)
    if per_service:
        for spec in specs:
            for question in _questions(ctx, spec, per_service):
                if question.invariant in checked:
                    checked[question.invariant] += 1
                    subjects[question.invariant].append(spec.label)
                problems += _answer(ctx, question, "KS205" in wanted)
            if "KS205" in wanted:
                subjects["KS205"].append(spec.label)
    if "KS205" in wanted:
        entry_problems, entries = _extra_rules(ctx, specs)
        problems += entry_problems
        checked["KS205"] += entries
    if "KS201" in wanted:
        rule_problems, questions = pod_to_pod(ctx)
        route_problems, routes_checked = pod_routes(ctx)
        problems += rule_problems + route_problems
        checked["KS201"] += questions + routes_checked
    elapsed = time.perf_counter() - start
    return [build_verdict(i, [p for p in problems if p.invariant == i], checked.get(i, 0), subjects.get(i, ()),
                          elapsed / len(wanted)) for i in wanted]


# --- per service port: KS202 / KS203 / KS204 (+ KS205 missing dispatch) ----------------------------


def _questions(ctx: NodeContext, spec: PortSpec, wanted: set[str]) -> Iterable[_Question]:
    internal_id = "KS202" if spec.has_any else "KS204"
    external_id = "KS203" if spec.has_any else "KS204"
    node = ctx.node.name
    if internal_id in wanted or (spec.has_any and "KS205" in wanted):
        if ctx.own_pods:
            yield _Question(internal_id, spec, "cluster IP", "pod", BRIDGE, ctx.own_pods, spec.cluster_ip,
                            spec.port.port, ((ctx.own_pods, spec.internal),), f"pods on {node}")
        if ctx.node_ip is not None:
            src = Intervals.point(ctx.node_ip)
            yield _Question(internal_id, spec, "cluster IP", "node", None, src, spec.cluster_ip, spec.port.port,
                            ((src, spec.internal),), f"node {node}")
    if not (external_id in wanted or (spec.has_any and "KS205" in wanted)):
        return
    points = [("external IP", ip, spec.port.port) for ip in spec.external_ips]
    points += [("load-balancer IP", ip, spec.port.port) for ip in spec.lb_ips]
    if spec.node_port and ctx.node_ip is not None and _serves_node_ports(ctx, ctx.node_ip):
        points.append(("nodePort", ctx.node_ip, spec.node_port))
    sources = [("outside", None, ctx.outside, spec.external, "outside sources")]
    if ctx.own_pods:
        sources.append(("pod", BRIDGE, ctx.own_pods, spec.pod_external, f"pods on {node}"))
    if ctx.node_ip is not None:
        sources.append(("node", None, Intervals.point(ctx.node_ip), spec.node_external, f"node {node}"))
    for what, dst, dport in points:
        for origin, iif, src, expect, label in sources:
            if not src or (origin == "node" and not spec.has_any and dst not in ctx.local):
                continue  # kube-proxy refuses in INPUT/FORWARD only: the node's own packets to a remote VIP leave
            regions: tuple[tuple[Intervals, Expect], ...] = ((src, expect),)
            if what == "load-balancer IP" and spec.source_ranges is not None and spec.has_any:
                regions = tuple(r for r in ((src & spec.source_ranges, expect),
                                            (src - spec.source_ranges, Expect(refuse="DROP"))) if r[0])
            yield _Question(external_id, spec, what, origin, iif, src, dst, dport, regions, label)


def _serves_node_ports(ctx: NodeContext, address: int) -> bool:
    cidrs = [c for c in ctx.cluster.settings.proxy.nodeport_addresses if c.version == ctx.family]
    return not cidrs or any(address in Intervals.of_network(c) for c in cidrs)


def _answer(ctx: NodeContext, q: _Question, check_dispatch: bool) -> list[Problem]:
    fields = [q.src, q.dst, q.spec.proto, ctx.sports, q.dport]
    try:
        leaves = chains.explore(ctx.program, q.origin, fields, q.iif)
    except chains.TooManyPaths as exc:
        return [service_problem(ctx, q, ("paths",), f"{describe_question(ctx, q)}: {exc}", unknown=str(exc))]
    bad: list[tuple[Leaf, Intervals, tuple, str, int, Expect]] = []
    for leaf in leaves:
        src = as_set(leaf.domain(SRC))
        for region, expect in q.regions:
            part = src & region
            if part:
                found = _mismatch(ctx, leaf, expect)
                if found is not None:
                    bad.append((leaf, part, *found, expect))
    problems: list[Problem] = []
    seen: set[tuple] = set()
    for leaf, part, key, text, rule_line, expect in bad:
        if key in seen:
            continue
        problem = _leaf_problem(ctx, q, leaf, part, key, text, rule_line, expect, bad)
        if not problem.unknown:
            seen.add(key)
        problems.append(problem)
    problems += _coverage(ctx, q, leaves)
    if check_dispatch and q.spec.has_any and any(e.dnat for _, e in q.regions):
        problems += _missing_dispatch(ctx, q, leaves)
    return problems


def _mismatch(ctx: NodeContext, leaf: Leaf, expect: Expect) -> tuple[tuple, str, int] | None:
    """None when the leaf is what ``expect`` allows, else (key, what happened, the deciding rule's line)."""
    last = deciding_line(leaf)
    if leaf.verdict == "UNKNOWN":
        return ("unknown-target", last), "meets a target kspec does not model", last
    if expect.dnat:
        if leaf.dnat is not None:
            addr, port = leaf.dnat
            if type(addr) is not int or type(port) is not int:
                return ("range", last), f"is rewritten to the range {chains.dnat_text(leaf.dnat, ctx.family)}", last
            if (addr, port) not in expect.endpoints:
                target = ctx.endpoint_text((addr, port))
                return ("bad-dnat", target), f"is rewritten to {target}, which is not a usable endpoint", last
            if leaf.verdict != "ACCEPT":
                return ("refused", leaf.verdict), f"is rewritten to {ctx.endpoint_text((addr, port))} and then " \
                    f"{verb(leaf.verdict)}", last
            forwarded = addr not in ctx.local  # delivered locally (a hostNetwork endpoint): no POSTROUTING, no SNAT
            if forwarded and expect.masquerade is not None and (leaf.snat is not None) != expect.masquerade:
                if expect.masquerade:
                    return ("no-masq",), "reaches an endpoint without being masqueraded (externalTrafficPolicy " \
                        "Cluster must SNAT it)", last
                return ("masq",), f"is masqueraded ({leaf.snat}), losing the client address that " \
                    "externalTrafficPolicy Local must keep", last
            return None
        if leaf.verdict == "ACCEPT":
            return ("unchanged",), "passes without being rewritten to any endpoint (no rule dispatches it)", last
        return ("refused", leaf.verdict), f"is {verb(leaf.verdict)} instead of reaching an endpoint", last
    if leaf.dnat is not None:
        target = chains.dnat_text(leaf.dnat, ctx.family)
        return ("dnat-instead", target), f"is rewritten to {target} instead of being {verb(expect.refuse)}", last
    if leaf.verdict != expect.refuse:
        what = "passes unrejected (black-holed)" if leaf.verdict == "ACCEPT" else f"is {verb(leaf.verdict)}"
        return ("verdict", leaf.verdict), f"{what} instead of being {verb(expect.refuse)}", last
    return None


def _leaf_problem(ctx: NodeContext, q: _Question, leaf: Leaf, part: Intervals, key: tuple, text: str, line: int,
                  expect: Expect, bad: list) -> Problem:
    packet = witness_packet(ctx, q, part, leaf)
    trace_text, replay_problem = replay_leaf(ctx, q.origin, q.iif, packet, leaf)
    message = f"{describe_question(ctx, q)} {text}"
    if expect.dnat:
        message += f" (expected one of {endpoint_list(ctx, expect.endpoints)})"
    extra = [ctx.rule_location(line)] if line else []
    unknown = replay_problem
    if not unknown and leaf.verdict == "UNKNOWN":
        unknown = opaque_reason(leaf.opaque_list(), leaf)
    elif not unknown and leaf.opaque is not None:
        # certain only if, whatever the unmodelled matches answer, this packet still goes wrong
        src, sport = packet_values(ctx, packet)
        same = [b[0].opaque_list() for b in bad if b[0].verdict != "UNKNOWN"
                and src in as_set(b[0].domain(SRC)) and sport in as_set(b[0].domain(SPORT))]
        if not covers(same):
            unknown = opaque_reason(leaf.opaque_list(), leaf)
    return service_problem(ctx, q, key, message, f"{packet}: {trace_text}", extra, unknown)


def _coverage(ctx: NodeContext, q: _Question, leaves: list[Leaf]) -> list[Problem]:
    """Every endpoint a region expects must be chosen, with non-zero probability, for every source in it."""
    problems = []
    decided = [leaf for leaf in leaves if leaf.fresh and leaf.dnat is not None and leaf.verdict == "ACCEPT"]
    exact = all(leaf.opaque is None for leaf in decided) and all(
        type(leaf.domain(SPORT)) is not int and leaf.domain(SPORT) == ctx.sports for leaf in decided)
    for region, expect in q.regions:
        if not expect.dnat:
            continue
        # sources that reach no endpoint at all are the outcome findings' business, not this one's
        served = region & union_of(as_set(leaf.domain(SRC)) for leaf in decided if leaf.dnat in expect.endpoints)
        if not served:
            continue
        for endpoint in sorted(expect.endpoints):
            reach = [leaf for leaf in decided if leaf.dnat == endpoint]
            if exact:
                missing = served - union_of(as_set(leaf.domain(SRC)) for leaf in reach)
                undecided = EMPTY
            else:
                missing, undecided = uncovered_cells(ctx, served, reach)
            if not missing and not undecided:
                continue
            problems.append(_unreachable(ctx, q, decided, endpoint, missing or undecided, not missing))
    return problems


def _unreachable(ctx: NodeContext, q: _Question, decided: list[Leaf], endpoint: tuple[int, int], sources: Intervals,
                 maybe: bool) -> Problem:
    backend = q.spec.endpoints.get(endpoint)
    witness_src = sources.pick(ctx.pod_ips if q.origin == "pod" else ctx.outside_witnesses)
    packet = Packet(chains.protocol_name(q.spec.proto), ctx.addr(witness_src), SPORT_WITNESS, ctx.addr(q.dst),
                    q.dport)
    owner = f" ({backend_label(backend)})" if backend is not None else ""
    message = (f"{describe_question(ctx, q)}: endpoint {ctx.endpoint_text(endpoint)}{owner} can never be chosen "
               f"for a new connection")
    witness = f"{packet}: the rules choose only {_chosen_summary(ctx, decided, witness_src)}"
    unknown = ""
    if maybe:
        opaque = [o for leaf in decided for o in leaf.opaque_list()]
        unknown = opaque_reason(opaque, decided[0]) if opaque else "unmodelled matches decide it"
    return service_problem(ctx, q, ("unreachable", endpoint), message, witness, endpoint_locations(ctx, backend),
                           unknown)


def _chosen_summary(ctx: NodeContext, leaves: list[Leaf], src: int) -> str:
    chosen: dict[tuple, float] = {}
    lines: dict[tuple, int] = {}
    for leaf in leaves:
        if src in as_set(leaf.domain(SRC)):
            chosen[leaf.dnat] = chosen.get(leaf.dnat, 0.0) + leaf.prob
            lines.setdefault(leaf.dnat, _choice_line(leaf))
    if not chosen:
        return "no endpoint at all"
    return ", ".join(f"{chains.dnat_text(d, ctx.family)} (p={p:.3f}, line {lines[d]})"
                     for d, p in sorted(chosen.items(), key=lambda kv: kv[0]))


def _choice_line(leaf: Leaf) -> int:
    """The rule that chose the endpoint: the last jump into a KUBE-SEP chain, else the DNAT itself."""
    steps = leaf.step_list()
    return next((s.line for s in reversed(steps) if s.action.startswith(f"-> {kc.SEP_PREFIX}")),
                deciding_line(leaf))


def _missing_dispatch(ctx: NodeContext, q: _Question, leaves: list[Leaf]) -> list[Problem]:
    """KS205: packets of a spec service port must enter that port's chains (KUBE-SVC/SVL/EXT/FW-<hash>)."""
    mine = tuple(prefix + q.spec.hash for prefix in SERVICE_CHAIN_PREFIXES)
    for leaf in leaves:
        if any(step.chain in mine or step.action.startswith(tuple(f"-> {c}" for c in mine))
               for step in leaf.step_list()):
            return []
    table_chain = "KUBE-NODEPORTS" if q.what == "nodePort" else "KUBE-SERVICES"
    expected = (kc.SVC_PREFIX if q.what == "cluster IP" else kc.EXT_PREFIX) + q.spec.hash
    message = (f"no rule dispatches {ctx.point_text(q.spec.proto, q.dst, q.dport)} ({q.spec.label} "
               f"{q.spec.port_label} {q.what}): its packets never reach {expected}")
    witness = f"expected in nat {table_chain}: a rule matching {ctx.point_text(q.spec.proto, q.dst, q.dport)} " \
              f"that jumps to a {q.spec.name} chain"
    problem = service_problem(ctx, q, ("missing",), message, witness)
    problem.invariant = "KS205"
    problem.key = ("KS205", q.spec.name, q.spec.proto, q.what, "missing")
    problem.suppressed = suppression(q.spec.service.annotations, "KS205")
    return [problem]


# --- KS205: no rule sends packets the spec does not have into a service's chains -------------------


Box = tuple  # (dst Intervals, proto Intervals, dport Intervals)


def _point(dst: int, proto: int, port: int) -> Box:
    return (Intervals.point(dst), Intervals.point(proto), Intervals.point(port))


def _allowed_boxes(ctx: NodeContext, specs: list[PortSpec]) -> tuple[dict[str, list[Box]], dict[str, list[Box]]]:
    """Per chain hash, the packets its dispatch may send there; per kube filter chain, what it may refuse."""
    everywhere = universe(DST, ctx.family)
    by_chain: dict[str, list[Box]] = {}
    refusals: dict[str, list[Box]] = defaultdict(list)
    for spec in specs:
        cluster_ip = _point(spec.cluster_ip, spec.proto, spec.port.port)
        outside = [_point(ip, spec.proto, spec.port.port) for ip in spec.external_ips + spec.lb_ips]
        lb = [_point(ip, spec.proto, spec.port.port) for ip in spec.lb_ips]
        node_port = [(everywhere, Intervals.point(spec.proto), Intervals.point(spec.node_port))] if spec.node_port \
            else []
        by_chain[kc.SVC_PREFIX + spec.hash] = [cluster_ip]
        by_chain[kc.SVL_PREFIX + spec.hash] = [cluster_ip]
        by_chain[kc.EXT_PREFIX + spec.hash] = outside + node_port
        by_chain[kc.FW_PREFIX + spec.hash] = lb
        refusals[kc.KUBE_SERVICES].append(cluster_ip)
        refusals[kc.KUBE_EXTERNAL_SERVICES].extend(outside + node_port)
        refusals[kc.KUBE_PROXY_FIREWALL].extend(lb)
        if spec.hc_port:
            refusals[kc.KUBE_NODEPORTS].append((everywhere, Intervals.point(6), Intervals.point(spec.hc_port)))
    return by_chain, refusals


def _spec_of_chain(specs: list[PortSpec]) -> dict[str, PortSpec]:
    return {prefix + s.hash: s for s in specs for prefix in SERVICE_CHAIN_PREFIXES}


def _extra_rules(ctx: NodeContext, specs: list[PortSpec]) -> tuple[list[Problem], int]:
    by_chain, refusals = _allowed_boxes(ctx, specs)
    owners = _spec_of_chain(specs)
    problems = []
    entries = 0
    for (table, name), chain in sorted(ctx.program.chains.items()):
        if name.startswith(SERVICE_CHAIN_PREFIXES + (kc.SEP_PREFIX,)):
            continue
        for cr in chain.rules:
            allowed, role = _entry(cr, table, name, by_chain, refusals)
            if role is None:
                continue
            entries += 1
            box = _box(ctx, cr)
            if box is None or any(_box_within(box, a) for a in allowed):
                continue
            problems += _extra_rule(ctx, cr, box, allowed, role, owners)
    return problems, entries


def _entry(cr: chains.CRule, table: str, chain: str, by_chain: dict, refusals: dict) -> tuple[list[Box], str | None]:
    """Whether a rule is a dispatch into service-specific handling, and what it may match if so."""
    if cr.kind in (chains.JUMP, chains.GOTO) and cr.arg.startswith(SERVICE_CHAIN_PREFIXES + (kc.SEP_PREFIX,)):
        return by_chain.get(cr.arg, []), f"jumps to {cr.arg}"
    if chain not in KUBE_PROXY_CHAINS:
        return [], None  # kubelet's, a CNI's (KUBE-HOSTPORTS...) or anyone else's: not the service map
    if cr.kind == chains.DNAT and table == "nat":
        return [], f"rewrites to {cr.action[5:]}"
    if table == "filter" and chain in refusals and cr.kind in (chains.REJECT, chains.DROP, chains.ACCEPT) and \
            any(a[0] == chains.SET and a[1] in (DST, chains.DPORT) and not a[3] for a in cr.atoms):
        return refusals[chain], f"{cr.action.lower()}s packets in filter {chain}"
    return [], None


def _box(ctx: NodeContext, cr: chains.CRule) -> Box | None:
    """The (destination, protocol, port) packets a rule can match, ignoring its other conditions; None if none."""
    family = ctx.family
    fields = {DST: universe(DST, family), PROTO: universe(PROTO, family), DPORT: universe(DPORT, family)}
    for atom in cr.atoms:
        if atom[0] == chains.CONST and not atom[1]:
            return None
        if atom[0] != chains.SET or atom[1] not in fields:
            continue
        fields[atom[1]] = fields[atom[1]] - atom[2] if atom[3] else fields[atom[1]] & atom[2]
    if not all(fields.values()):
        return None
    return (fields[DST], fields[PROTO], fields[DPORT])


def _box_within(box: Box, allowed: Box) -> bool:
    return all(part.issubset(limit) for part, limit in zip(box, allowed))


def _extra_rule(ctx: NodeContext, cr: chains.CRule, box: Box, allowed: list[Box], role: str,
                owners: dict[str, PortSpec]) -> list[Problem]:
    packet = PacketVars.make(ctx.family)
    formulas = []
    for atom in cr.atoms:
        if atom[0] == chains.SET:
            term = member(packet.fields[atom[1]], atom[2])
            formulas.append(term if not atom[3] else negation(term))
    for dst, proto, dport in allowed:
        formulas.append(negation(conjunction([member(packet.fields[DST], dst), member(packet.fields[PROTO], proto),
                                   member(packet.fields[DPORT], dport)])))
    answer = ctx.solver.check(packet, formulas)
    location = ctx.rule_location(cr.line)
    owner = owners.get(cr.arg) if isinstance(cr.arg, str) else None
    subject = owner.label if owner is not None else f"rule {ctx.rules_name}:{cr.line}"
    key = ("KS205", "extra", cr.line)
    if answer.status == Z3_UNKNOWN:
        return [Problem("KS205", key, f"rule at line {cr.line} ({role}) could not be checked: {answer.reason}",
                         (location,), subject=subject, unknown=answer.reason)]
    if answer.status != SAT:
        return []
    values = answer.values
    what = ctx.point_text(values[PROTO], values[DST], values[DPORT])
    if cr.kind in (chains.JUMP, chains.GOTO) and cr.arg.startswith(kc.SEP_PREFIX):
        detail = "kube-proxy only reaches KUBE-SEP chains from a service's own chains"
    elif owner is not None:
        allowed_text = ", ".join(ctx.point_text(p.first(), d.first(), q.first()) if d.count() == 1 else
                                 f"{chains.protocol_name(p.first()).upper()} nodePort {q.first()}"
                                 for d, p, q in allowed) or "nothing"
        detail = f"{cr.arg} belongs to {owner.label} {owner.port_label}, whose packets are {allowed_text}"
    elif cr.kind in (chains.JUMP, chains.GOTO):
        detail = f"no service port of the spec has the chain {cr.arg} (a deleted service?)"
    elif cr.kind == chains.DNAT:
        detail = "no service port of the spec is dispatched by a DNAT in a shared kube-proxy chain"
    else:
        detail = "the spec has no service port with that address, port and protocol"
    message = f"rule at line {cr.line} {role}, matching {what}, which the spec does not map there: {detail}"
    opaque = any(a[0] == chains.OPAQUE for a in cr.atoms)
    unknown = f"rule line {cr.line} also has a match kspec does not model" if opaque else ""
    locations = (location,)
    if owner is not None:
        locations += (located(owner.service.origin, owner.label, "service.ports"),)
    suppressed = suppression(owner.service.annotations, "KS205") if owner is not None else None
    return [Problem("KS205", key, message, locations, f"{what} matches: {cr.rule.text}", subject, unknown,
                    suppressed)]


# --- KS201: pod to pod, unchanged, over the whole pod network --------------------------------------


def pod_to_pod(ctx: NodeContext) -> tuple[list[Problem], int]:
    """No pod-to-pod packet through this node is DNATed, SNATed/masqueraded, dropped or rejected.

    Shared by the iptables- and IPVS-mode checkers. A pod's packets to its own
    address never reach the node (they stay in the pod), so a hairpin
    masquerade (IPVS mode's KUBE-LOOP-BACK) for endpoint -> itself is no finding.
    """
    family = ctx.family
    remote = ctx.pod_net - ctx.own_pods
    runs = [("pods on this node", ctx.own_pods, ctx.pod_net, BRIDGE),
            ("pods on other nodes", remote, ctx.own_pods, None)]
    problems: list[Problem] = []
    questions = 0
    packet = PacketVars.make(family)
    for label, src, dst, iif in runs:
        if not src or not dst:
            continue
        questions += 1
        fields = [src, dst, universe(PROTO, family), universe(SPORT, family), universe(DPORT, family)]
        try:
            leaves = chains.explore(ctx.program, "pod", fields, iif, symbolic=True)
        except chains.TooManyPaths as exc:
            problems.append(Problem("KS201", ("KS201", "paths", label), f"pod-to-pod traffic from {label}: {exc}",
                                    unknown=str(exc), subject=f"node {ctx.node.name}"))
            continue
        bad = [leaf for leaf in leaves if not (leaf.verdict == "ACCEPT" and leaf.dnat is None and leaf.snat is None)]
        shown: set[tuple] = set()
        for leaf in bad:
            key = pod_key(ctx, leaf)
            if key in shown:
                continue
            base = [member(packet.fields[SRC], src), member(packet.fields[DST], dst),
                    packet.fields[SRC] != packet.fields[DST]] + chains.leaf_formula(leaf, packet)
            answer = ctx.solver.check(packet, base)
            if answer.status == SAT:
                for preferred in witness_preferences(ctx, packet):
                    nicer = ctx.solver.check(packet, base + preferred)
                    if nicer.status == SAT:
                        answer = nicer
                        break
            if answer.status == Z3_UNKNOWN:
                problems.append(Problem("KS201", ("KS201", "unknown", label, deciding_line(leaf)),
                                        f"pod-to-pod traffic from {label} could not be decided: {answer.reason}",
                                        subject=f"node {ctx.node.name}", unknown=answer.reason))
                continue
            if answer.status == SAT:
                problem = pod_problem(ctx, label, iif, answer.values, leaf)
                if not problem.unknown and (leaf.opaque is not None or leaf.verdict == "UNKNOWN"):
                    # certain only if the packet goes wrong whatever the unmodelled matches answer
                    same = [b.opaque_list() for b in bad if b.verdict != "UNKNOWN" and leaf_holds(b, answer.values)]
                    if leaf.verdict == "UNKNOWN" or not covers(same):
                        problem.unknown = opaque_reason(leaf.opaque_list(), leaf)
                problems.append(problem)
                if not problem.unknown:
                    shown.add(key)
    return problems, questions


