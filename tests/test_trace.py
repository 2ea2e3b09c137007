"""`kspec trace`: one packet through the compiled rules (or a dump), explained with the verifier's own walk."""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from pathlib import Path

import pytest

from kspec import cli
from kspec.commands import trace_cmd
from kspec.commands.trace_cmd import result_data
from kspec.compile import compile_cluster
from kspec.frontend.assemble import Flags
from kspec.lab import command as lab_command, expect as lab_expect
from kspec.pipeline import load
from kspec.trace import TraceError, classify, trace
from kspec.verify.packet_invariants import check_node
from kspec.verify.result import VIOLATED
from netns_support import netns_skip_reason

ROOT = Path(__file__).resolve().parent.parent
EXPLAINER = ROOT / "examples" / "explainer" / "cluster.kspec"
LAB = ROOT / "examples" / "lab" / "cluster.kspec"
SHOP = ROOT / "examples" / "multi-namespace" / "cluster.kspec"
JSON_KEYS = {"source", "destination", "node", "mode", "packet", "files", "steps", "verdict", "delivered", "result",
             "nat", "balancing", "endpoints", "route", "reply", "notes", "exitCode"}
STEP_KEYS = {"node", "file", "phase", "table", "hook", "chain", "line", "rule", "action"}

_CLUSTERS: dict[Path, object] = {}
_FILES: dict[Path, dict[str, str]] = {}


def cluster_of(path: Path):
    if path not in _CLUSTERS:
        _CLUSTERS[path] = load([str(path)], None, Flags()).cluster
    return _CLUSTERS[path]


def compiled(path: Path) -> dict[str, str]:
    if path not in _FILES:
        _FILES[path] = dict(compile_cluster(cluster_of(path)))
    return _FILES[path]


def run(*argv: str) -> tuple[int, str, str]:
    """``kspec trace ARGV`` in-process, through the command's own parser and the CLI's conventions."""
    parser = cli._Parser(prog="kspec")
    trace_cmd.add_parser(parser.add_subparsers(dest="command", parser_class=cli._Parser))
    out, err = io.StringIO(), io.StringIO()
    try:
        args = parser.parse_args(["trace", *argv])
    except cli.UsageError as exc:
        return 2, "", str(exc)
    code = args.run(args, cli.flags_from(args), io.StringIO(), out, err)
    assert "Traceback" not in err.getvalue() and "internal error" not in err.getvalue()
    return code, out.getvalue(), err.getvalue()


def search_pods(cluster) -> dict[str, str]:
    return {str(p.ips[0]): f"{p.namespace}/{p.name}" for p in cluster.pods if p.labels.get("app") == "search"}


# --- iptables mode -------------------------------------------------------------------------------


@pytest.mark.parametrize("example, source", [(EXPLAINER, "pod/default/frontend"), (LAB, "pod/default/frontend")],
                         ids=["explainer", "lab"])
def test_pod_to_service_walks_services_chain_to_an_endpoint(example, source):
    cluster = cluster_of(example)
    result = trace(cluster, source, "svc/default/search:80")
    file_lines = compiled(example)[result.files["iptables"]].split("\n")
    first = result.hops[0]
    assert first.node == "node-4" and first.file == "nodes/node-4/iptables.rules"
    for step in first.trace.steps:  # every step names the very line of the file kspec compile writes
        assert file_lines[step.line - 1] == step.text
    chain_path = [s.chain for s in first.trace.steps if s.table == "nat" and s.hook == "PREROUTING"]
    assert chain_path[:2] == ["PREROUTING", "KUBE-SERVICES"]
    assert chain_path[2].startswith("KUBE-SVC-") and chain_path[3].startswith("KUBE-SEP-")
    pods = search_pods(cluster)
    assert [e.pod for e in result.endpoints] == [pods[e.ip] for e in result.endpoints]
    assert {e.ip for e in result.endpoints} == set(pods) and len(result.endpoints) == 3
    assert all(round(e.probability * 100, 1) == 33.3 for e in result.endpoints)
    assert abs(sum(e.probability for e in result.endpoints) - 1.0) < 1e-6
    chosen = [e for e in result.endpoints if e.chosen]
    assert chosen == [result.endpoints[0]]  # the first endpoint of the chain is traced
    assert result.dnat.after == chosen[0].address and result.dnat.before.endswith(":80")
    assert file_lines[result.dnat.line - 1].endswith(f"--to-destination {chosen[0].address}")
    assert result.snat is None and result.verdict == "ACCEPT" and result.delivered
    assert result.reply.received.src == result.destination.ip and result.reply.sent.src == chosen[0].ip
    code, text, _ = run(str(example), "--from", source, "--to", "svc/default/search:80")
    assert code == 0
    assert "33.3%" in text and "total 100.0%" in text and "no SNAT" in text
    dnat_step = next(s for s in first.trace.steps if s.action.startswith("DNAT"))
    assert f"line {dnat_step.line}" in text and dnat_step.text in text


def test_endpoint_option_traces_the_chosen_endpoint():
    cluster = cluster_of(LAB)
    for address in ("198.19.1.10:8080", "198.19.2.10:8080", "198.19.3.10:8080"):
        result = trace(cluster, "pod/default/frontend", "svc/default/search:http", endpoint=address)
        assert result.dnat.after == address and [e.address for e in result.endpoints if e.chosen] == [address]
        assert result.outcome.startswith("delivered to pod default/search-")
    with pytest.raises(TraceError) as info:
        trace(cluster, "pod/default/frontend", "svc/default/search:http", endpoint="198.19.9.9:80")
    assert "198.19.1.10:8080" in info.value.hint


def test_pod_to_pod_same_and_other_node_keeps_addresses():
    cluster = cluster_of(LAB)
    same = trace(cluster, "pod/default/batch", "pod/default/search-1:8080")
    assert same.dnat is None and same.snat is None and same.delivered
    assert [(r.node, r.next) for r in same.routes] == [("node-1", "pod default/search-1")]
    assert "dev cbr0" in same.routes[0].route and same.reply.sent == same.reply.received
    other = trace(cluster, "pod/default/batch", "pod/default/search-2:http")
    assert other.dnat is None and other.snat is None and other.delivered
    assert [(r.node, r.next) for r in other.routes] == [("node-1", "node node-2"), ("node-2", "pod default/search-2")]
    assert "via 198.18.0.12" in other.routes[0].route
    assert other.routes[0].line == compiled(LAB)["nodes/node-1/routes.batch"].split("\n").index(
        "route replace 198.19.2.0/24 via 198.18.0.12 proto static") + 1
    assert [h.node for h in other.hops] == ["node-1", "node-2"] and other.hops[1].phase == "destination"


def test_outside_to_node_ports_agree_with_the_lab_expectations():
    """Cluster: masqueraded to an endpoint anywhere; Local: the client address kept, dropped where none runs."""
    cluster = cluster_of(LAB)
    lab = lab_command.lab_plan(cluster, "ks-trace-")
    outside = str(lab.outside.ip.ip)
    checks = [c for c in lab_expect.expectations(cluster, lab).checks if c.kind == "node-port"]
    assert checks
    for check in checks:
        result = trace(cluster, outside, f"{check.ip}:{check.port}/{check.proto}")
        expected = check.expected
        where = f"{check.target} on {check.ip}"
        if expected.outcome == "ok":
            assert result.delivered, where
            assert {e.pod for e in result.endpoints} == set(expected.responders), where
            assert (result.snat is None) == (expected.source == outside), where
        else:
            assert result.verdict == {"refused": "REJECT", "timeout": "DROP"}[expected.outcome], where
            assert result.exit_code == 1
    local = trace(cluster, outside, "198.18.0.14:30081")
    assert local.snat is None and local.dnat.after == "198.19.4.10:80" and local.reply.sent.dst == outside
    masq = trace(cluster, outside, "198.18.0.11:30080")
    assert masq.snat.action == "MASQUERADE" and masq.reply.received.dst == outside
    dropped = trace(cluster, outside, "198.18.0.11:30081")
    assert dropped.verdict == "DROP" and "has no local endpoints" in dropped.outcome


def test_every_lab_check_is_what_the_trace_says():
    """The lab's expectations (what `kspec lab probe` compares with real connections) for every client."""
    cluster = cluster_of(LAB)
    lab = lab_command.lab_plan(cluster, "ks-trace-")
    outside = str(lab.outside.ip.ip)
    for check in lab_expect.expectations(cluster, lab).checks:
        source = outside if check.client == "outside" else check.client
        result = trace(cluster, source, f"{check.ip}:{check.port}/{check.proto}")
        expected = check.expected
        where = f"{check.client} -> {check.to}"
        if expected.outcome != "ok":
            assert result.verdict == {"refused": "REJECT", "timeout": "DROP"}[expected.outcome], where
            continue
        assert result.delivered, where
        reached = {e.pod for e in result.endpoints} or {result.routes[-1].next.removeprefix("pod ")}
        assert reached == set(expected.responders), where
        if expected.source is not None:
            assert result.snat is None, where


def test_service_without_endpoints_is_rejected_with_the_rule_line():
    code, text, _ = run(str(LAB), "--from", "pod/default/batch", "--to", "svc/default/reports:http")
    assert code == 1
    line = compiled(LAB)["nodes/node-1/iptables.rules"].split("\n").index(
        next(x for x in compiled(LAB)["nodes/node-1/iptables.rules"].split("\n") if "reports:http has no endpoints"
             in x)) + 1
    assert (f"result: REJECT (icmp-port-unreachable) at filter KUBE-SERVICES, nodes/node-1/iptables.rules line "
            f"{line}: default/reports:http has no endpoints") in text


def test_json_output_has_the_documented_keys():
    code, text, _ = run(str(EXPLAINER), "--from", "pod/default/frontend", "--to", "svc/default/search:http",
                        "--format", "json")
    data = json.loads(text)
    assert code == 0 and set(data) == JSON_KEYS and data["exitCode"] == 0
    assert data["steps"] and all(set(s) == STEP_KEYS for s in data["steps"])
    assert data["nat"]["dnat"]["by"] == "iptables" and data["nat"]["snat"] is None
    assert data["balancing"]["method"] == "statistic"
    assert {round(e["probability"], 3) for e in data["endpoints"]} == {0.333}
    assert [e["chosen"] for e in data["endpoints"]] == [True, False, False]
    assert data["route"][-1]["next"].startswith("pod default/search-")
    assert set(data["reply"]) == {"sent", "received", "node", "text"}
    code, text, _ = run(str(LAB), "--from", "pod/default/batch", "--to", "svc/default/reports:http",
                        "--format", "json")
    data = json.loads(text)
    assert code == 1 and data["verdict"] == "REJECT" and data["delivered"] is False and data["endpoints"] == []


def test_trace_shows_what_verify_finds_in_a_broken_dump(tmp_path):
    """A dump whose DNAT goes to the wrong port: verify reports KS202 at that line, trace walks into it."""
    cluster = cluster_of(LAB)
    text = compiled(LAB)["nodes/node-1/iptables.rules"]
    bad = text.replace("--to-destination 198.19.2.10:8080", "--to-destination 198.19.2.10:8081", 1)
    dump = tmp_path / "node-1.rules"
    dump.write_text(bad)
    node = cluster.nodes_by_name["node-1"]
    (ks202,) = check_node(cluster, node, bad, str(dump), None, None, ["KS202"], 10.0)
    assert ks202.status == VIOLATED
    result = trace(cluster, "pod/default/batch", "svc/default/search:http", rules={"node-1": {"iptables": (
        str(dump), bad)}})
    assert "198.19.2.10:8081" in {e.address for e in result.endpoints}
    assert result.files["iptables"] == str(dump) and result.files["routes"] == "nodes/node-1/routes.batch"


def test_rules_from_a_compile_directory_match_the_spec(tmp_path):
    out = tmp_path / "out"
    assert cli.main(["compile", str(SHOP), "-o", str(out), "-q"], stdout=io.StringIO(), stderr=io.StringIO()) == 0
    node_dir = out / "nodes" / "worker-b"
    code, text, _ = run(str(SHOP), "--from", f"pod/{_canary(SHOP)}", "--to", "svc/shop/web:http", "--rules",
                        f"worker-b={node_dir}", "--format", "json")
    data = json.loads(text)
    assert code == 0 and data["files"] == {"iptables": str(node_dir / "iptables.rules"),
                                           "routes": str(node_dir / "routes.batch"),
                                           "ipvs": str(node_dir / "ipvs.rules"), "ipset": str(node_dir / "ipset.rules")}
    spec = result_data(trace(cluster_of(SHOP), f"pod/{_canary(SHOP)}", "svc/shop/web:http"))
    assert data["endpoints"] == spec["endpoints"] and data["nat"]["dnat"]["to"] == spec["nat"]["dnat"]["to"]
    assert [s["line"] for s in data["steps"]] == [s["line"] for s in spec["steps"]]


# --- IPVS mode -----------------------------------------------------------------------------------


def _canary(example: Path) -> str:
    return next(f"{p.namespace}/{p.name}" for p in cluster_of(example).pods if p.name.startswith("web-canary"))


def test_ipvs_virtual_server_real_servers_and_set_matches():
    cluster = cluster_of(SHOP)
    svc = cluster.services_by_key[("shop", "web")]
    result = trace(cluster, f"pod/{_canary(SHOP)}", "svc/shop/web:http")
    ipvs_text = compiled(SHOP)[f"nodes/{result.node}/ipvs.rules"].split("\n")
    b = result.balancing
    assert result.mode == "ipvs" and b.method == "ipvs" and b.scheduler == "rr"
    assert b.virtual_server == f"{svc.cluster_ips[0]}:80"
    assert ipvs_text[b.line - 1].startswith(f"-A -t {b.virtual_server}")
    assert "persistent for 600 s" in b.affinity
    backends = {f"{x.ip}:{x.port}" for pe in cluster.endpoints[svc.key].ports for x in pe.backends}
    assert {e.address for e in result.endpoints} == backends and all(e.weight == 1 for e in result.endpoints)
    assert [e.chosen for e in result.endpoints].count(True) == 1
    assert result.dnat.action == "IPVS" and ipvs_text[result.dnat.line - 1].endswith(f"-r {result.dnat.after} -m -w 1")
    first = result.hops[0]
    assert ("ipvs", "LOCAL_IN") in first.path and not first.local  # rewritten to a pod on another node
    ipvs_steps = [s for s in first.trace.steps if s.table == "ipvs"]
    assert [s.action for s in ipvs_steps] == ["virtual server", f"DNAT {result.dnat.after}"]
    assert all(ipvs_text[s.line - 1] == s.text for s in ipvs_steps)
    # the set matches are decided from ipset.rules: the cluster IP is in KUBE-CLUSTER-IP, so this rule accepts
    accepted = [s for s in first.trace.steps if "--match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT" in s.text]
    assert accepted and result.delivered and result.snat is None and not result.notes
    code, text, _ = run(str(SHOP), "--from", f"pod/{_canary(SHOP)}", "--to", "svc/shop/web:http")
    assert code == 0 and f"virtual service {b.virtual_server}" in text and "scheduler rr" in text
    assert "IPVS at LOCAL_IN" in text and "weight 1" in text


def test_ipvs_without_a_live_real_server_rejects(tmp_path):
    cluster = cluster_of(SHOP)
    svc = cluster.services_by_key[("shop", "web")]
    vip = f"{svc.cluster_ips[0]}:80"
    node = cluster.pods_by_key[tuple(_canary(SHOP).split("/"))].node
    text = compiled(SHOP)[f"nodes/{node}/ipvs.rules"]
    drained = "".join(line.replace(" -m -w 1", " -m -w 0") if line.startswith(f"-a -t {vip} ") else line
                      for line in text.splitlines(keepends=True))
    dump = tmp_path / "ipvsadm-save.txt"
    dump.write_text(drained)
    code, out, _ = run(str(SHOP), "--from", f"pod/{_canary(SHOP)}", "--to", "svc/shop/web:http",
                       "--rules", f"{node}={dump}")
    line = drained.split("\n").index(f"-A -t {vip} -s rr -p 600") + 1
    assert code == 1
    assert f"REJECT (icmp-port-unreachable) by IPVS: virtual service {vip} ({dump} line {line})" in out
    assert "compiled from the spec (no dump given for it)" in out


def test_ipvs_set_missing_from_the_dump_is_an_assumption(tmp_path):
    cluster = cluster_of(SHOP)
    node = cluster.pods_by_key[tuple(_canary(SHOP).split("/"))].node
    text = compiled(SHOP)[f"nodes/{node}/ipset.rules"]
    dump = tmp_path / "ipset-save.txt"
    dump.write_text("".join(line for line in text.splitlines(keepends=True) if " KUBE-CLUSTER-IP " not in line))
    result = trace(cluster, f"pod/{_canary(SHOP)}", "svc/shop/web:http",
                   rules={node: {"ipset": (str(dump), dump.read_text())}})
    assert any("--match-set KUBE-CLUSTER-IP dst,dst: the set is not in the node's ipset dump" in n
               for n in result.notes)


def test_ipvs_node_ports_masquerade_or_keep_the_client():
    cluster = cluster_of(SHOP)
    public = cluster.services_by_key[("shop", "web-public")].ports[0].node_port
    prometheus = cluster.services_by_key[("monitoring", "prometheus")].ports[0].node_port
    local = trace(cluster, "203.0.113.7", f"192.168.10.2:{public}")
    assert local.snat is None and local.delivered and all(e.node == "worker-b" for e in local.endpoints)
    masq = trace(cluster, "203.0.113.7", f"192.168.10.1:{prometheus}")
    assert masq.snat.action == "MASQUERADE" and masq.snat.after == "192.168.10.1" and masq.delivered
    assert masq.balancing.scheduler == "lc" and masq.balancing.service == "monitoring/prometheus:web"


def test_ipvs_host_network_endpoint_is_the_node_itself():
    result = trace(cluster_of(SHOP), f"pod/{_canary(SHOP)}", "svc/monitoring/node-exporter:metrics",
                   endpoint="192.168.10.1:9100")
    assert result.delivered and result.outcome.startswith("delivered to node worker-a itself")
    assert [r.next for r in result.routes] == ["node worker-a", "node worker-a itself"]


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, words", [
    (["--from", "pod/default/nobody", "--to", "svc/default/search:80"], "unknown pod default/nobody"),
    (["--from", "pod/default/frontend", "--to", "svc/default/nothing:80"], "unknown service default/nothing"),
    (["--from", "pod/default/frontend", "--to", "svc/default/search:81"], "has no port 81"),
    (["--from", "pod/default/frontend", "--to", "svc/default/search:grpc"], "has no port grpc"),
    (["--from", "node/node-9", "--to", "10.96.0.1:443"], "unknown node 'node-9'"),
    (["--from", "pod/frontend", "--to", "svc/default/search:80"], "not pod/NAMESPACE/NAME"),
    (["--from", "frontend", "--to", "svc/default/search:80"], "is not pod/NS/NAME, node/NAME or an IP"),
    (["--from", "node/node-1", "--to", "svc/default/search"], "is not svc/NAMESPACE/NAME:PORT"),
    (["--from", "node/node-1", "--to", "10.1.2.3"], "is not IP:PORT"),
    (["--from", "node/node-1", "--to", "10.1.2.3:80/GRE"], "unknown protocol"),
    (["--from", "203.0.113.7", "--to", "svc/default/search:80"], "which node receives"),
    (["--from", "203.0.113.7", "--to", "svc/default/search:80", "--via", "node-7"], "unknown node 'node-7'"),
    (["--from", "192.168.0.11", "--to", "10.1.2.3:80"], "is node node-1's address"),
    (["--from", "pod/default/frontend", "--to", "svc/default/search:80", "--family", "6"], "no IPv6 cluster IP"),
    (["--from", "pod/default/frontend", "--to", "svc/default/search:80", "--rules", "node-1"], "NODE=PATH"),
    (["--from", "pod/default/frontend", "--to", "svc/default/search:80", "--endpoint", "nowhere"], "IP:PORT"),
    (["--to", "svc/default/search:80"], "--from"),
])
def test_bad_questions_exit_2_with_a_hint(argv, words):
    code, out, err = run(str(EXPLAINER), *argv)
    assert code == 2 and out == ""
    assert words in err and "hint:" in err


def test_unreadable_rules_are_located_errors(tmp_path):
    dump = tmp_path / "bad.rules"
    dump.write_text("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp --dport banana -j ACCEPT\nCOMMIT\n")
    code, _, err = run(str(EXPLAINER), "--from", "pod/default/frontend", "--to", "svc/default/search:80",
                       "--rules", f"node-4={dump}")
    assert code == 2 and f"{dump}:3:" in err
    unknown = tmp_path / "notes.txt"
    unknown.write_text("hello\n")
    code, _, err = run(str(EXPLAINER), "--from", "pod/default/frontend", "--to", "svc/default/search:80",
                       "--rules", f"node-4={unknown}")
    assert code == 2 and "not an iptables-save" in err


def test_classify_names_each_dump():
    assert classify("# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n") == "iptables"
    assert classify("-A KUBE-SERVICES -j ACCEPT\n") == "iptables"
    assert classify("-A -t 10.96.0.1:443 -s rr\n") == "ipvs"
    assert classify("create KUBE-CLUSTER-IP hash:ip,port family inet\n") == "ipset"
    assert classify("# routes\nroute replace 10.244.2.0/24 via 192.168.0.12\n") == "routes"
    assert classify("hello\n") is None and classify("") is None


# --- a real iptables-save dump --------------------------------------------------------------------


def test_trace_from_a_real_iptables_save_dump(tmp_path):
    reason = netns_skip_reason("iptables-restore")
    if reason:
        pytest.skip(reason)
    text = compiled(LAB)["nodes/node-1/iptables.rules"]
    ns = f"ks-test-trace-{uuid.uuid4().hex[:8]}"
    try:
        made = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True, check=False)
        if made.returncode != 0:
            pytest.skip(f"ip netns unavailable: {made.stderr.strip()}")
        subprocess.run(["ip", "netns", "exec", ns, "iptables-restore"], input=text, capture_output=True, text=True,
                       check=True)
        saved = subprocess.run(["ip", "netns", "exec", ns, "iptables-save"], capture_output=True, text=True,
                               check=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    dump = tmp_path / "node-1.iptables-save"
    dump.write_text(saved)
    cluster = cluster_of(LAB)
    for target in ("svc/default/search:http", "svc/default/search-nodeport:http", "svc/default/reports:http"):
        ours = trace(cluster, "pod/default/batch", target)
        theirs = trace(cluster, "pod/default/batch", target, rules={"node-1": {"iptables": (str(dump), saved)}})
        assert theirs.verdict == ours.verdict
        assert [(e.address, round(e.probability, 6)) for e in theirs.endpoints] == \
            [(e.address, round(e.probability, 6)) for e in ours.endpoints]
        assert (theirs.dnat and theirs.dnat.after) == (ours.dnat and ours.dnat.after)
        saved_lines = saved.split("\n")
        for step in theirs.hops[0].trace.steps:  # the dump's own line numbers
            assert saved_lines[step.line - 1] == step.text
    code, text, _ = run(str(LAB), "--from", "pod/default/batch", "--to", "svc/default/search:http",
                        "--rules", f"node-1={dump}")
    assert code == 0 and f"({dump})" in text
