"""The built-in verifiable task: short arithmetic, linear-equation and digit problems generated
from a seed, with integer answers expected in `\\boxed{}` (verifier "synthetic").

Levels, in the order of `LEVELS` (configs number them from 1; new levels are only appended):
  1 add1    `3+5`          one-digit addition
  2 add2    `47+38`        two-digit addition
  3 sub2    `83-47`        two-digit subtraction (non-negative result)
  4 mul1    `7*8`          one-digit multiplication
  5 add3    `482+359`      three-digit addition
  6 linear  `3x+4=19`      a*x+b=c with a in 2..9, x in 0..12, b in 1..20
  7 add21   `47+5`         two-digit plus one-digit (between add1 and add2)
  8 sub21   `47-5`         two-digit minus one-digit
  9 rev3    `Reverse 381.` the digits of a 3-digit number (1-9) in reverse order: 183
 10 max3    `Max of 47,82,13.`  the largest of three 2-digit numbers
 11 lineq2  `7x+15=3x+43`  solved in written steps before the box (`entropy_rl.data.chains`,
            verifier "chains"); its `meta["solution"]` is the whole chain
Statements are "Compute {expression}." or "Solve {equation}." for the arithmetic levels.
`DEFAULT_LEVELS` = add1, add2 (the default of training, evaluation and ranking alike).

Measured with a torch replica of the trainer's warm start (4 layers, hidden 128, 300 AdamW
steps of 32 at lr 3e-3, builtin tokenizer, plain prompts without instruction, three levels
mixed per run), held-out greedy accuracy: add1 0.39 / add2 0.01 / sub2 0.00;
add1 0.05 / add21 0.00 / sub21 0.05; add1 0.41 / rev3 0.12 / max3 0.11 (train split: 0.37 /
0.30 / 0.05). Arithmetic beyond add1 needs longer warm starts or bigger models.

Held-out split: every problem belongs to exactly one split by a stable hash of its text
(1 in 5 go to "test"), so `split="test"` problems never appear with `split="train"`,
whatever the seeds. Generation is deterministic per (seed, split, levels).
Each problem carries `meta["solution"]` = `\\boxed{<answer>}`, the target of a warm start.
"""

from __future__ import annotations

import zlib
from typing import Callable, Sequence

import numpy as np

from entropy_rl.data.chains import lineq2
from entropy_rl.data.problem import Problem

DEFAULT_LEVELS = ("add1", "add2")
SPLITS = ("train", "test")
_TEST_FRACTION_DENOMINATOR = 5  # 1 in 5 problem texts are held out


def _add1(rng: np.random.Generator) -> tuple[str, int]:
    a, b = rng.integers(0, 10, size=2)
    return f"{a}+{b}", int(a + b)


def _add2(rng: np.random.Generator) -> tuple[str, int]:
    a, b = rng.integers(10, 100, size=2)
    return f"{a}+{b}", int(a + b)


def _sub2(rng: np.random.Generator) -> tuple[str, int]:
    a, b = sorted(rng.integers(10, 100, size=2), reverse=True)
    return f"{a}-{b}", int(a - b)


def _mul1(rng: np.random.Generator) -> tuple[str, int]:
    a, b = rng.integers(2, 10, size=2)
    return f"{a}*{b}", int(a * b)


def _add3(rng: np.random.Generator) -> tuple[str, int]:
    a, b = rng.integers(100, 1000, size=2)
    return f"{a}+{b}", int(a + b)


def _add21(rng: np.random.Generator) -> tuple[str, int]:
    a, b = int(rng.integers(10, 100)), int(rng.integers(0, 10))
    return f"{a}+{b}", a + b


def _sub21(rng: np.random.Generator) -> tuple[str, int]:
    a, b = int(rng.integers(10, 100)), int(rng.integers(0, 10))
    return f"{a}-{b}", a - b


def _rev3(rng: np.random.Generator) -> tuple[str, int]:
    digits = "".join(str(d) for d in rng.integers(1, 10, size=3))
    return f"Reverse {digits}.", int(digits[::-1])


def _max3(rng: np.random.Generator) -> tuple[str, int]:
    a, b, c = (int(x) for x in rng.integers(10, 100, size=3))
    return f"Max of {a},{b},{c}.", max(a, b, c)


def _linear(rng: np.random.Generator) -> tuple[str, int]:
    a, x, b = int(rng.integers(2, 10)), int(rng.integers(0, 13)), int(rng.integers(1, 21))
    return f"{a}x+{b}={a * x + b}", x


LEVELS: dict[str, Callable[[np.random.Generator], tuple[str, int] | tuple[str, int, str]]] = {
    "add1": _add1,
    "add2": _add2,
    "sub2": _sub2,
    "mul1": _mul1,
    "add3": _add3,
    "linear": _linear,
    "add21": _add21,
    "sub21": _sub21,
    "rev3": _rev3,
    "max3": _max3,
    "lineq2": lineq2,
}


def problem_text(expression: str) -> str:
    """The statement shown to the model: `"Solve 3x+4=19."`, `"Compute 47+38."`, or a level's
    own full sentence (ending with a period) as it is."""
    if expression.endswith("."):
        return expression
    return f"Solve {expression}." if "=" in expression else f"Compute {expression}."


def split_of(text: str) -> str:
    """"test" for 1 in 5 problem texts (stable crc32 hash), else "train"."""
    return "test" if zlib.crc32(text.encode()) % _TEST_FRACTION_DENOMINATOR == 0 else "train"


def problem_set_id(*, levels: Sequence[str], seed: int, split: str) -> str:
    """`"synthetic-<levels joined by +>-<split>-<seed>"`, e.g. "synthetic-add1+add2-train-0":
    what decides a set of built-in problems, and the prefix of their ids."""
    return f"synthetic-{'+'.join(levels)}-{split}-{seed}"


def synthetic_problems(
    num: int, *, seed: int, levels: Sequence[str] = DEFAULT_LEVELS, split: str = "train"
) -> list[Problem]:
    """`num` problems of the built-in task, levels drawn uniformly from `levels`.

    Deterministic in (num's prefix, seed, split, levels): the first k problems of a call with
    num > k equal a call with num = k. Problems may repeat (small levels have few problems).
    Ids are `problem_set_id(...)-<index>`: the same id is the same problem.
    """
    unknown = [level for level in levels if level not in LEVELS]
    if unknown or not levels:
        raise ValueError(f"unknown synthetic levels {unknown or list(levels)}; known: {list(LEVELS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    prefix = problem_set_id(levels=levels, seed=seed, split=split)
    problems = []
    while len(problems) < num:
        level = levels[int(rng.integers(len(levels)))]
        expression, answer, *chain = LEVELS[level](rng)  # a chain level also returns its demonstration
        text = problem_text(expression)
        if split_of(text) != split:
            continue
        problems.append(
            Problem(
                id=f"{prefix}-{len(problems)}",
                problem=text,
                answer=str(answer),
                source="synthetic",
                meta={"level": level, "solution": chain[0] if chain else f"\\boxed{{{answer}}}"},
            )
        )
    return problems
