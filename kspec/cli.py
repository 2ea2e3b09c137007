"""Command line: argument parsing and exit codes, no logic.

``main(argv, stdin, stdout, stderr) -> int`` so tests call it in-process.
Exit codes (PRODUCT.md): 0 holds, 1 violated, 2 bad input or command line,
3 undecided.  No traceback reaches a user: an unexpected exception becomes a
one-line "internal error" (exit 2) that asks for a report; tests fail on that
line, so it never hides a bug from us.  KSPEC_DEBUG=1 re-raises instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import IO, Sequence

from kspec import __version__
from kspec.commands import check, compile_cmd, lab_cmd, schema_cmd, trace_cmd, verify_cmd
from kspec.frontend.assemble import Flags

EXIT_OK, EXIT_VIOLATED, EXIT_INPUT, EXIT_UNKNOWN = 0, 1, 2, 3

EPILOG = """examples:
  kspec check examples/explainer/cluster.kspec
  kspec check k8s/ --nodes 5 --service-cluster-ip-range 10.0.0.0/16
  kubectl get nodes,pods,svc -A -o json | kspec check -
  kspec compile examples/explainer/cluster.kspec -o out/
  kspec verify examples/broken/cluster.kspec --format sarif --output kspec.sarif
  kspec trace examples/explainer/cluster.kspec --from pod/default/frontend --to svc/default/search:80
  sudo kspec lab probe examples/lab/cluster.kspec
  kspec schema > kspec.schema.json

exit codes: 0 ok, 1 invariant violated, 2 input or command-line error, 3 undecided
"""


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print and exit itself
        raise UsageError(f"{self.prog}: error: {message}\n  hint: run '{self.prog} --help' for the options")


def _bool_flag(parser: argparse.ArgumentParser, name: str, help_text: str) -> None:
    parser.add_argument(f"--{name}", dest=name.replace("-", "_"), action=argparse.BooleanOptionalAction,
                        default=None, help=help_text)


def add_input_options(parser: argparse.ArgumentParser, inputs_optional: bool = False) -> None:
    parser.add_argument("inputs", nargs="*" if inputs_optional else "+", metavar="INPUT",
                        help="kspec files, Kubernetes manifests (YAML/JSON), directories, or - for stdin")
    cluster = parser.add_argument_group("cluster settings (objects in the input win over these)")
    cluster.add_argument("--service-cluster-ip-range", metavar="CIDR[,CIDR]", help="service CIDR (default 10.96.0.0/12)")
    cluster.add_argument("--service-node-port-range", metavar="FIRST-LAST", help="nodePort range (default 30000-32767)")
    cluster.add_argument("--cluster-cidr", metavar="CIDR[,CIDR]", help="pod CIDR (default 10.244.0.0/16)")
    cluster.add_argument("--cluster-domain", metavar="DOMAIN", help="cluster DNS domain (default cluster.local)")
    cluster.add_argument("--proxy-mode", choices=("iptables", "ipvs"), help="kube-proxy mode (default iptables)")
    cluster.add_argument("--ipvs-scheduler", choices=("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed",
                                                      "nq", "mh"), help="IPVS scheduler (default rr)")
    cluster.add_argument("--nodes", type=int, default=3, metavar="N",
                         help="nodes of the default cluster when the input has none (default 3)")
    cluster.add_argument("--namespace", default="default", metavar="NS", help="namespace of objects without one")
    proxy = parser.add_argument_group("kube-proxy settings")
    _bool_flag(proxy, "masquerade-all", "SNAT all traffic to service IPs")
    proxy.add_argument("--nodeport-addresses", metavar="CIDR[,CIDR]", help="node addresses that accept nodePorts")
    _bool_flag(proxy, "iptables-localhost-nodeports", "accept nodePorts on localhost (default on)")
    _bool_flag(proxy, "conntrack-tcp-be-liberal", "conntrack is liberal: no INVALID drop rule")
    proxy.add_argument("--detect-local-mode", choices=("ClusterCIDR", "NodeCIDR"), help="how local traffic is detected")
    parser.add_argument("--lock", type=Path, metavar="FILE", help="honour the allocations of this kspec.lock.json")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    parser.add_argument("-v", "--verbose", action="store_true", help="print more detail")


def flags_from(args: argparse.Namespace) -> Flags:
    return Flags(
        service_cluster_ip_range=args.service_cluster_ip_range,
        service_node_port_range=args.service_node_port_range,
        cluster_cidr=args.cluster_cidr,
        cluster_domain=args.cluster_domain,
        proxy_mode=args.proxy_mode,
        ipvs_scheduler=args.ipvs_scheduler,
        nodes=args.nodes,
        namespace=args.namespace,
        masquerade_all=args.masquerade_all,
        nodeport_addresses=args.nodeport_addresses,
        localhost_nodeports=args.iptables_localhost_nodeports,
        conntrack_tcp_be_liberal=args.conntrack_tcp_be_liberal,
        detect_local_mode=args.detect_local_mode,
        random_fully=getattr(args, "random_fully", True) is not False,
        nfacct=bool(getattr(args, "nfacct", False)),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kspec", description="Declarative spec compiler and formal verifier for Kubernetes networking.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"kspec {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    check_parser = commands.add_parser("check", help="parse, validate and resolve; print a summary",
                                       description="Parse, validate and resolve the inputs; print a summary.",
                                       epilog=check.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_options(check_parser)
    check_parser.add_argument("--format", choices=("text", "json"), default="text", help="summary format")
    check_parser.set_defaults(run=check.run)
    compile_parser = commands.add_parser("compile", help="write the rule files kube-proxy would program on each node",
                                         description="Write the rule files of every node, the EndpointSlices, the DNS "
                                         "zones and the lock file into DIR (atomically).",
                                         epilog=compile_cmd.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_options(compile_parser)
    compile_parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    compile_parser.add_argument("--node", action="append", metavar="NAME", help="write only this node (repeatable)")
    _bool_flag(compile_parser, "random-fully", "iptables supports --random-fully (default on)")
    _bool_flag(compile_parser, "nfacct", "the nfacct counters exist on the node (default off)")
    compile_parser.set_defaults(run=compile_cmd.run)
    verify_parser = commands.add_parser("verify", help="prove the network invariants or print counterexamples",
                                        description="Prove the Kubernetes network invariants (KS1xx about the spec, "
                                        "KS2xx about the packets the rules move) or print concrete counterexamples.",
                                        epilog=verify_cmd.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_options(verify_parser, inputs_optional=True)
    verify_parser.add_argument("--list", action="store_true", help="print the invariant catalogue and exit")
    verify_parser.add_argument("--node", action="append", metavar="NAME",
                               help="check the rules of this node (repeatable; default all nodes)")
    verify_parser.add_argument("--rules", action="append", metavar="NODE[:KIND]=PATH",
                               help="verify this dump for NODE instead of the compiled rules; KIND is iptables "
                               "(default: iptables-save or a compiled iptables.rules), ip6tables, ipvs "
                               "(ipvsadm-save -n), ipset (ipset save) or routes")
    verify_parser.add_argument("--format", choices=("text", "json", "sarif", "junit"), default="text")
    verify_parser.add_argument("--output", metavar="FILE", help="write the report to FILE")
    verify_parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                               help="give up (exit 3) when the solver needs longer (default 60)")
    verify_parser.add_argument("--only", action="append", metavar="IDS", help="run only these invariants (KS104,KS109)")
    verify_parser.add_argument("--skip", action="append", metavar="IDS", help="do not run these invariants")
    verify_parser.add_argument("--disable", action="append", metavar="IDS",
                               help="run but silence these invariants (findings counted as suppressed)")
    verify_parser.set_defaults(run=verify_cmd.run)
    trace_cmd.add_parser(commands)
    lab_cmd.add_parser(commands)
    schema_parser = commands.add_parser("schema", help="print the JSON Schema of the kspec language",
                                        description="Print the JSON Schema of the kspec language (for editors).")
    schema_parser.set_defaults(run=schema_cmd.run)
    return parser


def main(argv: Sequence[str] | None = None, stdin: IO | None = None, stdout: IO | None = None,
         stderr: IO | None = None) -> int:
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        except SystemExit as exc:  # --help / --version print and exit 0
            return int(exc.code or 0)
        if not getattr(args, "run", None):
            parser.print_help(stderr)
            return EXIT_INPUT
        return args.run(args, flags_from(args) if hasattr(args, "inputs") else None, stdin, stdout, stderr)
    except UsageError as exc:
        print(str(exc), file=stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("kspec: interrupted", file=stderr)
        return 130
    except RecursionError:
        print("kspec: error: the input is nested too deeply to process\n  hint: flatten the document", file=stderr)
        return EXIT_INPUT
    except MemoryError:
        print("kspec: error: the input is too large for the available memory\n  hint: split the input", file=stderr)
        return EXIT_INPUT
    except Exception as exc:  # the last line of defence: never a traceback
        if os.environ.get("KSPEC_DEBUG"):
            raise
        print(f"kspec: internal error: {type(exc).__name__}: {exc}\n"
              "  hint: this is a bug in kspec; please report it with the input (KSPEC_DEBUG=1 shows details)",
              file=stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
