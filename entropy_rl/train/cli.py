"""`entropy-rl train [--config YAML] [key.sub=value ...] [--print-config]`.

With no arguments: the main job, STAPO on the built-in synthetic task with a tiny Qwen3
policy (the defaults of `entropy_rl.train.config`). The config is validated before anything
is computed; a run directory that already holds checkpoints is resumed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from entropy_rl.configuration import add_config_arguments, command_config
from entropy_rl.train.config import ConfigError, TrainConfig, validate_for_devices


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
    except ConfigError as e:
        print(f"entropy-rl train: invalid config for {jax.device_count()} devices:\n{e}", file=sys.stderr)
        return 2
    from entropy_rl.data import DataError
    from entropy_rl.train.checkpoint import CheckpointError
    from entropy_rl.train.loop import train
    from entropy_rl.train.signals import Preempted

    try:
        summary = train(config)
    except KeyboardInterrupt:
        print(f"\ninterrupted; the same command resumes from the last checkpoint in {config.run_dir}", file=sys.stderr)
        return 130
    except Preempted as e:
        print(f"entropy-rl train: {e}", file=sys.stderr)
        return e.exit_code
    except (CheckpointError, DataError) as e:  # a message that names the file: no traceback
        print(f"entropy-rl train: {e}", file=sys.stderr)
        return 1
    if jax.process_index() == 0:  # one summary for a multi-host run
        print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
