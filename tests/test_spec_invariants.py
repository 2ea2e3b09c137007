"""KS1xx: each invariant proved on valid clusters and violated, with the right ID, by a planted fault."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

from hypothesis import given, settings, strategies as st

from kspec.diagnostics import DiagnosticSink
from kspec.frontend.assemble import Flags
from kspec.model import Cluster, ClusterSettings, ContainerPort, Node, Pod, Service, ServicePort, Workload
from kspec.passes.lock import Lock
from kspec.pipeline import load, resolve
from kspec.selector import parse_selector
from kspec.verify.runner import run_spec_checks, selected

ROOT = Path(__file__).resolve().parent.parent
SPEC_IDS = [i for i in selected() if i.startswith("KS1")]


def verdicts(cluster, ids=SPEC_IDS):
    return {v.invariant: v for v in run_spec_checks(cluster, list(ids))}


def violated(cluster) -> set[str]:
    return {i for i, v in verdicts(cluster).items() if v.effective_status == "violated"}


def test_broken_example_violates_exactly_what_its_comments_say():
    cluster = load([str(ROOT / "examples" / "broken" / "cluster.kspec")], None, Flags()).cluster
    result = verdicts(cluster)
    assert violated(cluster) == {"KS102", "KS103", "KS104", "KS105", "KS108", "KS109", "KS110"}
    ks104 = result["KS104"].findings[0]
    assert [(l.span.line, l.span.col) for l in ks104.locations] == [(14, 30), (15, 30)]
    assert ks104.witness == "address 10.244.1.10"
    ks109 = [f for f in result["KS109"].findings if f.subject == "service default/checkout"][0]
    assert ks109.primary.line == 20
    assert "did you mean app=checkout?" in ks109.details[0]
    ks110 = result["KS110"].findings[0]
    assert ks110.hint == "did you mean targetPort: http?"
    assert (ks110.primary.line, ks110.primary.col) == (27, 44)


def test_manifest_form_points_into_the_manifest():
    path = ROOT / "examples" / "broken" / "manifests.yaml"
    cluster = load([str(path)], None, Flags()).cluster
    result = verdicts(cluster)
    assert violated(cluster) == {"KS102", "KS103", "KS104", "KS105", "KS108", "KS109", "KS110"}
    lines = path.read_text().splitlines()
    ks104 = result["KS104"].findings[0]
    assert all("podIP: 10.244.1.10" in lines[l.span.line - 1] for l in ks104.locations)
    ks108 = result["KS108"].findings[0]
    assert "nodePort: 40000" in lines[ks108.primary.line - 1]


def test_examples_that_should_hold_hold():
    for name in ("explainer", "multi-namespace"):
        for form in ("cluster.kspec", "manifests.yaml"):
            cluster = load([str(ROOT / "examples" / name / form)], None, Flags()).cluster
            assert violated(cluster) == set(), (name, form)


def test_annotation_suppresses_and_is_counted():
    cluster = load([str(ROOT / "examples" / "lab" / "cluster.kspec")], None, Flags()).cluster
    ks109 = verdicts(cluster)["KS109"]
    assert ks109.status == "violated" and ks109.effective_status == "proved"
    (finding,) = ks109.findings
    assert finding.suppressed == "kspec.dev/ignore annotation: started by the nightly job"


def test_explain_why_names_other_namespaces_and_not_ready_pods():
    nodes = (Node("n1", (ipaddress.ip_address("192.168.0.1"),)),)
    pods = (Pod("other", "w", None, labels={"app": "web"}), Pod("default", "x", None, labels={"app": "web2"}))
    svc = Service("default", "web", selector=parse_selector("app=web"), ports=(ServicePort(80),))
    cluster = resolve(Cluster(ClusterSettings(), nodes, pods, services=(svc,)), Lock(), DiagnosticSink())
    (finding,) = verdicts(cluster)["KS109"].findings
    assert any("other namespaces: other (1)" in d for d in finding.details)
    not_ready = replace(pods[0], namespace="default", name="w", ready=False)
    cluster = resolve(Cluster(ClusterSettings(), nodes, (not_ready,), services=(svc,)), Lock(), DiagnosticSink())
    (finding,) = verdicts(cluster)["KS109"].findings
    assert "none is ready" in finding.details[0]


# --- property: valid clusters verify; one planted fault is caught with its ID ----------

names = st.lists(st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True), min_size=1, max_size=6, unique=True)


@st.composite
def clusters(draw):
    node_names = draw(names)
    app_names = draw(names)
    nodes = tuple(Node(f"n-{n}", (ipaddress.ip_address(f"192.168.0.{i + 1}"),)) for i, n in enumerate(node_names))
    workloads = tuple(Workload("Deployment", "default", f"w-{a}", draw(st.integers(1, 4)), {"app": a},
                               ports=(ContainerPort(8080, "TCP", "http"),)) for a in app_names)
    services = tuple(Service("default", f"s-{a}", type=draw(st.sampled_from(["ClusterIP", "NodePort"])),
                             selector=parse_selector(f"app={a}"),
                             ports=(ServicePort(80, "TCP", "http", draw(st.sampled_from([8080, "http"]))),))
                     for a in app_names)
    return Cluster(ClusterSettings(), nodes, workloads=workloads, services=services)


def resolved(cluster):
    sink = DiagnosticSink()
    result = resolve(cluster, Lock(), sink)
    assert not sink.has_errors
    return result


def plant(cluster, fault: str, pick: int):
    """One fault of the given kind, planted at a chosen place of a resolved cluster."""
    nodes, pods, services = list(cluster.nodes), list(cluster.pods), list(cluster.services)
    if fault == "KS101":
        a, b = pick % len(nodes), (pick + 1) % len(nodes)
        if a == b:
            nodes.append(replace(nodes[a], name="n-extra", pod_cidrs=(ipaddress.ip_network("10.244.250.0/24"),)))
        else:
            nodes[b] = replace(nodes[b], ips=nodes[a].ips)
    elif fault == "KS102":
        a = pick % len(nodes)
        nodes.append(replace(nodes[a], name="n-extra", ips=(ipaddress.ip_address("192.168.9.9"),)))
    elif fault == "KS103":
        nodes[pick % len(nodes)] = replace(nodes[pick % len(nodes)], pod_cidrs=(ipaddress.ip_network("10.99.0.0/24"),))
    elif fault == "KS104":
        a = pick % len(pods)
        pods.append(replace(pods[a], name="dup"))
    elif fault == "KS105":
        a = pick % len(pods)
        pods[a] = replace(pods[a], ips=(ipaddress.ip_address("10.244.255.254"),))
    elif fault == "KS106":
        nodes[pick % len(nodes)] = replace(nodes[pick % len(nodes)], ips=(ipaddress.ip_address("10.96.0.77"),))
    elif fault == "KS107":
        s = pick % len(services)
        services[s] = replace(services[s], cluster_ips=(ipaddress.ip_address("172.16.0.1"),))
    elif fault == "KS108":
        s = pick % len(services)
        services[s] = replace(services[s], type="NodePort", ports=(replace(services[s].ports[0], node_port=40000),))
    elif fault in ("KS109", "KS110"):
        s = pick % len(services)
        target = "nope" if fault == "KS110" else services[s].ports[0].target_port
        selector = services[s].selector if fault == "KS110" else parse_selector("app=absent")
        services[s] = replace(services[s], selector=selector, ports=(replace(services[s].ports[0], target_port=target),))
    elif fault == "KS111":
        s = pick % len(services)
        other = services[(s + 1) % len(services)]
        if other is services[s]:
            services.append(replace(services[s], name="twin"))
        else:
            services[s] = replace(services[s], cluster_ips=other.cluster_ips)
    base = Cluster(cluster.settings, tuple(nodes), tuple(pods), services=tuple(services))
    return resolve_keep(base)


def resolve_keep(base: Cluster):
    """Re-run only endpoints (allocations are kept as planted)."""
    from kspec.passes.endpoints import compute_endpoints
    from kspec.model import ResolvedCluster

    endpoints = compute_endpoints(base.services, base.pods, (), 4)
    return ResolvedCluster(base.settings, base.nodes, base.pods, base.services, endpoints)


@settings(max_examples=40, deadline=None)
@given(clusters())
def test_any_generated_valid_cluster_verifies(cluster):
    assert violated(resolved(cluster)) == set()


FAULTS = ["KS101", "KS102", "KS103", "KS104", "KS105", "KS106", "KS107", "KS108", "KS109", "KS110"]


@settings(max_examples=120, deadline=None)
@given(clusters(), st.sampled_from(FAULTS), st.integers(0, 50))
def test_any_single_planted_fault_is_caught_with_its_id(cluster, fault, pick):
    broken = plant(resolved(cluster), fault, pick)
    assert fault in violated(broken)


def test_ks111_two_services_sharing_an_ip_clash_in_reverse_dns():
    base = resolved(Cluster(ClusterSettings(), (Node("n", (ipaddress.ip_address("192.168.0.1"),)),),
                            services=(Service("default", "a", ports=(ServicePort(80),)),
                                      Service("default", "b", ports=(ServicePort(80),)))))
    broken = plant(base, "KS111", 0)
    assert {"KS107", "KS111"} <= violated(broken)


def test_node_address_inside_a_pod_cidr_is_found_among_many():
    nodes = [Node(f"n{i}", (ipaddress.ip_address(int(ipaddress.ip_address("192.168.0.1")) + i),),
                  (ipaddress.ip_network(f"10.244.{i}.0/24"),)) for i in range(200)]
    nodes.append(Node("bad", (ipaddress.ip_address("10.244.77.9"),), (ipaddress.ip_network("10.244.250.0/24"),)))
    nodes.append(Node("big", (ipaddress.ip_address("192.168.5.5"),), (ipaddress.ip_network("10.245.0.0/16"),)))
    nodes.append(Node("in-big", (ipaddress.ip_address("10.245.200.1"),), (ipaddress.ip_network("10.245.7.0/24"),)))
    cluster = resolve_keep(Cluster(ClusterSettings(), tuple(nodes)))
    messages = [f.message for f in verdicts(cluster)["KS106"].findings]
    assert any("node bad's address 10.244.77.9 lies inside the pod network" in m for m in messages)
    assert any("node in-big's address 10.245.200.1 lies inside the podCIDR of big" in m for m in messages)
    assert len(messages) == 2
