"""Rank a dataset by semantic entropy: the same as `entropy-rl rank` (see entropy_rl/ranking.py).

    python tools/semantic_entropy_rank.py --policy runs/warm --data synthetic --output ranking.jsonl
"""

import sys

from entropy_rl.ranking import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
