"""The config sections every command shares: the policy (`model`), sampling (`rollout`), the
problems (`data`), the device mesh (`mesh`), held-out evaluation (`eval`) and the metric
sinks (`logging`).

`entropy-rl train` composes them with its own sections (`entropy_rl.train.config.TrainConfig`);
`entropy-rl eval`, `rank` and `plan` take the ones they use. A constraint lives once, in the
class that owns it: the model section has `QwenConfig`'s fields and checks, the rollout section
`SamplingConfig`'s, mesh is `MeshConfig` (its `axis_sizes` rule). The mechanism (YAML,
overrides, messages) is `entropy_rl.configuration`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Optional

import pydantic
from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from entropy_rl.configuration import Section, closest, derived_fields, one_of, paths_checked
from entropy_rl.data.loading import BENCHMARK_FILES
from entropy_rl.data.prompts import STYLES as PROMPT_STYLES
from entropy_rl.data.synthetic import DEFAULT_LEVELS
from entropy_rl.data.synthetic import LEVELS as SYNTHETIC_LEVELS
from entropy_rl.model.config import QwenConfig, dtype_name
from entropy_rl.parallel import MESH_AXES, MeshConfig
from entropy_rl.rewards import verifier_names
from entropy_rl.rollout.config import SamplingConfig


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
