"""`kspec lab up|probe|down`: the compiled cluster in namespaces, expected beside observed.

``up`` builds the lab with :mod:`kspec.lab.netns`, loads every node's
``iptables.rules`` and ``routes.batch``, starts a responder on every port a
pod declares or a service sends to, and leaves it all running (the
responders in their own sessions) with a record in :mod:`kspec.lab.state`.
``probe`` runs every check on that lab, or, when none is up under the name,
on a one-shot lab it builds and removes again.  ``down`` removes the lab.

A lab's name is ``--name`` or derived from the input paths (so ``down`` works
even when the input no longer loads); its namespaces are ``ks-<name>-sw``,
``-n-<i>``, ``-p-<j>`` and ``-out``, and nothing else is ever removed.

The checks come from :mod:`kspec.lab.expect`, the verdicts and their
rendering from :mod:`kspec.lab.report`; this module plans, builds, runs and
removes.

Refused before anything is built: ipvs mode (no IPVS in this kernel), any
address outside 198.18.0.0/15 unless allowed explicitly, any lab address or
range overlapping a network of the host (:mod:`kspec.lab.hostnet`), labs
over :data:`MAX_NAMESPACES`.
``--rules DIR`` loads an existing (perhaps edited) compile output instead
of the fresh one, so probing shows where those rules break the spec.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from kspec.diagnostics import InputError
from kspec.lab import netns, probe, state
from kspec.lab.expect import Check, Expectations, ProbeOptions, Responder, expectations
from kspec.lab.hostnet import HostNetwork, host_overlaps, read_host_networks
from kspec.lab.netns import LabCluster, LabError, LabPlan, LabUnavailable, NodeFiles
from kspec.lab.probe import ProbeResult
from kspec.lab.report import Report, Verdict, judge
from kspec.model import ResolvedCluster

PROBE_SCRIPT = str(Path(probe.__file__).resolve())
NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,15}[a-z0-9])?")
_LAB_SUFFIX = re.compile(r"sw|out|n-[0-9]+|p-[0-9]+")  # what plan() appends to a prefix
MAX_NAMESPACES = 512  # one per pod: beyond this a lab takes minutes and thousands of processes
_START_TIMEOUT = 10.0
_GIVE_UP_AFTER = 2  # timed-out tries after which a check stops trying
_PYTHON_FLAGS = ("-I", "-S")  # probe.py needs the standard library only: a third faster to start


class LabBusy(LabError):
    """The lab is already up, or being built by another command."""


# ------------------------------------------------------------- naming


def lab_name(inputs: Sequence[str]) -> str:
    """The lab name derived from the input paths: the same inputs always name the same lab."""
    paths = sorted(p if p == "-" else str(Path(p).resolve()) for p in inputs)
    return "lab-" + hashlib.sha256("\0".join(paths).encode()).hexdigest()[:6]


def check_name(name: str) -> str | None:
    """Why ``name`` cannot name a lab, or None."""
    if NAME_RE.fullmatch(name):
        return None
    return (f"lab name {name!r} is not 1-17 lowercase letters, digits and inner '-'"
            if name else "the lab name is empty")


def prefix_of(name: str) -> str:
    return f"ks-{name}-"


def owns_namespace(prefix: str, namespace: str) -> bool:
    """Whether ``namespace`` is one plan() makes under ``prefix`` (never another lab's whose prefix is longer)."""
    return namespace.startswith(prefix) and _LAB_SUFFIX.fullmatch(namespace[len(prefix):]) is not None


# ------------------------------------------------------------- the plan


def lab_plan(cluster: ResolvedCluster, prefix: str, allow_any_addresses: bool = False) -> LabPlan:
    """The builder's plan, with an outside client on a free node-network address when there is one."""
    base = netns.plan(cluster, prefix, allow_any_addresses=allow_any_addresses)
    outside = _free_address(base)
    if outside is None:
        return base
    return netns.plan(cluster, prefix, outside_ip=str(outside), allow_any_addresses=allow_any_addresses)


def _free_address(lab: LabPlan) -> ipaddress.IPv4Address | None:
    """The highest free node-network address below the router."""
    if lab.router is None:
        return None
    used = {n.ip.ip for n in lab.nodes} | {lab.router.ip}
    candidate = lab.router.ip - 1
    for _ in range(len(used) + 1):
        if candidate <= lab.node_network.network_address:
            return None
        if candidate not in used:
            return candidate
        candidate -= 1
    return None


def ipvs_refusal(cluster: ResolvedCluster) -> str | None:
    """Why this cluster cannot be built here, for ipvs mode; None in iptables mode."""
    if cluster.settings.proxy.mode != "ipvs":
        return None
    if not Path("/proc/sys/net/ipv4/vs").exists():
        return "ipvs mode cannot be built here: this kernel has no IPVS (no /proc/sys/net/ipv4/vs)"
    return "the lab loads iptables-mode rules only; ipvs mode (ipvsadm, ipset) is not built yet"


def size_refusal(lab: LabPlan) -> str | None:
    count = len(lab.namespaces)
    if count <= MAX_NAMESPACES:
        return None
    return f"the lab would need {count} network namespaces (one per pod); at most {MAX_NAMESPACES} are built"


def node_files(compiled: Iterable[tuple[str, str]]) -> dict[str, NodeFiles]:
    """The iptables.rules and routes.batch of each node, from compile_cluster's (path, text) pairs."""
    found: dict[str, dict[str, str]] = {}
    for path, text in compiled:
        parts = path.split("/")
        if len(parts) == 3 and parts[0] == "nodes" and parts[2] in ("iptables.rules", "routes.batch"):
            found.setdefault(parts[1], {})[parts[2]] = text
    return {node: NodeFiles(f.get("iptables.rules"), f.get("routes.batch")) for node, f in sorted(found.items())}


def fingerprint(lab: LabPlan, files: Mapping[str, NodeFiles]) -> str:
    """What ``probe`` compares to find out that the inputs changed since ``up``."""
    digest = hashlib.sha256(repr((lab.nodes, lab.pods, lab.outside, lab.router)).encode())
    for node in sorted(files):
        digest.update(f"\0{node}\0{files[node].iptables_rules}\0{files[node].routes_batch}".encode())
    return digest.hexdigest()


# ------------------------------------------------------------- running: responders


def start_responders(
    lab: LabPlan, responders: Sequence[Responder], lifetime: float, log: Path,
    started: list[state.ResponderProcess],
) -> None:
    """Start every responder detached (own session, no pipe kept) and wait until all listen.

    Each one is appended to ``started`` as soon as it exists, so a caller
    that is interrupted half-way knows what to stop.
    """
    procs: list[tuple[subprocess.Popen[str], Responder]] = []
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as errors:
        for r in responders:
            ns = lab.netns_of(r.where)
            argv = ["ip", "netns", "exec", ns, sys.executable, PROBE_SCRIPT, "serve", "--port", str(r.port),
                    "--name", r.name, "--proto", r.proto, "--lifetime", f"{lifetime:g}"]
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
                                    text=True, start_new_session=True)
            _CHILDREN[proc.pid] = proc
            started.append(state.ResponderProcess(proc.pid, state.process_start_time(proc.pid) or 0, ns, r.port,
                                                  r.proto, r.name))
            procs.append((proc, r))
    try:
        _wait_all_ready(procs, _START_TIMEOUT, log)
    finally:
        for proc, _ in procs:
            if proc.stdout is not None:
                proc.stdout.close()


# Popen objects of the responders this process started: kept so they are not
# reported as leaked while running, and reaped by stop_responders.
_CHILDREN: dict[int, subprocess.Popen[str]] = {}


def _wait_all_ready(procs: list[tuple[subprocess.Popen[str], Responder]], timeout: float, log: Path) -> None:
    pending = {proc.stdout: (proc, r) for proc, r in procs if proc.stdout is not None}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for stream in pending:
            sel.register(stream, selectors.EVENT_READ)
        while pending:
            left = deadline - time.monotonic()
            events = sel.select(max(0.0, left)) if left > 0 else []
            if not events:
                names = ", ".join(f"{r.where} {r.port}/{r.proto}" for _, r in pending.values())
                raise LabError(f"responders did not start within {timeout:g} s: {names}{_log_tail(log)}")
            for key, _ in events:
                _, r = pending.pop(key.fileobj)
                sel.unregister(key.fileobj)
                if key.fileobj.readline().strip() != probe.READY:
                    raise LabError(f"responder on {r.where} port {r.port}/{r.proto} did not start"
                                   f"{_log_tail(log)}")


def _log_tail(log: Path) -> str:
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return f" ({lines[-1]})" if lines else ""


def stop_responders(processes: Iterable[state.ResponderProcess]) -> int:
    """Kill the recorded responders that are still those processes; returns how many were running."""
    stopped = 0
    for p in processes:
        child = _CHILDREN.pop(p.pid, None)
        ours = child is not None and child.poll() is None  # not reaped yet: the PID is still ours
        if ours or (state.is_running(p) and _is_responder(p.pid)):
            try:
                os.kill(p.pid, 9)
                stopped += 1
            except ProcessLookupError:
                pass
        if child is not None:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
    return stopped


def _is_responder(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return PROBE_SCRIPT.encode() in argv and b"serve" in argv


# ------------------------------------------------------------- running: probes


def run_checks(lab: LabPlan, checks: Sequence[Check], options: ProbeOptions) -> tuple[Verdict, ...]:
    """Run every check (clients in parallel, each bounded in time) and judge it."""
    if not checks:
        return ()
    # the checks that wait for a timeout go first, so they overlap with the quick ones
    order = sorted(range(len(checks)), key=lambda i: checks[i].expected.outcome != "timeout")
    with ThreadPoolExecutor(max_workers=max(1, min(options.workers, len(checks)))) as pool:
        futures = {i: pool.submit(_run_check, lab, checks[i], options.timeout) for i in order}
        try:
            return tuple(futures[i].result() for i in range(len(checks)))
        except BaseException:
            for future in futures.values():
                future.cancel()
            raise


def _run_check(lab: LabPlan, check: Check, timeout: float) -> Verdict:
    argv = ["ip", "netns", "exec", lab.netns_of(check.client), sys.executable, *_PYTHON_FLAGS, PROBE_SCRIPT,
            "connect", check.ip, str(check.port), "--proto", check.proto, "--timeout", f"{timeout:g}",
            "--count", str(check.tries), "--give-up-after", str(_GIVE_UP_AFTER)]
    limit = timeout * min(check.tries, _GIVE_UP_AFTER) + check.tries * 0.5 + 10
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        return judge(check, (), f"no result within {limit:g} s")
    results = [ProbeResult.from_line(line) for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or any(r is None for r in results):
        return judge(check, (), f"exit {done.returncode}: {(done.stderr or done.stdout).strip()[:200]}")
    return judge(check, [r for r in results if r is not None])


# ------------------------------------------------------------- up, probe, down


@dataclass(frozen=True)
class Prepared:
    """Everything a lab command needs, computed before anything is built."""

    name: str
    plan: LabPlan
    files: Mapping[str, NodeFiles]
    expectations: Expectations
    fingerprint: str
    inputs: tuple[str, ...] = ()


def prepare(
    cluster: ResolvedCluster, compiled: Iterable[tuple[str, str]], name: str, inputs: Sequence[str] = (),
    options: ProbeOptions = ProbeOptions(), allow_any_addresses: bool = False, rules_dir: Path | None = None,
    host: Sequence[HostNetwork] | None = None,
) -> Prepared:
    """Plan the lab and its checks; InputError for the spec's problems, LabError/LabUnavailable for the machine's.

    ``compiled`` is compile_cluster's output; the lab loads it, or the node
    files of ``rules_dir`` (a ``kspec compile`` output, perhaps edited) while
    the expectations and the fingerprint still come from ``compiled``.
    """
    reason = ipvs_refusal(cluster)
    if reason:
        raise LabUnavailable(reason)
    lab = lab_plan(cluster, prefix_of(name), allow_any_addresses)
    reason = size_refusal(lab)
    if reason:
        raise LabUnavailable(reason)
    overlaps = host_overlaps(cluster, lab, read_host_networks() if host is None else host)
    if overlaps:
        raise InputError(overlaps)
    files = node_files(compiled)
    print_ = fingerprint(lab, files)
    if rules_dir is not None:
        files = netns.node_files_from_dir(rules_dir, lab)
    paths = tuple(p if p == "-" else str(Path(p).resolve()) for p in inputs)
    return Prepared(name, lab, files, expectations(cluster, lab, options), print_, paths)


def up(prep: Prepared, lifetime: float) -> state.LabState:
    """Build the lab, start its responders and leave them running; on any failure remove it all."""
    started: list[state.ResponderProcess] = []
    lab = LabCluster(prep.plan, files=prep.files)
    record = _new_record(prep)  # outside the try: a lab that is busy is not ours to remove
    try:
        lab.build()
        start_responders(prep.plan, prep.expectations.responders, lifetime, state.log_path(prep.name), started)
        record = replace(record, status="up", responders=tuple(started))
        state.update(record)
    except BaseException:
        stop_responders(started)
        lab.close()
        state.remove(prep.name)
        raise
    lab.detach()
    return record


def _new_record(prep: Prepared) -> state.LabState:
    """Claim the lab's name (the state file is the lock) before building anything."""
    outside = str(prep.plan.outside.ip.ip) if prep.plan.outside is not None else None
    record = state.LabState(prep.name, prep.plan.prefix, "building", prep.inputs, prep.fingerprint, outside,
                            prep.plan.namespaces, owner_pid=os.getpid(), notes=prep.expectations.notes)
    try:
        state.create(record)
    except FileExistsError:
        raise LabBusy(f"lab {prep.name} is already up or being built ({state.state_path(prep.name)})") from None
    return record


def probe_running(prep: Prepared, record: state.LabState, options: ProbeOptions) -> Report:
    """Probe a lab ``up`` left running; LabError when it is not the lab of these inputs any more."""
    if record.status != "up":
        raise LabError(f"lab {prep.name} is still being built (by process {record.owner_pid}) or its build failed")
    if record.fingerprint != prep.fingerprint:
        raise LabBusy(f"lab {prep.name} was built from other inputs or settings than these")
    missing = sorted(set(record.namespaces) - set(netns.list_namespaces(record.prefix)))
    if missing:
        raise LabError(f"lab {prep.name} is broken: namespace {missing[0]} is gone")
    dead = [r for r in record.responders if not state.is_running(r)]
    if dead:
        raise LabError(f"lab {prep.name} is broken: responder {dead[0].name} {dead[0].port}/{dead[0].proto} "
                       f"(pid {dead[0].pid}) has exited (its lifetime may be over)")
    verdicts = run_checks(prep.plan, prep.expectations.checks, options)
    return Report(prep.name, prep.plan.prefix, "running", verdicts, prep.expectations.notes, options.timeout)


def probe_once(prep: Prepared, options: ProbeOptions, lifetime: float = 600.0) -> Report:
    """Build the lab, probe it and remove it again, whatever happens meanwhile."""
    started: list[state.ResponderProcess] = []
    lab = LabCluster(prep.plan, files=prep.files)
    _new_record(prep)
    try:
        lab.build()
        start_responders(prep.plan, prep.expectations.responders, lifetime, state.log_path(prep.name), started)
        verdicts = run_checks(prep.plan, prep.expectations.checks, options)
    finally:
        stop_responders(started)
        lab.close()
        state.remove(prep.name)
    return Report(prep.name, prep.plan.prefix, "one-shot", verdicts, prep.expectations.notes, options.timeout)


@dataclass(frozen=True)
class Removed:
    namespaces: tuple[str, ...]
    responders: int
    had_record: bool
    warning: str = ""  # an unreadable record that was removed anyway


def down(name: str) -> Removed:
    """Remove everything of lab ``name``: responders, namespaces, record; idempotent."""
    prefix = prefix_of(name)
    problem: str | None = None
    try:
        record = state.read(name)
    except state.StateError as exc:
        record, problem = None, str(exc)
    stopped = stop_responders(record.responders) if record is not None else 0
    names = [n for n in netns.list_namespaces(prefix) if owns_namespace(prefix, n)]
    netns._delete_namespaces(names)
    left = [n for n in netns.list_namespaces(prefix) if owns_namespace(prefix, n)]
    if left:
        raise LabError(f"could not delete namespace {left[0]} of lab {name}")
    state.remove(name)
    return Removed(tuple(names), stopped, record is not None or problem is not None, problem or "")


def render_up(prep: Prepared, record: state.LabState) -> str:
    """What ``up`` built: one line per namespace, the responders, where the record is."""
    lab = prep.plan
    lines = [f"kspec lab up: lab {prep.name} is up ({len(lab.namespaces)} namespaces with prefix {lab.prefix})"]
    rows = [("switch", lab.switch, f"router {lab.router}" if lab.router else "")]
    rows += [("node", n.netns, f"{n.name} {n.ip}") for n in lab.nodes]
    rows += [("pod", p.netns, f"{p.namespace}/{p.name} {p.ip} on {p.node}") for p in lab.pods if not p.host_network]
    if lab.outside is not None:
        rows.append(("outside", lab.outside.netns, str(lab.outside.ip)))
    width = max(len(r[1]) for r in rows)
    lines += [f"  {kind:<8} {ns.ljust(width)}  {what}".rstrip() for kind, ns, what in rows]
    served = ", ".join(f"{r.name} {r.port}/{r.proto}" for r in record.responders) or "none"
    lines.append(f"  responders: {served}")
    lines += [f"  note: {n}" for n in record.notes]
    lines.append(f"  record: {state.state_path(prep.name)}")
    lines.append(f"  next: kspec lab probe --name {prep.name} INPUT...; kspec lab down --name {prep.name}")
    return "\n".join(lines) + "\n"
