"""What the frontends collect from documents before the cluster is assembled.

Both frontends (kspec language, Kubernetes manifests) fill one
:class:`Parts`; :mod:`kspec.frontend.assemble` then merges settings by
precedence (input objects > flags > defaults) and builds the Cluster.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kspec.frontend.document import Origin
from kspec.model import ManualEndpoints, Node, Pod, Service, Workload


@dataclass(frozen=True, slots=True)
class Setting:
    """One cluster setting given by an input object, with where it came from."""

    value: Any
    origin: Origin
    source: str  # e.g. "KubeProxyConfiguration", "kspec cluster"


@dataclass(frozen=True, slots=True)
class OwnerRef:
    kind: str
    name: str


@dataclass
class Parts:
    settings: dict[str, list[Setting]] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    workloads: list[Workload] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    manual_endpoints: list[ManualEndpoints] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    # ownerReferences, for counting a Deployment + ReplicaSet + Pods dump once:
    # (namespace, kind, name) -> owner of that object
    owners: dict[tuple[str, str, str], OwnerRef] = field(default_factory=dict)
    # pods that came from a Pod object (not made from a workload) -> their owner
    pod_owners: dict[tuple[str, str], OwnerRef] = field(default_factory=dict)
    has_kspec: bool = False

    def set(self, name: str, value: Any, origin: Origin, source: str) -> None:
        self.settings.setdefault(name, []).append(Setting(value, origin, source))
