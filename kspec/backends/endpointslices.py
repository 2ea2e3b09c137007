"""discovery.k8s.io/v1 EndpointSlice objects, as kube-controller-manager makes them.

Two controllers write EndpointSlices, and we model both:

* the EndpointSlice controller, for Services with a selector: one slice set
  per address type of the Service (its ipFamilies), endpoints grouped by
  their resolved port set (a named targetPort may resolve to different
  numbers on different pods, and a pod that resolves no port still gets an
  endpoint, in a slice without ports), at most 100 endpoints per slice
  (``--max-endpoints-per-slice``), and an empty placeholder slice for an
  address type that has no endpoints at all;
* the EndpointSliceMirroring controller, for selector-less Services whose
  endpoints the input gives by hand (source ``manual``): one slice per
  (address type, port set), only the ``ready`` condition, at most 1000
  endpoints (``--mirroring-max-endpoints-per-subset``; the rest are dropped,
  as the controller drops them), no placeholder.

The controllers name slices with ``generateName: <service>-`` and five random
characters; we derive those characters from a hash of (namespace, service,
slice index) so the output is byte-stable. Endpoints inside a slice are sorted
by address (the controller's order is random). Deliberately left out, for lack
of data in the model: ``ownerReferences`` (they need the Service's UID),
``zone`` and ``hints``, ``hostname`` (the model has no pod hostname/subdomain),
the Service's own labels (the model does not keep them), ``appProtocol`` on
mirrored ports, and the ``last-change-trigger-time`` annotation (a time
stamp). Empty lists are written ``[]`` as the controller builds them (a live
API server prints them ``null``).

>>> text = generate(cluster)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

import yaml

from kspec.model import Backend, IPAddress, ResolvedCluster, Service, ServiceEndpoints

MAX_ENDPOINTS_PER_SLICE = 100
MAX_MIRRORED_ENDPOINTS = 1000
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
MIRRORING_CONTROLLER_NAME = "endpointslicemirroring-controller.k8s.io"
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
LABEL_HEADLESS = "service.kubernetes.io/headless"

# k8s.io/apimachinery/pkg/util/rand: the alphabet of generated name suffixes
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
NAME_SUFFIX_LENGTH = 5
# names.SimpleNameGenerator cuts the base so that base + suffix fits 63 characters
MAX_GENERATE_NAME_BASE = 63 - NAME_SUFFIX_LENGTH

ADDRESS_TYPES = {4: "IPv4", 6: "IPv6"}


@dataclass(frozen=True, slots=True, order=True)
class SlicePort:
    """One entry of a slice's ``ports``: the service port resolved on a pod."""

    name: str
    port: int
    protocol: str
    app_protocol: str | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint of one address type; ``ports`` is the set it is grouped by."""

    address: IPAddress
    ready: bool
    serving: bool | None  # None: not set (mirrored endpoints carry ``ready`` only)
    terminating: bool | None
    node: str | None
    pod: tuple[str, str] | None
    ports: tuple[SlicePort, ...]


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service: str
    address_type: str
    managed_by: str
    headless: bool
    ports: tuple[SlicePort, ...]
    endpoints: tuple[Endpoint, ...]


def generate(cluster: ResolvedCluster) -> str:
    """The cluster's EndpointSlices as multi-document YAML (keys in kubectl's order)."""
    return "---\n".join(render_slice(s) for s in endpoint_slices(cluster))


def endpoint_slices(cluster: ResolvedCluster) -> list[EndpointSlice]:
    """Every EndpointSlice of the cluster, services in (namespace, name) order."""
    used: set[tuple[str, str]] = set()
    result: list[EndpointSlice] = []
    for service in sorted(cluster.services, key=lambda s: s.key):
        entry = cluster.endpoints.get(service.key)
        if entry is None or service.type == "ExternalName":
            continue
        if entry.source == "selector":
            groups = _controller_groups(cluster, service, entry)
            managed_by = CONTROLLER_NAME
        elif entry.source == "manual":
            groups = _mirrored_groups(_manual_endpoints(entry))
            managed_by = MIRRORING_CONTROLLER_NAME
        else:
            continue
        for index, (address_type, ports, endpoints) in enumerate(groups):
            result.append(
                EndpointSlice(
                    namespace=service.namespace,
                    name=_slice_name(service.namespace, service.name, index, used),
                    service=service.name,
                    address_type=address_type,
                    managed_by=managed_by,
                    headless=service.headless and managed_by == CONTROLLER_NAME,
                    ports=ports,
                    endpoints=endpoints,
                )
            )
    return result


def service_endpoints(cluster: ResolvedCluster, service: Service) -> tuple[Endpoint, ...]:
    """The endpoints the slices of ``service`` hold, sorted by address.

    This is what a consumer of EndpointSlices (kube-proxy, CoreDNS) sees; the
    DNS backend reads headless services' records from it.
    """
    entry = cluster.endpoints.get(service.key)
    if entry is None or service.type == "ExternalName":
        return ()
    if entry.source == "selector":
        families = set(address_families(cluster, service))
        found = _selector_endpoints(cluster, service, entry)
        return tuple(e for e in found if e.address.version in families)
    if entry.source == "manual":
        kept = [e for _, _, group in _mirrored_groups(_manual_endpoints(entry)) for e in group]
        return tuple(sorted(kept, key=_endpoint_order))
    return ()


def address_families(cluster: ResolvedCluster, service: Service) -> tuple[int, ...]:
    """The address types the controller makes slices for: the Service's IP families.

    Those of its cluster IPs, else its ipFamilies, else (a headless Service
    without ipFamilies) what the API server defaults them to: the family of the
    cluster's primary service CIDR. The endpoints pass picks them the same way.
    """
    if service.cluster_ips:
        families = tuple(ip.version for ip in service.cluster_ips)
    elif service.ip_families:
        families = service.ip_families
    elif cluster.settings.service_cidrs:
        families = (cluster.settings.service_cidrs[0].version,)
    else:
        families = (4,)
    return tuple(sorted(set(families)))


# -- the EndpointSlice controller ---------------------------------------------


class _PodEntry:
    __slots__ = ("ready", "serving", "terminating", "node", "pod", "ips", "ports")

    def __init__(self, ready: bool, serving: bool, terminating: bool, node: str | None,
                 pod: tuple[str, str] | None) -> None:
        self.ready = ready
        self.serving = serving
        self.terminating = terminating
        self.node = node
        self.pod = pod
        self.ips: dict[int, IPAddress] = {}
        self.ports: dict[int, SlicePort] = {}


def _selector_endpoints(
    cluster: ResolvedCluster, service: Service, entry: ServiceEndpoints
) -> list[Endpoint]:
    """One endpoint per (selected pod, pod IP); ports in the Service's port order.

    Conditions are podToEndpoint's, read from the pod where the model has it:
    serving is the pod's readiness, terminating its deletion, and ready is
    ``publishNotReadyAddresses or (serving and not terminating)``.
    """
    pods = cluster.pods_by_key
    by_pod: dict[object, _PodEntry] = {}

    def entry_for(key: object, pod_key: tuple[str, str] | None, fallback: Backend | None) -> _PodEntry:
        acc = by_pod.get(key)
        if acc is None:
            pod = pods.get(pod_key) if pod_key is not None else None
            if pod is not None:
                serving, terminating, node = pod.ready, pod.terminating, pod.node
            else:
                assert fallback is not None
                serving, terminating, node = fallback.serving, fallback.terminating, fallback.node
            ready = service.publish_not_ready or (serving and not terminating)
            acc = by_pod[key] = _PodEntry(ready, serving, terminating, node, pod_key)
            if pod is not None:
                for ip in pod.ips:
                    acc.ips.setdefault(ip.version, ip)
        return acc

    for index, port_entry in enumerate(entry.ports):
        sp = port_entry.port
        for b in port_entry.backends:
            acc = entry_for(b.pod if b.pod is not None else b.ip, b.pod, b)
            acc.ips.setdefault(b.ip.version, b.ip)
            acc.ports.setdefault(index, SlicePort(sp.name, b.port, sp.protocol, sp.app_protocol))
    for key in entry.selected:
        if key in pods:
            entry_for(key, key, None)
    endpoints = [
        Endpoint(ip, acc.ready, acc.serving, acc.terminating, acc.node, acc.pod,
                 tuple(acc.ports[i] for i in sorted(acc.ports)))
        for acc in by_pod.values()
        for ip in acc.ips.values()
    ]
    endpoints.sort(key=_endpoint_order)
    return endpoints


def _controller_groups(
    cluster: ResolvedCluster, service: Service, entry: ServiceEndpoints
) -> Iterable[tuple[str, tuple[SlicePort, ...], tuple[Endpoint, ...]]]:
    """(address type, ports, endpoints) of each slice, chunked at 100 endpoints."""
    endpoints = _selector_endpoints(cluster, service, entry)
    for family in address_families(cluster, service):
        by_ports: dict[tuple[SlicePort, ...], list[Endpoint]] = {}
        for e in endpoints:
            if e.address.version == family:
                by_ports.setdefault(e.ports, []).append(e)
        if not by_ports:
            yield ADDRESS_TYPES[family], (), ()
            continue
        for ports in sorted(by_ports):
            group = by_ports[ports]
            for start in range(0, len(group), MAX_ENDPOINTS_PER_SLICE):
                yield ADDRESS_TYPES[family], ports, tuple(group[start:start + MAX_ENDPOINTS_PER_SLICE])


# -- the EndpointSliceMirroring controller ------------------------------------


def _manual_endpoints(entry: ServiceEndpoints) -> list[Endpoint]:
    """Hand-given addresses with their port sets, as RepackSubsets regroups them."""
    by_ip: dict[IPAddress, _PodEntry] = {}
    for index, port_entry in enumerate(entry.ports):
        sp = port_entry.port
        for b in port_entry.backends:
            acc = by_ip.get(b.ip)
            if acc is None:
                acc = by_ip[b.ip] = _PodEntry(b.ready, b.serving, b.terminating, b.node, b.pod)
            acc.ports.setdefault(index, SlicePort(sp.name, b.port, sp.protocol))
    endpoints = [
        Endpoint(ip, acc.ready, None, None, acc.node, acc.pod,
                 tuple(acc.ports[i] for i in sorted(acc.ports)))
        for ip, acc in by_ip.items()
    ]
    endpoints.sort(key=_endpoint_order)
    return endpoints


def _mirrored_groups(
    endpoints: list[Endpoint],
) -> list[tuple[str, tuple[SlicePort, ...], tuple[Endpoint, ...]]]:
    groups: dict[tuple[int, tuple[SlicePort, ...]], list[Endpoint]] = {}
    for e in endpoints:
        groups.setdefault((e.address.version, e.ports), []).append(e)
    return [
        (ADDRESS_TYPES[family], ports, tuple(groups[(family, ports)][:MAX_MIRRORED_ENDPOINTS]))
        for family, ports in sorted(groups)
    ]


# -- names and text -----------------------------------------------------------


def _endpoint_order(e: Endpoint) -> tuple:
    return (e.address.version, int(e.address), e.pod or ("", ""))


def _slice_name(namespace: str, service: str, index: int, used: set[tuple[str, str]]) -> str:
    """``<service>-`` plus 5 characters of the generateName alphabet, from a hash.

    A clash with a name already given in the namespace (about one in 14 million)
    is settled by hashing again with a counter, so names stay unique and stable.
    """
    base = f"{service}-"[:MAX_GENERATE_NAME_BASE]
    attempt = 0
    while True:
        seed = f"{namespace}/{service}/{index}/{attempt}".encode()
        number = int.from_bytes(hashlib.sha256(seed).digest()[:8], "big")
        chars = []
        for _ in range(NAME_SUFFIX_LENGTH):
            number, digit = divmod(number, len(NAME_ALPHABET))
            chars.append(NAME_ALPHABET[digit])
        name = base + "".join(chars)
        if (namespace, name) not in used:
            used.add((namespace, name))
            return name
        attempt += 1


_PLAIN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/:-]*[A-Za-z0-9._/-])?\Z")
_YAML12_NUMBER = re.compile(
    r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z|0o[0-7]+\Z|0x[0-9a-fA-F]+\Z|[-+]?\.(inf|Inf|INF)\Z|\.(nan|NaN|NAN)\Z"
)
_RESOLVER = yaml.resolver.Resolver()


@lru_cache(maxsize=65536)
def _scalar(text: str) -> str:
    """``text`` as a YAML string scalar: plain when every YAML 1.1/1.2 reader
    takes it for a string, double-quoted (JSON syntax) otherwise."""
    if (
        _PLAIN.match(text)
        and not _YAML12_NUMBER.match(text)
        and _RESOLVER.resolve(yaml.ScalarNode, text, (True, False)) == "tag:yaml.org,2002:str"
    ):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _bool(value: bool) -> str:
    return "true" if value else "false"


def render_slice(s: EndpointSlice) -> str:
    """One slice as YAML, keys sorted at every level as ``kubectl get -o yaml`` prints them."""
    out = [f"addressType: {s.address_type}\n", "apiVersion: discovery.k8s.io/v1\n"]
    if s.endpoints:
        out.append("endpoints:\n")
        for e in s.endpoints:
            out.append(f"- addresses:\n  - {_scalar(str(e.address))}\n  conditions:\n")
            out.append(f"    ready: {_bool(e.ready)}\n")
            if e.serving is not None:
                out.append(f"    serving: {_bool(e.serving)}\n")
            if e.terminating is not None:
                out.append(f"    terminating: {_bool(e.terminating)}\n")
            if e.node is not None:
                out.append(f"  nodeName: {_scalar(e.node)}\n")
            if e.pod is not None:
                out.append(
                    f"  targetRef:\n    kind: Pod\n    name: {_scalar(e.pod[1])}\n"
                    f"    namespace: {_scalar(e.pod[0])}\n"
                )
    else:
        out.append("endpoints: []\n")
    labels = {LABEL_MANAGED_BY: s.managed_by, LABEL_SERVICE_NAME: s.service}
    if s.headless:
        labels[LABEL_HEADLESS] = ""
    out.append("kind: EndpointSlice\nmetadata:\n")
    out.append(f"  generateName: {_scalar(f'{s.service}-'[:MAX_GENERATE_NAME_BASE])}\n  labels:\n")
    out.extend(f"    {_scalar(k)}: {_scalar(v)}\n" for k, v in sorted(labels.items()))
    out.append(f"  name: {_scalar(s.name)}\n  namespace: {_scalar(s.namespace)}\n")
    if s.ports:
        out.append("ports:\n")
        for p in s.ports:
            first = "- "
            if p.app_protocol is not None:
                out.append(f"- appProtocol: {_scalar(p.app_protocol)}\n")
                first = "  "
            out.append(f"{first}name: {_scalar(p.name)}\n  port: {p.port}\n  protocol: {_scalar(p.protocol)}\n")
    else:
        out.append("ports: []\n")
    return "".join(out)

