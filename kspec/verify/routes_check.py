"""KS201's route check: every node's podCIDR is routed, this node's on the bridge and the others via
their node IP.

It reads only the node's routes file and the cluster model, so the iptables checker and the IPVS
checker run the very same check.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict

from kspec.dataplane import routes_batch
from kspec.diagnostics import Span
from kspec.model import IPAddress, IPNetwork, Node
from kspec.verify.chains import Packet
from kspec.verify.encode import Intervals
from kspec.verify.findings import SPORT_WITNESS, Problem
from kspec.verify.node_context import BRIDGE, NodeContext
from kspec.verify.result import Location
from kspec.verify.spans import located


def pod_routes(ctx: NodeContext) -> tuple[list[Problem], int]:
    """Every node's podCIDR is routed: this node's on the bridge, the others via their node IP."""
    if ctx.routes is None:
        return [], 0
    family = ctx.family
    table = RouteIndex(list(ctx.routes.family(family)))
    problems = []
    checked = 0
    for other in sorted(ctx.cluster.nodes, key=lambda n: n.name):
        via = next((ip for ip in other.ips if ip.version == family), None)
        for cidr in other.pod_cidrs:
            if cidr.version != family:
                continue
            checked += 1
            mine = other.name == ctx.node.name
            if not mine and via is None:
                problems.append(route_problem(ctx, other, cidr, None, f"node {other.name} has no IPv{family} "
                                              "address, so its podCIDR cannot be routed to", None))
                continue
            problems += check_cidr_routes(ctx, other, cidr, table, None if mine else via)
    return problems, checked


def route_ok(route: routes_batch.Route, via: IPAddress | None) -> bool:
    if route.type != "unicast":
        return False
    if via is None:
        return route.dev == BRIDGE and route.via is None
    return route.via == via


class RouteIndex:
    """Routes of one family, found by prefix in O(log n) instead of a scan per podCIDR.

    A scan would make KS201's route check quadratic in the nodes (5,000 nodes,
    5,000 routes each: 25 million prefix tests)."""

    def __init__(self, routes: list) -> None:
        self.by_prefix: dict[tuple[int, int], list] = defaultdict(list)
        for route in routes:
            self.by_prefix[(int(route.prefix.network_address), route.prefix.prefixlen)].append(route)
        self.lengths = sorted({r.prefix.prefixlen for r in routes})
        self.starts = sorted(routes, key=lambda r: (int(r.prefix.network_address), r.prefix.prefixlen))
        self.keys = [int(r.prefix.network_address) for r in self.starts]

    def covering(self, cidr: IPNetwork) -> list:
        """Routes whose prefix contains ``cidr`` (itself included)."""
        found = []
        bits = cidr.max_prefixlen
        for length in self.lengths:
            if length > cidr.prefixlen:
                break
            network = int(cidr.network_address) >> (bits - length) << (bits - length)
            found += self.by_prefix.get((network, length), [])
        return found

    def inner(self, cidr: IPNetwork) -> list:
        """Routes strictly inside ``cidr``."""
        low, high = int(cidr.network_address), int(cidr.broadcast_address)
        found = []
        for route in self.starts[bisect_left(self.keys, low):]:
            if int(route.prefix.network_address) > high:
                break
            if route.prefix != cidr and route.prefix.prefixlen > cidr.prefixlen:
                found.append(route)
        return found


def check_cidr_routes(ctx: NodeContext, owner: Node, cidr: IPNetwork, table: RouteIndex,
                      via: IPAddress | None) -> list[Problem]:
    whole = Intervals.of_network(cidr)
    inner = table.inner(cidr)
    covering = table.covering(cidr)
    best = None
    if covering:
        longest = max(r.prefix.prefixlen for r in covering)
        best = min((r for r in covering if r.prefix.prefixlen == longest), key=lambda r: r.metric or 0)
    problems = []
    expected = f"dev {BRIDGE}" if via is None else f"via {via} (node {owner.name})"
    for route in inner:
        if not route_ok(route, via):
            problems.append(route_problem(ctx, owner, cidr, route, f"route for {route.prefix} inside "
                                          f"{owner.name}'s podCIDR {cidr} is '{route.text}', expected {expected}",
                                          Intervals.of_network(route.prefix)))
    rest = whole - Intervals.of_networks(r.prefix for r in inner)
    if rest:
        if best is None:
            problems.append(route_problem(ctx, owner, cidr, None, f"no route for {cidr} ({owner.name}'s podCIDR): "
                                          f"packets to its pods are not delivered (expected {expected})", rest))
        elif not route_ok(best, via):
            problems.append(route_problem(ctx, owner, cidr, best, f"{cidr} ({owner.name}'s podCIDR) is routed by "
                                          f"'{best.text}', expected {expected}", rest))
    return problems


def route_problem(ctx: NodeContext, owner: Node, cidr: IPNetwork, route: routes_batch.Route | None, message: str,
                  addresses: Intervals | None) -> Problem:
    locations = []
    if route is not None and ctx.routes_name:
        locations.append(Location(Span(ctx.routes_name, route.line, 1, route.line, len(route.text) + 1),
                                  f"route at {ctx.routes_name}:{route.line}"))
    locations.append(located(owner.origin, f"node {owner.name}", "node.podCIDR"))
    witness = ""
    if addresses:
        dst_pods = [p for p in ctx.index.pods_by_node.get(owner.name, ()) for ip in p.ips
                    if ip.version == ctx.family and int(ip) in addresses]
        dst = int(dst_pods[0].ips[0]) if dst_pods else addresses.pick()
        src = ctx.pod_ips[0] if ctx.pod_ips else (ctx.own_pods.pick() if ctx.own_pods else ctx.node_ip)
        if src is not None:
            packet = Packet("tcp", ctx.addr(src), SPORT_WITNESS, ctx.addr(dst), 80)
            target = f" (pod {dst_pods[0].namespace}/{dst_pods[0].name})" if dst_pods else ""
            witness = f"{packet}{target}: {ctx.routes_name}: {message}"
    return Problem("KS201", ("KS201", "route", str(cidr), route.line if route else 0), message, tuple(locations),
                   witness, f"node {ctx.node.name}")
