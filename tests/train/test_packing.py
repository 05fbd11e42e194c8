"""Packed update batches: the host layout (every token placed once, in order, bucketed shapes)
and the packed forward / train step against the padded one on the same batch (log-probs,
entropies, every registered loss and its gradients) under every attention implementation,
on one device and on an fsdp x tensor mesh; segment isolation."""

import jax
import numpy as np
import pytest
from flax import nnx

from entropy_rl import losses
from entropy_rl.model import Qwen, attention, tiny_config
from entropy_rl.parallel import MeshConfig, make_mesh, shard_model
from entropy_rl.train.packing import (first_fit_decreasing, half_octave_bucket, pack_update_batch,
                                      sequence_lengths)
from entropy_rl.train.step import (StepConfig, UpdateBatch, _packed_gradients,
                                   _whole_batch_gradients, packed_logprobs, packed_micro_logprobs, place_layout,
                                   response_logprobs)

G, N = 4, 4  # prompts, responses per prompt
B, P, T, V = G * N, 9, 24, 64
IMPLEMENTATIONS = ("dense", "blockwise", "splash", "pallas_gpu", "cudnn")


def random_lengths(rng, batch=B, prompt_columns=P, response_columns=T):
    """(prompt lengths [B]: one per group, different; response lengths [B] including 1 and the cap)."""
    prompts = np.repeat(rng.integers(1, prompt_columns + 1, batch // N), N)
    responses = rng.integers(1, response_columns + 1, batch)
    responses[0], responses[1] = 1, response_columns
    return prompts, responses


def make_batch(seed=0, *, ref=True):
    rng = np.random.default_rng(seed)
    prompt_lengths, response_lengths = random_lengths(rng)
    prompt_mask = (np.arange(P)[None] >= P - prompt_lengths[:, None]).astype(np.int32)
    mask = (np.arange(T)[None] < response_lengths[:, None]).astype(np.int32)
    old_logp = np.where(mask, rng.uniform(-4.0, -0.01, (B, T)), 0).astype(np.float32)
    return UpdateBatch(prompt_tokens=(rng.integers(1, V, (B, P)) * prompt_mask).astype(np.int32),
                       prompt_mask=prompt_mask, tokens=(rng.integers(1, V, (B, T)) * mask).astype(np.int32),
                       mask=mask, advantages=rng.normal(size=B).astype(np.float32), old_logp=old_logp,
                       ref_logp=(old_logp - 0.1).astype(np.float32) if ref else None)


def layout_of(batch, *, micro_tokens=None, row_multiple=1, pack_tokens=16):
    return pack_update_batch(*sequence_lengths(batch.prompt_mask, batch.mask), prompt_columns=P, response_columns=T,
                             pack_tokens=pack_tokens, micro_tokens=micro_tokens, row_multiple=row_multiple)


# --------------------------------------------------------------------------- the host layout


def test_every_input_token_is_placed_once_in_order_with_its_position():
    """Against the padded layout: sequence b's real inputs are the columns P - p_b .. W - (T - r_b)
    of concat(prompt, response[:-1]); each appears once, contiguous and in order in one row,
    one segment id, positions 0..L_b - 1; its hidden states predict response tokens 0..r_b - 1."""
    rng = np.random.default_rng(1)
    for trial in range(20):
        prompts, responses = random_lengths(rng, batch=16)
        responses[2] = 0  # an empty response: no tokens
        layout = pack_update_batch(prompts, responses, prompt_columns=P, response_columns=T, pack_tokens=32,
                                   micro_tokens=64 if trial % 2 else None, row_multiple=2)
        width = P + T - 1
        source, segments = layout.source.reshape(-1, layout.source.shape[-1]), layout.segment_ids.reshape(
            -1, layout.source.shape[-1])
        positions, targets = (x.reshape(source.shape) for x in (layout.positions, layout.targets))
        placed = source[segments != 0]
        assert len(placed) == len(set(placed.tolist())) == np.sum(np.where(responses > 0, prompts + responses - 1, 0))
        for b in range(16):
            where = np.argwhere((segments != 0) & (source // width == b))
            if responses[b] == 0:
                assert len(where) == 0 and not layout.gather[b].any()
                continue
            rows, columns = where[:, 0], where[:, 1]
            assert len(set(rows)) == 1 and np.array_equal(columns, np.arange(columns[0], columns[0] + len(columns)))
            row = rows[0]
            assert len(set(segments[row, columns])) == 1
            assert np.array_equal(source[row, columns] % width, np.arange(P - prompts[b], P + responses[b] - 1))
            assert np.array_equal(positions[row, columns], np.arange(len(columns)))
            predicting = layout.gather[b, :responses[b]]
            assert np.array_equal(targets.reshape(-1)[predicting], b * T + np.arange(responses[b]))
            assert np.array_equal(predicting, row * source.shape[1] + columns[0] + prompts[b] - 1
                                  + np.arange(responses[b]))
            assert layout.micro[b] == row // layout.source.shape[1]


def test_first_fit_decreasing_and_bucketed_shapes():
    assert first_fit_decreasing(np.array([3, 7, 5, 2, 0, 4]), 8) == [[1], [2, 0], [5, 3]]
    assert [half_octave_bucket(n) for n in (1, 2, 3, 4, 5, 7, 9, 13, 17, 25)] == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]
    with pytest.raises(ValueError, match="9 tokens does not fit a row of 8"):
        first_fit_decreasing(np.array([9]), 8)
    layout = pack_update_batch(np.array([3, 2]), np.array([4, 5]), prompt_columns=4, response_columns=6,
                               pack_tokens=4, micro_tokens=16, row_multiple=4)
    assert layout.source.shape == (1, 4, 8)  # S = 4 * 2: the longest sequence has 6 tokens; R = 16 // 8 -> 4
    with pytest.raises(ValueError, match="lengths out of range"):
        pack_update_batch(np.array([5]), np.array([1]), prompt_columns=4, response_columns=6, pack_tokens=4)


def test_shapes_over_a_run_of_varying_lengths_are_a_handful():
    """50 batches of 64 lognormal lengths: few distinct packed shapes (programs to compile),
    rows filled, far fewer tokens than the padded batch."""
    rng = np.random.default_rng(0)
    shapes, packed, padded = set(), 0, 0
    for _ in range(50):
        responses = np.minimum(np.ceil(rng.lognormal(np.log(60), 1.0, 64)), 256).astype(int)
        prompts = np.repeat(rng.integers(8, 33, 16), 4)
        layout = pack_update_batch(prompts, responses, prompt_columns=32, response_columns=256, pack_tokens=512,
                                   micro_tokens=2048, row_multiple=2)
        shapes.add(layout.source.shape)
        packed += layout.packed_tokens
        padded += 64 * (32 + 256 - 1)
        assert layout.real_tokens / (layout.source.shape[0] * 2048) > 0.5
    assert len(shapes) <= 4, shapes
    assert packed < 0.6 * padded


# --------------------------------------------------------------------------- packed == padded


def model_config(implementation, **overrides):
    return tiny_config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, attention_block_size=8,
                       attention_implementation=implementation,
                       attention_interpret=implementation in attention.PALLAS_IMPLEMENTATIONS, **overrides)


@pytest.fixture
def runnable_cudnn(monkeypatch):
    """cuDNN's calls with jax's XLA implementation of the same contract (as in
    tests/model/test_model_attention_backends.py)."""
    monkeypatch.setattr(attention, "CUDNN_IMPLEMENTATION", "xla")
    monkeypatch.setattr(attention, "CUDNN_DTYPES", attention.CUDNN_DTYPES + ("float32",))


METHODS = losses.policy_loss_names()
LOSS_CONFIG = losses.PolicyLossConfig(clip_high=0.28, stapo_prob_threshold=0.05, ref_kl_coef=0.01, entropy_coef=0.01,
                                      kl_cov_ratio=0.1, clip_cov_ratio=0.1)


def every_method(gradients, params, batch, *, graphdef, micro=1, methods=METHODS, **layout):
    """{method: (loss, grads, metrics)} of the registered policy losses `methods`
    (`layout`: the packed gradients' layout=...)."""
    return {name: gradients(params, batch, jax.random.key(5), graphdef=graphdef,
                            config=StepConfig(name, LOSS_CONFIG, temperature=0.8, chunk_size=16,
                                              num_micro_batches=micro), **layout)
            for name in methods}


def assert_same_losses(got, expected, methods=METHODS):
    """Losses and metrics to 1e-5 relative; each gradient leaf to 1e-5 of its largest entry."""
    for name in methods:
        (loss, grads, metrics), (want_loss, want_grads, want_metrics) = got[name], expected[name]
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5, atol=1e-7, err_msg=name)
        for key in want_metrics:
            np.testing.assert_allclose(metrics[key], want_metrics[key], rtol=1e-5, atol=1e-6, err_msg=f"{name} {key}")
        for x, y in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
            y = np.asarray(y)
            np.testing.assert_allclose(np.asarray(x), y, rtol=0, atol=1e-5 * np.abs(y).max() + 1e-9, err_msg=name)


@pytest.fixture(scope="module")
def padded_results():
    """Padded forward (logp, entropy) and every method's (loss, grads, metrics), dense, one device."""
    graphdef, params = nnx.split(Qwen(model_config("dense"), rngs=nnx.Rngs(0)))
    batch = make_batch()
    forward = jax.jit(lambda p, b: response_logprobs(graphdef, p, b, temperature=0.8, chunk_size=16))
    whole = jax.jit(lambda p, b: every_method(_whole_batch_gradients, p, b, graphdef=graphdef))(params, batch)
    return graphdef, params, batch, jax.device_get(forward(params, batch)), jax.device_get(whole)


@pytest.mark.slow
def test_packed_equals_padded_on_one_device_for_every_method(padded_results):
    """Dense attention, one device: the packed log-probs and entropies equal the padded ones at
    every response token; every method's loss, metrics and gradients as padded on
    token-budget micro-batches (the whole-batch packed pass: STAPO with the reference-KL and
    entropy terms)."""
    graphdef, params, batch, (logp, entropy), whole = padded_results
    valid = batch.mask == 1
    for micro_tokens, methods in ((None, ("stapo",)), (32, METHODS)):
        layout = layout_of(batch, micro_tokens=micro_tokens)
        assert (layout.num_micro_batches > 1) == (micro_tokens is not None)
        got_logp, got_entropy = jax.jit(lambda p, b, lay: packed_logprobs(graphdef, p, b, lay, temperature=0.8,
                                                                           chunk_size=16))(params, batch, layout)
        np.testing.assert_allclose(np.asarray(got_logp)[valid], logp[valid], atol=1e-5)
        np.testing.assert_allclose(np.asarray(got_entropy)[valid], entropy[valid], atol=1e-5)
        packed = jax.jit(lambda p, b, lay: every_method(_packed_gradients, p, b, layout=lay, graphdef=graphdef,
                                                        methods=methods))(params, batch, layout)
        assert_same_losses(jax.device_get(packed), whole, methods)


@pytest.mark.slow
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_packed_equals_padded_on_a_mesh_under_every_implementation(implementation, padded_results, runnable_cudnn):
    """fsdp=4 x tensor=2 on 8 simulated devices, packed rows in token-budget micro-batches
    under each attention implementation (Pallas kernels in interpret mode): log-probs,
    entropies, and STAPO's loss (with the reference-KL and entropy terms) and gradients equal
    one device's padded, dense ones (the losses read only log-probs and entropies, which are
    compared here; every method is compared on one device)."""
    _, _, batch, (logp, entropy), whole = padded_results
    mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
    model = shard_model(Qwen(model_config(implementation), rngs=nnx.Rngs(0)), mesh)
    graphdef, params = nnx.split(model)
    layout = place_layout(layout_of(batch, micro_tokens=32, row_multiple=4), mesh)
    assert layout.num_micro_batches > 1
    with jax.set_mesh(mesh):
        got_logp, got_entropy = jax.jit(lambda p, b, lay: packed_logprobs(graphdef, p, b, lay, temperature=0.8,
                                                                           chunk_size=16))(params, batch, layout)
        packed = jax.jit(lambda p, b, lay: every_method(_packed_gradients, p, b, layout=lay, graphdef=graphdef,
                                                        methods=("stapo",)))(params, batch, layout)
    valid = batch.mask == 1
    np.testing.assert_allclose(np.asarray(got_logp)[valid], logp[valid], atol=1e-5)
    np.testing.assert_allclose(np.asarray(got_entropy)[valid], entropy[valid], atol=1e-5)
    assert_same_losses(jax.device_get(packed), whole, ("stapo",))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_no_token_attends_across_a_segment_boundary(implementation, runnable_cudnn):
    """Changing one sequence's tokens changes no other sequence's packed log-probs or
    entropies, bitwise (a row of several sequences, blocks of 8 tokens)."""
    graphdef, params = nnx.split(Qwen(model_config(implementation), rngs=nnx.Rngs(0)))
    batch = make_batch(3)
    layout = layout_of(batch, pack_tokens=64)
    part = tuple(x[0] for x in (layout.source, layout.segment_ids, layout.positions, layout.targets))
    forward = jax.jit(lambda b: packed_micro_logprobs(graphdef, params, b, part))
    changed_row = int(np.argmax(batch.mask.sum(1)))
    other = batch.replace(tokens=np.where(np.arange(B)[:, None] == changed_row, (batch.tokens + 7) % V, batch.tokens),
                          prompt_tokens=np.where(np.arange(B)[:, None] == changed_row, (batch.prompt_tokens + 5) % V,
                                                 batch.prompt_tokens))
    width = P + T - 1
    own = (part[1] != 0) & (part[0] // width == changed_row)
    others = (part[1] != 0) & ~own  # padding tokens' values are meaningless (they attend to nothing)
    assert others[own.any(1)].any(), "the changed sequence shares its row with another"
    for before, after in zip(forward(batch), forward(other)):
        before, after = np.asarray(before), np.asarray(after)
        assert not np.array_equal(before[own], after[own])
        np.testing.assert_array_equal(before[others], after[others])


@pytest.mark.slow
def test_compiles_of_the_packed_forward_over_varying_lengths_are_bounded():
    """12 batches of random lengths through one jitted packed forward: it compiles once per
    distinct layout shape, at most 3 here (the padded forward: once)."""
    graphdef, params = nnx.split(Qwen(model_config("dense"), rngs=nnx.Rngs(0)))
    forward = jax.jit(lambda p, b, lay: packed_logprobs(graphdef, p, b, lay))
    shapes = set()
    for seed in range(12):
        batch = make_batch(seed, ref=False)
        layout = layout_of(batch, micro_tokens=64)
        shapes.add(layout.source.shape)
        jax.block_until_ready(forward(params, batch, layout))
    assert forward._cache_size() == len(shapes) <= 3, shapes
