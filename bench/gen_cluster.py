"""Synthetic but realistic clusters at a fraction of the Kubernetes limits.

Scale 1.0 is the documented limit of one cluster: 5,000 nodes, 150,000 pods
and 10,000 services; 0.1 and 0.01 shrink every count in proportion (at least
one of each). One seeded *plan* (nodes, workloads, services) is rendered in
three forms that describe the same network:

* ``kspec``: the authoring language; pods come from workloads, so the file
  stays small (a few MB at 1.0);
* ``yaml``: a multi-document dump as ``kubectl get -o yaml`` writes objects
  (keys sorted, lists not indented), every pod listed with its IP;
* ``json``: the same objects in one ``kind: List``, byte for byte what
  ``json.dump(obj, indent=4)`` writes.

The manifest forms carry every address Kubernetes would have allocated; the
kspec form leaves some to kspec's IPAM (most cluster IPs, half the nodePorts,
a third of the node podCIDRs), so concrete values can differ between forms
while the topology is the same. Pod names differ too: kspec names the pods it
makes from workloads, the dump lists controller-made names.

Intentional oddities, so the benchmark exercises real code paths: a few
services select nothing on purpose (annotated ``kspec.dev/ignore: KS109``),
a few are selector-less with hand-made Endpoints, a node-exporter DaemonSet
uses ``hostNetwork`` (its pods share their node's IP), and some canary
workloads are not ready.

Run ``python bench/gen_cluster.py --scale 0.01 --form kspec --out x.kspec``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import random
import re
import sys
import uuid
from dataclasses import dataclass, replace
from typing import Iterator, TextIO

FORMS = ("kspec", "yaml", "json")
LIMIT_NODES = 5000
LIMIT_PODS = 150000
LIMIT_SERVICES = 10000

NODE_NETWORK = ipaddress.ip_network("10.0.0.0/16")
POD_CIDR = ipaddress.ip_network("10.128.0.0/9")
NODE_CIDR_SIZE = 24
SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/12")
NODE_PORT_RANGE = (30000, 32767)
LB_POOL = ipaddress.ip_network("172.20.0.0/16")
EXTERNAL_ENDPOINTS = ipaddress.ip_network("172.16.0.0/16")
DNS_SERVICE_IP = "10.96.0.10"
DOMAIN = "cluster.local"
IGNORE_ANNOTATION = "kspec.dev/ignore"
IGNORE_REASON_ANNOTATION = "kspec.dev/ignore-reason"

_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_ZONES = ("zone-a", "zone-b", "zone-c")
_PRODUCTS = ("shop", "pay", "auth", "search", "data", "ml", "media", "ads", "mail", "chat", "maps",
             "video", "docs", "crm", "erp", "hr", "iot", "edge", "risk", "fraud", "ledger", "cms",
             "feeds", "games", "music", "photos", "travel", "food", "fleet", "energy", "health",
             "tickets", "forum")
_ENVS = ("prod", "staging", "dev")
_STEMS = ("web", "api", "cart", "checkout", "search", "auth", "users", "orders", "billing", "catalog",
          "inventory", "gateway", "frontend", "notify", "media", "reports", "profile", "reco",
          "ratings", "sessions")
_SOURCE_RANGES = (("203.0.113.0/24",), ("198.51.100.0/24", "192.0.2.0/24"), ("203.0.113.128/25",))
_REPLICA_WEIGHTS = (1, 2, 2, 3, 3, 4, 5, 6, 8, 10, 12, 15, 18, 20, 25, 30, 40, 60)


@dataclass(frozen=True, slots=True)
class Counts:
    nodes: int
    pods: int
    services: int


@dataclass(frozen=True, slots=True)
class NodePlan:
    name: str
    ip: str
    pod_cidr: str
    cidr_explicit: bool
    zone: str


@dataclass(frozen=True, slots=True)
class ContainerPort:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class WorkloadPlan:
    namespace: str
    name: str
    kind: str
    replicas: int
    labels: tuple[tuple[str, str], ...]
    ports: tuple[ContainerPort, ...]
    image: str
    ready: bool = True
    host_network: bool = False


@dataclass(frozen=True, slots=True)
class ServicePortPlan:
    name: str | None
    port: int
    target: int | str | None
    protocol: str = "TCP"
    node_port: int | None = None


@dataclass(frozen=True, slots=True)
class ServicePlan:
    """One Service; ``selector`` is what the manifest says, ``selector_text``
    an equivalent kubectl expression the kspec form writes instead (or None
    to write the mapping)."""

    namespace: str
    name: str
    type: str = "ClusterIP"
    selector: tuple[tuple[str, str], ...] | None = None
    selector_text: str | None = None
    cluster_ip: str | None = None
    cluster_ip_explicit: bool = False
    ports: tuple[ServicePortPlan, ...] = ()
    node_ports_explicit: bool = False
    external_traffic_policy: str | None = None
    internal_traffic_policy: str | None = None
    health_check_node_port: int | None = None
    session_affinity: str = "None"
    affinity_timeout: int | None = None
    lb_ips: tuple[str, ...] = ()
    lb_source_ranges: tuple[str, ...] = ()
    external_name: str | None = None
    publish_not_ready: bool = False
    annotations: tuple[tuple[str, str], ...] = ()
    role: str = "main"


@dataclass(frozen=True, slots=True)
class StandalonePod:
    namespace: str
    name: str
    node: str
    labels: tuple[tuple[str, str], ...]
    ready: bool


@dataclass(frozen=True, slots=True)
class EndpointsPlan:
    namespace: str
    name: str
    addresses: tuple[str, ...]
    ports: tuple[ServicePortPlan, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    scale: float
    seed: int
    counts: Counts
    nodes: tuple[NodePlan, ...]
    workloads: tuple[WorkloadPlan, ...]
    standalone: tuple[StandalonePod, ...]
    services: tuple[ServicePlan, ...]
    endpoints: tuple[EndpointsPlan, ...]


def _round(value: float) -> int:
    return int(value + 0.5)


def _rare(total: int, fraction: float) -> int:
    """A count for rare kinds: proportional, but at least one once the cluster is not tiny."""
    return max(math.ceil(total * fraction), 0) if total >= 20 else 0


def counts(scale: float) -> Counts:
    """Object counts at ``scale`` of the Kubernetes limits (at least one of each)."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, not {scale}")
    return Counts(max(1, _round(LIMIT_NODES * scale)), max(1, _round(LIMIT_PODS * scale)),
                  max(1, _round(LIMIT_SERVICES * scale)))


def _offset(network: ipaddress.IPv4Network, index: int) -> str:
    return str(network.network_address + index)


def _node_cidr(index: int) -> str:
    return f"{_offset(POD_CIDR, index << (32 - NODE_CIDR_SIZE))}/{NODE_CIDR_SIZE}"


def _suffix(rng: random.Random, length: int) -> str:
    return "".join(rng.choices(_NAME_CHARS, k=length))


def _share(total: int, fraction: float) -> int:
    return _round(total * fraction)


class _Builder:
    """Draws the plan; all randomness comes from one seeded generator in a fixed order."""

    def __init__(self, scale: float, seed: int) -> None:
        self.counts = counts(scale)
        self.rng = random.Random(seed)
        self.workloads: list[WorkloadPlan] = []
        self.weights: list[tuple[int, bool]] = []
        self.services: list[ServicePlan] = []
        self.endpoints: list[EndpointsPlan] = []
        self.app_index = 0
        n_ns = min(len(_PRODUCTS) * len(_ENVS), max(2, int(math.sqrt(self.counts.services))))
        combos = [f"{p}-{e}" for p in _PRODUCTS for e in _ENVS]
        self.namespaces = sorted(self.rng.sample(combos, n_ns))

    def _room(self) -> int:
        return self.counts.services - len(self.services)

    def _next_name(self, stem: str) -> str:
        self.app_index += 1
        return f"{stem}-{self.app_index}"

    def _image(self, namespace: str, stem: str) -> str:
        return f"registry.example.com/{namespace}/{stem}:1.{self.rng.randrange(30)}.{self.rng.randrange(10)}"

    def _workload(self, namespace: str, name: str, kind: str, labels: dict[str, str],
                  ports: tuple[ContainerPort, ...], weight: int, fixed: bool, stem: str, **extra) -> None:
        self.workloads.append(WorkloadPlan(namespace, name, kind, weight, tuple(sorted(labels.items())),
                                           ports, self._image(namespace, stem), **extra))
        self.weights.append((weight, fixed))

    def nodes(self) -> tuple[NodePlan, ...]:
        n = self.counts.nodes
        if n + 10 >= NODE_NETWORK.num_addresses or n > 1 << (NODE_CIDR_SIZE - POD_CIDR.prefixlen):
            raise ValueError(f"{n} nodes do not fit the node network {NODE_NETWORK} or pod network {POD_CIDR}")
        return tuple(NodePlan(f"node-{i + 1}", _offset(NODE_NETWORK, 10 + i), _node_cidr(i), i % 3 != 2,
                              _ZONES[i % len(_ZONES)]) for i in range(n))

    def coredns(self) -> None:
        ports = (ContainerPort("dns", 53, "UDP"), ContainerPort("dns-tcp", 53, "TCP"), ContainerPort("metrics", 9153))
        labels = {"k8s-app": "kube-dns"}
        self._workload("kube-system", "coredns", "Deployment", labels, ports, 2, True, "coredns")
        self.services.append(ServicePlan(
            "kube-system", "kube-dns", selector=tuple(labels.items()), cluster_ip=DNS_SERVICE_IP,
            cluster_ip_explicit=True, role="fixed",
            ports=(ServicePortPlan("dns", 53, "dns", "UDP"), ServicePortPlan("dns-tcp", 53, "dns-tcp", "TCP"),
                   ServicePortPlan("metrics", 9153, 9153))))

    def daemonsets(self, count: int) -> None:
        sets = (("monitoring", "node-exporter", ContainerPort("metrics", 9100), True),
                ("kube-system", "log-agent", ContainerPort("http", 2020), False))
        for namespace, name, port, host_network in sets[:count]:
            labels = {"app.kubernetes.io/name": name}
            self._workload(namespace, name, "DaemonSet", labels, (port,), 0, True, name, host_network=host_network)
            if self._room() > 0:
                self.services.append(ServicePlan(
                    namespace, name, selector=tuple(labels.items()), role="fixed",
                    internal_traffic_policy=None if host_network else "Local",
                    ports=(ServicePortPlan(port.name, port.port, port.name),)))

    def rare_services(self) -> None:
        total = self.counts.services
        for _ in range(min(_rare(total, 0.003), self._room())):
            namespace = self.rng.choice(self.namespaces)
            self.services.append(ServicePlan(namespace, self._next_name("legacy"), type="ExternalName",
                                             external_name=f"db-{self.app_index}.example.com", role="fixed"))
        for _ in range(min(_rare(total, 0.003), self._room())):
            namespace, name = self.rng.choice(self.namespaces), self._next_name("external-db")
            ports = (ServicePortPlan("pg", 5432, 5432),)
            self.services.append(ServicePlan(namespace, name, ports=ports, role="fixed"))
            first = len(self.endpoints) * 4 + 10
            addresses = tuple(_offset(EXTERNAL_ENDPOINTS, first + k) for k in range(1 + self.rng.randrange(3)))
            self.endpoints.append(EndpointsPlan(namespace, name, addresses, ports))
        for _ in range(min(_rare(total, 0.002), self._room())):
            namespace, name = self.rng.choice(self.namespaces), self._next_name("operator-managed")
            self.services.append(ServicePlan(
                namespace, name, selector=(("app", name),), role="fixed",
                ports=(ServicePortPlan("http", 80, "http"),),
                annotations=((IGNORE_ANNOTATION, "KS109"),
                             (IGNORE_REASON_ANNOTATION, "pods are created at run time by an operator"))))

    def statefulset_app(self) -> None:
        namespace, name = self.rng.choice(self.namespaces), self._next_name("db")
        labels = {"app": name, "tier": "db"}
        ports = (ContainerPort("db", 5432), ContainerPort("metrics", 9187))
        self._workload(namespace, name, "StatefulSet", labels, ports, 3, True, "postgres")
        selector = tuple(sorted(labels.items()))
        self.services.append(ServicePlan(namespace, name, selector=selector, cluster_ip="None", role="headless",
                                         publish_not_ready=True, ports=(ServicePortPlan("db", 5432, "db"),)))
        if self._room() > 0:
            self.services.append(ServicePlan(namespace, f"{name}-read", selector=selector, role="plain",
                                             selector_text=f"app = {name}, tier in (db, cache)",
                                             ports=(ServicePortPlan(None, 5432, "db"),)))
        if self._room() > 0 and self.rng.random() < 0.3:
            pod = f"{name}-0"
            self.services.append(ServicePlan(namespace, f"{name}-primary", role="plain",
                                             selector=(("statefulset.kubernetes.io/pod-name", pod),),
                                             ports=(ServicePortPlan("db", 5432, "db"),)))

    def deployment_app(self) -> None:
        namespace = self.rng.choice(self.namespaces)
        flavor = self.rng.choices(("web", "api", "grpc"), (5, 3, 2))[0]
        stem = self.rng.choice(_STEMS)
        name = self._next_name(stem)
        tier = {"web": "web", "api": "api", "grpc": "backend"}[flavor]
        ports = {"web": (ContainerPort("http", 8080), ContainerPort("metrics", 9090)),
                 "api": (ContainerPort("http", 8080), ContainerPort("grpc", 9000), ContainerPort("metrics", 9090)),
                 "grpc": (ContainerPort("grpc", 50051), ContainerPort("metrics", 9090))}[flavor]
        canary = self.rng.random() < 0.08
        labels = {"app": name, "tier": tier}
        if canary:
            labels["track"] = "stable"
        self._workload(namespace, name, "Deployment", labels, ports, self.rng.choice(_REPLICA_WEIGHTS), False, stem)
        if canary:
            self._workload(namespace, f"{name}-canary", "Deployment", {**labels, "track": "canary"}, ports, 1, True,
                           stem, ready=self.rng.random() >= 0.4)
        selector, text = self._selector(name, tier, canary)
        self.services.append(ServicePlan(namespace, name, selector=selector, selector_text=text,
                                         ports=self._service_ports(flavor)))
        if self._room() > 0 and self.rng.random() < 0.05:
            self.services.append(ServicePlan(namespace, f"{name}-metrics", selector=(("app", name),), role="plain",
                                             ports=(ServicePortPlan("metrics", 9090, "metrics"),)))

    def _selector(self, app: str, tier: str, canary: bool) -> tuple[tuple[tuple[str, str], ...], str | None]:
        """A manifest selector map and, for some services, an equivalent kubectl expression."""
        pick = self.rng.randrange(8)
        only_app = (("app", app),)
        with_tier = (("app", app), ("tier", tier))
        if canary:
            return [(only_app, None), (with_tier, None), (only_app, f"app = {app}, track in (stable, canary)"),
                    ((("app", app), ("track", "stable")), f"app = {app}, track notin (canary)"),
                    ((("app", app), ("tier", tier), ("track", "stable")), None),
                    (only_app, f"app = {app}"), (with_tier, f"app = {app}, tier = {tier}"),
                    (only_app, f"app in ({app}), !legacy")][pick]
        return [(only_app, None), (with_tier, None), (only_app, None), (with_tier, f"app = {app}, tier = {tier}"),
                (only_app, f"app = {app}"), (only_app, f"app = {app}, tier in ({tier}, cache)"),
                (only_app, f"app in ({app}), !legacy"), (only_app, f"app == {app}, tier")][pick]

    def _service_ports(self, flavor: str) -> tuple[ServicePortPlan, ...]:
        target = self.rng.randrange(4)
        if flavor == "web":
            return (ServicePortPlan("http", 80, ("http", 8080, "http", "http")[target]),)
        if flavor == "grpc":
            return (ServicePortPlan("grpc", 50051, ("grpc", 50051, None, "grpc")[target]),)
        http = ServicePortPlan("http", 80, ("http", 8080, "http", "http")[target])
        if self.rng.random() < 0.25:
            return (http, ServicePortPlan("grpc", 9000, "grpc"))
        return (http,)

    def worker_app(self) -> None:
        namespace, name = self.rng.choice(self.namespaces), self._next_name("worker")
        self._workload(namespace, name, "Deployment", {"app": name, "tier": "worker"}, (ContainerPort("metrics", 9090),),
                       self.rng.choice(_REPLICA_WEIGHTS), False, "worker")

    def apps(self) -> None:
        workers = _share(self.counts.services, 0.05)
        while self._room() > 0:
            if self._room() >= 2 and self.rng.random() < 0.04:
                self.statefulset_app()
            else:
                self.deployment_app()
            if workers and self.rng.random() < 0.05:
                workers -= 1
                self.worker_app()
        for _ in range(workers):
            self.worker_app()

    def service_types(self) -> None:
        """Exact shares of NodePort/LoadBalancer among the deployment apps' main services."""
        total = self.counts.services
        mains = [i for i, s in enumerate(self.services) if s.role == "main"]
        n_lb = min(_share(total, 0.03), len(mains))
        n_np = min(_share(total, 0.10), len(mains) - n_lb)
        chosen = self.rng.sample(mains, n_lb + n_np)
        lb, np_ = set(chosen[:n_lb]), set(chosen[n_lb:])
        affinity = set(self.rng.sample(mains, _share(len(mains), 0.05)))
        lb_rank = {index: rank for rank, index in enumerate(sorted(lb))}
        for index in mains:
            kind = "LoadBalancer" if index in lb else "NodePort" if index in np_ else "ClusterIP"
            changes: dict = {"type": kind}
            if kind != "ClusterIP":
                changes["external_traffic_policy"] = "Local" if self.rng.random() < 0.3 else "Cluster"
                changes["node_ports_explicit"] = self.rng.random() < 0.5
            if kind == "LoadBalancer":
                changes["lb_ips"] = (_offset(LB_POOL, 10 + lb_rank[index]),)
                if self.rng.random() < 0.2:
                    changes["lb_source_ranges"] = self.rng.choice(_SOURCE_RANGES)
            if index in affinity:
                changes["session_affinity"] = "ClientIP"
                changes["affinity_timeout"] = self.rng.choice((10800, 10800, 3600, 600))
            self.services[index] = replace(self.services[index], **changes)

    def addresses(self) -> None:
        """Cluster IPs and nodePorts for every service (random and unique, like the apiserver's allocators)."""
        needs_ip = [i for i, s in enumerate(self.services) if s.cluster_ip is None and s.type != "ExternalName"]
        pool = self.rng.sample(range(16, SERVICE_CIDR.num_addresses - 1), len(needs_ip))
        needs_port = [(i, s) for i, s in enumerate(self.services) if s.type in ("NodePort", "LoadBalancer")]
        wanted = sum(len(s.ports) + (s.type == "LoadBalancer" and s.external_traffic_policy == "Local")
                     for _, s in needs_port)
        low, high = NODE_PORT_RANGE
        if wanted > high - low + 1:
            raise ValueError(f"{wanted} nodePorts do not fit the range {low}-{high}: use a smaller scale")
        ports = iter(self.rng.sample(range(low, high + 1), wanted))
        for index, offset in zip(needs_ip, pool):
            self.services[index] = replace(self.services[index], cluster_ip=_offset(SERVICE_CIDR, offset),
                                           cluster_ip_explicit=self.rng.random() < 0.2)
        for index, _ in needs_port:
            service = self.services[index]
            changes: dict = {"ports": tuple(replace(p, node_port=next(ports)) for p in service.ports)}
            if service.type == "LoadBalancer" and service.external_traffic_policy == "Local":
                changes["health_check_node_port"] = next(ports)
            self.services[index] = replace(service, **changes)

    def replicas(self, budget: int) -> None:
        """Fit the replica counts to exactly ``budget`` pods (largest remainder)."""
        fixed = sum(w for w, f in self.weights if f)
        flexible = [i for i, (w, f) in enumerate(self.weights) if not f]
        if fixed + len(flexible) <= budget:
            counts_ = {i: w for i, (w, f) in enumerate(self.weights) if f}
            shares = _apportion([self.weights[i][0] for i in flexible], budget - fixed - len(flexible))
            counts_.update({i: 1 + s for i, s in zip(flexible, shares)})
        else:
            counts_ = dict(enumerate(_apportion([w for w, _ in self.weights], budget)))
        self.workloads = [replace(w, replicas=counts_[i]) if w.kind != "DaemonSet" else w
                          for i, w in enumerate(self.workloads)]

    def standalone(self, count: int, nodes: tuple[NodePlan, ...]) -> tuple[StandalonePod, ...]:
        pods = []
        for k in range(count):
            namespace, name = self.rng.choice(self.namespaces), f"debug-{k + 1}"
            pods.append(StandalonePod(namespace, name, self.rng.choice(nodes).name, (("run", name),),
                                      self.rng.random() >= 0.5))
        return tuple(pods)


def _apportion(weights: list[int], total: int) -> list[int]:
    """Integers proportional to ``weights`` that sum to ``total``."""
    if total <= 0 or not weights:
        return [0] * len(weights)
    whole = sum(weights) or 1
    exact = [w * total / whole for w in weights]
    shares = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (shares[i] - exact[i], i))
    for i in order[:total - sum(shares)]:
        shares[i] += 1
    return shares


def plan(scale: float, seed: int = 0) -> Plan:
    """The cluster at ``scale`` (1.0 = the Kubernetes limits), the same for every form."""
    builder = _Builder(scale, seed)
    nodes = builder.nodes()
    total = builder.counts
    n_ds = min(2, (total.pods // 2) // total.nodes)
    n_debug = _round(total.pods * 0.001)
    builder.coredns()
    builder.daemonsets(n_ds)
    builder.rare_services()
    builder.apps()
    builder.service_types()
    builder.addresses()
    builder.replicas(total.pods - n_ds * total.nodes - n_debug)
    standalone = builder.standalone(n_debug, nodes)
    return Plan(scale, seed, total, nodes, tuple(builder.workloads), standalone,
                tuple(builder.services), tuple(builder.endpoints))


# --- kspec form -------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9_./-]*(:[A-Za-z0-9_./-]+)*\Z")
_ADDRESS = re.compile(r"[0-9]+(\.[0-9]+){3}(/[0-9]+)?\Z")
_RESERVED = frozenset("y n yes no on off true false null".split())


_UNPRINTABLE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")


def _scalar(text: str) -> str:
    """A YAML scalar: plain where that reads back as the same string, else double-quoted
    (JSON escapes, plus the characters YAML may not hold raw or would fold as line breaks)."""
    if (_PLAIN.match(text) and text.lower() not in _RESERVED) or _ADDRESS.match(text):
        return text
    return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(text, ensure_ascii=False))


def _flow_map(pairs) -> str:
    return "{" + ", ".join(f"{_scalar(k)}: {_scalar(v)}" for k, v in pairs) + "}"


def _kspec_port(port: ServicePortPlan, explicit_node_port: bool) -> str:
    parts = [f"name: {port.name}"] if port.name else []
    parts.append(f"port: {port.port}")
    if port.target is not None:
        parts.append(f"targetPort: {port.target}")
    if port.node_port is not None and explicit_node_port:
        parts.append(f"nodePort: {port.node_port}")
    if port.protocol != "TCP":
        parts.append(f"protocol: {port.protocol}")
    return "{" + ", ".join(parts) + "}"


def _kspec_service(service: ServicePlan) -> Iterator[str]:
    yield f"  {service.namespace}/{service.name}:\n"
    if service.type != "ClusterIP":
        yield f"    type: {service.type}\n"
    if service.external_name:
        yield f"    externalName: {service.external_name}\n"
    if service.cluster_ip and (service.cluster_ip_explicit or service.cluster_ip == "None"):
        yield f"    clusterIP: {service.cluster_ip}\n"
    if service.selector_text:
        yield f"    selector: {service.selector_text}\n"
    elif service.selector:
        yield f"    selector: {_flow_map(service.selector)}\n"
    if service.ports:
        ports = ", ".join(_kspec_port(p, service.node_ports_explicit) for p in service.ports)
        yield f"    ports: [{ports}]\n"
    if service.health_check_node_port and service.node_ports_explicit:
        yield f"    healthCheckNodePort: {service.health_check_node_port}\n"
    if service.external_traffic_policy == "Local":
        yield "    externalTrafficPolicy: Local\n"
    if service.internal_traffic_policy == "Local":
        yield "    internalTrafficPolicy: Local\n"
    if service.session_affinity != "None":
        yield f"    sessionAffinity: {service.session_affinity}\n"
        if service.affinity_timeout != 10800:
            yield f"    sessionAffinityTimeout: {service.affinity_timeout}\n"
    if service.publish_not_ready:
        yield "    publishNotReadyAddresses: true\n"
    if service.lb_ips:
        yield f"    loadBalancerIPs: [{', '.join(service.lb_ips)}]\n"
    if service.lb_source_ranges:
        yield f"    loadBalancerSourceRanges: [{', '.join(service.lb_source_ranges)}]\n"
    if service.annotations:
        yield "    annotations:\n"
        for key, value in service.annotations:
            yield f"      {key}: {json.dumps(value)}\n"


def _write_kspec(p: Plan, out: TextIO) -> None:
    low, high = NODE_PORT_RANGE
    out.write(f"# synthetic cluster: scale {p.scale}, seed {p.seed}: {p.counts.nodes} nodes, "
              f"{p.counts.pods} pods, {p.counts.services} services (bench/gen_cluster.py)\n"
              f"cluster:\n  name: synthetic\n  domain: {DOMAIN}\n  podCIDR: {POD_CIDR}\n"
              f"  serviceCIDR: {SERVICE_CIDR}\n  nodePortRange: {low}-{high}\n"
              f"  nodeCIDRMaskSize: {NODE_CIDR_SIZE}\n  proxy: {{mode: iptables}}\n")
    out.write("nodes:\n")
    out.writelines(f"  {n.name}: {{ip: {n.ip}{f', podCIDR: {n.pod_cidr}' if n.cidr_explicit else ''}, "
                   f"labels: {{topology.kubernetes.io/zone: {n.zone}}}}}\n" for n in p.nodes)
    out.write("workloads:\n")
    for w in p.workloads:
        parts = [] if w.kind == "Deployment" else [f"kind: {w.kind}"]
        if w.kind != "DaemonSet":
            parts.append(f"replicas: {w.replicas}")
        parts.append(f"labels: {_flow_map(w.labels)}")
        parts.append("ports: {" + ", ".join(f"{c.name}: {c.port}/{c.protocol}" for c in w.ports) + "}")
        if not w.ready:
            parts.append("ready: false")
        if w.host_network:
            parts.append("hostNetwork: true")
        out.write(f"  {w.namespace}/{w.name}: {{{', '.join(parts)}}}\n")
    if p.standalone:
        out.write("pods:\n")
        out.writelines(f"  {s.namespace}/{s.name}: {{node: {s.node}, labels: {_flow_map(s.labels)}"
                       f"{'' if s.ready else ', ready: false'}}}\n" for s in p.standalone)
    out.write("services:\n")
    for service in p.services:
        out.writelines(_kspec_service(service))
    if p.endpoints:
        out.write("endpoints:\n")
        for e in p.endpoints:
            ports = ", ".join(_kspec_port(replace(port, target=None), False) for port in e.ports)
            out.write(f"  {e.namespace}/{e.name}: {{addresses: [{', '.join(e.addresses)}], ports: [{ports}]}}\n")


# --- Kubernetes objects -----------------------------------------------------

def _uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _node_object(node: NodePlan) -> dict:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name,
                                                        "kubernetes.io/os": "linux",
                                                        "topology.kubernetes.io/zone": node.zone}},
            "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": node.ip},
                                     {"type": "Hostname", "address": node.name}]}}


def _service_object(s: ServicePlan) -> dict:
    spec: dict = {"type": s.type, "sessionAffinity": s.session_affinity}
    metadata: dict = {"name": s.name, "namespace": s.namespace}
    if s.selector:
        spec["selector"] = dict(s.selector)
        metadata["labels"] = {k: v for k, v in s.selector if k == "app"} or dict(s.selector[:1])
    if s.annotations:
        metadata["annotations"] = dict(s.annotations)
    if s.type == "ExternalName":
        spec["externalName"] = s.external_name
        return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec,
                "status": {"loadBalancer": {}}}
    spec.update({"clusterIP": s.cluster_ip, "clusterIPs": [s.cluster_ip], "ipFamilies": ["IPv4"],
                 "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": s.internal_traffic_policy or "Cluster"})
    ports = []
    for port in s.ports:
        item = {"port": port.port, "protocol": port.protocol,
                "targetPort": port.port if port.target is None else port.target}
        if port.name:
            item["name"] = port.name
        if port.node_port is not None:
            item["nodePort"] = port.node_port
        ports.append(item)
    spec["ports"] = ports
    if s.external_traffic_policy:
        spec["externalTrafficPolicy"] = s.external_traffic_policy
    if s.health_check_node_port:
        spec["healthCheckNodePort"] = s.health_check_node_port
    if s.session_affinity == "ClientIP":
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": s.affinity_timeout}}
    if s.publish_not_ready:
        spec["publishNotReadyAddresses"] = True
    if s.lb_source_ranges:
        spec["loadBalancerSourceRanges"] = list(s.lb_source_ranges)
    status = {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"} for ip in s.lb_ips]} if s.lb_ips else {}}
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec, "status": status}


def _endpoints_object(e: EndpointsPlan) -> dict:
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": e.name, "namespace": e.namespace},
            "subsets": [{"addresses": [{"ip": ip} for ip in e.addresses],
                         "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol} for p in e.ports]}]}


def _pod_object(namespace: str, name: str, labels: dict, node: NodePlan, ip: str, ready: bool,
                containers: list, owner: dict | None, host_network: bool) -> dict:
    metadata: dict = {"name": name, "namespace": namespace, "labels": labels}
    if owner:
        metadata["ownerReferences"] = [owner]
    spec: dict = {"nodeName": node.name, "containers": containers}
    if host_network:
        spec["hostNetwork"] = True
    status = {"phase": "Running", "hostIP": node.ip, "podIP": ip, "podIPs": [{"ip": ip}],
              "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": status}


class _Placer:
    """Spreads pods over the nodes round-robin and hands out pod IPs from each node's podCIDR."""

    def __init__(self, nodes: tuple[NodePlan, ...]) -> None:
        self.nodes = nodes
        self.by_name = {n.name: i for i, n in enumerate(nodes)}
        self.used = [0] * len(nodes)
        self.cursor = 0
        self.capacity = (1 << (32 - NODE_CIDR_SIZE)) - 3
        self.bases = [int(ipaddress.ip_network(n.pod_cidr).network_address) + 1 for n in nodes]

    def next_node(self) -> int:
        for _ in range(len(self.nodes)):
            index = self.cursor
            self.cursor = (self.cursor + 1) % len(self.nodes)
            if self.used[index] < self.capacity:
                return index
        raise ValueError("every node's podCIDR is full")

    def address(self, index: int) -> str:
        if self.used[index] >= self.capacity:
            raise ValueError(f"the podCIDR of {self.nodes[index].name} is full")
        self.used[index] += 1
        return str(ipaddress.IPv4Address(self.bases[index] + self.used[index]))


def _containers(w: WorkloadPlan) -> list:
    ports = [{"name": c.name, "containerPort": c.port, "protocol": c.protocol} for c in w.ports]
    return [{"name": w.name, "image": w.image, "ports": ports}]


def _workload_pods(w: WorkloadPlan, placer: _Placer, rng: random.Random) -> Iterator[dict]:
    labels = dict(w.labels)
    containers = _containers(w)
    uid = _uid(rng)
    if w.kind == "Deployment":
        template_hash = _suffix(rng, 10)
        owner_name, owner_kind = f"{w.name}-{template_hash}", "ReplicaSet"
        labels["pod-template-hash"] = template_hash
    else:
        owner_name, owner_kind = w.name, w.kind
        labels["controller-revision-hash"] = f"{w.name}-{_suffix(rng, 10)}"
        if w.kind == "DaemonSet":
            labels["pod-template-generation"] = "1"
    owner = {"apiVersion": "apps/v1", "kind": owner_kind, "name": owner_name, "uid": uid,
             "controller": True, "blockOwnerDeletion": True}
    if w.kind == "DaemonSet":
        indexes = list(range(len(placer.nodes)))
    else:
        indexes = [placer.next_node() for _ in range(w.replicas)]
    seen: set[str] = set()
    for ordinal, node_index in enumerate(indexes):
        pod_labels = labels
        if w.kind == "StatefulSet":
            name = f"{w.name}-{ordinal}"
            pod_labels = {**labels, "statefulset.kubernetes.io/pod-name": name,
                          "apps.kubernetes.io/pod-index": str(ordinal)}
        else:
            name = f"{owner_name}-{_suffix(rng, 5)}"
            while name in seen:
                name = f"{owner_name}-{_suffix(rng, 5)}"
            seen.add(name)
        node = placer.nodes[node_index]
        ip = node.ip if w.host_network else placer.address(node_index)
        yield _pod_object(w.namespace, name, pod_labels, node, ip, w.ready, containers, owner, w.host_network)


def objects(p: Plan) -> Iterator[dict]:
    """Every Kubernetes object of the plan, in dump order (settings, nodes, services, endpoints, pods)."""
    yield {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
           "mode": "iptables", "clusterCIDR": str(POD_CIDR)}
    yield {"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": "kubernetes"},
           "spec": {"cidrs": [str(SERVICE_CIDR)]}}
    yield from (_node_object(n) for n in p.nodes)
    yield from (_service_object(s) for s in p.services)
    yield from (_endpoints_object(e) for e in p.endpoints)
    rng = random.Random(f"pods-{p.seed}")
    placer = _Placer(p.nodes)
    for w in p.workloads:
        yield from _workload_pods(w, placer, rng)
    for s in p.standalone:
        index = placer.by_name[s.node]
        containers = [{"name": "toolbox", "image": "registry.example.com/tools/toolbox:1.0.0"}]
        yield _pod_object(s.namespace, s.name, dict(s.labels), placer.nodes[index], placer.address(index),
                          s.ready, containers, None, False)


# --- YAML and JSON writers --------------------------------------------------

def _yaml_scalar(value, memo: dict) -> str:
    if isinstance(value, str):
        text = memo.get(value)
        if text is None:
            text = memo[value] = _scalar(value)
        return text
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    return str(value)


def _yaml_mapping(value: dict, indent: str, out: list, memo: dict) -> None:
    for key in sorted(value):
        item = value[key]
        if isinstance(item, dict) and item:
            out.append(f"{indent}{key}:\n")
            _yaml_mapping(item, indent + "  ", out, memo)
        elif isinstance(item, list) and item:
            out.append(f"{indent}{key}:\n")
            _yaml_sequence(item, indent, out, memo)
        elif isinstance(item, dict):
            out.append(f"{indent}{key}: {{}}\n")
        elif isinstance(item, list):
            out.append(f"{indent}{key}: []\n")
        else:
            out.append(f"{indent}{key}: {_yaml_scalar(item, memo)}\n")


def _yaml_sequence(items: list, indent: str, out: list, memo: dict) -> None:
    """kubectl style: the dash sits at the parent key's indentation."""
    for item in items:
        if isinstance(item, dict) and item:
            start = len(out)
            _yaml_mapping(item, indent + "  ", out, memo)
            out[start] = f"{indent}- {out[start][len(indent) + 2:]}"
        elif isinstance(item, (dict, list)):
            raise TypeError("nested empty collections or lists in lists are not emitted")
        else:
            out.append(f"{indent}- {_yaml_scalar(item, memo)}\n")


def _json_value(value, indent: str, out: list, memo: dict) -> None:
    """``json.dumps(value, indent=4)`` with keys sorted, in pieces."""
    if isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        inner = indent + "    "
        out.append("{\n")
        for n, key in enumerate(sorted(value)):
            out.append(f"{',' + chr(10) if n else ''}{inner}{_json_string(key, memo)}: ")
            _json_value(value[key], inner, out, memo)
        out.append(f"\n{indent}}}")
    elif isinstance(value, list):
        if not value:
            out.append("[]")
            return
        inner = indent + "    "
        out.append("[\n")
        for n, item in enumerate(value):
            out.append(f",\n{inner}" if n else inner)
            _json_value(item, inner, out, memo)
        out.append(f"\n{indent}]")
    elif isinstance(value, str):
        out.append(_json_string(value, memo))
    else:
        out.append(json.dumps(value))


def _json_string(value: str, memo: dict) -> str:
    text = memo.get(value)
    if text is None:
        text = memo[value] = json.dumps(value)
    return text


def _write_yaml(p: Plan, out: TextIO) -> None:
    memo: dict = {}
    out.write(f"# synthetic cluster dump: scale {p.scale}, seed {p.seed} (bench/gen_cluster.py)\n")
    for obj in objects(p):
        parts = ["---\n"]
        _yaml_mapping(obj, "", parts, memo)
        out.write("".join(parts))


def _write_json(p: Plan, out: TextIO) -> None:
    memo: dict = {}
    out.write('{\n    "apiVersion": "v1",\n    "items": [\n')
    for n, obj in enumerate(objects(p)):
        parts = [",\n        " if n else "        "]
        _json_value(obj, "        ", parts, memo)
        out.write("".join(parts))
    out.write('\n    ],\n    "kind": "List",\n    "metadata": {\n        "resourceVersion": ""\n    }\n}\n')


_WRITERS = {"kspec": _write_kspec, "yaml": _write_yaml, "json": _write_json}


def write(scale: float, form: str, out: TextIO, seed: int = 0) -> None:
    """Stream the cluster at ``scale`` in ``form`` (kspec, yaml or json) to ``out``."""
    if form not in _WRITERS:
        raise ValueError(f"unknown form {form!r}: expected one of {', '.join(FORMS)}")
    _WRITERS[form](plan(scale, seed), out)


def generate(scale: float, form: str, seed: int = 0) -> str:
    """The cluster as one string; for small scales (use :func:`write` for big ones)."""
    import io

    buffer = io.StringIO()
    write(scale, form, buffer, seed)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="example: python bench/gen_cluster.py --scale 0.01 --form yaml --out c.yaml")
    parser.add_argument("--scale", type=float, required=True, help="fraction of 5,000 nodes / 150,000 pods / 10,000 services")
    parser.add_argument("--form", choices=FORMS, required=True)
    parser.add_argument("--out", default="-", help="output file (default: standard output)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.out == "-":
            write(args.scale, args.form, sys.stdout, args.seed)
            return 0
        temporary = f"{args.out}.tmp{os.getpid()}"
        try:
            with open(temporary, "w", encoding="utf-8", newline="\n", buffering=1 << 20) as out:
                write(args.scale, args.form, out, args.seed)
            os.replace(temporary, args.out)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    except (ValueError, OSError) as exc:
        print(f"gen_cluster: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
