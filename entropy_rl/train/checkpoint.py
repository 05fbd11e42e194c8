"""Orbax checkpoints of a run, automatic resume, and building / loading the policy.

A checkpoint lives in RUN_DIR/checkpoints/<step>/ and holds four items:

- `params`       the policy's state, `nnx.split(policy)[1]` (any pytree of arrays works);
- `train_state`  every other array the run needs to continue exactly: optimizer state,
                 step counters, PRNG keys (typed `jax.random.key` or raw uint32 keys);
- `data_state`   JSON: the prompt iterator's / curriculum's `state_dict()` and host-side
                 counters;
- `config`       JSON: the run's TrainConfig, so that `load_policy` can rebuild the model.

Arrays are restored with the shardings of the target (abstract) state, so a run resumes on
the mesh it is started with. Saving is asynchronous: the arrays are copied off the devices,
then written in the background while training goes on; `wait()` blocks until the files are
final. Orbax writes each step to a temporary directory and renames it when complete, so a
run killed at any moment resumes from its last complete checkpoint.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp

from entropy_rl.train.config import ModelConfig, TrainConfig, config_diff, config_from_dict, config_to_dict

CHECKPOINT_SUBDIR = "checkpoints"


class Restored(NamedTuple):
    """What `Checkpointer.restore` returns: arrays placed like the targets, JSON as saved."""

    step: int
    params: Any
    train_state: Any
    data_state: dict
    config: TrainConfig


def _abstract(tree: Any) -> Any:
    """Shape/dtype/sharding of every array leaf (restore targets); other leaves unchanged."""

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(leaf, tree)


class Checkpointer:
    """RUN_DIR/checkpoints through an `orbax.checkpoint.CheckpointManager`.

    Usage in a training loop:

        ckpt = Checkpointer(run_dir, max_to_keep=2, async_save=True)
        restored = ckpt.restore(params=params, train_state=train_state, config=config)  # None: fresh run
        ...
        ckpt.save(step, params=..., train_state=..., data_state=iterator.state_dict(), config=config)
        ...
        ckpt.close()   # waits for the last asynchronous save
    """

    def __init__(self, run_dir: str | os.PathLike, *, max_to_keep: int = 2, async_save: bool = True,
                 read_only: bool = False):
        """read_only: for readers (eval, export) of a run that may still be training: they
        neither create the directory nor remove a writer's unfinished temporary checkpoint."""
        directory = os.path.join(os.fspath(run_dir), CHECKPOINT_SUBDIR)
        self.directory = directory if "://" in directory else os.path.abspath(directory)  # gs://... as is
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else max_to_keep,
            save_interval_steps=0 if read_only else 1,
            enable_async_checkpointing=async_save,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,  # what a killed run left half-written
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    @classmethod
    def from_config(cls, config: TrainConfig) -> "Checkpointer":
        """The checkpointer of `config.run_dir` with the config's keep / async settings."""
        return cls(config.run_dir, max_to_keep=config.checkpoint.max_to_keep,
                   async_save=config.checkpoint.async_save)

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, None when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, *, params: Any, train_state: Any, data_state: dict, config: TrainConfig) -> None:
        """Start writing checkpoint `step` (asynchronous unless async_save=False); keeps the last N."""
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            train_state=ocp.args.StandardSave(train_state),
            data_state=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(config_to_dict(config)),
        )
        self._manager.save(step, args=args, force=True)

    def restore(self, *, params: Any, train_state: Any, step: int | None = None,
                config: TrainConfig | None = None) -> Restored | None:
        """Checkpoint `step` (default: the latest), arrays shaped, typed and sharded like the
        targets `params` / `train_state` (arrays or jax.ShapeDtypeStruct); None if there is none.

        When the arrays do not fit the targets, the ValueError lists how the checkpoint's config
        differs from `config` (the current run's)."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        args = ocp.args.Composite(
            params=ocp.args.StandardRestore(_abstract(params)),
            train_state=ocp.args.StandardRestore(_abstract(train_state)),
            data_state=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(),
        )
        try:
            restored = self._manager.restore(step, args=args)
        except (ValueError, TypeError, KeyError) as e:  # arrays of another shape or structure
            raise ValueError(self._mismatch_message(step, e, config)) from e
        return Restored(step, restored.params, restored.train_state, restored.data_state,
                        config_from_dict(restored.config, check_paths=False))

    def _mismatch_message(self, step: int, error: Exception, config: TrainConfig | None) -> str:
        saved = self.saved_config(step)
        differences = config_diff(saved, config) if config is not None else ["(the current config was not given)"]
        return (f"checkpoint {step} in {self.directory} does not fit this run ({type(error).__name__}: "
                f"{str(error)[:300]}).\nIt was saved with a different config:\n  "
                + "\n  ".join(differences)
                + "\nUse another run_dir, or resume=false to start over in this one.")

    def restore_params(self, params: Any, step: int | None = None) -> tuple[int, Any]:
        """Only the parameters of checkpoint `step` (default: latest), like the target `params`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        args = ocp.args.Composite(params=ocp.args.StandardRestore(_abstract(params)))
        return step, self._manager.restore(step, args=args).params

    def saved_config(self, step: int | None = None) -> TrainConfig:
        """The TrainConfig stored with checkpoint `step` (default: latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return config_from_dict(restored.config, check_paths=False)

    def wait(self) -> None:
        """Block until every asynchronous save has been written."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and release the manager's resources."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- the policy


def qwen_config(model: ModelConfig, vocab_size: int):
    """The `QwenConfig` of the policy: read from `model.hf_path`, else the built-in Qwen3
    architecture of the ModelConfig fields (vocabulary: `model.vocab_size`, or the tokenizer's
    `vocab_size` passed here when that is 0)."""
    from entropy_rl.model import QwenConfig

    numerics = dict(dtype=model.dtype, param_dtype=model.param_dtype, remat=model.remat,
                    scan_layers=model.scan_layers, attention_block_size=model.attention_block_size)
    if model.hf_path is not None:
        return QwenConfig.from_hf(model.hf_path, **numerics)
    return QwenConfig(
        vocab_size=model.vocab_size or vocab_size,
        hidden_size=model.hidden_size,
        intermediate_size=model.intermediate_size,
        num_hidden_layers=model.num_hidden_layers,
        num_attention_heads=model.num_attention_heads,
        num_key_value_heads=model.num_key_value_heads,
        head_dim=model.head_dim,
        rope_theta=model.rope_theta,
        rms_norm_eps=model.rms_norm_eps,
        tie_word_embeddings=model.tie_word_embeddings,
        attention_bias=False,
        qk_norm=True,
        max_position_embeddings=model.max_position_embeddings,
        **numerics,
    )


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
    if model.hf_path is not None and not abstract:
        policy = load_hf(model.hf_path, dtype=config.dtype, param_dtype=config.param_dtype, mesh=mesh,
                         remat=config.remat, scan_layers=config.scan_layers,
                         attention_block_size=config.attention_block_size)
        return policy, tokenizer
    create = lambda: Qwen(config, rngs=nnx.Rngs(seed))  # noqa: E731
    if abstract:
        return nnx.eval_shape(create), tokenizer
    policy = create()
    return (policy if mesh is None else shard_model(policy, mesh)), tokenizer


def locate_checkpoint(path: str | os.PathLike) -> tuple[str, int | None]:
    """(run dir, step or None) for a run dir, its checkpoints dir, or one step's dir."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, CHECKPOINT_SUBDIR)):
        return path, None
    if os.path.basename(path) == CHECKPOINT_SUBDIR:
        return os.path.dirname(path), None
    parent = os.path.dirname(path)
    if os.path.basename(parent) == CHECKPOINT_SUBDIR and os.path.basename(path).isdigit():
        return os.path.dirname(parent), int(os.path.basename(path))
    raise FileNotFoundError(f"{path}: not a run directory (no {CHECKPOINT_SUBDIR}/ inside) nor a checkpoint")


def load_policy(path: str | os.PathLike, *, step: int | None = None, mesh: jax.sharding.Mesh | None = None):
    """(policy, tokenizer) from a run's checkpoint, for evaluation, ranking and export.

    `path`: a run directory, its `checkpoints/` directory, or `checkpoints/<step>`; `step`
    (default: the one in `path`, else the latest). The model is rebuilt from the config saved
    with the checkpoint, its parameters restored (sharded over `mesh` when given).
    """
    from flax import nnx

    run_dir, path_step = locate_checkpoint(path)
    step = path_step if step is None else step
    checkpointer = Checkpointer(run_dir, async_save=False, read_only=True)
    try:
        config = checkpointer.saved_config(step)
        policy, tokenizer = build_policy(config.model, seed=config.seed, abstract=True)
        graphdef, params = nnx.split(policy)
        if mesh is not None:
            from entropy_rl.parallel import state_shardings

            params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                  params, state_shardings(params, mesh))
        _, params = checkpointer.restore_params(params, step)
    finally:
        checkpointer.close()
    return nnx.merge(graphdef, params), tokenizer

