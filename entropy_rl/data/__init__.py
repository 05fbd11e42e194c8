"""Problems, tokenizers, prompt formatting and batch iteration.

- `synthetic_problems(num, seed=...)`: the built-in task (default data of `entropy-rl train`).
- `load_problems(path)`, `load_benchmark(name)`: files and the shipped benchmarks;
  `deduplicate(problems)` drops repeated problems (DAPO-Math-17k's wrapper: `data.dapo`).
- `load_tokenizer("builtin" | dir)`, `format_prompt(problem, tokenizer, style=...)`.
- `PromptIterator(problems, batch_size, seed=...)`: resumable batches.
The SENT curriculum sampler lives in `entropy_rl.data.curriculum`.
"""

from entropy_rl.data.iterator import PromptIterator, problems_fingerprint
from entropy_rl.data.loading import (
    BENCHMARK_FILES,
    BENCHMARKS,
    DataError,
    ProblemList,
    benchmark_path,
    load_benchmark,
    load_problems,
)
from entropy_rl.data.dapo import DAPO_PREFIX, DAPO_SUFFIX, dapo_prompt, strip_dapo_wrapper
from entropy_rl.data.problem import Problem, deduplicate
from entropy_rl.data.prompts import INSTRUCTION, NAMED_INSTRUCTIONS, STYLES, default_instruction, format_prompt
from entropy_rl.data.synthetic import DEFAULT_LEVELS, LEVELS, synthetic_problems
from entropy_rl.data.tokenizer import BuiltinTokenizer, HFTokenizer, load_tokenizer

__all__ = [
    "BENCHMARKS",
    "BENCHMARK_FILES",
    "BuiltinTokenizer",
    "DAPO_PREFIX",
    "DAPO_SUFFIX",
    "DEFAULT_LEVELS",
    "DataError",
    "HFTokenizer",
    "INSTRUCTION",
    "default_instruction",
    "LEVELS",
    "NAMED_INSTRUCTIONS",
    "Problem",
    "ProblemList",
    "PromptIterator",
    "STYLES",
    "benchmark_path",
    "dapo_prompt",
    "deduplicate",
    "format_prompt",
    "load_benchmark",
    "load_problems",
    "load_tokenizer",
    "problems_fingerprint",
    "strip_dapo_wrapper",
    "synthetic_problems",
]
