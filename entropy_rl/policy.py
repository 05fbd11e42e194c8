"""The policy of a run: building it at the start (`build_policy`) and loading it from a
checkpoint (`load_policy`), for training, evaluation, ranking, export and plans."""

from __future__ import annotations

import os
import sys
from typing import Any

import jax

from entropy_rl.checkpoints import CheckpointCorrupt, CheckpointReader, locate_checkpoint
from entropy_rl.config import ModelConfig


def qwen_config(model: ModelConfig, vocab_size: int):
    """The `QwenConfig` of the policy (`ModelConfig.qwen_config`; `vocab_size`: the tokenizer's)."""
    return model.qwen_config(vocab_size)


def load_policy_tokenizer(model: ModelConfig):
    """The tokenizer of the policy: `model.tokenizer` ("builtin" or a directory), else
    `hf_path`'s own, else the built-in one."""
    from entropy_rl.data.tokenizer import load_tokenizer

    return load_tokenizer(model.tokenizer or model.hf_path or "builtin")


def build_policy(model: ModelConfig, *, seed: int, mesh: jax.sharding.Mesh | None = None, abstract: bool = False):
    """(policy, tokenizer) at the start of a run: the HF weights of `model.hf_path`, else a
    fresh built-in Qwen3 initialised from `seed`; sharded over `mesh` when given.

    abstract=True builds only the shapes (`nnx.eval_shape`), a restore target: no weights are
    read or initialised.
    """
    from flax import nnx

    from entropy_rl.model import Qwen, load_hf
    from entropy_rl.parallel import shard_model

    tokenizer = load_policy_tokenizer(model)
    config = qwen_config(model, tokenizer.vocab_size)
    if tokenizer.vocab_size > config.vocab_size:  # checked before any weight is read or a prompt sampled
        raise ValueError(f"the tokenizer ({model.tokenizer or model.hf_path or 'builtin'}) has {tokenizer.vocab_size} "
                         f"token ids but the model ({model.hf_path or 'built-in'}) has a vocabulary of "
                         f"{config.vocab_size}: ids >= {config.vocab_size} have no embedding; use the model's own "
                         "tokenizer (model.tokenizer) or model.vocab_size >= the tokenizer's")
    if model.hf_path is not None and not abstract:
        policy = load_hf(model.hf_path, mesh=mesh, **model.runtime_options())
        return policy, tokenizer
    create = lambda: Qwen(config, rngs=nnx.Rngs(seed))  # noqa: E731
    if abstract:
        return nnx.eval_shape(create), tokenizer
    policy = create()
    return (policy if mesh is None else shard_model(policy, mesh)), tokenizer



def load_policy(path: str | os.PathLike, *, step: int | None = None, mesh: jax.sharding.Mesh | None = None):
    """(policy, tokenizer) from a run's checkpoint, for evaluation, ranking and export.

    `path`: a run directory, its `checkpoints/` directory, or `checkpoints/<step>`; `step`
    (default: the one in `path`, else the latest). The model is rebuilt from the config saved
    with the checkpoint, its parameters restored sharded over `mesh`, or with no mesh whole on
    this process's first local device. Either way the checkpoint may come from any topology
    (another mesh, device count or number of processes): Orbax reads each target shard from
    the saved parts. Without a step, a damaged latest checkpoint is named and the newest intact
    one loaded.
    """
    run_dir, path_step = locate_checkpoint(path)
    step = path_step if step is None else step
    checkpointer = CheckpointReader(run_dir)
    try:
        candidates = [step] if step is not None else list(reversed(checkpointer.all_steps())) or [None]
        for candidate in candidates:  # a damaged latest step is skipped; a requested one is not
            try:
                return _load_step(checkpointer, candidate, mesh)
            except CheckpointCorrupt as corrupt:
                if candidate == candidates[-1]:
                    others = [s for s in checkpointer.all_steps() if s != corrupt.step]
                    raise CheckpointCorrupt(corrupt.step, corrupt.directory, f"{corrupt.reason}. Other steps on "
                                            f"disk: {others or 'none'}") from None
                print(f"{corrupt}; loading the previous checkpoint", file=sys.stderr, flush=True)
    finally:
        checkpointer.close()


def _load_step(checkpointer: CheckpointReader, step: int | None, mesh: jax.sharding.Mesh | None):
    """(policy, tokenizer) of checkpoint `step` (None: the latest) of an open reader."""
    from flax import nnx

    config = checkpointer.saved_config(step)
    policy, tokenizer = build_policy(config.model, seed=config.seed, abstract=True)
    graphdef, params = nnx.split(policy)
    _, params = checkpointer.restore_params(_restore_targets(params, mesh), step)
    return nnx.merge(graphdef, params), tokenizer


def _restore_targets(params: Any, mesh: jax.sharding.Mesh | None) -> Any:
    """Abstract `params` placed by `state_shardings` over `mesh`, or with no mesh on one local
    device (never the saved topology, which may span devices this process does not have)."""
    if mesh is None:
        shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.local_devices()[0]), params)
    else:
        from entropy_rl.parallel import state_shardings

        shardings = state_shardings(params, mesh)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, shardings)
