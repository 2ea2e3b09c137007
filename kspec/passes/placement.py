"""Workloads -> pods on nodes, the way the controllers name and label them.

Deterministic: pod names, labels and node choice are functions of the
objects' names and templates, never of iteration order or randomness.
Replicas of one workload are spread round-robin from a per-workload offset
(as the scheduler's spreading would), DaemonSets get one pod per eligible
node, and a placement recorded in the lock file is kept.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Mapping

from kspec.diagnostics import DiagnosticSink
from kspec.model import Cluster, Node, Pod, Workload

# k8s.io/apimachinery/pkg/util/rand: the alphabet of generated name suffixes
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def fnv32a(data: bytes) -> int:
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def safe_encode(text: str) -> str:
    """Like rand.SafeEncodeString: map each character into the safe alphabet."""
    return "".join(SAFE_ALPHABET[ord(c) % len(SAFE_ALPHABET)] for c in text)


def template_hash(workload: Workload) -> str:
    """A pod-template-hash in the controller's format (fnv32a of the template, safe-encoded).

    The controller hashes its own in-memory printing of the whole template,
    which kspec cannot reproduce byte for byte: the value has the real shape
    and is stable, but is not the one a cluster would show.  It hashes what
    the model keeps of the template (labels, ports, placement), so the kspec
    form and the manifest form of one workload name their pods alike.
    """
    canonical = json.dumps({
        "labels": sorted(workload.labels.items()),
        "ports": [(p.name, p.port, p.protocol) for p in workload.ports],
        "hostNetwork": workload.host_network,
        "node": workload.node,
        "nodeSelector": sorted(workload.node_selector.items()),
    }, separators=(",", ":"))
    return safe_encode(str(fnv32a(canonical.encode())))


def name_suffix(*parts: str, length: int = 5) -> str:
    """A deterministic stand-in for generateName's random 5-character suffix."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return "".join(SAFE_ALPHABET[b % len(SAFE_ALPHABET)] for b in digest[:length])


def _generated_names(base: str, namespace: str, seeds: list[str]) -> list[str]:
    """``base-xxxxx`` names, unique within the workload: on a clash the suffix is drawn
    again, as the API server's generateName makes the controller retry."""
    used: set[str] = set()
    result = []
    for seed in seeds:
        attempt = 0
        name = f"{base}-{name_suffix(namespace, base, seed)}"
        while name in used:
            attempt += 1
            name = f"{base}-{name_suffix(namespace, base, seed, str(attempt))}"
        used.add(name)
        result.append(name)
    return result


def _stable_offset(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:8], "big")


def _eligible(workload: Workload, nodes: tuple[Node, ...]) -> list[Node]:
    if workload.node:
        return [n for n in nodes if n.name == workload.node]
    if workload.node_selector:
        return [n for n in nodes if all(n.labels.get(k) == v for k, v in workload.node_selector.items())]
    return list(nodes)


def expand(workload: Workload, nodes: tuple[Node, ...], sink: DiagnosticSink) -> list[Pod]:
    """The pods a workload's controller would create, each on a node."""
    eligible = _eligible(workload, nodes)
    if not eligible:
        if workload.replicas != 0:
            sink.warning(f"{workload.kind} {workload.namespace}/{workload.name} fits on no node: it has no pods",
                         workload.origin.span, "check its node / nodeSelector against the nodes' names and labels")
        return []
    kind, ns, name = workload.kind, workload.namespace, workload.name
    labels = dict(workload.labels)
    digest = template_hash(workload)
    revision = f"{name}-{digest}"
    pod_names: list[str]
    extra: list[dict[str, str]]
    if kind == "Deployment":
        rs = f"{name}-{digest}"
        labels["pod-template-hash"] = digest
        pod_names = _generated_names(rs, ns, [str(i) for i in range(workload.replicas or 0)])
        extra = [{} for _ in pod_names]
        owner = f"ReplicaSet/{rs}"
    elif kind == "StatefulSet":
        pod_names = [f"{name}-{i}" for i in range(workload.replicas or 0)]
        extra = [{"statefulset.kubernetes.io/pod-name": n, "apps.kubernetes.io/pod-index": str(i),
                  "controller-revision-hash": revision} for i, n in enumerate(pod_names)]
        owner = f"StatefulSet/{name}"
    elif kind == "DaemonSet":
        labels.update({"controller-revision-hash": digest, "pod-template-generation": "1"})
        pod_names = _generated_names(name, ns, [node.name for node in eligible])
        extra = [{} for _ in pod_names]
        owner = f"DaemonSet/{name}"
    else:
        pod_names = _generated_names(name, ns, [str(i) for i in range(workload.replicas or 0)])
        extra = [{} for _ in pod_names]
        owner = f"{kind}/{name}"
    start = _stable_offset(ns, kind, name) % len(eligible)
    pods = []
    for index, (pod_name, more) in enumerate(zip(pod_names, extra)):
        node = eligible[index] if kind == "DaemonSet" else eligible[(start + index) % len(eligible)]
        pods.append(Pod(namespace=ns, name=pod_name, node=node.name, labels={**labels, **more},
                        ports=workload.ports, ready=workload.ready, host_network=workload.host_network,
                        owner=owner, annotations=workload.annotations, origin=workload.origin))
    return pods


def place(cluster: Cluster, locked_nodes: Mapping[str, str], sink: DiagnosticSink) -> tuple[list[Pod], list[tuple[str, str, bool]]]:
    """Every pod of the cluster on a node: (pods, placements made as (pod key, node, from_lock))."""
    nodes = cluster.nodes
    known = {n.name for n in nodes}
    pods: list[Pod] = list(cluster.pods)
    taken = {p.key for p in pods}
    for workload in sorted(cluster.workloads, key=lambda w: (w.namespace, w.kind, w.name)):
        for pod in expand(workload, nodes, sink):
            if pod.key in taken:
                sink.error(f"pod {pod.namespace}/{pod.name} made by {workload.kind} {workload.name} clashes with a pod "
                           "of the same name", workload.origin.span, "rename the workload or the pod")
                continue
            taken.add(pod.key)
            pods.append(pod)
    placed: list[Pod] = []
    made: list[tuple[str, str, bool]] = []
    names = [n.name for n in nodes]
    for pod in pods:
        key = f"pod/{pod.namespace}/{pod.name}"
        locked = locked_nodes.get(key)
        if pod.owner is not None and locked in known and not pod.owner.startswith("DaemonSet/"):
            if locked != pod.node:
                pod = replace(pod, node=locked)
            made.append((key, locked, True))
        elif pod.node is None and names:
            if locked in known:
                node, from_lock = locked, True
            else:
                node, from_lock = names[_stable_offset(pod.namespace, pod.name) % len(names)], False
            pod = replace(pod, node=node)
            made.append((key, node, from_lock))
        elif pod.owner is not None:
            made.append((key, pod.node, False))
        placed.append(pod)
    return placed, made
