"""The JSON report: one stable object, described by report.schema.json (shipped)."""

from __future__ import annotations

import json
from importlib import resources

from kspec import __version__
from kspec.reports.common import counts, relative_uri
from kspec.verify.catalogue import CATALOGUE
from kspec.verify.result import Finding, Report

FORMAT_VERSION = 1


def schema() -> dict:
    return json.loads(resources.files("kspec.reports").joinpath("report.schema.json").read_text(encoding="utf-8"))


def _finding(finding: Finding) -> dict:
    return {
        "message": finding.message,
        "subject": finding.subject,
        "locations": [{"file": relative_uri(l.span.file), "line": l.span.line, "column": l.span.col,
                       "endLine": l.span.end_line or l.span.line, "endColumn": l.span.end_col or l.span.col,
                       "object": l.label} for l in finding.locations],
        "witness": finding.witness,
        "why": list(finding.details),
        "hint": finding.hint,
        "suppressed": finding.suppressed,
    }


def to_dict(report: Report) -> dict:
    c = counts(report)
    status = "violated" if c["violated"] else "unknown" if c["unknown"] else "proved"
    return {
        "formatVersion": FORMAT_VERSION,
        "tool": {"name": "kspec", "version": __version__},
        "status": status,
        "exitCode": report.exit_code,
        "nodes": list(report.nodes_checked),
        "summary": c,
        "invariants": [{
            "id": v.invariant,
            "title": CATALOGUE[v.invariant].title,
            "status": v.effective_status,
            "checked": v.checked,
            "reason": v.reason,
            "findings": [_finding(f) for f in v.findings],
        } for v in report.verdicts],
        "notes": list(report.notes),
    }


def render_json(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2, sort_keys=False) + "\n"
