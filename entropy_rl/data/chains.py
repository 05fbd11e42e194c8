"""The built-in reasoning-chain task: two-sided linear equations solved in written steps.

`Solve 7x+15=3x+43.` with a in 2..9, c in 1..a-1, x in 0..12, b in 1..20 and
d = (a - c) x + b, so the answer x is a non-negative integer. The demonstration
(`meta["solution"]`, the warm start's target) writes four steps before the box:

    7x-3x=43-15
    4x=28
    x=28/4
    x=7
    \\boxed{7}

(median 31 builtin-tokenizer tokens, `\\boxed{` being one). The copies (coefficients and
constants moved across) are near-certain for a warm-started policy while the two
subtractions and the division are where it is uncertain, so a sampled response has long
low-entropy stretches around a few forks: the setting in which STAPO's spurious tokens
(rare tokens at confident positions) and entropy collapse occur. Verified exactly by
verifier "chains" (`entropy_rl.rewards.chains`): every step must be true.

Registered as the synthetic task's level "lineq2" (`entropy_rl.data.synthetic.LEVELS`), so
the held-out split, seeding and problem ids are the synthetic task's.
"""

from __future__ import annotations

import numpy as np

from entropy_rl.rewards.chains import write_chain


def lineq2(rng: np.random.Generator) -> tuple[str, int, str]:
    """(equation `7x+15=3x+43`, answer x, demonstration chain) of one random problem."""
    a = int(rng.integers(2, 10))
    c, x, b = int(rng.integers(1, a)), int(rng.integers(0, 13)), int(rng.integers(1, 21))
    d = (a - c) * x + b
    return f"{a}x+{b}={c}x+{d}", x, write_chain(a, b, c, d)
