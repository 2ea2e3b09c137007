"""Run the registered invariant checkers and apply suppressions.

Which invariants run is decided by ``--only`` / ``--skip``; ``--disable``
runs them but marks their findings suppressed (counted, shown in SARIF with
a ``suppressions`` entry, never failing the run).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Iterable

from kspec.model import ResolvedCluster
from kspec.verify import dns_invariants, spec_invariants  # noqa: F401  (registers the checkers)
from kspec.verify.catalogue import CATALOGUE, CHECKERS
from kspec.verify.explain import ExplainContext
from kspec.verify.result import Report, Verdict


def selected(only: Iterable[str] = (), skip: Iterable[str] = ()) -> list[str]:
    """Invariant IDs to run, in catalogue order."""
    only_set, skip_set = set(only), set(skip)
    return [i for i in CATALOGUE if (not only_set or i in only_set) and i not in skip_set]


def run_spec_checks(cluster: ResolvedCluster, ids: list[str], disabled: Iterable[str] = ()) -> list[Verdict]:
    """Decide every selected spec-level invariant (KS1xx)."""
    disabled_set = set(disabled)
    context = ExplainContext(cluster) if "KS109" in ids else None
    verdicts = []
    for invariant in ids:
        if CATALOGUE[invariant].scope != "spec" or invariant not in CHECKERS:
            continue
        start = time.perf_counter()
        check = CHECKERS[invariant]
        verdict = check(cluster, context) if invariant == "KS109" else check(cluster)
        verdict = replace(verdict, seconds=time.perf_counter() - start)
        verdicts.append(apply_disable(verdict, disabled_set))
    return verdicts


def apply_disable(verdict: Verdict, disabled: set[str]) -> Verdict:
    if verdict.invariant not in disabled:
        return verdict
    findings = tuple(f if f.suppressed else replace(f, suppressed="--disable on the command line")
                     for f in verdict.findings)
    return replace(verdict, findings=findings)


def build_report(verdicts: list[Verdict], nodes: tuple[str, ...] = ()) -> Report:
    return Report(verdicts=sorted(verdicts, key=lambda v: list(CATALOGUE).index(v.invariant)), nodes_checked=nodes)


def run_packet_checks(cluster, ids, disabled, nodes=(), rules=None, timeout=60.0, stderr=None):
    """KS2xx over the rule sets of the selected nodes (filled in by the packet verifier)."""
    return [], tuple(nodes), []
