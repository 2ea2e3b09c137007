"""``kspec trace``: one packet through a node's rules, explained (pure: model and rule texts in, a result out).

The walk is the verifier's own (:mod:`kspec.verify.chains`): every possible
outcome comes from :func:`~kspec.verify.chains.explore` (one leaf per
``statistic`` choice, with its probability), and the path shown is the
concrete :func:`~kspec.verify.chains.trace_packet` replay of the chosen leaf,
exactly as ``kspec verify`` replays its witnesses, so trace and verify never
disagree.  The rules are the text ``kspec compile`` writes for the node (its
line numbers are the file's) or a dump given per node.

In IPVS mode the node's Program is built as ``kspec verify`` builds it: the
``-m set`` matches are decided by the node's ipsets (the verifier's resolver
over :mod:`kspec.dataplane.ipset_save`), the addresses on kube-ipvs0 are the
node's own, and the walk consults the IPVS table
(:mod:`kspec.dataplane.ipvs_save`) where the kernel does, forking once per
real server of weight > 0; the trace shows the virtual service, its scheduler
and every real server with its weight, and follows the first (or
``--endpoint``) through filter OUTPUT and nat POSTROUTING.  A set the dump
lacks stays undecided: it is assumed not to match, and a note says so.

The result is rendered by :mod:`kspec.commands.trace_cmd` (text, and the JSON document it documents).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from kspec.backends import routes as route_conventions
from kspec.compile import node_files
from kspec.dataplane import ipset_save, iptables_save, ipvs_save, routes_batch
from kspec.diagnostics import register_source
from kspec.model import Node, Pod, ResolvedCluster, Service, ServicePort
from kspec.verify import chains, ipvs_invariants
from kspec.verify.chains import Hooks, Leaf, Packet, Program, Trace
from kspec.verify.encode import Intervals
from kspec.verify.node_context import node_hooks

SPORT = 40000
BRIDGE = route_conventions.BRIDGE
KINDS = ("iptables", "ip6tables", "ipvs", "ipset", "routes")
CHOICE_PREFIXES = ("--probability", "--every", "-m recent", "ipvs real server")


class TraceError(Exception):
    """A question kspec cannot answer as asked (unknown object, bad syntax, ambiguous node)."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


# --- what is traced ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    kind: str  # pod | node | outside
    name: str  # "default/frontend", "node-1", "203.0.113.7"
    ip: str
    node: str | None  # the node whose hooks it enters (pods, nodes); outside: decided later
    route: str = ""


@dataclass(frozen=True)
class Destination:
    kind: str  # service | pod | address
    name: str  # "default/search:http", "default/web-1", "10.96.0.10:53/UDP"
    ip: str
    port: int
    protocol: str  # TCP | UDP | SCTP
    service: Service | None = None
    service_port: ServicePort | None = None
    about: str = ""  # what an address is, e.g. "nodePort of service default/web:http"

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.ip).version


def parse_destination(text: str, cluster: ResolvedCluster, family: int | None = None) -> Destination:
    """``svc/NS/NAME:PORT``, ``pod/NS/NAME:PORT[/PROTO]`` or ``IP:PORT[/PROTO]`` (``[v6]:PORT``)."""
    kind, _, rest = text.partition("/")
    if kind in ("svc", "service") and rest:
        return _service_destination(text, rest, cluster, family)
    if kind == "pod" and rest:
        return _pod_destination(text, rest, cluster, family)
    host, port, proto = _address_port(text)
    if family is not None and ipaddress.ip_address(host).version != family:
        raise TraceError(f"{host} is not an IPv{family} address", "drop --family or give an address of that family")
    return Destination("address", f"{host_port(host, port)}/{proto}", host, port, proto,
                       about=_what_address(cluster, host, port, proto))


def parse_source(text: str, cluster: ResolvedCluster, family: int) -> Source:
    """``pod/NS/NAME``, ``node/NAME`` or an IP outside the cluster."""
    kind, _, rest = text.partition("/")
    if kind == "pod" and rest:
        pod = _pod(cluster, rest)
        if pod.host_network:
            node = _node(cluster, pod.node or "")
            ip = _ip_of(node.ips, family, f"node {node.name}")
            return Source("node", node.name, ip, node.name,
                          f"pod {pod.namespace}/{pod.name} uses its node's network: node {node.name} ({ip}) sends "
                          "it itself (OUTPUT hooks)")
        if not pod.node:
            raise TraceError(f"pod {pod.namespace}/{pod.name} is on no node", "give the pod a node (spec.nodeName)")
        ip = _ip_of(pod.ips, family, f"pod {pod.namespace}/{pod.name}")
        node = _node(cluster, pod.node)
        cidr = next((c for c in node.pod_cidrs if ipaddress.ip_address(ip) in c), None)
        gateway = (f"default via {route_conventions.gateway(cidr)} dev eth0" if cidr
                   else "no podCIDR of its node holds it")
        return Source("pod", f"{pod.namespace}/{pod.name}", ip, node.name,
                      f"pod {pod.namespace}/{pod.name} ({ip}) on {node.name}: {gateway}; enters {node.name} from "
                      f"its bridge {BRIDGE}")
    if kind == "node" and rest:
        node = _node(cluster, rest)
        ip = _ip_of(node.ips, family, f"node {node.name}")
        return Source("node", node.name, ip, node.name,
                      f"node {node.name} ({ip}) sends it itself (local output: OUTPUT hooks)")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise TraceError(f"--from {text!r} is not pod/NS/NAME, node/NAME or an IP address",
                         "e.g. --from pod/default/frontend, --from node/node-1, --from 203.0.113.7") from None
    if address.version != family:
        raise TraceError(f"{address} is IPv{address.version} but the destination is IPv{family}",
                         "trace within one IP family (--family picks a service's cluster IP)")
    _outside_only(cluster, address)
    return Source("outside", str(address), str(address), None)


def entry_node(cluster: ResolvedCluster, source: Source, destination: Destination, via: str | None) -> Node:
    """The node whose rules the packet meets first: the source's, or (from outside) the destination's owner."""
    if source.node is not None:
        if via is not None and via != source.node:
            raise TraceError(f"--via applies to a source outside the cluster; {source.kind} {source.name} is on "
                             f"{source.node}", "drop --via")
        return _node(cluster, source.node)
    if via is not None:
        return _node(cluster, via)
    address = ipaddress.ip_address(destination.ip)
    owners = [n for n in cluster.nodes if address in n.ips] or [n for n in cluster.nodes
                                                              if any(address in c for c in n.pod_cidrs)]
    if len(owners) == 1:
        return owners[0]
    names = ", ".join(sorted(n.name for n in cluster.nodes)[:8])
    raise TraceError(f"which node receives {destination.ip} from outside is not clear (a service, external or "
                     "load-balancer address reaches whichever node the network sends it to)",
                     f"name it: --via NODE (one of {names})")


# --- the rules of a node ----------------------------------------------------------------------


@dataclass(frozen=True)
class NodeRules:
    """One node's parsed rule texts, with the names their line numbers refer to."""

    node: Node
    family: int
    ruleset: iptables_save.RuleSet
    rules_name: str
    routes: routes_batch.Routes
    ipvs: ipvs_save.IpvsTable | None = None
    ipsets: ipset_save.IpSets | None = None
    compiled: tuple[str, ...] = ()  # the files that came from the spec rather than a dump

    @property
    def files(self) -> dict[str, str]:
        out = {"iptables": self.rules_name, "routes": self.routes.name}
        if self.ipvs is not None:
            out["ipvs"] = self.ipvs.name
        if self.ipsets is not None:
            out["ipset"] = self.ipsets.name
        return out


def classify(text: str) -> str | None:
    """Which dump a text is, from its first meaningful line: iptables, ipvs, ipset or routes."""
    for raw in text.split("\n"):
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        first = words[0]
        if first.startswith(("*", ":")) or first == "COMMIT":
            return "iptables"
        if first in ipvs_save.COMMANDS and (len(words) == 1 or words[1] in ipvs_save.SERVICE_OPTIONS):
            return "ipvs"
        if first in ("-A", "-I", "-N", "-P", "-D"):
            return "iptables"
        if first in ("create", "add"):
            return "ipset"
        if first in ("route", "link", "address", "addr"):
            return "routes"
        return None
    return None


def node_rules(cluster: ResolvedCluster, node: Node, family: int,
               given: Mapping[str, tuple[str, str]] | None = None) -> NodeRules:
    """The node's rules from ``given`` (kind -> (name, text)), the rest compiled from the spec.

    Compiled texts are named like the files ``kspec compile`` writes
    (``nodes/<node>/iptables.rules``), so their line numbers are that file's.
    """
    given = dict(given or {})
    ipt_kind = "ip6tables" if family == 6 and "ip6tables" in given else "iptables"
    wanted = {ipt_kind: None, "routes": None}
    ipvs_mode = cluster.settings.proxy.mode == "ipvs"
    if ipvs_mode or "ipvs" in given or "ipset" in given:
        wanted.update({"ipvs": None, "ipset": None})
    compiled: list[str] = []
    missing = [k for k in wanted if k not in given]
    if missing:
        files = dict(node_files(cluster, [node]))
        names = {"iptables": "ip6tables.rules" if family == 6 else "iptables.rules", "ip6tables": "ip6tables.rules",
                 "routes": "routes.batch", "ipvs": "ipvs.rules", "ipset": "ipset.rules"}
        for kind in missing:
            path = f"nodes/{node.name}/{names[kind]}"
            if path in files:
                given[kind] = (path, files[path])
                compiled.append(path)
    if ipt_kind not in given:
        raise TraceError(f"no IPv{family} iptables rules for node {node.name}",
                         "the cluster has no service CIDR of that family; give --rules NODE=PATH")
    for name, text in given.values():
        register_source(name, text)
    name, text = given[ipt_kind]
    ruleset = iptables_save.parse(text, name, family if name in compiled else None)
    if ruleset.family != family:
        raise TraceError(f"{name} holds IPv{ruleset.family} rules but the packet is IPv{family}",
                         "give the ip6tables-save dump for IPv6 packets (or --family)")
    routes = routes_batch.parse(given["routes"][1], given["routes"][0]) if "routes" in given else \
        routes_batch.Routes("<no routes>", (), ())
    ipvs = ipvs_save.parse(given["ipvs"][1], given["ipvs"][0]) if "ipvs" in given else None
    ipsets = ipset_save.parse(given["ipset"][1], given["ipset"][0]) if "ipset" in given else None
    return NodeRules(node, family, ruleset, name, routes, ipvs, ipsets, tuple(compiled))


# --- the result -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hop:
    """One walk through one node's hooks (and its IPVS table)."""

    node: str
    file: str
    phase: str  # source | destination
    origin: str
    path: tuple[tuple[str, str], ...]  # hooks in the order met; ("route", text) is a routing decision
    local: bool  # the packet, as the walk leaves it, is for the node itself
    trace: Trace


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int
    pod: str | None  # NS/NAME
    node: str | None
    probability: float | None = None  # iptables: the chance a new connection takes it
    weight: int | None = None  # IPVS: the real server's weight
    chosen: bool = False

    @property
    def address(self) -> str:
        return host_port(self.ip, self.port)


@dataclass(frozen=True)
class Balancing:
    method: str  # statistic | ipvs
    service: str
    scheduler: str | None = None
    virtual_server: str | None = None
    file: str | None = None
    line: int | None = None
    affinity: str | None = None


@dataclass(frozen=True)
class RouteHop:
    node: str
    destination: str
    route: str
    file: str | None
    line: int | None
    next: str


@dataclass(frozen=True)
class Nat:
    action: str  # DNAT | IPVS | MASQUERADE | SNAT
    before: str
    after: str
    file: str
    line: int
    note: str = ""


@dataclass(frozen=True)
class Reply:
    sent: Packet
    received: Packet
    node: str | None
    text: str


@dataclass(frozen=True)
class TraceResult:
    source: Source
    destination: Destination
    node: str
    mode: str
    packet: Packet
    files: dict[str, str]
    hops: tuple[Hop, ...]
    balancing: Balancing | None
    endpoints: tuple[Endpoint, ...]
    dnat: Nat | None
    snat: Nat | None
    routes: tuple[RouteHop, ...]
    verdict: str  # ACCEPT | DROP | REJECT | UNREACHABLE
    delivered: bool
    outcome: str
    reply: Reply | None
    notes: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        """0: the packet is delivered; 1: it is dropped, rejected or has no way to its destination."""
        return 0 if self.delivered else 1


# --- the trace --------------------------------------------------------------------------------


def trace(cluster: ResolvedCluster, source_text: str, destination_text: str, *,
          rules: Mapping[str, Mapping[str, tuple[str, str]]] | None = None, via: str | None = None,
          family: int | None = None, sport: int = SPORT, endpoint: str | None = None) -> TraceResult:
    """Trace one packet from ``source_text`` to ``destination_text`` (the ``--from``/``--to`` syntax).

    ``rules`` maps a node name to its given texts (kind -> (name, text), kinds
    as :func:`classify` names them); anything missing is compiled from the spec.
    Raises :class:`TraceError` for a question that cannot be answered as asked.
    """
    if not 0 < sport < 65536:
        raise TraceError(f"source port {sport} is not 1-65535", "write --sport 40000")
    for name in sorted(rules or {}):
        _node(cluster, name)
    destination = parse_destination(destination_text, cluster, family)
    source = parse_source(source_text, cluster, destination.family)
    node = entry_node(cluster, source, destination, via)
    if source.kind == "outside":
        node_ip = next((str(ip) for ip in node.ips if ip.version == destination.family), "no address")
        source = replace(source, node=node.name,
                         route=f"{source.ip} is outside the cluster: it arrives on {node.name}'s uplink ({node_ip})"
                         + (" (--via)" if via else ""))
    return _Tracer(cluster, rules or {}, destination.family).run(source, destination, node, sport, endpoint)


@dataclass
class _Walk:
    hop: Hop
    program: Program
    outcomes: list[Leaf]  # the fresh outcomes (a new connection), best first
    remembered: list[Leaf]  # outcomes an earlier connection fixed (session affinity)
    notes: list[str]


class _Tracer:
    def __init__(self, cluster: ResolvedCluster, given: Mapping[str, Mapping[str, tuple[str, str]]],
                 family: int) -> None:
        self.cluster = cluster
        self.given = given
        self.family = family
        self._rules: dict[str, NodeRules] = {}
        self._programs: dict[str, Program] = {}
        self.by_ip: dict[str, tuple[str | None, str | None]] = {}  # address -> (pod NS/NAME, node)
        for n in cluster.nodes:
            for ip in n.ips:
                self.by_ip[str(ip)] = (None, n.name)
        for p in cluster.pods:
            if not p.host_network:
                for ip in p.ips:
                    self.by_ip.setdefault(str(ip), (f"{p.namespace}/{p.name}", p.node))
        self.notes: list[str] = []

    def rules_of(self, node: Node) -> NodeRules:
        found = self._rules.get(node.name)
        if found is None:
            found = self._rules[node.name] = node_rules(self.cluster, node, self.family, self.given.get(node.name))
        return found

    def program_of(self, rules: NodeRules) -> Program:
        """The node's rules compiled for the walk exactly as ``kspec verify`` compiles them."""
        found = self._programs.get(rules.node.name)
        if found is None:
            found = self._programs[rules.node.name] = _program(rules)
        return found

    # -- the whole path

    def run(self, source: Source, destination: Destination, node: Node, sport: int,
            endpoint: str | None) -> TraceResult:
        rules = self.rules_of(node)
        if rules.compiled and node.name in self.given:
            self.notes.append(f"{', '.join(rules.compiled)}: compiled from the spec (no dump given for it)")
        packet = Packet(destination.protocol.lower(), source.ip, sport, destination.ip, destination.port)
        walk = self.walk(rules, source.kind, packet, BRIDGE if source.kind == "pod" else None, endpoint, "source")
        hops = [walk.hop]
        first = walk.hop.trace
        balancing, endpoints = self._balancing(rules, walk, destination)
        if endpoint is not None and not any(e.chosen and e.address == _normal_endpoint(endpoint) for e in endpoints):
            raise TraceError(f"--endpoint {endpoint}: this packet is not load-balanced to a choice of endpoints",
                             "drop --endpoint")
        dnat = self._dnat(rules, first, packet)
        snat, routes, reply, delivered = None, [], None, False
        verdict = first.verdict
        if verdict != "ACCEPT":
            outcome = self._refusal(rules, walk.program, first)
        else:
            leaving = first.final
            snat = self._snat(rules, first, leaving)
            if snat is not None:
                leaving = replace(leaving, src=snat.after)
            delivered, verdict, outcome, more_hops, routes = self._deliver(rules, walk.hop, leaving)
            hops += more_hops
            if delivered:
                reply = self._reply(packet, leaving, dnat, snat, node, routes)
        unused = sorted(set(self.given) - {h.node for h in hops})
        if unused:
            self.notes.append(f"--rules for {', '.join(unused)} not used: the packet does not pass "
                              f"{'that node' if len(unused) == 1 else 'those nodes'}")
        mode = "ipvs" if rules.ipvs is not None else "iptables"
        notes = tuple(dict.fromkeys(walk.notes + self.notes))
        return TraceResult(source, destination, node.name, mode, packet, rules.files, tuple(hops), balancing,
                           tuple(endpoints), dnat, snat, tuple(routes), verdict, delivered, outcome, reply, notes)

    # -- one node's hooks

    def walk(self, rules: NodeRules, origin: str, packet: Packet, in_interface: str | None,
             endpoint: str | None, phase: str) -> _Walk:
        """Every outcome of ``packet`` on the node (the engine's leaves), and the concrete replay of one."""
        program = self.program_of(rules)
        fields = [int(ipaddress.ip_address(packet.src)), int(ipaddress.ip_address(packet.dst)),
                  chains.protocol_number(packet.proto), packet.sport, packet.dport]
        try:
            leaves = chains.explore(program, origin, fields, in_interface, mark=packet.mark)
        except chains.TooManyPaths as exc:
            raise TraceError(f"{rules.rules_name}: {exc}", "trace a node whose rules fork less") from None
        agreed = [leaf for leaf in leaves if _agrees(leaf)]
        fresh = sorted((leaf for leaf in agreed if leaf.fresh), key=_preference)
        remembered = [leaf for leaf in agreed if not leaf.fresh]
        candidates = fresh or sorted(agreed, key=_preference)
        if not candidates:
            raise TraceError(f"{rules.rules_name}: the walk has no outcome for {packet}", "report this as a bug")
        chosen = self._pick(fresh, endpoint, program.family) if endpoint is not None else candidates[0]
        result = chains.trace_packet(program, Hooks(origin, (), in_interface), packet,
                                     [value for _, _, value in chosen.pick_list()])
        notes: list[str] = []
        expected = chains.dnat_text(chosen.dnat, program.family)
        if result.verdict != chosen.verdict or result.dnat != expected:
            notes.append(f"internal check: the replay gave {result.verdict} {result.dnat or ''}, the walk "
                         f"{chosen.verdict} {expected or ''}")
        for line, text, _ in chosen.pick_list():
            if not text.startswith(CHOICE_PREFIXES):
                why = ("the set is not in the node's ipset dump, or of a kind kspec does not model"
                       if text.startswith("-m set") else "kspec does not model this match")
                notes.append(f"{rules.rules_name} line {line}: {text}: {why}; assumed not to match")
        path, local = _path(program, rules.node.name, origin, packet, result)
        return _Walk(Hop(rules.node.name, rules.rules_name, phase, origin, path, local, result), program, fresh,
                     remembered, notes)

    def _pick(self, fresh: list[Leaf], endpoint: str, family: int) -> Leaf:
        wanted = _normal_endpoint(endpoint)
        for leaf in fresh:
            if chains.dnat_text(leaf.dnat, family) == wanted:
                return leaf
        possible = sorted({chains.dnat_text(leaf.dnat, family) for leaf in fresh if leaf.dnat is not None})
        raise TraceError(f"--endpoint {endpoint} is not among the endpoints this packet can reach",
                         "choose one of " + (", ".join(possible) if possible else "(none: the packet is not DNATed)"))

    # -- balancing

    def _balancing(self, rules: NodeRules, walk: _Walk, destination: Destination
                   ) -> tuple[Balancing | None, list[Endpoint]]:
        result = walk.hop.trace
        server = next((s for s in result.steps if s.table == "ipvs" and s.action == "virtual server"), None)
        if server is not None and rules.ipvs is not None:
            return self._ipvs(rules, server.line, result, destination)
        outcomes = [leaf for leaf in walk.outcomes if leaf.verdict == "ACCEPT" and leaf.dnat is not None]
        if not outcomes:
            return None, []
        totals: dict[str, float] = {}
        for leaf in outcomes:
            key = chains.dnat_text(leaf.dnat, self.family)
            totals[key] = totals.get(key, 0.0) + leaf.prob
        endpoints = []
        for key, probability in totals.items():
            ip, port = _split_endpoint(key)
            pod, node = self.by_ip.get(ip, (None, None))
            endpoints.append(Endpoint(ip, port, pod, node, probability, None, key == result.dnat))
        service = _comment_of(walk.program, result, "DNAT") or destination.name
        affinity = None
        if walk.remembered:
            line = next((ln for leaf in walk.remembered for ln, text, value in leaf.pick_list()
                         if text.startswith("-m recent") and value), None)
            affinity = (f"sessionAffinity ClientIP: a client that connected within the timeout goes back to its "
                        f"earlier endpoint (-m recent --rcheck, line {line}); a new client is balanced as shown")
        statistic = any(text.startswith(("--probability", "--every")) for leaf in outcomes
                        for _, text, _ in leaf.pick_list())
        return Balancing("statistic" if statistic else "single", service, affinity=affinity), endpoints

    def _ipvs(self, rules: NodeRules, line: int, result: Trace, destination: Destination
              ) -> tuple[Balancing, list[Endpoint]]:
        """The virtual service the walk met: its scheduler and every real server with its weight."""
        vs = next(v for v in rules.ipvs.services if v.line == line)
        endpoints = []
        for rs in vs.real_servers:
            pod, node = self.by_ip.get(rs.ip, (None, None))
            endpoints.append(Endpoint(rs.ip, rs.port, pod, node, None, rs.weight, rs.address == result.dnat))
        affinity = None
        if vs.persistence is not None:
            affinity = (f"persistent for {vs.persistence} s (-p {vs.persistence}): a client's connections within "
                        "that time go to the real server its first one got")
        service = destination.name if destination.kind == "service" else \
            destination.about.partition("service ")[2] or vs.address
        return Balancing("ipvs", service, vs.scheduler, vs.address, rules.ipvs.name, vs.line, affinity), endpoints

    # -- NAT

    def _dnat(self, rules: NodeRules, result: Trace, packet: Packet) -> Nat | None:
        step = next((s for s in result.steps if s.action.startswith("DNAT")), None)
        if step is None or result.dnat is None:
            return None
        before = host_port(packet.dst, packet.dport)
        if step.table == "ipvs":
            vs = next((v for v in rules.ipvs.services if any(rs.line == step.line for rs in v.real_servers)), None)
            note = f"NAT real server, scheduler {vs.scheduler}" if vs is not None else ""
            return Nat("IPVS", before, result.dnat, step.chain, step.line, note)
        return Nat("DNAT", before, result.dnat, rules.rules_name, step.line)

    def _snat(self, rules: NodeRules, result: Trace, leaving: Packet) -> Nat | None:
        step = next((s for s in result.steps if s.action.startswith(("MASQUERADE", "SNAT"))), None)
        if step is None or result.snat is None:
            return None
        if result.snat.startswith("SNAT"):
            (first, _), _ = iptables_save.parse_nat_range(result.snat.split(None, 1)[1])
            address = str(first)
            action = "SNAT"
        else:
            address = self._outgoing_address(rules, leaving.dst)
            action = "MASQUERADE"
        note = "--random-fully: the source port is chosen at random" if "--random-fully" in step.text else ""
        return Nat(action, leaving.src, address, rules.rules_name, step.line, note)

    def _outgoing_address(self, rules: NodeRules, dst: str) -> str:
        """The address MASQUERADE takes: the bridge's for the node's own pods, else the node's IP."""
        address = ipaddress.ip_address(dst)
        for cidr in rules.node.pod_cidrs:
            if address in cidr:
                return str(route_conventions.gateway(cidr))
        return next((str(ip) for ip in rules.node.ips if ip.version == self.family), dst)

    # -- routes and delivery

    def _deliver(self, rules: NodeRules, hop: Hop, packet: Packet
                 ) -> tuple[bool, str, str, list[Hop], list[RouteHop]]:
        """Follow the packet from the node it leaves to where it lands: (delivered, verdict, text, hops, routes).

        At most one more node: the one the route names (host-gw), whose hooks the packet passes as
        traffic from the node network before its bridge delivers it.
        """
        hops: list[Hop] = []
        routes: list[RouteHop] = []
        current = rules
        while True:
            landed = self._land(current, hop, packet, routes)
            if landed is not None:
                return landed[0], landed[1], landed[2], hops, routes
            via = routes[-1].next.removeprefix("node ")
            next_node = self.cluster.nodes_by_name.get(via)
            if next_node is None or current is not rules or next_node.name == current.node.name:
                return False, "UNREACHABLE", (f"UNREACHABLE: {current.node.name} sends {packet.dst} to "
                                              f"{routes[-1].next}, which does not deliver it"), hops, routes
            current = self.rules_of(next_node)
            packet = replace(packet, mark=0)  # a mark is the sending node's: it does not travel with the packet
            walk = self.walk(current, "outside", packet, None, None, "destination")
            self.notes.extend(walk.notes)
            hop = walk.hop
            hops.append(hop)
            if hop.trace.verdict != "ACCEPT":
                return False, hop.trace.verdict, self._refusal(current, walk.program, hop.trace), hops, routes
            if hop.trace.dnat is not None or hop.trace.snat is not None:
                self.notes.append(f"{next_node.name} rewrites the packet again ({hop.trace.dnat or hop.trace.snat}); "
                                  "the trace follows it no further")
            packet = hop.trace.final

    def _land(self, rules: NodeRules, hop: Hop, packet: Packet, routes: list[RouteHop]
              ) -> tuple[bool, str, str] | None:
        """Where ``rules.node`` sends the packet; None when the route names another node."""
        name = rules.node.name
        target = host_port(packet.dst, packet.dport)
        if hop.local:
            routes.append(RouteHop(name, packet.dst, f"{packet.dst} is {name}'s own address", None, None,
                                   f"node {name} itself"))
            listener = next((f"{p.namespace}/{p.name}" for p in self.cluster.pods if p.host_network and p.node == name
                             and any(c.port == packet.dport for c in p.ports)), None)
            return True, "ACCEPT", (f"delivered to node {name} itself ({target}"
                                    + (f", hostNetwork pod {listener})" if listener else ")"))
        route = _lookup(rules.routes, packet.dst)
        _, owner = self.by_ip.get(packet.dst, (None, None))
        if route is None and owner is not None and packet.dst in {str(ip) for ip in self.cluster.nodes_by_name[
                owner].ips}:
            routes.append(RouteHop(name, packet.dst, "the node network (on-link)", None, None, f"node {owner}"))
            return None
        if route is None:
            routes.append(RouteHop(name, packet.dst, "no pod-network route: the node's default route", None, None,
                                   "outside the cluster"))
            self.notes.append(f"{packet.dst} is in no pod network: it leaves {name} through its default route, "
                              "which kspec does not model")
            return True, "ACCEPT", f"leaves the cluster through {name}'s default route towards {target}"
        text = route.text.split("#", 1)[0].strip().removeprefix("route ").split(None, 1)[1]
        if route.via is None:
            pod, _ = self.by_ip.get(packet.dst, (None, None))
            routes.append(RouteHop(name, packet.dst, text, rules.routes.name, route.line,
                                   f"pod {pod}" if pod else f"no pod has {packet.dst}"))
            if pod is None:
                return False, "UNREACHABLE", (f"UNREACHABLE: no pod has {packet.dst} on {name}'s bridge "
                                              f"{route.dev or BRIDGE} (ARP gets no answer)")
            return True, "ACCEPT", f"delivered to pod {pod} ({target}) on {name}"
        _, owner = self.by_ip.get(str(route.via), (None, None))
        routes.append(RouteHop(name, packet.dst, text, rules.routes.name, route.line,
                               f"node {owner}" if owner else f"{route.via} (no node of the cluster)"))
        return None

    def _refusal(self, rules: NodeRules, program: Program, result: Trace) -> str:
        step = result.steps[-1] if result.steps else None
        if step is None:
            return f"{result.verdict} (no rule fired)"
        if step.line == 0:
            return f"{result.verdict} by the policy of {step.table} {step.hook} on {rules.node.name}"
        if step.table == "ipvs":
            return (f"REJECT (icmp-port-unreachable) by IPVS: virtual service {step.text.split()[2]} ({step.chain} "
                    f"line {step.line}) has no real server with a weight above 0")
        reason = ""
        cr = program.by_line.get(step.line)
        rule = cr.rule if cr is not None else None
        if rule is not None and result.verdict == "REJECT":
            reason = f" ({rule.target_args.get('reject-with', 'icmp-port-unreachable')})"
        comment = _comment(rule) if rule is not None else None
        return (f"{result.verdict}{reason} at {step.table} {step.chain}, {rules.rules_name} line {step.line}"
                + (f": {comment}" if comment else ""))

    def _reply(self, packet: Packet, leaving: Packet, dnat: Nat | None, snat: Nat | None, node: Node,
               routes: list[RouteHop]) -> Reply:
        sent = Packet(packet.proto, leaving.dst, leaving.dport, leaving.src, leaving.sport)
        received = Packet(packet.proto, packet.dst, packet.dport, packet.src, packet.sport)
        if dnat is None and snat is None:
            return Reply(sent, sent, None, "no NAT to reverse: the reply goes straight back")
        undone = " and ".join(x for x in ("the DNAT" if dnat else "", "the SNAT" if snat else "") if x)
        keeper = "IPVS and conntrack reverse" if dnat is not None and dnat.action == "IPVS" else "conntrack reverses"
        text = f"{keeper} {undone} on {node.name}"
        far = [r.node for r in routes if r.node != node.name]
        if dnat is not None and snat is None and far and self.by_ip.get(packet.src) is None:
            text += (f"; the reply leaves {far[-1]} towards {packet.src} directly, so unless it is routed back "
                     f"through {node.name} the client sees {leaving.dst}, not {packet.dst}")
        return Reply(sent, received, node.name, text)


# --- helpers: walks ------------------------------------------------------------------------------


def _program(rules: NodeRules) -> Program:
    """As ``kspec verify`` builds it: node addresses (and, in IPVS mode, the kube-ipvs0 ones), the bridged
    podCIDRs, and in IPVS mode the ipsets (deciding ``-m set``) and the IPVS table."""
    node, family = rules.node, rules.family
    hooks = node_hooks(node, "pod", family, rules.routes)
    local = chains.local_intervals(hooks.local, family)
    bridged = Intervals.of_networks(ipaddress.ip_network(c) for c in hooks.bridged)
    if rules.ipvs is None:
        return Program(rules.ruleset, local, bridged, BRIDGE)
    sets = ipvs_invariants.SetResolver(rules.ipsets or ipset_save.IpSets("<no ipsets>", {}), family)
    bound = ipvs_invariants.bound_addresses(sets, rules.ipvs, node, family)
    return Program(rules.ruleset, local | bound, bridged, BRIDGE, sets=sets,
                   ipvs=ipvs_invariants.walker_table(rules.ipvs, family), physdev=True)


def _agrees(leaf: Leaf) -> bool:
    """Whether a leaf answers every match kspec cannot decide "does not match", as trace_packet assumes."""
    return all(not value for _, text, value in leaf.pick_list() if not text.startswith(CHOICE_PREFIXES))


def _preference(leaf: Leaf) -> tuple:
    """Chain order: the first statistic rule (or real server) that matches wins, so ``True`` sorts first."""
    return tuple(0 if value else 1 for _, text, value in leaf.pick_list()
                 if text.startswith(("--probability", "--every", "ipvs real server")))


def _path(program: Program, node: str, origin: str, packet: Packet, result: Trace
          ) -> tuple[tuple[tuple[str, str], ...], bool]:
    """The hooks the packet met, in the engine's order, with the routing decisions; and whether it ends
    up for the node itself."""
    ipvs_dnat = next((s for s in result.steps if s.table == "ipvs" and s.action.startswith("DNAT")), None)
    met_ipvs = any(s.table == "ipvs" for s in result.steps)
    first_dst = packet.dst if ipvs_dnat is not None else result.final.dst
    first_local = int(ipaddress.ip_address(first_dst)) in program.local
    final_local = int(ipaddress.ip_address(result.final.dst)) in program.local
    route = ("route", f"{first_dst} is {node}'s own address: delivered locally (INPUT)" if first_local else
             f"{first_dst} is not {node}'s own address: " + ("sent out" if origin == "node" else "forwarded"))
    after = ("route", f"IPVS sends it to {result.final.dst}: " + (
        f"{node}'s own address (nat INPUT)" if final_local else "out through the output hooks"))
    ipvs_on = program.ipvs is not None
    if origin == "node":
        head = chains.LOCAL_OUT_BEFORE_IPVS if ipvs_on else chains.LOCAL_OUT[:3]
        tail = chains.LOCAL_OUT_AFTER_IPVS if ipvs_on else chains.LOCAL_OUT[3:]
        order = [*head, route, *([("ipvs", "LOCAL_OUT")] if met_ipvs else []), *([after] if ipvs_dnat else []),
                 *tail, *(chains.LOCAL_IN if final_local else ())]
    elif not first_local:
        order = [*chains.PRE, route, *chains.FORWARD]
    elif not ipvs_on:
        order = [*chains.PRE, route, *chains.LOCAL_IN]
    else:
        rest = (chains.LOCAL_IN_AFTER_IPVS if final_local else chains.LOCAL_OUT_AFTER_IPVS) if ipvs_dnat \
            else chains.LOCAL_IN_AFTER_IPVS
        order = [*chains.PRE, route, *chains.LOCAL_IN_BEFORE_IPVS, *([("ipvs", "LOCAL_IN")] if met_ipvs else []),
                 *([after] if ipvs_dnat else []), *rest]
    path = [h for h in order if h[0] in ("route", "ipvs") or program.chain(*h) is not None]
    if result.verdict != "ACCEPT" and result.steps:
        last = (result.steps[-1].table, result.steps[-1].hook)
        if last in path:
            path = path[:path.index(last) + 1]
    return tuple(path), final_local


def _comment(rule: iptables_save.Rule) -> str | None:
    match = rule.match("comment")
    option = match.option("comment") if match is not None else None
    return option.values[0] if option is not None and option.values else None


def _comment_of(program: Program, result: Trace, action: str) -> str | None:
    step = next((s for s in result.steps if s.action.startswith(action)), None)
    cr = program.by_line.get(step.line) if step is not None else None
    return _comment(cr.rule) if cr is not None else None


def _lookup(routes: routes_batch.Routes, dst: str) -> routes_batch.Route | None:
    address = ipaddress.ip_address(dst)
    best = None
    for route in routes.family(address.version):
        if route.type == "unicast" and address in route.prefix and (best is None
                                                                   or route.prefix.prefixlen > best.prefix.prefixlen):
            best = route
    return best


# --- helpers: names and addresses ----------------------------------------------------------------


def host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _split_endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _normal_endpoint(text: str) -> str:
    try:
        host, port, _ = _address_port(text)
    except TraceError:
        raise TraceError(f"--endpoint {text!r} is not IP:PORT", "write --endpoint 10.244.1.5:8080") from None
    return host_port(host, port)


def _address_port(text: str) -> tuple[str, int, str]:
    """``IP:PORT[/PROTO]`` or ``[v6]:PORT[/PROTO]`` -> (ip, port, PROTO)."""
    body, slash, proto = text.partition("/")
    proto = proto.upper() if slash else "TCP"
    hint = "write IP:PORT[/PROTO], e.g. 10.96.0.10:53/UDP or [fd00::10]:53"
    if proto not in ("TCP", "UDP", "SCTP"):
        raise TraceError(f"unknown protocol {proto!r} in {text!r}", "use TCP, UDP or SCTP")
    if body.startswith("["):
        host, sep, rest = body[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise TraceError(f"{text!r} is not [IPv6]:PORT", hint)
        port = rest[1:]
    else:
        host, sep, port = body.rpartition(":")
        if not sep or ":" in host:
            raise TraceError(f"{text!r} is not IP:PORT", hint + " (svc/NS/NAME:PORT and pod/NS/NAME:PORT work too)")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise TraceError(f"{host!r} is not an IP address", hint) from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise TraceError(f"port {port!r} is not 1-65535", hint)
    return str(address), int(port), proto


def _ip_of(ips: Sequence, family: int, what: str) -> str:
    found = next((str(ip) for ip in ips if ip.version == family), None)
    if found is None:
        raise TraceError(f"{what} has no IPv{family} address", "trace within a family it has (--family)")
    return found


def _node(cluster: ResolvedCluster, name: str) -> Node:
    node = cluster.nodes_by_name.get(name)
    if node is None:
        raise TraceError(f"unknown node {name!r}", "the nodes are " + ", ".join(sorted(cluster.nodes_by_name)[:10]))
    return node


def _pod(cluster: ResolvedCluster, text: str) -> Pod:
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise TraceError(f"pod/{text} is not pod/NAMESPACE/NAME", "e.g. pod/default/frontend")
    pod = cluster.pods_by_key.get((namespace, name))
    if pod is None:
        close = sorted(f"{p.namespace}/{p.name}" for p in cluster.pods if p.name.startswith(name[:3]))[:5]
        raise TraceError(f"unknown pod {namespace}/{name}",
                         ("pods with a similar name: " + ", ".join(close)) if close else "kspec check lists the pods")
    return pod


def _service_destination(text: str, rest: str, cluster: ResolvedCluster, family: int | None) -> Destination:
    parts = rest.split("/")
    namespace, name_port, proto = (parts + [""])[:3] if len(parts) in (2, 3) else ("", "", "")
    name, colon, port_text = name_port.rpartition(":")
    if not colon or not namespace or not name or not port_text:
        raise TraceError(f"{text!r} is not svc/NAMESPACE/NAME:PORT", "e.g. svc/default/search:80 or "
                         "svc/default/search:http")
    svc = cluster.services_by_key.get((namespace, name))
    if svc is None:
        raise TraceError(f"unknown service {namespace}/{name}", "kspec check lists the services")
    if svc.headless or svc.type == "ExternalName" or svc.external_name is not None:
        raise TraceError(f"service {namespace}/{name} has no cluster IP (headless or ExternalName): kube-proxy has no "
                         "rules for it", "trace to one of its pods: --to pod/NS/NAME:PORT")
    wanted = proto.upper() or None
    ports = [p for p in svc.ports if (p.name == port_text or str(p.port) == port_text)
             and (wanted is None or p.protocol == wanted)]
    if not ports:
        listed = ", ".join(f"{p.name or '-'}={p.port}/{p.protocol}" for p in svc.ports)
        raise TraceError(f"service {namespace}/{name} has no port {port_text}", f"its ports are {listed}")
    if len(ports) > 1:
        raise TraceError(f"service {namespace}/{name} has port {port_text} for "
                         + " and ".join(p.protocol for p in ports), f"add the protocol: {text}/UDP")
    port = ports[0]
    ips = [ip for ip in svc.cluster_ips if family is None or ip.version == family]
    if not ips:
        raise TraceError(f"service {namespace}/{name} has no IPv{family} cluster IP", "drop --family")
    label = f"{namespace}/{name}:{port.name or port.port}"
    return Destination("service", label, str(ips[0]), port.port, port.protocol, svc, port)


def _pod_destination(text: str, rest: str, cluster: ResolvedCluster, family: int | None) -> Destination:
    body, slash, proto = rest.rpartition("/") if rest.count("/") >= 2 else (rest, "", "")
    name_part, colon, port_text = body.rpartition(":")
    if not colon or not port_text:
        raise TraceError(f"{text!r} is not pod/NAMESPACE/NAME:PORT", "e.g. pod/default/web-1:8080")
    pod = _pod(cluster, name_part)
    ips = [ip for ip in pod.ips if family is None or ip.version == family]
    if not ips:
        raise TraceError(f"pod {pod.namespace}/{pod.name} has no {'IPv' + str(family) + ' ' if family else ''}address",
                         "give the pod an IP (or let kspec allocate one: it needs a node)")
    wanted = proto.upper() if slash else None
    named = [c for c in pod.ports if c.name == port_text and (wanted is None or c.protocol == wanted)]
    if port_text.isdigit():
        number = int(port_text)
        if not 0 < number < 65536:
            raise TraceError(f"port {port_text} is not 1-65535", "e.g. pod/default/web-1:8080")
        declared = [c for c in pod.ports if c.port == number and (wanted is None or c.protocol == wanted)]
        protocol = wanted or (declared[0].protocol if len({c.protocol for c in declared}) == 1 else "TCP")
    elif named:
        number, protocol = named[0].port, named[0].protocol
    else:
        listed = ", ".join(f"{c.name or '-'}={c.port}/{c.protocol}" for c in pod.ports) or "none"
        raise TraceError(f"pod {pod.namespace}/{pod.name} has no port named {port_text!r}",
                         f"its declared ports are {listed}; a number works for any port")
    if protocol not in ("TCP", "UDP", "SCTP"):
        raise TraceError(f"unknown protocol {protocol!r}", "use TCP, UDP or SCTP")
    return Destination("pod", f"{pod.namespace}/{pod.name}:{port_text}", str(ips[0]), number, protocol)


def _what_address(cluster: ResolvedCluster, host: str, port: int, proto: str) -> str:
    """Which service port (or pod, or node) an ``IP:PORT`` destination names, for the reader."""
    address = ipaddress.ip_address(host)
    is_node = any(address in n.ips for n in cluster.nodes)
    for svc in cluster.services:
        for sp in svc.ports:
            if sp.protocol != proto:
                continue
            label = f"service {svc.namespace}/{svc.name}:{sp.name or sp.port}"
            if is_node and svc.is_node_port and sp.node_port == port:
                return f"nodePort of {label}"
            if sp.port == port:
                for kind, ips in (("cluster IP", svc.cluster_ips), ("external IP", svc.external_ips),
                                  ("load-balancer IP", svc.load_balancer_ips)):
                    if address in ips:
                        return f"{kind} of {label}"
    for pod in cluster.pods:
        if address in pod.ips and not pod.host_network:
            return f"pod {pod.namespace}/{pod.name}"
    node = next((n.name for n in cluster.nodes if address in n.ips), None)
    return f"node {node}" if node else ""


def _outside_only(cluster: ResolvedCluster, address) -> None:
    """An outside source must be outside: not a node's, a pod's, or inside the pod or service network."""
    for node in cluster.nodes:
        if address in node.ips:
            raise TraceError(f"{address} is node {node.name}'s address", f"use --from node/{node.name}")
    for pod in cluster.pods:
        if address in pod.ips and not pod.host_network:
            raise TraceError(f"{address} is pod {pod.namespace}/{pod.name}'s address",
                             f"use --from pod/{pod.namespace}/{pod.name}")
    settings = cluster.settings
    for cidr in (*settings.pod_cidrs, *settings.service_cidrs):
        if address in cidr:
            raise TraceError(f"{address} is inside the cluster network {cidr}, yet no pod has it",
                             "give an address outside the cluster, or --from pod/NS/NAME")
