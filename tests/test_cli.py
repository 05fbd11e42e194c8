import pytest

from entropy_rl import cli


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_an_unexpected_failure_of_any_command_is_one_line_with_its_traceback_kept(monkeypatch, capsys):
    import importlib
    import re
    from types import SimpleNamespace

    def broken(argv):
        assert "--debug" not in argv  # the dispatcher takes the flag
        raise RuntimeError("the results directory vanished")

    real_import = importlib.import_module
    monkeypatch.setattr(importlib, "import_module",
                        lambda name: SimpleNamespace(main=broken) if name == "entropy_rl.eval.cli" else real_import(name))
    assert cli.main(["eval", "--output", "x"]) == 1
    err = capsys.readouterr().err
    match = re.fullmatch(r"entropy-rl eval: RuntimeError: the results directory vanished "
                         r"\(traceback in (\S+); --debug shows it\)\n", err)
    assert match, err
    with open(match.group(1)) as log:
        kept = log.read()
    assert "Traceback" in kept and "the results directory vanished" in kept
    with pytest.raises(RuntimeError, match="vanished"):
        cli.main(["eval", "--debug"])
