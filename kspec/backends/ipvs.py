"""kube-proxy IPVS mode: what one node programs, and its ``ipvsadm-restore`` text.

kube-proxy's IPVS proxier (pkg/proxy/ipvs/proxier.go, syncProxyRules) turns
every service port into IPVS virtual servers, fills a fixed catalogue of
ipsets, binds the service addresses to the dummy interface kube-ipvs0 and
writes a small iptables ruleset that matches those ipsets. All four outputs
come from one per-node :class:`IpvsPlan`, computed here, so that the ipvsadm,
ipset, iptables and ``ip -batch`` texts can never disagree.

Where kube-proxy walks Go maps (random order), the plan is sorted: virtual
servers by (protocol number, address, port) as ``ipvsadm-save`` sorts them,
real servers by (address, port), set entries by their fields.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Mapping

from kspec.model import (
    IPVS_SCHEDULERS,
    Backend,
    IPAddress,
    IPNetwork,
    Node,
    ResolvedCluster,
    Service,
    ServicePort,
)

DUMMY_DEVICE = "kube-ipvs0"
DEFAULT_SCHEDULER = "rr"

# The ipset catalogue, in kube-proxy's ipsetInfo order: (name, type, comment).
# kube-proxy creates every set on every sync, empty or not; the comment is
# used only in the iptables rules that match the set.
LOOP_BACK = "KUBE-LOOP-BACK"
CLUSTER_IP = "KUBE-CLUSTER-IP"
EXTERNAL_IP = "KUBE-EXTERNAL-IP"
EXTERNAL_IP_LOCAL = "KUBE-EXTERNAL-IP-LOCAL"
LOAD_BALANCER = "KUBE-LOAD-BALANCER"
LOAD_BALANCER_FW = "KUBE-LOAD-BALANCER-FW"
LOAD_BALANCER_LOCAL = "KUBE-LOAD-BALANCER-LOCAL"
LOAD_BALANCER_SOURCE_IP = "KUBE-LOAD-BALANCER-SOURCE-IP"
LOAD_BALANCER_SOURCE_CIDR = "KUBE-LOAD-BALANCER-SOURCE-CIDR"
NODE_PORT_TCP = "KUBE-NODE-PORT-TCP"
NODE_PORT_LOCAL_TCP = "KUBE-NODE-PORT-LOCAL-TCP"
NODE_PORT_UDP = "KUBE-NODE-PORT-UDP"
NODE_PORT_LOCAL_UDP = "KUBE-NODE-PORT-LOCAL-UDP"
NODE_PORT_SCTP = "KUBE-NODE-PORT-SCTP-HASH"
NODE_PORT_LOCAL_SCTP = "KUBE-NODE-PORT-LOCAL-SCTP-HASH"
HEALTH_CHECK_NODE_PORT = "KUBE-HEALTH-CHECK-NODE-PORT"
IPVS_IPS = "KUBE-IPVS-IPS"


@dataclass(frozen=True, slots=True)
class IpSetInfo:
    name: str
    type: str
    comment: str


IPSETS: tuple[IpSetInfo, ...] = (
    IpSetInfo(LOOP_BACK, "hash:ip,port,ip",
              "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"),
    IpSetInfo(CLUSTER_IP, "hash:ip,port",
              "Kubernetes service cluster ip + port for masquerade purpose"),
    IpSetInfo(EXTERNAL_IP, "hash:ip,port",
              "Kubernetes service external ip + port for masquerade and filter purpose"),
    IpSetInfo(EXTERNAL_IP_LOCAL, "hash:ip,port",
              "Kubernetes service external ip + port with externalTrafficPolicy=local"),
    IpSetInfo(LOAD_BALANCER, "hash:ip,port", "Kubernetes service lb portal"),
    IpSetInfo(LOAD_BALANCER_FW, "hash:ip,port",
              "Kubernetes service load balancer ip + port for load balancer with sourceRange"),
    IpSetInfo(LOAD_BALANCER_LOCAL, "hash:ip,port",
              "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"),
    IpSetInfo(LOAD_BALANCER_SOURCE_IP, "hash:ip,port,ip",
              "Kubernetes service load balancer ip + port + source IP for packet filter purpose"),
    IpSetInfo(LOAD_BALANCER_SOURCE_CIDR, "hash:ip,port,net",
              "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"),
    IpSetInfo(NODE_PORT_TCP, "bitmap:port", "Kubernetes nodeport TCP port for masquerade purpose"),
    IpSetInfo(NODE_PORT_LOCAL_TCP, "bitmap:port",
              "Kubernetes nodeport TCP port with externalTrafficPolicy=local"),
    IpSetInfo(NODE_PORT_UDP, "bitmap:port", "Kubernetes nodeport UDP port for masquerade purpose"),
    IpSetInfo(NODE_PORT_LOCAL_UDP, "bitmap:port",
              "Kubernetes nodeport UDP port with externalTrafficPolicy=local"),
    IpSetInfo(NODE_PORT_SCTP, "hash:ip,port",
              "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"),
    IpSetInfo(NODE_PORT_LOCAL_SCTP, "hash:ip,port",
              "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'"),
    IpSetInfo(HEALTH_CHECK_NODE_PORT, "bitmap:port", "Kubernetes health check node port"),
    IpSetInfo(IPVS_IPS, "hash:ip", "Addresses on the ipvs interface"),
)
IPSETS_BY_NAME: Mapping[str, IpSetInfo] = {s.name: s for s in IPSETS}

_NODE_PORT_SETS = {  # protocol -> (set, set for externalTrafficPolicy=Local)
    "TCP": (NODE_PORT_TCP, NODE_PORT_LOCAL_TCP),
    "UDP": (NODE_PORT_UDP, NODE_PORT_LOCAL_UDP),
    "SCTP": (NODE_PORT_SCTP, NODE_PORT_LOCAL_SCTP),
}
_PROTOCOL_NUMBER = {"TCP": 6, "UDP": 17, "SCTP": 132}
_SERVICE_FLAG = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service"}
_IPSET_NAME_MAX = 31


def set_name(name: str, family: int = 4) -> str:
    """The kernel name of a catalogue set: IPv6 sets are ``KUBE-6-...``, cut to 31 chars."""
    if family == 6 and name.startswith("KUBE-"):
        return ("KUBE-6-" + name[len("KUBE-"):])[:_IPSET_NAME_MAX]
    return name


@dataclass(frozen=True, slots=True)
class RealServer:
    ip: IPAddress
    port: int
    address: str  # "ip:port" ("[ip]:port" for IPv6), as ipvsadm prints it


@dataclass(frozen=True, slots=True)
class VirtualServer:
    ip: IPAddress
    port: int
    protocol: str  # TCP | UDP | SCTP
    scheduler: str
    persistence: int | None  # ClientIP affinity timeout in seconds
    real_servers: tuple[RealServer, ...]
    service: tuple[str, str]
    port_name: str


@dataclass(frozen=True, slots=True)
class BlockedFromNode:
    """A load-balancer ingress the node itself may not reach (sourceRanges exclude it)."""

    ip: IPAddress
    protocol: str  # lower case, as the ipvs match takes it
    port: int


@dataclass(frozen=True, slots=True)
class IpvsPlan:
    family: int
    virtual_servers: tuple[VirtualServer, ...]
    sets: Mapping[str, tuple[str, ...]]  # catalogue name -> entries, every set present
    bound_addresses: tuple[IPAddress, ...]  # on kube-ipvs0
    blocked_from_node: tuple[BlockedFromNode, ...]


def scheduler_of(cluster: ResolvedCluster, service: Service) -> str:
    """The IPVS scheduler of a service: its own, else the cluster's, else rr."""
    name = service.ipvs_scheduler or cluster.settings.proxy.ipvs_scheduler or DEFAULT_SCHEDULER
    if name not in IPVS_SCHEDULERS:
        raise ValueError(f"unknown IPVS scheduler {name!r}; expected one of {', '.join(IPVS_SCHEDULERS)}")
    return name


def families(cluster: ResolvedCluster, family: int | None = None) -> tuple[int, ...]:
    """The IP families a node-wide IPVS text covers: ``family``, else every family of the service CIDRs.

    A node has one IPVS table, one set of ipsets and one kube-ipvs0 for both
    families (kube-proxy runs an IPv4 and an IPv6 proxier side by side), so
    those texts hold both; iptables and ip6tables are separate files.
    """
    if family is not None:
        return (family,)
    return tuple(sorted({c.version for c in cluster.settings.service_cidrs})) or (4,)


def generate(cluster: ResolvedCluster, node: Node, family: int | None = None) -> str:
    """``ipvsadm-restore`` input for ``node``, in ``ipvsadm-save -n`` form (IPv4 first, as it sorts).

    >>> generate(cluster, node)            # doctest: +SKIP
    '-A -t 10.96.0.1:443 -s rr\\n-a -t 10.96.0.1:443 -r 192.168.0.11:6443 -m -w 1\\n'
    """
    return "".join(render(plan(cluster, node, f)) for f in families(cluster, family))


def render(ipvs_plan: IpvsPlan) -> str:
    """Virtual servers each followed by its real servers (NAT, weight 1)."""
    out: list[str] = []
    for vs in ipvs_plan.virtual_servers:
        service = f"{_SERVICE_FLAG[vs.protocol]} {_host_port(vs.ip, vs.port)}"
        line = f"-A {service} -s {vs.scheduler}"
        if vs.persistence is not None:
            line += f" -p {vs.persistence}"
        if vs.scheduler == "mh":  # kube-proxy sets IP_VS_SVC_F_SCHED_MH_PORT for mh
            line += " -b mh-port"
        out.append(line + "\n")
        out.extend(f"-a {service} -r {rs.address} -m -w 1\n" for rs in vs.real_servers)
    return "".join(out)


def plan(cluster: ResolvedCluster, node: Node, family: int = 4) -> IpvsPlan:
    """Everything kube-proxy in IPVS mode programs on ``node`` for one IP family.

    The four texts of a node are made from one plan, and most of a plan is the
    same on every node, so both are remembered for the last cluster and node
    seen (by identity: the model is immutable); the result never depends on it.
    """
    if family not in (4, 6):
        raise ValueError(f"IP family must be 4 or 6, not {family!r}")
    last = _last_plan.get(family)
    if last is not None and last[0] is cluster and last[1] is node:
        return last[2]
    builder = _Builder(cluster, node, family, _shared(cluster, family))
    for service in builder.shared.services:
        builder.add_service(service)
    result = builder.finish()
    _last_plan[family] = (cluster, node, result)
    return result


@dataclass(frozen=True, slots=True)
class _PortShare:
    """What every node computes alike for one service port."""

    cluster: tuple[RealServer, ...]  # ready endpoints, else the serving-and-terminating ones
    by_node: Mapping[str | None, tuple[Backend, ...]]  # every endpoint of the family, by node


@dataclass(frozen=True, slots=True)
class _Shared:
    services: tuple[Service, ...]  # sorted by (namespace, name)
    ports: Mapping[tuple[tuple[str, str], str, str], _PortShare]  # (service, port name, protocol)


_EMPTY_PORT = _PortShare((), {})
# One remembered entry per family (the model is immutable, so identity is enough).
_last_plan: dict[int, tuple[ResolvedCluster, Node, IpvsPlan]] = {}
_last_shared: dict[int, tuple[ResolvedCluster, _Shared]] = {}


def _shared(cluster: ResolvedCluster, family: int) -> _Shared:
    last = _last_shared.get(family)
    if last is not None and last[0] is cluster:
        return last[1]
    ports: dict[tuple[tuple[str, str], str, str], _PortShare] = {}
    for key, endpoints in cluster.endpoints.items():
        for pe in endpoints.ports:
            backends = tuple(b for b in pe.backends if b.ip.version == family)
            by_node: dict[str | None, list[Backend]] = {}
            for b in backends:
                by_node.setdefault(b.node, []).append(b)
            ports[(key, pe.port.name, pe.port.protocol)] = _PortShare(
                _ready_else_terminating(backends), {n: tuple(bs) for n, bs in by_node.items()})
    shared = _Shared(tuple(sorted(cluster.services, key=lambda s: s.key)), ports)
    _last_shared[family] = (cluster, shared)
    return shared


class _Builder:
    """Accumulates one node's plan; mirrors the body of syncProxyRules' service loop."""

    def __init__(self, cluster: ResolvedCluster, node: Node, family: int, shared: _Shared) -> None:
        self.cluster = cluster
        self.shared = shared
        self.node = node
        self.family = family
        self.node_addresses = frozenset(node.ips)
        self.node_ip = next((ip for ip in node.ips if ip.version == family), None)
        self.node_port_ips = _node_port_ips(node, cluster.settings.proxy.nodeport_addresses, family)
        self.servers: dict[tuple[int, int, int], VirtualServer] = {}
        self.entries: dict[str, dict[tuple, str]] = {s.name: {} for s in IPSETS}
        self.bound: set[IPAddress] = set()
        self.blocked: dict[tuple, BlockedFromNode] = {}

    def add_service(self, service: Service) -> None:
        if service.headless or service.type == "ExternalName" or service.external_name is not None:
            return
        cluster_ip = _first_of_family(service.cluster_ips, self.family)
        if cluster_ip is None:
            return
        scheduler = scheduler_of(self.cluster, service)
        for port in service.ports:
            share = self.shared.ports.get((service.key, port.name, port.protocol), _EMPTY_PORT)
            self._add_port(service, port, cluster_ip, scheduler, share)

    def _add_port(self, service: Service, port: ServicePort, cluster_ip: IPAddress,
                  scheduler: str, share: _PortShare) -> None:
        family = self.family
        proto = port.protocol.lower()
        external_ips = sorted({ip for ip in service.external_ips if ip.version == family}, key=int)
        lb_ips = sorted({ip for ip in service.load_balancer_ips if ip.version == family}, key=int)
        source_ranges = tuple(n for n in service.load_balancer_source_ranges if n.version == family)
        external_local = _externally_accessible(service) and service.external_traffic_policy == "Local"
        internal_local = service.internal_traffic_policy == "Local"
        accessible = bool(port.node_port or external_ips or lb_ips)
        mine = share.by_node.get(self.node.name, ())
        cluster_eps, local_eps = _categorize(share.cluster, mine, internal_local, external_local, accessible)
        internal_servers = _pick(cluster_eps, local_eps, internal_local)
        external_servers = _pick(cluster_eps, local_eps, external_local)
        persistence = service.affinity_timeout if service.session_affinity == "ClientIP" else None

        def server(ip: IPAddress, vport: int, servers: tuple[RealServer, ...]) -> None:
            key = (_PROTOCOL_NUMBER[port.protocol], int(ip), vport)
            self.servers.setdefault(key, VirtualServer(ip, vport, port.protocol, scheduler, persistence,
                                                       servers, service.key, port.name))

        for b in mine:  # hairpin: every local endpoint, whatever its condition
            if b.port:
                self._entry(LOOP_BACK, (int(b.ip), proto, b.port, int(b.ip)), f"{b.ip},{proto}:{b.port},{b.ip}")

        self._entry(CLUSTER_IP, (int(cluster_ip), proto, port.port), f"{cluster_ip},{proto}:{port.port}")
        server(cluster_ip, port.port, internal_servers)
        self.bound.add(cluster_ip)

        for ip in external_ips:
            ip_set = EXTERNAL_IP_LOCAL if external_local else EXTERNAL_IP
            self._entry(ip_set, (int(ip), proto, port.port), f"{ip},{proto}:{port.port}")
            server(ip, port.port, external_servers)
            if ip not in self.node_addresses:
                self.bound.add(ip)

        for ip in lb_ips:
            self._add_load_balancer(ip, proto, port.port, external_local, source_ranges)
            server(ip, port.port, external_servers)
            if ip not in self.node_addresses:
                self.bound.add(ip)

        if port.node_port:
            if not self.node_port_ips:  # kube-proxy skips the rest of this port, health check included
                return
            all_set, local_set = _NODE_PORT_SETS[port.protocol]
            for ip_set in (all_set, local_set) if external_local else (all_set,):
                if port.protocol == "SCTP":  # hash:ip,port: one entry per node address
                    for ip in self.node_port_ips:
                        self._entry(ip_set, (int(ip), proto, port.node_port), f"{ip},{proto}:{port.node_port}")
                else:
                    self._entry(ip_set, (port.node_port,), str(port.node_port))
            for ip in self.node_port_ips:
                server(ip, port.node_port, external_servers)

        if service.type == "LoadBalancer" and external_local and service.health_check_node_port:
            hc = service.health_check_node_port
            self._entry(HEALTH_CHECK_NODE_PORT, (hc,), str(hc))

    def _add_load_balancer(self, ip: IPAddress, proto: str, port: int, external_local: bool,
                           source_ranges: tuple[IPNetwork, ...]) -> None:
        key = (int(ip), proto, port)
        text = f"{ip},{proto}:{port}"
        self._entry(LOAD_BALANCER, key, text)
        if external_local:
            self._entry(LOAD_BALANCER_LOCAL, key, text)
        if not source_ranges:
            return
        self._entry(LOAD_BALANCER_FW, key, text)
        for net in source_ranges:
            self._entry(LOAD_BALANCER_SOURCE_CIDR, key + (int(net.network_address), net.prefixlen),
                        f"{text},{net}")
        if self.node_ip is not None and any(self.node_ip in net for net in source_ranges):
            self._entry(LOAD_BALANCER_SOURCE_IP, key + (int(ip),), f"{text},{ip}")
        else:  # the node may not reach the LB address itself: KUBE-IPVS-OUT-FILTER drops it
            self.blocked.setdefault(key, BlockedFromNode(ip, proto, port))

    def _entry(self, ip_set: str, key: tuple, text: str) -> None:
        self.entries[ip_set].setdefault(key, text)

    def finish(self) -> IpvsPlan:
        for ip in self.bound:
            self._entry(IPVS_IPS, (int(ip),), str(ip))
        return IpvsPlan(
            family=self.family,
            virtual_servers=tuple(self.servers[k] for k in sorted(self.servers)),
            sets={name: tuple(entries[k] for k in sorted(entries)) for name, entries in self.entries.items()},
            bound_addresses=tuple(sorted(self.bound, key=int)),
            blocked_from_node=tuple(self.blocked[k] for k in sorted(self.blocked)),
        )


def _categorize(cluster: tuple[RealServer, ...], mine: tuple[Backend, ...], internal_local: bool,
                external_local: bool, accessible: bool) -> tuple[tuple[RealServer, ...], tuple[RealServer, ...]]:
    """(cluster endpoints, local endpoints) as pkg/proxy CategorizeEndpoints computes them.

    Each is the ready endpoints or, when there are none, the serving-and-
    terminating ones; ``mine`` are the endpoints on this node. The cluster
    set is only used when some traffic uses it (the internal policy is
    Cluster, or the port is reachable from outside), the local set only
    when a policy is Local. Topology hints are not modelled.
    """
    used_cluster = cluster if (not internal_local or accessible) else ()
    local: tuple[RealServer, ...] = ()
    if internal_local or (external_local and accessible):
        local = _ready_else_terminating(mine)
    return used_cluster, local


def _ready_else_terminating(backends: tuple[Backend, ...]) -> tuple[RealServer, ...]:
    return _servers(b for b in backends if b.ready) or _servers(b for b in backends if b.serving and b.terminating)


def _pick(cluster: tuple[RealServer, ...], local: tuple[RealServer, ...], only_local: bool) -> tuple[RealServer, ...]:
    """syncEndpoint: local endpoints when the policy is Local and there are some, else cluster ones.

    (kube-proxy PR 97081: with no local endpoint the cluster-wide ones are
    used, so that local pods can still reach the service.)
    """
    if only_local and local:
        return local
    return cluster


def _servers(backends: Iterable[Backend]) -> tuple[RealServer, ...]:
    unique = {(int(b.ip), b.port): b for b in backends}
    return tuple(RealServer(b.ip, b.port, _host_port(b.ip, b.port)) for b in (unique[k] for k in sorted(unique)))


def _node_port_ips(node: Node, nodeport_addresses: tuple[IPNetwork, ...], family: int) -> tuple[IPAddress, ...]:
    """The node addresses that get a nodePort virtual server.

    Without --nodeport-addresses (or with 0.0.0.0/0 / ::/0) kube-proxy takes
    every local address except kube-ipvs0's, loopback and IPv6 link-local;
    otherwise the non-loopback addresses inside the given CIDRs.
    """
    ips = [ip for ip in node.ips if ip.version == family]
    cidrs = [n for n in nodeport_addresses if n.version == family]
    if not cidrs or any(n.prefixlen == 0 for n in cidrs):
        chosen = (ip for ip in ips if not ip.is_loopback and not (ip.version == 6 and ip.is_link_local))
    else:
        chosen = (ip for ip in ips if not ip.is_loopback and any(ip in n for n in cidrs))
    return tuple(sorted(set(chosen), key=int))


def _externally_accessible(service: Service) -> bool:
    """pkg/api/v1/service ExternallyAccessible: the gate for externalTrafficPolicy."""
    return service.type in ("NodePort", "LoadBalancer") or (
        service.type == "ClusterIP" and bool(service.external_ips))


def _first_of_family(ips: Iterable[IPAddress], family: int) -> IPAddress | None:
    return next((ip for ip in ips if ip.version == family), None)


def _host_port(ip: IPAddress, port: int) -> str:
    if isinstance(ip, ipaddress.IPv6Address):
        return f"[{ip}]:{port}"
    return f"{ip}:{port}"
