"""Reading run directories for the inspect page: token kinds per method, the flagged-token
table (against numpy), bad input (no run, no samples, a torn line, an older format, a broken
row), extra sections, and a light import (no jax)."""

import json
import math
import subprocess
import sys

import numpy as np

from entropy_rl import cli
from entropy_rl.inspect import Section, read_run, write_page
from entropy_rl.inspect import runs as inspect_runs


def _row(step=1, flag="loss/spurious_fraction", **fields):
    """A samples.jsonl row of this version (5 tokens, the last a special token), fields replaced."""
    row = {"step": step, "row": 0, "prompt": "What is 1 + 1?", "response": "A b中", "reward": 1.0, "correct": 1.0,
           "answer": "2", "reference": "2", "length": 5, "advantage": 0.5,
           "logp": [-0.01, -2.5, -0.7, -0.2, -0.05], "entropy": [0.05, 1.7, 0.3, 2.4, 0.6],
           "flagged": [0, 1, 0, 1, 0], "dropped": [0, 1, 0, 1, 0], "penalised": [0.0] * 5, "flag": flag,
           "tokens": [1, 2, 3, 4, 5], "pieces": ["A", " b", "", "中", ""], "special": {"4": "<eos>"}}
    return row | fields


def _run_dir(tmp_path, rows, name="run", summary=True):
    run = tmp_path / name
    run.mkdir()
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "accuracy": 0.1 * s, "entropy/mean": 1.0 / s,
                                                           "loss/spurious_fraction": 0.01 * s}) + "\n"
                                               for s in (1, 2, 3)))
    (run / "config.yaml").write_text("total_steps: 3\ndata: {dataset: synthetic, verifier: synthetic}\n"
                                     "algorithm: {name: stapo}\n")
    if summary:
        (run / "summary.json").write_text(json.dumps({
            "method": "stapo", "steps": 3, "accuracy_before": 0.25, "accuracy_before_ci": [0.2, 0.3],
            "accuracy_after": 0.5, "accuracy_after_ci": [0.45, 0.55], "accuracy_gain": 0.25,
            "accuracy_gain_ci": [0.2, 0.3], "entropy_start": 1.0, "entropy_end": float("nan")}))
    return run


def test_token_kinds_follow_the_methods_flag_metric():
    kinds = lambda row: [inspect_runs.KINDS[k] for k in inspect_runs.token_kinds(row)]  # noqa: E731
    assert kinds(_row()) == ["", "silenced", "", "silenced", ""]  # STAPO
    assert kinds(_row(flag="loss/dropped_fraction")) == ["", "dropped", "", "dropped", ""]  # Clip-Cov
    # 20-Entropy flags (masks) all but the top-entropy fraction: the rest are kept
    assert kinds(_row(flag="loss/masked_fraction")) == ["kept", "masked", "kept", "masked", "kept"]
    sent = _row(flag="loss/penalised_fraction", flagged=[0, 1, 0, 0, 0], dropped=[0] * 5,
                penalised=[0.0, 0.02, 0.0, 0.0, 0.0])
    assert kinds(sent) == ["", "penalised", "", "", ""]
    assert _response(sent)["coef"] == [0.0, 0.02, 0.0, 0.0, 0.0]
    assert kinds(_row(flag=None, flagged=[0] * 5, dropped=[0, 0, 1, 0, 0])) == ["", "", "dropped", "", ""]


def _response(row, run_index=0, prompt_index=0):
    return dict(zip(inspect_runs.RESPONSE_FIELDS, inspect_runs.page_response(row, run_index, prompt_index), strict=True))


def test_page_response_is_compact_and_names_special_tokens():
    response = _response(_row(), run_index=1, prompt_index=3)
    assert response["pieces"] == ["A", " b", "", "中", "<eos>"] and response["special"] == [4]
    assert response["lp"] == [-10, -2500, -700, -200, -50] and response["h"] == [50, 1700, 300, 2400, 600]
    assert (response["run"], response["prompt"], response["flagged"], response["reference"]) == (1, 3, 2, "2")
    assert response["kind"] == "01010" and response["coef"] is None and response["text"] is None


def test_flagged_token_table_matches_numpy():
    rng = np.random.default_rng(0)
    words = np.array(["a", " the", "\n", "中", "x"])
    rows = []
    for step in range(20):
        index = rng.integers(0, len(words), 7)
        flagged = (rng.random(7) < 0.4).astype(int)
        logp, entropy = -rng.random(7) * 3, rng.random(7) * 2
        rows.append(_row(step=step, response="".join(words[index]), tokens=index.tolist(), pieces=words[index].tolist(),
                         special={}, logp=logp.tolist(), entropy=entropy.tolist(), flagged=flagged.tolist(),
                         dropped=flagged.tolist(), penalised=[0.0] * 7))
    table = inspect_runs.flagged_token_table(rows)
    pieces = np.concatenate([r["pieces"] for r in rows])
    flags = np.concatenate([r["flagged"] for r in rows]).astype(bool)
    logp = np.concatenate([r["logp"] for r in rows])
    entropy = np.concatenate([r["entropy"] for r in rows])
    expected = []
    for word in words:
        chosen = flags & (pieces == word)
        if chosen.any():
            expected.append((word, int(chosen.sum()), int((pieces == word).sum()), np.exp(logp[chosen]).mean(),
                             entropy[chosen].mean()))
    expected.sort(key=lambda e: (-e[1], e[0]))
    assert [(t["piece"], t["flagged"], t["occurrences"]) for t in table] == [e[:3] for e in expected]
    np.testing.assert_allclose([[t["mean_p"], t["mean_entropy"]] for t in table], [e[3:] for e in expected])


def test_page_of_a_run_has_summary_curves_notes_and_the_data(tmp_path):
    run = _run_dir(tmp_path, [_row(step=1), _row(step=2, correct=0.0)])
    page = write_page([run], tmp_path / "out" / "page.html", extra_sections=[Section("Compare", "<p id='x'>hi</p>")])
    text = page.read_text()
    assert "default-src 'none'" in text and "<svg" in text and "<p id='x'>hi</p>" in text
    assert "stapo" in text and "25.0% [20.0, 30.0]" in text and "+25.0 pts" in text
    data = json.loads(text.split('id="inspect-data">')[1].split("</script>")[0].replace("<\\/", "</"))
    steps = [dict(zip(data["fields"], r))["step"] for r in data["responses"]]
    assert steps == [1, 2] and data["prompts"] == ["What is 1 + 1?"]
    assert data["runs"][0]["entropy_end"] is None  # NaN: not valid JSON
    assert data["runs"][0]["flagged_tokens"][0]["piece"] in (" b", "中")


def test_script_text_in_a_response_cannot_close_the_data_element(tmp_path):
    run = _run_dir(tmp_path, [_row(pieces=["</script><script>alert(1)</script>", "{{SUMMARY}}", "", "", ""])])
    text = write_page([run], tmp_path / "page.html").read_text()
    assert text.count("</script>") == 2 and "{{SUMMARY}}" in text  # the data's and the page script's


def test_a_run_without_samples_or_summary_gets_a_page_that_says_so(tmp_path, capsys):
    run = _run_dir(tmp_path, [], summary=False)
    (run / "samples.jsonl").unlink()
    assert cli.main(["inspect", str(run), "-o", str(tmp_path / "page.html")]) == 0
    text = (tmp_path / "page.html").read_text()
    assert "no samples.jsonl: no token browser" in text and "no summary.json: the run has not finished" in text


def test_a_torn_last_line_is_left_out_and_named(tmp_path):
    run = _run_dir(tmp_path, [_row(step=1), _row(step=2)])
    with open(run / "samples.jsonl", "a") as f:
        f.write(json.dumps(_row(step=3))[:50])
    loaded = read_run(run, "run")
    assert [r["step"] for r in loaded.samples] == [1, 2]
    assert any("last line is torn" in note for note in loaded.notes)


def test_samples_of_an_older_format_are_shown_without_pieces_and_named(tmp_path):
    old = {k: v for k, v in _row().items() if k not in ("tokens", "pieces", "special", "reference")}
    old["penalised"] = [0, 1, 0, 0, 0]  # 0/1 flags then, not coefficients
    run = _run_dir(tmp_path, [old, _row(step=2)])
    loaded = read_run(run, "run")
    assert any("1 of 2 rows have no token pieces" in note for note in loaded.notes)
    response = _response(old)
    assert response["pieces"] is None and response["coef"] is None and response["reference"] is None
    assert response["text"] == old["response"]


def test_unreadable_input_exits_nonzero_naming_the_file_and_line(tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path / "missing")]) == 1
    assert "missing: no such run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["inspect", str(tmp_path / "empty")]) == 1
    assert "not a run directory" in capsys.readouterr().err
    broken = _row()
    del broken["entropy"]
    run = _run_dir(tmp_path, [_row(), broken])
    assert cli.main(["inspect", str(run)]) == 1
    assert "samples.jsonl:2: a sample row without entropy" in capsys.readouterr().err
    short = _row(logp=[-1.0])
    run = _run_dir(tmp_path, [short], name="short")
    assert cli.main(["inspect", str(run)]) == 1
    assert "samples.jsonl:1: per-token lists of different lengths" in capsys.readouterr().err


def test_file_names_agree_with_the_trainer():
    from entropy_rl.train import metrics, samples, summary

    assert (inspect_runs.SAMPLES_FILE, inspect_runs.SUMMARY_FILE, inspect_runs.CONFIG_FILE,
            inspect_runs.METRICS_FILE) == (samples.SAMPLES_FILE, summary.SUMMARY_FILE, metrics.CONFIG_FILE,
                                           metrics.METRICS_FILE)


def test_importing_inspect_does_not_import_jax():
    code = "import sys, entropy_rl.inspect; print('jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_finite_replaces_nan_and_inf_in_nested_values():
    assert inspect_runs.finite({"a": [1.0, math.inf, {"b": math.nan}], "c": "x"}) == {"a": [1.0, None, {"b": None}], "c": "x"}
