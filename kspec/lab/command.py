"""`kspec lab up|probe|down`: the compiled cluster in namespaces, expected beside observed.

``up`` builds the lab with :mod:`kspec.lab.netns`, loads every node's
``iptables.rules`` and ``routes.batch``, starts a responder on every port a
pod declares or a service sends to, and leaves it all running (the
responders in their own sessions) with a record in :mod:`kspec.lab.state`.
``probe`` runs every check on that lab, or, when none is up under the name,
on a one-shot lab it builds and removes again.  ``down`` removes the lab.

A lab's name is ``--name`` or derived from the input paths (so ``down`` works
even when the input no longer loads); its namespaces are ``ks-<name>-sw``,
``-n-<i>``, ``-p-<j>`` and ``-out``, and nothing else is ever removed.

The checks (pure: :func:`expectations`) state what the model says a packet
meets, as ``kspec verify`` proves it over the rules:

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

Refused before anything is built: ipvs mode (no IPVS in this kernel), any
address outside 198.18.0.0/15 unless allowed explicitly, any lab address or
range overlapping a network of the host (read, never changed, with
``ip -j addr``/``ip -j route``), labs over :data:`MAX_NAMESPACES`.
``--rules DIR`` loads an existing (perhaps edited) compile output instead
of the fresh one, so probing shows where those rules break the spec.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import selectors
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from kspec.diagnostics import Diagnostic, InputError, Span, error
from kspec.frontend.document import Origin
from kspec.lab import netns, probe, state
from kspec.lab.netns import LabCluster, LabError, LabPlan, LabUnavailable, NodeFiles
from kspec.lab.probe import ProbeResult
from kspec.model import Backend, IPNetwork, ResolvedCluster, Service, ServicePort

PROBE_SCRIPT = str(Path(probe.__file__).resolve())
NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,15}[a-z0-9])?")
_LAB_SUFFIX = re.compile(r"sw|out|n-[0-9]+|p-[0-9]+")  # what plan() appends to a prefix
MAX_NAMESPACES = 512  # one per pod: beyond this a lab takes minutes and thousands of processes
_LAB_SPAN = Span.whole("<lab>")
_START_TIMEOUT = 10.0
_GIVE_UP_AFTER = 2  # timed-out tries after which a check stops trying
_PYTHON_FLAGS = ("-I", "-S")  # probe.py needs the standard library only: a third faster to start


class LabBusy(LabError):
    """The lab is already up, or being built by another command."""


# ------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class ProbeOptions:
    tries: int = 12  # connections per service check (spread needs several)
    pods_per_node: int = 1  # client pods sampled on each node
    timeout: float = 1.0  # seconds per connection; a refusal must come sooner
    workers: int = 8  # clients run at once


def lab_name(inputs: Sequence[str]) -> str:
    """The lab name derived from the input paths: the same inputs always name the same lab."""
    paths = sorted(p if p == "-" else str(Path(p).resolve()) for p in inputs)
    return "lab-" + hashlib.sha256("\0".join(paths).encode()).hexdigest()[:6]


def check_name(name: str) -> str | None:
    """Why ``name`` cannot name a lab, or None."""
    if NAME_RE.fullmatch(name):
        return None
    return (f"lab name {name!r} is not 1-17 lowercase letters, digits and inner '-'"
            if name else "the lab name is empty")


def prefix_of(name: str) -> str:
    return f"ks-{name}-"


def owns_namespace(prefix: str, namespace: str) -> bool:
    """Whether ``namespace`` is one plan() makes under ``prefix`` (never another lab's whose prefix is longer)."""
    return namespace.startswith(prefix) and _LAB_SUFFIX.fullmatch(namespace[len(prefix):]) is not None


# ------------------------------------------------------------- the plan


def lab_plan(cluster: ResolvedCluster, prefix: str, allow_any_addresses: bool = False) -> LabPlan:
    """The builder's plan, with an outside client on a free node-network address when there is one."""
    base = netns.plan(cluster, prefix, allow_any_addresses=allow_any_addresses)
    outside = _free_address(base)
    if outside is None:
        return base
    return netns.plan(cluster, prefix, outside_ip=str(outside), allow_any_addresses=allow_any_addresses)


def _free_address(lab: LabPlan) -> ipaddress.IPv4Address | None:
    """The highest free node-network address below the router."""
    if lab.router is None:
        return None
    used = {n.ip.ip for n in lab.nodes} | {lab.router.ip}
    candidate = lab.router.ip - 1
    for _ in range(len(used) + 1):
        if candidate <= lab.node_network.network_address:
            return None
        if candidate not in used:
            return candidate
        candidate -= 1
    return None


def ipvs_refusal(cluster: ResolvedCluster) -> str | None:
    """Why this cluster cannot be built here, for ipvs mode; None in iptables mode."""
    if cluster.settings.proxy.mode != "ipvs":
        return None
    if not Path("/proc/sys/net/ipv4/vs").exists():
        return "ipvs mode cannot be built here: this kernel has no IPVS (no /proc/sys/net/ipv4/vs)"
    return "the lab loads iptables-mode rules only; ipvs mode (ipvsadm, ipset) is not built yet"


def size_refusal(lab: LabPlan) -> str | None:
    count = len(lab.namespaces)
    if count <= MAX_NAMESPACES:
        return None
    return f"the lab would need {count} network namespaces (one per pod); at most {MAX_NAMESPACES} are built"


def node_files(compiled: Iterable[tuple[str, str]]) -> dict[str, NodeFiles]:
    """The iptables.rules and routes.batch of each node, from compile_cluster's (path, text) pairs."""
    found: dict[str, dict[str, str]] = {}
    for path, text in compiled:
        parts = path.split("/")
        if len(parts) == 3 and parts[0] == "nodes" and parts[2] in ("iptables.rules", "routes.batch"):
            found.setdefault(parts[1], {})[parts[2]] = text
    return {node: NodeFiles(f.get("iptables.rules"), f.get("routes.batch")) for node, f in sorted(found.items())}


def fingerprint(lab: LabPlan, files: Mapping[str, NodeFiles]) -> str:
    """What ``probe`` compares to find out that the inputs changed since ``up``."""
    digest = hashlib.sha256(repr((lab.nodes, lab.pods, lab.outside, lab.router)).encode())
    for node in sorted(files):
        digest.update(f"\0{node}\0{files[node].iptables_rules}\0{files[node].routes_batch}".encode())
    return digest.hexdigest()


# ------------------------------------------------------------- expectations (pure)


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


# ------------------------------------------------------------- host networks (pure but for the reader)


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


# ------------------------------------------------------------- judging and reporting (pure)


@dataclass(frozen=True, slots=True)
class Verdict:
    check: Check
    ok: bool
    outcomes: tuple[tuple[str, int], ...]  # (ok|refused|timeout|unreachable|error, count)
    responders: tuple[tuple[str, int], ...]
    sources: tuple[str, ...]
    problem: str  # why observed differs from expected; "" when it does not
    error: str = ""

    def observed_text(self) -> str:
        if self.error:
            return f"error: {self.error}"
        parts = []
        for outcome, count in self.outcomes:
            if outcome == "ok":
                names = ", ".join(f"{n} x{c}" for n, c in self.responders)
                src = f"; source {', '.join(self.sources)}" if self.sources else ""
                parts.append(f"ok x{count}: {names}{src}")
            else:
                parts.append(f"{_WORDS.get(outcome, outcome)} x{count}")
        return "; ".join(parts) or "nothing"


_WORDS = {"refused": "refused", "timeout": "dropped (timeout)", "unreachable": "unreachable"}
_ORDER = ("ok", "refused", "timeout", "unreachable")


def _outcome(result: ProbeResult) -> str:
    if result.ok:
        return "ok"
    if result.refused:
        return "refused"
    return "timeout" if result.timeout else "unreachable"


def judge(check: Check, results: Sequence[ProbeResult], failure: str = "") -> Verdict:
    """Compare what came back with what the model expects."""
    if failure:
        return Verdict(check, False, (), (), (), f"the probe client failed: {failure}", failure)
    outcomes = Counter(_outcome(r) for r in results)
    names = Counter(r.responder_name or "?" for r in results if r.ok)
    sources = tuple(sorted({r.seen_source or "?" for r in results if r.ok}))
    ordered = tuple((o, outcomes[o]) for o in _ORDER if outcomes[o])
    verdict = Verdict(check, False, ordered, tuple(sorted(names.items())), sources, "")
    exp = check.expected
    wrong_outcomes = {o: n for o, n in outcomes.items() if o != exp.outcome}
    problem = ""
    if not results:
        problem = "no answer from the probe client"
    elif wrong_outcomes:
        problem = ", ".join(f"{_WORDS.get(o, o)} x{n}" for o, n in sorted(wrong_outcomes.items())) \
            + f" where {_WORDS.get(exp.outcome, exp.outcome)} was expected"
    elif exp.outcome == "ok":
        strangers = sorted(set(names) - set(exp.responders))
        if strangers:
            problem = f"answered by {', '.join(strangers)}, which {'is' if len(strangers) == 1 else 'are'} " \
                      "not expected"
        elif len(names) < exp.min_distinct:
            problem = f"only {len(names)} distinct responder(s) in {len(results)} tries, " \
                      f"expected at least {exp.min_distinct}"
        elif exp.max_distinct is not None and len(names) > exp.max_distinct:
            problem = f"{len(names)} distinct responders, expected at most {exp.max_distinct}"
        elif exp.source is not None and sources != (exp.source,):
            wrong = ", ".join(s for s in sources if s != exp.source)
            problem = f"the responder saw source {wrong} instead of {exp.source} (the client's own address)"
    return replace(verdict, ok=not problem, problem=problem)


@dataclass(frozen=True)
class Report:
    name: str
    prefix: str
    mode: str  # running | one-shot
    verdicts: tuple[Verdict, ...]
    notes: tuple[str, ...]
    timeout: float

    @property
    def differing(self) -> tuple[Verdict, ...]:
        return tuple(v for v in self.verdicts if not v.ok)

    @property
    def exit_code(self) -> int:
        return 1 if self.differing else 0


_COLUMNS = ("CHECK", "FROM", "TO", "EXPECTED", "OBSERVED", "OK")


def render_text(report: Report, only_differing: bool = False) -> str:
    """The table (every check, or with ``only_differing`` just those that differ), reasons, notes, summary."""
    shown = report.differing if only_differing else report.verdicts
    rows = [_COLUMNS] + [
        (v.check.kind, v.check.client, v.check.to, v.check.expected.text(v.check.tries, report.timeout),
         v.observed_text(), "ok" if v.ok else "DIFFERS")
        for v in shown
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows] if shown else []
    for v in report.differing:
        lines.append(f"differs: {v.check.kind} ({v.check.invariant}) from {v.check.client} to {v.check.to}: "
                     f"{v.problem}")
    lines += [] if only_differing else [f"note: {n}" for n in report.notes]
    total, bad = len(report.verdicts), len(report.differing)
    word = "check" if total == 1 else "checks"
    lines.append(f"kspec lab probe: lab {report.name} ({report.mode}): {total} {word}, "
                 f"{total - bad} as expected, {bad} differ")
    return "\n".join(lines) + "\n"


def report_data(report: Report) -> dict:
    """The stable JSON object of ``probe --format json`` (version 1)."""
    return {
        "version": 1,
        "lab": {"name": report.name, "prefix": report.prefix, "mode": report.mode},
        "checks": [
            {
                "check": v.check.kind,
                "invariant": v.check.invariant,
                "from": v.check.client,
                "to": v.check.to,
                "target": v.check.target,
                "address": v.check.ip,
                "port": v.check.port,
                "protocol": v.check.proto,
                "tries": v.check.tries,
                "expected": {
                    "outcome": v.check.expected.outcome,
                    "responders": list(v.check.expected.responders),
                    "minDistinct": v.check.expected.min_distinct,
                    "maxDistinct": v.check.expected.max_distinct,
                    "source": v.check.expected.source,
                    "text": v.check.expected.text(v.check.tries, report.timeout),
                },
                "observed": {
                    "outcomes": dict(v.outcomes),
                    "responders": dict(v.responders),
                    "sources": list(v.sources),
                    "error": v.error or None,
                    "text": v.observed_text(),
                },
                "ok": v.ok,
                "problem": v.problem or None,
            }
            for v in report.verdicts
        ],
        "notes": list(report.notes),
        "summary": {"checks": len(report.verdicts), "ok": len(report.verdicts) - len(report.differing),
                    "differ": len(report.differing), "exitCode": report.exit_code},
    }


def render_json(report: Report) -> str:
    return json.dumps(report_data(report), indent=2) + "\n"


# ------------------------------------------------------------- running: responders


def start_responders(
    lab: LabPlan, responders: Sequence[Responder], lifetime: float, log: Path,
    started: list[state.ResponderProcess],
) -> None:
    """Start every responder detached (own session, no pipe kept) and wait until all listen.

    Each one is appended to ``started`` as soon as it exists, so a caller
    that is interrupted half-way knows what to stop.
    """
    procs: list[tuple[subprocess.Popen[str], Responder]] = []
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as errors:
        for r in responders:
            ns = lab.netns_of(r.where)
            argv = ["ip", "netns", "exec", ns, sys.executable, PROBE_SCRIPT, "serve", "--port", str(r.port),
                    "--name", r.name, "--proto", r.proto, "--lifetime", f"{lifetime:g}"]
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
                                    text=True, start_new_session=True)
            _CHILDREN[proc.pid] = proc
            started.append(state.ResponderProcess(proc.pid, state.process_start_time(proc.pid) or 0, ns, r.port,
                                                  r.proto, r.name))
            procs.append((proc, r))
    try:
        _wait_all_ready(procs, _START_TIMEOUT, log)
    finally:
        for proc, _ in procs:
            if proc.stdout is not None:
                proc.stdout.close()


# Popen objects of the responders this process started: kept so they are not
# reported as leaked while running, and reaped by stop_responders.
_CHILDREN: dict[int, subprocess.Popen[str]] = {}


def _wait_all_ready(procs: list[tuple[subprocess.Popen[str], Responder]], timeout: float, log: Path) -> None:
    pending = {proc.stdout: (proc, r) for proc, r in procs if proc.stdout is not None}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for stream in pending:
            sel.register(stream, selectors.EVENT_READ)
        while pending:
            left = deadline - time.monotonic()
            events = sel.select(max(0.0, left)) if left > 0 else []
            if not events:
                names = ", ".join(f"{r.where} {r.port}/{r.proto}" for _, r in pending.values())
                raise LabError(f"responders did not start within {timeout:g} s: {names}{_log_tail(log)}")
            for key, _ in events:
                _, r = pending.pop(key.fileobj)
                sel.unregister(key.fileobj)
                if key.fileobj.readline().strip() != probe.READY:
                    raise LabError(f"responder on {r.where} port {r.port}/{r.proto} did not start"
                                   f"{_log_tail(log)}")


def _log_tail(log: Path) -> str:
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return f" ({lines[-1]})" if lines else ""


def stop_responders(processes: Iterable[state.ResponderProcess]) -> int:
    """Kill the recorded responders that are still those processes; returns how many were running."""
    stopped = 0
    for p in processes:
        child = _CHILDREN.pop(p.pid, None)
        ours = child is not None and child.poll() is None  # not reaped yet: the PID is still ours
        if ours or (state.is_running(p) and _is_responder(p.pid)):
            try:
                os.kill(p.pid, 9)
                stopped += 1
            except ProcessLookupError:
                pass
        if child is not None:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
    return stopped


def _is_responder(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return PROBE_SCRIPT.encode() in argv and b"serve" in argv


# ------------------------------------------------------------- running: probes


def run_checks(lab: LabPlan, checks: Sequence[Check], options: ProbeOptions) -> tuple[Verdict, ...]:
    """Run every check (clients in parallel, each bounded in time) and judge it."""
    if not checks:
        return ()
    # the checks that wait for a timeout go first, so they overlap with the quick ones
    order = sorted(range(len(checks)), key=lambda i: checks[i].expected.outcome != "timeout")
    with ThreadPoolExecutor(max_workers=max(1, min(options.workers, len(checks)))) as pool:
        futures = {i: pool.submit(_run_check, lab, checks[i], options.timeout) for i in order}
        try:
            return tuple(futures[i].result() for i in range(len(checks)))
        except BaseException:
            for future in futures.values():
                future.cancel()
            raise


def _run_check(lab: LabPlan, check: Check, timeout: float) -> Verdict:
    argv = ["ip", "netns", "exec", lab.netns_of(check.client), sys.executable, *_PYTHON_FLAGS, PROBE_SCRIPT,
            "connect", check.ip, str(check.port), "--proto", check.proto, "--timeout", f"{timeout:g}",
            "--count", str(check.tries), "--give-up-after", str(_GIVE_UP_AFTER)]
    limit = timeout * min(check.tries, _GIVE_UP_AFTER) + check.tries * 0.5 + 10
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        return judge(check, (), f"no result within {limit:g} s")
    results = [ProbeResult.from_line(line) for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or any(r is None for r in results):
        return judge(check, (), f"exit {done.returncode}: {(done.stderr or done.stdout).strip()[:200]}")
    return judge(check, [r for r in results if r is not None])


# ------------------------------------------------------------- up, probe, down


@dataclass(frozen=True)
class Prepared:
    """Everything a lab command needs, computed before anything is built."""

    name: str
    plan: LabPlan
    files: Mapping[str, NodeFiles]
    expectations: Expectations
    fingerprint: str
    inputs: tuple[str, ...] = ()


def prepare(
    cluster: ResolvedCluster, compiled: Iterable[tuple[str, str]], name: str, inputs: Sequence[str] = (),
    options: ProbeOptions = ProbeOptions(), allow_any_addresses: bool = False, rules_dir: Path | None = None,
    host: Sequence[HostNetwork] | None = None,
) -> Prepared:
    """Plan the lab and its checks; InputError for the spec's problems, LabError/LabUnavailable for the machine's.

    ``compiled`` is compile_cluster's output; the lab loads it, or the node
    files of ``rules_dir`` (a ``kspec compile`` output, perhaps edited) while
    the expectations and the fingerprint still come from ``compiled``.
    """
    reason = ipvs_refusal(cluster)
    if reason:
        raise LabUnavailable(reason)
    lab = lab_plan(cluster, prefix_of(name), allow_any_addresses)
    reason = size_refusal(lab)
    if reason:
        raise LabUnavailable(reason)
    overlaps = host_overlaps(cluster, lab, read_host_networks() if host is None else host)
    if overlaps:
        raise InputError(overlaps)
    files = node_files(compiled)
    print_ = fingerprint(lab, files)
    if rules_dir is not None:
        files = netns.node_files_from_dir(rules_dir, lab)
    paths = tuple(p if p == "-" else str(Path(p).resolve()) for p in inputs)
    return Prepared(name, lab, files, expectations(cluster, lab, options), print_, paths)


def up(prep: Prepared, lifetime: float) -> state.LabState:
    """Build the lab, start its responders and leave them running; on any failure remove it all."""
    started: list[state.ResponderProcess] = []
    lab = LabCluster(prep.plan, files=prep.files)
    record = _new_record(prep)  # outside the try: a lab that is busy is not ours to remove
    try:
        lab.build()
        start_responders(prep.plan, prep.expectations.responders, lifetime, state.log_path(prep.name), started)
        record = replace(record, status="up", responders=tuple(started))
        state.update(record)
    except BaseException:
        stop_responders(started)
        lab.close()
        state.remove(prep.name)
        raise
    lab.detach()
    return record


def _new_record(prep: Prepared) -> state.LabState:
    """Claim the lab's name (the state file is the lock) before building anything."""
    outside = str(prep.plan.outside.ip.ip) if prep.plan.outside is not None else None
    record = state.LabState(prep.name, prep.plan.prefix, "building", prep.inputs, prep.fingerprint, outside,
                            prep.plan.namespaces, owner_pid=os.getpid(), notes=prep.expectations.notes)
    try:
        state.create(record)
    except FileExistsError:
        raise LabBusy(f"lab {prep.name} is already up or being built ({state.state_path(prep.name)})") from None
    return record


def probe_running(prep: Prepared, record: state.LabState, options: ProbeOptions) -> Report:
    """Probe a lab ``up`` left running; LabError when it is not the lab of these inputs any more."""
    if record.status != "up":
        raise LabError(f"lab {prep.name} is still being built (by process {record.owner_pid}) or its build failed")
    if record.fingerprint != prep.fingerprint:
        raise LabBusy(f"lab {prep.name} was built from other inputs or settings than these")
    missing = sorted(set(record.namespaces) - set(netns.list_namespaces(record.prefix)))
    if missing:
        raise LabError(f"lab {prep.name} is broken: namespace {missing[0]} is gone")
    dead = [r for r in record.responders if not state.is_running(r)]
    if dead:
        raise LabError(f"lab {prep.name} is broken: responder {dead[0].name} {dead[0].port}/{dead[0].proto} "
                       f"(pid {dead[0].pid}) has exited (its lifetime may be over)")
    verdicts = run_checks(prep.plan, prep.expectations.checks, options)
    return Report(prep.name, prep.plan.prefix, "running", verdicts, prep.expectations.notes, options.timeout)


def probe_once(prep: Prepared, options: ProbeOptions, lifetime: float = 600.0) -> Report:
    """Build the lab, probe it and remove it again, whatever happens meanwhile."""
    started: list[state.ResponderProcess] = []
    lab = LabCluster(prep.plan, files=prep.files)
    _new_record(prep)
    try:
        lab.build()
        start_responders(prep.plan, prep.expectations.responders, lifetime, state.log_path(prep.name), started)
        verdicts = run_checks(prep.plan, prep.expectations.checks, options)
    finally:
        stop_responders(started)
        lab.close()
        state.remove(prep.name)
    return Report(prep.name, prep.plan.prefix, "one-shot", verdicts, prep.expectations.notes, options.timeout)


@dataclass(frozen=True)
class Removed:
    namespaces: tuple[str, ...]
    responders: int
    had_record: bool
    warning: str = ""  # an unreadable record that was removed anyway


def down(name: str) -> Removed:
    """Remove everything of lab ``name``: responders, namespaces, record; idempotent."""
    prefix = prefix_of(name)
    problem: str | None = None
    try:
        record = state.read(name)
    except state.StateError as exc:
        record, problem = None, str(exc)
    stopped = stop_responders(record.responders) if record is not None else 0
    names = [n for n in netns.list_namespaces(prefix) if owns_namespace(prefix, n)]
    netns._delete_namespaces(names)
    left = [n for n in netns.list_namespaces(prefix) if owns_namespace(prefix, n)]
    if left:
        raise LabError(f"could not delete namespace {left[0]} of lab {name}")
    state.remove(name)
    return Removed(tuple(names), stopped, record is not None or problem is not None, problem or "")


def render_up(prep: Prepared, record: state.LabState) -> str:
    """What ``up`` built: one line per namespace, the responders, where the record is."""
    lab = prep.plan
    lines = [f"kspec lab up: lab {prep.name} is up ({len(lab.namespaces)} namespaces with prefix {lab.prefix})"]
    rows = [("switch", lab.switch, f"router {lab.router}" if lab.router else "")]
    rows += [("node", n.netns, f"{n.name} {n.ip}") for n in lab.nodes]
    rows += [("pod", p.netns, f"{p.namespace}/{p.name} {p.ip} on {p.node}") for p in lab.pods if not p.host_network]
    if lab.outside is not None:
        rows.append(("outside", lab.outside.netns, str(lab.outside.ip)))
    width = max(len(r[1]) for r in rows)
    lines += [f"  {kind:<8} {ns.ljust(width)}  {what}".rstrip() for kind, ns, what in rows]
    served = ", ".join(f"{r.name} {r.port}/{r.proto}" for r in record.responders) or "none"
    lines.append(f"  responders: {served}")
    lines += [f"  note: {n}" for n in record.notes]
    lines.append(f"  record: {state.state_path(prep.name)}")
    lines.append(f"  next: kspec lab probe --name {prep.name} INPUT...; kspec lab down --name {prep.name}")
    return "\n".join(lines) + "\n"
