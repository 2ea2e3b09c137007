"""Turning what a KS2xx walk found into findings: the problem record, the per-invariant verdict, and
the witnesses, messages and locations that go with a problem.

The iptables checker and the IPVS checker report through the same catalogue and must word, locate,
group and cap their findings identically, so they build them with these helpers.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Protocol, Sequence

from kspec.model import Backend
from kspec.verify import chains
from kspec.verify.catalogue import CATALOGUE
from kspec.verify.chains import Hooks, Leaf, Packet
from kspec.verify.encode import DPORT, DST, PROTO, SPORT, SRC, Intervals, PacketVars, member
from kspec.verify.leaf_cover import as_set
from kspec.verify.node_context import NodeContext
from kspec.verify.result import PROVED, UNKNOWN, VIOLATED, Finding, Location, Verdict
from kspec.verify.spans import located, suppression

SPORT_WITNESS = 40000
MAX_FINDINGS_PER_SUBJECT = 4


class Question(Protocol):
    """What these helpers read of a per-service-port question; each checker has its own question type."""

    invariant: str
    spec: Any
    what: str
    origin: str
    dst: int
    dport: int
    sources: str


@dataclass
class Problem:
    """One thing a check found wrong (or could not decide), before grouping into a Verdict; mutable so a
    checker can downgrade it to undecided or re-file it under another invariant."""

    invariant: str
    key: tuple
    message: str
    locations: tuple[Location, ...] = ()
    witness: str = ""
    subject: str = ""
    unknown: str = ""  # non-empty: undecided, for this reason
    suppressed: str | None = None
    details: tuple[str, ...] = ()


def build_verdict(invariant: str, problems: list[Problem], checked: int, subjects: Iterable[str],
                  seconds: float) -> Verdict:
    grouped: dict[tuple, Problem] = {}
    for p in problems:
        grouped.setdefault(p.key, p)
    violated = [p for p in grouped.values() if not p.unknown]
    undecided = [p for p in grouped.values() if p.unknown]
    by_subject: dict[str, list[Problem]] = defaultdict(list)
    for p in violated:
        by_subject[p.subject].append(p)
    findings = []
    for subject, items in by_subject.items():
        for k, p in enumerate(items[:MAX_FINDINGS_PER_SUBJECT]):
            details = p.details
            if k == MAX_FINDINGS_PER_SUBJECT - 1 and len(items) > MAX_FINDINGS_PER_SUBJECT:
                details += (f"{len(items) - MAX_FINDINGS_PER_SUBJECT} more findings about {subject} are not shown; "
                            "they have the same cause more often than not",)
            findings.append(Finding(invariant, p.message, p.locations, p.witness, CATALOGUE[invariant].fix,
                                    subject, p.suppressed, details))
    findings.sort(key=Finding.sort_key)
    unique_subjects = tuple(dict.fromkeys(subjects))
    if findings:
        return Verdict(invariant, VIOLATED, tuple(findings), checked, unique_subjects, seconds=seconds)
    if undecided:
        reasons = sorted({p.unknown for p in undecided})
        reason = "; ".join(reasons[:3]) + (f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else "")
        return Verdict(invariant, UNKNOWN, (), checked, unique_subjects, reason=reason, seconds=seconds)
    return Verdict(invariant, PROVED, (), checked, unique_subjects, seconds=seconds)


def verb(verdict: str) -> str:
    return {"DROP": "dropped", "REJECT": "rejected", "ACCEPT": "accepted", "UNKNOWN": "handled by an unmodelled target"
            }.get(verdict, verdict)


def deciding_line(leaf: Leaf) -> int:
    """The rule that decided the leaf: its DNAT, else the last refusal or source rewrite (0: none fired)."""
    steps = leaf.step_list()
    if leaf.dnat is not None:
        return next((s.line for s in steps if s.action.startswith("DNAT")), 0)
    for step in reversed(steps):
        if step.action.startswith(("DROP", "REJECT", "MASQUERADE", "SNAT", "policy")) or "not modelled" in step.action:
            return step.line
    return 0


def describe_question(ctx: NodeContext, q: Question) -> str:
    return (f"{ctx.point_text(q.spec.proto, q.dst, q.dport)} ({q.spec.label} {q.spec.port_label} {q.what}) "
            f"from {q.sources}")


def service_problem(ctx: NodeContext, q: Question, key: tuple, message: str, witness: str = "",
                    extra: Sequence[Location] = (), unknown: str = "", details: Sequence[str] = ()) -> Problem:
    svc = q.spec.service
    locations = (located(svc.origin, q.spec.label, "service.ports"), *extra)
    return Problem(q.invariant, (q.invariant, q.spec.name, q.spec.proto, q.what) + key, message, locations, witness,
                   q.spec.label, unknown, suppression(svc.annotations, q.invariant), tuple(details))


def packet_values(ctx: NodeContext, packet: Packet) -> tuple[int, int]:
    return int(ipaddress.ip_address(packet.src)), packet.sport


def opaque_reason(opaque: Sequence[tuple[int, str, bool]], leaf: Leaf) -> str:
    if opaque:
        line, text, value = opaque[0]
        return f"the outcome depends on rule line {line} ({text}), which kspec does not model"
    return "a rule target kspec does not model decides the outcome"


def witness_packet(ctx: NodeContext, q: Question, part: Intervals, leaf: Leaf) -> Packet:
    preferred = ctx.pod_ips if q.origin == "pod" else ctx.outside_witnesses if q.origin == "outside" else []
    src = part.pick(preferred)
    sport = as_set(leaf.domain(SPORT)).pick([SPORT_WITNESS])
    return Packet(chains.protocol_name(q.spec.proto), ctx.addr(src), sport, ctx.addr(q.dst), q.dport)


def replay_leaf(ctx: NodeContext, origin: str, iif: str | None, packet: Packet, leaf: Leaf) -> tuple[str, str]:
    """Replay a leaf concretely; (rendered trace, a problem if the replay disagrees with the leaf)."""
    decisions = [value for _, _, value in leaf.pick_list()]
    trace = chains.trace_packet(ctx.program, Hooks(origin, (), iif), packet, decisions)
    expected_dnat = chains.dnat_text(leaf.dnat, ctx.family)
    problem = ""
    if trace.verdict != leaf.verdict or trace.dnat != expected_dnat or trace.snat != leaf.snat:
        problem = (f"internal check failed: replaying {packet} gave {trace.verdict} {trace.dnat or ''}, "
                   f"the walk said {leaf.verdict} {expected_dnat or ''}")
    return witness_text(trace), problem


def witness_text(trace: chains.Trace) -> str:
    """The trace without the hooks that only passed through (jumps that returned, RETURN)."""
    significant = ("DNAT", "SNAT", "MASQUERADE", "MARK", "DROP", "REJECT", "ACCEPT", "policy")
    keep = []
    for hook in dict.fromkeys((s.table, s.hook) for s in trace.steps):
        steps = [s for s in trace.steps if (s.table, s.hook) == hook]
        if any(s.action.startswith(significant) or "not modelled" in s.action for s in steps):
            keep += steps
    return chains.render_steps(keep, trace.verdict, trace.dnat, trace.snat)


def endpoint_list(ctx: NodeContext, endpoints: Iterable[tuple[int, int]], limit: int = 6) -> str:
    items = sorted(endpoints)
    text = ", ".join(ctx.endpoint_text(e) for e in items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


def backend_label(backend: Backend) -> str:
    if backend.pod is not None:
        return f"pod {backend.pod[0]}/{backend.pod[1]}"
    return f"endpoint on {backend.node}" if backend.node else "endpoint"


def endpoint_locations(ctx: NodeContext, backend: Backend | None) -> list[Location]:
    if backend is None or backend.pod is None:
        return []
    pod = ctx.cluster.pods_by_key.get(backend.pod)
    return [located(pod.origin, f"pod {pod.namespace}/{pod.name}", "pod.ip")] if pod is not None else []


def pod_key(ctx: NodeContext, leaf: Leaf) -> tuple:
    return (leaf.verdict, chains.dnat_text(leaf.dnat, ctx.family), leaf.snat, deciding_line(leaf))


def witness_preferences(ctx: NodeContext, packet: PacketVars) -> list[list]:
    """Nicer witnesses to try first: real pods' addresses, then any TCP packet to port 80."""
    tcp = [packet.fields[PROTO] == 6, packet.fields[SPORT] == SPORT_WITNESS, packet.fields[DPORT] == 80]
    pods = sorted(ctx.index.pod_ips[ctx.family])[:64]
    if not pods:
        return [tcp]
    addresses = Intervals((ip, ip) for ip in pods)
    return [tcp + [member(packet.fields[SRC], addresses), member(packet.fields[DST], addresses)], tcp]


def pod_problem(ctx: NodeContext, label: str, iif: str | None, values: tuple[int, ...], leaf: Leaf) -> Problem:
    packet = Packet(chains.protocol_name(values[PROTO]), ctx.addr(values[SRC]), values[SPORT],
                    ctx.addr(values[DST]), values[DPORT])
    trace_text, replay_problem = replay_leaf(ctx, "pod", iif, packet, leaf)
    if leaf.dnat is not None:
        what = f"has its destination rewritten to {chains.dnat_text(leaf.dnat, ctx.family)}"
    elif leaf.snat is not None:
        what = f"has its source rewritten ({leaf.snat})"
    else:
        what = f"is {verb(leaf.verdict)}"
    line = deciding_line(leaf)
    src_pod = ctx.index.pods_by_ip.get(values[SRC])
    dst_pod = ctx.index.pods_by_ip.get(values[DST])
    names = [f"pod {p.namespace}/{p.name}" for p in (src_pod, dst_pod) if p is not None]
    locations = [ctx.rule_location(line)] if line else []
    locations += [located(p.origin, f"pod {p.namespace}/{p.name}", "pod.ip") for p in (src_pod, dst_pod) if p]
    locations.append(located(ctx.node.origin, f"node {ctx.node.name}", "node.podCIDR"))
    between = f" ({' to '.join(names)})" if names else ""
    message = f"pod-to-pod traffic from {label} through node {ctx.node.name} {what}{between}"
    return Problem("KS201", ("KS201", "rules") + pod_key(ctx, leaf), message, tuple(locations),
                   f"{packet}: {trace_text}", f"node {ctx.node.name}", replay_problem)
