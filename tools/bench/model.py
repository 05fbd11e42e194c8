"""Qwen forward / forward+backward throughput and MFU, against transformers' PyTorch model.

    python tools/bench/model.py [--batch 2] [--seq 512] [--repeats 3] [--dtype float32]

Config: a Qwen3-shaped model of about 168M parameters (hidden 1024, 8 layers, 16 heads,
8 kv heads, head_dim 64, mlp 3072, vocab 32768, untied). The matmul peak (GFLOP/s) of each
framework is measured in the same run with a large square fp32 matmul; MFU = model FLOP/s
/ that peak, with model FLOPs per token = 2 N (forward) or 6 N (forward+backward) over the
N matmul parameters (layers + lm_head) plus attention 4 L H hd T (x3 with backward).
Every candidate is warmed up (compiled) first, then timed once per round, the rounds
interleaved so that a change in machine load hits all candidates alike; each timing is
the best over `--repeats` rounds.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from entropy_rl.model import Qwen, QwenConfig
from entropy_rl.parallel import CPU_COMPILER_OPTIONS
from timing import best_times

BENCH_CONFIG = QwenConfig(vocab_size=32768, hidden_size=1024, intermediate_size=3072,
                          num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=8,
                          head_dim=64, rope_theta=1_000_000.0, tie_word_embeddings=False,
                          attention_bias=False, qk_norm=True)


def model_flops_per_token(c: QwenConfig, seq: int, backward: bool) -> float:
    """2 N + 4 L H hd T per token forward; x3 with the backward pass."""
    per_layer = (c.hidden_size * c.head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
                 + 3 * c.hidden_size * c.intermediate_size)
    matmul_params = c.num_hidden_layers * per_layer + c.vocab_size * c.hidden_size
    forward = 2 * matmul_params + 4 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * seq
    return forward * (3 if backward else 1)


def jax_candidates(config: QwenConfig, input_ids: np.ndarray, peak_n: int) -> dict:
    """The matmul peak, the forward and the forward+backward (one jit program each)."""
    a = jax.random.normal(jax.random.key(0), (peak_n, peak_n), jnp.float32)
    matmul = jax.jit(lambda x: x @ x, compiler_options=CPU_COMPILER_OPTIONS)
    model = Qwen(config, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    labels = np.roll(input_ids, -1, axis=1)

    def loss(state, ids, labels):
        return cross_entropy(nnx.merge(graphdef, state)(ids), labels)

    forward = jax.jit(lambda s, ids: nnx.merge(graphdef, s)(ids), compiler_options=CPU_COMPILER_OPTIONS)
    grad = jax.jit(jax.value_and_grad(loss), compiler_options=CPU_COMPILER_OPTIONS)
    return {"jax peak": lambda: matmul(a).block_until_ready(),
            "jax fwd": lambda: forward(state, input_ids).block_until_ready(),
            "jax fwd+bwd": lambda: jax.block_until_ready(grad(state, input_ids, labels))}


def torch_candidates(config: QwenConfig, input_ids: np.ndarray, peak_n: int) -> dict:
    """transformers' PyTorch Qwen3ForCausalLM (float32, sdpa attention) on the same batch."""
    import torch
    import transformers
    torch.manual_seed(0)
    a = torch.randn(peak_n, peak_n)
    hf_config = transformers.Qwen3Config(**{k: v for k, v in config.to_hf_dict().items()
                                            if k not in ("architectures", "model_type")})
    hf_config._attn_implementation = "sdpa"
    model = transformers.Qwen3ForCausalLM(hf_config).float()
    ids = torch.tensor(input_ids, dtype=torch.long)

    def forward():
        with torch.no_grad():
            model(input_ids=ids)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()

    return {"torch peak": lambda: a @ a, "torch fwd": forward, "torch fwd+bwd": forward_backward}


def cross_entropy(logits, labels):
    """mean_t -log softmax(logits_t)[label_t]; the one-hot product keeps the backward
    elementwise (take_along_axis's backward is a scatter, ~1.4x slower here on CPU)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.sum(logp * jax.nn.one_hot(labels, logits.shape[-1], dtype=logp.dtype), -1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-n", type=int, default=2048, help="size of the peak matmul")
    parser.add_argument("--dtype", default="float32", help="JAX compute/param dtype")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args(argv)

    config = BENCH_CONFIG.replace(dtype=args.dtype, param_dtype=args.dtype)
    tokens = args.batch * args.seq
    input_ids = np.random.default_rng(0).integers(0, config.vocab_size, (args.batch, args.seq),
                                                  dtype=np.int32)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(
        nnx.eval_shape(lambda: Qwen(config, rngs=nnx.Rngs(0))))))
    print(f"config: {n_params / 1e6:.1f}M params, batch {args.batch} x seq {args.seq}, "
          f"JAX {jax.__version__} on {jax.devices()[0].platform}")
    candidates = jax_candidates(config, input_ids, args.peak_n)
    if not args.no_torch:
        candidates.update(torch_candidates(config, input_ids, args.peak_n))
    wall, cpu = best_times(candidates, args.repeats)
    frameworks = ["jax"] + ([] if args.no_torch else ["torch"])
    fwd_flops = model_flops_per_token(config, args.seq, backward=False) * tokens
    bwd_flops = model_flops_per_token(config, args.seq, backward=True) * tokens
    for label, times in (("wall-clock", wall), ("process CPU time (all threads)", cpu)):
        print(f"\n{label}:")
        print(f"{'':6} {'peak GFLOP/s':>12} {'fwd tok/s':>10} {'fwd MFU':>8} "
              f"{'fwd+bwd tok/s':>14} {'fwd+bwd MFU':>12}")
        for name in frameworks:
            peak = 2 * args.peak_n ** 3 / times[f"{name} peak"]
            t_fwd, t_bwd = times[f"{name} fwd"], times[f"{name} fwd+bwd"]
            print(f"{name:6} {peak / 1e9:12.1f} {tokens / t_fwd:10.1f} "
                  f"{fwd_flops / t_fwd / peak:8.1%} {tokens / t_bwd:14.1f} "
                  f"{bwd_flops / t_bwd / peak:12.1%}")
        if len(frameworks) == 2:
            print(f"jax / torch speed: forward {times['torch fwd'] / times['jax fwd']:.2f}x, "
                  f"forward+backward {times['torch fwd+bwd'] / times['jax fwd+bwd']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
