"""Checkpoints restore onto any topology: a checkpoint saved from an 8-device fsdp mesh loads
whole onto one device (`load_policy` with no mesh), and `entropy-rl export` in a process that
has a single device writes an HF checkpoint that transformers loads with the saved logits."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from entropy_rl.parallel import MeshConfig, make_mesh
from entropy_rl.train import checkpoint as ck
from entropy_rl.train.config import load_config

SMALL_MODEL = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=2",
               "model.num_attention_heads=2", "model.num_key_value_heads=1", "model.head_dim=16"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fsdp8_run(tmp_path):
    """A run directory whose checkpoint 3 was written from parameters sharded over fsdp=8."""
    config = load_config(overrides=[f"run_dir={tmp_path / 'run'}", *SMALL_MODEL])
    policy, tokenizer = ck.build_policy(config.model, seed=3, mesh=make_mesh(MeshConfig(fsdp=8)))
    _, params = nnx.split(policy)
    assert {len(leaf.sharding.device_set) for leaf in jax.tree.leaves(params)} == {8}
    with ck.Checkpointer(config.run_dir, async_save=False) as saver:
        saver.save(3, params=params, train_state={"step": jnp.int32(3)}, data_state={}, config=config)
    return config, policy, tokenizer


def test_load_policy_without_a_mesh_restores_an_fsdp8_checkpoint_onto_one_device(tmp_path):
    config, policy, _ = _fsdp8_run(tmp_path)
    loaded, _ = ck.load_policy(config.run_dir)
    one_device = {jax.local_devices()[0]}
    saved, restored = nnx.split(policy)[1], nnx.split(loaded)[1]
    assert all(leaf.sharding.device_set == one_device for leaf in jax.tree.leaves(restored))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), saved, restored)


def test_export_on_one_device_of_an_fsdp8_checkpoint_gives_the_saved_logits(tmp_path):
    config, policy, tokenizer = _fsdp8_run(tmp_path)
    out = tmp_path / "hf"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": REPO}
    done = subprocess.run([sys.executable, "-m", "entropy_rl.cli", "export", config.run_dir, str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wrote step 3" in done.stdout
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    ids = np.asarray([tokenizer.encode("12+34=46")], np.int32)
    with torch.no_grad():
        expected = hf(torch.from_numpy(ids).long()).logits.numpy()
    logits = nnx.jit(lambda model, x: model(x))(policy, jnp.asarray(ids))
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4, rtol=1e-4)
