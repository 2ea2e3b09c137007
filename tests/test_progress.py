"""Progress lines appear on a terminal only."""

import io

from kspec.frontend.assemble import Flags
from kspec.pipeline import load
from kspec.progress import Progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal(tmp_path):
    path = tmp_path / "c.kspec"
    path.write_text("nodes:\n  n1: {ip: 192.168.0.1}\n")
    tty, pipe = Tty(), io.StringIO()
    assert load([str(path)], None, Flags(), None, Progress(tty)).ok
    assert load([str(path)], None, Flags(), None, Progress(pipe)).ok
    assert "kspec: reading inputs" in tty.getvalue() and tty.getvalue().endswith("\r\x1b[2K")
    assert pipe.getvalue() == ""
