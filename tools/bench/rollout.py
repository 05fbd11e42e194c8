"""Benchmark: generated tokens/s of `entropy_rl.rollout.generate` against transformers'
PyTorch `generate` on the same weights, measured in the same run.

Model: the 168M Qwen3-shaped config of the model benchmark (hidden 1024, 8 layers, 16 heads,
8 kv heads, head_dim 64, intermediate 3072, vocab 32768, untied), random weights created by
transformers and loaded with `entropy_rl.model.load_hf`, float32. Workload: batch 64,
random prompts of 128 tokens, N new tokens (default 256), sampling at temperature 1 (no
top-k / top-p), no stop token, so every row generates N tokens. With --n k the 64 rows are
64 / k prompts sampled k times each, as in RLVR (SamplingConfig.n on our side,
num_return_sequences on transformers'; transformers repeats the prompts before its prefill,
entropy-rl prefills each prompt once).

    prefill included  batch * N / time(generate N tokens)
    decode only       batch * (N - 1) / (time(N tokens) - time(1 token))

Both sides run the 1-token and N-token generations after a warm-up (jax compiles in the
warm-up), interleaved jax / torch so both see the same machine load; each timing is the
best of --repeats, in wall-clock and in process CPU time (which other processes competing
for the cores disturb less). The matmul peak is the float32 GFLOP/s of a large jnp.dot
compiled with entropy-rl's CPU_COMPILER_OPTIONS, measured in the same run; the decode share of
it counts the decoder's matmul FLOPs only (2 * matmul parameters per token plus attention
over the cache).

    python tools/bench/rollout.py              # the issue's configuration
    python tools/bench/rollout.py --quick      # 32 new tokens, for a fast check
    python tools/bench/rollout.py --n 8        # 8 prompts x 8 samples

Scheduler comparison (`--lengths`): the refill scheduler (--slots slots) against the static
one on the same rows (same key: the same tokens and log-probs, bitwise; rows that differ are
counted), best of --repeats, interleaved:

    skewed  a stop set of V * 4 / new_tokens token ids: random weights give a near-uniform
            next-token distribution, so a row stops at each step with probability ~4 /
            new_tokens (geometric lengths, median ~0.17 * new_tokens, ~2% reach the cap);
            the measured length quantiles are printed
    equal   no stop token: every row generates new_tokens tokens

and the static scheduler in waves of --slots rows (the refill's KV memory; other row
indices, so their own tokens), reporting decode steps, row-steps (batch rows x steps), the
useful fraction (generated tokens / row-steps) and useful tokens/s, in wall-clock and
process CPU time (the machine may be shared). --torch adds transformers' generate on the same weights, dtype (float32) and
prompts, n samples per prompt (num_return_sequences), each row forced to the static
rollout's length: a logits processor makes the row's last step emit a stop token and bars
the stop token before (`ForcedLengths`), so transformers decodes the same row lengths as a
static batch (finished rows keep stepping until the last one stops). On a machine shared
with other processes torch's threads spin-wait for each other: --torch-threads 1 generated
4x faster (6x less CPU time) than torch's default 2 threads on a loaded 2-core machine.

    python tools/bench/rollout.py --lengths skewed --batch 512 --n 8 --new-tokens 512 --slots 128
    python tools/bench/rollout.py --lengths skewed --model small ...   # a 4-layer model, for slow machines
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from entropy_rl.model import load_hf
from entropy_rl.parallel import CPU_COMPILER_OPTIONS
from entropy_rl.rollout import SamplingConfig, generate
from entropy_rl.rollout.refill import RefillSchedule
from timing import best_times

HF_CONFIG = dict(
    vocab_size=32768, hidden_size=1024, intermediate_size=3072, num_hidden_layers=8, num_attention_heads=16,
    num_key_value_heads=8, head_dim=64, max_position_embeddings=4096, tie_word_embeddings=False,
)
# --model small: the same shape family at 1/4 width, 4 layers, 1/4 vocabulary (about 6M parameters).
SMALL_CONFIG = dict(HF_CONFIG, vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2)


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """float32 GFLOP/s of a [size, size] @ [size, size] jnp.dot (best of `repeats`)."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    dot = jax.jit(jnp.dot, compiler_options=CPU_COMPILER_OPTIONS)
    dot(a, a).block_until_ready()
    best = min(_timed(lambda: dot(a, a).block_until_ready()) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def decode_flops_per_token(config: dict, context: float) -> float:
    """Matmul FLOPs to decode one token with `context` cached tokens: 2 * matmul params + attention."""
    d, h, kv, hd, f, layers = (config[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads",
                                                    "head_dim", "intermediate_size", "num_hidden_layers"))
    per_layer = d * h * hd * 2 + d * kv * hd * 2 + 3 * d * f
    attention = 2 * 2 * h * hd * context  # q k^T and p v
    return layers * (2 * per_layer + attention) + 2 * config["vocab_size"] * d


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def jax_runs(model, prompts, new_tokens: int, n: int) -> dict:
    """{"1", "N", "N+bar"}: callables generating 1 / new_tokens tokens, n per prompt (the
    last with the progress bar, chunks of new_tokens // 8 steps); all share one compiled program."""
    base = SamplingConfig(max_new_tokens=new_tokens, temperature=1.0, prompt_bucket=len(prompts[0]),
                          response_bucket=new_tokens, n=n)
    one = SamplingConfig(**{**base.__dict__, "max_new_tokens": 1})
    chunked = SamplingConfig(**{**base.__dict__, "progress_chunk": max(1, new_tokens // 8)})
    rollout = generate(model, prompts, base, jax.random.key(0))  # compile
    assert rollout.mask.all(), "every row must generate all new tokens"
    return {"1": lambda: generate(model, prompts, one, jax.random.key(1)),
            "N": lambda: generate(model, prompts, base, jax.random.key(1)),
            "N+bar": lambda: generate(model, prompts, chunked, jax.random.key(1), progress=True)}


def torch_runs(hf_model, prompts, new_tokens: int, n: int) -> dict:
    """{"1", "N"}: callables running transformers' generate for 1 / new_tokens tokens, n per prompt."""
    ids = torch.tensor(prompts)

    def run(tokens):
        with torch.inference_mode():
            out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                    top_k=0, top_p=1.0, max_new_tokens=tokens, min_new_tokens=tokens,
                                    num_return_sequences=n, pad_token_id=0)
        assert out.shape == (ids.shape[0] * n, ids.shape[1] + tokens)

    run(2)  # warm-up
    return {"1": lambda: run(1), "N": lambda: run(new_tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="32 new tokens instead of --new-tokens")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--n", type=int, default=1, help="samples per prompt (batch / n prompts)")
    parser.add_argument("--lengths", choices=("skewed", "equal"), help="compare the refill and static schedulers")
    parser.add_argument("--slots", type=int, default=128, help="--lengths: the refill scheduler's max_slots")
    parser.add_argument("--model", choices=("bench", "small"), default="bench")
    parser.add_argument("--torch", action="store_true", help="--lengths: also time transformers' generate")
    parser.add_argument("--torch-threads", type=int, help="torch's intra-op threads (default: torch's own)")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if args.batch % args.n:
        parser.error(f"--n {args.n} must divide --batch {args.batch}")
    new_tokens = 32 if args.quick else args.new_tokens

    model_config = HF_CONFIG if args.model == "bench" else SMALL_CONFIG
    torch.manual_seed(0)
    hf_config = transformers.Qwen3Config(**model_config)
    hf_model = transformers.Qwen3ForCausalLM(hf_config).eval()
    with tempfile.TemporaryDirectory() as path:
        hf_model.save_pretrained(path)
        model = load_hf(path)
    prompts = np.random.default_rng(0).integers(1, model_config["vocab_size"], (args.batch // args.n, args.prompt)).tolist()
    params = sum(p.numel() for p in hf_model.parameters())
    print(f"Qwen3-shaped model, {params / 1e6:.0f}M parameters, float32; batch {args.batch} "
          f"({len(prompts)} prompts x {args.n}), prompt {args.prompt}, "
          f"{new_tokens} new tokens, sampling at temperature 1; {jax.devices()[0].platform} x{jax.device_count()}, "
          f"torch threads {torch.get_num_threads()}")
    if args.lengths:
        compare_schedulers(model, hf_model, prompts, args, new_tokens, model_config["vocab_size"])
        return

    peak = matmul_peak_gflops()
    jax_side, torch_side = jax_runs(model, prompts, new_tokens, args.n), torch_runs(hf_model, prompts, new_tokens, args.n)
    wall, cpu = best_times({"jax 1": jax_side["1"], "torch 1": torch_side["1"], "jax N": jax_side["N"],
                            "torch N": torch_side["N"], "jax N+bar": jax_side["N+bar"]}, args.repeats, warm_up=False)
    flops = decode_flops_per_token(model_config, args.prompt + new_tokens / 2)
    print(f"matmul peak (jnp.dot 2048^3, float32): {peak:.1f} GFLOP/s; decode matmul FLOPs/token {flops / 1e6:.0f}M")
    for label, times in (("wall-clock", wall), ("process CPU time (all threads)", cpu)):
        print(f"\n{label}:")
        report(times, args.batch, new_tokens, flops, peak if times is wall else None)


def report(times: dict, batch: int, new_tokens: int, flops: float, peak: float | None) -> None:
    """Print tokens/s with and without the prefill, the decode share of the peak (a wall-clock
    GFLOP/s; None for CPU times) and the ratios."""
    print(f"{'':<22}{'1 token s':>10}{f'{new_tokens} tok s':>10}{'tok/s (prefill incl.)':>23}"
          f"{'tok/s (decode only)':>21}{'decode % of peak':>18}")
    rates = {}
    for side, name in (("jax", "entropy_rl (jax)"), ("torch", "transformers (torch)")):
        one, full = times[f"{side} 1"], times[f"{side} N"]
        rates[side] = (batch * new_tokens / full, batch * (new_tokens - 1) / (full - one))
        with_prefill, decode = rates[side]
        share = "-" if peak is None else f"{100 * decode * flops / 1e9 / peak:.0f}%"
        print(f"{name:<22}{one:>10.2f}{full:>10.2f}{with_prefill:>23.1f}{decode:>21.1f}{share:>18}")
    print(f"progress bar (8 chunks): {new_tokens} tokens in {times['jax N+bar']:.2f} s vs {times['jax N']:.2f} s "
          f"without ({times['jax N+bar'] / times['jax N']:.3f}x the time)")
    print(f"speed-up vs transformers: prefill included {rates['jax'][0] / rates['torch'][0]:.2f}x, "
          f"decode only {rates['jax'][1] / rates['torch'][1]:.2f}x")


def compare_schedulers(model, hf_model, prompts, args, new_tokens: int, vocab: int) -> None:
    """Time the static and refill schedulers (and transformers with --torch) on one workload;
    print steps, row-steps, useful fraction and useful tokens/s."""
    stop_ids = ()
    if args.lengths == "skewed":
        stop_ids = tuple(np.random.default_rng(1).choice(np.arange(1, vocab), vocab * 4 // new_tokens, replace=False))
    base = SamplingConfig(max_new_tokens=new_tokens, temperature=1.0, n=args.n, stop_token_ids=stop_ids,
                          prompt_bucket=len(prompts[0]), response_bucket=64)
    configs = {"static": SamplingConfig(**{**base.__dict__, "scheduler": "static"}),
               "refill": SamplingConfig(**{**base.__dict__, "scheduler": "refill", "max_slots": args.slots})}
    rollouts, schedules = {}, {}
    wave_prompts = max(1, args.slots // args.n)

    def run(name):
        schedules[name] = RefillSchedule() if name == "refill" else None
        rollouts[name] = generate(model, prompts, configs[name], jax.random.key(1), schedule=schedules[name])

    def run_waves(waves=len(prompts)):  # the static sampler in batches of the refill's slot count: the same KV memory
        rollouts["static waves"] = [generate(model, prompts[start:start + wave_prompts], configs["static"],
                                             jax.random.key(1)).lengths for start in range(0, waves, wave_prompts)]

    candidates = {**{name: functools.partial(run, name) for name in configs}, "static waves": run_waves}
    for name in configs:  # compile
        run(name)
    run_waves(wave_prompts)
    if args.torch:  # runs after static (dict order), whose lengths it forces
        _torch_forced_run(hf_model, prompts[:1], np.full(args.n, 2), args.n)  # warm-up
        candidates["transformers"] = lambda: rollouts.update(
            transformers=_torch_forced_run(hf_model, prompts, rollouts["static"].lengths, args.n))
    wall, cpu = best_times(candidates, args.repeats, warm_up=False)
    static, refill = rollouts["static"], rollouts["refill"]
    # The same rows, bitwise, whatever the scheduler (refill.py).
    differing = np.flatnonzero((refill.tokens != static.tokens).any(axis=1) | (refill.logprobs != static.logprobs).any(axis=1))
    print(f"rows whose refill tokens or log-probs differ from static's: {len(differing)} of {len(static.tokens)} "
          f"{differing.tolist()[:8]}; lengths equal: {np.array_equal(refill.lengths, static.lengths)}")
    lengths = static.lengths
    print(f"workload {args.lengths}: {len(lengths)} rows, max {new_tokens} new tokens, {len(stop_ids)} stop ids; "
          f"lengths median {np.median(lengths):.0f}, p90 {np.percentile(lengths, 90):.0f}, max {lengths.max()}, "
          f"{np.mean(lengths == new_tokens):.1%} at the cap, {lengths.sum()} tokens")
    # (batch, decode steps, generated tokens); a row's first token comes from its prefill.
    rows = {"static": (len(lengths), int(lengths.max()) - 1, int(lengths.sum())),
            "refill": (schedules["refill"].slots, schedules["refill"].decode_steps, int(refill.lengths.sum())),
            "static waves": (wave_prompts * args.n, sum(int(wave.max()) - 1 for wave in rollouts["static waves"]),
                             int(sum(wave.sum() for wave in rollouts["static waves"])))}
    if args.torch:
        rows["transformers"] = (len(lengths), int(lengths.max()) - 1, int(rollouts["transformers"].sum()))
    print(f"{'':<14}{'batch':>7}{'decode steps':>14}{'row-steps':>11}{'useful':>8}{'seconds':>9}{'useful tok/s':>14}"
          f"{'CPU s':>9}{'tok/CPU s':>11}")
    for name, (batch, steps, tokens) in rows.items():
        useful = (tokens - len(lengths)) / max(1, batch * steps)  # decode-sampled tokens / decode row-steps
        print(f"{name:<14}{batch:>7}{steps:>14}{batch * steps:>11}{useful:>8.1%}"
              f"{wall[name]:>9.2f}{tokens / wall[name]:>14.1f}{cpu[name]:>9.2f}{tokens / cpu[name]:>11.1f}")
    print(f"refill / static useful tokens/s: {wall['static'] / wall['refill']:.2f}x wall-clock, "
          f"{cpu['static'] / cpu['refill']:.2f}x CPU time (static decode steps / refill decode steps: "
          f"{rows['static'][1] / rows['refill'][1]:.2f}x; refill prefill calls {schedules['refill'].prefill_calls})")
    waves_tokens = rows["static waves"][2] / rows["refill"][2]  # their own rows: other lengths when skewed
    print(f"refill / static waves of {wave_prompts * args.n} rows (the slots' KV memory), useful tokens/s: "
          f"{wall['static waves'] / wall['refill'] / waves_tokens:.2f}x wall-clock, "
          f"{cpu['static waves'] / cpu['refill'] / waves_tokens:.2f}x CPU time")
    if args.torch:
        print(f"refill / transformers: {wall['transformers'] / wall['refill']:.2f}x wall-clock, "
              f"{cpu['transformers'] / cpu['refill']:.2f}x CPU time; static / transformers: "
              f"{wall['transformers'] / wall['static']:.2f}x, {cpu['transformers'] / cpu['static']:.2f}x")


class ForcedLengths(transformers.LogitsProcessor):
    """Row i of a transformers batch stops after exactly lengths[i] new tokens: at its last
    step only `stop_id` may be sampled, before it `stop_id` may not (generate ends a row at
    its eos_token_id, stop_id)."""

    def __init__(self, lengths: np.ndarray, prompt_length: int, stop_id: int):
        self.last_step = torch.tensor(np.array(lengths)) - 1
        self.prompt_length = prompt_length
        self.stop_id = stop_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        ends = (self.last_step == input_ids.shape[1] - self.prompt_length)[:, None]
        is_stop = torch.arange(scores.shape[1]) == self.stop_id
        return scores.masked_fill(ends != is_stop, -float("inf"))


def _torch_forced_run(hf_model, prompts, lengths: np.ndarray, n: int) -> np.ndarray:
    """transformers' generate on the prompts, n samples each, row i forced to lengths[i] new
    tokens (`ForcedLengths`, stop token 0); returns the rows' lengths, checked equal."""
    ids = torch.tensor(prompts)
    stop_id = 0
    with torch.inference_mode():
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0,
                                top_p=1.0, max_new_tokens=int(lengths.max()), num_return_sequences=n,
                                eos_token_id=stop_id, pad_token_id=stop_id,
                                logits_processor=transformers.LogitsProcessorList(
                                    [ForcedLengths(lengths, ids.shape[1], stop_id)]))
    response = out[:, ids.shape[1]:].numpy()
    stops = response == stop_id
    torch_lengths = np.where(stops.any(1), stops.argmax(1) + 1, response.shape[1])
    np.testing.assert_array_equal(torch_lengths, lengths)
    return torch_lengths


if __name__ == "__main__":
    main()
