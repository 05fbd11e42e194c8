"""The check that runs inside a verifier worker process: math-verify equivalence of two
extracted answers. Imported by the workers (and preloaded in the fork server), never needed
by the trainer process itself."""

from __future__ import annotations

import functools

from math_verify import parse, verify

# The worker bounds each item with its own timer (see pool.py), so math-verify's signal-based
# timeouts are switched off; its warning about that is silenced by the worker's
# `entropy_rl.failures.quiet_library_noise`.


# One answer of each kind sympy and latex2sympy set up lazily (sets, intervals, matrices,
# bases, relations, units, ...): checking them once at worker start-up moves about 2 s of
# first-use cost out of the first real batch, where it would count against item deadlines.
WARM_UP_ANSWERS = (
    "\\left( 3, \\frac{\\pi}{2} \\right)", "\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]", "4210_{5}",
    "x=5", "x^5 - x^4 + 1", "(a+5)(b+2)", "x \\in [-2,7]", "\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}",
    "\\frac{11+9a}{20}", "(-\\sqrt{3}, \\sqrt{3})", "\\{1\\pm\\sqrt{5},-2\\}", "\\cot x", "90^\\circ", "50\\%",
    "\\text{(C)}", "\\dfrac{3}{4}", "0.25", "6+9i", "(-\\infty, 2) \\cup (3, \\infty)", "x > 5", "\\$18.90",
    "2 \\times 10^{3}", "15\\mbox{ cm}^2",
)


@functools.lru_cache(maxsize=4096)
def _parsed(answer: str) -> tuple:
    """math-verify parse of an extracted answer, wrapped in `\\boxed{}` so the box extractor
    reads the whole string; cached (ground truths repeat once per sample)."""
    return tuple(parse("\\boxed{" + answer + "}", parsing_timeout=None))


def math_equivalent(gold: str, answer: str) -> bool:
    """True when math-verify judges `answer` equal to `gold` (numbers, fractions, decimals,
    percentages, intervals, sets, tuples, matrices, equations, units and `\\text` around).
    Not symmetric in general: `gold` is the reference."""
    gold_parsed, answer_parsed = _parsed(gold), _parsed(answer)
    if not gold_parsed or not answer_parsed:
        return False
    return bool(verify(list(gold_parsed), list(answer_parsed), timeout_seconds=None))


def warm_up() -> None:
    """Check each of WARM_UP_ANSWERS against itself, then forget the parses (run once per worker)."""
    for answer in WARM_UP_ANSWERS:
        math_equivalent(answer, answer)
    _parsed.cache_clear()
