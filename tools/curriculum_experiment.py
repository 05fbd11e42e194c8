"""Experiment: SENT's semantic-entropy curriculum versus random order on the built-in task.

For each seed:
  1. warm start the built-in tiny policy exactly as `entropy-rl train` does by default (same
     seed, its default 20000-problem set, of which the RL training set is the first
     `--num-problems`), and save it as an HF checkpoint (both arms start from these weights);
  2. rank the training set by semantic entropy under it (K samples per prompt);
  3. train two arms from the warm start with the same algorithm, data and step budget:
     "random" (shuffled epochs, PromptIterator) and "curriculum" (2 stages, low to high
     semantic entropy, CurriculumIterator); the budget is the curriculum's length, so each
     arm sees each problem `epochs_per_stage` times;
  4. collect held-out accuracy (every `--eval-every` steps) and the entropy curves.

Writes OUT/results.json, OUT/results.md (table) and OUT/curves.png. Every stage resumes: a
rerun reuses the saved warm start, the ranking file and finished runs.

    python tools/curriculum_experiment.py --out runs/curriculum_experiment --seeds 0,1,2
    python tools/curriculum_experiment.py --seeds 0 algorithm.name=sent   # extra trainer overrides
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ARMS = ("random", "curriculum")
CURVES = {"eval/accuracy": "held-out accuracy", "entropy/mean": "token entropy",
          "semantic_entropy/mean": "semantic entropy (online)", "accuracy": "training accuracy"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/curriculum_experiment")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--num-problems", type=int, default=128, help="RL training set size")
    parser.add_argument("--warmstart-problems", type=int, default=20000,
                        help="synthetic problems of the supervised warm start (the RL set is their prefix)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per RL step")
    parser.add_argument("--epochs-per-stage", type=int, default=1)
    parser.add_argument("--num-stages", type=int, default=2)
    parser.add_argument("--samples", type=int, default=8, help="K responses per prompt for the ranking")
    parser.add_argument("--eval-every", type=int, default=4)
    parser.add_argument("--eval-problems", type=int, default=128)
    parser.add_argument("--report-only", action="store_true", help="table and plot of OUT/results.json, no training")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="trainer overrides for both arms")
    return parser.parse_args(argv)


def base_overrides(args: argparse.Namespace, seed: int) -> list[str]:
    return [f"seed={seed}", f"data.num_synthetic_problems={args.num_problems}", f"data.batch_size={args.batch_size}",
            f"algorithm.mini_batch_size={args.batch_size}",
            f"eval.every_steps={args.eval_every}", f"eval.num_problems={args.eval_problems}",
            "logging.progress_bar=false", "logging.tensorboard=false", *args.overrides]


def warm_started_policy(config, out: Path, num_problems: int):
    """(policy, tokenizer, RL problems, hf_dir, mesh): the loop's own warm start on the config's
    problems, saved once as HF; the RL problems are the first `num_problems` of them."""
    from entropy_rl.model import load_hf, save_hf
    from entropy_rl.parallel import make_mesh
    from entropy_rl.policy import build_policy, load_policy_tokenizer
    from entropy_rl.train.data_setup import PromptEncoder, training_problems
    from entropy_rl.train.warmstart import warm_start

    mesh = make_mesh(config.mesh)
    problems = training_problems(config)
    hf_dir = out / "warm_hf"
    if (hf_dir / "config.json").exists():
        return load_hf(str(hf_dir), mesh=mesh), load_policy_tokenizer(config.model), problems[:num_problems], hf_dir, mesh
    policy, tokenizer = build_policy(config.model, seed=config.seed, mesh=mesh)
    w = config.warmstart
    warm_start(policy, problems, PromptEncoder(config, tokenizer), tokenizer, steps=w.steps, batch_size=w.batch_size,
               learning_rate=w.learning_rate, seed=config.seed, mesh=mesh)
    save_hf(policy, str(hf_dir))
    return policy, tokenizer, problems[:num_problems], hf_dir, mesh


def rank(config, policy, tokenizer, problems, mesh, out: Path, samples: int) -> Path:
    from entropy_rl.ranking import RankingSettings, rank_problems
    from entropy_rl.train.data_setup import prompt_instruction

    r, d = config.rollout, config.data
    settings = RankingSettings(samples=samples, max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                               top_p=r.top_p, top_k=r.top_k, seed=config.seed, batch_prompts=64, verifier=d.verifier,
                               prompt_style=d.prompt_style, instruction=prompt_instruction(config),
                               prompt_bucket=r.prompt_bucket, response_bucket=r.response_bucket)
    path = out / "ranking.jsonl"
    rank_problems(policy, tokenizer, problems, path, settings, mesh=mesh, progress=False)
    return path


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    curves: dict[str, list[tuple[int, float]]] = {key: [] for key in CURVES}
    with open(run_dir / "metrics.jsonl") as file:
        for line in file:
            row = json.loads(line)
            for key in CURVES:
                if key in row:
                    curves[key].append((int(row["step"]), float(row[key])))
    return curves


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    from entropy_rl.data.curriculum import CurriculumIterator, read_ranking
    from entropy_rl.train.config import load_config
    from entropy_rl.train.data_setup import training_problems
    from entropy_rl.train.loop import train

    out = Path(args.out) / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    warm_config = load_config([], base_overrides(args, seed) + [f"run_dir={out / 'warm'}",
                                                                f"data.num_synthetic_problems={args.warmstart_problems}"])
    policy, tokenizer, problems, hf_dir, mesh = warm_started_policy(warm_config, out, args.num_problems)
    config = load_config([], base_overrides(args, seed) + [f"run_dir={out / 'warm'}"])
    assert [p.id for p in problems] == [p.id for p in training_problems(config)], "RL set must prefix the warm-start set"
    warm_s = time.time() - started
    ranking = rank(config, policy, tokenizer, problems, mesh, out, args.samples)
    rank_s = time.time() - started - warm_s
    curriculum = CurriculumIterator(problems, ranking, args.batch_size, seed=seed, num_stages=args.num_stages,
                                    epochs_per_stage=args.epochs_per_stage)
    steps = curriculum.total_steps
    result = {"seed": seed, "steps": steps, "stages": curriculum.stages_summary(), "warmstart_s": warm_s, "rank_s": rank_s,
              "ranking_mean_entropy": float(np.mean([r["semantic_entropy"] for r in read_ranking(ranking)])),
              "ranking_zero_entropy_fraction": float(np.mean([r["semantic_entropy"] == 0 for r in read_ranking(ranking)]))}
    for arm in ARMS:
        overrides = base_overrides(args, seed) + [f"run_dir={out / arm}", f"model.hf_path={hf_dir}", "model.tokenizer=builtin",
                                                  f"total_steps={steps}"]
        if arm == "curriculum":
            overrides += [f"data.curriculum.ranking_file={ranking}", f"data.curriculum.num_stages={args.num_stages}",
                          f"data.curriculum.epochs_per_stage={args.epochs_per_stage}"]
        arm_start = time.time()
        summary = train(load_config([], overrides))
        result[arm] = {key: summary[key] for key in ("accuracy_before", "accuracy_after", "accuracy_after_ci",
                                                     "accuracy_gain", "accuracy_gain_ci", "entropy_start", "entropy_end")}
        result[arm]["seconds"] = time.time() - arm_start
        result[arm]["curves"] = read_curves(out / arm)
    return result


def table(results: list[dict]) -> str:
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    lines = ["| seed | steps | arm | held-out acc. before | after (95% CI) | gain | token entropy start -> end | final online SE |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for arm in ARMS:
            a = r[arm]
            se_curve = a["curves"]["semantic_entropy/mean"]
            lines.append(f"| {r['seed']} | {r['steps']} | {arm} | {pct(a['accuracy_before'])} | {pct(a['accuracy_after'])} "
                         f"[{pct(a['accuracy_after_ci'][0])}, {pct(a['accuracy_after_ci'][1])}] | "
                         f"{100 * a['accuracy_gain']:+.1f} | {a['entropy_start']:.3f} -> {a['entropy_end']:.3f} | "
                         f"{se_curve[-1][1] if se_curve else float('nan'):.3f} |")
    diffs = np.array([r["curriculum"]["accuracy_after"] - r["random"]["accuracy_after"] for r in results])
    lines.append("")
    lines.append(f"curriculum - random, final held-out accuracy: {', '.join(f'{100 * d:+.1f}' for d in diffs)} pts per seed; "
                 f"mean {100 * diffs.mean():+.1f} pts over {len(diffs)} seed(s)"
                 + (f" (std {100 * diffs.std(ddof=1):.1f})" if len(diffs) > 1 else ""))
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(CURVES)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4))
    for ax, key in zip(axes, keys):
        for arm, color in zip(ARMS, ("tab:gray", "tab:blue")):
            for i, r in enumerate(results):
                points = r[arm]["curves"][key]
                if key == "eval/accuracy":
                    points = [(0, r[arm]["accuracy_before"])] + points
                if points:
                    steps, values = zip(*points)
                    ax.plot(steps, values, color=color, alpha=0.8, label=arm if i == 0 else None)
        if results and results[0]["stages"]:
            ax.axvline(results[0]["stages"][0]["steps"], color="k", lw=0.6, ls=":")
        ax.set_title(CURVES[key])
        ax.set_xlabel("RL step")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads((out / "results.json").read_text()) if args.report_only else []
    for seed in [] if args.report_only else (int(s) for s in args.seeds.split(",")):
        results.append(run_seed(args, seed))
        (out / "results.json").write_text(json.dumps(results, indent=1))
        print(f"seed {seed} done: random {results[-1]['random']['accuracy_after']:.3f}, "
              f"curriculum {results[-1]['curriculum']['accuracy_after']:.3f}", flush=True)
    text = table(results)
    (out / "results.md").write_text(text + "\n")
    plot(results, out / "curves.png")
    print(text)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
