"""configs/study/: every method runs the chain task with its tiny config's (the papers')
algorithm settings, and all share one budget."""

from pathlib import Path

import pytest

from entropy_rl.train.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STUDY = sorted(p for p in (CONFIGS / "study").glob("*.yaml") if p.stem != "base")


def test_the_issue_s_methods_are_in_the_study():
    assert {"grpo", "dapo", "stapo", "sent", "entropy20"} <= {p.stem for p in STUDY}


@pytest.mark.parametrize("path", STUDY, ids=lambda p: p.stem)
def test_study_config_is_its_method_on_the_chain_task(path):
    config = load_config(path, check_paths=False)  # run_dir is under /work/study-runs
    tiny = load_config(CONFIGS / f"{path.stem}.yaml")
    base = load_config(CONFIGS / "study" / "base.yaml")
    assert config.algorithm == tiny.algorithm
    assert config.data.level_names == ("lineq2",) and config.data.verifier == "chains"
    budget = lambda c: (c.data, c.rollout, c.optimizer, c.total_steps, c.eval, c.model)  # noqa: E731
    assert budget(config) == budget(base)
    assert config.run_dir == f"runs/study/{path.stem}"
