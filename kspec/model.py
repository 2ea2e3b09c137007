"""The cluster model: frozen dataclasses, each object keeping its Origin.

Two layers:

* :class:`Cluster` is what the inputs say (pods may lack IPs, nodes podCIDRs,
  services cluster IPs and nodePorts), after workloads are expanded;
* :class:`ResolvedCluster` is the cluster after the passes (placement, IPAM,
  endpoints): every address and port concrete, endpoints computed.

Backends and verifiers read only the resolved model.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping, Union

from kspec.frontend.document import SYNTHETIC, Origin
from kspec.selector import Selector

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

PROTOCOLS = ("TCP", "UDP", "SCTP")
PROXY_MODES = ("iptables", "ipvs")
IPVS_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
TRAFFIC_POLICIES = ("Cluster", "Local")

DEFAULT_DOMAIN = "cluster.local"
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
DEFAULT_POD_CIDR = "10.244.0.0/16"
DEFAULT_NODE_PORT_RANGE = (30000, 32767)
DEFAULT_NODE_NETWORK = "192.168.0.0/16"
DEFAULT_NODE_COUNT = 3
DEFAULT_AFFINITY_TIMEOUT = 10800


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """kube-proxy's own configuration (KubeProxyConfiguration or flags)."""

    mode: str = "iptables"
    ipvs_scheduler: str = "rr"
    masquerade_all: bool = False
    masquerade_bit: int = 14
    nodeport_addresses: tuple[IPNetwork, ...] = ()
    localhost_nodeports: bool = True
    conntrack_tcp_be_liberal: bool = False
    detect_local_mode: str = "ClusterCIDR"
    random_fully: bool = True
    nfacct: bool = False
    origin: Origin = SYNTHETIC


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    name: str = "kspec"
    domain: str = DEFAULT_DOMAIN
    pod_cidrs: tuple[IPNetwork, ...] = (ipaddress.ip_network(DEFAULT_POD_CIDR),)
    service_cidrs: tuple[IPNetwork, ...] = (ipaddress.ip_network(DEFAULT_SERVICE_CIDR),)
    node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE
    node_cidr_mask_v4: int = 24
    node_cidr_mask_v6: int = 64
    proxy: ProxySettings = ProxySettings()
    origin: Origin = SYNTHETIC
    # which settings came from defaults rather than the input (for the summary)
    defaulted: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    ips: tuple[IPAddress, ...]
    pod_cidrs: tuple[IPNetwork, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    origin: Origin = SYNTHETIC
    synthetic: bool = False  # made by the default cluster, not in the input


@dataclass(frozen=True, slots=True)
class ContainerPort:
    port: int
    protocol: str = "TCP"
    name: str | None = None
    host_port: int | None = None
    origin: Origin = SYNTHETIC


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    node: str | None
    ips: tuple[IPAddress, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[ContainerPort, ...] = ()
    ready: bool = True
    terminating: bool = False
    host_network: bool = False
    owner: str | None = None  # "Deployment/name" for pods made from a workload
    annotations: Mapping[str, str] = field(default_factory=dict)
    origin: Origin = SYNTHETIC

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Workload:
    """A pod template with a replica count (Deployment, StatefulSet, kspec workloads...)."""

    kind: str
    namespace: str
    name: str
    replicas: int | None  # None: one pod per node (DaemonSet)
    labels: Mapping[str, str]
    ports: tuple[ContainerPort, ...] = ()
    node: str | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    host_network: bool = False
    ready: bool = True
    annotations: Mapping[str, str] = field(default_factory=dict)
    origin: Origin = SYNTHETIC


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    protocol: str = "TCP"
    name: str = ""
    target_port: int | str | None = None  # None: same as port
    node_port: int | None = None
    app_protocol: str | None = None
    origin: Origin = SYNTHETIC

    @property
    def effective_target(self) -> int | str:
        return self.port if self.target_port is None else self.target_port


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    type: str = "ClusterIP"
    selector: Selector | None = None
    ports: tuple[ServicePort, ...] = ()
    cluster_ips: tuple[IPAddress, ...] = ()
    headless: bool = False  # clusterIP: None
    external_ips: tuple[IPAddress, ...] = ()
    load_balancer_ips: tuple[IPAddress, ...] = ()
    load_balancer_source_ranges: tuple[IPNetwork, ...] = ()
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    session_affinity: str = "None"
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    external_name: str | None = None
    publish_not_ready: bool = False
    ip_families: tuple[int, ...] = ()  # 4 / 6, from ipFamilies; empty = from the cluster
    health_check_node_port: int | None = None
    ipvs_scheduler: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    origin: Origin = SYNTHETIC

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def is_node_port(self) -> bool:
        return self.type in ("NodePort", "LoadBalancer")


@dataclass(frozen=True, slots=True)
class EndpointAddress:
    """One address of a hand-written Endpoints/EndpointSlice object."""

    ip: IPAddress
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node: str | None = None
    target: tuple[str, str] | None = None  # (namespace, pod name)
    origin: Origin = SYNTHETIC


@dataclass(frozen=True, slots=True)
class EndpointPort:
    port: int
    protocol: str = "TCP"
    name: str = ""


@dataclass(frozen=True, slots=True)
class ManualEndpoints:
    """Endpoints given in the input for a (usually selector-less) service."""

    namespace: str
    service: str
    addresses: tuple[EndpointAddress, ...]
    ports: tuple[EndpointPort, ...]
    kind: str = "EndpointSlice"
    origin: Origin = SYNTHETIC


@dataclass(frozen=True, slots=True)
class Cluster:
    """Everything the inputs say, workloads not yet expanded, nothing allocated."""

    settings: ClusterSettings
    nodes: tuple[Node, ...] = ()
    pods: tuple[Pod, ...] = ()
    workloads: tuple[Workload, ...] = ()
    services: tuple[Service, ...] = ()
    manual_endpoints: tuple[ManualEndpoints, ...] = ()
    default_nodes: bool = False  # nodes made by the default cluster
    skipped_kinds: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Backend:
    """One endpoint of one service port: where a packet for it may be sent."""

    ip: IPAddress
    port: int
    protocol: str
    ready: bool
    serving: bool
    terminating: bool
    node: str | None
    pod: tuple[str, str] | None  # (namespace, name)


@dataclass(frozen=True, slots=True)
class PortEndpoints:
    port: ServicePort
    backends: tuple[Backend, ...]

    @property
    def ready(self) -> tuple[Backend, ...]:
        return tuple(b for b in self.backends if b.ready)


@dataclass(frozen=True, slots=True)
class ServiceEndpoints:
    service: tuple[str, str]
    ports: tuple[PortEndpoints, ...]
    source: str  # "selector" | "manual" | "none"
    # pods the selector matched, whatever their port or readiness
    selected: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Allocation:
    """One value kspec chose (recorded in kspec.lock.json)."""

    kind: str  # podCIDR | podIP | clusterIP | nodePort
    owner: str  # "node/NAME", "pod/NS/NAME", "service/NS/NAME[:port]"
    value: str
    reused: bool = False  # taken from an existing lock file


@dataclass(frozen=True)
class ResolvedCluster:
    settings: ClusterSettings
    nodes: tuple[Node, ...]
    pods: tuple[Pod, ...]
    services: tuple[Service, ...]
    endpoints: Mapping[tuple[str, str], ServiceEndpoints]
    allocations: tuple[Allocation, ...] = ()
    default_nodes: bool = False
    skipped_kinds: Mapping[str, int] = field(default_factory=dict)

    @cached_property
    def nodes_by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    @cached_property
    def services_by_key(self) -> dict[tuple[str, str], Service]:
        return {s.key: s for s in self.services}

    @cached_property
    def pods_by_key(self) -> dict[tuple[str, str], Pod]:
        return {p.key: p for p in self.pods}
