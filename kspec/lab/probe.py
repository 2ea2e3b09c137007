"""A tiny TCP/UDP responder and client, run inside lab namespaces.

Standard library only and importing nothing from kspec, so the lab can run
it by path (``python3 .../probe.py``) or as ``python3 -m kspec.lab.probe``
in any namespace without paying for the package's imports.

``serve --port P --name NAME [--proto tcp|udp]`` binds 0.0.0.0:P, prints
``READY`` on standard output once listening (the lab waits for that line),
then answers every TCP connection, or every UDP datagram, with one line
``NAME PEER_IP:PEER_PORT``: the responder's identity and the source address
it saw, which is what tells a DNAT (the name) from a SNAT (the address).
It exits by itself after ``--lifetime`` seconds so a leaked responder does
not outlive its test.

``connect IP PORT [--proto tcp|udp] [--timeout S]`` prints the reply line and
exits with a code that says what happened (see the ``EXIT_*`` constants).
With ``--count N`` it makes N exchanges in one process (starting a client
per exchange costs more than the exchange) and prints one line per exchange,
``CODE REPLY-OR-ERROR`` (read back with :meth:`ProbeResult.from_line`),
exiting 0; ``--give-up-after K`` stops after K timed-out exchanges, which
bounds the time a black-holed destination costs.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import socket
import sys
import time
from dataclasses import dataclass

EXIT_OK = 0
EXIT_USAGE = 2  # argparse's own code
EXIT_REFUSED = 3  # TCP RST or ICMP port unreachable (REJECT)
EXIT_TIMEOUT = 4  # nothing came back: dropped or black-holed
EXIT_UNREACHABLE = 5  # no route, host or network unreachable, other errors

READY = "READY"
PROTOCOLS = ("tcp", "udp")
_MAX_REPLY = 4096


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one client exchange saw; exactly one of ok/refused/timeout/unreachable is true."""

    ok: bool
    refused: bool
    timeout: bool
    responder_name: str | None
    seen_source: str | None  # the client address the responder saw (after any SNAT)
    seen_port: int | None
    detail: str = ""
    unreachable: bool = False  # no route, host or network unreachable

    @staticmethod
    def from_client(returncode: int, stdout: str, stderr: str) -> "ProbeResult | None":
        """Read a ``connect`` run back; None when the client itself failed (bad arguments, crash)."""
        if returncode == EXIT_OK:
            name, _, peer = stdout.strip().partition(" ")
            host, _, port = peer.rpartition(":")
            return ProbeResult(True, False, False, name, host or None, int(port) if port.isdigit() else None)
        outcome = {EXIT_REFUSED: "refused", EXIT_TIMEOUT: "timed out", EXIT_UNREACHABLE: "unreachable"}.get(returncode)
        if outcome is None:
            return None
        return ProbeResult(False, outcome == "refused", outcome == "timed out", None, None, None,
                           f"{outcome}: {stderr.strip()}", outcome == "unreachable")


    @staticmethod
    def from_line(line: str) -> "ProbeResult | None":
        """Read one ``CODE REPLY-OR-ERROR`` line of ``connect --count``; None when it is not one."""
        code, _, rest = line.strip().partition(" ")
        if not code.isdigit():
            return None
        returncode = int(code)
        if returncode == EXIT_OK:
            return ProbeResult.from_client(returncode, rest, "")
        return ProbeResult.from_client(returncode, "", rest)


def _reply(name: str, peer: tuple[str, int]) -> bytes:
    return f"{name} {peer[0]}:{peer[1]}\n".encode()


def serve_tcp(sock: socket.socket, name: str, deadline: float) -> None:
    """Answer connections one at a time until the deadline: reply, then close."""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, min(1.0, deadline - time.monotonic())))
        try:
            conn, peer = sock.accept()
        except socket.timeout:
            continue
        with conn:
            conn.settimeout(1.0)
            try:
                conn.sendall(_reply(name, peer))
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def serve_udp(sock: socket.socket, name: str, deadline: float) -> None:
    """Answer every datagram with one datagram until the deadline."""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, min(1.0, deadline - time.monotonic())))
        try:
            _, peer = sock.recvfrom(_MAX_REPLY)
        except socket.timeout:
            continue
        try:
            sock.sendto(_reply(name, peer), peer)
        except OSError:
            pass


def serve(port: int, name: str, proto: str, lifetime: float, bind: str = "0.0.0.0") -> int:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind, port))
        if proto == "tcp":
            sock.listen(64)
        print(READY, flush=True)
        deadline = time.monotonic() + lifetime
        if proto == "tcp":
            serve_tcp(sock, name, deadline)
        else:
            serve_udp(sock, name, deadline)
    return EXIT_OK


def _exit_for(exc: OSError) -> int:
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return EXIT_REFUSED
    if isinstance(exc, socket.timeout):
        return EXIT_TIMEOUT
    return EXIT_UNREACHABLE


def _receive_line(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while b"\n" not in data and len(data) < _MAX_REPLY:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(_MAX_REPLY)
        if not chunk:
            break
        data += chunk
    return data


def connect(ip: str, port: int, proto: str, timeout: float) -> int:
    """One exchange with a responder; print its line; the exit code says how it went."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.settimeout(timeout)
            sock.connect((ip, port))
            if proto == "udp":
                sock.send(b"probe\n")
            data = _receive_line(sock, deadline)
    except OSError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return _exit_for(exc)
    if not data:
        print("connection closed without a reply", file=sys.stderr)
        return EXIT_REFUSED if proto == "tcp" else EXIT_TIMEOUT
    sys.stdout.write(data.decode(errors="replace").splitlines()[0] + "\n")
    return EXIT_OK


def connect_many(ip: str, port: int, proto: str, timeout: float, count: int, give_up_after: int) -> int:
    """``count`` exchanges, one ``CODE REPLY-OR-ERROR`` line each; stop after ``give_up_after`` timeouts."""
    timeouts = 0
    for _ in range(count):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = connect(ip, port, proto, timeout)
        text = (out.getvalue() if code == EXIT_OK else err.getvalue()).strip().replace("\n", " ")
        print(f"{code} {text}", flush=True)
        timeouts += code == EXIT_TIMEOUT
        if give_up_after and timeouts >= give_up_after:
            break
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="answer each connection with 'NAME PEER_IP:PEER_PORT'")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--proto", choices=PROTOCOLS, default="tcp")
    s.add_argument("--bind", default="0.0.0.0")
    s.add_argument("--lifetime", type=float, default=600.0, help="exit after this many seconds")
    c = sub.add_parser("connect", help="print a responder's reply line")
    c.add_argument("ip")
    c.add_argument("port", type=int)
    c.add_argument("--proto", choices=PROTOCOLS, default="tcp")
    c.add_argument("--timeout", type=float, default=2.0)
    c.add_argument("--count", type=int, default=0, help="make N exchanges, one 'CODE REPLY-OR-ERROR' line each")
    c.add_argument("--give-up-after", type=int, default=0, help="with --count: stop after this many timeouts")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        try:
            return serve(args.port, args.name, args.proto, args.lifetime, args.bind)
        except OSError as exc:
            print(f"cannot serve on {args.bind}:{args.port}/{args.proto}: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
        except KeyboardInterrupt:
            return EXIT_OK
    if args.count > 0:
        return connect_many(args.ip, args.port, args.proto, args.timeout, args.count, args.give_up_after)
    return connect(args.ip, args.port, args.proto, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
