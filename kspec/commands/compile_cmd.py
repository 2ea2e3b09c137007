"""`kspec compile`: write every rule file, atomically.

Files are written into a fresh temporary directory beside DIR and swapped
in by rename, so a failed compile leaves DIR exactly as it was.  A DIR that
exists but is not kspec output is never replaced.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

from kspec.commands.common import load_inputs, with_proxy_mode
from kspec.compile import compile_cluster
from kspec.diagnostics import InputError, render
from kspec.frontend.assemble import Flags

EPILOG = """examples:
  kspec compile examples/explainer/cluster.kspec -o out/
  kspec compile k8s/ -o out/ --node node-1 --proxy-mode ipvs
  iptables-restore --test < out/nodes/node-1/iptables.rules

exit codes: 0 files written, 2 input or command-line error (DIR untouched)
"""

MARKER = "kspec.lock.json"


def _looks_like_output(directory: Path) -> bool:
    return not any(directory.iterdir()) or (directory / MARKER).is_file()


def write_atomically(target: Path, files: list[tuple[str, str]]) -> None:
    """Write ``files`` into a new directory and swap it in place of ``target``."""
    parent = target.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.kspec-", dir=parent))
    try:
        for relative, text in files:
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8", newline="\n") as handle:
                handle.write(text)
        os.chmod(staging, 0o755)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
            old.rmdir()
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1e3:.1f} kB"


def run(args: argparse.Namespace, flags: Flags, stdin: IO, stdout: IO, stderr: IO) -> int:
    target = Path(args.output)
    if target.exists() and (not target.is_dir() or not _looks_like_output(target)):
        print(f"kspec compile: error: {target} exists and is not a kspec output directory (no {MARKER})\n"
              "  hint: choose a new or empty directory; kspec replaces its output directory as a whole", file=stderr)
        return 2
    lock = args.lock if args.lock is not None else target / MARKER
    result = load_inputs("compile", args, flags, stdin, stderr, lock, "; nothing written")
    if result is None:
        return 2
    cluster = with_proxy_mode(result.cluster, args.proxy_mode)
    unknown = sorted(set(args.node or ()) - {n.name for n in cluster.nodes})
    if unknown:
        print(f"kspec compile: error: unknown node {', '.join(unknown)}\n  hint: the nodes are "
              + ", ".join(n.name for n in cluster.nodes[:10]) + (" ..." if len(cluster.nodes) > 10 else ""), file=stderr)
        return 2
    try:
        files = list(compile_cluster(cluster, args.node or ()))
    except InputError as exc:
        for diagnostic in exc.diagnostics:
            print(render(diagnostic), file=stderr)
        print("kspec compile: nothing written", file=stderr)
        return 2
    write_atomically(target, files)
    if not args.quiet:
        nodes = len({p.split("/")[1] for p, _ in files if p.startswith("nodes/")})
        size = sum(len(t) for _, t in files)
        print(f"kspec compile: wrote {len(files)} files for {nodes} node{'s' if nodes != 1 else ''} "
              f"({cluster.settings.proxy.mode} mode, {_size(size)}) to {target}", file=stdout)
    return 0
