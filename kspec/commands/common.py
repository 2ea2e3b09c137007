"""What every command that reads INPUTs does first: load, report, stop on errors."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import IO

from kspec.diagnostics import Diagnostic, render
from kspec.frontend.assemble import Flags
from kspec.model import ResolvedCluster
from kspec.pipeline import LoadResult, load
from kspec.progress import Progress


def print_diagnostics(diagnostics: list[Diagnostic], stderr: IO, quiet: bool = False) -> None:
    """Render diagnostics to stderr (coloured on a terminal); with ``quiet`` only the errors."""
    color = hasattr(stderr, "isatty") and stderr.isatty()
    for diagnostic in diagnostics:
        if quiet and not diagnostic.is_error:
            continue
        print(render(diagnostic, color=color), file=stderr)


def load_inputs(command: str, args: argparse.Namespace, flags: Flags, stdin: IO, stderr: IO,
                lock: Path | None = None, trailer: str = "") -> LoadResult | None:
    """Load the INPUTs and print their diagnostics; None (after saying how many errors) when invalid."""
    quiet = bool(getattr(args, "quiet", False))
    result = load(args.inputs, stdin, flags, lock if lock is not None else args.lock,
                  Progress(stderr, False if quiet else None))
    print_diagnostics(result.diagnostics, stderr, quiet)
    if result.cluster is None or not result.ok:
        errors = sum(1 for d in result.diagnostics if d.is_error)
        print(f"kspec {command}: {errors} error{'s' if errors != 1 else ''}{trailer}", file=stderr)
        return None
    return result


def with_proxy_mode(cluster: ResolvedCluster, mode: str | None) -> ResolvedCluster:
    """The cluster with kube-proxy's mode overridden (``--proxy-mode`` of compile and lab)."""
    if not mode:
        return cluster
    return replace(cluster, settings=replace(cluster.settings, proxy=replace(cluster.settings.proxy, mode=mode)))
