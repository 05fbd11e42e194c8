"""The training config: `TrainConfig`, the shared sections (`entropy_rl.config`) composed with
the trainer's own.

The defaults ARE the main job: STAPO on the built-in synthetic task with a tiny
Qwen3-architecture policy, sized for a 2-core CPU. YAML files (with `defaults:` bases) and
`key.sub=value` overrides change them (`entropy_rl.configuration`); `load_config` checks the
whole tree before any compute. A constraint lives once, in the class that owns it:
algorithm.loss is the loss library's `PolicyLossConfig` grouped by method
(`entropy_rl.train.loss_config`), the shared sections check themselves (`entropy_rl.config`);
the checks across sections are `TrainConfig`'s.

Sections: model, data (with data.curriculum), rollout, algorithm (with algorithm.loss and its
per-method sub-sections),
optimizer, mesh, checkpoint, logging, eval, warmstart; run-level fields: seed, run_dir,
total_steps, resume, resume_allow_changes, max_consecutive_nonfinite, stall_timeout_s.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Optional

from pydantic import Field, ValidationInfo, field_validator, model_validator

from entropy_rl.config import (DataConfig, EvalConfig, Fraction, LoggingConfig, Mesh, ModelConfig, NonNegative, Positive,
                               RolloutConfig, dataset_file_defaults)
from entropy_rl.configuration import (
    ConfigError,
    Section,
    config_diff,
    config_to_dict,
    load_command_config,
    one_of,
    paths_checked,
    replace,
    save_config,
    to_yaml,
    validate_config,
)
from entropy_rl.configuration import config_from_dict as _config_from_dict
from entropy_rl.losses import ADVANTAGE_ESTIMATORS, PolicyLossConfig, policy_loss_names
from entropy_rl.parallel import MeshConfig
from entropy_rl.train.loss_config import RENAMED_FIELDS, LossConfig

__all__ = ["ConfigError", "TrainConfig", "config_diff", "config_from_dict", "config_to_dict", "load_config", "replace",
           "save_config", "to_yaml", "validate_config", "validate_for_devices"]


# --------------------------------------------------------------------------- sections

class AlgorithmConfig(Section):
    """The RL algorithm: policy loss, advantages, dynamic sampling, update schedule.

    `mini_batch_size` counts prompts per optimizer update (its `rollout.n` responses each,
    the verl convention); `micro_batch_size` counts responses per forward/backward pass
    (exact gradient accumulation; None = the whole mini-batch at once).
    `overlong_buffer_len` > 0 turns on DAPO's soft overlong penalty. `loss` holds the
    policy loss's settings, `policy_loss()` is them as the loss library's config.
    """

    name: Annotated[str, one_of(policy_loss_names)] = "stapo"
    advantage_estimator: Annotated[str, one_of(ADVANTAGE_ESTIMATORS)] = "grpo"
    advantage_eps: Annotated[float, Field(ge=0)] = 1e-6
    dynamic_sampling: bool = False
    max_sampling_rounds: Positive = 3
    overlong_buffer_len: NonNegative = 0
    overlong_penalty_factor: Annotated[float, Field(ge=0)] = 1.0
    ppo_epochs: Positive = 1
    mini_batch_size: Positive = 16
    micro_batch_size: Optional[Positive] = None
    # Packed update (entropy_rl.train.packed_update): the old / reference log-probs and the
    # train step on rows of pack_tokens tokens (None: the padded row's length) holding several
    # sequences, in micro-batches of micro_batch_tokens tokens; "auto" where it saves work.
    packing: Annotated[str, one_of(("auto", "on", "off"))] = "off"
    pack_tokens: Optional[Positive] = None
    micro_batch_tokens: Optional[Positive] = None
    loss: LossConfig = LossConfig()

    def policy_loss(self) -> PolicyLossConfig:
        """The flat `PolicyLossConfig` of loss `name` (what the train step takes)."""
        return self.loss.policy_loss(self.name)


class OptimizerConfig(Section):
    """AdamW with linear warm-up then a constant or cosine schedule, global-norm clipping.
    Cosine ends at learning_rate * min_lr_ratio. Master weights and Adam moments are kept in
    model.param_dtype (float32 in the paper configs); `mu_dtype: bfloat16` stores Adam's first
    moment in bfloat16 (a quarter less optimizer-and-weight memory; optax keeps the second
    moment, whose small values bfloat16 would flush, in the parameters' dtype)."""

    learning_rate: Annotated[float, Field(gt=0)] = 2e-4
    b1: Fraction = 0.9
    b2: Fraction = 0.999
    eps: Annotated[float, Field(ge=0)] = 1e-8
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    warmup_steps: NonNegative = 3
    schedule: Annotated[str, one_of(("constant", "cosine"))] = "constant"
    min_lr_ratio: Fraction = 0.0
    grad_clip_norm: Optional[Annotated[float, Field(gt=0)]] = 1.0
    mu_dtype: Optional[Annotated[str, one_of(("float32", "bfloat16"))]] = None


class CheckpointConfig(Section):
    """Orbax checkpoints in RUN_DIR/checkpoints: every N steps (and the last), keep N."""

    every_steps: Positive = 10
    max_to_keep: Positive = 2
    async_save: bool = True


class WarmStartConfig(Section):
    """Short supervised warm start of a freshly initialised built-in policy (not for HF models)."""

    enabled: bool = True
    steps: NonNegative = 1000
    batch_size: Positive = 32
    learning_rate: Annotated[float, Field(gt=0)] = 3e-3


def check_run_dir(run_dir: str) -> None:
    """A directory this process can create or write into (not a file)."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ValueError(f"{run_dir!r} is a file, not a directory")
    existing = run_dir
    while not os.path.exists(existing):
        existing = os.path.dirname(os.path.abspath(existing))
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{run_dir!r} cannot be written ({existing!r} is not a writable directory)")


class TrainConfig(Section):
    """The whole run. `run_dir` holds checkpoints, metrics.jsonl, TensorBoard events, config.yaml;
    `resume` continues from its latest checkpoint when there is one; training stops after
    `max_consecutive_nonfinite` skipped non-finite updates in a row."""

    seed: int = 0
    run_dir: Annotated[str, Field(min_length=1)] = "runs/stapo-tiny"
    total_steps: NonNegative = 200
    resume: bool = True  # continue from RUN_DIR's latest checkpoint when there is one; false: move the old run aside
    resume_allow_changes: bool = False  # resume although the config changed beyond total_steps, logging, cadences
    max_consecutive_nonfinite: Positive = 5
    stall_timeout_s: NonNegative = 900  # several processes: end one that makes no progress this long (0: never)
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    rollout: RolloutConfig = RolloutConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    mesh: Mesh = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()
    eval: EvalConfig = EvalConfig()
    warmstart: WarmStartConfig = WarmStartConfig()

    renamed_keys = {f"algorithm.loss.{field}": f"algorithm.loss.{key}" for field, key in RENAMED_FIELDS.items()}

    @classmethod
    def implied_defaults(cls, given: Mapping[str, Any]) -> Mapping[str, Any]:
        return dataset_file_defaults(cls, given)

    @field_validator("run_dir")
    @classmethod
    def _writable(cls, run_dir: str, info: ValidationInfo) -> str:
        if paths_checked(info):
            check_run_dir(run_dir)
        return run_dir

    @model_validator(mode="after")
    def _sections_agree(self) -> "TrainConfig":
        a, data, rollout = self.algorithm, self.data, self.rollout
        errors = [f"algorithm.loss.{error}" for error in a.loss.errors(a.name)]
        if a.overlong_buffer_len >= rollout.max_new_tokens:
            errors.append(f"algorithm.overlong_buffer_len: must be < rollout.max_new_tokens={rollout.max_new_tokens}, "
                          f"got {a.overlong_buffer_len}")
        if data.batch_size % a.mini_batch_size:
            errors.append(f"algorithm.mini_batch_size: {a.mini_batch_size} prompts does not divide "
                          f"data.batch_size={data.batch_size} prompts")
        responses = a.mini_batch_size * rollout.n
        if a.micro_batch_size and responses % a.micro_batch_size:
            errors.append(f"algorithm.micro_batch_size: {a.micro_batch_size} responses does not divide a mini-batch of "
                          f"{responses} responses (algorithm.mini_batch_size={a.mini_batch_size} x rollout.n={rollout.n})")
        # every advantage estimator is group-relative: it needs n > 1 samples that can differ
        if rollout.n < 2:
            errors.append(f"rollout.n: the {a.advantage_estimator} advantage needs at least 2 samples per prompt, "
                          f"got {rollout.n}")
        elif rollout.temperature == 0:
            errors.append(f"rollout.temperature: 0 (greedy) makes the {rollout.n} samples of a prompt identical, so "
                          f"every {a.advantage_estimator} advantage is 0 and no update learns; use a temperature > 0")
        if errors:
            raise ValueError("\n".join(errors))
        return self


def config_from_dict(values: Mapping[str, Any], *, check_paths: bool = True) -> TrainConfig:
    """A validated TrainConfig from a nested mapping (missing keys keep their defaults)."""
    return _config_from_dict(TrainConfig, values, check_paths=check_paths)


def load_config(paths: str | os.PathLike | Sequence[str | os.PathLike] | None = None, overrides: Iterable[str] = (),
                *, check_paths: bool = True) -> TrainConfig:
    """The training config (`load_command_config` of `TrainConfig`). check_paths=False skips the
    checks that model, tokenizer, data and run paths exist (a config written for another machine)."""
    return load_command_config(TrainConfig, paths, overrides, check_paths=check_paths)


def validate_for_devices(config: TrainConfig, num_devices: int) -> None:
    """Raise ConfigError when the mesh does not fit `num_devices` or a batch does not split
    evenly over its data-parallel size (data x fsdp). Needs the device count, so it runs once
    jax is up (`entropy-rl train` does it before building anything)."""
    try:
        data, fsdp, _ = config.mesh.axis_sizes(num_devices)
    except ValueError as e:
        raise ConfigError(f"mesh: {e}") from None
    parallel, a, n = data * fsdp, config.algorithm, config.rollout.n
    batches = [("data.batch_size x rollout.n", config.data.batch_size * n),
               ("algorithm.mini_batch_size x rollout.n", a.mini_batch_size * n)]
    if a.micro_batch_size:
        batches.append(("algorithm.micro_batch_size", a.micro_batch_size))
    errors = [f"{name} = {size} responses does not split over mesh.data x mesh.fsdp = {parallel} devices"
              for name, size in batches if size % parallel]
    if errors:
        raise ConfigError("\n".join(errors))
