"""kube-proxy iptables mode: the iptables-restore input of one node.

The text is what kube-proxy (kubernetes/kubernetes 531be812, the v1.35 line)
restores on a node -- ``*filter`` then ``*nat``, chain declarations first,
hashed KUBE-SVC/SVL/EXT/FW/SEP chains, its comments and probabilities -- plus
what kube-proxy installs around it with ``iptables -I`` (the jumps from the
built-in chains into KUBE-*), so that restoring this file alone puts the
node's service rules in place.

kube-proxy walks Go maps, so its own order varies between syncs; ours is
fixed: services by (namespace, name), ports by (name, protocol), endpoints
as kube-proxy sorts them (by their ``ip:port`` string).

Most of a node's rules are the same on every node, so the work is split:
:func:`prepare` does everything node-independent once (and renders the text
of every service port whose rules do not depend on the node), :func:`render`
adds the per-node parts.  :func:`generate` is both in one call.

>>> text = generate(cluster, cluster.nodes[0])          # doctest: +SKIP
>>> prepared = prepare(cluster)                          # doctest: +SKIP
>>> [render(prepared, n) for n in cluster.nodes]         # doctest: +SKIP
"""

from __future__ import annotations

import ipaddress
import weakref
from dataclasses import dataclass, replace

from kspec.backends import kube_chains as kc
from kspec.diagnostics import InputError, error
from kspec.model import IPAddress, IPNetwork, Node, ProxySettings, ResolvedCluster, Service

_NODEPORTS_COMMENT = kc.quoted("kubernetes service nodeports; NOTE: this must be the last rule in this chain")
_NEW = "-m conntrack --ctstate NEW"

# kube-proxy's iptablesJumpChains, in its order: (table, built-in chain, target, comment, match).
_JUMPS = (
    ("filter", "INPUT", kc.KUBE_EXTERNAL_SERVICES, "kubernetes externally-visible service portals", _NEW),
    ("filter", "FORWARD", kc.KUBE_EXTERNAL_SERVICES, "kubernetes externally-visible service portals", _NEW),
    ("filter", "INPUT", kc.KUBE_NODEPORTS, "kubernetes health check service ports", ""),
    ("filter", "FORWARD", kc.KUBE_SERVICES, "kubernetes service portals", _NEW),
    ("filter", "OUTPUT", kc.KUBE_SERVICES, "kubernetes service portals", _NEW),
    ("filter", "FORWARD", kc.KUBE_FORWARD, "kubernetes forwarding rules", ""),
    ("filter", "INPUT", kc.KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    ("filter", "OUTPUT", kc.KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    ("filter", "FORWARD", kc.KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    ("nat", "OUTPUT", kc.KUBE_SERVICES, "kubernetes service portals", ""),
    ("nat", "PREROUTING", kc.KUBE_SERVICES, "kubernetes service portals", ""),
    ("nat", "POSTROUTING", kc.KUBE_POSTROUTING, "kubernetes postrouting rules", ""),
)
# iptablesKubeletJumpChains: kube-proxy ensures these too (only emitted when it fills KUBE-FIREWALL).
_KUBELET_JUMPS = (
    ("filter", "INPUT", kc.KUBE_FIREWALL, "", ""),
    ("filter", "OUTPUT", kc.KUBE_FIREWALL, "", ""),
)
BUILTIN_CHAINS = {"filter": ("INPUT", "FORWARD", "OUTPUT"), "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")}
_FILTER_CHAINS = (
    kc.KUBE_SERVICES, kc.KUBE_EXTERNAL_SERVICES, kc.KUBE_FORWARD, kc.KUBE_NODEPORTS, kc.KUBE_PROXY_FIREWALL,
)  # fmt: skip
_NAT_CHAINS = (kc.KUBE_SERVICES, kc.KUBE_NODEPORTS, kc.KUBE_POSTROUTING, kc.KUBE_MARK_MASQ)
_DETECT_MODES = ("ClusterCIDR", "NodeCIDR")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint of one service port, as kube-proxy's endpointsMap holds it."""

    addr: str  # Endpoint.String(): ip:port, [ip6]:port
    ip: str
    node: str | None
    ready: bool
    serving: bool
    terminating: bool
    chain: str  # KUBE-SEP-...

    @property
    def fallback(self) -> bool:
        """Usable when no endpoint is ready: serving while terminating."""
        return self.serving and self.terminating


@dataclass(frozen=True, slots=True)
class PortPlan:
    """One service port of one IP family: kube-proxy's servicePortInfo, node-independent."""

    name: str  # ns/svc:port
    protocol: str  # tcp | udp | sctp
    hash: str
    cluster_ip: str
    port: int
    node_port: int
    external_ips: tuple[str, ...]
    lb_vips: tuple[str, ...]
    source_ranges: tuple[IPNetwork, ...]
    health_check_node_port: int
    affinity_seconds: int  # 0: no ClientIP affinity
    external_local: bool
    internal_local: bool
    # endpoints grouped by addr, sorted; a group holds the duplicates kube-proxy dedups
    groups: tuple[tuple[Endpoint, ...], ...]

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.lb_vips or self.external_ips)

    @property
    def uses_cluster(self) -> bool:
        return not self.internal_local or self.externally_accessible

    @property
    def uses_local(self) -> bool:
        return self.internal_local or (self.external_local and self.externally_accessible)

    @property
    def node_dependent(self) -> bool:
        """Whether some node sees different rules (local endpoints, LB source ranges, duplicates)."""
        return (
            self.uses_local
            or bool(self.lb_vips and self.source_ranges)
            or any(len(g) > 1 for g in self.groups)
        )


@dataclass(frozen=True, slots=True)
class _Chunk:
    """The lines one service port adds to each of kube-proxy's buffers (newline-terminated)."""

    filter_rules: str
    nat_chains: str
    nat_rules: str


@dataclass(frozen=True, slots=True)
class _NodeView:
    name: str | None
    ip: IPAddress | None
    if_local: str | None  # LocalTrafficDetector.IfLocal(), None when not implemented
    if_not_local: str | None


@dataclass(frozen=True)
class Prepared:
    """Everything about one cluster and one IP family that does not depend on the node."""

    family: int
    proxy: ProxySettings
    mark: str
    cluster_cidr: str | None
    localhost_nodeports: bool
    nodeport_cidrs: tuple[IPNetwork, ...] | None  # None: --nodeport-addresses matches all
    large_cluster: bool
    plans: tuple[PortPlan, ...]
    shared: tuple[_Chunk | None, ...]  # rendered once for node-independent ports


def generate(cluster: ResolvedCluster, node: Node, family: int = 4) -> str:
    """The full iptables-restore (or ip6tables-restore) input for ``node``.

    Called node after node for one cluster (as ``kspec compile`` does), it
    prepares that cluster once per family and only renders each node.
    """
    cached = _PREPARED.get(family)
    if cached is None or cached[0]() is not cluster:
        cached = (weakref.ref(cluster, _forget), prepare(cluster, family))
        _PREPARED[family] = cached
    return render(cached[1], node)


# family -> (the cluster last prepared, its Prepared); ResolvedCluster is immutable
_PREPARED: dict[int, tuple[weakref.ref, "Prepared"]] = {}


def _forget(dead: weakref.ref) -> None:
    """Drop a prepared cluster as soon as the cluster itself is gone."""
    for family, (ref, _) in list(_PREPARED.items()):
        if ref is dead:
            del _PREPARED[family]


def prepare(cluster: ResolvedCluster, family: int = 4) -> Prepared:
    """Build the node-independent part once; :func:`render` then costs little per node."""
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    proxy = cluster.settings.proxy
    if proxy.detect_local_mode not in _DETECT_MODES:
        raise InputError(
            error(
                f"detect-local-mode {proxy.detect_local_mode!r} cannot be compiled: kspec does not model "
                "the interface names BridgeInterface/InterfaceNamePrefix need",
                proxy.origin.at("detectLocalMode"),
                hint="use detectLocalMode ClusterCIDR (default) or NodeCIDR",
            )
        )
    plans = tuple(_plans(cluster, family))
    npa = tuple(c for c in proxy.nodeport_addresses if c.version == family)
    match_all = not npa or any(c.prefixlen == 0 for c in npa)
    loopback = ipaddress.ip_address("127.0.0.0")
    has_v4_loopback = match_all or any(c.network_address.is_loopback or loopback in c for c in npa)
    cluster_cidr = next((str(c) for c in cluster.settings.pod_cidrs if c.version == family), None)
    prep = Prepared(
        family=family,
        proxy=proxy,
        mark=kc.masquerade_mark(proxy.masquerade_bit),
        cluster_cidr=cluster_cidr,
        localhost_nodeports=proxy.localhost_nodeports and family == 4 and has_v4_loopback,
        nodeport_cidrs=None if match_all else npa,
        large_cluster=sum(len(p.groups) for p in plans) > kc.LARGE_CLUSTER_ENDPOINTS_THRESHOLD,
        plans=plans,
        shared=(),
    )
    if proxy.detect_local_mode != "ClusterCIDR":
        return prep  # the local detector differs per node: nothing is shared
    neutral = _node_view(prep, None)
    shared = tuple(None if p.node_dependent else _render_port(prep, p, neutral) for p in plans)
    return replace(prep, shared=shared)


def render(prep: Prepared, node: Node) -> str:
    """One node's restore input from a :class:`Prepared` cluster."""
    view = _node_view(prep, node)
    chunks = []
    for i, plan in enumerate(prep.plans):
        chunk = prep.shared[i] if prep.shared else None
        chunks.append(chunk if chunk is not None else _render_port(prep, plan, view))

    firewall = prep.localhost_nodeports  # kube-proxy fills KUBE-FIREWALL only then
    out = ["*filter\n"]
    out += [f":{c} ACCEPT [0:0]\n" for c in BUILTIN_CHAINS["filter"]]
    out += [f":{c} - [0:0]\n" for c in _FILTER_CHAINS]
    if firewall:
        out.append(f":{kc.KUBE_FIREWALL} - [0:0]\n")
    out += _jump_rules("filter", firewall)
    if firewall:
        out.append(
            f"-A {kc.KUBE_FIREWALL} -m comment --comment {kc.quoted('block incoming localnet connections')} "
            "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n"
        )
    out += [c.filter_rules for c in chunks]
    out += _forward_rules(prep)
    out.append("COMMIT\n*nat\n")
    out += [f":{c} ACCEPT [0:0]\n" for c in BUILTIN_CHAINS["nat"]]
    out += [f":{c} - [0:0]\n" for c in _NAT_CHAINS]
    out += [c.nat_chains for c in chunks]
    out += _jump_rules("nat", firewall)
    out += _masquerade_rules(prep)
    out += [c.nat_rules for c in chunks]
    out += _nodeport_jumps(prep, node)
    out.append("COMMIT\n")
    return "".join(out)


# --- the model, as kube-proxy's service and endpoints maps see it -----------------


def _plans(cluster: ResolvedCluster, family: int):
    """Service ports kube-proxy would proxy for ``family``, in our fixed order."""
    for svc in sorted(cluster.services, key=lambda s: (s.namespace, s.name)):
        if svc.headless or svc.type == "ExternalName" or svc.external_name is not None:
            continue
        cluster_ip = next((ip for ip in svc.cluster_ips if ip.version == family), None)
        if cluster_ip is None:
            continue
        eps = cluster.endpoints.get(svc.key)
        by_port = {(pe.port.name, pe.port.protocol): pe.backends for pe in eps.ports} if eps else {}
        for port in sorted(svc.ports, key=lambda p: (p.name, p.protocol)):
            name = kc.service_port_name(svc.namespace, svc.name, port.name)
            proto = port.protocol.lower()
            backends = by_port.get((port.name, port.protocol), ())
            yield _plan(svc, port, name, proto, str(cluster_ip), backends, family)


def _plan(svc: Service, port, name: str, proto: str, cluster_ip: str, backends, family: int) -> PortPlan:
    externally_accessible = svc.type in ("NodePort", "LoadBalancer") or (
        svc.type == "ClusterIP" and bool(svc.external_ips)
    )
    external_local = externally_accessible and svc.external_traffic_policy == "Local"
    hc = svc.health_check_node_port if svc.type == "LoadBalancer" and external_local else None
    return PortPlan(
        name=name,
        protocol=proto,
        hash=kc.port_proto_hash(name, proto),
        cluster_ip=cluster_ip,
        port=port.port,
        node_port=port.node_port or 0,
        external_ips=tuple(str(ip) for ip in svc.external_ips if ip.version == family),
        lb_vips=tuple(str(ip) for ip in svc.load_balancer_ips if ip.version == family),
        source_ranges=tuple(c for c in svc.load_balancer_source_ranges if c.version == family),
        health_check_node_port=hc or 0,
        affinity_seconds=svc.affinity_timeout if svc.session_affinity == "ClientIP" else 0,
        external_local=external_local,
        internal_local=svc.internal_traffic_policy == "Local",
        groups=_endpoint_groups(name, proto, backends, family),
    )


def _endpoint_groups(name: str, proto: str, backends, family: int) -> tuple[tuple[Endpoint, ...], ...]:
    """Endpoints of the family keyed by ``ip:port`` (kube-proxy's dedup key), sorted by it."""
    groups: dict[str, list[Endpoint]] = {}
    for b in backends:
        if b.ip.version != family:
            continue
        ip = str(b.ip)
        addr = kc.endpoint_string(ip, b.port, family)
        ep = Endpoint(addr, ip, b.node, b.ready, b.serving, b.terminating, kc.endpoint_chain(name, proto, addr))
        group = groups.setdefault(addr, [])
        if ep not in group:
            group.append(ep)
    return tuple(tuple(groups[a]) for a in sorted(groups))


def _node_view(prep: Prepared, node: Node | None) -> _NodeView:
    if node is None:
        return _NodeView(None, None, *_detector(prep.cluster_cidr))
    ip = next((a for a in node.ips if a.version == prep.family), None)
    cidr = prep.cluster_cidr
    if prep.proxy.detect_local_mode == "NodeCIDR":
        cidr = next((str(c) for c in node.pod_cidrs if c.version == prep.family), None)
    return _NodeView(node.name, ip, *_detector(cidr))


def _detector(cidr: str | None) -> tuple[str | None, str | None]:
    return (f"-s {cidr}", f"! -s {cidr}") if cidr else (None, None)


def _categorize(plan: PortPlan, node: str | None):
    """proxy.CategorizeEndpoints without topology hints.

    Returns (cluster endpoints, local endpoints, all reachable, has any usable endpoint).
    """
    # kube-proxy keeps one endpoint per ip:port, preferring the local copy.
    eps = [next((e for e in reversed(g) if node and e.node == node), g[0]) for g in plan.groups]
    if not eps:
        return [], [], [], False
    cluster: list[Endpoint] = []
    has_any = False
    if plan.uses_cluster:
        cluster = [e for e in eps if e.ready] or [e for e in eps if e.fallback]
        has_any = bool(cluster)
    if not plan.uses_local:
        return cluster, [], cluster, has_any
    has_any = has_any or any(e.ready or e.fallback for e in eps)
    mine = [e for e in eps if node and e.node == node]
    local = [e for e in mine if e.ready]
    terminating = not local
    if terminating:
        local = [e for e in mine if e.fallback]
    if not plan.uses_cluster:
        return cluster, local, local, has_any
    if not terminating or not local:
        return cluster, local, cluster, has_any
    merged = {e.addr: e for e in cluster}
    merged.update((e.addr, e) for e in local)
    return cluster, local, [merged[a] for a in sorted(merged)], has_any


# --- one service port: kube-proxy's syncProxyRules loop body ------------------------


def _render_port(prep: Prepared, p: PortPlan, nv: _NodeView) -> _Chunk:
    cluster_eps, local_eps, reachable, has_eps = _categorize(p, nv.name)
    filt: list[str] = []
    chains: list[str] = []
    rules: list[str] = []
    name, proto = p.name, p.protocol
    svc_chain, svl_chain = kc.SVC_PREFIX + p.hash, kc.SVL_PREFIX + p.hash
    ext_chain, fw_chain = kc.EXT_PREFIX + p.hash, kc.FW_PREFIX + p.hash

    internal_chain, has_internal = svc_chain, has_eps
    if p.internal_local:
        internal_chain, has_internal = svl_chain, has_eps and bool(local_eps)
    external_policy_chain, has_external = svc_chain, has_eps
    if p.external_local:
        external_policy_chain, has_external = svl_chain, has_eps and bool(local_eps)
    uses_fw = has_eps and bool(p.lb_vips) and bool(p.source_ranges)
    lb_chain = fw_chain if uses_fw else ext_chain

    # no endpoints at all: REJECT; none this node may use under a Local policy: DROP
    target = "DROP" if has_eps else "REJECT"
    why = kc.quoted(f"{name} has no local endpoints" if has_eps else f"{name} has no endpoints")
    match = f"-m {proto} -p {proto}"
    dport = f"--dport {p.port}"

    def refuse(chain: str, dest: str) -> str:
        return f"-A {chain} -m comment --comment {why} {dest} -j {target}"

    cluster_ip = f"-m comment --comment {kc.quoted(f'{name} cluster IP')} {match} -d {p.cluster_ip} {dport}"
    if has_internal:
        rules.append(f"-A {kc.KUBE_SERVICES} {cluster_ip} -j {internal_chain}")
    else:
        filt.append(refuse(kc.KUBE_SERVICES, f"{match} -d {p.cluster_ip} {dport}"))

    for ip in p.external_ips:
        if has_eps:
            comment = kc.quoted(f"{name} external IP")
            rules.append(f"-A {kc.KUBE_SERVICES} -m comment --comment {comment} {match} -d {ip} {dport} -j {ext_chain}")
        if not has_external:
            filt.append(refuse(kc.KUBE_EXTERNAL_SERVICES, f"{match} -d {ip} {dport}"))

    for ip in p.lb_vips:
        if has_eps:
            comment = kc.quoted(f"{name} loadbalancer IP")
            rules.append(f"-A {kc.KUBE_SERVICES} -m comment --comment {comment} {match} -d {ip} {dport} -j {lb_chain}")
        if uses_fw:
            comment = kc.quoted(f"{name} traffic not accepted by {fw_chain}")
            filt.append(f"-A {kc.KUBE_PROXY_FIREWALL} -m comment --comment {comment} {match} -d {ip} {dport} -j DROP")
    if not has_external:
        filt.extend(refuse(kc.KUBE_EXTERNAL_SERVICES, f"{match} -d {ip} {dport}") for ip in p.lb_vips)

    if p.node_port:
        np = f"--dport {p.node_port}"
        if has_eps:
            if prep.localhost_nodeports and prep.proxy.nfacct:
                rules.append(
                    f"-A {kc.KUBE_NODEPORTS} -m comment --comment {name} {match} -d 127.0.0.0/8 {np} "
                    f"-m nfacct --nfacct-name {kc.NFACCT_LOCALHOST_NODEPORT} -j {ext_chain}"
                )
            rules.append(f"-A {kc.KUBE_NODEPORTS} -m comment --comment {name} {match} {np} -j {ext_chain}")
        if not has_external:
            filt.append(refuse(kc.KUBE_EXTERNAL_SERVICES, f"-m addrtype --dst-type LOCAL {match} {np}"))

    if p.health_check_node_port:
        comment = kc.quoted(f"{name} health check node port")
        filt.append(
            f"-A {kc.KUBE_NODEPORTS} -m comment --comment {comment} -m tcp -p tcp "
            f"--dport {p.health_check_node_port} -j ACCEPT"
        )

    if has_internal:
        if prep.proxy.masquerade_all:
            rules.append(f"-A {internal_chain} {cluster_ip} -j {kc.KUBE_MARK_MASQ}")
        elif nv.if_not_local:
            rules.append(f"-A {internal_chain} {cluster_ip} {nv.if_not_local} -j {kc.KUBE_MARK_MASQ}")

    if has_eps and p.externally_accessible:
        chains.append(f":{ext_chain} - [0:0]")
        if not p.external_local:
            comment = kc.quoted(f"masquerade traffic for {name} external destinations")
            rules.append(f"-A {ext_chain} -m comment --comment {comment} -j {kc.KUBE_MARK_MASQ}")
        else:
            if nv.if_local:
                comment = kc.quoted(f"pod traffic for {name} external destinations")
                rules.append(f"-A {ext_chain} -m comment --comment {comment} {nv.if_local} -j {svc_chain}")
            comment = kc.quoted(f"masquerade LOCAL traffic for {name} external destinations")
            rules.append(
                f"-A {ext_chain} -m comment --comment {comment} -m addrtype --src-type LOCAL -j {kc.KUBE_MARK_MASQ}"
            )
            comment = kc.quoted(f"route LOCAL traffic for {name} external destinations")
            rules.append(f"-A {ext_chain} -m comment --comment {comment} -m addrtype --src-type LOCAL -j {svc_chain}")
        if has_external:
            rules.append(f"-A {ext_chain} -j {external_policy_chain}")

    if uses_fw:
        chains.append(f":{fw_chain} - [0:0]")
        head = f"-A {fw_chain} -m comment --comment {kc.quoted(f'{name} loadbalancer IP')}"
        allow_from_node = False
        for cidr in p.source_ranges:
            rules.append(f"{head} -s {cidr} -j {ext_chain}")
            allow_from_node = allow_from_node or (nv.ip is not None and nv.ip in cidr)
        if allow_from_node:
            rules.extend(f"{head} -s {ip} -j {ext_chain}" for ip in p.lb_vips)
        comment = kc.quoted(f"other traffic to {name} will be dropped by {kc.KUBE_PROXY_FIREWALL}")
        rules.append(f"-A {fw_chain} -m comment --comment {comment}")

    if cluster_eps and p.uses_cluster:
        chains.append(f":{svc_chain} - [0:0]")
        _dispatch(rules, p, svc_chain, cluster_eps, prep.large_cluster)
    if local_eps and p.uses_local:
        chains.append(f":{svl_chain} - [0:0]")
        _dispatch(rules, p, svl_chain, local_eps, prep.large_cluster)

    for ep in reachable:
        chains.append(f":{ep.chain} - [0:0]")
        head = f"-A {ep.chain}" if prep.large_cluster else f"-A {ep.chain} -m comment --comment {name}"
        rules.append(f"{head} -s {ep.ip} -j {kc.KUBE_MARK_MASQ}")
        recent = f" -m recent --name {ep.chain} --set" if p.affinity_seconds else ""
        rules.append(f"{head}{recent} {match} -j DNAT --to-destination {ep.addr}")

    return _Chunk(_lines(filt), _lines(chains), _lines(rules))


def _dispatch(rules: list[str], p: PortPlan, chain: str, eps: list[Endpoint], large: bool) -> None:
    """writeServiceToEndpointRules: affinity checks, then the random split."""

    def head(ep: Endpoint) -> str:
        return f"-A {chain}" if large else f"-A {chain} -m comment --comment {kc.quoted(f'{p.name} -> {ep.addr}')}"

    if p.affinity_seconds:
        for ep in eps:
            rules.append(
                f"{head(ep)} -m recent --name {ep.chain} --rcheck --seconds {p.affinity_seconds} --reap -j {ep.chain}"
            )
    last = len(eps) - 1
    for i, ep in enumerate(eps):
        if i < last:
            odds = kc.probability(last + 1 - i)
            rules.append(f"{head(ep)} -m statistic --mode random --probability {odds} -j {ep.chain}")
        else:
            rules.append(f"{head(ep)} -j {ep.chain}")


def _lines(lines: list[str]) -> str:
    return "\n".join(lines) + "\n" if lines else ""


# --- the node-wide rules around the services -------------------------------------


def _jump_rules(table: str, kubelet: bool) -> list[str]:
    """What kube-proxy's EnsureRule(Prepend, ...) leaves in the built-in chains, in their order."""
    jumps = _JUMPS + (_KUBELET_JUMPS if kubelet else ())
    out = []
    for builtin in BUILTIN_CHAINS[table]:
        for tbl, chain, target, comment, match in reversed(jumps):  # each prepend lands first
            if tbl == table and chain == builtin:
                note = f"-m comment --comment {kc.quoted(comment)}" if comment else ""
                out.append(" ".join(p for p in ("-A", chain, match, note, "-j", target) if p) + "\n")
    return out


def _masquerade_rules(prep: Prepared) -> list[str]:
    mark = prep.mark
    snat = kc.quoted("kubernetes service traffic requiring SNAT")
    masq = f"-A {kc.KUBE_POSTROUTING} -m comment --comment {snat} -j MASQUERADE"
    return [
        f"-A {kc.KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN\n",
        f"-A {kc.KUBE_POSTROUTING} -j MARK --xor-mark {mark}\n",
        masq + (" --random-fully\n" if prep.proxy.random_fully else "\n"),
        f"-A {kc.KUBE_MARK_MASQ} -j MARK --or-mark {mark}\n",
    ]


def _forward_rules(prep: Prepared) -> list[str]:
    out = []
    if not prep.proxy.conntrack_tcp_be_liberal:
        nfacct = f" -m nfacct --nfacct-name {kc.NFACCT_INVALID_DROPPED}" if prep.proxy.nfacct else ""
        out.append(f"-A {kc.KUBE_FORWARD} -m conntrack --ctstate INVALID{nfacct} -j DROP\n")
    mark = f"{prep.mark}/{prep.mark}"
    comment = kc.quoted("kubernetes forwarding rules")
    out.append(f"-A {kc.KUBE_FORWARD} -m comment --comment {comment} -m mark --mark {mark} -j ACCEPT\n")
    out.append(
        f"-A {kc.KUBE_FORWARD} -m comment --comment {kc.quoted('kubernetes forwarding conntrack rule')} "
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
    )
    return out


def _nodeport_jumps(prep: Prepared, node: Node) -> list[str]:
    """The last KUBE-SERVICES rule(s): which destinations are node ports."""
    head = f"-A {kc.KUBE_SERVICES} -m comment --comment {_NODEPORTS_COMMENT}"
    if prep.nodeport_cidrs is None:
        dest = "-m addrtype --dst-type LOCAL"
        if prep.family == 6:
            dest += " ! -d ::1/128"
        elif not prep.localhost_nodeports:
            dest += " ! -d 127.0.0.0/8"
        return [f"{head} {dest} -j {kc.KUBE_NODEPORTS}\n"]
    loopback = ipaddress.ip_address("127.0.0.1" if prep.family == 4 else "::1")
    addresses = {a for a in (*node.ips, loopback) if a.version == prep.family}
    out = []
    for ip in sorted(a for a in addresses if any(a in c for c in prep.nodeport_cidrs)):
        if ip.is_loopback and (prep.family == 6 or not prep.localhost_nodeports):
            continue
        out.append(f"{head} -d {ip} -j {kc.KUBE_NODEPORTS}\n")
    return out
