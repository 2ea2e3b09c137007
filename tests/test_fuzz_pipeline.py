"""Mutated inputs through the whole pipeline: only clean diagnostics, never an exception."""

from __future__ import annotations

import io
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from kspec.cli import main

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {p.name + ":" + p.parent.name: p.read_text() for p in sorted((ROOT / "examples").glob("*/*"))}

TOKENS = ["", " ", "\n", ":", "- ", "[", "]", "{", "}", ",", "'", '"', "#", "\t", "null", "true", "0", "-1",
          "99999", "1.5", "10.0.0.0/8", "fd00::/64", "x" * 300, "!", "&a", "*a", "kind: Pod", "selector: {}",
          "ports: 80", "ip: 10.244.1.1", "apiVersion: v1", "---", "\x00", "é"]


@st.composite
def mutated(draw):
    name = draw(st.sampled_from(sorted(SOURCES)))
    text = SOURCES[name]
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(text)))
        end = min(len(text), start + draw(st.integers(0, 40)))
        text = text[:start] + draw(st.sampled_from(TOKENS)) + text[end:]
    return name, text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_examples_never_crash(tmp_path_factory, case):
    name, text = case
    suffix = ".kspec" if name.startswith("cluster.kspec") else ".yaml"
    path = tmp_path_factory.mktemp("fuzz") / f"input{suffix}"
    path.write_text(text, encoding="utf-8")
    for command in (["check", str(path)], ["verify", str(path), "--skip", "KS201,KS202,KS203,KS204,KS205"]):
        out, err = io.StringIO(), io.StringIO()
        code = main(command, stdout=out, stderr=err)
        assert code in (0, 1, 2), (code, err.getvalue())
        assert "internal error" not in err.getvalue() and "Traceback" not in err.getvalue(), err.getvalue()
        if code == 2:
            assert ": error:" in err.getvalue()
