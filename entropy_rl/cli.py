"""`entropy-rl <command> [args]`: one entry point, each command implemented in its own module.

Commands are imported lazily so `entropy-rl --help` starts instantly and a command only pays
for the libraries it uses.
"""

from __future__ import annotations

import importlib
import sys

from entropy_rl.failures import quiet_library_noise, report_failure

# command -> ("module", "function taking argv and returning an exit code", "one-line help")
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("entropy_rl.train.cli", "main", "run RL training (built-in STAPO default, or a YAML config)"),
    "eval": ("entropy_rl.eval.cli", "main", "avg@k / pass@k on the math benchmarks or the built-in task"),
    "plot": ("entropy_rl.eval.plot", "main", "PNG figures of one or more run directories"),
    "sweep": ("entropy_rl.sweep.runner", "main", "methods x seeds (x overrides) grid of training runs, resumable"),
    "compare": ("entropy_rl.sweep.compare", "main", "report of runs or a sweep: intervals over seeds, paired tests"),
    "inspect": ("entropy_rl.inspect.page", "main", "one HTML page of runs: summary, curves, a token browser"),
    "rank": ("entropy_rl.ranking", "main", "rank a dataset by semantic entropy (SENT curriculum input)"),
    "export": ("entropy_rl.train.export", "main", "write a checkpoint's policy as an HF checkpoint"),
    "plan": ("entropy_rl.plan", "main", "per-chip memory of a run's compiled programs (a TPU topology via libtpu)"),
    "launch": ("entropy_rl.launch", "main", "run a command as N JAX processes on this machine (CPU devices)"),
}


def _usage() -> str:
    lines = ["usage: entropy-rl <command> [args]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`entropy-rl <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"entropy-rl: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    quiet_library_noise()
    module_name, function_name, _ = COMMANDS[command]
    run = getattr(importlib.import_module(module_name), function_name)
    debug = "--debug" in rest
    if command != "train":  # train reads --debug itself (its traceback goes to RUN_DIR/error.log)
        rest = [arg for arg in rest if arg != "--debug"]
    try:
        return int(run(rest) or 0)
    except Exception as error:  # noqa: BLE001 - every command's unexpected failure: one line
        if debug:
            raise
        return report_failure(f"entropy-rl {command}", error)


if __name__ == "__main__":
    sys.exit(main())
