import os
import sys

from core.cli import main

try:
    code = main()
    sys.stdout.flush()
except BrokenPipeError:
    # the reader went away (`python -m core ... --json | head`): stop quietly, as Unix tools do. Python would
    # report the pipe again when it flushes stdout at exit, so stdout points at /dev/null from here.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    code = 128 + 13  # what a shell reports for a command ended by SIGPIPE
sys.exit(code)
