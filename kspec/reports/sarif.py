"""SARIF 2.1.0: one rule per invariant ID, every result at the object's span.

Suppressed findings are results with a ``suppressions`` entry (inSource for
an annotation, external for --disable), as GitHub code scanning expects.
"""

from __future__ import annotations

import json

from kspec import __version__
from kspec.reports.common import has_position, relative_uri
from kspec.verify.catalogue import CATALOGUE
from kspec.verify.result import Finding, Report

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"


def _region(span) -> dict:
    region = {"startLine": max(1, span.line), "startColumn": max(1, span.col)}
    if span.end_line >= span.line and span.end_line:
        region["endLine"] = span.end_line
        if span.end_col and (span.end_line > span.line or span.end_col > span.col):
            region["endColumn"] = span.end_col
    return region


def _location(span, label: str) -> dict:
    return {"physicalLocation": {"artifactLocation": {"uri": relative_uri(span.file)}, "region": _region(span)},
            "message": {"text": label}}


def _result(finding: Finding, rule_index: int) -> dict:
    text = finding.message
    if finding.witness:
        text += f"\nwitness: {finding.witness}"
    for detail in finding.details:
        text += f"\nwhy: {detail}"
    if finding.hint and finding.hint not in finding.details:
        text += f"\nhint: {finding.hint}"
    located = [l for l in finding.locations if has_position(l.span)]
    result = {"ruleId": finding.invariant, "ruleIndex": rule_index, "level": "error", "message": {"text": text}}
    if located:
        result["locations"] = [_location(located[0].span, located[0].label)]
        if len(located) > 1:
            result["relatedLocations"] = [{"id": i, **_location(l.span, l.label)} for i, l in enumerate(located[1:], 1)]
    if finding.subject:
        result["partialFingerprints"] = {"kspecSubject/v1": f"{finding.invariant}:{finding.subject}"}
    if finding.suppressed:
        kind = "external" if finding.suppressed.startswith("--disable") else "inSource"
        result["suppressions"] = [{"kind": kind, "justification": finding.suppressed}]
    return result


def to_sarif(report: Report) -> dict:
    ids = list(CATALOGUE)
    rules = [{
        "id": inv.id,
        "name": inv.title.replace(",", "").replace(";", "").title().replace(" ", ""),
        "shortDescription": {"text": inv.title},
        "fullDescription": {"text": inv.explanation},
        "help": {"text": f"{inv.explanation} Fix: {inv.fix}."},
        "defaultConfiguration": {"level": "error"},
        "properties": {"scope": inv.scope},
    } for inv in CATALOGUE.values()]
    results = [_result(f, ids.index(v.invariant)) for v in report.verdicts for f in v.findings]
    notifications = [{"level": "warning", "message": {"text": f"{v.invariant} undecided: {v.reason}"},
                      "descriptor": {"id": v.invariant}} for v in report.verdicts if v.effective_status == "unknown"]
    run = {
        "tool": {"driver": {"name": "kspec", "version": __version__, "semanticVersion": __version__,
                            "informationUri": "https://kspec.dev", "rules": rules}},
        "results": results,
        "columnKind": "unicodeCodePoints",
    }
    if notifications:
        run["invocations"] = [{"executionSuccessful": True, "toolExecutionNotifications": notifications}]
    return {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [run]}


def render_sarif(report: Report) -> str:
    return json.dumps(to_sarif(report), indent=2) + "\n"
