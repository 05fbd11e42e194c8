"""Checkpoints restore onto any topology: one saved from an 8-device fsdp mesh (one process)
or by 2 processes x 4 devices loads whole onto one device (`load_policy` with no mesh), and
`entropy-rl export` in a process with a single device writes an HF checkpoint that
transformers loads, with the logits of the saved parameters.

The parameters are drawn with numpy (`random_params`), not the model's initialiser: no
initialisation programs to compile, and values that an export re-initialising from the seed
could not reproduce."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from entropy_rl.parallel import MeshConfig, make_mesh, state_shardings
from entropy_rl.policy import build_policy, load_policy, load_policy_tokenizer
from entropy_rl.train import checkpoint as ck
from entropy_rl.train.config import load_config

# one multi-process test at a time (`--dist loadgroup`): two would oversubscribe the cores
pytestmark = pytest.mark.xdist_group("processes")

SMALL_MODEL = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=2",
               "model.num_attention_heads=2", "model.num_key_value_heads=1", "model.head_dim=16"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def random_params(config):
    """(graphdef, numpy parameters ~ 0.1 N(0, 1) drawn with seed 3) of the run's policy."""
    graphdef, shapes = nnx.split(build_policy(config.model, seed=0, abstract=True)[0])
    rng = np.random.default_rng(3)
    return graphdef, jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


# Writes checkpoint 5 of the run dir argv[1] (model overrides argv[3:]): the parameters of
# the .npz argv[2] (leaves in tree order) placed on an fsdp=8 mesh over both processes'
# devices, each process filling its own shards.
WRITER = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from flax import nnx
    from entropy_rl.parallel import MeshConfig, initialize_distributed, make_mesh, state_shardings
    assert initialize_distributed() and jax.device_count() == 8 and jax.local_device_count() == 4
    from entropy_rl.policy import build_policy
    from entropy_rl.train import checkpoint as ck
    from entropy_rl.train.config import load_config
    config = load_config(overrides=[f"run_dir={sys.argv[1]}", *sys.argv[3:]])
    shapes = nnx.split(build_policy(config.model, seed=0, abstract=True)[0])[1]
    leaves = np.load(sys.argv[2])
    values = jax.tree.unflatten(jax.tree.structure(shapes), [leaves[str(i)] for i in range(len(leaves.files))])
    shardings = state_shardings(values, make_mesh(MeshConfig(fsdp=8)))
    params = jax.tree.map(lambda v, s: jax.make_array_from_callback(v.shape, s, lambda index: v[index]),
                          values, shardings)
    assert not jax.tree.leaves(params)[0].is_fully_addressable  # spans both processes
    with ck.Checkpointer(config.run_dir, async_save=False) as saver:
        saver.save(5, params=params, train_state={"step": np.int32(5)}, data_state={}, config=config)
""")


def _config(run_dir):
    return load_config(overrides=[f"run_dir={run_dir}", *SMALL_MODEL])


def _export_on_one_device(run_dir, out, step):
    """`entropy-rl export run_dir out` in a fresh process that has one CPU device."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": REPO}
    done = subprocess.run([sys.executable, "-m", "entropy_rl.cli", "export", str(run_dir), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"wrote step {step}" in done.stdout


def test_load_policy_without_a_mesh_restores_an_fsdp8_checkpoint_onto_one_device(tmp_path):
    config = _config(tmp_path / "run")
    _, values = random_params(config)
    params = jax.device_put(values, state_shardings(values, make_mesh(MeshConfig(fsdp=8))))
    assert {len(leaf.sharding.device_set) for leaf in jax.tree.leaves(params)} == {8}
    with ck.Checkpointer(config.run_dir, async_save=False) as saver:
        saver.save(3, params=params, train_state={"step": np.int32(3)}, data_state={}, config=config)
    loaded, _ = load_policy(config.run_dir)
    restored = nnx.split(loaded)[1]
    assert all(leaf.sharding.device_set == {jax.local_devices()[0]} for leaf in jax.tree.leaves(restored))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), restored, values)


@pytest.mark.slow
def test_checkpoint_written_by_two_processes_exports_on_one_device(launch, tmp_path):
    run_dir = tmp_path / "run"
    graphdef, values = random_params(_config(run_dir))
    np.savez(tmp_path / "params.npz", **{str(i): leaf for i, leaf in enumerate(jax.tree.leaves(values))})
    (tmp_path / "writer.py").write_text(WRITER)
    launch([str(tmp_path / "writer.py"), str(run_dir), str(tmp_path / "params.npz"), *SMALL_MODEL], timeout_s=180)
    _export_on_one_device(run_dir, tmp_path / "hf", step=5)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32).eval()
    tokenizer = load_policy_tokenizer(_config(run_dir).model)
    ids = np.asarray([tokenizer.encode("12+34=46")], np.int32)
    with torch.no_grad():
        expected = hf(torch.from_numpy(ids).long()).logits.numpy()
    logits = nnx.jit(lambda model, x: model(x))(nnx.merge(graphdef, jax.device_put(values)), ids)
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4, rtol=1e-4)
