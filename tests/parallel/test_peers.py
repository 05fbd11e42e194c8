"""The peer monitor names a dead peer in one line and stays silent for live or exited ones
(`entropy_rl.parallel.peers`), on a dict-backed store and a hand-driven clock."""

import io

import pytest

from entropy_rl.parallel.peers import EXITED, KEY_PREFIX, PeerMonitor, peer_timeout_s
from entropy_rl.parallel.watchdog import STALLED_EXIT_CODE


class DictStore:
    """The key-value calls of jax's distributed client, on a dict shared by every 'process'."""

    def __init__(self, entries=None, fail=None):
        self.entries = {} if entries is None else entries
        self.fail = fail

    def key_value_set(self, key, value, allow_overwrite=False):
        if self.fail:
            raise self.fail
        assert allow_overwrite or key not in self.entries
        self.entries[key] = value

    def key_value_dir_get(self, key):
        if self.fail:
            raise self.fail
        return [(k, v) for k, v in self.entries.items() if k.startswith(key)]


def monitors(count, now, where=lambda: "rl step 3"):
    """`count` monitors on one store and one clock, with their exit codes and printed lines."""
    entries, exits, out = {}, [], io.StringIO()
    made = [PeerMonitor(DictStore(entries), process, count, timeout_s=30, clock=lambda: now[0],
                        exit=exits.append, file=out, where=where) for process in range(count)]
    return made, exits, out


def test_live_peers_are_never_reported():
    now = [0.0]
    (zero, one), exits, out = monitors(2, now)
    for t in range(0, 300, 5):
        now[0] = float(t)
        assert not one.check() and not zero.check()
    assert exits == [] and out.getvalue() == ""


def test_a_silent_peer_is_named_with_its_last_step_after_the_timeout():
    now = [0.0]
    (zero, one), exits, out = monitors(2, now)
    one.check()
    zero.check()  # sees process 1's first sign of life at t = 0
    now[0] = 29.0
    assert not zero.check() and exits == []
    now[0] = 31.0
    assert zero.check()
    assert exits == [STALLED_EXIT_CODE]
    assert out.getvalue() == (
        'entropy-rl: process 1 of 2 has sent no sign of life for 31 s (its last: "rl step 3"): it died or '
        "lost its network; see its own log. Ending process 0 with exit code 75 (the same command resumes "
        "from the last checkpoint)\n")


def test_a_peer_never_seen_counts_from_the_start():
    now = [0.0]
    (zero, _, two), exits, out = monitors(3, now)
    now[0] = 10.0
    two.check()
    for t in (10.0, 29.0):
        now[0] = t
        two.check()
        assert not zero.check()
    now[0] = 30.0  # process 2 last spoke at 29 s
    assert zero.check() and exits == [STALLED_EXIT_CODE]
    assert out.getvalue().startswith("entropy-rl: process 1 of 3 has sent no sign of life for 30 s (none since "
                                     "the start)")


def test_an_exited_peer_is_not_a_dead_one_and_the_last_one_out_stops_quietly():
    now = [0.0]
    (zero, one), exits, out = monitors(2, now)
    one.check()
    zero.check()
    one.exiting()
    assert one.store.entries[f"{KEY_PREFIX}1"] == EXITED
    now[0] = 500.0
    assert not zero.check()  # still running: keeps watching, reports nothing
    zero.exiting()
    assert zero.check()  # exiting, and so is every peer: the watch is over
    assert exits == [] and out.getvalue() == ""


def test_an_exiting_process_still_names_a_peer_that_died():
    """jax's exit handler waits for every process: a dead one would hold it for 100 s."""
    now = [0.0]
    (zero, one), exits, out = monitors(2, now)
    one.check()
    zero.check()
    zero.exiting()
    now[0] = 40.0
    assert zero.check() and exits == [STALLED_EXIT_CODE]
    assert "process 1 of 2 has sent no sign of life for 40 s" in out.getvalue()


def test_an_unreachable_coordinator_is_named_unless_this_process_is_exiting():
    exits, out = [], io.StringIO()
    error = RuntimeError("UNAVAILABLE: failed to connect to all addresses\nmore detail")
    monitor = PeerMonitor(DictStore(fail=error), 1, 2, timeout_s=30, exit=exits.append, file=out)
    assert monitor.check() and exits == [STALLED_EXIT_CODE]
    assert out.getvalue() == (
        "entropy-rl: cannot reach the coordinator (process 0, which holds jax's coordination service): "
        "UNAVAILABLE: failed to connect to all addresses. Ending process 1 with exit code 75 (the same command "
        "resumes from the last checkpoint)\n")
    quiet = PeerMonitor(DictStore(fail=error), 1, 2, timeout_s=30, exit=exits.append, file=out)
    quiet.exiting()
    assert quiet.check() and exits == [STALLED_EXIT_CODE]  # no second exit, no second line
    assert out.getvalue().count("\n") == 1


@pytest.mark.parametrize(("text", "value"), [("", 60.0), ("12.5", 12.5), ("0", 0.0)])
def test_the_timeout_comes_from_the_environment(text, value):
    assert peer_timeout_s({"ENTROPY_RL_PEER_TIMEOUT_S": text}) == value
    assert peer_timeout_s({}) == 60.0


@pytest.mark.parametrize(("text", "message"), [("soon", "is not a number"), ("-1", "must be >= 0")])
def test_a_bad_timeout_is_named(text, message):
    with pytest.raises(ValueError, match=f"ENTROPY_RL_PEER_TIMEOUT_S='{text}' {message}"):
        peer_timeout_s({"ENTROPY_RL_PEER_TIMEOUT_S": text})
