"""kube-proxy IPVS mode: its iptables rules, as ``iptables-restore`` input.

In IPVS mode iptables only marks for masquerade, filters and accepts; every
rule matches one of the ipsets (``-m set --match-set``), so this text loads
only where :mod:`kspec.backends.ipset`'s sets exist. The rules and their order
are those of writeIptablesRules in pkg/proxy/ipvs/proxier.go; a rule on a set
kube-proxy finds empty is left out, as kube-proxy leaves it out.

The file also carries what kube-proxy installs around its restore input
(createAndLinkKubeChain): the jumps from the built-in chains into its chains,
in the order its repeated ``-I`` (prepend) leaves them, appended here to the
built-in chains of a freshly restored table.
"""

from __future__ import annotations

from kspec.backends import ipvs
from kspec.model import Node, ResolvedCluster

_NAT_CHAINS = ("KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-NODE-PORT", "KUBE-LOAD-BALANCER", "KUBE-MARK-MASQ")
_FILTER_CHAINS = ("KUBE-FORWARD", "KUBE-NODE-PORT", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL",
                  "KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER")
_NAT_JUMPS = (  # (built-in chain, kube chain, comment), final order in each built-in chain
    ("OUTPUT", "KUBE-SERVICES", "kubernetes service portals"),
    ("PREROUTING", "KUBE-SERVICES", "kubernetes service portals"),
    ("POSTROUTING", "KUBE-POSTROUTING", "kubernetes postrouting rules"),
)
_FILTER_JUMPS = (
    ("FORWARD", "KUBE-PROXY-FIREWALL", "kube-proxy firewall rules"),
    ("FORWARD", "KUBE-FORWARD", "kubernetes forwarding rules"),
    ("INPUT", "KUBE-IPVS-FILTER", "kubernetes ipvs access filter"),
    ("INPUT", "KUBE-PROXY-FIREWALL", "kube-proxy firewall rules"),
    ("INPUT", "KUBE-NODE-PORT", "kubernetes health check rules"),
    ("OUTPUT", "KUBE-IPVS-OUT-FILTER", "kubernetes ipvs access filter"),
)
# ipsetWithIptablesChain: (set, table, from chain, to, match type, protocol).
# The Local node-port sets come before the plain ones so that Local ports RETURN first.
_SET_JUMPS = (
    (ipvs.LOOP_BACK, "nat", "KUBE-POSTROUTING", "MASQUERADE", "dst,dst,src", ""),
    (ipvs.LOAD_BALANCER, "nat", "KUBE-SERVICES", "KUBE-LOAD-BALANCER", "dst,dst", ""),
    (ipvs.LOAD_BALANCER_LOCAL, "nat", "KUBE-LOAD-BALANCER", "RETURN", "dst,dst", ""),
    (ipvs.NODE_PORT_LOCAL_TCP, "nat", "KUBE-NODE-PORT", "RETURN", "dst", "tcp"),
    (ipvs.NODE_PORT_TCP, "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst", "tcp"),
    (ipvs.NODE_PORT_LOCAL_UDP, "nat", "KUBE-NODE-PORT", "RETURN", "dst", "udp"),
    (ipvs.NODE_PORT_UDP, "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst", "udp"),
    (ipvs.NODE_PORT_LOCAL_SCTP, "nat", "KUBE-NODE-PORT", "RETURN", "dst,dst", "sctp"),
    (ipvs.NODE_PORT_SCTP, "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst,dst", "sctp"),
    (ipvs.LOAD_BALANCER_FW, "filter", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL", "dst,dst", ""),
    (ipvs.LOAD_BALANCER_SOURCE_CIDR, "filter", "KUBE-SOURCE-RANGES-FIREWALL", "RETURN", "dst,dst,src", ""),
    (ipvs.LOAD_BALANCER_SOURCE_IP, "filter", "KUBE-SOURCE-RANGES-FIREWALL", "RETURN", "dst,dst,src", ""),
)


def generate(cluster: ResolvedCluster, node: Node, family: int = 4) -> str:
    """``iptables-restore`` (``ip6tables-restore`` for family 6) input: ``*nat`` then ``*filter``.

    >>> generate(cluster, node).splitlines()[:2]   # doctest: +SKIP
    ['*nat', ':KUBE-SERVICES - [0:0]']
    """
    ipvs_plan = ipvs.plan(cluster, node, family)
    proxy = cluster.settings.proxy
    rules = _Rules(ipvs_plan)
    mark = f"{1 << proxy.masquerade_bit:#08x}"
    not_local = _not_local_match(cluster, node, family)

    nat, filt = rules.nat, rules.filter
    nat.append(f"-A KUBE-SERVICES -s {'::1/128' if family == 6 else '127.0.0.0/8'} -j RETURN")
    for ip_set, table, chain, target, match, proto in _SET_JUMPS:
        if rules.has(ip_set):
            protocol = f"-p {proto} " if proto else ""
            (nat if table == "nat" else filt).append(
                f"-A {chain} {protocol}{rules.comment(ip_set)} {rules.match(ip_set, match)} -j {target}")

    if rules.has(ipvs.CLUSTER_IP):
        head = f"-A KUBE-SERVICES {rules.comment(ipvs.CLUSTER_IP)}"
        if proxy.masquerade_all:
            nat.append(f"{head} {rules.match(ipvs.CLUSTER_IP, 'dst,dst')} -j KUBE-MARK-MASQ")
        elif not_local:  # off-cluster traffic to a service IP is masqueraded
            nat.append(f"{head} {rules.match(ipvs.CLUSTER_IP, 'dst,dst')} {not_local} -j KUBE-MARK-MASQ")
        else:  # no way to tell local traffic: masquerade node traffic sourced from a VIP
            nat.append(f"{head} {rules.match(ipvs.CLUSTER_IP, 'src,dst')} -j KUBE-MARK-MASQ")
    for ip_set in (ipvs.EXTERNAL_IP, ipvs.EXTERNAL_IP_LOCAL):
        if rules.has(ip_set):
            head = f"-A KUBE-SERVICES {rules.comment(ip_set)} {rules.match(ip_set, 'dst,dst')}"
            if ip_set == ipvs.EXTERNAL_IP:
                nat.append(f"{head} -j KUBE-MARK-MASQ")
            nat.append(f"{head} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT")
            nat.append(f"{head} -m addrtype --dst-type LOCAL -j ACCEPT")
    nat.append("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT")
    nat.append("-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ")
    filt.append("-A KUBE-SOURCE-RANGES-FIREWALL -j DROP")
    for blocked in ipvs_plan.blocked_from_node:
        filt.append(f"-A KUBE-IPVS-OUT-FILTER -s {blocked.ip} -m ipvs --vaddr {blocked.ip} "
                    f"--vproto {blocked.protocol} --vport {blocked.port} -j DROP")
    for ip_set in (ipvs.CLUSTER_IP, ipvs.LOAD_BALANCER):  # acceptIPVSTraffic, last in KUBE-SERVICES
        if rules.has(ip_set):
            nat.append(f"-A KUBE-SERVICES {rules.match(ip_set, 'dst,dst')} -j ACCEPT")
    filt.append(f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" '
                f"-m mark --mark {mark}/{mark} -j ACCEPT")
    filt.append('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
                "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    filt.append(f"-A KUBE-NODE-PORT {rules.comment(ipvs.HEALTH_CHECK_NODE_PORT)} "
                f"{rules.match(ipvs.HEALTH_CHECK_NODE_PORT, 'dst')} -j ACCEPT")
    for ip_set, match in ((ipvs.LOAD_BALANCER, "dst,dst"), (ipvs.CLUSTER_IP, "dst,dst"),
                          (ipvs.EXTERNAL_IP, "dst,dst"), (ipvs.EXTERNAL_IP_LOCAL, "dst,dst"),
                          (ipvs.HEALTH_CHECK_NODE_PORT, "dst")):
        filt.append(f"-A KUBE-IPVS-FILTER {rules.match(ip_set, match)} -j RETURN")
    filt.append(f"-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW {rules.match(ipvs.IPVS_IPS, 'dst')} -j REJECT")
    nat.append(f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN")
    nat.append(f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}")
    nat.append('-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
               f"-j MASQUERADE{' --random-fully' if proxy.random_fully else ''}")
    nat.append(f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}")
    return rules.text()


class _Rules:
    """Two line buffers, *nat and *filter, and the set names of one family."""

    def __init__(self, ipvs_plan: ipvs.IpvsPlan) -> None:
        self.plan = ipvs_plan
        self.nat: list[str] = []
        self.filter: list[str] = []

    def has(self, ip_set: str) -> bool:
        return bool(self.plan.sets[ip_set])

    def comment(self, ip_set: str) -> str:
        return f'-m comment --comment "{ipvs.IPSETS_BY_NAME[ip_set].comment}"'

    def match(self, ip_set: str, match_type: str) -> str:
        name = ipvs.set_name(ip_set, self.plan.family)
        return f"-m set --match-set {name} {match_type}"

    def text(self) -> str:
        out = ["*nat"]
        out.extend(f":{chain} - [0:0]" for chain in _NAT_CHAINS)
        out.extend(f'-A {src} -m comment --comment "{c}" -j {dst}' for src, dst, c in _NAT_JUMPS)
        out.extend(self.nat)
        out.append("COMMIT")
        out.append("*filter")
        out.extend(f":{chain} - [0:0]" for chain in _FILTER_CHAINS)
        out.extend(f'-A {src} -m comment --comment "{c}" -j {dst}' for src, dst, c in _FILTER_JUMPS)
        out.extend(self.filter)
        out.append("COMMIT")
        return "".join(line + "\n" for line in out)


def _not_local_match(cluster: ResolvedCluster, node: Node, family: int) -> str:
    """The local-traffic detector's "not local" match, or "" when it cannot tell.

    ClusterCIDR: traffic not from the cluster's pod CIDR; NodeCIDR: not from
    this node's podCIDR. With no CIDR of the family kube-proxy falls back to
    a no-op detector.
    """
    mode = cluster.settings.proxy.detect_local_mode
    if mode == "ClusterCIDR":
        cidrs = cluster.settings.pod_cidrs
    elif mode == "NodeCIDR":
        cidrs = node.pod_cidrs
    else:
        raise ValueError(f"unsupported detect-local-mode {mode!r}; expected ClusterCIDR or NodeCIDR")
    cidr = next((c for c in cidrs if c.version == family), None)
    return f"! -s {cidr}" if cidr is not None else ""
