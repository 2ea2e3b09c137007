"""Where a model object's field is in its source, whichever form it came from.

kspec files and manifests spell fields differently (``ip`` vs
``status.podIP``); findings ask for a field by meaning and get the span of
the right node, or the object's own span when the field is absent (an
allocated value) or the object was made from a workload.
"""

from __future__ import annotations

from kspec.diagnostics import Span
from kspec.frontend.document import Origin
from kspec.verify.result import Location

IGNORE_ANNOTATION = "kspec.dev/ignore"
IGNORE_REASON_ANNOTATION = "kspec.dev/ignore-reason"

_PATHS: dict[str, tuple[tuple, tuple]] = {
    # meaning: (kspec path, manifest path)
    "node.ip": (("ip",), ("status", "addresses")),
    "node.podCIDR": (("podCIDR",), ("spec", "podCIDR")),
    "pod.ip": (("ip",), ("status", "podIP")),
    "pod.node": (("node",), ("spec", "nodeName")),
    "service.clusterIP": (("clusterIP",), ("spec", "clusterIP")),
    "service.selector": (("selector",), ("spec", "selector")),
    "service.ports": (("ports",), ("spec", "ports")),
    "service.namespace": (("namespace",), ("metadata", "namespace")),
}


def field_span(origin: Origin, meaning: str) -> Span:
    """The span of a field by meaning (e.g. "pod.ip"), falling back to the object."""
    if origin.doc is None:
        return origin.span
    kspec_path, manifest_path = _PATHS[meaning]
    path = kspec_path if origin.doc.kind == "kspec" else manifest_path
    data = origin.doc.data
    for key in origin.path + path:
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and key < len(data):
            data = data[key]
        else:
            return origin.span
    return origin.at(*path)


def located(origin: Origin, label: str, meaning: str | None = None) -> Location:
    return Location(field_span(origin, meaning) if meaning else origin.span, label)


def suppression(annotations, invariant: str) -> str | None:
    """The reason an object's ``kspec.dev/ignore`` annotation silences ``invariant``, if it does."""
    listed = annotations.get(IGNORE_ANNOTATION) if annotations else None
    if not listed:
        return None
    ids = {part.strip().upper() for part in listed.split(",")}
    if invariant in ids or "ALL" in ids:
        reason = annotations.get(IGNORE_REASON_ANNOTATION, "")
        return f"{IGNORE_ANNOTATION} annotation" + (f": {reason}" if reason else "")
    return None
