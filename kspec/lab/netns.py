"""Build a resolved cluster as Linux network namespaces ("host-gw" style).

Topology, all of it in namespaces that are never linked to the host's own::

    <prefix>sw      switch: bridge br0, one port n<i> per node, port "out";
                    br0 holds a free node-network address, the "router"
    <prefix>n-<i>   node i: eth0 (node IP, to the switch), bridge cbr0 holding
                    the first address of each podCIDR, one port p<j> per pod;
                    ip_forward, bridge-nf-call-iptables, route_localnet = 1
    <prefix>p-<j>   pod j: eth0 (pod IP / podCIDR length, to its node's cbr0),
                    default route via the node's cbr0 address
    <prefix>out     optional outside client on the node network

Interfaces are named by index, never by model names, so every name is short
(<= 15 characters) and nothing from the input reaches an ``ip`` command line
except addresses. Veth pairs are created from inside the first namespace with
the peer placed straight into the second (``ip -n A link add X type veth peer
name Y netns B``), so no interface ever exists in the host namespace.

Routes: a node's pod-network routes come only from its ``routes.batch`` (what
a host-gw CNI installs). Its default route points at the switch's router
address, which forwards nothing (ip_forward=0), like an upstream gateway that
knows no pod: a missing pod route shows as a timed-out probe, while a packet
to a service IP without endpoints reaches kube-proxy's REJECT in FORWARD (with
no default route it would fail with "network unreachable" before any rule).

:func:`plan` is pure (a :class:`LabPlan` of namespaces, addresses and
commands, testable without root); :class:`LabCluster` runs a plan, loads each
node's ``iptables.rules`` and ``routes.batch``, runs probes and always tears
everything down.

What this machine does (checked while writing this module; kernel 6.18,
iproute2 6.1, iptables 1.8.9, Python 3.11, 2 cores, running as root):

* the kernel is built without module support (no ``/proc/modules``, no
  ``modprobe``); veth, bridge, br_netfilter, nf_tables with the xtables
  compat layer, NAT and every xt match kube-proxy uses (statistic, recent,
  comment, conntrack, addrtype, mark, set) are built in; IPVS is NOT
  (``CONFIG_IP_VS`` unset, no ``/proc/sys/net/ipv4/vs``), so ipvs-mode output
  cannot be loaded here and :class:`LabCluster` refuses it;
* ``net.bridge.bridge-nf-call-iptables`` is per network namespace (setting it
  in one namespace leaves the host's value alone) and starts at 1 in a new
  namespace; it is still set explicitly;
* ``iptables`` is the nf_tables flavour (``update-alternatives``: iptables-nft,
  priority 20, over iptables-legacy, priority 10); both work inside a
  namespace, :class:`LabCluster` takes the restore binary as a parameter;
* ``ip -batch`` runs ``netns add`` and returns to the host namespace after
  each one, so one process creates every namespace;
* a bridge with STP off forwards as soon as a port is up (no 15 s delay).

Only addresses in 198.18.0.0/15 (RFC 2544, reserved for benchmarking) are
accepted unless ``allow_any_addresses=True``: a lab must never be able to
shadow a real network, even by mistake. The lab builds IPv4 only.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import selectors
import shutil
import subprocess
import sys
import weakref
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from kspec.diagnostics import Diagnostic, InputError, Span, error
from kspec.lab import probe
from kspec.lab.probe import ProbeResult
from kspec.model import ResolvedCluster

LAB_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
# The switch is a plain L2 switch whose own address is a router that routes
# nothing: like a real upstream gateway, it swallows what no node claims.
SWITCH_SYSCTLS = ("net.ipv4.ip_forward=0", "net.bridge.bridge-nf-call-iptables=0")
NODE_SYSCTLS = (
    "net.ipv4.ip_forward=1",
    "net.bridge.bridge-nf-call-iptables=1",
    "net.ipv4.conf.all.route_localnet=1",
)
_PREFIX_RE = re.compile(r"ks-[a-z0-9][a-z0-9-]{0,16}-")
_BR_NETFILTER = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
_IPVS = Path("/proc/sys/net/ipv4/vs")
_COMMAND_TIMEOUT = 30.0
_LAB_SPAN = Span.whole("<lab>")


class LabError(Exception):
    """Building, loading or probing the lab failed."""


class LabUnavailable(LabError):
    """This machine cannot run the lab (not root, no ``ip netns``, missing kernel feature)."""


def new_prefix(tag: str = "") -> str:
    """A fresh namespace prefix such as ``ks-3f9a1c-`` (``ks-test-3f9a-`` with tag="test")."""
    return f"ks-{tag}-{secrets.token_hex(2)}-" if tag else f"ks-{secrets.token_hex(3)}-"


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class NodePlan:
    name: str
    netns: str
    ip: ipaddress.IPv4Interface  # with the node network's prefix length
    switch_port: str  # its veth end inside the switch namespace
    bridge: tuple[ipaddress.IPv4Interface, ...]  # cbr0: first address of each podCIDR


@dataclass(frozen=True, slots=True)
class PodPlan:
    namespace: str
    name: str
    node: str
    netns: str  # its own namespace, or its node's for hostNetwork pods
    ip: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address | None  # None for hostNetwork pods
    bridge_port: str | None  # its veth end on the node's cbr0

    @property
    def host_network(self) -> bool:
        return self.bridge_port is None


@dataclass(frozen=True, slots=True)
class OutsidePlan:
    netns: str
    ip: ipaddress.IPv4Interface
    switch_port: str


@dataclass(frozen=True, slots=True)
class Command:
    """One process to run: argv plus its standard input."""

    argv: tuple[str, ...]
    stdin: str = ""


@dataclass(frozen=True)
class LabPlan:
    prefix: str
    switch: str
    node_network: ipaddress.IPv4Network
    nodes: tuple[NodePlan, ...]
    pods: tuple[PodPlan, ...]
    outside: OutsidePlan | None = None
    router: ipaddress.IPv4Interface | None = None  # on the switch's br0: every node's default gateway
    skipped: tuple[str, ...] = ()  # pods that cannot exist in a lab, and why

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace the plan creates, switch first."""
        names = [self.switch, *(n.netns for n in self.nodes)]
        names += [p.netns for p in self.pods if not p.host_network]
        if self.outside is not None:
            names.append(self.outside.netns)
        return tuple(names)

    @cached_property
    def _places(self) -> dict[str, str]:
        places = {"switch": self.switch}
        places.update((f"node/{n.name}", n.netns) for n in self.nodes)
        places.update((f"pod/{p.namespace}/{p.name}", p.netns) for p in self.pods)
        if self.outside is not None:
            places["outside"] = self.outside.netns
        return places

    def netns_of(self, where: str) -> str:
        """The namespace of ``node/NAME``, ``pod/NS/NAME``, ``outside`` or ``switch``."""
        try:
            return self._places[where]
        except KeyError:
            raise LabError(f"no {where!r} in this lab (expected node/NAME, pod/NS/NAME, outside or switch)") from None

    def commands(self) -> tuple[Command, ...]:
        """The ``ip``/``sysctl`` processes that build the plan, in order."""
        cmds = [Command(("ip", "-batch", "-"), _lines(f"netns add {ns}" for ns in self.namespaces))]
        cmds.append(Command(("ip", "netns", "exec", self.switch, "sysctl", "-q", "-w", *SWITCH_SYSCTLS)))
        switch = ["link set lo up", "link add br0 type bridge", "link set br0 up"]
        if self.router is not None:
            switch.append(f"addr add {self.router} dev br0")
        ports = [(n.switch_port, n.netns) for n in self.nodes]
        if self.outside is not None:
            ports.append((self.outside.switch_port, self.outside.netns))
        for port, peer_ns in ports:
            switch += _port(port, "eth0", peer_ns, "br0", hairpin=False)
        cmds.append(Command(("ip", "-n", self.switch, "-batch", "-"), _lines(switch)))
        by_node: dict[str, list[PodPlan]] = {}
        for pod in self.pods:
            if not pod.host_network:
                by_node.setdefault(pod.node, []).append(pod)
        for node in self.nodes:
            cmds.append(Command(("ip", "netns", "exec", node.netns, "sysctl", "-q", "-w", *NODE_SYSCTLS)))
            lines = ["link set lo up", f"addr add {node.ip} dev eth0", "link set eth0 up"]
            lines += ["link add cbr0 type bridge"]
            lines += [f"addr add {gw} dev cbr0" for gw in node.bridge]
            lines += ["link set cbr0 up"]
            if self.router is not None:
                lines.append(f"route add default via {self.router.ip} dev eth0")
            for pod in by_node.get(node.name, ()):
                lines += _port(pod.bridge_port or "", "eth0", pod.netns, "cbr0", hairpin=True)
            cmds.append(Command(("ip", "-n", node.netns, "-batch", "-"), _lines(lines)))
        for pod in self.pods:
            if not pod.host_network:
                lines = ["link set lo up", f"addr add {pod.ip} dev eth0", "link set eth0 up"]
                lines.append(f"route add default via {pod.gateway} dev eth0")
                cmds.append(Command(("ip", "-n", pod.netns, "-batch", "-"), _lines(lines)))
        if self.outside is not None:
            lines = ["link set lo up", f"addr add {self.outside.ip} dev eth0", "link set eth0 up"]
            cmds.append(Command(("ip", "-n", self.outside.netns, "-batch", "-"), _lines(lines)))
        return tuple(cmds)


def _lines(lines: Iterable[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


def _port(name: str, peer: str, peer_ns: str, bridge: str, hairpin: bool) -> list[str]:
    """A veth whose ``name`` end joins ``bridge`` here and whose ``peer`` end is born in ``peer_ns``."""
    lines = [f"link add {name} type veth peer name {peer} netns {peer_ns}", f"link set {name} master {bridge}"]
    if hairpin:  # kubelet's hairpin-veth mode: a pod may reach itself through its service
        lines.append(f"link set {name} type bridge_slave hairpin on")
    lines.append(f"link set {name} up")
    return lines


def plan(
    cluster: ResolvedCluster,
    prefix: str,
    outside_ip: str | None = None,
    allow_any_addresses: bool = False,
) -> LabPlan:
    """Lay out ``cluster`` as namespaces named ``<prefix>...``; pure, raises InputError.

    Refuses any node, pod, podCIDR, service or endpoint address outside
    198.18.0.0/15 unless ``allow_any_addresses``. Pods without a node or an
    IPv4 address cannot exist in a lab and are listed in ``skipped``.
    """
    problems: list[Diagnostic] = []
    if not _PREFIX_RE.fullmatch(prefix):
        problems.append(error(f"lab prefix {prefix!r} is not of the form ks-NAME-",
                              _LAB_SPAN, "use new_prefix(), e.g. 'ks-3f9a1c-' (lowercase, at most 20 characters)"))
    if not allow_any_addresses:
        problems += _foreign_addresses(cluster)
    outside = _parse_outside(outside_ip, problems)
    if outside is not None and not allow_any_addresses:
        problems += _lab_address_problems("outside", (outside,), _LAB_SPAN)
    if problems:
        raise InputError(problems)

    nodes, node_ips = _nodes(cluster, prefix, problems)
    network = _node_network(cluster, [*node_ips, *([outside] if outside else [])])
    nodes = tuple(
        NodePlan(n.name, n.netns, ipaddress.IPv4Interface(f"{n.ip.ip}/{network.prefixlen}"), n.switch_port, n.bridge)
        for n in nodes
    )
    if outside is not None and outside in node_ips:
        problems.append(error(f"outside address {outside} is also a node's address", _LAB_SPAN,
                              "pick an unused address of the node network"))
    pods, skipped = _pods(cluster, prefix, {n.name: n for n in nodes}, problems)
    if problems:
        raise InputError(problems)
    outside_plan = None
    if outside is not None:
        outside_plan = OutsidePlan(f"{prefix}out", ipaddress.IPv4Interface(f"{outside}/{network.prefixlen}"), "out")
    router = _router(network, {*node_ips, *([outside] if outside else [])})
    return LabPlan(prefix, f"{prefix}sw", network, nodes, pods, outside_plan, router, skipped)


def _router(network: ipaddress.IPv4Network, used: set[ipaddress.IPv4Address]) -> ipaddress.IPv4Interface | None:
    """The highest free host address of the node network, or None when every one is taken.

    Nodes need a default route for kube-proxy's filter rules to see packets to
    a service IP that no DNAT rewrote (a REJECT for a service without
    endpoints sits in FORWARD/OUTPUT, after routing); without one such packets
    would fail with "network unreachable" before any rule runs.
    """
    if network.num_addresses < 4:
        return None
    candidate = network.broadcast_address - 1
    for _ in range(len(used) + 1):
        if candidate == network.network_address:
            return None
        if candidate not in used:
            return ipaddress.IPv4Interface(f"{candidate}/{network.prefixlen}")
        candidate -= 1
    return None


def _parse_outside(outside_ip: str | None, problems: list[Diagnostic]) -> ipaddress.IPv4Address | None:
    if outside_ip is None:
        return None
    try:
        outside = ipaddress.ip_address(outside_ip)
    except ValueError:
        outside = None
    if not isinstance(outside, ipaddress.IPv4Address):
        problems.append(error(f"outside address {outside_ip!r} is not an IPv4 address", _LAB_SPAN,
                              "give one address of the node network, e.g. 198.18.0.100"))
        return None
    return outside


def _lab_address_problems(
    what: str, values: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address | ipaddress.IPv4Network | ipaddress.IPv6Network],
    span: Span,
) -> Iterator[Diagnostic]:
    for value in values:
        inside = value.subnet_of(LAB_RANGE) if isinstance(value, ipaddress.IPv4Network) else value in LAB_RANGE
        if not inside:
            yield error(f"{what} address {value} is outside {LAB_RANGE}, the only range the lab may use", span,
                        "renumber the cluster into 198.18.0.0/15 (RFC 2544 benchmarking addresses), "
                        "or allow any addresses explicitly")


def _foreign_addresses(cluster: ResolvedCluster, shown: int = 20) -> list[Diagnostic]:
    """The addresses the lab would configure or rules could send to, outside 198.18.0.0/15.

    The first ``shown`` are reported one by one, the rest as a count: a
    cluster numbered elsewhere would otherwise yield one error per pod.
    """
    found = _all_foreign_addresses(cluster)
    if len(found) <= shown:
        return found
    rest = error(f"... and {len(found) - shown} more addresses outside {LAB_RANGE}", _LAB_SPAN,
                 "renumber the whole cluster into 198.18.0.0/15")
    return [*found[:shown], rest]


def _all_foreign_addresses(cluster: ResolvedCluster) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    for node in cluster.nodes:
        found += _lab_address_problems(f"node {node.name}", (*node.ips, *node.pod_cidrs), node.origin.span)
    for pod in cluster.pods:
        found += _lab_address_problems(f"pod {pod.namespace}/{pod.name}", pod.ips, pod.origin.span)
    for svc in cluster.services:
        addrs = (*svc.cluster_ips, *svc.external_ips, *svc.load_balancer_ips)
        found += _lab_address_problems(f"service {svc.namespace}/{svc.name}", addrs, svc.origin.span)
    for key in sorted(cluster.endpoints):
        svc = cluster.services_by_key.get(key)
        span = svc.origin.span if svc is not None else _LAB_SPAN
        backends = sorted({b.ip for p in cluster.endpoints[key].ports for b in p.backends}, key=str)
        found += _lab_address_problems(f"endpoint of service {key[0]}/{key[1]}", backends, span)
    return found


def _nodes(cluster: ResolvedCluster, prefix: str, problems: list[Diagnostic]) -> tuple[list[NodePlan], list[ipaddress.IPv4Address]]:
    nodes: list[NodePlan] = []
    ips: list[ipaddress.IPv4Address] = []
    for i, node in enumerate(cluster.nodes):
        ip = next((a for a in node.ips if isinstance(a, ipaddress.IPv4Address)), None)
        if ip is None:
            problems.append(error(f"node {node.name} has no IPv4 address", node.origin.span,
                                  "the lab builds IPv4 only: give the node an IPv4 address"))
            continue
        bridge = tuple(
            ipaddress.IPv4Interface(f"{c.network_address + 1}/{c.prefixlen}")
            for c in node.pod_cidrs
            if isinstance(c, ipaddress.IPv4Network) and c.num_addresses > 2
        )
        nodes.append(NodePlan(node.name, f"{prefix}n-{i}", ipaddress.IPv4Interface(ip), f"n{i}", bridge))
        ips.append(ip)
    return nodes, ips


def _node_network(cluster: ResolvedCluster, ips: list[ipaddress.IPv4Address]) -> ipaddress.IPv4Network:
    """The smallest network holding every node (and the outside) address, widened to a /24 when that is free.

    The model carries node addresses but no node-network mask; a /24 looks like
    a real node network, but is used only when it overlaps no pod or service
    range, which would otherwise become on-link on every node.
    """
    if not ips:
        return ipaddress.IPv4Network("198.18.0.0/24")
    low, high = int(min(ips)), int(max(ips))
    exact = ipaddress.IPv4Network((low, 32 - (low ^ high).bit_length()), strict=False)
    if exact.prefixlen <= 24:
        return exact
    wide = exact.supernet(new_prefix=24)
    taken = [*cluster.settings.pod_cidrs, *cluster.settings.service_cidrs]
    taken += [c for n in cluster.nodes for c in n.pod_cidrs]
    if any(isinstance(c, ipaddress.IPv4Network) and c.overlaps(wide) for c in taken):
        return exact
    return wide


def _pods(
    cluster: ResolvedCluster, prefix: str, nodes: Mapping[str, NodePlan], problems: list[Diagnostic]
) -> tuple[tuple[PodPlan, ...], tuple[str, ...]]:
    pods: list[PodPlan] = []
    skipped: list[str] = []
    for pod in cluster.pods:
        label = f"pod {pod.namespace}/{pod.name}"
        node = nodes.get(pod.node) if pod.node is not None else None
        if node is None:
            skipped.append(f"{label}: not on any node of the lab")
            continue
        if pod.host_network:
            pods.append(PodPlan(pod.namespace, pod.name, node.name, node.netns, node.ip, None, None))
            continue
        ip = next((a for a in pod.ips if isinstance(a, ipaddress.IPv4Address)), None)
        if ip is None:
            skipped.append(f"{label}: no IPv4 address")
            continue
        gateway = next((gw for gw in node.bridge if ip in gw.network), None)
        if gateway is None:
            problems.append(error(f"{label} address {ip} is not in a podCIDR of node {node.name}",
                                  pod.origin.span, "give the pod an address from its node's podCIDR"))
            continue
        if ip == gateway.ip:
            problems.append(error(f"{label} address {ip} is node {node.name}'s bridge address", pod.origin.span,
                                  "the first address of a podCIDR belongs to the node's cbr0 bridge"))
            continue
        j = len(pods)
        iface = ipaddress.IPv4Interface(f"{ip}/{gateway.network.prefixlen}")
        pods.append(PodPlan(pod.namespace, pod.name, node.name, f"{prefix}p-{j}", iface, gateway.ip, f"p{j}"))
    return tuple(pods), tuple(skipped)


# ------------------------------------------------------- running the plan


@dataclass(frozen=True, slots=True)
class NodeFiles:
    """What one node loads: iptables-restore input and ``ip -batch`` routes (None: nothing)."""

    iptables_rules: str | None = None
    routes_batch: str | None = None


def node_files_from_dir(directory: Path, lab: LabPlan) -> dict[str, NodeFiles]:
    """Read ``DIR/nodes/<node>/{iptables.rules,routes.batch}`` for every node of the plan.

    Refuses ipvs-mode output (``ipvs.rules``): loading only its iptables part
    would build a lab that silently lacks every virtual server.
    """
    files: dict[str, NodeFiles] = {}
    for node in lab.nodes:
        if "/" in node.name or node.name in (".", ".."):
            raise LabError(f"node name {node.name!r} cannot name a folder")
        folder = directory / "nodes" / node.name
        if not folder.is_dir():
            raise LabError(f"{folder} does not exist: compile the cluster into {directory} first")
        if (folder / "ipvs.rules").exists():
            if not _IPVS.exists():
                raise LabUnavailable("ipvs-mode rules need IPVS, and this kernel has none (no /proc/sys/net/ipv4/vs)")
            raise LabUnavailable("the lab loads iptables-mode output only; ipvs mode (ipvsadm, ipset) is not built yet")
        files[node.name] = NodeFiles(_read(folder / "iptables.rules"), _read(folder / "routes.batch"))
    return files


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def check_environment(iptables_restore: str = "iptables-restore") -> None:
    """Raise LabUnavailable, with the reason, unless this process can build labs."""
    if sys.platform != "linux":
        raise LabUnavailable("the lab needs Linux network namespaces")
    if os.geteuid() != 0:
        raise LabUnavailable("the lab needs root (creating network namespaces)")
    for tool in ("ip", "sysctl", iptables_restore):
        if shutil.which(tool) is None:
            raise LabUnavailable(f"{tool} is not installed")
    if not _BR_NETFILTER.exists() and shutil.which("modprobe"):
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True, timeout=_COMMAND_TIMEOUT, check=False)
    if not _BR_NETFILTER.exists():
        raise LabUnavailable("br_netfilter is not available (no net.bridge.bridge-nf-call-iptables)")
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=_COMMAND_TIMEOUT)
    if done.returncode != 0:
        raise LabUnavailable(f"`ip netns` does not work here: {done.stderr.strip()}")


def _run(cmd: Command, what: str = "", timeout: float = _COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run one command; a failure names the step (``what``), the command and its error output."""
    label = what or " ".join(cmd.argv)
    try:
        done = subprocess.run(cmd.argv, input=cmd.stdin, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LabError(f"{label} did not finish in {timeout:g} s") from None
    if done.returncode != 0:
        raise LabError(f"{label} failed ({' '.join(cmd.argv)}, exit {done.returncode}): {done.stderr.strip()}")
    return done


def list_namespaces(prefix: str) -> list[str]:
    """Existing network namespaces whose name starts with ``prefix``."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=_COMMAND_TIMEOUT)
    names = (line.split()[0] for line in done.stdout.splitlines() if line.strip())
    return sorted(n for n in names if n.startswith(prefix))


def _delete_namespaces(names: list[str]) -> None:
    """Kill what still runs in them, then delete them (``-force``: go on past a missing one)."""
    if not names:
        return
    for ns in names:
        done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=_COMMAND_TIMEOUT)
        for pid in done.stdout.split():
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
    subprocess.run(["ip", "-force", "-batch", "-"], input=_lines(f"netns del {ns}" for ns in names),
                   capture_output=True, text=True, timeout=_COMMAND_TIMEOUT)


def cleanup(prefix: str) -> list[str]:
    """Delete every namespace left behind under ``prefix`` (``ks-NAME-``); returns their names."""
    if not _PREFIX_RE.fullmatch(prefix):
        raise LabError(f"refusing to clean up by prefix {prefix!r}: expected ks-NAME-")
    names = list_namespaces(prefix)
    _delete_namespaces(names)
    return names


def _teardown(procs: list[subprocess.Popen[str]], namespaces: list[str]) -> None:
    """Stop our responders, then delete our namespaces; runs once (close, GC or exit).

    weakref.finalize calls it at interpreter exit too, so a lab that was never
    closed does not outlive the process that built it.
    """
    try:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
    finally:
        procs.clear()
        _delete_namespaces(sorted(set(namespaces) & set(list_namespaces(""))))
        namespaces.clear()


_PROBE_SCRIPT = str(Path(probe.__file__).resolve())


class LabCluster:
    """Run a :class:`LabPlan`: ``with LabCluster(plan, rules_dir) as lab: lab.connect(...)``.

    Entering builds every namespace and loads each node's files; leaving
    (normally, on an exception or on KeyboardInterrupt) kills the responders
    and deletes every namespace it created. A finalizer does the same at
    interpreter exit for a lab that was never closed.
    """

    def __init__(
        self,
        plan: LabPlan,
        rules_dir: Path | None = None,
        files: Mapping[str, NodeFiles] | None = None,
        iptables_restore: str = "iptables-restore",
    ) -> None:
        self.plan = plan
        self._rules_dir = rules_dir
        self._files = dict(files or {})
        self._iptables_restore = iptables_restore
        self._procs: list[subprocess.Popen[str]] = []
        self._namespaces: list[str] = []
        self._finalizer = weakref.finalize(self, _teardown, self._procs, self._namespaces)

    def __enter__(self) -> "LabCluster":
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> None:
        check_environment(self._iptables_restore)
        files = dict(self._files)
        if self._rules_dir is not None:
            files = {**node_files_from_dir(self._rules_dir, self.plan), **files}
        unknown = sorted(set(files) - {n.name for n in self.plan.nodes})
        if unknown:
            raise LabError(f"files given for nodes not in the lab: {', '.join(unknown)}")
        leftovers = list_namespaces(self.plan.prefix)
        if leftovers:
            raise LabError(f"namespaces with prefix {self.plan.prefix} already exist: {', '.join(leftovers)}")
        commands = self.plan.commands()
        self._namespaces.extend(self.plan.namespaces)  # registered first: a half-built lab is torn down too
        for cmd in commands:
            _run(cmd)
        for node in self.plan.nodes:
            self.load(node.name, files.get(node.name, NodeFiles()))

    def load(self, node: str, files: NodeFiles) -> None:
        """Put one node's routes and iptables rules in place (inside its namespace only)."""
        ns = self.plan.netns_of(f"node/{node}")
        if files.routes_batch:
            _run(Command(("ip", "-n", ns, "-batch", "-"), files.routes_batch), f"loading routes.batch of node {node}")
        if files.iptables_rules:
            _run(Command(("ip", "netns", "exec", ns, self._iptables_restore), files.iptables_rules),
                 f"loading iptables.rules of node {node}")

    def close(self) -> None:
        """Tear everything down; safe to call twice."""
        self._finalizer()

    def detach(self) -> None:
        """Leave the built lab running after this object and this process are gone.

        ``kspec lab up`` hands the lab over to a later ``kspec lab down``, which
        removes it by prefix; after this, :meth:`close` does nothing.
        """
        self._finalizer.detach()

    def exec(self, where: str, argv: list[str], timeout: float = 5) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``where`` (``node/NAME``, ``pod/NS/NAME``, ``outside``); output captured."""
        ns = self.plan.netns_of(where)
        try:
            return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LabError(f"{' '.join(argv)} in {where} did not finish in {timeout:g} s") from None

    def start_responder(
        self, where: str, port: int, proto: str = "tcp", name: str | None = None, startup_timeout: float = 5
    ) -> None:
        """Answer on ``port`` in ``where`` with "NAME PEER_IP:PEER_PORT" (NAME defaults to ``ns/pod``)."""
        ns = self.plan.netns_of(where)
        label = name or where.split("/", 1)[-1]
        _check_probe(proto, label)
        argv = ["ip", "netns", "exec", ns, sys.executable, _PROBE_SCRIPT, "serve", "--port", str(port),
                "--name", label, "--proto", proto]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        self._procs.append(proc)
        if not _wait_ready(proc, startup_timeout):
            proc.kill()
            _, err = proc.communicate(timeout=5)
            raise LabError(f"responder on {where} port {port}/{proto} did not start: {err.strip()}")

    def connect(self, where: str, ip: str, port: int, proto: str = "tcp", timeout: float = 2) -> ProbeResult:
        """One real connection (or datagram) from ``where`` to ``ip:port``; what came back."""
        _check_probe(proto)
        argv = [sys.executable, _PROBE_SCRIPT, "connect", ip, str(port), "--proto", proto, "--timeout", str(timeout)]
        done = self.exec(where, argv, timeout=timeout + 10)
        result = ProbeResult.from_client(done.returncode, done.stdout, done.stderr)
        if result is None:
            raise LabError(f"probe client in {where} failed ({done.returncode}): {done.stderr.strip()}")
        return result


def _check_probe(proto: str, name: str = "x") -> None:
    if proto not in probe.PROTOCOLS:
        raise LabError(f"probe protocol {proto!r} is not one of {', '.join(probe.PROTOCOLS)} (SCTP is not probed)")
    if not name or any(c.isspace() for c in name):
        raise LabError(f"responder name {name!r} must be non-empty and without spaces")


def _wait_ready(proc: subprocess.Popen[str], timeout: float) -> bool:
    """True once the responder printed READY; False if it died or was too slow."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return False
    return proc.stdout.readline().strip() == probe.READY
