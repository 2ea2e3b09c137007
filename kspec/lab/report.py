"""Observed against expected: the verdict of each probe check and the report in text or JSON (pure).

Kept apart from running the probes so judging and rendering are plain
functions of their inputs, testable without a lab.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from kspec.lab.expect import Check
from kspec.lab.probe import ProbeResult


@dataclass(frozen=True, slots=True)
class Verdict:
    check: Check
    ok: bool
    outcomes: tuple[tuple[str, int], ...]  # (ok|refused|timeout|unreachable|error, count)
    responders: tuple[tuple[str, int], ...]
    sources: tuple[str, ...]
    problem: str  # why observed differs from expected; "" when it does not
    error: str = ""

    def observed_text(self) -> str:
        if self.error:
            return f"error: {self.error}"
        parts = []
        for outcome, count in self.outcomes:
            if outcome == "ok":
                names = ", ".join(f"{n} x{c}" for n, c in self.responders)
                src = f"; source {', '.join(self.sources)}" if self.sources else ""
                parts.append(f"ok x{count}: {names}{src}")
            else:
                parts.append(f"{_WORDS.get(outcome, outcome)} x{count}")
        return "; ".join(parts) or "nothing"


_WORDS = {"refused": "refused", "timeout": "dropped (timeout)", "unreachable": "unreachable"}
_ORDER = ("ok", "refused", "timeout", "unreachable")


def _outcome(result: ProbeResult) -> str:
    if result.ok:
        return "ok"
    if result.refused:
        return "refused"
    return "timeout" if result.timeout else "unreachable"


def judge(check: Check, results: Sequence[ProbeResult], failure: str = "") -> Verdict:
    """Compare what came back with what the model expects."""
    if failure:
        return Verdict(check, False, (), (), (), f"the probe client failed: {failure}", failure)
    outcomes = Counter(_outcome(r) for r in results)
    names = Counter(r.responder_name or "?" for r in results if r.ok)
    sources = tuple(sorted({r.seen_source or "?" for r in results if r.ok}))
    ordered = tuple((o, outcomes[o]) for o in _ORDER if outcomes[o])
    verdict = Verdict(check, False, ordered, tuple(sorted(names.items())), sources, "")
    exp = check.expected
    wrong_outcomes = {o: n for o, n in outcomes.items() if o != exp.outcome}
    problem = ""
    if not results:
        problem = "no answer from the probe client"
    elif wrong_outcomes:
        problem = ", ".join(f"{_WORDS.get(o, o)} x{n}" for o, n in sorted(wrong_outcomes.items())) \
            + f" where {_WORDS.get(exp.outcome, exp.outcome)} was expected"
    elif exp.outcome == "ok":
        strangers = sorted(set(names) - set(exp.responders))
        if strangers:
            problem = f"answered by {', '.join(strangers)}, which {'is' if len(strangers) == 1 else 'are'} " \
                      "not expected"
        elif len(names) < exp.min_distinct:
            problem = f"only {len(names)} distinct responder(s) in {len(results)} tries, " \
                      f"expected at least {exp.min_distinct}"
        elif exp.max_distinct is not None and len(names) > exp.max_distinct:
            problem = f"{len(names)} distinct responders, expected at most {exp.max_distinct}"
        elif exp.source is not None and sources != (exp.source,):
            wrong = ", ".join(s for s in sources if s != exp.source)
            problem = f"the responder saw source {wrong} instead of {exp.source} (the client's own address)"
    return replace(verdict, ok=not problem, problem=problem)


@dataclass(frozen=True)
class Report:
    name: str
    prefix: str
    mode: str  # running | one-shot
    verdicts: tuple[Verdict, ...]
    notes: tuple[str, ...]
    timeout: float

    @property
    def differing(self) -> tuple[Verdict, ...]:
        return tuple(v for v in self.verdicts if not v.ok)

    @property
    def exit_code(self) -> int:
        return 1 if self.differing else 0


_COLUMNS = ("CHECK", "FROM", "TO", "EXPECTED", "OBSERVED", "OK")


def render_text(report: Report, only_differing: bool = False) -> str:
    """The table (every check, or with ``only_differing`` just those that differ), reasons, notes, summary."""
    shown = report.differing if only_differing else report.verdicts
    rows = [_COLUMNS] + [
        (v.check.kind, v.check.client, v.check.to, v.check.expected.text(v.check.tries, report.timeout),
         v.observed_text(), "ok" if v.ok else "DIFFERS")
        for v in shown
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows] if shown else []
    for v in report.differing:
        lines.append(f"differs: {v.check.kind} ({v.check.invariant}) from {v.check.client} to {v.check.to}: "
                     f"{v.problem}")
    lines += [] if only_differing else [f"note: {n}" for n in report.notes]
    total, bad = len(report.verdicts), len(report.differing)
    word = "check" if total == 1 else "checks"
    lines.append(f"kspec lab probe: lab {report.name} ({report.mode}): {total} {word}, "
                 f"{total - bad} as expected, {bad} differ")
    return "\n".join(lines) + "\n"


def report_data(report: Report) -> dict:
    """The stable JSON object of ``probe --format json`` (version 1)."""
    return {
        "version": 1,
        "lab": {"name": report.name, "prefix": report.prefix, "mode": report.mode},
        "checks": [
            {
                "check": v.check.kind,
                "invariant": v.check.invariant,
                "from": v.check.client,
                "to": v.check.to,
                "target": v.check.target,
                "address": v.check.ip,
                "port": v.check.port,
                "protocol": v.check.proto,
                "tries": v.check.tries,
                "expected": {
                    "outcome": v.check.expected.outcome,
                    "responders": list(v.check.expected.responders),
                    "minDistinct": v.check.expected.min_distinct,
                    "maxDistinct": v.check.expected.max_distinct,
                    "source": v.check.expected.source,
                    "text": v.check.expected.text(v.check.tries, report.timeout),
                },
                "observed": {
                    "outcomes": dict(v.outcomes),
                    "responders": dict(v.responders),
                    "sources": list(v.sources),
                    "error": v.error or None,
                    "text": v.observed_text(),
                },
                "ok": v.ok,
                "problem": v.problem or None,
            }
            for v in report.verdicts
        ],
        "notes": list(report.notes),
        "summary": {"checks": len(report.verdicts), "ok": len(report.verdicts) - len(report.differing),
                    "differ": len(report.differing), "exitCode": report.exit_code},
    }


def render_json(report: Report) -> str:
    return json.dumps(report_data(report), indent=2) + "\n"
