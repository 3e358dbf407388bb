import os
import sys

from .cli import main

try:
    try:
        code = main()
    finally:
        sys.stdout.flush()  # here, not at exit, so a closed pipe is caught below (--help exits through here too)
except BrokenPipeError:
    # The reader went away (`... | head -1`): stop quietly, as Unix tools do; Python would report
    # the pipe again when it flushes stdout at exit, so point stdout at /dev/null first.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    code = 1
sys.exit(code)
