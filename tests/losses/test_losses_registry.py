"""What each registered loss declares (inputs, flag metric, paper, config errors) and
Clip-Cov's one clip rule: clip_low / clip_high / dual_clip_c, like every clipped loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropy_rl.losses import LossInputs, PolicyLossConfig, get_policy_loss, policy_loss, policy_loss_names
from tests.losses import numpy_reference

BUILT_IN = ("ppo_clip", "stapo", "entropy_topk", "kl_cov", "clip_cov", "sent")


def test_every_built_in_loss_names_its_paper_and_passes_default_config():
    assert set(BUILT_IN) <= set(policy_loss_names())
    for name in BUILT_IN:
        spec = get_policy_loss(name)
        assert spec.name == name and "arXiv" in spec.paper, name
        assert spec.config_errors(PolicyLossConfig()) == [], name


def test_declared_inputs_depend_on_the_config():
    default, with_kl = PolicyLossConfig(), PolicyLossConfig(ref_kl_coef=0.01)
    paper = PolicyLossConfig(sent_variant="paper")
    assert [get_policy_loss(n).needs_reference(default) for n in BUILT_IN] == [False] * 6
    assert [get_policy_loss(n).needs_reference(with_kl) for n in BUILT_IN] == [True] * 6
    assert get_policy_loss("sent").needs_reference(paper)
    assert not get_policy_loss("stapo").needs_reference(paper)
    entropy = [n for n in BUILT_IN if get_policy_loss(n).needs_entropy(default)]
    assert entropy == ["stapo", "entropy_topk", "sent"]
    assert get_policy_loss("ppo_clip").needs_entropy(PolicyLossConfig(entropy_coef=0.001))
    assert [n for n in BUILT_IN if get_policy_loss(n).needs_rng] == ["clip_cov"]
    flags = {n: get_policy_loss(n).flag_metric for n in BUILT_IN}
    assert flags == {"ppo_clip": None, "stapo": "spurious_fraction", "entropy_topk": "masked_fraction",
                     "kl_cov": "penalised_fraction", "clip_cov": "dropped_fraction", "sent": "penalised_fraction"}


def test_config_errors_name_fields_the_loss_would_ignore():
    errors = get_policy_loss("kl_cov").config_errors(PolicyLossConfig(clip_cov_ratio=0.1, kl_cov_ratio=0.1))
    assert len(errors) == 1 and errors[0].startswith("clip_cov_ratio: 0.1 has no effect on policy loss 'kl_cov'")
    code = get_policy_loss("sent").config_errors(PolicyLossConfig(sent_kl_kind="k1"))
    assert [e.split(":")[0] for e in code] == ["sent_kl_kind"]
    paper = PolicyLossConfig(sent_variant="paper", sent_kl_kind="k1", sent_high_mult=3.0)
    assert [e.split(":")[0] for e in get_policy_loss("sent").config_errors(paper)] == ["sent_high_mult"]
    clip = PolicyLossConfig(clip_low=1.0, clip_high=1.0, dual_clip_c=None, entropy_coef=0.01, ref_kl_coef=0.1)
    assert get_policy_loss("clip_cov").config_errors(clip) == []


def _no_drop_batch():
    """Four tokens with ratios (0.5, 1.5, 0.5, 3.0) and advantages (+1, +1, -1, -1)."""
    old_logp = jnp.log(jnp.array([[0.4, 0.2, 0.4, 0.1]]))
    ratio = jnp.array([[0.5, 1.5, 0.5, 3.0]])
    return LossInputs(logp=old_logp + jnp.log(ratio), old_logp=old_logp,
                      advantages=jnp.array([[1.0, 1.0, -1.0, -1.0]]), mask=jnp.ones((1, 4)))


@pytest.mark.parametrize("clip", [dict(clip_low=0.2, clip_high=0.28, dual_clip_c=2.0),
                                  dict(clip_low=1.0, clip_high=1.0, dual_clip_c=None)])
def test_clip_cov_uses_the_ppo_clip_fields(clip):
    # No token's covariance lies in (100, 200): nothing is dropped, so Clip-Cov is the PPO clip.
    config = PolicyLossConfig(clip_cov_lb=100.0, clip_cov_ub=200.0, **clip)
    inputs = _no_drop_batch()
    value, metrics = policy_loss("clip_cov", inputs, config=config, rng=jax.random.key(0))
    batch = {k: np.asarray(v, np.float64) for k, v in inputs._asdict().items() if v is not None}
    per_token = numpy_reference.clip_loss(batch["logp"], batch["old_logp"], batch["advantages"],
                                          config.clip_low, config.clip_high, config.dual_clip_c)
    np.testing.assert_allclose(value, per_token.mean(), rtol=1e-6)
    assert metrics["dropped_fraction"] == 0.0
    # By hand: -A clip(r) per token, the max with -A r, then the dual cap at -A c for A < 0.
    expected = {0.2: (-0.5 - 1.28 + 0.8 + 2.0) / 4, 1.0: (-0.5 - 1.5 + 0.5 + 3.0) / 4}[config.clip_low]
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    ppo, _ = policy_loss("ppo_clip", inputs, config=config)
    np.testing.assert_allclose(value, ppo, rtol=1e-6)
