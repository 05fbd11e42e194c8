"""The refill sampler on 2 processes x 4 CPU devices (one fsdp=8 mesh): each host refills its
own 8 of the 16 slots with its own rows (7 prompts of varied lengths x 4 samples: 16 rows on
host 0, 12 on host 1), and every row equals, bitwise, the row of the same global id that
the static sampler gives in one process on an fsdp=8 mesh of 8 devices; both hosts made
the same program calls.

    python tests/multiprocess/test_multiprocess_refill.py CHECKPOINT OUT_DIR   (each process)

samples this host's share and writes OUT_DIR/host<block>.npz.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

# one multi-process test at a time (`--dist loadgroup`): two would oversubscribe the cores
pytestmark = pytest.mark.xdist_group("processes")

VOCAB = 128
_PROMPT_RNG = np.random.default_rng(0)
PROMPTS = [_PROMPT_RNG.integers(1, VOCAB, length).tolist() for length in (3, 17, 1, 9, 12, 5, 20)]
SLOTS = 16  # 8 per host (2 per batch shard, the fewest), for 16 and 12 rows


def sampling_config(scheduler: str):
    from entropy_rl.rollout import SamplingConfig

    # Three stop tokens of a 128-token vocabulary: rows stop at different steps, slots free at different times.
    # No sampling view: it splits the MLP's down projection over fsdp, whose partial sums gloo adds
    # across processes in another order than one process does (5 of 384 log-probs 1 ulp apart).
    return SamplingConfig(max_new_tokens=24, temperature=1.0, top_k=50, top_p=0.95, n=4, stop_token_ids=(3, 11, 60),
                          prompt_bucket=32, response_bucket=8, decode_segments=1, scheduler=scheduler,
                          max_slots=SLOTS if scheduler == "refill" else 0, sampling_copy=False)


def sample_host_share(checkpoint: str, out_dir: str) -> None:
    """Refill-sample this host's share of PROMPTS; save its rows, schedule and compile counts."""
    import jax

    from entropy_rl.model import load_hf
    from entropy_rl.parallel import MeshConfig, make_mesh
    from entropy_rl.parallel.hosts import host_block, host_share
    from entropy_rl.rollout import RefillSchedule, compile_counts, generate

    mesh = make_mesh(MeshConfig(data=1, fsdp=-1))
    share = host_share(len(PROMPTS), mesh)
    schedule = RefillSchedule()
    rollout = generate(load_hf(checkpoint, mesh=mesh), PROMPTS[share], sampling_config("refill"), jax.random.key(1),
                       mesh=mesh, schedule=schedule)
    np.savez(Path(out_dir) / f"host{host_block(mesh)}.npz", prompts=[share.start, share.stop], tokens=rollout.tokens,
             logprobs=rollout.logprobs, lengths=rollout.lengths, stopped=rollout.stopped,
             schedule=[getattr(schedule, k) for k in ("slots", "prefill_calls", "decode_calls", "decode_steps", "tokens")],
             compiled=[compile_counts()[k] for k in ("refill_prefill", "refill_decode", "prefill", "decode")])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tests.multiprocess.tiny_policy import save_tiny_policy

    return save_tiny_policy(tmp_path_factory.mktemp("policy"), seed=3, vocab_size=VOCAB)


@pytest.mark.slow
def test_two_hosts_refill_their_rows_as_the_one_process_static_sampler(launch, checkpoint, tmp_path):
    import jax

    from entropy_rl.model import load_hf
    from entropy_rl.parallel import MeshConfig, make_mesh
    from entropy_rl.rollout import generate

    launch([__file__, checkpoint, str(tmp_path)], timeout_s=240)
    mesh = make_mesh(MeshConfig(data=1, fsdp=8))
    static = generate(load_hf(checkpoint, mesh=mesh), PROMPTS, sampling_config("static"), jax.random.key(1), mesh=mesh)
    assert len(set(static.lengths.tolist())) >= 5 and static.stopped.any() and not static.stopped.all()
    hosts = [np.load(tmp_path / f"host{b}.npz") for b in (0, 1)]
    assert [h["prompts"].tolist() for h in hosts] == [[0, 4], [4, 7]]
    for host in hosts:
        rows = slice(4 * host["prompts"][0], 4 * host["prompts"][1])
        np.testing.assert_array_equal(host["tokens"], static.tokens[rows])
        np.testing.assert_array_equal(host["lengths"], static.lengths[rows])
        np.testing.assert_array_equal(host["stopped"], static.stopped[rows])
        np.testing.assert_array_equal(host["logprobs"], static.logprobs[rows])
    # The same calls on both hosts (16 global slots, refilled: more than one prefill), every token
    # counted once; the refill programs compiled, the static ones not.
    schedules = [h["schedule"].tolist() for h in hosts]
    assert schedules[0] == schedules[1]
    slots, prefill_calls, _, _, tokens = schedules[0]
    assert slots == SLOTS and prefill_calls > 1 and tokens == static.lengths.sum()
    assert [h["compiled"].tolist()[2:] for h in hosts] == [[0, 0], [0, 0]]
    assert hosts[0]["compiled"].tolist() == hosts[1]["compiled"].tolist()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from entropy_rl.parallel import initialize_distributed

    initialize_distributed()
    sample_host_share(sys.argv[1], sys.argv[2])
