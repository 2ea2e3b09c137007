"""Read ``ip -batch`` route files (``routes.batch``): the pod-network routes of one node.

Each line is an ``ip`` command without the leading ``ip``. Route commands
(``route add|append|change|replace|delete``) are read into :class:`Route`
values and applied in order, so :attr:`Routes.effective` is the main table
the file leaves behind (``replace`` overrides, ``add`` of an existing route
fails like ``ip`` does); other objects (``link``, ``addr``) are kept as
:class:`Command` lines and otherwise ignored. Errors are
:class:`~kspec.diagnostics.InputError` at file:line:col.

>>> routes = parse("route replace 10.244.2.0/24 via 192.168.0.12 proto static\\n", "routes.batch")
>>> routes.effective[0].via
IPv4Address('192.168.0.12')
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from kspec.diagnostics import InputError, Span, error

ROUTE_TYPES = frozenset("unicast local broadcast multicast throw unreachable prohibit blackhole nat anycast".split())
VERBS = {"add": "add", "a": "add", "append": "append", "change": "change", "chg": "change", "replace": "replace",
         "delete": "delete", "del": "delete", "d": "delete"}
FLAGS = frozenset({"onlink", "pervasive"})
VALUE_KEYS = frozenset("via dev proto scope src metric preference priority table tos dsfield realm realms mtu "
                       "advmss rtt rttvar reordering window cwnd initcwnd initrwnd ssthresh features quickack "
                       "congctl pref expires fastopen_no_cookie hoplimit nhid encap".split())


@dataclass(frozen=True, slots=True)
class Route:
    """One route as the file states it (``line`` is 1-based)."""

    line: int
    text: str
    verb: str  # add | append | change | replace | delete
    prefix: ipaddress.IPv4Network | ipaddress.IPv6Network
    type: str = "unicast"
    via: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    dev: str | None = None
    src: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    metric: int | None = None
    table: str = "main"
    options: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def key(self) -> tuple:
        """What ``ip`` considers the same route: table, prefix, metric."""
        default = 1024 if self.prefix.version == 6 else 0
        return (self.table, self.prefix.version, int(self.prefix.network_address), self.prefix.prefixlen,
                default if self.metric is None else self.metric)


@dataclass(frozen=True, slots=True)
class Command:
    """A line that is not a route command (``link add ...``, ``addr add ...``)."""

    line: int
    text: str


@dataclass(frozen=True, slots=True)
class Routes:
    name: str
    routes: tuple[Route, ...]  # every route command, in file order
    effective: tuple[Route, ...]  # the main table after applying them, sorted by prefix
    other: tuple[Command, ...] = ()

    def family(self, version: int) -> tuple[Route, ...]:
        return tuple(r for r in self.effective if r.prefix.version == version)


def parse(text: str, name: str = "<routes>") -> Routes:
    """Parse an ``ip -batch`` file; only route commands carry meaning here."""
    routes: list[Route] = []
    other: list[Command] = []
    table: dict[tuple, Route] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.split("#", 1)[0].rstrip("\r")
        words = line.split()
        if not words:
            continue
        if "\x00" in raw:
            raise _fail(name, number, raw.index("\x00") + 1, 1, "NUL byte in the routes file",
                        "the file is not ip -batch text")
        if not "route".startswith(words[0]) or words[0] in ("-", ""):
            other.append(Command(number, raw.strip()))
            continue
        route = _route(words, line, name, number)
        routes.append(route)
        if route.table != "main":
            continue
        key = route.key
        if route.verb == "delete":
            if key not in table:
                raise _word(name, number, line, 1, f"route delete {route.prefix}: no such route",
                            "drop the line (ip -batch stops at it)")
            del table[key]
        elif route.verb == "add" and key in table:
            raise _word(name, number, line, 1, f"route {route.prefix} already added at line {table[key].line}",
                        "use 'route replace' (ip -batch stops at a duplicate 'add')")
        elif route.verb == "change" and key not in table:
            raise _word(name, number, line, 1, f"route change {route.prefix}: no such route",
                        "use 'route replace' to add or change")
        else:
            table[key] = route
    effective = tuple(sorted(table.values(), key=lambda r: r.key))
    return Routes(name, tuple(routes), effective, tuple(other))


def _route(words: list[str], line: str, name: str, number: int) -> Route:
    if len(words) < 3:
        raise _word(name, number, line, len(words) - 1, "route command without a verb and a prefix",
                    "write: route replace 10.244.2.0/24 via 192.168.0.12")
    verb = VERBS.get(words[1])
    if verb is None:
        raise _word(name, number, line, 1, f"unknown route verb {words[1]!r}",
                    "use add, append, change, replace or delete")
    i = 2
    kind = "unicast"
    if words[i] in ROUTE_TYPES:
        kind = words[i]
        i += 1
    if words[i] == "to":
        i += 1
    if i >= len(words):
        raise _word(name, number, line, i - 1, "route without a prefix", "write: route replace 10.244.2.0/24 ...")
    prefix = _prefix(words[i], line, name, number, i)
    i += 1
    values: dict[str, str] = {}
    while i < len(words):
        key = words[i]
        if key in FLAGS:
            values[key] = ""
            i += 1
            continue
        if key == "nexthop":
            raise _word(name, number, line, i, "multipath routes (nexthop) are not supported",
                        "write one route per prefix with a single 'via'")
        if key not in VALUE_KEYS:
            raise _word(name, number, line, i, f"unknown route option {key!r}",
                        "kspec reads via, dev, proto, scope, src, metric, table and the usual metrics")
        if i + 1 >= len(words):
            raise _word(name, number, line, i, f"{key} needs a value", f"write {key} VALUE")
        value = words[i + 1]
        if key == "via" and value in ("inet", "inet6") and i + 2 < len(words):
            i += 1
            value = words[i + 1]
        values[key] = value
        i += 2
    via = _address(values.pop("via", None), prefix.version, line, name, number, "via")
    src = _address(values.pop("src", None), prefix.version, line, name, number, "src")
    metric_text = values.pop("metric", None) or values.pop("preference", None) or values.pop("priority", None)
    if metric_text is not None and not metric_text.isdigit():
        raise _word(name, number, line, words.index(metric_text), f"metric {metric_text!r} is not a number",
                    "write metric 100")
    return Route(number, line.strip(), verb, prefix, kind, via, values.pop("dev", None), src,
                 int(metric_text) if metric_text is not None else None, values.pop("table", "main"), values)


def _prefix(text: str, line: str, name: str, number: int, index: int):
    if text == "default":
        return ipaddress.ip_network("0.0.0.0/0")
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        raise _word(name, number, line, index, f"{text!r} is not a prefix (or has host bits set)",
                    "write a CIDR like 10.244.2.0/24") from None


def _address(text: str | None, version: int, line: str, name: str, number: int, what: str):
    if text is None:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise _word(name, number, line, line.split().index(text), f"{what} {text!r} is not an address",
                    f"write {what} 192.168.0.12") from None
    if address.version != version:
        raise _word(name, number, line, line.split().index(text), f"{what} {text} is not of the prefix's family",
                    f"give an IPv{version} {what}")
    return address


def _word(name: str, number: int, line: str, index: int, message: str, hint: str) -> InputError:
    words = line.split()
    index = max(0, min(index, len(words) - 1))
    col = 0
    for k in range(index + 1):
        col = line.index(words[k], col) + (len(words[k]) if k < index else 0)
    return _fail(name, number, col + 1, len(words[index]), message, hint)


def _fail(name: str, number: int, col: int, width: int, message: str, hint: str) -> InputError:
    return InputError(error(message, Span(name, number, col, number, col + max(1, width)), hint))
