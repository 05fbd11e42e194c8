"""`entropy-rl compare` on hand-written run directories (config.yaml, metrics.jsonl, summary.json
as the trainer writes them): every number of the report recomputed here with numpy and
scipy.stats, and the inputs it refuses."""

import json
import math
import re

import numpy as np
import pytest
import yaml
from scipy import stats as scipy_stats

from entropy_rl.sweep import compare

STEPS = 6
FLAGS = {"ppo_clip": None, "stapo": "loss/spurious_fraction"}


def write_run(path, algorithm, seed, rng, *, finished=True, dataset="synthetic"):
    """A run of STEPS steps with random curves; returns the values compare should derive from it."""
    path.mkdir(parents=True)
    config = {"seed": seed, "run_dir": str(path), "total_steps": STEPS, "algorithm": {"name": algorithm},
              "data": {"dataset": dataset, "batch_size": 4}, "eval": {"benchmark": dataset, "every_steps": 3},
              "logging": {"progress_bar": False}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    entropy = np.concatenate([[1.0], rng.uniform(0.2, 1.0, STEPS - 1)])
    p10, p90 = entropy * 0.5, entropy * 1.5
    flagged = rng.uniform(0, 0.01, STEPS)
    accuracy = rng.uniform(0, 1, 3)  # evaluations at steps 0, 3, 6
    rows = [{"step": 0, "eval/accuracy": accuracy[0]}]
    for step in range(1, STEPS + 1):
        row = {"step": step, "entropy/mean": entropy[step - 1], "entropy/p10": p10[step - 1],
               "entropy/p90": p90[step - 1], "time/step_s": 1.0}
        if FLAGS[algorithm]:
            row[FLAGS[algorithm]] = flagged[step - 1]
        rows.append(row)
        if step % 3 == 0:
            rows.append({"step": step, "eval/accuracy": accuracy[step // 3]})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        (path / "summary.json").write_text(json.dumps(
            {"method": algorithm, "steps": STEPS, "accuracy_before": accuracy[0], "accuracy_after": accuracy[-1]}))
    below = np.flatnonzero(entropy < 0.5 * entropy[0])
    return {"accuracy_before": accuracy[0], "accuracy_after": accuracy[-1], "accuracy_gain": accuracy[-1] - accuracy[0],
            "entropy_start": entropy[0], "entropy_min": entropy.min(), "entropy_end": entropy[-1],
            "steps_to_collapse": below[0] + 1.0 if len(below) else math.nan,
            "flagged_fraction": flagged.mean() if FLAGS[algorithm] else math.nan,
            "late_stage_drop": accuracy.max() - accuracy[-1]}


@pytest.fixture
def runs(tmp_path):
    rng = np.random.default_rng(0)
    expected = {}
    for label, algorithm in (("grpo", "ppo_clip"), ("stapo", "stapo")):
        expected[label] = [write_run(tmp_path / f"{label}-seed{seed}", algorithm, seed, rng) for seed in (0, 1)]
    return tmp_path, expected


def _interval(values):
    x = np.asarray([v for v in values if not math.isnan(v)])
    if len(x) == 0:
        return (math.nan, math.nan, math.nan)
    if len(x) == 1:
        return (x[0], math.nan, math.nan)
    if np.all(x == x[0]):  # scipy gives nan for a zero scale; every seed equal is a zero-width interval
        return (x[0], x[0], x[0])
    return (x.mean(), *scipy_stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=scipy_stats.sem(x)))


def test_report_numbers_recomputed_independently(runs, capsys):
    root, expected = runs
    assert compare.main([str(root), "-o", str(root / "report")]) == 0
    result = json.loads((root / "report" / "compare.json").read_text())
    assert list(result["methods"]) == ["grpo", "stapo"]
    for method, seeds in expected.items():
        got = result["methods"][method]
        assert got["seeds"] == [0, 1]
        for quantity in compare.QUANTITIES:
            interval = got["intervals"][quantity]
            want = _interval([s[quantity] for s in seeds])
            assert [interval["mean"], interval["low"], interval["high"]] == pytest.approx(want, rel=1e-9, nan_ok=True), \
                (method, quantity)
    [test] = result["paired_gain_tests"]
    want = scipy_stats.ttest_rel([s["accuracy_gain"] for s in expected["grpo"]],
                                 [s["accuracy_gain"] for s in expected["stapo"]])
    assert (test["a"], test["b"], test["seeds"]) == ("grpo", "stapo", [0, 1])
    assert (test["t"], test["p"]) == pytest.approx((want.statistic, want.pvalue), rel=1e-9)

    report = (root / "report" / "report.md").read_text()
    gain = _interval([s["accuracy_gain"] for s in expected["stapo"]])
    assert f"{100 * gain[0]:.1f} [{100 * gain[1]:.1f}, {100 * gain[2]:.1f}]" in report
    assert "| grpo | stapo | 0, 1 |" in report and "(loss/spurious_fraction)" in report
    for name in ("accuracy", "entropy", "entropy_percentiles"):
        assert (root / "report" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{name}]({name}.png)" in report
    assert capsys.readouterr().out.strip() == str(root / "report" / "report.md")


def test_entropy_percentile_figure_has_one_panel_per_percentile(runs):
    root, _ = runs
    groups = compare.group_methods([compare.load_run(p) for p in sorted(root.iterdir())])
    made = compare.figures(groups)
    assert [ax.get_title() for ax in made["entropy_percentiles"].axes] == ["entropy/p10", "entropy/p90"]
    # a line and a band per method in each panel
    assert len(made["entropy"].axes[0].lines) == 2 and len(made["entropy"].axes[0].collections) == 2


def test_keys_that_follow_the_seed_do_not_split_a_method(tmp_path):
    """Runs of one method from per-seed warm starts (model.hf_path differs with the seed) are
    two methods by their configs, one with --per-seed model.hf_path; `-s<N>` is a seed suffix."""
    rng = np.random.default_rng(2)
    for seed in (0, 1):
        write_run(tmp_path / f"grpo-s{seed}", "ppo_clip", seed, rng)
        config = yaml.safe_load((tmp_path / f"grpo-s{seed}" / "config.yaml").read_text())
        config["model"] = {"hf_path": f"/warm/s{seed}/hf"}
        (tmp_path / f"grpo-s{seed}" / "config.yaml").write_text(yaml.safe_dump(config))
    runs = [compare.load_run(p) for p in sorted(tmp_path.iterdir())]
    assert list(compare.group_methods(runs)) == ["grpo", "grpo (2)"]
    runs = [compare.load_run(p) for p in sorted(tmp_path.iterdir())]
    grouped = compare.group_methods(runs, per_seed_keys=["model.hf_path"])
    assert list(grouped) == ["grpo"] and [r.seed for r in grouped["grpo"]] == [0, 1]
    # a key the older run's config predates counts as its default, not as another method
    config = yaml.safe_load((tmp_path / "grpo-s1" / "config.yaml").read_text())
    (tmp_path / "grpo-s1" / "config.yaml").write_text(yaml.safe_dump(config | {"stall_timeout_s": 900}))
    runs = [compare.load_run(p) for p in sorted(tmp_path.iterdir())]
    assert list(compare.group_methods(runs, per_seed_keys=["model.hf_path"])) == ["grpo"]


def test_a_run_written_before_the_loss_keys_were_grouped_reads_them_by_their_new_names(tmp_path):
    """An older run's config.yaml sets algorithm.loss.stapo_prob_threshold, a newer one's
    algorithm.loss.stapo.prob_threshold: one setting, so one method; --per-seed takes either name."""
    rng = np.random.default_rng(3)
    for seed, loss in ((0, {"stapo_prob_threshold": 0.01}), (1, {"stapo": {"prob_threshold": 0.01}})):
        write_run(tmp_path / f"stapo-s{seed}", "stapo", seed, rng)
        config = yaml.safe_load((tmp_path / f"stapo-s{seed}" / "config.yaml").read_text())
        config["algorithm"]["loss"] = loss
        (tmp_path / f"stapo-s{seed}" / "config.yaml").write_text(yaml.safe_dump(config))
    runs = [compare.load_run(p) for p in sorted(tmp_path.iterdir())]
    assert [r.config["algorithm.loss.stapo.prob_threshold"] for r in runs] == [0.01, 0.01]
    assert "algorithm.loss.stapo_prob_threshold" not in runs[0].config
    assert list(compare.group_methods(runs)) == ["stapo"]
    runs[1].config["algorithm.loss.stapo.prob_threshold"], runs[1].method = 0.02, ""
    runs[0].method = ""
    assert list(compare.group_methods(runs)) == ["stapo", "stapo (2)"]
    runs[0].method = runs[1].method = ""
    assert list(compare.group_methods(runs, per_seed_keys=["algorithm.loss.stapo_prob_threshold"])) == ["stapo"]


def _refused(argv, capsys) -> str:
    assert compare.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_a_directory_without_runs_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert f"no runs in {tmp_path / 'empty'}" in _refused([str(tmp_path / "empty")], capsys)
    assert "is not a run directory" in _refused([str(tmp_path / "empty"), str(tmp_path)], capsys)


def test_runs_of_different_tasks_are_refused_naming_both(tmp_path, capsys):
    rng = np.random.default_rng(1)
    write_run(tmp_path / "a", "ppo_clip", 0, rng)
    write_run(tmp_path / "b", "ppo_clip", 1, rng, dataset="countdown")
    err = _refused([str(tmp_path / "a"), str(tmp_path / "b")], capsys)
    assert str(tmp_path / "a") in err and str(tmp_path / "b") in err
    assert "data.dataset: 'synthetic' vs 'countdown'" in err and "eval.benchmark" in err


def test_a_run_in_progress_is_excluded_and_named(runs, capsys):
    root, _ = runs
    rng = np.random.default_rng(2)
    write_run(root / "stapo-seed2", "stapo", 2, rng, finished=False)
    assert compare.main([str(root)]) == 0
    err = capsys.readouterr().err.strip()
    assert err == f"entropy-rl compare: excluding {root / 'stapo-seed2'}: not finished (no summary.json for its total_steps)"
    result = json.loads((root / "compare" / "compare.json").read_text())
    assert result["methods"]["stapo"]["seeds"] == [0, 1] and result["excluded"] == [str(root / "stapo-seed2")]
    assert f"Excluded (not finished): `{root / 'stapo-seed2'}`" in (root / "compare" / "report.md").read_text()

    only = root / "only"
    write_run(only / "run", "stapo", 0, rng, finished=False)
    assert compare.main([str(only)]) == 2
    excluded, refused = capsys.readouterr().err.strip().splitlines()
    assert excluded.startswith(f"entropy-rl compare: excluding {only / 'run'}: not finished")
    assert refused == f"entropy-rl compare: no finished runs among {only / 'run'}"


def test_html_report_is_the_inspect_page_with_the_tables_and_figures_embedded(runs):
    root, expected = runs
    assert compare.main([str(root), "-o", str(root / "report"), "--html"]) == 0
    page = (root / "report" / "report.html").read_text()
    report = (root / "report" / "report.md").read_text()
    gain = _interval([s["accuracy_gain"] for s in expected["stapo"]])
    assert f"<td>{100 * gain[0]:.1f} [{100 * gain[1]:.1f}, {100 * gain[2]:.1f}]</td>" in page
    assert page.count("data:image/png;base64,") == report.count("](") and "](" not in page
    for label in ("grpo s0", "grpo s1", "stapo s0", "stapo s1"):  # the runs' own page, every run labelled
        assert label in page
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched: the figures are inline
