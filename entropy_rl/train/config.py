"""The training config and the sections `entropy-rl eval` and `entropy-rl rank` share with it.

The defaults ARE the main job: STAPO on the built-in synthetic task with a tiny
Qwen3-architecture policy, sized for a 2-core CPU. YAML files (with `defaults:` bases) and
`key.sub=value` overrides change them (`entropy_rl.configuration`); `load_config` checks the
whole tree before any compute. A constraint lives once, in the class that owns it: the model
section has `QwenConfig`'s fields and checks, the rollout section `SamplingConfig`'s,
algorithm.loss is the loss library's `PolicyLossConfig` and mesh is `MeshConfig` (its
`axis_sizes` rule); the checks across sections are `TrainConfig`'s.

Sections: model, data (with data.curriculum), rollout, algorithm (with algorithm.loss),
optimizer, mesh, checkpoint, logging, eval, warmstart; run-level fields: seed, run_dir,
total_steps, resume, resume_allow_changes, max_consecutive_nonfinite, stall_timeout_s.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Optional

import pydantic
from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from entropy_rl.configuration import (
    ConfigError,
    Section,
    closest,
    config_diff,
    config_to_dict,
    derived_fields,
    load_command_config,
    one_of,
    paths_checked,
    replace,
    save_config,
    to_yaml,
    validate_config,
)
from entropy_rl.configuration import config_from_dict as _config_from_dict
from entropy_rl.data.loading import BENCHMARK_FILES
from entropy_rl.data.prompts import STYLES as PROMPT_STYLES
from entropy_rl.data.synthetic import DEFAULT_LEVELS
from entropy_rl.data.synthetic import LEVELS as SYNTHETIC_LEVELS
from entropy_rl.losses import ADVANTAGE_ESTIMATORS, PolicyLossConfig, get_policy_loss, policy_loss_names
from entropy_rl.model.config import QwenConfig, dtype_name
from entropy_rl.parallel import MESH_AXES, MeshConfig
from entropy_rl.rewards import verifier_names
from entropy_rl.rollout.config import SamplingConfig

__all__ = ["ConfigError", "TrainConfig", "config_diff", "config_from_dict", "config_to_dict", "load_config", "replace",
           "save_config", "to_yaml", "validate_config", "validate_for_devices"]


def _check_mesh(mesh: MeshConfig) -> MeshConfig:
    """`MeshConfig.axis_sizes`' rule (positive sizes, at most one -1, whole slices) on a device
    count it fits."""
    mesh.axis_sizes(max(mesh.slices, 1) * math.prod(abs(getattr(mesh, axis)) or 1 for axis in MESH_AXES))
    return mesh


Mesh = Annotated[MeshConfig, AfterValidator(_check_mesh)]
Positive = Annotated[int, Field(gt=0)]
NonNegative = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


# --------------------------------------------------------------------------- sections

# QwenConfig fields read from `model.hf_path`'s config.json when it is set; every other
# QwenConfig field (dtypes, remat, attention settings) applies to HF checkpoints too.
ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                       "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta",
                       "rms_norm_eps", "tie_word_embeddings", "attention_bias", "qk_norm",
                       "max_position_embeddings")
_BUILTIN_POLICY = dict(vocab_size=0, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=10000.0,
                       tie_word_embeddings=True, max_position_embeddings=512)


class _PolicySource(Section):
    hf_path: Optional[str] = None
    tokenizer: Optional[str] = None


class ModelConfig(pydantic.create_model("QwenFields", __base__=_PolicySource, **derived_fields(QwenConfig, _BUILTIN_POLICY))):
    """The policy: a local HF checkpoint (`hf_path`), else a built-in Qwen3 architecture.

    Every `QwenConfig` field, with its checks; the architecture fields are used only when
    `hf_path` is None, and `vocab_size` 0 takes the tokenizer's vocabulary size. `tokenizer`
    is "builtin" (the synthetic task's own) or a local HF tokenizer directory; None = `hf_path`'s
    own tokenizer when `hf_path` is set, else "builtin". `logprob_chunk_size` > 0 streams the
    vocabulary in chunks of this size (big V).
    """

    logprob_chunk_size: NonNegative = 0

    def qwen_config(self, tokenizer_vocab_size: int) -> QwenConfig:
        """The policy's `QwenConfig`: `hf_path`'s architecture, else these fields (vocabulary:
        `vocab_size`, or `tokenizer_vocab_size` when that is 0); the other fields as set here."""
        if self.hf_path is not None:
            return QwenConfig.from_hf(self.hf_path, **self.runtime_options())
        return QwenConfig(**self._qwen_fields() | {"vocab_size": self.vocab_size or tokenizer_vocab_size})

    def runtime_options(self) -> dict[str, Any]:
        """The QwenConfig fields that are not the architecture (dtypes, remat and its policy,
        scan_layers, attention settings): what this section sets for any checkpoint."""
        return {k: v for k, v in self._qwen_fields().items() if k not in ARCHITECTURE_FIELDS}

    def _qwen_fields(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(QwenConfig)}

    @model_validator(mode="after")
    def _qwen_checks(self, info: ValidationInfo) -> "ModelConfig":
        if self.vocab_size < 0:
            raise ValueError(f"vocab_size must be >= 0 (0 = the tokenizer's), got {self.vocab_size}")
        for name in ("dtype", "param_dtype"):  # QwenConfig's own check, with the field named
            try:
                dtype_name(getattr(self, name))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{name} {e}") from None
        QwenConfig(**self._qwen_fields() | {"vocab_size": self.vocab_size or 1})
        if paths_checked(info):
            if self.tokenizer not in (None, "builtin") and not os.path.isdir(self.tokenizer):
                raise ValueError(f"tokenizer {self.tokenizer!r} is neither 'builtin' nor a directory")
            if self.hf_path is not None and not os.path.isdir(self.hf_path):
                raise ValueError(f"hf_path {self.hf_path!r} is not a directory (a local HF checkpoint is expected)")
        return self


# SamplingConfig fields that come from the tokenizer or the engine, not from a config file.
ENGINE_FIELDS = ("stop_token_ids", "pad_token_id", "progress_chunk")
_TRAIN_ROLLOUT = dict(max_new_tokens=16, n=8, prompt_bucket=16, response_bucket=16)


class RolloutConfig(pydantic.create_model("SamplingFields", __base__=Section,
                                          **derived_fields(SamplingConfig, _TRAIN_ROLLOUT, ENGINE_FIELDS))):
    """Sampling of the responses: every `SamplingConfig` field but the tokenizer's ids, with its checks."""

    def sampling_config(self, *, stop_token_ids: Iterable[int], pad_token_id: int, **overrides: Any) -> SamplingConfig:
        """The rollout engine's `SamplingConfig` for these fields and a tokenizer's ids."""
        return SamplingConfig(**self.model_dump() | overrides, stop_token_ids=tuple(stop_token_ids), pad_token_id=pad_token_id)

    @model_validator(mode="after")
    def _sampling_checks(self) -> "RolloutConfig":
        self.sampling_config(stop_token_ids=(), pad_token_id=0)
        return self


class CurriculumConfig(Section):
    """SENT's semantic-entropy curriculum: off when `ranking_file` is None."""

    ranking_file: Optional[str] = None
    num_stages: Positive = 2
    epochs_per_stage: Positive = 5
    on_missing: Annotated[str, one_of(("error", "drop"))] = "error"  # a problem without a ranking row

    @field_validator("ranking_file")
    @classmethod
    def _exists(cls, path: Optional[str], info: ValidationInfo) -> Optional[str]:
        if path is not None and paths_checked(info) and not os.path.exists(path):
            raise ValueError(f"{path!r} does not exist: write it with `entropy-rl rank` (same data.* settings), "
                             "or set data.curriculum.ranking_file=null to train without the curriculum")
        return path


class DataConfig(Section):
    """Training prompts: the built-in synthetic task, or a dataset file/directory.

    `synthetic_levels` numbers the task's levels from 1 (`level_names`); `verifier` is a
    registered verifier ("synthetic", "math", ...); `instruction` is appended to each problem
    (None = the \\boxed{} default for datasets, none for the synthetic task; "" = none);
    `batch_size` counts prompts per RL step (each gets `rollout.n` responses); `on_bad_row`
    "skip" drops bad dataset rows and counts them; `deduplicate` drops repeated problems
    (same statement up to whitespace; counted); `max_prompt_length` (tokens, None = no limit) drops
    longer prompts, naming them in a warning.
    """

    dataset: str = "synthetic"
    num_synthetic_problems: Positive = 20000
    synthetic_levels: tuple[int, ...] = tuple(list(SYNTHETIC_LEVELS).index(name) + 1 for name in DEFAULT_LEVELS)
    problem_key: Optional[str] = None
    answer_key: Optional[str] = None
    verifier: str = "synthetic"
    reward_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    prompt_style: Annotated[str, one_of(PROMPT_STYLES)] = "plain"
    instruction: Optional[str] = None
    batch_size: Positive = 16
    on_bad_row: Annotated[str, one_of(("error", "skip"))] = "error"
    deduplicate: bool = True
    max_prompt_length: Optional[Positive] = None
    curriculum: CurriculumConfig = CurriculumConfig()

    @property
    def level_names(self) -> tuple[str, ...]:
        """`synthetic_levels` as the synthetic task's level names (1 = `LEVELS`' first)."""
        return tuple(list(SYNTHETIC_LEVELS)[level - 1] for level in self.synthetic_levels)

    @field_validator("synthetic_levels")
    @classmethod
    def _known_levels(cls, levels: tuple[int, ...]) -> tuple[int, ...]:
        names = list(SYNTHETIC_LEVELS)
        bad = [level for level in levels if not 1 <= level <= len(names)]
        if bad or not levels:
            known = ", ".join(f"{i} {name}" for i, name in enumerate(names, 1))
            raise ValueError(f"{bad or 'no level'}: levels are numbered 1..{len(names)} ({known})")
        return levels

    @field_validator("verifier")
    @classmethod
    def _registered_verifier(cls, verifier: str, info: ValidationInfo) -> str:
        # like a path, a name registered in this process: a saved config read elsewhere (export,
        # eval of a run that registered its own verifier) skips it with the path checks
        return one_of(verifier_names).func(verifier) if paths_checked(info) else verifier

    @field_validator("dataset")
    @classmethod
    def _dataset_exists(cls, dataset: str, info: ValidationInfo) -> str:
        if dataset != "synthetic" and paths_checked(info) and not os.path.exists(dataset):
            raise ValueError(f"{dataset!r} is neither 'synthetic' nor an existing file or directory")
        return dataset


class AlgorithmConfig(Section):
    """The RL algorithm: policy loss, advantages, dynamic sampling, update schedule.

    `mini_batch_size` counts prompts per optimizer update (its `rollout.n` responses each,
    the verl convention); `micro_batch_size` counts responses per forward/backward pass
    (exact gradient accumulation; None = the whole mini-batch at once).
    `overlong_buffer_len` > 0 turns on DAPO's soft overlong penalty.
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
    loss: PolicyLossConfig = PolicyLossConfig(clip_low=0.2, clip_high=0.28)


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


class LoggingConfig(Section):
    """Metric sinks: RUN_DIR/metrics.jsonl always; TensorBoard, wandb, a progress bar (a live
    bar on a terminal, else a plain line every log_every_s seconds); RUN_DIR/samples.jsonl."""

    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "entropy-rl"
    wandb_entity: Optional[str] = None
    progress_bar: bool = True
    log_every_s: Annotated[float, Field(gt=0)] = 30.0  # plain progress lines when output is not a terminal
    samples_per_step: NonNegative = 4  # responses kept in RUN_DIR/samples.jsonl per step
    samples_max_mb: Annotated[float, Field(gt=0)] = 50.0  # samples.jsonl stops growing past this


def check_benchmark(benchmark: str, *, check_paths: bool = True) -> str:
    """"synthetic", a shipped benchmark name or (as `entropy-rl eval` takes) a problem file."""
    names = ("synthetic", *BENCHMARK_FILES)
    if benchmark in names or not check_paths or os.path.exists(benchmark):
        return benchmark
    raise ValueError(f"{benchmark!r} is not one of {', '.join(names)} nor an existing file{closest(benchmark, names)}")


class EvalConfig(Section):
    """Held-out evaluation: before training, every N steps (0 = only before/after), at the end.

    `benchmark` is "synthetic" (held-out problems of the built-in task at the training
    levels), a shipped benchmark name (aime24, aime25, amc23, math500, minerva, olympiadbench)
    or a problem file. `max_new_tokens` 0 = rollout.max_new_tokens.
    """

    every_steps: NonNegative = 0
    benchmark: str = "synthetic"
    num_problems: Positive = 256
    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: NonNegative = 0

    @field_validator("benchmark")
    @classmethod
    def _known_benchmark(cls, benchmark: str, info: ValidationInfo) -> str:
        return check_benchmark(benchmark, check_paths=paths_checked(info))

    @model_validator(mode="after")
    def _sampling_checks(self) -> "EvalConfig":
        SamplingConfig(n=self.n, temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens or 1)
        return self


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


# what a dataset file (data.dataset other than "synthetic") implies for the keys not given
DATASET_FILE_DEFAULTS = {("data", "verifier"): "math", ("eval", "benchmark"): "math500", ("warmstart", "enabled"): False}


def dataset_file_defaults(cls: type[Section], given: Mapping[str, Any]) -> Mapping[str, Any]:
    """`given` plus `DATASET_FILE_DEFAULTS` of `cls`'s sections for the keys not given, when
    data.dataset names a file; `given` itself for the synthetic task."""
    data = given.get("data")
    if not isinstance(data, Mapping) or data.get("dataset", "synthetic") == "synthetic":
        return given
    values = {name: dict(section) if isinstance(section, Mapping) else section for name, section in given.items()}
    for (section, key), value in DATASET_FILE_DEFAULTS.items():
        if section in cls.model_fields and isinstance(values.get(section, {}), Mapping):
            values.setdefault(section, {}).setdefault(key, value)
    return values


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
        # loss fields another method reads, set here where the chosen loss would ignore them
        errors = [f"algorithm.loss.{error}" for error in get_policy_loss(a.name).config_errors(a.loss)]
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
