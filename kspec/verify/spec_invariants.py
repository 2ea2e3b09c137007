"""KS101-KS110: facts about the resolved model, decided exactly.

Uniqueness by hashing, overlap by a sort-and-sweep over intervals: each
check is O(n log n) and exact, so the solver is kept for the questions that
are really about all packets (KS2xx).  Every finding names the objects at
their spans and gives a concrete witness address or port.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from typing import Iterable

from kspec.frontend.fields import one_edit_apart
from kspec.model import IPNetwork, Node, Pod, ResolvedCluster, Service
from kspec.verify.catalogue import CATALOGUE, checker
from kspec.verify.explain import explain_empty_service
from kspec.verify.result import PROVED, VIOLATED, Finding, Location, Verdict
from kspec.verify.spans import located, suppression


def _verdict(invariant: str, findings: list[Finding], checked: int, subjects: Iterable[str] = ()) -> Verdict:
    findings.sort(key=Finding.sort_key)
    return Verdict(invariant, VIOLATED if findings else PROVED, tuple(findings), checked, tuple(subjects))


def _fix(invariant: str) -> str:
    return CATALOGUE[invariant].fix


def _node_label(node: Node) -> str:
    return f"node {node.name}"


def _pod_label(pod: Pod) -> str:
    made = f" (made by {pod.owner})" if pod.owner else ""
    return f"pod {pod.namespace}/{pod.name}{made}"


def _svc_label(svc: Service) -> str:
    return f"service {svc.namespace}/{svc.name}"


@checker("KS101")
def node_ips_unique(cluster: ResolvedCluster) -> Verdict:
    owners: dict = defaultdict(list)
    for node in cluster.nodes:
        for ip in node.ips:
            owners[ip].append(node)
    findings = []
    for ip, nodes in owners.items():
        if len(nodes) > 1:
            findings.append(Finding(
                "KS101", f"{len(nodes)} nodes share the address {ip}: " + ", ".join(n.name for n in nodes),
                tuple(located(n.origin, _node_label(n), "node.ip") for n in nodes), witness=f"address {ip}",
                hint=_fix("KS101"), subject=f"address {ip}",
                suppressed=suppression(nodes[-1].annotations, "KS101")))
    return _verdict("KS101", findings, len(cluster.nodes))


def _overlaps(items: list[tuple[IPNetwork, object]]) -> list[tuple[tuple[IPNetwork, object], tuple[IPNetwork, object]]]:
    """Overlapping pairs found by a sweep (each overlapping item reported once, with the range it overlaps)."""
    found = []
    for family in (4, 6):
        ranges = sorted(((int(n.network_address), int(n.broadcast_address), n, o) for n, o in items
                         if n.version == family), key=lambda r: (r[0], -r[1]))
        holder = None
        for start, end, net, obj in ranges:
            if holder is not None and start <= holder[1]:
                found.append(((holder[2], holder[3]), (net, obj)))
            if holder is None or end > holder[1]:
                holder = (start, end, net, obj)
    return found


@checker("KS102")
def pod_cidrs_disjoint(cluster: ResolvedCluster) -> Verdict:
    items = [(cidr, node) for node in cluster.nodes for cidr in node.pod_cidrs]
    findings = []
    for (net_a, node_a), (net_b, node_b) in _overlaps(items):
        if node_a is node_b:
            continue
        witness = max(net_a.network_address, net_b.network_address)
        findings.append(Finding(
            "KS102", f"podCIDRs of {node_a.name} ({net_a}) and {node_b.name} ({net_b}) overlap",
            (located(node_b.origin, _node_label(node_b), "node.podCIDR"),
             located(node_a.origin, _node_label(node_a), "node.podCIDR")),
            witness=f"address {witness} is in both", hint=_fix("KS102"), subject=f"node {node_b.name}"))
    return _verdict("KS102", findings, len(items))


@checker("KS103")
def pod_cidrs_inside_cluster(cluster: ResolvedCluster) -> Verdict:
    findings = []
    checked = 0
    for node in cluster.nodes:
        for cidr in node.pod_cidrs:
            checked += 1
            same = [c for c in cluster.settings.pod_cidrs if c.version == cidr.version]
            if not any(cidr.subnet_of(c) for c in same):
                outside = next((a for a in (cidr.network_address, cidr.broadcast_address)
                                if not any(a in c for c in same)), cidr.network_address)
                findings.append(Finding(
                    "KS103", f"podCIDR {cidr} of {node.name} is not inside the cluster pod CIDR "
                    f"{', '.join(str(c) for c in same) or '(none of this family)'}",
                    (located(node.origin, _node_label(node), "node.podCIDR"),),
                    witness=f"address {outside} is in the podCIDR but outside the cluster pod CIDR",
                    hint=_fix("KS103"), subject=f"node {node.name}"))
    return _verdict("KS103", findings, checked)


@checker("KS104")
def pod_ips_unique(cluster: ResolvedCluster) -> Verdict:
    owners: dict = defaultdict(list)
    for pod in cluster.pods:
        if not pod.host_network:
            for ip in pod.ips:
                owners[ip].append(pod)
    findings = []
    for ip, pods in owners.items():
        if len(pods) > 1:
            findings.append(Finding(
                "KS104", f"{len(pods)} pods share the IP {ip}: " + ", ".join(f"{p.namespace}/{p.name}" for p in pods),
                tuple(located(p.origin, _pod_label(p), "pod.ip") for p in pods), witness=f"address {ip}",
                hint=_fix("KS104"), subject=f"pod {pods[1].namespace}/{pods[1].name}",
                suppressed=suppression(pods[1].annotations, "KS104")))
    return _verdict("KS104", findings, len(owners))


@checker("KS105")
def pod_ips_inside_node(cluster: ResolvedCluster) -> Verdict:
    nodes = cluster.nodes_by_name
    findings = []
    checked = 0
    for pod in cluster.pods:
        node = nodes.get(pod.node or "")
        if pod.host_network or node is None:
            continue
        for ip in pod.ips:
            checked += 1
            same = [c for c in node.pod_cidrs if c.version == ip.version]
            if not any(ip in c for c in same):
                owner = next((n for n in cluster.nodes for c in n.pod_cidrs if ip in c), None) if len(cluster.nodes) < 512 else None
                extra = f"; it is in {owner.name}'s podCIDR" if owner is not None and owner is not node else ""
                findings.append(Finding(
                    "KS105", f"pod {pod.namespace}/{pod.name} on {node.name} has IP {ip}, outside the node's podCIDR "
                    f"{', '.join(str(c) for c in same) or '(none)'}{extra}",
                    (located(pod.origin, _pod_label(pod), "pod.ip"),
                     located(node.origin, _node_label(node), "node.podCIDR")),
                    witness=f"address {ip} is routed to " + (owner.name if owner else "no node"),
                    hint=_fix("KS105"), subject=f"pod {pod.namespace}/{pod.name}",
                    suppressed=suppression(pod.annotations, "KS105")))
    return _verdict("KS105", findings, checked)


class _RangeIndex:
    """Which of many ranges holds an address, in O(log n) for the per-node podCIDRs.

    The few cluster-wide ranges are tested directly; podCIDRs are sorted by
    start with a running maximum of their ends, so the walk back from the
    bisection point stops as soon as no earlier range can reach the address
    (exact even when podCIDRs overlap).
    """

    def __init__(self, ranges: list[tuple[IPNetwork, str]]) -> None:
        self.wide = [r for r in ranges if not r[1].startswith("podCIDR")]
        self.sorted = sorted((r for r in ranges if r[1].startswith("podCIDR")),
                             key=lambda r: (r[0].version, int(r[0].network_address)))
        self.keys = [(n.version, int(n.network_address)) for n, _ in self.sorted]
        self.reach: list[tuple[int, int]] = []
        for net, _ in self.sorted:
            end = (net.version, int(net.broadcast_address))
            self.reach.append(max(end, self.reach[-1]) if self.reach and self.reach[-1][0] == net.version else end)

    def containing(self, ip) -> tuple[IPNetwork, str] | None:
        for net, what in self.wide:
            if ip.version == net.version and ip in net:
                return net, what
        point = (ip.version, int(ip))
        position = bisect_right(self.keys, point) - 1
        while position >= 0 and self.reach[position] >= point and self.keys[position][0] == ip.version:
            net, what = self.sorted[position]
            if ip in net:
                return net, what
            position -= 1
        return None


@checker("KS106")
def networks_disjoint(cluster: ResolvedCluster) -> Verdict:
    settings = cluster.settings
    findings = []
    for pod_cidr in settings.pod_cidrs:
        for svc_cidr in settings.service_cidrs:
            if pod_cidr.overlaps(svc_cidr):
                witness = max(pod_cidr.network_address, svc_cidr.network_address)
                findings.append(Finding(
                    "KS106", f"the pod network {pod_cidr} and the service network {svc_cidr} overlap",
                    (Location(settings.origin.span, "cluster settings"),), witness=f"address {witness} is in both",
                    hint=_fix("KS106"), subject="cluster"))
    ranges = [(c, "pod network") for c in settings.pod_cidrs] + [(c, "service network") for c in settings.service_cidrs]
    ranges += [(c, f"podCIDR of {n.name}") for n in cluster.nodes for c in n.pod_cidrs]
    index = _RangeIndex(ranges)
    for node in cluster.nodes:
        for ip in node.ips:
            hit = index.containing(ip)
            if hit is not None:
                net, what = hit
                findings.append(Finding(
                    "KS106", f"node {node.name}'s address {ip} lies inside the {what} {net}",
                    (located(node.origin, _node_label(node), "node.ip"),), witness=f"address {ip}",
                    hint=_fix("KS106"), subject=f"node {node.name}"))
    for node in cluster.nodes:
        for cidr in node.pod_cidrs:
            for svc_cidr in settings.service_cidrs:
                if cidr.overlaps(svc_cidr):
                    findings.append(Finding(
                        "KS106", f"podCIDR {cidr} of {node.name} overlaps the service network {svc_cidr}",
                        (located(node.origin, _node_label(node), "node.podCIDR"),),
                        witness=f"address {max(cidr.network_address, svc_cidr.network_address)} is in both",
                        hint=_fix("KS106"), subject=f"node {node.name}"))
    return _verdict("KS106", findings, len(ranges) + len(cluster.nodes))


@checker("KS107")
def cluster_ips_valid(cluster: ResolvedCluster) -> Verdict:
    cidrs = cluster.settings.service_cidrs
    owners: dict = defaultdict(list)
    findings = []
    for svc in cluster.services:
        for ip in svc.cluster_ips:
            owners[ip].append(svc)
            if not any(ip.version == c.version and ip in c for c in cidrs):
                findings.append(Finding(
                    "KS107", f"cluster IP {ip} of {svc.namespace}/{svc.name} is outside the service CIDR "
                    f"{', '.join(str(c) for c in cidrs)}",
                    (located(svc.origin, _svc_label(svc), "service.clusterIP"),), witness=f"address {ip}",
                    hint=_fix("KS107"), subject=_svc_label(svc), suppressed=suppression(svc.annotations, "KS107")))
    for ip, svcs in owners.items():
        if len(svcs) > 1:
            findings.append(Finding(
                "KS107", f"{len(svcs)} services share the cluster IP {ip}: "
                + ", ".join(f"{s.namespace}/{s.name}" for s in svcs),
                tuple(located(s.origin, _svc_label(s), "service.clusterIP") for s in svcs), witness=f"address {ip}",
                hint=_fix("KS107"), subject=_svc_label(svcs[1]), suppressed=suppression(svcs[1].annotations, "KS107")))
    return _verdict("KS107", findings, len(owners))


@checker("KS108")
def node_ports_valid(cluster: ResolvedCluster) -> Verdict:
    low, high = cluster.settings.node_port_range
    owners: dict = defaultdict(list)
    findings = []
    for svc in cluster.services:
        if not svc.is_node_port:
            continue
        used = [(p.node_port, p.protocol, p) for p in svc.ports if p.node_port is not None]
        if svc.health_check_node_port is not None:
            used.append((svc.health_check_node_port, "TCP", None))
        for number, protocol, port in used:
            owners[(number, protocol)].append((svc, port))
            if not low <= number <= high:
                span = port.origin.at("nodePort") if port is not None else svc.origin.span
                findings.append(Finding(
                    "KS108", f"nodePort {number}/{protocol} of {svc.namespace}/{svc.name} is outside the nodePort "
                    f"range {low}-{high}", (Location(span, _svc_label(svc)),), witness=f"port {number}/{protocol}",
                    hint=_fix("KS108"), subject=_svc_label(svc), suppressed=suppression(svc.annotations, "KS108")))
    for (number, protocol), users in owners.items():
        if len(users) > 1:
            findings.append(Finding(
                "KS108", f"nodePort {number}/{protocol} is used {len(users)} times: "
                + ", ".join(f"{s.namespace}/{s.name}" for s, _ in users),
                tuple(Location(p.origin.at("nodePort") if p is not None else s.origin.span, _svc_label(s))
                      for s, p in users),
                witness=f"port {number}/{protocol} on every node", hint=_fix("KS108"),
                subject=_svc_label(users[1][0]), suppressed=suppression(users[1][0].annotations, "KS108")))
    return _verdict("KS108", findings, len(owners))


@checker("KS109")
def services_have_endpoints(cluster: ResolvedCluster, context=None) -> Verdict:
    findings = []
    subjects = []
    for svc in cluster.services:
        entry = cluster.endpoints.get(svc.key)
        if entry is None or entry.source != "selector" or svc.type == "ExternalName":
            continue
        subjects.append(_svc_label(svc))
        empty = [pe.port for pe in entry.ports if not pe.ready]
        if not empty:
            continue
        names = ", ".join(f"{p.name or p.port}/{p.protocol}" for p in empty)
        details = explain_empty_service(cluster, svc, entry, context)
        findings.append(Finding(
            "KS109", f"service {svc.namespace}/{svc.name} has no ready endpoint for port {names}",
            (located(svc.origin, _svc_label(svc), "service.selector"),),
            witness=f"a connection to {svc.cluster_ips[0] if svc.cluster_ips else svc.name}:{empty[0].port}/"
                    f"{empty[0].protocol} is refused",
            hint=details[0] if details else _fix("KS109"), subject=_svc_label(svc), details=tuple(details),
            suppressed=suppression(svc.annotations, "KS109")))
    return _verdict("KS109", findings, len(subjects), subjects)


@checker("KS110")
def named_ports_resolve(cluster: ResolvedCluster) -> Verdict:
    pods = cluster.pods_by_key
    findings = []
    checked = 0
    for svc in cluster.services:
        entry = cluster.endpoints.get(svc.key)
        if entry is None or entry.source != "selector":
            continue
        for port in svc.ports:
            if not isinstance(port.target_port, str):
                continue
            checked += 1
            missing = [pods[k] for k in entry.selected
                       if not any(c.name == port.target_port and c.protocol == port.protocol for c in pods[k].ports)]
            if not missing:
                continue
            names = sorted({c.name for k in entry.selected for c in pods[k].ports if c.name})
            close = [n for n in names if _near(n, port.target_port)]
            hint = f"did you mean targetPort: {close[0]}?" if close else _fix("KS110")
            shown = ", ".join(f"{p.namespace}/{p.name}" for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
            findings.append(Finding(
                "KS110", f"targetPort {port.target_port!r} of {svc.namespace}/{svc.name} port "
                f"{port.name or port.port} resolves on no {port.protocol} port of {len(missing)} of "
                f"{len(entry.selected)} selected pods: {shown}",
                (Location(port.origin.at("targetPort"), _svc_label(svc)),)
                + tuple(located(p.origin, _pod_label(p)) for p in missing[:3]),
                witness=f"pod {missing[0].namespace}/{missing[0].name} declares ports "
                        + (", ".join(f"{c.name or '-'}={c.port}/{c.protocol}" for c in missing[0].ports) or "none"),
                hint=hint, subject=_svc_label(svc), suppressed=suppression(svc.annotations, "KS110")))
    return _verdict("KS110", findings, checked)


def _near(a: str, b: str) -> bool:
    return one_edit_apart(a, b)
