"""`kspec trace`: one packet's path, explained (arguments and exit codes; the work is in kspec.trace)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from kspec.commands.check import print_diagnostics
from kspec.diagnostics import InputError
from kspec.frontend.assemble import Flags
from kspec.pipeline import load
from kspec.progress import Progress
from kspec.trace import SPORT, TraceError, classify, render_text, result_data, trace

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
    loaded = load(args.inputs, stdin, flags, args.lock, Progress(stderr, None if not args.quiet else False))
    print_diagnostics(loaded.diagnostics, stderr, args.quiet)
    if loaded.cluster is None or not loaded.ok:
        errors = sum(1 for d in loaded.diagnostics if d.is_error)
        print(f"kspec trace: {errors} input error{'s' if errors != 1 else ''}", file=stderr)
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
