"""`evaluate` and `entropy-rl eval` end to end on a tiny random Qwen3 and the built-in task."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from entropy_rl.data import load_tokenizer, synthetic_problems
from entropy_rl.eval import cli, flat_metrics, metrics, runner
from entropy_rl.model import tiny_config
from entropy_rl.rollout import Rollout, SamplingConfig, scoring

TOKENIZER = load_tokenizer("builtin")
# 12 problems, 4 samples each, 16 sequences per generate call -> chunks of 4 problems.
EVAL_ARGS = ["--benchmarks", "synthetic", "--max-problems", "12", "--n", "4", "--max-new-tokens", "16",
             "--batch-size", "16", "--tokenizer", "builtin", "--dtype", "float32", "--mesh", "none",
             "--save-responses", "--no-progress"]


def write_random_qwen3_checkpoint(path, config):
    """An HF Qwen3 checkpoint (config.json + model.safetensors) with N(0, 0.02) weights, written
    with numpy under transformers' tensor names: no model init to compile."""
    rng = np.random.default_rng(0)
    d, heads, kv, hd, ff = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                            config.head_dim, config.intermediate_size)
    shapes = {"model.embed_tokens.weight": (config.vocab_size, d), "model.norm.weight": (d,),
              "lm_head.weight": (config.vocab_size, d)}
    for i in range(config.num_hidden_layers):
        layer = f"model.layers.{i}."
        shapes.update({
            layer + "self_attn.q_proj.weight": (heads * hd, d), layer + "self_attn.k_proj.weight": (kv * hd, d),
            layer + "self_attn.v_proj.weight": (kv * hd, d), layer + "self_attn.o_proj.weight": (d, heads * hd),
            layer + "self_attn.q_norm.weight": (hd,), layer + "self_attn.k_norm.weight": (hd,),
            layer + "mlp.gate_proj.weight": (ff, d), layer + "mlp.up_proj.weight": (ff, d),
            layer + "mlp.down_proj.weight": (d, ff), layer + "input_layernorm.weight": (d,),
            layer + "post_attention_layernorm.weight": (d,),
        })
    tensors = {name: (np.ones(shape) if len(shape) == 1 else rng.normal(0, 0.02, shape)).astype(np.float32)
               for name, shape in shapes.items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config.to_hf_dict()))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen3")
    write_random_qwen3_checkpoint(path, tiny_config(vocab_size=TOKENIZER.vocab_size))
    return path


def rows_by_id(path):
    return {row["id"]: row for row in map(json.loads, path.read_text().splitlines())}


@pytest.mark.slow
def test_eval_cli_end_to_end_then_resume_after_interruption(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "eval"
    args = ["--checkpoint", str(tiny_checkpoint), "--output", str(out), *EVAL_ARGS]
    assert cli.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    table = summary["benchmarks"]["synthetic"]
    assert table["num_problems"] == 12 and table["n"] == 4
    assert set(table) >= {"accuracy", "avg@1", "avg@4", "pass@1", "pass@4"} and "pass@8" not in table
    rows = rows_by_id(out / "results.jsonl")
    assert len(rows) == 12
    assert all(len(r["correct"]) == 4 and len(r["responses"]) == 4 for r in rows.values())
    assert all(1 <= length <= 16 for r in rows.values() for length in r["response_lengths"])
    # the summary is the metrics of the recorded rows
    expected = metrics.benchmark_metrics([r["correct"] for r in rows.values()], metrics.DEFAULT_KS)
    assert {k: table[k] for k in expected} == pytest.approx(expected)
    assert "| synthetic | 12 | 4 |" in (out / "summary.md").read_text()
    assert "| synthetic | 12 | 4 |" in capsys.readouterr().out

    # Interruption: the first chunk and one row of the second were written, the third row
    # of the file was half-written when the process died.
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:5]) + lines[5][:20])
    (out / "summary.json").unlink()
    assert cli.main(args) == 0
    assert json.loads((out / "summary.json").read_text())["benchmarks"] == summary["benchmarks"]
    assert rows_by_id(out / "results.jsonl") == rows  # same samples, responses included
    assert len((out / "results.jsonl").read_text().splitlines()) == 12

    # Everything recorded: a rerun samples nothing.
    monkeypatch.setattr(scoring, "generate", lambda *a, **k: pytest.fail("resampled a recorded problem"))
    assert cli.main(args) == 0
    assert json.loads((out / "summary.json").read_text())["benchmarks"] == summary["benchmarks"]

    # Other sampling settings into the same results: refused, nothing lost.
    assert cli.main(args + ["--temperature", "0.7"]) == 1
    assert "temperature: recorded 1.0, now 0.7" in capsys.readouterr().err
    assert rows_by_id(out / "results.jsonl") == rows


def num_correct_for(answer: str, n: int) -> int:
    """How many of its n samples the scripted policy answers correctly: |answer| mod (n + 1)."""
    return abs(int(answer)) % (n + 1)


def scripted_generate(answer_of_prompt):
    """A `generate` whose sample j of a prompt is "\\boxed{<answer>}" iff j < num_correct_for(answer, n)."""

    def generate(model, prompts, config, rng, *, mesh=None, progress=False):
        texts = []
        for prompt in prompts:
            answer = answer_of_prompt[tuple(prompt)]
            good = num_correct_for(answer, config.n)
            texts += [f"so \\boxed{{{answer}}}" if j < good else "\\boxed{x}" for j in range(config.n)]
        ids = [TOKENIZER.encode(text) + [TOKENIZER.eos_token_id] for text in texts]
        lengths = np.array([len(seq) for seq in ids], np.int32)
        tokens = np.zeros((len(ids), config.max_new_tokens), np.int32)
        for row, seq in enumerate(ids):
            tokens[row, : len(seq)] = seq
        mask = (np.arange(config.max_new_tokens) < lengths[:, None]).astype(np.int32)
        ones = np.ones((len(ids), 1), np.int32)
        return Rollout(ones, ones, tokens, mask, np.zeros(tokens.shape, np.float32), lengths,
                       np.ones(len(ids), bool), np.repeat(np.arange(len(prompts)), config.n))

    return generate


def test_evaluate_counts_verified_answers_per_benchmark(monkeypatch, tmp_path):
    from entropy_rl.data import format_prompt

    problems = {"easy": synthetic_problems(7, seed=1, split="test"), "hard": synthetic_problems(5, seed=2, split="test")}
    answers = {tuple(TOKENIZER.encode(format_prompt(p, TOKENIZER))): p.answer for ps in problems.values() for p in ps}
    monkeypatch.setattr(scoring, "generate", scripted_generate(answers))
    n = {"easy": 4, "hard": 8}
    summary = runner.evaluate(None, TOKENIZER, problems, n=n, sampling=SamplingConfig(max_new_tokens=32),
                              batch_size=8, verifiers={"easy": "synthetic", "hard": "math"},
                              results_path=tmp_path / "results.jsonl")
    for name, ps in problems.items():
        counts = np.array([num_correct_for(p.answer, n[name]) for p in ps])
        correct = [[1] * c + [0] * (n[name] - c) for c in counts]
        table = summary["benchmarks"][name]
        assert table["accuracy"] == pytest.approx(counts.mean() / n[name])
        assert table["avg@1"] == pytest.approx(np.mean(counts > 0))
        assert table["avg@4"] == pytest.approx(metrics.avg_at_k(correct, 4))
        assert table["pass@4"] == pytest.approx(metrics.pass_at_k(n[name], counts, 4).mean())
        assert table["truncated_fraction"] == 0.0
    assert "pass@8" in summary["benchmarks"]["hard"] and "pass@8" not in summary["average"]
    assert summary["average"]["accuracy"] == pytest.approx(
        np.mean([summary["benchmarks"][b]["accuracy"] for b in problems]))
    logged = flat_metrics(summary)
    assert logged["eval/hard/pass@8"] == summary["benchmarks"]["hard"]["pass@8"]
    assert logged["eval/average/avg@4"] == summary["average"]["avg@4"]


def test_evaluate_rejects_bad_problem_sets():
    sampling = SamplingConfig(max_new_tokens=4)
    with pytest.raises(ValueError, match="no problems"):
        runner.evaluate(None, TOKENIZER, {"empty": []}, n=2, sampling=sampling)
    twice = synthetic_problems(1, seed=0, split="test") * 2
    with pytest.raises(ValueError, match="more than once"):
        runner.evaluate(None, TOKENIZER, {"dup": twice}, n=2, sampling=sampling)


def test_parse_benchmarks(tmp_path):
    problems_file = tmp_path / "mine.jsonl"
    problems_file.write_text('{"problem": "1+1?", "answer": "2"}\n')
    got = cli.parse_benchmarks(f"aime24:32,math500,{problems_file}:8", default_n=4)
    assert got == {"aime24": ("aime24", 32), "math500": ("math500", 4), "mine": (str(problems_file), 8)}
    with pytest.raises(ValueError, match="given twice"):
        cli.parse_benchmarks("aime24,aime24:4", default_n=4)
    with pytest.raises(ValueError, match="bad sample count"):
        cli.parse_benchmarks("aime24:x", default_n=4)

def test_benchmark_problems():
    assert len(runner.benchmark_problems("aime24")) == 30
    assert [p.id for p in runner.benchmark_problems("minerva", max_problems=3)] == [
        "minerva_math-0", "minerva_math-1", "minerva_math-2"]
    synthetic = runner.benchmark_problems("synthetic")
    assert len(synthetic) == runner.SYNTHETIC_SIZE and all(p.source == "synthetic" for p in synthetic)
    assert runner.benchmark_problems("synthetic", max_problems=500)[:200] == synthetic
    adds = runner.benchmark_problems("synthetic", max_problems=5, synthetic_seed=3, synthetic_levels=("add2",))
    assert adds == synthetic_problems(5, seed=3, levels=("add2",), split="test")
    with pytest.raises(ValueError, match="neither a file nor a shipped benchmark"):
        runner.benchmark_problems("aime2024")


def test_checkpoint_dispatch_hf_directory_or_run_directory(tiny_checkpoint, tmp_path, monkeypatch):
    from entropy_rl import policy

    model, tokenizer = cli.load_checkpoint(str(tiny_checkpoint), tokenizer="builtin", step=None, dtype="float32", mesh=None)
    assert model.config.vocab_size == TOKENIZER.vocab_size and tokenizer.vocab_size == TOKENIZER.vocab_size
    calls = []

    def load_policy(path, *, step=None, mesh=None):
        calls.append((path, step, mesh))
        return model, "run tokenizer"

    monkeypatch.setattr(policy, "load_policy", load_policy)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert cli.load_checkpoint(str(run_dir), tokenizer=None, step=7, dtype="float32", mesh=None) == (model, "run tokenizer")
    assert calls == [(str(run_dir), 7, None)]
    _, override = cli.load_checkpoint(str(run_dir), tokenizer="builtin", step=None, dtype="float32", mesh=None)
    assert override.vocab_size == TOKENIZER.vocab_size


def test_evaluate_interrupted_between_chunks_resumes_without_resampling(monkeypatch, tmp_path):
    from entropy_rl.data import format_prompt

    problems = {"synthetic": synthetic_problems(10, seed=3, split="test")}
    # "synthetic" prompts carry no instruction by default, as in training
    answers = {tuple(TOKENIZER.encode(format_prompt(p, TOKENIZER, instruction=""))): p.answer
               for p in problems["synthetic"]}
    scripted = scripted_generate(answers)
    calls = []

    def interrupted_generate(model, prompts, config, rng, **kwargs):
        calls.append(len(prompts))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return scripted(model, prompts, config, rng, **kwargs)

    monkeypatch.setattr(scoring, "generate", interrupted_generate)
    kwargs = dict(n=4, sampling=SamplingConfig(max_new_tokens=32), batch_size=12)  # chunks of 3 problems
    with pytest.raises(KeyboardInterrupt):
        runner.evaluate(None, TOKENIZER, problems, results_path=tmp_path / "a.jsonl", **kwargs)
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 3  # the first chunk survived
    resumed = runner.evaluate(None, TOKENIZER, problems, results_path=tmp_path / "a.jsonl", **kwargs)
    assert calls == [3, 3, 3, 3, 1]  # chunk 0, interrupted chunk 1, then chunks 1, 2, 3 only
    monkeypatch.setattr(scoring, "generate", scripted)
    uninterrupted = runner.evaluate(None, TOKENIZER, problems, results_path=tmp_path / "b.jsonl", **kwargs)
    assert resumed == uninterrupted
    assert rows_by_id(tmp_path / "a.jsonl") == rows_by_id(tmp_path / "b.jsonl")


def test_cli_errors_are_clear(tiny_checkpoint, tmp_path, capsys):
    args = ["--benchmarks", "synthetic", "--output", str(tmp_path / "out"), "--mesh", "none"]
    assert cli.main(["--checkpoint", str(tiny_checkpoint), *args]) == 1  # no tokenizer files there
    assert "has no tokenizer" in capsys.readouterr().err
    assert cli.main(["--checkpoint", str(tmp_path / "nowhere"), *args]) == 1
    assert "not a run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--checkpoint", str(tiny_checkpoint), "--benchmarks", "aime2024"])
    assert "neither a file nor a shipped benchmark" in capsys.readouterr().err
