"""`entropy-rl eval`: avg@k and unbiased pass@k of a checkpoint on the math benchmarks.

    entropy-rl eval [--config YAML] checkpoint=PATH [key.sub=value ...] [--print-config]
    entropy-rl eval --checkpoint PATH [--benchmarks aime24:32,amc23:32,math500:4] [--n 32]
                    [--temperature 1.0 --top-p 1.0] [--max-new-tokens 4096] [--output DIR]

PATH is an HF checkpoint directory (config.json + safetensors; its tokenizer, or
model.tokenizer) or a training run directory (its latest checkpoint, or step=N). The config
(`EvalCommandConfig`) shares the model, rollout and mesh sections with `entropy-rl train`
(rollout.n: samples per problem; model.dtype: compute dtype of an HF checkpoint; mesh sizes
without -1 use that many devices, all 1 = one device); the flags above are aliases of its
keys. Benchmarks are the shipped six (aime24, aime25, amc23, math500, minerva, olympiadbench),
"synthetic" (held-out problems of the built-in task; a run's own levels and seed) or paths
to problem files; `name:n` sets n for one benchmark. Writes OUTPUT/results.jsonl (one row per
problem; rerunning the same command resumes it), OUTPUT/summary.json and OUTPUT/summary.md.
The default OUTPUT names what is evaluated (checkpoint, step, dtype, sampling), and the
settings recorded beside the results refuse a rerun that evaluates something else.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

from pydantic import Field

from entropy_rl.config import DataConfig, Mesh, ModelConfig, RolloutConfig
from entropy_rl.configuration import Section, add_config_arguments, command_config, one_of
from entropy_rl.data.prompts import STYLES as PROMPT_STYLES
from entropy_rl.eval.metrics import DEFAULT_KS
from entropy_rl.parallel import MESH_AXES, MeshConfig, make_mesh

DEFAULT_BENCHMARKS = "aime24,aime25,amc23,math500,minerva,olympiadbench"
RESULTS_FILE = "results.jsonl"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_PROMPT_STYLE = DataConfig.model_fields["prompt_style"].default  # one default for every command: training's


class EvalCommandConfig(Section):
    """What `entropy-rl eval` evaluates and how (see the module docstring)."""

    checkpoint: str
    step: Optional[int] = Field(None, ge=0)
    benchmarks: str = DEFAULT_BENCHMARKS
    ks: tuple[int, ...] = DEFAULT_KS
    seed: int = 0
    batch_size: int = Field(256, gt=0)
    max_problems: Optional[int] = Field(None, gt=0)
    prompt_style: Annotated[str, one_of(PROMPT_STYLES)] = _PROMPT_STYLE
    instruction: Optional[str] = None  # None: none for "synthetic", else the \\boxed{} instruction
    output: Optional[str] = None
    save_responses: bool = False
    progress: bool = True
    model: ModelConfig = ModelConfig(dtype="bfloat16")
    rollout: RolloutConfig = RolloutConfig(max_new_tokens=4096, n=32, prompt_bucket=64, response_bucket=64)
    mesh: Mesh = MeshConfig()


def mesh_flag(value: str) -> list[str]:
    """"auto" (all devices), "none" (one device) or "data,fsdp,tensor" sizes: the mesh.* keys"""
    if value == "auto":
        return []
    sizes = ["1"] * len(MESH_AXES) if value == "none" else value.split(",")
    return [f"mesh.{axis}={size}" for axis, size in zip(MESH_AXES, sizes)]


def command_mesh(mesh: MeshConfig, devices: list):
    """A mesh over `devices`, or None for one device; sizes without -1 use the first prod(sizes)."""
    sizes = [getattr(mesh, axis) for axis in MESH_AXES]
    if -1 not in sizes:
        devices = devices[: math.prod(sizes)]
    return None if len(devices) == 1 else make_mesh(mesh, devices)


ALIASES = {"--checkpoint": "checkpoint", "--step": "step", "--tokenizer": "model.tokenizer", "--benchmarks": "benchmarks",
           "--n": "rollout.n", "--ks": "ks", "--temperature": "rollout.temperature", "--top-p": "rollout.top_p",
           "--top-k": "rollout.top_k", "--max-new-tokens": "rollout.max_new_tokens", "--batch-size": "batch_size",
           "--prompt-style": "prompt_style", "--instruction": "instruction", "--seed": "seed",
           "--max-problems": "max_problems", "--dtype": "model.dtype", "--mesh": mesh_flag, "--output": "output"}
SWITCHES = {"--save-responses": "save_responses=true", "--no-progress": "progress=false"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="entropy-rl eval", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    add_config_arguments(parser, ALIASES, SWITCHES)
    return parser


def parse_benchmarks(spec: str, default_n: int) -> dict[str, tuple[str, int]]:
    """`"aime24:32,math500,my.jsonl:8"` -> {benchmark name: (name or path, n)}."""
    benchmarks = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        source, _, n_text = item.rpartition(":") if ":" in item else (item, "", "")
        if n_text and not n_text.isdigit():
            raise ValueError(f"--benchmarks: bad sample count in {item!r} (expected name:n)")
        name = Path(source).name.split(".")[0] if os.path.exists(source) else source
        if name in benchmarks:
            raise ValueError(f"--benchmarks: {name!r} given twice")
        benchmarks[name] = (source, int(n_text) if n_text else default_n)
    if not benchmarks:
        raise ValueError("--benchmarks is empty")
    return benchmarks


def load_checkpoint(path: str, *, tokenizer: str | None, step: int | None, dtype: str, mesh):
    """(model, tokenizer) of an HF checkpoint directory or of a training run directory."""
    import jax.numpy as jnp

    from entropy_rl.data import load_tokenizer

    if os.path.isfile(os.path.join(path, "config.json")):
        from entropy_rl.model import load_hf

        if tokenizer is None and not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
            raise FileNotFoundError(f"{path} has no tokenizer ({', '.join(TOKENIZER_FILES)}); pass --tokenizer")
        model = load_hf(path, dtype=getattr(jnp, dtype), mesh=mesh)
        return model, load_tokenizer(tokenizer or path)
    from entropy_rl.policy import load_policy

    model, run_tokenizer = load_policy(path, step=step, mesh=mesh)
    return model, (load_tokenizer(tokenizer) if tokenizer else run_tokenizer)


def evaluated_checkpoint(path: str, step: int | None, dtype: str) -> dict[str, Any]:
    """What is evaluated, recorded with the results: {"checkpoint": absolute path (a run's
    directory), "step": the step (a run's latest when None; None for an HF directory),
    "dtype": the compute dtype, "synthetic_seed"/"synthetic_levels": a run's own synthetic task,
    "fingerprint": the content identity of a run checkpoint's weights (`entropy_rl.checkpoints.fingerprint`),
    so that results of other weights saved at the same path and step are never reused}."""
    from entropy_rl.data import DEFAULT_LEVELS
    from entropy_rl.eval.runner import SYNTHETIC_SEED

    path = os.path.abspath(path)
    if os.path.isfile(os.path.join(path, "config.json")):
        return {"checkpoint": path, "step": None, "dtype": dtype, "synthetic_seed": SYNTHETIC_SEED,
                "synthetic_levels": list(DEFAULT_LEVELS)}
    from entropy_rl.checkpoints import CheckpointReader, locate_checkpoint

    run_dir, path_step = locate_checkpoint(path)
    checkpointer = CheckpointReader(run_dir)
    try:
        step = next((s for s in (step, path_step) if s is not None), None)
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {run_dir}")
        run = checkpointer.saved_config(step)
        weights = checkpointer.fingerprint(step)
    finally:
        checkpointer.close()
    return {"checkpoint": run_dir, "step": step, "dtype": run.model.dtype, "synthetic_seed": run.seed,
            "synthetic_levels": list(run.data.level_names), "fingerprint": weights}


def default_output(config: EvalCommandConfig, evaluated: dict[str, Any]) -> Path:
    """eval_results/<checkpoint>[-step<S>]-<dtype>-t<T>-p<P>[-k<K>]-len<L>: what is evaluated, how."""
    r = config.rollout
    step = "" if evaluated["step"] is None else f"-step{evaluated['step']}"
    top_k = f"-k{r.top_k}" if r.top_k else ""
    name = f"{Path(evaluated['checkpoint']).name}{step}-{evaluated['dtype']}-t{r.temperature:g}-p{r.top_p:g}{top_k}-len{r.max_new_tokens}"
    return Path("eval_results") / name


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    config = command_config(EvalCommandConfig, parser, argv, ALIASES, SWITCHES)
    if isinstance(config, int):  # printed the config, or its errors
        return config
    from entropy_rl.parallel import initialize_distributed

    initialize_distributed()  # before any other jax call; a no-op on one process
    from entropy_rl.eval.runner import benchmark_problems

    try:
        benchmarks = parse_benchmarks(config.benchmarks, config.rollout.n)
    except ValueError as err:
        parser.error(str(err))
    try:
        evaluated = evaluated_checkpoint(config.checkpoint, config.step, config.model.dtype)
    except (ValueError, FileNotFoundError) as err:
        print(f"entropy-rl eval: {err}", file=sys.stderr)
        return 1
    synthetic = {"synthetic_seed": evaluated["synthetic_seed"], "synthetic_levels": tuple(evaluated["synthetic_levels"])}
    try:
        problems = {name: benchmark_problems(source, max_problems=config.max_problems, **synthetic)
                    for name, (source, _) in benchmarks.items()}
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    return _run(config, evaluated, problems, {name: n for name, (_, n) in benchmarks.items()})


def _run(config: EvalCommandConfig, evaluated: dict[str, Any], problems: dict, n_by_benchmark: dict[str, int]) -> int:
    import jax

    from entropy_rl.eval import metrics
    from entropy_rl.eval.runner import evaluate, write_summary

    output = Path(config.output) if config.output else default_output(config, evaluated)
    try:
        mesh = command_mesh(config.mesh, jax.devices())
        model, tokenizer = load_checkpoint(config.checkpoint, tokenizer=config.model.tokenizer, step=evaluated["step"],
                                           dtype=evaluated["dtype"], mesh=mesh)
        sampling = config.rollout.sampling_config(stop_token_ids=tokenizer.stop_token_ids,
                                                  pad_token_id=tokenizer.pad_token_id)
        summary = evaluate(
            model, tokenizer, problems, n=n_by_benchmark, sampling=sampling, seed=config.seed,
            batch_size=config.batch_size, ks=config.ks, prompt_style=config.prompt_style,
            instruction=config.instruction, results_path=output / RESULTS_FILE, save_responses=config.save_responses,
            mesh=mesh, progress=config.progress, evaluated=evaluated,
        )
    except (ValueError, FileNotFoundError) as err:  # no checkpoint, bad sampling values, other settings recorded
        print(f"entropy-rl eval: {err}", file=sys.stderr)
        return 1
    summary["checkpoint"], summary["step"] = evaluated["checkpoint"], evaluated["step"]
    json_path, md_path = write_summary(summary, output)
    if jax.process_index() != 0:  # one table, from process 0
        return 0
    print(metrics.markdown_table(summary["benchmarks"], summary["average"]))
    print(f"results: {output / RESULTS_FILE}\nsummary: {json_path}, {md_path}")
    return 0
