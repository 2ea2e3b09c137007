from __future__ import annotations

import ipaddress
import re

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from backend_factories import cluster, manual_endpoints, node, pod, port, service
from kspec.backends import endpointslices
from kspec.backends.endpointslices import (
    CONTROLLER_NAME,
    MIRRORING_CONTROLLER_NAME,
    NAME_ALPHABET,
    endpoint_slices,
    generate,
    service_endpoints,
)

NODES = [node("node-1", "192.168.0.11"), node("node-2", "192.168.0.12")]


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def web_cluster():
    pods = [
        pod("shop", "web-a", "node-1", "10.244.1.5", ports=[("http", 8080)]),
        pod("shop", "web-b", "node-2", "10.244.2.5", ports=[("http", 8080)]),
        pod("shop", "web-c", "node-2", "10.244.2.6", ports=[("http", 9090)]),
    ]
    svc = service("shop", "web", port(80, "http", "http"), port(9100, "metrics", 9100, app_protocol="http"),
                  cluster_ips=["10.96.0.20"])
    return cluster(NODES, pods, [svc], members={svc.key: ["web-a", "web-b", "web-c"]})


def test_named_target_port_splits_slices_by_resolved_port_set():
    objs = docs(generate(web_cluster()))
    assert len(objs) == 2
    by_port = {o["ports"][0]["port"]: o for o in objs}
    assert sorted(by_port) == [8080, 9090]
    assert [e["targetRef"]["name"] for e in by_port[8080]["endpoints"]] == ["web-a", "web-b"]
    assert [e["targetRef"]["name"] for e in by_port[9090]["endpoints"]] == ["web-c"]
    # every slice carries every resolved port, in the Service's port order
    assert [p["name"] for p in by_port[8080]["ports"]] == ["http", "metrics"]
    assert by_port[8080]["ports"][1] == {"appProtocol": "http", "name": "metrics", "port": 9100, "protocol": "TCP"}
    assert "appProtocol" not in by_port[8080]["ports"][0]


def test_slice_object_fields_follow_the_controller():
    obj = docs(generate(web_cluster()))[0]
    assert obj["apiVersion"] == "discovery.k8s.io/v1"
    assert obj["kind"] == "EndpointSlice"
    assert obj["addressType"] == "IPv4"
    meta = obj["metadata"]
    assert meta["namespace"] == "shop"
    assert meta["generateName"] == "web-"
    assert re.fullmatch(r"web-[%s]{5}" % NAME_ALPHABET, meta["name"])
    assert meta["labels"] == {
        "kubernetes.io/service-name": "web",
        "endpointslice.kubernetes.io/managed-by": CONTROLLER_NAME,
    }
    assert "ownerReferences" not in meta
    ep = obj["endpoints"][0]
    assert ep == {
        "addresses": ["10.244.1.5"],
        "conditions": {"ready": True, "serving": True, "terminating": False},
        "nodeName": "node-1",
        "targetRef": {"kind": "Pod", "name": "web-a", "namespace": "shop"},
    }
    assert "zone" not in ep


def test_keys_are_in_kubectl_order():
    text = generate(web_cluster())
    top = [line.split(":")[0] for line in text.split("---\n")[0].splitlines() if re.match(r"[a-zA-Z]", line)]
    assert top == ["addressType", "apiVersion", "endpoints", "kind", "metadata", "ports"]


def test_at_most_100_endpoints_per_slice():
    pods = [pod("default", f"p{i}", "node-1", str(ipaddress.ip_address("10.244.1.0") + i), ports=[("http", 80)])
            for i in range(1, 251)]
    svc = service("default", "big", port(80, "http", "http"), cluster_ips=["10.96.0.5"])
    slices = endpoint_slices(cluster(NODES, pods, [svc], members={svc.key: [p.name for p in pods]}))
    assert [len(s.endpoints) for s in slices] == [100, 100, 50]
    assert len({s.name for s in slices}) == 3
    seen = [str(e.address) for s in slices for e in s.endpoints]
    assert len(seen) == len(set(seen)) == 250


def test_one_slice_set_per_ip_family():
    pods = [pod("default", "a", "node-1", "10.244.1.5", "fd00:10:244:1::5", ports=[("http", 80)])]
    dual = service("default", "dual", port(80, "http", "http"), cluster_ips=["10.96.0.5", "fd00:96::5"],
                   ip_families=[4, 6])
    single = service("default", "single", port(80, "http", "http"), cluster_ips=["10.96.0.6"])
    c = cluster(NODES, pods, [dual, single], members={dual.key: ["a"], single.key: ["a"]})
    objs = docs(generate(c))
    dual_slices = [o for o in objs if o["metadata"]["labels"]["kubernetes.io/service-name"] == "dual"]
    assert sorted((o["addressType"], o["endpoints"][0]["addresses"][0]) for o in dual_slices) == [
        ("IPv4", "10.244.1.5"), ("IPv6", "fd00:10:244:1::5")]
    single_slices = [o for o in objs if o["metadata"]["labels"]["kubernetes.io/service-name"] == "single"]
    assert [o["addressType"] for o in single_slices] == ["IPv4"]


def test_service_without_endpoints_gets_a_placeholder_slice():
    svc = service("default", "lonely", port(80, "http"), cluster_ips=["10.96.0.7"])
    objs = docs(generate(cluster(NODES, [], [svc], members={svc.key: []})))
    assert len(objs) == 1
    assert objs[0]["endpoints"] == [] and objs[0]["ports"] == []
    assert objs[0]["addressType"] == "IPv4"


def test_pod_that_resolves_no_port_is_an_endpoint_without_ports():
    pods = [pod("default", "a", "node-1", "10.244.1.5", ports=[("http", 80)]),
            pod("default", "b", "node-1", "10.244.1.6", ports=[("grpc", 90)])]
    svc = service("default", "web", port(80, "http", "http"), cluster_ips=["10.96.0.5"])
    objs = docs(generate(cluster(NODES, pods, [svc], members={svc.key: ["a", "b"]})))
    by_pod = {o["endpoints"][0]["targetRef"]["name"]: o for o in objs}
    assert by_pod["b"]["ports"] == []
    assert by_pod["a"]["ports"] == [{"name": "http", "port": 80, "protocol": "TCP"}]


def test_conditions_for_terminating_and_not_ready_pods():
    pods = [pod("default", "term", "node-1", "10.244.1.5", ports=[("http", 80)], terminating=True),
            pod("default", "slow", "node-1", "10.244.1.6", ports=[("http", 80)], ready=False)]
    svc = service("default", "web", port(80, "http", "http"), cluster_ips=["10.96.0.5"])
    pub = service("default", "pub", port(80, "http", "http"), cluster_ips=["10.96.0.6"], publish_not_ready=True)
    c = cluster(NODES, pods, [svc, pub], members={svc.key: ["term", "slow"], pub.key: ["term", "slow"]})
    conds = {
        (o["metadata"]["labels"]["kubernetes.io/service-name"], e["targetRef"]["name"]): e["conditions"]
        for o in docs(generate(c)) for e in o["endpoints"]
    }
    assert conds[("web", "term")] == {"ready": False, "serving": True, "terminating": True}
    assert conds[("web", "slow")] == {"ready": False, "serving": False, "terminating": False}
    assert conds[("pub", "term")] == {"ready": True, "serving": True, "terminating": True}
    assert conds[("pub", "slow")] == {"ready": True, "serving": False, "terminating": False}


def test_headless_service_slices_carry_the_headless_label():
    pods = [pod("default", "db-0", "node-1", "10.244.1.5", ports=[("pg", 5432)])]
    svc = service("default", "db", port(5432, "pg", "pg"), headless=True)
    obj = docs(generate(cluster(NODES, pods, [svc], members={svc.key: ["db-0"]})))[0]
    assert obj["metadata"]["labels"]["service.kubernetes.io/headless"] == ""
    assert obj["addressType"] == "IPv4"


def test_manual_endpoints_are_mirrored():
    svc = service("default", "legacy", port(5432, "pg"), port(9187, "metrics"), cluster_ips=["10.96.0.9"])
    eps = manual_endpoints(svc, [("10.1.0.5", {"pg": 5432, "metrics": 9187}, True),
                                 ("10.1.0.6", {"pg": 5432, "metrics": 9187}, False),
                                 ("10.1.0.7", {"pg": 5433}, True)])
    objs = docs(generate(cluster(NODES, [], [svc], manual={svc.key: eps})))
    assert len(objs) == 2
    for o in objs:
        assert o["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == MIRRORING_CONTROLLER_NAME
        for e in o["endpoints"]:
            assert set(e["conditions"]) == {"ready"}
            assert "targetRef" not in e
    both = next(o for o in objs if len(o["ports"]) == 2)
    assert [(e["addresses"][0], e["conditions"]["ready"]) for e in both["endpoints"]] == [
        ("10.1.0.5", True), ("10.1.0.6", False)]


def test_services_that_get_no_slices():
    ext = service("default", "ext", type="ExternalName", external_name="db.example.com")
    bare = service("default", "bare", port(80), cluster_ips=["10.96.0.8"])
    assert generate(cluster(NODES, [], [ext, bare], members={})) == ""


def test_long_service_name_is_cut_like_generate_name():
    name = "s" * 63
    svc = service("default", name, port(80), cluster_ips=["10.96.0.8"])
    obj = docs(generate(cluster(NODES, [], [svc], members={svc.key: []})))[0]
    assert len(obj["metadata"]["name"]) == 63
    assert obj["metadata"]["name"].startswith("s" * 58)
    assert obj["metadata"]["generateName"] == "s" * 58


def test_scalar_quoting_survives_yaml_round_trip():
    for text in ["on", "yes", "No", "null", "~", "", "123", "1.5", "0o17", "0x1f", "1e3", ".inf",
                 "1:20", "::1", "fd00::", "fd00::5", "a b", "#x", "web", "10.0.0.1", "true"]:
        assert yaml.safe_load(f"k: {endpointslices._scalar(text)}") == {"k": text}, text
    assert endpointslices._scalar("web") == "web"
    assert endpointslices._scalar("fd00::5") == "fd00::5"


def test_service_endpoints_is_the_sliced_view():
    c = web_cluster()
    svc = c.services[0]
    in_slices = sorted(str(e.address) for s in endpoint_slices(c) for e in s.endpoints)
    assert sorted(str(e.address) for e in service_endpoints(c, svc)) == in_slices


@st.composite
def backend_sets(draw):
    count = draw(st.integers(min_value=0, max_value=260))
    pods = []
    for i in range(count):
        choice = draw(st.sampled_from(["a", "b", "none"]))
        ports = {"a": [("http", 8080)], "b": [("http", 8081)], "none": []}[choice]
        ips = [str(ipaddress.ip_address("10.244.0.0") + i + 1)]
        if draw(st.booleans()):
            ips.append(str(ipaddress.ip_address("fd00:10:244::") + i + 1))
        pods.append(pod("default", f"p{i}", "node-1", *ips, ports=ports,
                        ready=draw(st.booleans()), terminating=draw(st.booleans())))
    families = draw(st.sampled_from([(4,), (6,), (4, 6)]))
    return pods, families


@settings(max_examples=60, deadline=None)
@given(backend_sets())
def test_every_endpoint_once_in_the_slice_of_its_port_set(data):
    pods, families = data
    svc = service("default", "web", port(80, "http", "http"), port(9000, "admin", 9000), ip_families=families)
    c = cluster(NODES, pods, [svc], members={svc.key: [p.name for p in pods]})
    slices = endpoint_slices(c)
    assert all(len(s.endpoints) <= 100 for s in slices)
    assert len({s.name for s in slices}) == len(slices)
    placed: dict[str, tuple] = {}
    for s in slices:
        for e in s.endpoints:
            assert str(e.address) not in placed, "endpoint in two slices"
            assert e.ports == s.ports
            assert s.address_type == f"IPv{e.address.version}"
            placed[str(e.address)] = tuple((p.name, p.port) for p in s.ports)
    expected = {}
    for p in pods:
        http = p.ports[0].port if p.ports else None
        for address in p.ips:
            if address.version in families:
                ports = ((("http", http),) if http else ()) + (("admin", 9000),)
                expected[str(address)] = ports
    assert placed == expected
    ready = {str(e.address) for s in slices for e in s.endpoints if e.ready}
    assert ready == {str(a) for p in pods if p.ready and not p.terminating for a in p.ips if a.version in families}
    for family in families:
        assert any(s.address_type == f"IPv{family}" for s in slices)
    assert generate(c) == generate(c)


def test_slices_from_the_real_endpoints_pass():
    """The pass's endpoints (selector matching, per-pod named ports) slice the same way."""
    import dataclasses

    from kspec.model import ResolvedCluster
    from kspec.passes.endpoints import compute_endpoints
    from kspec.selector import parse_selector

    pods = [
        dataclasses.replace(pod("default", "a", "node-1", "10.244.1.5", ports=[("http", 8080)]), labels={"app": "web"}),
        dataclasses.replace(pod("default", "b", "node-2", "10.244.2.5", ports=[("http", 9090)], ready=False),
                            labels={"app": "web"}),
        dataclasses.replace(pod("default", "c", "node-2", "10.244.2.6", ports=[("http", 8080)]), labels={"app": "db"}),
    ]
    svc = dataclasses.replace(
        service("default", "web", port(80, "http", "http"), cluster_ips=["10.96.0.5"], publish_not_ready=True),
        selector=parse_selector("app=web"),
    )
    endpoints = compute_endpoints((svc,), tuple(pods), (), 4)
    c = ResolvedCluster(settings=cluster().settings, nodes=tuple(NODES), pods=tuple(pods), services=(svc,),
                        endpoints=endpoints)
    objs = docs(generate(c))
    got = {(o["ports"][0]["port"], e["targetRef"]["name"]): e["conditions"] for o in objs for e in o["endpoints"]}
    assert got == {
        (8080, "a"): {"ready": True, "serving": True, "terminating": False},
        # publishNotReadyAddresses makes ready true; serving stays the pod's readiness
        (9090, "b"): {"ready": True, "serving": False, "terminating": False},
    }
