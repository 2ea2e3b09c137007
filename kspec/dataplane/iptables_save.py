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


def _tokens(line: str, where: "_Where") -> list[_Token]:
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
        raise where.fail(start + 1, len(line) + 1, "unterminated double quote",
                         'close the quote: --comment "text"')
    if start >= 0:
        out.append(_Token("".join(buf), start + 1, quoted))
    return out


def _fast_tokens(line: str) -> list[_Token] | None:
    """Plain whitespace split for the common unquoted line (columns found on demand)."""
    if '"' in line:
        return None
    out = []
    pos = 0
    for word in line.split():
        pos = line.index(word, pos)
        out.append(_Token(word, pos + 1, False))
        pos += len(word)
    return out


@dataclass
class _Where:
    name: str
    line: int

    def fail(self, col: int, end_col: int, message: str, hint: str = "") -> InputError:
        return InputError(error(message, Span(self.name, self.line, col, self.line, max(end_col, col + 1)), hint))

    def at(self, token: _Token, message: str, hint: str = "") -> InputError:
        return self.fail(token.col, token.col + len(token.text) + (2 if token.quoted else 0), message, hint)


# --- the parser ----------------------------------------------------------------------------


class _TableBuilder:
    def __init__(self, name: str, line: int) -> None:
        self.name = name
        self.line = line
        self.chains: dict[str, list] = {}  # name -> [policy, line, counters, rules list]
        for builtin in BUILTIN_CHAINS[name]:
            self.chains[builtin] = ["ACCEPT", 0, None, []]

    def freeze(self, where: _Where) -> Table:
        chains = {}
        for name, (policy, line, counters, rules) in self.chains.items():
            for rule in rules:
                target = rule.target
                if target and target not in self.chains and target not in KNOWN_TARGETS:
                    raise InputError(error(
                        f"rule jumps to {target!r}, which is neither a chain of table {self.name} nor a target",
                        Span(where.name, rule.line, 1, rule.line, len(rule.text) + 1),
                        f"declare the chain with ':{target} - [0:0]' or fix the target name"))
                if rule.goto and target not in self.chains:
                    raise InputError(error(f"-g needs a chain, not the target {target}",
                                           Span(where.name, rule.line, 1, rule.line, len(rule.text) + 1),
                                           "use -j for targets"))
            chains[name] = Chain(name, policy, tuple(rules), line, counters)
        return Table(self.name, chains)


class _Parser:
    def __init__(self, text: str, name: str, family: int | None) -> None:
        self.text = text
        self.name = name
        self.family = family
        self.seen_family: int | None = None
        self.tables: dict[str, Table] = {}
        self.current: _TableBuilder | None = None
        self.match_cache: dict[tuple[str, ...], tuple] = {}

    def run(self) -> RuleSet:
        where = _Where(self.name, 0)
        for number, raw in enumerate(self.text.split("\n"), start=1):
            where.line = number
            line = raw.rstrip("\r")
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            if "\x00" in line:
                raise where.fail(line.index("\x00") + 1, line.index("\x00") + 2, "NUL byte in rule text",
                                 "the file is not iptables text")
            head = stripped[0]
            if head == "*":
                self._table(stripped, line, where)
            elif stripped == "COMMIT":
                self._commit(where, line)
            elif head == ":":
                self._declare(line, where)
            else:
                self._command(line, where)
        if self.current is not None:
            raise where.fail(1, 2, f"table {self.current.name} (line {self.current.line}) has no COMMIT",
                             "end every table with a COMMIT line")
        family = self.family or self.seen_family or 4
        tables = {n: self._finish(t, family) for n, t in self.tables.items()}
        return RuleSet(tables, family, self.name)

    # -- structure

    def _table(self, stripped: str, line: str, where: _Where) -> None:
        name = stripped[1:].strip()
        col = line.index("*") + 1
        if self.current is not None:
            raise where.fail(col, col + len(stripped), f"table {name} starts before table {self.current.name} "
                             f"(line {self.current.line}) is committed", "add COMMIT before the new table")
        if name not in BUILTIN_CHAINS:
            raise where.fail(col + 1, col + 1 + len(name), f"unknown table {name!r}",
                             "expected one of " + ", ".join(BUILTIN_CHAINS))
        if name in self.tables:
            raise where.fail(col, col + len(stripped), f"table {name} appears twice", "merge the two sections")
        self.current = _TableBuilder(name, where.line)

    def _commit(self, where: _Where, line: str) -> None:
        if self.current is None:
            raise where.fail(1, len(line) + 1, "COMMIT outside a table", "start the table with *nat or *filter")
        self.tables[self.current.name] = self.current.freeze(where)
        self.current = None

    def _need_table(self, where: _Where, line: str) -> _TableBuilder:
        if self.current is None:
            raise where.fail(1, len(line) + 1, "rule outside a table", "start the table with a line like *nat")
        return self.current

    def _declare(self, line: str, where: _Where) -> None:
        table = self._need_table(where, line)
        tokens = _fast_tokens(line) or _tokens(line, where)
        name = tokens[0].text[1:]
        if not name:
            raise where.at(tokens[0], "chain declaration without a name", "write ':CHAIN - [0:0]'")
        if len(tokens) < 2:
            raise where.at(tokens[0], f"chain {name} has no policy", "write ':CHAIN - [0:0]' (or ACCEPT/DROP)")
        policy = tokens[1].text
        builtin = name in BUILTIN_CHAINS[table.name]
        if builtin and policy not in POLICIES:
            raise where.at(tokens[1], f"built-in chain {name} needs policy ACCEPT or DROP, not {policy!r}",
                           "write ':INPUT ACCEPT [0:0]'")
        if not builtin and policy != "-":
            raise where.at(tokens[1], f"user chain {name} cannot have a policy ({policy})", f"write ':{name} - [0:0]'")
        counters = self._counters(tokens[2], where) if len(tokens) > 2 else None
        if len(tokens) > 3:
            raise where.at(tokens[3], "unexpected text after the chain declaration", "write ':CHAIN POLICY [0:0]'")
        previous = table.chains.get(name)
        if previous is not None and previous[1]:
            raise where.at(tokens[0], f"chain {name} is declared twice (first at line {previous[1]})",
                           "remove one of the declarations")
        table.chains[name] = [policy if builtin else None, where.line, counters, []]

    def _counters(self, token: _Token, where: _Where) -> tuple[int, int]:
        text = token.text
        if not (text.startswith("[") and text.endswith("]") and text.count(":") == 1):
            raise where.at(token, f"bad counters {text!r}", "counters look like [packets:bytes]")
        packets, _, octets = text[1:-1].partition(":")
        if not (packets.isdigit() and octets.isdigit()):
            raise where.at(token, f"bad counters {text!r}", "counters look like [packets:bytes]")
        return int(packets), int(octets)

    def _command(self, line: str, where: _Where) -> None:
        table = self._need_table(where, line)
        tokens = _fast_tokens(line) or _tokens(line, where)
        counters = None
        if tokens[0].text.startswith("["):
            counters = self._counters(tokens[0], where)
            tokens = tokens[1:]
            if not tokens:
                raise where.fail(1, len(line) + 1, "counters without a rule", "write '[0:0] -A CHAIN ...'")
        verb = tokens[0]
        if verb.text in ("-A", "--append", "-I", "--insert"):
            self._rule(table, line, tokens, counters, where)
        elif verb.text in ("-N", "--new-chain"):
            name = self._chain_arg(tokens, where)
            if name in table.chains:
                raise where.at(tokens[1], f"chain {name} already exists", "remove the -N line")
            table.chains[name] = [None, where.line, None, []]
        elif verb.text in ("-X", "--delete-chain", "-F", "--flush", "-Z", "--zero"):
            names = [self._chain_arg(tokens, where)] if len(tokens) > 1 else [
                n for n in table.chains if verb.text in ("-F", "--flush", "-Z", "--zero") or
                n not in BUILTIN_CHAINS[table.name]]
            for name in names:
                if name not in table.chains:
                    raise where.at(tokens[1], f"chain {name} does not exist in table {table.name}",
                                   "declare it first or drop the line")
                if verb.text in ("-F", "--flush"):
                    table.chains[name][3] = []
                elif verb.text in ("-X", "--delete-chain"):
                    if name in BUILTIN_CHAINS[table.name]:
                        raise where.at(tokens[1], f"built-in chain {name} cannot be deleted", "drop the -X line")
                    del table.chains[name]
        else:
            raise where.at(verb, f"unexpected {verb.text!r}",
                           "rule lines start with -A CHAIN (also -I, -N, -X, -F), declarations with ':'")

    def _chain_arg(self, tokens: list[_Token], where: _Where) -> str:
        if len(tokens) < 2:
            raise where.at(tokens[0], f"{tokens[0].text} needs a chain name", f"write '{tokens[0].text} CHAIN'")
        return tokens[1].text

    # -- one rule

    def _rule(self, table: _TableBuilder, line: str, tokens: list[_Token], counters, where: _Where) -> None:
        name = self._chain_arg(tokens, where)
        chain = table.chains.get(name)
        if chain is None:
            raise where.at(tokens[1], f"chain {name} does not exist in table {table.name}",
                           f"declare it before its rules: ':{name} - [0:0]'")
        rest = tokens[2:]
        position = None
        if tokens[0].text in ("-I", "--insert"):
            position = 1
            if rest and rest[0].text.isdigit():
                position = int(rest[0].text)
                rest = rest[1:]
                if not 1 <= position <= len(chain[3]) + 1:
                    raise where.at(tokens[2], f"cannot insert at {position}: chain {name} has {len(chain[3])} rules",
                                   "use a position from 1 to the rule count + 1")
        rule = self._rule_body(table.name, name, line, rest, counters, where)
        if position is None:
            chain[3].append(rule)
        else:
            chain[3].insert(position - 1, rule)

    def _rule_body(self, table: str, chain: str, line: str, tokens: list[_Token], counters, where: _Where) -> Rule:
        key = tuple(t.text for t in tokens) if not any(t.quoted for t in tokens) else None
        cached = self.match_cache.get(key) if key is not None else None
        if cached is None:
            cached = _RuleReader(self, tokens, where).read()
            if key is not None and len(self.match_cache) < 200_000:
                self.match_cache[key] = cached
        matches, target, target_args, goto, extra_counters = cached
        return Rule(chain, where.line, line.strip(), matches, target, target_args, goto, table,
                    counters or extra_counters)

    def _finish(self, table: Table, family: int) -> Table:
        """Fill the family-dependent defaults (REJECT's icmp type, recent's mask) once the family is known."""
        reject = "icmp6-port-unreachable" if family == 6 else "icmp-port-unreachable"
        mask = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" if family == 6 else "255.255.255.255"
        chains = {}
        for name, chain in table.chains.items():
            rules = []
            for rule in chain.rules:
                if rule.target == "REJECT" and "reject-with" not in rule.target_args:
                    rule = replace(rule, target_args={**rule.target_args, "reject-with": reject})
                recent = rule.match("recent")
                if recent is not None and recent.option("mask") is None:
                    matches = tuple(replace(m, options=tuple(sorted(m.options + (Option("mask", (mask,)),),
                                                                    key=lambda o: o.name)))
                                    if m is recent else m for m in rule.matches)
                    rule = replace(rule, matches=matches)
                rules.append(rule)
            chains[name] = replace(chain, rules=tuple(rules))
        return Table(table.name, chains)


class _RuleReader:
    """Reads the options of one rule into matches and a target."""

    def __init__(self, parser: _Parser, tokens: list[_Token], where: _Where) -> None:
        self.parser = parser
        self.tokens = tokens
        self.where = where
        self.core: dict[str, Option] = {}
        self.modules: list[tuple[str, list[Option], _Token]] = []
        self.target = ""
        self.target_token: _Token | None = None
        self.target_options: list[tuple[Option, _Token]] = []
        self.goto = False
        self.counters = None

    def read(self):
        tokens, where = self.tokens, self.where
        i, n = 0, len(tokens)
        negate: _Token | None = None
        while i < n:
            tok = tokens[i]
            text = tok.text
            if text == "!" and not tok.quoted:
                if negate is not None:
                    raise where.at(tok, "'!' twice", "negate an option once")
                negate = tok
                i += 1
                continue
            if text in ("-m", "--match"):
                if negate is not None:
                    raise where.at(negate, "'!' cannot negate -m", "put '!' before the module's option")
                module = self._value(i, "a module name")
                self.modules.append((module, [], tokens[i + 1]))
                i += 2
            elif text in ("-j", "--jump", "-g", "--goto"):
                if negate is not None:
                    raise where.at(negate, "'!' cannot negate a target", "remove the '!'")
                if self.target:
                    raise where.at(tok, "a rule has one target", "split it into two rules")
                self.target = self._value(i, "a target or chain name")
                self.target_token = tokens[i + 1]
                self.goto = text in ("-g", "--goto")
                i += 2
            elif text in CORE_OPTIONS:
                name = CORE_OPTIONS[text]
                if name in self.core:
                    raise where.at(tok, f"{text} given twice", "a rule takes each of -s -d -p -i -o once")
                if name == "fragment":
                    self.core[name] = Option(name, (), negate is not None)
                    i += 1
                else:
                    value = self._value(i, "a value")
                    self.core[name] = self._core(name, value, negate is not None, tokens[i + 1])
                    i += 2
                negate = None
                continue
            elif text in ("-c", "--set-counters"):
                if i + 2 >= n:
                    raise where.at(tok, "-c needs packets and bytes", "write -c PACKETS BYTES")
                try:
                    self.counters = (int(tokens[i + 1].text), int(tokens[i + 2].text))
                except ValueError:
                    raise where.at(tokens[i + 1], "bad counters", "write -c PACKETS BYTES") from None
                i += 3
            elif text.startswith("--") and len(text) > 2 and not tok.quoted:
                i = self._long_option(i, negate)
                negate = None
                continue
            else:
                raise where.at(tok, f"unexpected {text!r}",
                               "options start with '-' (quote values that contain spaces)")
            negate = None
        if negate is not None:
            raise where.at(negate, "'!' at the end of the rule", "put '!' before an option")
        return self._assemble()

    def _value(self, i: int, what: str) -> str:
        if i + 1 >= len(self.tokens):
            raise self.where.at(self.tokens[i], f"{self.tokens[i].text} needs {what}", f"write {self.tokens[i].text} VALUE")
        return self.tokens[i + 1].text

    def _long_option(self, i: int, negate: _Token | None) -> int:
        tok = self.tokens[i]
        name = OPTION_ALIASES.get(tok.text[2:], tok.text[2:])
        j = i + 1
        values = []
        if name not in FLAG_OPTIONS:
            while j < len(self.tokens):
                nxt = self.tokens[j]
                if not nxt.quoted and (nxt.text == "!" or (nxt.text.startswith("-") and len(nxt.text) > 1)):
                    break
                values.append(nxt.text)
                j += 1
        option = Option(name, tuple(values), negate is not None)
        if self.target and (self.target not in TARGET_OPTIONS or name in TARGET_OPTIONS[self.target]):
            if negate is not None:
                raise self.where.at(negate, "target options cannot be negated", "remove the '!'")
            self.target_options.append((option, tok))
            return j
        owner = self._owner(name, tok)
        owner.append(option)
        return j

    def _owner(self, name: str, tok: _Token) -> list[Option]:
        """The match an option belongs to: the latest module that knows it, else an implicit one."""
        for module, options, _ in reversed(self.modules):
            if name in MODULE_OPTIONS.get(module, ()):
                return options
        proto = self.core.get("protocol")
        if proto is not None and not proto.negated and name in MODULE_OPTIONS.get(proto.values[0], ()):
            options: list[Option] = []
            self.modules.append((proto.values[0], options, tok))
            return options
        if self.modules and self.modules[-1][0] not in MODULE_OPTIONS:
            return self.modules[-1][1]  # an unknown module: its options are opaque
        where = self.modules[-1][0] if self.modules else "the rule"
        raise self.where.at(tok, f"unknown option --{name} for {where}",
                            "load the module that defines it with -m MODULE before the option")

    def _core(self, name: str, value: str, negated: bool, tok: _Token) -> Option:
        if name in ("source", "destination"):
            return Option(name, self._networks(value, tok), negated)
        if name == "protocol":
            proto = value.lower()
            proto = PROTOCOL_NAMES.get(proto, proto)
            if not proto.isdigit() and proto not in PROTOCOL_NUMBERS and proto not in ("all", "0"):
                raise self.where.at(tok, f"unknown protocol {value!r}", "use tcp, udp, sctp, icmp or a number")
            return Option(name, ("all" if proto == "0" else proto,), negated)
        return Option(name, (value,), negated)

    def _networks(self, value: str, tok: _Token) -> tuple[str, ...]:
        nets = []
        for part in value.split(","):
            address, slash, mask = part.partition("/")
            try:
                ip = ipaddress.ip_address(address)
                if not slash:
                    length = ip.max_prefixlen
                elif mask.isdigit():
                    length = int(mask)
                else:
                    length = ipaddress.ip_network(f"0.0.0.0/{mask}").prefixlen if ip.version == 4 else -1
                net = ipaddress.ip_network(f"{ip}/{length}", strict=False)
            except ValueError:
                raise self.where.at(tok, f"{part!r} is not an address or CIDR",
                                    "write an address (10.0.0.1) or a CIDR (10.0.0.0/8); names are not resolved") from None
            self._family(net.version, tok)
            nets.append(str(net))
        return tuple(nets)

    def _family(self, version: int, tok: _Token) -> None:
        expected = self.parser.family or self.parser.seen_family
        if expected is not None and version != expected:
            raise self.where.at(tok, f"IPv{version} address in an IPv{expected} rule set",
                                "keep IPv4 rules in iptables files and IPv6 rules in ip6tables files")
        self.parser.seen_family = version

    # -- canonical form

    def _assemble(self):
        where = self.where
        matches: list[Match] = []
        for name in CORE_ORDER:
            opt = self.core.get(name)
            if opt is None:
                continue
            if not opt.negated and (opt.values in (("0.0.0.0/0",), ("::/0",)) or opt.values == ("all",)):
                continue  # matches every packet: iptables-save drops it
            matches.append(Match("", (opt,)))
        proto = self.core.get("protocol")
        for module, options, tok in self.modules:
            if module in PORT_PROTOCOLS and (proto is None or proto.negated or proto.values[0] != module):
                raise where.at(tok, f"-m {module} needs -p {module}", f"add -p {module} to the rule")
            matches.append(Match(module, tuple(sorted(self._module_options(module, options, tok),
                                                      key=lambda o: o.name))))
        target_args = self._target_args()
        return tuple(matches), self.target, target_args, self.goto, self.counters

    def _module_options(self, module: str, options: list[Option], tok: _Token) -> list[Option]:
        where = self.where
        out = []
        for opt in options:
            values = opt.values
            if opt.name in ("sport", "dport"):
                values = (self._port_range(values, tok),)
            elif opt.name in ("sports", "dports", "ports"):
                values = (",".join(self._port_range((v,), tok) for v in self._one(opt, tok).split(",")),)
            elif opt.name == "mark" and module in ("mark", "connmark"):
                value, mask = self._mark(self._one(opt, tok), tok)
                values = (f"0x{value:x}" if mask == FULL_MARK else f"0x{value:x}/0x{mask:x}",)
            elif opt.name in ("ctstate", "state"):
                states = self._one(opt, tok).upper().split(",")
                bad = [s for s in states if s not in CT_STATES]
                if bad:
                    raise where.at(tok, f"unknown conntrack state {bad[0]}", "use " + ",".join(CT_STATES))
                values = (",".join(s for s in CT_STATES if s in states),)
            elif opt.name in ("src-type", "dst-type"):
                values = (self._one(opt, tok).upper(),)
            elif opt.name == "probability":
                values = (self._probability(self._one(opt, tok), tok),)
            elif opt.name == "mode":
                values = (self._one(opt, tok).lower(),)
            elif opt.name in ("every", "packet", "seconds", "hitcount", "limit-burst"):
                number = self._one(opt, tok)
                if not number.isdigit():
                    raise where.at(tok, f"--{opt.name} needs a number, not {number!r}", f"write --{opt.name} 10")
                values = (str(int(number)),)
            elif opt.name == "mask" and module == "recent":
                values = (self._one(opt, tok),)
            out.append(Option(opt.name, values, opt.negated))
        if module == "recent":
            names = {o.name for o in out}
            if "name" not in names:
                out.append(Option("name", ("DEFAULT",)))
            if "rdest" not in names and "rsource" not in names:
                out.append(Option("rsource"))
        if module == "statistic":
            mode = next((o.values[0] for o in out if o.name == "mode"), None)
            if mode not in ("random", "nth"):
                raise where.at(tok, "-m statistic needs --mode random or --mode nth", "write --mode random")
        return out

    def _one(self, opt: Option, tok: _Token) -> str:
        if len(opt.values) != 1:
            raise self.where.at(tok, f"--{opt.name} takes one value, got {len(opt.values)}",
                                f"write --{opt.name} VALUE")
        return opt.values[0]

    def _port_range(self, values: tuple[str, ...], tok: _Token) -> str:
        if len(values) != 1:
            raise self.where.at(tok, "a port option takes one value", "write --dport 80 or --dport 80:90")
        text = values[0]
        low, sep, high = text.partition(":")
        try:
            lo = int(low) if low else 0
            hi = int(high) if high else (65535 if sep else lo)
        except ValueError:
            raise self.where.at(tok, f"{text!r} is not a port or port range", "write 80 or 80:90") from None
        if not (0 <= lo <= 65535 and 0 <= hi <= 65535) or lo > hi:
            raise self.where.at(tok, f"port range {text!r} is out of 0-65535 or reversed", "write 80 or 80:90")
        return str(lo) if lo == hi else f"{lo}:{hi}"

    def _mark(self, text: str, tok: _Token) -> tuple[int, int]:
        value, slash, mask = text.partition("/")
        try:
            v = int(value, 0)
            m = int(mask, 0) if slash else FULL_MARK
        except ValueError:
            raise self.where.at(tok, f"{text!r} is not a mark", "write 0x4000 or 0x4000/0x4000") from None
        if not (0 <= v <= FULL_MARK and 0 <= m <= FULL_MARK):
            raise self.where.at(tok, f"mark {text!r} does not fit 32 bits", "marks are 32-bit values")
        return v, m

    def _probability(self, text: str, tok: _Token) -> str:
        try:
            p = float(text)
        except ValueError:
            p = -1.0
        if not 0.0 <= p <= 1.0:
            raise self.where.at(tok, f"probability {text!r} is not a number from 0 to 1", "write 0.5")
        threshold = int(p * STATISTIC_SCALE + 0.5)  # libxt_statistic: lround(0x80000000 * p)
        return f"{threshold / STATISTIC_SCALE:.11f}"

    def _target_args(self) -> dict[str, str]:
        where = self.where
        target = self.target
        args: dict[str, str] = {}
        for opt, tok in self.target_options:
            if len(opt.values) > 1:
                raise where.at(tok, f"--{opt.name} takes one value", f"write --{opt.name} VALUE")
            args[opt.name] = opt.values[0] if opt.values else ""
        if target == "MARK":
            if len(args) != 1:
                raise where.at(self.target_token, "MARK needs exactly one of --set-xmark, --set-mark, --or-mark, "
                               "--xor-mark, --and-mark", "write -j MARK --or-mark 0x4000")
            (kind, text), = args.items()
            tok = self.target_token
            if kind in ("set-xmark", "set-mark"):
                value, mask = self._mark(text, tok)
                if kind == "set-mark":
                    mask |= value
            else:
                if "/" in text:
                    raise where.at(tok, f"--{kind} takes a value without a mask", f"write --{kind} 0x4000")
                value, _ = self._mark(text, tok)
                value, mask = {"or-mark": (value, value), "xor-mark": (value, 0),
                               "and-mark": (0, ~value & FULL_MARK)}[kind]
            args = {"set-xmark": f"0x{value:x}/0x{mask:x}"}
        elif target == "REJECT" and "reject-with" in args:
            args["reject-with"] = REJECT_ALIASES.get(args["reject-with"], args["reject-with"])
        elif target in ("DNAT", "SNAT"):
            key = "to-destination" if target == "DNAT" else "to-source"
            if not args.get(key):
                raise where.at(self.target_token, f"{target} needs --{key}", f"write -j {target} --{key} IP:PORT")
            self._nat_address(args[key], self.target_token)
        return args

    def _nat_address(self, text: str, tok: _Token) -> None:
        """Validate ``ip[-ip][:port[-port]]`` / ``[ip6]:port`` (the rewrite itself is read by the verifier)."""
        try:
            parse_nat_range(text)
        except ValueError as exc:
            raise self.where.at(tok, f"bad NAT address {text!r}: {exc}", "write 10.0.0.1:8080 or [fd00::1]:8080") from None


def parse_nat_range(text: str) -> tuple[tuple, tuple[int, int] | None]:
    """``10.0.0.1:80``, ``10.0.0.1-10.0.0.9:80-90``, ``[fd00::1]:80`` -> ((first, last) addresses, ports)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError("missing ']'")
        ports = rest[1:] if rest.startswith(":") else None
        if rest and ports is None:
            raise ValueError("text after ']' must be ':PORT'")
    elif text.count(":") == 1:
        host, _, ports = text.partition(":")
    elif ":" in text:
        host, ports = text, None  # a bare IPv6 address
    else:
        host, ports = text, None
    first, _, last = host.partition("-")
    lo_ip = ipaddress.ip_address(first)
    hi_ip = ipaddress.ip_address(last) if last else lo_ip
    if lo_ip.version != hi_ip.version or lo_ip > hi_ip:
        raise ValueError("address range is reversed or mixes families")
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
    return _Parser(text, name, family).run()
