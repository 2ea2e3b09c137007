"""A node's pod-network routes as ``ip -batch`` input (host-gw, like flannel's).

Every node owns its podCIDRs; pods hang off the bridge ``cbr0``. A node reaches
another node's pods through that node's IP on the node network:

    route replace 10.244.2.0/24 via 192.168.0.12 proto static

and its own pods through the bridge, written exactly as the kernel writes
the connected route of the bridge address:

    route replace 10.244.1.0/24 dev cbr0 proto kernel scope link src 10.244.1.1
    route replace fd00:10:244:1::/64 dev cbr0 proto kernel metric 256

``route replace`` (not ``add``) makes the file idempotent: loading it twice,
or after the kernel added the connected route itself, leaves one route per
prefix and no error (``add`` fails with "File exists").

How the lab builder uses it: in the node's namespace, first give the node
its IPs on its uplink with the node network's prefix (so the next hops are
on-link), create bridge ``cbr0``, give it the first address of each
podCIDR (``10.244.1.1/24``: the pods' gateway; ``src`` needs it to exist),
bring both up, then run ``ip -batch routes.batch``.

A family the node has no IP of gets no routes at all; another node that
lacks an IP of a podCIDR's family cannot be routed to, and gets no route
(pod-to-pod reachability, KS201, then reports it).

>>> print(generate(cluster, cluster.nodes_by_name["node-1"]))  # doctest: +SKIP
"""

from __future__ import annotations

import weakref

from kspec.model import IPAddress, IPNetwork, Node, ResolvedCluster

BRIDGE = "cbr0"
IPV6_KERNEL_METRIC = 256  # the metric of the kernel's own IPv6 connected routes

# (cluster, its remote-route lines): built once, shared by every node's call
_shared: tuple[weakref.ref, list[tuple[tuple[int, int, int], str, str]]] | None = None


def generate(cluster: ResolvedCluster, node: Node) -> str:
    """The ``ip -batch`` text of ``node``: its bridge routes, then one route per other node's podCIDR."""
    families = {ip.version for ip in node.ips}
    lines = [f"# pod-network routes of node {node.name} (host-gw)\n"]
    for cidr in sorted(node.pod_cidrs, key=_cidr_order):
        if cidr.version in families:
            lines.append(bridge_route(cidr))
    for (version, _, _), owner, line in _remote_routes(cluster):
        if owner != node.name and version in families:
            lines.append(line)
    return "".join(lines)


def bridge_route(cidr: IPNetwork) -> str:
    """The connected route of the bridge address (the podCIDR's first address)."""
    if cidr.version == 4:
        return f"route replace {cidr} dev {BRIDGE} proto kernel scope link src {gateway(cidr)}\n"
    return f"route replace {cidr} dev {BRIDGE} proto kernel metric {IPV6_KERNEL_METRIC}\n"


def gateway(cidr: IPNetwork) -> IPAddress:
    """The first address of a podCIDR: the bridge's address, the pods' default gateway."""
    return cidr.network_address + 1 if cidr.num_addresses > 1 else cidr.network_address


def _remote_routes(cluster: ResolvedCluster) -> list[tuple[tuple[int, int, int], str, str]]:
    """(sort key, owning node, line) for every node's podCIDRs, sorted by destination.

    The same list serves every node (each skips its own lines), so a 5,000-node
    compile builds it once rather than once per node.
    """
    global _shared
    if _shared is not None and _shared[0]() is cluster:
        return _shared[1]
    routes = []
    for other in cluster.nodes:
        via = {}
        for ip in other.ips:
            via.setdefault(ip.version, ip)
        for cidr in other.pod_cidrs:
            if cidr.version in via:
                line = f"route replace {cidr} via {via[cidr.version]} proto static\n"
                routes.append((_cidr_order(cidr), other.name, line))
    routes.sort()
    _shared = (weakref.ref(cluster), routes)
    return routes


def _cidr_order(cidr: IPNetwork) -> tuple[int, int, int]:
    return (cidr.version, int(cidr.network_address), cidr.prefixlen)

