"""kube-proxy IPVS mode: the ipsets of one node, as ``ipset restore`` input.

The text has the shape ``ipset save`` prints: each set's ``create`` line
followed by its ``add`` lines. kube-proxy creates every set of its catalogue
on every node (pkg/proxy/ipvs/ipset.go, ipsetInfo), empty ones included,
because its iptables rules name them; hash sets with ``family inet|inet6
hashsize 1024 maxelem 65536``, bitmap:port sets with ``range 0-65535``, and no
ipset comments (the comments only label the iptables rules).
"""

from __future__ import annotations

from kspec.backends import ipvs
from kspec.model import Node, ResolvedCluster

_HASH_SIZE = 1024
_MAX_ELEM = 65536
_PORT_RANGE = "0-65535"


def generate(cluster: ResolvedCluster, node: Node, family: int | None = None) -> str:
    """``ipset restore`` input creating and filling kube-proxy's sets on ``node``.

    Without ``family``, the sets of every family of the cluster (``KUBE-6-*``
    after the IPv4 ones).

    >>> generate(cluster, node).splitlines()[0]   # doctest: +SKIP
    'create KUBE-LOOP-BACK hash:ip,port,ip family inet hashsize 1024 maxelem 65536'
    """
    return "".join(render(ipvs.plan(cluster, node, f)) for f in ipvs.families(cluster, family))


def render(ipvs_plan: ipvs.IpvsPlan) -> str:
    out: list[str] = []
    for info in ipvs.IPSETS:
        name = ipvs.set_name(info.name, ipvs_plan.family)
        out.append(f"create {name} {info.type} {_create_options(info.type, ipvs_plan.family)}\n")
        out.extend(f"add {name} {entry}\n" for entry in ipvs_plan.sets[info.name])
    return "".join(out)


def _create_options(set_type: str, family: int) -> str:
    if set_type == "bitmap:port":
        return f"range {_PORT_RANGE}"
    inet = "inet6" if family == 6 else "inet"
    return f"family {inet} hashsize {_HASH_SIZE} maxelem {_MAX_ELEM}"
