"""The command line drops library lines that tell a user nothing (orbax's read-only notice,
transformers' advice that PyTorch is missing), and importing the package drops nothing."""

import logging
import os
import subprocess
import sys

import pytest

from entropy_rl.failures import quiet_library_noise


def test_quiet_library_noise_drops_the_read_only_notice_only(monkeypatch, caplog):
    monkeypatch.delenv("TRANSFORMERS_NO_ADVISORY_WARNINGS", raising=False)
    absl = logging.getLogger("absl")
    monkeypatch.setattr(absl, "filters", [])
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    quiet_library_noise()
    quiet_library_noise()  # once is enough: no second filter
    assert len(absl.filters) == 1
    with caplog.at_level(logging.WARNING, logger="absl"):
        absl.warning("Given directory is read only=%s", "/runs/a")
        absl.warning("a real warning")
    assert [record.getMessage() for record in caplog.records] == ["a real warning"]
    assert os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] == "1"


@pytest.mark.slow
def test_importing_the_package_changes_nothing_process_wide():
    """Every module imported, in a fresh interpreter: the loggers, the unraisable hook and the
    environment are as before (only the entry points call `quiet_library_noise`)."""
    script = """
import importlib, logging, os, pkgutil, sys
import entropy_rl
before = (dict(os.environ), sys.unraisablehook)
for module in pkgutil.walk_packages(entropy_rl.__path__, "entropy_rl."):
    importlib.import_module(module.name)
names = ("absl", "asyncio", "math_verify")
assert before == (dict(os.environ), sys.unraisablehook)
assert [(logging.getLogger(n).filters, logging.getLogger(n).level) for n in names] == [([], 0)] * 3
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert done.returncode == 0, done.stderr[-3000:]

