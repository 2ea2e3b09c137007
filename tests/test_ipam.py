"""IPAM: stable, lock-honouring, collision-free allocation (hypothesis where it matters)."""

import ipaddress

from hypothesis import given, settings, strategies as st

from kspec.diagnostics import DiagnosticSink
from kspec.model import ClusterSettings, Node, Pod, Service, ServicePort
from kspec.passes.ipam import Ipam, SlotAllocator
from kspec.passes.lock import Lock, parse_lock, render_lock

SETTINGS = ClusterSettings()


def ip(text):
    return ipaddress.ip_address(text)


def net(text):
    return ipaddress.ip_network(text)


def services(names, node_port=False):
    return tuple(Service(namespace="default", name=n, type="NodePort" if node_port else "ClusterIP",
                         ports=(ServicePort(80, "TCP", "http"),)) for n in names)


def allocate_services(svcs, lock=None, settings=SETTINGS):
    sink = DiagnosticSink()
    ipam = Ipam(settings, lock or Lock(), sink)
    result = ipam.node_ports(ipam.cluster_ips(svcs))
    assert not sink.has_errors, sink.items
    return {s.name: s for s in result}, ipam.made


def test_slot_allocator_never_hands_out_reserved_or_taken():
    alloc = SlotAllocator(8, reserved=[0, 7])
    alloc.claim(3)
    got = {alloc.allocate(f"o{i}") for i in range(5)}
    assert got == {1, 2, 4, 5, 6}
    assert alloc.allocate("one-too-many") is None


def test_slot_allocator_intervals_block_large_ranges():
    alloc = SlotAllocator(1 << 20)
    alloc.claim_interval(0, (1 << 20) - 2)
    assert alloc.allocate("x") == (1 << 20) - 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True), min_size=1, max_size=40, unique=True),
       st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True))
def test_adding_a_service_moves_no_other_allocation_with_the_lock(names, extra):
    first, made = allocate_services(services(names, node_port=True))
    lock = parse_lock(render_lock(tuple(made)), "kspec.lock.json", DiagnosticSink())
    names2 = sorted(set(names) | {extra})
    second, _ = allocate_services(services(names2, node_port=True), lock)
    for name, svc in first.items():
        assert second[name].cluster_ips == svc.cluster_ips
        assert second[name].ports[0].node_port == svc.ports[0].node_port


@settings(max_examples=60, deadline=None)
@given(st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True), min_size=1, max_size=60, unique=True))
def test_cluster_ips_and_node_ports_are_unique_and_in_range(names):
    result, _ = allocate_services(services(names, node_port=True))
    ips = [s.cluster_ips[0] for s in result.values()]
    assert len(set(ips)) == len(ips)
    cidr = SETTINGS.service_cidrs[0]
    assert all(i in cidr and i != cidr.network_address and i != cidr.network_address + 1
               and i != cidr.broadcast_address for i in ips)
    ports = [s.ports[0].node_port for s in result.values()]
    assert len(set(ports)) == len(ports)
    assert all(30000 <= p <= 32767 for p in ports)


def test_allocation_is_deterministic_and_order_independent():
    a, _ = allocate_services(services(["a", "b", "c", "d"]))
    b, _ = allocate_services(tuple(reversed(services(["a", "b", "c", "d"]))))
    assert {k: v.cluster_ips for k, v in a.items()} == {k: v.cluster_ips for k, v in b.items()}


def test_explicit_values_are_never_handed_out_again():
    explicit = Service(namespace="default", name="fixed", cluster_ips=(ip("10.96.0.10"),),
                       ports=(ServicePort(53, "UDP", "dns"),))
    many = services([f"s{i}" for i in range(300)])
    result, _ = allocate_services((explicit,) + many)
    others = [s.cluster_ips[0] for n, s in result.items() if n != "fixed"]
    assert ip("10.96.0.10") not in others


def test_node_port_range_exhaustion_is_a_located_error():
    settings = ClusterSettings(node_port_range=(30000, 30001))
    sink = DiagnosticSink()
    Ipam(settings, Lock(), sink).node_ports(services(["a", "b", "c"], node_port=True))
    assert sink.has_errors
    assert "nodePort range is full" in sink.items[0].message


def test_node_cidrs_skip_explicit_ones_and_pod_ips_stay_inside():
    nodes = (Node("n1", (ip("192.168.0.1"),), (net("10.244.0.0/24"),)),
             Node("n2", (ip("192.168.0.2"),)), Node("n3", (ip("192.168.0.3"),)))
    sink = DiagnosticSink()
    ipam = Ipam(SETTINGS, Lock(), sink)
    resolved = ipam.node_cidrs(nodes)
    cidrs = [n.pod_cidrs[0] for n in resolved]
    assert cidrs[0] == net("10.244.0.0/24")
    assert len(set(cidrs)) == 3 and all(c.prefixlen == 24 and c.subnet_of(net("10.244.0.0/16")) for c in cidrs)
    pods = [Pod("default", f"p{i}", node="n2") for i in range(50)]
    placed = ipam.pod_ips(pods, resolved)
    addresses = [p.ips[0] for p in placed]
    assert len(set(addresses)) == 50
    assert all(a in resolved[1].pod_cidrs[0] for a in addresses)
    gateway = resolved[1].pod_cidrs[0].network_address + 1
    assert gateway not in addresses and resolved[1].pod_cidrs[0].network_address not in addresses


def test_full_pod_cidr_is_an_error_not_a_duplicate():
    nodes = (Node("n1", (ip("192.168.0.1"),), (net("10.244.0.0/29"),)),)
    sink = DiagnosticSink()
    placed = Ipam(SETTINGS, Lock(), sink).pod_ips([Pod("default", f"p{i}", node="n1") for i in range(8)], nodes)
    given_ips = [p.ips[0] for p in placed if p.ips]
    assert len(given_ips) == len(set(given_ips)) == 5  # /29: 8 minus network, gateway, broadcast
    assert sink.has_errors


def test_dual_stack_service_gets_one_ip_per_family():
    settings = ClusterSettings(service_cidrs=(net("10.96.0.0/12"), net("fd00:10:96::/108")))
    svc = Service(namespace="default", name="dual", ip_families=(4, 6), ports=(ServicePort(80),))
    result, _ = allocate_services((svc,), settings=settings)
    assert [a.version for a in result["dual"].cluster_ips] == [4, 6]


def test_lock_round_trip_and_bad_lock_is_an_error():
    sink = DiagnosticSink()
    result, made = allocate_services(services(["a"], node_port=True))
    text = render_lock(tuple(made))
    lock = parse_lock(text, "l.json", sink)
    assert not sink.has_errors
    assert lock.get("clusterIP", "service/default/a") == [str(result["a"].cluster_ips[0])]
    parse_lock("{not json", "bad.json", sink)
    assert sink.has_errors and sink.items[-1].span.file == "bad.json"


def test_stale_lock_value_outside_the_range_is_reallocated():
    lock = Lock()
    lock.entries["clusterIP"]["service/default/a"] = ["172.16.0.5"]
    result, made = allocate_services(services(["a"]), lock)
    assert result["a"].cluster_ips[0] in SETTINGS.service_cidrs[0]
    assert not made[0].reused
