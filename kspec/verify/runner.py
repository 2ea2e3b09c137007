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
from kspec.verify.ipvs_invariants import check_node_ipvs
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


DUMP_KINDS = ("iptables", "ip6tables", "ipvs", "ipset", "routes")
_COMPILED = {"iptables": "iptables.rules", "ip6tables": "ip6tables.rules", "ipvs": "ipvs.rules",
             "ipset": "ipset.rules", "routes": "routes.batch"}
_SAVE_HINTS = {"iptables": "iptables-save > FILE", "ip6tables": "ip6tables-save > FILE",
               "ipvs": "ipvsadm-save -n > FILE", "ipset": "ipset save > FILE",
               "routes": "ip -batch input, like the routes.batch kspec compile writes"}


def run_packet_checks(cluster: ResolvedCluster, ids: list[str], disabled: Iterable[str] = (),
                      nodes: Sequence[str] = (), rules: Mapping[str, Path | Mapping[str, Path]] | None = None,
                      timeout: float = 60.0) -> tuple[list[Verdict], tuple[str, ...], list[str]]:
    """KS2xx over the rule sets of the selected nodes (default: every node).

    A node's rules are its ``--rules`` dumps or what ``kspec compile`` writes
    for it, with its routes. ``rules`` maps a node to a dump path (its
    iptables-save output) or to dumps by kind (:data:`DUMP_KINDS`). With a
    dump the node's routes are unknown (KS201 checks the rules only) unless a
    ``routes`` dump is given; in IPVS mode an IPVS table or ipset dump not
    given is compiled from the spec, and a note says so.
    Raises InputError for an unreadable or malformed dump.
    """
    wanted = [i for i in ids if CATALOGUE[i].scope == "packets"]
    if not wanted:
        return [], (), []
    given = {node: ({"iptables": value} if isinstance(value, Path) else dict(value))
             for node, value in (rules or {}).items()}
    chosen = list(dict.fromkeys(list(nodes) + sorted(given))) or [n.name for n in cluster.nodes]
    ipvs_mode = cluster.settings.proxy.mode == "ipvs"
    notes: list[str] = []
    per_invariant: dict[str, list[Verdict]] = {i: [] for i in wanted}
    needed = {"ipvs", "ipset"} if ipvs_mode else set()
    compiled = _compiled_files(cluster, [n for n in chosen if n not in given or not needed <= set(given[n])
                                         or not {"iptables", "ip6tables"} & set(given[n])])
    for name in chosen:
        node = cluster.nodes_by_name[name]
        texts = {kind: (str(path), _read_dump(path, kind)) for kind, path in sorted(given.get(name, {}).items())}
        if name in given:
            sets = [(texts[kind], family) for kind, family in (("iptables", None), ("ip6tables", 6)) if kind in texts]
            if not sets:
                sets = _compiled_sets(compiled, name)
                notes.append(f"node {name}: its iptables rules are compiled from the spec (no iptables dump given)")
            routes = texts.get("routes", (None, None))
        else:
            sets = _compiled_sets(compiled, name)
            path = f"nodes/{name}/routes.batch"
            routes = (path, compiled[path]) if path in compiled else (None, None)
        if ipvs_mode:
            missing = [kind for kind in ("ipvs", "ipset") if kind not in texts]
            for kind in missing:
                path = f"nodes/{name}/{_COMPILED[kind]}"
                texts[kind] = (path, compiled[path])
            if name in given and missing:
                notes.append(f"node {name}: {' and '.join(_COMPILED[k] for k in missing)} compiled from the spec "
                             f"(give --rules {name}:{missing[0]}=PATH to check a dump)")
        for (text_name, text), family in sets:
            if ipvs_mode:
                (ipvs_name, ipvs_text), (ipset_name, ipset_text) = texts["ipvs"], texts["ipset"]
                verdicts = check_node_ipvs(cluster, node, text, text_name, ipvs_text, ipvs_name, ipset_text,
                                           ipset_name, routes[1], routes[0], wanted, timeout, family)
            else:
                verdicts = check_node(cluster, node, text, text_name, routes[1], routes[0], wanted, timeout, family)
            for verdict in verdicts:
                per_invariant[verdict.invariant].append(verdict)
    disabled_set = set(disabled)
    merged = [apply_disable(merge_verdicts(i, per_invariant[i]), disabled_set) for i in wanted]
    return merged, tuple(chosen), notes


def _compiled_sets(compiled: dict[str, str], name: str) -> list[tuple[tuple[str, str], int]]:
    """The node's compiled iptables texts, one per family: ((file name, text), family)."""
    return [((f"nodes/{name}/{prefix}tables.rules", compiled[f"nodes/{name}/{prefix}tables.rules"]), family)
            for family, prefix in ((4, "ip"), (6, "ip6")) if f"nodes/{name}/{prefix}tables.rules" in compiled]


def _compiled_files(cluster: ResolvedCluster, node_names: list[str]) -> dict[str, str]:
    if not node_names:
        return {}
    wanted = set(node_names)
    return dict(node_files(cluster, [n for n in cluster.nodes if n.name in wanted]))


def _read_dump(path: Path, kind: str = "iptables") -> str:
    flag = "NODE=PATH" if kind == "iptables" else f"NODE:{kind}=PATH"
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise InputError(error(f"cannot read the rule dump {path}: {exc.strerror or exc}", Span(str(path), 1, 1, 1, 1),
                               f"give --rules {flag} with a readable file ({_SAVE_HINTS[kind]})")) from None
    except UnicodeDecodeError as exc:
        raise InputError(error(f"the rule dump {path} is not UTF-8 text", Span(str(path), 1, 1, 1, 1),
                               f"give the text as UTF-8 ({_SAVE_HINTS[kind]})")) from exc
