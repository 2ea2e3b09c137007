"""KS201-KS205 over compiled rule text: clean clusters prove, the walk agrees with kube-proxy's own tests."""

from __future__ import annotations

import ipaddress
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend_factories import cluster, ip, net, node, pod, port, service
from kspec.backends import iptables, routes
from kspec.dataplane import iptables_save
from kspec.diagnostics import InputError
from kspec.frontend.assemble import Flags
from kspec.model import Backend, ClusterSettings, Node, PortEndpoints, ProxySettings, ResolvedCluster, ServiceEndpoints
from kspec.model import ServicePort
from kspec.pipeline import load
from kspec.verify import chains
from kspec.verify.encode import DST, Intervals, Solver
from kspec.verify.packet_invariants import PACKET_IDS, check_node, covers, node_hooks, port_specs
from kspec.verify.result import PROVED, UNKNOWN, VIOLATED

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*/*") if p.suffix in (".kspec", ".yaml") and
                  p.parent.name != "broken")
GOLDEN = ROOT / "tests" / "golden" / "iptables"


def verify(c: ResolvedCluster, n: Node, text: str | None = None, route_text: str | None = None, family: int = 4,
           ids=PACKET_IDS, timeout: float = 10.0) -> dict:
    text = iptables.generate(c, n, family) if text is None else text
    route_text = routes.generate(c, n) if route_text is None else route_text
    verdicts = check_node(c, n, text, f"nodes/{n.name}/iptables.rules", route_text, f"nodes/{n.name}/routes.batch",
                          ids, timeout, family)
    return {v.invariant: v for v in verdicts}


def problems(verdicts: dict) -> list[str]:
    out = []
    for v in verdicts.values():
        if v.status != PROVED:
            out.append(f"{v.invariant} {v.status} {v.reason}")
            out += [f"  {f.message}\n    {f.witness}" for f in v.findings]
    return out


# --- hand-built clusters (addresses from the benchmarking ranges, so netns tests may load them) --------------


def _svc(name: str, cluster_ip: str, *ports: ServicePort, **fields):
    return replace(service("default", name, *ports, cluster_ips=[cluster_ip]), **fields)


def lab_cluster(proxy: ProxySettings = ProxySettings()) -> ResolvedCluster:
    """Every feature kube-proxy's iptables mode has, on three nodes."""
    nodes = [node("node-1", "198.18.0.11", pod_cidrs=["198.19.1.0/24"]),
             node("node-2", "198.18.0.12", pod_cidrs=["198.19.2.0/24"]),
             node("node-3", "198.18.0.13", pod_cidrs=["198.19.3.0/24"])]
    http = [("http", 8080)]
    pods = [pod("default", "web-1", "node-1", "198.19.1.10", ports=http),
            pod("default", "web-2", "node-2", "198.19.2.10", ports=http),
            pod("default", "web-3", "node-3", "198.19.3.10", ports=http),
            pod("default", "api-1", "node-1", "198.19.1.11", ports=[("http", 9090)], ready=False),
            pod("default", "api-2", "node-2", "198.19.2.11", ports=[("http", 9090)], terminating=True),
            pod("default", "dns-1", "node-2", "198.19.2.12", ports=[("dns", 53, "UDP"), ("dns-tcp", 53)]),
            pod("default", "client", "node-1", "198.19.1.50"),
            pod("default", "agent", "node-2", "198.18.0.12", ports=[("http", 9100)], host_network=True)]
    web = ("web-1", "web-2", "web-3")

    def np(number: int, node_port: int, **kw) -> ServicePort:
        return replace(port(number, "http", "http", **kw), node_port=node_port)

    services = [
        _svc("web", "198.18.128.10", port(80, "http", "http")),
        _svc("web-np", "198.18.128.11", np(80, 30080), type="NodePort"),
        _svc("web-local", "198.18.128.12", np(80, 30081), type="NodePort", external_traffic_policy="Local"),
        _svc("lb", "198.18.128.13", np(80, 30082), type="LoadBalancer", load_balancer_ips=(ip("198.18.200.10"),),
             load_balancer_source_ranges=(net("198.18.64.0/24"), net("198.18.0.0/24"))),
        _svc("lb-local", "198.18.128.14", np(80, 30083), type="LoadBalancer", external_traffic_policy="Local",
             load_balancer_ips=(ip("198.18.200.11"),), health_check_node_port=32000),
        _svc("sticky", "198.18.128.15", port(80, "http", "http"), session_affinity="ClientIP", affinity_timeout=300),
        _svc("empty", "198.18.128.16", replace(port(80, "http"), node_port=30084), type="NodePort",
             external_ips=(ip("198.18.200.20"),)),
        _svc("itp", "198.18.128.17", port(80, "http", "http"), internal_traffic_policy="Local"),
        _svc("ext", "198.18.128.18", port(80, "http", "http"), external_ips=(ip("198.18.200.21"),)),
        _svc("term", "198.18.128.19", port(80, "http", "http")),
        _svc("dns", "198.18.128.20", port(53, "dns", "dns", "UDP"), port(53, "dns-tcp", "dns-tcp")),
        _svc("agent", "198.18.128.21", np(9100, 30085), type="NodePort"),  # a hostNetwork endpoint
    ]
    members = {("default", "web"): web, ("default", "web-np"): web, ("default", "web-local"): ("web-1", "web-2"),
               ("default", "lb"): web, ("default", "lb-local"): ("web-1",), ("default", "sticky"): web,
               ("default", "itp"): ("web-1", "web-2"), ("default", "ext"): web, ("default", "term"): ("api-1", "api-2"),
               ("default", "dns"): ("dns-1",), ("default", "agent"): ("agent",)}
    settings = ClusterSettings(pod_cidrs=(net("198.19.0.0/16"),), service_cidrs=(net("198.18.128.0/20"),),
                               proxy=proxy)
    return cluster(nodes, pods, services, members, settings=settings)


def lab_cluster_v6() -> ResolvedCluster:
    """IPv6 (RFC 5180's benchmarking range): ClusterIP, NodePort with eTP Local, no endpoints."""
    nodes = [node("node-1", "2001:2::11", pod_cidrs=["2001:2:1:1::/64"]),
             node("node-2", "2001:2::12", pod_cidrs=["2001:2:1:2::/64"])]
    pods = [pod("default", "web-1", "node-1", "2001:2:1:1::10", ports=[("http", 8080)]),
            pod("default", "web-2", "node-2", "2001:2:1:2::10", ports=[("http", 8080)])]
    services = [
        _svc("web", "2001:2:0:128::10", port(80, "http", "http")),
        _svc("web-local", "2001:2:0:128::11", replace(port(80, "http", "http"), node_port=30081), type="NodePort",
             external_traffic_policy="Local"),
        _svc("empty", "2001:2:0:128::12", port(80, "http")),
    ]
    members = {("default", "web"): ("web-1", "web-2"), ("default", "web-local"): ("web-1",)}
    settings = ClusterSettings(pod_cidrs=(net("2001:2:1::/48"),), service_cidrs=(net("2001:2:0:128::/112"),))
    return cluster(nodes, pods, services, members, settings=settings)


def big_service_cluster(n_endpoints: int = 1100) -> ResolvedCluster:
    """More than 1000 endpoints: kube-proxy drops the per-endpoint comments."""
    nodes = [node(f"node-{i}", f"198.18.0.{i}", pod_cidrs=[f"198.19.{i}.0/24"]) for i in range(1, 6)]
    pods = [pod("default", f"w-{k}", f"node-{k % 5 + 1}", f"198.19.{k % 5 + 1}.{k // 5 + 2}", ports=[("http", 80)])
            for k in range(min(n_endpoints, 1200))]
    svc = _svc("wide", "198.18.128.10", port(80, "http", "http"))
    settings = ClusterSettings(pod_cidrs=(net("198.19.0.0/16"),), service_cidrs=(net("198.18.128.0/20"),))
    return cluster(nodes, pods, [svc], {svc.key: [p.name for p in pods]}, settings=settings)


HAND_BUILT = {
    "lab": (lab_cluster, 4),
    "lab-masquerade-all": (lambda: lab_cluster(ProxySettings(masquerade_all=True)), 4),
    "lab-node-cidr": (lambda: lab_cluster(ProxySettings(detect_local_mode="NodeCIDR")), 4),
    "lab-no-random-fully": (lambda: lab_cluster(ProxySettings(random_fully=False)), 4),
    "lab-nodeport-addresses": (lambda: lab_cluster(ProxySettings(nodeport_addresses=(net("198.18.0.0/24"),))), 4),
    "lab-liberal-nfacct": (lambda: lab_cluster(ProxySettings(conntrack_tcp_be_liberal=True, nfacct=True)), 4),
    "v6": (lab_cluster_v6, 6),
}


@pytest.mark.parametrize("name", sorted(HAND_BUILT))
def test_hand_built_clusters_verify_clean_on_every_node(name):
    make, family = HAND_BUILT[name]
    c = make()
    for n in c.nodes:
        verdicts = verify(c, n, family=family)
        assert not problems(verdicts), f"{name}/{n.name}:\n" + "\n".join(problems(verdicts))
        assert verdicts["KS202"].checked and verdicts["KS205"].checked and verdicts["KS201"].checked


def test_lab_cluster_exercises_every_invariant():
    """The lab cluster has something for each check: refusals, external policies, source ranges."""
    c = lab_cluster()
    verdicts = verify(c, c.nodes[2])
    assert all(v.status == PROVED for v in verdicts.values())
    assert verdicts["KS204"].checked >= 4  # cluster IP from pods and node, nodePort, external IP
    assert verdicts["KS203"].checked >= 6
    specs = {s.service.name: s for s in port_specs(c, c.nodes[2], 4)}
    assert specs["web-local"].external.refuse == "DROP"  # node-3 has no local web-local endpoint
    assert specs["itp"].internal.refuse == "DROP"
    assert specs["term"].internal.endpoints  # the serving-terminating fallback
    assert not specs["empty"].has_any


def test_large_cluster_rules_verify_clean():
    c = big_service_cluster()
    text = iptables.generate(c, c.nodes[0])
    assert "-> 198.19" not in text  # comments dropped above 1000 endpoints
    assert not problems(verify(c, c.nodes[0], text))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_examples_verify_clean_on_every_node(path):
    result = load([str(path)], None, Flags())
    assert result.ok, [d.message for d in result.diagnostics]
    for n in result.cluster.nodes:
        verdicts = verify(result.cluster, n)
        assert not problems(verdicts), f"{path}/{n.name}:\n" + "\n".join(problems(verdicts))


def test_broken_example_is_caught_by_ks201():
    """Its podCIDRs overlap (KS102), so one node's pods are routed to the other: a real KS201 violation."""
    result = load([str(ROOT / "examples" / "broken" / "cluster.kspec")], None, Flags())
    verdicts = verify(result.cluster, result.cluster.nodes[0])
    ks201 = verdicts["KS201"]
    assert ks201.status == VIOLATED
    finding = ks201.findings[0]
    assert "10.244.1.128/25" in finding.message
    assert finding.locations[0].span.file == "nodes/node-1/routes.batch"
    assert {v.status for k, v in verdicts.items() if k != "KS201"} == {PROVED}


# --- kube-proxy's own test cases (tests/golden/iptables) ---------------------------------------------


def golden_cases() -> list[str]:
    return sorted(p.name for p in GOLDEN.iterdir() if (p / "input.json").exists())


@pytest.mark.parametrize("case", golden_cases())
def test_kube_proxy_test_rules_verify_clean(case):
    """The rule sets of kube-proxy's proxier_test.go (plus the built-in jumps) implement their spec."""
    from test_backend_iptables import load_case

    c, n, family, _ = load_case(case)
    text = (GOLDEN / case / "expected.rules").read_text()
    verdicts = check_node(c, n, text, f"{case}/expected.rules", None, None, PACKET_IDS, 10, family)
    assert all(v.status == PROVED for v in verdicts), [(v.invariant, [f.message for f in v.findings])
                                                       for v in verdicts if v.status != PROVED]


def test_restore_input_without_builtin_jumps_dispatches_nothing():
    """kube-proxy's restore input alone (no -A PREROUTING -j KUBE-SERVICES) moves no packet: KS202/KS205 say so."""
    from test_backend_iptables import load_case

    c, n, family, _ = load_case("overall")
    text = (GOLDEN / "overall" / "kube-proxy.rules").read_text()
    verdicts = {v.invariant: v for v in check_node(c, n, text, "kube-proxy.rules", None, None, PACKET_IDS, 10, family)}
    assert verdicts["KS202"].status == VIOLATED and verdicts["KS205"].status == VIOLATED
    assert any("no rule dispatches" in f.message for f in verdicts["KS205"].findings)


def _flow_outcome(program: chains.Program, flow: dict, node_ips: set[str]) -> tuple[str, bool]:
    """What kube-proxy's tracePacket reports: the DNAT targets over every random choice, else the filter verdict."""
    src, dst = ipaddress.ip_address(flow["source"]), ipaddress.ip_address(flow["dest"])
    origin = "node" if flow["source"] in node_ips or src.is_loopback else "outside"
    fields = [int(src), int(dst), chains.protocol_number(flow["protocol"]), 40000, flow["port"]]
    leaves = chains.explore(program, origin, fields)
    targets = sorted({chains.dnat_text(leaf.dnat, program.family) for leaf in leaves if leaf.dnat is not None},
                     key=lambda t: [int(x) if x.isdigit() else x for x in t.replace("[", "").replace("]", "")
                                    .replace(".", ":").split(":")])
    masq = any(leaf.snat for leaf in leaves)
    if targets:
        return ", ".join(targets), masq
    verdicts = {leaf.verdict for leaf in leaves}
    if verdicts & {"DROP", "REJECT"}:
        return verdicts.pop(), masq
    accepted = any(step.action == "ACCEPT" and step.table == "filter" for leaf in leaves for step in leaf.step_list())
    return ("ACCEPT" if accepted else ""), masq


@pytest.mark.parametrize("case", [c for c in golden_cases() if "flows" in json.loads((GOLDEN / c / "input.json")
                                                                                       .read_text())])
def test_walk_reproduces_kube_proxys_expected_flows(case):
    """Every flow kube-proxy's proxier_test.go traces gives the same endpoints, verdict and masquerade here."""
    from test_backend_iptables import load_case

    c, n, family, spec = load_case(case)
    ruleset = iptables_save.parse((GOLDEN / case / "expected.rules").read_text(), case, family)
    node_ips = {str(a) for a in n.ips}
    program = chains.Program(ruleset, chains.local_intervals(node_ips, family))
    failures = []
    for flow in spec["flows"]:
        got = _flow_outcome(program, flow, node_ips)
        if got != (flow["output"], flow["masq"]):
            failures.append(f"{flow['name']}: got {got}, want {(flow['output'], flow['masq'])}")
    assert not failures, "\n".join(failures)


# --- traces, witnesses, unknowns -----------------------------------------------------------------


def test_trace_packet_names_chains_and_lines():
    c = lab_cluster()
    n = c.nodes[0]
    text = iptables.generate(c, n)
    ruleset = iptables_save.parse(text, "iptables.rules")
    hooks = node_hooks(n, "pod")
    assert hooks == chains.Hooks("pod", ("198.18.0.11", "198.19.1.1"), "cbr0", ("198.19.1.0/24",))
    packet = chains.Packet("tcp", "198.19.1.50", 40000, "198.18.128.10", 80)
    lines = text.split("\n")
    # no answers: every statistic rule misses, so the last endpoint wins
    trace = chains.trace_packet(ruleset, hooks, packet)
    assert trace.verdict == "ACCEPT" and trace.dnat == "198.19.3.10:8080" and trace.snat is None
    dnat = next(s for s in trace.steps if s.action.startswith("DNAT"))
    assert lines[dnat.line - 1] == dnat.text and "--to-destination 198.19.3.10:8080" in dnat.text
    assert [s.chain for s in trace.steps[:2]] == ["PREROUTING", "KUBE-SERVICES"]
    assert "KUBE-SERVICES (line" in trace.render() and "DNAT 198.19.3.10:8080" in trace.render()
    assert all("does not match" in a for a in trace.assumed)
    # answer the first statistic rule: the first endpoint, and the hairpin source is masqueraded
    first = chains.trace_packet(ruleset, hooks, chains.Packet("tcp", "198.19.1.10", 40000, "198.18.128.10", 80),
                                [True])
    assert first.dnat == "198.19.1.10:8080" and first.snat == "MASQUERADE" and first.mark == 0
    # by line: the same answer
    line = next(s.line for s in first.steps if "statistic" in s.text)
    assert chains.trace_packet(ruleset, hooks, first.packet, {line: True}).dnat == first.dnat
    # no endpoints: REJECT in filter
    empty = chains.trace_packet(ruleset, hooks, chains.Packet("tcp", "198.19.1.50", 40000, "198.18.128.16", 80))
    assert empty.verdict == "REJECT" and empty.steps[-1].table == "filter"


def test_violation_names_rule_line_service_and_witness():
    c = lab_cluster()
    n = c.nodes[0]
    text = iptables.generate(c, n)
    bad = text.replace("--to-destination 198.19.2.10:8080", "--to-destination 198.19.2.10:8081", 1)
    line = next(i for i, l in enumerate(bad.split("\n"), 1) if "198.19.2.10:8081" in l)
    ks202 = verify(c, n, bad)["KS202"]
    assert ks202.status == VIOLATED
    finding = next(f for f in ks202.findings if "8081" in f.message)
    assert finding.subject.startswith("service default/")
    assert any(loc.span.file == "nodes/node-1/iptables.rules" and loc.span.line == line for loc in finding.locations)
    assert f"(line {line}) DNAT 198.19.2.10:8081" in finding.witness
    assert finding.witness.startswith("TCP 198.19.1.")
    assert finding.hint


def test_unmodelled_match_makes_a_violation_unknown_not_proved():
    """An ipset match in front of the dispatch may steal service traffic: kspec cannot tell, so UNKNOWN."""
    c = lab_cluster()
    n = c.nodes[0]
    text = iptables.generate(c, n)
    text = text.replace("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
                        "-A PREROUTING -m set --match-set blocked dst -j ACCEPT\n"
                        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES")
    verdicts = verify(c, n, text)
    assert verdicts["KS202"].status == UNKNOWN
    assert "-m set" in verdicts["KS202"].reason
    # the same match in front of a rule that changes nothing is harmless
    harmless = iptables.generate(c, n).replace(
        "-A PREROUTING -m comment", "-A PREROUTING -m set --match-set blocked dst -j LOG\n-A PREROUTING -m comment", 1)
    assert not problems(verify(c, n, harmless))


def test_foreign_docker_chains_leave_the_proofs_standing():
    c = lab_cluster()
    n = c.nodes[0]
    text = iptables.generate(c, n)
    nat_extra = (":DOCKER - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n"
                 "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n-A DOCKER -i docker0 -j RETURN\n"
                 "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80\n")
    filter_extra = (":DOCKER - [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n-A FORWARD -o docker0 -j DOCKER\n"
                    "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT\n-A DOCKER-USER -j RETURN\n")
    text = text.replace("*nat\n", "*nat\n" + nat_extra.split("\n", 1)[0] + "\n", 1)
    nat_rules = "\n".join(nat_extra.split("\n")[1:])
    text = text.replace("\nCOMMIT\n", "\n" + filter_extra.split("\n", 2)[2] + "COMMIT\n", 1)
    text = text.replace("*filter\n", "*filter\n:DOCKER - [0:0]\n:DOCKER-USER - [0:0]\n", 1)
    text = text[:text.rindex("COMMIT")] + nat_rules + "COMMIT\n"
    verdicts = verify(c, n, text)
    assert all(v.status == PROVED for k, v in verdicts.items() if k != "KS203"), problems(verdicts)
    # Docker masquerades whatever comes from its bridge network and leaves by another interface: for
    # clients in 172.17.0.0/16 an externalTrafficPolicy: Local service loses the client address
    ks203 = verdicts["KS203"]
    assert ks203.status == VIOLATED
    assert all("masqueraded" in f.message and f.witness.startswith("TCP 172.17.") and "web-local" in f.subject
               or "lb-local" in f.subject for f in ks203.findings)


def test_solver_limits_make_an_undecided_answer_unknown(monkeypatch):
    """A Z3 question that runs out of resources is UNKNOWN with the reason, never PROVED."""
    c = lab_cluster()
    n = c.nodes[0]
    text = iptables.generate(c, n).replace(
        "-A POSTROUTING -m comment", "-A POSTROUTING -s 198.19.0.0/16 -d 198.19.2.0/25 -j MASQUERADE\n"
        "-A POSTROUTING -m comment", 1)
    from kspec.verify import encode

    monkeypatch.setattr(encode, "RLIMIT_PER_SECOND", 1)
    ks201 = verify(c, n, text, ids=["KS201"], timeout=0.001)["KS201"]
    assert ks201.status == UNKNOWN and "gave up" in ks201.reason and "--timeout" in ks201.reason
    monkeypatch.undo()
    assert verify(c, n, text, ids=["KS201"])["KS201"].status == VIOLATED


def test_solver_wrapper():
    from kspec.verify.encode import PacketVars, member

    packet = PacketVars.make(4)
    inside = Intervals.of_network(ipaddress.ip_network("10.0.0.0/8"))
    answer = Solver(5).check(packet, [member(packet.fields[DST], inside), packet.fields[DST] != 0x0A000000])
    assert answer.status == "sat" and answer.values[DST] in inside
    assert Solver(5).check(packet, [member(packet.fields[DST], inside), packet.fields[DST] == 1]).status == "unsat"


def test_opaque_answers_cover():
    yes, no = (1, "-m set", True), (1, "-m set", False)
    other = (2, "-m physdev", True)
    assert covers([()])
    assert covers([(yes,), (no,)])
    assert not covers([(yes,)])
    assert not covers([(yes,), (no, other)])
    assert covers([(yes,), (no, other), (no, (2, "-m physdev", False))])


def test_malformed_input_is_an_input_error():
    c = lab_cluster()
    n = c.nodes[0]
    with pytest.raises(InputError) as info:
        check_node(c, n, "*nat\n-A KUBE-NOPE -j ACCEPT\nCOMMIT\n", "bad.rules", None, None, PACKET_IDS, 10)
    assert info.value.diagnostics[0].span.file == "bad.rules" and info.value.diagnostics[0].span.line == 2
    with pytest.raises(InputError) as info:
        check_node(c, n, iptables.generate(c, n), "ok.rules", "route replace 10.0.0.1/8 dev cbr0\n", "r.batch",
                   PACKET_IDS, 10)
    assert info.value.diagnostics[0].span.file == "r.batch"


def test_only_requested_invariants_run():
    c = lab_cluster()
    verdicts = check_node(c, c.nodes[0], iptables.generate(c, c.nodes[0]), "x", None, None, ["KS204", "KS101"], 10)
    assert [v.invariant for v in verdicts] == ["KS204"]


def test_without_routes_ks201_checks_the_rules_only():
    c = lab_cluster()
    n = c.nodes[0]
    verdict = check_node(c, n, iptables.generate(c, n), "x", None, None, ["KS201"], 10)[0]
    assert verdict.status == PROVED and verdict.checked == 2


# --- scale ----------------------------------------------------------------------------------------


def scale_cluster(n_services: int, per_service: int = 15, n_nodes: int = 100) -> ResolvedCluster:
    """ClusterIP services (every tenth a NodePort) with ``per_service`` endpoints spread over the nodes."""
    A = ipaddress.ip_address
    nodes = tuple(Node(f"node-{i}", (A(f"192.168.{i // 250}.{i % 250 + 1}"),),
                       (ipaddress.ip_network(f"10.{64 + i // 256}.{i % 256}.0/24"),)) for i in range(n_nodes))
    services, endpoints = [], {}
    k = 0
    for i in range(n_services):
        kind = "NodePort" if i % 10 == 0 else "ClusterIP"
        sp = ServicePort(80, "TCP", "http", 8080, 30000 + i // 10 if kind == "NodePort" else None)
        svc = replace(service(f"ns{i % 50}", f"svc{i}", sp, cluster_ips=[str(A(int(A("10.96.0.0")) + i + 1))]),
                      type=kind)
        backends = []
        for j in range(per_service):
            owner = nodes[(i + j) % n_nodes]
            address = A(int(owner.pod_cidrs[0].network_address) + 2 + (k // n_nodes) % 250)
            k += 1
            backends.append(Backend(address, 8080, "TCP", True, True, False, owner.name, None))
        services.append(svc)
        endpoints[svc.key] = ServiceEndpoints(svc.key, (PortEndpoints(sp, tuple(backends)),), "selector")
    settings = ClusterSettings(pod_cidrs=(ipaddress.ip_network("10.64.0.0/10"),))
    return ResolvedCluster(settings, nodes, (), tuple(services), endpoints)


def measure(n_services: int) -> tuple[float, int]:
    c = scale_cluster(n_services)
    n = c.nodes[0]
    text, route_text = iptables.generate(c, n), routes.generate(c, n)
    start = time.perf_counter()
    verdicts = check_node(c, n, text, "iptables.rules", route_text, "routes.batch", PACKET_IDS, 10)
    elapsed = time.perf_counter() - start
    assert all(v.status == PROVED for v in verdicts), [(v.invariant, v.status) for v in verdicts]
    return elapsed, text.count("\n")


def test_scale_100_services():
    elapsed, lines = measure(100)
    print(f"\n100 services x 15 endpoints: {lines} lines verified in {elapsed:.2f}s")
    assert elapsed < 5


@pytest.mark.slow
@pytest.mark.parametrize("n_services", [1_000, 10_000])
def test_scale_verify_time(n_services):
    elapsed, lines = measure(n_services)
    print(f"\n{n_services} services x 15 endpoints: {lines} lines verified in {elapsed:.1f}s")
    assert elapsed < 60


# --- the three walks and the two deciders agree ----------------------------------------------------------

EXTRA_RULES = """-A PREROUTING -s 198.19.1.0/25 -p udp -m multiport --dports 5000:5010,6000 -j KUBE-MARK-MASQ
-A PREROUTING ! -s 198.19.0.0/16 -d 198.19.2.0/24 -p tcp -m tcp ! --dport 1024:65535 -j DNAT --to-destination 198.19.3.10:8080
-A PREROUTING -m iprange --src-range 198.18.0.5-198.18.0.20 -p tcp -m tcp --sport 1:1023 -j RETURN
"""


def _outcome(leaf) -> tuple:
    return leaf.verdict, chains.dnat_text(leaf.dnat, 4), leaf.snat, leaf.mark


@pytest.fixture(scope="module")
def walks():
    from kspec.verify.encode import PacketVars, universe

    c = lab_cluster()
    n = c.nodes[0]
    text = iptables.generate(c, n).replace("-A PREROUTING -m comment", EXTRA_RULES + "-A PREROUTING -m comment", 1)
    program = chains.Program(iptables_save.parse(text, "x"), chains.local_intervals(["198.18.0.11", "198.19.1.1"], 4),
                             Intervals.of_network(ipaddress.ip_network("198.19.1.0/24")))
    fields = [universe(i, 4) for i in range(5)]
    symbolic = chains.explore(program, "outside", fields, symbolic=True)
    return program, symbolic, PacketVars.make(4)


ADDRESSES = ["198.18.128.10", "198.18.128.13", "198.18.128.16", "198.18.200.10", "198.18.200.20", "198.18.0.11",
             "198.19.1.10", "198.19.2.77", "198.19.1.200", "198.18.64.9", "198.18.0.7", "203.0.113.9", "127.0.0.1"]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(ADDRESSES), st.sampled_from(ADDRESSES), st.sampled_from(["tcp", "udp"]),
       st.sampled_from([80, 30080, 30082, 30084, 5005, 6000, 22, 8080]), st.sampled_from([22, 40000, 5000]),
       st.lists(st.booleans(), max_size=6))
def test_concrete_refined_and_symbolic_walks_agree(walks, src, dst, proto, dport, sport, answers):
    """One packet: trace_packet's outcome is among the refine walk's, which equal the Z3 leaves it satisfies."""
    import z3

    program, symbolic, packet_vars = walks
    values = [int(ipaddress.ip_address(src)), int(ipaddress.ip_address(dst)), chains.protocol_number(proto), sport,
              dport]
    refined = {_outcome(leaf) for leaf in chains.explore(program, "outside", values)}
    binding = [(var, z3.BitVecVal(v, var.size())) for var, v in zip(packet_vars.fields, values)]
    solved = set()
    for k, leaf in enumerate(symbolic):
        holds = all((values[atom[1]] in atom[2]) == inside for atom, inside in leaf.guard_list())
        if holds or k % 37 == len(answers):  # Z3's reading of the guard, on the leaves that count and a sample
            guard = z3.And(chains.leaf_formula(leaf, packet_vars) or [z3.BoolVal(True)])
            assert z3.is_true(z3.simplify(z3.substitute(guard, *binding))) == holds
        if holds:
            solved.add(_outcome(leaf))
    assert refined == solved
    trace = chains.trace_packet(program, chains.Hooks("outside"), chains.Packet(proto, src, sport, dst, dport), answers)
    assert (trace.verdict, trace.dnat, trace.snat, trace.mark) in refined


def test_ks205_solver_agrees_with_the_structural_shortcut(monkeypatch):
    """Forcing every dispatch rule through Z3 proves the clean rule set and still catches a stray rule."""
    from kspec.verify import packet_invariants

    monkeypatch.setattr(packet_invariants, "_box_within", lambda box, allowed: False)
    c = lab_cluster()
    for n in c.nodes:
        assert verify(c, n, ids=["KS205"])["KS205"].status == PROVED
    n = c.nodes[0]
    text = iptables.generate(c, n)
    nat = text.index("*nat")
    web = next(s.hash for s in port_specs(c, n, 4) if s.service.name == "web")
    stray = text[:nat] + text[nat:].replace(
        "-A KUBE-SERVICES -m comment", f"-A KUBE-SERVICES -p tcp -m tcp --dport 80:81 -d 198.18.128.10 "
        f"-j KUBE-SVC-{web}\n-A KUBE-SERVICES -m comment", 1)
    ks205 = verify(c, n, stray, ids=["KS205"])["KS205"]
    assert ks205.status == VIOLATED and "198.18.128.10:81" in ks205.findings[0].message


@pytest.mark.parametrize("match, matches", [
    ("-f", False), ("! -f", True), ("-p tcp -m tcp --syn", True), ("-p tcp -m tcp ! --syn", False),
    ("! -p all", False), ("-m conntrack --ctstate NEW", True), ("-m conntrack ! --ctstate NEW", False),
    ("-m conntrack --ctstate ESTABLISHED,RELATED", False), ("-m mark --mark 0x0/0x4000", True),
    ("-m mark ! --mark 0x4000/0x4000", True), ("-m addrtype --dst-type LOCAL", True),
    ("-m addrtype --src-type LOCAL", False), ("-s 203.0.113.0/24 -d 198.18.0.11", True),
    ("! -s 203.0.113.0/24", False), ("-p tcp -m tcp --dport 30000:31000", True),
    ("-p tcp -m multiport --dports 80,30080", True), ("-p udp", False), ("-i cbr0", False),
    ("-m iprange --src-range 203.0.113.1-203.0.113.9", True),
])
def test_match_semantics_on_a_first_packet(match, matches):
    """What each modelled match says about a new TCP connection from outside to the node's port 30080."""
    text = f"*filter\n:INPUT ACCEPT [0:0]\n-A INPUT {match} -j DROP\nCOMMIT\n"
    ruleset = iptables_save.parse(text, "x")
    hooks = chains.Hooks("outside", local=("198.18.0.11",))
    trace = chains.trace_packet(ruleset, hooks, chains.Packet("tcp", "203.0.113.5", 40000, "198.18.0.11", 30080))
    assert (trace.verdict == "DROP") == matches


@pytest.mark.parametrize("forward, status", [
    ("-A FORWARD -m set --match-set blocked src -j DROP", UNKNOWN),  # drops pods only if the set holds them
    ("-A FORWARD -m set --match-set blocked src -j DROP\n-A FORWARD -s 198.19.0.0/16 -j DROP", VIOLATED),
    ("-A FORWARD -m physdev --physdev-is-bridged -j LOG", PROVED),  # harmless whatever it matches
])
def test_ks201_with_unmodelled_matches(forward, status):
    """A violation is certain only if it happens whatever the unmodelled match answers."""
    c = lab_cluster()
    n = c.nodes[0]
    text = iptables.generate(c, n).replace("-A FORWARD -m", forward + "\n-A FORWARD -m", 1)
    assert verify(c, n, text, ids=["KS201"])["KS201"].status == status
