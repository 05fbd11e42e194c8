"""`entropy-rl train` whose verifier counts the responses each process checks.

    python tests/multiprocess/counting_train.py COUNTS_DIR [train args ...]

Registers the verifier "counting" (the built-in synthetic one, appending the number of
responses of each call to COUNTS_DIR/verified.<JAX_PROCESS_ID>) and runs `entropy-rl train`
with data.verifier=counting; prints the sampler's compile counts at the end ("compiled {...}").
"""

import json
import os
import sys

from entropy_rl.rewards import get_verifier, register_verifier


def main() -> int:
    counts_dir, argv = sys.argv[1], sys.argv[2:]
    synthetic = get_verifier("synthetic")
    counts_file = os.path.join(counts_dir, f"verified.{os.environ.get('JAX_PROCESS_ID', '0')}")

    @register_verifier("counting")
    def counting(responses, truths, **kwargs):
        with open(counts_file, "a") as f:
            f.write(f"{len(responses)}\n")
        return synthetic(responses, truths, **kwargs)

    from entropy_rl.rollout import compile_counts
    from entropy_rl.train.cli import main as train_main

    code = train_main([*argv, "data.verifier=counting"])
    print("compiled", json.dumps(compile_counts()), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
