"""Walk packets through parsed iptables chains, the way netfilter does.

One walker, three ways to decide a match:

* **concrete** (:func:`trace_packet`): one packet, one answer per
  ``statistic``/``recent`` rule (given, or "does not match"); returns the
  trace of every rule that fired, with its line number;
* **refine** (:func:`explore`): some fields are *sets* of values (e.g. the
  source is "any address in this podCIDR"); a match that splits a set forks
  the walk into both halves, exactly (interval arithmetic), and every
  ``statistic``/``recent`` rule forks into "matches" / "does not match"
  (a zero-probability branch is cut). The leaves are every possible
  outcome, each with the exact set of packets that reach it;
* **symbolic** (:func:`explore` with ``symbolic=True``): the same walk, and
  every split is also recorded as a condition on the original packet
  (:func:`leaf_formula`), so Z3 can confirm a leaf independently of the
  interval arithmetic and produce a concrete witness packet for it.

The hook order is netfilter's: a packet arriving on an interface (from a
pod, or from outside) passes raw/mangle/nat PREROUTING, the routing decision
(is the destination one of the node's own addresses?), then INPUT or
FORWARD + POSTROUTING; a packet the node sends passes OUTPUT then
POSTROUTING. Marks start at 0 and stay concrete; conntrack state is NEW
(plus DNAT once a DNAT rule fired): these are first packets, the only ones
the nat table sees.

A match kspec does not model (``-m set``, ``physdev``, ``--limit-iface-in``,
an unknown module) is *opaque*: it forks like a choice, and every leaf that
depended on it says so, so a proof never silently passes through it.

IPVS mode adds two optional inputs to a :class:`Program`: the node's ipsets,
as a resolver from ``--match-set NAME DIRS`` to a :class:`Membership` (so the
set matches are decided, exactly, splitting interval fields like any other
match), and its IPVS table (:class:`IpvsTable`), which the walk consults
where the kernel does -- after filter INPUT for a packet arriving for a local
address, after nat OUTPUT for one the node sends -- forking once per real
server of weight > 0 and rejecting (ICMP port unreachable) when a virtual
server has none. Without them a Program behaves exactly as before.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from kspec.dataplane.iptables_save import (
    FULL_MARK,
    PROTOCOL_NUMBERS,
    STATISTIC_SCALE,
    Match,
    Rule,
    RuleSet,
    parse_nat_range,
)
from kspec.verify.encode import DPORT, DST, PROTO, SPORT, SRC, Intervals, field_max, member, negation

# atom kinds, in the order a rule evaluates them (cheap and decisive first)
SET, CONST, MARK, CT, IFACE, CHOICE, OPAQUE = range(7)
# IPVS mode: an ipset match (-m set), an IPVS connection match (-m ipvs), --physdev-is-in
MEMBER, IPVSM, PHYS = 7, 8, 9
# target kinds
JUMP, GOTO, ACCEPT, DROP, REJECT, RETURN, DNAT, SNAT, MASQ, SETMARK, NOOP, UNKNOWN = range(12)
# how a chain walk ends
X_RETURN, X_ACCEPT, X_DROP, X_REJECT, X_UNKNOWN, X_END = range(6)
VERDICTS = {X_ACCEPT: "ACCEPT", X_DROP: "DROP", X_REJECT: "REJECT", X_UNKNOWN: "UNKNOWN"}
NOOP_TARGETS = frozenset({"", "LOG", "NFLOG", "ULOG", "TRACE", "AUDIT"})
# interfaces a packet from outside never arrives on (its uplink's name is unknown, but it is none of these)
NOT_UPLINK = frozenset({"lo", "cbr0", "docker0", "cni0", "kube-ipvs0", "kube-bridge"})
MAX_DEPTH = 64  # iptables refuses deeper (and looping) jump graphs
PROTOCOL_NAMES = {v: k for k, v in PROTOCOL_NUMBERS.items()}

PRE = (("raw", "PREROUTING"), ("mangle", "PREROUTING"), ("nat", "PREROUTING"))
LOCAL_IN = (("mangle", "INPUT"), ("filter", "INPUT"), ("security", "INPUT"), ("nat", "INPUT"))
FORWARD = (("mangle", "FORWARD"), ("filter", "FORWARD"), ("security", "FORWARD"), ("mangle", "POSTROUTING"),
           ("nat", "POSTROUTING"))
LOCAL_OUT = (("raw", "OUTPUT"), ("mangle", "OUTPUT"), ("nat", "OUTPUT"), ("filter", "OUTPUT"),
             ("security", "OUTPUT"), ("mangle", "POSTROUTING"), ("nat", "POSTROUTING"))
# where IPVS sits in those hook lists (ip_vs_ops: LOCAL_IN before nat INPUT, LOCAL_OUT after nat OUTPUT)
LOCAL_IN_BEFORE_IPVS, LOCAL_IN_AFTER_IPVS = LOCAL_IN[:3], LOCAL_IN[3:]
LOCAL_OUT_BEFORE_IPVS, LOCAL_OUT_AFTER_IPVS = LOCAL_OUT[:3], LOCAL_OUT[3:]
IPVS_PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}
ORIGINS = ("pod", "outside", "node")


# --- public values ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    """One concrete packet: ``Packet("tcp", "10.244.1.5", 40000, "10.96.0.10", 80)``."""

    proto: str
    src: str
    sport: int
    dst: str
    dport: int
    mark: int = 0

    def __str__(self) -> str:
        family = ipaddress.ip_address(self.src).version
        src = f"[{self.src}]" if family == 6 else self.src
        dst = f"[{self.dst}]" if family == 6 else self.dst
        return f"{self.proto.upper()} {src}:{self.sport} -> {dst}:{self.dport}"


@dataclass(frozen=True)
class Hooks:
    """Where a packet enters the node's netfilter hooks.

    ``origin``: "pod" (arrives from a pod on the bridge), "outside" (arrives on
    the node's uplink) or "node" (the node sends it). ``local`` are the node's
    own addresses (``addrtype LOCAL``, the routing decision): its IPs, the
    bridge address, loopback. ``in_interface`` answers ``-i`` matches (None:
    the uplink, whose name is unknown, so only ``-i`` of a virtual interface
    is decided); ``bridged`` (the node's podCIDRs) decides ``-o``.
    """

    origin: str
    local: tuple[str, ...] = ()
    in_interface: str | None = None
    bridged: tuple[str, ...] = ()  # the node's podCIDRs: packets to them leave on the bridge (``-o cbr0``)

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise ValueError(f"origin must be one of {', '.join(ORIGINS)}, not {self.origin!r}")


@dataclass(frozen=True)
class Step:
    """One rule that fired: where it is, and what it did."""

    table: str
    hook: str  # the built-in chain being traversed
    chain: str
    line: int
    text: str
    action: str  # "-> KUBE-SVC-X", "DNAT 10.244.2.7:8080", "MARK 0x4000/0x4000", "ACCEPT", ...


@dataclass(frozen=True)
class Trace:
    """What happened to one packet: every rule that fired, the verdict and the rewrites."""

    packet: Packet
    steps: tuple[Step, ...]
    verdict: str  # ACCEPT | DROP | REJECT | UNKNOWN
    final: Packet  # after DNAT (SNAT/MASQUERADE rewrite the source to the node's outgoing address)
    dnat: str | None = None
    snat: str | None = None
    mark: int = 0
    assumed: tuple[str, ...] = ()  # answers given for statistic/recent/opaque matches

    def render(self) -> str:
        return render_steps(self.steps, self.verdict, self.dnat, self.snat)


def render_steps(steps: Sequence[Step], verdict: str, dnat: str | None, snat: str | None) -> str:
    """``nat PREROUTING: PREROUTING (line 33) -> KUBE-SERVICES (line 40) -> ... DNAT 10.244.2.7:8080``."""
    parts: list[str] = []
    hook = None
    chunk: list[str] = []
    for k, step in enumerate(steps):
        after = steps[k + 1] if k + 1 < len(steps) else None
        if step.action.startswith("->") and (after is None or after.chain != step.action.split()[1]
                                             or (after.table, after.hook) != (step.table, step.hook)):
            continue  # a jump into a chain where nothing fired: it only passed through
        if (step.table, step.hook) != hook:
            if chunk:
                parts.append(" -> ".join(chunk))
            hook = (step.table, step.hook)
            chunk = []
        text = f"{step.chain} (line {step.line})"
        if not step.action.startswith("->"):
            text += f" {step.action}"
        chunk.append(text if chunk else f"{step.table} {step.hook}: {text}")
    if chunk:
        parts.append(" -> ".join(chunk))
    tail = [verdict]
    if dnat and not any(s.action.startswith("DNAT") for s in steps):
        tail.append(f"DNAT {dnat}")
    if snat and not any(s.action.startswith(("MASQUERADE", "SNAT")) for s in steps):
        tail.append(snat)
    return "; ".join(parts + [" ".join(tail)]) if parts else " ".join(tail) + " (no rule fired)"


# --- IPVS mode: ipset memberships and the IPVS table ------------------------------------------


class Membership:
    """An ipset match as the walk decides it: a packet matches when, for some member, each of
    ``fields`` (packet field indexes, e.g. (DST, PROTO, DPORT) for ``hash:ip,port dst,dst``)
    lies in that member's component (an :class:`Intervals` per field).

    Members are indexed by their first component, so a concrete packet costs a dict lookup
    however big the set (KUBE-CLUSTER-IP holds every service port).
    """

    __slots__ = ("fields", "members", "_points", "_keys", "_wide")

    def __init__(self, fields: Sequence[int], members: Iterable[Sequence[Intervals]]) -> None:
        self.fields = tuple(fields)
        self.members = tuple(tuple(m) for m in members)
        points: dict[int, list[int]] = {}
        wide: list[int] = []
        for i, member_parts in enumerate(self.members):
            first = member_parts[0].spans
            if len(first) == 1 and first[0][0] == first[0][1]:
                points.setdefault(first[0][0], []).append(i)
            else:
                wide.append(i)
        self._points = points
        self._keys = sorted(points)
        self._wide = wide

    def candidates(self, domain: int | Intervals) -> list[tuple[Intervals, ...]]:
        """The members whose first component meets ``domain`` (a value or a set of values)."""
        members = self.members
        if type(domain) is int:
            found = [members[i] for i in self._points.get(domain, ())]
            return found + [members[i] for i in self._wide if domain in members[i][0]]
        keys = self._keys
        found = []
        for lo, hi in domain.spans:
            for key in keys[bisect_left(keys, lo):bisect_right(keys, hi)]:
                found.extend(members[i] for i in self._points[key])
        return found + [members[i] for i in self._wide if not members[i][0].disjoint(domain)]


# ``--match-set NAME DIRS`` -> the membership, or None / the reason it cannot be decided (then opaque)
SetResolver = Callable[[str, tuple[str, ...]], "Membership | str | None"]


@dataclass(frozen=True)
class RealServer:
    """One IPVS destination (NAT): where a connection may be rewritten to, and from which line."""

    addr: int
    port: int
    weight: int
    line: int
    text: str


@dataclass(frozen=True)
class VirtualServer:
    """One IPVS virtual service (protocol number, address, port) and its real servers."""

    proto: int
    addr: int
    port: int
    line: int
    text: str
    real_servers: tuple[RealServer, ...] = ()


class IpvsTable:
    """A node's IPVS virtual services, as the walk consults them (``name``: the file they came from)."""

    def __init__(self, servers: Iterable[VirtualServer], name: str = "<ipvs>") -> None:
        self.name = name
        self.servers: dict[tuple[int, int, int], VirtualServer] = {}
        by_addr: dict[int, dict[int, list[tuple[int, int]]]] = {}
        for vs in servers:
            key = (vs.proto, vs.addr, vs.port)
            if key in self.servers:
                continue  # the kernel holds one service per key; a dump never repeats one
            self.servers[key] = vs
            by_addr.setdefault(vs.addr, {}).setdefault(vs.proto, []).append((vs.port, vs.port))
        self.addresses = Intervals((a, a) for a in by_addr)
        self.protocols = {addr: Intervals((p, p) for p in protos) for addr, protos in by_addr.items()}
        self.ports = {(addr, proto): Intervals(ports) for addr, protos in by_addr.items()
                      for proto, ports in protos.items()}


# --- compiled rules --------------------------------------------------------------------------


class CRule:
    """A rule ready to walk: its matches as atoms, its target as a kind and an argument."""

    __slots__ = ("rule", "atoms", "kind", "arg", "action", "effect_free", "line", "chain", "table", "index")

    def __init__(self, rule: Rule, atoms: tuple, kind: int, arg, action: str) -> None:
        self.index = 0  # position in its chain
        self.rule = rule
        self.atoms = atoms
        self.kind = kind
        self.arg = arg
        self.action = action
        self.effect_free = False
        self.line = rule.line
        self.chain = rule.chain
        self.table = rule.table


class CChain:
    """A chain's rules plus an index, so a walk tries only the rules that can match its destination."""

    __slots__ = ("name", "table", "policy", "rules", "field", "generic", "points", "keys", "ranges", "cache")

    SMALL = 8

    def __init__(self, name: str, table: str, policy: str | None, rules: list[CRule]) -> None:
        for position, cr in enumerate(rules):
            cr.index = position
        self.name = name
        self.table = table
        self.policy = policy
        self.rules = rules
        self.field = -1
        self.generic: list[int] = []
        self.points: dict[int, list[int]] = {}
        self.keys: list[int] = []
        self.ranges: list[tuple[Intervals, int]] = []
        self.cache: dict[int, list[CRule]] = {}
        if len(rules) > self.SMALL:
            self._index()

    def _index(self) -> None:
        counts = {DST: 0, DPORT: 0}
        for cr in self.rules:
            for f in _pinned_fields(cr):
                counts[f] += 1
        best = max(counts, key=lambda f: (counts[f], f == DST))
        if counts[best] * 4 < len(self.rules):
            return
        self.field = best
        for pos, cr in enumerate(self.rules):
            required = next((a[2] for a in cr.atoms if a[0] == SET and a[1] == best and not a[3]), None)
            if required is None:
                self.generic.append(pos)
            elif len(required.spans) == 1 and required.spans[0][0] == required.spans[0][1]:
                self.points.setdefault(required.spans[0][0], []).append(pos)
            else:
                self.ranges.append((required, pos))
        self.keys = sorted(self.points)

    def candidates(self, values: list) -> tuple[list[CRule], list[int] | None]:
        """The rules, in order, that can match a packet whose fields are ``values``, and their positions
        in the chain (None: all the chain's rules, so a rule's position is its index in the list)."""
        if self.field < 0:
            return self.rules, None
        value = values[self.field]
        if type(value) is int:
            found = self.cache.get(value)
            if found is None:
                positions = self.generic + self.points.get(value, [])
                positions += [pos for iv, pos in self.ranges if value in iv]
                positions.sort()
                found = ([self.rules[p] for p in positions], positions)
                if len(self.cache) < 500_000:
                    self.cache[value] = found
            return found
        positions = list(self.generic)
        for lo, hi in value.spans:
            for key in self.keys[bisect_left(self.keys, lo):bisect_right(self.keys, hi)]:
                positions += self.points[key]
        positions += [pos for iv, pos in self.ranges if not iv.disjoint(value)]
        positions.sort()
        return [self.rules[p] for p in positions], positions


def _pinned_fields(cr: CRule) -> Iterable[int]:
    """Fields this rule pins to one value (the index prefers them: a point is a dict lookup,
    a range must be tested, and e.g. KUBE-EXTERNAL-SERVICES holds hundreds of rules whose
    destination is the same range, the node's own addresses, but whose ports differ)."""
    for atom in cr.atoms:
        if atom[0] == SET and not atom[3] and atom[1] in (DST, DPORT):
            spans = atom[2].spans
            if len(spans) == 1 and spans[0][0] == spans[0][1]:
                yield atom[1]


class Program:
    """A parsed rule set compiled for one node (its local addresses decide ``addrtype LOCAL``)."""

    def __init__(self, ruleset: RuleSet, local: Intervals, bridged: Intervals = Intervals(),
                 bridge: str = "cbr0", sets: SetResolver | None = None, ipvs: IpvsTable | None = None,
                 physdev: bool = False) -> None:
        self.ruleset = ruleset
        self.family = ruleset.family
        self.local = local
        self.bridged = bridged  # the pod ranges on the node's bridge: packets to them leave on ``bridge``
        self.bridge = bridge
        self.sets = sets  # decides ``-m set --match-set`` (None: opaque)
        self.ipvs = ipvs  # the IPVS table the walk consults (None: no IPVS)
        self.physdev = physdev  # decide ``--physdev-is-in``: true exactly for packets from the bridge
        self.chains: dict[tuple[str, str], CChain] = {}
        self.by_rule: dict[int, CRule] = {}
        self.by_line: dict[int, CRule] = {}
        self._atom_cache: dict[int, tuple] = {}
        for table in ruleset.tables.values():
            for chain in table.chains.values():
                compiled = [self._compile(rule) for rule in chain.rules]
                self.chains[(table.name, chain.name)] = CChain(chain.name, table.name, chain.policy, compiled)
        self._mark_effect_free()

    def chain(self, table: str, name: str) -> CChain | None:
        return self.chains.get((table, name))

    def compiled(self, rule: Rule) -> CRule:
        return self.by_rule[id(rule)]

    # -- compiling

    def _compile(self, rule: Rule) -> CRule:
        atoms: list[tuple] = []
        for match in rule.matches:
            cached = self._atom_cache.get(id(match))
            if cached is None:
                cached = self._atom_cache[id(match)] = tuple(self._atoms(match, rule))
            atoms.extend(cached)
        atoms.sort(key=_atom_order)
        kind, arg, action = self._target(rule)
        cr = CRule(rule, tuple(atoms), kind, arg, action)
        self.by_rule[id(rule)] = cr
        self.by_line[rule.line] = cr
        return cr

    def _atoms(self, match: Match, rule: Rule) -> Iterable[tuple]:
        if not match.module:
            opt = match.options[0]
            name = opt.name
            if name in ("source", "destination"):
                nets = Intervals.of_networks(ipaddress.ip_network(v) for v in opt.values)
                yield (SET, SRC if name == "source" else DST, nets, opt.negated)
            elif name == "protocol":
                value = opt.values[0]
                if value == "all":
                    yield (CONST, not opt.negated)  # "-p all" matches everything, "! -p all" nothing
                else:
                    number = PROTOCOL_NUMBERS.get(value, None)
                    number = int(value) if number is None else number
                    yield (SET, PROTO, Intervals.point(number), opt.negated)
            elif name in ("in-interface", "out-interface"):
                yield (IFACE, name, opt.values[0], opt.negated)
            else:  # -f: a connection's first packet is never a later fragment
                yield (CONST, opt.negated)
            return
        module = match.module
        described = f"-m {module}"
        for opt in match.options:
            name, neg = opt.name, opt.negated
            if module in ("tcp", "udp", "sctp", "udplite") and name in ("sport", "dport"):
                low, _, high = opt.values[0].partition(":")
                yield (SET, SPORT if name == "sport" else DPORT, Intervals.span(int(low), int(high or low)), neg)
            elif module == "tcp" and name == "syn":
                yield (CONST, not neg)  # a connection's first packet is a SYN
            elif module in ("comment", "nfacct"):
                continue
            elif module in ("conntrack", "state") and name in ("ctstate", "state"):
                yield (CT, frozenset(opt.values[0].split(",")), neg)
            elif module == "addrtype" and name in ("src-type", "dst-type"):
                if opt.values[0] == "LOCAL" and not (match.option("limit-iface-in") or match.option("limit-iface-out")):
                    yield (SET, SRC if name == "src-type" else DST, self.local, neg)
                else:
                    yield (OPAQUE, f"-m addrtype {opt.text()}" + (" (per interface)" if opt.values[0] == "LOCAL" else ""))
            elif module == "addrtype":
                continue  # --limit-iface-*: folded into the type above
            elif module == "statistic" and name == "probability":
                threshold = round(float(opt.values[0]) * STATISTIC_SCALE)
                yield (CHOICE, "statistic", threshold, STATISTIC_SCALE, neg, f"--probability {opt.values[0]}")
            elif module == "statistic" and name == "every":
                yield (CHOICE, "statistic", 1, int(opt.values[0]), neg, f"--every {opt.values[0]}")
            elif module == "statistic":
                continue  # --mode / --packet: part of the choice above
            elif module == "recent":
                if name in ("rcheck", "update", "remove"):
                    yield (CHOICE, "recent", 0, 0, neg, f"-m recent --{name} --name {_option(match, 'name')}")
                elif name == "set" and neg:
                    yield (OPAQUE, "-m recent ! --set")
            elif module == "mark" and name == "mark":
                value, _, mask = opt.values[0].partition("/")
                yield (MARK, int(value, 16), int(mask, 16) if mask else FULL_MARK, neg)
            elif module == "iprange" and name in ("src-range", "dst-range"):
                first, _, last = opt.values[0].partition("-")
                span = Intervals.span(int(ipaddress.ip_address(first)), int(ipaddress.ip_address(last or first)))
                yield (SET, SRC if name == "src-range" else DST, span, neg)
            elif module == "set" and self.sets is not None:
                atom = self._set_atom(match, opt)
                if atom is not None:
                    yield atom
            elif module == "ipvs" and self.ipvs is not None and name in _IPVS_OPTIONS:
                yield (IPVSM, name, _ipvs_value(name, opt.values[0] if opt.values else ""), neg)
            elif module == "physdev" and self.physdev and name == "physdev-is-in":
                yield (PHYS, neg)
            elif module == "multiport" and name in ("sports", "dports"):
                spans = []
                for part in opt.values[0].split(","):
                    low, _, high = part.partition(":")
                    spans.append((int(low), int(high or low)))
                yield (SET, SPORT if name == "sports" else DPORT, Intervals(spans), neg)
            else:
                yield (OPAQUE, f"{described} {opt.text()}")
        if module not in _MODELLED_MODULES and not match.options:
            yield (OPAQUE, described)

    def _set_atom(self, match: Match, opt) -> tuple | None:
        """``--match-set NAME DIRS`` decided from the node's sets; flags that change nothing are dropped."""
        if opt.name in ("update-counters", "update-subcounters", "return-nomatch"):
            return None  # counters only; no decided set has nomatch entries
        if opt.name != "match-set" or len(opt.values) != 2:
            return (OPAQUE, f"-m set {opt.text()}")
        name, directions = opt.values
        membership = self.sets(name, tuple(directions.split(",")))
        if not isinstance(membership, Membership):  # None, or why the set cannot be read (the caller's to tell)
            return (OPAQUE, f"-m set {opt.text()}")
        return (MEMBER, membership, opt.negated, f"{'! ' if opt.negated else ''}--match-set {name} {directions}")

    def _target(self, rule: Rule) -> tuple[int, object, str]:
        target = rule.target
        args = rule.target_args
        if rule.goto:
            return GOTO, target, f"-> {target} (goto)"
        if target in NOOP_TARGETS:
            return NOOP, None, target or "(count)"
        simple = {"ACCEPT": ACCEPT, "DROP": DROP, "REJECT": REJECT, "RETURN": RETURN}
        if target in simple:
            return simple[target], None, target
        if target == "DNAT":
            (first, last), ports = parse_nat_range(args["to-destination"])
            addr: int | Intervals = int(first) if first == last else Intervals.span(int(first), int(last))
            port: int | Intervals | None = None
            if ports is not None:
                port = ports[0] if ports[0] == ports[1] else Intervals.span(*ports)
            return DNAT, (addr, port), f"DNAT {args['to-destination']}"
        if target == "MASQUERADE":
            return MASQ, None, "MASQUERADE"
        if target == "SNAT":
            return SNAT, args.get("to-source", ""), f"SNAT {args.get('to-source', '')}"
        if target == "MARK":
            value, _, mask = args["set-xmark"].partition("/")
            return SETMARK, (int(value, 16), int(mask, 16)), f"MARK --set-xmark {args['set-xmark']}"
        if target in self.ruleset.tables[rule.table].chains:
            return JUMP, target, f"-> {target}"
        return UNKNOWN, target, f"{target} (not modelled)"

    def _mark_effect_free(self) -> None:
        """Rules whose firing changes nothing (LOG, jumps into chains that only LOG or RETURN)."""
        free: dict[tuple[str, str], bool] = {}

        def chain_free(table: str, name: str, seen: frozenset) -> bool:
            key = (table, name)
            if key in free:
                return free[key]
            if key in seen:
                return False
            chain = self.chains[key]
            result = all(rule_free(cr, seen | {key}) for cr in chain.rules)
            free[key] = result
            return result

        def rule_free(cr: CRule, seen: frozenset) -> bool:
            if cr.kind in (NOOP, RETURN):
                return True
            if cr.kind == JUMP:
                return chain_free(cr.table, cr.arg, seen)
            return False

        for chain in self.chains.values():
            for cr in chain.rules:
                cr.effect_free = cr.kind == NOOP or (cr.kind == JUMP and chain_free(cr.table, cr.arg, frozenset()))


_MODELLED_MODULES = frozenset({"tcp", "udp", "sctp", "udplite", "comment", "nfacct", "conntrack", "state",
                               "addrtype", "statistic", "recent", "mark", "iprange", "multiport"})


def _option(match: Match, name: str) -> str:
    opt = match.option(name)
    return opt.values[0] if opt and opt.values else ""


def _atom_order(atom: tuple) -> tuple:
    if atom[0] == SET:
        return (0, {DST: 0, PROTO: 1, DPORT: 2, SRC: 3, SPORT: 4}[atom[1]])
    if atom[0] == MEMBER:
        return (0, 5)  # after the plain field matches, before marks, choices and opaque ones
    if atom[0] in (IPVSM, PHYS):
        return (CT, 1)
    return (atom[0], 0)


_IPVS_OPTIONS = frozenset({"ipvs", "vproto", "vaddr", "vport", "vdir"})


def _ipvs_value(name: str, text: str):
    """The value an ``-m ipvs`` option compares with (None for the flag ``--ipvs``)."""
    if name == "vproto":
        return int(text) if text.isdigit() else PROTOCOL_NUMBERS.get(text.lower(), -1)
    if name == "vaddr":
        return Intervals.of_network(ipaddress.ip_network(text, strict=False))
    if name == "vport":
        return int(text)
    if name == "vdir":
        return text.upper()
    return None


# --- the walk ---------------------------------------------------------------------------------


class Leaf:
    """One outcome of a walk: the verdict, the rewrites, and which packets / choices lead to it."""

    __slots__ = ("v", "sym", "mark", "dnat", "snat", "steps", "picks", "prob", "fresh", "opaque", "guard",
                 "iif", "hook", "verdict", "initial", "vs")

    def __init__(self) -> None:
        self.verdict = ""

    def copy(self) -> "Leaf":
        new = Leaf.__new__(Leaf)
        new.v = list(self.v)
        new.sym = self.sym
        new.mark = self.mark
        new.dnat = self.dnat
        new.snat = self.snat
        new.steps = self.steps
        new.picks = self.picks
        new.prob = self.prob
        new.fresh = self.fresh
        new.opaque = self.opaque
        new.guard = self.guard
        new.iif = self.iif
        new.hook = self.hook
        new.verdict = self.verdict
        new.initial = self.initial
        new.vs = self.vs
        return new

    # persistent lists are (head, tail) pairs; these turn them back into tuples, oldest first
    def step_list(self) -> tuple[Step, ...]:
        return _unlink(self.steps)

    def pick_list(self) -> tuple[tuple[int, str, bool], ...]:
        return _unlink(self.picks)

    def opaque_list(self) -> tuple[tuple[int, str, bool], ...]:
        return _unlink(self.opaque)

    def guard_list(self) -> tuple[tuple[tuple, bool], ...]:
        return _unlink(self.guard)

    def domain(self, field_index: int) -> Intervals | int:
        """The values of a field (as the packet entered) that reach this leaf (refine mode)."""
        return self.initial[field_index]


def _unlink(linked) -> tuple:
    out = []
    while linked is not None:
        out.append(linked[0])
        linked = linked[1]
    return tuple(reversed(out))


class TooManyPaths(Exception):
    """The walk forked more often than a kube-proxy rule set ever makes it (a pathological rule set)."""


class _Walker:
    def __init__(self, program: Program, mode: str, choices=None, max_leaves: int = 50_000) -> None:
        self.program = program
        self.mode = mode  # concrete | refine | symbolic
        self.choices = choices
        self.choice_index = 0
        self.max_leaves = max_leaves
        self.forks = 0
        self._finished: list[Leaf] = []

    def _fork(self, st: Leaf) -> Leaf:
        self.forks += 1
        if self.forks > self.max_leaves:
            raise TooManyPaths(f"the rules split these packets into more than {self.max_leaves} paths")
        return st.copy()

    # -- hooks

    def run(self, origin: str, start: Leaf) -> list[Leaf]:
        states = [start]
        if self.program.ipvs is not None:
            return self._run_ipvs(origin, states)
        if origin == "node":
            states = self._passes(LOCAL_OUT, states)
            local, remote = self._route(states)
            return self._passes(LOCAL_IN, local) + remote + self._finished
        states = self._passes(PRE, states)
        local, remote = self._route(states)
        return self._passes(LOCAL_IN, local) + self._passes(FORWARD, remote) + self._finished

    def _run_ipvs(self, origin: str, states: list[Leaf]) -> list[Leaf]:
        """The hooks with IPVS where the kernel has it: after nat OUTPUT for the node's own packets, after
        filter INPUT for packets to a local address. A rewritten packet is sent on through filter OUTPUT
        and POSTROUTING, or, when its real server is the node itself, delivered (nat INPUT)."""
        if origin == "node":
            states = self._passes(LOCAL_OUT_BEFORE_IPVS, states)
            taken, states = self._ipvs(states, "LOCAL_OUT")
            local, remote = self._route(self._passes(LOCAL_OUT_AFTER_IPVS, states + taken))
            return self._passes(LOCAL_IN, local) + remote + self._finished
        states = self._passes(PRE, states)
        local, remote = self._route(states)
        taken, local = self._ipvs(self._passes(LOCAL_IN_BEFORE_IPVS, local), "LOCAL_IN")
        mine, away = self._route(taken)
        return (self._passes(LOCAL_IN_AFTER_IPVS, local + mine) + self._passes(LOCAL_OUT_AFTER_IPVS, away)
                + self._passes(FORWARD, remote) + self._finished)

    def _ipvs(self, states: list[Leaf], hook: str) -> tuple[list[Leaf], list[Leaf]]:
        """(packets a virtual service rewrote, packets no virtual service takes); refusals finish here."""
        taken: list[Leaf] = []
        passed: list[Leaf] = []
        for st in states:
            st.hook = ("ipvs", hook)
            for branch, vs in self._split_vs(st):
                if vs is None:
                    passed.append(branch)
                else:
                    self._schedule(branch, vs, hook, taken)
        return taken, passed

    def _split_vs(self, st: Leaf) -> list[tuple[Leaf, VirtualServer | None]]:
        """The state split by the virtual service its (protocol, destination, port) names, if any."""
        table = self.program.ipvs
        proto, dst, dport = st.v[PROTO], st.v[DST], st.v[DPORT]
        if type(proto) is int and type(dst) is int and type(dport) is int:
            return [(st, table.servers.get((proto, dst, dport)))]
        out: list[tuple[Leaf, VirtualServer | None]] = []
        for by_addr, addr in self._pin(st, DST, table.addresses):
            if addr is None:
                out.append((by_addr, None))
                continue
            for by_proto, number in self._pin(by_addr, PROTO, table.protocols[addr]):
                if number is None:
                    out.append((by_proto, None))
                    continue
                for by_port, port in self._pin(by_proto, DPORT, table.ports[(addr, number)]):
                    out.append((by_port, None if port is None else table.servers[(number, addr, port)]))
        return out

    def _schedule(self, st: Leaf, vs: VirtualServer, hook: str, out: list[Leaf]) -> None:
        """IPVS NAT: one branch per real server of weight > 0 (the scheduler may pick any of them);
        none: the kernel answers ICMP port unreachable (ip_vs_leave) and drops the packet."""
        name = self.program.ipvs.name
        st.steps = (Step("ipvs", hook, name, vs.line, vs.text, "virtual server"), st.steps)
        live = [rs for rs in vs.real_servers if rs.weight > 0]
        if not live:
            st.steps = (Step("ipvs", hook, name, vs.line, vs.text,
                             "REJECT (no real server of weight > 0: ICMP port unreachable)"), st.steps)
            st.verdict = VERDICTS[X_REJECT]
            self._finished.append(st)
            return
        total = sum(rs.weight for rs in live)
        base = st.prob
        current = st
        for k, rs in enumerate(live):
            text = f"ipvs real server {rs.text.strip()}"
            if k == len(live) - 1:
                chosen = current
            elif self.mode == "concrete":
                value = self._given(("ipvs", rs.line))
                current.picks = ((rs.line, text, value), current.picks)
                if not value:
                    continue
                chosen = current
            else:
                chosen = self._fork(current)
                chosen.picks = ((rs.line, text, True), current.picks)
                current.picks = ((rs.line, text, False), current.picks)
            chosen.prob = base * rs.weight / total
            chosen.v[DST] = rs.addr
            chosen.v[DPORT] = rs.port
            chosen.sym &= ~((1 << DST) | (1 << DPORT))
            chosen.dnat = (rs.addr, rs.port)
            chosen.vs = (vs.proto, vs.addr, vs.port)
            host = _text(rs.addr, self.program.family)
            target = f"[{host}]:{rs.port}" if self.program.family == 6 else f"{host}:{rs.port}"
            chosen.steps = (Step("ipvs", hook, name, rs.line, rs.text, f"DNAT {target}"), chosen.steps)
            out.append(chosen)
            if self.mode == "concrete":
                return

    def _pin(self, st: Leaf, fld: int, values: Intervals) -> list[tuple[Leaf, int | None]]:
        """The state split into one branch per value of ``values`` it holds, plus the rest (None)."""
        domain = st.v[fld]
        if type(domain) is int:
            return [(st, domain if domain in values else None)]
        inside = domain & values
        points = [v for lo, hi in inside.spans for v in range(lo, hi + 1)]
        branches = self._split_many(st, fld, [Intervals.point(v) for v in points])
        return [(branch, None if k is None else points[k]) for branch, k in branches]

    def _split_many(self, st: Leaf, fld: int, parts: list[Intervals]) -> list[tuple[Leaf, int | None]]:
        """Fork the state into disjoint ``parts`` of its field (each inside it) and the rest (index None),
        keeping the entering packet's domains and, in symbolic mode, the conditions that pick each part."""
        if not parts:
            return [(st, None)]
        domain = st.v[fld]
        union = _union_of(parts)
        rest = domain - union
        track = st.initial[fld] is domain
        symbolic = self.mode == "symbolic" and st.sym >> fld & 1
        out: list[tuple[Leaf, int | None]] = []
        for k, part in enumerate(parts):
            branch = st if (k == len(parts) - 1 and not rest) else self._fork(st)
            branch.v[fld] = part
            if track:
                branch.initial = _with(branch.initial, fld, part)
            if symbolic:
                branch.guard = (((SET, fld, part, False), True), st.guard)
            out.append((branch, k))
        if rest:
            st.v[fld] = rest
            if track:
                st.initial = _with(st.initial, fld, rest)
            if symbolic:
                st.guard = (((SET, fld, union, False), False), st.guard)
            out.append((st, None))
        return out

    def _passes(self, hooks: Sequence[tuple[str, str]], states: list[Leaf]) -> list[Leaf]:
        for table, chain in hooks:
            if not states:
                break
            compiled = self.program.chain(table, chain)
            if compiled is None:
                continue
            nxt: list[Leaf] = []
            for st in states:
                st.hook = (table, chain)
                out: list = []
                self._walk(compiled, st, 0, 0, out)
                for leaf, exit_code in out:
                    if exit_code in (X_RETURN, X_END):
                        exit_code = X_ACCEPT if compiled.policy != "DROP" else X_DROP
                        if compiled.policy == "DROP":
                            leaf.steps = (Step(table, chain, chain, 0, f":{chain} DROP", "policy DROP"), leaf.steps)
                    if exit_code == X_ACCEPT:
                        nxt.append(leaf)
                    else:
                        leaf.verdict = VERDICTS[exit_code]
                        self._finished.append(leaf)
            states = nxt
        for st in states:
            st.verdict = "ACCEPT"
        return states

    def _route(self, states: list[Leaf]) -> tuple[list[Leaf], list[Leaf]]:
        """The routing decision: to one of the node's own addresses (INPUT) or onwards (FORWARD)."""
        atom = (SET, DST, self.program.local, False)
        local, remote = [], []
        for st in states:
            for branch, is_local in self._decide(atom, st, 0):
                (local if is_local else remote).append(branch)
        return local, remote

    # -- chains

    def _walk(self, chain: CChain, st: Leaf, pos: int, depth: int, out: list) -> None:
        """Walk ``chain`` from rule ``pos``; append (state, how the chain ended) to ``out``.

        States that continue in this chain (a rule did not match, a jump
        returned) wait on a stack, so a chain of 10,000 rules or 1,000
        statistic forks costs no recursion.
        """
        if depth > MAX_DEPTH:
            st.opaque = ((0, f"jump depth over {MAX_DEPTH} (a loop?) in {chain.name}", True), st.opaque)
            out.append((st, X_UNKNOWN))
            return
        explore = self.mode != "concrete"
        pending = [(st, pos)]  # (state, position in the chain of the next rule to try)
        while pending:
            st, pos = pending.pop()
            rules, positions = chain.candidates(st.v)
            k = pos if positions is None else bisect_left(positions, pos)
            n = len(rules)
            while k < n:
                cr = rules[k]
                k += 1
                pos = cr.index + 1
                if cr.effect_free and (explore or any(a[0] in (CHOICE, OPAQUE) for a in cr.atoms)):
                    continue
                matched = self._match(cr, st, 0)
                if matched is False:
                    continue
                if matched is True:
                    if cr.kind == SETMARK or cr.kind == NOOP:
                        self._apply_inline(cr, st)
                        continue
                    pending += [(s, pos) for s in reversed(self._fire(chain, cr, st, depth, out))]
                    break
                missed = []
                for branch, hit in matched:
                    if hit:
                        missed += self._fire(chain, cr, branch, depth, out)
                    else:
                        missed.append(branch)
                pending += [(s, pos) for s in reversed(missed)]
                break
            else:
                out.append((st, X_END))

    def _apply_inline(self, cr: CRule, st: Leaf) -> None:
        if cr.kind == SETMARK:
            value, mask = cr.arg
            st.mark = (st.mark & ~mask & FULL_MARK) ^ value
        self._step(st, cr)

    def _fire(self, chain: CChain, cr: CRule, st: Leaf, depth: int, out: list) -> list[Leaf]:
        """Apply a matched rule's target; return the states that continue with the chain's next rule."""
        kind = cr.kind
        if kind == SETMARK or kind == NOOP:
            self._apply_inline(cr, st)
            return [st]
        self._step(st, cr)
        if kind == JUMP or kind == GOTO:
            callee = self.program.chain(chain.table, cr.arg)
            sub: list = []
            self._walk(callee, st, 0, depth + 1, sub)
            back = []
            for leaf, exit_code in sub:
                if exit_code in (X_RETURN, X_END):
                    if kind == GOTO:
                        out.append((leaf, X_RETURN))
                    else:
                        back.append(leaf)
                else:
                    out.append((leaf, exit_code))
            return back
        if kind == ACCEPT:
            out.append((st, X_ACCEPT))
        elif kind == DROP:
            out.append((st, X_DROP))
        elif kind == REJECT:
            out.append((st, X_REJECT))
        elif kind == RETURN:
            out.append((st, X_RETURN))
        elif kind == DNAT:
            addr, port = cr.arg
            st.v[DST] = addr
            if port is not None:
                st.v[DPORT] = port
            st.sym &= ~((1 << DST) | (1 << DPORT))
            st.dnat = cr.arg
            out.append((st, X_ACCEPT))
        elif kind in (MASQ, SNAT):
            st.snat = cr.action
            out.append((st, X_ACCEPT))
        else:
            st.opaque = ((cr.line, f"target {cr.arg} (kspec does not model it)", True), st.opaque)
            out.append((st, X_UNKNOWN))
        return []

    def _step(self, st: Leaf, cr: CRule) -> None:
        table, hook = st.hook
        st.steps = (Step(table, hook, cr.chain, cr.line, cr.rule.text, cr.action), st.steps)

    # -- matches

    def _match(self, cr: CRule, st: Leaf, start: int):
        """True / False, or a list of (state, matched) when the rule splits the packets or a choice."""
        atoms = cr.atoms
        for k in range(start, len(atoms)):
            atom = atoms[k]
            kind = atom[0]
            if kind == SET:
                value = st.v[atom[1]]
                if type(value) is int:
                    if (value in atom[2]) == atom[3]:
                        return False
                    continue
            elif kind == CONST:
                if not atom[1]:
                    return False
                continue
            elif kind == MARK:
                if ((st.mark & atom[2]) == atom[1]) == atom[3]:
                    return False
                continue
            elif kind == CT:
                states = atom[1]
                hit = "NEW" in states or (st.dnat is not None and "DNAT" in states) or (
                    st.snat is not None and "SNAT" in states)
                if hit == atom[2]:
                    return False
                continue
            branches = self._decide(atom, st, cr.line)
            if len(branches) == 1:
                st, truth = branches[0]
                if not truth:
                    return False
                continue
            out = []
            for branch, truth in branches:
                if not truth:
                    out.append((branch, False))
                    continue
                rest = self._match(cr, branch, k + 1)
                if rest is True or rest is False:
                    out.append((branch, rest))
                else:
                    out.extend(rest)
            return out
        return True

    def _decide(self, atom: tuple, st: Leaf, line: int) -> list[tuple[Leaf, bool]]:
        """Split a state on an atom the state does not decide by itself."""
        kind = atom[0]
        if kind == SET:
            fld, values, negated = atom[1], atom[2], atom[3]
            domain = st.v[fld]
            if type(domain) is int:
                return [(st, (domain in values) != negated)]
            inside = domain & values
            if not inside:
                return [(st, negated)]
            outside = domain - values
            if not outside:
                return [(st, not negated)]
            yes, no = st, self._fork(st)
            yes.v[fld] = inside
            no.v[fld] = outside
            if st.initial[fld] is domain:
                yes.initial = _with(yes.initial, fld, inside)
                no.initial = _with(no.initial, fld, outside)
            if self.mode == "symbolic" and st.sym >> fld & 1:
                # the condition on the original packet, for Z3 to check the leaf and build its witness
                yes.guard = ((atom, True), yes.guard)
                no.guard = ((atom, False), no.guard)
            return [(yes, not negated), (no, negated)]
        if kind == MEMBER:
            return self._member(atom, st)
        if kind == IPVSM:
            return [(st, _ipvs_matches(atom, st.vs))]
        if kind == PHYS:
            return [(st, (st.iif is not None and st.iif == self.program.bridge) != atom[1])]
        if kind == CHOICE:
            return self._choose(atom, st, line)
        if kind == IFACE:
            decided = self._interface(atom, st)
            if decided is not None:
                return [(st, decided)]
            flag = "-i" if atom[1] == "in-interface" else "-o"
            return self._opaque((OPAQUE, f"{'! ' if atom[3] else ''}{flag} {atom[2]}"), st, line)
        return self._opaque(atom, st, line)

    def _member(self, atom: tuple, st: Leaf) -> list[tuple[Leaf, bool]]:
        """Split a state on an ipset match: field by field, into the members each part can still be."""
        _, membership, negated, _ = atom
        fields = membership.fields
        out: list[tuple[Leaf, bool]] = []
        pending: list[tuple[Leaf, int, list | None]] = [(st, 0, None)]
        while pending:
            cur, depth, members = pending.pop()
            if depth == len(fields):
                out.append((cur, not negated))
                continue
            value = cur.v[fields[depth]]
            if members is None:
                members = membership.candidates(value)
            elif type(value) is int:
                members = [m for m in members if value in m[depth]]
            else:
                members = [m for m in members if not m[depth].disjoint(value)]
            if not members:
                out.append((cur, negated))
            elif type(value) is int:
                pending.append((cur, depth + 1, members))
            else:
                for branch, part in self._cells(cur, fields[depth], depth, members):
                    if part:
                        pending.append((branch, depth + 1, part))
                    else:
                        out.append((branch, negated))
        return out

    def _cells(self, st: Leaf, fld: int, depth: int, members: list) -> list[tuple[Leaf, list]]:
        """The state split into parts of its field in which the same members remain possible."""
        domain = st.v[fld]
        if all(len(m[depth].spans) == 1 and m[depth].spans[0][0] == m[depth].spans[0][1] for m in members):
            by_point: dict[int, list] = {}
            for m in members:
                by_point.setdefault(m[depth].spans[0][0], []).append(m)
            keys = sorted(by_point)
            groups = [(Intervals.point(k), by_point[k]) for k in keys]
        else:
            pieces = [(m[depth] & domain, m) for m in members]
            bounds = sorted({x for piece, _ in pieces for lo, hi in piece.spans for x in (lo, hi + 1)})
            cells: dict[tuple[int, ...], list[tuple[int, int]]] = {}
            for lo, nxt in zip(bounds, bounds[1:]):
                holding = tuple(i for i, (piece, _) in enumerate(pieces) if lo in piece)
                if holding:
                    cells.setdefault(holding, []).append((lo, nxt - 1))
            groups = [(Intervals(spans), [pieces[i][1] for i in key]) for key, spans in cells.items()]
        split = self._split_many(st, fld, [part for part, _ in groups])
        return [(branch, [] if k is None else groups[k][1]) for branch, k in split]

    def _interface(self, atom: tuple, st: Leaf) -> bool | None:
        """Decide ``-i``/``-o`` where the scenario or the route tells the interface; None if it cannot."""
        _, direction, pattern, negated = atom
        if direction == "in-interface":
            name = st.iif
        else:
            dst = st.v[DST]
            if type(dst) is not int:
                return None
            program = self.program
            name = "lo" if dst in program.local else program.bridge if dst in program.bridged else None
        if name is not None:
            return _iface_matches(pattern, name) != negated
        if pattern in NOT_UPLINK or (self.program.bridge and pattern == self.program.bridge):
            return negated  # the uplink (name unknown) is none of the node's virtual interfaces
        return None

    def _choose(self, atom: tuple, st: Leaf, line: int) -> list[tuple[Leaf, bool]]:
        _, what, num, den, negated, text = atom
        if self.mode == "concrete":
            value = self._given(line)
            st.picks = ((line, text, value), st.picks)
            return [(st, value)]
        out = []
        for value in (True, False):
            matches = value != negated
            if what == "statistic":
                p = num / den if matches else (den - num) / den
                if p <= 0.0 or (matches and num <= 0) or (not matches and num >= den):
                    continue  # a zero-probability branch never happens
            else:
                p = 1.0
            branch = self._fork(st) if value else st
            branch.picks = ((line, text, value), branch.picks)
            branch.prob = st.prob * p
            if what != "statistic" and value:
                branch.fresh = False  # an earlier connection of this client chose the endpoint (affinity)
            out.append((branch, value))
        return out

    def _opaque(self, atom: tuple, st: Leaf, line: int) -> list[tuple[Leaf, bool]]:
        if self.mode == "concrete":
            value = self._given(line)
            st.opaque = ((line, atom[1], value), st.opaque)
            st.picks = ((line, atom[1], value), st.picks)
            return [(st, value)]
        yes = self._fork(st)
        yes.opaque = ((line, atom[1], True), st.opaque)
        yes.picks = ((line, atom[1], True), st.picks)
        st.opaque = ((line, atom[1], False), st.opaque)
        st.picks = ((line, atom[1], False), st.picks)
        return [(yes, True), (st, False)]

    def _given(self, line: int) -> bool:
        choices = self.choices
        if choices is None:
            return False
        if isinstance(choices, Mapping):
            return bool(choices.get(line, False))
        if self.choice_index < len(choices):
            self.choice_index += 1
            return bool(choices[self.choice_index - 1])
        return False


def _ipvs_matches(atom: tuple, vs: tuple[int, int, int] | None) -> bool:
    """``-m ipvs``: --ipvs alone tests that IPVS handled the packet; any other option fails without it."""
    _, name, value, negated = atom
    if name == "ipvs":
        return (vs is not None) != negated
    if vs is None:
        return False
    proto, addr, port = vs
    if name == "vproto":
        hit = proto == value
    elif name == "vaddr":
        hit = addr in value
    elif name == "vport":
        hit = port == value
    else:  # vdir: a connection's first packet goes the ORIGINAL way
        hit = value == "ORIGINAL"
    return hit != negated


def _union_of(parts: Sequence[Intervals]) -> Intervals:
    if len(parts) == 1:
        return parts[0]
    return Intervals(span for part in parts for span in part.spans)


def _with(values: tuple, index: int, value) -> tuple:
    return values[:index] + (value,) + values[index + 1:]


def _iface_matches(pattern: str, name: str) -> bool:
    if pattern.endswith("+"):
        return name.startswith(pattern[:-1])
    return pattern == name


def _start(fields: Sequence, mark: int, iif: str | None, symbolic: bool) -> Leaf:
    st = Leaf()
    st.v = list(fields)
    st.initial = tuple(fields)
    st.sym = 0b11111 if symbolic else 0
    st.mark = mark
    st.dnat = None
    st.snat = None
    st.steps = None
    st.picks = None
    st.prob = 1.0
    st.fresh = True
    st.opaque = None
    st.guard = None
    st.iif = iif
    st.hook = ("", "")
    st.vs = None  # the IPVS virtual service (proto, addr, port) that rewrote the packet, if one did
    return st


def explore(program: Program, origin: str, fields: Sequence[int | Intervals], in_interface: str | None = None,
            symbolic: bool = False, mark: int = 0) -> list[Leaf]:
    """Every outcome for the packets ``fields`` (src, dst, proto, sport, dport; ints or Intervals).

    Each leaf's :meth:`Leaf.domain` is the exact set of entering packets (per
    field) that reach it; in symbolic mode the leaves also carry the
    conditions on the original packet for :func:`leaf_formula`.
    """
    walker = _Walker(program, "symbolic" if symbolic else "refine")
    return walker.run(origin, _start(fields, mark, in_interface, symbolic))


def leaf_formula(leaf: Leaf, packet) -> list:
    """The Z3 conditions under which the symbolic packet ``packet`` (encode.PacketVars) reaches ``leaf``."""
    out = []
    for atom, inside in leaf.guard_list():  # inside: whether the field is in the atom's set (before its "!")
        term = member(packet.fields[atom[1]], atom[2])
        out.append(term if inside else negation(term))
    return out


# --- concrete traces -------------------------------------------------------------------------


def local_intervals(addresses: Iterable[str], family: int) -> Intervals:
    """The node's own addresses (and loopback) as a set, for ``addrtype LOCAL`` and routing."""
    nets = [ipaddress.ip_network(a, strict=False) for a in addresses]
    nets.append(ipaddress.ip_network("127.0.0.0/8" if family == 4 else "::1/128"))
    return Intervals.of_networks(n for n in nets if n.version == family)


_PROGRAMS: dict[tuple[int, Intervals, Intervals], tuple[RuleSet, Program]] = {}


def program_for(ruleset: RuleSet, local: Intervals, bridged: Intervals = Intervals()) -> Program:
    """Compile once per (rule set, node addresses); tracing many packets reuses it."""
    key = (id(ruleset), local, bridged)
    cached = _PROGRAMS.get(key)
    if cached is None or cached[0] is not ruleset:
        if len(_PROGRAMS) > 8:
            _PROGRAMS.clear()
        cached = _PROGRAMS[key] = (ruleset, Program(ruleset, local, bridged))
    return cached[1]


def trace_packet(ruleset: RuleSet | Program, hook_sequence: Hooks, packet: Packet,
                 choices: Mapping[int, bool] | Sequence[bool] | None = None) -> Trace:
    """Follow one packet through the node's hooks and chains and say what happens to it.

    ``choices`` answers the ``statistic``/``recent``/opaque matches: a mapping
    rule line -> matches?, or a sequence consumed in the order the walk meets
    them; unanswered ones do not match (so kube-proxy's last endpoint wins).

    >>> hooks = Hooks("pod", local=("192.168.0.11", "10.244.1.1"), in_interface="cbr0")   # doctest: +SKIP
    >>> print(trace_packet(rules, hooks, Packet("tcp", "10.244.1.5", 40000, "10.96.0.10", 80)).render())  # doctest: +SKIP
    """
    if isinstance(ruleset, Program):
        program = ruleset
    else:
        bridged = Intervals.of_networks(ipaddress.ip_network(c) for c in hook_sequence.bridged)
        program = program_for(ruleset, local_intervals(hook_sequence.local, ruleset.family), bridged)
    family = program.family
    values = [int(ipaddress.ip_address(packet.src)), int(ipaddress.ip_address(packet.dst)),
              protocol_number(packet.proto), packet.sport, packet.dport]
    for v, f in zip(values, (SRC, DST, PROTO, SPORT, DPORT)):
        if not 0 <= v <= field_max(f, family):
            raise ValueError(f"packet field {v} does not fit IPv{family}")
    walker = _Walker(program, "concrete", choices)
    leaves = walker.run(hook_sequence.origin, _start(values, packet.mark, hook_sequence.in_interface, False))
    leaf = leaves[0]
    return to_trace(leaf, packet, family)


def to_trace(leaf: Leaf, packet: Packet, family: int) -> Trace:
    final_dst, final_port = leaf.v[DST], leaf.v[DPORT]
    final = Packet(packet.proto, packet.src, packet.sport,
                   _text(final_dst, family) if type(final_dst) is int else packet.dst,
                   final_port if type(final_port) is int else packet.dport, leaf.mark)
    assumed = tuple(f"line {line}: {text} {'matches' if value else 'does not match'}"
                    for line, text, value in leaf.pick_list())
    return Trace(packet, leaf.step_list(), leaf.verdict, final, dnat_text(leaf.dnat, family), leaf.snat,
                 leaf.mark, assumed)


def dnat_text(dnat, family: int) -> str | None:
    if dnat is None:
        return None
    addr, port = dnat
    host = _text(addr, family) if type(addr) is int else "-".join(_text(x, family) for x in addr.spans[0])
    if family == 6:
        host = f"[{host}]"
    if port is None:
        return host
    return f"{host}:{port}" if type(port) is int else f"{host}:{port.spans[0][0]}-{port.spans[0][1]}"


def _text(value: int, family: int) -> str:
    return str(ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value))


def protocol_number(proto: str | int) -> int:
    if isinstance(proto, int):
        return proto
    text = proto.lower()
    if text.isdigit():
        return int(text)
    if text not in PROTOCOL_NUMBERS:
        raise ValueError(f"unknown protocol {proto!r}")
    return PROTOCOL_NUMBERS[text]


def protocol_name(number: int) -> str:
    return PROTOCOL_NAMES.get(number, str(number))


