"""`kspec lab up|probe|down`: arguments and exit codes; the work is in kspec.lab.command."""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from kspec.commands.common import load_inputs, print_diagnostics, with_proxy_mode
from kspec.compile import compile_cluster
from kspec.diagnostics import InputError
from kspec.frontend.assemble import Flags
from kspec.lab import command, report as lab_report, state
from kspec.lab.expect import ProbeOptions
from kspec.lab.netns import LabError, LabUnavailable, check_environment

EPILOG = """examples:
  sudo kspec lab probe examples/lab/cluster.kspec            # build, probe, remove
  sudo kspec lab up examples/lab/cluster.kspec               # build and leave running
  sudo kspec lab probe examples/lab/cluster.kspec --format json
  sudo kspec lab down examples/lab/cluster.kspec

The lab is named by --name or after the input paths; `probe` uses the lab
`up` left running under that name, or builds a one-shot lab when none is up.
Its namespaces are ks-NAME-sw, ks-NAME-n-<i>, ks-NAME-p-<j> and ks-NAME-out,
never linked to the host; the record of a running lab is
/run/kspec-lab/ks-NAME.json ($KSPEC_LAB_STATE_DIR overrides the folder).

exit codes: 0 every check observed as expected (up/down: done),
            1 some observation differs (probe), 2 input, usage or machine error
"""

_DEFAULTS = ProbeOptions()
_ROOT_HINT = "run it as root (e.g. sudo kspec lab ...): it creates network namespaces and changes nothing outside them"
_MACHINE_HINT = "the lab needs Linux, root, iproute2, iptables and br_netfilter"


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``lab`` with its actions ``up``, ``probe`` and ``down`` to kspec's command parsers."""
    from kspec.cli import add_input_options  # kspec.cli imports this module

    lab = commands.add_parser("lab", help="build the compiled cluster as network namespaces and probe it (root)",
                              description="Build the compiled cluster as Linux network namespaces, probe every "
                              "observable invariant with real connections, print expected beside observed.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = lab.add_subparsers(dest="lab_action", metavar="ACTION", parser_class=type(lab), required=True)
    up = actions.add_parser("up", help="build the lab and leave it running", epilog=EPILOG,
                            description="Build the lab, load every node's rules, start the responders, leave it up.",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    probe = actions.add_parser("probe", help="probe the running lab (or a one-shot one) and compare", epilog=EPILOG,
                               description="Probe every check on the lab `up` left running under this name, or on "
                               "a one-shot lab built and removed again; print expected beside observed.",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    down = actions.add_parser("down", help="remove the lab (idempotent)", epilog=EPILOG,
                              description="Remove the lab's responders, namespaces and record.",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    for parser in (up, probe):
        add_input_options(parser)
        _lab_options(parser)
    add_input_options(down, inputs_optional=True)
    down.add_argument("--name", metavar="NAME", help="the lab's name (default: derived from the INPUT paths)")
    up.add_argument("--lifetime", type=float, default=86400.0, metavar="SECONDS",
                    help="responders exit by themselves after this long (default 86400)")
    probe.add_argument("--format", choices=("text", "json"), default="text", help="report format")
    probe.add_argument("--tries", type=int, default=_DEFAULTS.tries, metavar="N",
                       help="connections per service check (default 12)")
    probe.add_argument("--pods-per-node", type=int, default=_DEFAULTS.pods_per_node, metavar="N",
                       help="client pods sampled on each node (default 1)")
    probe.add_argument("--timeout", type=float, default=_DEFAULTS.timeout, metavar="SECONDS",
                       help="per connection; a refusal must come sooner (default 1)")
    probe.add_argument("--jobs", type=int, default=_DEFAULTS.workers, metavar="N",
                       help="probe clients run at once (default 8)")
    for parser in (up, probe, down):
        parser.set_defaults(run=run)


def _lab_options(parser: argparse.ArgumentParser) -> None:
    lab = parser.add_argument_group("lab")
    lab.add_argument("--name", metavar="NAME", help="the lab's name (default: derived from the INPUT paths)")
    lab.add_argument("--rules", type=Path, metavar="DIR",
                     help="load the node files of this `kspec compile` output (perhaps edited) instead of "
                     "compiling INPUT; the expectations still come from INPUT")
    lab.add_argument("--allow-any-addresses", action="store_true",
                     help="build addresses outside 198.18.0.0/15 too (the namespaces are never linked to the "
                     "host; overlaps with the host's own networks are still refused)")


def _fail(stderr: IO, action: str, message: str, hint: str) -> int:
    print(f"kspec lab {action}: error: {message}\n  hint: {hint}", file=stderr)
    return 2


def _options(args: argparse.Namespace) -> tuple[ProbeOptions, str | None]:
    tries = getattr(args, "tries", _DEFAULTS.tries)
    per_node = getattr(args, "pods_per_node", _DEFAULTS.pods_per_node)
    timeout = getattr(args, "timeout", _DEFAULTS.timeout)
    jobs = getattr(args, "jobs", _DEFAULTS.workers)
    if not 1 <= tries <= 1000:
        return ProbeOptions(), "--tries must be between 1 and 1000"
    if not 0 <= per_node <= 100:
        return ProbeOptions(), "--pods-per-node must be between 0 and 100"
    if not 0.05 <= timeout <= 30:
        return ProbeOptions(), "--timeout must be between 0.05 and 30 seconds"
    if not 1 <= jobs <= 64:
        return ProbeOptions(), "--jobs must be between 1 and 64"
    if not 1 <= getattr(args, "lifetime", 1.0) <= 10 * 365 * 86400:
        return ProbeOptions(), "--lifetime must be at least 1 second"
    return ProbeOptions(tries, per_node, timeout, jobs), None


def run(args: argparse.Namespace, flags: Flags | None, stdin: IO, stdout: IO, stderr: IO) -> int:
    action = args.lab_action
    if not args.name and not args.inputs:
        return _fail(stderr, action, "no INPUT and no --name", f"kspec lab {action} cluster.kspec (or --name NAME)")
    name = args.name or command.lab_name(args.inputs)
    problem = command.check_name(name)
    options, bad_option = _options(args)
    if problem or bad_option:
        return _fail(stderr, action, problem or bad_option or "", "run 'kspec lab --help' for the options")
    try:
        check_environment()
    except LabUnavailable as exc:
        return _fail(stderr, action, str(exc), _ROOT_HINT if "root" in str(exc) else _MACHINE_HINT)
    try:
        with _terminate_as_interrupt():
            if action == "down":
                return _down(name, args.quiet, stdout, stderr)
            return _up_or_probe(action, name, args, flags or Flags(), options, stdin, stdout, stderr)
    except command.LabBusy as exc:
        return _fail(stderr, action, str(exc), f"remove it first: kspec lab down --name {name}")
    except LabUnavailable as exc:
        return _fail(stderr, action, str(exc), "use iptables mode, or a machine that can run this lab")
    except (LabError, state.StateError, OSError) as exc:
        return _fail(stderr, action, str(exc), f"this run left nothing behind; `kspec lab down --name {name}` "
                     "removes what an earlier run left, then try again")


def _down(name: str, quiet: bool, stdout: IO, stderr: IO) -> int:
    removed = command.down(name)
    if removed.warning:
        print(f"kspec lab down: warning: {removed.warning} (removed anyway)", file=stderr)
    if not quiet:
        if removed.namespaces or removed.had_record:
            print(f"kspec lab down: removed lab {name}: {len(removed.namespaces)} namespaces, "
                  f"{removed.responders} responders", file=stdout)
        else:
            print(f"kspec lab down: no lab {name} is up; nothing to remove", file=stdout)
    return 0


def _up_or_probe(action: str, name: str, args: argparse.Namespace, flags: Flags, options: ProbeOptions,
                 stdin: IO, stdout: IO, stderr: IO) -> int:
    result = load_inputs(f"lab {action}", args, flags, stdin, stderr)
    if result is None:
        return 2
    cluster = with_proxy_mode(result.cluster, args.proxy_mode)
    try:
        compiled = list(compile_cluster(cluster)) if cluster.settings.proxy.mode == "iptables" else []
        prep = command.prepare(cluster, compiled, name, args.inputs, options, args.allow_any_addresses, args.rules)
    except InputError as exc:
        print_diagnostics(exc.diagnostics, stderr)
        print(f"kspec lab {action}: nothing built", file=stderr)
        return 2
    if action == "up":
        record = command.up(prep, args.lifetime)
        if not args.quiet:
            stdout.write(command.render_up(prep, record))
        return 0
    record = state.read(name)
    if record is not None and args.rules is not None:
        return _fail(stderr, action, f"lab {name} is up already: --rules applies only when the lab is built",
                     f"kspec lab down --name {name}, then probe with --rules")
    report = command.probe_running(prep, record, options) if record is not None else command.probe_once(prep, options)
    if args.format == "json":
        stdout.write(lab_report.render_json(report))
    else:
        stdout.write(lab_report.render_text(report, only_differing=args.quiet))
    return report.exit_code


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C while a lab command runs, so its cleanup runs too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
