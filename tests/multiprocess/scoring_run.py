"""Score 5 synthetic problems x 2 samples with a tiny policy on all devices; save this host's part.

    python tests/multiprocess/scoring_run.py OUT_DIR     (one process, or several via the launcher)

Writes OUT_DIR/host<block>.npz (this host's problem range and rows) and, on process 0,
OUT_DIR/gathered.json (every row's reward, answer and length, as `gather_scores` returns them).
"""

import json
import os
import sys

NUM_PROBLEMS = 5  # an odd count: the hosts' shares differ (3 and 2 problems)
OVERRIDES = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=1",
             "model.num_attention_heads=2", "model.num_key_value_heads=1", "model.head_dim=16",
             "rollout.n=2", "rollout.max_new_tokens=8", "rollout.response_bucket=8", "rollout.temperature=1.0"]


def score(out_dir: str) -> None:
    import jax
    import numpy as np

    from entropy_rl.data import synthetic_problems
    from entropy_rl.parallel import MeshConfig, make_mesh
    from entropy_rl.parallel.hosts import host_block
    from entropy_rl.rollout.scoring import gather_scores, score_batch
    from entropy_rl.policy import build_policy
    from entropy_rl.train.config import load_config
    from entropy_rl.train.data_setup import PromptEncoder

    config = load_config(overrides=OVERRIDES)
    mesh = make_mesh(MeshConfig(data=1, fsdp=-1))
    policy, tokenizer = build_policy(config.model, seed=0, mesh=mesh)
    sampling = config.rollout.sampling_config(stop_token_ids=tokenizer.stop_token_ids,
                                              pad_token_id=tokenizer.pad_token_id)
    problems = synthetic_problems(NUM_PROBLEMS, seed=1)
    scored = score_batch(policy, problems, PromptEncoder(config, tokenizer), tokenizer, sampling, jax.random.key(5),
                         verifier="synthetic", mesh=mesh)
    gathered = gather_scores(scored, mesh)
    r = scored.rollout
    np.savez(os.path.join(out_dir, f"host{host_block(mesh)}.npz"), problems=[scored.problems.start,
             scored.problems.stop], tokens=r.tokens, logprobs=r.logprobs, lengths=r.lengths, rewards=scored.rewards)
    if jax.process_index() == 0:
        with open(os.path.join(out_dir, "gathered.json"), "w") as f:
            json.dump({"rewards": gathered.rewards.tolist(), "answers": gathered.answers,
                       "lengths": gathered.lengths.tolist(), "failures": gathered.verifier_failures}, f)


if __name__ == "__main__":
    from entropy_rl.parallel import initialize_distributed

    initialize_distributed()
    score(sys.argv[1])
