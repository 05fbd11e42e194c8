"""A periodic eval lost to a stop between its checkpoint and its row is redone on resume, and
a finished run started again says so and changes nothing (issue 20, item 6); a final eval row
logged after a checkpoint that was then lost is redone too (issue 29, item 8).

In process, on the tiny setup of test_resume.py (1-layer policy, 4 prompts x 2 responses):
a 2-step run with a checkpoint and an eval after every step."""

import json
import shutil

import jax
import pytest

from entropy_rl.train.config import load_config
from entropy_rl.train.loop import train as train_on_devices
from entropy_rl.train.metrics import read_metrics

from tests.train.test_resume import TINY_RUN

def train(config):
    return train_on_devices(config, devices=jax.devices()[:1])  # the tiny batch on one device


RUN = [arg for arg in TINY_RUN if not arg.startswith("total_steps=")] + ["total_steps=2", "eval.every_steps=1"]


def _eval_rows(run_dir) -> dict[int, list[float]]:
    rows = {}
    for row in read_metrics(run_dir):
        if "eval/accuracy" in row:
            rows.setdefault(row["step"], []).append(row["eval/accuracy"])
    return rows


@pytest.mark.slow
def test_lost_periodic_eval_is_redone_and_a_finished_run_does_nothing(tmp_path, capsys):
    config = load_config(overrides=[*RUN, f"run_dir={tmp_path / 'run'}"])
    first = train(config)
    complete = _eval_rows(config.run_dir)
    assert sorted(complete) == [0, 1, 2] and all(len(values) == 1 for values in complete.values())

    # a finished run started again: the saved summary, and not one byte appended
    metrics = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    again = train(config)
    assert "is finished (step 2 of 2): nothing to do" in capsys.readouterr().out
    assert again["table"] == first["table"] and again["accuracy_after"] == first["accuracy_after"]
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == metrics

    # the state of a run stopped after checkpoint 1, before the eval of step 1 was logged
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "2")
    for name in ("summary.json", "summary.txt"):
        (tmp_path / "run" / name).unlink()
    # (the rows of step 2, its final eval included, stay: the resume drops them, the final eval is redone)
    kept = [line for line in metrics.decode().splitlines(keepends=True)
            if not (json.loads(line)["step"] == 1 and "eval/accuracy" in line)]
    (tmp_path / "run" / "metrics.jsonl").write_text("".join(kept))
    assert sorted(_eval_rows(config.run_dir)) == [0, 2]

    resumed = train(config)
    assert _eval_rows(config.run_dir) == complete  # step 1's eval redone, each eval logged once
    assert resumed["accuracy_after"] == first["accuracy_after"]


@pytest.mark.slow
def test_a_dataset_that_changed_since_the_checkpoint_names_it_and_the_remedies(tmp_path):
    from entropy_rl.data import synthetic_problems

    dataset = tmp_path / "problems.jsonl"
    rows = [{"problem": p.problem, "answer": p.answer} for p in synthetic_problems(33, seed=0)]
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows[:32]))
    args = [*RUN, f"run_dir={tmp_path / 'run'}", f"data.dataset={dataset}", "data.verifier=synthetic",
            "eval.benchmark=synthetic"]
    train(load_config(overrides=[*args, "total_steps=1"]))
    with dataset.open("a") as f:  # the dataset gained a row since checkpoint 1
        f.write(json.dumps(rows[32]) + "\n")
    with pytest.raises(ValueError, match=rf"checkpoint 1 in .* was saved over other problems than "
                                         rf"data.dataset={dataset} holds now .*restore the dataset as it was, or "
                                         r"resume=false to start over"):
        train(load_config(overrides=[*args, "total_steps=2"]))
