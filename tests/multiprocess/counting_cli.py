"""An `entropy-rl` command whose "synthetic" verifier counts the responses each process checks.

    python tests/multiprocess/counting_cli.py COUNTS_DIR COMMAND [args ...]

Re-registers the verifier "synthetic" as the built-in one that also appends the number of
responses of each call to COUNTS_DIR/verified.<JAX_PROCESS_ID>, then runs
`entropy-rl COMMAND args ...` (e.g. eval or rank on the built-in task).
"""

import os
import sys

from entropy_rl import cli
from entropy_rl.rewards import get_verifier, register_verifier


def main() -> int:
    counts_dir, argv = sys.argv[1], sys.argv[2:]
    synthetic = get_verifier("synthetic")
    counts_file = os.path.join(counts_dir, f"verified.{os.environ.get('JAX_PROCESS_ID', '0')}")

    @register_verifier("synthetic")
    def counting(responses, truths, **kwargs):
        with open(counts_file, "a") as f:
            f.write(f"{len(responses)}\n")
        return synthetic(responses, truths, **kwargs)

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
