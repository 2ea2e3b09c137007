"""kube-proxy IPVS mode: ipvsadm, ipset, iptables and kube-ipvs0 texts.

The ``test_kp_*`` cases replay kube-proxy's own pkg/proxy/ipvs/proxier_test.go
(commit 531be81208e2274ef42e72525a26610a9622bcdf) with the same objects and
assert what it asserts: virtual servers and their real servers, ipset
entries, and the (jump, match-set) sequence of a chain, nat rules before
filter rules as its getRules reads them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from kspec.backends import ipset, ipvs, ipvs_iptables, kube_ipvs0
from kspec.model import (
    IPVS_SCHEDULERS,
    Backend,
    ClusterSettings,
    Node,
    PortEndpoints,
    ProxySettings,
    ResolvedCluster,
    Service,
    ServiceEndpoints,
    ServicePort,
)

ip = ipaddress.ip_address
net = ipaddress.ip_network
GOLDEN = Path(__file__).parent / "golden" / "ipvs"
TEST_NODE = "test-node"
BACKENDS = {"ipvs.rules": ipvs, "ipset.rules": ipset, "iptables.rules": ipvs_iptables,
            "kube-ipvs0.batch": kube_ipvs0}


# --------------------------------------------------------------------------- building clusters

def node(name: str = TEST_NODE, *ips: str, pod_cidr: str | None = None) -> Node:
    return Node(name, tuple(ip(a) for a in ips), (net(pod_cidr),) if pod_cidr else ())


def port(number: int = 80, protocol: str = "TCP", name: str = "p80", node_port: int | None = None,
         target: int | None = None) -> ServicePort:
    return ServicePort(number, protocol, name, target, node_port)


def service(name: str = "svc1", namespace: str = "ns1", cluster_ip: str = "10.20.30.41",
            ports: tuple[ServicePort, ...] = (port(),), **kw) -> Service:
    for key in ("external_ips", "load_balancer_ips"):
        kw[key] = tuple(ip(a) for a in kw.get(key, ()))
    kw["load_balancer_source_ranges"] = tuple(net(n) for n in kw.get("load_balancer_source_ranges", ()))
    return Service(namespace, name, ports=ports, cluster_ips=(ip(cluster_ip),) if cluster_ip else (), **kw)


def ep(address: str, number: int = 80, node_name: str | None = None, ready: bool = True,
       serving: bool = True, terminating: bool = False) -> tuple:
    return (address, number, node_name, ready, serving, terminating)


def cluster(services: list[Service], endpoints: dict | None = None, nodes: tuple[Node, ...] = (),
            pod_cidr: str = "10.244.0.0/16", service_cidrs: tuple[str, ...] = ("10.96.0.0/12",),
            **proxy) -> ResolvedCluster:
    """``endpoints`` maps (namespace, name) -> {port name: [ep(...), ...]}."""
    endpoints = endpoints or {}
    resolved = {}
    for svc in services:
        given_ports = endpoints.get(svc.key, {})
        ports = tuple(PortEndpoints(sp, tuple(
            Backend(ip(a), n, sp.protocol, r, s, t, nd, None) for a, n, nd, r, s, t in given_ports.get(sp.name, ())))
            for sp in svc.ports)
        resolved[svc.key] = ServiceEndpoints(svc.key, ports, "selector")
    proxy.setdefault("mode", "ipvs")
    settings_ = ClusterSettings(pod_cidrs=(net(pod_cidr),), service_cidrs=tuple(net(c) for c in service_cidrs),
                                proxy=ProxySettings(**proxy))
    return ResolvedCluster(settings_, nodes, (), tuple(services), resolved)


def everything(c: ResolvedCluster, n: Node, family: int = 4) -> dict[str, str]:
    return {name: module.generate(c, n, family) for name, module in BACKENDS.items()}


# --------------------------------------------------------------------------- reading the texts

SCHED = "|".join(IPVS_SCHEDULERS)
ADDR = r"(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-f:.]+\])"
SERVICE = rf"(?P<proto>-t|-u|--sctp-service) (?P<vip>{ADDR}):(?P<vport>\d{{1,5}})"
VS_LINE = re.compile(rf"-A {SERVICE} -s (?P<sched>{SCHED})(?: -p (?P<timeout>\d+))?(?: -b (?P<flags>[a-z0-9-]+(?:,[a-z0-9-]+)*))?")
RS_LINE = re.compile(rf"-a {SERVICE} -r (?P<rip>{ADDR}):(?P<rport>\d{{1,5}}) (?P<fwd>-[gim]) -w (?P<weight>\d+)")
PROTO_NUMBER = {"-t": 6, "-u": 17, "--sctp-service": 132}


def _address(text: str):
    return ip(text.strip("[]"))


def check_ipvsadm_grammar(text: str) -> None:
    """Every line is an ``ipvsadm-save -n`` line, in ipvsadm's own sorted order.

    Grammar (what ipvsadm -S prints for kube-proxy's services):
      -A {-t|-u|--sctp-service} VIP:PORT -s SCHED [-p TIMEOUT] [-b FLAG[,FLAG]...]
      -a {-t|-u|--sctp-service} VIP:PORT -r RIP:RPORT {-g|-i|-m} -w WEIGHT
    each -a right after the -A of its virtual service (or a sibling -a);
    services sorted by (protocol number, address, port), real servers by
    (address, port), both unique.
    """
    assert text == "" or text.endswith("\n")
    current = None
    seen_vs, seen_rs = [], []
    for line in text.splitlines():
        if m := VS_LINE.fullmatch(line):
            key = (PROTO_NUMBER[m["proto"]], int(_address(m["vip"])), int(m["vport"]))
            assert not seen_vs or seen_vs[-1] < key, f"virtual servers out of order at {line!r}"
            assert 0 < key[2] < 65536
            if m["timeout"]:
                assert int(m["timeout"]) > 0
            seen_vs.append(key)
            current, seen_rs = (m["proto"], m["vip"], m["vport"]), []
        elif m := RS_LINE.fullmatch(line):
            assert current == (m["proto"], m["vip"], m["vport"]), f"real server outside its service: {line!r}"
            key = (int(_address(m["rip"])), int(m["rport"]))
            assert not seen_rs or seen_rs[-1] < key, f"real servers out of order at {line!r}"
            assert 0 < key[1] < 65536 and 0 <= int(m["weight"]) <= 65535
            assert _address(m["rip"]).version == _address(m["vip"]).version
            seen_rs.append(key)
        else:
            raise AssertionError(f"not an ipvsadm-save line: {line!r}")


def virtual_servers(text: str) -> dict[tuple[str, str], dict]:
    """{(protocol flag, "vip:port"): {"sched", "timeout", "flags", "rs": ["rip:rport", ...]}}."""
    check_ipvsadm_grammar(text)
    result: dict[tuple[str, str], dict] = {}
    for line in text.splitlines():
        if m := VS_LINE.fullmatch(line):
            result[(m["proto"], f"{m['vip']}:{m['vport']}")] = {
                "sched": m["sched"], "timeout": m["timeout"], "flags": m["flags"], "rs": []}
        elif m := RS_LINE.fullmatch(line):
            assert (m["fwd"], m["weight"]) == ("-m", "1")
            result[(m["proto"], f"{m['vip']}:{m['vport']}")]["rs"].append(f"{m['rip']}:{m['rport']}")
    return result


def set_entries(text: str) -> dict[str, list[str]]:
    sets: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = line.split(" ")
        if words[0] == "create":
            sets[words[1]] = []
        else:
            assert words[0] == "add" and len(words) == 3, line
            sets[words[1]].append(words[2])
    return sets


def chain(text: str, name: str) -> list[tuple[str, str | None]]:
    """(jump, match-set) of each rule of a chain, nat rules then filter rules."""
    rules = []
    for line in text.splitlines():
        if line.startswith(f"-A {name} "):
            words = line.split()
            match_set = words[words.index("--match-set") + 1] if "--match-set" in words else None
            rules.append((words[words.index("-j") + 1], match_set))
    return rules


# --------------------------------------------------------------------------- kube-proxy's own cases

def test_kp_node_port_ipv4_two_endpoints():
    """TestNodePortIPv4 "1 service with node port, has 2 endpoints": the IPv6 endpoint and node IP are ignored."""
    svc = service(type="NodePort", ports=(port(node_port=3001),))
    c = cluster([svc], {svc.key: {"p80": [ep("10.180.0.1"), ep("1002:ab8::2:10")]}})
    n = node(TEST_NODE, "100.101.102.103", "2001:db8::1:1")
    assert ipvs.generate(c, n) == (
        "-A -t 10.20.30.41:80 -s rr\n"
        "-a -t 10.20.30.41:80 -r 10.180.0.1:80 -m -w 1\n"
        "-A -t 100.101.102.103:3001 -s rr\n"
        "-a -t 100.101.102.103:3001 -r 10.180.0.1:80 -m -w 1\n")


def test_kp_node_port_udp():
    """TestNodePortIPv4 "1 UDP service with node port, has endpoints" (nodePortAddresses 0.0.0.0/0)."""
    svc = service(type="NodePort", ports=(port(protocol="UDP", node_port=3001),))
    c = cluster([svc], {svc.key: {"p80": [ep("10.180.0.1")]}}, nodeport_addresses=(net("0.0.0.0/0"),))
    n = node(TEST_NODE, "100.101.102.103")
    out = everything(c, n)
    assert virtual_servers(out["ipvs.rules"]) == {
        ("-u", "10.20.30.41:80"): {"sched": "rr", "timeout": None, "flags": None, "rs": ["10.180.0.1:80"]},
        ("-u", "100.101.102.103:3001"): {"sched": "rr", "timeout": None, "flags": None, "rs": ["10.180.0.1:80"]},
    }
    assert set_entries(out["ipset.rules"])["KUBE-NODE-PORT-UDP"] == ["3001"]
    rules = out["iptables.rules"]
    assert chain(rules, "KUBE-NODE-PORT") == [("KUBE-MARK-MASQ", "KUBE-NODE-PORT-UDP"),
                                              ("ACCEPT", "KUBE-HEALTH-CHECK-NODE-PORT")]
    assert chain(rules, "KUBE-SERVICES") == [("RETURN", None), ("KUBE-MARK-MASQ", "KUBE-CLUSTER-IP"),
                                             ("KUBE-NODE-PORT", None), ("ACCEPT", "KUBE-CLUSTER-IP")]
    assert "-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN" in rules.splitlines()


def test_kp_node_port_no_endpoints():
    """TestNodePortIPv4 "service has node port but no endpoints": virtual servers without real servers."""
    svc = service(type="NodePort", ports=(port(node_port=3001),))
    assert ipvs.generate(cluster([svc]), node(TEST_NODE, "100.101.102.103")) == (
        "-A -t 10.20.30.41:80 -s rr\n-A -t 100.101.102.103:3001 -s rr\n")


def test_kp_node_port_sctp_multiple_node_ips():
    """TestNodePortIPv4 "node port service with protocol sctp on a node with multiple nodeIPs"."""
    svc = service(type="NodePort", ports=(port(protocol="SCTP", node_port=3001),))
    c = cluster([svc], {svc.key: {"p80": [ep("10.180.0.1")]}})
    n = node(TEST_NODE, "100.101.102.103", "100.101.102.104", "100.101.102.105",
             "2001:db8::1:1", "2001:db8::1:2", "2001:db8::1:3")
    out = everything(c, n)
    servers = virtual_servers(out["ipvs.rules"])
    assert sorted(servers) == [("--sctp-service", a) for a in (
        "10.20.30.41:80", "100.101.102.103:3001", "100.101.102.104:3001", "100.101.102.105:3001")]
    assert all(s["rs"] == ["10.180.0.1:80"] for s in servers.values())
    assert set_entries(out["ipset.rules"])["KUBE-NODE-PORT-SCTP-HASH"] == [
        "100.101.102.103,sctp:3001", "100.101.102.104,sctp:3001", "100.101.102.105,sctp:3001"]


def test_kp_node_port_sctp_local():
    """TestNodePortIPv4 "node port service with protocol sctp and externalTrafficPolicy local"."""
    svc = service(type="NodePort", ports=(port(protocol="SCTP", node_port=3001),), external_traffic_policy="Local")
    c = cluster([svc], {svc.key: {"p80": [ep("10.180.0.1", node_name=TEST_NODE), ep("10.180.1.1", node_name="other-node")]}})
    out = everything(c, node(TEST_NODE, "100.101.102.103"))
    servers = virtual_servers(out["ipvs.rules"])
    assert servers[("--sctp-service", "10.20.30.41:80")]["rs"] == ["10.180.0.1:80", "10.180.1.1:80"]
    assert servers[("--sctp-service", "100.101.102.103:3001")]["rs"] == ["10.180.0.1:80"]
    sets = set_entries(out["ipset.rules"])
    assert sets["KUBE-NODE-PORT-SCTP-HASH"] == sets["KUBE-NODE-PORT-LOCAL-SCTP-HASH"] == ["100.101.102.103,sctp:3001"]
    assert chain(out["iptables.rules"], "KUBE-NODE-PORT") == [
        ("RETURN", "KUBE-NODE-PORT-LOCAL-SCTP-HASH"), ("KUBE-MARK-MASQ", "KUBE-NODE-PORT-SCTP-HASH"),
        ("ACCEPT", "KUBE-HEALTH-CHECK-NODE-PORT")]


def test_kp_ipv4_proxier():
    """TestIPv4Proxier: an IPv6 service is not proxied by the IPv4 proxier; no endpoints, no real servers."""
    svc1 = service()
    svc2 = service("svc2", "ns2", cluster_ip="1002:ab8::2:1", ports=(port(8080, name="p8080"),))
    c = cluster([svc1, svc2], {svc1.key: {"p80": [ep("10.180.0.1")]},
                               svc2.key: {"p8080": [ep("1009:ab8::5:6", 8080)]}})
    assert ipvs.generate(c, node()) == "-A -t 10.20.30.41:80 -s rr\n-a -t 10.20.30.41:80 -r 10.180.0.1:80 -m -w 1\n"
    assert ipvs.generate(cluster([svc1]), node()) == "-A -t 10.20.30.41:80 -s rr\n"
    assert ipvs.generate(c, node(), family=6) == (
        "-A -t [1002:ab8::2:1]:8080 -s rr\n-a -t [1002:ab8::2:1]:8080 -r [1009:ab8::5:6]:8080 -m -w 1\n")


def test_kp_external_ips():
    """TestExternalIPs / TestExternalIPsNoEndpoint: one virtual server per IPv4 external IP."""
    svc = service(external_ips=("50.60.70.81", "2012::51", "127.0.0.1"))
    servers = virtual_servers(ipvs.generate(cluster([svc], {svc.key: {"p80": [ep("10.180.0.1")]}}), node()))
    assert sorted(servers) == [("-t", "10.20.30.41:80"), ("-t", "127.0.0.1:80"), ("-t", "50.60.70.81:80")]
    assert all(s["rs"] == ["10.180.0.1:80"] for s in servers.values())
    empty = virtual_servers(ipvs.generate(cluster([service(external_ips=("50.60.70.81",))]), node()))
    assert empty[("-t", "50.60.70.81:80")]["rs"] == [] and len(empty) == 2


def test_kp_only_local_external_ips():
    """TestOnlyLocalExternalIPs: the external IP only sends to local endpoints."""
    svc = service(type="NodePort", external_ips=("50.60.70.81", "2012::51", "127.0.0.1"),
                  external_traffic_policy="Local")
    c = cluster([svc], {svc.key: {"p80": [ep("10.180.0.1", node_name=TEST_NODE),
                                          ep("10.180.1.1", node_name="other-node")]}})
    servers = virtual_servers(ipvs.generate(c, node()))
    assert len(servers) == 3
    assert servers[("-t", "50.60.70.81:80")]["rs"] == ["10.180.0.1:80"]
    assert servers[("-t", "10.20.30.41:80")]["rs"] == ["10.180.0.1:80", "10.180.1.1:80"]


def test_kp_load_balancer():
    """TestLoadBalancer: LB ingress virtual server, KUBE-LOAD-BALANCER set and chains."""
    svc = service(type="LoadBalancer", ports=(port(node_port=3001),), load_balancer_ips=("1.2.3.4",))
    out = everything(cluster([svc], {svc.key: {"p80": [ep("10.180.0.1")]}}), node())
    servers = virtual_servers(out["ipvs.rules"])
    assert len(servers) == 2 and servers[("-t", "1.2.3.4:80")]["rs"] == ["10.180.0.1:80"]
    assert set_entries(out["ipset.rules"])["KUBE-LOAD-BALANCER"] == ["1.2.3.4,tcp:80"]
    rules = out["iptables.rules"]
    assert chain(rules, "KUBE-SERVICES") == [
        ("RETURN", None), ("KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER"), ("KUBE-MARK-MASQ", "KUBE-CLUSTER-IP"),
        ("KUBE-NODE-PORT", None), ("ACCEPT", "KUBE-CLUSTER-IP"), ("ACCEPT", "KUBE-LOAD-BALANCER")]
    assert chain(rules, "KUBE-LOAD-BALANCER") == [("KUBE-MARK-MASQ", None)]


def test_kp_only_local_node_ports():
    """TestOnlyLocalNodePorts: nodePortAddresses 100.101.102.0/24 selects the node address."""
    svc = service(type="NodePort", ports=(port(node_port=3001),), external_traffic_policy="Local")
    c = cluster([svc], {svc.key: {"p80": [ep("10.180.0.1", node_name=TEST_NODE),
                                          ep("10.180.1.1", node_name="other-node")]}},
                nodeport_addresses=(net("100.101.102.0/24"),))
    out = everything(c, node(TEST_NODE, "100.101.102.103", "2001:db8::"))
    servers = virtual_servers(out["ipvs.rules"])
    assert len(servers) == 2 and servers[("-t", "100.101.102.103:3001")]["rs"] == ["10.180.0.1:80"]
    sets = set_entries(out["ipset.rules"])
    assert sets["KUBE-NODE-PORT-TCP"] == sets["KUBE-NODE-PORT-LOCAL-TCP"] == ["3001"]
    rules = out["iptables.rules"]
    assert chain(rules, "KUBE-SERVICES") == [("RETURN", None), ("KUBE-MARK-MASQ", "KUBE-CLUSTER-IP"),
                                             ("KUBE-NODE-PORT", None), ("ACCEPT", "KUBE-CLUSTER-IP")]
    assert chain(rules, "KUBE-NODE-PORT") == [
        ("RETURN", "KUBE-NODE-PORT-LOCAL-TCP"), ("KUBE-MARK-MASQ", "KUBE-NODE-PORT-TCP"),
        ("ACCEPT", "KUBE-HEALTH-CHECK-NODE-PORT")]


def test_kp_health_check_node_port():
    """TestHealthCheckNodePort: only LoadBalancer + externalTrafficPolicy Local services add theirs."""
    def lb(name, hc, policy):
        return service(name, type="LoadBalancer", ports=(port(node_port=3000),), external_traffic_policy=policy,
                       health_check_node_port=hc)
    c = cluster([lb("valid-svc1", 30000, "Local"), lb("valid-svc2", 30001, "Local"), lb("invalid-svc3", 30002, "Cluster")],
                nodeport_addresses=(net("100.101.102.0/24"),))
    out = everything(c, node(TEST_NODE, "100.101.102.103", "2001:db8::"))
    assert set_entries(out["ipset.rules"])["KUBE-HEALTH-CHECK-NODE-PORT"] == ["30000", "30001"]
    assert chain(out["iptables.rules"], "KUBE-NODE-PORT") == [
        ("RETURN", "KUBE-NODE-PORT-LOCAL-TCP"), ("KUBE-MARK-MASQ", "KUBE-NODE-PORT-TCP"),
        ("ACCEPT", "KUBE-HEALTH-CHECK-NODE-PORT")]


def test_kp_load_balancer_source_ranges():
    """TestLoadBalancerSourceRanges, plus what the node itself may reach."""
    svc = service(type="LoadBalancer", load_balancer_ips=("1.2.3.4",), load_balancer_source_ranges=("10.0.0.0/8",))
    c = cluster([svc], {svc.key: {"p80": [ep("10.180.0.1")]}})
    out = everything(c, node())
    servers = virtual_servers(out["ipvs.rules"])
    assert len(servers) == 2 and servers[("-t", "1.2.3.4:80")]["rs"] == ["10.180.0.1:80"]
    sets = set_entries(out["ipset.rules"])
    assert sets["KUBE-LOAD-BALANCER"] == sets["KUBE-LOAD-BALANCER-FW"] == ["1.2.3.4,tcp:80"]
    assert sets["KUBE-LOAD-BALANCER-SOURCE-CIDR"] == ["1.2.3.4,tcp:80,10.0.0.0/8"]
    assert sets["KUBE-LOAD-BALANCER-SOURCE-IP"] == []
    rules = out["iptables.rules"]
    assert chain(rules, "KUBE-SERVICES") == [
        ("RETURN", None), ("KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER"), ("KUBE-MARK-MASQ", "KUBE-CLUSTER-IP"),
        ("KUBE-NODE-PORT", None), ("ACCEPT", "KUBE-CLUSTER-IP"), ("ACCEPT", "KUBE-LOAD-BALANCER")]
    assert chain(rules, "KUBE-PROXY-FIREWALL") == [("KUBE-SOURCE-RANGES-FIREWALL", "KUBE-LOAD-BALANCER-FW")]
    assert chain(rules, "KUBE-SOURCE-RANGES-FIREWALL") == [("RETURN", "KUBE-LOAD-BALANCER-SOURCE-CIDR"), ("DROP", None)]
    # the node (no IP inside 10.0.0.0/8 here) may not reach the LB address: issue 119656
    assert ("-A KUBE-IPVS-OUT-FILTER -s 1.2.3.4 -m ipvs --vaddr 1.2.3.4 --vproto tcp --vport 80 -j DROP"
            in rules.splitlines())
    inside = everything(c, node(TEST_NODE, "10.1.2.3"))
    assert set_entries(inside["ipset.rules"])["KUBE-LOAD-BALANCER-SOURCE-IP"] == ["1.2.3.4,tcp:80,1.2.3.4"]
    assert chain(inside["iptables.rules"], "KUBE-IPVS-OUT-FILTER") == []
    assert chain(inside["iptables.rules"], "KUBE-SOURCE-RANGES-FIREWALL") == [
        ("RETURN", "KUBE-LOAD-BALANCER-SOURCE-CIDR"), ("RETURN", "KUBE-LOAD-BALANCER-SOURCE-IP"), ("DROP", None)]


def test_kp_accept_ipvs_traffic():
    """TestAcceptIPVSTraffic: the full KUBE-SERVICES sequence with LB, cluster and external IPs."""
    svcs = [service("svc1", cluster_ip="10.20.30.40", ports=(port(node_port=80),), external_ips=("5.6.7.8",)),
            service("svc2", cluster_ip="10.20.30.41", type="LoadBalancer", ports=(port(node_port=80),),
                    load_balancer_ips=("1.2.3.4",)),
            service("svc3", cluster_ip="10.20.30.42", type="NodePort", ports=(port(node_port=80),))]
    rules = ipvs_iptables.generate(cluster(svcs), node())
    assert chain(rules, "KUBE-SERVICES") == [
        ("RETURN", None), ("KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER"), ("KUBE-MARK-MASQ", "KUBE-CLUSTER-IP"),
        ("KUBE-MARK-MASQ", "KUBE-EXTERNAL-IP"), ("ACCEPT", "KUBE-EXTERNAL-IP"), ("ACCEPT", "KUBE-EXTERNAL-IP"),
        ("KUBE-NODE-PORT", None), ("ACCEPT", "KUBE-CLUSTER-IP"), ("ACCEPT", "KUBE-LOAD-BALANCER")]


def test_kp_only_local_load_balancing():
    """TestOnlyLocalLoadBalancing: remote endpoints are not real servers of the LB address."""
    svc = service(type="LoadBalancer", ports=(port(node_port=3001),), load_balancer_ips=("1.2.3.4",),
                  external_traffic_policy="Local")
    c = cluster([svc], {svc.key: {"p80": [ep("10.180.0.1", node_name=TEST_NODE),
                                          ep("10.180.1.1", node_name="other-node")]}})
    out = everything(c, node())
    assert virtual_servers(out["ipvs.rules"])[("-t", "1.2.3.4:80")]["rs"] == ["10.180.0.1:80"]
    sets = set_entries(out["ipset.rules"])
    assert sets["KUBE-LOAD-BALANCER"] == sets["KUBE-LOAD-BALANCER-LOCAL"] == ["1.2.3.4,tcp:80"]
    assert chain(out["iptables.rules"], "KUBE-LOAD-BALANCER") == [
        ("RETURN", "KUBE-LOAD-BALANCER-LOCAL"), ("KUBE-MARK-MASQ", None)]


def test_kp_session_affinity():
    """TestSessionAffinity: every virtual server of a ClientIP service is persistent for its timeout."""
    svc = service(type="NodePort", ports=(port(node_port=3001),), external_ips=("50.60.70.81",),
                  session_affinity="ClientIP", affinity_timeout=10800)
    servers = virtual_servers(ipvs.generate(cluster([svc]), node(TEST_NODE, "100.101.102.103")))
    assert len(servers) == 3 and all(s["timeout"] == "10800" for s in servers.values())
    short = service(session_affinity="ClientIP", affinity_timeout=60)
    assert ipvs.generate(cluster([short]), node()) == "-A -t 10.20.30.41:80 -s rr -p 60\n"


def test_kp_headless_and_external_name_are_not_proxied():
    """TestBuildServiceMapServiceHeadless / ...TypeExternalName."""
    headless = service("headless", cluster_ip="", headless=True, ports=(port(1234, "UDP", "rpc"),))
    external = service("external-name", cluster_ip="172.16.55.4", type="ExternalName", external_name="foo2.bar.com")
    out = everything(cluster([headless, external]), node(TEST_NODE, "100.101.102.103"))
    assert out["ipvs.rules"] == ""
    assert all(entries == [] for entries in set_entries(out["ipset.rules"]).values())
    assert out["kube-ipvs0.batch"] == "link add kube-ipvs0 type dummy\n"


def test_kp_endpoint_slice_e2e_loop_back():
    """TestEndpointSliceE2E: not-ready endpoints are no real servers; local ones are hairpin entries."""
    svc = service(cluster_ip="172.20.1.1", ports=(port(80, name=""),))
    c = cluster([svc], {svc.key: {"": [ep("10.0.1.1", node_name=TEST_NODE), ep("10.0.1.2", node_name="node2"),
                                       ep("10.0.1.3", node_name="node3"),
                                       ep("10.0.1.4", node_name="node3", ready=False)]}})
    out = everything(c, node())
    assert set_entries(out["ipset.rules"])["KUBE-LOOP-BACK"] == ["10.0.1.1,tcp:80,10.0.1.1"]
    assert virtual_servers(out["ipvs.rules"])[("-t", "172.20.1.1:80")]["rs"] == [
        "10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"]


@pytest.mark.parametrize("policy, nodes, loop_back, real_servers", [
    ("Cluster", (TEST_NODE, "node1", "node2"), 1, ["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"]),
    ("Cluster", ("node0", "node1", "node2"), 0, ["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"]),
    ("Local", (TEST_NODE, "node1", "node2"), 1, ["10.0.1.1:80"]),
    ("Local", ("node0", "node1", "node2"), 0, []),
])
def test_kp_internal_traffic_policy(policy, nodes, loop_back, real_servers):
    """TestTestInternalTrafficPolicyE2E."""
    svc = service(cluster_ip="172.20.1.1", ports=(port(80, name=""),), internal_traffic_policy=policy)
    c = cluster([svc], {svc.key: {"": [ep(f"10.0.1.{i}", node_name=n) for i, n in enumerate(nodes, 1)]}})
    out = everything(c, node())
    assert len(set_entries(out["ipset.rules"])["KUBE-LOOP-BACK"]) == loop_back
    assert virtual_servers(out["ipvs.rules"])[("-t", "172.20.1.1:80")]["rs"] == real_servers


TERMINATING = [  # ready, serving, terminating, node
    (True, True, False, TEST_NODE), (True, True, False, TEST_NODE), (False, True, True, TEST_NODE),
    (False, False, True, TEST_NODE), (True, True, False, "another-node")]
ONLY_TERMINATING = [
    (False, True, True, TEST_NODE), (False, True, True, TEST_NODE), (False, False, True, TEST_NODE),
    (False, True, True, "another-node"), (False, False, False, "another-node")]
ONLY_LOCAL_TERMINATING = ONLY_TERMINATING[:4] + [(True, True, False, "another-node")]


@pytest.mark.parametrize("conditions, policy, loop_back, cluster_rs, external_rs", [
    # Test_EndpointSliceReadyAndTerminatingCluster
    (TERMINATING, "Cluster", 4, ["1", "2", "5"], ["1", "2", "5"]),
    # Test_EndpointSliceReadyAndTerminatingLocal
    (TERMINATING, "Local", 4, ["1", "2", "5"], ["1", "2"]),
    # Test_EndpointSliceOnlyReadyAndTerminatingCluster
    (ONLY_TERMINATING, "Cluster", 3, ["1", "2", "4"], ["1", "2", "4"]),
    # Test_EndpointSliceOnlyReadyAndTerminatingLocal
    (ONLY_LOCAL_TERMINATING, "Local", 3, ["5"], ["1", "2"]),
])
def test_kp_terminating_endpoints(conditions, policy, loop_back, cluster_rs, external_rs):
    svc = service(cluster_ip="172.20.1.1", type="NodePort", ports=(port(80, name=""),),
                  external_traffic_policy=policy, external_ips=("1.2.3.4",))
    c = cluster([svc], {svc.key: {"": [ep(f"10.0.1.{i}", node_name=n, ready=r, serving=s, terminating=t)
                                       for i, (r, s, t, n) in enumerate(conditions, 1)]}})
    out = everything(c, node())
    assert len(set_entries(out["ipset.rules"])["KUBE-LOOP-BACK"]) == loop_back
    servers = virtual_servers(out["ipvs.rules"])
    assert len(servers) == 2
    assert servers[("-t", "172.20.1.1:80")]["rs"] == [f"10.0.1.{i}:80" for i in cluster_rs]
    assert servers[("-t", "1.2.3.4:80")]["rs"] == [f"10.0.1.{i}:80" for i in external_rs]


def test_kp_create_and_link_kube_chain():
    """TestCreateAndLinkKubeChain: the chains and their order in each table."""
    rules = ipvs_iptables.generate(cluster([]), node())
    declared = [line for line in rules.splitlines() if line.startswith((":", "*"))]
    assert declared == ["*nat", ":KUBE-SERVICES - [0:0]", ":KUBE-POSTROUTING - [0:0]", ":KUBE-NODE-PORT - [0:0]",
                        ":KUBE-LOAD-BALANCER - [0:0]", ":KUBE-MARK-MASQ - [0:0]", "*filter",
                        ":KUBE-FORWARD - [0:0]", ":KUBE-NODE-PORT - [0:0]", ":KUBE-PROXY-FIREWALL - [0:0]",
                        ":KUBE-SOURCE-RANGES-FIREWALL - [0:0]", ":KUBE-IPVS-FILTER - [0:0]",
                        ":KUBE-IPVS-OUT-FILTER - [0:0]"]


@pytest.mark.parametrize("random_fully", [False, True])
def test_kp_masquerade_rule(random_fully):
    """TestMasqueradeRule: --random-fully only when iptables has it."""
    rules = ipvs_iptables.generate(cluster([], random_fully=random_fully), node()).splitlines()
    masquerade = [r for r in rules if r.startswith("-A KUBE-POSTROUTING") and "-j MASQUERADE" in r
                  and "--match-set" not in r]
    assert masquerade == ['-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
                          "-j MASQUERADE" + (" --random-fully" if random_fully else "")]


def test_kp_multi_port_service_binds_address_once():
    """TestMultiPortServiceBindAddr."""
    svc = service(cluster_ip="172.16.55.4", ports=(port(1234, name="port1"), port(1235, name="port2"),
                                                   port(1236, "UDP", "port3")))
    assert kube_ipvs0.generate(cluster([svc]), node()) == (
        "link add kube-ipvs0 type dummy\naddress add 172.16.55.4/32 dev kube-ipvs0\n")


# --------------------------------------------------------------------------- behaviours beyond kube-proxy's tests

@pytest.mark.parametrize("scheduler", IPVS_SCHEDULERS)
def test_each_scheduler(scheduler):
    svc = service(ports=(port(node_port=30080),), type="NodePort")
    c = cluster([svc], {svc.key: {"p80": [ep("10.180.0.1")]}}, ipvs_scheduler=scheduler)
    text = ipvs.generate(c, node(TEST_NODE, "100.101.102.103"))
    flags = " -b mh-port" if scheduler == "mh" else ""
    assert text.splitlines()[0] == f"-A -t 10.20.30.41:80 -s {scheduler}{flags}"
    assert {s["sched"] for s in virtual_servers(text).values()} == {scheduler}


def test_service_scheduler_overrides_cluster_and_mh_flag_follows_persistence():
    own = service("own", ipvs_scheduler="mh", session_affinity="ClientIP", affinity_timeout=300)
    default = service("default", cluster_ip="10.20.30.42")
    text = ipvs.generate(cluster([own, default], ipvs_scheduler="wlc"), node())
    assert text == "-A -t 10.20.30.41:80 -s mh -p 300 -b mh-port\n-A -t 10.20.30.42:80 -s wlc\n"
    assert ipvs.generate(cluster([default], ipvs_scheduler=""), node()) == "-A -t 10.20.30.42:80 -s rr\n"


def test_unknown_scheduler_or_family_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown IPVS scheduler 'fifo'"):
        ipvs.generate(cluster([service(ipvs_scheduler="fifo")]), node())
    with pytest.raises(ValueError, match="family"):
        ipvs.plan(cluster([]), node(), family=5)


def test_masquerade_all_bit_and_local_detection():
    svc = service()
    line = lambda rules: next(r for r in rules.splitlines() if "KUBE-CLUSTER-IP" in r and "KUBE-MARK-MASQ" in r)
    assert line(ipvs_iptables.generate(cluster([svc]), node())).endswith(
        "--match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ")
    assert line(ipvs_iptables.generate(cluster([svc], masquerade_all=True), node())).endswith(
        "--match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ")
    node_cidr = ipvs_iptables.generate(cluster([svc], detect_local_mode="NodeCIDR"),
                                       node(TEST_NODE, pod_cidr="10.244.7.0/24"))
    assert line(node_cidr).endswith("dst,dst ! -s 10.244.7.0/24 -j KUBE-MARK-MASQ")
    no_cidr = ipvs_iptables.generate(cluster([svc], detect_local_mode="NodeCIDR"), node())
    assert line(no_cidr).endswith("--match-set KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ")
    bit = ipvs_iptables.generate(cluster([svc], masquerade_bit=0), node())
    assert "-A KUBE-MARK-MASQ -j MARK --or-mark 0x000001" in bit.splitlines()
    assert "-m mark --mark 0x000001/0x000001 -j ACCEPT" in bit


def test_node_addresses_are_not_bound_and_get_node_port_servers():
    """An external IP that is a node address stays off kube-ipvs0 (kube-proxy: shouldBind)."""
    svc = service(type="NodePort", ports=(port(node_port=30080),), external_ips=("192.168.0.11", "203.0.113.7"))
    c = cluster([svc], nodeport_addresses=(net("192.168.0.0/24"),))
    n = node("n1", "192.168.0.11", "127.0.0.1", "10.9.9.9")
    assert kube_ipvs0.generate(c, n).splitlines()[1:] == [
        "address add 10.20.30.41/32 dev kube-ipvs0", "address add 203.0.113.7/32 dev kube-ipvs0"]
    assert set_entries(ipset.generate(c, n))["KUBE-IPVS-IPS"] == ["10.20.30.41", "203.0.113.7"]
    assert ("-t", "192.168.0.11:30080") in virtual_servers(ipvs.generate(c, n))
    assert ("-t", "10.9.9.9:30080") not in virtual_servers(ipvs.generate(c, n))
    every = virtual_servers(ipvs.generate(cluster([svc]), n))  # no --nodeport-addresses: all but loopback
    assert {k for k in every if k[1].endswith(":30080")} == {("-t", "10.9.9.9:30080"), ("-t", "192.168.0.11:30080")}


def test_node_without_addresses_skips_node_ports_and_health_check():
    """kube-proxy `continue`s past the health-check port when it has no node IP for nodePorts."""
    svc = service(type="LoadBalancer", ports=(port(node_port=30080),), external_traffic_policy="Local",
                  health_check_node_port=32000)
    sets = set_entries(ipset.generate(cluster([svc]), node()))
    assert sets["KUBE-NODE-PORT-TCP"] == [] and sets["KUBE-HEALTH-CHECK-NODE-PORT"] == []
    sets = set_entries(ipset.generate(cluster([svc]), node(TEST_NODE, "100.101.102.103")))
    assert sets["KUBE-NODE-PORT-TCP"] == ["30080"] and sets["KUBE-HEALTH-CHECK-NODE-PORT"] == ["32000"]


def test_external_local_without_local_endpoints_uses_cluster_endpoints():
    """kube-proxy PR 97081: with no local endpoint, Local external traffic still gets real servers."""
    svc = service(type="NodePort", ports=(port(node_port=30080),), external_traffic_policy="Local")
    c = cluster([svc], {svc.key: {"p80": [ep("10.180.1.1", node_name="other")]}})
    servers = virtual_servers(ipvs.generate(c, node(TEST_NODE, "100.101.102.103")))
    assert servers[("-t", "100.101.102.103:30080")]["rs"] == ["10.180.1.1:80"]


def test_first_service_wins_a_shared_virtual_server():
    """Two services claiming one external IP:port: the plan keeps the first by (namespace, name)."""
    a = service("a", cluster_ip="10.20.30.41", external_ips=("50.60.70.81",))
    b = service("b", cluster_ip="10.20.30.42", external_ips=("50.60.70.81",), session_affinity="ClientIP")
    c = cluster([b, a], {a.key: {"p80": [ep("10.180.0.1")]}, b.key: {"p80": [ep("10.180.0.2")]}})
    vs = next(v for v in ipvs.plan(c, node()).virtual_servers if str(v.ip) == "50.60.70.81")
    assert vs.service == ("ns1", "a") and vs.persistence is None


def test_ipv6_family_names_and_addresses():
    svc = service(cluster_ip="fd00:10::1", type="NodePort", ports=(port(node_port=30080), port(5060, "SCTP", "sip", 30081)),
                  load_balancer_source_ranges=("fd00:99::/64",), load_balancer_ips=("fd00:200::1",))
    c = cluster([svc], {svc.key: {"p80": [ep("fd00:244::5", 8080, TEST_NODE)]}}, pod_cidr="fd00:244::/56")
    out = everything(c, node(TEST_NODE, "fd00:1::11", "fe80::1"), family=6)
    sets = set_entries(out["ipset.rules"])
    assert "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS" in sets and "KUBE-6-LOAD-BALANCER-SOURCE-CID" in sets
    assert all(len(name) <= 31 for name in sets)
    assert sets["KUBE-6-LOOP-BACK"] == ["fd00:244::5,tcp:8080,fd00:244::5"]
    assert sets["KUBE-6-NODE-PORT-SCTP-HASH"] == ["fd00:1::11,sctp:30081"]
    assert "create KUBE-6-CLUSTER-IP hash:ip,port family inet6 hashsize 1024 maxelem 65536" in out["ipset.rules"]
    assert ("-t", "[fd00:1::11]:30080") in virtual_servers(out["ipvs.rules"])
    assert "address add fd00:10::1/128 dev kube-ipvs0" in out["kube-ipvs0.batch"]
    assert "-A KUBE-SERVICES -s ::1/128 -j RETURN" in out["iptables.rules"]
    assert "! -s fd00:244::/56 -j KUBE-MARK-MASQ" in out["iptables.rules"]


def _dual_stack() -> tuple[ResolvedCluster, Node]:
    svc = Service("ns1", "svc1", type="NodePort", ports=(port(80, node_port=30080),),
                  cluster_ips=(ip("198.19.0.5"), ip("fd00:10::5")), ip_families=(4, 6))
    c = cluster([svc], {svc.key: {"p80": [ep("198.18.64.5", 8080, TEST_NODE), ep("fd00:244::5", 8080, TEST_NODE)]}},
                service_cidrs=("198.19.0.0/16", "fd00:10::/108"))
    return c, node(TEST_NODE, "198.18.0.11", "fd00:1::11")


def test_node_wide_texts_hold_both_families_of_a_dual_stack_cluster():
    """One IPVS table, one ipset list and one kube-ipvs0 per node: IPv4 first, as ipvsadm -S sorts (by af)."""
    c, n = _dual_stack()
    assert ipvs.generate(c, n) == ipvs.generate(c, n, 4) + ipvs.generate(c, n, 6)
    assert [k[1] for k in virtual_servers(ipvs.generate(c, n, 6))] == ["[fd00:1::11]:30080", "[fd00:10::5]:80"]
    sets = ipset.generate(c, n)
    assert sets == ipset.generate(c, n, 4) + ipset.generate(c, n, 6)
    assert set_entries(sets)["KUBE-CLUSTER-IP"] == ["198.19.0.5,tcp:80"]
    assert set_entries(sets)["KUBE-6-CLUSTER-IP"] == ["fd00:10::5,tcp:80"]
    assert kube_ipvs0.generate(c, n) == ("link add kube-ipvs0 type dummy\n"
                                         "address add 198.19.0.5/32 dev kube-ipvs0\n"
                                         "address add fd00:10::5/128 dev kube-ipvs0\n")
    assert "fd00" not in ipvs_iptables.generate(c, n) and "198.19" not in ipvs_iptables.generate(c, n, 6)


def test_every_set_is_created_in_kube_proxy_order():
    text = ipset.generate(cluster([]), node())
    creates = [line.split()[1:3] for line in text.splitlines()]
    assert creates == [[s.name, s.type] for s in ipvs.IPSETS]
    assert "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535" in text.splitlines()


# --------------------------------------------------------------------------- goldens and determinism

def _lab_cluster(skip: tuple[str, ...] = ()) -> tuple[ResolvedCluster, tuple[Node, ...]]:
    """A small cluster in 198.18.0.0/15: every feature, loadable into a namespace."""
    nodes = (node("node-1", "198.18.0.11", pod_cidr="198.18.64.0/24"),
             node("node-2", "198.18.0.12", pod_cidr="198.18.65.0/24"))
    web = service("web", "shop", cluster_ip="198.19.0.20", type="LoadBalancer",
                  ports=(port(80, name="http", node_port=30080, target=8080), port(443, name="https", node_port=30443)),
                  load_balancer_ips=("198.19.200.1",), load_balancer_source_ranges=("198.18.0.0/24", "198.18.99.0/24"),
                  external_traffic_policy="Local", health_check_node_port=31000)
    api = service("api", "shop", cluster_ip="198.19.0.21", ports=(port(8080, name="http"),),
                  external_ips=("198.19.100.7", "198.18.0.11"), session_affinity="ClientIP", affinity_timeout=600)
    fw = service("walled", "shop", cluster_ip="198.19.0.22", type="LoadBalancer",
                 ports=(port(9000, "UDP", "game", node_port=30900),), load_balancer_ips=("198.19.200.2",),
                 load_balancer_source_ranges=("198.18.128.0/24",))
    dns = service("kube-dns", "kube-system", cluster_ip="198.19.0.10",
                  ports=(port(53, "UDP", "dns"), port(53, "TCP", "dns-tcp"), port(9153, name="metrics")),
                  ipvs_scheduler="sh")
    sctp = service("sig", "shop", cluster_ip="198.19.0.23", type="NodePort",
                   ports=(port(3868, "SCTP", "diameter", node_port=30868),), external_traffic_policy="Local")
    empty = service("nobody", "shop", cluster_ip="198.19.0.24")
    endpoints = {
        web.key: {"http": [ep("198.18.64.5", 8080, "node-1"), ep("198.18.65.5", 8080, "node-2"),
                           ep("198.18.65.6", 8080, "node-2", ready=False)],
                  "https": [ep("198.18.64.5", 443, "node-1"), ep("198.18.65.5", 443, "node-2")]},
        api.key: {"http": [ep("198.18.64.7", 8080, "node-1"), ep("198.18.65.7", 8080, "node-2"),
                           ep("198.18.65.8", 8080, "node-2")]},
        fw.key: {"game": [ep("198.18.65.9", 9000, "node-2")]},
        dns.key: {"dns": [ep("198.18.64.2", 53, "node-1"), ep("198.18.65.2", 53, "node-2")],
                  "dns-tcp": [ep("198.18.64.2", 53, "node-1"), ep("198.18.65.2", 53, "node-2")],
                  "metrics": [ep("198.18.64.2", 9153, "node-1"), ep("198.18.65.2", 9153, "node-2")]},
        sctp.key: {"diameter": [ep("198.18.65.10", 3868, "node-2")]},
    }
    services = [s for s in (web, api, fw, dns, sctp, empty) if s.name not in skip]
    return cluster(services, endpoints, nodes, pod_cidr="198.18.64.0/18"), nodes


def _golden_cases() -> dict[str, tuple[ResolvedCluster, Node]]:
    lab, nodes = _lab_cluster()
    three = service("search", "default", cluster_ip="10.96.0.50", ports=(port(80, name="http", target=8080),))
    three_c = cluster([three], {three.key: {"http": [ep(f"10.244.{i}.5", 8080, f"node-{i}") for i in (1, 2, 3)]}},
                      ipvs_scheduler="wlc")
    return {
        "lab-node-1": (lab, nodes[0]),
        "lab-node-2": (lab, nodes[1]),
        "clusterip-three-endpoints": (three_c, node("node-1", "192.168.0.11")),
    }


@pytest.mark.parametrize("case", sorted(_golden_cases()))
def test_golden(case):
    """tests/golden/ipvs/<case>/<file>; KSPEC_UPDATE_GOLDENS=1 rewrites, a mismatch leaves <file>.actual."""
    c, n = _golden_cases()[case]
    folder = GOLDEN / case
    mismatched = []
    for name, text in everything(c, n).items():
        expected = folder / name
        if os.environ.get("KSPEC_UPDATE_GOLDENS"):
            folder.mkdir(parents=True, exist_ok=True)
            expected.write_text(text)
        actual = folder / (name + ".actual")
        if expected.read_text() != text:
            actual.write_text(text)
            mismatched.append(name)
        elif actual.exists():
            actual.unlink()
    assert not mismatched, f"{case}: {mismatched} differ (see *.actual)"
    check_ipvsadm_grammar((folder / "ipvs.rules").read_text())


def _digest() -> str:
    lab, nodes = _lab_cluster()
    h = hashlib.sha256()
    for n in nodes:
        for text in everything(lab, n).values():
            h.update(text.encode())
    return h.hexdigest()


def test_deterministic_across_runs_and_hash_seeds():
    assert _digest() == _digest()
    code = "import sys; sys.path.insert(0, sys.argv[1]); import test_backend_ipvs as t; print(t._digest())"
    for seed in ("0", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], env=env,
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == _digest()


def test_services_in_any_input_order_give_the_same_text():
    lab, nodes = _lab_cluster()
    shuffled = ResolvedCluster(lab.settings, lab.nodes, (), tuple(reversed(lab.services)), lab.endpoints)
    assert everything(shuffled, nodes[0]) == everything(lab, nodes[0])


_ADDRESSES = st.sampled_from([f"10.180.{i}.{j}" for i in range(2) for j in range(1, 4)])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]),
                          st.sampled_from(["TCP", "UDP", "SCTP"]), st.sampled_from(["Cluster", "Local"]),
                          st.sampled_from(["Cluster", "Local"]), st.sampled_from(IPVS_SCHEDULERS),
                          st.lists(st.tuples(_ADDRESSES, st.sampled_from([TEST_NODE, "other"]), st.booleans(),
                                             st.booleans(), st.booleans()), max_size=4),
                          st.booleans()),
                min_size=0, max_size=6))
def test_property_real_servers_are_endpoints(specs):
    """Any cluster: grammar holds, and every real server is an endpoint of its service port."""
    services, endpoints = [], {}
    for i, (kind, proto, etp, itp, sched, backends, affinity) in enumerate(specs):
        svc = service(f"s{i}", cluster_ip=f"10.20.0.{i + 1}", type=kind, ipvs_scheduler=sched,
                      ports=(port(80 + i, proto, "p", node_port=30000 + i if kind != "ClusterIP" else None),),
                      external_traffic_policy=etp if kind != "ClusterIP" else "Cluster", internal_traffic_policy=itp,
                      load_balancer_ips=(f"1.2.3.{i + 1}",) if kind == "LoadBalancer" else (),
                      session_affinity="ClientIP" if affinity else "None")
        services.append(svc)
        endpoints[svc.key] = {"p": [ep(a, 8080, n, ready=r, serving=s, terminating=t) for a, n, r, s, t in backends]}
    c = cluster(services, endpoints)
    p = ipvs.plan(c, node(TEST_NODE, "100.101.102.103"))
    check_ipvsadm_grammar(ipvs.render(p))
    for vs in p.virtual_servers:
        allowed = {(a, 8080) for a, *_ in endpoints[vs.service]["p"]}
        assert {(str(rs.ip), rs.port) for rs in vs.real_servers} <= allowed
    assert len(p.bound_addresses) == len(set(p.bound_addresses))


# --------------------------------------------------------------------------- loading into real namespaces

_counter = itertools.count()


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    for tool in ("ip", "ipset", "iptables-restore"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    name = f"ks-test-ipvs-{os.getpid()}-{next(_counter)}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"ip netns is unavailable: {made.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _in(ns: str, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True)


def _saved_sets(ns: str) -> dict[str, list[str]]:
    saved = _in(ns, "ipset", "save")
    assert saved.returncode == 0, saved.stderr
    sets = {}
    for line in saved.stdout.splitlines():
        words = line.split()
        if words[0] == "create":
            sets[words[1]] = []
        else:
            sets[words[1]].append(re.sub(r"/(32|128)$", "", words[2]))  # ipset save drops host prefixes
    return {k: sorted(v) for k, v in sets.items()}


@pytest.mark.parametrize("node_index", [0, 1])
def test_ipset_and_iptables_load_in_a_namespace(netns, node_index):
    lab, nodes = _lab_cluster()
    out = everything(lab, nodes[node_index])
    loaded = _in(netns, "ipset", "restore", stdin=out["ipset.rules"])
    assert loaded.returncode == 0, loaded.stderr
    ours = {k: sorted(re.sub(r"/(32|128)$", "", e) for e in v) for k, v in set_entries(out["ipset.rules"]).items()}
    assert _saved_sets(netns) == ours
    tested = _in(netns, "iptables-restore", "--test", stdin=out["iptables.rules"])
    assert tested.returncode == 0, tested.stderr


def test_iptables_rules_really_load_where_no_ipvs_match_is_needed(netns):
    """This kernel has no IPVS, so the `-m ipvs` rule only passes --test; the rest really loads."""
    allowed, nodes = _lab_cluster(skip=("walled",))  # its sourceRanges exclude the node
    out = everything(allowed, nodes[0])
    assert "-m ipvs" not in out["iptables.rules"]
    assert _in(netns, "ipset", "restore", stdin=out["ipset.rules"]).returncode == 0
    loaded = _in(netns, "iptables-restore", stdin=out["iptables.rules"])
    assert loaded.returncode == 0, loaded.stderr
    saved = _in(netns, "iptables-save").stdout
    for table_chain in ("KUBE-SERVICES", "KUBE-IPVS-FILTER", "KUBE-SOURCE-RANGES-FIREWALL", "KUBE-FORWARD"):
        assert len(chain(saved, table_chain)) == len(chain(out["iptables.rules"], table_chain)), table_chain


def test_dual_stack_sets_load_together(netns):
    c, n = _dual_stack()
    text = ipset.generate(c, n)
    loaded = _in(netns, "ipset", "restore", stdin=text)
    assert loaded.returncode == 0, loaded.stderr
    assert _saved_sets(netns) == {k: sorted(v) for k, v in set_entries(text).items()}
    assert len(_saved_sets(netns)) == 2 * len(ipvs.IPSETS)


def test_ipv6_sets_and_rules_load_in_a_namespace(netns):
    if shutil.which("ip6tables-restore") is None:
        pytest.skip("ip6tables-restore is not installed")
    svc = service(cluster_ip="fd00:10::1", type="LoadBalancer", ports=(port(node_port=30080), port(5060, "SCTP", "s", 30081)),
                  load_balancer_ips=("fd00:200::1",), load_balancer_source_ranges=("fd00:99::/64",))
    c = cluster([svc], {svc.key: {"p80": [ep("fd00:244::5", 8080, TEST_NODE)]}}, pod_cidr="fd00:244::/56")
    out = everything(c, node(TEST_NODE, "fd00:1::11"), family=6)
    loaded = _in(netns, "ipset", "restore", stdin=out["ipset.rules"])
    assert loaded.returncode == 0, loaded.stderr
    tested = _in(netns, "ip6tables-restore", "--test", stdin=out["iptables.rules"])
    assert tested.returncode == 0, tested.stderr


def _dummy_supported(ns: str) -> bool:
    probe = subprocess.run(["ip", "-netns", ns, "link", "add", "ks-probe0", "type", "dummy"], capture_output=True)
    subprocess.run(["ip", "-netns", ns, "link", "del", "ks-probe0"], capture_output=True)
    return probe.returncode == 0


def _bound(ns: str) -> list[str]:
    shown = subprocess.run(["ip", "-netns", ns, "-o", "addr", "show", "dev", "kube-ipvs0"],
                           capture_output=True, text=True, check=True).stdout
    return sorted(line.split()[3] for line in shown.splitlines())


def test_kube_ipvs0_batch_loads(netns):
    if not _dummy_supported(netns):
        pytest.skip("this kernel has no dummy interfaces (the address lines are tested on a stand-in below)")
    lab, nodes = _lab_cluster()
    text = kube_ipvs0.generate(lab, nodes[0])
    done = subprocess.run(["ip", "-netns", netns, "-batch", "-"], input=text, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _bound(netns) == sorted(line.split()[2] for line in text.splitlines()[1:])


def test_kube_ipvs0_addresses_load_on_a_stand_in_device(netns):
    """The `address add` lines, on a kube-ipvs0 made as an ifb (NOARP) device where dummy is missing."""
    lab, nodes = _lab_cluster()
    first, *addresses = kube_ipvs0.generate(lab, nodes[0]).splitlines()
    assert first == "link add kube-ipvs0 type dummy"
    kind = "dummy" if _dummy_supported(netns) else "ifb"
    subprocess.run(["ip", "-netns", netns, "link", "add", "kube-ipvs0", "type", kind], check=True)
    done = subprocess.run(["ip", "-netns", netns, "-batch", "-"], input="\n".join(addresses) + "\n",
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _bound(netns) == sorted(line.split()[2] for line in addresses)
    # 198.18.0.11 is node-1's own address: kube-proxy does not bind it
    assert "198.18.0.11/32" not in _bound(netns) and "198.19.100.7/32" in _bound(netns)
