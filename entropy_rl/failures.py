"""Unexpected failures of a command as one line, the traceback kept in a file.

`report_failure` is called from inside an `except` block: it appends the current traceback to
`log_path` (a temporary file when None or not writable) and prints one line naming the error
and where its traceback is; `--debug` on any command's line shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import traceback


def report_failure(prefix: str, error: BaseException, log_path: str | None = None) -> int:
    """Print `prefix: ErrorType: message (traceback in PATH; --debug shows it)` and return 1."""
    paths = [log_path] if log_path else []
    paths.append(os.path.join(tempfile.gettempdir(), f"entropy-rl-{os.getpid()}.log"))
    where = " (--debug shows the traceback)"
    for path in paths:
        with contextlib.suppress(OSError):
            with open(path, "a") as f:
                f.write(traceback.format_exc())
            where = f" (traceback in {path}; --debug shows it)"
            break
    lines = (str(error).strip() or type(error).__name__).splitlines()
    print(f"{prefix}: {type(error).__name__}: " + "\n  ".join(lines[:8]) + where, file=sys.stderr)
    return 1
