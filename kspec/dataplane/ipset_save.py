"""Read ipset TEXT: ``ipset save`` output and ``ipset restore`` input alike.

IPVS-mode kube-proxy decides most of its iptables matches with ipsets
(``-m set --match-set KUBE-CLUSTER-IP dst,dst``), so a packet's path through
those rules depends on the sets' members.  This module reads the sets
(``create NAME TYPE options``, ``add NAME ENTRY [options]``, and ``del``,
``flush``, ``destroy`` as ``ipset restore`` applies them) and answers
membership the way the kernel does:

* an entry is canonical, as ``ipset save`` prints it: ``10.96.0.1,tcp:443``,
  a port without a protocol is TCP, a host network loses its ``/32``;
  address and port ranges (``10.0.0.0/30``, ``tcp:80-82``) are expanded into
  their members, as ``ipset`` itself stores them (``hash:net`` keeps CIDRs);
* :func:`contains` tests one element written like an entry (``ipset test``);
* :func:`match_packet` builds the element from a packet with the match's
  direction flags (``dst,dst,src``): fewer flags than the set has dimensions,
  or a packet of another family, never match (``ip_set_test``).

Errors are :class:`~kspec.diagnostics.InputError` at file:line:col.

>>> sets = parse("create S hash:ip,port family inet\\nadd S 10.96.0.1,tcp:443\\n", "ipset.rules")
>>> contains(sets.sets["S"], "10.96.0.1,tcp:443")
True
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from kspec.diagnostics import InputError, Span, error

# set types and their dimensions (ipset(8), "SET TYPES")
TYPES: dict[str, tuple[str, ...]] = {
    "bitmap:ip": ("ip",), "bitmap:ip,mac": ("ip", "mac"), "bitmap:port": ("port",),
    "hash:ip": ("ip",), "hash:mac": ("mac",), "hash:ip,mac": ("ip", "mac"), "hash:net": ("net",),
    "hash:net,net": ("net", "net"), "hash:ip,port": ("ip", "port"), "hash:net,port": ("net", "port"),
    "hash:ip,port,ip": ("ip", "port", "ip"), "hash:ip,port,net": ("ip", "port", "net"),
    "hash:ip,mark": ("ip", "mark"), "hash:net,port,net": ("net", "port", "net"),
    "hash:net,iface": ("net", "iface"), "list:set": ("set",),
}
CREATE_VALUES = frozenset(["family", "hashsize", "maxelem", "bucketsize", "initval", "netmask", "markmask",
                           "timeout", "range", "size", "revision"])
CREATE_FLAGS = frozenset(["counters", "comment", "skbinfo", "forceadd"])
ENTRY_VALUES = frozenset(["timeout", "packets", "bytes", "comment", "skbmark", "skbprio", "skbqueue"])
ENTRY_FLAGS = frozenset({"nomatch"})
PORT_PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132, "udplite": 136}
PROTOCOL_NAMES = {v: k for k, v in PORT_PROTOCOLS.items()}
PORTLESS = {"icmp": 1, "icmpv6": 58}
MAX_EXPANSION = 65536  # members one ``add`` of a range may make (ipset refuses far larger ranges)
VERBS = {"create": "create", "n": "create", "-N": "create", "add": "add", "a": "add", "-A": "add",
         "del": "del", "d": "del", "-D": "del", "flush": "flush", "f": "flush", "-F": "flush",
         "destroy": "destroy", "x": "destroy", "-X": "destroy"}
_TOKEN = re.compile(r'(?P<quoted>"(?:[^"\\]|\\.)*")(?=\s|$)|\S+')


@dataclass(frozen=True, slots=True)
class Entry:
    """One member: ``key`` has one component per dimension, ``text`` is how ``ipset save`` prints it."""

    key: tuple
    text: str
    line: int
    nomatch: bool = False
    options: tuple[tuple[str, str], ...] = ()  # timeout, packets, bytes, comment, skb* as given


@dataclass(frozen=True)
class IpSet:
    name: str
    type: str
    family: int | None  # 4 / 6 for address sets, None for bitmap:port and list:set
    options: tuple[tuple[str, str], ...]  # create options in the order given ("" for flags)
    entries: tuple[Entry, ...]
    line: int
    _points: frozenset = field(default=frozenset(), repr=False, compare=False)
    _nets: tuple[Entry, ...] = field(default=(), repr=False, compare=False)

    @property
    def dimensions(self) -> tuple[str, ...]:
        return TYPES[self.type]

    def option(self, name: str) -> str | None:
        return next((v for k, v in self.options if k == name), None)


@dataclass(frozen=True)
class IpSets:
    name: str
    sets: dict[str, IpSet] = field(hash=False)  # in the order they were created


# --- membership ---------------------------------------------------------------------------------


def contains(ipset: IpSet, element: str | tuple) -> bool:
    """Whether ``element`` (entry text like ``10.96.0.1,tcp:443``, or a key tuple) is in the set.

    ``hash:net``-like sets answer with the most specific covering entry, so a
    ``nomatch`` entry inside a larger one excludes its addresses, as the kernel does.
    """
    key = element if isinstance(element, tuple) else _element_key(ipset, element)
    netmask = ipset.option("netmask")
    if netmask is not None and ipset.dimensions[0] == "ip":
        bits = 32 if ipset.family == 4 else 128
        keep = int(netmask)
        key = ((key[0] >> (bits - keep)) << (bits - keep),) + key[1:]
    if "net" not in ipset.dimensions:
        return key in ipset._points
    best: Entry | None = None
    best_size = -1
    for entry in ipset._nets:
        size = _covers(ipset.dimensions, entry.key, key)
        if size is not None and size > best_size:
            best, best_size = entry, size
    return best is not None and not best.nomatch


def match_packet(ipset: IpSet, directions: Sequence[str], proto: int, src: str, sport: int, dst: str,
                 dport: int) -> bool | None:
    """``-m set --match-set NAME <directions>`` for one packet; None where kspec cannot tell (mac, mark...)."""
    dims = ipset.dimensions
    if len(directions) < len(dims) or any(d not in ("src", "dst") for d in directions):
        return False
    family = ipaddress.ip_address(src).version
    if ipset.family is not None and ipset.family != family:
        return False
    key: list = []
    for dim, direction in zip(dims, directions):
        address = src if direction == "src" else dst
        port = sport if direction == "src" else dport
        if dim == "ip":
            key.append(int(ipaddress.ip_address(address)))
        elif dim == "net":
            key.append((int(ipaddress.ip_address(address)), 32 if family == 4 else 128))
        elif dim == "port":
            if ipset.type.startswith("bitmap:"):
                if proto not in PROTOCOL_NAMES:
                    return False
                key.append(port)
            else:
                key.append((proto, port if proto in PROTOCOL_NAMES else 0))
        else:
            return None
    return contains(ipset, tuple(key))


def _covers(dims: tuple[str, ...], entry: tuple, key: tuple) -> int | None:
    """How specific ``entry`` is if it covers ``key`` (sum of prefix lengths), else None."""
    size = 0
    for dim, have, want in zip(dims, entry, key):
        if dim == "net":
            network, length = have
            address, host = want
            shift = host - length
            if (address >> shift) != (network >> shift):
                return None
            size += length
        elif have != want:
            return None
    return size


def _element_key(ipset: IpSet, text: str) -> tuple:
    keys = _entry_keys(ipset, text, lambda message, hint: ValueError(f"{message} ({hint})"))
    if len(keys) != 1:
        raise ValueError(f"{text!r} names {len(keys)} elements; test one at a time")
    return keys[0][0]


# --- rendering ----------------------------------------------------------------------------------


def render(ipsets: IpSets) -> str:
    """The sets as ``ipset restore`` input: each ``create`` line followed by its ``add`` lines."""
    out: list[str] = []
    for ipset in ipsets.sets.values():
        words = ["create", ipset.name, ipset.type]
        for name, value in ipset.options:
            words += [name, value] if value else [name]
        out.append(" ".join(words) + "\n")
        for entry in ipset.entries:
            words = ["add", ipset.name, entry.text]
            for name, value in entry.options:
                words += [name, _quote(value) if name == "comment" else value]
            if entry.nomatch:
                words.append("nomatch")
            out.append(" ".join(words) + "\n")
    return "".join(out)


def members(ipset: IpSet) -> frozenset[str]:
    """The entry texts, for comparing two dumps whatever their order."""
    return frozenset(e.text + (" nomatch" if e.nomatch else "") for e in ipset.entries)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- parsing ------------------------------------------------------------------------------------


class _Line:
    """The tokens of one line with their columns, for errors at the right place."""

    def __init__(self, name: str, number: int, text: str) -> None:
        self.name = name
        self.number = number
        self.text = text
        self.tokens: list[tuple[str, int]] = []
        for m in _TOKEN.finditer(text):
            word = m.group(0)
            if m.group("quoted"):
                word = re.sub(r"\\(.)", r"\1", word[1:-1])
            elif '"' in word:
                raise self.fail(m.start() + 1, len(m.group(0)), "unterminated or misplaced double quote",
                                'write comment "text"')
            self.tokens.append((word, m.start() + 1))
        self.widths = [len(m.group(0)) for m in _TOKEN.finditer(text)]

    def fail(self, col: int, width: int, message: str, hint: str) -> InputError:
        return InputError(error(message, Span(self.name, self.number, col, self.number, col + max(1, width)), hint))

    def at(self, index: int, message: str, hint: str) -> InputError:
        if not self.tokens:
            return self.fail(1, 1, message, hint)
        index = max(0, min(index, len(self.tokens) - 1))
        return self.fail(self.tokens[index][1], self.widths[index], message, hint)


class _Builder:
    def __init__(self, name: str, line: int, set_type: str, family: int | None,
                 options: tuple[tuple[str, str], ...]) -> None:
        self.name = name
        self.line = line
        self.type = set_type
        self.family = family
        self.options = options
        self.entries: dict[tuple, Entry] = {}

    def freeze(self) -> IpSet:
        entries = tuple(self.entries.values())
        dims = TYPES[self.type]
        if "net" in dims:
            return IpSet(self.name, self.type, self.family, self.options, entries, self.line, frozenset(), entries)
        points = frozenset(e.key for e in entries)
        return IpSet(self.name, self.type, self.family, self.options, entries, self.line, points, ())


def parse(text: str, name: str = "<ipset>") -> IpSets:
    """Parse ``ipset save`` output or ``ipset restore`` input."""
    sets: dict[str, _Builder] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        raw = raw.rstrip("\r")
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if "\x00" in raw:
            raise InputError(error("NUL byte in the ipset file", Span(name, number, raw.index("\x00") + 1, number,
                                                                          raw.index("\x00") + 2),
                                   "the file is not ipset save output"))
        line = _Line(name, number, raw)
        words = [w for w, _ in line.tokens]
        verb = VERBS.get(words[0])
        if verb is None:
            raise line.at(0, f"unknown ipset command {words[0]!r}",
                          "ipset save writes 'create' and 'add' lines; restore also takes del, flush, destroy")
        if verb == "flush" and len(words) == 1:
            for builder in sets.values():
                builder.entries.clear()
            continue
        if verb == "destroy" and len(words) == 1:
            sets.clear()
            continue
        if len(words) < 2:
            raise line.at(0, f"{words[0]} needs a set name", f"write: {words[0]} KUBE-CLUSTER-IP ...")
        set_name = words[1]
        if verb == "create":
            if set_name in sets:
                raise line.at(1, f"set {set_name} already created at line {sets[set_name].line}",
                              "create each set once (ipset restore stops at a duplicate)")
            sets[set_name] = _create(line, set_name, words)
            continue
        builder = sets.get(set_name)
        if builder is None:
            raise line.at(1, f"set {set_name} is not created before this line",
                          f"add 'create {set_name} TYPE ...' above it")
        if verb == "flush":
            builder.entries.clear()
        elif verb == "destroy":
            del sets[set_name]
        elif len(words) < 3:
            raise line.at(1, f"{words[0]} needs an entry", f"write: {words[0]} {set_name} ENTRY")
        else:
            keys = _entry_keys(_shape(builder), words[2], lambda m, h, here=line: here.at(2, m, h))
            nomatch, options = _entry_options(line, builder, words)
            for key, entry_text in keys:
                if verb == "add":
                    builder.entries[key] = Entry(key, entry_text, number, nomatch, options)
                elif builder.entries.pop(key, None) is None:
                    raise line.at(2, f"{entry_text} is not in set {set_name}",
                                  "drop the del line (ipset restore stops at it)")
    return IpSets(name, {k: b.freeze() for k, b in sets.items()})


def _shape(builder: _Builder) -> IpSet:
    """A set without members, so entry parsing can read its type, family and range."""
    return IpSet(builder.name, builder.type, builder.family, builder.options, (), builder.line)


def _create(line: _Line, set_name: str, words: list[str]) -> _Builder:
    if len(set_name) > 31:
        raise line.at(1, f"set name {set_name!r} is longer than 31 characters", "ipset names have at most 31")
    if len(words) < 3:
        raise line.at(1, "create needs a set type", "write: create NAME hash:ip,port family inet")
    set_type = words[2]
    if set_type not in TYPES:
        raise line.at(2, f"unknown set type {set_type!r}", "use one of " + ", ".join(sorted(TYPES)))
    options: list[tuple[str, str]] = []
    i = 3
    while i < len(words):
        key = words[i]
        if key in CREATE_FLAGS:
            options.append((key, ""))
            i += 1
            continue
        if key not in CREATE_VALUES:
            raise line.at(i, f"unknown create option {key!r}",
                          "ipset save writes family, hashsize, maxelem, bucketsize, initval, range, timeout, "
                          "counters, comment")
        if i + 1 >= len(words):
            raise line.at(i, f"{key} needs a value", f"write {key} VALUE")
        value = words[i + 1]
        _check_create_value(line, i + 1, key, value)
        options.append((key, value))
        i += 2
    family: int | None = None
    if not set_type.startswith(("bitmap:port", "list:")):
        given = dict(options).get("family", "inet")
        family = 6 if given == "inet6" else 4
        if set_type.startswith("bitmap:") and given == "inet6":
            raise line.at(2, "bitmap sets are IPv4 only", "use a hash set for IPv6")
    if set_type.startswith("bitmap:") and "range" not in dict(options):
        raise line.at(2, f"{set_type} needs a range", "write: range 0-65535 (bitmap:port) or range 10.0.0.0/24")
    builder = _Builder(set_name, line.number, set_type, family, tuple(options))
    if "range" in dict(options):
        _bitmap_range(_shape(builder), lambda m, h: line.at(words.index("range") + 1, m, h))
    return builder


def _check_create_value(line: _Line, index: int, key: str, value: str) -> None:
    if key == "family" and value not in ("inet", "inet6"):
        raise line.at(index, f"unknown family {value!r}", "use family inet or family inet6")
    if key in ("hashsize", "maxelem", "bucketsize", "timeout", "size", "revision", "netmask") and not value.isdigit():
        raise line.at(index, f"{key} needs a number, not {value!r}", f"write {key} 1024")
    if key == "initval" and not re.fullmatch(r"0x[0-9a-fA-F]+|\d+", value):
        raise line.at(index, f"initval {value!r} is not a number", "write initval 0x1234abcd")


def _bitmap_range(ipset: IpSet, fail) -> tuple[int, int]:
    text = ipset.option("range") or ""
    if ipset.type == "bitmap:port":
        low, _, high = text.partition("-")
        if not (low.isdigit() and high.isdigit() and int(low) <= int(high) <= 65535):
            raise fail(f"bad port range {text!r}", "write range 0-65535")
        return int(low), int(high)
    if "/" in text:
        try:
            net = ipaddress.IPv4Network(text, strict=False)
        except ValueError:
            raise fail(f"bad address range {text!r}", "write range 10.0.0.0/24") from None
        return int(net.network_address), int(net.broadcast_address)
    low_text, _, high_text = text.partition("-")
    try:
        low, high = int(ipaddress.IPv4Address(low_text)), int(ipaddress.IPv4Address(high_text))
    except ValueError:
        raise fail(f"bad address range {text!r}", "write range 10.0.0.0-10.0.0.255") from None
    if low > high:
        raise fail(f"address range {text!r} is reversed", "write the lower address first")
    return low, high


def _entry_options(line: _Line, builder: _Builder, words: list[str]) -> tuple[bool, tuple[tuple[str, str], ...]]:
    nomatch = False
    options: list[tuple[str, str]] = []
    i = 3
    while i < len(words):
        key = words[i]
        if key in ENTRY_FLAGS:
            if "net" not in TYPES[builder.type]:
                raise line.at(i, f"nomatch needs a set with a net dimension, not {builder.type}",
                              "drop nomatch, or use a hash:net set")
            nomatch = True
            i += 1
            continue
        if key not in ENTRY_VALUES:
            raise line.at(i, f"unknown entry option {key!r}",
                          "entries take timeout, packets, bytes, comment, skbmark, skbprio, skbqueue, nomatch")
        if i + 1 >= len(words):
            raise line.at(i, f"{key} needs a value", f"write {key} VALUE")
        value = words[i + 1]
        if key in ("timeout", "packets", "bytes", "skbqueue") and not value.isdigit():
            raise line.at(i + 1, f"{key} needs a number, not {value!r}", f"write {key} 10")
        options.append((key, value))
        i += 2
    return nomatch, tuple(options)


def _entry_keys(ipset: IpSet, text: str, fail) -> list[tuple[tuple, str]]:
    """Every (key, canonical text) an entry stands for (ranges expanded, as ipset stores them)."""
    dims = TYPES[ipset.type]
    parts = text.split(",")
    if len(parts) != len(dims):
        shape = ",".join({"ip": "IP", "net": "CIDR", "port": "PROTO:PORT", "mac": "MAC", "mark": "MARK",
                          "iface": "IFACE", "set": "SETNAME"}[d] for d in dims)
        raise fail(f"{ipset.type} entries have {len(dims)} part(s), {text!r} has {len(parts)}", f"write {shape}")
    choices: list[list[tuple[object, str]]] = []
    total = 1
    for dim, part in zip(dims, parts):
        options = _component(ipset, dim, part, fail)
        total *= len(options)
        if total > MAX_EXPANSION:
            raise fail(f"{text!r} expands to more than {MAX_EXPANSION} entries",
                       "add smaller ranges (or a hash:net set for networks)")
        choices.append(options)
    out: list[tuple[tuple, str]] = [((), "")]
    for options in choices:
        out = [(key + (value,), f"{prefix},{shown}" if key else shown) for key, prefix in out
               for value, shown in options]
    return out


def _component(ipset: IpSet, dim: str, part: str, fail) -> list[tuple[object, str]]:
    if dim == "ip":
        return _addresses(ipset, part, fail)
    if dim == "net":
        return _networks(ipset, part, fail)
    if dim == "port":
        return _ports(ipset, part, fail)
    if dim == "mark":
        try:
            value = int(part, 0)
        except ValueError:
            raise fail(f"{part!r} is not a mark", "write 0x4000") from None
        return [(value, f"0x{value:08x}")]
    if dim == "mac":
        if not re.fullmatch(r"(?:[0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}", part):
            raise fail(f"{part!r} is not a MAC address", "write 02:00:00:00:00:01")
        return [(part.upper(), part.upper())]
    return [(part, part)]


def _family_check(ipset: IpSet, version: int, part: str, fail) -> None:
    if ipset.family is not None and version != ipset.family:
        raise fail(f"IPv{version} address {part!r} in a family inet{'6' if ipset.family == 6 else ''} set",
                   f"add IPv{ipset.family} addresses only")


def _addresses(ipset: IpSet, part: str, fail) -> list[tuple[object, str]]:
    try:
        if "/" in part:
            net = ipaddress.ip_network(part, strict=False)
            low, high, version = int(net.network_address), int(net.broadcast_address), net.version
        elif "-" in part:
            first, last = part.split("-", 1)
            a, b = ipaddress.ip_address(first), ipaddress.ip_address(last)
            if a.version != b.version or a > b:
                raise ValueError("reversed or mixed range")
            low, high, version = int(a), int(b), a.version
        else:
            address = ipaddress.ip_address(part)
            low = high = int(address)
            version = address.version
    except ValueError:
        raise fail(f"{part!r} is not an address, range or CIDR", "write 10.0.0.1, 10.0.0.0/30 or 10.0.0.1-10.0.0.3"
                   ) from None
    _family_check(ipset, version, part, fail)
    if high - low >= MAX_EXPANSION:
        raise fail(f"{part!r} holds more than {MAX_EXPANSION} addresses", "use a hash:net set for networks")
    if ipset.type.startswith("bitmap:"):
        first, last = _bitmap_range(ipset, fail)
        if low < first or high > last:
            raise fail(f"{part!r} is outside the set's range {ipset.option('range')}", "add addresses in the range")
    make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    netmask = ipset.option("netmask") if ipset.type == "hash:ip" else None
    if netmask is not None:  # the set stores the network of each address
        shift = (32 if version == 4 else 128) - int(netmask)
        values = sorted({value >> shift << shift for value in range(low, high + 1)})
        return [(value, str(make(value))) for value in values]
    return [(value, str(make(value))) for value in range(low, high + 1)]


def _networks(ipset: IpSet, part: str, fail) -> list[tuple[object, str]]:
    try:
        if "-" in part:
            first, last = part.split("-", 1)
            nets = list(ipaddress.summarize_address_range(ipaddress.ip_address(first), ipaddress.ip_address(last)))
        else:
            nets = [ipaddress.ip_network(part, strict=False)]
    except (ValueError, TypeError):
        raise fail(f"{part!r} is not a network", "write 10.0.0.0/8 or 10.0.0.1") from None
    _family_check(ipset, nets[0].version, part, fail)
    if len(nets) > MAX_EXPANSION:
        raise fail(f"{part!r} needs more than {MAX_EXPANSION} networks", "write it as CIDRs")
    out: list[tuple[object, str]] = []
    for net in nets:
        shown = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
        out.append(((int(net.network_address), net.prefixlen), shown))
    return out


def _ports(ipset: IpSet, part: str, fail) -> list[tuple[object, str]]:
    proto_text, colon, port_text = part.rpartition(":")
    bitmap = ipset.type.startswith("bitmap:")
    if not colon:
        proto_text = "tcp"
    proto_text = proto_text.lower()
    if proto_text in PORTLESS and not bitmap:
        return [((PORTLESS[proto_text], port_text), f"{proto_text}:{port_text}")]
    if proto_text not in PORT_PROTOCOLS or (bitmap and proto_text not in ("tcp", "udp")):
        raise fail(f"unknown protocol {proto_text!r} in {part!r}", "write tcp:80, udp:53 or sctp:9")
    low, dash, high = port_text.partition("-")
    if not (low.isdigit() and (not dash or high.isdigit())):
        raise fail(f"{port_text!r} is not a port or port range", "write 80 or 80-90 (names are not resolved)")
    first, last = int(low), int(high) if dash else int(low)
    if not first <= last <= 65535:
        raise fail(f"port range {port_text!r} is out of 0-65535 or reversed", "write 80 or 80-90")
    if bitmap:
        lo, hi = _bitmap_range(ipset, fail)
        if first < lo or last > hi:
            raise fail(f"port {port_text} is outside the set's range {lo}-{hi}", "add ports in the range")
        return [(port, str(port)) for port in range(first, last + 1)]
    number = PORT_PROTOCOLS[proto_text]
    return [((number, port), f"{proto_text}:{port}") for port in range(first, last + 1)]
