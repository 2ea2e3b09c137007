"""`kspec verify` runs KS2xx over every node's compiled rules, or over a --rules dump."""

from __future__ import annotations

import io
from pathlib import Path

from kspec.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXPLAINER = str(ROOT / "examples" / "explainer" / "cluster.kspec")


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    assert "Traceback" not in err.getvalue() and "internal error" not in err.getvalue(), err.getvalue()
    return code, out.getvalue(), err.getvalue()


def test_examples_prove_every_packet_invariant_on_every_node():
    for example in ("explainer", "lab"):
        code, out, _ = run("verify", str(ROOT / "examples" / example / "cluster.kspec"))
        assert code == 0, out
        assert "on 4 node(s)" in out
        for invariant in ("KS201", "KS202", "KS203", "KS204", "KS205"):
            assert f"{invariant} PROVED" in out


def test_a_dropped_sep_jump_in_a_dump_is_named_by_file_and_line(tmp_path):
    out_dir = tmp_path / "out"
    assert run("compile", EXPLAINER, "-o", str(out_dir), "-q")[0] == 0
    lines = (out_dir / "nodes" / "node-1" / "iptables.rules").read_text().splitlines(keepends=True)
    victim = next(i for i, line in enumerate(lines)
                  if line.startswith("-A KUBE-SVC-") and "-j KUBE-SEP-" in line and "statistic" not in line)
    dump = tmp_path / "node-1.rules"
    dump.write_text("".join(lines[:victim] + lines[victim + 1:]))
    code, out, _ = run("verify", EXPLAINER, "--rules", f"node-1={dump}", "--only", "KS202")
    assert code == 1
    assert "KS202 VIOLATED" in out and "can never be chosen" in out
    assert f"line {victim}" in out  # the rule before the removed one is named by its line in the dump
    assert "on 1 node(s)" in out


def test_a_malformed_dump_is_an_input_error(tmp_path):
    dump = tmp_path / "bad.rules"
    dump.write_text("*nat\n-A KUBE-SERVICES -j\nCOMMIT\n")
    code, _, err = run("verify", EXPLAINER, "--rules", f"node-1={dump}", "--only", "KS205")
    assert code == 2 and f"{dump}:2:" in err


def test_unknown_node_and_missing_dump_are_input_errors(tmp_path):
    assert run("verify", EXPLAINER, "--node", "node-9")[0] == 2
    code, _, err = run("verify", EXPLAINER, "--rules", f"node-1={tmp_path / 'missing'}", "--only", "KS205")
    assert code == 2 and "cannot read the rule dump" in err


MULTI = str(ROOT / "examples" / "multi-namespace" / "cluster.kspec")


def test_ipvs_mode_packet_invariants_are_proved():
    code, out, _ = run("verify", MULTI)
    assert code == 0, out
    assert "on 3 node(s)" in out
    for invariant in ("KS201", "KS202", "KS203", "KS204", "KS205"):
        assert f"{invariant} PROVED" in out


def test_ipvs_dumps_are_given_by_kind_and_a_fault_is_named_by_file_and_line(tmp_path):
    out_dir = tmp_path / "out"
    assert run("compile", MULTI, "-o", str(out_dir), "-q")[0] == 0
    node = out_dir / "nodes" / "worker-a"
    lines = (node / "ipvs.rules").read_text().splitlines(keepends=True)
    victim = next(i for i, line in enumerate(lines) if line.startswith("-A -t 10.") and " -p " in line)
    lines[victim] = lines[victim].split(" -p ")[0] + "\n"  # sessionAffinity ClientIP without persistence
    dump = tmp_path / "ipvsadm.save"
    dump.write_text("".join(lines))
    code, out, err = run("verify", MULTI, "--rules", f"worker-a={node / 'iptables.rules'}", "--rules",
                         f"worker-a:ipvs={dump}", "--rules", f"worker-a:ipset={node / 'ipset.rules'}",
                         "--only", "KS202,KS205")
    assert code == 1, out + err
    assert "KS205 VIOLATED" in out and "KS202 PROVED" in out and "on 1 node(s)" in out
    assert f"{dump}:{victim + 1}" in out and "not persistent" in out


def test_ipvs_dump_kinds_are_checked_on_the_command_line(tmp_path):
    dump = tmp_path / "ipvsadm.save"
    dump.write_text("-A -t 10.96.0.10:53 -s rr\n")
    assert run("verify", MULTI, "--rules", f"worker-a:nft={dump}")[0] == 2
    assert run("verify", MULTI, "--rules", f"worker-a:ipvs={dump}", "--rules", f"worker-a:ipvs={dump}")[0] == 2
    code, _, err = run("verify", EXPLAINER, "--rules", f"node-1:ipvs={dump}")
    assert code == 2 and "kube-proxy mode is iptables" in err
    code, _, err = run("verify", MULTI, "--rules", f"worker-a:ipset={tmp_path / 'missing'}", "--only", "KS205")
    assert code == 2 and "cannot read the rule dump" in err and "ipset save" in err


def test_timeout_gives_exit_3_and_a_larger_one_decides(tmp_path):
    out_dir = tmp_path / "out"
    assert run("compile", EXPLAINER, "-o", str(out_dir), "-q")[0] == 0
    text = (out_dir / "nodes" / "node-1" / "iptables.rules").read_text()
    dump = tmp_path / "node-1.rules"
    dump.write_text(text.replace("-A POSTROUTING -m comment",
                                 "-A POSTROUTING -s 10.244.0.0/16 -d 10.244.2.0/25 -j MASQUERADE\n"
                                 "-A POSTROUTING -m comment", 1))
    code, out, _ = run("verify", EXPLAINER, "--rules", f"node-1={dump}", "--only", "KS201", "--timeout", "0.00001")
    assert code == 3 and "KS201 UNKNOWN" in out and "raise --timeout" in out
    code, out, _ = run("verify", EXPLAINER, "--rules", f"node-1={dump}", "--only", "KS201")
    assert code == 1 and "KS201 VIOLATED" in out and "MASQUERADE" in out
