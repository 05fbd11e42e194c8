"""Final-answer extraction from a model response, and the cheap string normalisation used for
the fast path of verification (an exact match after normalisation needs no sympy)."""

from __future__ import annotations

import re

# Commands whose argument is the final answer, most specific first. `\fbox` is what some
# models write instead of `\boxed`.
_BOX_COMMANDS = ("\\boxed", "\\fbox")

# LaTeX spacing and sizing commands that never change a value.
_NO_VALUE = re.compile(r"\\(?:left|right|displaystyle)(?![a-zA-Z])|\\[,;:! ]|\$|\s+")
_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")
# DAPO's answer line: "Answer:" (any case) and the rest of its line.
_ANSWER_LINE = re.compile(r"answer\s*:[ \t]*([^\n]*)", re.IGNORECASE)


def _braced_argument(text: str, open_index: int, limit: int) -> str | None:
    """The text inside the brace group opening at `text[open_index] == "{"` and closing
    before `limit`, or None (a truncated response). Linear, whatever the nesting."""
    depth = 0
    for index in range(open_index, limit):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : index]
    return None


def _space_argument(text: str, rest: int) -> str | None:
    """The space form `\\boxed 5`: the word after the spaces, up to whitespace or `$`."""
    match = re.compile(r" +([^\s$]+)").match(text, rest)
    return match.group(1) if match else None


def extract_boxed(text: str) -> str | None:
    """The content of the last complete `\\boxed{...}` in `text`, or None.

    Rules (in order): nested braces are matched, so `\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`;
    `\\fbox{...}` counts as a box; the space form `\\boxed 5` gives `5`; a box that never
    closes (a response cut at the length limit) is skipped and the previous complete box is
    used; no box at all gives None (a response without a boxed answer earns no reward).
    The result is stripped of surrounding whitespace. Linear time in `len(text)`.
    """
    if not isinstance(text, str):
        return None
    starts = sorted(
        ((match.start(), command) for command in _BOX_COMMANDS for match in re.finditer(re.escape(command), text)),
        reverse=True,
    )
    # A group that does not close before `limit` cannot close after it either (the depth
    # from an earlier box stays >= 1 there), so each failed box shrinks the scan: O(n) total.
    limit = len(text)
    for start, command in starts:
        rest = start + len(command)
        argument = None
        if rest < limit and text[rest] == "{":
            argument = _braced_argument(text, rest, limit)
            if argument is None:
                limit = start
        elif rest < len(text) and text[rest] == " ":
            argument = _space_argument(text, rest)
        if argument is not None:
            return argument.strip()
    return None


def extract_answer_line(text: str) -> str | None:
    """The answer of the last `Answer: ...` line of `text` (the form DAPO-Math-17k's prompts ask
    for and the DAPO paper's reward reads), or None.

    The rest of that line, stripped of surrounding whitespace, markdown bold (`**`), `$` and a
    final period; a complete `\\boxed{...}` in it gives its content. An empty answer is None.
    """
    if not isinstance(text, str):
        return None
    matches = _ANSWER_LINE.findall(text)
    if not matches:
        return None
    answer = matches[-1].strip(" \t*").rstrip(".").strip().strip("$").strip()
    answer = extract_boxed(answer) or answer
    return answer or None


def normalize_answer(answer: str) -> str:
    """A conservative canonical string: spacing commands, `\\left`/`\\right`, `$` and
    whitespace removed, `\\dfrac`/`\\tfrac` written `\\frac`, a trailing period dropped.
    Two answers with the same normal form are equal; different forms decide nothing."""
    normal = _NO_VALUE.sub("", answer)
    normal = normal.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return normal.rstrip(".")


def parse_integer(answer: str | None) -> int | None:
    """The integer written in `answer` (optional sign, ASCII digits, surrounding spaces), else None."""
    if answer is None:
        return None
    text = answer.strip()
    return int(text) if _INTEGER.fullmatch(text) else None
