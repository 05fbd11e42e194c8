"""The training configuration: one frozen dataclass tree, YAML files, `key.sub=value` overrides.

Every number a run uses lives here. A config comes from (lowest to highest priority):

1. the defaults of the dataclasses below, which ARE the main job: STAPO on the built-in
   synthetic task with a tiny Qwen3-architecture policy, sized for a 2-core CPU;
2. a YAML file, which may name base files under `defaults:` (merged first, in order;
   paths relative to the YAML file, `.yaml` optional);
3. command-line overrides `key.sub=value`, each value coerced to the field's type.

`validate_config` checks the whole tree before any compute and raises one `ConfigError`
listing every problem with its dotted key; an unknown key names the closest valid one.

Sections: model, data (with data.curriculum), rollout, algorithm (with algorithm.loss, the
loss library's `PolicyLossConfig`), optimizer, mesh (`entropy_rl.parallel.MeshConfig`
fields), checkpoint, logging, eval, warmstart; run-level fields: seed, run_dir,
total_steps, resume, max_consecutive_nonfinite.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

import yaml

from entropy_rl.data.loading import BENCHMARK_FILES
from entropy_rl.data.prompts import STYLES as PROMPT_STYLES
from entropy_rl.losses import ADVANTAGE_ESTIMATORS, AGG_MODES, KL_KINDS, PolicyLossConfig, policy_loss_names
from entropy_rl.losses.policy import SENT_VARIANTS
from entropy_rl.parallel import MeshConfig

SCHEDULES = ("constant", "cosine")
DTYPES = ("float32", "bfloat16", "float16")
ON_BAD_ROW = ("error", "skip")


class ConfigError(ValueError):
    """A config that cannot run: every message names the dotted key it is about."""


# --------------------------------------------------------------------------- sections


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The policy: a local HF checkpoint (`hf_path`), else a built-in Qwen3 architecture.

    The architecture fields below are used only when `hf_path` is None; `vocab_size` 0 takes
    the tokenizer's vocabulary size. `tokenizer` is "builtin" (the synthetic task's own) or a
    local HF tokenizer directory; None (the default) = `hf_path`'s own tokenizer when
    `hf_path` is set, else "builtin".
    """

    hf_path: Optional[str] = None
    tokenizer: Optional[str] = None
    vocab_size: int = 0
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 512
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    attention_block_size: int = 512  # longer sequences take blockwise attention (memory ~ T, not T^2)
    logprob_chunk_size: int = 0  # > 0: stream the vocabulary in chunks of this size (big V)


@dataclasses.dataclass(frozen=True)
class CurriculumConfig:
    """SENT's semantic-entropy curriculum: off when `ranking_file` is None."""

    ranking_file: Optional[str] = None
    num_stages: int = 2
    epochs_per_stage: int = 5


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training prompts: the built-in synthetic task, or a dataset file/directory.

    `batch_size` counts prompts per RL step (each gets `rollout.n` responses).
    """

    dataset: str = "synthetic"
    num_synthetic_problems: int = 20000
    synthetic_levels: tuple[int, ...] = (1, 2)
    problem_key: Optional[str] = None
    answer_key: Optional[str] = None
    verifier: str = "synthetic"  # "synthetic" | "math" | a registered verifier
    reward_timeout_s: float = 5.0
    prompt_style: str = "plain"  # "plain" | "chat" (the tokenizer's chat template)
    instruction: Optional[str] = None  # appended to each problem; None = the \\boxed{} default, "" = none
    batch_size: int = 16
    on_bad_row: str = "error"  # "skip" drops bad rows and counts them
    curriculum: CurriculumConfig = dataclasses.field(default_factory=CurriculumConfig)


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Sampling of the responses (the user-facing fields of `entropy_rl.rollout.SamplingConfig`).

    Stop and pad token ids come from the tokenizer, not from here.
    """

    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 8
    prompt_bucket: int = 16
    response_bucket: int = 16
    decode_segments: int = 4
    scheduler: str = "refill"  # refill | static; refill uses slots when max_slots or the budget is set
    max_slots: int = 0
    kv_cache_budget_gb: float = 0.0

    def sampling_config(self, *, stop_token_ids: Iterable[int], pad_token_id: int, **overrides: Any):
        """The rollout engine's `SamplingConfig` for these fields and a tokenizer's ids."""
        from entropy_rl.rollout import SamplingConfig

        fields = dataclasses.asdict(self) | overrides
        return SamplingConfig(stop_token_ids=tuple(stop_token_ids), pad_token_id=pad_token_id, **fields)


@dataclasses.dataclass(frozen=True)
class AlgorithmConfig:
    """The RL algorithm: policy loss, advantages, dynamic sampling, update schedule.

    `mini_batch_size` counts prompts per optimizer update (its `rollout.n` responses each,
    the verl convention); `micro_batch_size` counts responses per forward/backward pass
    (exact gradient accumulation; None = the whole mini-batch at once).
    """

    name: str = "stapo"
    advantage_estimator: str = "grpo"
    advantage_eps: float = 1e-6
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 3
    overlong_buffer_len: int = 0  # DAPO soft overlong penalty; 0 = off
    overlong_penalty_factor: float = 1.0
    ppo_epochs: int = 1
    mini_batch_size: int = 16
    micro_batch_size: Optional[int] = None
    loss: PolicyLossConfig = dataclasses.field(
        default_factory=lambda: PolicyLossConfig(clip_low=0.2, clip_high=0.28)
    )


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warm-up then a constant or cosine schedule, global-norm clipping."""

    learning_rate: float = 5e-4
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 3
    schedule: str = "constant"
    min_lr_ratio: float = 0.0  # cosine: final lr = learning_rate * min_lr_ratio
    grad_clip_norm: Optional[float] = 1.0


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints in RUN_DIR/checkpoints: every N steps (and the last), keep N."""

    every_steps: int = 10
    max_to_keep: int = 2
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Metric sinks: RUN_DIR/metrics.jsonl always; TensorBoard, wandb, a progress bar."""

    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "entropy-rl"
    wandb_entity: Optional[str] = None
    progress_bar: bool = True


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation: before training, every N steps (0 = only before/after), at the end.

    `benchmark` is "synthetic" (held-out problems of the built-in task) or a shipped
    benchmark name (aime24, aime25, amc23, math500, minerva, olympiadbench).
    """

    every_steps: int = 0
    benchmark: str = "synthetic"
    num_problems: int = 256
    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 0  # 0 = rollout.max_new_tokens


@dataclasses.dataclass(frozen=True)
class WarmStartConfig:
    """Short supervised warm start of a freshly initialised built-in policy (not for HF models)."""

    enabled: bool = True
    steps: int = 500
    batch_size: int = 32
    learning_rate: float = 3e-3


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The whole run. `run_dir` holds checkpoints, metrics.jsonl, TensorBoard events, config.yaml."""

    seed: int = 0
    run_dir: str = "runs/stapo-tiny"
    total_steps: int = 120
    resume: bool = True  # continue from RUN_DIR's latest checkpoint when there is one
    max_consecutive_nonfinite: int = 5  # stop after this many skipped non-finite updates in a row
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = dataclasses.field(default_factory=AlgorithmConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    warmstart: WarmStartConfig = dataclasses.field(default_factory=WarmStartConfig)


# --------------------------------------------------------------------------- dict <-> dataclass


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _closest(name: str, choices: Iterable[str]) -> str:
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a config class, sections included."""
    keys = []
    for name, tp in _field_types(cls).items():
        keys.append(prefix + name)
        if _is_config(tp):
            keys += _all_keys(tp, f"{prefix}{name}.")
    return keys


_ALIASES = {"lr": "learning_rate", "steps": "total_steps", "algo": "algorithm", "loss_fn": "name"}


def _unknown_key_message(key: str, siblings: Iterable[str]) -> str:
    """`key` is not a field: name the closest sibling, else the closest key anywhere, else list the siblings."""
    section, _, leaf = key.rpartition(".")
    leaf, siblings = _ALIASES.get(leaf, leaf), list(siblings)
    match = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    if match:
        return f"{key}: unknown key (did you mean {(section + '.' if section else '') + match[0]!r}?)"
    elsewhere = [k for k in _all_keys(TrainConfig) if not key.startswith(k + ".")]
    by_leaf: dict[str, str] = {}
    for k in elsewhere:  # first (outermost) key of each leaf name
        by_leaf.setdefault(k.rpartition(".")[2], k)
    match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
    if match:
        return f"{key}: unknown key (did you mean {by_leaf[match[0]]!r}?)"
    where = f"in {section}" if section else "at the top level"
    return f"{key}: unknown key; the keys {where} are: {', '.join(siblings)}"


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` (from YAML or a command-line string) as the field type `tp`, or ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            if type(None) in args:
                return None
        for arg in args:
            if arg is not type(None):
                return _coerce(value, arg, key)
    if origin is tuple:
        item_type = typing.get_args(tp)[0]
        if isinstance(value, str):
            parsed = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
            value = [] if parsed is None else parsed
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, item_type, key) for v in value if v != "")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).lower() in _TRUE | _FALSE:
            return str(value).lower() in _TRUE
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)  # also YAML's "1e-6", which PyYAML reads as a string
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def _build(base: Any, values: Mapping[str, Any], prefix: str) -> Any:
    """Config instance `base` with the fields in the nested mapping `values` replaced (coerced)."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {values!r}")
    types_ = _field_types(type(base))
    errors, kwargs = [], {}
    for name, value in values.items():
        key = prefix + str(name)
        if name not in types_:
            errors.append(_unknown_key_message(key, types_))
            continue
        try:
            if _is_config(types_[name]):
                kwargs[name] = _build(getattr(base, name), value or {}, key + ".")
            else:
                kwargs[name] = _coerce(value, types_[name], key)
        except ConfigError as e:
            errors.append(str(e))
    if errors:
        raise ConfigError("\n".join(errors))
    try:
        return dataclasses.replace(base, **kwargs)
    except (TypeError, ValueError) as e:  # a nested class's own __post_init__ checks
        check = _SECTION_CHECKS.get(type(base))
        values = types.SimpleNamespace(**(dataclasses.asdict(base) | kwargs))
        errors = check(values) if check else []  # our messages name the key and the closest choice
        raise ConfigError("\n".join(errors) or f"{prefix.rstrip('.') or 'config'}: {e}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """Nested plain dict (tuples as lists) of a config: what YAML and JSON store."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def config_from_dict(values: Mapping[str, Any], *, check_paths: bool = True) -> TrainConfig:
    """A validated TrainConfig from a nested mapping (missing keys keep their defaults)."""
    config = _build(TrainConfig(), values, "")
    validate_config(config, check_paths=check_paths)
    return config


def config_diff(old: TrainConfig, new: TrainConfig) -> list[str]:
    """`["key: old -> new", ...]` for every dotted key whose value differs."""

    def flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        items: dict[str, Any] = {}
        for key, value in values.items():
            if isinstance(value, Mapping):
                items |= flat(value, f"{prefix}{key}.")
            else:
                items[prefix + key] = value
        return items

    before, after = flat(config_to_dict(old)), flat(config_to_dict(new))
    return [f"{key}: {before[key]!r} -> {after[key]!r}" for key in before if before[key] != after[key]]


def to_yaml(config: TrainConfig) -> str:
    """The config as YAML text, loadable by `load_config`."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None)


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    """Write `to_yaml(config)` to `path`."""
    with open(path, "w") as f:
        f.write(to_yaml(config))


# --------------------------------------------------------------------------- YAML + overrides


def _deep_merge(base: dict, update: Mapping) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: str | os.PathLike, seen: tuple[str, ...] = ()) -> dict:
    """A YAML file's mapping with its `defaults:` base files merged underneath it."""
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: `defaults` loop through {' -> '.join(seen)}")
    if not os.path.exists(path) and os.path.exists(path + ".yaml"):
        path += ".yaml"
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    bases = values.pop("defaults", None) or []
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        base_path = os.path.join(os.path.dirname(path), str(base))
        merged = _deep_merge(merged, _read_yaml(base_path, seen + (path,)))
    return _deep_merge(merged, values)


def _set_dotted(values: dict, key: str, value: Any) -> None:
    *sections, leaf = key.split(".")
    node = values
    for section in sections:
        child = node.get(section)
        node[section] = child = dict(child) if isinstance(child, Mapping) else {}
        node = child
    node[leaf] = value


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """`["a.b=1", ...]` -> nested dict of raw strings; coerced later by field type."""
    values: dict = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{item!r}: an override must look like key.sub=value")
        _set_dotted(values, key.strip(), value.strip())
    return values


def load_config(paths: str | os.PathLike | Sequence[str | os.PathLike] | None = None, overrides: Iterable[str] = (),
                *, check_paths: bool = True) -> TrainConfig:
    """Defaults <- YAML file(s) at `paths`, merged in order (each with its `defaults:` bases)
    <- `key.sub=value` overrides.

    Raises ConfigError (every problem, each naming its key) before anything is computed.
    check_paths=False skips the checks that model, tokenizer and data paths exist (to
    validate a config written for another machine).
    """
    paths = [] if paths is None else [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    values: dict = {}
    for path in paths:
        values = _deep_merge(values, _read_yaml(path))
    try:
        return config_from_dict(_deep_merge(values, parse_overrides(overrides)), check_paths=check_paths)
    except ConfigError as e:
        where = f" ({', '.join(map(os.fspath, paths))})" if paths else ""
        raise ConfigError(f"invalid config{where}:\n{e}") from None


def replace(config: Any, **changes: Any) -> Any:
    """`dataclasses.replace` with dotted keys: `replace(cfg, **{"optimizer.learning_rate": 1e-5})`."""
    nested: dict = {}
    for key, value in changes.items():
        _set_dotted(nested, key, value)

    def apply(node: Any, update: Mapping[str, Any]) -> Any:
        fields = {
            k: apply(getattr(node, k), v) if isinstance(v, Mapping) and dataclasses.is_dataclass(getattr(node, k)) else v
            for k, v in update.items()
        }
        return dataclasses.replace(node, **fields)

    return apply(config, nested)


# --------------------------------------------------------------------------- validation


def _choice(key: str, value: str, choices: Iterable[str]) -> list[str]:
    choices = list(choices)
    if value in choices:
        return []
    return [f"{key}: {value!r} is not one of {', '.join(choices)}{_closest(value, choices)}"]


def _positive(key: str, value: float | None, *, allow_zero: bool = False, allow_none: bool = False) -> list[str]:
    if value is None:
        return [] if allow_none else [f"{key}: must be set"]
    if value > 0 or (allow_zero and value == 0):
        return []
    return [f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}"]


def _fraction(key: str, value: float, *, closed: bool = True) -> list[str]:
    ok = 0 <= value <= 1 if closed else 0 < value <= 1
    return [] if ok else [f"{key}: must be in {'[0, 1]' if closed else '(0, 1]'}, got {value!r}"]


def _model_errors(m: ModelConfig, check_paths: bool) -> list[str]:
    errors = _choice("model.dtype", m.dtype, DTYPES) + _choice("model.param_dtype", m.param_dtype, DTYPES)
    if m.tokenizer is not None and m.tokenizer != "builtin" and check_paths and not os.path.isdir(m.tokenizer):
        errors.append(f"model.tokenizer: {m.tokenizer!r} is neither 'builtin' nor a directory")
    errors += _positive("model.attention_block_size", m.attention_block_size)
    if m.hf_path is not None:
        if check_paths and not os.path.isdir(m.hf_path):
            errors.append(f"model.hf_path: {m.hf_path!r} is not a directory (a local HF checkpoint is expected)")
        return errors
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings"):
        errors += _positive(f"model.{name}", getattr(m, name))
    errors += _positive("model.vocab_size", m.vocab_size, allow_zero=True)
    errors += _positive("model.logprob_chunk_size", m.logprob_chunk_size, allow_zero=True)
    if m.num_key_value_heads > 0 and m.num_attention_heads % m.num_key_value_heads:
        errors.append(
            f"model.num_attention_heads: {m.num_attention_heads} is not a multiple of "
            f"model.num_key_value_heads={m.num_key_value_heads}"
        )
    return errors


def _data_errors(d: DataConfig, check_paths: bool) -> list[str]:
    errors = _positive("data.batch_size", d.batch_size) + _positive("data.reward_timeout_s", d.reward_timeout_s)
    errors += _choice("data.prompt_style", d.prompt_style, PROMPT_STYLES)
    errors += _choice("data.on_bad_row", d.on_bad_row, ON_BAD_ROW)
    if d.dataset == "synthetic":
        errors += _positive("data.num_synthetic_problems", d.num_synthetic_problems)
        if not d.synthetic_levels:
            errors.append("data.synthetic_levels: must list at least one level")
    elif check_paths and not os.path.exists(d.dataset):
        errors.append(f"data.dataset: {d.dataset!r} is neither 'synthetic' nor an existing file or directory")
    c = d.curriculum
    if c.ranking_file is not None:
        if check_paths and not os.path.exists(c.ranking_file):
            errors.append(f"data.curriculum.ranking_file: {c.ranking_file!r} does not exist")
        errors += _positive("data.curriculum.num_stages", c.num_stages)
        errors += _positive("data.curriculum.epochs_per_stage", c.epochs_per_stage)
    return errors


def _rollout_errors(r: RolloutConfig) -> list[str]:
    errors = _positive("rollout.max_new_tokens", r.max_new_tokens) + _positive("rollout.n", r.n)
    errors += _positive("rollout.temperature", r.temperature, allow_zero=True)
    errors += _fraction("rollout.top_p", r.top_p, closed=False)
    errors += _positive("rollout.top_k", r.top_k, allow_zero=True)
    errors += _positive("rollout.prompt_bucket", r.prompt_bucket) + _positive("rollout.response_bucket", r.response_bucket)
    errors += _positive("rollout.decode_segments", r.decode_segments)
    return errors


def _loss_errors(loss: PolicyLossConfig) -> list[str]:
    k = "algorithm.loss."
    errors = _choice(k + "loss_agg_mode", loss.loss_agg_mode, AGG_MODES)
    errors += _choice(k + "ref_kl_kind", loss.ref_kl_kind, KL_KINDS) + _choice(k + "sent_kl_kind", loss.sent_kl_kind, KL_KINDS)
    errors += _choice(k + "sent_variant", loss.sent_variant, SENT_VARIANTS)
    errors += _positive(k + "clip_low", loss.clip_low, allow_zero=True)
    errors += _positive(k + "clip_high", loss.clip_high, allow_zero=True)
    if loss.clip_low >= 1:
        errors.append(f"{k}clip_low: must be < 1 (the ratio is clipped at 1 - clip_low), got {loss.clip_low}")
    if loss.dual_clip_c is not None and loss.dual_clip_c <= 1:
        errors.append(f"{k}dual_clip_c: must be > 1 or none, got {loss.dual_clip_c}")
    errors += _positive(k + "horizon", loss.horizon, allow_none=True)
    errors += _positive(k + "clip_cov_clip_ratio", loss.clip_cov_clip_ratio, allow_zero=True)
    for name in ("stapo_prob_threshold", "stapo_entropy_quantile", "sent_low_entropy_ratio", "sent_cov_ratio",
                 "kl_cov_ratio", "clip_cov_ratio", "entropy_top_ratio"):
        errors += _fraction(k + name, getattr(loss, name))
    for name in ("sent_beta", "sent_high_mult", "sent_low_mult", "kl_cov_beta", "ref_kl_coef", "entropy_coef"):
        errors += _positive(k + name, getattr(loss, name), allow_zero=True)
    if loss.clip_cov_lb >= loss.clip_cov_ub:
        errors.append(f"{k}clip_cov_lb: must be < clip_cov_ub={loss.clip_cov_ub}, got {loss.clip_cov_lb}")
    return errors


_SECTION_CHECKS = {PolicyLossConfig: _loss_errors}


def _algorithm_errors(a: AlgorithmConfig, data: DataConfig, rollout: RolloutConfig) -> list[str]:
    errors = _choice("algorithm.name", a.name, policy_loss_names())
    errors += _choice("algorithm.advantage_estimator", a.advantage_estimator, ADVANTAGE_ESTIMATORS)
    errors += _positive("algorithm.advantage_eps", a.advantage_eps, allow_zero=True)
    errors += _positive("algorithm.max_sampling_rounds", a.max_sampling_rounds)
    errors += _positive("algorithm.overlong_buffer_len", a.overlong_buffer_len, allow_zero=True)
    errors += _positive("algorithm.overlong_penalty_factor", a.overlong_penalty_factor, allow_zero=True)
    if a.overlong_buffer_len >= rollout.max_new_tokens > 0:
        errors.append(
            f"algorithm.overlong_buffer_len: must be < rollout.max_new_tokens={rollout.max_new_tokens}, "
            f"got {a.overlong_buffer_len}"
        )
    errors += _positive("algorithm.ppo_epochs", a.ppo_epochs)
    errors += _positive("algorithm.mini_batch_size", a.mini_batch_size)
    errors += _positive("algorithm.micro_batch_size", a.micro_batch_size, allow_none=True)
    if a.mini_batch_size > 0 and data.batch_size > 0 and data.batch_size % a.mini_batch_size:
        errors.append(
            f"algorithm.mini_batch_size: {a.mini_batch_size} prompts does not divide "
            f"data.batch_size={data.batch_size} prompts"
        )
    responses = a.mini_batch_size * rollout.n
    if a.micro_batch_size and responses > 0 and responses % a.micro_batch_size:
        errors.append(
            f"algorithm.micro_batch_size: {a.micro_batch_size} responses does not divide a mini-batch of "
            f"{responses} responses (algorithm.mini_batch_size={a.mini_batch_size} x rollout.n={rollout.n})"
        )
    if a.advantage_estimator in ("grpo", "rloo") and rollout.n < 2:
        errors.append(f"rollout.n: the {a.advantage_estimator} advantage needs at least 2 samples per prompt, got {rollout.n}")
    return errors + _loss_errors(a.loss)


def _optimizer_errors(o: OptimizerConfig) -> list[str]:
    errors = _positive("optimizer.learning_rate", o.learning_rate)
    errors += _fraction("optimizer.b1", o.b1) + _fraction("optimizer.b2", o.b2)
    errors += _positive("optimizer.eps", o.eps, allow_zero=True)
    errors += _positive("optimizer.weight_decay", o.weight_decay, allow_zero=True)
    errors += _positive("optimizer.warmup_steps", o.warmup_steps, allow_zero=True)
    errors += _choice("optimizer.schedule", o.schedule, SCHEDULES)
    errors += _fraction("optimizer.min_lr_ratio", o.min_lr_ratio)
    errors += _positive("optimizer.grad_clip_norm", o.grad_clip_norm, allow_none=True)
    return errors


def _mesh_errors(mesh: MeshConfig) -> list[str]:
    errors = []
    sizes = {name: getattr(mesh, name) for name in ("data", "fsdp", "tensor")}
    for name, size in sizes.items():
        if size == 0 or size < -1:
            errors.append(f"mesh.{name}: must be a positive axis size or -1 (all remaining devices), got {size}")
    if sum(size == -1 for size in sizes.values()) > 1:
        errors.append("mesh: at most one of data, fsdp, tensor may be -1")
    return errors


def _run_errors(c: TrainConfig) -> list[str]:
    errors = _positive("total_steps", c.total_steps, allow_zero=True)
    errors += _positive("max_consecutive_nonfinite", c.max_consecutive_nonfinite)
    if not c.run_dir:
        errors.append("run_dir: must be a directory path")
    errors += _positive("checkpoint.every_steps", c.checkpoint.every_steps)
    errors += _positive("checkpoint.max_to_keep", c.checkpoint.max_to_keep)
    errors += _positive("eval.every_steps", c.eval.every_steps, allow_zero=True)
    errors += _positive("eval.num_problems", c.eval.num_problems) + _positive("eval.n", c.eval.n)
    errors += _positive("eval.temperature", c.eval.temperature, allow_zero=True)
    errors += _fraction("eval.top_p", c.eval.top_p, closed=False)
    errors += _positive("eval.max_new_tokens", c.eval.max_new_tokens, allow_zero=True)
    errors += _choice("eval.benchmark", c.eval.benchmark, ("synthetic", *BENCHMARK_FILES))
    w = c.warmstart
    errors += _positive("warmstart.steps", w.steps, allow_zero=True)
    errors += _positive("warmstart.batch_size", w.batch_size) + _positive("warmstart.learning_rate", w.learning_rate)
    return errors


def validate_config(config: TrainConfig, *, check_paths: bool = True) -> None:
    """Raise ConfigError listing every bad value of `config` (each with its dotted key and why).

    check_paths=False skips the existence checks of model, tokenizer, dataset and ranking files.
    """
    errors = (
        _run_errors(config)
        + _model_errors(config.model, check_paths)
        + _data_errors(config.data, check_paths)
        + _rollout_errors(config.rollout)
        + _algorithm_errors(config.algorithm, config.data, config.rollout)
        + _optimizer_errors(config.optimizer)
        + _mesh_errors(config.mesh)
    )
    if errors:
        raise ConfigError("\n".join(errors))


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
