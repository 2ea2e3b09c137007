"""The record of a lab that outlives the command that built it (``kspec lab up``).

One JSON file per lab, ``<dir>/ks-<name>.json``, where ``<dir>`` is
``$KSPEC_LAB_STATE_DIR`` when set, else ``/run/kspec-lab`` (the lab needs
root, and network namespaces are machine-wide, so the record is too; /run
is a tmpfs, so records vanish on reboot together with the namespaces).

The file is created exclusively *before* anything is built: it is the lock
that keeps two commands from building one lab, and it names the prefix, so
``kspec lab down`` can remove a lab whose builder was killed half-way.  It
records each responder's PID with its start time, so a PID reused by an
unrelated process is never signalled.  Responders' error output goes to
``<dir>/ks-<name>.log``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_DIR = Path("/run/kspec-lab")
STATE_VERSION = 1


class StateError(Exception):
    """A state file exists but cannot be used (unreadable, not ours, another version)."""


@dataclass(frozen=True, slots=True)
class ResponderProcess:
    """One detached responder: enough to find it again, and to be sure it is still the same process."""

    pid: int
    start_time: int  # field 22 of /proc/PID/stat (clock ticks since boot)
    netns: str
    port: int
    proto: str
    name: str


@dataclass(frozen=True)
class LabState:
    name: str
    prefix: str
    status: str  # "building" | "up"
    inputs: tuple[str, ...]
    fingerprint: str  # of the plan and compiled rules the lab was built from
    outside_ip: str | None
    namespaces: tuple[str, ...]
    responders: tuple[ResponderProcess, ...] = ()
    owner_pid: int = 0
    version: int = STATE_VERSION
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @staticmethod
    def from_json(text: str, where: str) -> LabState:
        try:
            data = json.loads(text)
            if data.get("version") != STATE_VERSION:
                raise StateError(f"{where} has version {data.get('version')!r}, not {STATE_VERSION}")
            responders = tuple(ResponderProcess(**r) for r in data.pop("responders", ()))
            tuples = {k: tuple(data.pop(k, ())) for k in ("inputs", "namespaces", "notes")}
            return LabState(**data, **tuples, responders=responders)
        except StateError:
            raise
        except (ValueError, TypeError, AttributeError) as exc:
            raise StateError(f"{where} is not a kspec lab state file: {exc}") from None


def state_dir() -> Path:
    return Path(os.environ.get("KSPEC_LAB_STATE_DIR") or DEFAULT_DIR)


def state_path(name: str) -> Path:
    return state_dir() / f"ks-{name}.json"


def log_path(name: str) -> Path:
    return state_dir() / f"ks-{name}.log"


def create(state: LabState) -> Path:
    """Write a new record; FileExistsError when the lab already has one (it is up or being built)."""
    path = state_path(state.name)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(state.to_json())
    return path


def update(state: LabState) -> None:
    """Replace the record atomically (a reader sees the old or the new one, never half)."""
    path = state_path(state.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(state.to_json())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(name: str) -> LabState | None:
    """The record of lab ``name``, None when there is none; StateError when it is unusable."""
    path = state_path(name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"cannot read {path}: {exc}") from None
    return LabState.from_json(text, str(path))


def remove(name: str) -> None:
    """Forget lab ``name`` (record and log); nothing happens when there is none."""
    for path in (state_path(name), log_path(name)):
        path.unlink(missing_ok=True)


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat, None when no such process runs (or it is a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name in (...) may hold spaces
    if len(fields) < 20 or fields[0] == "Z":
        return None
    return int(fields[19]) if fields[19].isdigit() else None


def is_running(process: ResponderProcess) -> bool:
    """Whether the recorded responder is still the process with that PID."""
    return process_start_time(process.pid) == process.start_time
