"""The bulk Pod reader agrees with the located reader, and defers to it on anything unusual."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from kspec.diagnostics import DiagnosticSink, Span
from kspec.frontend.document import Document, Origin
from kspec.frontend.fast_pods import fast_pod
from kspec.frontend.fields import Fields
from kspec.frontend.manifests import Context, read_pod_located
from kspec.frontend.parts import Parts

label_keys = st.sampled_from(["app", "tier", "app.kubernetes.io/name", "Bad Key", "x" * 70, "k8s-app"])
label_values = st.sampled_from(["web", "db", "", "v1.2", "-bad", "x" * 70])
port_names = st.sampled_from(["http", "metrics", "grpc", "HTTP", "a-very-long-port-name", "web"])


@st.composite
def pods(draw):
    port = st.fixed_dictionaries({"containerPort": st.sampled_from([80, 8080, 0, 70000, "80"])},
                                 optional={"name": port_names, "protocol": st.sampled_from(["TCP", "UDP", "tcp"]),
                                           "hostPort": st.sampled_from([8080, 0])})
    container = st.fixed_dictionaries({"name": st.just("c"), "image": st.just("img")},
                                      optional={"ports": st.lists(port, max_size=3),
                                                "imgae": st.just("typo"), "resources": st.just({})})
    meta = st.fixed_dictionaries({"name": st.sampled_from(["web-1", "Web_1", "db-0"])},
                                 optional={"namespace": st.sampled_from(["default", "shop", "Bad NS"]),
                                           "labels": st.dictionaries(label_keys, label_values, max_size=3),
                                           "annotations": st.dictionaries(st.just("a"), st.sampled_from(["x", 1]),
                                                                          max_size=1),
                                           "ownerReferences": st.just([{"kind": "ReplicaSet", "name": "web-1a"}]),
                                           "deletionTimestamp": st.just("2024-01-01T00:00:00Z")})
    spec = st.fixed_dictionaries({"containers": st.lists(container, min_size=0, max_size=2)},
                                 optional={"nodeName": st.sampled_from(["node-1", 7]),
                                           "hostNetwork": st.sampled_from([True, False, "yes"]),
                                           "nodeSelctor": st.just({})})
    status = st.fixed_dictionaries({}, optional={
        "podIP": st.sampled_from(["10.244.1.5", "10.244.1.500", "fd00::5"]),
        "podIPs": st.sampled_from([[{"ip": "10.244.1.5"}], [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}],
                                   [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]]),
        "phase": st.sampled_from(["Running", "Pending", "Succeeded"]),
        "conditions": st.sampled_from([[{"type": "Ready", "status": "True"}], [{"type": "Ready", "status": "False"}]])})
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": draw(meta), "spec": draw(spec)}
    if draw(st.booleans()):
        obj["status"] = draw(status)
    return obj


@settings(max_examples=400, deadline=None)
@given(pods())
def test_fast_reader_agrees_with_the_located_reader(obj):
    doc = Document(obj, Span("p.yaml", 1, 1), "manifest")
    origin = Origin(doc, ())
    fast = fast_pod(obj, origin, "default")
    parts, sink = Parts(), DiagnosticSink()
    read_pod_located(Fields(obj, origin, sink, ""), Context(parts, sink, "default"))
    if fast is None:
        return  # deferred: the located reader decides (and reports)
    pod, owner = fast
    assert not sink.items, [d.message for d in sink.items]  # fast path only takes what is clean
    assert parts.pods == [pod]
    assert parts.pod_owners.get(pod.key) == owner


def test_well_formed_pod_takes_the_fast_path():
    obj = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
           "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i", "resources": {},
                                                          "ports": [{"name": "http", "containerPort": 8080}]}]},
           "status": {"podIP": "10.244.1.5", "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
    result = fast_pod(obj, Origin(None, ()), "default")
    assert result is not None and result[0].ports[0].name == "http" and result[0].ready
