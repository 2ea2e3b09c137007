"""Backends: pure functions from the resolved model to rule text.

:data:`NODE_OUTPUTS` is the registry of per-node files by proxy mode (one
row per file: file name, module, whether it is per IP family); modules are
imported lazily so ``kspec check`` does not pay for them.  Cluster-wide
outputs are in :data:`CLUSTER_OUTPUTS`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Output:
    """One output file of a backend module's ``generate``."""

    filename: str  # for per-family outputs, "{ip}" is "ip" or "ip6"
    module: str
    per_family: bool = False

    def load(self) -> ModuleType:
        return importlib.import_module(f"kspec.backends.{self.module}")


NODE_OUTPUTS: dict[str, tuple[Output, ...]] = {
    "iptables": (
        Output("{ip}tables.rules", "iptables", per_family=True),
        Output("routes.batch", "routes"),
    ),
    "ipvs": (
        Output("{ip}tables.rules", "ipvs_iptables", per_family=True),
        Output("ipvs.rules", "ipvs"),
        Output("ipset.rules", "ipset"),
        Output("kube-ipvs0.batch", "kube_ipvs0"),
        Output("routes.batch", "routes"),
    ),
}

CLUSTER_OUTPUTS: tuple[str, ...] = ("endpointslices", "dns")


def node_outputs(mode: str) -> tuple[Output, ...]:
    """The per-node outputs of a proxy mode; an unknown mode names the known ones."""
    try:
        return NODE_OUTPUTS[mode]
    except KeyError:
        raise ValueError(f"unknown proxy mode {mode!r}: expected one of {', '.join(sorted(NODE_OUTPUTS))}") from None
