"""`kspec trace`: one packet's path, explained (arguments, rendering and exit codes; the walk is kspec.trace).

The JSON document (:func:`result_data`)::

    {"source": {kind: "pod"|"node"|"outside", name, ip, port, node},
     "destination": {kind: "service"|"pod"|"address", name, ip, port, protocol, about},
     "node": the node it enters, "mode": "iptables"|"ipvs", "packet": "TCP a:p -> b:q",
     "files": {iptables, routes, ipvs?, ipset?: the names that node's line numbers refer to},
     "steps": [{node, file, phase: "source"|"destination", table ("ipvs" for the IPVS table), hook,
                chain (null for IPVS), line, rule (the line's text), action}],
     "verdict": "ACCEPT"|"DROP"|"REJECT"|"UNREACHABLE", "delivered": bool, "result": one line,
     "nat": {"dnat": {action: "DNAT"|"IPVS", by: "iptables"|"ipvs", from, to, file, line, note?} | null,
             "snat": {action: "MASQUERADE"|"SNAT", from, to, file, line, note?} | null},
     "balancing": {method: "statistic"|"single"|"ipvs", service, scheduler, virtualServer, file, line,
                   affinity} | null,
     "endpoints": [{ip, port, pod, node, chosen, probability (iptables) | weight (ipvs)}],
     "route": [{node, destination, route, file, line, next}],
     "reply": {sent, received, node, text} | null,
     "notes": [text], "exitCode": 0 (delivered) | 1 (dropped, rejected, unreachable)}
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from kspec.commands.common import load_inputs, print_diagnostics
from kspec.diagnostics import InputError
from kspec.frontend.assemble import Flags
from kspec.trace import (
    CHOICE_PREFIXES,
    SPORT,
    Endpoint,
    Hop,
    Nat,
    TraceError,
    TraceResult,
    classify,
    host_port,
    trace,
)

EPILOG = """examples:
  kspec trace examples/explainer/cluster.kspec --from pod/default/frontend --to svc/default/search:80
  kspec trace examples/lab/cluster.kspec --from 198.18.0.100 --to 198.18.0.14:30081
  kspec trace examples/explainer/cluster.kspec --from 203.0.113.7 --to 203.0.113.10:80 --via node-1
  kspec trace cluster.kspec --from node/node-1 --to pod/default/web-1:8080 --format json
  kspec trace cluster.kspec --from pod/default/a --to svc/default/b:http --rules node-1=node-1.iptables-save
  kspec trace cluster.kspec --from pod/default/a --to svc/default/b:http --rules node-1=out/nodes/node-1

--from X   pod/NS/NAME | node/NAME | an IP outside the cluster (then --via NODE names the node
           it arrives at, unless the destination is a node's or a pod's own address)
--to Y     svc/NS/NAME:PORT (port number or name; the first cluster IP, or --family's)
           | pod/NS/NAME:PORT[/PROTO] | IP:PORT[/PROTO] ([v6]:PORT); protocol TCP unless given
--rules NODE=PATH
           a node's iptables-save, ipvsadm-save -n or ipset save dump, or its routes.batch
           (recognised by content; repeat the option for several), or a `kspec compile` node
           directory; whatever is not given is compiled from the spec, and line numbers are
           those of the files `kspec compile` writes (nodes/<node>/iptables.rules)

The walk is the one `kspec verify` proves with: every chain and rule the packet matches (with
its line), every endpoint it may reach with its probability (iptables) or the IPVS scheduler
and real servers (ipvs), the NAT, the route to the node that delivers it, and the reply.

exit codes: 0 the packet is delivered, 1 it is dropped, rejected or unreachable,
            2 input or command-line error
"""

_DIRECTORY_FILES = (("iptables.rules", "iptables"), ("ip6tables.rules", "ip6tables"), ("ipvs.rules", "ipvs"),
                    ("ipset.rules", "ipset"), ("routes.batch", "routes"))


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``trace`` to kspec's command parsers."""
    from kspec.cli import add_input_options  # kspec.cli imports this module

    parser = commands.add_parser("trace", help="show one packet's path: every rule it matches, its NAT, where it lands",
                                 description="Trace one packet through the rules of the nodes it passes: the "
                                 "source's route, each chain and rule it matches (with its line), the NAT, the "
                                 "endpoints it may reach, the route to its destination and the reply.",
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_options(parser)
    parser.add_argument("--from", dest="source", required=True, metavar="X",
                        help="pod/NS/NAME, node/NAME, or an IP outside the cluster")
    parser.add_argument("--to", dest="destination", required=True, metavar="Y",
                        help="svc/NS/NAME:PORT, pod/NS/NAME:PORT[/PROTO] or IP:PORT[/PROTO]")
    parser.add_argument("--rules", action="append", metavar="NODE=PATH",
                        help="a node's rule dump or compile directory (repeatable; default: compiled from the spec)")
    parser.add_argument("--via", metavar="NODE", help="the node an outside packet arrives at")
    parser.add_argument("--family", type=int, choices=(4, 6), help="IP family of a service's cluster IP")
    parser.add_argument("--sport", type=int, default=SPORT, metavar="PORT",
                        help=f"source port (default {SPORT})")
    parser.add_argument("--endpoint", metavar="IP:PORT", help="trace this endpoint (default: the first)")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    parser.set_defaults(run=run)


def read_rules(values: Sequence[str]) -> tuple[dict[str, dict[str, tuple[str, str]]], str | None]:
    """``NODE=PATH`` options -> node -> kind -> (name, text); or an error message."""
    found: dict[str, dict[str, tuple[str, str]]] = {}
    for value in values:
        node, sep, path = value.partition("=")
        if not sep or not node or not path:
            return {}, f"--rules takes NODE=PATH, not {value!r}\n  hint: --rules node-1=node-1.iptables-save"
        place = Path(path)
        files: list[tuple[str, Path]] = []
        if place.is_dir():
            files = [(kind, place / name) for name, kind in _DIRECTORY_FILES if (place / name).is_file()]
            if not files:
                return {}, (f"{path} holds none of {', '.join(n for n, _ in _DIRECTORY_FILES)}\n"
                            "  hint: give a `kspec compile` node directory (OUT/nodes/NODE) or a dump file")
        for kind, file in files or [("", place)]:
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                return {}, f"cannot read {file}: {exc}\n  hint: check the path given to --rules"
            kind = kind or classify(text) or ""
            if not kind:
                return {}, (f"{file}: not an iptables-save, ipvsadm-save, ipset save or routes.batch text\n"
                            "  hint: give the output of iptables-save, ipvsadm-save -n or ipset save")
            mine = found.setdefault(node, {})
            if kind in mine:
                return {}, f"two {kind} texts for node {node}: {mine[kind][0]} and {file}\n  hint: give one of each"
            mine[kind] = (str(file), text)
    return found, None


def run(args: argparse.Namespace, flags: Flags | None, stdin: IO, stdout: IO, stderr: IO) -> int:
    rules, problem = read_rules(args.rules or ())
    if problem:
        print(f"kspec trace: error: {problem}", file=stderr)
        return 2
    loaded = load_inputs("trace", args, flags, stdin, stderr)
    if loaded is None:
        return 2
    try:
        result = trace(loaded.cluster, args.source, args.destination, rules=rules, via=args.via, family=args.family,
                       sport=args.sport, endpoint=args.endpoint)
    except TraceError as exc:
        print(f"kspec trace: error: {exc.message}" + (f"\n  hint: {exc.hint}" if exc.hint else ""), file=stderr)
        return 2
    except InputError as exc:
        print_diagnostics(exc.diagnostics, stderr)
        print(f"kspec trace: the rules cannot be read ({len(exc.diagnostics)} error"
              f"{'s' if len(exc.diagnostics) != 1 else ''})", file=stderr)
        return 2
    if args.format == "json":
        stdout.write(json.dumps(result_data(result), indent=2) + "\n")
    else:
        stdout.write(render_text(result))
    return result.exit_code


# --- rendering --------------------------------------------------------------------------------


def render_text(result: TraceResult) -> str:
    """The explanation, in the order the packet meets things; plain text, readable without colour."""
    out: list[str] = []
    src, dst = result.source, result.destination
    out.append(f"trace {result.packet}")
    out.append(f"  from {src.kind} {src.name}" + (f" on {src.node}" if src.kind == "pod" else ""))
    out.append(f"  to   {dst.kind} {dst.name}" + (f": {dst.about}" if dst.about else "") + (
        "" if dst.kind == "address" else f" ({host_port(dst.ip, dst.port)}/{dst.protocol})"))
    out.append(f"  mode {result.mode}; rules: " + ", ".join(result.files.values()))
    section = 0

    def head(title: str) -> None:
        nonlocal section
        section += 1
        out.extend(["", f"{section}. {title}"])

    head("source")
    out.append(f"   {src.route}")
    by_phase = {phase: [h for h in result.hops if h.phase == phase] for phase in ("source", "destination")}
    for hop in by_phase["source"]:
        head(f"netfilter on {hop.node} ({hop.file})")
        out += _hop_lines(hop, "   ")
    b = result.balancing
    if b is not None and result.endpoints:
        if b.method == "ipvs":
            head(f"IPVS on {result.node}: virtual service {b.virtual_server} ({b.file} line {b.line}), "
                 f"scheduler {b.scheduler}")
            out.append(f"   real servers of {b.service} (the scheduler decides; --endpoint picks the one traced):")
        elif b.method == "statistic":
            head(f"endpoints of {b.service} (iptables: a new connection picks one at random, -m statistic)")
        else:
            head(f"endpoint of {b.service}")
        out += _endpoint_lines(result.endpoints)
        if b.affinity:
            out.append(f"   {b.affinity}")
    head("NAT")
    out += _nat_lines(result)
    if result.routes:
        head("route")
        arrivals = {h.node: h for h in by_phase["destination"]}
        for r in result.routes:
            where = f" ({r.file} line {r.line})" if r.file else ""
            out.append(f"   {r.node}: {r.route}{where} -> {r.next}")
            hop = arrivals.pop(r.next.removeprefix("node "), None)
            if hop is not None:
                out.append(f"   netfilter on {hop.node} ({hop.file}), arriving from the node network:")
                out += _hop_lines(hop, "     ")
    if result.reply is not None:
        head("reply")
        reply = result.reply
        out.append(f"   {reply.text}")
        out.append(f"   sent by the destination: {reply.sent}")
        if reply.received != reply.sent:
            out.append(f"   received by the source:  {reply.received}")
    if result.notes:
        out.extend(["", "notes:"] + [f"  - {n}" for n in result.notes])
    out.extend(["", f"result: {result.outcome} (exit {result.exit_code})"])
    return "\n".join(out) + "\n"


def _hop_lines(hop: Hop, indent: str) -> list[str]:
    out: list[str] = []
    steps = hop.trace.steps
    width = max([len(s.chain) for s in steps if s.table != "ipvs"] + [10])
    for table, name in hop.path:
        if table == "route":
            out.append(f"{indent}routing: {name}")
            continue
        mine = [s for s in steps if (s.table, s.hook) == (table, name)]
        if table == "ipvs":
            out.append(f"{indent}IPVS at {name} ({mine[0].chain})")
            for s in mine:
                out.append(f"{indent}  line {s.line:<4} {s.text}  => {s.action}")
            continue
        out.append(f"{indent}{table} {name}" + ("" if mine else ": no rule matched"))
        for s in mine:
            where = f"line {s.line}" if s.line else "policy"
            out.append(f"{indent}  {where:<9} {s.chain:<{width}}  {s.text}")
    out.append(f"{indent}verdict: {hop.trace.verdict}")
    for a in hop.trace.assumed:
        if not a.split(": ", 1)[1].startswith(CHOICE_PREFIXES):
            out.append(f"{indent}assumed: {a}")
    return out


def _endpoint_lines(endpoints: Sequence[Endpoint]) -> list[str]:
    out = []
    width = max(len(e.address) for e in endpoints)
    where = [(f"pod {e.pod}" if e.pod else "not a pod of the cluster") + (f" on {e.node}" if e.node else "")
             if e.pod or e.node else "not a pod of the cluster" for e in endpoints]
    where = [(f"node {e.node}" if e.pod is None and e.node else w) for e, w in zip(endpoints, where)]
    span = max(len(w) for w in where)
    for e, w in zip(endpoints, where):
        mark = "->" if e.chosen else "  "
        share = f"{e.probability * 100:5.1f}%" if e.probability is not None else f"weight {e.weight}"
        out.append(f"   {mark} {e.address:<{width}}  {w:<{span}}  {share}" + ("  (traced)" if e.chosen else ""))
    if all(e.probability is not None for e in endpoints) and len(endpoints) > 1:
        out.append(f"      total {sum(e.probability or 0.0 for e in endpoints) * 100:.1f}%")
    return out


def _nat_lines(result: TraceResult) -> list[str]:
    out = []
    if result.verdict in ("DROP", "REJECT") and not result.routes:
        out.append(f"   none: the packet is refused ({result.verdict})")
        return out
    if result.dnat is not None:
        d = result.dnat
        by = "IPVS" if d.action == "IPVS" else "DNAT"
        out.append(f"   {by} {d.before} -> {d.after} ({d.file} line {d.line}" + (f"; {d.note}" if d.note else "") + ")")
    else:
        out.append("   no DNAT: the destination is kept")
    if result.snat is not None:
        s = result.snat
        note = f"; {s.note}" if s.note else ""
        out.append(f"   {s.action} {s.before} -> {s.after} ({s.file} line {s.line}){note}")
    else:
        out.append(f"   no SNAT: the source {result.packet.src} is kept")
    return out


def result_data(result: TraceResult) -> dict:
    """The documented JSON object (see the module docstring)."""
    src, dst = result.source, result.destination

    def nat(n: Nat | None, kind: str) -> dict | None:
        if n is None:
            return None
        data = {"action": n.action, "from": n.before, "to": n.after, "file": n.file, "line": n.line}
        if kind == "dnat":
            data["by"] = "ipvs" if n.action == "IPVS" else "iptables"
        if n.note:
            data["note"] = n.note
        return data

    steps = [{"node": hop.node, "file": s.chain if s.table == "ipvs" else hop.file, "phase": hop.phase,
              "table": s.table, "hook": s.hook, "chain": None if s.table == "ipvs" else s.chain, "line": s.line,
              "rule": s.text, "action": s.action}
             for hop in result.hops for s in hop.trace.steps]
    endpoints = []
    for e in result.endpoints:
        item: dict = {"ip": e.ip, "port": e.port, "pod": e.pod, "node": e.node, "chosen": e.chosen}
        if e.probability is not None:
            item["probability"] = round(e.probability, 6)
        if e.weight is not None:
            item["weight"] = e.weight
        endpoints.append(item)
    b = result.balancing
    return {
        "source": {"kind": src.kind, "name": src.name, "ip": src.ip, "port": result.packet.sport, "node": src.node},
        "destination": {"kind": dst.kind, "name": dst.name, "ip": dst.ip, "port": dst.port,
                        "protocol": dst.protocol, "about": dst.about or None},
        "node": result.node,
        "mode": result.mode,
        "packet": str(result.packet),
        "files": dict(result.files),
        "steps": steps,
        "verdict": result.verdict,
        "delivered": result.delivered,
        "result": result.outcome,
        "nat": {"dnat": nat(result.dnat, "dnat"), "snat": nat(result.snat, "snat")},
        "balancing": None if b is None else {"method": b.method, "service": b.service, "scheduler": b.scheduler,
                                             "virtualServer": b.virtual_server, "file": b.file, "line": b.line,
                                             "affinity": b.affinity},
        "endpoints": endpoints,
        "route": [{"node": r.node, "destination": r.destination, "route": r.route, "file": r.file, "line": r.line,
                   "next": r.next} for r in result.routes],
        "reply": None if result.reply is None else {"sent": str(result.reply.sent),
                                                    "received": str(result.reply.received),
                                                    "node": result.reply.node, "text": result.reply.text},
        "notes": list(result.notes),
        "exitCode": result.exit_code,
    }
