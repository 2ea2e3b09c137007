"""The cluster DNS as RFC 1035 zone files (Kubernetes DNS spec, schema 1.1.0).

What CoreDNS's kubernetes plugin would answer, written down as static zones:

* ``dns-version.<zone>. TXT "1.1.0"`` (spec 2.2), SOA and NS records as
  CoreDNS makes them (``ns.dns.<zone>``, ``hostmaster.<zone>``, TTL 5);
* a Service with cluster IPs: A/AAAA ``<svc>.<ns>.svc.<zone>`` per cluster
  IP, ``SRV _<port>._<proto>.<svc>...`` per named port pointing at the
  service name, PTR per cluster IP (2.3);
* a headless Service: A/AAAA ``<svc>...`` per ready endpoint, A/AAAA
  ``<hostname>.<svc>...``, SRV per (ready endpoint, named port) with the
  endpoint's port, PTR per ready endpoint address (2.4). The model has no pod
  hostname/subdomain, so every endpoint's *hostname* is its address with
  dashes (``10-244-1-5``; ``fd00--5`` for IPv6), as CoreDNS makes it for
  endpoints without one; "ready" is the EndpointSlice condition, which
  publishNotReadyAddresses forces true;
* an ExternalName Service: CNAME to the external name (2.5);
* the deprecated pod records ``<a>-<b>-<c>-<d>.<ns>.pod.<zone>`` (2.6), for
  the pods the cluster has (CoreDNS ``pods verified``; ``pods insecure``
  answers any address, which a zone file cannot list).

Endpoints are read from the EndpointSlices the cluster would hold
(:func:`kspec.backends.endpointslices.service_endpoints`), as CoreDNS reads
them. SRV records have priority 0 and weight ``100 // n`` for n records of
one name, as CoreDNS computes them. The SOA serial is a hash of the zone's
records: stable for the same cluster, different when a record changes.

>>> zones = generate_zones(cluster)  # doctest: +SKIP
>>> sorted(zones)  # doctest: +SKIP
['cluster.local.zone', 'in-addr.arpa.zone']
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

from kspec.backends.endpointslices import service_endpoints
from kspec.diagnostics import InputError, error
from kspec.model import IPAddress, Pod, ResolvedCluster, Service

SCHEMA_VERSION = "1.1.0"
TTL = 5
SOA_TIMERS = "7200 1800 86400"  # refresh retry expire, as CoreDNS answers them
DNS_SERVICE = ("kube-system", "kube-dns")

_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")


@dataclass(frozen=True, slots=True)
class Record:
    owner: str  # absolute, with the trailing dot
    rtype: str
    rdata: str

    def line(self) -> str:
        return f"{self.owner} IN {self.rtype} {self.rdata}"


def generate_zones(cluster: ResolvedCluster) -> dict[str, str]:
    """Zone file name -> zone text: ``<domain>.zone``, ``in-addr.arpa.zone`` and,
    when some address has an IPv6 PTR record (a cluster IP or a ready headless
    endpoint), ``ip6.arpa.zone``."""
    domain = _domain(cluster)
    forward, reverse = cluster_records(cluster)
    zones = {f"{domain}.zone": _zone_text(f"{domain}.", domain, forward)}
    zones["in-addr.arpa.zone"] = _zone_text("in-addr.arpa.", domain, reverse[4])
    if reverse[6]:
        zones["ip6.arpa.zone"] = _zone_text("ip6.arpa.", domain, reverse[6])
    return zones


def cluster_records(cluster: ResolvedCluster) -> tuple[list[Record], dict[int, list[Record]]]:
    """The forward records (in output order) and the PTR records per IP version."""
    domain = _domain(cluster)
    forward: dict[Record, None] = {}
    ptrs: dict[tuple[int, int, str], None] = {}

    def add(owner: str, ip: IPAddress) -> None:
        forward[Record(owner, "A" if ip.version == 4 else "AAAA", str(ip))] = None

    forward[Record(f"dns-version.{domain}.", "TXT", f'"{SCHEMA_VERSION}"')] = None
    dns_service = cluster.services_by_key.get(DNS_SERVICE)
    if dns_service is not None and not dns_service.headless:
        for ip in dns_service.cluster_ips:
            add(f"ns.dns.{domain}.", ip)

    for service in sorted(cluster.services, key=lambda s: s.key):
        name = f"{_label(service, service.name)}.{_label(service, service.namespace)}.svc.{domain}."
        if service.type == "ExternalName":
            if service.external_name:
                forward[Record(name, "CNAME", _external_name(service))] = None
            continue
        srv: dict[str, list[tuple[int, str]]] = {}
        if service.headless:
            ready = [e for e in service_endpoints(cluster, service) if e.ready]
            for e in ready:
                add(name, e.address)
            for e in ready:
                host = f"{dashed(e.address)}.{name}"
                add(host, e.address)
                ptrs[(e.address.version, int(e.address), host)] = None
                for p in e.ports:
                    if p.name:
                        srv.setdefault(_srv_owner(service, p.name, p.protocol, name), []).append((p.port, host))
        else:
            for ip in service.cluster_ips:
                add(name, ip)
                ptrs[(ip.version, int(ip), name)] = None
            if service.cluster_ips:
                for sp in service.ports:
                    if sp.name:
                        srv.setdefault(_srv_owner(service, sp.name, sp.protocol, name), []).append((sp.port, name))
        for owner, targets in srv.items():
            weight = 100 // len(targets)
            for port, target in targets:
                forward[Record(owner, "SRV", f"0 {weight} {port} {target}")] = None

    for pod in sorted(cluster.pods, key=lambda p: p.key):
        if pod.host_network or not pod.ips:
            continue
        namespace = _pod_label(pod.namespace, pod)
        for ip in pod.ips:
            add(f"{dashed(ip)}.{namespace}.pod.{domain}.", ip)

    reverse: dict[int, list[Record]] = {4: [], 6: []}
    for version, number, target in sorted(ptrs):
        ip = _ip_of(version, number)
        reverse[version].append(Record(f"{ip.reverse_pointer}.", "PTR", target))
    return list(forward), reverse


def dashed(ip: IPAddress) -> str:
    """The endpoint hostname CoreDNS makes from an address: ``10-244-1-5``, ``fd00--5``."""
    return str(ip).replace(".", "-").replace(":", "-")


def _zone_text(origin: str, domain: str, records: list[Record]) -> str:
    body = "".join(r.line() + "\n" for r in records)
    serial = int.from_bytes(hashlib.sha256(body.encode()).digest()[:4], "big") or 1
    head = (
        f"$ORIGIN {origin}\n"
        f"$TTL {TTL}\n"
        f"{origin} IN SOA ns.dns.{domain}. hostmaster.{domain}. {serial} {SOA_TIMERS} {TTL}\n"
        f"{origin} IN NS ns.dns.{domain}.\n"
    )
    return head + body


def _srv_owner(service: Service, port_name: str, protocol: str, name: str) -> str:
    return f"_{_label(service, port_name)}._{protocol.lower()}.{name}"


def _ip_of(version: int, number: int) -> IPAddress:
    return ipaddress.IPv4Address(number) if version == 4 else ipaddress.IPv6Address(number)


def _domain(cluster: ResolvedCluster) -> str:
    domain = cluster.settings.domain.rstrip(".").lower()
    labels = domain.split(".")
    if not domain or len(domain) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InputError(
            error(
                f"cluster domain {cluster.settings.domain!r} is not a DNS name",
                cluster.settings.origin.span,
                hint="use dot-separated labels of letters, digits and '-', e.g. cluster.local",
            )
        )
    return domain


def _label(service: Service, text: str) -> str:
    """A name from the input used as one DNS label; anything else is an input error,
    so nothing can be injected into zone text."""
    if not _LABEL.match(text):
        raise InputError(
            error(
                f"{text!r} of service {service.namespace}/{service.name} is not a DNS label",
                service.origin.span,
                hint="names, namespaces and port names must be DNS labels (letters, digits, '-')",
            )
        )
    return text.lower()


def _pod_label(text: str, pod: Pod) -> str:
    if not _LABEL.match(text):
        raise InputError(
            error(f"namespace {text!r} of pod {pod.name} is not a DNS label", pod.origin.span,
                  hint="namespaces must be DNS labels (letters, digits, '-')")
        )
    return text.lower()


def _external_name(service: Service) -> str:
    name = (service.external_name or "").rstrip(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InputError(
            error(
                f"externalName {service.external_name!r} of service {service.namespace}/{service.name} "
                "is not a DNS name",
                service.origin.at("spec", "externalName"),
                hint="externalName must be a DNS name such as db.example.com",
            )
        )
    return name + "."
