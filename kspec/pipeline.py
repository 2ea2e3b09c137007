"""Inputs -> ResolvedCluster: the stages every command shares.

read -> frontends -> assemble -> placement -> IPAM -> endpoints.  A stage
that finds input errors stops the pipeline after collecting all of its
errors (not only the first); warnings travel along to the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Sequence

from kspec.gcpause import paused_gc
from kspec.diagnostics import Diagnostic, DiagnosticSink, InputError, Span
from kspec.frontend.assemble import Flags, assemble
from kspec.frontend.inputs import read_inputs
from kspec.frontend.kspec_model import read_kspec
from kspec.frontend.manifests import read_manifest
from kspec.frontend.parts import Parts
from kspec.model import Allocation, Cluster, ResolvedCluster
from kspec.passes.endpoints import compute_endpoints
from kspec.passes.ipam import Ipam
from kspec.passes.lock import Lock, parse_lock
from kspec.passes.placement import place
from kspec.progress import QUIET, Progress


@dataclass
class LoadResult:
    cluster: ResolvedCluster | None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    documents: int = 0

    @property
    def ok(self) -> bool:
        return self.cluster is not None and not any(d.is_error for d in self.diagnostics)


def collect(paths: Sequence[str], stdin: IO | None, flags: Flags, sink: DiagnosticSink) -> tuple[Parts, int]:
    """Read every input and run the frontends over its documents."""
    documents, problems = read_inputs(paths, stdin)
    sink.extend(problems)
    parts = Parts()
    for doc in documents:
        try:
            if doc.kind == "kspec":
                read_kspec(doc, parts, sink, flags.namespace)
            else:
                read_manifest(doc, parts, sink, flags.namespace)
        except InputError as exc:
            sink.extend(exc.diagnostics)
    return parts, len(documents)


def resolve(cluster: Cluster, lock: Lock, sink: DiagnosticSink) -> ResolvedCluster:
    """Placement, IPAM and endpoints over an assembled cluster."""
    ipam = Ipam(cluster.settings, lock, sink)
    nodes = ipam.node_cidrs(cluster.nodes)
    locked_nodes = {k: str(v) for k, v in lock.entries.get("node", {}).items()}
    pods, placements = place(Cluster(**{**_fields(cluster), "nodes": nodes}), locked_nodes, sink)
    pods = ipam.pod_ips(pods, nodes)
    services = ipam.cluster_ips(cluster.services)
    services = ipam.node_ports(services)
    pods_sorted = tuple(sorted(pods, key=lambda p: p.key))
    services_sorted = tuple(sorted(services, key=lambda s: s.key))
    default_family = cluster.settings.service_cidrs[0].version
    endpoints = compute_endpoints(services_sorted, pods_sorted, cluster.manual_endpoints, default_family)
    allocations = [Allocation("node", key, node, reused) for key, node, reused in placements] + ipam.made
    return ResolvedCluster(settings=cluster.settings, nodes=nodes, pods=pods_sorted, services=services_sorted,
                           endpoints=endpoints, allocations=tuple(sorted(allocations, key=lambda a: (a.kind, a.owner))),
                           default_nodes=cluster.default_nodes, skipped_kinds=cluster.skipped_kinds)


def _fields(cluster: Cluster) -> dict:
    return {name: getattr(cluster, name) for name in cluster.__dataclass_fields__}


def read_lock_file(path: Path | None, sink: DiagnosticSink) -> Lock:
    if path is None or not path.exists():
        return Lock()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        sink.error(f"cannot read the lock file: {exc}", Span(str(path), 1, 1, 1, 1), "fix its permissions or delete it")
        return Lock()
    return parse_lock(text, str(path), sink)


def load(paths: Sequence[str], stdin: IO | None, flags: Flags, lock_path: Path | None = None,
         progress: Progress = QUIET) -> LoadResult:
    """Everything up to the resolved cluster; errors collected, never raised.

    The cyclic garbage collector is paused meanwhile and the result frozen
    out of its reach: loading allocates millions of small acyclic objects,
    and generation scans over a gigabyte heap cost a third of the run at
    150,000 pods.
    """
    try:
        with paused_gc(freeze=True):  # the loaded cluster lives until exit: later collections skip it
            return _load(paths, stdin, flags, lock_path, progress)
    finally:
        progress.done()


def _load(paths: Sequence[str], stdin: IO | None, flags: Flags, lock_path: Path | None,
          progress: Progress) -> LoadResult:
    sink = DiagnosticSink()
    progress.step("reading inputs")
    parts, count = collect(paths, stdin, flags, sink)
    lock = read_lock_file(lock_path, sink)
    if sink.has_errors:
        return LoadResult(None, sink.sorted(), count)
    progress.step(f"assembling {len(parts.pods)} pods, {len(parts.workloads)} workloads, {len(parts.services)} services")
    cluster = assemble(parts, flags, sink)
    if sink.has_errors:
        return LoadResult(None, sink.sorted(), count)
    progress.step("placing pods, allocating addresses, computing endpoints")
    resolved = resolve(cluster, lock, sink)
    if sink.has_errors:
        return LoadResult(None, sink.sorted(), count)
    return LoadResult(resolved, sink.sorted(), count)
