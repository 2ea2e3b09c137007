"""Run the registered invariant checkers and apply suppressions.

Which invariants run is decided by ``--only`` / ``--skip``; ``--disable``
runs them but marks their findings suppressed (counted, shown in SARIF with
a ``suppressions`` entry, never failing the run).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from kspec.compile import node_files
from kspec.diagnostics import InputError, Span, error
from kspec.model import ResolvedCluster
from kspec.verify import dns_invariants, spec_invariants  # noqa: F401  (registers the checkers)
from kspec.verify.catalogue import CATALOGUE, CHECKERS
from kspec.verify.explain import ExplainContext
from kspec.verify.packet_invariants import check_node
from kspec.verify.result import PROVED, UNKNOWN, VIOLATED, Report, Verdict


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



def merge_verdicts(invariant: str, verdicts: list[Verdict]) -> Verdict:
    """One verdict per invariant over several nodes: violated beats unknown beats proved."""
    findings = tuple(f for v in verdicts for f in v.findings)
    statuses = {v.status for v in verdicts}
    status = VIOLATED if VIOLATED in statuses else UNKNOWN if UNKNOWN in statuses else PROVED
    reasons = [v.reason for v in verdicts if v.reason]
    return Verdict(invariant, status, findings, sum(v.checked for v in verdicts),
                   tuple(dict.fromkeys(s for v in verdicts for s in v.subjects)),
                   "; ".join(dict.fromkeys(reasons)), sum(v.seconds for v in verdicts))


def run_packet_checks(cluster: ResolvedCluster, ids: list[str], disabled: Iterable[str] = (),
                      nodes: Sequence[str] = (), rules: Mapping[str, Path] | None = None,
                      timeout: float = 60.0) -> tuple[list[Verdict], tuple[str, ...], list[str]]:
    """KS2xx over the rule sets of the selected nodes (default: every node).

    A node's rules are its ``--rules`` dump (routes unknown then: KS201 checks
    the rules only) or what ``kspec compile`` writes for it, with its routes.
    Raises InputError for an unreadable or malformed dump.
    """
    wanted = [i for i in ids if CATALOGUE[i].scope == "packets"]
    if not wanted:
        return [], (), []
    rules = dict(rules or {})
    chosen = list(dict.fromkeys(list(nodes) + sorted(rules))) or [n.name for n in cluster.nodes]
    notes: list[str] = []
    if cluster.settings.proxy.mode == "ipvs":
        return ([Verdict(i, UNKNOWN, (), 0, (), reason="packet-level proofs of IPVS-mode rule sets are not "
                         "implemented yet (KS1xx still apply)") for i in wanted], tuple(chosen),
                ["ipvs mode: KS2xx are undecided; compile with --proxy-mode iptables to prove the iptables rules"])
    per_invariant: dict[str, list[Verdict]] = {i: [] for i in wanted}
    compiled = _compiled_files(cluster, [n for n in chosen if n not in rules])
    for name in chosen:
        node = cluster.nodes_by_name[name]
        if name in rules:
            path = rules[name]
            text = _read_dump(path)
            sets = [(text, str(path), None, None, None)]
        else:
            routes = compiled.get(f"nodes/{name}/routes.batch")
            sets = [(compiled[f"nodes/{name}/{prefix}tables.rules"], f"nodes/{name}/{prefix}tables.rules", routes,
                     f"nodes/{name}/routes.batch" if routes is not None else None, family)
                    for family, prefix in ((4, "ip"), (6, "ip6")) if f"nodes/{name}/{prefix}tables.rules" in compiled]
        for text, text_name, routes, routes_name, family in sets:
            for verdict in check_node(cluster, node, text, text_name, routes, routes_name, wanted, timeout, family):
                per_invariant[verdict.invariant].append(verdict)
    disabled_set = set(disabled)
    merged = [apply_disable(merge_verdicts(i, per_invariant[i]), disabled_set) for i in wanted]
    return merged, tuple(chosen), notes


def _compiled_files(cluster: ResolvedCluster, node_names: list[str]) -> dict[str, str]:
    if not node_names:
        return {}
    wanted = set(node_names)
    return dict(node_files(cluster, [n for n in cluster.nodes if n.name in wanted]))


def _read_dump(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise InputError(error(f"cannot read the rule dump {path}: {exc.strerror or exc}", Span(str(path), 1, 1, 1, 1),
                               "give --rules NODE=PATH with a readable iptables-save file")) from None
    except UnicodeDecodeError as exc:
        raise InputError(error(f"the rule dump {path} is not UTF-8 text", Span(str(path), 1, 1, 1, 1),
                               "save it with `iptables-save > FILE`")) from exc
