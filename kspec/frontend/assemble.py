"""Parts + command-line settings -> one Cluster.

Precedence for every cluster setting: objects in the input, then flags, then
the kubeadm defaults of the default cluster.  Two input objects that set one
setting differently are an error (naming both), never a silent pick.  Node
discovery follows PRODUCT.md: Node objects if any; else the nodes that pods
name; else ``--nodes N`` default nodes.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from kspec.diagnostics import DiagnosticSink, Span
from kspec.frontend import values
from kspec.frontend.document import SYNTHETIC, Origin
from kspec.frontend.parts import OwnerRef, Parts, Setting
from kspec.model import (
    DEFAULT_NODE_NETWORK,
    DEFAULT_POD_CIDR,
    DEFAULT_SERVICE_CIDR,
    Cluster,
    ClusterSettings,
    Node,
    Pod,
    ProxySettings,
)

CLI = "<command line>"


@dataclass(frozen=True)
class Flags:
    """Cluster and kube-proxy settings given on the command line (raw strings)."""

    service_cluster_ip_range: str | None = None
    service_node_port_range: str | None = None
    cluster_cidr: str | None = None
    cluster_domain: str | None = None
    proxy_mode: str | None = None
    ipvs_scheduler: str | None = None
    nodes: int = 3
    namespace: str = "default"
    masquerade_all: bool | None = None
    nodeport_addresses: str | None = None
    localhost_nodeports: bool | None = None
    conntrack_tcp_be_liberal: bool | None = None
    detect_local_mode: str | None = None
    random_fully: bool = True
    nfacct: bool = False
    # where each flag sits on the command line, for error spans
    spans: dict[str, Span] = field(default_factory=dict)

    def span(self, name: str) -> Span:
        return self.spans.get(name, Span(CLI, 1, 1, 1, 1))


def _flag_settings(flags: Flags, sink: DiagnosticSink) -> dict[str, Any]:
    """Flags parsed and validated into setting values."""
    found: dict[str, Any] = {}

    def cidrs(raw: str, name: str):
        span = flags.span(name)
        return values.read_cidrs([p.strip() for p in raw.split(",")], lambda i: span, sink, f"--{name}")

    if flags.service_cluster_ip_range:
        found["service_cidrs"] = cidrs(flags.service_cluster_ip_range, "service-cluster-ip-range")
    if flags.cluster_cidr:
        found["pod_cidrs"] = cidrs(flags.cluster_cidr, "cluster-cidr")
    if flags.service_node_port_range:
        found["node_port_range"] = values.read_port_range(flags.service_node_port_range,
                                                          flags.span("service-node-port-range"), sink)
    if flags.cluster_domain:
        found["domain"] = flags.cluster_domain.rstrip(".")
    if flags.nodeport_addresses:
        found["nodeport_addresses"] = cidrs(flags.nodeport_addresses, "nodeport-addresses")
    for name in ("proxy_mode", "ipvs_scheduler", "masquerade_all", "localhost_nodeports",
                 "conntrack_tcp_be_liberal", "detect_local_mode"):
        value = getattr(flags, name)
        if value is not None:
            found[name] = value
    return {k: v for k, v in found.items() if v not in (None, ())}


def _resolve(parts: Parts, flags: Flags, sink: DiagnosticSink) -> tuple[dict[str, Any], dict[str, Setting], list[str]]:
    """Each setting's value by precedence; the winning input Setting; the defaulted names."""
    from_flags = _flag_settings(flags, sink)
    chosen: dict[str, Any] = {}
    winners: dict[str, Setting] = {}
    for name, given in parts.settings.items():
        first = given[0]
        for other in given[1:]:
            if other.value != first.value:
                sink.error(f"conflicting values for {name}: {_show(first.value)} and {_show(other.value)}",
                           other.origin.span, f"the other value is set at {first.origin.span} ({first.source})")
        chosen[name] = first.value
        winners[name] = first
    for name, value in from_flags.items():
        chosen.setdefault(name, value)
    return chosen, winners, [n for n in ("service_cidrs", "pod_cidrs", "domain", "node_port_range", "proxy_mode")
                             if n not in chosen]


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _origin_of(winners: dict[str, Setting], names: tuple[str, ...]) -> Origin:
    """Where the settings were given: the parent of the first setting found (the
    kspec ``cluster:`` section, the KubeProxyConfiguration...), for findings about them."""
    for name in names:
        if name in winners:
            origin = winners[name].origin
            return Origin(origin.doc, origin.path[:-1])
    return SYNTHETIC


def build_settings(parts: Parts, flags: Flags, sink: DiagnosticSink) -> ClusterSettings:
    chosen, winners, defaulted = _resolve(parts, flags, sink)
    proxy = ProxySettings(
        mode=chosen.get("proxy_mode", "iptables"),
        ipvs_scheduler=chosen.get("ipvs_scheduler", "rr"),
        masquerade_all=chosen.get("masquerade_all", False),
        masquerade_bit=chosen.get("masquerade_bit", 14),
        nodeport_addresses=tuple(chosen.get("nodeport_addresses", ())),
        localhost_nodeports=chosen.get("localhost_nodeports", True),
        conntrack_tcp_be_liberal=chosen.get("conntrack_tcp_be_liberal", False),
        detect_local_mode=chosen.get("detect_local_mode", "ClusterCIDR"),
        random_fully=flags.random_fully,
        nfacct=flags.nfacct,
        origin=_origin_of(winners, ("proxy_mode", "ipvs_scheduler", "masquerade_all", "detect_local_mode")),
    )
    settings = ClusterSettings(
        name=chosen.get("name", "kspec"),
        domain=chosen.get("domain", "cluster.local"),
        pod_cidrs=tuple(chosen.get("pod_cidrs", (ipaddress.ip_network(DEFAULT_POD_CIDR),))),
        service_cidrs=tuple(chosen.get("service_cidrs", (ipaddress.ip_network(DEFAULT_SERVICE_CIDR),))),
        node_port_range=chosen.get("node_port_range", (30000, 32767)),
        node_cidr_mask_v4=chosen.get("node_cidr_mask_v4", 24),
        node_cidr_mask_v6=chosen.get("node_cidr_mask_v6", 64),
        proxy=proxy,
        origin=_origin_of(winners, ("pod_cidrs", "service_cidrs", "domain", "node_port_range", "name")),
        defaulted=tuple(defaulted),
    )
    for cidr in settings.pod_cidrs:
        mask = settings.node_cidr_mask_v4 if cidr.version == 4 else settings.node_cidr_mask_v6
        if mask < cidr.prefixlen:
            where = winners.get("pod_cidrs")
            sink.error(f"the cluster pod CIDR {cidr} is smaller than one node's podCIDR (/{mask})",
                       where.origin.span if where else flags.span("cluster-cidr"),
                       f"use a pod CIDR of /{mask} or larger, or a smaller nodeCIDRMaskSize")
    return settings


def _check_unique(items, key, what: str, sink: DiagnosticSink) -> list:
    seen: dict = {}
    kept = []
    for item in items:
        k = key(item)
        if k in seen:
            label = "/".join(k) if isinstance(k, tuple) else k
            sink.error(f"{what} {label} is defined twice", item.origin.span,
                       f"the first definition is at {seen[k].origin.span}; remove or rename one")
            continue
        seen[k] = item
        kept.append(item)
    return kept


def _materialized(parts: Parts) -> set[tuple[str, str, str]]:
    """Workloads whose pods (or whose ReplicaSet) are already in the input.

    A ``kubectl get -o yaml`` dump holds a Deployment, its ReplicaSet and
    its Pods: following ownerReferences upwards from every Pod and every
    ReplicaSet marks the workloads that must not be expanded again.
    """
    done: set[tuple[str, str, str]] = set()

    def climb(ns: str, ref: OwnerRef | None) -> None:
        while ref is not None and (ns, ref.kind, ref.name) not in done:
            done.add((ns, ref.kind, ref.name))
            ref = parts.owners.get((ns, ref.kind, ref.name))

    for (ns, _), ref in parts.pod_owners.items():
        climb(ns, ref)
    for (ns, kind, _), ref in parts.owners.items():
        if kind == "ReplicaSet":
            climb(ns, ref)
    return done


def _default_nodes(count: int, settings: ClusterSettings) -> list[Node]:
    network = ipaddress.ip_network(DEFAULT_NODE_NETWORK)
    return [Node(name=f"node-{i}", ips=(network.network_address + 10 + i,), synthetic=True)
            for i in range(1, count + 1)]


def _nodes_from_pods(pods: list[Pod], settings: ClusterSettings) -> list[Node]:
    """Nodes named by pods (``kubectl get pods -o yaml``), with podCIDRs inferred where unambiguous."""
    names = sorted({p.node for p in pods if p.node})
    network = ipaddress.ip_network(DEFAULT_NODE_NETWORK)
    by_block: dict[tuple[str, Any], set[str]] = defaultdict(set)
    for pod in pods:
        if not pod.node or pod.host_network:
            continue
        for ip in pod.ips:
            for cidr in settings.pod_cidrs:
                if ip.version == cidr.version and ip in cidr:
                    mask = settings.node_cidr_mask_v4 if ip.version == 4 else settings.node_cidr_mask_v6
                    block = ipaddress.ip_network(f"{ip}/{mask}", strict=False)
                    by_block[(pod.node, block)].add(pod.node)
    owners: dict[Any, set[str]] = defaultdict(set)
    for (node, block) in by_block:
        owners[block].add(node)
    per_node: dict[str, list] = defaultdict(list)
    for (node, block) in by_block:
        if len(owners[block]) == 1:
            per_node[node].append(block)
    nodes = []
    for index, name in enumerate(names, start=1):
        blocks = per_node.get(name, [])
        families = [b.version for b in blocks]
        cidrs = tuple(sorted(blocks, key=lambda b: b.version)) if len(set(families)) == len(families) else ()
        nodes.append(Node(name=name, ips=(network.network_address + 10 + index,), pod_cidrs=cidrs, synthetic=True))
    return nodes


def covering_network(addresses: list) -> Any:
    """The smallest network holding every address (all of one family)."""
    low, high = min(int(a) for a in addresses), max(int(a) for a in addresses)
    bits = addresses[0].max_prefixlen
    length = bits - (low ^ high).bit_length()
    return ipaddress.ip_network((low >> (bits - length) << (bits - length), length)) if addresses[0].version == 4 \
        else ipaddress.IPv6Network((low >> (bits - length) << (bits - length), length))


def _warn_outside_defaults(settings: ClusterSettings, pods: list[Pod], services: list, flags: Flags,
                           sink: DiagnosticSink) -> None:
    """A dump from a cluster with other ranges than kubeadm's: say which flag to pass, once."""
    checks = (("pod_cidrs", settings.pod_cidrs, [(ip, p) for p in pods if not p.host_network for ip in p.ips],
               "pod IPs", "--cluster-cidr"),
              ("service_cidrs", settings.service_cidrs, [(ip, s) for s in services for ip in s.cluster_ips],
               "cluster IPs", "--service-cluster-ip-range"))
    for name, cidrs, used, what, flag in checks:
        if name not in settings.defaulted:
            continue
        outside = [(ip, obj) for ip, obj in used if not any(ip.version == c.version and ip in c for c in cidrs)]
        if outside:
            family = [ip for ip, _ in outside if ip.version == outside[0][0].version]
            sink.warning(f"{len(outside)} {what} lie outside the default range {', '.join(map(str, cidrs))}, "
                         f"e.g. {outside[0][0]}", outside[0][1].origin.span,
                         f"the input does not say the cluster's range: pass {flag} {covering_network(family)} "
                         "(or the cluster's real setting)")


def assemble(parts: Parts, flags: Flags, sink: DiagnosticSink) -> Cluster:
    """Merge everything the inputs and flags say into one Cluster (nothing allocated yet)."""
    settings = build_settings(parts, flags, sink)
    services = _check_unique(parts.services, lambda s: s.key, "service", sink)
    pods = _check_unique(parts.pods, lambda p: p.key, "pod", sink)
    workloads = _check_unique(parts.workloads, lambda w: (w.namespace, w.kind, w.name), "workload", sink)
    done = _materialized(parts)
    workloads = [w for w in workloads if (w.namespace, w.kind, w.name) not in done]
    default_nodes = False
    if parts.nodes:
        nodes = _check_unique(parts.nodes, lambda n: n.name, "node", sink)
        known = {n.name for n in nodes}
        for pod in pods:
            if pod.node and pod.node not in known:
                where = pod.origin.at("spec", "nodeName") if pod.origin.doc and pod.origin.doc.kind == "manifest" \
                    else pod.origin.at("node")
                sink.error(f"pod {pod.namespace}/{pod.name} is on node {pod.node!r}, which is not defined", where,
                           "define the node, or fix the node name (known: " + ", ".join(sorted(known)[:5])
                           + (", ..." if len(known) > 5 else "") + ")")
        for workload in workloads:
            if workload.node and workload.node not in known:
                sink.error(f"{workload.kind} {workload.namespace}/{workload.name} is pinned to unknown node "
                           f"{workload.node!r}", workload.origin.span, "define the node or fix its name")
    elif any(p.node for p in pods):
        nodes = _nodes_from_pods(pods, settings)
        default_nodes = True
    else:
        if flags.nodes < 1:
            sink.error("--nodes must be at least 1", flags.span("nodes"), "use --nodes 3")
        nodes = _default_nodes(max(flags.nodes, 1), settings)
        default_nodes = True
    _warn_outside_defaults(settings, pods, services, flags, sink)
    return Cluster(settings=settings, nodes=tuple(sorted(nodes, key=lambda n: n.name)),
                   pods=tuple(pods), workloads=tuple(workloads), services=tuple(services),
                   manual_endpoints=tuple(parts.manual_endpoints), default_nodes=default_nodes,
                   skipped_kinds=dict(sorted(parts.skipped.items())))
