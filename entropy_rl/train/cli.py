"""`entropy-rl train [--config YAML] [key.sub=value ...] [--print-config]`.

With no arguments: the main job, STAPO on the built-in synthetic task with a tiny Qwen3
policy (the defaults of `entropy_rl.train.config`). The config is validated before anything
is computed; a run directory that already holds checkpoints is resumed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any

from entropy_rl.configuration import add_config_arguments, command_config
from entropy_rl.failures import report_failure
from entropy_rl.train.config import ConfigError, TrainConfig, validate_for_devices
from entropy_rl.train.limits import check_lengths, check_memory


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="entropy-rl train",
        description="RL with verifiable rewards (STAPO, SENT, GRPO, DAPO, KL-Cov, Clip-Cov, 20-Entropy). "
        "With no arguments: STAPO on the built-in synthetic task with a tiny Qwen3 policy on the CPU.",
        epilog="examples:\n"
        "  entropy-rl train\n"
        "  entropy-rl train --config configs/grpo.yaml total_steps=20 run_dir=runs/grpo\n"
        "  entropy-rl train --config configs/paper/stapo_qwen3_8b.yaml --config configs/mesh/gpu8.yaml \\\n"
        "      model.hf_path=/models/Qwen3-8B-Base data.dataset=/data/dapo-math-17k.parquet\n"
        "  entropy-rl train algorithm.name=sent optimizer.learning_rate=1e-6 --print-config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--debug", action="store_true",
                        help="show a failure's traceback (else one line, the traceback in RUN_DIR/error.log)")
    return parser


def format_summary(summary: Mapping[str, Any]) -> str:
    """The loop's summary as text: its "table" entry when it has one, else one `key  value` line each."""
    if isinstance(summary.get("table"), str):
        return summary["table"]
    width = max((len(str(key)) for key in summary), default=0)
    lines = []
    for key, value in summary.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    config = command_config(TrainConfig, _parser(), argv)
    if isinstance(config, int):  # printed the config, or its errors
        return config
    import jax

    from entropy_rl.parallel import initialize_distributed

    initialize_distributed()  # before any other jax call; a no-op on one host
    if jax.process_count() > 1:  # a collective that cannot complete ends the run (parallel/watchdog.py)
        from entropy_rl.parallel import watchdog

        watchdog.arm(config.stall_timeout_s)
    try:
        validate_for_devices(config, jax.device_count())
        check_lengths(config)
        check_memory(config, jax.local_devices())
    except ConfigError as e:
        print(f"entropy-rl train: invalid config for {jax.device_count()} devices:\n{e}", file=sys.stderr)
        return 2
    from entropy_rl.data import DataError
    from entropy_rl.checkpoints import CheckpointError
    from entropy_rl.train.loop import train
    from entropy_rl.train.metrics import LogWriteError
    from entropy_rl.train.rundir import RunDirLocked, hold_run_dir
    from entropy_rl.train.signals import Preempted

    try:
        with hold_run_dir(config.run_dir):  # one writer per run directory
            summary = train(config)
    except RunDirLocked as e:
        print(f"entropy-rl train: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; the same command resumes from the last checkpoint in {config.run_dir}", file=sys.stderr)
        return 130
    except Preempted as e:
        print(f"entropy-rl train: {e}", file=sys.stderr)
        return e.exit_code
    except (CheckpointError, DataError, FloatingPointError, LogWriteError) as e:  # a message naming the file
        print(f"entropy-rl train: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - bad data, a path that cannot be written, ...: one line
        if "--debug" in (sys.argv[1:] if argv is None else argv):
            raise
        return report_failure("entropy-rl train", e, os.path.join(config.run_dir, "error.log"))
    if jax.process_index() == 0:  # one summary for a multi-host run
        print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
