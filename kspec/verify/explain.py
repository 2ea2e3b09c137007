"""Explain why a Service selects nothing ready: requirement by requirement.

The nearest pods are the ones one step away from being endpoints: they fail
exactly one requirement of the selector (and a close label value is named),
or match but sit in another namespace, or match but are not ready, or match
but lack the named port.  The work is bounded by the label index: only pods
that share at least one selector key are looked at.
"""

from __future__ import annotations

import difflib

from kspec.model import Pod, ResolvedCluster, Service, ServiceEndpoints
from kspec.passes.endpoints import LabelIndex, resolve_target
from kspec.selector import Requirement

MAX_SCAN = 20000
MAX_SHOWN = 3


class ExplainContext:
    """Indexes shared by every explanation of one verify run (built once, lazily)."""

    def __init__(self, cluster: ResolvedCluster) -> None:
        self.index = LabelIndex(cluster.pods)
        self.values: dict[tuple[str, str], set[str]] = {}
        for (ns, key, value) in self.index.by_label:
            self.values.setdefault((ns, key), set()).add(value)


def _describe(requirement: Requirement) -> str:
    return str(requirement)


def _close_value(ctx: ExplainContext, namespace: str, requirement: Requirement) -> str | None:
    if requirement.op not in ("=", "in"):
        return None
    existing = sorted(ctx.values.get((namespace, requirement.key), ()))
    for wanted in requirement.values:
        close = difflib.get_close_matches(wanted, existing, n=1, cutoff=0.6)
        if close:
            return close[0]
    return None


def explain_empty_service(cluster: ResolvedCluster, svc: Service, entry: ServiceEndpoints,
                          ctx: ExplainContext | None = None) -> list[str]:
    """Lines that say why the service has no ready endpoint; the first is the best fix."""
    if svc.selector is None:
        return []
    ctx = ctx or ExplainContext(cluster)
    lines: list[str] = []
    selected = [cluster.pods_by_key[k] for k in entry.selected]
    if selected:
        not_ready = [p for p in selected if not p.ready or p.terminating]
        if not_ready and len(not_ready) == len(selected):
            lines.append(f"the selector matches {len(selected)} pod(s), but none is ready: "
                         + ", ".join(f"{p.namespace}/{p.name}" for p in not_ready[:MAX_SHOWN]))
        for pe in entry.ports:
            if pe.ready:
                continue
            lacking = [p for p in selected if resolve_target(p, pe.port) is None]
            if lacking:
                lines.append(f"port {pe.port.name or pe.port.port}: targetPort {pe.port.effective_target!r} is not a "
                             f"{pe.port.protocol} port of " + ", ".join(f"{p.namespace}/{p.name}" for p in lacking[:MAX_SHOWN]))
        return lines
    requirements = svc.selector.requirements
    # 1. a close label value, the classic typo
    for requirement in requirements:
        close = _close_value(ctx, svc.namespace, requirement)
        if close is not None:
            lines.append(f"no pod in namespace {svc.namespace} has {requirement.key}={requirement.values[0]}; "
                         f"did you mean {requirement.key}={close}?")
            break
    # 2. pods that fail exactly one requirement
    candidates: dict[tuple[str, str], Pod] = {}
    for requirement in requirements:
        for pod in ctx.index.by_key.get((svc.namespace, requirement.key), [])[:MAX_SCAN]:
            candidates[pod.key] = pod
    near: dict[str, list[Pod]] = {}
    for pod in list(candidates.values())[:MAX_SCAN]:
        failed = [r for r in requirements if not r.matches(pod.labels)]
        if len(failed) == 1:
            near.setdefault(_describe(failed[0]), []).append(pod)
    for requirement_text, pods in sorted(near.items(), key=lambda kv: -len(kv[1]))[:MAX_SHOWN]:
        pods = sorted(pods, key=lambda p: -_closeness(p, requirement_text))
        shown = ", ".join(f"{p.name} ({_label_text(p, requirement_text)})" for p in pods[:MAX_SHOWN])
        more = f" and {len(pods) - MAX_SHOWN} more" if len(pods) > MAX_SHOWN else ""
        lines.append(f"{len(pods)} pod(s) fail only '{requirement_text}': {shown}{more}")
    # 3. matching pods in other namespaces
    elsewhere = []
    for namespace in sorted(ctx.index.by_ns):
        if namespace != svc.namespace:
            found = ctx.index.select(namespace, svc.selector)
            if found:
                elsewhere.append((namespace, len(found)))
    if elsewhere:
        lines.append("matching pods exist in other namespaces: "
                     + ", ".join(f"{ns} ({n})" for ns, n in elsewhere[:MAX_SHOWN])
                     + f"; a service selects only in its own namespace ({svc.namespace})")
    if not lines:
        lines.append(f"no pod in namespace {svc.namespace} has any of the labels "
                     + ", ".join(sorted({r.key for r in requirements})) + " the selector asks for")
    return lines


def _closeness(pod: Pod, requirement_text: str) -> float:
    """How close a pod's label is to what the requirement wants (closest pods are shown first)."""
    key, _, wanted = requirement_text.partition("=")
    value = pod.labels.get(key.rstrip("!"))
    return difflib.SequenceMatcher(None, value or "", wanted).ratio() if wanted else 0.0


def _label_text(pod: Pod, requirement_text: str) -> str:
    key = requirement_text.lstrip("!").split("=")[0].split("!")[0].split(" ")[0]
    value = pod.labels.get(key)
    return f"{key}={value}" if value is not None else f"no {key} label"
