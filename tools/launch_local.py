"""`entropy-rl launch` under its former name: `python tools/launch_local.py -n 2 -- entropy-rl train ...`."""

import sys

from entropy_rl.launch import main

if __name__ == "__main__":
    sys.exit(main())
