"""`entropy-rl train`, `eval` and `rank` share one config mechanism: --config files, key=value
overrides over the same model / rollout / mesh sections, one mesh syntax, one prompt-style default."""

import pytest
import yaml

from entropy_rl import cli as top_cli
from entropy_rl import ranking
from entropy_rl.eval import cli as eval_cli
from entropy_rl.train.config import TrainConfig

REQUIRED = {"train": [], "eval": ["checkpoint=ckpt"], "rank": ["policy=ckpt", "output=ranking.jsonl"]}
SHARED = ["model.dtype=bfloat16", "model.tokenizer=builtin", "rollout.temperature=0.5", "rollout.top_k=20",
          "mesh.data=2", "mesh.fsdp=-1"]


def printed(capsys, command, *args) -> dict:
    assert top_cli.main([command, "--print-config", *REQUIRED[command], *args]) == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("command", ["train", "eval", "rank"])
def test_each_command_accepts_the_shared_sections_from_overrides_and_files(command, capsys, tmp_path):
    config = printed(capsys, command, *SHARED)
    assert config["model"]["dtype"] == "bfloat16" and config["model"]["tokenizer"] == "builtin"
    assert (config["rollout"]["temperature"], config["rollout"]["top_k"]) == (0.5, 20)
    assert config["mesh"] == {"slices": 1, "data": 2, "fsdp": -1, "tensor": 1}
    (tmp_path / "shared.yaml").write_text("rollout: {max_new_tokens: 12}\nmesh: {tensor: 2}\n")
    config = printed(capsys, command, "--config", str(tmp_path / "shared.yaml"), "rollout.top_p=0.9")
    assert (config["rollout"]["max_new_tokens"], config["rollout"]["top_p"], config["mesh"]["tensor"]) == (12, 0.9, 2)


@pytest.mark.parametrize("command", ["train", "eval", "rank"])
def test_each_command_reports_every_config_error_with_its_key(command, capsys):
    assert top_cli.main([command, *REQUIRED[command], "rollout.top_pp=0.9", "mesh.fsdp=0"]) == 2
    err = capsys.readouterr().err
    assert "rollout.top_pp: unknown key (did you mean 'rollout.top_p'?)" in err
    assert "mesh: mesh sizes must be positive or one -1" in err


def test_one_prompt_style_default_for_every_command(capsys):
    styles = {printed(capsys, "eval")["prompt_style"], printed(capsys, "rank")["data"]["prompt_style"],
              printed(capsys, "train")["data"]["prompt_style"]}
    assert styles == {TrainConfig().data.prompt_style} == {"plain"}


def test_eval_flags_are_aliases_of_config_keys(capsys):
    old = printed(capsys, "eval", "--checkpoint", "ckpt", "--n", "4", "--temperature", "0.7", "--dtype", "float32",
                  "--mesh", "none", "--ks", "1,2,4", "--no-progress", "--save-responses")
    new = printed(capsys, "eval", "rollout.n=4", "rollout.temperature=0.7", "model.dtype=float32", "mesh.data=1",
                  "mesh.fsdp=1", "mesh.tensor=1", "ks=[1, 2, 4]", "progress=false", "save_responses=true")
    assert old == new
    assert eval_cli.main(["--checkpoint", "ckpt", "--n", "0"]) == 2
    assert "rollout.n: must be >= 1" in capsys.readouterr().err


def test_rank_flags_are_aliases_of_config_keys(capsys, tmp_path):
    data = tmp_path / "math.jsonl"
    data.write_text('{"problem": "1+1", "answer": "2"}\n')
    old = printed(capsys, "rank", "--data", str(data), "--synthetic-levels", "add2,sub2", "--samples", "4",
                  "--mesh", "1,-1,1", "--exact-match-only")
    assert old["data"]["verifier"] == "math" and old["data"]["synthetic_levels"] == [2, 3]
    new = printed(capsys, "rank", f"data.dataset={data}", "data.verifier=math", "data.synthetic_levels=2,3",
                  "rollout.n=4", "mesh.data=1", "mesh.fsdp=-1", "mesh.tensor=1", "exact_match_only=true")
    assert old == new
    settings = ranking.RankCommandConfig.model_validate({"policy": "p", "output": "o"}).settings()
    # the synthetic task: its verifier, and prompts without instruction (as in training)
    assert settings == ranking.RankingSettings(verifier="synthetic", instruction="")


def test_eval_mesh_sizes_pick_devices(monkeypatch):
    import jax

    from entropy_rl.parallel import MeshConfig

    devices = jax.devices()
    assert eval_cli.command_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices) is None  # one device
    assert eval_cli.command_mesh(MeshConfig(data=1, fsdp=2, tensor=2), devices).devices.size == 4
    assert eval_cli.command_mesh(MeshConfig(), devices).devices.size == len(devices)
