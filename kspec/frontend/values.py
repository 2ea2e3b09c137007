"""Typed scalar readers shared by the kspec and manifest frontends.

Each reader takes the raw value and the span it came from and returns the
typed value, or None after recording a located diagnostic with a fix hint.
Being strict here is what keeps bad text out of rule files: a CIDR with host
bits, a port of 70000 or an address with a zone index never reach a backend.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from kspec.diagnostics import DiagnosticSink, Span
from kspec.model import PROTOCOLS, IPAddress, IPNetwork


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if value is None:
        return "nothing (null)"
    if isinstance(value, int):
        return f"a number ({value})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = str(value)
    return repr(text if len(text) <= 60 else text[:57] + "...")


def describe(value: Any) -> str:
    """A short human description of a raw value, for error messages."""
    return _describe(value)


def read_ip(value: Any, span: Span, sink: DiagnosticSink, what: str = "IP address") -> IPAddress | None:
    if not isinstance(value, str):
        sink.error(f"{what} must be an IP address, not {_describe(value)}", span,
                   "write an IPv4 address like 10.244.1.5 or an IPv6 address like fd00::5")
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        hint = "write an IPv4 address like 10.244.1.5 or an IPv6 address like fd00::5"
        if "/" in value:
            hint = "an address takes no prefix length: drop the '/...'"
        sink.error(f"{what} {value!r} is not a valid IP address", span, hint)
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        sink.error(f"{what} {value!r} has a zone index", span, "remove the '%zone' suffix")
        return None
    return address


def read_cidr(value: Any, span: Span, sink: DiagnosticSink, what: str = "CIDR") -> IPNetwork | None:
    if not isinstance(value, str):
        sink.error(f"{what} must be a CIDR, not {_describe(value)}", span,
                   "write a network like 10.244.0.0/16 or fd00:10:244::/56")
        return None
    if "/" not in value:
        sink.error(f"{what} {value!r} has no prefix length", span,
                   f"add the prefix length, e.g. {value}/24")
        return None
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            sink.error(f"{what} {value!r} is not a valid CIDR ({exc})", span,
                       "write a network like 10.244.0.0/16 or fd00:10:244::/56")
            return None
        sink.error(f"{what} {value!r} has host bits set", span, f"did you mean {loose}?")
        return None


def read_ips(value: Any, span_of, sink: DiagnosticSink, what: str) -> tuple[IPAddress, ...]:
    """One address or a list of up to two (dual-stack), one per family."""
    return _read_dual(value, span_of, sink, what, read_ip)


def read_cidrs(value: Any, span_of, sink: DiagnosticSink, what: str) -> tuple[IPNetwork, ...]:
    """One CIDR or a list of up to two (dual-stack), one per family."""
    return _read_dual(value, span_of, sink, what, read_cidr)


def _read_dual(value: Any, span_of, sink: DiagnosticSink, what: str, reader) -> tuple:
    items = value if isinstance(value, list) else [value]
    result = []
    for index, item in enumerate(items):
        span = span_of(index) if isinstance(value, list) else span_of(None)
        parsed = reader(item, span, sink, what)
        if parsed is not None:
            result.append(parsed)
    _check_dual_stack(result, span_of(None), sink, what)
    return tuple(result)


def _check_dual_stack(items: list, span: Span, sink: DiagnosticSink, what: str) -> None:
    if len(items) > 2:
        sink.error(f"{what}: at most two values (one IPv4, one IPv6) are allowed", span,
                   "dual-stack takes one value per IP family")
    elif len(items) == 2 and items[0].version == items[1].version:
        sink.error(f"{what}: the two values must be of different IP families", span,
                   "dual-stack takes one IPv4 and one IPv6 value")


def read_port(value: Any, span: Span, sink: DiagnosticSink, what: str = "port", allow_zero: bool = False) -> int | None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.isdigit():
            sink.error(f"{what} must be a number, not the string {value!r}", span, f"write {int(value)} without quotes")
        else:
            sink.error(f"{what} must be a port number, not {_describe(value)}", span,
                       f"use a number from {low} to 65535")
        return None
    if not low <= value <= 65535:
        sink.error(f"{what} {value} is out of range", span, f"use a number from {low} to 65535")
        return None
    return value


def read_protocol(value: Any, span: Span, sink: DiagnosticSink) -> str | None:
    if value in PROTOCOLS:
        return value
    hint = "use TCP, UDP or SCTP"
    if isinstance(value, str) and value.upper() in PROTOCOLS:
        hint = f"protocols are upper case: {value.upper()}"
    sink.error(f"protocol must be TCP, UDP or SCTP, not {_describe(value)}", span, hint)
    return None


def read_port_spec(value: Any, span: Span, sink: DiagnosticSink, what: str = "port") -> tuple[int, str] | None:
    """``8080`` or ``8080/TCP`` -> (8080, "TCP")."""
    if isinstance(value, int) and not isinstance(value, bool):
        port = read_port(value, span, sink, what)
        return None if port is None else (port, "TCP")
    if not isinstance(value, str):
        sink.error(f"{what} must be a port spec like 8080/TCP, not {_describe(value)}", span,
                   "write PORT or PORT/PROTOCOL, e.g. 8080/TCP or 53/UDP")
        return None
    number, _, proto = value.partition("/")
    if not number.isdigit():
        sink.error(f"{what} {value!r} is not a port spec", span, "write PORT or PORT/PROTOCOL, e.g. 8080/TCP or 53/UDP")
        return None
    port = read_port(int(number), span, sink, what)
    protocol = read_protocol(proto, span, sink) if proto else "TCP"
    if port is None or protocol is None:
        return None
    return port, protocol


def read_port_range(value: Any, span: Span, sink: DiagnosticSink) -> tuple[int, int] | None:
    """``30000-32767`` (or a single port) -> (30000, 32767)."""
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if text is None:
        sink.error(f"port range must look like 30000-32767, not {_describe(value)}", span, "write FIRST-LAST")
        return None
    first, sep, last = text.partition("-")
    if not first.strip().isdigit() or (sep and not last.strip().isdigit()):
        sink.error(f"port range {text!r} is not FIRST-LAST", span, "write FIRST-LAST, e.g. 30000-32767")
        return None
    low, high = int(first), int(last) if sep else int(first)
    if not (1 <= low <= 65535 and 1 <= high <= 65535):
        sink.error(f"port range {text!r} is out of range", span, "ports go from 1 to 65535")
        return None
    if low > high:
        sink.error(f"port range {text!r} is reversed", span, f"did you mean {high}-{low}?")
        return None
    return low, high


def read_bool(value: Any, span: Span, sink: DiagnosticSink, what: str) -> bool | None:
    if isinstance(value, bool):
        return value
    if value in ("true", "True", "false", "False"):
        sink.error(f"{what} must be a boolean, not the string {value!r}", span, f"write {value.lower()} without quotes")
    else:
        sink.error(f"{what} must be true or false, not {_describe(value)}", span, "write true or false")
    return None


def read_int(value: Any, span: Span, sink: DiagnosticSink, what: str, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        sink.error(f"{what} must be a whole number, not {_describe(value)}", span, f"use a number from {low} to {high}")
        return None
    if not low <= value <= high:
        sink.error(f"{what} {value} is out of range", span, f"use a number from {low} to {high}")
        return None
    return value


def read_str(value: Any, span: Span, sink: DiagnosticSink, what: str) -> str | None:
    if isinstance(value, str):
        return value
    sink.error(f"{what} must be a string, not {_describe(value)}", span, "quote the value")
    return None


def read_string_map(value: Any, span_of, sink: DiagnosticSink, what: str) -> dict[str, str]:
    """Labels/annotations: a mapping of strings (numbers and booleans are not strings in Kubernetes)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        sink.error(f"{what} must be a mapping, not {_describe(value)}", span_of(None), "write key: value pairs")
        return {}
    result: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            sink.error(f"{what} keys must be strings, not {_describe(key)}", span_of(key), "quote the key")
            continue
        if not isinstance(item, str):
            hint = f'quote it: "{str(item).lower() if isinstance(item, bool) else item}"' if isinstance(item, (int, bool, float)) else "use a string value"
            sink.error(f"{what} value of {key!r} must be a string, not {_describe(item)}", span_of(key), hint)
            continue
        result[key] = item
    return result
