"""`kspec check` end to end: examples, both input forms, errors, controller behaviour."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import pytest

from kspec.cli import main
from kspec.frontend.assemble import Flags
from kspec.pipeline import load

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdin=io.StringIO(stdin), stdout=out, stderr=err)
    assert "Traceback" not in err.getvalue() and "internal error" not in err.getvalue(), err.getvalue()
    return code, out.getvalue(), err.getvalue()


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def resolved(*paths: str, **flags):
    result = load(list(paths), None, Flags(**flags))
    assert result.ok, [str(d.span) + " " + d.message for d in result.diagnostics]
    return result.cluster


@pytest.mark.parametrize("path", sorted(str(p.relative_to(EXAMPLES)) for p in EXAMPLES.glob("*/*") if p.is_file()))
def test_every_example_checks_clean(path):
    code, out, err = run("check", str(EXAMPLES / path))
    assert code == 0, err
    assert out.startswith("kspec check: ok")
    assert "warning" not in err


def network(cluster):
    """What must be equal between two forms of one cluster."""
    return {
        "nodes": sorted((n.name, n.ips, n.pod_cidrs) for n in cluster.nodes),
        "pods": sorted((p.key, p.node, p.ips, tuple(sorted(p.labels.items()))) for p in cluster.pods),
        "services": sorted((s.key, s.type, s.cluster_ips, s.headless,
                            tuple((p.name, p.port, p.protocol, p.node_port) for p in s.ports)) for s in cluster.services),
        "endpoints": sorted((k, tuple((pe.port.name, tuple(sorted((b.ip, b.port, b.ready) for b in pe.backends)))
                                      for pe in v.ports)) for k, v in cluster.endpoints.items()),
        "settings": (cluster.settings.pod_cidrs, cluster.settings.service_cidrs, cluster.settings.node_port_range,
                     cluster.settings.proxy.mode, cluster.settings.domain),
    }


@pytest.mark.parametrize("example", sorted(p.parent.name for p in EXAMPLES.glob("*/manifests.yaml")))
def test_kspec_and_manifest_forms_resolve_to_the_same_network(example):
    a = resolved(str(EXAMPLES / example / "cluster.kspec"))
    b = resolved(str(EXAMPLES / example / "manifests.yaml"))
    na, nb = network(a), network(b)
    for key in na:
        assert na[key] == nb[key], key


def test_explainer_summary_counts():
    code, out, _ = run("check", "--format", "json", str(EXAMPLES / "explainer" / "cluster.kspec"))
    facts = json.loads(out)
    assert code == 0
    assert facts["nodes"] == 4 and facts["pods"] == 4 and facts["services"] == 3
    assert facts["podsFromWorkloads"] == 3
    assert facts["readyEndpoints"] == 9
    assert facts["allocated"]["podCIDR"] == 1 and facts["allocated"]["clusterIP"] == 3


def test_errors_are_all_reported_with_positions_and_hints(tmp_path):
    path = write(tmp_path, "bad.kspec", """\
        cluster:
          podCIDR: 10.244.1.0/16
        nodes:
          node-1: {ip: 192.168.0.11, podCIDR: 10.244.1.0/24}
        pods:
          web: {node: node-9, ip: 10.244.1.5, labls: {app: web}}
        services:
          web:
            selector: app == web, tier notin canary
            ports:
              - {name: http, port: 70000}
        """)
    code, out, err = run("check", path)
    assert code == 2 and out == ""
    assert f"{path}:2:12: error:" in err and "did you mean 10.244.0.0/16?" in err
    assert f"{path}:6:39: error: unknown field 'labls'" in err and "did you mean 'labels'?" in err
    assert f"{path}:9:38: error: expected '(' after 'notin'" in err
    assert f"{path}:11:28: error:" in err and "out of range" in err  # port 70000
    assert err.count(": error:") == 4 and err.count("hint:") >= 4


def test_selector_error_points_inside_the_string(tmp_path):
    path = write(tmp_path, "sel.kspec", """\
        services:
          web:
            selector: app = web, tier not in (canary)
            ports: [80/TCP]
        """)
    code, _, err = run("check", path)
    assert code == 2
    assert f"{path}:3:" in err and "notin" in err


def test_pod_on_unknown_node_is_an_error_when_nodes_are_given(tmp_path):
    path = write(tmp_path, "c.yaml", """\
        apiVersion: v1
        kind: Node
        metadata: {name: node-1}
        status: {addresses: [{type: InternalIP, address: 192.168.0.11}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: p}
        spec:
          nodeName: node-2
          containers: [{name: c, image: x}]
        """)
    code, _, err = run("check", path)
    assert code == 2
    assert f"{path}:10:13: error: pod default/p is on node 'node-2'" in err


def test_near_miss_field_in_a_manifest_is_a_warning(tmp_path):
    path = write(tmp_path, "svc.yaml", """\
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          selctor: {app: web}
          ports: [{port: 80, targetPrt: 8080}]
        """)
    code, out, err = run("check", path)
    assert code == 0
    assert f"{path}:5:3: warning: unknown field spec.selctor is ignored" in err
    assert "did you mean 'selector'?" in err and "did you mean 'targetPort'?" in err


def test_default_cluster_for_an_apps_manifests(tmp_path):
    path = write(tmp_path, "app.yaml", """\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: api, namespace: shop}
        spec:
          replicas: 4
          selector: {matchLabels: {app: api}}
          template:
            metadata: {labels: {app: api}}
            spec: {containers: [{name: api, image: api:1, ports: [{name: http, containerPort: 8080}]}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: api, namespace: shop}
        spec:
          selector: {app: api}
          ports: [{port: 80, targetPort: http}]
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: settings}
        data: {a: b}
        """)
    code, out, _ = run("check", path, "--nodes", "5")
    assert code == 0
    assert "nodes     5 (default cluster" in out
    assert "ConfigMap (1)" in out
    cluster = resolved(path, nodes=5)
    assert [n.name for n in cluster.nodes] == [f"node-{i}" for i in range(1, 6)]
    assert all(n.ips[0] in __import__("ipaddress").ip_network("192.168.0.0/16") for n in cluster.nodes)
    assert all(len(n.pod_cidrs) == 1 and n.pod_cidrs[0].prefixlen == 24 for n in cluster.nodes)
    assert str(cluster.settings.service_cidrs[0]) == "10.96.0.0/12"
    assert len(cluster.endpoints[("shop", "api")].ports[0].ready) == 4


def test_nodes_inferred_from_pods_with_their_pod_cidrs(tmp_path):
    pods = []
    for i, (node, ip) in enumerate([("w1", "10.244.7.5"), ("w1", "10.244.7.9"), ("w2", "10.244.3.2")]):
        pods.append(f"""\
            - apiVersion: v1
              kind: Pod
              metadata: {{name: p{i}, namespace: default}}
              spec: {{nodeName: {node}, containers: [{{name: c, image: x}}]}}
              status: {{podIP: {ip}, conditions: [{{type: Ready, status: "True"}}]}}
            """)
    path = write(tmp_path, "pods.yaml", "apiVersion: v1\nkind: PodList\nitems:\n" + "".join(textwrap.dedent(p) for p in pods))
    cluster = resolved(path)
    assert {n.name: str(n.pod_cidrs[0]) for n in cluster.nodes} == {"w1": "10.244.7.0/24", "w2": "10.244.3.0/24"}


def test_kubectl_dump_counts_pods_once(tmp_path):
    text = """\
        apiVersion: v1
        kind: List
        items:
        - apiVersion: apps/v1
          kind: Deployment
          metadata: {name: web, namespace: default}
          spec:
            replicas: 2
            selector: {matchLabels: {app: web}}
            template:
              metadata: {labels: {app: web}}
              spec: {containers: [{name: w, image: w}]}
        - apiVersion: apps/v1
          kind: ReplicaSet
          metadata:
            name: web-6d4b
            namespace: default
            ownerReferences: [{kind: Deployment, name: web, controller: true}]
          spec:
            replicas: 2
            selector: {matchLabels: {app: web, pod-template-hash: 6d4b}}
            template:
              metadata: {labels: {app: web, pod-template-hash: 6d4b}}
              spec: {containers: [{name: w, image: w}]}
        - apiVersion: v1
          kind: Pod
          metadata:
            name: web-6d4b-aaaaa
            namespace: default
            labels: {app: web, pod-template-hash: 6d4b}
            ownerReferences: [{kind: ReplicaSet, name: web-6d4b, controller: true}]
          spec: {nodeName: node-1, containers: [{name: w, image: w}]}
          status: {podIP: 10.244.1.7}
        - apiVersion: v1
          kind: Pod
          metadata:
            name: web-6d4b-bbbbb
            namespace: default
            labels: {app: web, pod-template-hash: 6d4b}
            ownerReferences: [{kind: ReplicaSet, name: web-6d4b, controller: true}]
          spec: {nodeName: node-2, containers: [{name: w, image: w}]}
          status: {podIP: 10.244.2.7}
        """
    cluster = resolved(write(tmp_path, "dump.yaml", text))
    assert sorted(p.name for p in cluster.pods) == ["web-6d4b-aaaaa", "web-6d4b-bbbbb"]


def test_host_network_pods_take_their_node_ip(tmp_path):
    path = write(tmp_path, "c.kspec", """\
        nodes:
          n1: {ip: 192.168.1.1}
        workloads:
          agent: {kind: DaemonSet, hostNetwork: true, labels: {app: agent}, ports: {m: 9100/TCP}}
        services:
          agent: {selector: app = agent, ports: [{port: 9100, targetPort: m}]}
        """)
    cluster = resolved(path)
    (pod,) = cluster.pods
    assert pod.host_network and [str(i) for i in pod.ips] == ["192.168.1.1"]
    assert [str(b.ip) for b in cluster.endpoints[("default", "agent")].ports[0].backends] == ["192.168.1.1"]


def test_statefulset_pods_selectable_one_by_one():
    cluster = resolved(str(EXAMPLES / "multi-namespace" / "cluster.kspec"))
    (port,) = cluster.endpoints[("shop", "db-0")].ports
    assert [b.pod for b in port.backends] == [("shop", "db-0")]


def test_named_target_port_resolves_per_pod():
    cluster = resolved(str(EXAMPLES / "multi-namespace" / "cluster.kspec"))
    (port,) = cluster.endpoints[("shop", "web")].ports
    by_pod = {b.pod[1].split("-")[1] if "canary" in b.pod[1] else "stable": b.port for b in port.backends}
    assert by_pod == {"canary": 8081, "stable": 8080}
    assert len(port.backends) == 4


def test_objects_without_namespace_use_the_namespace_flag(tmp_path):
    path = write(tmp_path, "svc.yaml", """\
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec: {ports: [{port: 80}]}
        """)
    assert resolved(path, namespace="team-a").services[0].namespace == "team-a"


def test_stdin_and_directories(tmp_path):
    text = (EXAMPLES / "explainer" / "manifests.yaml").read_text()
    code, out, _ = run("check", "-", stdin=text)
    assert code == 0 and "nodes     4" in out
    code, out, _ = run("check", str(EXAMPLES / "explainer"))
    assert code == 2  # both forms of one cluster in one directory define everything twice


def test_lock_file_is_honoured(tmp_path):
    path = str(EXAMPLES / "explainer" / "cluster.kspec")
    lock = tmp_path / "kspec.lock.json"
    lock.write_text(json.dumps({"version": 1, "allocations": {
        "clusterIP": {"service/default/search": ["10.96.77.77"]}}}))
    code, out, _ = run("check", path, "--lock", str(lock), "--format", "json")
    assert code == 0 and json.loads(out)["fromLock"] == {"clusterIP": 1}
    result = load([path], None, Flags(), lock)
    assert str(result.cluster.services_by_key[("default", "search")].cluster_ips[0]) == "10.96.77.77"


@pytest.mark.parametrize("payload", [
    b"a: &a [x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
    b"d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
    b"f: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
    b"[" * 100_000,
    b"- " * 100_000 + b"x\n",
    b"kind: Pod\nmetadata: {name: \x00}\n",
    b"kind: Service\nmetadata: {name: \xff\xfe}\n",
    b"apiVersion: v1\nkind: Service\nspec: {ports: [{port: " + b"9" * 50_000 + b"}]}\n",
    b"{\"kind\": \"List\", \"items\": [" + b"[" * 100_000 + b"]}",
])
def test_hostile_inputs_end_cleanly(tmp_path, payload):
    path = tmp_path / "evil.yaml"
    path.write_bytes(payload)
    code, _, err = run("check", str(path))
    assert code == 2
    assert "error" in err


def test_usage_errors_exit_2():
    assert run("check")[0] == 2
    assert run("frobnicate")[0] == 2
    assert run("check", "/nonexistent/file.yaml")[0] == 2


def test_schema_command_prints_the_schema():
    code, out, _ = run("schema")
    schema = json.loads(out)
    assert code == 0 and schema["title"].startswith("kspec")
    assert {"cluster", "nodes", "workloads", "pods", "services"} <= set(schema["properties"])


def test_dump_from_other_ranges_warns_with_the_flag_to_pass(tmp_path):
    path = write(tmp_path, "k3s.yaml", """\
        apiVersion: v1
        kind: Pod
        metadata: {name: a}
        spec: {nodeName: w1, containers: [{name: c, image: x}]}
        status: {podIP: 10.42.0.5}
        """)
    code, _, err = run("check", path)
    assert code == 0
    assert "warning: 1 pod IPs lie outside the default range 10.244.0.0/16" in err
    assert "--cluster-cidr 10.42.0.5/32" in err
    code, _, err = run("check", path, "--cluster-cidr", "10.42.0.0/16")
    assert code == 0 and "warning" not in err
