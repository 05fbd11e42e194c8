"""The `algorithm.loss` section: the loss library's `PolicyLossConfig` grouped by method.

The fields every loss reads (clip, aggregation, reference KL, entropy bonus) are keys of
algorithm.loss; the fields of one method are a sub-section named by its registered loss
(`METHOD_FIELDS`: `algorithm.loss.stapo.prob_threshold` is `stapo_prob_threshold`). A
sub-section of a method other than algorithm.name set away from its defaults is a config
error (`LossConfig.errors`). `LossConfig.policy_loss(method)` is the flat `PolicyLossConfig`
the train step takes. The checks of values are `PolicyLossConfig`'s, each section checking
its own fields and naming them by their keys. `RENAMED_FIELDS` maps the flat names that
configs before the grouping used (`algorithm.loss.stapo_prob_threshold`) to their keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import pydantic
from pydantic import model_validator

from entropy_rl.configuration import Section, derived_fields
from entropy_rl.losses import PolicyLossConfig, get_policy_loss

# {registered loss: {key of its sub-section: PolicyLossConfig field}}
METHOD_FIELDS: dict[str, dict[str, str]] = {
    "stapo": {"prob_threshold": "stapo_prob_threshold", "entropy_quantile": "stapo_entropy_quantile"},
    "sent": {"variant": "sent_variant", "low_entropy_ratio": "sent_low_entropy_ratio", "cov_ratio": "sent_cov_ratio",
             "beta": "sent_beta", "high_mult": "sent_high_mult", "low_mult": "sent_low_mult",
             "kl_kind": "sent_kl_kind"},
    "entropy_topk": {"top_ratio": "entropy_top_ratio"},
    "kl_cov": {"ratio": "kl_cov_ratio", "beta": "kl_cov_beta"},
    "clip_cov": {"ratio": "clip_cov_ratio", "lb": "clip_cov_lb", "ub": "clip_cov_ub"},
}
# {PolicyLossConfig field of one method: its dotted key below algorithm.loss}
RENAMED_FIELDS = {field: f"{method}.{key}" for method, fields in METHOD_FIELDS.items() for key, field in fields.items()}
RUN_DEFAULTS = {"clip_high": 0.28}  # DAPO's clip-higher, the run's default (the library's is 0.2)


def _renamed(message: str, names: Mapping[str, str]) -> str:
    """`message` with each `PolicyLossConfig` field of `names` {field: name} called by its name."""
    return re.sub(rf"\b({'|'.join(map(re.escape, names))})\b", lambda m: names[m[1]], message)


class MethodSettings(Section):
    """One method's sub-section of algorithm.loss: its `PolicyLossConfig` fields (`fields_of`,
    {key: field}) under short keys, with their types, defaults and checks."""

    fields_of: ClassVar[Mapping[str, str]] = {}

    def policy_loss_fields(self) -> dict[str, Any]:
        """{PolicyLossConfig field: value} of this section."""
        return {field: getattr(self, key) for key, field in self.fields_of.items()}

    def changed(self) -> list[tuple[str, Any, Any]]:
        """(key, value, default) of each key set away from its default."""
        default = type(self)()
        return [(key, getattr(self, key), getattr(default, key)) for key in self.fields_of
                if getattr(self, key) != getattr(default, key)]

    @model_validator(mode="after")
    def _owner_checks(self) -> "MethodSettings":
        try:
            PolicyLossConfig(**self.policy_loss_fields())
        except ValueError as error:
            raise ValueError(_renamed(str(error), {field: key for key, field in self.fields_of.items()})) from None
        return self


def _method_section(method: str, fields_of: Mapping[str, str]) -> type[MethodSettings]:
    owner = derived_fields(PolicyLossConfig)
    section = pydantic.create_model(f"{method}_settings", __base__=MethodSettings, __module__=__name__,
                                    **{key: owner[field] for key, field in fields_of.items()})
    section.fields_of = dict(fields_of)
    return section


_SECTIONS = {method: _method_section(method, fields) for method, fields in METHOD_FIELDS.items()}
_SHARED_FIELDS = derived_fields(PolicyLossConfig, RUN_DEFAULTS, exclude=RENAMED_FIELDS)
_SUB_SECTIONS = {method: (section, section()) for method, section in _SECTIONS.items()}


class LossConfig(pydantic.create_model("LossFields", __base__=Section, **_SHARED_FIELDS, **_SUB_SECTIONS)):
    """algorithm.loss: the shared `PolicyLossConfig` fields, and one sub-section per method
    with fields of its own (`METHOD_FIELDS`)."""

    def shared_fields(self) -> dict[str, Any]:
        """{PolicyLossConfig field: value} of the fields every loss reads."""
        return {field: getattr(self, field) for field in _SHARED_FIELDS}

    def policy_loss(self, method: str) -> PolicyLossConfig:
        """The flat config of loss `method`: the shared fields and its own sub-section (the other
        methods' fields at the library's defaults)."""
        own = getattr(self, method).policy_loss_fields() if method in _SECTIONS else {}
        return PolicyLossConfig(**self.shared_fields(), **own)

    def errors(self, method: str) -> list[str]:
        """`["key: why", ...]`, keys below algorithm.loss, of what loss `method` would ignore:
        another method's setting away from its default, and a field of its own that the
        registry's `config_errors` says this config leaves unread (SENT "code" reads no
        kl_kind, "paper" no high_mult / low_mult)."""
        errors = [f"{other}.{key}: a setting of method {other!r}, but algorithm.name is {method!r} "
                  f"(got {value!r}; leave it at its default {default!r})"
                  for other in _SECTIONS if other != method
                  for key, value, default in getattr(self, other).changed()]
        return errors + [_renamed(e, RENAMED_FIELDS) for e in get_policy_loss(method).config_errors(self.policy_loss(method))]

    @model_validator(mode="after")
    def _owner_checks(self) -> "LossConfig":
        PolicyLossConfig(**self.shared_fields())
        return self
