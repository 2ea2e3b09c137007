"""Benchmark a kspec command on generated clusters: wall time and peak memory.

For each (scale, form) the input is generated once by gen_cluster.py into a
cache directory (keyed by the generator's own hash, so an edited generator
never reuses stale files), then the command runs in a subprocess. The peak
resident set size is the child's own ``ru_maxrss`` from ``os.wait4``: that one
run's, whatever ran before it (RUSAGE_CHILDREN would report the maximum over
every earlier child too), and exact above the harness's own ~25 MB (shown as
``<=`` below it).

    python bench/bench_check.py --scales 0.01,0.1 --forms kspec,yaml
    python bench/bench_check.py --cmd "kspec compile {input} -o {tmp}" --json

Placeholders in --cmd: {input} (the generated file), {tmp} (a fresh empty
directory, deleted afterwards), {scale}, {form}. Exit status: 0 when every run
exited 0 and met its target, 1 otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

HERE = Path(__file__).resolve().parent
GENERATOR = HERE / "gen_cluster.py"
DEFAULT_CACHE = HERE / ".cache"
DEFAULT_CMD = "kspec check {input}"
EXTENSIONS = {"kspec": "kspec", "yaml": "yaml", "json": "json"}


@dataclass(frozen=True, slots=True)
class Target:
    """The issue's goal: the full-size manifest dump checked in under 20 s and 3 GB."""

    scale: float = 1.0
    forms: tuple[str, ...] = ("yaml", "json")
    seconds: float = 20.0
    rss_bytes: int = 3_000_000_000

    def applies(self, scale: float, form: str) -> bool:
        return scale == self.scale and form in self.forms

    def describe(self) -> str:
        return f"<{self.seconds:g} s, <{self.rss_bytes / 1e9:g} GB"


@dataclass(frozen=True, slots=True)
class Input:
    path: Path
    bytes: int
    generate_seconds: float
    generated_now: bool


@dataclass(frozen=True, slots=True)
class Result:
    scale: float
    form: str
    nodes: int
    pods: int
    services: int
    input: str
    input_bytes: int
    generate_seconds: float
    command: list[str]
    exit_code: int | None
    timed_out: bool
    wall_seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    peak_rss_exact: bool
    target: str | None
    target_met: bool | None
    stderr_tail: str


def _generator_hash() -> str:
    return hashlib.sha256(GENERATOR.read_bytes()).hexdigest()[:12]


def _generator():
    """bench/ is not a package: load gen_cluster.py by path (once)."""
    if "gen_cluster" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gen_cluster", GENERATOR)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gen_cluster"] = module
        spec.loader.exec_module(module)
    return sys.modules["gen_cluster"]


def ensure_input(cache: Path, scale: float, form: str, seed: int, log: TextIO) -> Input:
    """The cached input for (scale, form, seed), generated in a subprocess when missing."""
    cache.mkdir(parents=True, exist_ok=True)
    stem = f"cluster-s{scale!r}-seed{seed}"
    path = cache / f"{stem}-{_generator_hash()}.{EXTENSIONS[form]}"
    meta = path.with_name(path.name + ".meta.json")
    if path.exists() and meta.exists():
        return Input(path, path.stat().st_size, json.loads(meta.read_text())["generate_seconds"], False)
    ours = re.compile(re.escape(stem) + r"-[0-9a-f]{12}\." + EXTENSIONS[form] + r"(\.meta\.json|\.tmp[0-9]+)?\Z")
    for stale in cache.iterdir():
        if ours.match(stale.name) and not stale.name.startswith(path.name):
            stale.unlink()
    print(f"generating scale {scale} {form} -> {path}", file=log, flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(GENERATOR), "--scale", repr(scale), "--form", form, "--seed", str(seed),
                    "--out", str(path)], check=True)
    seconds = time.perf_counter() - start
    meta.write_text(json.dumps({"generate_seconds": round(seconds, 3), "bytes": path.stat().st_size}) + "\n")
    return Input(path, path.stat().st_size, seconds, True)


@dataclass(frozen=True, slots=True)
class Run:
    exit_code: int | None
    timed_out: bool
    wall_seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    peak_rss_exact: bool
    stderr_tail: str


def measure(argv: list[str], timeout: float | None) -> Run:
    """Run ``argv`` once; wall time, CPU time and peak RSS of that child alone.

    A spawned child inherits the harness's own high-water mark as the floor
    of its ``ru_maxrss`` (the kernel carries it across exec), so a peak at or
    below that floor is only an upper bound: ``peak_rss_exact`` says which.
    """
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    timed_out = threading.Event()
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        try:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                       start_new_session=True)
        except OSError as exc:
            return Run(None, False, 0.0, 0.0, 0, False, f"cannot run {argv[0]}: {exc}")

        def kill() -> None:
            timed_out.set()
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill) if timeout else None
        if timer:
            timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            kill()
            process.wait()
            raise
        finally:
            if timer:
                timer.cancel()
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        tail = stderr.read()[-2000:].decode("utf-8", "replace")
    peak = usage.ru_maxrss * 1024
    return Run(None if timed_out.is_set() else process.returncode, timed_out.is_set(), wall,
               usage.ru_utime + usage.ru_stime, peak, peak > floor, tail)


def command_for(template: str, input_path: Path, tmp: str, scale: float, form: str) -> list[str]:
    """Split the template like a shell would, then fill the placeholders (paths stay one argument)."""
    values = {"input": str(input_path), "tmp": tmp, "scale": repr(scale), "form": form}
    try:
        return [part.format(**values) for part in shlex.split(template)]
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"bad --cmd {template!r}: {exc!r} (placeholders: {{input}} {{tmp}} {{scale}} {{form}})")


def bench(scales: list[float], forms: list[str], template: str, cache: Path, seed: int, timeout: float | None,
          target: Target, log: TextIO) -> list[Result]:
    results = []
    generator = _generator()
    for scale in scales:
        for form in forms:
            source = ensure_input(cache, scale, form, seed, log)
            tmp = tempfile.mkdtemp(prefix="kspec-bench-")
            try:
                argv = command_for(template, source.path, tmp, scale, form)
                print(f"running {shlex.join(argv)}", file=log, flush=True)
                run = measure(argv, timeout)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            applies = target.applies(scale, form)
            met = (run.exit_code == 0 and run.wall_seconds < target.seconds
                   and run.peak_rss_bytes < target.rss_bytes) if applies else None
            counts = generator.counts(scale)
            results.append(Result(scale, form, counts.nodes, counts.pods, counts.services, str(source.path), source.bytes,
                                  round(source.generate_seconds, 3), argv, run.exit_code, run.timed_out,
                                  round(run.wall_seconds, 3), round(run.cpu_seconds, 3), run.peak_rss_bytes, run.peak_rss_exact,
                                  target.describe() if applies else None, met, run.stderr_tail))
    return results


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def table(results: list[Result]) -> str:
    """A fixed-width text table, one row per (scale, form)."""
    header = ("scale", "form", "nodes", "pods", "services", "input", "gen s", "exit", "wall s", "cpu s",
              "peak RSS", "target", "met")
    rows = [header]
    for r in results:
        status = "timeout" if r.timed_out else "-" if r.exit_code is None else str(r.exit_code)
        met = "-" if r.target_met is None else "yes" if r.target_met else "NO"
        rows.append((f"{r.scale:g}", r.form, str(r.nodes), str(r.pods), str(r.services), _size(r.input_bytes),
                     f"{r.generate_seconds:.2f}", status, f"{r.wall_seconds:.2f}", f"{r.cpu_seconds:.2f}",
                     ("" if r.peak_rss_exact else "<=") + _size(r.peak_rss_bytes), r.target or "-", met))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    failures = [r for r in results if r.exit_code != 0]
    for r in failures:
        tail = r.stderr_tail.strip().splitlines()[-3:]
        lines.append(f"scale {r.scale:g} {r.form}: exit {r.exit_code}{' (timeout)' if r.timed_out else ''}"
                     + "".join(f"\n    {line}" for line in tail))
    return "\n".join(lines) + "\n"


def _floats(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, not {text!r}")
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("scales must be positive")
    return values


def _forms(text: str) -> list[str]:
    forms = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [f for f in forms if f not in EXTENSIONS]
    if unknown or not forms:
        raise argparse.ArgumentTypeError(f"unknown form(s) {unknown}: expected some of {', '.join(EXTENSIONS)}")
    return forms


def main(argv: list[str] | None = None, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=_floats, default=[0.01, 0.1, 1.0], help="default 0.01,0.1,1.0")
    parser.add_argument("--forms", type=_forms, default=list(EXTENSIONS), help="default kspec,yaml,json")
    parser.add_argument("--cmd", default=DEFAULT_CMD, help=f"command template (default {DEFAULT_CMD!r})")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="generated inputs (default bench/.cache)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run before it is killed (0: none)")
    default = Target()
    parser.add_argument("--target-seconds", type=float, default=default.seconds,
                        help=f"wall-time target at scale {default.scale:g} in {'/'.join(default.forms)} form")
    parser.add_argument("--target-gb", type=float, default=default.rss_bytes / 1e9,
                        help="peak-RSS target in GB (1e9 bytes)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    target = Target(seconds=args.target_seconds, rss_bytes=int(args.target_gb * 1e9))
    try:
        results = bench(args.scales, args.forms, args.cmd, args.cache, args.seed, args.timeout or None, target, stderr)
    except ValueError as exc:
        print(f"bench_check: {exc}", file=stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"bench_check: generating the input failed: {exc}", file=stderr)
        return 2
    ok = all(r.exit_code == 0 and r.target_met is not False for r in results)
    if args.json:
        report = {"command": args.cmd, "seed": args.seed,
                  "target": {"scale": target.scale, "forms": list(target.forms), "seconds": target.seconds,
                             "peak_rss_bytes": target.rss_bytes},
                  "ok": ok, "results": [asdict(r) for r in results]}
        stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        stdout.write(table(results))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
