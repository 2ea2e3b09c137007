"""The compiled lab cluster in the real kernel: real TCP through kspec's own rule files.

examples/lab/cluster.kspec (addresses in 198.18.0.0/15 only) is compiled,
built as network namespaces (a switch, four nodes with cbr0 bridges and
host-gw routes, five pods, one outside client), each node's iptables.rules
and routes.batch loaded, and then probed with real connections.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from pathlib import Path

import pytest

from kspec.cli import main
from kspec.frontend.assemble import Flags
from kspec.lab import LabCluster, LabUnavailable, check_environment, new_prefix, plan
from kspec.pipeline import load

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "examples" / "lab" / "cluster.kspec"
OUTSIDE = "198.18.0.100"
SEARCH = {"default/search-1", "default/search-2", "default/search-3"}

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    try:
        check_environment()
    except LabUnavailable as exc:
        pytest.skip(str(exc))
    out = tmp_path_factory.mktemp("lab") / "out"
    assert main(["compile", str(LAB), "-o", str(out), "-q"], stdout=io.StringIO(), stderr=io.StringIO()) == 0
    cluster = load([str(LAB)], None, Flags()).cluster
    with LabCluster(plan(cluster, new_prefix("cmp"), outside_ip=OUTSIDE), rules_dir=out) as running:
        for name in ("search-1", "search-2", "search-3"):
            running.start_responder(f"pod/default/{name}", 8080)
        running.start_responder("pod/default/frontend", 80)
        yield running


def test_pod_to_pod_keeps_the_source_address(lab):
    result = lab.connect("pod/default/batch", "198.19.2.10", 8080)
    assert result.ok and result.responder_name == "default/search-2"
    assert result.seen_source == "198.19.1.20"


def test_pod_to_cluster_ip_reaches_only_endpoints_and_spreads(lab):
    seen = Counter()
    for _ in range(24):
        result = lab.connect("pod/default/batch", "198.18.128.10", 80)
        assert result.ok, result.detail
        seen[result.responder_name] += 1
        assert result.seen_source == "198.19.1.20"  # no SNAT for pod -> service
    assert set(seen) <= SEARCH and len(seen) >= 2, seen


def test_node_to_cluster_ip_reaches_only_endpoints(lab):
    names = {lab.connect("node/node-4", "198.18.128.10", 80).responder_name for _ in range(12)}
    assert names <= SEARCH and len(names) >= 2


def test_outside_to_node_port_reaches_an_endpoint(lab):
    for node_ip in ("198.18.0.11", "198.18.0.14"):
        result = lab.connect("outside", node_ip, 30080)
        assert result.ok and result.responder_name in SEARCH


def test_external_traffic_policy_local_keeps_the_client_ip_and_drops_elsewhere(lab):
    local = lab.connect("outside", "198.18.0.14", 30081)
    assert local.ok and local.responder_name == "default/frontend" and local.seen_source == OUTSIDE
    remote = lab.connect("outside", "198.18.0.11", 30081, timeout=1)
    assert remote.timeout  # node-1 has no local endpoint: kube-proxy drops


def test_service_without_endpoints_is_refused_at_once(lab):
    start = time.monotonic()
    result = lab.connect("pod/default/batch", "198.18.128.13", 80, timeout=3)
    assert result.refused
    assert time.monotonic() - start < 2.5
