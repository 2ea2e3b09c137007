"""IPAM: node podCIDRs, pod IPs, cluster IPs, nodePorts — stable and locked.

Each free value is chosen by hashing its owner's name into the range and
probing to the next free slot, after every value the input states and every
still-valid locked value has been claimed.  So adding a service does not
shift the others (a sequential allocator would), and with the lock file the
result is exactly stable.  Cost is O(objects) with set lookups; no scan of
the range.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import replace
from typing import Iterable

from kspec.diagnostics import DiagnosticSink
from kspec.model import Allocation, ClusterSettings, IPNetwork, Node, Pod, Service
from kspec.passes.lock import Lock


def _hash(owner: str) -> int:
    return int.from_bytes(hashlib.sha256(owner.encode()).digest()[:8], "big")


class SlotAllocator:
    """Free slots 0..size-1 of a range, minus reserved ones, with hashed probing."""

    def __init__(self, size: int, reserved: Iterable[int] = ()) -> None:
        self.size = size
        self.taken: set[int] = set(reserved)
        self.intervals: list[tuple[int, int]] = []

    def is_free(self, slot: int) -> bool:
        if not 0 <= slot < self.size or slot in self.taken:
            return False
        return not any(lo <= slot <= hi for lo, hi in self.intervals)

    def claim(self, slot: int) -> None:
        self.taken.add(slot)

    def claim_interval(self, lo: int, hi: int) -> None:
        """Mark a whole interval taken (an explicit podCIDR larger than one block)."""
        if hi - lo < 4096:
            self.taken.update(range(lo, hi + 1))
        else:
            self.intervals.append((lo, hi))

    def allocate(self, owner: str) -> int | None:
        if len(self.taken) >= self.size:
            return None
        start = _hash(owner) % self.size
        slot = start
        for _ in range(min(self.size, 1 << 22)):
            if self.is_free(slot):
                self.taken.add(slot)
                return slot
            slot = (slot + 1) % self.size
        return None


def _net_allocator(network: IPNetwork, reserve_edges: bool, reserve_first: bool) -> SlotAllocator:
    size = network.num_addresses
    reserved = set()
    if reserve_edges and size > 2:
        reserved.add(0)
        if network.version == 4:
            reserved.add(size - 1)
    if reserve_first and size > 4:
        reserved.add(1)
    return SlotAllocator(size, reserved)


def _offset(network: IPNetwork, address) -> int:
    return int(address) - int(network.network_address)


class Ipam:
    """One run of allocation over a cluster; collects Allocation records."""

    def __init__(self, settings: ClusterSettings, lock: Lock, sink: DiagnosticSink) -> None:
        self.settings = settings
        self.lock = lock
        self.sink = sink
        self.made: list[Allocation] = []

    def _record(self, kind: str, owner: str, value: str, reused: bool) -> None:
        self.made.append(Allocation(kind, owner, value, reused))

    def _locked_values(self, kind: str, owner: str) -> list[str]:
        value = self.lock.get(kind, owner)
        if value is None:
            return []
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]

    # -- node podCIDRs ------------------------------------------------------
    def node_cidrs(self, nodes: tuple[Node, ...]) -> tuple[Node, ...]:
        result = {n.name: n for n in nodes}
        for cluster_cidr in self.settings.pod_cidrs:
            mask = self.settings.node_cidr_mask_v4 if cluster_cidr.version == 4 else self.settings.node_cidr_mask_v6
            if mask < cluster_cidr.prefixlen:
                continue
            block = 1 << ((32 if cluster_cidr.version == 4 else 128) - mask)
            alloc = SlotAllocator(1 << (mask - cluster_cidr.prefixlen))
            base = int(cluster_cidr.network_address)

            def block_range(net: IPNetwork) -> tuple[int, int] | None:
                if net.version != cluster_cidr.version or not net.overlaps(cluster_cidr):
                    return None
                lo = max(int(net.network_address), base)
                hi = min(int(net.broadcast_address), int(cluster_cidr.broadcast_address))
                return (lo - base) // block, (hi - base) // block

            for node in nodes:
                for net in node.pod_cidrs:
                    rng = block_range(net)
                    if rng:
                        alloc.claim_interval(*rng)
            pending = []
            for node in sorted(nodes, key=lambda n: n.name):
                if any(c.version == cluster_cidr.version for c in result[node.name].pod_cidrs):
                    continue
                owner = f"node/{node.name}"
                chosen = None
                for text in self._locked_values("podCIDR", owner):
                    net = _parse_net(text)
                    if net is not None and net.version == cluster_cidr.version and net.prefixlen == mask \
                            and net.subnet_of(cluster_cidr):
                        slot = (int(net.network_address) - base) // block
                        if alloc.is_free(slot):
                            alloc.claim(slot)
                            chosen = net
                            self._record("podCIDR", owner, str(net), True)
                if chosen is None:
                    pending.append(node)
                else:
                    result[node.name] = replace(result[node.name], pod_cidrs=_sorted_nets(result[node.name].pod_cidrs + (chosen,)))
            for node in pending:
                owner = f"node/{node.name}"
                slot = alloc.allocate(owner)
                if slot is None:
                    self.sink.error(f"no free podCIDR left for node {node.name} in {cluster_cidr} (/{mask} per node)",
                                    node.origin.span, "use a larger cluster pod CIDR or a smaller nodeCIDRMaskSize")
                    continue
                net = ipaddress.ip_network((base + slot * block, mask))
                result[node.name] = replace(result[node.name], pod_cidrs=_sorted_nets(result[node.name].pod_cidrs + (net,)))
                self._record("podCIDR", owner, str(net), False)
        return tuple(result[n.name] for n in nodes)

    # -- pod IPs -------------------------------------------------------------
    def pod_ips(self, pods: list[Pod], nodes: tuple[Node, ...]) -> list[Pod]:
        by_name = {n.name: n for n in nodes}
        allocators: dict[tuple[str, IPNetwork], SlotAllocator] = {}

        def allocator(node: Node, net: IPNetwork) -> SlotAllocator:
            key = (node.name, net)
            if key not in allocators:
                allocators[key] = _net_allocator(net, reserve_edges=True, reserve_first=True)
            return allocators[key]

        for pod in pods:
            node = by_name.get(pod.node or "")
            if node is None or pod.host_network:
                continue
            for ip in pod.ips:
                for net in node.pod_cidrs:
                    if ip.version == net.version and ip in net:
                        allocator(node, net).claim(_offset(net, ip))
        result: list[Pod] = []
        pending: list[int] = []
        for index, pod in enumerate(pods):
            node = by_name.get(pod.node or "")
            if pod.host_network:
                result.append(replace(pod, ips=node.ips if node else ()))
                continue
            if pod.ips or node is None:
                result.append(pod)
                continue
            owner = f"pod/{pod.namespace}/{pod.name}"
            locked = []
            for text in self._locked_values("podIP", owner):
                ip = _parse_ip(text)
                net = next((n for n in node.pod_cidrs if ip is not None and ip.version == n.version and ip in n), None)
                if net is not None and allocator(node, net).is_free(_offset(net, ip)):
                    allocator(node, net).claim(_offset(net, ip))
                    locked.append(ip)
            if locked and {ip.version for ip in locked} == {n.version for n in node.pod_cidrs}:
                self._record("podIP", owner, ",".join(str(i) for i in locked), True)
                result.append(replace(pod, ips=tuple(locked)))
                continue
            pending.append(index)
            result.append(pod)
        for index in sorted(pending, key=lambda i: result[i].key):
            pod = result[index]
            node = by_name[pod.node]
            owner = f"pod/{pod.namespace}/{pod.name}"
            ips = []
            for net in node.pod_cidrs:
                slot = allocator(node, net).allocate(owner)
                if slot is None:
                    self.sink.error(f"node {node.name}'s podCIDR {net} is full: no IP for pod {pod.namespace}/{pod.name}",
                                    pod.origin.span, "give the node a larger podCIDR or move pods to other nodes")
                    continue
                ips.append(net.network_address + slot)
            if ips:
                result[index] = replace(pod, ips=tuple(ips))
                self._record("podIP", owner, ",".join(str(i) for i in ips), False)
        return result

    # -- cluster IPs ---------------------------------------------------------
    def cluster_ips(self, services: tuple[Service, ...]) -> tuple[Service, ...]:
        allocators = {net: _net_allocator(net, reserve_edges=True, reserve_first=True) for net in self.settings.service_cidrs}
        for svc in services:
            for ip in svc.cluster_ips:
                for net, alloc in allocators.items():
                    if ip.version == net.version and ip in net:
                        alloc.claim(_offset(net, ip))
        result = list(services)
        order = sorted(range(len(services)), key=lambda i: services[i].key)
        for index in order:
            svc = services[index]
            if svc.cluster_ips or svc.headless or svc.type == "ExternalName":
                continue
            owner = f"service/{svc.namespace}/{svc.name}"
            families = svc.ip_families or (self.settings.service_cidrs[0].version,)
            nets = [next((n for n in self.settings.service_cidrs if n.version == f), None) for f in families]
            if None in nets:
                self.sink.error(f"service {svc.namespace}/{svc.name} asks for IPv{families[nets.index(None)]}, but the "
                                "cluster has no service CIDR of that family", svc.origin.span,
                                "add a service CIDR of that family or change ipFamilies")
                continue
            ips = []
            locked = [_parse_ip(t) for t in self._locked_values("clusterIP", owner)]
            for net in nets:
                keep = next((ip for ip in locked if ip is not None and ip.version == net.version and ip in net
                             and allocators[net].is_free(_offset(net, ip))), None)
                if keep is not None:
                    allocators[net].claim(_offset(net, keep))
                    ips.append((keep, True))
                    continue
                slot = allocators[net].allocate(owner)
                if slot is None:
                    self.sink.error(f"service CIDR {net} is full: no cluster IP for {svc.namespace}/{svc.name}",
                                    svc.origin.span, "use a larger service CIDR")
                    continue
                ips.append((net.network_address + slot, False))
            if ips:
                result[index] = replace(svc, cluster_ips=tuple(ip for ip, _ in ips))
                self._record("clusterIP", owner, ",".join(str(ip) for ip, _ in ips), all(r for _, r in ips))
        return tuple(result)

    # -- nodePorts -----------------------------------------------------------
    def node_ports(self, services: tuple[Service, ...]) -> tuple[Service, ...]:
        low, high = self.settings.node_port_range
        alloc = SlotAllocator(high - low + 1)
        for svc in services:
            for port in svc.ports:
                if port.node_port is not None and low <= port.node_port <= high:
                    alloc.claim(port.node_port - low)
            if svc.health_check_node_port is not None and low <= svc.health_check_node_port <= high:
                alloc.claim(svc.health_check_node_port - low)
        result = list(services)
        for index in sorted(range(len(services)), key=lambda i: services[i].key):
            svc = services[index]
            if not svc.is_node_port:
                continue
            ports = list(svc.ports)
            changed = False
            for pi, port in enumerate(ports):
                if port.node_port is not None:
                    continue
                owner = f"service/{svc.namespace}/{svc.name}:{port.name or port.port}/{port.protocol}"
                chosen = self._port(alloc, low, "nodePort", owner, svc)
                if chosen is not None:
                    ports[pi] = replace(port, node_port=chosen)
                    changed = True
            health = svc.health_check_node_port
            if svc.type == "LoadBalancer" and svc.external_traffic_policy == "Local" and health is None:
                health = self._port(alloc, low, "healthCheckNodePort", f"service/{svc.namespace}/{svc.name}", svc)
                changed = changed or health is not None
            if changed:
                result[index] = replace(svc, ports=tuple(ports), health_check_node_port=health)
        return tuple(result)

    def _port(self, alloc: SlotAllocator, low: int, kind: str, owner: str, svc: Service) -> int | None:
        for text in self._locked_values(kind, owner):
            if text.isdigit() and alloc.is_free(int(text) - low):
                alloc.claim(int(text) - low)
                self._record(kind, owner, text, True)
                return int(text)
        slot = alloc.allocate(owner)
        if slot is None:
            self.sink.error(f"the nodePort range is full: no port for {owner}", svc.origin.span,
                            "widen --service-node-port-range or use fewer NodePort services")
            return None
        self._record(kind, owner, str(low + slot), False)
        return low + slot


def _parse_ip(text: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _parse_net(text: str):
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        return None


def _sorted_nets(nets) -> tuple[IPNetwork, ...]:
    return tuple(sorted(nets, key=lambda n: n.version))

