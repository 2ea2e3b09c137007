"""The lab: a compiled cluster built as network namespaces in the real kernel.

:func:`plan` lays a resolved cluster out (pure); :class:`LabCluster` builds it,
loads each node's rules and routes, probes it with real connections and tears
it down.
"""

from kspec.lab.netns import (
    LAB_RANGE,
    LabCluster,
    LabError,
    LabPlan,
    LabUnavailable,
    NodeFiles,
    ProbeResult,
    check_environment,
    cleanup,
    new_prefix,
    node_files_from_dir,
    plan,
)

__all__ = [
    "LAB_RANGE",
    "LabCluster",
    "LabError",
    "LabPlan",
    "LabUnavailable",
    "NodeFiles",
    "ProbeResult",
    "check_environment",
    "cleanup",
    "new_prefix",
    "node_files_from_dir",
    "plan",
]
