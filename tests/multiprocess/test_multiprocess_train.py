"""`entropy-rl train` as 2 JAX processes x 4 CPU devices (tests/multiprocess/conftest.py).

A tiny run (1-layer policy, 4 prompts x 4 responses of 8 tokens, 2 steps, a checkpoint every
step) on mesh data=2 x fsdp=4. An entropy bonus makes every update move the
parameters, so the bitwise comparison after a SIGKILL and a restart is not vacuous.
"""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from entropy_rl.parallel import MeshConfig, make_mesh
from entropy_rl.policy import load_policy
from entropy_rl.train import checkpoint as ck
from entropy_rl.train.metrics import read_metrics

# one multi-process test at a time (`--dist loadgroup`): two would oversubscribe the cores
pytestmark = pytest.mark.xdist_group("processes")

SCRIPT = str(Path(__file__).with_name("counting_train.py"))
STEPS, BATCH, N, HELDOUT, EVAL_N = 2, 4, 4, 4, 4  # held-out batches shaped as the rollouts: no more programs
TINY_RUN = [
    f"total_steps={STEPS}", "checkpoint.every_steps=1", "checkpoint.max_to_keep=5",
    f"data.batch_size={BATCH}", "data.num_synthetic_problems=64", "algorithm.mini_batch_size=2",
    "algorithm.loss.entropy_coef=0.01", f"rollout.n={N}", "rollout.max_new_tokens=8", "rollout.response_bucket=8",
    "model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=1",
    "model.num_attention_heads=2", "model.num_key_value_heads=1", "model.head_dim=16",
    "warmstart.enabled=false", f"eval.num_problems={HELDOUT}", f"eval.n={EVAL_N}", "logging.progress_bar=false",
    "logging.tensorboard=false", "stall_timeout_s=300",  # a stall fails with every process's stacks
]


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """One persistent compilation cache for the module's runs (the same programs, the same bits)."""
    cache = tmp_path_factory.mktemp("jax_cache")
    return {"JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _train(launch, run_dir: Path, mesh: list[str], env: dict, **kwargs):
    run_dir.mkdir(exist_ok=True)
    return launch([SCRIPT, str(run_dir), *TINY_RUN, *mesh, f"run_dir={run_dir}"], env=env, timeout_s=600, **kwargs)


def _verified(run_dir: Path, process: int) -> int:
    return sum(int(line) for line in (run_dir / f"verified.{process}").read_text().split())


def _params(run_dir: Path, step: int) -> list[np.ndarray]:
    one_device = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    policy, _ = load_policy(run_dir, step=step, mesh=one_device)
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(policy))]


def _without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time")} for row in rows]


def _check_run(result, run_dir: Path) -> None:
    """Each step logged once (by process 0), one summary, each host verified half the rows."""
    steps = [row for row in read_metrics(run_dir) if "loss" in row]
    assert [row["step"] for row in steps] == list(range(1, STEPS + 1))
    assert sum("held-out accuracy" in line for lines in result.output for line in lines) == 1
    batches = sum(row["sampling/rounds"] for row in steps)
    one_process = batches * BATCH * N + 2 * HELDOUT * EVAL_N  # the steps' rollouts + held-out before and after
    assert [_verified(run_dir, p) for p in (0, 1)] == [one_process // 2] * 2


@pytest.mark.slow
def test_train_on_two_processes_resumes_bitwise_after_sigkill(launch, tmp_path, compile_cache):
    """mesh data=2 x fsdp=4 (each process one data replica), DAPO's dynamic sampling (the
    random policy's groups all have reward 0, so every step samples max_sampling_rounds=2
    batches and picks groups across them), rollouts and held-out evals decoding their 16 rows
    through 16 refill slots (8 per host, 2 per batch shard: the fewest), the update on packed
    rows (algorithm.packing=on, entropy_rl.train.packed_update). An uninterrupted run
    logs each step once and each host verifies half of what one process would; a run whose
    processes are SIGKILLed after checkpoint 1 and started again ends with equal metrics and
    parameters."""
    mesh = ["mesh.data=2", "mesh.fsdp=4", "algorithm.dynamic_sampling=true", "algorithm.max_sampling_rounds=2",
            "rollout.max_slots=16", "algorithm.packing=on"]
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    result = _train(launch, uninterrupted, mesh, compile_cache)
    _check_run(result, uninterrupted)
    assert [row["sampling/rounds"] for row in read_metrics(uninterrupted) if "loss" in row] == [2] * STEPS
    assert "eval/accuracy" in json.dumps(read_metrics(uninterrupted)[-1])
    assert all(0 < row["update/useful_token_fraction"] <= 1 for row in read_metrics(uninterrupted) if "loss" in row)
    compiled = [json.loads(line.split("compiled ", 1)[1]) for lines in result.output for line in lines
                if "compiled {" in line]  # the sampler's programs of each process (counting_train.py)
    assert len(compiled) == 2 and all(c["refill_decode"] >= 1 and c["decode"] == 0 for c in compiled), compiled

    first = killed / "checkpoints" / "1"
    stopped = _train(launch, killed, mesh, compile_cache, kill_when=first.is_dir)
    assert stopped.stopped and all(code == -9 for code in stopped.returncodes)
    with ck.Checkpointer(killed, read_only=True) as checkpoints:
        assert checkpoints.latest_step() < STEPS, "killed too late: nothing left to resume"
    _train(launch, killed, mesh, compile_cache)  # the same command again: resumes

    final, expected = _params(killed, STEPS), _params(uninterrupted, STEPS)
    for got, want in zip(final, expected, strict=True):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    assert any(a.tobytes() != b.tobytes() for a, b in zip(_params(uninterrupted, 1), expected))
    assert _without_timings(read_metrics(killed)) == _without_timings(read_metrics(uninterrupted))
