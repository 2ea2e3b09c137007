"""`kspec verify`: prove the invariants or print counterexamples."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import IO

from kspec.commands.common import load_inputs, print_diagnostics
from kspec.diagnostics import InputError
from kspec.frontend.assemble import Flags
from kspec.reports.json_report import render_json
from kspec.reports.junit import render_junit
from kspec.reports.sarif import render_sarif
from kspec.reports.text import render_text
from kspec.verify.catalogue import CATALOGUE
from kspec.verify.runner import DUMP_KINDS, build_report, run_packet_checks, run_spec_checks, selected

EPILOG = """examples:
  kspec verify examples/explainer/cluster.kspec
  kspec verify k8s/ --format sarif --output kspec.sarif
  kspec verify cluster.kspec --rules node-1=node-1.iptables-save
  kspec verify cluster.kspec --rules node-1=iptables.save --rules node-1:ipvs=ipvsadm.save \
      --rules node-1:ipset=ipset.save          (an IPVS-mode node: iptables-save, ipvsadm-save -n, ipset save)
  kspec verify --list

--rules NODE[:KIND]=PATH: KIND is iptables (the default), ip6tables, ipvs, ipset or routes
  (ip -batch, like the routes.batch kspec compile writes); kinds not given are compiled from the spec
  for an IPVS-mode node (ipvs, ipset), and a node's routes are unknown unless given.

exit codes: 0 every invariant holds, 1 violated (counterexamples printed),
            2 input or command-line error, 3 undecided (solver timeout)
"""


def list_catalogue() -> str:
    lines = []
    for inv in CATALOGUE.values():
        lines.append(f"{inv.id}  {inv.title}")
        lines.append(f"       {inv.explanation}")
        lines.append(f"       fix: {inv.fix}")
    return "\n".join(lines) + "\n"


def _ids(values: list[str] | None, option: str) -> tuple[list[str], str | None]:
    ids = [part.strip().upper() for value in values or [] for part in value.split(",") if part.strip()]
    unknown = [i for i in ids if i not in CATALOGUE]
    if unknown:
        return [], (f"kspec verify: error: {option} names unknown invariant {', '.join(unknown)}\n"
                    "  hint: `kspec verify --list` prints the catalogue")
    return ids, None


def _rules(values: list[str] | None) -> tuple[dict[str, dict[str, Path]], str | None]:
    """``--rules NODE[:KIND]=PATH`` -> {node: {kind: path}}; KIND defaults to iptables."""
    found: dict[str, dict[str, Path]] = {}
    for value in values or []:
        target, sep, path = value.partition("=")
        node, colon, kind = target.partition(":")
        kind = kind if colon else "iptables"
        if not sep or not node or not path:
            return {}, (f"kspec verify: error: --rules takes NODE[:KIND]=PATH, not {value!r}\n"
                        "  hint: --rules node-1=node-1.rules, or --rules node-1:ipvs=ipvsadm.save")
        if kind not in DUMP_KINDS:
            return {}, (f"kspec verify: error: --rules {value!r}: unknown dump kind {kind!r}\n"
                        f"  hint: the kinds are {', '.join(DUMP_KINDS)}")
        if kind in found.get(node, {}):
            return {}, (f"kspec verify: error: --rules gives the {kind} dump of {node} twice\n"
                        f"  hint: give one {node}:{kind}=PATH")
        found.setdefault(node, {})[kind] = Path(path)
    return found, None


def _mode_problem(cluster_mode: str, rules: dict[str, dict[str, Path]]) -> str | None:
    """IPVS dumps only make sense for an IPVS-mode cluster."""
    for node, kinds in sorted(rules.items()):
        ipvs_kinds = sorted({"ipvs", "ipset"} & set(kinds))
        if ipvs_kinds and cluster_mode != "ipvs":
            return (f"kspec verify: error: --rules {node}:{ipvs_kinds[0]}=... gives an IPVS dump, but the cluster's "
                    f"kube-proxy mode is {cluster_mode}\n  hint: set proxy.mode: ipvs (or --proxy-mode ipvs), or "
                    "drop the IPVS dumps")
    return None


def run(args: argparse.Namespace, flags: Flags | None, stdin: IO, stdout: IO, stderr: IO) -> int:
    if args.list:
        stdout.write(list_catalogue())
        return 0
    if not args.inputs:
        print("kspec verify: error: no INPUT given\n  hint: kspec verify cluster.kspec (or --list)", file=stderr)
        return 2
    only, problem = _ids(args.only, "--only")
    skip, problem2 = _ids(args.skip, "--skip")
    disabled, problem3 = _ids(args.disable, "--disable")
    rules, problem4 = _rules(args.rules)
    for message in (problem, problem2, problem3, problem4):
        if message:
            print(message, file=stderr)
            return 2
    result = load_inputs("verify", args, flags, stdin, stderr)
    if result is None:
        return 2
    cluster = result.cluster
    known = {n.name for n in cluster.nodes}
    unknown = sorted((set(args.node or ()) | set(rules)) - known)
    if unknown:
        print(f"kspec verify: error: unknown node {', '.join(unknown)}\n  hint: the nodes are "
              + ", ".join(sorted(known)[:10]), file=stderr)
        return 2
    problem5 = _mode_problem(cluster.settings.proxy.mode, rules)
    if problem5:
        print(problem5, file=stderr)
        return 2
    ids = selected(only, skip)
    verdicts = run_spec_checks(cluster, ids, disabled)
    try:
        packet_verdicts, nodes, notes = run_packet_checks(cluster, ids, disabled, nodes=args.node or (), rules=rules,
                                                          timeout=args.timeout)
    except InputError as exc:
        print_diagnostics(exc.diagnostics, stderr)
        print("kspec verify: the rule dump is not valid", file=stderr)
        return 2
    report = build_report(verdicts + packet_verdicts, nodes)
    report.notes.extend(notes)
    if args.format == "json":
        text = render_json(report)
    elif args.format == "sarif":
        text = render_sarif(report)
    elif args.format == "junit":
        text = render_junit(report)
    else:
        color = args.output is None and hasattr(stdout, "isatty") and stdout.isatty()
        text = render_text(report, color=color, verbose=args.verbose)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        if not args.quiet:
            print(f"kspec verify: report written to {args.output} (exit {report.exit_code})", file=stderr)
    else:
        stdout.write(text)
    return report.exit_code
