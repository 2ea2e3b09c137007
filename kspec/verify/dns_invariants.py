"""KS111: the cluster DNS zone answers every service name with its cluster IPs.

Checked on zone TEXT (the zone kspec compiles, read back line by line), so
a generator bug is a finding: for each service with cluster IPs the A/AAAA
set of ``<svc>.<ns>.svc.<domain>`` must equal them; a name may not hold a
CNAME beside other data; an address may not have two PTR targets.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict

from kspec.backends import dns
from kspec.model import ResolvedCluster
from kspec.verify.catalogue import CATALOGUE, checker
from kspec.verify.result import PROVED, VIOLATED, Finding, Location, Verdict
from kspec.verify.spans import located, suppression


def read_zone(text: str) -> dict[str, list[tuple[str, str]]]:
    """owner name (absolute, lower case) -> [(type, rdata)] of a zone kspec wrote."""
    records: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for line in text.splitlines():
        if not line or line.startswith(("$", ";")):
            continue
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[1] == "IN":
            records[parts[0].lower()].append((parts[2], parts[3]))
    return records


@checker("KS111")
def dns_names_resolve(cluster: ResolvedCluster) -> Verdict:
    zones = dns.generate_zones(cluster)
    domain = cluster.settings.domain.rstrip(".").lower()
    forward = read_zone(zones[f"{domain}.zone"])
    reverse = read_zone(zones.get("in-addr.arpa.zone", "")) | read_zone(zones.get("ip6.arpa.zone", ""))
    findings: list[Finding] = []
    subjects = []
    for svc in cluster.services:
        label = f"service {svc.namespace}/{svc.name}"
        name = f"{svc.name}.{svc.namespace}.svc.{domain}."
        if svc.type == "ExternalName" or svc.headless or not svc.cluster_ips:
            continue
        subjects.append(label)
        answers = {ipaddress.ip_address(r) for t, r in forward.get(name, []) if t in ("A", "AAAA")}
        if answers != set(svc.cluster_ips):
            findings.append(Finding(
                "KS111", f"{name} resolves to {', '.join(sorted(map(str, answers))) or 'nothing'}, not to the cluster "
                f"IP(s) {', '.join(map(str, svc.cluster_ips))}", (located(svc.origin, label),),
                witness=f"query A {name}", hint=CATALOGUE["KS111"].fix, subject=label,
                suppressed=suppression(svc.annotations, "KS111")))
    for owner, records in sorted(forward.items()):
        types = {t for t, _ in records}
        if "CNAME" in types and len(records) > 1:
            findings.append(Finding("KS111", f"{owner} has a CNAME beside other records", (),
                                    witness=f"query {owner}", hint=CATALOGUE["KS111"].fix, subject=owner))
    by_ip = {ip: svc for svc in cluster.services for ip in svc.cluster_ips}
    for owner, records in sorted(reverse.items()):
        targets = sorted({r for t, r in records if t == "PTR"})
        if len(targets) > 1:
            address = _address_of(owner)
            svc = by_ip.get(address) if address is not None else None
            where = (Location(svc.origin.span, f"service {svc.namespace}/{svc.name}"),) if svc else ()
            findings.append(Finding(
                "KS111", f"address {address or owner} has {len(targets)} PTR records: {', '.join(targets)}", where,
                witness=f"query PTR {owner}", hint=CATALOGUE["KS111"].fix, subject=f"address {address or owner}"))
    findings.sort(key=Finding.sort_key)
    return Verdict("KS111", VIOLATED if findings else PROVED, tuple(findings), len(subjects), tuple(subjects))


def _address_of(owner: str):
    labels = owner.rstrip(".").split(".")
    try:
        if owner.endswith("in-addr.arpa."):
            return ipaddress.IPv4Address(".".join(reversed(labels[:-2])))
        if owner.endswith("ip6.arpa."):
            nibbles = "".join(reversed(labels[:-2]))
            return ipaddress.IPv6Address(int(nibbles, 16))
    except ValueError:
        return None
    return None
