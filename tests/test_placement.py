"""Placement: controller-faithful pod names and labels, deterministic spread."""

import ipaddress

from kspec.diagnostics import DiagnosticSink
from kspec.model import Cluster, ClusterSettings, ContainerPort, Node, Workload
from kspec.passes.placement import SAFE_ALPHABET, expand, fnv32a, place, safe_encode, template_hash

NODES = tuple(Node(f"node-{i}", (ipaddress.ip_address(f"192.168.0.{i}"),), labels={"zone": "a" if i % 2 else "b"})
              for i in range(1, 5))


def workload(kind="Deployment", replicas=3, **kw):
    return Workload(kind=kind, namespace="ns", name="web", replicas=replicas, labels={"app": "web"},
                    ports=(ContainerPort(8080, "TCP", "http"),), **kw)


def test_fnv32a_known_vectors():
    assert fnv32a(b"") == 0x811C9DC5
    assert fnv32a(b"a") == 0xE40C292C
    assert fnv32a(b"foobar") == 0xBF9CF968


def test_safe_encode_uses_the_safe_alphabet():
    assert set(safe_encode("1234567890")) <= set(SAFE_ALPHABET)


def test_deployment_pods_carry_pod_template_hash_and_rs_name():
    pods = expand(workload(), NODES, DiagnosticSink())
    digest = template_hash(workload())
    assert len(pods) == 3
    for pod in pods:
        assert pod.labels["pod-template-hash"] == digest
        assert pod.labels["app"] == "web"
        assert pod.name.startswith(f"web-{digest}-") and len(pod.name.rsplit("-", 1)[1]) == 5
        assert pod.owner == f"ReplicaSet/web-{digest}"
    assert len({p.name for p in pods}) == 3
    assert len({p.node for p in pods}) == 3  # spread over distinct nodes


def test_statefulset_pods_are_ordinal_with_controller_labels():
    pods = expand(workload("StatefulSet", 3), NODES, DiagnosticSink())
    assert [p.name for p in pods] == ["web-0", "web-1", "web-2"]
    for i, pod in enumerate(pods):
        assert pod.labels["statefulset.kubernetes.io/pod-name"] == f"web-{i}"
        assert pod.labels["apps.kubernetes.io/pod-index"] == str(i)
        assert pod.labels["controller-revision-hash"].startswith("web-")


def test_daemonset_runs_one_pod_per_selected_node():
    pods = expand(workload("DaemonSet", None, node_selector={"zone": "a"}), NODES, DiagnosticSink())
    assert sorted(p.node for p in pods) == ["node-1", "node-3"]


def test_pinned_workload_and_unplaceable_workload():
    pods = expand(workload(node="node-2"), NODES, DiagnosticSink())
    assert {p.node for p in pods} == {"node-2"}
    sink = DiagnosticSink()
    assert expand(workload(node_selector={"zone": "mars"}), NODES, sink) == []
    assert sink.items and not sink.has_errors  # a warning, like a Pending pod


def test_placement_is_deterministic_and_honours_the_lock():
    cluster = Cluster(settings=ClusterSettings(), nodes=NODES, workloads=(workload(replicas=6),))
    a, made = place(cluster, {}, DiagnosticSink())
    b, _ = place(cluster, {}, DiagnosticSink())
    assert [(p.name, p.node) for p in a] == [(p.name, p.node) for p in b]
    target = a[0]
    locked = {f"pod/ns/{target.name}": "node-4" if target.node != "node-4" else "node-1"}
    c, made = place(cluster, locked, DiagnosticSink())
    moved = next(p for p in c if p.name == target.name)
    assert moved.node == locked[f"pod/ns/{target.name}"]
    assert any(key == f"pod/ns/{target.name}" and reused for key, _, reused in made)


def test_same_template_same_hash_different_template_different_hash():
    assert template_hash(workload()) == template_hash(workload())
    other = Workload(kind="Deployment", namespace="ns", name="web", replicas=3, labels={"app": "web", "v": "2"})
    assert template_hash(other) != template_hash(workload())


def test_generated_names_never_clash_within_a_workload():
    nodes = tuple(Node(f"n{i}", (ipaddress.ip_address(int(ipaddress.ip_address("10.0.0.0")) + i),)) for i in range(6000))
    pods = expand(workload("DaemonSet", None), nodes, DiagnosticSink())
    assert len({p.name for p in pods}) == 6000
    many = expand(workload(replicas=6000), NODES, DiagnosticSink())
    assert len({p.name for p in many}) == 6000
