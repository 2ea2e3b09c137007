"""Selectors x pods -> endpoints, through a label index (never all pairs).

For each namespace, pods are indexed by (label key, value).  A selector's
equality terms name the smallest posting list to start from, and only those
candidates are tested against the full selector, so 10,000 services over
150,000 pods cost about the size of the answer, not the product.
Named targetPorts resolve per pod, by name and protocol, as the EndpointSlice
controller does; a pod that lacks the name is no endpoint of that port.
"""

from __future__ import annotations

from collections import defaultdict

from kspec.model import (
    Backend,
    ManualEndpoints,
    Pod,
    PortEndpoints,
    Service,
    ServiceEndpoints,
    ServicePort,
)
from kspec.selector import Selector


class LabelIndex:
    """Pods of the cluster indexed by namespace and label."""

    def __init__(self, pods: list[Pod] | tuple[Pod, ...]) -> None:
        self.by_ns: dict[str, list[Pod]] = defaultdict(list)
        self.by_label: dict[tuple[str, str, str], list[Pod]] = defaultdict(list)
        self.by_key: dict[tuple[str, str], list[Pod]] = defaultdict(list)
        for pod in sorted(pods, key=lambda p: p.key):
            self.by_ns[pod.namespace].append(pod)
            for key, value in pod.labels.items():
                self.by_label[(pod.namespace, key, value)].append(pod)
                self.by_key[(pod.namespace, key)].append(pod)

    def candidates(self, namespace: str, selector: Selector) -> list[Pod]:
        """A superset of the pods the selector matches in the namespace (small when it can be)."""
        best: list[Pod] | None = None
        for key, value in selector.equality_terms():
            found = self.by_label.get((namespace, key, value), [])
            if best is None or len(found) < len(best):
                best = found
        if best is not None:
            return best
        for requirement in selector.requirements:
            if requirement.op in ("exists", "in"):
                found = self.by_key.get((namespace, requirement.key), [])
                if best is None or len(found) < len(best):
                    best = found
        return self.by_ns.get(namespace, []) if best is None else best

    def select(self, namespace: str, selector: Selector) -> list[Pod]:
        return [p for p in self.candidates(namespace, selector) if selector.matches(p.labels)]


def resolve_target(pod: Pod, port: ServicePort) -> int | None:
    """The pod's port number for a service port (named ports per pod, by name and protocol)."""
    target = port.effective_target
    if isinstance(target, int):
        return target
    for container_port in pod.ports:
        if container_port.name == target and container_port.protocol == port.protocol:
            return container_port.port
    return None


def service_families(service: Service, default_family: int) -> tuple[int, ...]:
    if service.cluster_ips:
        return tuple(ip.version for ip in service.cluster_ips)
    return service.ip_families or (default_family,)


def _selector_endpoints(service: Service, pods: list[Pod], families: tuple[int, ...]) -> ServiceEndpoints:
    ports = []
    for port in service.ports:
        backends = []
        for pod in pods:
            number = resolve_target(pod, port)
            if number is None:
                continue
            ready = (pod.ready and not pod.terminating) or service.publish_not_ready
            for ip in pod.ips:
                if ip.version in families:
                    backends.append(Backend(ip=ip, port=number, protocol=port.protocol, ready=ready,
                                            serving=pod.ready,
                                            terminating=pod.terminating, node=pod.node, pod=pod.key))
        ports.append(PortEndpoints(port, tuple(backends)))
    return ServiceEndpoints(service.key, tuple(ports), "selector", tuple(p.key for p in pods))


def _manual_endpoints(service: Service, manual: list[ManualEndpoints]) -> ServiceEndpoints:
    ports = []
    for port in service.ports:
        backends = []
        for item in manual:
            match = [p for p in item.ports if p.name == port.name and p.protocol == port.protocol]
            if not match and len(item.ports) == 1 and len(service.ports) == 1:
                match = list(item.ports)
            for endpoint_port in match[:1]:
                for address in item.addresses:
                    backends.append(Backend(ip=address.ip, port=endpoint_port.port, protocol=port.protocol,
                                            ready=address.ready, serving=address.serving,
                                            terminating=address.terminating, node=address.node, pod=address.target))
        ports.append(PortEndpoints(port, tuple(sorted(set(backends), key=_backend_order))))
    return ServiceEndpoints(service.key, tuple(ports), "manual")


def _backend_order(backend: Backend) -> tuple:
    return (backend.ip.version, int(backend.ip), backend.port)


def compute_endpoints(services: tuple[Service, ...], pods: list[Pod] | tuple[Pod, ...],
                      manual: tuple[ManualEndpoints, ...], default_family: int) -> dict[tuple[str, str], ServiceEndpoints]:
    """Endpoints of every service: from its selector, else from hand-made Endpoints/EndpointSlices."""
    index = LabelIndex(pods)
    manual_by_service: dict[tuple[str, str], list[ManualEndpoints]] = defaultdict(list)
    for item in manual:
        manual_by_service[(item.namespace, item.service)].append(item)
    # EndpointSlices describe the same endpoints as an Endpoints object: prefer the slices.
    for key, items in manual_by_service.items():
        if any(i.kind == "EndpointSlice" for i in items):
            manual_by_service[key] = [i for i in items if i.kind != "Endpoints"]
    result: dict[tuple[str, str], ServiceEndpoints] = {}
    for service in sorted(services, key=lambda s: s.key):
        if service.type == "ExternalName":
            result[service.key] = ServiceEndpoints(service.key, (), "none")
        elif service.selector is not None:
            families = service_families(service, default_family)
            result[service.key] = _selector_endpoints(service, index.select(service.namespace, service.selector), families)
        elif service.key in manual_by_service:
            result[service.key] = _manual_endpoints(service, manual_by_service[service.key])
        else:
            result[service.key] = ServiceEndpoints(service.key, tuple(PortEndpoints(p, ()) for p in service.ports), "none")
    return result
