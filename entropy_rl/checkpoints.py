"""A run's Orbax checkpoints as stored: their layout, checksums, and reading one step.

A checkpoint lives in RUN_DIR/checkpoints/<step>/ and holds five items:

- `params`       the policy's state, `nnx.split(policy)[1]` (any pytree of arrays works);
- `train_state`  every other array the run needs to continue exactly: optimizer state,
                 step counters, PRNG keys (typed `jax.random.key` or raw uint32 keys);
- `data_state`   JSON: the prompt iterator's / curriculum's `state_dict()` and host-side
                 counters;
- `config`       JSON: the run's TrainConfig, so that `entropy_rl.policy.load_policy` can
                 rebuild the model;
- `checksums`    JSON: a 64-bit checksum of every array above (`array_digests`), verified by
                 every restore; their `fingerprint` identifies the weights (eval keys results by it).

`CheckpointReader` reads a run's checkpoints without writing anything (the run may still be
training); the trainer's `entropy_rl.train.checkpoint.Checkpointer` extends it with saving
and resuming. Arrays are restored with the shardings of the target (abstract) state. A
damaged step (a truncated or missing file, an empty step directory, an array whose checksum
differs from the one saved) is `CheckpointCorrupt`, told apart from a checkpoint of another
model (a `ValueError` listing the config changes) by reading the saved arrays' metadata.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from pydantic import BaseModel, ConfigDict

from entropy_rl.config import DataConfig, ModelConfig, dataset_file_defaults
from entropy_rl.configuration import Section, config_diff, config_from_dict

CHECKPOINT_SUBDIR = "checkpoints"
CHECKSUMS_ITEM = "checksums"  # the fifth item of a checkpoint: {"params/<path>": checksum, "train_state/<path>": ...}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, written or resumed; the message says which and why."""


class CheckpointCorrupt(CheckpointError, ValueError):
    """Checkpoint `step` in `directory` is damaged (`reason`). A ValueError too, so that the
    commands that report bad input in one line (eval, export) report it the same way."""

    def __init__(self, step: int, directory: str, reason: str):
        super().__init__(f"checkpoint {step} in {directory} is damaged: {reason}")
        self.step, self.directory, self.reason = step, directory, reason


def failure_cause(error: BaseException) -> str:
    """The innermost OSError of an exception chain (disk full, permissions; TensorStore's
    `os_error_code`) as "<strerror> [errno N] (...)", else the error's first line: `Type: message`."""
    seen, innermost = set(), error
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError):
            innermost = error
        error = error.__cause__ or error.__context__
    text = (str(innermost).strip().splitlines() or [""])[0]
    os_error = re.search(r"os_error_code='?(\d+)", text)  # TensorStore's form of an OSError
    code = int(os_error.group(1)) if os_error else getattr(innermost, "errno", None)
    if code:
        return f"{os.strerror(code)} [errno {code}] ({type(innermost).__name__}: {text[:160]} ...)"
    return f"{type(innermost).__name__}: {text[:300]}"


def _leaf_shapes(tree: Any) -> dict[tuple[str, ...], tuple[int, ...] | None]:
    """{path: shape} of a pytree's leaves (arrays, ShapeDtypeStructs or Orbax metadata), the
    path as strings; None for typed PRNG keys, which are saved as their key data."""
    shapes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
        dtype = getattr(leaf, "dtype", None)
        typed_key = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
        shapes[key] = None if typed_key or not hasattr(leaf, "shape") else tuple(leaf.shape)
    return shapes


def _tree_differences(item: str, saved: Any, target: Any) -> list[str]:
    """How the arrays of a checkpoint item differ from the restore target (empty: they fit)."""
    saved, target = _leaf_shapes(saved), _leaf_shapes(target)
    name = lambda key: f"{item}/{'/'.join(key)}"  # noqa: E731
    differences = [f"{name(key)} missing in the checkpoint" for key in target if key not in saved]
    differences += [f"{name(key)} only in the checkpoint" for key in saved if key not in target]
    differences += [f"{name(key)}: saved {saved[key]}, wanted {target[key]}" for key in target
                    if key in saved and None not in (saved[key], target[key]) and saved[key] != target[key]]
    return differences


def abstract_tree(tree: Any) -> Any:
    """Shape/dtype/sharding of every array leaf (restore targets); other leaves unchanged."""

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(leaf, tree)


# --------------------------------------------------------------------------- integrity

_CHECKSUM_SEEDS = (0x9E3779B9, 0x7F4A7C15)  # two 32-bit lanes: a 64-bit checksum per array


def _fmix32(h, xp=jnp):
    """MurmurHash3's 32-bit finaliser on uint32 values (each input bit flips each output bit
    with p ~ 1/2); xp: numpy or jax.numpy."""
    h = h ^ (h >> xp.uint32(16))
    h = h * xp.uint32(0x85EBCA6B)
    h = h ^ (h >> xp.uint32(13))
    h = h * xp.uint32(0xC2B2AE35)
    return h ^ (h >> xp.uint32(16))


def _checksum(words, xp=jnp) -> list:
    """checksum[k] = sum_i fmix32(w_i XOR (i * s_k + s_k)) mod 2^32 over an array's bits as
    uint32 words w in row-major order (`_CHECKSUM_SEEDS`): defined by the global value, so
    a host copy (numpy) and any sharding over any number of processes (jax) give the same."""
    index = xp.arange(words.size, dtype=xp.uint32)
    return [xp.sum(_fmix32(words ^ (index * xp.uint32(s) + xp.uint32(s)), xp), dtype=xp.uint32)
            for s in _CHECKSUM_SEEDS]


def _host_words(x: np.ndarray) -> np.ndarray:
    """An array's bits as a flat uint32 vector (narrower items widened, 8-byte items split)."""
    x = np.ascontiguousarray(x).reshape(-1)
    if x.dtype.itemsize == 8:
        return x.view(np.uint32)
    return x.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]).astype(np.uint32, copy=False)


def _device_words(x: jax.Array) -> jax.Array:
    """`_host_words` on the devices."""
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).reshape(-1)


def _device_digest(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)
    return jnp.stack(_checksum(_device_words(x))), finite


@functools.lru_cache(maxsize=None)
def _device_digest_program(out_sharding: jax.sharding.Sharding | None) -> Callable:
    """`_device_digest` compiled once per array shape, dtype and sharding, replicated result."""
    return jax.jit(_device_digest, out_shardings=out_sharding)


_HOST_DIGEST_MAX_SIZE = 2**18  # elements: smaller arrays are hashed on the host (no program to compile)


def _digest(x: Any) -> tuple[str, bool]:
    """(checksum as 16 hex digits, all values finite) of one array: small ones from a host copy,
    large ones by one fused program where their shards are (every process must call)."""
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if not isinstance(x, jax.Array) or (x.is_fully_addressable and x.size <= _HOST_DIGEST_MAX_SIZE):
        host = np.asarray(x)
        lanes = _checksum(_host_words(host), np)
        finite = not np.issubdtype(host.dtype, np.inexact) or bool(np.isfinite(host).all())
    else:
        mesh = getattr(x.sharding, "mesh", None)
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()) if mesh is not None else None
        lanes, finite = (np.asarray(y.addressable_data(0)) for y in _device_digest_program(replicated)(x))
        finite = bool(finite)
    return f"{int(lanes[0]):08x}{int(lanes[1]):08x}", finite


def _leaf_name(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def array_digests(items: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """({"<item>/<leaf path>": `_digest` checksum}, names of the floating arrays holding a NaN
    or an infinity) of every array of `items` ({item name: pytree}). Every process of a
    multi-process job must call it; each gets the same result."""
    checksums, nonfinite = {}, []
    for item, tree in items.items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            name = f"{item}/{_leaf_name(path)}"
            checksums[name], finite = _digest(leaf)
            if not finite:
                nonfinite.append(name)
    return checksums, nonfinite


def fingerprint(checksums: dict[str, str]) -> str:
    """The content identity of a checkpoint's weights: BLAKE2b (16 hex digits) of its
    parameters' checksums; equal for equal parameters, whatever the step or path."""
    params = {name: value for name, value in checksums.items() if name.startswith("params/")}
    return hashlib.blake2b(json.dumps(params, sort_keys=True).encode(), digest_size=8).hexdigest()


class SavedRun(Section):
    """What readers of a run's checkpoints use from its saved training config: the policy
    (`model`), the `seed` and the problems (`data`); the other keys are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()

    @classmethod
    def implied_defaults(cls, given: Mapping[str, Any]) -> Mapping[str, Any]:
        return dataset_file_defaults(cls, given)


class CheckpointReader:
    """RUN_DIR/checkpoints through an `orbax.checkpoint.CheckpointManager`, read only.

    Readers (eval, ranking, export) of a run that may still be training neither create the
    directory nor remove a writer's unfinished temporary checkpoint. `saved_config` reads the
    saved config as `config_type`.
    """

    config_type: type[BaseModel] = SavedRun

    def __init__(self, run_dir: str | os.PathLike, *, options: ocp.CheckpointManagerOptions | None = None):
        """options: the manager's (default: read only, no saving)."""
        if options is None:
            options = ocp.CheckpointManagerOptions(max_to_keep=None, save_interval_steps=0, enable_async_checkpointing=False,
                                                   create=False, read_only=True, cleanup_tmp_directories=False)
        directory = os.path.join(os.fspath(run_dir), CHECKPOINT_SUBDIR)
        self.directory = directory if "://" in directory else os.path.abspath(directory)  # gs://... as is
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self.read_only = options.read_only

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, None when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, oldest first."""
        return sorted(self._manager.all_steps())

    def restore_params(self, params: Any, step: int | None = None) -> tuple[int, Any]:
        """Only the parameters of checkpoint `step` (default: latest), like the target `params`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        args = ocp.args.Composite(params=ocp.args.StandardRestore(abstract_tree(params)))
        return step, self._restore(step, args, {"params": params}, None).params

    def saved_config(self, step: int | None = None) -> BaseModel:
        """The config stored with checkpoint `step` (default: latest); FileNotFoundError
        naming the steps there are when there is no such step, CheckpointCorrupt when it
        cannot be read."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step not in self.all_steps():
            raise FileNotFoundError(f"no checkpoint {step} in {self.directory} (have: {self.all_steps()})")
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        except Exception as error:  # noqa: BLE001 - a missing or unreadable JSON file
            raise CheckpointCorrupt(step, self.directory, f"config: {failure_cause(error)}") from None
        return config_from_dict(self.config_type, restored.config, check_paths=False)

    def checksums(self, step: int) -> dict[str, str] | None:
        """The array checksums saved with checkpoint `step`; None for a checkpoint saved
        without them (by an earlier version); CheckpointCorrupt when they cannot be read."""
        if not (epath.Path(self.directory) / str(step) / CHECKSUMS_ITEM).exists():
            return None
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**{CHECKSUMS_ITEM: ocp.args.JsonRestore()}))
        except Exception as error:  # noqa: BLE001 - an unreadable JSON file
            raise CheckpointCorrupt(step, self.directory, f"{CHECKSUMS_ITEM}: {failure_cause(error)}") from None
        return restored[CHECKSUMS_ITEM]

    def fingerprint(self, step: int) -> str | None:
        """`fingerprint` of checkpoint `step`'s parameters (None: saved without checksums)."""
        checksums = self.checksums(step)
        return None if checksums is None else fingerprint(checksums)

    def _restore(self, step: int, args: ocp.args.Composite, targets: dict[str, Any], config: BaseModel | None):
        """`manager.restore`, its failure classified: CheckpointCorrupt for a damaged step,
        ValueError naming the config differences for arrays that do not fit the targets."""
        try:
            restored = self._manager.restore(step, args=args)
        except Exception as error:  # noqa: BLE001 - classified below from the saved metadata
            differences = self._array_differences(step, targets)
            if not differences:  # unreadable metadata, or arrays that fit: the files are what is wrong
                raise CheckpointCorrupt(step, self.directory, failure_cause(error)) from None
            raise ValueError(self._mismatch_message(step, differences, config)) from None
        self._verify(step, {item: getattr(restored, item) for item in targets})
        return restored

    def _verify(self, step: int, restored: dict[str, Any]) -> None:
        """CheckpointCorrupt naming the arrays whose checksum differs from the one saved."""
        saved = self.checksums(step)
        if saved is None:
            return
        read, _ = array_digests(restored)
        wrong = [name for name, value in read.items() if saved.get(name, value) != value]
        if wrong:
            raise CheckpointCorrupt(step, self.directory, f"checksum mismatch in {len(wrong)} arrays "
                                    f"({', '.join(wrong[:3])}{', ...' if len(wrong) > 3 else ''})")

    def _array_differences(self, step: int, targets: dict[str, Any]) -> list[str] | None:
        """How the arrays saved at `step` differ from `targets` ({item: target tree}) by their
        metadata (shapes and tree paths); None when that metadata cannot be read (damage)."""
        differences = []
        for item, target in targets.items():
            checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
            try:
                saved = checkpointer.metadata(os.path.join(self.directory, str(step), item)).item_metadata.tree
            except Exception:  # noqa: BLE001 - missing or unreadable metadata
                return None
            finally:
                checkpointer.close()
            differences += _tree_differences(item, saved, target)
        return differences

    def _mismatch_message(self, step: int, array_differences: list[str], config: BaseModel | None) -> str:
        saved = self.saved_config(step)
        differences = config_diff(saved, config) if config is not None else ["(the current config was not given)"]
        return (f"checkpoint {step} in {self.directory} does not fit this run ("
                + "; ".join(array_differences[:5]) + ").\nIt was saved with a different config:\n  "
                + "\n  ".join(differences or ["(no difference: the model code changed since)"])
                + "\nUse another run_dir, or resume=false to start over in this one (the old run is moved aside).")

    def close(self) -> None:
        """Release the manager's resources."""
        self._manager.close()

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


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

