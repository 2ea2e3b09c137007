"""The synthetic cluster generator: parseable, schema-valid, consistent, deterministic."""

from __future__ import annotations

import collections
import importlib.util
import ipaddress
import json
import re
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
SCALE = 0.003


def _load_generator():
    if "gen_cluster" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gen_cluster", ROOT / "bench" / "gen_cluster.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["gen_cluster"] = module
        spec.loader.exec_module(module)
    return sys.modules["gen_cluster"]


gen = _load_generator()


@pytest.fixture(scope="module")
def counts():
    return gen.counts(SCALE)


@pytest.fixture(scope="module")
def kspec_doc():
    return yaml.safe_load(gen.generate(SCALE, "kspec"))


@pytest.fixture(scope="module")
def yaml_text():
    return gen.generate(SCALE, "yaml")


@pytest.fixture(scope="module")
def objects(yaml_text):
    return [doc for doc in yaml.safe_load_all(yaml_text) if doc is not None]


def _of(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def _split_key(key: str) -> tuple[str, str]:
    namespace, _, name = key.rpartition("/")
    return namespace or "default", name


# A small reader of the kubectl selector subset the generator writes, kept
# independent of kspec's own parser so each checks the other.
_REQUIREMENT = re.compile(r"\s*(?:(?P<neg>!)(?P<nkey>[\w./-]+)|(?P<key>[\w./-]+)\s*"
                          r"(?:(?P<op>==|!=|=)\s*(?P<value>[\w./-]+)|(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?)\s*")


def _parse_selector(selector) -> list:
    if isinstance(selector, dict):
        return [("=", key, {value}) for key, value in selector.items()]
    parts = re.split(r",(?![^(]*\))", selector)
    requirements = []
    for part in parts:
        match = _REQUIREMENT.fullmatch(part)
        assert match, f"selector part {part!r} of {selector!r} does not parse"
        if match["neg"]:
            requirements.append(("!", match["nkey"], set()))
        elif match["op"]:
            requirements.append(("!=" if match["op"] == "!=" else "=", match["key"], {match["value"]}))
        elif match["setop"]:
            requirements.append((match["setop"], match["key"], {v.strip() for v in match["values"].split(",")}))
        else:
            requirements.append(("exists", match["key"], set()))
    return requirements


def _matches(requirements, labels: dict) -> bool:
    for op, key, values in requirements:
        present = key in labels
        if op in ("=", "in") and not (present and labels[key] in values):
            return False
        if op in ("!=", "notin") and present and labels[key] in values:
            return False
        if (op == "exists") != present and op in ("exists", "!"):
            return False
    return True


def _ignored(service: dict) -> bool:
    return "KS109" in (service.get("annotations") or {}).get(gen.IGNORE_ANNOTATION, "")


def test_counts_follow_the_scale():
    assert gen.counts(1.0) == gen.Counts(5000, 150000, 10000)
    assert gen.counts(0.1) == gen.Counts(500, 15000, 1000)
    assert gen.counts(0.01) == gen.Counts(50, 1500, 100)
    assert gen.counts(1e-9) == gen.Counts(1, 1, 1)
    with pytest.raises(ValueError):
        gen.counts(0)


def test_yaml_parses_with_the_right_counts(objects, counts):
    kinds = collections.Counter(o["kind"] for o in objects)
    assert kinds["Node"] == counts.nodes
    assert kinds["Pod"] == counts.pods
    assert kinds["Service"] == counts.services
    assert kinds["KubeProxyConfiguration"] == 1
    assert kinds["ServiceCIDR"] == 1


def test_json_is_a_kubectl_list_of_the_same_objects(objects):
    text = gen.generate(SCALE, "json")
    data = json.loads(text)
    assert data["kind"] == "List" and data["apiVersion"] == "v1"
    assert data["items"] == objects
    assert text == json.dumps(data, indent=4) + "\n"


def test_kspec_form_validates_against_the_schema(kspec_doc):
    schema = json.loads((ROOT / "kspec" / "frontend" / "schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(kspec_doc)


def test_kspec_form_has_the_same_counts(kspec_doc, counts):
    nodes = len(kspec_doc["nodes"])
    pods = sum(nodes if w.get("kind") == "DaemonSet" else w.get("replicas", 1)
               for w in kspec_doc["workloads"].values())
    pods += len(kspec_doc.get("pods", {}))
    assert (nodes, pods, len(kspec_doc["services"])) == (counts.nodes, counts.pods, counts.services)


def test_kspec_selectors_match_workload_labels(kspec_doc):
    """Every selector names labels a workload has, except two documented cases:
    per-pod StatefulSet selectors (their label comes from the controller) and
    services annotated to ignore KS109, which must really select nothing."""
    by_namespace = collections.defaultdict(list)
    for key, workload in kspec_doc["workloads"].items():
        by_namespace[_split_key(key)[0]].append((_split_key(key)[1], workload))
    selecting = 0
    for key, service in kspec_doc["services"].items():
        if "selector" not in service:
            assert service.get("type") == "ExternalName" or key in kspec_doc.get("endpoints", {})
            continue
        namespace = _split_key(key)[0]
        requirements = _parse_selector(service["selector"])
        pod_name = dict((k, v) for _, k, v in requirements).get("statefulset.kubernetes.io/pod-name")
        if pod_name:
            (wanted,) = pod_name
            owners = [w for name, w in by_namespace[namespace]
                      if w.get("kind") == "StatefulSet" and wanted.startswith(f"{name}-")
                      and int(wanted.rsplit("-", 1)[1]) < w["replicas"]]
            assert owners, f"{key}: no StatefulSet makes pod {wanted}"
            continue
        found = any(_matches(requirements, w.get("labels", {})) for _, w in by_namespace[namespace])
        assert found != _ignored(service), f"{key}: selector {service['selector']!r}"
        selecting += found
    assert selecting > len(kspec_doc["services"]) // 2


def test_both_forms_select_the_same_pods(kspec_doc, objects):
    """The kspec selector (often set-based) picks exactly the pods the manifest's map picks."""
    pods = collections.defaultdict(list)
    for pod in _of(objects, "Pod"):
        pods[pod["metadata"]["namespace"]].append(pod)
    manifests = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in _of(objects, "Service")}
    assert set(manifests) == {_split_key(k) for k in kspec_doc["services"]}
    for key, service in kspec_doc["services"].items():
        manifest = manifests[_split_key(key)]
        if "selector" not in service:
            assert "selector" not in manifest["spec"]
            continue
        candidates = pods[_split_key(key)[0]]
        ours = _parse_selector(service["selector"])
        theirs = _parse_selector(manifest["spec"]["selector"])
        chosen = {p["metadata"]["name"] for p in candidates if _matches(ours, p["metadata"]["labels"])}
        expected = {p["metadata"]["name"] for p in candidates if _matches(theirs, p["metadata"]["labels"])}
        assert chosen == expected, key
        assert bool(chosen) != _ignored(service), key


def test_workload_pods_match_replicas(kspec_doc, objects):
    owners = collections.Counter()
    for pod in _of(objects, "Pod"):
        refs = pod["metadata"].get("ownerReferences", [])
        if refs:
            name = refs[0]["name"]
            if refs[0]["kind"] == "ReplicaSet":
                name = name.rsplit("-", 1)[0]
            owners[(pod["metadata"]["namespace"], name)] += 1
    nodes = len(kspec_doc["nodes"])
    expected = {_split_key(k): nodes if w.get("kind") == "DaemonSet" else w["replicas"]
                for k, w in kspec_doc["workloads"].items()}
    assert {k: v for k, v in expected.items() if v} == dict(owners)


def test_explicit_kspec_values_agree_with_the_manifests(kspec_doc, objects):
    nodes = {n["metadata"]["name"]: n for n in _of(objects, "Node")}
    for name, node in kspec_doc["nodes"].items():
        assert node["ip"] == nodes[name]["status"]["addresses"][0]["address"]
        if "podCIDR" in node:
            assert node["podCIDR"] == nodes[name]["spec"]["podCIDR"]
    services = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in _of(objects, "Service")}
    for key, service in kspec_doc["services"].items():
        spec = services[_split_key(key)]["spec"]
        assert service.get("type", "ClusterIP") == spec["type"]
        if "clusterIP" in service:
            assert service["clusterIP"] == spec["clusterIP"]
        for ours, theirs in zip(service.get("ports", []), spec.get("ports", [])):
            assert ours["port"] == theirs["port"]
            assert ours.get("nodePort", theirs.get("nodePort")) == theirs.get("nodePort")
            assert ours.get("targetPort", ours["port"]) == theirs["targetPort"]
    assert kspec_doc["cluster"]["podCIDR"] == _of(objects, "KubeProxyConfiguration")[0]["clusterCIDR"]
    assert [kspec_doc["cluster"]["serviceCIDR"]] == _of(objects, "ServiceCIDR")[0]["spec"]["cidrs"]


def test_addresses_are_unique_and_inside_their_ranges(objects):
    node_network, pod_network = gen.NODE_NETWORK, gen.POD_CIDR
    nodes = {n["metadata"]["name"]: n for n in _of(objects, "Node")}
    node_ips = [n["status"]["addresses"][0]["address"] for n in nodes.values()]
    assert len(set(node_ips)) == len(node_ips)
    assert all(ipaddress.ip_address(ip) in node_network for ip in node_ips)
    cidrs = sorted(ipaddress.ip_network(n["spec"]["podCIDR"]) for n in nodes.values())
    assert all(c.subnet_of(pod_network) for c in cidrs)
    assert all(not a.overlaps(b) for a, b in zip(cidrs, cidrs[1:]))
    pod_ips = []
    for pod in _of(objects, "Pod"):
        node = nodes[pod["spec"]["nodeName"]]
        ip = pod["status"]["podIP"]
        assert pod["status"]["podIPs"] == [{"ip": ip}]
        if pod["spec"].get("hostNetwork"):
            assert ip == node["status"]["addresses"][0]["address"]
            continue
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(node["spec"]["podCIDR"])
        pod_ips.append(ip)
    assert len(set(pod_ips)) == len(pod_ips)
    services = [s["spec"] for s in _of(objects, "Service")]
    assert all(isinstance(s["clusterIP"], str) for s in services if s["type"] != "ExternalName")
    cluster_ips = [s["clusterIP"] for s in services if s.get("clusterIP", "None") != "None"]
    assert len(set(cluster_ips)) == len(cluster_ips)
    assert all(ipaddress.ip_address(ip) in gen.SERVICE_CIDR for ip in cluster_ips)
    node_ports = [p["nodePort"] for s in services for p in s.get("ports", []) if "nodePort" in p]
    node_ports += [s["healthCheckNodePort"] for s in services if "healthCheckNodePort" in s]
    assert node_ports and len(set(node_ports)) == len(node_ports)
    low, high = gen.NODE_PORT_RANGE
    assert all(low <= port <= high for port in node_ports)


def test_realistic_mix_at_full_scale():
    plan = gen.plan(1.0)
    types = collections.Counter(s.type for s in plan.services)
    assert types["NodePort"] == 1000 and types["LoadBalancer"] == 300 and types["ExternalName"] > 0
    assert sum(1 for s in plan.services if s.cluster_ip == "None") > 0
    assert sum(1 for s in plan.services if s.session_affinity == "ClientIP") > 0
    assert sum(1 for s in plan.services if s.external_traffic_policy == "Local") > 0
    assert sum(1 for s in plan.services if s.lb_source_ranges) > 0
    kinds = collections.Counter(w.kind for w in plan.workloads)
    assert kinds["Deployment"] > kinds["StatefulSet"] > kinds["DaemonSet"] >= 1
    assert any(not w.ready for w in plan.workloads)
    assert any(" in (" in (s.selector_text or "") or "notin" in (s.selector_text or "") for s in plan.services)
    assert 90 <= len({s.namespace for s in plan.services}) <= 110
    node_ports = [p.node_port for s in plan.services for p in s.ports if p.node_port]
    assert len(node_ports) < gen.NODE_PORT_RANGE[1] - gen.NODE_PORT_RANGE[0]


def test_deterministic_for_a_seed():
    for form in gen.FORMS:
        assert gen.generate(0.001, form, seed=7) == gen.generate(0.001, form, seed=7)
    assert gen.generate(0.001, "kspec", seed=7) != gen.generate(0.001, "kspec", seed=8)


def test_tiny_scales_still_make_a_cluster():
    for scale in (1e-9, 0.0001):
        doc = yaml.safe_load(gen.generate(scale, "kspec"))
        assert doc["nodes"] and doc["services"] and doc["workloads"]


def test_command_line_writes_the_file(tmp_path, capsys):
    out = tmp_path / "c.kspec"
    assert gen.main(["--scale", "0.001", "--form", "kspec", "--out", str(out)]) == 0
    assert out.read_text() == gen.generate(0.001, "kspec")
    assert list(tmp_path.iterdir()) == [out]
    assert gen.main(["--scale", "-1", "--form", "kspec", "--out", str(out)]) == 2
    assert "scale must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gen.main(["--scale", "0.01", "--form", "xml"])


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30))
def test_scalars_read_back_as_the_same_string(text):
    assert yaml.safe_load(f"key: {gen._scalar(text)}\n") == {"key": text}
