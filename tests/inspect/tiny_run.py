"""A tiny real `entropy-rl train` run for the inspect tests: STAPO, a 1-layer policy, the real
Qwen3 tokenizer, a verifier that rewards odd-length responses (so groups differ and STAPO
flags tokens), 2 steps of 4 groups x 4 responses, every response kept in samples.jsonl. Sampling
at temperature 0.02 sharpens the random policy's near-uniform logits, so its token entropies and
probabilities spread over the page's colour classes."""

import json
import pathlib

import numpy as np

from entropy_rl import cli
from entropy_rl.rewards import RewardResult, register_verifier

QWEN3_TOKENIZER = str(pathlib.Path(__file__).parents[1] / "data" / "qwen3_tokenizer")


@register_verifier("inspect_odd_length")
def odd_length_rewards(responses, ground_truths, *, timeout_s=None):
    """1 for a response of odd character length."""
    del ground_truths, timeout_s
    return RewardResult(np.asarray([len(r) % 2 for r in responses], np.float32))


def tiny_run(directory: pathlib.Path, steps: int = 2) -> pathlib.Path:
    """Train the tiny run into directory/run (through `entropy-rl train`); returns the run directory."""
    problems = directory / "problems.jsonl"
    problems.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"What is {i} + {i}? Answer in 中文.",
                                            "answer": str(2 * i)}) + "\n" for i in range(8)))
    run_dir = directory / "run"
    overrides = {
        "run_dir": run_dir, "total_steps": steps, "data.dataset": problems, "data.verifier": "inspect_odd_length",
        "data.batch_size": 4, "algorithm.mini_batch_size": 4, "algorithm.loss.stapo.prob_threshold": 0.5,
        "rollout.n": 4, "rollout.temperature": 0.02, "rollout.max_new_tokens": 12, "rollout.response_bucket": 12, "rollout.prompt_bucket": 32,
        "model.tokenizer": QWEN3_TOKENIZER, "model.hidden_size": 32, "model.intermediate_size": 64,
        "model.num_hidden_layers": 1, "model.num_attention_heads": 2, "model.num_key_value_heads": 1,
        "model.head_dim": 16, "warmstart.enabled": False, "eval.benchmark": problems, "eval.num_problems": 2,
        "eval.n": 2, "logging.tensorboard": False, "logging.samples_per_step": 16, "logging.progress_bar": False,
    }
    assert cli.main(["train", *(f"{key}={value}" for key, value in overrides.items())]) == 0
    return run_dir
