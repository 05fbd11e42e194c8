"""Start-up of several processes: the launcher and `initialize_distributed`'s arguments."""

import io
import os
import sys
import textwrap

import pytest

from entropy_rl.launch import LaunchResult, launch as launch_processes, process_environment
from entropy_rl.parallel.mesh import distributed_arguments

# one multi-process test at a time (`--dist loadgroup`): two would oversubscribe the cores
pytestmark = pytest.mark.xdist_group("processes")

LAUNCHER = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}


def test_plain_launcher_variables_are_passed_explicitly():
    assert distributed_arguments(LAUNCHER) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                                               "process_id": 3}


@pytest.mark.parametrize("env", [{}, {"SLURM_NTASKS": "1"}, {"OMPI_COMM_WORLD_SIZE": "1"},
                                 {"TPU_WORKER_HOSTNAMES": "localhost"}, {"TPU_WORKER_HOSTNAMES": ""},
                                 {"JAX_COORDINATOR_ADDRESS": "a:1", "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}])
def test_one_process_starts_nothing(env):
    assert distributed_arguments(env) is None


@pytest.mark.parametrize("env", [{"SLURM_NTASKS": "8", "SLURM_JOB_ID": "7"}, {"OMPI_COMM_WORLD_SIZE": "2"},
                                 {"TPU_WORKER_HOSTNAMES": "t1,t2,t3,t4"}])
def test_cluster_launchers_are_left_to_jax_detection(env):
    assert distributed_arguments(env) == {}


@pytest.mark.parametrize("drop, message", [("JAX_NUM_PROCESSES", "JAX_NUM_PROCESSES not set"),
                                           ("JAX_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS not set")])
def test_incomplete_launcher_variables_are_named(drop, message):
    env = {k: v for k, v in LAUNCHER.items() if k != drop}
    with pytest.raises(ValueError, match=message):
        distributed_arguments(env)


@pytest.mark.parametrize("key, value, message", [("JAX_PROCESS_ID", "4", r"JAX_PROCESS_ID=4 is not in \[0, "),
                                                 ("JAX_NUM_PROCESSES", "two", "JAX_NUM_PROCESSES='two' is not an")])
def test_bad_launcher_values_are_named(key, value, message):
    with pytest.raises(ValueError, match=message):
        distributed_arguments(LAUNCHER | {key: value})


def test_launcher_environment_of_each_process():
    env = process_environment(1, 2, 4321, 4, base={"PATH": "/bin", "XLA_FLAGS": "--other"})
    assert env == {"PATH": "/bin", "JAX_COORDINATOR_ADDRESS": "127.0.0.1:4321", "JAX_NUM_PROCESSES": "2",
                   "JAX_PROCESS_ID": "1", "JAX_PLATFORMS": "cpu",
                   "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
                   "NPROC": str(max(os.cpu_count(), 16))}  # XLA's CPU pool: 4 threads per device at least
    assert process_environment(1, 2, 4321, 4, base={"NPROC": "3"})["NPROC"] == "3"  # the user's own
    assert distributed_arguments(env) == {"coordinator_address": "127.0.0.1:4321", "num_processes": 2,
                                          "process_id": 1}


@pytest.mark.parametrize("codes, timed_out, worst", [([0, 0], False, 0), ([3, -9], False, 3), ([-9, 0], False, 137),
                                                     ([0, -9], True, 124)])
def test_exit_code_is_the_worst(codes, timed_out, worst):
    assert LaunchResult(codes, [[], []], timed_out).returncode == worst


@pytest.mark.slow
def test_two_processes_form_one_runtime_and_sum_across_hosts(launch, tmp_path):
    """initialize_distributed on each process, 8 global devices, a psum over both hosts' rows."""
    script = tmp_path / "allsum.py"
    script.write_text(textwrap.dedent("""
        import jax, numpy as np
        from jax.experimental import multihost_utils
        from entropy_rl.parallel import initialize_distributed
        assert initialize_distributed() and not initialize_distributed()  # the second call does nothing
        local = np.full((4,), jax.process_index() + 1.0, np.float32)
        total = multihost_utils.process_allgather(local).sum()
        print(f"devices {jax.device_count()} local {jax.local_device_count()} sum {total}")
    """))
    result = launch([str(script)], timeout_s=120)
    for lines in result.output:
        assert any("devices 8 local 4 sum 12.0" in line for line in lines)  # gloo may write into the line


def test_one_failing_process_stops_the_other(launch, tmp_path):
    """Process 1 exits with 3 while process 0 would wait for it: both end, the code is 3."""
    script = tmp_path / "fail.py"
    script.write_text("import os, sys, time\nif os.environ['JAX_PROCESS_ID'] == '1': sys.exit(3)\ntime.sleep(600)\n")
    result = launch([str(script)], timeout_s=60, check=False)
    assert result.returncodes[1] == 3 and result.returncodes[0] < 0 and not result.timed_out
    assert result.returncode == 3


def test_timeout_kills_every_process(launch, tmp_path):
    script = tmp_path / "sleep.py"
    script.write_text("import time\ntime.sleep(600)\n")
    result = launch([str(script)], timeout_s=2, check=False)
    assert result.timed_out and result.returncode == 124 and all(code < 0 for code in result.returncodes)


def test_the_launcher_names_the_failed_process_and_hides_chatter(tmp_path):
    """One line names the process that ended; library chatter reaches only the log files."""
    script = tmp_path / "fail.py"
    ready = tmp_path / "printed"
    script.write_text(textwrap.dedent(f"""
        import os, pathlib, sys, time
        print('[Gloo] Rank 3 is connected to 7 peer ranks. Expected number of connected peer ranks is : 7')
        print('step 1/2', flush=True)
        if os.environ['JAX_PROCESS_ID'] == '1':
            while not pathlib.Path({str(ready)!r}).exists():  # process 0 has printed
                time.sleep(0.01)
            sys.exit(3)
        pathlib.Path({str(ready)!r}).touch()
        time.sleep(600)
    """))
    echo = io.StringIO()
    result = launch_processes([sys.executable, str(script)], num_processes=2, devices=1, timeout_s=60, echo=echo,
                              log_dir=str(tmp_path / "logs"))
    assert result.returncode == 3
    shown = echo.getvalue().splitlines()
    assert sorted(shown) == ["[0] step 1/2", "[1] step 1/2",
                             "entropy-rl launch: process 1 exited with code 3; stopping the 1 still running"]
    for process in (0, 1):
        assert "[Gloo] Rank 3 is connected" in (tmp_path / "logs" / f"process-{process}.log").read_text()
