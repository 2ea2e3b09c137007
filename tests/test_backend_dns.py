from __future__ import annotations

import dataclasses

import dns.name
import dns.rdatatype
import dns.reversename
import dns.zone
import pytest

from backend_factories import cluster, node, pod, port, service
from kspec.backends.dns import SCHEMA_VERSION, generate_zones
from kspec.diagnostics import InputError
from kspec.model import ClusterSettings

NODES = [node("node-1", "192.168.0.11"), node("node-2", "192.168.0.12")]


def sample_cluster(domain: str = "cluster.local"):
    pods = [
        pod("default", "db-0", "node-1", "10.244.1.10", ports=[("pg", 5432)]),
        pod("default", "db-1", "node-2", "10.244.2.10", ports=[("pg", 5433)]),
        pod("default", "db-2", "node-2", "10.244.2.11", ports=[("pg", 5432)], ready=False),
        pod("default", "web-0", "node-1", "10.244.1.20", "fd00:10:244:1::20", ports=[("http", 8080)]),
        pod("kube-system", "coredns-0", "node-1", "10.244.1.2", ports=[("dns", 53, "UDP"), ("dns-tcp", 53)]),
        pod("default", "agent", "node-1", "192.168.0.11", host_network=True),
    ]
    services = [
        service("default", "kubernetes", port(443, "https", 6443), cluster_ips=["10.96.0.1"]),
        service("kube-system", "kube-dns", port(53, "dns", "dns", "UDP"), port(53, "dns-tcp", "dns-tcp"),
                cluster_ips=["10.96.0.10"]),
        service("default", "web", port(80, "http", "http"), port(81), cluster_ips=["10.96.0.20", "fd00:96::20"],
                ip_families=[4, 6]),
        service("default", "db", port(5432, "pg", "pg"), headless=True),
        service("default", "db-all", port(5432, "pg", "pg"), headless=True, publish_not_ready=True),
        service("default", "empty", port(80, "http"), headless=True),
        service("default", "ext", type="ExternalName", external_name="db.example.com"),
    ]
    members = {
        ("kube-system", "kube-dns"): ["coredns-0"],
        ("default", "web"): ["web-0"],
        ("default", "db"): ["db-0", "db-1", "db-2"],
        ("default", "db-all"): ["db-0", "db-1", "db-2"],
        ("default", "empty"): [],
    }
    settings = dataclasses.replace(ClusterSettings(), domain=domain)
    return cluster(NODES, pods, services, members=members, settings=settings)


def load(zones: dict[str, str], filename: str, origin: str) -> dns.zone.Zone:
    return dns.zone.from_text(zones[filename], origin=origin, relativize=False, check_origin=True)


@pytest.fixture(scope="module")
def zones() -> dict[str, str]:
    return generate_zones(sample_cluster())


@pytest.fixture(scope="module")
def fwd(zones) -> dns.zone.Zone:
    return load(zones, "cluster.local.zone", "cluster.local.")


@pytest.fixture(scope="module")
def rev4(zones) -> dns.zone.Zone:
    return load(zones, "in-addr.arpa.zone", "in-addr.arpa.")


@pytest.fixture(scope="module")
def rev6(zones) -> dns.zone.Zone:
    return load(zones, "ip6.arpa.zone", "ip6.arpa.")


def answer(zone: dns.zone.Zone, name: str, rdtype: str) -> set[str]:
    rdataset = zone.get_rdataset(dns.name.from_text(name), dns.rdatatype.from_text(rdtype))
    return {r.to_text() for r in rdataset} if rdataset is not None else set()


def ptr(zone: dns.zone.Zone, address: str) -> set[str]:
    return answer(zone, dns.reversename.from_address(address).to_text(), "PTR")


def test_zone_files_and_their_origins(zones):
    assert sorted(zones) == ["cluster.local.zone", "in-addr.arpa.zone", "ip6.arpa.zone"]
    assert zones["cluster.local.zone"].startswith("$ORIGIN cluster.local.\n$TTL 5\n")


def test_soa_ns_and_ttl(fwd, rev4):
    for zone, origin in ((fwd, "cluster.local."), (rev4, "in-addr.arpa.")):
        soa = zone.get_rdataset(origin, "SOA")
        assert soa.ttl == 5
        (record,) = list(soa)
        assert record.mname.to_text() == "ns.dns.cluster.local."
        assert record.rname.to_text() == "hostmaster.cluster.local."
        assert record.minimum == 5
        assert answer(zone, origin, "NS") == {"ns.dns.cluster.local."}
    assert answer(fwd, "ns.dns.cluster.local.", "A") == {"10.96.0.10"}
    assert all(rds.ttl == 5 for node_ in fwd.nodes.values() for rds in node_)


def test_dns_version_txt(fwd):
    assert answer(fwd, "dns-version.cluster.local.", "TXT") == {f'"{SCHEMA_VERSION}"'}
    assert SCHEMA_VERSION == "1.1.0"


def test_cluster_ip_services_a_aaaa_srv(fwd):
    assert answer(fwd, "kubernetes.default.svc.cluster.local.", "A") == {"10.96.0.1"}
    assert answer(fwd, "web.default.svc.cluster.local.", "A") == {"10.96.0.20"}
    assert answer(fwd, "web.default.svc.cluster.local.", "AAAA") == {"fd00:96::20"}
    assert answer(fwd, "_https._tcp.kubernetes.default.svc.cluster.local.", "SRV") == {
        "0 100 443 kubernetes.default.svc.cluster.local."}
    assert answer(fwd, "_dns._udp.kube-dns.kube-system.svc.cluster.local.", "SRV") == {
        "0 100 53 kube-dns.kube-system.svc.cluster.local."}
    assert answer(fwd, "_dns-tcp._tcp.kube-dns.kube-system.svc.cluster.local.", "SRV") == {
        "0 100 53 kube-dns.kube-system.svc.cluster.local."}
    # the unnamed port 81 of web has no SRV record, and no endpoint names exist for it
    srv_names = {n.to_text() for n, node_ in fwd.nodes.items() if node_.get_rdataset(1, dns.rdatatype.SRV)}
    assert not any("web.default" in n and "_http." not in n for n in srv_names)


def test_headless_service_ready_endpoints_only(fwd):
    assert answer(fwd, "db.default.svc.cluster.local.", "A") == {"10.244.1.10", "10.244.2.10"}
    assert answer(fwd, "10-244-1-10.db.default.svc.cluster.local.", "A") == {"10.244.1.10"}
    assert answer(fwd, "10-244-2-11.db.default.svc.cluster.local.", "A") == set()
    assert answer(fwd, "_pg._tcp.db.default.svc.cluster.local.", "SRV") == {
        "0 50 5432 10-244-1-10.db.default.svc.cluster.local.",
        "0 50 5433 10-244-2-10.db.default.svc.cluster.local.",
    }


def test_headless_publish_not_ready_addresses(fwd):
    assert answer(fwd, "db-all.default.svc.cluster.local.", "A") == {"10.244.1.10", "10.244.2.10", "10.244.2.11"}
    assert len(answer(fwd, "_pg._tcp.db-all.default.svc.cluster.local.", "SRV")) == 3


def test_headless_without_ready_endpoints_is_nxdomain(fwd):
    assert fwd.get_node(dns.name.from_text("empty.default.svc.cluster.local.")) is None


def test_external_name_is_a_cname_alone(fwd):
    name = dns.name.from_text("ext.default.svc.cluster.local.")
    assert answer(fwd, name.to_text(), "CNAME") == {"db.example.com."}
    assert [dns.rdatatype.to_text(r.rdtype) for r in fwd.get_node(name)] == ["CNAME"]


def test_deprecated_pod_records(fwd):
    assert answer(fwd, "10-244-1-20.default.pod.cluster.local.", "A") == {"10.244.1.20"}
    assert answer(fwd, "fd00-10-244-1--20.default.pod.cluster.local.", "AAAA") == {"fd00:10:244:1::20"}
    assert fwd.get_node(dns.name.from_text("192-168-0-11.default.pod.cluster.local.")) is None


def test_ptr_records(rev4, rev6):
    assert ptr(rev4, "10.96.0.1") == {"kubernetes.default.svc.cluster.local."}
    assert ptr(rev4, "10.96.0.20") == {"web.default.svc.cluster.local."}
    assert ptr(rev6, "fd00:96::20") == {"web.default.svc.cluster.local."}
    assert ptr(rev4, "10.244.1.10") == {"10-244-1-10.db.default.svc.cluster.local.",
                                        "10-244-1-10.db-all.default.svc.cluster.local."}
    assert ptr(rev4, "10.244.2.11") == {"10-244-2-11.db-all.default.svc.cluster.local."}


def test_every_ptr_target_resolves_back(fwd, rev4, rev6):
    for zone in (rev4, rev6):
        for name, node_ in zone.nodes.items():
            rds = node_.get_rdataset(1, dns.rdatatype.PTR)
            if rds is None:
                continue
            address = dns.reversename.to_address(name)
            rdtype = "AAAA" if ":" in address else "A"
            for record in rds:
                assert address in answer(fwd, record.target.to_text(), rdtype)


def test_every_srv_target_has_an_address(fwd):
    for _, node_ in fwd.nodes.items():
        rds = node_.get_rdataset(1, dns.rdatatype.SRV)
        for record in rds or ():
            target = record.target.to_text()
            assert answer(fwd, target, "A") | answer(fwd, target, "AAAA"), target


def test_no_ipv6_zone_without_ipv6_addresses():
    svc = service("default", "web", port(80, "http"), cluster_ips=["10.96.0.5"])
    zones = generate_zones(cluster(NODES, [], [svc], members={svc.key: []}))
    assert sorted(zones) == ["cluster.local.zone", "in-addr.arpa.zone"]
    rev4 = load(zones, "in-addr.arpa.zone", "in-addr.arpa.")
    assert ptr(rev4, "10.96.0.5") == {"web.default.svc.cluster.local."}


def test_custom_domain():
    zones = generate_zones(sample_cluster("corp.example"))
    assert "corp.example.zone" in zones
    fwd = load(zones, "corp.example.zone", "corp.example.")
    assert answer(fwd, "web.default.svc.corp.example.", "A") == {"10.96.0.20"}
    assert answer(fwd, "dns-version.corp.example.", "TXT") == {'"1.1.0"'}


def test_deterministic_with_serial_from_content():
    a, b = generate_zones(sample_cluster()), generate_zones(sample_cluster())
    assert a == b
    soa = lambda z: list(load(z, "cluster.local.zone", "cluster.local.").get_rdataset("cluster.local.", "SOA"))[0]
    changed = generate_zones(cluster(NODES, [], [service("default", "x", cluster_ips=["10.96.0.3"])], members={}))
    assert soa(a).serial != soa(changed).serial


def test_names_that_would_inject_text_are_input_errors():
    bad = service("default", "ext", type="ExternalName", external_name="evil.com. IN A 1.2.3.4")
    with pytest.raises(InputError) as info:
        generate_zones(cluster(NODES, [], [bad], members={}))
    assert "externalName" in info.value.diagnostics[0].message
    bad_port = service("default", "web", port(80, "ht tp"), cluster_ips=["10.96.0.5"])
    with pytest.raises(InputError):
        generate_zones(cluster(NODES, [], [bad_port], members={}))


def test_dual_stack_headless_service():
    pods = [pod("default", "db-0", "node-1", "10.244.1.10", "fd00:10:244:1::10", ports=[("pg", 5432)])]
    svc = service("default", "db", port(5432, "pg", "pg"), headless=True, ip_families=[4, 6])
    zones = generate_zones(cluster(NODES, pods, [svc], members={svc.key: ["db-0"]}))
    fwd = load(zones, "cluster.local.zone", "cluster.local.")
    rev6 = load(zones, "ip6.arpa.zone", "ip6.arpa.")
    assert answer(fwd, "db.default.svc.cluster.local.", "A") == {"10.244.1.10"}
    assert answer(fwd, "db.default.svc.cluster.local.", "AAAA") == {"fd00:10:244:1::10"}
    assert answer(fwd, "fd00-10-244-1--10.db.default.svc.cluster.local.", "AAAA") == {"fd00:10:244:1::10"}
    assert answer(fwd, "_pg._tcp.db.default.svc.cluster.local.", "SRV") == {
        "0 50 5432 10-244-1-10.db.default.svc.cluster.local.",
        "0 50 5432 fd00-10-244-1--10.db.default.svc.cluster.local.",
    }
    assert ptr(rev6, "fd00:10:244:1::10") == {"fd00-10-244-1--10.db.default.svc.cluster.local."}
