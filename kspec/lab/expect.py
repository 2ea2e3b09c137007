"""What the model says each lab probe meets: the checks and the responders they need (pure).

Kept apart from running the lab so the expectations can be computed, tested
and compared with ``kspec verify`` without building anything.

The checks state what the model says a packet meets, as ``kspec verify``
proves it over the rules:

* pod-to-pod (KS201): from sampled pods to one port of every pod, answered by
  that pod, which sees the client's own address;
* cluster-ip (KS202): from sampled pods and every node, each TCP/UDP service
  port with usable endpoints is answered only by them, by at least
  min(2, endpoints) of them over the tries (one with ClientIP affinity), and
  a pod's address is kept unless it is its own endpoint;
  internalTrafficPolicy Local: only the client node's endpoints, dropped
  when it has none;
* no-endpoints (KS204): a service port without usable endpoints is refused
  within the client timeout (1 s by default), not black-holed;
* node-port (KS203): from the outside namespace to every node IP, Cluster
  policy reaches some endpoint; Local reaches a local endpoint that sees the
  outside address, or is dropped on a node without one.

Not probed, with a note: SCTP ports, IPv6 (the lab builds IPv4 only),
external and load-balancer IPs (nothing routes them to the lab), endpoints
that are no pod of the lab.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from kspec.lab import netns
from kspec.lab.netns import LabPlan
from kspec.model import Backend, IPNetwork, ResolvedCluster, Service, ServicePort


@dataclass(frozen=True, slots=True)
class ProbeOptions:
    tries: int = 12  # connections per service check (spread needs several)
    pods_per_node: int = 1  # client pods sampled on each node
    timeout: float = 1.0  # seconds per connection; a refusal must come sooner
    workers: int = 8  # clients run at once


@dataclass(frozen=True, slots=True)
class Responder:
    """One listening socket: in ``where`` on ``port``/``proto``, answering ``name``."""

    where: str  # pod/NS/NAME, or node/NAME for hostNetwork pods
    port: int
    proto: str  # tcp | udp
    name: str  # NS/NAME of the (first) pod it stands for


@dataclass(frozen=True, slots=True)
class Expected:
    outcome: str  # ok | refused | timeout
    responders: tuple[str, ...] = ()  # ok: the only ones that may answer
    min_distinct: int = 1  # ok: at least this many of them answer over the tries
    max_distinct: int | None = None  # ok: at most this many (1 with ClientIP affinity)
    source: str | None = None  # ok: the client address every responder must see; None: not checked

    def text(self, tries: int, timeout: float) -> str:
        if self.outcome == "refused":
            return f"refused (< {timeout:g} s)"
        if self.outcome == "timeout":
            return "dropped (timeout)"
        names = ", ".join(self.responders)
        source = f"; source {self.source}" if self.source else ""
        if len(self.responders) == 1:
            return f"ok x{tries}: {names}{source}"
        if self.max_distinct == 1:
            return f"ok x{tries}: one of {names}, the same each time{source}"
        spread = f" (>= {self.min_distinct} of them)" if self.min_distinct > 1 else ""
        return f"ok x{tries}: only {names}{spread}{source}"


@dataclass(frozen=True, slots=True)
class Check:
    kind: str  # pod-to-pod | cluster-ip | no-endpoints | node-port
    invariant: str  # the KS2xx that verify proves about the same packets
    client: str  # pod/NS/NAME | node/NAME | outside
    target: str  # what is addressed: pod/NS/NAME or NS/SVC:PORT
    ip: str
    port: int
    proto: str
    tries: int
    expected: Expected

    @property
    def to(self) -> str:
        return f"{self.target} {self.ip}:{self.port}/{self.proto}"


@dataclass(frozen=True)
class Expectations:
    checks: tuple[Check, ...]
    responders: tuple[Responder, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Port:
    """One service port as the checks see it: its usable endpoints by responder name."""

    service: Service
    port: ServicePort
    ip: str
    proto: str
    cluster: tuple[str, ...]  # usable anywhere: ready, else serving-terminating
    local: Mapping[str, tuple[str, ...]]  # node -> usable on it (ready local, else serving-terminating local)
    has_endpoints: bool

    @property
    def label(self) -> str:
        name = f":{self.port.name}" if self.port.name else f":{self.port.port}"
        return f"{self.service.namespace}/{self.service.name}{name}"


def expectations(cluster: ResolvedCluster, lab: LabPlan, options: ProbeOptions = ProbeOptions()) -> Expectations:
    """Every check of the lab and the responders it needs, from the model alone."""
    notes: list[str] = list(lab.skipped)
    responders = _responders(cluster, lab)
    by_socket = {(lab.netns_of(r.where), r.port, r.proto): r for r in responders}
    where_of_ip = _places_by_ip(lab)
    clients = _client_pods(lab, options.pods_per_node)
    node_of_client = {c.where: c.node for c in clients} | {f"node/{n.name}": n.name for n in lab.nodes}
    checks = list(_pod_to_pod(clients, responders, lab))
    ports = list(_service_ports(cluster, lab, by_socket, where_of_ip, notes))
    detector = _detector(cluster, lab)
    pod_clients = {c.where: c for c in clients}
    client_places = [*pod_clients, *(f"node/{n.name}" for n in lab.nodes)]
    for sp in ports:
        for where in client_places:
            checks.append(_cluster_ip_check(sp, where, node_of_client[where], cluster, detector,
                                            pod_clients.get(where), options))
    if lab.outside is not None:
        outside_ip = str(lab.outside.ip.ip)
        for sp in ports:
            if sp.port.node_port and sp.service.is_node_port:
                checks.extend(_node_port_checks(sp, lab, cluster, outside_ip, options))
    elif any(sp.port.node_port for sp in ports):
        notes.append("nodePorts not probed: the node network has no free address for an outside client")
    if any(s.external_ips or s.load_balancer_ips for s in cluster.services):
        notes.append("external and load-balancer IPs not probed: nothing routes them to the lab")
    return Expectations(tuple(checks), responders, tuple(notes))


@dataclass(frozen=True, slots=True)
class _Client:
    where: str
    node: str
    ip: str
    name: str


def _client_pods(lab: LabPlan, per_node: int) -> list[_Client]:
    """The first ``per_node`` pods (by namespace/name) with their own namespace on each node."""
    taken: Counter[str] = Counter()
    clients = []
    for pod in sorted((p for p in lab.pods if not p.host_network), key=lambda p: (p.namespace, p.name)):
        if taken[pod.node] < per_node:
            taken[pod.node] += 1
            clients.append(_Client(f"pod/{pod.namespace}/{pod.name}", pod.node, str(pod.ip.ip),
                                   f"{pod.namespace}/{pod.name}"))
    return clients


def _responders(cluster: ResolvedCluster, lab: LabPlan) -> tuple[Responder, ...]:
    """One responder per (namespace, port, protocol) a pod declares or an endpoint names.

    A hostNetwork pod's responder runs in its node's namespace, named after
    the first such pod on that socket.
    """
    pods = {(p.namespace, p.name): p for p in lab.pods}
    where_of_ip = _places_by_ip(lab)
    wanted: dict[tuple[str, int, str], Responder] = {}

    def add(key: tuple[str, str], port: int, protocol: str) -> None:
        pod = pods.get(key)
        if pod is None or protocol not in ("TCP", "UDP") or not 0 < port < 65536:
            return
        where = f"node/{pod.node}" if pod.host_network else f"pod/{pod.namespace}/{pod.name}"
        socket = (lab.netns_of(where), port, protocol.lower())
        wanted.setdefault(socket, Responder(where, port, protocol.lower(), f"{key[0]}/{key[1]}"))

    model_pods = cluster.pods_by_key
    for key in sorted(pods):
        pod = model_pods.get(key)
        for cp in sorted(pod.ports if pod else (), key=lambda c: (c.port, c.protocol)):
            add(key, cp.port, cp.protocol)
    for svc_key in sorted(cluster.endpoints):
        for pe in cluster.endpoints[svc_key].ports:
            for b in pe.backends:
                key = b.pod if b.pod is not None else _pod_at(where_of_ip.get(str(b.ip)))
                if key is not None:
                    add(key, b.port, b.protocol)
    return tuple(sorted(wanted.values(), key=lambda r: (r.where, r.port, r.proto)))


def _pod_at(where: str | None) -> tuple[str, str] | None:
    if where is None or not where.startswith("pod/"):
        return None
    namespace, _, name = where[4:].partition("/")
    return (namespace, name)


def _places_by_ip(lab: LabPlan) -> dict[str, str]:
    """Pod and node addresses -> where they live (a hostNetwork pod counts as its node)."""
    places = {str(n.ip.ip): f"node/{n.name}" for n in lab.nodes}
    places.update((str(p.ip.ip), f"pod/{p.namespace}/{p.name}") for p in lab.pods if not p.host_network)
    return places


def _pod_to_pod(clients: list[_Client], responders: Sequence[Responder], lab: LabPlan) -> Iterator[Check]:
    """From each sampled pod to the first responder of every pod: answered by it, source kept."""
    first: dict[str, Responder] = {}
    for r in responders:
        first.setdefault(r.name, r)
    pods = {f"{p.namespace}/{p.name}": p for p in lab.pods}
    for client in clients:
        for name in sorted(first):
            target = first[name]
            if name == client.name or name not in pods:
                continue
            yield Check("pod-to-pod", "KS201", client.where, f"pod/{name}", str(pods[name].ip.ip), target.port,
                        target.proto, 1, Expected("ok", (target.name,), source=client.ip))


def _service_ports(
    cluster: ResolvedCluster, lab: LabPlan, by_socket: Mapping[tuple[str, int, str], Responder],
    where_of_ip: Mapping[str, str], notes: list[str],
) -> Iterator[_Port]:
    pods = {(p.namespace, p.name): p for p in lab.pods}
    for svc in sorted(cluster.services, key=lambda s: s.key):
        if svc.headless or svc.type == "ExternalName" or svc.external_name is not None:
            continue
        label = f"service {svc.namespace}/{svc.name}"
        ip = next((a for a in svc.cluster_ips if a.version == 4), None)
        if ip is None:
            notes.append(f"{label}: no IPv4 cluster IP (the lab builds IPv4 only): not probed")
            continue
        eps = cluster.endpoints.get(svc.key)
        by_port = {(pe.port.name, pe.port.protocol): pe.backends for pe in eps.ports} if eps else {}
        for port in sorted(svc.ports, key=lambda p: (p.name, p.protocol, p.port)):
            if port.protocol not in ("TCP", "UDP"):
                notes.append(f"{label} port {port.name or port.port}/{port.protocol}: only TCP and UDP are probed")
                continue
            backends = _unique(b for b in by_port.get((port.name, port.protocol), ()) if b.ip.version == 4)
            names, stranger = _responder_names(backends, pods, lab, by_socket, where_of_ip)
            if stranger is not None:
                notes.append(f"{label} port {port.name or port.port}: endpoint {stranger.ip}:{stranger.port} "
                             "is no pod of the lab: not probed")
                continue
            yield _port_view(svc, port, str(ip), backends, names)


def _responder_names(
    backends: Sequence[Backend], pods: Mapping[tuple[str, str], netns.PodPlan], lab: LabPlan,
    by_socket: Mapping[tuple[str, int, str], Responder], where_of_ip: Mapping[str, str],
) -> tuple[dict[Backend, str], Backend | None]:
    """Which responder answers for each backend; the first backend without one, if any."""
    names: dict[Backend, str] = {}
    for b in backends:
        pod = pods.get(b.pod) if b.pod is not None else None
        if pod is not None:
            where = f"node/{pod.node}" if pod.host_network else f"pod/{pod.namespace}/{pod.name}"
        else:
            where = where_of_ip.get(str(b.ip))
        responder = by_socket.get((lab.netns_of(where), b.port, b.protocol.lower())) if where else None
        if responder is None:
            return names, b
        names[b] = responder.name
    return names, None


def _unique(backends: Iterable[Backend]) -> list[Backend]:
    """One backend per ip:port (kube-proxy's endpoint key), the first one given."""
    seen: dict[tuple[str, int], Backend] = {}
    for b in backends:
        seen.setdefault((str(b.ip), b.port), b)
    return [seen[k] for k in sorted(seen)]


def _usable(backends: Sequence[Backend]) -> list[Backend]:
    """Ready endpoints, else the serving ones that are terminating (kube-proxy's fallback)."""
    return [b for b in backends if b.ready] or [b for b in backends if b.serving and b.terminating]


def _port_view(
    svc: Service, port: ServicePort, ip: str, backends: list[Backend], names: Mapping[Backend, str]
) -> _Port:
    by_node: dict[str, list[Backend]] = {}
    for b in backends:
        if b.node is not None:
            by_node.setdefault(b.node, []).append(b)
    local = {node: tuple(sorted({names[b] for b in _usable(bs)})) for node, bs in sorted(by_node.items())}
    usable = tuple(sorted({names[b] for b in _usable(backends)}))
    has = any(b.ready or (b.serving and b.terminating) for b in backends)
    return _Port(svc, port, ip, port.protocol.lower(), usable, {n: v for n, v in local.items() if v}, has)


def _detector(cluster: ResolvedCluster, lab: LabPlan) -> Mapping[str, IPNetwork | None]:
    """Per node: the source range kube-proxy treats as local pod traffic (not masqueraded)."""
    proxy = cluster.settings.proxy
    cluster_cidr = next((c for c in cluster.settings.pod_cidrs if c.version == 4), None)
    found: dict[str, IPNetwork | None] = {}
    for node in cluster.nodes:
        if proxy.detect_local_mode == "NodeCIDR":
            found[node.name] = next((c for c in node.pod_cidrs if c.version == 4), None)
        else:
            found[node.name] = cluster_cidr
    return found


def _spread(sp: _Port, names: tuple[str, ...]) -> tuple[int, int | None]:
    if sp.service.session_affinity == "ClientIP":
        return 1, 1
    return min(2, len(names)), None


def _cluster_ip_check(
    sp: _Port, where: str, node: str, cluster: ResolvedCluster, detector: Mapping[str, IPNetwork | None],
    client: _Client | None, options: ProbeOptions,
) -> Check:
    if not sp.has_endpoints:
        return Check("no-endpoints", "KS204", where, sp.label, sp.ip, sp.port.port, sp.proto, 1, Expected("refused"))
    names = sp.cluster
    if sp.service.internal_traffic_policy == "Local":
        names = sp.local.get(node, ())
        if not names:
            return Check("cluster-ip", "KS202", where, sp.label, sp.ip, sp.port.port, sp.proto, 1, Expected("timeout"))
    source = None
    local_range = detector.get(node)
    if (client is not None and not cluster.settings.proxy.masquerade_all and client.name not in names
            and local_range is not None and ipaddress.ip_address(client.ip) in local_range):
        source = client.ip
    low, high = _spread(sp, names)
    return Check("cluster-ip", "KS202", where, sp.label, sp.ip, sp.port.port, sp.proto, options.tries,
                 Expected("ok", names, low, high, source))


def _node_port_checks(
    sp: _Port, lab: LabPlan, cluster: ResolvedCluster, outside_ip: str, options: ProbeOptions
) -> Iterator[Check]:
    npa = [c for c in cluster.settings.proxy.nodeport_addresses if c.version == 4]
    open_everywhere = not npa or any(c.prefixlen == 0 for c in npa)
    local_policy = sp.service.external_traffic_policy == "Local"
    for node in lab.nodes:
        label = f"{sp.service.namespace}/{sp.service.name}:{sp.port.node_port}"
        args = ("node-port", "KS203", "outside", label, str(node.ip.ip), sp.port.node_port or 0, sp.proto)
        local = sp.local.get(node.name, ())
        # kube-proxy's REJECT (no endpoints) and DROP (no local one) match every local address,
        # whatever --nodeport-addresses says; only the DNAT is limited to those addresses
        if not sp.has_endpoints:
            yield Check(*args, 1, Expected("refused"))
        elif local_policy and not local:
            yield Check(*args, 1, Expected("timeout"))
        elif not (open_everywhere or any(node.ip.ip in c for c in npa)):
            yield Check(*args, 1, Expected("refused"))  # no DNAT: the node itself answers with a reset
        elif local_policy:
            low, high = _spread(sp, local)
            yield Check(*args, options.tries, Expected("ok", local, low, high, outside_ip))
        else:
            yield Check(*args, options.tries, Expected("ok", sp.cluster, 1, _spread(sp, sp.cluster)[1]))
