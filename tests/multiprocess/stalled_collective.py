"""Two processes, one of which never enters the second collective: the watchdog ends the other.

    python tests/multiprocess/stalled_collective.py TIMEOUT_S

Both gather once (the runtime is up), then process 0 beats "collective 2" and gathers again
while process 1 sleeps; process 0's watchdog (armed with TIMEOUT_S) ends it.
"""

import sys
import time

from entropy_rl.parallel import initialize_distributed, watchdog


def main() -> int:
    initialize_distributed()
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    multihost_utils.process_allgather(np.int32(1))
    watchdog.arm(float(sys.argv[1]), poll_s=0.2)
    if jax.process_index() == 1:
        time.sleep(600)
    watchdog.beat("collective 2")
    multihost_utils.process_allgather(np.int32(2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
