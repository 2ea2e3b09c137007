"""`kspec check`: parse, validate and resolve; print what was found and chosen."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import IO, Any

from kspec.commands.common import load_inputs
from kspec.frontend.assemble import Flags
from kspec.model import ResolvedCluster

EPILOG = """examples:
  kspec check examples/explainer/cluster.kspec
  kspec check k8s/                       # an app's manifests, on the default cluster
  kspec check dump.json --cluster-cidr 10.42.0.0/16

exit codes: 0 the input is valid, 2 it is not (every error is listed)
"""


def summary(cluster: ResolvedCluster, documents: int, warnings: int) -> dict[str, Any]:
    """The facts `check` reports, as plain data (the text form is rendered from it)."""
    settings = cluster.settings
    made = Counter(a.kind for a in cluster.allocations if not a.reused)
    reused = Counter(a.kind for a in cluster.allocations if a.reused)
    types = Counter(s.type if not s.headless else "headless" for s in cluster.services)
    endpoints = sum(len(pe.backends) for se in cluster.endpoints.values() for pe in se.ports)
    ready = sum(len(pe.ready) for se in cluster.endpoints.values() for pe in se.ports)
    selector_services = [se for se in cluster.endpoints.values() if se.source == "selector"]
    without = sorted(f"{ns}/{name}" for (ns, name), se in cluster.endpoints.items()
                     if se.source == "selector" and any(not pe.ready for pe in se.ports))
    return {
        "documents": documents,
        "warnings": warnings,
        "cluster": {
            "name": settings.name,
            "domain": settings.domain,
            "podCIDRs": [str(c) for c in settings.pod_cidrs],
            "serviceCIDRs": [str(c) for c in settings.service_cidrs],
            "nodePortRange": f"{settings.node_port_range[0]}-{settings.node_port_range[1]}",
            "proxyMode": settings.proxy.mode,
            "ipvsScheduler": settings.proxy.ipvs_scheduler,
            "defaulted": list(settings.defaulted),
            "defaultNodes": cluster.default_nodes,
        },
        "nodes": len(cluster.nodes),
        "pods": len(cluster.pods),
        "podsFromWorkloads": sum(1 for p in cluster.pods if p.owner),
        "services": len(cluster.services),
        "serviceTypes": dict(sorted(types.items())),
        "endpoints": endpoints,
        "readyEndpoints": ready,
        "selectorServices": len(selector_services),
        "servicesWithoutReadyEndpoints": without,
        "allocated": dict(sorted(made.items())),
        "fromLock": dict(sorted(reused.items())),
        "skippedKinds": dict(cluster.skipped_kinds),
    }


def render_summary(facts: dict[str, Any]) -> str:
    c = facts["cluster"]
    lines = ["kspec check: ok"]
    lines.append(f"  cluster   {c['name']}: domain {c['domain']}, pods {', '.join(c['podCIDRs'])}, "
                 f"services {', '.join(c['serviceCIDRs'])}, nodePorts {c['nodePortRange']}, proxy {c['proxyMode']}"
                 + (f" ({c['ipvsScheduler']})" if c["proxyMode"] == "ipvs" else ""))
    if c["defaulted"]:
        lines.append(f"  defaults  {', '.join(c['defaulted'])} not set by the input: kubeadm defaults used")
    if c["defaultNodes"]:
        lines.append(f"  nodes     {facts['nodes']} (default cluster: the input has no Node objects)")
    else:
        lines.append(f"  nodes     {facts['nodes']}")
    lines.append(f"  pods      {facts['pods']} ({facts['podsFromWorkloads']} made from workloads)")
    types = ", ".join(f"{k} {v}" for k, v in facts["serviceTypes"].items())
    lines.append(f"  services  {facts['services']}" + (f" ({types})" if types else ""))
    lines.append(f"  endpoints {facts['endpoints']} ({facts['readyEndpoints']} ready) for "
                 f"{facts['selectorServices']} selector services")
    if facts["servicesWithoutReadyEndpoints"]:
        shown = facts["servicesWithoutReadyEndpoints"]
        more = f", ... ({len(shown)} in all)" if len(shown) > 5 else ""
        lines.append(f"  note      without a ready endpoint on some port: {', '.join(shown[:5])}{more} "
                     "(kspec verify reports these as KS109)")
    allocated = ", ".join(f"{k} {v}" for k, v in facts["allocated"].items()) or "nothing"
    lines.append(f"  allocated {allocated}")
    if facts["fromLock"]:
        lines.append("  from lock " + ", ".join(f"{k} {v}" for k, v in facts["fromLock"].items()))
    if facts["skippedKinds"]:
        lines.append("  skipped   " + ", ".join(f"{k} ({v})" for k, v in facts["skippedKinds"].items())
                     + ": kinds kspec does not model")
    if facts["warnings"]:
        lines.append(f"  warnings  {facts['warnings']} (above)")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, flags: Flags, stdin: IO, stdout: IO, stderr: IO) -> int:
    result = load_inputs("check", args, flags, stdin, stderr)
    if result is None:
        return 2
    warnings = sum(1 for d in result.diagnostics if not d.is_error)
    facts = summary(result.cluster, result.documents, warnings)
    if args.format == "json":
        stdout.write(json.dumps(facts, indent=2, sort_keys=True) + "\n")
    elif not args.quiet:
        stdout.write(render_summary(facts))
    return 0
