"""ppo_clip against a numpy reference, on random inputs and a hand-computed case."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropy_rl.losses import PolicyLossConfig, policy_loss


def numpy_ppo_clip(logp, old_logp, adv, mask, clip_low, clip_high, dual_c):
  ratio = np.exp(np.clip(logp - old_logp, -20, 20))
  loss = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - clip_low, 1 + clip_high))
  if dual_c is not None:
    loss = np.where(adv < 0, np.minimum(loss, -adv * dual_c), loss)
  return loss


def random_batch(seed, batch=5, length=7):
  rng = np.random.default_rng(seed)
  logp = rng.normal(size=(batch, length)) - 2.0
  old_logp = logp + 0.4 * rng.normal(size=(batch, length))
  adv = np.repeat(rng.normal(size=(batch, 1)), length, axis=1)
  mask = (rng.random((batch, length)) > 0.3).astype(np.float32)
  mask[0] = 0.0  # an empty row
  return [x.astype(np.float32) for x in (logp, old_logp, adv, mask)]


@pytest.mark.parametrize("dual_c", [3.0, None])
def test_ppo_clip_matches_numpy_token_mean(dual_c):
  logp, old_logp, adv, mask = random_batch(0)
  config = PolicyLossConfig(clip_low=0.2, clip_high=0.28, dual_clip_c=dual_c)
  loss, metrics = policy_loss("ppo_clip", logp=logp, old_logp=old_logp, advantages=adv,
                              mask=mask, config=config)
  per_token = numpy_ppo_clip(logp, old_logp, adv, mask, 0.2, 0.28, dual_c)
  np.testing.assert_allclose(loss, (per_token * mask).sum() / mask.sum(), rtol=1e-6)
  ratio = np.exp(logp - old_logp)
  expected_high = ((adv > 0) & (ratio > 1.28) & (mask > 0)).sum() / mask.sum()
  np.testing.assert_allclose(metrics["clip_frac_high"], expected_high, rtol=1e-6)


def test_ppo_clip_hand_computed():
  # r = e^{log 1.5} = 1.5 with A = 1 -> clipped to 1.2: loss -1.2;
  # r = 0.5 with A = -2 -> max(1.0, 2 * 0.8 = 1.6) = 1.6; dual cap 2 * 3 = 6 not active.
  logp = jnp.log(jnp.array([[1.5, 0.5]]))
  old_logp = jnp.zeros((1, 2))
  adv = jnp.array([[1.0, -2.0]])
  loss, metrics = policy_loss("ppo_clip", logp=logp, old_logp=old_logp, advantages=adv,
                              mask=jnp.ones((1, 2)), config=PolicyLossConfig())
  np.testing.assert_allclose(loss, (-1.2 + 1.6) / 2, rtol=1e-6)
  np.testing.assert_allclose(metrics["clip_frac_high"], 0.5)
  np.testing.assert_allclose(metrics["clip_frac_low"], 0.5)
  grad = jax.grad(lambda lp: policy_loss("ppo_clip", logp=lp, old_logp=old_logp,
                                         advantages=adv, mask=jnp.ones((1, 2)),
                                         config=PolicyLossConfig())[0])(logp)
  np.testing.assert_array_equal(grad, 0.0)  # both tokens clipped
