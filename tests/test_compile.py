"""`kspec compile`: layout, determinism, atomicity, lock stability, loadable by the real tools."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kspec.cli import main
from netns_support import throwaway_netns

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FORMS = ("cluster.kspec", "manifests.yaml")


def compile_to(out: Path, *inputs: str, extra: tuple[str, ...] = ()) -> tuple[int, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    code = main(["compile", *inputs, "-o", str(out), *extra], stdout=stdout, stderr=stderr)
    assert "Traceback" not in stderr.getvalue() and "internal error" not in stderr.getvalue()
    return code, stderr.getvalue()


def tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def examples_with_manifests():
    return sorted(p.name for p in EXAMPLES.iterdir() if (p / "manifests.yaml").exists())


@pytest.mark.parametrize("mode", ["iptables", "ipvs"])
@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()))
def test_layout(tmp_path, example, mode):
    out = tmp_path / "out"
    code, err = compile_to(out, str(EXAMPLES / example / "cluster.kspec"), extra=("--proxy-mode", mode))
    assert code == 0, err
    files = tree(out)
    nodes = {p.split("/")[1] for p in files if p.startswith("nodes/")}
    assert nodes
    expected = {"iptables.rules", "routes.batch"} | ({"ipvs.rules", "ipset.rules", "kube-ipvs0.batch"} if mode == "ipvs" else set())
    for node in nodes:
        assert {p.split("/")[2] for p in files if p.startswith(f"nodes/{node}/")} == expected
    assert "endpointslices.yaml" in files and "kspec.lock.json" in files
    assert any(p.startswith("dns/") and p.endswith(".zone") for p in files)
    for path, data in files.items():
        if path.endswith("iptables.rules"):
            text = data.decode()
            assert text.endswith("COMMIT\n") and "*nat\n" in text and "*filter\n" in text
            if mode == "iptables":  # kube-proxy's iptables mode writes filter first; its ipvs mode nat first
                assert text.startswith("*filter\n")


@pytest.mark.parametrize("example", examples_with_manifests())
def test_kspec_and_manifest_forms_compile_identically(tmp_path, example):
    a, b = tmp_path / "a", tmp_path / "b"
    assert compile_to(a, str(EXAMPLES / example / "cluster.kspec"))[0] == 0
    assert compile_to(b, str(EXAMPLES / example / "manifests.yaml"))[0] == 0
    ta, tb = tree(a), tree(b)
    assert sorted(ta) == sorted(tb)
    for path in ta:
        assert ta[path] == tb[path], path


def test_deterministic_across_runs_and_hash_seeds(tmp_path):
    source = str(EXAMPLES / "multi-namespace" / "cluster.kspec")
    outs = []
    for seed in ("0", "1", "4242"):
        out = tmp_path / f"out-{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-m", "kspec.cli", "compile", source, "-o", str(out), "-q"],
                       check=True, env=env, cwd=ROOT)
        outs.append(tree(out))
    assert outs[0] == outs[1] == outs[2]


def test_failed_compile_leaves_the_directory_untouched(tmp_path):
    out = tmp_path / "out"
    assert compile_to(out, str(EXAMPLES / "explainer" / "cluster.kspec"))[0] == 0
    before = tree(out)
    bad = tmp_path / "bad.kspec"
    bad.write_text("nodes:\n  n1: {ip: 10.0.0.300}\n")
    code, err = compile_to(out, str(bad))
    assert code == 2 and "nothing written" in err
    assert tree(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_refuses_to_replace_a_directory_that_is_not_kspec_output(tmp_path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    code, err = compile_to(precious, str(EXAMPLES / "explainer" / "cluster.kspec"))
    assert code == 2 and "not a kspec output directory" in err
    assert (precious / "notes.txt").read_text() == "keep me"


def test_node_filter_and_unknown_node(tmp_path):
    out = tmp_path / "out"
    code, _ = compile_to(out, str(EXAMPLES / "explainer" / "cluster.kspec"), extra=("--node", "node-2"))
    assert code == 0
    assert sorted(p.name for p in (out / "nodes").iterdir()) == ["node-2"]
    code, err = compile_to(tmp_path / "o2", str(EXAMPLES / "explainer" / "cluster.kspec"), extra=("--node", "node-9"))
    assert code == 2 and "unknown node node-9" in err


def test_adding_a_service_moves_no_allocation(tmp_path):
    base = (EXAMPLES / "explainer" / "cluster.kspec").read_text()
    spec = tmp_path / "c.kspec"
    spec.write_text(base)
    out = tmp_path / "out"
    assert compile_to(out, str(spec))[0] == 0
    first = json.loads((out / "kspec.lock.json").read_text())["allocations"]
    spec.write_text(base + "  aaa-first:\n    type: NodePort\n    selector: app = search\n    ports: [80/TCP]\n")
    assert compile_to(out, str(spec))[0] == 0
    second = json.loads((out / "kspec.lock.json").read_text())["allocations"]
    for kind, table in first.items():
        for owner, value in table.items():
            assert second[kind][owner] == value, (kind, owner)
    assert "service/default/aaa-first" in second["clusterIP"]


def test_random_fully_and_nfacct_flags(tmp_path):
    source = str(EXAMPLES / "explainer" / "cluster.kspec")
    compile_to(tmp_path / "a", source)
    compile_to(tmp_path / "b", source, extra=("--no-random-fully", "--nfacct"))
    a = (tmp_path / "a" / "nodes" / "node-1" / "iptables.rules").read_text()
    b = (tmp_path / "b" / "nodes" / "node-1" / "iptables.rules").read_text()
    assert "--random-fully" in a and "--random-fully" not in b
    assert "nfacct" not in a and "nfacct" in b


# --- the real tools, inside throw-away network namespaces ---------------------------

@pytest.fixture
def netns():
    with throwaway_netns("cmp", "iptables-restore") as name:
        yield name


@pytest.mark.netns
@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()))
def test_compiled_iptables_rules_load_with_iptables_restore(tmp_path, netns, example):
    out = tmp_path / "out"
    assert compile_to(out, str(EXAMPLES / example / "cluster.kspec"), extra=("--proxy-mode", "iptables"))[0] == 0
    for rules in sorted(out.glob("nodes/*/iptables.rules")):
        result = subprocess.run(["ip", "netns", "exec", netns, "iptables-restore", "--test"],
                                input=rules.read_text(), capture_output=True, text=True)
        assert result.returncode == 0, (rules, result.stderr)


@pytest.mark.netns
@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()))
def test_compiled_ipvs_mode_ipsets_and_rules_load(tmp_path, example):
    out = tmp_path / "out"
    assert compile_to(out, str(EXAMPLES / example / "cluster.kspec"), extra=("--proxy-mode", "ipvs"))[0] == 0
    for node_dir in sorted((out / "nodes").iterdir()):
        with throwaway_netns("ipvs", "ipset", "iptables-restore") as name:
            loaded = subprocess.run(["ip", "netns", "exec", name, "ipset", "restore"],
                                    input=(node_dir / "ipset.rules").read_text(), capture_output=True, text=True)
            assert loaded.returncode == 0, loaded.stderr
            saved = subprocess.run(["ip", "netns", "exec", name, "ipset", "list", "-n"], capture_output=True, text=True)
            assert "KUBE-CLUSTER-IP" in saved.stdout
            tested = subprocess.run(["ip", "netns", "exec", name, "iptables-restore", "--test"],
                                    input=(node_dir / "iptables.rules").read_text(), capture_output=True, text=True)
            assert tested.returncode == 0, tested.stderr
