"""RUN_DIR/samples.jsonl: a few of each step's responses, token by token, as the update saw them.

One row per kept response:

    {"step", "row", "prompt", "response", "reward", "correct", "answer", "length", "advantage",
     "logp": [T'], "entropy": [T'], "flagged": [T'], "dropped": [T'], "penalised": [T'], "flag": str|None,
     "tokens": [T'], "pieces": [T'], "special": {index: name}, "reference"}

over the response's T' tokens. logp / entropy are the policy's at the start of the step (the
update's old log-probs, at the sampling temperature); the flags are the method's whole-batch
selection (`entropy_rl.losses.prepare_policy_loss`) on those log-probs, which is what the
step's first update uses: `flagged` = tokens the method masked or penalised (the tokens its
`loss/<flag>` metric counts, e.g. STAPO's spurious tokens), `dropped` = valid tokens without
weight in the policy-gradient numerator, `penalised` = each token's penalty coefficient
(SENT, KL-Cov; 0 = not penalised; files written before `pieces` existed hold 0/1 there).
`tokens` are the response's token ids and `pieces` their text (`token_pieces`:
"".join(pieces) == response, or null); `special` names the special tokens the decode skips;
`reference` is the problem's reference answer; "grad_sq": [T'] and "cov": [T']
(`mechanism_fields`) are STAPO's gradient magnitude and the covariance the method selects
on (rows written before them lack both). Rows of steps after a resumed run's checkpoint are
dropped (as in metrics.jsonl); the file stops growing at logging.samples_max_mb. Only
process 0 writes.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from entropy_rl import losses
from entropy_rl.jsonl import append_rows, read_rows, rewrite_rows
from entropy_rl.train.step import TrainState, loss_inputs, response_collision

SAMPLES_FILE = "samples.jsonl"


def sample_rows_of(num_rows: int, per_step: int) -> np.ndarray:
    """Rows kept from a batch of num_rows: per_step of them, evenly spread (distinct groups first)."""
    return np.unique(np.linspace(0, num_rows - 1, min(per_step, num_rows)).astype(np.int64))


@functools.partial(jax.jit, static_argnames=("loss_name", "loss_config", "out_sharding"))
def _token_flags(batch, entropy, rows, *, loss_name, loss_config, out_sharding):
    """(flagged, dropped, penalty coefficient) float32 [len(rows), T] of the whole batch's selection."""
    prepared = losses.prepare_policy_loss(loss_name, loss_inputs(batch, batch.old_logp, entropy), config=loss_config,
                                          rng=jax.random.key(0))
    valid = batch.mask != 0
    flags = (prepared.flagged, (valid & (prepared.pg_weight == 0)).astype(jnp.float32),
             jnp.where(valid, prepared.coef, 0.0))
    picked = tuple(f[rows] for f in flags) + (batch.old_logp[rows], entropy[rows], batch.tokens[rows],
                                              batch.mask[rows], batch.prompt_tokens[rows], batch.prompt_mask[rows],
                                              batch.advantages[rows])
    return jax.lax.with_sharding_constraint(picked, out_sharding)


def _host(x: jax.Array) -> np.ndarray:
    """A replicated (possibly multi-process) array as host numpy."""
    return np.asarray(x.addressable_data(0))


def token_pieces(tokenizer, ids: list[int]) -> tuple[list[str] | None, dict[str, str]]:
    """(pieces, special): the text each token adds to `tokenizer.decode(ids, skip_special_tokens=True)`,
    so that "".join(pieces) is that text exactly (else pieces is None: a tokenizer whose decode
    is not the concatenation of its parts, e.g. one that strips a leading space), and
    {str(index): name} of the skipped special tokens.

    A byte-level BPE token may end inside a multi-byte UTF-8 character: its piece is "" and
    the token that completes the character carries the whole character (a window of at most
    4 tokens, the longest UTF-8 character; a sequence still invalid after it keeps the
    decoder's U+FFFD). A special token's piece is "" (the verified text has none).
    """
    pieces, special, start = [], {}, 0
    for i in range(len(ids)):
        text = tokenizer.decode(ids[start:i + 1], skip_special_tokens=True)
        if text.endswith("\ufffd") and i - start < 3 and i + 1 < len(ids):
            pieces.append("")  # an incomplete character: the completing token carries it
            continue
        pieces.append(text)
        start = i + 1
        if not text and (name := tokenizer.decode(ids[i:i + 1], skip_special_tokens=False)):
            special[str(i)] = name
    return (pieces if "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True) else None), special


def sample_records(step: int, batch, entropy, *, rows: np.ndarray, rewards: np.ndarray, correct: np.ndarray,
                   answers: list, references: list | None, tokenizer, loss_name: str, loss_config: Any,
                   flag: str | None, mesh: jax.sharding.Mesh, state: TrainState, temperature: float = 1.0,
                   chunk_size: int = 0) -> list[dict[str, Any]]:
    """samples.jsonl rows for `rows` of the step's update batch (global row indices; every
    process must call it: the flags are one computation over the mesh). `state` holds the
    policy that gave batch.old_logp (its temperature and vocabulary chunk size): the
    mechanism fields (`mechanism_fields`) are computed from it."""
    replicated = NamedSharding(mesh, PartitionSpec())
    picked = _token_flags(batch, entropy, jnp.asarray(rows), loss_name=loss_name, loss_config=loss_config,
                          out_sharding=replicated)
    flagged, dropped, penalised, logp, ent, tokens, mask, prompt_tokens, prompt_mask, advantages = map(_host, picked)
    records = []
    for i, row in enumerate(rows):
        length = int(mask[i].sum())
        prompt = prompt_tokens[i][prompt_mask[i] != 0].tolist()
        response = tokens[i, :length].tolist()
        text = tokenizer.decode(response, skip_special_tokens=True)  # as verified
        pieces, special = token_pieces(tokenizer, response)
        records.append({
            "step": step, "row": int(row),
            "prompt": tokenizer.decode(prompt, skip_special_tokens=False),
            "response": text,
            "reward": float(rewards[row]), "correct": float(correct[row]), "answer": answers[row],
            "reference": None if references is None else references[row],
            "length": length, "advantage": float(advantages[i]),
            "logp": [round(float(x), 5) for x in logp[i, :length]],
            "entropy": [round(float(x), 5) for x in ent[i, :length]],
            "flagged": flagged[i, :length].astype(int).tolist(), "dropped": dropped[i, :length].astype(int).tolist(),
            "penalised": [round(float(x), 5) for x in penalised[i, :length]], "flag": flag,
            "tokens": response, "pieces": pieces, "special": special,
        })
    fields = mechanism_fields(batch, entropy, rows, state=state, loss_name=loss_name, loss_config=loss_config,
                              temperature=temperature, chunk_size=chunk_size, mesh=mesh)
    for record, extra in zip(records, fields):
        record.update(extra)
    return records


@functools.partial(jax.jit, static_argnames=("graphdef", "loss_name", "loss_config", "temperature", "chunk_size",
                                             "out_sharding"))
def _grad_sq_and_cov(params, batch, entropy, rows, *, graphdef, loss_name, loss_config, temperature, chunk_size,
                     out_sharding):
    """(grad_sq, cov) float32 [len(rows), T] and the rows' lengths: 1 - 2p + sum_j p_j^2 from one
    extra forward over the rows, and the method's selection covariance over the whole batch."""
    cov = losses.selection_covariance(loss_name, loss_inputs(batch, batch.old_logp, entropy), loss_config)[rows]
    kept = jax.tree.map(lambda x: x[rows], batch)
    collision = response_collision(graphdef, params, kept, temperature=temperature, chunk_size=chunk_size)
    grad_sq = losses.logit_grad_norm_sq(kept.old_logp, collision, jnp.ones_like(collision))
    return jax.lax.with_sharding_constraint((grad_sq, cov, jnp.sum(kept.mask, axis=1)), out_sharding)


def mechanism_fields(batch, entropy, rows: np.ndarray, *, state: TrainState, loss_name: str, loss_config: Any,
                     temperature: float, chunk_size: int, mesh: jax.sharding.Mesh) -> list[dict[str, list[float]]]:
    """Per kept row, the per-token quantities of the mechanism figures (`entropy_rl.sweep.mechanism`):

      grad_sq_t = ||d log p(y_t) / dz||^2 = 1 - 2 p_t + sum_j p_j^2   (STAPO Theorem 3.1, A = 1;
                  z the logits at the sampling temperature, p_t = exp(old logp_t))
      cov_t     = the centred covariance (logp_t - mean logp)(A_t - mean A) the method's selection
                  ranks (`losses.selection_covariance`: SENT over its low-entropy set, 0 outside)

    The collision probability sum_j p_j^2 takes one no-grad forward over the kept rows only,
    streamed over the vocabulary in chunks of `chunk_size` (0 = all at once). Rounded to 5
    decimals, over each response's tokens."""
    grad_sq, cov, lengths = map(_host, _grad_sq_and_cov(
        state.params, batch, entropy, jnp.asarray(rows), graphdef=state.graphdef, loss_name=loss_name,
        loss_config=loss_config, temperature=temperature, chunk_size=chunk_size,
        out_sharding=NamedSharding(mesh, PartitionSpec())))
    return [{"grad_sq": [round(float(x), 5) for x in grad_sq[i, :n]], "cov": [round(float(x), 5) for x in cov[i, :n]]}
            for i, n in enumerate(lengths.astype(int))]


class SamplesWriter:
    """Appends sample rows to RUN_DIR/samples.jsonl (process 0 only), at most max_mb MB."""

    def __init__(self, run_dir: str, *, start_step: int, max_mb: float, enabled: bool):
        self.path = os.path.join(run_dir, SAMPLES_FILE)
        self.max_bytes = int(max_mb * 2**20)
        self.enabled = enabled
        self.full = False
        if enabled and os.path.exists(self.path):
            rewrite_rows(self.path, [r for r in read_rows(self.path, bad_lines="set_aside")
                                     if r.get("step", -1) <= start_step])

    def write(self, records: list[dict[str, Any]]) -> bool:
        """Append the records; False once the file has reached its size bound (nothing written)."""
        if not self.enabled or self.full:
            return False
        if os.path.exists(self.path) and os.path.getsize(self.path) >= self.max_bytes:
            self.full = True
            return False
        append_rows(self.path, records)
        return True
