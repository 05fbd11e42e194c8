"""Two processes gathering in a loop, as a cluster scheduler starts them (no launcher).

    python tests/multiprocess/dead_peer.py kill      # process 1 kills itself after 5 gathers
    python tests/multiprocess/dead_peer.py finish    # both end; process 1 lingers 2 timeouts more

With "kill", process 0 waits in its next gather until its peer monitor names process 1.
"""

import os
import signal
import sys
import time

from entropy_rl.parallel import initialize_distributed, watchdog
from entropy_rl.parallel.peers import peer_timeout_s


def main() -> int:
    initialize_distributed()
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    for step in range(10):
        watchdog.beat(f"gather {step}")
        multihost_utils.process_allgather(np.int32(step))
        if sys.argv[1] == "kill" and step == 5 and jax.process_index() == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.1)
    if jax.process_index() == 1:
        time.sleep(2 * peer_timeout_s())
    print(f"process {jax.process_index()} done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
