"""`entropy-rl eval`: avg@k and unbiased pass@k of a checkpoint on the math benchmarks.

    entropy-rl eval --checkpoint PATH [--benchmarks aime24:32,amc23:32,math500:4] [--n 32]
                    [--temperature 1.0 --top-p 1.0] [--max-new-tokens 4096] [--output DIR]

PATH is an HF checkpoint directory (config.json + safetensors; its tokenizer, or --tokenizer)
or a training run directory (its latest checkpoint, or --step). Benchmarks are the shipped
six (aime24, aime25, amc23, math500, minerva, olympiadbench), "synthetic" (held-out problems
of the built-in task) or paths to problem files; `name:n` sets n for one benchmark.
Writes OUTPUT/results.jsonl (one row per problem; rerunning the same command resumes it),
OUTPUT/summary.json and OUTPUT/summary.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from entropy_rl.eval.metrics import DEFAULT_KS

DEFAULT_BENCHMARKS = "aime24,aime25,amc23,math500,minerva,olympiadbench"
RESULTS_FILE = "results.jsonl"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="entropy-rl eval", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--checkpoint", required=True, help="HF checkpoint directory or training run directory")
    parser.add_argument("--step", type=int, help="checkpoint step of a run directory (default: the latest)")
    parser.add_argument("--tokenizer", help="'builtin' or a tokenizer directory (default: the checkpoint's)")
    parser.add_argument("--benchmarks", default=DEFAULT_BENCHMARKS,
                        help=f"comma-separated names or files, each optionally name:n (default: {DEFAULT_BENCHMARKS})")
    parser.add_argument("--n", type=int, default=32, help="samples per problem (default 32)")
    parser.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)), help="k values of avg@k / pass@k, up to n")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256, help="sequences per generate call (default 256)")
    parser.add_argument("--prompt-style", default="chat", help="entropy_rl.data.format_prompt style (chat, plain)")
    parser.add_argument("--instruction", default=None,
                        help="text appended to each problem (default: none for synthetic, else the \\boxed{} one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-problems", type=int,
                        help="evaluate only the first N problems of each benchmark ('synthetic' has 200 by default)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="compute dtype")
    parser.add_argument("--mesh", default="auto", choices=("auto", "none"),
                        help="auto: shard over all devices (fsdp) when there are several; none: one device")
    parser.add_argument("--output", help="results folder (default: eval_results/<checkpoint>-t<T>-p<P>)")
    parser.add_argument("--save-responses", action="store_true", help="keep response texts in results.jsonl")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    from entropy_rl.train.checkpoint import load_policy  # the trainer only for run directories

    model, run_tokenizer = load_policy(path, step=step, mesh=mesh)
    return model, (load_tokenizer(tokenizer) if tokenizer else run_tokenizer)


def _mesh(choice: str):
    import jax

    if choice == "none" or jax.device_count() == 1:
        return None
    from entropy_rl.parallel import MeshConfig, make_mesh

    return make_mesh(MeshConfig())


def default_output(args: argparse.Namespace) -> Path:
    name = Path(os.path.abspath(args.checkpoint)).name
    return Path("eval_results") / f"{name}-t{args.temperature:g}-p{args.top_p:g}"


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from entropy_rl.parallel import initialize_distributed

    initialize_distributed()  # before any other jax call; a no-op on one process
    from entropy_rl.eval.runner import benchmark_problems

    try:
        benchmarks = parse_benchmarks(args.benchmarks, args.n)
        ks = tuple(int(k) for k in args.ks.split(","))
        problems = {
            name: benchmark_problems(source, max_problems=args.max_problems) for name, (source, _) in benchmarks.items()
        }
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    return _run(args, problems, {name: n for name, (_, n) in benchmarks.items()}, ks)


def _run(args: argparse.Namespace, problems: dict, n_by_benchmark: dict[str, int], ks: tuple[int, ...]) -> int:
    import jax

    from entropy_rl.eval import metrics
    from entropy_rl.eval.runner import evaluate, write_summary
    from entropy_rl.rollout import SamplingConfig

    output = Path(args.output) if args.output else default_output(args)
    try:
        mesh = _mesh(args.mesh)
        model, tokenizer = load_checkpoint(
            args.checkpoint, tokenizer=args.tokenizer, step=args.step, dtype=args.dtype, mesh=mesh
        )
        sampling = SamplingConfig(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
            stop_token_ids=tuple(tokenizer.stop_token_ids), pad_token_id=tokenizer.pad_token_id,
        )
        summary = evaluate(
            model, tokenizer, problems, n=n_by_benchmark, sampling=sampling, seed=args.seed, batch_size=args.batch_size,
            ks=ks, prompt_style=args.prompt_style, instruction=args.instruction, results_path=output / RESULTS_FILE,
            save_responses=args.save_responses, mesh=mesh, progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError) as err:  # no checkpoint, bad sampling values, other settings recorded
        print(f"entropy-rl eval: {err}", file=sys.stderr)
        return 1
    summary["checkpoint"] = os.path.abspath(args.checkpoint)
    json_path, md_path = write_summary(summary, output)
    if jax.process_index() != 0:  # one table, from process 0
        return 0
    print(metrics.markdown_table(summary["benchmarks"], summary["average"]))
    print(f"results: {output / RESULTS_FILE}\nsummary: {json_path}, {md_path}")
    return 0
