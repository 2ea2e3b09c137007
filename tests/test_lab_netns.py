"""The network-namespace lab: the pure plan, then real packets in real namespaces."""

from __future__ import annotations

import gc
import ipaddress
import os
import re
import subprocess
from pathlib import Path

import pytest

from kspec.diagnostics import InputError
from kspec.lab import (LabCluster, LabError, LabUnavailable, NodeFiles, check_environment, cleanup, new_prefix,
                       node_files_from_dir, plan)
from kspec.lab.netns import list_namespaces
from kspec.model import Backend, ClusterSettings, Node, Pod, PortEndpoints, ResolvedCluster, Service, ServiceEndpoints, ServicePort

A = ipaddress.ip_address
N = ipaddress.ip_network

SETTINGS = ClusterSettings(pod_cidrs=(N("198.19.0.0/16"),), service_cidrs=(N("198.18.128.0/20"),))
NODES = (
    Node("node-1", (A("198.18.0.11"),), (N("198.19.1.0/24"),)),
    Node("node-2", (A("198.18.0.12"),), (N("198.19.2.0/24"),)),
)
PODS = (
    Pod("default", "a", "node-1", (A("198.19.1.10"),)),
    Pod("default", "b", "node-2", (A("198.19.2.10"),)),
    Pod("default", "c", "node-2", (A("198.19.2.11"),)),
)
WEB = Service("default", "web", ports=(ServicePort(80, target_port=8080, node_port=30080),),
              cluster_ips=(A("198.18.128.10"),), type="NodePort")
EMPTY = Service("default", "empty", ports=(ServicePort(80),), cluster_ips=(A("198.18.128.11"),))
WEB_ENDPOINTS = ServiceEndpoints(
    ("default", "web"),
    (PortEndpoints(WEB.ports[0], (Backend(A("198.19.2.10"), 8080, "TCP", True, True, False, "node-2", ("default", "b")),)),),
    "selector",
)
CLUSTER = ResolvedCluster(SETTINGS, NODES, PODS, (WEB, EMPTY), {("default", "web"): WEB_ENDPOINTS})
OUTSIDE = "198.18.0.100"

# host-gw: each node routes the other node's podCIDR via that node's IP
ROUTES = {
    "node-1": "route add 198.19.2.0/24 via 198.18.0.12\n",
    "node-2": "route add 198.19.1.0/24 via 198.18.0.11\n",
}

# A minimal kube-proxy-shaped rule set, the same on both nodes: web's cluster IP
# and nodePort DNAT to pod b (masquerading hairpin and nodePort traffic), and a
# REJECT for the service without endpoints.
RULES = """\
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-WEB - [0:0]
:KUBE-SEP-WEB - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -j MASQUERADE --random-fully
-A KUBE-SERVICES -d 198.18.128.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-WEB
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-NODEPORTS -p tcp -m tcp --dport 30080 -j KUBE-MARK-MASQ
-A KUBE-NODEPORTS -p tcp -m tcp --dport 30080 -j KUBE-SVC-WEB
-A KUBE-SVC-WEB -j KUBE-SEP-WEB
-A KUBE-SEP-WEB -s 198.19.2.10/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-WEB -p tcp -m tcp -j DNAT --to-destination 198.19.2.10:8080
COMMIT
*filter
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A FORWARD -m conntrack --ctstate NEW -j KUBE-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -j KUBE-SERVICES
-A KUBE-SERVICES -d 198.18.128.11/32 -p tcp -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
COMMIT
"""


def lab_plan(**changes: object):
    return plan(CLUSTER, "ks-test-unit-", outside_ip=OUTSIDE, **changes)


# ------------------------------------------------------------ pure plan


def test_plan_names_are_unique_and_short() -> None:
    p = lab_plan()
    assert len(set(p.namespaces)) == len(p.namespaces) == 1 + 2 + 3 + 1
    assert all(ns.startswith("ks-test-unit-") for ns in p.namespaces)
    interfaces = {n.switch_port for n in p.nodes} | {pod.bridge_port for pod in p.pods} | {"out", "eth0", "br0", "cbr0"}
    mentioned = {word for cmd in p.commands() for line in cmd.stdin.splitlines()
                 for word in re.findall(r"(?:link add|master|dev|peer name) (\S+)", line)}
    assert mentioned <= interfaces
    assert all(len(name) <= 15 for name in interfaces)
    assert len({n.switch_port for n in p.nodes}) == 2 and len({pod.bridge_port for pod in p.pods}) == 3


def test_plan_addresses() -> None:
    p = lab_plan()
    assert p.node_network == N("198.18.0.0/24")
    assert [str(n.ip) for n in p.nodes] == ["198.18.0.11/24", "198.18.0.12/24"]
    assert [str(n.bridge[0]) for n in p.nodes] == ["198.19.1.1/24", "198.19.2.1/24"]
    assert [(str(pod.ip), str(pod.gateway)) for pod in p.pods] == [
        ("198.19.1.10/24", "198.19.1.1"), ("198.19.2.10/24", "198.19.2.1"), ("198.19.2.11/24", "198.19.2.1")]
    assert str(p.outside.ip) == "198.18.0.100/24"
    assert str(p.router) == "198.18.0.254/24"
    assert p.netns_of("pod/default/c") == "ks-test-unit-p-2"
    assert p.netns_of("node/node-2") == "ks-test-unit-n-1"


def test_plan_never_touches_the_host_namespace() -> None:
    """Only `netns add` runs in the host namespace; everything else names its namespace."""
    p = lab_plan()
    for cmd in p.commands():
        if cmd.argv[:2] == ("ip", "-batch"):
            assert all(line.startswith("netns add ks-test-unit-") for line in cmd.stdin.splitlines())
        else:
            assert cmd.argv[1] in ("-n", "netns") and cmd.argv[2 if cmd.argv[1] == "-n" else 3] in p.namespaces
        for line in cmd.stdin.splitlines():
            if "type veth" in line:
                assert re.search(r"netns ks-test-unit-\S+$", line), line


def test_plan_host_network_and_unplaced_pods() -> None:
    pods = (*PODS, Pod("kube-system", "proxy", "node-1", (A("198.18.0.11"),), host_network=True),
            Pod("default", "pending", None))
    p = plan(ResolvedCluster(SETTINGS, NODES, pods, (), {}), "ks-test-unit-")
    proxy = p.pods[-1]
    assert proxy.host_network and proxy.netns == p.netns_of("node/node-1") and proxy.gateway is None
    assert p.skipped == ("pod default/pending: not on any node of the lab",)
    assert len(p.namespaces) == 1 + 2 + 3  # no namespace of its own for the hostNetwork pod, none for pending


def test_node_network_stays_narrow_when_a_24_would_overlap_pods() -> None:
    nodes = (Node("n1", (A("198.19.0.250"),), (N("198.19.1.0/24"),)),
             Node("n2", (A("198.19.0.251"),), (N("198.19.2.0/24"),)))
    p = plan(ResolvedCluster(SETTINGS, nodes, (), (), {}), "ks-test-unit-")
    assert p.node_network == N("198.19.0.250/31")
    assert p.router is None


FOREIGN_NODE = Node("node-9", (A("10.0.0.9"),), (N("10.244.9.0/24"),))


@pytest.mark.parametrize(
    "cluster, outside, needles",
    [
        (ResolvedCluster(SETTINGS, (FOREIGN_NODE,), (), (), {}), None,
         ["node node-9 address 10.0.0.9", "node node-9 address 10.244.9.0/24"]),
        (ResolvedCluster(SETTINGS, (FOREIGN_NODE,), (Pod("default", "x", "node-9", (A("10.244.9.5"),)),), (), {}),
         None, ["node node-9 address 10.0.0.9", "node node-9 address 10.244.9.0/24", "pod default/x address 10.244.9.5"]),
        (ResolvedCluster(SETTINGS, NODES, (), (Service("default", "s", cluster_ips=(A("10.96.0.10"),)),), {}), None,
         ["service default/s address 10.96.0.10"]),
        (CLUSTER, "192.0.2.1", ["outside address 192.0.2.1"]),
    ],
)
def test_plan_refuses_addresses_outside_the_lab_range(
    cluster: ResolvedCluster, outside: str | None, needles: list[str]
) -> None:
    with pytest.raises(InputError) as caught:
        plan(cluster, "ks-test-unit-", outside_ip=outside)
    diagnostics = caught.value.diagnostics
    assert [d.message.split(" is outside")[0] for d in diagnostics] == needles
    assert all("198.18.0.0/15" in d.message and d.hint for d in diagnostics)
    assert plan(cluster, "ks-test-unit-", outside_ip=outside, allow_any_addresses=True).prefix == "ks-test-unit-"


def test_plan_refuses_endpoints_outside_the_lab_range() -> None:
    stray = ServiceEndpoints(("default", "web"), (PortEndpoints(WEB.ports[0], (
        Backend(A("203.0.113.7"), 8080, "TCP", True, True, False, None, None),)),), "manual")
    with pytest.raises(InputError, match="endpoint of service default/web address 203.0.113.7"):
        plan(ResolvedCluster(SETTINGS, NODES, PODS, (WEB,), {("default", "web"): stray}), "ks-test-unit-")


@pytest.mark.parametrize(
    "pod, needle",
    [
        (Pod("default", "x", "node-1", (A("198.19.2.77"),)), "not in a podCIDR of node node-1"),
        (Pod("default", "x", "node-1", (A("198.19.1.1"),)), "bridge address"),
    ],
)
def test_plan_refuses_pods_it_cannot_wire(pod: Pod, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        plan(ResolvedCluster(SETTINGS, NODES, (pod,), (), {}), "ks-test-unit-")


@pytest.mark.parametrize("prefix", ["", "ks-", "test-", "ks-Bad-", "ks-much-too-long-prefix-"])
def test_plan_refuses_bad_prefixes(prefix: str) -> None:
    with pytest.raises(InputError, match="prefix"):
        plan(CLUSTER, prefix)


def test_plan_scales_linearly() -> None:
    """300 nodes x 10 pods: unique names, each pod bridged into its own node."""
    nodes = tuple(Node(f"n{i}", (A(f"198.18.{i // 250}.{i % 250 + 1}"),), (N(f"198.19.{i}.0/24"),)) for i in range(255))
    pods = tuple(Pod("default", f"p{i}-{k}", f"n{i}", (A(f"198.19.{i}.{k + 2}"),)) for i in range(255) for k in range(10))
    p = plan(ResolvedCluster(SETTINGS, nodes, pods, (), {}), new_prefix("test"))
    assert len(set(p.namespaces)) == 1 + 255 + 2550
    assert len({pod.bridge_port for pod in p.pods}) == 2550
    assert all(pod.gateway in pod.ip.network for pod in p.pods)


# ------------------------------------------------------ real namespaces


def _environment_or_skip() -> None:
    try:
        check_environment()
    except LabUnavailable as exc:
        pytest.skip(f"lab unavailable: {exc}")


def write_compiled(directory: Path) -> Path:
    """The `kspec compile` layout: DIR/nodes/<node>/{iptables.rules,routes.batch}."""
    for node, routes in ROUTES.items():
        folder = directory / "nodes" / node
        folder.mkdir(parents=True)
        (folder / "iptables.rules").write_text(RULES)
        (folder / "routes.batch").write_text(routes)
    return directory


def test_node_files_from_a_compiled_directory(tmp_path: Path) -> None:
    files = node_files_from_dir(write_compiled(tmp_path), lab_plan())
    assert files == {node: NodeFiles(RULES, ROUTES[node]) for node in ROUTES}
    (tmp_path / "nodes" / "node-2" / "ipvs.rules").write_text("-A -t 198.18.128.10:80 -s rr\n")
    with pytest.raises(LabUnavailable, match="ipvs"):
        node_files_from_dir(tmp_path, lab_plan())
    with pytest.raises(LabError, match="does not exist"):
        node_files_from_dir(tmp_path / "missing", lab_plan())


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    _environment_or_skip()
    p = plan(CLUSTER, new_prefix("test"), outside_ip=OUTSIDE)
    with LabCluster(p, rules_dir=write_compiled(tmp_path_factory.mktemp("compiled"))) as running:
        for pod in ("a", "b", "c"):
            running.start_responder(f"pod/default/{pod}", 8080)
        running.start_responder("pod/default/c", 5353, proto="udp")
        yield running
    assert list_namespaces(p.prefix) == []


@pytest.mark.parametrize("client, server, ip", [("a", "b", "198.19.2.10"), ("b", "a", "198.19.1.10"),
                                                ("c", "b", "198.19.2.10")])
def test_pod_to_pod_without_nat(lab: LabCluster, client: str, server: str, ip: str) -> None:
    result = lab.connect(f"pod/default/{client}", ip, 8080)
    assert result.ok, result.detail
    assert result.responder_name == f"default/{server}"
    assert result.seen_source == str(lab.plan.pods[ord(client) - ord("a")].ip.ip)


def test_pod_to_pod_udp(lab: LabCluster) -> None:
    result = lab.connect("pod/default/a", "198.19.2.11", 5353, proto="udp")
    assert result.ok and result.responder_name == "default/c" and result.seen_source == "198.19.1.10"


def test_closed_port_is_refused_and_unknown_pod_is_swallowed(lab: LabCluster) -> None:
    assert lab.connect("pod/default/a", "198.19.2.11", 9999).refused
    assert lab.connect("pod/default/a", "198.19.3.10", 8080, timeout=0.5).timeout


@pytest.mark.parametrize("client", ["a", "c"])  # c shares b's bridge: needs bridge-nf-call-iptables
def test_cluster_ip_dnat_to_the_pod(lab: LabCluster, client: str) -> None:
    result = lab.connect(f"pod/default/{client}", "198.18.128.10", 80)
    assert result.ok, result.detail
    assert result.responder_name == "default/b"
    assert result.seen_source == {"a": "198.19.1.10", "c": "198.19.2.11"}[client]


def test_cluster_ip_hairpin_is_masqueraded(lab: LabCluster) -> None:
    result = lab.connect("pod/default/b", "198.18.128.10", 80)
    assert result.ok, result.detail
    assert (result.responder_name, result.seen_source) == ("default/b", "198.19.2.1")


def test_service_without_endpoints_is_rejected(lab: LabCluster) -> None:
    result = lab.connect("pod/default/a", "198.18.128.11", 80)
    assert result.refused, result.detail


def test_node_port_from_outside(lab: LabCluster) -> None:
    result = lab.connect("outside", "198.18.0.11", 30080)
    assert result.ok, result.detail
    assert (result.responder_name, result.seen_source) == ("default/b", "198.18.0.11")


def test_rules_are_loaded_in_the_node_namespaces_only(lab: LabCluster) -> None:
    saved = lab.exec("node/node-1", ["iptables-save", "-t", "nat"])
    assert saved.returncode == 0 and "KUBE-SEP-WEB" in saved.stdout
    host = subprocess.run(["ip", "netns", "identify"], capture_output=True, text=True, timeout=5)
    assert host.stdout.strip() == ""  # the test process itself stays in the host namespace


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_namespaces_and_responders_are_gone_after_an_exception(exc: type[BaseException]) -> None:
    _environment_or_skip()
    p = plan(ResolvedCluster(SETTINGS, NODES, PODS[:1], (), {}), new_prefix("test"))
    with pytest.raises(exc, match="boom"):
        with LabCluster(p) as running:
            running.start_responder("pod/default/a", 8080)
            assert len(list_namespaces(p.prefix)) == 4
            pids = _pids(p.netns_of("pod/default/a"))
            assert len(pids) == 1
            raise exc("boom")
    assert list_namespaces(p.prefix) == []
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)


def _pids(netns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=5, check=True)
    return [int(pid) for pid in done.stdout.split()]


def test_a_lab_never_closed_is_torn_down_when_collected() -> None:
    _environment_or_skip()
    p = plan(ResolvedCluster(SETTINGS, NODES, (), (), {}), new_prefix("test"))
    forgotten = LabCluster(p)
    forgotten.build()
    assert len(list_namespaces(p.prefix)) == 3
    del forgotten
    gc.collect()
    assert list_namespaces(p.prefix) == []


def test_failed_build_leaves_nothing_and_cleanup_removes_leftovers() -> None:
    _environment_or_skip()
    p = plan(ResolvedCluster(SETTINGS, NODES, PODS, (), {}), new_prefix("test"))
    broken = {"node-1": NodeFiles(routes_batch="route add 198.19.2.0/24 via 198.18.7.7\n")}  # gateway off-link
    with pytest.raises(LabError, match="routes.batch of node node-1"):
        with LabCluster(p, files=broken):
            pass
    assert list_namespaces(p.prefix) == []
    subprocess.run(["ip", "netns", "add", f"{p.prefix}stray"], check=True, timeout=5)
    assert cleanup(p.prefix) == [f"{p.prefix}stray"]
    assert list_namespaces(p.prefix) == []
