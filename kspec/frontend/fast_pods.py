"""The bulk path for Pod objects: well-formed pods read without per-field bookkeeping.

A cluster dump is mostly pods (150,000 at the Kubernetes limits), and almost
all of them are well-formed.  :func:`fast_pod` reads such a pod with plain
dict access and cached name checks; the moment anything is unusual (a type,
an invalid name, an unknown key that might be a typo, a terminal phase) it
returns None and the caller runs the located reader in
:mod:`kspec.frontend.manifests`, which produces the diagnostics.  A property
test checks both readers build the same Pod.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Any

from kspec import names
from kspec.frontend.document import Origin
from kspec.frontend.parts import OwnerRef
from kspec.model import PROTOCOLS, ContainerPort, Pod

META_KEYS = frozenset({"name", "namespace", "labels", "annotations", "ownerReferences", "uid", "resourceVersion",
                       "generation", "creationTimestamp", "managedFields", "generateName", "finalizers", "selfLink"})
SPEC_KEYS = frozenset({"containers", "nodeName", "hostNetwork", "nodeSelector", "initContainers", "volumes",
                       "hostname", "subdomain", "hostPID", "hostIPC", "dnsPolicy", "dnsConfig", "restartPolicy",
                       "schedulerName", "tolerations", "affinity", "priority", "serviceAccount", "serviceAccountName",
                       "securityContext", "readinessGates", "overhead", "os", "runtimeClassName",
                       "enableServiceLinks", "preemptionPolicy", "priorityClassName",
                       "terminationGracePeriodSeconds", "imagePullSecrets"})
STATUS_KEYS = frozenset({"podIP", "podIPs", "conditions", "phase", "hostIP", "hostIPs", "qosClass", "startTime",
                         "containerStatuses", "initContainerStatuses"})
PORT_KEYS = frozenset({"name", "containerPort", "protocol", "hostPort", "hostIP"})

check_label_key = lru_cache(maxsize=1 << 16)(names.check_label_key)
check_label_value = lru_cache(maxsize=1 << 16)(names.check_label_value)
check_subdomain = lru_cache(maxsize=1 << 16)(names.check_dns1123_subdomain)
check_namespace = lru_cache(maxsize=1 << 12)(names.check_dns1123_label)
check_port_name = lru_cache(maxsize=1 << 12)(names.check_port_name)


@lru_cache(maxsize=1 << 12)
def container_key_ok(key: str) -> bool:
    """Container fields kspec does not read are fine unless one edit away from ``ports``/``name``/``image``."""
    from kspec.frontend.fields import one_edit_apart

    return not any(one_edit_apart(key, read) for read in ("ports", "name", "image")) or key in ("args", "env", "command")


def _labels(raw: Any) -> dict[str, str] | None:
    if raw is None:
        return {}
    if type(raw) is not dict:
        return None
    for key, value in raw.items():
        if type(key) is not str or type(value) is not str or check_label_key(key) or check_label_value(value):
            return None
    return raw


def _ips(status: dict) -> tuple | None:
    raw = status.get("podIPs")
    if raw is not None:
        if type(raw) is not list or not raw:
            return None
        texts = []
        for item in raw:
            if type(item) is not dict or type(item.get("ip")) is not str:
                return None
            texts.append(item["ip"])
    elif status.get("podIP") is not None:
        if type(status["podIP"]) is not str:
            return None
        texts = [status["podIP"]]
    else:
        return ()
    if len(texts) > 2:
        return None
    try:
        ips = tuple(ipaddress.ip_address(t) for t in texts)
    except ValueError:
        return None
    if any(getattr(ip, "scope_id", None) for ip in ips) or (len(ips) == 2 and ips[0].version == ips[1].version):
        return None
    return ips


def _ports(spec: dict, origin: Origin) -> tuple[ContainerPort, ...] | None:
    containers = spec.get("containers")
    if type(containers) is not list:
        return None
    ports: list[ContainerPort] = []
    seen: set[str] = set()
    for ci, container in enumerate(containers):
        if type(container) is not dict or not all(container_key_ok(k) for k in container):
            return None
        raw_ports = container.get("ports")
        if raw_ports is None:
            continue
        if type(raw_ports) is not list:
            return None
        for pi, port in enumerate(raw_ports):
            if type(port) is not dict or not port.keys() <= PORT_KEYS:
                return None
            number = port.get("containerPort")
            protocol = port.get("protocol", "TCP")
            name = port.get("name")
            host_port = port.get("hostPort")
            if type(number) is not int or not 1 <= number <= 65535 or protocol not in PROTOCOLS:
                return None
            if host_port is not None and (type(host_port) is not int or not 1 <= host_port <= 65535):
                return None
            if name is not None:
                if type(name) is not str or check_port_name(name) or name in seen:
                    return None
                seen.add(name)
            ports.append(ContainerPort(number, protocol, name, host_port,
                                       origin.child("spec", "containers", ci, "ports", pi)))
    return tuple(ports)


def fast_pod(data: dict, origin: Origin, namespace: str) -> tuple[Pod, OwnerRef | None] | None:
    """The Pod of a well-formed object, or None when the located reader must decide."""
    meta, spec, status = data.get("metadata"), data.get("spec"), data.get("status")
    if status is None:
        status = {}
    if type(meta) is not dict or type(spec) is not dict or type(status) is not dict:
        return None
    if not meta.keys() <= META_KEYS or not spec.keys() <= SPEC_KEYS or not status.keys() <= STATUS_KEYS:
        return None
    name, ns = meta.get("name"), meta.get("namespace", namespace)
    if type(name) is not str or not name or check_subdomain(name) or type(ns) is not str or not ns or check_namespace(ns):
        return None
    phase = status.get("phase")
    if phase not in (None, "Running", "Pending") or spec.get("initContainers") is not None:
        return None
    labels = _labels(meta.get("labels"))
    annotations = meta.get("annotations") or {}
    if labels is None or type(annotations) is not dict or not all(
            type(k) is str and type(v) is str for k, v in annotations.items()):
        return None
    ips = _ips(status)
    if ips is None or (phase == "Pending" and not ips):
        return None
    node, host_network = spec.get("nodeName"), spec.get("hostNetwork", False)
    if (node is not None and type(node) is not str) or type(host_network) is not bool:
        return None
    conditions = status.get("conditions")
    if conditions is not None:
        if type(conditions) is not list or not all(type(c) is dict for c in conditions):
            return None
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    elif "status" in data and phase is not None:
        ready = phase == "Running"
    else:
        ready = True
    ports = _ports(spec, origin)
    if ports is None:
        return None
    owner = None
    refs = meta.get("ownerReferences")
    if refs is not None:
        if type(refs) is not list or not all(type(r) is dict for r in refs):
            return None
        for ref in refs:
            if ref.get("controller") is True or len(refs) == 1:
                if type(ref.get("kind")) is str and type(ref.get("name")) is str:
                    owner = OwnerRef(ref["kind"], ref["name"])
                    break
    pod = Pod(namespace=ns, name=name, node=node, ips=() if host_network else ips, labels=labels, ports=ports,
              ready=ready, terminating=False, host_network=host_network, annotations=annotations, origin=origin)
    return pod, owner
