"""`entropy-rl plot`: figure families, panels per key, runs overlaid, PNGs written."""

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from entropy_rl.eval import plot

TRAIN_KEYS = [
    "reward/mean", "accuracy", "entropy/mean", "entropy/p10", "entropy/p50", "entropy/p90",
    "kl/ref", "response_length/mean", "response_length/max", "grad_norm", "lr",
]


def write_run(run_dir, *, steps, fraction_key, seed, eval_every=5):
    """A metrics.jsonl as the trainer writes it: one row per step, eval scores every few steps."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    with (run_dir / "metrics.jsonl").open("w") as f:
        for step in range(1, steps + 1):
            row = {"step": step, "time": 1000.0 + step}
            row.update({key: float(rng.random()) for key in TRAIN_KEYS})
            row[fraction_key] = float(rng.random() * 1e-3)
            if step % eval_every == 0:
                row["eval/synthetic/avg@4"] = float(rng.random())
                row["eval/synthetic/pass@4"] = float(rng.random())
            f.write(json.dumps(row) + "\n")


@pytest.fixture
def two_runs(tmp_path):
    write_run(tmp_path / "grpo", steps=20, fraction_key="loss/clip_fraction", seed=0)
    write_run(tmp_path / "stapo", steps=15, fraction_key="loss/spurious_fraction", seed=1)
    return [tmp_path / "grpo", tmp_path / "stapo"]


def test_families_group_keys_by_prefix():
    assert plot.family_of("entropy/p90")[0] == "entropy"
    assert plot.family_of("accuracy")[0] == "reward"
    assert plot.family_of("loss/spurious_fraction")[0] == "token_fractions"
    assert plot.family_of("loss/clip_frac_low")[0] == "token_fractions"
    assert plot.family_of("groups/zero_variance_fraction")[0] == "groups"
    assert plot.family_of("loss/approx_kl")[0] == "kl"
    assert plot.family_of("loss/pg_loss")[0] == "loss"
    assert plot.family_of("eval/aime24/avg@32")[0] == "eval"
    assert plot.family_of("timing/rollout_s")[0] == "timing"  # a new family, no code change
    assert plot.family_of("lr")[0] == "misc"


def test_figures_have_one_panel_per_key_and_one_line_per_run(two_runs):
    runs = {d.name: plot.read_metrics(d) for d in two_runs}
    figures = plot.make_figures(runs)
    try:
        panels = {family: [ax.get_title() for ax in fig.axes] for family, fig in figures.items()}
        assert panels == {
            "reward": ["accuracy", "reward/mean"],
            "entropy": ["entropy/mean", "entropy/p10", "entropy/p50", "entropy/p90"],
            "kl": ["kl/ref"],
            "response_length": ["response_length/max", "response_length/mean"],
            "eval": ["eval/synthetic/avg@4", "eval/synthetic/pass@4"],
            "token_fractions": ["loss/clip_fraction", "loss/spurious_fraction"],
            "misc": ["grad_norm", "lr"],
        }
        entropy_ax = figures["entropy"].axes[3]
        assert [line.get_label() for line in entropy_ax.get_lines()] == ["grpo", "stapo"]
        assert [len(line.get_xdata()) for line in entropy_ax.get_lines()] == [20, 15]
        np.testing.assert_array_equal(figures["eval"].axes[0].get_lines()[0].get_xdata(), [5, 10, 15, 20])
        # each run drew only the fraction it logs
        fraction_ax = figures["token_fractions"].axes[1]
        assert [line.get_label() for line in fraction_ax.get_lines()] == ["stapo"]
        assert fraction_ax.get_lines()[0].get_color() == entropy_ax.get_lines()[1].get_color()  # same run colour
    finally:
        for fig in figures.values():
            plt.close(fig)


def test_main_writes_one_png_per_family(two_runs, tmp_path, capsys):
    out = tmp_path / "plots"
    assert plot.main([str(d) for d in two_runs] + ["--output", str(out), "--smooth", "0.5"]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(f"{f}.png" for f in
                          ["reward", "entropy", "kl", "response_length", "eval", "token_fractions", "misc"])
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert str(out / "entropy.png") in capsys.readouterr().out


def test_resumed_run_merges_repeated_steps(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 1, "reward/mean": 0.1}, {"step": 2, "reward/mean": 0.2}, {"step": 2, "reward/mean": 0.25},
            {"step": 2, "eval/synthetic/avg@4": 0.5}, {"step": 3, "reward/mean": 0.3}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "rew')
    got = plot.read_metrics(run)
    assert got == [{"step": 1, "reward/mean": 0.1}, {"step": 2, "reward/mean": 0.25, "eval/synthetic/avg@4": 0.5},
                   {"step": 3, "reward/mean": 0.3}]


def test_missing_run_is_a_clear_error(tmp_path, capsys):
    assert plot.main([str(tmp_path / "nope")]) == 1
    assert "no metrics file" in capsys.readouterr().err


@pytest.mark.slow
def test_plot_of_a_recorded_training_run(tmp_path):
    """The metrics.jsonl of a real 6-step STAPO run (tests/data/PROVENANCE.md)."""
    recorded = Path(__file__).parents[1] / "data" / "eval_metrics_stapo_tiny.jsonl"
    rows = plot.read_metrics(recorded)
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]  # eval rows merged into their steps
    assert [row.get("eval/accuracy") is not None for row in rows] == [False, False, True, False, False, True]
    # make_figures draws one panel per key of group_keys (test above); matplotlib is slow, so
    # the figures of this run are only drawn once, by main below.
    panels = {family: keys for family, (_, keys) in plot.group_keys({"stapo": rows}).items()}
    assert panels["reward"] == ["accuracy", "reward/mean"]
    assert panels["entropy"] == ["entropy/mean", "entropy/negative_adv", "entropy/p10", "entropy/p50",
                                 "entropy/p90", "entropy/positive_adv"]
    assert panels["token_fractions"] == ["loss/clip_frac_dual", "loss/clip_frac_high", "loss/clip_frac_low",
                                         "loss/masked_fraction", "loss/spurious_fraction"]
    assert panels["kl"] == ["loss/approx_kl"]
    assert panels["eval"] == ["eval/accuracy"]
    assert panels["response_length"] == ["response_length/max", "response_length/mean",
                                         "response_length/truncated_fraction"]
    assert "time" not in panels["misc"] and "step" not in panels["misc"]
    all_keys = {key for row in rows for key in row} - {"step", "time"}
    assert sorted(key for titles in panels.values() for key in titles) == sorted(all_keys)  # nothing dropped

    out = tmp_path / "plots"
    assert plot.main([str(recorded), "--output", str(out)]) == 0
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(panels)
    assert all(p.stat().st_size > 5000 for p in out.glob("*.png"))
