"""The watchdog ends a process that made no progress for its timeout, naming it and its last beat."""

import io
import threading

from entropy_rl.parallel.watchdog import STALLED_EXIT_CODE, Watchdog


def test_a_stall_past_the_timeout_ends_the_process_with_one_line():
    now, exits, out = [0.0], [], io.StringIO()
    watchdog = Watchdog(clock=lambda: now[0], exit=exits.append, file=out)
    watchdog.arm(60, poll_s=3600)  # checked by hand below
    watchdog.beat("rl step 3")
    now[0] = 59.0
    assert not watchdog.check() and exits == []
    now[0] = 61.0
    assert watchdog.check()
    assert exits == [STALLED_EXIT_CODE]
    line, stacks = out.getvalue().split("\n", 1)
    assert line == ("entropy-rl: process 0 of 1 made no progress for 61 s after 'rl step 3' (a collective "
                    "that cannot complete: another process died or is stuck); ending it with exit code 75")
    assert "test_a_stall_past_the_timeout_ends_the_process_with_one_line" in stacks  # where each thread waits
    watchdog.disarm()


def test_the_armed_thread_fires_without_beats_and_not_while_beating():
    fired = threading.Event()
    watchdog = Watchdog(exit=lambda code: fired.set(), file=io.StringIO())
    watchdog.arm(0.5, poll_s=0.02)
    for _ in range(20):  # 0.8 s of beats every 0.04 s
        watchdog.beat("working")
        assert not fired.wait(0.04)
    assert fired.wait(5)
    watchdog.disarm()


def test_unarmed_or_zero_timeout_never_fires():
    now, exits = [0.0], []
    watchdog = Watchdog(clock=lambda: now[0], exit=exits.append)
    now[0] = 1e9
    assert not watchdog.check()
    watchdog.arm(0)
    assert not watchdog.check() and exits == []


def test_the_stacks_go_to_a_real_file_through_faulthandler(tmp_path):
    now, exits = [0.0], []
    with open(tmp_path / "stderr", "w") as out:
        watchdog = Watchdog(clock=lambda: now[0], exit=exits.append, file=out)
        watchdog.arm(1, poll_s=3600)
        now[0] = 2.0
        assert watchdog.check()
    report = (tmp_path / "stderr").read_text()
    assert exits == [STALLED_EXIT_CODE] and "Current thread" in report and "test_watchdog.py" in report
