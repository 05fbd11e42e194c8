"""`entropy-rl rank`: the file it writes, its numbers on scripted samples, and kill + resume."""

import json
import math

import jax
import numpy as np
import pytest
from flax import nnx

from entropy_rl import ranking
from entropy_rl.data import Problem, load_tokenizer
from entropy_rl.model import Qwen, save_hf, tiny_config
from entropy_rl.rollout import Rollout, scoring


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    """A random tiny Qwen3 saved as an HF checkpoint, vocabulary = the built-in tokenizer's.

    Weights are drawn with numpy into the abstract model: an eager `Qwen(...)` init compiles
    dozens of tiny programs (tens of seconds on a busy CPU); this takes well under a second.
    """
    path = tmp_path_factory.mktemp("policy")
    config = tiny_config(vocab_size=load_tokenizer("builtin").vocab_size, num_hidden_layers=1)
    graphdef, shapes = nnx.split(nnx.eval_shape(lambda: Qwen(config, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jax.device_put((0.1 * rng.standard_normal(s.shape)).astype(s.dtype)), shapes)
    save_hf(nnx.merge(graphdef, params), str(path))
    return str(path)


def rank_args(policy, output, *extra):
    return ["--policy", policy, "--data", "synthetic", "--num-synthetic", "12", "--output", str(output),
            "--samples", "4", "--batch-prompts", "4", "--max-new-tokens", "8", "--prompt-bucket", "32",
            "--response-bucket", "8", "--mesh", "1,-1,1", "--tokenizer", "builtin", "--no-progress", *extra]


class SimulatedKill(Exception):
    pass


def read_rows(path):
    return [json.loads(line) for line in open(path)]


@pytest.mark.slow
def test_rank_run_killed_and_resumed_matches_uninterrupted_run(tiny_policy, tmp_path, monkeypatch):
    full = tmp_path / "full" / "ranking.jsonl"
    assert ranking.main(rank_args(tiny_policy, full)) == 0
    rows = read_rows(full)
    assert [r["id"] for r in rows] == [f"synthetic-add1+add2-train-0-{i}" for i in range(12)]
    for row in rows:
        assert set(row) == {"id", "semantic_entropy", "n_clusters", "accuracy"}
        assert 0.0 <= row["semantic_entropy"] <= math.log(4) + 1e-9 and 1 <= row["n_clusters"] <= 4
        assert row["accuracy"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    sorted_rows = read_rows(tmp_path / "full" / "ranking.sorted.jsonl")
    assert sorted(rows, key=lambda r: (r["semantic_entropy"], r["id"])) == sorted_rows

    # Interrupted after the first batch of 4 prompts (the exception stands in for a kill) ...
    calls, kill_at_call = [], [2]
    real_generate = scoring.generate

    def failing_generate(model, prompts, config, rng, **kwargs):
        calls.append(len(prompts))
        if len(calls) in kill_at_call:
            raise SimulatedKill
        return real_generate(model, prompts, config, rng, **kwargs)

    monkeypatch.setattr(scoring, "generate", failing_generate)
    resumed = tmp_path / "resumed" / "ranking.jsonl"
    with pytest.raises(SimulatedKill):
        ranking.main(rank_args(tiny_policy, resumed))
    assert len(read_rows(resumed)) == 4
    with open(resumed, "a") as file:  # ... mid-way through writing a row
        file.write('{"id": "synthetic-add1+add2-train-0-4", "semantic_en')
    # ... and restarted: only the two unfinished batches are sampled, and the numbers match.
    calls.clear()
    kill_at_call.clear()
    assert ranking.main(rank_args(tiny_policy, resumed)) == 0
    assert calls == [4, 4]
    assert read_rows(resumed) == rows
    # A finished ranking reruns without sampling anything.
    calls.clear()
    assert ranking.main(rank_args(tiny_policy, resumed)) == 0 and calls == []
    # Resuming with different settings is refused rather than mixing two rankings.
    with pytest.raises(ValueError, match="different settings"):
        ranking.main(rank_args(tiny_policy, resumed, "--temperature", "0.5"))


def scripted_generate(answers_by_problem, tokenizer):
    """A stand-in for rollout.generate whose K responses to a prompt are scripted answers."""

    def generate(model, prompts, config, rng, **kwargs):
        texts = []
        for prompt in prompts:
            problem_text = tokenizer.decode(prompt).split("\n")[0]
            texts += [f"so \\boxed{{{a}}}" if a is not None else "no idea" for a in answers_by_problem[problem_text]]
        rows = [tokenizer.encode(t) + [tokenizer.eos_token_id] for t in texts]
        width = max(map(len, rows))
        tokens = np.array([r + [0] * (width - len(r)) for r in rows], np.int32)
        lengths = np.array([len(r) for r in rows], np.int32)
        mask = (np.arange(width)[None] < lengths[:, None]).astype(np.int32)
        logprobs = np.where(mask, -0.5, 0.0).astype(np.float32)  # sequence logp = -0.5 * length
        n = config.n
        return Rollout(prompt_tokens=np.zeros((len(rows), 1), np.int32), prompt_mask=np.ones((len(rows), 1), np.int32),
                       tokens=tokens, mask=mask, logprobs=logprobs, lengths=lengths, stopped=np.ones(len(rows), bool),
                       prompt_index=np.arange(len(rows)) // n)

    return generate


def test_rank_problems_scores_scripted_samples_by_hand(tmp_path, monkeypatch):
    tokenizer = load_tokenizer("builtin")
    problems = [Problem(id=f"q{i}", problem=f"Problem {i}", answer=answer) for i, answer in enumerate(["5", "0.5", "7"])]
    script = {
        "Problem 0": ["5", "5", "5", "5"],  # all agree, all correct
        "Problem 1": ["1/2", "0.5", "\\frac{1}{2}", "3"],  # equivalent forms cluster together
        "Problem 2": [None, None, "7", "8"],  # missing answers are singletons
    }
    monkeypatch.setattr(scoring, "generate", scripted_generate(script, tokenizer))
    settings = ranking.RankingSettings(samples=4, batch_prompts=2, verifier="math")
    rows = ranking.rank_problems(None, tokenizer, problems, tmp_path / "r.jsonl", settings, progress=False)
    def h(*p):
        return -sum(x * math.log(x) for x in p)
    expected = [
        {"id": "q0", "semantic_entropy": 0.0, "n_clusters": 1, "accuracy": 1.0},
        {"id": "q1", "semantic_entropy": h(0.75, 0.25), "n_clusters": 2, "accuracy": 0.75},
        {"id": "q2", "semantic_entropy": math.log(4), "n_clusters": 4, "accuracy": 0.25},
    ]
    for row, want in zip(rows, expected):
        assert row["id"] == want["id"] and row["n_clusters"] == want["n_clusters"]
        assert row["accuracy"] == want["accuracy"]
        assert row["semantic_entropy"] == pytest.approx(want["semantic_entropy"])
    assert read_rows(tmp_path / "r.jsonl") == rows

    # Likelihood weighting: p_k proportional to sum exp(-0.5 * length) over the cluster's responses.
    weighted = ranking.RankingSettings(samples=4, batch_prompts=2, verifier="math", weighting="likelihood")
    rows = ranking.rank_problems(None, tokenizer, problems[1:2], tmp_path / "w.jsonl", weighted, progress=False)
    lengths = np.array([len(tokenizer.encode(f"so \\boxed{{{a}}}")) + 1 for a in script["Problem 1"]])
    weights = np.exp(-0.5 * lengths)
    p = np.array([weights[:3].sum(), weights[3]]) / weights.sum()
    assert rows[0]["semantic_entropy"] == pytest.approx(float(-(p * np.log(p)).sum()))


@pytest.mark.slow
def test_two_hosts_rank_whole_batches_round_robin_and_host_zero_merges(tiny_policy, tmp_path, monkeypatch):
    """Two hosts simulated one after the other: host 1 ranks batches 1 and 3 into its part,
    host 0 batches 0 and 2, then merges: the one-host file, row for row (tests/multiprocess
    runs two real processes)."""
    from jax.experimental import multihost_utils

    args = ("--num-synthetic", "16", "--mesh", "none")
    single = tmp_path / "single" / "ranking.jsonl"
    assert ranking.main(rank_args(tiny_policy, single, *args)) == 0
    barriers = []
    monkeypatch.setattr(multihost_utils, "sync_global_devices", barriers.append)
    monkeypatch.setattr(ranking.jax, "process_count", lambda: 2)
    output = tmp_path / "hosts" / "ranking.jsonl"
    monkeypatch.setattr(ranking.jax, "process_index", lambda: 1)
    assert ranking.main(rank_args(tiny_policy, output, *args)) == 0
    part = read_rows(tmp_path / "hosts" / "ranking.jsonl.part-00001-of-00002")
    assert [r["id"] for r in part] == [f"synthetic-add1+add2-train-0-{i}" for i in (*range(4, 8), *range(12, 16))]
    assert not output.exists()
    monkeypatch.setattr(ranking.jax, "process_index", lambda: 0)
    assert ranking.main(rank_args(tiny_policy, output, *args)) == 0
    assert len(barriers) == 6 and not list(output.parent.glob("*.part-*"))
    assert read_rows(output) == read_rows(single)
    assert read_rows(tmp_path / "hosts" / "ranking.sorted.jsonl") == read_rows(tmp_path / "single" / "ranking.sorted.jsonl")
