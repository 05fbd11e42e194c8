"""The verifier pool under adversarial inputs: every item gets a verdict within its deadline
plus the kill grace, hangs and crashes are counted and their workers replaced, and no
process outlives the pool."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from entropy_rl.rewards import VerifierPool, math_rewards
from entropy_rl.rewards.math_verifier import EQUIVALENCE_CHECK

CHECKS = "tests.rewards.hanging_checks"


def _children() -> set[int]:
    """Live (non-zombie) child processes of this process, from /proc."""
    children = set()
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            children.add(int(entry.name))
    return children


@pytest.fixture(scope="module")
def pool():
    before = _children()
    seen = set()
    with VerifierPool(2, grace_s=0.3, warm_up=False, preload=()) as pool:
        pool.seen_pids = seen
        yield pool
        seen.update(pool.pids)
    assert pool.pids == []
    assert not (seen & _children()), "a worker outlived the pool"
    assert _children() <= before


def _map(pool, target, args_list, timeout_s):
    outcomes = pool.map(target, args_list, timeout_s=timeout_s)
    pool.seen_pids.update(pool.pids)
    return outcomes


def test_timer_interrupts_python_hang_and_worker_survives(pool):
    _map(pool, f"{CHECKS}:echo", [(0,)], 5.0)  # start-up
    pids = pool.pids
    outcomes = _map(pool, f"{CHECKS}:sleep_in_python", [(60,), (0,)], 0.3)
    assert outcomes == [("timeout", None), ("ok", True)]
    assert pool.pids == pids  # the timer fired inside the worker: nothing was killed


def test_hang_past_timer_is_killed_and_replaced(pool):
    _map(pool, f"{CHECKS}:echo", [(0,)], 5.0)
    pids = pool.pids
    outcomes = _map(pool, f"{CHECKS}:hang_past_timer", [(60,), (60,)], 0.2)
    assert outcomes == [("timeout", None), ("timeout", None)]
    assert not set(pool.pids) & set(pids)
    assert _map(pool, f"{CHECKS}:echo", [(i,) for i in range(6)], 5.0) == [("ok", i) for i in range(6)]
    assert not set(pids) & _children()  # the killed workers were reaped


def test_crash_and_exception_are_errors(pool):
    outcomes = _map(pool, f"{CHECKS}:crash", [(3,)], 5.0) + _map(pool, f"{CHECKS}:raise_error", [("bad",)], 5.0)
    assert outcomes[0] == ("error", "worker process died")
    assert outcomes[1][0] == "error" and "ValueError: bad" in outcomes[1][1]
    assert _map(pool, f"{CHECKS}:echo", [("after",)], 5.0) == [("ok", "after")]


def test_mixed_batch_keeps_order(pool):
    tasks = [("echo", (1,)), ("hang_past_timer", (60,)), ("echo", (2,)), ("crash", (1,)), ("echo", (3,))]
    outcomes = [_map(pool, f"{CHECKS}:{name}", [args], 0.3)[0] for name, args in tasks]
    assert [status for status, _ in outcomes] == ["ok", "timeout", "ok", "error", "ok"]


def test_interrupted_map_leaves_no_stale_answers(pool):
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(KeyboardInterrupt):
            _map(pool, f"{CHECKS}:sleep_in_python", [(2,), (2,)], 30.0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    # The interrupted items' answers (True, after 2 s) must not be taken for these.
    assert _map(pool, f"{CHECKS}:echo", [("a",), ("b",), ("c",)], 5.0) == [("ok", "a"), ("ok", "b"), ("ok", "c")]


ADVERSARIAL = [
    "10^{10^{10^{10}}}",  # a power tower: sympy evaluates it in C
    "\\sin(10^{1000000})",
    "{" * 3000 + "1" + "}" * 3000,  # deeply nested braces
    "\\frac{" * 500 + "1" + "}{2}" * 500,
    bytes(range(256)).decode("latin-1") * 4,  # binary garbage
    "\ud800\x00\\\\\\",
]


def test_sympy_adversarial_answers_get_a_verdict(pool):
    outcomes = _map(pool, EQUIVALENCE_CHECK, [("5", answer) for answer in ADVERSARIAL], 1.0)
    # None of them equals 5: each is rejected, times out, or errors, and nothing hangs the pool.
    assert all(outcome == ("ok", False) or outcome[0] in ("timeout", "error") for outcome in outcomes)
    assert _map(pool, EQUIVALENCE_CHECK, [("\\frac{1}{2}", "0.5")], 5.0) == [("ok", True)]


def test_math_rewards_on_adversarial_responses():
    responses = [f"\\boxed{{{answer}}}" for answer in ADVERSARIAL] + [
        "x" * 1_000_000 + "\\boxed{5}",  # 1 MB response, right answer
        "\\boxed{" * 200_000,  # 1.4 MB of unclosed boxes
        "\\boxed{5}",
    ]
    # Its own pool, closed here: the shared pool's workers would outlive the module's `pool`
    # fixture, whose teardown checks that no child process is left.
    with VerifierPool(2) as own_pool:
        result = math_rewards(responses, ["5"] * len(responses), timeout_s=1.0, pool=own_pool)
    assert result.rewards.tolist() == [0.0] * len(ADVERSARIAL) + [1.0, 0.0, 1.0]
    assert result.num_errors + result.num_timeouts <= len(ADVERSARIAL)


# A fresh process whose pool is first used from short-lived threads: a ThreadPoolExecutor's
# workers start the pool (their calls taking turns), then exit; later calls from other threads
# must still find it whole.
THREADS_SCRIPT = """
import concurrent.futures, json, threading, time
from entropy_rl.rewards import VerifierPool
checks = "tests.rewards.hanging_checks"
report = {}
with VerifierPool(2, grace_s=0.3, warm_up=False, preload=()) as pool:
    with concurrent.futures.ThreadPoolExecutor(4) as executor:  # first use: 4 calls from 4 threads
        report["first"] = list(executor.map(lambda i: pool.map(checks + ":echo", [(i,)], timeout_s=5.0), range(4)))
    pids = pool.pids
    time.sleep(0.5)  # the executor's threads are gone: a thread-tied death signal would have fired
    thread = threading.Thread(target=lambda: report.setdefault("thread", pool.map(checks + ":echo", [("t",)])))
    thread.start(); thread.join()
    report["same_workers"] = pool.pids == pids
    bad = []
    for timeout in (0, -1.0, float("nan"), float("inf"), "5"):
        try:
            pool.map(checks + ":echo", [(1,)], timeout_s=timeout)
        except ValueError as error:
            bad.append(str(error))
    report["bad"] = bad
print(json.dumps(report))
"""


@pytest.mark.slow
def test_pool_from_threads_in_a_fresh_process():
    repo = pathlib.Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", THREADS_SCRIPT], cwd=repo, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["first"] == [[["ok", i]] for i in range(4)]
    assert report["thread"] == [["ok", "t"]] and report["same_workers"]
    assert len(report["bad"]) == 5 and all("timeout_s must be a finite number of seconds > 0" in m for m in report["bad"])
