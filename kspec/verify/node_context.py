"""The per-node state the KS2xx packet checkers share: the node's compiled rules, its addresses and pod
networks, and the cluster-wide lookups built once per cluster.

Both the iptables checker (:mod:`kspec.verify.packet_invariants`) and the IPVS one
(:mod:`kspec.verify.ipvs_invariants`) ask their questions against this one context, so it lives apart
from either.
"""

from __future__ import annotations

import ipaddress
import weakref
from collections import defaultdict

from kspec.backends import kube_chains as kc
from kspec.backends import routes as route_conventions
from kspec.dataplane import iptables_save, routes_batch
from kspec.diagnostics import Span
from kspec.model import Node, Pod, ResolvedCluster
from kspec.verify import chains
from kspec.verify.chains import Hooks, Program
from kspec.verify.encode import SRC, Intervals, Solver, ip_text, universe
from kspec.verify.result import Location

BRIDGE = route_conventions.BRIDGE
OUTSIDE_WITNESSES = ("203.0.113.7", "198.51.100.7", "192.0.2.7", "100.64.0.7", "2001:db8:ffff::7", "2600::7")


class ClusterIndex:
    """Cluster-wide lookups built once per cluster (verify runs check_node once per node)."""

    def __init__(self, cluster: ResolvedCluster) -> None:
        self.pods_by_ip: dict[int, Pod] = {}  # IPv4 and IPv6 addresses never collide as ints here:
        self.pod_ips: dict[int, list[int]] = {4: [], 6: []}  # an IPv4-mapped pod address is not a thing
        self.pods_by_node: dict[str, list[Pod]] = defaultdict(list)
        for pod in cluster.pods:
            if pod.host_network:
                continue
            for ip in pod.ips:
                self.pods_by_ip.setdefault(int(ip), pod)
                self.pod_ips[ip.version].append(int(ip))
            if pod.node:
                self.pods_by_node[pod.node].append(pod)
        self.pod_net: dict[int, Intervals] = {}
        self.service_net: dict[int, Intervals] = {}
        for family in (4, 6):
            nets = [c for n in cluster.nodes for c in n.pod_cidrs if c.version == family]
            points = Intervals((ip, ip) for ip in self.pod_ips[family])
            self.service_net[family] = Intervals.of_networks(
                c for c in cluster.settings.service_cidrs if c.version == family)
            self.pod_net[family] = (Intervals.of_networks(nets) | points) - self.service_net[family]
        self.cluster_pod_cidrs = {f: Intervals.of_networks(c for c in cluster.settings.pod_cidrs if c.version == f)
                                  for f in (4, 6)}
        # addresses no outside client has: endpoints (pods, or what Endpoints objects name) and service VIPs
        inside: dict[int, list[int]] = {4: [], 6: []}
        for eps in cluster.endpoints.values():
            for pe in eps.ports:
                for b in pe.backends:
                    inside[b.ip.version].append(int(b.ip))
        for svc in cluster.services:
            for ip in (*svc.external_ips, *svc.load_balancer_ips, *svc.cluster_ips):
                inside[ip.version].append(int(ip))
        self.not_outside = {f: Intervals((a, a) for a in values) for f, values in inside.items()}


_INDEX: tuple[weakref.ref, ClusterIndex] | None = None


def cluster_index(cluster: ResolvedCluster) -> ClusterIndex:
    global _INDEX
    if _INDEX is None or _INDEX[0]() is not cluster:
        _INDEX = (weakref.ref(cluster), ClusterIndex(cluster))
    return _INDEX[1]


class NodeContext:
    def __init__(self, cluster: ResolvedCluster, node: Node, ruleset: iptables_save.RuleSet, rules_name: str,
                 routes: routes_batch.Routes | None, routes_name: str | None, timeout: float) -> None:
        self.cluster = cluster
        self.node = node
        self.family = ruleset.family
        self.ruleset = ruleset
        self.rules_name = rules_name
        self.routes = routes
        self.routes_name = routes_name
        self.solver = Solver(timeout)
        self.index = cluster_index(cluster)
        family = self.family
        hooks = node_hooks(node, "pod", family, routes)
        self.local = chains.local_intervals(hooks.local, family)
        bridged = Intervals.of_networks(ipaddress.ip_network(c) for c in hooks.bridged)
        self.program = Program(ruleset, self.local, bridged, BRIDGE)
        self.node_ip = next((int(ip) for ip in node.ips if ip.version == family), None)
        own = Intervals.of_networks(c for c in node.pod_cidrs if c.version == family)
        own |= Intervals((int(ip), int(ip)) for p in self.index.pods_by_node.get(node.name, ())
                         for ip in p.ips if ip.version == family)
        self.own_pods = own - self.local
        self.pod_net = self.index.pod_net[family] - self.local
        self.outside = self._outside()
        self.pod_ips = sorted(int(ip) for p in self.index.pods_by_node.get(node.name, ())[:64]
                              for ip in p.ips if ip.version == family)
        self.outside_witnesses = [int(ipaddress.ip_address(a)) for a in OUTSIDE_WITNESSES
                                  if ipaddress.ip_address(a).version == family]
        self.sports = Intervals.span(1, 65535)

    def _outside(self) -> Intervals:
        family = self.family
        reserved = ["0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/3"] if family == 4 else ["::/127", "ff00::/8"]
        excluded = (self.index.pod_net[family] | self.index.cluster_pod_cidrs[family] | self.index.service_net[family]
                    | self.index.not_outside[family] | self.local
                    | Intervals.of_networks(ipaddress.ip_network(r) for r in reserved))
        return universe(SRC, family) - excluded

    def rule_location(self, line: int) -> Location:
        cr = self.program.by_line.get(line)
        width = len(cr.rule.text) + 1 if cr is not None else 2
        return Location(Span(self.rules_name, line, 1, line, width), f"rule at {self.rules_name}:{line}")

    def addr(self, value: int) -> str:
        return ip_text(value, self.family)

    def endpoint_text(self, key: tuple[int, int]) -> str:
        return kc.endpoint_string(self.addr(key[0]), key[1], self.family)

    def point_text(self, proto: int, dst: int, dport: int) -> str:
        host = self.addr(dst) if self.family == 4 else f"[{self.addr(dst)}]"
        return f"{chains.protocol_name(proto).upper()} {host}:{dport}"


def node_hooks(node: Node, origin: str, family: int = 4, routes: routes_batch.Routes | None = None) -> Hooks:
    """The :class:`~kspec.verify.chains.Hooks` of a packet entering ``node`` from ``origin`` ("pod",
    "outside", "node"): the node's own addresses (its IPs, its bridge's address, as the routes file or the
    host-gw convention has it) and its bridged podCIDRs; what ``kspec trace`` hands to ``trace_packet``."""
    local = [ip for ip in node.ips if ip.version == family]
    local += [route_conventions.gateway(c) for c in node.pod_cidrs if c.version == family]
    if routes is not None:
        local += [r.src for r in routes.family(family) if r.dev == BRIDGE and r.src is not None]
    bridged = tuple(str(c) for c in node.pod_cidrs if c.version == family)
    return Hooks(origin, tuple(dict.fromkeys(str(a) for a in local)), BRIDGE if origin == "pod" else None, bridged)
