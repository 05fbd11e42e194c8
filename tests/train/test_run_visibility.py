"""What a run tells its user and keeps in its run directory, and per-batch prompt buckets.

One tiny STAPO run (1-layer policy, the real Qwen3 tokenizer, a problem file with a repeated
problem and one very long prompt, 2 steps) then a resume of it (its summary removed) serve most tests:
the padded prompt length of every step is that of its own batch (not the dataset's longest),
samples.jsonl's per-token flags add up to loss/spurious_fraction, the step-0 eval is in
metrics.jsonl, summary.json / summary.txt are written, the resume names its step.
"""

import contextlib
import io
import json
import math
import pathlib

import numpy as np
import pytest

from entropy_rl.config import ModelConfig
from entropy_rl.data import Problem, PromptIterator, deduplicate, load_problems
from entropy_rl.policy import build_policy, load_policy_tokenizer
from entropy_rl.rewards import RewardResult, register_verifier
from entropy_rl.rollout.batching import geometric_bucket
from entropy_rl.train import data_setup, experience, loop, step_checks
from entropy_rl.train.config import ConfigError, TrainConfig, config_from_dict, replace
from entropy_rl.train.metrics import read_metrics
from entropy_rl.train.progress import PlainProgress
from entropy_rl.train.samples import SAMPLES_FILE
from entropy_rl.train.summary import SUMMARY_FILE, SUMMARY_TABLE_FILE

# one worker builds the module's compiled fixture (`--dist loadgroup`), not both
pytestmark = pytest.mark.xdist_group("run-visibility")

QWEN3_TOKENIZER = str(pathlib.Path(__file__).parents[1] / "data" / "qwen3_tokenizer")
BUCKET = 16
LONG_ID = "long-one"


@register_verifier("test_odd_length")
def odd_length_rewards(responses, ground_truths, *, timeout_s=None):
    """1 for a response of odd character length: rewards that differ within a group, so STAPO
    has positive advantages (and spurious tokens) under a random policy."""
    del ground_truths, timeout_s
    return RewardResult(np.asarray([len(r) % 2 for r in responses], np.float32))


def _problem_file(directory: pathlib.Path) -> pathlib.Path:
    rows = [{"id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(7)]
    rows.append({"id": "p0-again", "problem": "What is 0 +  0?", "answer": "0"})  # a repeat (whitespace aside)
    rows.append({"id": LONG_ID, "problem": "Add these numbers: " + " + ".join(str(i) for i in range(150)),
                 "answer": str(sum(range(150)))})
    path = directory / "problems.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _config(tmp_path: pathlib.Path, **overrides) -> TrainConfig:
    values = {
        "run_dir": str(tmp_path / "run"), "total_steps": 2,
        "data.dataset": str(_problem_file(tmp_path)), "data.verifier": "test_odd_length", "data.batch_size": 2,
        "algorithm.mini_batch_size": 2, "algorithm.loss.stapo.prob_threshold": 0.5,
        "rollout.n": 4, "rollout.max_new_tokens": 4, "rollout.response_bucket": 4, "rollout.prompt_bucket": BUCKET,
        "model.tokenizer": QWEN3_TOKENIZER, "model.hidden_size": 32, "model.intermediate_size": 64,
        "model.num_hidden_layers": 1, "model.num_attention_heads": 2, "model.num_key_value_heads": 1,
        "model.head_dim": 16, "model.max_position_embeddings": 2048,  # the 659-token prompt: a 1024 bucket + responses
        "warmstart.enabled": False, "eval.benchmark": str(tmp_path / "problems.jsonl"),
        "eval.num_problems": 2, "eval.n": 4, "logging.tensorboard": False, "logging.samples_per_step": 8,
    }
    return replace(TrainConfig(), **values | overrides)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """(config, summary, printed text of the run, printed text of its resume, summary of the resume)."""
    tmp_path = tmp_path_factory.mktemp("visible")
    config = _config(tmp_path)
    first, second = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(first):
        summary = loop.train(config)
    for name in (SUMMARY_FILE, SUMMARY_TABLE_FILE):  # as if stopped before the summary was written
        (pathlib.Path(config.run_dir) / name).unlink()
    with contextlib.redirect_stdout(second):
        resumed = loop.train(config)  # every step is done: restores the last, evaluates, summarises
    return config, summary, first.getvalue(), second.getvalue(), resumed


@pytest.mark.slow
def test_each_batch_is_padded_to_its_own_bucket(finished_run):
    config, _, printed, _, _ = finished_run
    assert "1 repeated problems removed" in printed
    tokenizer = load_policy_tokenizer(config.model)
    encode = data_setup.PromptEncoder(config, tokenizer)
    problems = deduplicate(load_problems(config.data.dataset))[0]
    iterator = PromptIterator(problems, config.data.batch_size, seed=config.seed)  # replays the run's batches
    used = [row["rollout/prompt_length"] for row in read_metrics(config.run_dir) if "rollout/prompt_length" in row]
    expected = [geometric_bucket(max(len(encode(p)) for p in iterator.next_batch()), BUCKET) for _ in used]
    assert used == expected and len(used) == config.total_steps
    longest = geometric_bucket(max(len(encode(p)) for p in problems), BUCKET)
    assert longest >= 8 * BUCKET and min(used) < longest  # the batches without the long prompt stay short


def test_samples_carry_the_fields_and_stapo_flags_match_the_loss(finished_run):
    config, _, _, _, _ = finished_run
    rows = [json.loads(line) for line in (pathlib.Path(config.run_dir) / SAMPLES_FILE).read_text().splitlines()]
    metrics = {row["step"]: row for row in read_metrics(config.run_dir) if "loss/spurious_fraction" in row}
    assert sorted({row["step"] for row in rows}) == [1, 2]
    flagged_total = 0
    for step, spurious_fraction in ((s, m["loss/spurious_fraction"]) for s, m in metrics.items()):
        step_rows = [row for row in rows if row["step"] == step]
        assert len(step_rows) == config.data.batch_size * config.rollout.n  # every row kept (samples_per_step=8)
        for row in step_rows:
            assert {"prompt", "response", "reward", "answer", "length", "advantage", "logp", "entropy", "flagged",
                    "dropped", "penalised"} <= row.keys() and row["flag"] == "loss/spurious_fraction"
            assert "What is" in row["prompt"] or "Add these" in row["prompt"]
            assert len(row["logp"]) == len(row["entropy"]) == len(row["flagged"]) == row["length"]
            assert row["reward"] == len(row["response"]) % 2  # text decoded as the verifier saw it
            for logp, flagged in zip(row["logp"], row["flagged"]):
                if flagged:  # STAPO's spurious token: positive advantage, low probability
                    assert row["advantage"] > 0 and math.exp(logp) < 0.5
            assert row["dropped"] == row["flagged"] and not any(row["penalised"])  # STAPO drops, never penalises
        flagged = sum(sum(row["flagged"]) for row in step_rows)
        assert flagged / sum(row["length"] for row in step_rows) == pytest.approx(spurious_fraction, abs=1e-6)
        flagged_total += flagged
    assert flagged_total > 0  # the comparison is not vacuous


@pytest.mark.slow
def test_step_zero_eval_summary_files_and_resume_line(finished_run):
    config, summary, printed, resumed, resumed_summary = finished_run
    rows = read_metrics(config.run_dir)
    zero = [row for row in rows if row["step"] == 0]
    assert len(zero) == 1 and zero[0]["eval/accuracy"] == summary["accuracy_before"]
    saved = json.loads((pathlib.Path(config.run_dir) / SUMMARY_FILE).read_text())  # the latest (re)start's
    assert saved == json.loads(json.dumps({k: v for k, v in resumed_summary.items() if k != "table"}))
    assert saved["accuracy_after"] == summary["accuracy_after"]  # the same policy and held-out samples
    assert (pathlib.Path(config.run_dir) / SUMMARY_TABLE_FILE).read_text() == resumed_summary["table"] + "\n"
    assert "held-out eval (before training)" in printed and "held-out eval (final)" in printed
    assert f"resuming from step 2 of 2 ({config.run_dir}" in resumed and "before training" not in resumed
    assert "\r" not in printed and "step 2/2 (100%)" in printed  # plain lines, not a redrawn bar


def test_max_prompt_length_drops_and_names_long_prompts(tmp_path):
    config = _config(tmp_path, **{"data.max_prompt_length": 64})
    encode = data_setup.PromptEncoder(config, load_policy_tokenizer(config.model))
    problems = data_setup.training_problems(config)
    long_length = len(encode(next(p for p in problems if p.id == LONG_ID)))
    with pytest.warns(UserWarning, match=rf"1 of 8 prompts are longer and left out: '{LONG_ID}' \({long_length} tokens\)"):
        kept = data_setup.drop_long_prompts(problems, encode, config.data.max_prompt_length)
    assert [p.id for p in kept] == [p.id for p in problems if p.id != LONG_ID]
    with pytest.raises(ValueError, match="every prompt is longer"), pytest.warns(UserWarning, match="8 of 8"):
        data_setup.drop_long_prompts(problems, encode, 2)


def test_plain_progress_prints_lines_at_an_interval():
    now = [0.0]
    lines = []
    progress = PlainProgress(total=10, every_s=30, clock=lambda: now[0])
    progress.write = lines.append
    for step in range(1, 11):
        now[0] = 10.0 * step
        progress.set_postfix({"reward": "0.5"})
        progress.update(1)
    # the first step, then every 30 s, then the last step
    assert [line.split()[1] for line in lines] == ["1/10", "4/10", "7/10", "10/10"]
    assert lines[1] == "step 4/10 (40%)  elapsed 0:00:40  eta 0:01:00  reward=0.5"


def test_tokenizer_larger_than_the_vocabulary_is_named_before_any_work():
    model = ModelConfig(tokenizer=QWEN3_TOKENIZER, vocab_size=1000, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    size = load_policy_tokenizer(model).vocab_size
    with pytest.raises(ValueError, match=rf"has {size} token ids but the model \(built-in\) has a vocabulary of 1000"):
        build_policy(model, seed=0)


def test_curriculum_keys_ranking_file_and_on_missing(tmp_path):
    with pytest.raises(ConfigError, match="entropy-rl rank.*ranking_file=null"):
        config_from_dict({"data": {"curriculum": {"ranking_file": str(tmp_path / "missing.jsonl")}}})
    ranking = tmp_path / "ranking.jsonl"
    ranking.write_text("".join(json.dumps({"id": f"p{i}", "semantic_entropy": i / 10}) + "\n" for i in range(4)))
    problems = [Problem(f"p{i}", f"q{i}", "1") for i in range(5)]  # p4 has no ranking row
    config = config_from_dict({"data": {"batch_size": 2, "curriculum": {"ranking_file": str(ranking), "on_missing": "drop"}},
                               "algorithm": {"mini_batch_size": 2}})
    iterator = data_setup.make_iterator(config, problems)
    assert {p.id for _ in range(2) for p in iterator.next_batch()} == {"p0", "p1"}  # stage 1: low entropy
    with pytest.raises(ValueError, match="on_missing=drop"):
        data_setup.make_iterator(replace(config, **{"data.curriculum.on_missing": "error"}), problems)


def test_rank_deduplicates_like_training(tmp_path, capsys):
    from entropy_rl.ranking import RankCommandConfig, load_dataset

    path = _problem_file(tmp_path)
    config = RankCommandConfig(policy="unused", output=str(tmp_path / "ranking.jsonl"),
                               data={"dataset": str(path), "verifier": "math"})
    problems = load_dataset(config)
    assert len(problems) == 8 and len({p.id for p in problems}) == 8 and "p0-again" not in {p.id for p in problems}
    assert "1 repeated problems removed" in capsys.readouterr().err
    assert len(load_dataset(config.model_copy(update={"data": config.data.model_copy(update={"deduplicate": False})}))) == 9


def test_steps_without_learning_signal_or_answers_are_warned_then_counted():
    run, lines = step_checks.Run(), []
    silent = {"groups/zero_variance_fraction": 1.0, "accuracy": 0.0, "reward/no_answer_fraction": 0.9}
    for step in range(1, 13):
        step_checks.warn_without_signal(run, silent, step, verifier="math", write=lines.append)
    step_checks.warn_without_signal(run, {**silent, "groups/zero_variance_fraction": 0.5, "reward/no_answer_fraction": 0.5},
                             13, verifier="math", write=lines.append)
    assert run.steps_without_signal == run.steps_without_answers == 12
    assert [line.split(":")[0] for line in lines] == ["warning"] * 4  # steps 1 and 11, each kind
    assert "step 1: no learning signal" in lines[0] and "'math' verifier found no answer in 90%" in lines[1]
    assert "step 11: no learning signal" in lines[2] and "(11 such steps so far)" in lines[2]


def test_groups_of_different_prompt_buckets_concatenate_left_padded():
    from entropy_rl.rollout import Rollout

    def groups(width, value):
        rows = 2
        rollout = Rollout(prompt_tokens=np.full((rows, width), value, np.int32), prompt_mask=np.ones((rows, width), np.int32),
                          tokens=np.zeros((rows, 3), np.int32), mask=np.ones((rows, 3), np.int32),
                          logprobs=np.zeros((rows, 3), np.float32), lengths=np.full(rows, 3, np.int32),
                          stopped=np.ones(rows, bool), prompt_index=np.arange(rows))
        return experience.Groups(rollout, np.zeros(rows, np.float32), np.zeros(rows, np.float32), [None] * rows)

    joined = experience.Groups.concatenate([groups(2, 7), groups(4, 9)]).rollout
    assert joined.prompt_tokens.tolist() == [[0, 0, 7, 7]] * 2 + [[9, 9, 9, 9]] * 2
    assert joined.prompt_mask.tolist() == [[0, 0, 1, 1]] * 2 + [[1, 1, 1, 1]] * 2


def test_a_fresh_start_rewrites_the_log_so_step_zero_is_logged_once(tmp_path):
    from entropy_rl.config import LoggingConfig
    from entropy_rl.train.metrics import MetricsLogger

    quiet = LoggingConfig(tensorboard=False, progress_bar=False)
    for _ in range(2):  # killed before its first checkpoint, then started again from step 0
        with MetricsLogger(tmp_path, quiet, total_steps=2) as logger:
            logger.log(0, {"eval/accuracy": 0.25})
            logger.log(1, {"loss": 1.0})
    assert [row["step"] for row in read_metrics(tmp_path)] == [0, 1]
