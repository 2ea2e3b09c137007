"""KS201-KS205 for kube-proxy's IPVS mode: what a node's iptables rules, IPVS table and ipsets do to packets.

In IPVS mode kube-proxy's load balancing is the kernel's IPVS table; iptables
only marks for masquerade, filters and accepts, deciding almost everything
with ipsets. So a node's rule set is three texts (plus its routes), and a
packet for a service is proved over all of them:

* the iptables part is walked by the verifier's own walker
  (:mod:`kspec.verify.chains`) with every ``-m set --match-set`` decided
  from the node's ipsets (exactly: interval sets of sources are split by the
  members) and ``--physdev-is-in`` from where the packet enters;
* IPVS takes the packet where the kernel has it -- after filter INPUT for a
  packet to a local address (a service address is bound to kube-ipvs0; the
  members of KUBE-IPVS-IPS are those addresses), after nat OUTPUT for one
  the node sends -- if (protocol, destination, port) is a virtual service:
  every real server of weight > 0 is a possible rewrite (the scheduler
  decides, so "every live endpoint can be chosen" means "every endpoint is
  a real server of weight > 0"), and the rewritten packet leaves through
  filter OUTPUT and nat POSTROUTING (masquerade);
* a virtual service with no real server of weight > 0 refuses the packet:
  the kernel's ip_vs_leave answers ICMP port unreachable (also for a
  persistent service: ip_vs_sched_persist reports "no dest" as ignored=0,
  i.e. "ICMP and NF_DROP"), so KS204 holds in IPVS mode when the virtual
  service exists and has no real server. kube-proxy keeps such a virtual
  server (it never adds a REJECT rule in IPVS mode); KUBE-IPVS-FILTER only
  rejects NEW packets to a service address on a port that is no service's.

Expectations follow kube-proxy's IPVS proxier (see :func:`plan_node`), which
differs from iptables mode where a Local policy has no local endpoint: it
sends the traffic to the cluster-wide endpoints (PR 97081) instead of
dropping it (and for internalTrafficPolicy Local on a port nothing outside
reaches there are none, so the virtual server refuses).

KS205 compares the table and the sets with the spec line by line: every
virtual server present with its scheduler and persistence, none extra, real
servers exactly the endpoints (NAT, right port; weight-0 leftovers of
kube-proxy's graceful termination are allowed), every ipset member of
kube-proxy's catalogue present and none extra. KS201 is the iptables-mode
proof (rules + routes) over the IPVS-mode rules, the sets decided.

Every counterexample is replayed through :func:`~kspec.verify.chains.trace_packet`;
what kspec cannot decide is UNKNOWN with the reason, never PROVED.
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

from kspec.backends import ipvs as names
from kspec.backends import kube_chains as kc
from kspec.dataplane import ipset_save, ipvs_save, iptables_save, routes_batch
from kspec.diagnostics import Span, register_source
from kspec.model import Backend, IPAddress, IPNetwork, Node, ResolvedCluster, Service, ServicePort
from kspec.verify import chains
from kspec.verify import packet_invariants as pi
from kspec.verify.chains import Leaf, Membership, Program
from kspec.verify.encode import (
    DPORT,
    DST,
    EMPTY,
    PROTO,
    SPORT,
    SRC,
    Intervals,
)
from kspec.verify.findings import (
    SPORT_WITNESS,
    Problem,
    backend_label,
    build_verdict,
    describe_question,
    endpoint_list,
    endpoint_locations,
    opaque_reason,
    packet_values,
    service_problem,
    verb,
    witness_packet,
    witness_text,
)
from kspec.verify.leaf_cover import as_set, covers, uncovered_cells, union_of
from kspec.verify.node_context import BRIDGE, NodeContext, node_hooks
from kspec.verify.packet_invariants import Expect, pod_to_pod
from kspec.verify.routes_check import pod_routes
from kspec.verify.result import Location, Verdict
from kspec.verify.spans import located, suppression

PACKET_IDS = pi.PACKET_IDS
PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
IPVS_PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}
PORT_PROTOCOLS = Intervals((p, p) for p in ipset_save.PORT_PROTOCOLS.values())  # what a port set can match
DEFAULT_SCHEDULER = "rr"

Endpoint = tuple[int, int]  # (address, port)
HINTS = {  # the catalogue's fixes speak of iptables chains; these name what IPVS mode has instead
    "KS202": "recompile and reload the node's IPVS table and ipsets; the witness names the rule, virtual server "
             "or real server line at fault",
    "KS203": "recompile and reload the node's IPVS table and ipsets; the witness names the rule, virtual server "
             "or real server line at fault",
    "KS204": "keep the service's virtual server without real servers (IPVS then answers ICMP port unreachable), "
             "or give the service endpoints",
    "KS205": "recompile and reload the node's IPVS table (ipvsadm-restore) and ipsets (ipset restore)",
}


# --- what kube-proxy must program on this node, from the spec ----------------------------------


@dataclass(frozen=True)
class Target:
    """One virtual server of a service port on this node."""

    what: str  # "cluster IP" | "external IP" | "load-balancer IP" | "nodePort"
    addr: int
    port: int
    servers: frozenset[Endpoint]


@dataclass(frozen=True)
class PortPlan:
    """One service port of one family: its virtual servers and real servers on this node."""

    service: Service
    port: ServicePort
    name: str  # ns/name:port
    proto: int
    proto_name: str  # tcp | udp | sctp
    family: int
    cluster_ip: int
    scheduler: str
    persistence: int | None
    targets: tuple[Target, ...]
    internal: frozenset[Endpoint]
    external: frozenset[Endpoint]
    external_local: bool
    has_any: bool  # a usable endpoint exists somewhere in the cluster
    source_ranges: Intervals | None
    node_in_ranges: bool
    endpoints: dict[Endpoint, Backend] = field(hash=False)

    @property
    def label(self) -> str:
        return f"service {self.service.namespace}/{self.service.name}"

    @property
    def port_label(self) -> str:
        return f"port {self.port.name or self.port.port}/{self.port.protocol}"


@dataclass(frozen=True)
class SetMember:
    text: str  # as ``ipset save`` prints it
    owner: PortPlan | None


@dataclass
class NodePlan:
    family: int
    ports: list[PortPlan]
    servers: dict[tuple[int, int, int], tuple[PortPlan, Target]]  # (proto, addr, port)
    sets: dict[str, dict[tuple, SetMember]]  # kernel set name -> entry key -> member
    bound: set[int]  # addresses on kube-ipvs0


def set_names(family: int) -> dict[str, str]:
    """kube-proxy's catalogue name -> the kernel name of that set for ``family``."""
    return {info.name: names.set_name(info.name, family) for info in names.IPSETS}


def plan_node(cluster: ResolvedCluster, node: Node, family: int) -> NodePlan:
    """What kube-proxy's IPVS proxier programs on ``node`` for ``family``, read from the spec.

    The verifier's own reading of pkg/proxy/ipvs/proxier.go (syncProxyRules,
    syncEndpoint) and CategorizeEndpoints, kept apart from
    :mod:`kspec.backends.ipvs` on purpose, so a compiler bug is a KS205
    finding, not a tautology. Per service port (headless and ExternalName
    services have none): a virtual server on the cluster IP with the internal
    real servers, and on every external IP, load-balancer IP and node-port
    address with the external ones; scheduler the service's, else the
    cluster's, else rr; ``-p TIMEOUT`` for sessionAffinity ClientIP; and the
    ipset members kube-proxy adds for it, keyed like ipset_save's entries.
    Where two ports claim one virtual server the first in (namespace, name)
    order keeps it, as the compiler does.
    """
    kernel = set_names(family)
    result = NodePlan(family, [], {}, {kernel[n]: {} for n in kernel}, set())
    port_ips = node_port_addresses(node, cluster.settings.proxy.nodeport_addresses, family)
    node_addresses = {ip for ip in node.ips}
    node_ip = next((ip for ip in node.ips if ip.version == family), None)
    for svc in sorted(cluster.services, key=lambda s: s.key):
        if svc.headless or svc.type == "ExternalName" or svc.external_name is not None:
            continue
        cluster_ip = next((ip for ip in svc.cluster_ips if ip.version == family), None)
        if cluster_ip is None:
            continue
        eps = cluster.endpoints.get(svc.key)
        by_port = {(pe.port.name, pe.port.protocol): pe.backends for pe in eps.ports} if eps else {}
        for port in svc.ports:
            backends = [b for b in by_port.get((port.name, port.protocol), ()) if b.ip.version == family]
            _add_port(cluster, node, svc, port, cluster_ip, backends, port_ips, node_addresses, node_ip, kernel,
                      result)
    return result


def _add_port(cluster: ResolvedCluster, node: Node, svc: Service, port: ServicePort, cluster_ip: IPAddress,
              backends: list[Backend], port_ips: tuple[IPAddress, ...], node_addresses: set, node_ip,
              kernel: dict[str, str], out: NodePlan) -> None:
    family = out.family
    proto_name = port.protocol.lower()
    proto = PROTOCOLS[port.protocol]
    external_ips = sorted({ip for ip in svc.external_ips if ip.version == family}, key=int)
    lb_ips = sorted({ip for ip in svc.load_balancer_ips if ip.version == family}, key=int)
    ranges = [n for n in svc.load_balancer_source_ranges if n.version == family]
    accessible_service = svc.type in ("NodePort", "LoadBalancer") or (svc.type == "ClusterIP" and bool(svc.external_ips))
    external_local = accessible_service and svc.external_traffic_policy == "Local"
    internal_local = svc.internal_traffic_policy == "Local"
    accessible = bool(port.node_port or external_ips or lb_ips)
    endpoints, internal, external, has_any = select_endpoints(backends, node.name, internal_local, external_local,
                                                              accessible)
    scheduler = svc.ipvs_scheduler or cluster.settings.proxy.ipvs_scheduler or DEFAULT_SCHEDULER
    persistence = svc.affinity_timeout if svc.session_affinity == "ClientIP" else None
    targets = [Target("cluster IP", int(cluster_ip), port.port, internal)]
    targets += [Target("external IP", int(ip), port.port, external) for ip in external_ips]
    targets += [Target("load-balancer IP", int(ip), port.port, external) for ip in lb_ips]
    skip_node_ports = bool(port.node_port) and not port_ips
    if port.node_port and port_ips:
        targets += [Target("nodePort", int(ip), port.node_port, external) for ip in port_ips]
    spec = PortPlan(
        service=svc, port=port, name=kc.service_port_name(svc.namespace, svc.name, port.name), proto=proto,
        proto_name=proto_name, family=family, cluster_ip=int(cluster_ip), scheduler=scheduler,
        persistence=persistence, targets=tuple(targets), internal=internal, external=external,
        external_local=external_local, has_any=has_any,
        source_ranges=Intervals.of_networks(ranges) if ranges else None,
        node_in_ranges=node_ip is not None and any(node_ip in n for n in ranges), endpoints=endpoints)
    out.ports.append(spec)
    for target in targets:
        out.servers.setdefault((proto, target.addr, target.port), (spec, target))

    def add(catalogue: str, key: tuple, text: str) -> None:
        out.sets[kernel[catalogue]].setdefault(key, SetMember(text, spec))

    def bind(ip: IPAddress) -> None:  # kube-ipvs0 holds it, and KUBE-IPVS-IPS lists it
        out.bound.add(int(ip))
        add(names.IPVS_IPS, (int(ip),), str(ip))

    def ip_port(ip: IPAddress, number: int) -> tuple[tuple, str]:
        return (int(ip), (proto, number)), f"{ip},{proto_name}:{number}"

    for b in backends:  # hairpin: every endpoint on this node, whatever its condition
        if b.node == node.name and b.port:
            add(names.LOOP_BACK, (int(b.ip), (proto, b.port), int(b.ip)), f"{b.ip},{proto_name}:{b.port},{b.ip}")
    add(names.CLUSTER_IP, *ip_port(cluster_ip, port.port))
    bind(cluster_ip)
    for ip in external_ips:
        add(names.EXTERNAL_IP_LOCAL if external_local else names.EXTERNAL_IP, *ip_port(ip, port.port))
        if ip not in node_addresses:
            bind(ip)
    for ip in lb_ips:
        key, text = ip_port(ip, port.port)
        add(names.LOAD_BALANCER, key, text)
        if external_local:
            add(names.LOAD_BALANCER_LOCAL, key, text)
        if ranges:
            add(names.LOAD_BALANCER_FW, key, text)
            for net in ranges:
                add(names.LOAD_BALANCER_SOURCE_CIDR, key + ((int(net.network_address), net.prefixlen),),
                    f"{text},{_net_text(net)}")
            if spec.node_in_ranges:
                add(names.LOAD_BALANCER_SOURCE_IP, key + (int(ip),), f"{text},{ip}")
        if ip not in node_addresses:
            bind(ip)
    if skip_node_ports:
        return  # kube-proxy skips the rest of the port (health check included) without node-port addresses
    if port.node_port:
        plain, local = {"TCP": (names.NODE_PORT_TCP, names.NODE_PORT_LOCAL_TCP),
                        "UDP": (names.NODE_PORT_UDP, names.NODE_PORT_LOCAL_UDP),
                        "SCTP": (names.NODE_PORT_SCTP, names.NODE_PORT_LOCAL_SCTP)}[port.protocol]
        for catalogue in (plain, local) if external_local else (plain,):
            if port.protocol == "SCTP":
                for ip in port_ips:
                    add(catalogue, *ip_port(ip, port.node_port))
            else:
                add(catalogue, (port.node_port,), str(port.node_port))
    if svc.type == "LoadBalancer" and external_local and svc.health_check_node_port:
        hc = svc.health_check_node_port
        add(names.HEALTH_CHECK_NODE_PORT, (hc,), str(hc))


def select_endpoints(backends: Iterable[Backend], node: str, internal_local: bool, external_local: bool,
                     accessible: bool) -> tuple[dict[Endpoint, Backend], frozenset, frozenset, bool]:
    """(endpoints by ip:port, internal real servers, external real servers, any usable endpoint anywhere).

    kube-proxy's selection: the ready endpoints, else the serving-and-terminating
    ones; for a Local policy this node's own (ready, else serving-and-terminating)
    and, when the node has none, the cluster ones (syncEndpoint's fallback, PR
    97081), which are empty for internalTrafficPolicy Local on a port nothing
    outside the cluster reaches (CategorizeEndpoints computes them only when some
    traffic uses the Cluster policy).
    """
    unique: dict[Endpoint, Backend] = {}
    for b in backends:  # one endpoint per ip:port, the copy on this node if there is one
        key = (int(b.ip), b.port)
        if key not in unique or (b.node == node and unique[key].node != node):
            unique[key] = b

    def usable(pool: list[tuple[Endpoint, Backend]]) -> frozenset[Endpoint]:
        ready = frozenset(k for k, b in pool if b.ready)
        return ready or frozenset(k for k, b in pool if b.serving and b.terminating)

    pool = list(unique.items())
    uses_cluster = not internal_local or accessible
    uses_local = internal_local or (external_local and accessible)
    cluster_eps = usable(pool) if uses_cluster else frozenset()
    local_eps = usable([(k, b) for k, b in pool if b.node == node]) if uses_local else frozenset()
    has_any = bool(cluster_eps) or (uses_local and any(b.ready or (b.serving and b.terminating) for _, b in pool))
    internal = local_eps if internal_local and local_eps else cluster_eps
    external = local_eps if external_local and local_eps else cluster_eps
    return unique, internal, external, has_any


def node_port_addresses(node: Node, cidrs: tuple[IPNetwork, ...], family: int) -> tuple[IPAddress, ...]:
    """The node addresses with node-port virtual servers (``--nodeport-addresses``; none given: all)."""
    ips = [ip for ip in node.ips if ip.version == family]
    mine = [n for n in cidrs if n.version == family]
    if not mine or any(n.prefixlen == 0 for n in mine):
        chosen = [ip for ip in ips if not ip.is_loopback and not (ip.version == 6 and ip.is_link_local)]
    else:
        chosen = [ip for ip in ips if not ip.is_loopback and any(ip in n for n in mine)]
    return tuple(sorted(set(chosen), key=int))


def _net_text(net: IPNetwork) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def endpoint_text(key: Endpoint, family: int) -> str:
    host = str(ipaddress.ip_address(key[0]) if family == 4 else ipaddress.IPv6Address(key[0]))
    return f"[{host}]:{key[1]}" if family == 6 else f"{host}:{key[1]}"


# --- the dumps, as the walker reads them --------------------------------------------------------


def walker_table(table: ipvs_save.IpvsTable, family: int) -> chains.IpvsTable:
    """The virtual services of ``family`` (firewall-mark services aside) with their NAT real servers;
    a direct-routing or tunnelled real server never rewrites the destination, so it is left out."""
    servers = []
    number = _Addresses()
    for vs in table.services:
        if vs.ip is None or vs.family != family or vs.protocol not in IPVS_PROTOCOLS:
            continue
        real = tuple(chains.RealServer(number(rs.ip), rs.port, rs.weight, rs.line, rs.text)
                     for rs in vs.real_servers if rs.method == "masq")
        servers.append(chains.VirtualServer(IPVS_PROTOCOLS[vs.protocol], number(vs.ip), vs.port, vs.line, vs.text,
                                            real))
    return chains.IpvsTable(servers, table.name)


class _Addresses(dict):
    """Address text -> number, remembered (an endpoint is a real server of many virtual servers)."""

    def __call__(self, text: str) -> int:
        value = self.get(text)
        if value is None:
            value = self[text] = int(ipaddress.ip_address(text))
        return value


class SetResolver:
    """``--match-set NAME DIRS`` -> :class:`~kspec.verify.chains.Membership`, from an ``ipset save`` dump.

    A reason instead (the match stays opaque, so a proof through it is UNKNOWN) for a set the
    dump lacks, a dimension kspec does not model (mac, mark, iface, list:set),
    ``nomatch`` entries or portless protocols; fewer directions than the set has
    dimensions, or a set of the other family, never match, as in the kernel.
    """

    def __init__(self, sets: ipset_save.IpSets, family: int) -> None:
        self.sets = sets
        self.family = family
        self._cache: dict[tuple[str, tuple[str, ...]], Membership | str] = {}

    def __call__(self, name: str, directions: tuple[str, ...]) -> Membership | str:
        key = (name, directions)
        if key not in self._cache:
            ipset = self.sets.sets.get(name)
            self._cache[key] = f"{self.sets.name} has no set {name}" if ipset is None else \
                membership(ipset, directions, self.family)
        return self._cache[key]


    def explain(self, reason: str) -> str:
        """An undecided outcome's reason, with why the set match it names could not be decided."""
        found = _SET_MATCH.search(reason)
        if found is None:
            return reason
        why = self(found.group(1), tuple(found.group(2).split(",")))
        return reason if isinstance(why, Membership) else f"{reason} ({why})"


_SET_MATCH = re.compile(r"--match-set (\S+) (\S+?)\)")


def membership(ipset: ipset_save.IpSet, directions: Sequence[str], family: int) -> Membership | str:
    """The set as a Membership, or why kspec cannot decide it."""
    dims = ipset.dimensions
    if any(d not in ("src", "dst") for d in directions):
        return f"direction flags {','.join(directions)} are not src/dst"
    if len(directions) < len(dims) or (ipset.family is not None and ipset.family != family):
        return Membership((DST,), ())
    if any(e.nomatch for e in ipset.entries):
        return f"set {ipset.name} has nomatch entries"
    if any(d not in ("ip", "net", "port") for d in dims):
        return f"kspec does not model {ipset.type} sets"
    bits = 32 if family == 4 else 128
    netmask = ipset.option("netmask")
    fields: list[int] = []
    for dim, direction in zip(dims, directions):
        address, port = (SRC, SPORT) if direction == "src" else (DST, DPORT)
        fields += [address] if dim in ("ip", "net") else [PROTO, port]
    bitmap = ipset.type.startswith("bitmap:")
    members: list[list[Intervals]] = []
    for entry in ipset.entries:
        parts: list[Intervals] = []
        for dim, value in zip(dims, entry.key):
            if dim == "ip":
                size = 1 << (bits - int(netmask)) if netmask is not None else 1
                parts.append(Intervals.span(value, value + size - 1))
            elif dim == "net":
                network, length = value
                parts.append(Intervals.span(network, network + (1 << (bits - length)) - 1))
            elif bitmap:
                parts += [PORT_PROTOCOLS, Intervals.point(value)]
            else:
                proto, number = value
                if not isinstance(number, int):
                    return f"set {ipset.name} has an {number} entry of a portless protocol"
                parts += [Intervals.point(proto), Intervals.point(number)]
        members.append(parts)
    if len(dims) == 1 and members:  # one dimension: the members are one product of unions
        members = [[Intervals(span for m in members for span in m[k].spans) for k in range(len(fields))]]
    return Membership(fields, members)


class _Text:
    """Line widths of a dump, for spans that cover the whole offending line."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self._text = text
        self._lines: list[str] | None = None

    def location(self, line: int, label: str) -> Location:
        if self._lines is None:
            self._lines = self._text.split("\n")
        width = len(self._lines[line - 1].rstrip("\r")) + 1 if 0 < line <= len(self._lines) else 2
        return Location(Span(self.name, max(1, line), 1, max(1, line), max(2, width)), f"{label} at {self.name}:{line}")


@dataclass
class _Node:
    """One node's verification context: the iptables-mode context with the IPVS-aware walker, and the dumps."""

    ctx: NodeContext
    plan: NodePlan
    table: ipvs_save.IpvsTable
    sets: ipset_save.IpSets
    ipvs_text: _Text
    ipset_text: _Text

    def location(self, step: chains.Step) -> Location:
        if step.table == "ipvs":
            label = "real server" if step.action.startswith("DNAT") else "virtual server"
            return self.ipvs_text.location(step.line, label)
        return self.ctx.rule_location(step.line)


# --- the entry point ----------------------------------------------------------------------------


def check_node_ipvs(cluster: ResolvedCluster, node: Node, iptables_text: str, iptables_name: str, ipvs_text: str,
                    ipvs_name: str, ipset_text: str, ipset_name: str, routes_text: str | None,
                    routes_name: str | None, ids: Sequence[str], timeout: float, family: int | None = None
                    ) -> list[Verdict]:
    """Decide the requested KS2xx invariants for an IPVS-mode node; one Verdict per ID.

    ``iptables_text`` is iptables-restore input or iptables-save output (IPv4
    unless it holds IPv6 addresses or ``family=6``); ``ipvs_text`` is
    ``ipvsadm-save -n`` output, ``ipset_text`` ``ipset save`` output (both
    node-wide: only their ``family`` part is checked); ``routes_text`` the
    node's ``ip -batch`` routes (None: KS201 checks the rules only).
    Malformed text raises :class:`~kspec.diagnostics.InputError` at file:line:col.
    """
    wanted = [i for i in PACKET_IDS if i in set(ids)]
    if not wanted:
        return []
    start = time.perf_counter()
    for name, text in ((iptables_name, iptables_text), (ipvs_name, ipvs_text), (ipset_name, ipset_text)):
        register_source(name, text)
    ruleset = iptables_save.parse(iptables_text, iptables_name, family)
    table = ipvs_save.parse(ipvs_text, ipvs_name)
    sets = ipset_save.parse(ipset_text, ipset_name)
    routes = None
    if routes_text is not None:
        routes_name = routes_name or "<routes>"
        register_source(routes_name, routes_text)
        routes = routes_batch.parse(routes_text, routes_name)
    ctx = NodeContext(cluster, node, ruleset, iptables_name, routes, routes_name, timeout)
    plan = plan_node(cluster, node, ctx.family)
    resolver = SetResolver(sets, ctx.family)
    bound = bound_addresses(resolver, table, node, ctx.family)
    ctx.local = ctx.local | bound
    hooks = node_hooks(node, "pod", ctx.family, routes)
    bridged = Intervals.of_networks(ipaddress.ip_network(c) for c in hooks.bridged)
    ctx.program = Program(ruleset, ctx.local, bridged, BRIDGE, sets=resolver, ipvs=walker_table(table, ctx.family),
                          physdev=True)
    state = _Node(ctx, plan, table, sets, _Text(ipvs_name, ipvs_text), _Text(ipset_name, ipset_text))
    problems: list[Problem] = []
    subjects: dict[str, list[str]] = {i: [] for i in wanted}
    checked: dict[str, int] = dict.fromkeys(wanted, 0)
    per_service = {"KS202", "KS203", "KS204"} & set(wanted)
    for spec in plan.ports if per_service else ():
        for question in _questions(state, spec, per_service):
            checked[question.invariant] += 1
            subjects[question.invariant].append(spec.label)
            problems += _answer(state, question)
    if "KS205" in wanted:
        structure, count = _structure(state)
        problems += structure
        checked["KS205"] += count
        subjects["KS205"] += [spec.label for spec in plan.ports]
    if "KS201" in wanted:
        rule_problems, questions = pod_to_pod(ctx)
        route_problems, routes_checked = pod_routes(ctx)
        problems += rule_problems + route_problems
        checked["KS201"] += questions + routes_checked
    for problem in problems:
        if problem.unknown:
            problem.unknown = resolver.explain(problem.unknown)
    elapsed = time.perf_counter() - start
    verdicts = [build_verdict(i, [p for p in problems if p.invariant == i], checked.get(i, 0), subjects.get(i, ()),
                              elapsed / len(wanted)) for i in wanted]
    return [replace(v, findings=tuple(replace(f, hint=HINTS[v.invariant]) for f in v.findings))
            if v.invariant in HINTS else v for v in verdicts]


def bound_addresses(resolver: SetResolver, table: ipvs_save.IpvsTable, node: Node, family: int) -> Intervals:
    """The addresses on kube-ipvs0: kube-proxy keeps KUBE-IPVS-IPS equal to them; without that set,
    the virtual services' addresses that are not the node's own."""
    found = resolver(names.set_name(names.IPVS_IPS, family), ("dst",))
    if isinstance(found, Membership) and found.fields == (DST,):
        return Intervals(span for m in found.members for span in m[0].spans)
    own = {int(ip) for ip in node.ips if ip.version == family}
    return Intervals((a, a) for vs in table.services if vs.ip is not None and vs.family == family
                     for a in [int(ipaddress.ip_address(vs.ip))] if a not in own)




# --- per service port: KS202 / KS203 / KS204 ----------------------------------------------------


@dataclass(frozen=True)
class _Question:
    """Packets from one class of sources to one virtual server, and what must happen to them."""

    invariant: str
    spec: PortPlan
    what: str
    origin: str
    iif: str | None
    src: Intervals
    dst: int
    dport: int
    regions: tuple[tuple[Intervals, Expect], ...]
    sources: str


def _questions(state: _Node, spec: PortPlan, wanted: set[str]) -> Iterable[_Question]:
    """Per virtual server of the port: packets from outside (not to a cluster IP), from the node's pods and
    from the node itself, each expected to reach exactly its real servers (outside clients masqueraded
    unless externalTrafficPolicy is Local) or, without real servers, to be rejected; sources outside
    loadBalancerSourceRanges are dropped."""
    ctx = state.ctx
    node = ctx.node.name
    for target in spec.targets:
        internal = target.what == "cluster IP"
        invariant = ("KS202" if internal else "KS203") if spec.has_any else "KS204"
        if invariant not in wanted:
            continue
        deliver = Expect(target.servers) if target.servers else Expect(refuse="REJECT")
        outside = Expect(target.servers, masquerade=not spec.external_local) if target.servers else deliver
        fenced = target.what == "load-balancer IP" and spec.source_ranges is not None
        ranges = spec.source_ranges if fenced else None
        if not internal and ctx.outside:
            yield _Question(invariant, spec, target.what, "outside", None, ctx.outside, target.addr, target.port,
                            _fenced(ctx.outside, outside, ranges), "outside sources")
        if ctx.own_pods:
            yield _Question(invariant, spec, target.what, "pod", BRIDGE, ctx.own_pods, target.addr, target.port,
                            _fenced(ctx.own_pods, deliver, ranges), f"pods on {node}")
        node_regions: list[tuple[Intervals, Expect]] = []
        if ctx.node_ip is not None:
            node_regions.append((Intervals.point(ctx.node_ip), deliver))
        if target.addr in ctx.local and target.addr != ctx.node_ip:
            # the node's own packets to a local address leave from that address (a VIP on kube-ipvs0):
            # kube-proxy marks them for masquerade, and only they meet KUBE-IPVS-OUT-FILTER
            own = Intervals.point(target.addr)
            if fenced and not spec.node_in_ranges and target.servers:  # (an empty virtual server rejects first)
                node_regions.append((own, Expect(refuse="DROP")))
            elif internal and target.servers:
                node_regions.append((own, Expect(target.servers, masquerade=True)))
            else:
                node_regions.append((own, deliver))
        if node_regions:
            src = Intervals(span for region, _ in node_regions for span in region.spans)
            yield _Question(invariant, spec, target.what, "node", None, src, target.addr, target.port,
                            tuple(node_regions), f"node {node}")


def _fenced(src: Intervals, expect: Expect, ranges: Intervals | None) -> tuple[tuple[Intervals, Expect], ...]:
    """loadBalancerSourceRanges: sources outside them are dropped (KUBE-SOURCE-RANGES-FIREWALL)."""
    if ranges is None:
        return ((src, expect),)
    return tuple(r for r in ((src & ranges, expect), (src - ranges, Expect(refuse="DROP"))) if r[0])


def _answer(state: _Node, q: _Question) -> list[Problem]:
    ctx = state.ctx
    fields = [q.src, q.dst, q.spec.proto, ctx.sports, q.dport]
    try:
        leaves = chains.explore(ctx.program, q.origin, fields, q.iif)
    except chains.TooManyPaths as exc:
        return [service_problem(ctx, q, ("paths",), f"{describe_question(ctx, q)}: {exc}", unknown=str(exc))]
    bad: list[tuple] = []
    for leaf in leaves:
        src = as_set(leaf.domain(SRC))
        for region, expect in q.regions:
            part = src & region
            if part:
                found = _mismatch(state, leaf, expect)
                if found is not None:
                    bad.append((leaf, part, *found, expect))
    problems: list[Problem] = []
    seen: set[tuple] = set()
    for leaf, part, key, text, step, expect in bad:
        if key in seen:
            continue
        problem = _leaf_problem(state, q, leaf, part, key, text, step, expect, bad)
        if not problem.unknown:
            seen.add(key)
        problems.append(problem)
    return problems + _coverage(state, q, leaves)


def _mismatch(state: _Node, leaf: Leaf, expect: Expect) -> tuple[tuple, str, chains.Step | None] | None:
    """None when the leaf is what ``expect`` allows, else (key, what happened, the deciding step)."""
    ctx = state.ctx
    if leaf.verdict == "UNKNOWN":
        return ("unknown-target",), "meets a target kspec does not model", _deciding(leaf)
    if leaf.dnat is not None:
        addr, port = leaf.dnat
        if type(addr) is not int or type(port) is not int:
            return ("range",), f"is rewritten to the range {chains.dnat_text(leaf.dnat, ctx.family)}", _deciding(leaf)
        if expect.dnat and (addr, port) in expect.endpoints and leaf.verdict == "ACCEPT" and (
                addr in ctx.local or expect.masquerade is None or (leaf.snat is not None) == expect.masquerade):
            return None  # the common case, decided before any text is made
        if not expect.dnat and leaf.verdict == expect.refuse:
            return None  # refused after IPVS chose a real server (KUBE-IPVS-OUT-FILTER): refused all the same
        step = _deciding(leaf)
        target = ctx.endpoint_text((addr, port))
        if not expect.dnat:
            return ("dnat-instead", target), f"is rewritten to {target} and {verb(leaf.verdict)} instead of " \
                f"being {verb(expect.refuse)}", step
        if (addr, port) not in expect.endpoints:
            return ("bad-dnat", target), f"is rewritten to {target}, which is not a usable endpoint", step
        if leaf.verdict != "ACCEPT":
            return ("refused", leaf.verdict), f"is rewritten to {target} and then {verb(leaf.verdict)}", \
                _deciding(leaf, refusal=True)
        if addr not in ctx.local and expect.masquerade is not None and (leaf.snat is not None) != expect.masquerade:
            if expect.masquerade and as_set(leaf.v[SRC]).issubset(ctx.local):
                return ("no-masq",), (f"reaches {target} from the service address itself, not masqueraded: the "
                                      "endpoint answers the service address and the connection fails"), step
            if expect.masquerade:
                return ("no-masq",), (f"reaches {target} without being masqueraded (externalTrafficPolicy "
                                      "Cluster must SNAT it)"), step
            return ("masq",), (f"is masqueraded ({leaf.snat}), losing the client address that "
                               "externalTrafficPolicy Local must keep"), step
        return None
    step = _deciding(leaf)
    if leaf.verdict == "ACCEPT":
        local = type(leaf.v[DST]) is int and leaf.v[DST] in ctx.local
        if local:
            what = "reaches the node's own sockets: no IPVS virtual server takes it"
        else:
            what = "leaves the node unchanged: its address is not on the node, so IPVS never sees it"
        if expect.dnat:
            return ("unchanged", local), what, step
        return ("unchanged", local), f"{what} (instead of being {verb(expect.refuse)})", step
    if expect.dnat:
        return ("refused", leaf.verdict), f"is {verb(leaf.verdict)} instead of reaching an endpoint", step
    if leaf.verdict != expect.refuse:
        return ("verdict", leaf.verdict), f"is {verb(leaf.verdict)} instead of being " \
            f"{verb(expect.refuse)}", step
    return None


def _deciding(leaf: Leaf, refusal: bool = False) -> chains.Step | None:
    """The step that decided the leaf: its real server, else the last refusal or source rewrite."""
    steps = leaf.step_list()
    if leaf.dnat is not None and not refusal:
        return next((s for s in steps if s.action.startswith("DNAT")), None)
    for step in reversed(steps):
        if step.action.startswith(("DROP", "REJECT", "MASQUERADE", "SNAT", "policy")) or \
                "not modelled" in step.action:
            return step
    return None


def _leaf_problem(state: _Node, q: _Question, leaf: Leaf, part: Intervals, key: tuple, text: str,
                  step: chains.Step | None, expect: Expect, bad: list) -> Problem:
    ctx = state.ctx
    packet = witness_packet(ctx, q, part, leaf)
    trace, unknown = _replay(ctx, q.origin, q.iif, packet, leaf)
    masquerade = key[0] in ("masq", "no-masq")
    # a masquerade decision is taken by marks set early: show every rule, and the ipset match that decided
    trace_text = trace.render() if masquerade else witness_text(trace)
    message = f"{describe_question(ctx, q)} {text}"
    if expect.dnat:
        message += f" (expected one of {endpoint_list(ctx, expect.endpoints)})"
    extra = [state.location(step)] if step is not None else []
    if masquerade:
        extra += [state.location(s) for s in trace.steps if s.table == "nat" and "--match-set" in s.text][-1:]
    if key[0] == "unchanged" and q.spec.targets:
        extra += _missing_server_hint(state, q)
    if not unknown and leaf.verdict == "UNKNOWN":
        unknown = opaque_reason(leaf.opaque_list(), leaf)
    elif not unknown and leaf.opaque is not None:
        src, sport = packet_values(ctx, packet)
        same = [b[0].opaque_list() for b in bad if b[0].verdict != "UNKNOWN"
                and src in as_set(b[0].domain(SRC)) and sport in as_set(b[0].domain(SPORT))]
        if not covers(same):
            unknown = opaque_reason(leaf.opaque_list(), leaf)
    return service_problem(ctx, q, key, message, f"{packet}: {trace_text}", extra, unknown)


def _replay(ctx: NodeContext, origin: str, iif: str | None, packet: chains.Packet, leaf: Leaf
            ) -> tuple[chains.Trace, str]:
    """Replay a leaf concretely: (its trace, a problem if the replay disagrees with the walk)."""
    decisions = [value for _, _, value in leaf.pick_list()]
    trace = chains.trace_packet(ctx.program, chains.Hooks(origin, (), iif), packet, decisions)
    expected = chains.dnat_text(leaf.dnat, ctx.family)
    if trace.verdict != leaf.verdict or trace.dnat != expected or trace.snat != leaf.snat:
        return trace, (f"internal check failed: replaying {packet} gave {trace.verdict} {trace.dnat or ''}, the walk "
                       f"said {leaf.verdict} {expected or ''}")
    return trace, ""


def _missing_server_hint(state: _Node, q: _Question) -> list[Location]:
    """Where the virtual server that should have taken the packet is (or should be): its line, if any."""
    vs = state.ctx.program.ipvs.servers.get((q.spec.proto, q.dst, q.dport))
    return [state.ipvs_text.location(vs.line, "virtual server")] if vs is not None else []


def _coverage(state: _Node, q: _Question, leaves: list[Leaf]) -> list[Problem]:
    """Every endpoint a region expects must be a possible rewrite for every source in it."""
    ctx = state.ctx
    decided = [leaf for leaf in leaves if leaf.dnat is not None and leaf.verdict == "ACCEPT"]
    exact = all(leaf.opaque is None for leaf in decided) and all(
        type(leaf.domain(SPORT)) is not int and leaf.domain(SPORT) == ctx.sports for leaf in decided)
    problems = []
    for region, expect in q.regions:
        if not expect.dnat:
            continue
        served = region & union_of(as_set(leaf.domain(SRC)) for leaf in decided
                                   if leaf.dnat in expect.endpoints)
        if not served:
            continue
        for endpoint in sorted(expect.endpoints):
            reach = [leaf for leaf in decided if leaf.dnat == endpoint]
            if exact:
                missing = served - union_of(as_set(leaf.domain(SRC)) for leaf in reach)
                undecided = EMPTY
            else:
                missing, undecided = uncovered_cells(ctx, served, reach)
            if missing or undecided:
                problems.append(_unreachable(state, q, decided, endpoint, missing or undecided, not missing))
    return problems


def _unreachable(state: _Node, q: _Question, decided: list[Leaf], endpoint: Endpoint, sources: Intervals,
                 maybe: bool) -> Problem:
    ctx = state.ctx
    backend = q.spec.endpoints.get(endpoint)
    src = sources.pick(ctx.pod_ips if q.origin == "pod" else ctx.outside_witnesses)
    packet = chains.Packet(chains.protocol_name(q.spec.proto), ctx.addr(src), SPORT_WITNESS, ctx.addr(q.dst),
                           q.dport)
    owner = f" ({backend_label(backend)})" if backend is not None else ""
    message = (f"{describe_question(ctx, q)}: endpoint {ctx.endpoint_text(endpoint)}{owner} can never be chosen "
               "for a new connection: it is no real server of weight > 0 of the virtual server")
    chosen = sorted({(leaf.dnat, step.line) for leaf in decided if src in as_set(leaf.domain(SRC))
                     for step in leaf.step_list() if step.table == "ipvs" and step.action.startswith("DNAT")})
    listed = ", ".join(f"{ctx.endpoint_text(d)} ({state.ipvs_text.name} line {line})" for d, line in chosen)
    witness = f"{packet}: IPVS may choose only {listed or 'no real server at all'}"
    extra = _missing_server_hint(state, q) + endpoint_locations(ctx, backend)
    unknown = ""
    if maybe:
        opaque = [o for leaf in decided for o in leaf.opaque_list()]
        unknown = opaque_reason(opaque, decided[0]) if opaque else "unmodelled matches decide it"
    return service_problem(ctx, q, ("unreachable", endpoint), message, witness, extra, unknown)


# --- KS205: the IPVS table and the ipsets are the spec's service map ----------------------------


def _structure(state: _Node) -> tuple[list[Problem], int]:
    problems = _virtual_servers(state)
    set_problems, members = _set_members(state)
    return problems + set_problems, len(state.plan.servers) + members


def _problem205(key: tuple, message: str, locations: Sequence[Location], witness: str, spec: PortPlan | None,
                subject: str = "") -> Problem:
    if spec is not None:
        locations = (*locations, located(spec.service.origin, spec.label, "service.ports"))
    return Problem("KS205", ("KS205",) + key, message, tuple(locations), witness,
                   spec.label if spec is not None else subject, "",
                   suppression(spec.service.annotations, "KS205") if spec is not None else None)


def _virtual_servers(state: _Node) -> list[Problem]:
    ctx, plan, text = state.ctx, state.plan, state.ipvs_text
    family = ctx.family
    found: dict[tuple[int, int, int], ipvs_save.VirtualService] = {}
    problems: list[Problem] = []
    by_address: dict[int, list[PortPlan]] = {}
    for spec, target in plan.servers.values():
        by_address.setdefault(target.addr, []).append(spec)
    cluster_families = {c.version for c in ctx.cluster.settings.service_cidrs} or {4}
    for vs in state.table.services:
        checked_here = vs.family == family or (vs.family not in cluster_families and family == min(cluster_families))
        if not checked_here:
            continue
        if vs.ip is None:
            problems.append(_problem205(("fwmark", vs.line), f"virtual service {vs.address} at {text.name}:{vs.line} "
                                        "is a firewall-mark service; kube-proxy programs none", 
                                        (text.location(vs.line, "virtual server"),), vs.text, None,
                                        f"virtual server {vs.address}"))
            continue
        key = (IPVS_PROTOCOLS.get(vs.protocol, -1), int(ipaddress.ip_address(vs.ip)), vs.port)
        if key in plan.servers and vs.family == family:
            found[key] = vs
            continue
        owners = by_address.get(key[1], []) if vs.family == family else []
        owner = owners[0] if owners else None
        if owner is not None:
            ports = ", ".join(sorted({f"{s.port.port}/{s.port.protocol}" for s in owners}))
            detail = f"{owner.label} has this address, with ports {ports}, not {vs.port}/{vs.protocol.upper()}"
        else:
            detail = "no service port of the spec has this address and port (a deleted service?)"
        problems.append(_problem205(("extra-vs", vs.line), f"virtual server {vs.protocol.upper()} {vs.address} at "
                                    f"{text.name}:{vs.line} is not in the spec: {detail}",
                                    (text.location(vs.line, "virtual server"),), vs.text, owner,
                                    f"virtual server {vs.address}"))
    for key, (spec, target) in sorted(plan.servers.items()):
        vs = found.get(key)
        if vs is None:
            flag = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}[spec.proto_name]
            address = endpoint_text((target.addr, target.port), family)
            line = f"-A {flag} {address} -s {spec.scheduler}" + (f" -p {spec.persistence}" if spec.persistence
                                                                 is not None else "")
            problems.append(_problem205(("missing-vs",) + key, f"no virtual server {spec.proto_name.upper()} {address} "
                                        f"in {text.name} for {spec.label} {spec.port_label} ({target.what}): its "
                                        "packets are not load-balanced", (), f"expected in {text.name}: {line}",
                                        spec))
            continue
        problems += _server_details(state, spec, target, vs)
    return problems


def _server_details(state: _Node, spec: PortPlan, target: Target, vs: ipvs_save.VirtualService
                    ) -> list[Problem]:
    ctx, text = state.ctx, state.ipvs_text
    family = ctx.family
    here = text.location(vs.line, "virtual server")
    about = f"virtual server {vs.protocol.upper()} {vs.address} ({spec.label} {spec.port_label} {target.what})"
    key = (vs.line,)
    problems = []
    if vs.scheduler != spec.scheduler:
        problems.append(_problem205(("scheduler",) + key, f"{about} at {text.name}:{vs.line} uses scheduler "
                                    f"{vs.scheduler}; the spec's is {spec.scheduler}", (here,), vs.text, spec))
    if vs.persistence != spec.persistence:
        if spec.persistence is None:
            detail = f"is persistent (-p {vs.persistence}) but the service has no session affinity"
        elif vs.persistence is None:
            detail = (f"is not persistent, but sessionAffinity ClientIP needs -p {spec.persistence} "
                      "(clients lose their endpoint)")
        else:
            detail = f"keeps clients for {vs.persistence} s; sessionAffinity ClientIP says {spec.persistence} s"
        problems.append(_problem205(("persistence",) + key, f"{about} at {text.name}:{vs.line} {detail}", (here,),
                                    vs.text, spec))
    present: dict[Endpoint, ipvs_save.RealServer] = {}
    for rs in vs.real_servers:
        endpoint = (int(ipaddress.ip_address(rs.ip)), rs.port)
        present[endpoint] = rs
        where = text.location(rs.line, "real server")
        if rs.method != "masq":
            problems.append(_problem205(("method", rs.line), f"real server {rs.address} of {about} at "
                                        f"{text.name}:{rs.line} uses {ipvs_save.METHOD_NAME[rs.method]}; kube-proxy "
                                        "programs NAT (-m), without which the packet never reaches the endpoint",
                                        (where,), rs.text, spec))
        if endpoint in target.servers or rs.weight == 0:
            continue  # weight 0: a removed endpoint kube-proxy's graceful termination is draining
        same_ip = sorted(e for e in target.servers if e[0] == endpoint[0])
        if same_ip:
            detail = f"has the wrong port: the endpoint is {endpoint_text(same_ip[0], family)}"
        elif endpoint in spec.endpoints:
            detail = f"is an endpoint of the port, but not one kube-proxy uses for {target.what} traffic on " \
                     f"{ctx.node.name} (traffic policy or readiness)"
        else:
            detail = "is no endpoint of the port"
        problems.append(_problem205(("extra-rs", rs.line), f"real server {rs.address} of {about} at "
                                    f"{text.name}:{rs.line} {detail}", (where,), rs.text, spec))
    for endpoint in sorted(target.servers - present.keys()):
        backend = spec.endpoints.get(endpoint)
        owner = f" ({backend_label(backend)})" if backend is not None else ""
        problems.append(_problem205(("missing-rs", vs.line, endpoint), f"{about} at {text.name}:{vs.line} lacks "
                                    f"the real server {endpoint_text(endpoint, family)}{owner}",
                                    (here, *endpoint_locations(ctx, backend)),
                                    f"expected in {text.name}: -a {vs.text.split()[1]} {vs.text.split()[2]} -r "
                                    f"{endpoint_text(endpoint, family)} -m -w 1", spec))
    return problems


def _set_members(state: _Node) -> tuple[list[Problem], int]:
    plan, text = state.plan, state.ipset_text
    kernel = set_names(plan.family)
    types = {kernel[info.name]: info.type for info in names.IPSETS}
    anywhere: dict[tuple, tuple[str, SetMember]] = {}
    for set_name, members in plan.sets.items():
        for key, item in members.items():
            anywhere.setdefault(key, (set_name, item))
    problems: list[Problem] = []
    count = 0
    for name, expected in plan.sets.items():
        count += len(expected)
        ipset = state.sets.sets.get(name)
        if ipset is None:
            owner = next((m.owner for m in expected.values()), None)
            problems.append(_problem205(("no-set", name), f"ipset {name} is missing from {text.name}: kube-proxy "
                                        "creates it on every node and its iptables rules match it",
                                        (), f"expected in {text.name}: create {name} {types[name]} ...", owner,
                                        f"ipset {name}"))
            continue
        if ipset.type != types[name]:
            problems.append(_problem205(("set-type", name), f"ipset {name} at {text.name}:{ipset.line} is "
                                        f"{ipset.type}; kube-proxy creates it as {types[name]}",
                                        (text.location(ipset.line, "ipset"),), f"create {name} {ipset.type}", None,
                                        f"ipset {name}"))
            continue
        present = {e.key: e for e in ipset.entries}
        for key, item in expected.items():
            if key not in present:
                problems.append(_problem205(("missing-member", name, key), f"ipset {name} ({text.name}:{ipset.line}) "
                                            f"lacks {item.text}{_member_role(item)}",
                                            (text.location(ipset.line, "ipset"),),
                                            f"expected in {text.name}: add {name} {item.text}", item.owner))
        for key, entry in present.items():
            if key in expected:
                continue
            other, owner = anywhere.get(key, ("", None))
            detail = f"; the spec has it in {other} only ({owner.owner.label} {owner.owner.port_label})" \
                if owner is not None and owner.owner is not None else ": no service port of the spec has it"
            problems.append(_problem205(("extra-member", name, entry.line), f"member {entry.text} of ipset {name} at "
                                        f"{text.name}:{entry.line} is not in the spec's service map{detail}",
                                        (text.location(entry.line, "ipset member"),), f"add {name} {entry.text}",
                                        owner.owner if owner is not None else None, f"ipset {name}"))
    return problems, count


def _member_role(item: SetMember) -> str:
    if item.owner is None:
        return ""
    return f" ({item.owner.label} {item.owner.port_label})"
