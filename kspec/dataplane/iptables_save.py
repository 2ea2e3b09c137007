"""Read iptables rule TEXT: ``iptables-restore`` input and ``iptables-save`` output alike.

The verifier proves what is on disk, so this is where rule text becomes data.
Both dialects parse into one canonical form, so that the files ``kspec
compile`` writes and a live node's ``iptables-save`` compare equal when they
mean the same thing:

* host addresses gain ``/32`` (``/128``), host bits are masked, ``-s 0.0.0.0/0``
  and ``-p all`` (which match everything) disappear;
* ``-p tcp --dport 80`` gains the implicit ``-m tcp``, option aliases take
  their long name (``--destination-port`` -> ``dport``);
* ``MARK --or-mark M`` / ``--xor-mark`` / ``--set-mark`` become ``--set-xmark V/M``;
  REJECT gains ``--reject-with icmp-port-unreachable``; ``-m recent`` gains its
  defaults ``--name DEFAULT --mask 255.255.255.255 --rsource``; probabilities
  print with 11 decimals of the kernel's 31-bit threshold; marks in hex;
* counters (``[pkts:bytes]`` prefixes, ``-c``) are read and ignored by
  :func:`rule_key`.

Tokens follow iptables-restore, not the shell: only double quotes group, a
backslash escapes inside them.  A malformed line is an
:class:`~kspec.diagnostics.InputError` at file:line:col, never a traceback.

>>> rules = parse(open("iptables.rules").read(), "iptables.rules")   # doctest: +SKIP
>>> rules.tables["nat"].chains["KUBE-SERVICES"].rules[0].target      # doctest: +SKIP
'KUBE-SVC-5VPOOOK3IDHJF6GD'
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Iterator

from kspec.diagnostics import InputError, Span, error

BUILTIN_CHAINS: dict[str, tuple[str, ...]] = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}
# xtables targets (iptables-extensions(8)); anything else after -j must be a chain
KNOWN_TARGETS = frozenset(
    "ACCEPT DROP RETURN QUEUE REJECT DNAT SNAT MASQUERADE REDIRECT NETMAP MARK CONNMARK CONNSECMARK SECMARK "
    "LOG NFLOG ULOG TRACE AUDIT CT NOTRACK NFQUEUE TCPMSS TCPOPTSTRIP CLASSIFY DSCP TOS TTL HL ECN CHECKSUM "
    "TPROXY TEE SET IDLETIMER LED RATEEST SYNPROXY HMARK CLUSTERIP DNPT SNPT".split()
)
POLICIES = ("ACCEPT", "DROP")
PROTOCOL_NAMES = {"1": "icmp", "6": "tcp", "17": "udp", "132": "sctp", "58": "ipv6-icmp", "47": "gre",
                  "50": "esp", "51": "ah", "136": "udplite", "icmpv6": "ipv6-icmp", "icmp6": "ipv6-icmp"}
PROTOCOL_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "sctp": 132, "ipv6-icmp": 58, "gre": 47, "esp": 50,
                    "ah": 51, "udplite": 136}
PORT_PROTOCOLS = ("tcp", "udp", "sctp", "udplite")
CT_STATES = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT")
STATISTIC_SCALE = 0x80000000  # the kernel compares a 31-bit random number with round(p * 2^31)
FULL_MARK = 0xFFFFFFFF

# Options each match module knows, by their canonical name; aliases map to it.
MODULE_OPTIONS: dict[str, frozenset[str]] = {
    name: frozenset(options.split())
    for name, options in {
        "tcp": "sport dport tcp-flags syn tcp-option",
        "udp": "sport dport",
        "udplite": "sport dport",
        "sctp": "sport dport chunk-types",
        "icmp": "icmp-type",
        "icmp6": "icmpv6-type",
        "comment": "comment",
        "conntrack": "ctstate ctproto ctorigsrc ctorigdst ctreplsrc ctrepldst ctorigsrcport ctorigdstport "
                     "ctreplsrcport ctrepldstport ctstatus ctexpire ctdir",
        "state": "state",
        "addrtype": "src-type dst-type limit-iface-in limit-iface-out",
        "statistic": "mode probability every packet",
        "recent": "name set rcheck update remove seconds reap hitcount rttl mask rsource rdest",
        "mark": "mark",
        "connmark": "mark",
        "set": "match-set return-nomatch update-counters update-subcounters packets-eq packets-lt packets-gt "
               "bytes-eq bytes-lt bytes-gt",
        "multiport": "sports dports ports",
        "nfacct": "nfacct-name",
        "physdev": "physdev-in physdev-out physdev-is-in physdev-is-out physdev-is-bridged",
        "limit": "limit limit-burst",
        "iprange": "src-range dst-range",
        "mac": "mac-source",
        "pkttype": "pkt-type",
        "length": "length",
    }.items()
}
OPTION_ALIASES = {
    "source-port": "sport", "destination-port": "dport", "source-ports": "sports",
    "destination-ports": "dports", "src": "source", "dst": "destination",
}
# Options that take no value (so the next token is not theirs).
FLAG_OPTIONS = frozenset(
    "syn set rcheck update remove reap rttl rsource rdest limit-iface-in limit-iface-out physdev-is-in "
    "physdev-is-out physdev-is-bridged return-nomatch update-counters update-subcounters random random-fully "
    "persistent log-tcp-sequence log-tcp-options log-ip-options log-uid log-macdecode save-mark restore-mark "
    "notrack".split()
)
TARGET_OPTIONS: dict[str, frozenset[str]] = {
    name: frozenset(options.split())
    for name, options in {
        "DNAT": "to-destination random persistent",
        "SNAT": "to-source random random-fully persistent",
        "MASQUERADE": "to-ports random random-fully",
        "REDIRECT": "to-ports random",
        "MARK": "set-xmark set-mark and-mark or-mark xor-mark",
        "REJECT": "reject-with",
        "LOG": "log-level log-prefix log-tcp-sequence log-tcp-options log-ip-options log-uid log-macdecode",
        "NFLOG": "nflog-group nflog-prefix nflog-range nflog-size nflog-threshold",
        "ACCEPT": "", "DROP": "", "RETURN": "",
    }.items()
}
REJECT_ALIASES = {
    "net-unreach": "icmp-net-unreachable", "host-unreach": "icmp-host-unreachable",
    "port-unreach": "icmp-port-unreachable", "proto-unreach": "icmp-proto-unreachable",
    "net-prohib": "icmp-net-prohibited", "host-prohib": "icmp-host-prohibited",
    "admin-prohib": "icmp-admin-prohibited", "tcp-rst": "tcp-reset",
    "icmp6-adm-prohibited": "icmp6-adm-prohibited", "adm-prohibited": "icmp6-adm-prohibited",
    "no-route": "icmp6-no-route", "addr-unreach": "icmp6-addr-unreachable",
}
CORE_OPTIONS = {
    "-s": "source", "--source": "source", "--src": "source",
    "-d": "destination", "--destination": "destination", "--dst": "destination",
    "-p": "protocol", "--protocol": "protocol",
    "-i": "in-interface", "--in-interface": "in-interface",
    "-o": "out-interface", "--out-interface": "out-interface",
    "-f": "fragment", "--fragment": "fragment",
}
CORE_ORDER = ("source", "destination", "in-interface", "out-interface", "protocol", "fragment")
FOREIGN_CHAIN_PREFIXES = ("DOCKER", "CNI-", "KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "cali-", "FLANNEL")


# --- the parsed form -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    """One option of a match: ``! --ctstate NEW`` is Option("ctstate", ("NEW",), True)."""

    name: str  # canonical long name without dashes
    values: tuple[str, ...] = ()
    negated: bool = False

    def text(self) -> str:
        words = (["!"] if self.negated else []) + [f"--{self.name}"] + [_quote(v) for v in self.values]
        return " ".join(words)


@dataclass(frozen=True, slots=True)
class Match:
    """One match of a rule; core matches (-s -d -p -i -o -f) have module "" and one option."""

    module: str
    options: tuple[Option, ...] = ()

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def text(self) -> str:
        if not self.module:
            opt = self.options[0]
            flag = {"source": "-s", "destination": "-d", "protocol": "-p", "in-interface": "-i",
                    "out-interface": "-o", "fragment": "-f"}[opt.name]
            return " ".join((["!"] if opt.negated else []) + [flag] + list(opt.values))
        return " ".join([f"-m {self.module}"] + [o.text() for o in sorted(self.options, key=lambda o: o.name)])


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``-A CHAIN ...`` line; ``line`` is its 1-based line number in the file."""

    chain: str
    line: int
    text: str
    matches: tuple[Match, ...]
    target: str  # "" when the rule has no -j/-g
    target_args: dict[str, str] = field(default_factory=dict, hash=False)
    goto: bool = False
    table: str = ""
    counters: tuple[int, int] | None = None

    def match(self, module: str) -> Match | None:
        return next((m for m in self.matches if m.module == module), None)

    def core(self, name: str) -> Option | None:
        """The core option ``name`` (source, destination, protocol, ...), if the rule has it."""
        for m in self.matches:
            if not m.module and m.options[0].name == name:
                return m.options[0]
        return None


@dataclass(frozen=True, slots=True)
class Chain:
    name: str
    policy: str | None  # ACCEPT/DROP for built-in chains, None for user chains ("-")
    rules: tuple[Rule, ...] = ()
    line: int = 0  # where it was declared (0: a built-in chain never declared)
    counters: tuple[int, int] | None = None

    @property
    def builtin(self) -> bool:
        return self.policy is not None


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    chains: dict[str, Chain] = field(hash=False)


@dataclass(frozen=True, slots=True)
class RuleSet:
    tables: dict[str, Table] = field(hash=False)
    family: int = 4
    name: str = "<rules>"

    def chain(self, table: str, name: str) -> Chain | None:
        t = self.tables.get(table)
        return t.chains.get(name) if t else None

    def rules(self) -> Iterator[Rule]:
        for table in self.tables.values():
            for chain in table.chains.values():
                yield from chain.rules


def canonical_text(rule: Rule) -> str:
    """The rule as iptables-save prints it (core matches first, options sorted), counters dropped."""
    core = sorted((m for m in rule.matches if not m.module), key=lambda m: CORE_ORDER.index(m.options[0].name))
    parts = [f"-A {rule.chain}"] + [m.text() for m in core] + [m.text() for m in rule.matches if m.module]
    if rule.target:
        parts.append(f"{'-g' if rule.goto else '-j'} {rule.target}")
        for key in sorted(rule.target_args):
            value = rule.target_args[key]
            parts.append(f"--{key} {_quote(value)}" if value else f"--{key}")
    return " ".join(parts)


def rule_key(rule: Rule) -> tuple:
    """What two rules must share to be the same rule: matches as a set, target, target options."""
    return (rule.chain, tuple(sorted(m.text() for m in rule.matches)), rule.goto, rule.target,
            tuple(sorted(rule.target_args.items())))


def is_foreign_chain(name: str) -> bool:
    """Chains other components install beside kube-proxy's (Docker, CNI plugins, kubelet)."""
    return name.startswith(FOREIGN_CHAIN_PREFIXES)


def _quote(value: str) -> str:
    if value and not any(c in value for c in ' \t"\\'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- tokens --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    text: str
    col: int  # 1-based
    quoted: bool


_NO_QUOTES: frozenset[int] = frozenset()


def _tokens(line: str, name: str, number: int) -> list[_Token]:
    """iptables-restore's tokeniser: whitespace splits, double quotes group, backslash escapes in quotes."""
    out: list[_Token] = []
    buf: list[str] = []
    start = -1
    quoted = in_quote = escaped = False
    for i, ch in enumerate(line):
        if in_quote:
            if escaped:
                buf.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_quote = False
            else:
                buf.append(ch)
            continue
        if ch == '"':
            if start < 0:
                start = i
            in_quote = quoted = True
        elif ch in " \t\r\n":
            if start >= 0:
                out.append(_Token("".join(buf), start + 1, quoted))
                buf, start, quoted = [], -1, False
        else:
            if start < 0:
                start = i
            buf.append(ch)
    if in_quote:
        raise InputError(error("unterminated double quote", Span(name, number, start + 1, number, len(line) + 1),
                               'close the quote: --comment "text"'))
    if start >= 0:
        out.append(_Token("".join(buf), start + 1, quoted))
    return out


def _split(line: str) -> tuple[list[str], frozenset[int]] | None:
    """The tokens of a line quickly, with the indexes of quoted ones; None when only the slow path can tell."""
    if '"' not in line:
        return line.split(), _NO_QUOTES
    if "\\" in line:
        return None
    parts = line.split('"')
    last = len(parts) - 1
    if last % 2:
        return None  # unterminated: the slow path reports it
    words: list[str] = []
    quoted = set()
    for k, part in enumerate(parts):
        if k % 2:
            quoted.add(len(words))
            words.append(part)
            continue
        glued_left = k > 0 and (not part[0].isspace() if part else k != last)
        glued_right = k < last and (not part[-1].isspace() if part else k != 0)
        if glued_left or glued_right:
            return None  # a quote glued to other text: the slow path joins them as iptables does
        words.extend(part.split())
    return words, frozenset(quoted)


class _Where:
    """The position of the line being parsed; columns are computed only when an error needs them."""

    __slots__ = ("name", "line", "text")

    def __init__(self, name: str) -> None:
        self.name = name
        self.line = 0
        self.text = ""

    def fail(self, col: int, end_col: int, message: str, hint: str = "") -> InputError:
        return InputError(error(message, Span(self.name, self.line, col, self.line, max(end_col, col + 1)), hint))

    def at(self, index: int, message: str, hint: str = "") -> InputError:
        """An error at the ``index``-th token of the line."""
        tokens = _tokens(self.text, self.name, self.line)
        if not tokens:
            return self.fail(1, 2, message, hint)
        tok = tokens[min(index, len(tokens) - 1)]
        return self.fail(tok.col, tok.col + len(tok.text) + (2 if tok.quoted else 0), message, hint)

    def whole(self, message: str, hint: str = "") -> InputError:
        return self.fail(1, len(self.text) + 1, message, hint)


# --- the parser ----------------------------------------------------------------------------


class _TableBuilder:
    def __init__(self, name: str, line: int) -> None:
        self.name = name
        self.line = line
        self.chains: dict[str, list] = {}  # name -> [policy, line, counters, rules list]
        for builtin in BUILTIN_CHAINS[name]:
            self.chains[builtin] = ["ACCEPT", 0, None, []]

    def freeze(self, name: str) -> Table:
        chains = {}
        known = self.chains
        for chain_name, (policy, line, counters, rules) in known.items():
            for rule in rules:
                target = rule.target
                if target and target not in known and target not in KNOWN_TARGETS:
                    raise InputError(error(
                        f"rule jumps to {target!r}, which is neither a chain of table {self.name} nor a target",
                        Span(name, rule.line, 1, rule.line, len(rule.text) + 1),
                        f"declare the chain with ':{target} - [0:0]' or fix the target name"))
                if rule.goto and target not in known:
                    raise InputError(error(f"-g needs a chain, not the target {target}",
                                           Span(name, rule.line, 1, rule.line, len(rule.text) + 1),
                                           "use -j for targets"))
            chains[chain_name] = Chain(chain_name, policy, tuple(rules), line, counters)
        return Table(self.name, chains)


_COUNTERS_ZERO = "[0:0]"


class _Parser:
    def __init__(self, text: str, name: str, family: int | None) -> None:
        self.text = text
        self.name = name
        self.family = family
        self.seen_family: int | None = None
        self.tables: dict[str, Table] = {}
        self.current: _TableBuilder | None = None
        self.where = _Where(name)
        self.options: dict[tuple, Option] = {}  # interned canonical options
        self.matches: dict[tuple, Match] = {}  # interned matches
        self.networks: dict[str, str] = {}  # address text -> canonical CIDR
        self.fixups: list[tuple[str, str, Rule]] = []  # rules whose defaults wait for the family

    @property
    def known_family(self) -> int | None:
        return self.family or self.seen_family

    def run(self) -> RuleSet:
        where = self.where
        for number, raw in enumerate(self.text.split("\n"), start=1):
            if not raw or raw[0] == "#":
                continue
            where.line = number
            where.text = raw
            if "\x00" in raw:
                col = raw.index("\x00") + 1
                raise where.fail(col, col + 1, "NUL byte in rule text", "the file is not iptables text")
            head = raw[0]
            if head == "-" or head == "[":
                self._command(raw)
            elif head == ":":
                self._declare(raw)
            else:
                stripped = raw.strip()
                if not stripped or stripped[0] == "#":
                    continue
                if stripped[0] == "*":
                    self._table(stripped, raw)
                elif stripped == "COMMIT":
                    self._commit()
                elif stripped[0] in ":-[":
                    where.text = raw.strip()
                    (self._declare if stripped[0] == ":" else self._command)(stripped)
                else:
                    raise where.at(0, f"unexpected {stripped.split()[0]!r}",
                                   "lines are *table, :CHAIN POLICY [0:0], -A CHAIN ..., COMMIT or # comments")
        if self.current is not None:
            where.line, where.text = self.current.line, "*" + self.current.name
            raise where.whole(f"table {self.current.name} has no COMMIT", "end every table with a COMMIT line")
        family = self.family or self.seen_family or 4
        return RuleSet(self._fix_defaults(family), family, self.name)

    # -- structure

    def _table(self, stripped: str, raw: str) -> None:
        where = self.where
        name = stripped[1:].strip()
        col = raw.index("*") + 1
        if self.current is not None:
            raise where.fail(col, col + len(stripped), f"table {name} starts before table {self.current.name} "
                             f"(line {self.current.line}) is committed", "add COMMIT before the new table")
        if name not in BUILTIN_CHAINS:
            raise where.fail(col + 1, col + 1 + len(name), f"unknown table {name!r}",
                             "expected one of " + ", ".join(BUILTIN_CHAINS))
        if name in self.tables:
            raise where.fail(col, col + len(stripped), f"table {name} appears twice", "merge the two sections")
        self.current = _TableBuilder(name, where.line)

    def _commit(self) -> None:
        if self.current is None:
            raise self.where.whole("COMMIT outside a table", "start the table with *nat or *filter")
        self.tables[self.current.name] = self.current.freeze(self.name)
        self.current = None

    def _need_table(self) -> _TableBuilder:
        if self.current is None:
            raise self.where.whole("rule outside a table", "start the table with a line like *nat")
        return self.current

    def _declare(self, line: str) -> None:
        where = self.where
        table = self._need_table()
        if line.endswith(" - [0:0]") and " " not in line[1:-8] and len(line) > 9:
            name, policy, counters = line[1:-8], "-", (0, 0)
        else:
            split = _split(line)
            words = split[0] if split else [t.text for t in _tokens(line, self.name, where.line)]
            name = words[0][1:]
            if not name:
                raise where.at(0, "chain declaration without a name", "write ':CHAIN - [0:0]'")
            if len(words) < 2:
                raise where.at(0, f"chain {name} has no policy", "write ':CHAIN - [0:0]' (or ACCEPT/DROP)")
            if len(words) > 3:
                raise where.at(3, "unexpected text after the chain declaration", "write ':CHAIN POLICY [0:0]'")
            policy = words[1]
            counters = self._counters(words[2], 2) if len(words) > 2 else None
        builtin = name in BUILTIN_CHAINS[table.name]
        if builtin and policy not in POLICIES:
            raise where.at(1, f"built-in chain {name} needs policy ACCEPT or DROP, not {policy!r}",
                           "write ':INPUT ACCEPT [0:0]'")
        if not builtin and policy != "-":
            raise where.at(1, f"user chain {name} cannot have a policy ({policy})", f"write ':{name} - [0:0]'")
        previous = table.chains.get(name)
        if previous is not None and previous[1]:
            raise where.at(0, f"chain {name} is declared twice (first at line {previous[1]})",
                           "remove one of the declarations")
        table.chains[name] = [policy if builtin else None, where.line, counters, []]

    def _counters(self, text: str, index: int) -> tuple[int, int]:
        if text == _COUNTERS_ZERO:
            return (0, 0)
        packets, sep, octets = text[1:-1].partition(":")
        if not (text.startswith("[") and text.endswith("]") and sep and packets.isdigit() and octets.isdigit()):
            raise self.where.at(index, f"bad counters {text!r}", "counters look like [packets:bytes]")
        return int(packets), int(octets)

    def _command(self, line: str) -> None:
        where = self.where
        table = self._need_table()
        split = _split(line)
        if split is None:
            tokens = _tokens(line, self.name, where.line)
            split = ([t.text for t in tokens], frozenset(i for i, t in enumerate(tokens) if t.quoted))
        words, quoted = split
        start = 0
        counters = None
        if words[0][0] == "[":
            counters = self._counters(words[0], 0)
            start = 1
            if len(words) < 2:
                raise where.whole("counters without a rule", "write '[0:0] -A CHAIN ...'")
        verb = words[start]
        if verb in ("-A", "--append", "-I", "--insert"):
            self._rule(table, line, words, quoted, start, counters)
        elif verb in ("-N", "--new-chain"):
            name = self._chain_arg(words, start)
            if name in table.chains:
                raise where.at(start + 1, f"chain {name} already exists", "remove the -N line")
            table.chains[name] = [None, where.line, None, []]
        elif verb in ("-X", "--delete-chain", "-F", "--flush", "-Z", "--zero"):
            flush = verb in ("-F", "--flush", "-Z", "--zero")
            names = [self._chain_arg(words, start)] if len(words) > start + 1 else [
                n for n in table.chains if flush or n not in BUILTIN_CHAINS[table.name]]
            for name in names:
                if name not in table.chains:
                    raise where.at(start + 1, f"chain {name} does not exist in table {table.name}",
                                   "declare it first or drop the line")
                if verb in ("-F", "--flush"):
                    table.chains[name][3] = []
                elif verb in ("-X", "--delete-chain"):
                    if name in BUILTIN_CHAINS[table.name]:
                        raise where.at(start + 1, f"built-in chain {name} cannot be deleted", "drop the -X line")
                    del table.chains[name]
        else:
            raise where.at(start, f"unexpected {verb!r}",
                           "rule lines start with -A CHAIN (also -I, -N, -X, -F), declarations with ':'")

    def _chain_arg(self, words: list[str], start: int) -> str:
        if len(words) < start + 2:
            raise self.where.at(start, f"{words[start]} needs a chain name", f"write '{words[start]} CHAIN'")
        return words[start + 1]

    # -- one rule

    def _rule(self, table: _TableBuilder, line: str, words: list[str], quoted: frozenset[int], start: int,
              counters) -> None:
        where = self.where
        name = self._chain_arg(words, start)
        chain = table.chains.get(name)
        if chain is None:
            raise where.at(start + 1, f"chain {name} does not exist in table {table.name}",
                           f"declare it before its rules: ':{name} - [0:0]'")
        body = start + 2
        position = None
        if words[start] in ("-I", "--insert"):
            position = 1
            if len(words) > body and words[body].isdigit():
                position = int(words[body])
                if not 1 <= position <= len(chain[3]) + 1:
                    raise where.at(body, f"cannot insert at {position}: chain {name} has {len(chain[3])} rules",
                                   "use a position from 1 to the rule count + 1")
                body += 1
        matches, target, target_args, goto, extra, pending = _RuleReader(self, words, quoted, body).read()
        rule = Rule(name, where.line, line.strip(), matches, target, target_args, goto, table.name,
                    counters or extra)
        if pending:
            self.fixups.append((table.name, name, rule))
        if position is None:
            chain[3].append(rule)
        else:
            chain[3].insert(position - 1, rule)

    def _fix_defaults(self, family: int) -> dict[str, Table]:
        """Fill the family-dependent defaults of rules read before the family was known."""
        if not self.fixups:
            return self.tables
        reject = "icmp6-port-unreachable" if family == 6 else "icmp-port-unreachable"
        fixed: dict[tuple[str, str], dict[int, Rule]] = {}
        for table, chain, rule in self.fixups:
            new = rule
            if rule.target == "REJECT" and "reject-with" not in rule.target_args:
                new = replace(new, target_args={**rule.target_args, "reject-with": reject})
            recent = rule.match("recent")
            if recent is not None and recent.option("mask") is None:
                mask = Option("mask", (_full_mask(family),))
                grown = Match("recent", tuple(sorted(recent.options + (mask,), key=lambda o: o.name)))
                new = replace(new, matches=tuple(grown if m is recent else m for m in rule.matches))
            fixed.setdefault((table, chain), {})[id(rule)] = new
        tables = dict(self.tables)
        for (table, chain), by_id in fixed.items():
            old = tables[table]
            rules = tuple(by_id.get(id(r), r) for r in old.chains[chain].rules)
            tables[table] = Table(table, {**old.chains, chain: replace(old.chains[chain], rules=rules)})
        return tables


def _full_mask(family: int) -> str:
    return "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" if family == 6 else "255.255.255.255"


class _RuleReader:
    """Reads the options of one rule (tokens ``words[start:]``) into matches and a target."""

    __slots__ = ("parser", "words", "quoted", "start", "where", "core", "modules", "target", "target_index",
                 "target_options", "goto", "counters", "pending")

    def __init__(self, parser: _Parser, words: list[str], quoted: frozenset[int], start: int) -> None:
        self.parser = parser
        self.words = words
        self.quoted = quoted
        self.start = start
        self.where = parser.where
        self.core: dict[str, Option] = {}
        self.modules: list[tuple[str, list[Option], int]] = []
        self.target = ""
        self.target_index = 0
        self.target_options: list[tuple[Option, int]] = []
        self.goto = False
        self.counters = None
        self.pending = False

    def read(self):
        words, quoted, where = self.words, self.quoted, self.where
        i, n = self.start, len(words)
        negate = -1
        while i < n:
            text = words[i]
            if text == "!" and i not in quoted:
                if negate >= 0:
                    raise where.at(i, "'!' twice", "negate an option once")
                negate = i
                i += 1
                continue
            if i in quoted:
                raise where.at(i, f"unexpected {text!r}", "options start with '-' (quote values that contain spaces)")
            core = CORE_OPTIONS.get(text)
            if core is not None:
                if core in self.core:
                    raise where.at(i, f"{text} given twice", "a rule takes each of -s -d -p -i -o once")
                if core == "fragment":
                    self.core[core] = Option(core, (), negate >= 0)
                    i += 1
                else:
                    self.core[core] = self._core(core, self._value(i, "a value"), negate >= 0, i + 1)
                    i += 2
            elif text == "-m" or text == "--match":
                if negate >= 0:
                    raise where.at(negate, "'!' cannot negate -m", "put '!' before the module's option")
                self.modules.append((self._value(i, "a module name"), [], i + 1))
                i += 2
            elif text.startswith("--") and len(text) > 2:
                i = self._long_option(i, negate)
            elif text in ("-j", "--jump", "-g", "--goto"):
                if negate >= 0:
                    raise where.at(negate, "'!' cannot negate a target", "remove the '!'")
                if self.target:
                    raise where.at(i, "a rule has one target", "split it into two rules")
                self.target = self._value(i, "a target or chain name")
                self.target_index = i + 1
                self.goto = text in ("-g", "--goto")
                i += 2
            elif text in ("-c", "--set-counters"):
                if i + 2 >= n:
                    raise where.at(i, "-c needs packets and bytes", "write -c PACKETS BYTES")
                if not (words[i + 1].isdigit() and words[i + 2].isdigit()):
                    raise where.at(i + 1, "bad counters", "write -c PACKETS BYTES")
                self.counters = (int(words[i + 1]), int(words[i + 2]))
                i += 3
            else:
                raise where.at(i, f"unexpected {text!r}", "options start with '-' (quote values that contain spaces)")
            negate = -1
        if negate >= 0:
            raise where.at(negate, "'!' at the end of the rule", "put '!' before an option")
        return self._assemble()

    def _value(self, i: int, what: str) -> str:
        if i + 1 >= len(self.words):
            raise self.where.at(i, f"{self.words[i]} needs {what}", f"write {self.words[i]} VALUE")
        return self.words[i + 1]

    def _long_option(self, i: int, negate: int) -> int:
        words, quoted = self.words, self.quoted
        raw = words[i][2:]
        name = OPTION_ALIASES.get(raw, raw)
        j = i + 1
        if name not in FLAG_OPTIONS:
            n = len(words)
            while j < n:
                nxt = words[j]
                if j not in quoted and (nxt == "!" or (nxt[:1] == "-" and len(nxt) > 1)):
                    break
                j += 1
        values = tuple(words[i + 1:j])
        target = self.target
        if target and (target not in TARGET_OPTIONS or name in TARGET_OPTIONS[target]):
            if negate >= 0:
                raise self.where.at(negate, "target options cannot be negated", "remove the '!'")
            self.target_options.append((Option(name, values), i))
            return j
        self._owner(name, i).append((name, values, negate >= 0, i))
        return j

    def _owner(self, name: str, index: int) -> list:
        """The match an option belongs to: the latest module that knows it, else an implicit one."""
        for module, options, _ in reversed(self.modules):
            if name in MODULE_OPTIONS.get(module, ()):
                return options
        proto = self.core.get("protocol")
        if proto is not None and not proto.negated and name in MODULE_OPTIONS.get(proto.values[0], ()):
            options: list = []
            self.modules.append((proto.values[0], options, index))
            return options
        if self.modules and self.modules[-1][0] not in MODULE_OPTIONS:
            return self.modules[-1][1]  # an unknown module: its options are opaque
        where = f"-m {self.modules[-1][0]}" if self.modules else "the rule"
        raise self.where.at(index, f"unknown option --{name} for {where}",
                            "load the module that defines it with -m MODULE before the option")

    def _core(self, name: str, value: str, negated: bool, index: int) -> Option:
        key = (name, value, negated)
        cached = self.parser.options.get(key)
        if cached is not None:
            if name in ("source", "destination") and self.parser.known_family is None:
                self.parser.seen_family = 6 if ":" in cached.values[0] else 4
            return cached
        if name in ("source", "destination"):
            option = Option(name, tuple(self._network(part, index) for part in value.split(",")), negated)
        elif name == "protocol":
            proto = value.lower()
            proto = PROTOCOL_NAMES.get(proto, proto)
            if not proto.isdigit() and proto not in PROTOCOL_NUMBERS and proto != "all":
                raise self.where.at(index, f"unknown protocol {value!r}", "use tcp, udp, sctp, icmp or a number")
            option = Option(name, ("all" if proto == "0" else proto,), negated)
        else:
            option = Option(name, (value,), negated)
        self.parser.options[key] = option
        return option

    def _network(self, text: str, index: int) -> str:
        canonical = self.parser.networks.get(text) or _fast_v4_network(text)
        if canonical is None:
            address, slash, mask = text.partition("/")
            try:
                ip = ipaddress.ip_address(address)
                if not slash:
                    length = ip.max_prefixlen
                elif mask.isdigit():
                    length = int(mask)
                elif ip.version == 4:
                    length = ipaddress.ip_network(f"0.0.0.0/{mask}").prefixlen
                else:
                    raise ValueError(mask)
                canonical = str(ipaddress.ip_network(f"{ip}/{length}", strict=False))
            except ValueError:
                raise self.where.at(index, f"{text!r} is not an address or CIDR",
                                    "write an address (10.0.0.1) or a CIDR (10.0.0.0/8); names are not resolved"
                                    ) from None
            self.parser.networks[text] = canonical
        version = 6 if ":" in canonical else 4
        expected = self.parser.known_family
        if expected is not None and version != expected:
            raise self.where.at(index, f"IPv{version} address in an IPv{expected} rule set",
                                "keep IPv4 rules in iptables files and IPv6 rules in ip6tables files")
        self.parser.seen_family = version
        return canonical

    # -- canonical form

    def _assemble(self):
        matches: list[Match] = []
        core = self.core
        if core:
            for name in CORE_ORDER:
                opt = core.get(name)
                if opt is None:
                    continue
                if not opt.negated and opt.values in (("0.0.0.0/0",), ("::/0",), ("all",)):
                    continue  # matches every packet: iptables-save drops it
                matches.append(self._intern("", (opt,)))
        proto = core.get("protocol")
        for module, options, index in self.modules:
            if module in PORT_PROTOCOLS and (proto is None or proto.negated or proto.values[0] != module):
                raise self.where.at(index, f"-m {module} needs -p {module}", f"add -p {module} to the rule")
            canonical = [self._option(module, *o) for o in options]
            if module == "recent":
                canonical = self._recent_defaults(canonical)
            elif module == "statistic":
                mode = next((o.values[0] for o in canonical if o.name == "mode"), None)
                if mode not in ("random", "nth"):
                    raise self.where.at(index, "-m statistic needs --mode random or --mode nth",
                                        "write --mode random")
            matches.append(self._intern(module, tuple(sorted(canonical, key=_option_name))))
        target_args = self._target_args()
        if self.target == "REJECT" and "reject-with" not in target_args:
            family = self.parser.known_family
            if family is None:
                self.pending = True
            else:
                target_args["reject-with"] = "icmp6-port-unreachable" if family == 6 else "icmp-port-unreachable"
        return tuple(matches), self.target, target_args, self.goto, self.counters, self.pending

    def _intern(self, module: str, options: tuple[Option, ...]) -> Match:
        key = (module, options)
        match = self.parser.matches.get(key)
        if match is None:
            match = self.parser.matches[key] = Match(module, options)
        return match

    def _recent_defaults(self, options: list[Option]) -> list[Option]:
        names = {o.name for o in options}
        if "name" not in names:
            options.append(Option("name", ("DEFAULT",)))
        if "rdest" not in names and "rsource" not in names:
            options.append(Option("rsource"))
        if "mask" not in names:
            family = self.parser.known_family
            if family is None:
                self.pending = True
            else:
                options.append(Option("mask", (_full_mask(family),)))
        return options

    def _option(self, module: str, name: str, values: tuple[str, ...], negated: bool, index: int) -> Option:
        key = (module, name, values, negated)
        cached = self.parser.options.get(key)
        if cached is not None:
            return cached
        where = self.where
        if name in ("sport", "dport"):
            values = (self._port_range(self._one(name, values, index), index),)
        elif name in ("sports", "dports", "ports"):
            values = (",".join(self._port_range(v, index) for v in self._one(name, values, index).split(",")),)
        elif name == "mark" and module in ("mark", "connmark"):
            value, mask = self._mark(self._one(name, values, index), index)
            values = (f"0x{value:x}" if mask == FULL_MARK else f"0x{value:x}/0x{mask:x}",)
        elif name in ("ctstate", "state"):
            states = self._one(name, values, index).upper().split(",")
            bad = [s for s in states if s not in CT_STATES]
            if bad:
                raise where.at(index, f"unknown conntrack state {bad[0]}", "use " + ",".join(CT_STATES))
            values = (",".join(s for s in CT_STATES if s in states),)
        elif name in ("src-type", "dst-type"):
            values = (self._one(name, values, index).upper(),)
        elif name == "probability":
            values = (self._probability(self._one(name, values, index), index),)
        elif name == "mode":
            values = (self._one(name, values, index).lower(),)
        elif name in ("every", "packet", "seconds", "hitcount", "limit-burst"):
            number = self._one(name, values, index)
            if not number.isdigit():
                raise where.at(index, f"--{name} needs a number, not {number!r}", f"write --{name} 10")
            values = (str(int(number)),)
        elif name in ("comment", "name", "mask", "nfacct-name") and module in ("comment", "recent", "nfacct"):
            values = (self._one(name, values, index),)
        option = self.parser.options[key] = Option(name, values, negated)
        return option

    def _one(self, name: str, values: tuple[str, ...], index: int) -> str:
        if len(values) != 1:
            raise self.where.at(index, f"--{name} takes one value, got {len(values)}", f"write --{name} VALUE")
        return values[0]

    def _port_range(self, text: str, index: int) -> str:
        low, sep, high = text.partition(":")
        try:
            lo = int(low) if low else 0
            hi = int(high) if high else (65535 if sep else lo)
        except ValueError:
            raise self.where.at(index, f"{text!r} is not a port or port range", "write 80 or 80:90") from None
        if not (0 <= lo <= 65535 and 0 <= hi <= 65535) or lo > hi:
            raise self.where.at(index, f"port range {text!r} is out of 0-65535 or reversed", "write 80 or 80:90")
        return str(lo) if lo == hi else f"{lo}:{hi}"

    def _mark(self, text: str, index: int) -> tuple[int, int]:
        value, slash, mask = text.partition("/")
        try:
            v = int(value, 0)
            m = int(mask, 0) if slash else FULL_MARK
        except ValueError:
            raise self.where.at(index, f"{text!r} is not a mark", "write 0x4000 or 0x4000/0x4000") from None
        if not (0 <= v <= FULL_MARK and 0 <= m <= FULL_MARK):
            raise self.where.at(index, f"mark {text!r} does not fit 32 bits", "marks are 32-bit values")
        return v, m

    def _probability(self, text: str, index: int) -> str:
        try:
            p = float(text)
        except ValueError:
            p = -1.0
        if not 0.0 <= p <= 1.0:
            raise self.where.at(index, f"probability {text!r} is not a number from 0 to 1", "write 0.5")
        threshold = int(p * STATISTIC_SCALE + 0.5)  # libxt_statistic: lround(0x80000000 * p)
        return f"{threshold / STATISTIC_SCALE:.11f}"

    def _target_args(self) -> dict[str, str]:
        where = self.where
        target = self.target
        args: dict[str, str] = {}
        for opt, index in self.target_options:
            if len(opt.values) > 1:
                raise where.at(index, f"--{opt.name} takes one value", f"write --{opt.name} VALUE")
            args[opt.name] = opt.values[0] if opt.values else ""
        if target == "MARK":
            if len(args) != 1:
                raise where.at(self.target_index, "MARK needs exactly one of --set-xmark, --set-mark, --or-mark, "
                               "--xor-mark, --and-mark", "write -j MARK --or-mark 0x4000")
            ((kind, text),) = args.items()
            if kind in ("set-xmark", "set-mark"):
                value, mask = self._mark(text, self.target_index)
                if kind == "set-mark":
                    mask |= value
            else:
                if "/" in text:
                    raise where.at(self.target_index, f"--{kind} takes a value without a mask",
                                   f"write --{kind} 0x4000")
                value, _ = self._mark(text, self.target_index)
                value, mask = {"or-mark": (value, value), "xor-mark": (value, 0),
                               "and-mark": (0, ~value & FULL_MARK)}[kind]
            args = {"set-xmark": f"0x{value:x}/0x{mask:x}"}
        elif target == "REJECT" and "reject-with" in args:
            args["reject-with"] = REJECT_ALIASES.get(args["reject-with"], args["reject-with"])
        elif target in ("DNAT", "SNAT"):
            key = "to-destination" if target == "DNAT" else "to-source"
            if not args.get(key):
                raise where.at(self.target_index, f"{target} needs --{key}", f"write -j {target} --{key} IP:PORT")
            try:
                parse_nat_range(args[key])
            except ValueError as exc:
                raise where.at(self.target_index, f"bad NAT address {args[key]!r}: {exc}",
                               "write 10.0.0.1:8080 or [fd00::1]:8080") from None
        return args


def _v4_int(text: str) -> int | None:
    """A dotted-quad IPv4 address as an int, or None (then ipaddress decides, with its error)."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    value = 0
    for part in parts:
        if not part.isdigit() or len(part) > 3 or (len(part) > 1 and part[0] == "0"):
            return None
        octet = int(part)
        if octet > 255:
            return None
        value = value << 8 | octet
    return value


def _fast_v4_network(text: str) -> str | None:
    """``10.0.0.1`` -> ``10.0.0.1/32``, ``10.1.2.3/16`` -> ``10.1.0.0/16`` without ipaddress's cost."""
    address, slash, length = text.partition("/")
    value = _v4_int(address)
    if value is None:
        return None
    if not slash:
        return address + "/32"
    if not length.isdigit() or int(length) > 32:
        return None
    bits = int(length)
    network = value & ~((1 << (32 - bits)) - 1) & 0xFFFFFFFF
    if network == value:
        return text
    return f"{network >> 24}.{network >> 16 & 255}.{network >> 8 & 255}.{network & 255}/{bits}"


def _option_name(option: Option) -> str:
    return option.name


def parse_nat_range(text: str) -> tuple[tuple, tuple[int, int] | None]:
    """``10.0.0.1:80``, ``10.0.0.1-10.0.0.9:80-90``, ``[fd00::1]:80`` -> ((first, last) address, ports)."""
    host, _, port = text.partition(":")
    if port.isdigit() and _v4_int(host) is not None and 0 < int(port) <= 65535:
        address = ipaddress.IPv4Address(_v4_int(host))
        return (address, address), (int(port), int(port))
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError("missing ']'")
        ports = rest[1:] if rest.startswith(":") else None
        if rest and ports is None:
            raise ValueError("text after ']' must be ':PORT'")
    elif text.count(":") == 1:
        host, _, ports = text.partition(":")
    else:
        host, ports = text, None  # an address without a port (IPv6 when it has colons)
    first, _, last = host.partition("-")
    lo_ip = ipaddress.ip_address(first)
    hi_ip = ipaddress.ip_address(last) if last else lo_ip
    if lo_ip.version != hi_ip.version or lo_ip > hi_ip:
        raise ValueError("the address range is reversed or mixes families")
    port_range = None
    if ports is not None:
        low, _, high = ports.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError("ports must be numbers")
        port_range = (int(low), int(high) if high else int(low))
        if not 0 < port_range[0] <= port_range[1] <= 65535:
            raise ValueError("ports must be 1-65535")
    return (lo_ip, hi_ip), port_range


def parse(text: str, name: str = "<rules>", family: int | None = None) -> RuleSet:
    """Parse iptables-restore input or iptables-save output (``family`` 4/6, or None to infer)."""
    if family not in (None, 4, 6):
        raise ValueError(f"family must be 4, 6 or None, not {family!r}")
    return _Parser(text, name, family).run()
