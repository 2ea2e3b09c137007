"""The host's own networks, read with ``ip -j``, and the lab addresses that overlap them.

Kept apart because it is the only part of planning that looks at this
machine: it reads ``ip -j addr``/``ip -j route`` (never changes anything)
and refuses, before anything is built, any lab address or range that
overlaps a network of the host.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from kspec.diagnostics import Diagnostic, Span, error
from kspec.frontend.document import Origin
from kspec.lab.netns import LabPlan, LabUnavailable
from kspec.model import IPNetwork, ResolvedCluster

_LAB_SPAN = Span.whole("<lab>")


@dataclass(frozen=True, slots=True)
class HostNetwork:
    network: IPNetwork
    what: str  # "address 192.0.2.2/24 on eth0", "route 10.0.0.0/8 via 192.0.2.1 dev eth0"


def parse_host_networks(addr_json: str, route_json: str) -> list[HostNetwork]:
    """The networks of ``ip -j addr show`` and ``ip -j route show`` (default routes left out)."""
    found: list[HostNetwork] = []
    for link in json.loads(addr_json or "[]"):
        for info in link.get("addr_info", ()):
            local, length = info.get("local"), info.get("prefixlen")
            if local is None or length is None:
                continue
            try:
                iface = ipaddress.ip_interface(f"{local}/{length}")
            except ValueError:
                continue
            found.append(HostNetwork(iface.network, f"address {iface} on {link.get('ifname', '?')}"))
    for route in json.loads(route_json or "[]"):
        dst = route.get("dst")
        if not dst or dst == "default":
            continue
        try:
            network = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if network.prefixlen == 0:
            continue
        via = f" via {route['gateway']}" if route.get("gateway") else ""
        found.append(HostNetwork(network, f"route {dst}{via} dev {route.get('dev', '?')}"))
    return found


def read_host_networks() -> list[HostNetwork]:
    """What the host (this process's namespace) has configured; reading only, both families."""
    texts = []
    for argv in (("ip", "-j", "addr", "show"), ("ip", "-j", "route", "show"), ("ip", "-j", "-6", "route", "show")):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        if done.returncode != 0:
            raise LabUnavailable(f"cannot read the host's networks ({' '.join(argv)}): {done.stderr.strip()}")
        texts.append(done.stdout)
    routes = json.loads(texts[1] or "[]") + json.loads(texts[2] or "[]")
    return parse_host_networks(texts[0], json.dumps(routes))


def lab_addresses(cluster: ResolvedCluster, lab: LabPlan) -> Iterator[tuple[str, IPNetwork, Origin | None]]:
    """Every address or range the lab configures or its rules send to, with the object it comes from."""
    settings = cluster.settings
    yield "node network", lab.node_network, None
    if lab.outside is not None:
        yield "outside client", _host(lab.outside.ip.ip), None
    for cidr in settings.pod_cidrs:
        yield "cluster pod CIDR", cidr, settings.origin
    for cidr in settings.service_cidrs:
        yield "service CIDR", cidr, settings.origin
    for node in cluster.nodes:
        for value in node.ips:
            yield f"node {node.name}", _host(value), node.origin
        for cidr in node.pod_cidrs:
            yield f"node {node.name} podCIDR", cidr, node.origin
    for pod in cluster.pods:
        if not pod.host_network:
            for value in pod.ips:
                yield f"pod {pod.namespace}/{pod.name}", _host(value), pod.origin
    for svc in cluster.services:
        for what, values in (("cluster IP", svc.cluster_ips), ("external IP", svc.external_ips),
                             ("load-balancer IP", svc.load_balancer_ips)):
            for value in values:
                yield f"service {svc.namespace}/{svc.name} {what}", _host(value), svc.origin
    for key in sorted(cluster.endpoints):
        svc = cluster.services_by_key.get(key)
        for value in sorted({b.ip for pe in cluster.endpoints[key].ports for b in pe.backends}, key=str):
            yield f"endpoint of service {key[0]}/{key[1]}", _host(value), svc.origin if svc else None


def _host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> IPNetwork:
    return ipaddress.ip_network(address)


def host_overlaps(
    cluster: ResolvedCluster, lab: LabPlan, host: Sequence[HostNetwork], shown: int = 20
) -> list[Diagnostic]:
    """One error per lab address or range that overlaps a network configured on the host.

    The lab's namespaces are never linked to the host, but a lab address that
    is also a host network makes every observation ambiguous to whoever reads
    it and invites mistakes when poking at the lab by hand: refused.
    """
    by_version = {4: [h for h in host if h.network.version == 4], 6: [h for h in host if h.network.version == 6]}
    found: list[Diagnostic] = []
    seen: set[tuple[str, str]] = set()
    for what, network, origin in lab_addresses(cluster, lab):
        for h in by_version[network.version]:
            if not network.overlaps(h.network) or (str(network), h.what) in seen:
                continue
            seen.add((str(network), h.what))
            span = origin.span if origin is not None else _LAB_SPAN
            found.append(error(f"{what} {network} overlaps the host's {h.what}", span,
                               "the lab must not shadow a network of this machine: renumber the cluster into "
                               "an unused part of 198.18.0.0/15"))
    if len(found) > shown:
        rest = error(f"... and {len(found) - shown} more lab addresses overlap host networks", _LAB_SPAN,
                     "renumber the cluster")
        return [*found[:shown], rest]
    return found
