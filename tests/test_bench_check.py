"""The benchmark harness: caching, measuring, reporting, exit status."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


bench = _load("bench_check")
PY = sys.executable


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = bench.main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def test_json_report_and_input_cache(tmp_path):
    args = ("--scales", "0.001", "--forms", "kspec,yaml", "--cache", str(tmp_path), "--json",
            "--cmd", f"{PY} -c 'import sys; open(sys.argv[1]).read()' {{input}}")
    code, out, err = _run(*args)
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] is True
    assert [(r["form"], r["exit_code"], r["pods"]) for r in report["results"]] == [("kspec", 0, 150), ("yaml", 0, 150)]
    for result in report["results"]:
        assert Path(result["input"]).stat().st_size == result["input_bytes"] > 0
        assert result["peak_rss_bytes"] > 1_000_000 and result["wall_seconds"] > 0
        assert result["peak_rss_exact"] is False
        assert result["target_met"] is None
    assert err.count("generating") == 2
    code, _, err = _run(*args)
    assert code == 0 and "generating" not in err
    assert len(list(tmp_path.iterdir())) == 4


def test_peak_rss_is_the_runs_own(tmp_path):
    hungry = bench.measure([PY, "-c", "x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096])"], None)
    small = bench.measure(["true"], None)
    assert hungry.exit_code == 0 and hungry.peak_rss_exact and hungry.peak_rss_bytes > 200 * 2**20
    assert not small.peak_rss_exact and small.peak_rss_bytes > 0


def test_failures_and_timeouts_fail_the_run(tmp_path):
    code, out, _ = _run("--scales", "0.001", "--forms", "kspec", "--cache", str(tmp_path),
                        "--cmd", f"{PY} -c 'import sys; sys.exit(\"boom\")'")
    assert code == 1 and "boom" in out
    run = bench.measure(["sleep", "5"], 0.3)
    assert run.timed_out and run.exit_code is None and run.wall_seconds < 3
    missing = bench.measure(["kspec-no-such-command"], None)
    assert missing.exit_code is None and "cannot run" in missing.stderr_tail


def test_placeholders_fill_whole_arguments(tmp_path):
    argv = bench.command_for("kspec compile {input} -o {tmp} --x={form}", Path("/a b/c.yaml"), "/t", 1.0, "yaml")
    assert argv == ["kspec", "compile", "/a b/c.yaml", "-o", "/t", "--x=yaml"]
    code, _, err = _run("--scales", "0.001", "--forms", "kspec", "--cache", str(tmp_path), "--cmd", "x {nope}")
    assert code == 2 and "placeholders" in err


def test_targets_apply_to_the_full_manifest_forms():
    target = bench.Target()
    assert target.applies(1.0, "yaml") and target.applies(1.0, "json")
    assert not target.applies(1.0, "kspec") and not target.applies(0.1, "yaml")
    assert target.describe() == "<20 s, <3 GB"
