"""The command line drops library lines that tell a user nothing (orbax's read-only notice,
transformers' advice that PyTorch is missing)."""

import logging

from entropy_rl import cli


def test_quiet_libraries_drops_the_read_only_notice_only(monkeypatch, caplog):
    monkeypatch.delenv("TRANSFORMERS_NO_ADVISORY_WARNINGS", raising=False)
    absl = logging.getLogger("absl")
    monkeypatch.setattr(absl, "filters", [])
    cli.quiet_libraries()
    cli.quiet_libraries()  # once is enough: no second filter
    assert len(absl.filters) == 1
    with caplog.at_level(logging.WARNING, logger="absl"):
        absl.warning("Given directory is read only=%s", "/runs/a")
        absl.warning("a real warning")
    assert [record.getMessage() for record in caplog.records] == ["a real warning"]
    assert cli.os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] == "1"
