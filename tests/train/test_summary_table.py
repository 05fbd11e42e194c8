"""The end-of-run table states what one run is and how to get results over seeds."""

from entropy_rl.train.config import load_config
from entropy_rl.train.summary import summary_table

SUMMARY = {
    "steps": 200, "wall_clock_s": 229.0, "heldout_problems": 256, "heldout_distinct_problems": 240,
    "heldout_samples_per_problem": 4, "accuracy_before": 0.292, "accuracy_before_ci": [0.26, 0.32],
    "accuracy_after": 0.390, "accuracy_after_ci": [0.36, 0.42], "accuracy_gain": 0.098,
    "accuracy_gain_ci": [0.062, 0.132], "entropy_start": 0.2209, "entropy_end": 0.1925,
    "masked_fraction": 0.0, "skipped_updates": 0, "checkpoints": "runs/x/checkpoints", "checkpoint_steps": [200],
    "metrics": "runs/x/metrics.jsonl", "tensorboard": None,
}


def test_the_table_names_the_seed_and_the_sweep_that_gives_an_interval_over_seeds():
    config = load_config(overrides=["seed=2", "algorithm.name=stapo"])
    lines = summary_table(SUMMARY, config).splitlines()
    width = lines[0].index("stapo, grpo advantages")  # the values' column
    rows = {line[:width].strip(): line[width:] for line in lines}
    assert rows["gain (paired)"] == "+9.8 pts  95% CI [6.2, 13.2]  (significant)"
    assert rows["seed"] == ("2, one run; over seeds (mean, 95% interval, paired tests): entropy-rl sweep DIR "
                                    "--methods stapo --seeds 0,1,2, then entropy-rl compare DIR")
