"""Kubernetes objects -> model parts, the way the controllers would read them.

One reader per kind, registered in :data:`READERS`; kinds without a reader
are skipped and counted, never an error.  Readers read only the fields that
matter for the network and warn about keys one edit away from those
(``selctor``), since a typo there silently changes what a Service selects.
"""

from __future__ import annotations

from typing import Callable

from kspec import names
from kspec.diagnostics import DiagnosticSink, InputError
from kspec.frontend import values
from kspec.frontend.document import Document, Origin
from kspec.frontend.fast_pods import check_label_key, check_label_value, fast_pod
from kspec.frontend.fields import Fields
from kspec.frontend.parts import OwnerRef, Parts
from kspec.model import (
    IPVS_SCHEDULERS,
    PROXY_MODES,
    SERVICE_TYPES,
    TRAFFIC_POLICIES,
    ContainerPort,
    EndpointAddress,
    EndpointPort,
    ManualEndpoints,
    Node,
    Pod,
    Service,
    ServicePort,
    Workload,
)
from kspec.selector import Selector, selector_from_label_selector, selector_from_labels

SCHEDULER_ANNOTATION = "kspec.dev/ipvs-scheduler"
WORKLOAD_KINDS = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "ReplicationController")

_META_READ = frozenset({"name", "namespace", "labels", "annotations", "ownerReferences", "deletionTimestamp"})
_META_KNOWN = frozenset({"uid", "resourceVersion", "generation", "creationTimestamp", "managedFields",
                         "generateName", "finalizers", "selfLink", "deletionGracePeriodSeconds"})


class Context:
    """Per-document reading state: the sink, the default namespace, the target parts."""

    def __init__(self, parts: Parts, sink: DiagnosticSink, namespace: str) -> None:
        self.parts = parts
        self.sink = sink
        self.namespace = namespace


def read_manifest(doc: Document, parts: Parts, sink: DiagnosticSink, namespace: str = "default") -> None:
    """Add one Kubernetes object (a manifest document) to ``parts``."""
    data = doc.data
    if data is None:
        return
    origin = Origin(doc, ())
    obj = Fields.of(data, origin, sink, "")
    if obj is None:
        return
    kind = data.get("kind")
    if not isinstance(kind, str) or not kind:
        sink.error("this document is not a Kubernetes object: it has no 'kind'", doc.span,
                   "add apiVersion and kind (e.g. 'apiVersion: v1' and 'kind: Service'), or remove the document")
        return
    reader = READERS.get(kind)
    if reader is None:
        parts.skipped[kind] += 1
        return
    reader(obj, Context(parts, sink, namespace))


def _meta(obj: Fields, ctx: Context, namespaced: bool = True) -> tuple[str, str, Fields] | None:
    """(namespace, name, metadata) of an object, with its names validated."""
    meta = obj.child("metadata")
    if meta is None:
        return None
    meta.warn_near_misses(_META_READ, _META_KNOWN)
    name = meta.str("name")
    if not name:
        ctx.sink.error(f"{obj.data.get('kind')} has no metadata.name", obj.span("metadata"),
                       "give the object a name under metadata.name")
        return None
    problem = names.check_dns1123_subdomain(name)
    if problem:
        ctx.sink.error(f"invalid name {name!r}: {problem}", meta.span("name"),
                       "Kubernetes names are lower-case letters, digits, '-' and '.'")
        return None
    ns = meta.str("namespace", ctx.namespace) if namespaced else ""
    if namespaced and "namespace" in meta:
        problem = names.check_dns1123_label(ns) if ns else "must not be empty"
        if problem:
            ctx.sink.error(f"invalid namespace {ns!r}: {problem}", meta.span("namespace"),
                           "namespaces are DNS labels: lower-case letters, digits and '-'")
            return None
    return ns, name, meta


def _labels(meta: Fields, key: str = "labels") -> dict[str, str]:
    labels = meta.string_map(key)
    for label, value in list(labels.items()):
        problem = check_label_key(label) or check_label_value(value)
        if problem:
            meta.sink.error(f"invalid label {label}={value!r}: {problem}", meta.origin.at(key, label),
                            "label keys are [prefix/]name and values at most 63 characters of [A-Za-z0-9-_.]")
            del labels[label]
    return labels


def _owner(meta: Fields) -> OwnerRef | None:
    for _, ref in meta.children("ownerReferences"):
        if ref.raw("controller") is True or len(meta.data.get("ownerReferences") or []) == 1:
            kind, name = ref.raw("kind"), ref.raw("name")
            if isinstance(kind, str) and isinstance(name, str):
                return OwnerRef(kind, name)
    return None


# --- Node -------------------------------------------------------------------

def read_node(obj: Fields, ctx: Context) -> None:
    head = _meta(obj, ctx, namespaced=False)
    if head is None:
        return
    _, name, meta = head
    spec = obj.child("spec") or Fields({}, obj.origin.child("spec"), ctx.sink, "spec")
    status = obj.child("status") or Fields({}, obj.origin.child("status"), ctx.sink, "status")
    spec.warn_near_misses(frozenset({"podCIDR", "podCIDRs"}), frozenset({"providerID", "taints", "unschedulable", "configSource"}))
    cidrs = ()
    if "podCIDRs" in spec:
        cidrs = values.read_cidrs(spec.raw("podCIDRs"), lambda i: spec.span("podCIDRs") if i is None else spec.span("podCIDRs", i),
                                  ctx.sink, f"node {name} spec.podCIDRs")
    elif "podCIDR" in spec:
        cidrs = values.read_cidrs(spec.raw("podCIDR"), lambda i: spec.span("podCIDR"), ctx.sink, f"node {name} spec.podCIDR")
    ips = []
    for index, address in status.children("addresses"):
        if address.raw("type") == "InternalIP":
            ip = values.read_ip(address.raw("address"), address.span("address"), ctx.sink, f"node {name} InternalIP")
            if ip is not None:
                ips.append(ip)
    if not ips:
        ctx.sink.error(f"node {name} has no InternalIP address", obj.span("status") if "status" in obj else meta.span("name"),
                       "add status.addresses with '- type: InternalIP' and 'address: <node IP>'")
        return
    ctx.parts.nodes.append(Node(name=name, ips=tuple(ips), pod_cidrs=tuple(cidrs), labels=_labels(meta),
                                annotations=meta.string_map("annotations"), origin=obj.origin))


# --- Pods and pod templates -------------------------------------------------

_POD_SPEC_READ = frozenset({"containers", "nodeName", "hostNetwork", "nodeSelector", "initContainers"})
_POD_SPEC_KNOWN = frozenset({"volumes", "hostname", "subdomain", "hostPID", "hostIPC", "dnsPolicy", "dnsConfig",
                             "restartPolicy", "schedulerName", "tolerations", "affinity", "priority",
                             "serviceAccount", "serviceAccountName", "securityContext", "readinessGates",
                             "overhead", "os", "runtimeClassName", "enableServiceLinks", "preemptionPolicy",
                             "priorityClassName", "terminationGracePeriodSeconds", "imagePullSecrets"})


def _container_ports(spec: Fields, where: str) -> tuple[ContainerPort, ...]:
    ports: list[ContainerPort] = []
    seen: dict[str, int] = {}
    for _, container in spec.children("containers"):
        container.warn_near_misses(frozenset({"ports", "name", "image"}), frozenset({"args", "env", "command"}))
        for _, port in container.children("ports"):
            port.warn_near_misses(frozenset({"name", "containerPort", "protocol", "hostPort"}), frozenset({"hostIP"}))
            number = values.read_port(port.raw("containerPort"), port.span("containerPort"), spec.sink,
                                      f"{where} containerPort")
            protocol = port.raw("protocol", "TCP")
            protocol = values.read_protocol(protocol, port.span("protocol"), spec.sink)
            pname = port.str("name")
            if pname is not None:
                problem = names.check_port_name(pname)
                if problem:
                    spec.sink.error(f"invalid port name {pname!r}: {problem}", port.span("name"),
                                    "port names are at most 15 lower-case letters, digits and '-'")
                    pname = None
                elif pname in seen:
                    spec.sink.error(f"{where} declares the port name {pname!r} twice", port.span("name"),
                                    "port names must be unique within a pod")
                    pname = None
                else:
                    seen[pname] = 1
            host_port = None
            if "hostPort" in port:
                host_port = values.read_port(port.raw("hostPort"), port.span("hostPort"), spec.sink, "hostPort")
            if number is not None and protocol is not None:
                ports.append(ContainerPort(number, protocol, pname, host_port, port.origin))
    if "containers" not in spec:
        spec.sink.error(f"{where} has no containers", spec.origin.span, "a pod spec needs at least one container")
    return tuple(ports)


def read_pod(obj: Fields, ctx: Context) -> None:
    fast = fast_pod(obj.data, obj.origin, ctx.namespace)
    if fast is not None:
        pod, owner = fast
        ctx.parts.pods.append(pod)
        if owner is not None:
            ctx.parts.pod_owners[pod.key] = owner
        return
    read_pod_located(obj, ctx)


def read_pod_located(obj: Fields, ctx: Context) -> None:
    """The reader that checks every field in place (and reports where it is wrong)."""
    head = _meta(obj, ctx)
    if head is None:
        return
    ns, name, meta = head
    spec = obj.child("spec")
    if spec is None:
        return
    spec.warn_near_misses(_POD_SPEC_READ, _POD_SPEC_KNOWN)
    status = obj.child("status") or Fields({}, obj.origin.child("status"), ctx.sink, "status")
    status.warn_near_misses(frozenset({"podIP", "podIPs", "conditions", "phase"}), frozenset({"hostIP", "hostIPs", "qosClass"}))
    phase = status.raw("phase")
    if phase in ("Succeeded", "Failed"):
        ctx.parts.skipped[f"Pod ({phase})"] += 1
        return
    ips: tuple = ()
    if "podIPs" in status:
        raw = [item.get("ip") if isinstance(item, dict) else item for item in status.raw("podIPs")] \
            if isinstance(status.raw("podIPs"), list) else status.raw("podIPs")
        ips = values.read_ips(raw, lambda i: status.span("podIPs") if i is None else status.span("podIPs", i, "ip"),
                              ctx.sink, f"pod {ns}/{name} podIPs")
    elif "podIP" in status:
        ips = values.read_ips(status.raw("podIP"), lambda i: status.span("podIP"), ctx.sink, f"pod {ns}/{name} podIP")
    if phase == "Pending" and not ips:
        ctx.parts.skipped["Pod (Pending, no IP)"] += 1
        return
    ready = True
    if "conditions" in status:
        ready = any(c.raw("type") == "Ready" and c.raw("status") == "True" for _, c in status.children("conditions"))
    elif "status" in obj and phase is not None:
        ready = phase == "Running"
    node = spec.str("nodeName")
    host_network = spec.bool("hostNetwork", False)
    pod = Pod(namespace=ns, name=name, node=node, ips=() if host_network else ips, labels=_labels(meta),
              ports=_container_ports(spec, f"pod {ns}/{name}"), ready=ready,
              terminating="deletionTimestamp" in meta, host_network=host_network,
              annotations=meta.string_map("annotations"), origin=obj.origin)
    ctx.parts.pods.append(pod)
    owner = _owner(meta)
    if owner is not None:
        ctx.parts.pod_owners[(ns, name)] = owner


def read_workload(obj: Fields, ctx: Context) -> None:
    kind = obj.data["kind"]
    head = _meta(obj, ctx)
    if head is None:
        return
    ns, name, meta = head
    spec = obj.child("spec")
    if spec is None:
        return
    spec.warn_near_misses(frozenset({"replicas", "selector", "template"}),
                          frozenset({"strategy", "serviceName", "minReadySeconds", "revisionHistoryLimit",
                                     "updateStrategy", "podManagementPolicy", "progressDeadlineSeconds", "paused",
                                     "persistentVolumeClaimRetentionPolicy", "volumeClaimTemplates", "ordinals"}))
    replicas: int | None = None if kind == "DaemonSet" else spec.int("replicas", 1, 0, 1_000_000)
    template = spec.child("template")
    if template is None or "template" not in spec:
        ctx.sink.error(f"{kind} {ns}/{name} has no spec.template", spec.origin.span, "add the pod template")
        return
    tmeta = template.child("metadata") or Fields({}, template.origin.child("metadata"), ctx.sink, "metadata")
    tspec = template.child("spec")
    if tspec is None:
        return
    tspec.warn_near_misses(_POD_SPEC_READ, _POD_SPEC_KNOWN)
    labels = _labels(tmeta)
    selector: Selector | None = None
    if "selector" in spec:
        try:
            if kind == "ReplicationController":
                selector = selector_from_labels(spec.string_map("selector"))
            else:
                selector = selector_from_label_selector(spec.raw("selector"), spec.origin.child("selector"))
        except InputError as exc:
            ctx.sink.extend(exc.diagnostics)
            return
    if selector is not None and not selector.matches(labels):
        ctx.sink.error(f"{kind} {ns}/{name}: spec.selector does not match the template's labels", spec.span("selector"),
                       "the API server rejects this: make the selector match spec.template.metadata.labels")
        return
    ctx.parts.workloads.append(Workload(
        kind=kind, namespace=ns, name=name, replicas=replicas, labels=labels,
        ports=_container_ports(tspec, f"{kind} {ns}/{name}"), node=tspec.str("nodeName"),
        node_selector=tspec.string_map("nodeSelector"), host_network=tspec.bool("hostNetwork", False),
        annotations=tmeta.string_map("annotations"), origin=obj.origin))
    owner = _owner(meta)
    if owner is not None:
        ctx.parts.owners[(ns, kind, name)] = owner


# --- Services and endpoints -------------------------------------------------

_SVC_SPEC_READ = frozenset({"type", "selector", "ports", "clusterIP", "clusterIPs", "ipFamilies", "externalIPs",
                            "loadBalancerIP", "loadBalancerSourceRanges", "externalTrafficPolicy",
                            "internalTrafficPolicy", "sessionAffinity", "sessionAffinityConfig", "externalName",
                            "publishNotReadyAddresses", "healthCheckNodePort"})
_SVC_SPEC_KNOWN = frozenset({"ipFamilyPolicy", "allocateLoadBalancerNodePorts", "loadBalancerClass",
                             "trafficDistribution", "topologyKeys", "ipFamily"})


def read_service(obj: Fields, ctx: Context) -> None:
    head = _meta(obj, ctx)
    if head is None:
        return
    ns, name, meta = head
    problem = names.check_dns1035_label(name)
    if problem:
        ctx.sink.error(f"invalid Service name {name!r}: {problem}", meta.span("name"),
                       "Service names are DNS-1035 labels: start with a letter, then lower-case letters, digits, '-'")
        return
    spec = obj.child("spec")
    if spec is None:
        return
    spec.warn_near_misses(_SVC_SPEC_READ, _SVC_SPEC_KNOWN)
    svc_type = spec.enum("type", SERVICE_TYPES, "ClusterIP")
    selector = None
    if "selector" in spec:
        labels = _labels(spec, "selector")
        selector = selector_from_labels(labels) if labels else None
    ports = tuple(_service_ports(spec, svc_type, f"service {ns}/{name}"))
    cluster_ips: tuple = ()
    headless = False
    raw_ips = spec.raw("clusterIPs") if "clusterIPs" in spec else ([spec.raw("clusterIP")] if "clusterIP" in spec else [])
    if raw_ips in (["None"], ["None", "None"]) or spec.raw("clusterIP") == "None":
        headless = True
    elif raw_ips:
        key = "clusterIPs" if "clusterIPs" in spec else "clusterIP"
        cluster_ips = values.read_ips(raw_ips if key == "clusterIPs" else raw_ips[0],
                                      lambda i: spec.span(key) if i is None or key == "clusterIP" else spec.span(key, i),
                                      ctx.sink, f"service {ns}/{name} {key}")
    families = tuple(4 if f == "IPv4" else 6 for _, f, _o in spec.items("ipFamilies") if f in ("IPv4", "IPv6"))
    external_ips = values.read_ips(spec.raw("externalIPs"), lambda i: spec.span("externalIPs", i) if i is not None else spec.span("externalIPs"),
                                   ctx.sink, "externalIPs") if isinstance(spec.raw("externalIPs"), list) and spec.raw("externalIPs") else ()
    lb_ips = []
    status = obj.child("status")
    if status is not None:
        lb = status.child("loadBalancer")
        if lb is not None:
            for _, ingress in lb.children("ingress"):
                if "ip" in ingress:
                    ip = values.read_ip(ingress.raw("ip"), ingress.span("ip"), ctx.sink, "load balancer ingress IP")
                    if ip is not None:
                        lb_ips.append(ip)
    if not lb_ips and "loadBalancerIP" in spec and svc_type == "LoadBalancer":
        ip = values.read_ip(spec.raw("loadBalancerIP"), spec.span("loadBalancerIP"), ctx.sink, "loadBalancerIP")
        if ip is not None:
            lb_ips.append(ip)
    ranges = tuple(n for n in (values.read_cidr(v, o.lazy(), ctx.sink, "loadBalancerSourceRanges entry")
                               for _, v, o in spec.items("loadBalancerSourceRanges")) if n is not None)
    timeout = 10800
    affinity_cfg = spec.child("sessionAffinityConfig")
    if affinity_cfg is not None and "clientIP" in affinity_cfg:
        client = affinity_cfg.child("clientIP")
        if client is not None:
            timeout = client.int("timeoutSeconds", 10800, 1, 86400) or 10800
    scheduler = meta.string_map("annotations").get(SCHEDULER_ANNOTATION)
    if scheduler is not None and scheduler not in IPVS_SCHEDULERS:
        ctx.sink.error(f"unknown IPVS scheduler {scheduler!r}", meta.span("annotations", SCHEDULER_ANNOTATION),
                       "use one of " + ", ".join(IPVS_SCHEDULERS))
        scheduler = None
    external_name = spec.str("externalName")
    if svc_type == "ExternalName" and not external_name:
        ctx.sink.error(f"ExternalName service {ns}/{name} has no spec.externalName", spec.origin.span,
                       "set spec.externalName to the DNS name this service aliases")
    ctx.parts.services.append(Service(
        namespace=ns, name=name, type=svc_type, selector=selector, ports=ports, cluster_ips=cluster_ips,
        headless=headless, external_ips=external_ips, load_balancer_ips=tuple(lb_ips),
        load_balancer_source_ranges=ranges,
        external_traffic_policy=spec.enum("externalTrafficPolicy", TRAFFIC_POLICIES, "Cluster"),
        internal_traffic_policy=spec.enum("internalTrafficPolicy", TRAFFIC_POLICIES, "Cluster"),
        session_affinity=spec.enum("sessionAffinity", ("None", "ClientIP"), "None"), affinity_timeout=timeout,
        external_name=external_name, publish_not_ready=spec.bool("publishNotReadyAddresses", False),
        ip_families=families, health_check_node_port=spec.int("healthCheckNodePort", None, 1, 65535),
        ipvs_scheduler=scheduler, annotations=meta.string_map("annotations"), origin=obj.origin))


def _service_ports(spec: Fields, svc_type: str, where: str):
    seen: set[str] = set()
    raw_ports = spec.raw("ports") or []
    for index, port in spec.children("ports"):
        port.warn_near_misses(frozenset({"name", "port", "targetPort", "nodePort", "protocol", "appProtocol"}))
        number = values.read_port(port.raw("port"), port.span("port") if "port" in port else port.origin.lazy(), spec.sink,
                                  f"{where} port")
        protocol = values.read_protocol(port.raw("protocol", "TCP"), port.span("protocol"), spec.sink)
        pname = port.str("name", "") or ""
        if pname:
            problem = names.check_port_name(pname) if len(pname) <= 15 else None
            problem = problem or (names.check_dns1123_label(pname) if len(pname) > 15 else None)
            if problem:
                spec.sink.error(f"invalid port name {pname!r}: {problem}", port.span("name"),
                                "port names are lower-case letters, digits and '-'")
                continue
        elif isinstance(raw_ports, list) and len(raw_ports) > 1:
            spec.sink.error(f"{where}: port {index + 1} has no name", port.origin.span,
                            "a service with several ports must name every port")
        if pname in seen:
            spec.sink.error(f"{where}: duplicate port name {pname!r}", port.span("name"), "port names must be unique")
        seen.add(pname)
        target: int | str | None = None
        if "targetPort" in port:
            raw = port.raw("targetPort")
            if isinstance(raw, str) and not raw.isdigit():
                problem = names.check_port_name(raw)
                if problem:
                    spec.sink.error(f"invalid targetPort name {raw!r}: {problem}", port.span("targetPort"),
                                    "a named targetPort must be a container port name (at most 15 characters)")
                    continue
                target = raw
            else:
                target = values.read_port(int(raw) if isinstance(raw, str) else raw, port.span("targetPort"), spec.sink,
                                          f"{where} targetPort")
        node_port = None
        if "nodePort" in port:
            node_port = values.read_port(port.raw("nodePort"), port.span("nodePort"), spec.sink, f"{where} nodePort")
            if svc_type not in ("NodePort", "LoadBalancer") and node_port is not None:
                spec.sink.error(f"{where}: nodePort is set on a {svc_type} service", port.span("nodePort"),
                                "only NodePort and LoadBalancer services have node ports: set type: NodePort")
        if number is None or protocol is None:
            continue
        yield ServicePort(port=number, protocol=protocol, name=pname, target_port=target, node_port=node_port,
                          app_protocol=port.str("appProtocol"), origin=port.origin)


def read_endpoint_slice(obj: Fields, ctx: Context) -> None:
    head = _meta(obj, ctx)
    if head is None:
        return
    ns, name, meta = head
    service = meta.string_map("labels").get("kubernetes.io/service-name")
    if not service:
        ctx.parts.skipped["EndpointSlice (no kubernetes.io/service-name label)"] += 1
        return
    addresses = []
    for _, ep in obj.children("endpoints"):
        cond = ep.child("conditions") or Fields({}, ep.origin.child("conditions"), ctx.sink, "conditions")
        ready = cond.raw("ready", True) is not False
        target = ep.child("targetRef")
        target_key = None
        if target is not None and target.raw("kind") == "Pod" and isinstance(target.raw("name"), str):
            target_key = (target.raw("namespace", ns), target.raw("name"))
        for index, raw, origin in ep.items("addresses"):
            ip = values.read_ip(raw, origin.lazy(), ctx.sink, "endpoint address")
            if ip is not None:
                addresses.append(EndpointAddress(ip=ip, ready=ready, serving=cond.raw("serving", ready) is not False,
                                                 terminating=cond.raw("terminating", False) is True,
                                                 node=ep.str("nodeName"), target=target_key, origin=origin))
    ports = _endpoint_ports(obj, ctx)
    ctx.parts.manual_endpoints.append(ManualEndpoints(ns, service, tuple(addresses), tuple(ports), "EndpointSlice",
                                                      obj.origin))


def _endpoint_ports(obj: Fields, ctx: Context) -> list[EndpointPort]:
    ports = []
    for _, port in obj.children("ports"):
        number = values.read_port(port.raw("port"), port.span("port"), ctx.sink, "endpoint port")
        protocol = values.read_protocol(port.raw("protocol", "TCP"), port.span("protocol"), ctx.sink)
        if number is not None and protocol is not None:
            ports.append(EndpointPort(number, protocol, port.str("name", "") or ""))
    return ports


def read_endpoints(obj: Fields, ctx: Context) -> None:
    head = _meta(obj, ctx)
    if head is None:
        return
    ns, name, _ = head
    for _, subset in obj.children("subsets"):
        addresses = []
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            for _, address in subset.children(key):
                ip = values.read_ip(address.raw("ip"), address.span("ip"), ctx.sink, "endpoint address")
                target = address.child("targetRef")
                target_key = None
                if target is not None and target.raw("kind") == "Pod" and isinstance(target.raw("name"), str):
                    target_key = (target.raw("namespace", ns), target.raw("name"))
                if ip is not None:
                    addresses.append(EndpointAddress(ip=ip, ready=ready, serving=ready, node=address.str("nodeName"),
                                                     target=target_key, origin=address.origin))
        ctx.parts.manual_endpoints.append(ManualEndpoints(ns, name, tuple(addresses),
                                                          tuple(_endpoint_ports(subset, ctx)), "Endpoints",
                                                          subset.origin))


# --- Cluster settings -------------------------------------------------------

def read_service_cidr(obj: Fields, ctx: Context) -> None:
    spec = obj.child("spec")
    if spec is None:
        return
    cidrs = values.read_cidrs(spec.raw("cidrs") or [], lambda i: spec.span("cidrs") if i is None else spec.span("cidrs", i),
                              ctx.sink, "ServiceCIDR spec.cidrs")
    if cidrs:
        ctx.parts.set("service_cidrs", cidrs, spec.origin.child("cidrs"), "ServiceCIDR")


def read_kube_proxy_configuration(obj: Fields, ctx: Context) -> None:
    source = "KubeProxyConfiguration"
    obj.warn_near_misses(frozenset({"mode", "clusterCIDR", "ipvs", "iptables", "nodePortAddresses", "conntrack",
                                    "detectLocalMode"}),
                         frozenset({"apiVersion", "kind", "bindAddress", "metricsBindAddress", "featureGates",
                                    "healthzBindAddress", "hostnameOverride", "clientConnection", "nftables",
                                    "winkernel", "oomScoreAdj", "portRange", "configSyncPeriod", "logging",
                                    "detectLocal", "showHiddenMetricsForVersion", "enableProfiling", "linux"}))
    mode = obj.raw("mode")
    if mode not in (None, ""):
        mode = obj.enum("mode", PROXY_MODES, "iptables")
        ctx.parts.set("proxy_mode", mode, obj.origin.child("mode"), source)
    if obj.raw("clusterCIDR"):
        raw = obj.raw("clusterCIDR")
        raw = [c.strip() for c in raw.split(",")] if isinstance(raw, str) else raw
        cidrs = values.read_cidrs(raw, lambda i: obj.span("clusterCIDR"), ctx.sink, "clusterCIDR")
        if cidrs:
            ctx.parts.set("pod_cidrs", cidrs, obj.origin.child("clusterCIDR"), source)
    ipvs = obj.child("ipvs")
    if ipvs is not None and ipvs.raw("scheduler"):
        ctx.parts.set("ipvs_scheduler", ipvs.enum("scheduler", IPVS_SCHEDULERS, "rr"), ipvs.origin.child("scheduler"), source)
    iptables = obj.child("iptables")
    if iptables is not None:
        if "masqueradeAll" in iptables:
            ctx.parts.set("masquerade_all", iptables.bool("masqueradeAll", False), iptables.origin.child("masqueradeAll"), source)
        if "masqueradeBit" in iptables:
            ctx.parts.set("masquerade_bit", iptables.int("masqueradeBit", 14, 0, 31), iptables.origin.child("masqueradeBit"), source)
        if "localhostNodePorts" in iptables:
            ctx.parts.set("localhost_nodeports", iptables.bool("localhostNodePorts", True),
                          iptables.origin.child("localhostNodePorts"), source)
    if "nodePortAddresses" in obj:
        nets = tuple(n for n in (values.read_cidr(v, o.lazy(), ctx.sink, "nodePortAddresses entry")
                                 for _, v, o in obj.items("nodePortAddresses")) if n is not None)
        ctx.parts.set("nodeport_addresses", nets, obj.origin.child("nodePortAddresses"), source)
    conntrack = obj.child("conntrack")
    if conntrack is not None and "tcpBeLiberal" in conntrack:
        ctx.parts.set("conntrack_tcp_be_liberal", conntrack.bool("tcpBeLiberal", False),
                      conntrack.origin.child("tcpBeLiberal"), source)
    if obj.raw("detectLocalMode"):
        ctx.parts.set("detect_local_mode", obj.enum("detectLocalMode", ("ClusterCIDR", "NodeCIDR"), "ClusterCIDR"),
                      obj.origin.child("detectLocalMode"), source)


READERS: dict[str, Callable[[Fields, Context], None]] = {
    "Node": read_node,
    "Pod": read_pod,
    "Service": read_service,
    "EndpointSlice": read_endpoint_slice,
    "Endpoints": read_endpoints,
    "ServiceCIDR": read_service_cidr,
    "KubeProxyConfiguration": read_kube_proxy_configuration,
    **{kind: read_workload for kind in WORKLOAD_KINDS},
}
