"""Throw-away network namespaces for the tests that load rules into the real kernel.

One place decides whether such tests can run here (root, iproute2, the
tools a test names) and how a namespace is made and always removed, so
every kernel test skips with the same clear reason and never leaks one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from contextlib import contextmanager
from typing import Iterator

import pytest


def netns_skip_reason(*tools: str) -> str | None:
    """Why namespace tests (needing ``tools`` too) cannot run here; None when they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    missing = [tool for tool in ("ip", *tools) if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (not installed)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"'ip netns' is unavailable: {probe.stderr.strip()}"
    return None


@contextmanager
def throwaway_netns(tag: str, *tools: str) -> Iterator[str]:
    """A new namespace ``ks-test-<tag>-<random>``, deleted on exit (also on failure); skips where impossible."""
    reason = netns_skip_reason(*tools)
    if reason:
        pytest.skip(reason)
    name = f"ks-test-{tag}-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"ip netns add is not permitted here: {made.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
