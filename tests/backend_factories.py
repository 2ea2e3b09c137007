"""Hand-built ResolvedCluster objects for the backend tests.

The endpoints here are computed by a tiny stand-in for the endpoints pass:
targetPorts resolve per pod (named ports by name and protocol), one Backend
per (service port, member pod, pod IP), conditions as the EndpointSlice
controller sets them. Membership is given explicitly, so no selector is needed.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Mapping, Sequence

from kspec.model import (
    Backend,
    ClusterSettings,
    ContainerPort,
    Node,
    Pod,
    PortEndpoints,
    ResolvedCluster,
    Service,
    ServiceEndpoints,
    ServicePort,
)


def ip(text: str):
    return ipaddress.ip_address(text)


def net(text: str):
    return ipaddress.ip_network(text)


def node(name: str, *ips: str, pod_cidrs: Sequence[str] = ()) -> Node:
    return Node(name=name, ips=tuple(ip(i) for i in ips), pod_cidrs=tuple(net(c) for c in pod_cidrs))


def pod(
    namespace: str,
    name: str,
    node_name: str | None,
    *ips: str,
    ports: Iterable[tuple[str, int] | tuple[str, int, str]] = (),
    ready: bool = True,
    terminating: bool = False,
    host_network: bool = False,
) -> Pod:
    container_ports = tuple(
        ContainerPort(port=p[1], protocol=p[2] if len(p) > 2 else "TCP", name=p[0]) for p in ports
    )
    return Pod(
        namespace=namespace,
        name=name,
        node=node_name,
        ips=tuple(ip(i) for i in ips),
        ports=container_ports,
        ready=ready,
        terminating=terminating,
        host_network=host_network,
    )


def service(
    namespace: str,
    name: str,
    *ports: ServicePort,
    cluster_ips: Sequence[str] = (),
    headless: bool = False,
    type: str = "ClusterIP",
    external_name: str | None = None,
    publish_not_ready: bool = False,
    ip_families: Sequence[int] = (),
) -> Service:
    return Service(
        namespace=namespace,
        name=name,
        type=type,
        ports=tuple(ports),
        cluster_ips=tuple(ip(i) for i in cluster_ips),
        headless=headless,
        external_name=external_name,
        publish_not_ready=publish_not_ready,
        ip_families=tuple(ip_families),
    )


def port(port: int, name: str = "", target: int | str | None = None, protocol: str = "TCP",
         app_protocol: str | None = None) -> ServicePort:
    return ServicePort(port=port, protocol=protocol, name=name, target_port=target, app_protocol=app_protocol)


def _resolve_target(svc_port: ServicePort, p: Pod) -> int | None:
    target = svc_port.effective_target
    if isinstance(target, int):
        return target
    for cp in p.ports:
        if cp.name == target and cp.protocol == svc_port.protocol:
            return cp.port
    return None


def selector_endpoints(svc: Service, members: Sequence[Pod]) -> ServiceEndpoints:
    entries = []
    for sp in svc.ports:
        backends = []
        for p in members:
            number = _resolve_target(sp, p)
            if number is None:
                continue
            ready = svc.publish_not_ready or (p.ready and not p.terminating)
            for address in p.ips:
                backends.append(Backend(address, number, sp.protocol, ready, p.ready, p.terminating, p.node, p.key))
        entries.append(PortEndpoints(sp, tuple(backends)))
    return ServiceEndpoints(svc.key, tuple(entries), "selector", tuple(p.key for p in members))


def manual_endpoints(
    svc: Service, addresses: Sequence[tuple[str, Mapping[str, int], bool]]
) -> ServiceEndpoints:
    """``addresses``: (ip, {service port name: endpoint port}, ready)."""
    entries = []
    for sp in svc.ports:
        backends = tuple(
            Backend(ip(a), ports[sp.name], sp.protocol, ready, ready, False, None, None)
            for a, ports, ready in addresses
            if sp.name in ports
        )
        entries.append(PortEndpoints(sp, backends))
    return ServiceEndpoints(svc.key, tuple(entries), "manual")


def cluster(
    nodes: Sequence[Node] = (),
    pods: Sequence[Pod] = (),
    services: Sequence[Service] = (),
    members: Mapping[tuple[str, str], Sequence[str]] | None = None,
    manual: Mapping[tuple[str, str], ServiceEndpoints] | None = None,
    settings: ClusterSettings | None = None,
) -> ResolvedCluster:
    """A resolved cluster; ``members`` maps a service key to the names of the
    pods (in the service's namespace) its selector matches."""
    by_key = {p.key: p for p in pods}
    endpoints: dict[tuple[str, str], ServiceEndpoints] = {}
    for svc in services:
        if manual and svc.key in manual:
            endpoints[svc.key] = manual[svc.key]
        elif members is not None and svc.key in members:
            chosen = [by_key[(svc.namespace, n)] for n in members[svc.key]]
            endpoints[svc.key] = selector_endpoints(svc, chosen)
        else:
            endpoints[svc.key] = ServiceEndpoints(svc.key, (), "none")
    return ResolvedCluster(
        settings=settings or ClusterSettings(),
        nodes=tuple(nodes),
        pods=tuple(pods),
        services=tuple(services),
        endpoints=endpoints,
    )
