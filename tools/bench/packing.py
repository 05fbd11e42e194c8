"""The update phase (old log-probs + one train step) on packed rows against padded rows.

A small Qwen3-shaped model, B = prompts x n responses of skewed lengths, one mini-batch in
micro-batches of `--micro` responses (padded) or as many tokens (packed,
entropy_rl.train.packed_update's default budget). Length distributions, cap T:

    skewed     the refill benchmark's (tools/bench/rollout.py --lengths skewed): a row stops
               at each step with probability 4 / T (geometric, median ~0.17 T, ~2% at the cap)
    lognormal  the issue's median-3k model of the paper configs' 15,360-token cap, scaled to
               T: median 0.2 T, sigma 0.8 (useful fraction 0.27 of the padded MLP tokens,
               0.12 of the attention scores at the 15k cap)

Prompts are 0.25-1 x P tokens, one length per group. Timing: interleaved best-of rounds
(tools/bench/timing.py), wall and process CPU seconds, compile excluded; the packed
log-probs are checked against the padded ones (max |difference| printed).

    python tools/bench/packing.py --lengths lognormal
    python tools/bench/packing.py --lengths skewed --layers 4 --hidden 256
    tools/bench/packing_device.sh          # the same ratio at a larger scale on a GPU / TPU
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from entropy_rl import losses
from entropy_rl.model import Qwen, tiny_config
from entropy_rl.parallel import MeshConfig, make_mesh, shard_model
from entropy_rl.train.packed_update import budgeted_layout
from entropy_rl.train.packing import lognormal_lengths, padded_tokens
from entropy_rl.train.step import (StepConfig, UpdateBatch, create_train_state, make_no_grad_logprobs,
                                   make_packed_no_grad_logprobs, make_packed_train_step, make_train_step,
                                   skip_non_finite)
from timing import best_times


def response_lengths(kind: str, rows: int, cap: int, rng) -> np.ndarray:
    if kind == "skewed":
        return np.minimum(rng.geometric(4 / cap, rows), cap)
    return lognormal_lengths(rng, rows, cap, median=0.2 * cap)


def make_batch(args, rng) -> UpdateBatch:
    rows, vocab = args.prompts * args.n, args.vocab
    prompts = np.repeat(rng.integers(args.prompt // 4, args.prompt + 1, args.prompts), args.n)
    responses = response_lengths(args.lengths, rows, args.new_tokens, rng)
    prompt_mask = (np.arange(args.prompt)[None] >= args.prompt - prompts[:, None]).astype(np.int32)
    mask = (np.arange(args.new_tokens)[None] < responses[:, None]).astype(np.int32)
    return UpdateBatch(prompt_tokens=(rng.integers(1, vocab, prompt_mask.shape) * prompt_mask).astype(np.int32),
                       prompt_mask=prompt_mask, tokens=(rng.integers(1, vocab, mask.shape) * mask).astype(np.int32),
                       mask=mask, advantages=rng.normal(size=rows).astype(np.float32),
                       old_logp=np.where(mask, -1.0, 0.0).astype(np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", choices=("skewed", "lognormal"), default="lognormal")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=32, help="prompt columns P")
    parser.add_argument("--new-tokens", type=int, default=256, help="response cap T")
    parser.add_argument("--micro", type=int, default=8, help="responses per padded micro-batch")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--attention", default="auto", help="model.attention_implementation")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    config = tiny_config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=3 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 32, num_key_value_heads=
                         max(1, args.hidden // 64), head_dim=32, dtype=args.dtype, max_position_embeddings=65536,
                         attention_implementation=args.attention)
    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    model = shard_model(Qwen(config, rngs=nnx.Rngs(0)), mesh)
    optimizer = skip_non_finite(optax.adamw(1e-6))
    rows = args.prompts * args.n
    step_config = StepConfig("stapo", losses.PolicyLossConfig(clip_high=0.28, stapo_prob_threshold=0.05),
                             chunk_size=1024, num_micro_batches=rows // args.micro)
    state = create_train_state(model, optimizer, mesh)
    schedule = optax.constant_schedule(1e-6)
    padded_step = make_train_step(state, mesh, optimizer=optimizer, schedule=schedule, config=step_config)
    packed_step = make_packed_train_step(state, mesh, optimizer=optimizer, schedule=schedule, config=step_config)
    padded_forward = make_no_grad_logprobs(state.graphdef, mesh, chunk_size=1024,
                                           num_micro_batches=step_config.num_micro_batches)
    packed_forward = make_packed_no_grad_logprobs(state.graphdef, mesh, chunk_size=1024)

    batch = make_batch(args, rng)
    layout = budgeted_layout(batch.prompt_mask.sum(1), batch.mask.sum(1), prompt_columns=args.prompt,
                             response_columns=args.new_tokens, pack_tokens=None, micro_batch_tokens=None,
                             micro_rows=args.micro, row_multiple=1)
    states = {"padded": state, "packed": jax.jit(lambda s: jax.tree.map(jnp.copy, s))(state)}  # each donated

    def padded():
        logp, _ = padded_forward(states["padded"].params, batch)
        states["padded"], metrics = padded_step(states["padded"], batch.replace(old_logp=logp), jax.random.key(0))
        return jax.block_until_ready((logp, metrics))

    def packed():
        logp, _ = packed_forward(states["packed"].params, batch, layout)
        states["packed"], metrics = packed_step(states["packed"], batch.replace(old_logp=logp), layout,
                                                jax.random.key(0))
        return jax.block_until_ready((logp, metrics))

    valid = batch.mask == 1
    difference = np.abs(np.asarray(padded()[0]) - np.asarray(packed()[0]))[valid].max()
    wall, cpu = best_times({"padded": padded, "packed": packed}, args.repeats, warm_up=False)
    real = int(np.sum(batch.prompt_mask.sum(1) + batch.mask.sum(1) - 1))
    padded_total = padded_tokens(rows, args.prompt, args.new_tokens)
    print(f"{args.lengths}: {rows} responses, cap {args.new_tokens}, response median "
          f"{np.median(batch.mask.sum(1)):.0f}, model {args.layers} layers x {args.hidden}, vocab {args.vocab}, "
          f"{args.dtype}, {jax.devices()[0].platform}; packed layout {layout.source.shape} (micro-batches, rows, tokens)")
    print(f"useful token fraction: padded {real / padded_total:.3f}, packed {real / layout.packed_tokens:.3f}; "
          f"first-step old log-probs max |packed - padded| {difference:.2e}")
    for name in wall:
        print(f"{name:7s} update phase: wall {wall[name]:.3f} s, CPU {cpu[name]:.3f} s")
    print(f"padded / packed: wall {wall['padded'] / wall['packed']:.2f}x, CPU {cpu['padded'] / cpu['packed']:.2f}x")


if __name__ == "__main__":
    main()
