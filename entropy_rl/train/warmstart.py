"""Supervised warm start of a freshly initialised policy on the built-in task's target texts.

A random tiny Qwen3 answers nothing correctly, so RL would see no reward. A short run of
teacher forcing on `prompt -> demonstration + eos` (e.g. `\\boxed{85}<|im_end|>`, or a chain
level's written steps; a dataset file's boxed answers), teaches
the answer format and some arithmetic, leaving room for RL to improve the accuracy:

    loss = - sum_t m_t log pi(y_t | prompt, y_<t) / sum_t m_t      (target tokens only)

with AdamW (constant lr after a short warm-up). Deterministic: the batches are drawn from
`numpy.random.default_rng(seed)` and the update is one compiled function.

Each update finishes before the next is dispatched: queued without bound by asynchronous
dispatch, hundreds of updates whose collectives span the mesh stop making progress on CPU
devices (over gloo between processes: `tests/multiprocess/test_multiprocess_warmstart.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from entropy_rl.data import Problem
from entropy_rl.parallel import MeshBound, mesh_compiler_options
from entropy_rl.parallel.watchdog import beat
from entropy_rl.train.step import UpdateBatch, make_schedule, response_logprobs, tree_shardings


def demonstration(problem: Problem) -> str:
    """The warm start's target text: the built-in task's `meta["solution"]` (its box, or a
    chain level's written steps), else `\\boxed{answer}` (a dataset's worked solutions are long
    LaTeX, not written for the built-in tokenizer)."""
    if problem.source == "synthetic":
        return problem.meta["solution"]
    return f"\\boxed{{{problem.answer}}}"


def target_batch(problems: Sequence[Problem], encode_prompt: Callable[[Problem], list[int]], tokenizer
                 ) -> UpdateBatch:
    """Teacher-forcing arrays of every problem: left-padded prompts [N, P], right-padded
    targets `demonstration(problem) + eos` [N, T] with their mask (advantages and log-probs unused, zero)."""
    prompts = [encode_prompt(p) for p in problems]
    targets = [tokenizer.encode(demonstration(p)) + [tokenizer.eos_token_id] for p in problems]
    num, prompt_len, target_len = len(problems), max(map(len, prompts)), max(map(len, targets))
    pad = tokenizer.pad_token_id
    prompt_tokens = np.full((num, prompt_len), pad, np.int32)
    prompt_mask = np.zeros((num, prompt_len), np.int32)
    tokens = np.full((num, target_len), pad, np.int32)
    mask = np.zeros((num, target_len), np.int32)
    for i, (prompt, target) in enumerate(zip(prompts, targets)):
        prompt_tokens[i, prompt_len - len(prompt):], prompt_mask[i, prompt_len - len(prompt):] = prompt, 1
        tokens[i, :len(target)], mask[i, :len(target)] = target, 1
    zeros = np.zeros((num, target_len), np.float32)
    return UpdateBatch(prompt_tokens=prompt_tokens, prompt_mask=prompt_mask, tokens=tokens, mask=mask,
                       advantages=np.zeros((num,), np.float32), old_logp=zeros)


def warm_start(model: nnx.Module, problems: Sequence[Problem], encode_prompt: Callable[[Problem], list[int]],
               tokenizer, *, steps: int, batch_size: int, learning_rate: float, seed: int,
               mesh: jax.sharding.Mesh, report: Callable[[int, float], None] | None = None) -> dict[str, float]:
    """Fine-tune `model` in place for `steps` AdamW updates of `batch_size` problems on their
    target texts (one compiled update, traced and run under `jax.set_mesh(mesh)`), calling
    `report(updates done, loss)` after each. Returns {"warmstart/loss_first",
    "warmstart/loss_last"} (mean of the first and last 10 updates)."""
    data = target_batch(problems, encode_prompt, tokenizer)
    graphdef, params = nnx.split(model)
    optimizer = optax.adamw(make_schedule(learning_rate=learning_rate, warmup_steps=min(20, steps // 10),
                                          total_steps=steps), weight_decay=0.0)
    shardings = tree_shardings(params, mesh)

    def update(params, opt_state, batch):
        def loss_fn(p):
            logp, _ = response_logprobs(graphdef, p, batch)
            mask = batch.mask.astype(jnp.float32)
            return -jnp.sum(mask * logp) / jnp.sum(mask)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = jax.lax.with_sharding_constraint(optax.apply_updates(params, updates), shardings)
        return params, opt_state, loss

    update = MeshBound(jax.jit(update, compiler_options=mesh_compiler_options(mesh)), mesh)
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(seed)
    losses = []
    for step in range(steps):
        rows = rng.integers(0, len(problems), size=batch_size)
        params, opt_state, loss = update(params, opt_state, jax.tree.map(lambda x: x[rows], data))
        losses.append(float(jax.block_until_ready((params, loss))[1]))
        beat(f"warm start update {step + 1}")
        if report is not None:
            report(step + 1, losses[-1])
    nnx.update(model, params)
    losses = np.asarray(losses, np.float64)
    window = max(1, min(10, len(losses)))
    return {"warmstart/loss_first": float(losses[:window].mean()) if len(losses) else float("nan"),
            "warmstart/loss_last": float(losses[-window:].mean()) if len(losses) else float("nan")}
