"""`kspec verify` reports: exit codes, formats validated against the shipped/shared schemas."""

from __future__ import annotations

import io
import json
from pathlib import Path

import jsonschema
import pytest

from kspec.cli import main
from kspec.reports.json_report import schema as json_report_schema

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "schemas"
BROKEN = str(ROOT / "examples" / "broken" / "cluster.kspec")
GOOD = str(ROOT / "examples" / "explainer" / "cluster.kspec")
LAB = str(ROOT / "examples" / "lab" / "cluster.kspec")


def verify(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["verify", *argv], stdout=out, stderr=err)
    assert "Traceback" not in err.getvalue() and "internal error" not in err.getvalue(), err.getvalue()
    return code, out.getvalue(), err.getvalue()


def shared_schema(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} is not available (../shared/schemas is laid beside the checkout)")
    return path


def test_exit_codes():
    assert verify(GOOD, "--only", "KS101,KS102,KS103,KS104,KS105,KS106,KS107,KS108,KS109,KS110,KS111")[0] == 0
    assert verify(BROKEN, "--skip", "KS201,KS202,KS203,KS204,KS205")[0] == 1
    assert verify("/does/not/exist.kspec")[0] == 2
    assert verify(GOOD, "--only", "KS999")[0] == 2
    assert verify(GOOD, "--rules", "nonsense")[0] == 2


def test_list_prints_the_catalogue():
    code, out, _ = verify("--list")
    assert code == 0
    for invariant in ("KS101", "KS111", "KS201", "KS205"):
        assert invariant in out


def test_text_report_names_objects_with_source_lines_and_witness():
    code, out, _ = verify(BROKEN, "--only", "KS104")
    assert code == 1
    assert "KS104 VIOLATED" in out
    assert "examples/broken/cluster.kspec:14:30:" in out or f"{BROKEN}:14:30:" in out
    assert "cart-1: {node: node-1, ip: 10.244.1.10" in out  # the source line
    assert "witness: address 10.244.1.10" in out
    assert "\x1b[" not in out  # no colour when not a terminal


def test_disable_suppresses_without_failing_and_counts():
    code, out, _ = verify(BROKEN, "--only", "KS104", "--disable", "KS104")
    assert code == 0
    assert "1 suppressed" in out


def test_json_report_validates_against_its_schema():
    code, out, _ = verify(BROKEN, "--format", "json", "--only", "KS104,KS109,KS110")
    report = json.loads(out)
    jsonschema.validate(report, json_report_schema())
    assert code == 1 and report["exitCode"] == 1 and report["status"] == "violated"
    ks109 = next(i for i in report["invariants"] if i["id"] == "KS109")
    assert any("did you mean app=checkout?" in why for f in ks109["findings"] for why in f["why"])


def test_sarif_validates_and_points_at_objects():
    schema = json.loads(shared_schema("sarif-schema-2.1.0.json").read_text())
    code, out, _ = verify(BROKEN, "--format", "sarif", "--skip", "KS201,KS202,KS203,KS204,KS205")
    sarif = json.loads(out)
    jsonschema.Draft4Validator(schema).validate(sarif)
    run = sarif["runs"][0]
    rule_ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert len(rule_ids) == len(set(rule_ids)) and "KS104" in rule_ids
    assert run["results"]
    for result in run["results"]:
        assert result["ruleId"] in rule_ids
        region = result["locations"][0]["physicalLocation"]["region"]
        assert region["startLine"] > 1
        assert not result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].startswith("/")


def test_sarif_carries_suppressions():
    code, out, _ = verify(LAB, "--format", "sarif", "--only", "KS109")
    assert code == 0
    (result,) = json.loads(out)["runs"][0]["results"]
    assert result["suppressions"][0]["kind"] == "inSource"
    assert "nightly job" in result["suppressions"][0]["justification"]


def test_junit_validates_against_the_ant_schema(monkeypatch):
    xmlschema = pytest.importorskip("xmlschema")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    code, out, _ = verify(BROKEN, "--format", "junit", "--skip", "KS201,KS202,KS203,KS204,KS205")
    xmlschema.XMLSchema(str(shared_schema("junit.xsd"))).validate(out)
    assert 'timestamp="2023-11-14T22:13:20"' in out
    assert "KS109 every service IP resolves to a live endpoint: service default/checkout" in out
    assert out.count("<failure") >= 7


def test_reports_are_deterministic(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    for fmt in ("text", "json", "sarif", "junit"):
        first = verify(BROKEN, "--format", fmt, "--skip", "KS201,KS202,KS203,KS204,KS205")[1]
        second = verify(BROKEN, "--format", fmt, "--skip", "KS201,KS202,KS203,KS204,KS205")[1]
        assert first == second, fmt


def test_output_file(tmp_path):
    target = tmp_path / "report.sarif"
    code, out, err = verify(BROKEN, "--format", "sarif", "--output", str(target), "--only", "KS104")
    assert code == 1 and out == "" and json.loads(target.read_text())["version"] == "2.1.0"
