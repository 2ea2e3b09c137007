"""Shared helpers of the report renderers (determinism, paths, counts)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from kspec.diagnostics import Span
from kspec.verify.result import Report


def relative_uri(path: str) -> str:
    """A repository-relative URI for SARIF and JSON (absolute paths under the cwd are made relative)."""
    if path.startswith("<"):
        return path
    candidate = Path(path)
    if candidate.is_absolute():
        try:
            candidate = candidate.relative_to(Path.cwd())
        except ValueError:
            return candidate.as_uri()
    return candidate.as_posix()


def has_position(span: Span) -> bool:
    return not span.file.startswith("<")


def timestamp() -> str:
    """ISO 8601 (no zone), from SOURCE_DATE_EPOCH when set so reports are reproducible."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    seconds = int(epoch) if epoch and epoch.isdigit() else int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def counts(report: Report) -> dict[str, int]:
    statuses = [v.effective_status for v in report.verdicts]
    suppressed = sum(1 for v in report.verdicts for f in v.findings if f.suppressed)
    return {
        "invariants": len(report.verdicts),
        "proved": statuses.count("proved"),
        "violated": statuses.count("violated"),
        "unknown": statuses.count("unknown"),
        "findings": sum(len(v.active) for v in report.verdicts),
        "suppressed": suppressed,
    }
