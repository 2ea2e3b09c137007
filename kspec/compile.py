"""ResolvedCluster -> the files of `kspec compile` (pure: paths and texts).

Layout (PRODUCT.md): nodes/<node>/{iptables.rules, ip6tables.rules (IPv6),
ipvs.rules, ipset.rules, kube-ipvs0.batch, routes.batch},
endpointslices.yaml, dns/*.zone, kspec.lock.json.  The node-independent part
of the iptables rules is prepared once and reused for every node.
"""

from __future__ import annotations

from typing import Iterator, Sequence

from kspec.backends import dns, endpointslices, iptables, node_outputs
from kspec.model import Node, ResolvedCluster
from kspec.passes.lock import render_lock


def families(cluster: ResolvedCluster) -> tuple[int, ...]:
    """IP families the cluster's services live in (one rule file per family)."""
    found = sorted({c.version for c in cluster.settings.service_cidrs})
    return tuple(found) or (4,)


def node_files(cluster: ResolvedCluster, nodes: Sequence[Node]) -> Iterator[tuple[str, str]]:
    mode = cluster.settings.proxy.mode
    outputs = node_outputs(mode)
    prepared = {}
    if mode == "iptables":
        prepared = {family: iptables.prepare(cluster, family) for family in families(cluster)}
    for node in nodes:
        for output in outputs:
            module = output.load()
            if output.per_family:
                for family in families(cluster):
                    name = output.filename.format(ip="ip" if family == 4 else "ip6")
                    if module is iptables:
                        text = iptables.render(prepared[family], node)
                    else:
                        text = module.generate(cluster, node, family)
                    yield f"nodes/{node.name}/{name}", text
            else:
                yield f"nodes/{node.name}/{output.filename}", module.generate(cluster, node)


def cluster_files(cluster: ResolvedCluster) -> Iterator[tuple[str, str]]:
    yield "endpointslices.yaml", endpointslices.generate(cluster)
    for name, text in sorted(dns.generate_zones(cluster).items()):
        yield f"dns/{name}", text
    yield "kspec.lock.json", render_lock(cluster.allocations)


def compile_cluster(cluster: ResolvedCluster, node_names: Sequence[str] = ()) -> Iterator[tuple[str, str]]:
    """Every output file as (relative path, text), in a fixed order."""
    wanted = set(node_names)
    nodes = [n for n in cluster.nodes if not wanted or n.name in wanted]
    yield from node_files(cluster, nodes)
    yield from cluster_files(cluster)
