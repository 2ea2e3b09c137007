"""JUnit XML (Apache Ant schema): one test case per invariant, and per service for KS109/KS2xx.

The testsuite's timestamp comes from SOURCE_DATE_EPOCH when set; times are
reported as 0 so the same input gives the same bytes.
"""

from __future__ import annotations

import socket
from xml.sax.saxutils import escape, quoteattr

from kspec.reports.common import timestamp
from kspec.reports.text import _finding
from kspec.verify.catalogue import CATALOGUE
from kspec.verify.result import Report, Verdict

PER_SUBJECT = ("KS109",)


def _case(classname: str, name: str, findings, unknown_reason: str = "") -> tuple[str, int, int]:
    attrs = f'name={quoteattr(name)} classname={quoteattr(classname)} time="0"'
    active = [f for f in findings if f.suppressed is None]
    if active:
        body = "\n".join(line for f in active for line in _finding(f))
        message = active[0].message if len(active) == 1 else f"{len(active)} findings: {active[0].message}"
        return (f"    <testcase {attrs}>\n      <failure message={quoteattr(message)} "
                f"type=\"{active[0].invariant}\">{escape(body)}</failure>\n    </testcase>\n", 1, 0)
    if unknown_reason:
        return (f"    <testcase {attrs}>\n      <error message={quoteattr(unknown_reason)} type=\"unknown\">"
                f"{escape(unknown_reason)}</error>\n    </testcase>\n", 0, 1)
    return f"    <testcase {attrs}/>\n", 0, 0


def _cases(verdict: Verdict) -> list[tuple[str, int, int]]:
    inv = CATALOGUE[verdict.invariant]
    classname = f"kspec.{verdict.invariant}"
    title = f"{verdict.invariant} {inv.title}"
    per_subject = verdict.invariant in PER_SUBJECT or inv.scope == "packets"
    if per_subject and verdict.subjects:
        by_subject = {s: [] for s in verdict.subjects}
        for finding in verdict.findings:
            by_subject.setdefault(finding.subject, []).append(finding)
        return [_case(classname, f"{title}: {subject}", findings, verdict.reason if verdict.status == "unknown" else "")
                for subject, findings in by_subject.items()]
    return [_case(classname, title, verdict.findings, verdict.reason if verdict.status == "unknown" else "")]


def render_junit(report: Report, hostname: str | None = None) -> str:
    cases = [case for verdict in report.verdicts for case in _cases(verdict)]
    failures = sum(c[1] for c in cases)
    errors = sum(c[2] for c in cases)
    host = hostname or socket.gethostname() or "localhost"
    head = (f'<?xml version="1.0" encoding="UTF-8"?>\n<testsuites>\n'
            f'  <testsuite name="kspec verify" package="kspec" id="0" tests="{len(cases)}" failures="{failures}" '
            f'errors="{errors}" skipped="0" time="0" timestamp="{timestamp()}" hostname={quoteattr(host)}>\n'
            f'    <properties>\n')
    props = "".join(f'      <property name="node" value={quoteattr(n)}/>\n' for n in report.nodes_checked)
    body = "".join(c[0] for c in cases)
    return (head + props + "    </properties>\n" + body
            + "    <system-out></system-out>\n    <system-err></system-err>\n  </testsuite>\n</testsuites>\n")
