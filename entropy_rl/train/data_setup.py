"""A run's problems and prompts: the training and held-out problems of a config, prompts
longer than data.max_prompt_length left out, the prompt iterator (or SENT's curriculum), and
the cached problem -> prompt token ids encoder."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from entropy_rl.data import (LEVELS, Problem, PromptIterator, deduplicate, default_instruction, format_prompt,
                             load_problems, synthetic_problems)
from entropy_rl.data.synthetic import problem_set_id
from entropy_rl.train.config import TrainConfig
from entropy_rl.train.progress import say


def synthetic_levels(levels: Sequence[int]) -> tuple[str, ...]:
    """Level numbers of the config (1 = easiest) as the synthetic task's level names
    (1 add1, 2 add2, 3 sub2, 4 mul1, 5 add3, 6 linear)."""
    names = list(LEVELS)
    bad = [level for level in levels if not 1 <= level <= len(names)]
    if bad:
        raise ValueError(f"data.synthetic_levels: {bad} out of range 1..{len(names)} ({', '.join(names)})")
    return tuple(names[level - 1] for level in levels)


def training_problems(config: TrainConfig) -> list[Problem]:
    """The training split: the built-in task, or a dataset file / directory (repeated
    problems dropped and counted when data.deduplicate)."""
    d = config.data
    if d.dataset == "synthetic":
        return synthetic_problems(d.num_synthetic_problems, seed=config.seed, levels=synthetic_levels(d.synthetic_levels))
    problems = list(load_problems(d.dataset, problem_key=d.problem_key, answer_key=d.answer_key, on_bad_row=d.on_bad_row))
    if d.deduplicate:
        problems, removed = deduplicate(problems)
        if removed:
            say(f"data: {removed} repeated problems removed from {d.dataset} ({len(problems)} distinct kept; "
                "data.deduplicate=false keeps them)")
    return problems


def training_problem_set(config: TrainConfig) -> str:
    """What decides the training problems: the built-in set's `problem_set_id`, or the dataset path."""
    d = config.data
    if d.dataset != "synthetic":
        return d.dataset
    return problem_set_id(levels=synthetic_levels(d.synthetic_levels), seed=config.seed, split="train")


def settings_line(config: TrainConfig, num_problems: int) -> str:
    """The data-dependent settings the run uses, as printed at its start (a dataset file
    changes their defaults: `train.config.DATASET_FILE_DEFAULTS`)."""
    d, e, w = config.data, config.eval, config.warmstart
    source = (f"the built-in task (levels {'+'.join(synthetic_levels(d.synthetic_levels))})" if d.dataset == "synthetic"
              else d.dataset)
    warm = f"{w.steps} steps" if w.enabled and config.model.hf_path is None and w.steps > 0 else "off"
    return (f"data: {num_problems} problems from {source}; verifier {d.verifier}; prompts {d.prompt_style}; "
            f"held-out {e.benchmark} ({e.num_problems} problems x {e.n}); warm start {warm}")


def drop_long_prompts(problems: Sequence[Problem], encode, max_length: int) -> list[Problem]:
    """The problems whose prompt has at most max_length tokens; the others are named in a
    warning (id and length). Raises when none is left."""
    lengths = [len(encode(p)) for p in problems]
    kept = [p for p, length in zip(problems, lengths) if length <= max_length]
    dropped = [(p.id, length) for p, length in zip(problems, lengths) if length > max_length]
    if dropped:
        shown = ", ".join(f"{pid!r} ({length} tokens)" for pid, length in dropped[:5])
        warnings.warn(f"data.max_prompt_length={max_length}: {len(dropped)} of {len(problems)} prompts are longer and "
                      f"left out: {shown}{', ...' if len(dropped) > 5 else ''}", stacklevel=2)
    if not kept:
        raise ValueError(f"data.max_prompt_length={max_length}: every prompt is longer (shortest "
                         f"{min(lengths)} tokens)")
    return kept


def heldout_problems(config: TrainConfig) -> list[Problem]:
    """The held-out evaluation problems: the synthetic task's test split at the training
    levels, or a shipped benchmark / problem file (`entropy_rl.eval.benchmark_problems`)."""
    e = config.eval
    if e.benchmark == "synthetic":
        levels = synthetic_levels(config.data.synthetic_levels)
        return synthetic_problems(e.num_problems, seed=config.seed, levels=levels, split="test")
    from entropy_rl.eval import benchmark_problems

    return benchmark_problems(e.benchmark, max_problems=e.num_problems)


def make_iterator(config: TrainConfig, problems: Sequence[Problem]):
    """PromptIterator, or SENT's CurriculumIterator when a ranking file is configured."""
    c = config.data.curriculum
    if c.ranking_file is None:
        return PromptIterator(problems, config.data.batch_size, seed=config.seed)
    from entropy_rl.data.curriculum import CurriculumIterator, check_ranked_problem_set

    check_ranked_problem_set(c.ranking_file, training_problem_set(config))
    return CurriculumIterator(problems, c.ranking_file, config.data.batch_size, seed=config.seed,
                              num_stages=c.num_stages, epochs_per_stage=c.epochs_per_stage, on_missing=c.on_missing)


def prompt_instruction(config: TrainConfig) -> str:
    """data.instruction; None = `entropy_rl.data.default_instruction` of the dataset."""
    if config.data.instruction is not None:
        return config.data.instruction
    return default_instruction(config.data.dataset)


class PromptEncoder:
    """Problem -> prompt token ids (data.prompt_style, `prompt_instruction`), cached."""

    def __init__(self, config: TrainConfig, tokenizer):
        self.tokenizer, self.style = tokenizer, config.data.prompt_style
        self.instruction = prompt_instruction(config)
        self._cache: dict[str, list[int]] = {}

    def __call__(self, problem: Problem) -> list[int]:
        if problem.problem not in self._cache:
            text = format_prompt(problem, self.tokenizer, style=self.style, instruction=self.instruction)
            self._cache[problem.problem] = self.tokenizer.encode(text)
        return self._cache[problem.problem]
