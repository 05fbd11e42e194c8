"""What a run reports: the method by what makes it one, and its time across a resume."""

from entropy_rl.train import summary
from entropy_rl.train.config import load_config


def test_method_label_names_the_method_of_a_config_file():
    assert summary.method_label(load_config("configs/grpo.yaml", check_paths=False)) == \
        "ppo_clip, grpo advantages, seq-mean-token-mean"
    assert summary.method_label(load_config("configs/dapo.yaml", check_paths=False)).endswith(", dynamic sampling")
    assert summary.method_label(load_config(None)).startswith("stapo, ")


def test_run_time_counts_the_earlier_processes_across_a_resume(tmp_path):
    """Each metrics row holds the run's seconds so far; a resumed logger starts from the last
    row it keeps (the rows after the resumed step are dropped) and adds its own clock."""
    from entropy_rl.config import LoggingConfig
    from entropy_rl.train.metrics import MetricsLogger, read_metrics

    quiet = LoggingConfig(tensorboard=False, progress_bar=False)
    with MetricsLogger(tmp_path, quiet, total_steps=3) as first:
        first.started -= 100.0  # as if it had run 100 s
        for step in (1, 2, 3):
            first.log(step, {"loss": 0.0})
    seconds = [row["time/run_s"] for row in read_metrics(tmp_path)]
    assert 100.0 <= seconds[0] <= seconds[1] <= seconds[2] < 160.0
    with MetricsLogger(tmp_path, quiet, total_steps=3, start_step=2) as resumed:
        assert resumed.earlier_s == seconds[1]  # step 3's row was dropped
        resumed.started -= 7.0
        assert seconds[1] + 7.0 <= resumed.run_seconds() < seconds[1] + 67.0
        resumed.log(3, {"loss": 0.0})
    assert read_metrics(tmp_path)[-1]["time/run_s"] >= seconds[1] + 7.0
