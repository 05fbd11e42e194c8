"""`evaluate`: sample n responses per problem, verify them, and summarise avg@k / pass@k.

Problems of a benchmark are cut into fixed chunks of max(1, batch_size // n) prompts; one
`generate` call samples the n responses of every problem of a chunk (about batch_size
rows). The PRNG key of a chunk depends only on (seed, benchmark name, chunk index), so an
evaluation resumed from its results file samples exactly what an uninterrupted one would
have: chunks whose problems are all recorded are skipped, the others are sampled again and
only their missing rows written.

Sampling and verification go through the shared per-host pipeline
(`entropy_rl.rollout.scoring`): on a mesh over several processes (one per host) each host
encodes, decodes and verifies only its share of a chunk's problems, the per-row results are
gathered, and process 0 writes; the numbers are the one-process numbers, since row r of a
chunk draws from fold_in(chunk key, r) whatever the process count.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from entropy_rl import data
from entropy_rl.data import Problem, default_instruction, format_prompt
from entropy_rl.eval import metrics
from entropy_rl.eval.results import append_results, read_jsonl, results_by_benchmark
from entropy_rl.parallel.hosts import allgather_strings
from entropy_rl.rollout import SamplingConfig
from entropy_rl.rollout.scoring import GatheredScores, gather_scores, score_batch

SYNTHETIC_BENCHMARK = "synthetic"
SYNTHETIC_SIZE = 200  # problems of the "synthetic" benchmark unless max_problems says otherwise
SYNTHETIC_SEED = 0


def benchmark_problems(
    source: str, *, max_problems: int | None = None, synthetic_seed: int = SYNTHETIC_SEED,
    synthetic_levels: Sequence[str] = data.DEFAULT_LEVELS,
) -> list[Problem]:
    """Problems of one benchmark, the first max_problems of them when given.

    source: "synthetic" (the built-in task's held-out "test" split drawn with synthetic_seed
    at synthetic_levels; SYNTHETIC_SIZE problems by default, any number with max_problems),
    a shipped benchmark name (`entropy_rl.data.BENCHMARK_FILES`) or a problem file
    (`entropy_rl.data.load_problems`).
    """
    if source == SYNTHETIC_BENCHMARK:
        return data.synthetic_problems(
            max_problems or SYNTHETIC_SIZE, seed=synthetic_seed, levels=synthetic_levels, split="test"
        )
    if os.path.exists(source):
        problems = list(data.load_problems(source))
    elif source in data.BENCHMARK_FILES:
        problems = data.load_benchmark(source)
    else:
        known = ", ".join(sorted(data.BENCHMARK_FILES))
        raise ValueError(f"benchmark {source!r} is neither a file nor a shipped benchmark ({known}) nor 'synthetic'")
    return problems[:max_problems] if max_problems else problems


def default_verifier(benchmark: str) -> str:
    """Verifier name for a benchmark: "synthetic" for the built-in task, "math" otherwise."""
    return "synthetic" if benchmark == SYNTHETIC_BENCHMARK else "math"


def chunk_key(seed: int, benchmark: str, chunk_index: int) -> jax.Array:
    """PRNG key of one chunk: fold_in(fold_in(key(seed), crc32(benchmark)), chunk_index)."""
    benchmark_id = zlib.crc32(benchmark.encode()) & 0x7FFFFFFF
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), benchmark_id), chunk_index)


def correct_from_rewards(rewards: np.ndarray) -> np.ndarray:
    """0/1 correctness per response: a verifier gives 1.0 to a correct answer."""
    return (np.asarray(rewards) >= 1.0).astype(np.int64)


def _problem_rows(
    benchmark: str, problems: Sequence[Problem], scores: GatheredScores, responses: list[str] | None, n: int
) -> list[dict]:
    """One results row per problem; the n rows of problem i are rows [i n, (i+1) n) of `scores`
    (and of `responses`, stored when given)."""
    correct = correct_from_rewards(scores.rewards)
    rows = []
    for index, problem in enumerate(problems):
        samples = slice(index * n, (index + 1) * n)
        row = {
            "benchmark": benchmark,
            "id": str(problem.id),
            "n": n,
            "num_correct": int(correct[samples].sum()),
            "correct": [int(c) for c in correct[samples]],
            "answer": problem.answer,
            "response_lengths": [int(x) for x in scores.lengths[samples]],
            "num_truncated": int(np.sum(~np.asarray(scores.stopped[samples], bool))),
        }
        if responses is not None:
            row["responses"] = responses[samples]
        rows.append(row)
    return rows


def _sample_chunk(model, tokenizer, benchmark, problems, *, key, sampling, verifier, prompt_style, instruction, mesh,
                  save_responses):
    """Generate sampling.n responses for each problem of a chunk and verify them -> rows.

    Through the shared pipeline (`entropy_rl.rollout.scoring`): on a mesh over several
    processes each samples the whole chunk together but decodes and verifies only its own
    problems' rows; the per-row results are then gathered, so every process returns every
    row (row r of the chunk draws from fold_in(key, r) whatever the process count)."""
    def encode(problem: Problem) -> list[int]:
        return tokenizer.encode(format_prompt(problem, tokenizer, style=prompt_style, instruction=instruction))

    scored = score_batch(model, problems, encode, tokenizer, sampling, key, verifier=verifier, mesh=mesh)
    responses = allgather_strings(scored.responses, mesh) if save_responses else None
    return _problem_rows(benchmark, problems, gather_scores(scored, mesh), responses, sampling.n)


def _check_settings(results_path: Path, settings: dict) -> None:
    """Keep a results file to one sampling setting: write it beside the file, or compare with it."""
    settings_path = results_path.with_name(results_path.stem + ".settings.json")
    if not settings_path.exists():
        if jax.process_index() == 0:  # atomically: another host may read it at any moment
            settings_path.parent.mkdir(parents=True, exist_ok=True)
            temporary = settings_path.with_name(settings_path.name + ".tmp")
            temporary.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
            temporary.replace(settings_path)
        return
    recorded = json.loads(settings_path.read_text())
    differing = {k: (recorded.get(k), v) for k, v in settings.items() if recorded.get(k) != v}
    if differing:
        details = ", ".join(f"{k}: recorded {old!r}, now {new!r}" for k, (old, new) in differing.items())
        raise ValueError(
            f"{results_path} holds results sampled with other settings ({details}); "
            "give another results path to start a new evaluation"
        )


def _check_problems(problems_by_benchmark: Mapping[str, Sequence[Problem]]) -> None:
    """Every benchmark needs problems, with distinct ids (results rows are keyed by id)."""
    for benchmark, problems in problems_by_benchmark.items():
        if not problems:
            raise ValueError(f"benchmark {benchmark!r} has no problems")
        ids = [str(p.id) for p in problems]
        if len(set(ids)) != len(ids):
            duplicate = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"benchmark {benchmark!r} has problem id {duplicate!r} more than once")


def _recorded_rows(benchmark, problems, recorded, n, results_path) -> dict[str, dict]:
    """The recorded rows of this benchmark's problems, checked to have n samples."""
    rows = {}
    for problem in problems:
        row = recorded.get(str(problem.id))
        if row is None:
            continue
        if row["n"] != n:
            raise ValueError(
                f"{results_path}: problem {problem.id!r} of {benchmark} has n = {row['n']} recorded, "
                f"but this evaluation asks for n = {n}"
            )
        rows[str(problem.id)] = row
    return rows


def evaluate(
    model,
    tokenizer,
    problems_by_benchmark: Mapping[str, Sequence[Problem]],
    *,
    n: int | Mapping[str, int],
    sampling: SamplingConfig,
    seed: int = 0,
    batch_size: int = 256,
    ks: Sequence[int] = metrics.DEFAULT_KS,
    prompt_style: str = "chat",
    instruction: str | None = None,
    verifiers: Mapping[str, str] | None = None,
    results_path: str | Path | None = None,
    save_responses: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = False,
    evaluated: Mapping[str, object] | None = None,
) -> dict:
    """Evaluate a policy on several benchmarks: avg@k and unbiased pass@k per benchmark.

    Args:
      model: a `Qwen` policy (what `entropy_rl.rollout.generate` accepts).
      tokenizer: encodes prompts and decodes responses (`entropy_rl.data.load_tokenizer`).
      problems_by_benchmark: {benchmark name: problems}; a trainer passes a subset.
      n: samples per problem, one int or {benchmark: n} (e.g. 32 for AIME, 4 for MATH500).
      sampling: temperature, top-p/k, max_new_tokens, stop tokens; its `n` is replaced by `n`.
        Empty stop_token_ids mean the tokenizer's `stop_token_ids` (and its pad token).
      seed: the chunks' keys derive from it (see `chunk_key`).
      batch_size: sequences per `generate` call: max(1, batch_size // n) problems of n samples.
        Resuming with another batch_size is valid but not sample-for-sample identical.
      ks: k values of avg@k / pass@k; those above a benchmark's n are left out.
      prompt_style: passed to `entropy_rl.data.format_prompt`.
      instruction: appended to each problem; None = `entropy_rl.data.default_instruction` of
        the benchmark (none for "synthetic", as in training, else the \\boxed{} instruction).
      verifiers: {benchmark: verifier name}; default "synthetic" for the built-in task, else "math".
      results_path: jsonl of per-problem rows; when given, problems already recorded there
        are not sampled again and new rows are appended chunk by chunk (by process 0 only;
        every process reads it, so all hosts skip the same chunks).
      save_responses: also store the response texts in the results rows.
      mesh: the policy's mesh. On a mesh over several processes every process calls
        `evaluate` with the same arguments: each chunk is sampled together, each process
        decodes and verifies its own problems' rows, and the rows are gathered, so every
        process returns the one-process numbers (and process 0 writes the results file).
      progress: show a progress bar per benchmark.
      evaluated: what is evaluated (checkpoint, step, dtype, ...), recorded with the settings
        so that results of another checkpoint are never mixed in.

    Returns:
      {"benchmarks": {name: {"num_problems", "n", "accuracy", "avg@k", "pass@k",
      "mean_response_length", "truncated_fraction"}}, "average": the macro-average of the
      scores all benchmarks share, "settings": the sampling settings}.
    """
    _check_problems(problems_by_benchmark)
    if not sampling.stop_token_ids:
        sampling = dataclasses.replace(
            sampling, stop_token_ids=tuple(tokenizer.stop_token_ids), pad_token_id=tokenizer.pad_token_id
        )
    settings = {
        **(evaluated or {}), "seed": seed, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
        "max_new_tokens": sampling.max_new_tokens, "prompt_style": prompt_style,
        "instruction": instruction,
    }
    results_path = Path(results_path) if results_path is not None else None
    recorded = {}
    if results_path is not None:
        _check_settings(results_path, settings)
        recorded = results_by_benchmark(read_jsonl(results_path))
    per_benchmark = {}
    for benchmark, problems in problems_by_benchmark.items():
        bench_n = int(n[benchmark]) if isinstance(n, Mapping) else int(n)
        rows = _recorded_rows(benchmark, problems, recorded.get(benchmark, {}), bench_n, results_path)
        sample_chunk = functools.partial(
            _sample_chunk, model, tokenizer, benchmark, sampling=dataclasses.replace(sampling, n=bench_n),
            verifier=(verifiers or {}).get(benchmark, default_verifier(benchmark)), prompt_style=prompt_style,
            instruction=default_instruction(benchmark) if instruction is None else instruction,
            mesh=mesh, save_responses=save_responses,
        )
        chunk_size = max(1, batch_size // bench_n)
        with tqdm(total=len(problems), desc=benchmark, disable=not progress or jax.process_index() != 0,
                  initial=len(rows)) as bar:
            for chunk_index, start in enumerate(range(0, len(problems), chunk_size)):
                chunk = problems[start : start + chunk_size]
                if all(str(p.id) in rows for p in chunk):
                    continue
                new_rows = sample_chunk(chunk, key=chunk_key(seed, benchmark, chunk_index))
                new_rows = [row for row in new_rows if row["id"] not in rows]
                if results_path is not None and jax.process_index() == 0:  # one writer on several hosts
                    append_results(results_path, new_rows)
                rows.update((row["id"], row) for row in new_rows)
                bar.update(len(new_rows))
        per_benchmark[benchmark] = _benchmark_summary([rows[str(p.id)] for p in problems], ks)
    return {"benchmarks": per_benchmark, "average": metrics.average_metrics(per_benchmark), "settings": settings}


def _benchmark_summary(rows: Sequence[dict], ks: Sequence[int]) -> dict[str, float]:
    """Scores of one benchmark plus its mean response length and truncated fraction."""
    summary = metrics.benchmark_metrics([row["correct"] for row in rows], ks)
    lengths = [length for row in rows for length in row["response_lengths"]]
    summary["mean_response_length"] = float(np.mean(lengths))
    summary["truncated_fraction"] = sum(row["num_truncated"] for row in rows) / len(lengths)
    return summary


def write_summary(summary: dict, output_dir: str | Path) -> tuple[Path, Path]:
    """Write `summary.json` and `summary.md` (the markdown table) into output_dir; return both paths.

    On several hosts only process 0 writes.
    """
    output_dir = Path(output_dir)
    json_path, md_path = output_dir / "summary.json", output_dir / "summary.md"
    if jax.process_index() != 0:
        return json_path, md_path
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    md_path.write_text(metrics.markdown_table(summary["benchmarks"], summary["average"]))
    return json_path, md_path
