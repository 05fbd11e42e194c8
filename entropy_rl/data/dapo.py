"""DAPO-Math-17k's prompt wrapper, and what entropy-rl does with it.

The published DAPO-Math-17k rows carry each problem inside an instruction of their own
(`prompt=[{"role": "user", "content": DAPO_PREFIX + problem + DAPO_SUFFIX}]`) that asks for
an `Answer: ...` last line, and the published file repeats each problem many times.

entropy-rl's choice, one for every dataset: the loader strips that wrapper (`strip_dapo_wrapper`),
so a DAPO problem is trained with the same prompt as every other dataset and every benchmark
it is evaluated on (the `\\boxed{}` instruction, judged by the "math" verifier). To train on
DAPO's own format instead, set `data.instruction=dapo` (the wrapper put back by
`entropy_rl.data.format_prompt`) and `data.verifier=answer_line` (the verifier that reads the
`Answer:` line, as the DAPO paper's reward does).
"""

from __future__ import annotations

DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'


def strip_dapo_wrapper(text: str) -> tuple[str, bool]:
    """(the bare problem, True) when `text` is DAPO_PREFIX + problem + DAPO_SUFFIX (surrounding
    whitespace ignored), else (text, False)."""
    stripped = text.strip()
    if stripped.startswith(DAPO_PREFIX.strip()) and stripped.endswith(DAPO_SUFFIX.strip()):
        problem = stripped[len(DAPO_PREFIX.strip()):len(stripped) - len(DAPO_SUFFIX.strip())]
        return problem.strip(), True
    return text, False


def dapo_prompt(problem: str) -> str:
    """The problem inside DAPO-Math-17k's own instruction (the inverse of `strip_dapo_wrapper`)."""
    return DAPO_PREFIX + problem + DAPO_SUFFIX
