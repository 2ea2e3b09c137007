"""kspec language documents -> model parts.

The schema has already checked the shape; this module checks values
(addresses, CIDRs, ports, names, selectors) and builds model objects that
keep their Origin.  Object keys are ``NAME`` or ``NAMESPACE/NAME``.
"""

from __future__ import annotations

from kspec import names
from kspec.diagnostics import DiagnosticSink, InputError
from kspec.frontend import values
from kspec.frontend.document import Document, Origin
from kspec.frontend.fields import Fields
from kspec.frontend.parts import Parts
from kspec.frontend.schema import validate
from kspec.model import (
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
from kspec.selector import Selector, parse_selector, selector_from_labels

SOURCE = "kspec cluster"


def read_kspec(doc: Document, parts: Parts, sink: DiagnosticSink, namespace: str = "default") -> None:
    """Validate a kspec document against the schema and add its objects to ``parts``."""
    parts.has_kspec = True
    problems = validate(doc)
    if problems:
        # Report every error, not only the schema's: read the values too, but
        # keep only findings on lines the schema did not already complain about.
        sink.extend(problems)
        shadow = DiagnosticSink()
        try:
            _read_sections(doc, Parts(), shadow, namespace)
        except (TypeError, AttributeError, ValueError):
            return
        lines = {(d.span.file, d.span.line) for d in problems}
        sink.extend(d for d in shadow.items if d.is_error and (d.span.file, d.span.line) not in lines)
        return
    _read_sections(doc, parts, sink, namespace)


def _read_sections(doc: Document, parts: Parts, sink: DiagnosticSink, namespace: str) -> None:
    data = doc.data if isinstance(doc.data, dict) else {}
    root = Origin(doc, ())
    if "cluster" in data:
        _read_cluster(Fields(data["cluster"] or {}, root.child("cluster"), sink, "cluster"), parts)
    for section, reader in (("nodes", _read_node), ("workloads", _read_workload), ("pods", _read_pod),
                            ("services", _read_service), ("endpoints", _read_endpoints)):
        entries = data.get(section)
        for key, body in (entries.items() if isinstance(entries, dict) else ()):
            if not isinstance(body, dict) and body is not None:
                continue
            origin = root.child(section, key)
            reader(str(key), Fields(body or {}, origin, sink, f"{section}.{key}"), parts, namespace)


def _split_key(key: str, fields: Fields, default_ns: str, dns1035: bool = False) -> tuple[str, str] | None:
    """``NAME`` or ``NAMESPACE/NAME`` (a ``namespace:`` field also works)."""
    sink = fields.sink
    ns, _, name = key.rpartition("/")
    if ns and "namespace" in fields and fields.raw("namespace") != ns:
        sink.error(f"{key}: the key says namespace {ns!r} but the namespace field says {fields.raw('namespace')!r}",
                   fields.span("namespace"), "give the namespace once")
        return None
    ns = ns or fields.str("namespace", default_ns) or default_ns
    problem = names.check_dns1123_label(ns)
    if problem:
        where = fields.span("namespace") if "namespace" in fields else fields.origin.doc.key_span(fields.origin.path)
        sink.error(f"invalid namespace {ns!r}: {problem}", where,
                   "namespaces are DNS labels: lower-case letters, digits and '-'")
        return None
    check = names.check_dns1035_label if dns1035 else names.check_dns1123_subdomain
    problem = check(name)
    if problem:
        sink.error(f"invalid name {name!r}: {problem}", fields.origin.doc.key_span(fields.origin.path),
                   "names are lower-case letters, digits and '-'" + (" and start with a letter" if dns1035 else ""))
        return None
    return ns, name


def _labels(fields: Fields, key: str = "labels") -> dict[str, str]:
    labels = fields.string_map(key)
    for label, value in list(labels.items()):
        problem = names.check_label_key(label) or names.check_label_value(value)
        if problem:
            fields.sink.error(f"invalid label {label}={value!r}: {problem}", fields.origin.at(key, label),
                              "label keys are [prefix/]name and values at most 63 characters of [A-Za-z0-9-_.]")
            del labels[label]
    return labels


def _read_cluster(cluster: Fields, parts: Parts) -> None:
    sink = cluster.sink
    if "name" in cluster:
        parts.set("name", cluster.str("name"), cluster.origin.child("name"), SOURCE)
    if "domain" in cluster:
        domain = cluster.str("domain", "") or ""
        problem = names.check_dns1123_subdomain(domain.rstrip("."))
        if problem:
            sink.error(f"invalid cluster domain {domain!r}: {problem}", cluster.span("domain"), "use a DNS name like cluster.local")
        else:
            parts.set("domain", domain.rstrip("."), cluster.origin.child("domain"), SOURCE)
    for key, setting in (("podCIDR", "pod_cidrs"), ("serviceCIDR", "service_cidrs")):
        if key in cluster:
            cidrs = values.read_cidrs(cluster.raw(key), lambda i, k=key: cluster.span(k) if i is None else cluster.span(k, i),
                                      sink, f"cluster.{key}")
            if cidrs:
                parts.set(setting, cidrs, cluster.origin.child(key), SOURCE)
    if "nodePortRange" in cluster:
        rng = values.read_port_range(cluster.raw("nodePortRange"), cluster.span("nodePortRange"), sink)
        if rng is not None:
            parts.set("node_port_range", rng, cluster.origin.child("nodePortRange"), SOURCE)
    for key, setting in (("nodeCIDRMaskSize", "node_cidr_mask_v4"), ("nodeCIDRMaskSizeIPv6", "node_cidr_mask_v6")):
        if key in cluster:
            parts.set(setting, cluster.raw(key), cluster.origin.child(key), SOURCE)
    proxy = cluster.child("proxy")
    if proxy is None:
        return
    for key, setting in (("mode", "proxy_mode"), ("scheduler", "ipvs_scheduler"), ("masqueradeAll", "masquerade_all"),
                         ("masqueradeBit", "masquerade_bit"), ("localhostNodePorts", "localhost_nodeports"),
                         ("conntrackTCPBeLiberal", "conntrack_tcp_be_liberal"), ("detectLocalMode", "detect_local_mode")):
        if key in proxy:
            parts.set(setting, proxy.raw(key), proxy.origin.child(key), SOURCE)
    if "nodePortAddresses" in proxy:
        nets = tuple(n for n in (values.read_cidr(v, o.lazy(), sink, "nodePortAddresses entry")
                                 for _, v, o in proxy.items("nodePortAddresses")) if n is not None)
        parts.set("nodeport_addresses", nets, proxy.origin.child("nodePortAddresses"), SOURCE)


def _read_node(key: str, node: Fields, parts: Parts, namespace: str) -> None:
    problem = names.check_dns1123_subdomain(key)
    if problem:
        node.sink.error(f"invalid node name {key!r}: {problem}", node.origin.doc.key_span(node.origin.path),
                        "node names are lower-case letters, digits, '-' and '.'")
        return
    if "ip" not in node:
        node.sink.error(f"node {key} has no ip", node.origin.span, f"add the node's address: {key}: {{ip: 192.168.0.11}}")
        return
    ips = values.read_ips(node.raw("ip"), lambda i: node.span("ip") if i is None else node.span("ip", i), node.sink, f"node {key} ip")
    cidrs = ()
    if "podCIDR" in node:
        cidrs = values.read_cidrs(node.raw("podCIDR"), lambda i: node.span("podCIDR") if i is None else node.span("podCIDR", i),
                                  node.sink, f"node {key} podCIDR")
    if ips:
        parts.nodes.append(Node(name=key, ips=ips, pod_cidrs=cidrs, labels=_labels(node),
                                annotations=node.string_map("annotations"), origin=node.origin))


def _ports(fields: Fields, where: str) -> tuple[ContainerPort, ...]:
    raw = fields.raw("ports")
    if raw is None:
        return ()
    result = []
    origin = fields.origin.child("ports")
    entries = raw.items() if isinstance(raw, dict) else enumerate(raw)
    for key, spec in entries:
        pname = key if isinstance(raw, dict) else None
        if pname is not None:
            problem = names.check_port_name(str(pname))
            if problem:
                fields.sink.error(f"invalid port name {pname!r}: {problem}", fields.origin.key("ports", key),
                                  "port names are at most 15 lower-case letters, digits and '-', with a letter")
                continue
        parsed = values.read_port_spec(spec, origin.at(key), fields.sink, f"{where} port")
        if parsed is not None:
            result.append(ContainerPort(parsed[0], parsed[1], pname, None, origin.child(key)))
    return tuple(result)


def _read_workload(key: str, body: Fields, parts: Parts, namespace: str) -> None:
    ident = _split_key(key, body, namespace)
    if ident is None:
        return
    ns, name = ident
    labels = _labels(body)
    kind = body.raw("kind", "Deployment")
    parts.workloads.append(Workload(
        kind=kind, namespace=ns, name=name, replicas=None if kind == "DaemonSet" else body.raw("replicas", 1),
        labels=labels, ports=_ports(body, f"workload {ns}/{name}"), node=body.str("node"),
        node_selector=body.string_map("nodeSelector"), host_network=body.bool("hostNetwork", False),
        ready=body.bool("ready", True),
        annotations=body.string_map("annotations"), origin=body.origin))


def _read_pod(key: str, body: Fields, parts: Parts, namespace: str) -> None:
    ident = _split_key(key, body, namespace)
    if ident is None:
        return
    ns, name = ident
    host_network = body.bool("hostNetwork", False)
    ips = ()
    if "ip" in body:
        ips = values.read_ips(body.raw("ip"), lambda i: body.span("ip") if i is None else body.span("ip", i), body.sink,
                              f"pod {ns}/{name} ip")
        if host_network:
            body.sink.error(f"pod {ns}/{name} has hostNetwork: true and an ip", body.span("ip"),
                            "a hostNetwork pod takes its node's IP: remove ip")
    parts.pods.append(Pod(namespace=ns, name=name, node=body.str("node"), ips=ips, labels=_labels(body),
                          ports=_ports(body, f"pod {ns}/{name}"), ready=body.bool("ready", True),
                          terminating=body.bool("terminating", False), host_network=host_network,
                          annotations=body.string_map("annotations"), origin=body.origin))


def _selector(body: Fields) -> Selector | None:
    raw = body.raw("selector")
    if raw is None:
        return None
    if isinstance(raw, dict):
        labels = _labels(body, "selector")
        return selector_from_labels(labels) if labels else None
    try:
        return parse_selector(raw, body.origin.at("selector"))
    except InputError as exc:
        body.sink.extend(exc.diagnostics)
        return None


def _service_ports(body: Fields, where: str, svc_type: str) -> tuple[ServicePort, ...]:
    result = []
    seen: set[str] = set()
    raw_list = body.raw("ports") or []
    for index, item, origin in body.items("ports"):
        if not isinstance(item, dict):
            parsed = values.read_port_spec(item, origin.lazy(), body.sink, f"{where} port")
            if parsed is not None:
                if len(raw_list) > 1:
                    body.sink.error(f"{where}: port {index + 1} has no name", origin.span,
                                    "a service with several ports must name every port: use {name: ..., port: ...}")
                result.append(ServicePort(parsed[0], parsed[1], "", None, None, None, origin))
            continue
        port = Fields(item, origin, body.sink, f"{where} ports[{index}]")
        pname = port.str("name", "") or ""
        if pname:
            problem = names.check_port_name(pname)
            if problem:
                body.sink.error(f"invalid port name {pname!r}: {problem}", port.span("name"),
                                "port names are at most 15 lower-case letters, digits and '-'")
                continue
        elif len(raw_list) > 1:
            body.sink.error(f"{where}: port {index + 1} has no name", origin.span,
                            "a service with several ports must name every port")
        if pname in seen:
            body.sink.error(f"{where}: duplicate port name {pname!r}", port.span("name"), "port names must be unique")
        seen.add(pname)
        target = port.raw("targetPort")
        if isinstance(target, str):
            problem = names.check_port_name(target)
            if problem:
                body.sink.error(f"invalid targetPort name {target!r}: {problem}", port.span("targetPort"),
                                "a named targetPort must be a container port name (at most 15 characters)")
                continue
        elif target is not None:
            target = values.read_port(target, port.span("targetPort"), body.sink, f"{where} targetPort")
        node_port = port.raw("nodePort")
        if node_port is not None and svc_type not in ("NodePort", "LoadBalancer"):
            body.sink.error(f"{where}: nodePort is set on a {svc_type} service", port.span("nodePort"),
                            "only NodePort and LoadBalancer services have node ports: set type: NodePort")
        result.append(ServicePort(port.raw("port"), port.raw("protocol", "TCP"), pname, target, node_port,
                                  port.str("appProtocol"), origin))
    return tuple(result)


def _ip_list(body: Fields, key: str, what: str) -> tuple:
    found = []
    for _, raw, origin in body.items(key):
        ip = values.read_ip(raw, origin.lazy(), body.sink, what)
        if ip is not None:
            found.append(ip)
    return tuple(found)


def _read_service(key: str, body: Fields, parts: Parts, namespace: str) -> None:
    ident = _split_key(key, body, namespace, dns1035=True)
    if ident is None:
        return
    ns, name = ident
    svc_type = body.raw("type", "ClusterIP")
    headless = body.raw("clusterIP") == "None"
    cluster_ips: tuple = ()
    if "clusterIPs" in body:
        cluster_ips = values.read_ips(body.raw("clusterIPs"), lambda i: body.span("clusterIPs") if i is None else body.span("clusterIPs", i),
                                      body.sink, f"service {ns}/{name} clusterIPs")
    elif "clusterIP" in body and not headless:
        cluster_ips = values.read_ips(body.raw("clusterIP"), lambda i: body.span("clusterIP"), body.sink,
                                      f"service {ns}/{name} clusterIP")
    if svc_type == "ExternalName" and not body.raw("externalName"):
        body.sink.error(f"ExternalName service {ns}/{name} has no externalName", body.origin.span,
                        "set externalName to the DNS name this service aliases")
    ranges = tuple(n for n in (values.read_cidr(v, o.lazy(), body.sink, "loadBalancerSourceRanges entry")
                               for _, v, o in body.items("loadBalancerSourceRanges")) if n is not None)
    parts.services.append(Service(
        namespace=ns, name=name, type=svc_type, selector=_selector(body),
        ports=_service_ports(body, f"service {ns}/{name}", svc_type), cluster_ips=cluster_ips, headless=headless,
        external_ips=_ip_list(body, "externalIPs", "externalIPs entry"),
        load_balancer_ips=_ip_list(body, "loadBalancerIPs", "loadBalancerIPs entry"),
        load_balancer_source_ranges=ranges,
        external_traffic_policy=body.raw("externalTrafficPolicy", "Cluster"),
        internal_traffic_policy=body.raw("internalTrafficPolicy", "Cluster"),
        session_affinity=body.raw("sessionAffinity", "None"), affinity_timeout=body.raw("sessionAffinityTimeout", 10800),
        external_name=body.str("externalName"), publish_not_ready=body.bool("publishNotReadyAddresses", False),
        ip_families=tuple(4 if f == "IPv4" else 6 for f in body.raw("ipFamilies", [])),
        health_check_node_port=body.raw("healthCheckNodePort"), ipvs_scheduler=body.raw("scheduler"),
        annotations=body.string_map("annotations"), origin=body.origin))


def _read_endpoints(key: str, body: Fields, parts: Parts, namespace: str) -> None:
    ident = _split_key(key, body, namespace, dns1035=True)
    if ident is None:
        return
    ns, name = ident
    addresses = []
    for field, ready in (("addresses", True), ("notReadyAddresses", False)):
        for _, raw, origin in body.items(field):
            ip = values.read_ip(raw, origin.lazy(), body.sink, "endpoint address")
            if ip is not None:
                addresses.append(EndpointAddress(ip=ip, ready=ready, serving=ready, origin=origin))
    ports = [EndpointPort(p.port, p.protocol, p.name) for p in _service_ports(body, f"endpoints {ns}/{name}", "ClusterIP")]
    parts.manual_endpoints.append(ManualEndpoints(ns, name, tuple(addresses), tuple(ports), "kspec", body.origin))
