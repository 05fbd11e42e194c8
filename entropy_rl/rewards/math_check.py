"""The check that runs inside a verifier worker process: math-verify equivalence of two
extracted answers. Imported by the workers (and preloaded in the fork server), never needed
by the trainer process itself."""

from __future__ import annotations

import functools
import logging

from math_verify import parse, verify

# The worker bounds each item with its own timer (see pool.py), so math-verify's signal-based
# timeouts are switched off; its warning about that is expected and silenced.
logging.getLogger("math_verify").setLevel(logging.ERROR)


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
