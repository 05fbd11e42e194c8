"""The mechanism section of `compare` on hand-written samples.jsonl rows: the flagged-vs-other
table recomputed with numpy, rows written before grad_sq / cov existed (a "not recorded"
note, no crash), and a malformed row (an error naming the file and row)."""

import json

import numpy as np
import pytest

from entropy_rl.sweep import compare, mechanism
from tests.sweep.test_compare import write_run


def _sample_rows(rng, count, *, recorded):
    rows = []
    for step in range(count):
        length = int(rng.integers(2, 6))
        row = {"step": step + 1, "row": 0, "advantage": float(rng.normal()), "length": length,
               "logp": (-rng.gamma(1.0, size=length)).round(5).tolist(),
               "entropy": rng.uniform(0, 2, length).round(5).tolist(),
               "flagged": (rng.random(length) < 0.3).astype(int).tolist(), "flag": "loss/spurious_fraction"}
        if recorded:
            row |= {"grad_sq": rng.uniform(0, 1, length).round(5).tolist(),
                    "cov": rng.normal(size=length).round(5).tolist()}
        rows.append(row)
    return rows


def _write(run_dir, rows):
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_table_recomputed_and_old_rows_say_not_recorded(tmp_path):
    rng = np.random.default_rng(0)
    new, old = _sample_rows(rng, 4, recorded=True), _sample_rows(rng, 3, recorded=False)
    write_run(tmp_path / "stapo-seed0", "stapo", 0, rng)
    write_run(tmp_path / "stapo-seed1", "stapo", 1, rng)
    _write(tmp_path / "stapo-seed0", new)
    _write(tmp_path / "stapo-seed1", old)
    result = compare.compare([tmp_path], tmp_path / "out", warn=lambda line: None)
    summary = result["mechanism"]["stapo"]
    every = new + old
    flagged = np.concatenate([r["flagged"] for r in every]).astype(bool)
    p = np.exp(np.concatenate([r["logp"] for r in every]))
    grad_sq = np.concatenate([r["grad_sq"] for r in new])
    grad_flagged = np.concatenate([r["flagged"] for r in new]).astype(bool)
    assert summary["tokens"] == len(p) and summary["flagged_fraction"] == pytest.approx(flagged.mean())
    assert summary["flagged_p"] == pytest.approx(p[flagged].mean())
    assert summary["other_p"] == pytest.approx(p[~flagged].mean())
    assert summary["flagged_grad_sq"] == pytest.approx(grad_sq[grad_flagged].mean())  # recorded rows only
    report = (tmp_path / "out" / "report.md").read_text()
    assert "stapo: grad_sq / cov not recorded in 3 of 7 sample rows" in report
    for name in mechanism.FIGURES:
        assert (tmp_path / "out" / f"{name}.png").stat().st_size > 0 and f"![{name}]({name}.png)" in report


def test_runs_without_any_recorded_field_or_samples(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "grpo-seed0").mkdir()  # no samples.jsonl at all
    (tmp_path / "stapo-seed0").mkdir()
    _write(tmp_path / "stapo-seed0", _sample_rows(rng, 2, recorded=False))
    (tmp_path / "out").mkdir()
    report, table = mechanism.mechanism_report({"grpo": [tmp_path / "grpo-seed0"], "stapo": [tmp_path / "stapo-seed0"]},
                                               tmp_path / "out")
    assert table["grpo"] is None and "grpo: no samples.jsonl rows" in report
    assert "stapo: grad_sq / cov not recorded in 2 of 2 sample rows" in report
    assert np.isnan(table["stapo"]["other_grad_sq"])
    assert (tmp_path / "out" / "mechanism_gradient.png").stat().st_size > 0  # a "not recorded" panel


def test_a_malformed_row_is_named(tmp_path):
    rows = _sample_rows(np.random.default_rng(2), 3, recorded=True)
    rows[1]["cov"] = rows[1]["cov"][:-1]
    _write(tmp_path, rows)
    with pytest.raises(ValueError, match=r"samples.jsonl, row 2: cov not of the \d tokens of its logp"):
        mechanism.read_tokens([tmp_path])
