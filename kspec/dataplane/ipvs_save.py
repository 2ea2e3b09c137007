"""Read IPVS TEXT: ``ipvsadm-save -n`` output and ``ipvsadm-restore`` input alike.

In IPVS mode kube-proxy's load balancing is not in iptables at all: it is the
kernel's IPVS table of virtual services (one per service address, port and
protocol, with a scheduler) and their real servers (the endpoints, with a
forwarding method and a weight).  ``kspec trace`` reads it to show which real
servers a packet may reach, and from which line.

The lines ``ipvsadm-save -n`` prints (and ``kspec compile`` writes)::

    -A -t 10.96.0.10:53 -s rr [-p 10800 [-M MASK]] [-b FLAGS] [pe NAME] [ops]
    -a -t 10.96.0.10:53 -r 10.244.1.5:53 -m -w 1

``-t``/``-u``/``--sctp-service ADDR:PORT`` or ``-f FWMARK [-6]`` name the
service (IPv6 as ``[addr]:port``); ``-m``/``-g``/``-i`` are NAT, direct
routing and tunnelling. Restore input may also ``-E``/``-e`` edit,
``-D``/``-d`` delete and ``-C`` clear, applied in order as ipvsadm-restore
does.  Errors are :class:`~kspec.diagnostics.InputError` at file:line:col.

>>> table = parse("-A -t 10.96.0.10:53 -s rr\\n-a -t 10.96.0.10:53 -r 10.244.1.5:53 -m -w 1\\n", "ipvs.rules")
>>> table.lookup("tcp", "10.96.0.10", 53).real_servers[0].address
'10.244.1.5:53'
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace

from kspec.diagnostics import InputError, Span, error

SCHEDULERS = frozenset(["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos"])
SCHED_FLAGS = frozenset(["flag-1", "flag-2", "flag-3", "sh-fallback", "sh-port", "mh-fallback", "mh-port"])
SERVICE_OPTIONS = {"-t": "tcp", "--tcp-service": "tcp", "-u": "udp", "--udp-service": "udp",
                   "--sctp-service": "sctp", "-f": "fwmark", "--fwmark-service": "fwmark"}
SERVICE_FLAG = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service", "fwmark": "-f"}
COMMANDS = {"-A": "add-service", "--add-service": "add-service", "-E": "edit-service",
            "--edit-service": "edit-service", "-D": "delete-service", "--delete-service": "delete-service",
            "-a": "add-server", "--add-server": "add-server", "-e": "edit-server", "--edit-server": "edit-server",
            "-d": "delete-server", "--delete-server": "delete-server", "-C": "clear", "--clear": "clear"}
METHODS = {"-m": "masq", "--masquerading": "masq", "-g": "gate", "--gatewaying": "gate", "-i": "ipip",
           "--ipip": "ipip"}
METHOD_FLAG = {"masq": "-m", "gate": "-g", "ipip": "-i"}
METHOD_NAME = {"masq": "NAT (masquerading)", "gate": "direct routing", "ipip": "IP-in-IP tunnel"}
DEFAULT_PERSISTENCE = 300  # ipvsadm's -p without a timeout
SERVER_VALUES = frozenset({"-x", "--u-threshold", "-y", "--l-threshold", "--tun-type", "--tun-port"})
SERVER_FLAGS = frozenset({"--tun-nocsum", "--tun-csum", "--tun-remcsum"})
_TOKEN = re.compile(r"\S+")


@dataclass(frozen=True, slots=True)
class RealServer:
    """One ``-a`` line: where the virtual service may send a connection."""

    ip: str
    port: int
    method: str  # masq | gate | ipip
    weight: int
    line: int
    text: str
    options: tuple[tuple[str, str], ...] = ()  # thresholds and tunnel options, as given

    @property
    def address(self) -> str:
        return host_port(self.ip, self.port)


@dataclass(frozen=True, slots=True)
class VirtualService:
    """One ``-A`` line and its real servers (in the order they were added)."""

    protocol: str  # tcp | udp | sctp | fwmark
    ip: str | None  # None for a firewall-mark service
    port: int
    fwmark: int | None
    family: int
    scheduler: str
    line: int
    text: str
    persistence: int | None = None  # -p: ClientIP affinity timeout in seconds
    netmask: str | None = None  # -M
    flags: tuple[str, ...] = ()  # -b scheduler flags
    extras: tuple[str, ...] = ()  # "pe NAME", "ops"
    real_servers: tuple[RealServer, ...] = ()

    @property
    def address(self) -> str:
        return f"fwmark {self.fwmark}" if self.ip is None else host_port(self.ip, self.port)

    @property
    def key(self) -> tuple:
        return (self.protocol, self.fwmark if self.ip is None else self.ip, self.port, self.family)


@dataclass(frozen=True)
class IpvsTable:
    name: str
    services: tuple[VirtualService, ...]
    _index: dict = field(default_factory=dict, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        self._index.update({(s.protocol, s.ip, s.port): s for s in self.services if s.ip is not None})

    def lookup(self, protocol: str, ip: str, port: int) -> VirtualService | None:
        """The virtual service a packet to ``ip:port`` (``protocol`` tcp/udp/sctp) is for, if any."""
        return self._index.get((protocol.lower(), _canonical_ip(ip), port))

    def addresses(self) -> tuple[str, ...]:
        """Service addresses (what kube-proxy binds to kube-ipvs0 or finds on the node), sorted, unique."""
        found = {s.ip for s in self.services if s.ip is not None}
        return tuple(sorted(found, key=lambda a: (":" in a, int(ipaddress.ip_address(a)))))


def host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _canonical_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


# --- rendering ----------------------------------------------------------------------------------


def render(table: IpvsTable) -> str:
    """The table in ``ipvsadm-save -n`` form (what ``kspec compile`` writes)."""
    out: list[str] = []
    for vs in table.services:
        name = f"-f {vs.fwmark}" + (" -6" if vs.family == 6 else "") if vs.ip is None else \
            f"{SERVICE_FLAG[vs.protocol]} {vs.address}"
        words = [f"-A {name} -s {vs.scheduler}"]
        if vs.persistence is not None:
            words.append(f"-p {vs.persistence}")
            if vs.netmask is not None:
                words.append(f"-M {vs.netmask}")
        if vs.flags:
            words.append("-b " + ",".join(vs.flags))
        words += list(vs.extras)
        out.append(" ".join(words) + "\n")
        for rs in vs.real_servers:
            extra = "".join(f" {k} {v}" if v else f" {k}" for k, v in rs.options)
            out.append(f"-a {name} -r {rs.address} {METHOD_FLAG[rs.method]} -w {rs.weight}{extra}\n")
    return "".join(out)


# --- parsing ------------------------------------------------------------------------------------


class _Line:
    def __init__(self, name: str, number: int, text: str) -> None:
        self.name = name
        self.number = number
        self.words: list[tuple[str, int]] = [(m.group(0), m.start() + 1) for m in _TOKEN.finditer(text)]

    def at(self, index: int, message: str, hint: str) -> InputError:
        index = max(0, min(index, len(self.words) - 1))
        word, col = self.words[index] if self.words else ("", 1)
        return InputError(error(message, Span(self.name, self.number, col, self.number, col + max(1, len(word))),
                                hint))


def parse(text: str, name: str = "<ipvs>") -> IpvsTable:
    """Parse ``ipvsadm-save -n`` output or ``ipvsadm-restore`` input into the table it leaves."""
    services: dict[tuple, VirtualService] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        raw = raw.rstrip("\r")
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if "\x00" in raw:
            col = raw.index("\x00") + 1
            raise InputError(error("NUL byte in the IPVS rules", Span(name, number, col, number, col + 1),
                                   "the file is not ipvsadm-save output"))
        line = _Line(name, number, raw)
        command = COMMANDS.get(line.words[0][0])
        if command is None:
            raise line.at(0, f"unknown ipvsadm command {line.words[0][0]!r}",
                          "ipvsadm-save writes -A (virtual service) and -a (real server) lines")
        if command == "clear":
            if len(line.words) > 1:
                raise line.at(1, "-C takes no arguments", "write -C alone")
            services.clear()
            continue
        if command.endswith("service"):
            _service_line(line, command, raw.strip(), services)
        else:
            _server_line(line, command, raw.strip(), services)
    return IpvsTable(name, tuple(services.values()))


def _service_name(line: _Line, index: int) -> tuple[tuple, int]:
    """(protocol, address or mark, port, family) from ``-t ADDR:PORT`` / ``-f MARK [-6]``; next index."""
    words = line.words
    if index >= len(words) or words[index][0] not in SERVICE_OPTIONS:
        raise line.at(index, "missing the service: -t|-u|--sctp-service ADDR:PORT or -f FWMARK",
                      "write -A -t 10.96.0.10:53 -s rr")
    protocol = SERVICE_OPTIONS[words[index][0]]
    if index + 1 >= len(words):
        raise line.at(index, f"{words[index][0]} needs a value", "write -t 10.96.0.10:53")
    value = words[index + 1][0]
    if protocol == "fwmark":
        if not value.isdigit() or not 0 < int(value) < 1 << 32:
            raise line.at(index + 1, f"firewall mark {value!r} is not a number from 1 to 2^32-1", "write -f 100")
        family = 4
        nxt = index + 2
        if nxt < len(words) and words[nxt][0] in ("-6", "--ipv6"):
            family, nxt = 6, nxt + 1
        return (protocol, int(value), 0, family), nxt
    ip, port = _address(line, index + 1, value, port_required=True)
    return (protocol, ip, port, ipaddress.ip_address(ip).version), index + 2


def _address(line: _Line, index: int, text: str, port_required: bool) -> tuple[str, int]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise line.at(index, f"bad IPv6 address {text!r}", "write [fd00::10]:53")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        raise line.at(index, f"IPv6 address {text!r} without brackets", "write [fd00::10]:53")
    else:
        host, port_text = text, ""
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        raise line.at(index, f"{host!r} is not an IP address", "ipvsadm-save -n prints numeric addresses") from None
    if not port_text:
        if port_required:
            raise line.at(index, f"{text!r} has no port", "write ADDR:PORT, e.g. 10.96.0.10:53")
        return ip, -1
    if not port_text.isdigit() or int(port_text) > 65535:
        raise line.at(index, f"port {port_text!r} is not a number from 0 to 65535",
                      "ipvsadm-save -n prints numeric ports")
    return ip, int(port_text)


def _service_line(line: _Line, command: str, text: str, services: dict[tuple, VirtualService]) -> None:
    key, i = _service_name(line, 1)
    words = line.words
    if command == "delete-service":
        if i < len(words):
            raise line.at(i, f"unexpected {words[i][0]!r} after the service", "write -D -t ADDR:PORT")
        if services.pop(key, None) is None:
            raise line.at(1, "no such virtual service to delete", "drop the line (ipvsadm-restore stops at it)")
        return
    scheduler = "wlc"  # ipvsadm's default
    persistence: int | None = None
    netmask: str | None = None
    flags: tuple[str, ...] = ()
    extras: list[str] = []
    while i < len(words):
        word = words[i][0]
        if word in ("-s", "--scheduler"):
            scheduler = _value(line, i)
            if scheduler not in SCHEDULERS:
                raise line.at(i + 1, f"unknown IPVS scheduler {scheduler!r}",
                              "use one of " + ", ".join(sorted(SCHEDULERS)))
            i += 2
        elif word in ("-p", "--persistent"):
            if i + 1 < len(words) and words[i + 1][0].isdigit():
                persistence = int(words[i + 1][0])
                i += 2
            else:
                persistence = DEFAULT_PERSISTENCE
                i += 1
        elif word in ("-M", "--netmask"):
            netmask = _value(line, i)
            i += 2
        elif word in ("-b", "--sched-flags"):
            flags = tuple(_value(line, i).split(","))
            bad = [f for f in flags if f not in SCHED_FLAGS]
            if bad:
                raise line.at(i + 1, f"unknown scheduler flag {bad[0]!r}", "use " + ", ".join(sorted(SCHED_FLAGS)))
            i += 2
        elif word in ("pe", "--pe"):
            extras.append(f"pe {_value(line, i)}")
            i += 2
        elif word in ("ops", "-o", "--ops"):
            extras.append("ops")
            i += 1
        else:
            raise line.at(i, f"unknown virtual service option {word!r}",
                          "ipvsadm-save writes -s SCHEDULER, -p TIMEOUT, -M NETMASK, -b FLAGS")
    protocol, address, port, family = key
    if protocol != "fwmark" and port == 0 and persistence is None:
        raise line.at(1, "port 0 is only valid for a persistent service", "add -p TIMEOUT or give the port")
    if netmask is not None and persistence is None:
        raise line.at(1, "-M needs -p (a persistence netmask)", "add -p TIMEOUT or drop -M")
    ip = None if protocol == "fwmark" else address
    mark = address if protocol == "fwmark" else None
    service = VirtualService(protocol, ip, port, mark, family, scheduler, line.number, text, persistence, netmask,
                             flags, tuple(extras))
    if command == "add-service":
        if key in services:
            raise line.at(1, f"virtual service {service.address} already exists (line {services[key].line})",
                          "add each virtual service once (ipvsadm-restore stops at a duplicate)")
        services[key] = service
    else:
        old = services.get(key)
        if old is None:
            raise line.at(1, f"no virtual service {service.address} to edit", "add it with -A first")
        services[key] = replace(service, real_servers=old.real_servers)


def _value(line: _Line, index: int) -> str:
    if index + 1 >= len(line.words):
        raise line.at(index, f"{line.words[index][0]} needs a value", f"write {line.words[index][0]} VALUE")
    return line.words[index + 1][0]


def _server_line(line: _Line, command: str, text: str, services: dict[tuple, VirtualService]) -> None:
    key, i = _service_name(line, 1)
    service = services.get(key)
    if service is None:
        raise line.at(1, "the virtual service is not defined before this line",
                      "add its -A line above its real servers")
    words = line.words
    address: tuple[str, int] | None = None
    address_index = i
    method = "gate"  # ipvsadm's default forwarding method
    weight = 1
    options: list[tuple[str, str]] = []
    while i < len(words):
        word = words[i][0]
        if word in ("-r", "--real-server"):
            address_index = i + 1
            address = _address(line, i + 1, _value(line, i), port_required=False)
            i += 2
        elif word in METHODS:
            method = METHODS[word]
            i += 1
        elif word in ("-w", "--weight"):
            value = _value(line, i)
            if not value.isdigit() or int(value) > 65535:
                raise line.at(i + 1, f"weight {value!r} is not a number from 0 to 65535", "write -w 1")
            weight = int(value)
            i += 2
        elif word in SERVER_VALUES:
            options.append((word, _value(line, i)))
            i += 2
        elif word in SERVER_FLAGS:
            options.append((word, ""))
            i += 1
        else:
            raise line.at(i, f"unknown real server option {word!r}",
                          "ipvsadm-save writes -r ADDR:PORT, -m|-g|-i and -w WEIGHT")
    if address is None:
        raise line.at(len(words), "missing the real server: -r ADDR:PORT", "write -r 10.244.1.5:8080")
    ip, port = address
    if port < 0:
        port = service.port
    if ipaddress.ip_address(ip).version != service.family and method == "masq":
        raise line.at(address_index, "a NAT real server must have the service's address family",
                      "give an address of the same family")
    server = RealServer(ip, port, method, weight, line.number, text, tuple(options))
    existing = [rs for rs in service.real_servers if (rs.ip, rs.port) == (ip, port)]
    if command == "add-server":
        if existing:
            raise line.at(address_index, f"real server {server.address} already added (line {existing[0].line})",
                          "add each real server once (ipvsadm-restore stops at a duplicate)")
        servers = service.real_servers + (server,)
    elif not existing:
        raise line.at(address_index, f"no real server {server.address} in this service",
                      "add it with -a first")
    elif command == "edit-server":
        servers = tuple(server if rs is existing[0] else rs for rs in service.real_servers)
    else:
        servers = tuple(rs for rs in service.real_servers if rs is not existing[0])
    services[key] = replace(service, real_servers=servers)
