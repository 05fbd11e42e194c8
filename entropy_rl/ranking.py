"""`entropy-rl rank`: rank a dataset by semantic entropy under a policy (SENT curriculum input).

For every problem, K responses are sampled with the rollout engine (many prompts per call),
their boxed answers clustered (``entropy_rl.semantic_entropy``), and one jsonl row written:

    {"id": ..., "semantic_entropy": SE, "n_clusters": C, "accuracy": fraction of correct samples}

Resumable: rows are appended (flushed and fsynced) one batch of prompts at a time, and a
restarted run skips every batch whose prompts are all in the file. A batch's samples depend
only on (seed, batch index, the batch's prompts), never on what ran before, so an
interrupted and resumed run writes the same numbers as an uninterrupted one. The run's
settings are stored beside the file (``<output>.meta.json``); resuming with different ones is
refused. On several hosts (``jax.process_count() > 1``) whole batches are handed out
round-robin, each host ranking its batches on its own devices into a part file, and host 0
merges the parts into the output once all are done: the same rows as on one host. The
final, complete ranking is also written sorted by entropy (``--sorted``).

    entropy-rl rank --policy runs/warm/ --data synthetic --output ranking.jsonl
    entropy-rl rank --policy Qwen3-1.7B/ --data math_train.jsonl --samples 8 --max-new-tokens 2048
    entropy-rl rank policy=runs/warm/ output=ranking.jsonl data.dataset=math.jsonl data.verifier=math rollout.n=8

The command takes `--config` files and `key.sub=value` overrides over `RankCommandConfig`, whose
model, data, rollout and mesh sections are training's (the training run's data section gives
the same prompts); the flags above are aliases of its keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Optional

import jax
import numpy as np
from pydantic import Field
from tqdm import tqdm

from entropy_rl.config import DataConfig, Mesh, ModelConfig, RolloutConfig, dataset_file_defaults
from entropy_rl.configuration import Section, add_config_arguments, command_config, one_of
from entropy_rl.data import (INSTRUCTION, Problem, deduplicate, default_instruction, format_prompt,
                             load_problems, synthetic_problems)
from entropy_rl.data.curriculum import parse_ranking_line
from entropy_rl.data.synthetic import LEVELS, problem_set_id
from entropy_rl.eval.cli import command_mesh, evaluated_checkpoint, load_checkpoint, mesh_flag
from entropy_rl.jsonl import append_rows, read_rows, rewrite_rows, write_text_atomic
from entropy_rl.parallel import MeshConfig
from entropy_rl.parallel.hosts import is_multiprocess
from entropy_rl.rollout import SamplingConfig, scoring
from entropy_rl.semantic_entropy import cluster_answer_groups, cluster_entropy


@dataclasses.dataclass(frozen=True)
class RankingSettings:
    """Everything that decides a ranking's numbers (stored in ``<output>.meta.json``)."""

    samples: int = 8
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    batch_prompts: int = 64
    weighting: str = "discrete"  # "discrete" | "likelihood"
    verifier: str = "math"
    prompt_style: str = "plain"  # as the trainer's data.prompt_style; "chat" for instruct models
    instruction: str = INSTRUCTION  # appended to each problem ("" = none): the same as training used
    exact_match_only: bool = False
    prompt_bucket: int = 64
    response_bucket: int = 64

    def __post_init__(self):
        if self.weighting not in ("discrete", "likelihood"):
            raise ValueError(f"weighting must be 'discrete' or 'likelihood', got {self.weighting!r}")
        if self.samples < 1 or self.batch_prompts < 1:
            raise ValueError(f"samples and batch_prompts must be >= 1, got {self.samples}, {self.batch_prompts}")


# -- the ranking file ----------------------------------------------------------------------
def read_finished_rows(path: Path) -> list[dict[str, Any]]:
    """Rows already in a (possibly interrupted) ranking file; a torn last row is skipped
    (`entropy_rl.jsonl`), any other bad line is an error naming the line."""
    return read_rows(path, lambda line, number: parse_ranking_line(line, path=path, line_number=number))


def write_sorted(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """All rows sorted by (semantic_entropy, id), written atomically."""
    rewrite_rows(path, sorted(rows, key=lambda row: (row["semantic_entropy"], row["id"])))


def check_settings(meta_path: Path, meta: dict[str, Any], *, write: bool = True) -> None:
    """Write the run's settings beside the output (when `write`: one writer on several
    hosts), or refuse to resume under different ones."""
    if meta_path.exists():
        stored = json.loads(meta_path.read_text())
        if stored != meta:
            changed = sorted(key for key in meta.keys() | stored.keys() if stored.get(key) != meta.get(key))
            raise ValueError(
                f"{meta_path}: the existing ranking was made with different settings ({changed}); "
                "use the same settings to resume, or a new --output"
            )
    elif write:  # one writer on several hosts
        write_text_atomic(meta_path, json.dumps(meta, indent=2, sort_keys=True))


# -- ranking -------------------------------------------------------------------------------
def score_batch(
    model,
    tokenizer,
    problems: Sequence[Problem],
    settings: RankingSettings,
    rng: jax.Array,
    *,
    mesh: jax.sharding.Mesh | None = None,
) -> list[dict[str, Any]]:
    """Sample K responses per problem and score each problem: one call of the shared pipeline
    (``entropy_rl.rollout.scoring.score_batch``) on ``mesh``, which must hold only this
    process's devices (every row of the batch is read back and scored here)."""
    sampling = SamplingConfig(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k,
        n=settings.samples,
        stop_token_ids=tuple(tokenizer.stop_token_ids),
        pad_token_id=tokenizer.pad_token_id,
        prompt_bucket=settings.prompt_bucket,
        response_bucket=settings.response_bucket,
    )

    def encode(problem: Problem) -> list[int]:
        return tokenizer.encode(format_prompt(problem, tokenizer, style=settings.prompt_style,
                                              instruction=settings.instruction))

    scored = scoring.score_batch(model, problems, encode, tokenizer, sampling, rng, verifier=settings.verifier, mesh=mesh)
    correct = scored.rewards.reshape(len(problems), settings.samples)
    groups = [scored.answers[i * settings.samples : (i + 1) * settings.samples] for i in range(len(problems))]
    clusters = cluster_answer_groups(groups, exact_match_only=settings.exact_match_only)
    sequence_logprobs = scored.rollout.logprobs.sum(axis=1).reshape(len(problems), settings.samples)
    rows = []
    for i, problem in enumerate(problems):
        weights = sequence_logprobs[i] if settings.weighting == "likelihood" else None
        rows.append(
            {
                "id": str(problem.id),
                "semantic_entropy": cluster_entropy(clusters[i], sequence_logprobs=weights),
                "n_clusters": int(max(clusters[i]) + 1),
                "accuracy": float(correct[i].mean()),
            }
        )
    return rows


def rank_problems(
    model,
    tokenizer,
    problems: Sequence[Problem],
    output: str | Path,
    settings: RankingSettings,
    *,
    mesh: jax.sharding.Mesh | None = None,
    run_info: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Rank ``problems`` into the jsonl file ``output`` (resuming it); returns all its rows.

    Batch b holds problems [b * batch_prompts, (b + 1) * batch_prompts) and samples with
    fold_in(PRNGKey(seed), b); a batch with every id already in the file is skipped, one
    with some ids missing is re-sampled whole (same numbers) and only the missing ids written.
    ``run_info`` (e.g. policy and data paths) is stored with the settings in the meta file.

    On P > 1 processes (a shared file system) whole batches are handed out round-robin:
    process p ranks batches p, p + P, ... on its own devices (``mesh``, if any, must hold
    only those) into its part file ``<output>.part-p-of-P``; once all are done, process 0
    merges the parts into ``output`` in problem order and removes them (as does a single
    process that finds parts a killed multi-process run left). A batch's numbers depend
    only on the batch, so the result equals a one-process ranking row for row, and a
    ranking resumes under any process count.
    """
    ids = [str(p.id) for p in problems]
    if len(set(ids)) != len(ids):
        raise ValueError(f"problem ids are not unique ({len(ids) - len(set(ids))} duplicates); ranking needs unique ids")
    process, processes = jax.process_index(), jax.process_count()
    _check_local_mesh(mesh)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    check_settings(output.with_name(output.name + ".meta.json"), {**dataclasses.asdict(settings), **(run_info or {})},
                   write=process == 0)
    finished = {row["id"] for path in [output, *_part_files(output)] for row in read_finished_rows(path)}
    _barrier("entropy_rl.ranking: finished rows read", processes)  # no part is written before every host has read
    size = settings.batch_prompts
    batches = [(b, problems[start : start + size]) for b, start in enumerate(range(0, len(problems), size))]
    mine = batches[process::processes]
    path = host_output(output, process, processes)
    key = jax.random.PRNGKey(settings.seed)
    total = sum(len(batch) for _, batch in mine)
    done = sum(str(p.id) in finished for _, batch in mine for p in batch)
    label = "rank" if processes == 1 else f"rank (process 0's {total} of {len(problems)})"  # the others: alike
    with tqdm(total=total, initial=done, unit="prompt", disable=not progress or process != 0, desc=label) as bar:
        for index, batch in mine:
            if all(str(p.id) in finished for p in batch):
                continue
            scored = score_batch(model, tokenizer, batch, settings, jax.random.fold_in(key, index), mesh=mesh)
            new_rows = [row for row in scored if row["id"] not in finished]
            append_rows(path, new_rows)
            finished.update(row["id"] for row in new_rows)
            bar.update(len(new_rows))
    _barrier("entropy_rl.ranking: all parts written", processes)
    if process == 0 and _part_files(output):  # this run's parts, or those a killed run under another count left
        _merge_parts(output, order={id_: i for i, id_ in enumerate(ids)})
    _barrier("entropy_rl.ranking: parts merged", processes)
    return read_finished_rows(output)


def _check_local_mesh(mesh: jax.sharding.Mesh | None) -> None:
    """On several processes each ranks its batches alone: its mesh may hold only its own devices."""
    if is_multiprocess(mesh):
        raise ValueError("rank on several processes: each process ranks whole batches on its own devices, but the "
                         "mesh spans other processes' devices; build it from jax.local_devices()")


def _barrier(name: str, processes: int) -> None:
    """Wait until every process reaches the barrier `name` (nothing on one process)."""
    if processes > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _part_files(output: Path) -> list[Path]:
    """Every host part file of `output`, from a run under any process count."""
    return sorted(output.parent.glob(output.name + ".part-*-of-*"))


def _merge_parts(output: Path, order: dict[str, int]) -> None:
    """Rows of `output` as they are, then the parts' new rows in problem order (`order`: id ->
    position; others after), written atomically; then the parts are removed."""
    rows = read_finished_rows(output)
    seen = {row["id"] for row in rows}
    parts = _part_files(output)
    new_rows = {row["id"]: row for path in parts for row in read_finished_rows(path) if row["id"] not in seen}
    rows += sorted(new_rows.values(), key=lambda row: order.get(row["id"], len(order)))
    rewrite_rows(output, rows)
    for path in parts:
        path.unlink()


# -- command line --------------------------------------------------------------------------
class RankCommandConfig(Section):
    """What `entropy-rl rank` ranks and how. The model, data, rollout and mesh sections are
    training's: rollout.n is K (responses per prompt), data.* the problems, prompt style,
    instruction and verifier (as the training run that will use the ranking); data_seed and
    split pick the synthetic problems."""

    policy: str
    output: str
    sorted: Optional[str] = None  # default: <output>.sorted.jsonl
    step: Optional[int] = Field(None, ge=0)
    max_problems: Optional[int] = Field(None, gt=0)  # the first N problems (as `entropy-rl eval --max-problems`)
    split: str = "train"
    data_seed: int = 0
    seed: int = 0
    batch_prompts: int = Field(64, gt=0)
    weighting: Annotated[str, one_of(("discrete", "likelihood"))] = "discrete"
    exact_match_only: bool = False
    progress: bool = True
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    rollout: RolloutConfig = RolloutConfig(n=8, max_new_tokens=256, prompt_bucket=64, response_bucket=64)
    mesh: Mesh = MeshConfig()

    @classmethod
    def implied_defaults(cls, given: Mapping[str, Any]) -> Mapping[str, Any]:
        return dataset_file_defaults(cls, given)

    def settings(self) -> RankingSettings:
        """The settings that decide the ranking's numbers."""
        r, d = self.rollout, self.data
        instruction = default_instruction(d.dataset) if d.instruction is None else d.instruction  # the trainer's default
        return RankingSettings(
            samples=r.n, max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
            seed=self.seed, batch_prompts=self.batch_prompts, weighting=self.weighting, verifier=d.verifier,
            prompt_style=d.prompt_style, instruction=instruction, exact_match_only=self.exact_match_only,
            prompt_bucket=r.prompt_bucket, response_bucket=r.response_bucket)


def _data_flag(value: str) -> list[str]:
    """= data.dataset=VALUE; a dataset file/directory implies data.verifier=math (unless --verifier)"""
    return [f"data.dataset={value}"]


def _levels_flag(value: str) -> list[str]:
    """= data.synthetic_levels: level names (add2,sub2,...) or numbers"""
    names = list(LEVELS)
    numbers = [str(names.index(v) + 1) if v in names else v for v in (v.strip() for v in value.split(","))]
    return [f"data.synthetic_levels={','.join(numbers)}"]


ALIASES = {"--policy": "policy", "--data": _data_flag, "--output": "output", "--sorted": "sorted", "--step": "step",
           "--dtype": "model.dtype", "--tokenizer": "model.tokenizer", "--problem-key": "data.problem_key",
           "--answer-key": "data.answer_key", "--num-synthetic": "data.num_synthetic_problems",
           "--data-seed": "data_seed", "--synthetic-levels": _levels_flag, "--split": "split",
           "--on-bad-row": "data.on_bad_row", "--max-problems": "max_problems",
           "--limit": "max_problems", "--verifier": "data.verifier", "--mesh": mesh_flag,
           "--samples": "rollout.n", "--max-new-tokens": "rollout.max_new_tokens", "--temperature": "rollout.temperature",
           "--top-p": "rollout.top_p", "--top-k": "rollout.top_k", "--seed": "seed", "--batch-prompts": "batch_prompts",
           "--weighting": "weighting", "--prompt-style": "data.prompt_style", "--instruction": "data.instruction",
           "--prompt-bucket": "rollout.prompt_bucket", "--response-bucket": "rollout.response_bucket"}
SWITCHES = {"--exact-match-only": "exact_match_only=true", "--no-progress": "progress=false"}


def load_dataset(config: RankCommandConfig) -> list[Problem]:
    """The built-in synthetic task ("synthetic") or any file/directory ``load_problems`` reads."""
    d = config.data
    if d.dataset == "synthetic":
        return synthetic_problems(d.num_synthetic_problems, seed=config.data_seed, levels=d.level_names, split=config.split)
    problems = list(load_problems(d.dataset, problem_key=d.problem_key, answer_key=d.answer_key, on_bad_row=d.on_bad_row))
    if d.deduplicate:  # as training does, so the ranking's ids match the trained problems
        problems, removed = deduplicate(problems)
        if removed and jax.process_index() == 0:
            print(f"data: {removed} repeated problems removed from {d.dataset} ({len(problems)} distinct kept; "
                  "data.deduplicate=false keeps them)", file=sys.stderr)
    return problems


def ranked_problem_set(config: RankCommandConfig) -> str:
    """What decides the ranked problems (recorded in the meta file, checked by training): the
    built-in set's `problem_set_id`, or the dataset path."""
    d = config.data
    if d.dataset != "synthetic":
        return d.dataset
    return problem_set_id(levels=d.level_names, seed=config.data_seed, split=config.split)


def host_output(output: Path, process_index: int, process_count: int) -> Path:
    """This host's part file (the output itself on a single host)."""
    if process_count == 1:
        return output
    return output.with_name(f"{output.name}.part-{process_index:05d}-of-{process_count:05d}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="entropy-rl rank", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser, ALIASES, SWITCHES)
    return parser


def main(argv: list[str] | None = None) -> int:
    config = command_config(RankCommandConfig, build_parser(), argv, ALIASES, SWITCHES)
    if isinstance(config, int):  # printed the config, or its errors
        return config
    from entropy_rl.parallel import initialize_distributed

    initialize_distributed()  # before any other jax call; a no-op on one process
    settings = config.settings()
    problems = load_dataset(config)[: config.max_problems]
    mesh = command_mesh(config.mesh, jax.local_devices())  # each process ranks whole batches on its own devices
    policy = evaluated_checkpoint(config.policy, config.step, config.model.dtype)
    model, tokenizer = load_checkpoint(config.policy, tokenizer=config.model.tokenizer, step=policy["step"],
                                       dtype=policy["dtype"], mesh=mesh)
    output = Path(config.output)
    run_info = {"policy": policy["checkpoint"], "step": policy["step"], "dtype": policy["dtype"],
                "data": config.data.dataset, "problem_set": ranked_problem_set(config), "tokenizer": config.model.tokenizer}
    started = time.perf_counter()
    rows = rank_problems(model, tokenizer, problems, output, settings, mesh=mesh, run_info=run_info,
                         progress=config.progress)
    seconds = time.perf_counter() - started
    if jax.process_index() != 0:  # process 0 reports and writes the sorted copy
        return 0
    print(f"rank: {len(rows)} problems in the ranking ({seconds:.1f}s this run)")
    sorted_path = Path(config.sorted) if config.sorted else output.with_name(output.name.removesuffix(".jsonl") + ".sorted.jsonl")
    write_sorted(sorted_path, rows)
    entropies = np.asarray([row["semantic_entropy"] for row in rows])
    print(
        f"rank: wrote {sorted_path} ({len(rows)} rows; semantic entropy mean {entropies.mean():.3f}, "
        f"zero for {np.mean(entropies == 0):.1%}; accuracy mean {np.mean([r['accuracy'] for r in rows]):.3f})"
    )
    return 0
