"""kube-proxy IPVS mode: the dummy interface kube-ipvs0, as ``ip -batch`` input.

IPVS only answers for addresses the node owns, so kube-proxy creates the
dummy device kube-ipvs0 (left down, as kube-proxy leaves it) and binds every
cluster IP to it, plus every external IP and load-balancer IP that is not
already an address of the node, each as a host route (/32, /128).
"""

from __future__ import annotations

from kspec.backends import ipvs
from kspec.model import Node, ResolvedCluster


def generate(cluster: ResolvedCluster, node: Node, family: int | None = None) -> str:
    """``ip -batch`` lines: ``link add kube-ipvs0 type dummy``, then one ``address add`` per address.

    Without ``family``, the addresses of every family of the cluster, IPv4 first.

    >>> generate(cluster, node)   # doctest: +SKIP
    'link add kube-ipvs0 type dummy\\naddress add 10.96.0.1/32 dev kube-ipvs0\\n'
    """
    plans = [ipvs.plan(cluster, node, f) for f in ipvs.families(cluster, family)]
    return render(plans)


def render(plans: list[ipvs.IpvsPlan]) -> str:
    lines = [f"link add {ipvs.DUMMY_DEVICE} type dummy\n"]
    for p in plans:
        prefix = 128 if p.family == 6 else 32
        lines.extend(f"address add {ip}/{prefix} dev {ipvs.DUMMY_DEVICE}\n" for ip in p.bound_addresses)
    return "".join(lines)
