"""The text report: each violated invariant, its objects with source lines, the witness, a hint."""

from __future__ import annotations

from kspec.diagnostics import SOURCES
from kspec.reports.common import counts
from kspec.verify.catalogue import CATALOGUE
from kspec.verify.result import Finding, Report

_COLOURS = {"proved": "\x1b[32m", "violated": "\x1b[1;31m", "unknown": "\x1b[1;33m"}


def _source_line(finding_span) -> list[str]:
    source = SOURCES.get(finding_span.file)
    if source is None:
        return []
    text = source.line_text(finding_span.line)
    if not text.strip():
        return []
    text = text.replace("\t", " ")
    if len(text) > 160:
        text = text[:157] + "..."
    col = min(finding_span.col, len(text) + 1)
    return [f"  {finding_span.line:>6} | {text}", f"         | {' ' * (col - 1)}^"]


def _finding(finding: Finding) -> list[str]:
    lines = []
    first = True
    for location in finding.locations:
        if first:
            lines.append(f"  {location.span}: {finding.message}")
            lines.append(f"    {location.label}")
            lines += ["  " + line for line in _source_line(location.span)]
            first = False
        else:
            lines.append(f"    also {location.label} at {location.span}")
            lines += ["  " + line for line in _source_line(location.span)]
    if first:
        lines.append(f"  {finding.message}")
    if finding.witness:
        lines.append(f"    witness: {finding.witness}")
    for detail in finding.details:
        lines.append(f"    why: {detail}")
    if finding.hint and finding.hint not in finding.details:
        lines.append(f"    hint: {finding.hint}")
    if finding.suppressed:
        lines.append(f"    suppressed: {finding.suppressed}")
    return lines


def render_text(report: Report, color: bool = False, verbose: bool = False) -> str:
    out: list[str] = []
    for verdict in report.verdicts:
        status = verdict.effective_status
        title = CATALOGUE[verdict.invariant].title
        label = status.upper()
        if color:
            label = f"{_COLOURS[status]}{label}\x1b[0m"
        if status == "proved" and not verbose and not verdict.findings:
            out.append(f"{verdict.invariant} {label:<9} {title} ({verdict.checked} checked)")
            continue
        out.append(f"{verdict.invariant} {label:<9} {title}")
        if verdict.reason:
            out.append(f"  {verdict.reason}")
        for finding in verdict.findings:
            out += _finding(finding)
    c = counts(report)
    nodes = f" on {len(report.nodes_checked)} node(s)" if report.nodes_checked else ""
    out.append("")
    out.append(f"kspec verify{nodes}: {c['invariants']} invariants, {c['proved']} proved, {c['violated']} violated, "
               f"{c['unknown']} unknown; {c['findings']} finding(s), {c['suppressed']} suppressed")
    for note in report.notes:
        out.append(f"note: {note}")
    return "\n".join(out) + "\n"
