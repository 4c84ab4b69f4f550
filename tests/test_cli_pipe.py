"""The command line as a Unix tool: a reader that goes away (`... --json | head`) ends it quietly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
    env = {"DEEPTRAIN_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-m", "core", "settings", "--json"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the command writes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141  # as a shell reports a command ended by SIGPIPE
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
