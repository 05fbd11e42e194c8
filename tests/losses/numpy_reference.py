"""Independent float64 numpy implementations of the policy losses (docs/algorithms.md), for tests."""

import math

import numpy as np


def top_k(values, mask, k, largest=True):
    """0/1 mask of the k valid entries with the largest (smallest) values, ties by position."""
    flat, valid = values.reshape(-1), mask.reshape(-1) > 0
    index = np.flatnonzero(valid)
    order = np.argsort(-flat[index] if largest else flat[index], kind="stable")
    selected = np.zeros(flat.shape)
    selected[index[order[:k]]] = 1.0
    return selected.reshape(values.shape)


def covariance(logp, adv, mask):
    valid = mask > 0
    if not valid.any():
        return np.zeros_like(logp)
    return np.where(valid, (logp - logp[valid].mean()) * (adv - adv[valid].mean()), 0.0)


def aggregate(values, numerator_mask, denominator_mask, mode, horizon=None):
    per_row = (values * numerator_mask).sum(1)
    tokens = denominator_mask.sum(1)
    rows = tokens > 0
    if mode == "token-mean":
        total = tokens.sum()
        return per_row.sum() / total if total else 0.0
    if mode == "seq-mean-token-sum":
        return per_row[rows].mean() if rows.any() else 0.0
    if mode == "seq-mean-token-mean":
        return (per_row[rows] / tokens[rows]).mean() if rows.any() else 0.0
    return per_row.sum() / (values.shape[0] * (horizon or values.shape[1]))


def clip_loss(logp, old_logp, adv, clip_low, clip_high, dual_c):
    ratio = np.exp(np.clip(logp - old_logp, -20, 20))
    loss = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - clip_low, 1 + clip_high))
    if dual_c is not None:
        loss = np.where(adv < 0, np.minimum(loss, -adv * dual_c), loss)
    return loss


def k3(logp, ref_logp):
    x = np.clip(ref_logp - logp, -20, 20)
    return np.clip(np.exp(x) - x - 1, -10, 10)


def selection(name, batch, config):
    """(numerator mask, denominator mask, penalty coefficient) of a method, float64 [B, T]."""
    logp, adv, mask, entropy = batch["logp"], batch["advantages"], batch["mask"], batch["entropy"]
    valid = mask > 0
    n = int(mask.sum())
    zeros = np.zeros_like(mask)
    if name == "stapo":
        q = np.quantile(entropy[valid], config.stapo_entropy_quantile)
        spurious = valid & (adv > 0) & (np.exp(logp) < config.stapo_prob_threshold) & (entropy < q)
        keep = mask * (1 - spurious)
        return keep, keep, zeros
    if name == "entropy_topk":
        keep = top_k(entropy, mask, math.ceil(config.entropy_top_ratio * n))
        return keep, keep, zeros
    if name == "kl_cov":
        penalised = top_k(covariance(logp, adv, mask), mask, max(1, int(n * config.kl_cov_ratio)))
        return mask, mask, config.kl_cov_beta * penalised
    if name == "sent":
        low = top_k(entropy, mask, max(1, int(n * config.sent_low_entropy_ratio)), largest=False)
        cov = covariance(logp, adv, low)
        count = max(1, int(low.sum() * config.sent_cov_ratio))
        high = top_k(cov, low, count)
        if config.sent_variant == "paper":
            return mask, mask, config.sent_beta * high
        bottom = top_k(cov, low, count, largest=False) * (1 - high)
        return (
            mask,
            mask,
            config.sent_beta * (config.sent_high_mult * high + config.sent_low_mult * bottom),
        )
    return mask, mask, zeros


def per_token_loss(name, batch, coef, config):
    logp, old_logp, adv = batch["logp"], batch["old_logp"], batch["advantages"]
    log_ratio = np.clip(logp - old_logp, -20, 20)
    if name in ("kl_cov",) or (name == "sent" and config.sent_variant == "code"):
        return -adv * np.exp(log_ratio) + coef * np.abs(log_ratio)
    loss = clip_loss(logp, old_logp, adv, config.clip_low, config.clip_high, config.dual_clip_c)
    if name == "sent":
        loss = loss + coef * k3(logp, batch["ref_logp"])
    return loss


def policy_loss(name, batch, config, numerator_mask=None):
    """The total loss; ``numerator_mask`` overrides the selection's (Clip-Cov's random drop)."""
    mask = np.asarray(batch["mask"], np.float64)
    batch = {
        k: np.where(mask > 0, np.asarray(v, np.float64), 0.0)  # padding may hold garbage
        for k, v in batch.items()
        if v is not None
    }
    num_mask, den_mask, coef = selection(name, batch, config)
    if numerator_mask is not None:
        num_mask = numerator_mask
    mode, horizon, mask = config.loss_agg_mode, config.horizon, batch["mask"]
    total = aggregate(per_token_loss(name, batch, coef, config), num_mask, den_mask, mode, horizon)
    aux = np.zeros_like(mask)
    if config.ref_kl_coef:
        aux = aux + config.ref_kl_coef * k3(batch["logp"], batch["ref_logp"])
    if config.entropy_coef:
        aux = aux - config.entropy_coef * batch["entropy"]
    return total + aggregate(aux, mask, mask, mode, horizon)
