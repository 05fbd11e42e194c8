"""A collective that cannot complete ends the run in bounded time, with one line naming the
process and where it stopped (`entropy_rl.parallel.watchdog`), and the launcher names the
process that ended."""

from pathlib import Path

import pytest

from entropy_rl.parallel.watchdog import STALLED_EXIT_CODE

pytestmark = pytest.mark.xdist_group("processes")

SCRIPT = str(Path(__file__).with_name("stalled_collective.py"))


@pytest.mark.slow
def test_a_stalled_collective_ends_the_waiting_process(launch):
    result = launch([SCRIPT, "3"], devices=1, timeout_s=240, check=False)
    assert not result.timed_out
    assert result.returncodes[0] == STALLED_EXIT_CODE
    line = next(line for line in result.output[0] if line.startswith("entropy-rl: process"))
    assert line.startswith("entropy-rl: process 0 of 2 made no progress for ")
    assert "after 'collective 2'" in line
