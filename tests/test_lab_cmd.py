"""`kspec lab up|probe|down`: expectations, host overlaps and reports (pure), then real labs.

The real-lab tests build examples/lab/cluster.kspec (and a cluster with UDP,
internalTrafficPolicy Local, ClientIP affinity and a hostNetwork pod) in
namespaces named ks-test-XXXX-..., and check that nothing of them is left.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import secrets
import shutil
from pathlib import Path

import pytest

from kspec.cli import UsageError, _Parser, flags_from
from kspec.commands import lab_cmd
from kspec.compile import compile_cluster
from kspec.frontend.assemble import Flags
from kspec.lab import command, expect, hostnet, state
from kspec.lab import report as lab_report
from kspec.lab.expect import Check, Expected, ProbeOptions
from kspec.lab.hostnet import HostNetwork
from kspec.lab.report import Report
from kspec.lab.netns import LabUnavailable, check_environment, list_namespaces
from kspec.lab.probe import ProbeResult
from kspec.model import (
    Backend,
    ClusterSettings,
    Node,
    Pod,
    PortEndpoints,
    ProxySettings,
    ResolvedCluster,
    Service,
    ServiceEndpoints,
    ServicePort,
)
from kspec.pipeline import load

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "examples" / "lab" / "cluster.kspec"
FEATURES = ROOT / "tests" / "data" / "lab_cmd" / "features.kspec"
SEARCH = ("default/search-1", "default/search-2", "default/search-3")
A = ipaddress.ip_address
N = ipaddress.ip_network
NO_HOST: list[HostNetwork] = []


def run(argv: list[str], stdin: io.StringIO | None = None) -> tuple[int, str, str]:
    """kspec's main, with the lab command added the way cli.py adds it."""
    parser = _Parser(prog="kspec")
    lab_cmd.add_parser(parser.add_subparsers(dest="command", parser_class=_Parser))
    out, err = io.StringIO(), io.StringIO()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return 2, "", str(exc)
    code = args.run(args, flags_from(args), stdin or io.StringIO(), out, err)
    return code, out.getvalue(), err.getvalue()


def resolved(path: Path) -> ResolvedCluster:
    result = load([str(path)], None, Flags())
    assert result.ok, result.diagnostics
    return result.cluster


@pytest.fixture(scope="module")
def lab_cluster() -> ResolvedCluster:
    return resolved(LAB)


# ---------------------------------------------------------------- expectations (pure)


def test_expectations_of_the_example_lab(lab_cluster):
    plan = command.lab_plan(lab_cluster, "ks-test-pure-")
    exp = expect.expectations(lab_cluster, plan, ProbeOptions(tries=12, pods_per_node=1))
    assert [(r.where, r.port, r.proto) for r in exp.responders] == [
        ("pod/default/frontend", 80, "tcp"), ("pod/default/search-1", 8080, "tcp"),
        ("pod/default/search-2", 8080, "tcp"), ("pod/default/search-3", 8080, "tcp")]
    checks = {(c.kind, c.client, c.target, c.ip): c for c in exp.checks}
    # one client pod per node: batch (first on node-1), search-2, search-3, frontend; plus the four nodes
    search = checks[("cluster-ip", "pod/default/batch", "default/search:http", "198.18.128.10")]
    assert search.expected == Expected("ok", SEARCH, 2, None, "198.19.1.20")
    assert search.tries == 12
    own = checks[("cluster-ip", "pod/default/search-2", "default/search:http", "198.18.128.10")]
    assert own.expected.source is None  # it may reach itself through the service: hairpin SNAT
    assert checks[("cluster-ip", "node/node-4", "default/search:http", "198.18.128.10")].expected.source is None
    assert checks[("no-endpoints", "node/node-1", "default/reports:http", "198.18.128.13")].expected == \
        Expected("refused")
    frontend = "default/frontend-local:30081"
    assert checks[("node-port", "outside", frontend, "198.18.0.11")].expected == Expected("timeout")
    local = checks[("node-port", "outside", frontend, "198.18.0.14")].expected
    assert local == Expected("ok", ("default/frontend",), 1, None, str(plan.outside.ip.ip))
    assert checks[("node-port", "outside", "default/search-nodeport:30080", "198.18.0.12")].expected.responders == \
        SEARCH
    pod_to_pod = [c for c in exp.checks if c.kind == "pod-to-pod"]
    assert len(pod_to_pod) == 13  # 4 clients x 4 pods with a port, minus 3 to themselves
    pod_ips = {f"pod/{p.namespace}/{p.name}": str(p.ip.ip) for p in plan.pods}
    assert all(c.expected.source == pod_ips[c.client] for c in pod_to_pod)
    assert len(exp.checks) == 53 and exp.notes == ()


def _backend(ip: str, port: int, node: str, pod: str | None, ready: bool = True, terminating: bool = False,
             protocol: str = "TCP") -> Backend:
    return Backend(A(ip), port, protocol, ready, ready or terminating, terminating, node,
                   ("default", pod) if pod else None)


def _cluster(services: tuple[Service, ...], endpoints: dict, proxy: ProxySettings | None = None) -> ResolvedCluster:
    settings = ClusterSettings(pod_cidrs=(N("198.19.0.0/16"),), service_cidrs=(N("198.18.128.0/20"),),
                               proxy=proxy or ProxySettings())
    nodes = (Node("n1", (A("198.18.0.11"),), (N("198.19.1.0/24"),)),
             Node("n2", (A("198.18.0.12"),), (N("198.19.2.0/24"),)))
    pods = (Pod("default", "a", "n1", (A("198.19.1.10"),)), Pod("default", "b", "n2", (A("198.19.2.10"),)),
            Pod("default", "old", "n2", (A("198.19.2.11"),)),
            Pod("default", "host", "n2", (A("198.18.0.12"),), host_network=True))
    return ResolvedCluster(settings, nodes, pods, services, endpoints)


def _service(name: str, ip: str, port: ServicePort, **kw) -> Service:
    return Service("default", name, ports=(port,), cluster_ips=(A(ip),), **kw)


def _eps(svc: Service, *backends: Backend) -> dict:
    return {svc.key: ServiceEndpoints(svc.key, (PortEndpoints(svc.ports[0], backends),), "selector")}


def test_internal_local_affinity_fallback_host_network_and_skips():
    http = ServicePort(80, name="http", target_port=8080)
    local = _service("local", "198.18.128.10", http, internal_traffic_policy="Local")
    sticky = _service("sticky", "198.18.128.11", http, session_affinity="ClientIP")
    draining = _service("draining", "198.18.128.12", http)
    host = _service("host", "198.18.128.13", ServicePort(9100, name="m"))
    manual = _service("manual", "198.18.128.14", http)
    sctp = _service("sctp", "198.18.128.15", ServicePort(9, name="s", protocol="SCTP"))
    v6 = Service("default", "v6", ports=(http,), cluster_ips=(A("fd00::1"),))
    endpoints = {
        **_eps(local, _backend("198.19.2.10", 8080, "n2", "b")),
        **_eps(sticky, _backend("198.19.1.10", 8080, "n1", "a"), _backend("198.19.2.10", 8080, "n2", "b")),
        **_eps(draining, _backend("198.19.2.11", 8080, "n2", "old", ready=False, terminating=True),
               _backend("198.19.1.10", 8080, "n1", "a", ready=False)),
        **_eps(host, _backend("198.18.0.12", 9100, "n2", "host")),
        **_eps(manual, _backend("198.51.100.7", 8080, None, None)),
    }
    cluster = _cluster((local, sticky, draining, host, manual, sctp, v6), endpoints)
    plan = command.lab_plan(cluster, "ks-test-pure-", allow_any_addresses=True)
    exp = expect.expectations(cluster, plan, ProbeOptions(tries=6, pods_per_node=1))
    checks = {(c.client, c.target): c for c in exp.checks}
    assert checks[("pod/default/a", "default/local:http")].expected == Expected("timeout")  # no endpoint on n1
    assert checks[("node/n2", "default/local:http")].expected == Expected("ok", ("default/b",))
    assert checks[("pod/default/a", "default/sticky:http")].expected.max_distinct == 1
    assert checks[("pod/default/b", "default/draining:http")].expected.responders == ("default/old",)
    host_check = checks[("pod/default/a", "default/host:m")].expected
    assert host_check.responders == ("default/host",)
    assert ("node/n2", 9100, "tcp") in {(r.where, r.port, r.proto) for r in exp.responders}
    assert not any(c.target in ("default/manual:http", "default/sctp:s", "default/v6:http") for c in exp.checks)
    notes = "\n".join(exp.notes)
    assert "198.51.100.7:8080 is no pod of the lab" in notes and "SCTP" in notes and "IPv4 only" in notes


def test_node_port_addresses_and_masquerade_all_change_the_expectations():
    port = ServicePort(80, name="http", target_port=8080, node_port=30080)
    svc = _service("np", "198.18.128.10", port, type="NodePort")
    proxy = ProxySettings(masquerade_all=True, nodeport_addresses=(N("198.18.0.11/32"),))
    cluster = _cluster((svc,), _eps(svc, _backend("198.19.2.10", 8080, "n2", "b")), proxy=proxy)
    exp = expect.expectations(cluster, command.lab_plan(cluster, "ks-test-pure-"), ProbeOptions())
    by_ip = {c.ip: c.expected for c in exp.checks if c.kind == "node-port"}
    assert by_ip["198.18.0.11"].outcome == "ok" and by_ip["198.18.0.12"] == Expected("refused")
    assert all(c.expected.source is None for c in exp.checks if c.kind == "cluster-ip")


def test_lab_names_are_derived_from_paths_and_never_match_another_labs_namespaces():
    assert command.lab_name([str(LAB)]) == command.lab_name([os.path.relpath(LAB)])
    assert command.lab_name([str(LAB)]) != command.lab_name([str(FEATURES)])
    assert command.check_name(command.lab_name([str(LAB)])) is None
    for bad in ("", "Upper", "-x", "x-", "a" * 18, "a/b", "a b"):
        assert command.check_name(bad)
    assert command.owns_namespace("ks-test-", "ks-test-sw") and command.owns_namespace("ks-test-", "ks-test-p-12")
    assert not command.owns_namespace("ks-test-", "ks-test-ab12-sw")  # another lab's, or another test's
    assert not command.owns_namespace("ks-test-", "ks-test-n-1-out")


# ---------------------------------------------------------------- host networks (pure)

ADDR_JSON = json.dumps([
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
    {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "198.19.4.7", "prefixlen": 24},
                                     {"family": "inet6", "local": "fd00::2", "prefixlen": 64}]},
])
ROUTE_JSON = json.dumps([
    {"dst": "default", "gateway": "198.19.4.1", "dev": "eth0"},
    {"dst": "198.19.4.0/24", "dev": "eth0"},
    {"dst": "10.0.0.0/8", "gateway": "198.19.4.1", "dev": "eth0"},
])


def test_host_networks_are_read_from_ip_json_without_default_routes():
    found = hostnet.parse_host_networks(ADDR_JSON, ROUTE_JSON)
    assert [str(h.network) for h in found] == ["127.0.0.0/8", "198.19.4.0/24", "fd00::/64", "198.19.4.0/24",
                                              "10.0.0.0/8"]
    assert found[1].what == "address 198.19.4.7/24 on eth0"
    assert found[4].what == "route 10.0.0.0/8 via 198.19.4.1 dev eth0"


def test_spec_addresses_overlapping_a_host_network_are_refused_with_the_host_network_named(lab_cluster):
    plan = command.lab_plan(lab_cluster, "ks-test-pure-")
    problems = hostnet.host_overlaps(lab_cluster, plan, hostnet.parse_host_networks(ADDR_JSON, ROUTE_JSON))
    messages = [d.message for d in problems]
    assert "node node-4 podCIDR 198.19.4.0/24 overlaps the host's address 198.19.4.7/24 on eth0" in messages
    assert any(m.startswith("cluster pod CIDR 198.19.0.0/16 overlaps the host's route 198.19.4.0/24") for m in messages)
    assert any("pod default/frontend 198.19.4.10/32" in m for m in messages)
    assert all(d.is_error and d.hint for d in problems)
    assert next(d for d in problems if "node-4" in d.message).span.file.endswith("cluster.kspec")
    unrelated = hostnet.parse_host_networks(ADDR_JSON.replace("198.19.4.7", "192.0.2.2"), "[]")
    assert hostnet.host_overlaps(lab_cluster, plan, unrelated) == []


def test_prepare_refuses_host_overlaps_and_ipvs(lab_cluster):
    from dataclasses import replace

    from kspec.diagnostics import InputError

    host = hostnet.parse_host_networks(ADDR_JSON, ROUTE_JSON)
    with pytest.raises(InputError):
        command.prepare(lab_cluster, compile_cluster(lab_cluster), "test-pure", host=host)
    ipvs = replace(lab_cluster, settings=replace(lab_cluster.settings,
                                                 proxy=replace(lab_cluster.settings.proxy, mode="ipvs")))
    with pytest.raises(LabUnavailable, match="IPVS|ipvs"):
        command.prepare(ipvs, [], "test-pure", host=NO_HOST)


# ---------------------------------------------------------------- judging and reports (pure)

CHECK = Check("cluster-ip", "KS202", "pod/default/batch", "default/search:http", "198.18.128.10", 80, "tcp", 4,
              Expected("ok", SEARCH, 2, None, "198.19.1.20"))


def ok(name: str, source: str = "198.19.1.20") -> ProbeResult:
    return ProbeResult(True, False, False, name, source, 40000)


TIMEOUT = ProbeResult(False, False, True, None, None, None, "timed out")


def test_judge_names_what_differs():
    good = lab_report.judge(CHECK, [ok(SEARCH[0]), ok(SEARCH[1]), ok(SEARCH[0]), ok(SEARCH[2])])
    assert good.ok and good.responders == ((SEARCH[0], 2), (SEARCH[1], 1), (SEARCH[2], 1))
    assert lab_report.judge(CHECK, [ok(SEARCH[0])] * 4).problem == \
        "only 1 distinct responder(s) in 4 tries, expected at least 2"
    stranger = lab_report.judge(CHECK, [ok(SEARCH[0]), ok("default/frontend")])
    assert stranger.problem == "answered by default/frontend, which is not expected"
    assert "source 198.18.0.11 instead of 198.19.1.20" in \
        lab_report.judge(CHECK, [ok(SEARCH[0]), ok(SEARCH[1], "198.18.0.11")]).problem
    mixed = lab_report.judge(CHECK, [ok(SEARCH[0]), TIMEOUT])
    assert mixed.problem == "dropped (timeout) x1 where ok was expected"
    assert mixed.observed_text() == "ok x1: default/search-1 x1; source 198.19.1.20; dropped (timeout) x1"
    refused = Check("no-endpoints", "KS204", "node/n1", "default/r:http", "198.18.128.13", 80, "tcp", 1,
                    Expected("refused"))
    assert lab_report.judge(refused, [ProbeResult(False, True, False, None, None, None)]).ok
    assert not lab_report.judge(refused, [TIMEOUT]).ok
    assert lab_report.judge(refused, [], "exit 1: boom").problem == "the probe client failed: exit 1: boom"


def test_reports_render_as_a_table_and_as_stable_json():
    verdicts = (lab_report.judge(CHECK, [ok(SEARCH[0]), ok(SEARCH[1])] * 2),
                lab_report.judge(CHECK, [ok(SEARCH[0])] * 4))
    report = Report("test", "ks-test-", "one-shot", verdicts, ("a note",), 1.0)
    text = lab_report.render_text(report)
    header, first, second = text.splitlines()[:3]
    assert header.split() == ["CHECK", "FROM", "TO", "EXPECTED", "OBSERVED", "OK"]
    assert first.endswith("  ok") and second.endswith("DIFFERS")
    assert "differs: cluster-ip (KS202) from pod/default/batch to default/search:http 198.18.128.10:80/tcp: " \
        "only 1 distinct responder(s) in 4 tries, expected at least 2" in text
    assert "note: a note" in text and text.endswith("2 checks, 1 as expected, 1 differ\n")
    assert "ok  " not in lab_report.render_text(report, only_differing=True).splitlines()[1]
    calm = Report("test", "ks-test-", "running", verdicts[:1], (), 1.0)
    assert lab_report.render_text(calm, only_differing=True) == \
        "kspec lab probe: lab test (running): 1 check, 1 as expected, 0 differ\n"
    data = json.loads(lab_report.render_json(report))
    assert set(data) == {"version", "lab", "checks", "notes", "summary"}
    assert data["summary"] == {"checks": 2, "ok": 1, "differ": 1, "exitCode": 1}
    first_check = data["checks"][0]
    assert set(first_check) == {"check", "invariant", "from", "to", "target", "address", "port", "protocol", "tries",
                                "expected", "observed", "ok", "problem"}
    assert first_check["expected"]["responders"] == list(SEARCH) and first_check["observed"]["responders"] == \
        {SEARCH[0]: 2, SEARCH[1]: 2}
    assert lab_report.render_json(report) == lab_report.render_json(report)


def test_probe_lines_round_trip():
    assert ProbeResult.from_line("0 default/a 198.19.1.20:40000\n") == ok("default/a")
    assert ProbeResult.from_line("3 ConnectionRefusedError: refused").refused
    assert ProbeResult.from_line("4 TimeoutError: timed out").timeout
    assert ProbeResult.from_line("garbage") is None


def test_state_records_round_trip_and_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("KSPEC_LAB_STATE_DIR", str(tmp_path / "state"))
    record = state.LabState("test", "ks-test-", "up", ("/x.kspec",), "f" * 64, "198.18.0.253", ("ks-test-sw",),
                            (state.ResponderProcess(os.getpid(), state.process_start_time(os.getpid()) or 0,
                                                    "ks-test-p-0", 80, "tcp", "default/a"),))
    path = state.create(record)
    assert path == tmp_path / "state" / "ks-test.json"
    with pytest.raises(FileExistsError):
        state.create(record)
    assert state.read("test") == record
    assert state.is_running(record.responders[0])
    assert not state.is_running(state.ResponderProcess(os.getpid(), 1, "x", 1, "tcp", "x"))
    path.write_text("{not json")
    with pytest.raises(state.StateError):
        state.read("test")
    state.remove("test")
    assert state.read("test") is None


def test_usage_errors_exit_2():
    assert run(["lab"])[0] == 2
    code, _, err = run(["lab", "down"])
    assert code == 2 and "no INPUT and no --name" in err
    code, _, err = run(["lab", "probe", str(LAB), "--name", "Bad_Name"])
    assert code == 2 and "lab name 'Bad_Name'" in err
    code, _, err = run(["lab", "probe", str(LAB), "--tries", "0"])
    assert code == 2 and "--tries" in err


def test_the_hosts_networks_can_be_read():
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed")
    assert any(h.network == N("127.0.0.0/8") for h in hostnet.read_host_networks())


def test_not_root_exits_2_with_a_hint(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code, out, err = run(["lab", "probe", str(LAB)])
    assert code == 2 and out == ""
    assert "error: the lab needs root" in err and "hint: run it as root (e.g. sudo" in err


# ---------------------------------------------------------------- real labs


@pytest.fixture
def lab_env(tmp_path, monkeypatch):
    """A fresh lab name under ks-test-, its own state folder, and a check that nothing is left behind."""
    try:
        check_environment()
    except LabUnavailable as exc:
        pytest.skip(str(exc))
    monkeypatch.setenv("KSPEC_LAB_STATE_DIR", str(tmp_path / "state"))
    name = f"test-{secrets.token_hex(2)}"
    started: list[state.ResponderProcess] = []
    real_start = command.start_responders

    def recording(*args, **kwargs):
        try:
            real_start(*args, **kwargs)
        finally:
            started.extend(args[4])

    monkeypatch.setattr(command, "start_responders", recording)
    yield name, started
    prefix = command.prefix_of(name)
    leftovers = [n for n in list_namespaces(prefix) if command.owns_namespace(prefix, n)]
    running = [p for p in started if state.is_running(p)]
    command.down(name)  # whatever a failed test left
    assert leftovers == [] and running == []
    assert not state.state_path(name).exists()


@pytest.mark.netns
def test_one_shot_probe_of_the_example_lab_all_as_expected_in_json(lab_env):
    name, started = lab_env
    code, out, err = run(["lab", "probe", str(LAB), "--name", name, "--format", "json"])
    assert code == 0, out + err
    data = json.loads(out)
    assert data["lab"] == {"name": name, "prefix": f"ks-{name}-", "mode": "one-shot"}
    assert data["summary"] == {"checks": 53, "ok": 53, "differ": 0, "exitCode": 0}
    kinds = {c["check"] for c in data["checks"]}
    assert kinds == {"pod-to-pod", "cluster-ip", "no-endpoints", "node-port"}
    assert len(started) == 4


@pytest.mark.netns
def test_up_probe_down_leaves_nothing(lab_env):
    name, _ = lab_env
    code, out, err = run(["lab", "up", str(LAB), "--name", name])
    assert code == 0, err
    assert f"lab {name} is up (11 namespaces with prefix ks-{name}-)" in out
    record = state.read(name)
    assert record is not None and record.status == "up" and len(record.responders) == 4
    assert all(state.is_running(r) for r in record.responders)
    assert run(["lab", "up", str(LAB), "--name", name])[0] == 2  # already up
    code, out, err = run(["lab", "probe", str(LAB), "--name", name])
    assert code == 0, out + err
    assert out.splitlines()[-1] == f"kspec lab probe: lab {name} (running): 53 checks, 53 as expected, 0 differ"
    code, _, err = run(["lab", "probe", str(FEATURES), "--name", name])  # another spec under that name
    assert code == 2 and "built from other inputs" in err
    code, out, _ = run(["lab", "down", "--name", name])
    assert code == 0 and f"removed lab {name}: 11 namespaces, 4 responders" in out
    assert not any(state.is_running(r) for r in record.responders)
    assert run(["lab", "down", "--name", name]) == (0, f"kspec lab down: no lab {name} is up; nothing to remove\n", "")


@pytest.mark.netns
def test_udp_internal_local_affinity_and_host_network_in_the_kernel(lab_env):
    name, _ = lab_env
    code, out, err = run(["lab", "probe", str(FEATURES), "--name", name, "--tries", "8"])
    assert code == 0, out + err
    assert "default/dns:30053 198.18.0.22:30053/udp" in out and "25 checks, 25 as expected" in out


@pytest.mark.netns
def test_tampered_rules_make_probe_exit_1_naming_the_check(lab_env, tmp_path):
    name, _ = lab_env
    compiled = tmp_path / "out"
    for relative, text in compile_cluster(resolved(LAB)):
        (compiled / relative).parent.mkdir(parents=True, exist_ok=True)
        (compiled / relative).write_text(text)
    rules = compiled / "nodes" / "node-1" / "iptables.rules"
    kept = [line for line in rules.read_text().splitlines(keepends=True) if "has no endpoints" not in line]
    assert len(kept) < len(rules.read_text().splitlines())
    rules.write_text("".join(kept))  # node-1 loses the REJECT of the service without endpoints
    code, out, err = run(["lab", "probe", str(LAB), "--name", name, "--rules", str(compiled), "--timeout", "0.5"])
    assert code == 1, out + err
    differing = [line for line in out.splitlines() if line.startswith("differs:")]
    assert sorted(differing) == [
        f"differs: no-endpoints (KS204) from {who} to default/reports:http 198.18.128.13:80/tcp: "
        "dropped (timeout) x1 where refused was expected" for who in ("node/node-1", "pod/default/batch")]
    shutil.rmtree(compiled)


@pytest.mark.netns
def test_ctrl_c_during_up_leaves_nothing(lab_env, monkeypatch):
    name, started = lab_env
    recording = command.start_responders

    def interrupted(*args, **kwargs):
        recording(*args, **kwargs)
        assert all(state.is_running(p) for p in started)
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "start_responders", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(["lab", "up", str(LAB), "--name", name])
    assert len(started) == 4 and not state.state_path(name).exists()


@pytest.mark.netns
def test_ctrl_c_during_a_one_shot_probe_leaves_nothing(lab_env, monkeypatch):
    name, started = lab_env

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "run_checks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(["lab", "probe", str(LAB), "--name", name])
    assert len(started) == 4


@pytest.mark.netns
def test_refusals_before_building(lab_env, tmp_path):
    name, _ = lab_env
    code, _, err = run(["lab", "probe", str(LAB), "--name", name, "--proxy-mode", "ipvs"])
    assert code == 2 and "ipvs" in err.lower()
    spec = tmp_path / "elsewhere.kspec"
    spec.write_text(LAB.read_text().replace("198.19.", "10.77."))
    code, _, err = run(["lab", "probe", str(spec), "--name", name])
    assert code == 2 and "outside 198.18.0.0/15" in err
