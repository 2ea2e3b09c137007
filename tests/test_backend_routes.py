from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest

from backend_factories import cluster, node
from kspec.backends.routes import gateway, generate
from netns_support import throwaway_netns

# only 198.18.0.0/15 (benchmarking range) in anything loaded into a namespace
NODES = [
    node("node-1", "198.18.0.11", "2001:db8::11", pod_cidrs=["198.19.1.0/24", "2001:db8:1:1::/64"]),
    node("node-2", "198.18.0.12", "2001:db8::12", pod_cidrs=["198.19.2.0/24", "2001:db8:1:2::/64"]),
    node("node-3", "198.18.0.13", pod_cidrs=["198.19.3.0/24", "2001:db8:1:3::/64"]),
    node("node-4", "198.18.0.14"),
]
CLUSTER = cluster(NODES)


def commands(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_node_routes_other_nodes_pod_cidrs_via_their_ips():
    assert commands(generate(CLUSTER, NODES[0])) == [
        "route replace 198.19.1.0/24 dev cbr0 proto kernel scope link src 198.19.1.1",
        "route replace 2001:db8:1:1::/64 dev cbr0 proto kernel metric 256",
        "route replace 198.19.2.0/24 via 198.18.0.12 proto static",
        "route replace 198.19.3.0/24 via 198.18.0.13 proto static",
        # node-3 has no IPv6 address: its IPv6 podCIDR cannot be routed to
        "route replace 2001:db8:1:2::/64 via 2001:db8::12 proto static",
    ]


def test_family_the_node_lacks_gets_nothing():
    lines = commands(generate(CLUSTER, NODES[2]))
    assert lines == [
        "route replace 198.19.3.0/24 dev cbr0 proto kernel scope link src 198.19.3.1",
        "route replace 198.19.1.0/24 via 198.18.0.11 proto static",
        "route replace 198.19.2.0/24 via 198.18.0.12 proto static",
    ]
    assert not any(":" in line for line in lines)


def test_node_without_pod_cidr_still_routes_to_the_others():
    lines = commands(generate(CLUSTER, NODES[3]))
    assert len(lines) == 3 and all(" via " in line for line in lines)


def test_each_remote_cidr_once_and_never_own():
    for n in NODES:
        lines = commands(generate(CLUSTER, n))
        dests = [line.split()[2] for line in lines]
        assert len(dests) == len(set(dests))
        own = {str(c) for c in n.pod_cidrs}
        assert all(line.split()[2] not in own for line in lines if " via " in line)
        assert all(line.split()[2] in own for line in lines if " dev cbr0" in line)


def test_deterministic_and_independent_of_node_order():
    shuffled = cluster(list(reversed(NODES)))
    for n in NODES:
        assert generate(CLUSTER, n) == generate(shuffled, n) == generate(CLUSTER, n)


def test_gateway_is_first_address():
    assert str(gateway(ipaddress.ip_network("10.244.7.0/24"))) == "10.244.7.1"
    assert str(gateway(ipaddress.ip_network("fd00:1::/64"))) == "fd00:1::1"


def ip_(*args: str, input: str | None = None) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, input=input)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr}"
    return done.stdout


@pytest.fixture
def netns():
    with throwaway_netns("routes") as name:
        yield name


@pytest.mark.netns
def test_routes_load_into_a_namespace(netns, tmp_path):
    """Set the node up as the lab builder does, load routes.batch twice, read the table."""
    ipv4_only = cluster([node(n.name, *[str(a) for a in n.ips if a.version == 4],
                              pod_cidrs=[str(c) for c in n.pod_cidrs if c.version == 4]) for n in NODES])
    me = ipv4_only.nodes_by_name["node-1"]
    ns = ["-netns", netns]
    ip_(*ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer")
    ip_(*ns, "addr", "add", "198.18.0.11/24", "dev", "eth0")
    ip_(*ns, "link", "set", "eth0-peer", "up")
    ip_(*ns, "link", "set", "eth0", "up")
    ip_(*ns, "link", "add", "cbr0", "type", "bridge")
    ip_(*ns, "addr", "add", "198.19.1.1/24", "dev", "cbr0")
    ip_(*ns, "link", "set", "cbr0", "up")
    batch = tmp_path / "routes.batch"
    batch.write_text(generate(ipv4_only, me))
    ip_(*ns, "-batch", str(batch))
    ip_(*ns, "-batch", str(batch))  # idempotent: replace, never "File exists"
    routes = json.loads(ip_(*ns, "-j", "route", "show"))
    by_dst = {}
    for r in routes:
        by_dst.setdefault(r["dst"], []).append(r)
    assert all(len(v) == 1 for v in by_dst.values()), routes
    assert by_dst["198.19.2.0/24"][0]["gateway"] == "198.18.0.12"
    assert by_dst["198.19.2.0/24"][0]["protocol"] == "static"
    assert by_dst["198.19.3.0/24"][0]["gateway"] == "198.18.0.13"
    local = by_dst["198.19.1.0/24"][0]
    assert (local["dev"], local["protocol"], local["prefsrc"]) == ("cbr0", "kernel", "198.19.1.1")
    got = ip_(*ns, "route", "get", "198.19.3.7")
    assert "via 198.18.0.13 dev eth0" in got
