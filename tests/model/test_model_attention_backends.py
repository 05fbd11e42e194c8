"""Every attention implementation of model/attention.py against a float64 numpy reference
(values and gradients), inside the whole model, sharded, and the choice of "auto".

The TPU (splash) and GPU (pallas_gpu) Pallas kernels run in interpret mode. cuDNN cannot be
traced without a GPU: its path (pack each row's real tokens to the front, attend with
per-row lengths, unpack) is run here through the same `jax.nn.dot_product_attention` call
with implementation="xla" (CUDNN_IMPLEMENTATION monkeypatched).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from entropy_rl.model import Qwen, tiny_config
from entropy_rl.model import attention
from entropy_rl.model.attention import causal_attention, resolve_implementation
from entropy_rl.parallel import MeshConfig, batch_sharding, make_mesh, shard_model

LENGTH = 100  # not a multiple of any block: 32 (blockwise), 128 (splash, pallas_gpu)
BLOCK = 32
KERNELS = ("splash", "pallas_gpu", "cudnn")  # zeros at padding queries
IMPLEMENTATIONS = ("dense", "blockwise") + KERNELS


@pytest.fixture
def runnable_cudnn(monkeypatch):
    """The cuDNN path with jax's XLA implementation of the same lengths contract, which also
    takes float32."""
    monkeypatch.setattr(attention, "CUDNN_IMPLEMENTATION", "xla")
    monkeypatch.setattr(attention, "CUDNN_DTYPES", attention.CUDNN_DTYPES + ("float32",))


def padding_mask(batch: int = 3) -> np.ndarray:
    """bool [B, T]: a left-padded row, a right-padded row, and a left-padded prompt followed
    by a right-padded response (the rollout layout)."""
    real = np.ones((batch, LENGTH), bool)
    real[0, :20] = False
    real[1, LENGTH - 30:] = False
    real[2, :7] = False
    real[2, LENGTH - 25:] = False
    return real


def reference_attention(q, k, v, real, d_out):
    """float64 (out, dq, dk, dv) of causal attention with key padding: q [B, T, H, D],
    k/v [B, T, KV, D], real [B, T], d_out [B, T, H, D] the output's cotangent.

    p = softmax(q k^T / sqrt(D)) over the keys s <= t with real[s] (p = 0 for a query that
    sees no key); out = p v;
    ds = p (dp - rowsum(do * out)) with dp = do v^T; dq = ds k / sqrt(D),
    dk = ds^T q / sqrt(D), dv = p^T do (summed over the G query heads of a kv head).
    """
    q, k, v, d_out = (np.asarray(a, np.float64) for a in (q, k, v, d_out))
    groups = q.shape[2] // k.shape[2]
    scale = q.shape[-1] ** -0.5
    keys, values = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    visible = np.tril(np.ones((LENGTH, LENGTH), bool))[None, None] & real[:, None, None, :]
    scores = np.einsum("bthd,bshd->bhts", q, keys) * scale
    probs = np.where(visible, np.exp(scores - np.where(visible, scores, -np.inf).max(-1, keepdims=True,
                                                                                       initial=0.0)), 0.0)
    probs /= np.maximum(probs.sum(-1, keepdims=True), 1e-300)  # queries that see no key: zeros
    out = np.einsum("bhts,bshd->bthd", probs, values)
    d_probs = np.einsum("bthd,bshd->bhts", d_out, values)
    d_scores = probs * (d_probs - np.einsum("bthd,bthd->bht", d_out, out)[..., None])
    d_q = np.einsum("bhts,bshd->bthd", d_scores, keys) * scale
    d_k = np.einsum("bhts,bthd->bshd", d_scores, q) * scale
    d_v = np.einsum("bhts,bthd->bshd", probs, d_out)

    def per_kv_head(x):
        return x.reshape(x.shape[:2] + (k.shape[2], groups, -1)).sum(3)

    return out, d_q, per_kv_head(d_k), per_kv_head(d_v)


def attention_case(heads: int, kv_heads: int, head_dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(3, LENGTH, heads, head_dim)).astype(np.float32)
    k, v = (rng.normal(size=(3, LENGTH, kv_heads, head_dim)).astype(np.float32) for _ in range(2))
    real = padding_mask()
    # The losses read real tokens only: the cotangent of padding queries is 0.
    d_out = (rng.normal(size=q.shape) * real[:, :, None, None]).astype(np.float32)
    return q, k, v, real, d_out


def run_attention(implementation, q, k, v, real, d_out, dtype=jnp.float32):
    """(out, (dq, dk, dv)) of `causal_attention`, jitted, in `dtype`."""
    interpret = implementation in attention.PALLAS_IMPLEMENTATIONS

    def attend(q, k, v):
        return causal_attention(q, k, v, real, BLOCK, implementation, interpret)

    @jax.jit
    def forward_backward(q, k, v, d_out):
        out, vjp = jax.vjp(attend, q, k, v)
        return out, vjp(d_out)

    return forward_backward(*(jnp.asarray(a, dtype) for a in (q, k, v, d_out)))


# blockwise with G = 2 and the dense/blockwise bf16 and whole-model cases are in
# test_model_attention.py, test_model_gradients.py and test_model_qwen.py.
@pytest.mark.parametrize("implementation,heads,kv_heads",
                         [(name, 4, 2) for name in IMPLEMENTATIONS if name != "blockwise"]
                         + [(name, 8, 2) for name in IMPLEMENTATIONS])
def test_attention_equals_float64_reference(implementation, heads, kv_heads, runnable_cudnn):
    """G = 2 and 4 query heads per kv head, left/right/both padding, T = 100: values to 1e-5
    and gradients to 2e-5 at real queries; the kernels return zeros at padding queries."""
    q, k, v, real, d_out = attention_case(heads, kv_heads)
    out, grads = run_attention(implementation, q, k, v, real, d_out)
    expected_out, *expected_grads = reference_attention(q, k, v, real, d_out)
    np.testing.assert_allclose(np.asarray(out)[real], expected_out[real], atol=1e-5)
    for got, expected in zip(grads, expected_grads):
        np.testing.assert_allclose(np.asarray(got), expected, atol=2e-5)
    if implementation in KERNELS:
        np.testing.assert_array_equal(np.asarray(out)[~real], 0.0)


@pytest.mark.parametrize("implementation", KERNELS)
def test_attention_in_bfloat16_follows_float64_reference(implementation, runnable_cudnn):
    """bfloat16 inputs (bf16 rounding: 2^-8 relative) against the float64 reference of the
    same bf16-rounded inputs. Measured largest errors: values 0.0086, gradients 0.0205
    (pallas_gpu's dk/dv; the others <= 0.0135, as dense and blockwise attention's)."""
    q, k, v, real, d_out = (np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32)) if a.dtype != bool
                            else a for a in attention_case(4, 2, seed=1))
    out, grads = run_attention(implementation, q, k, v, real, d_out, jnp.bfloat16)
    assert out.dtype == jnp.bfloat16
    expected_out, *expected_grads = reference_attention(q, k, v, real, d_out)
    np.testing.assert_allclose(np.asarray(out, np.float32)[real], expected_out[real], atol=2e-2)
    for got, expected in zip(grads, expected_grads):
        np.testing.assert_allclose(np.asarray(got, np.float32), expected, atol=4e-2)


def test_auto_picks_by_backend_dtype_and_length(monkeypatch):
    cases = {("tpu", "float32", 4096): "splash", ("tpu", "bfloat16", 64): "splash",
             ("gpu", "bfloat16", 4096): "cudnn", ("gpu", "float16", 64): "cudnn",
             ("gpu", "float32", 4096): "blockwise", ("cpu", "bfloat16", 512): "dense",
             ("cpu", "float32", 513): "blockwise"}
    for (backend, dtype, length), expected in cases.items():
        monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
        assert resolve_implementation("auto", length, 512, dtype) == expected, (backend, dtype, length)
        assert resolve_implementation("dense", length, 512, dtype) == "dense"


def test_auto_traces_the_splash_kernel_when_the_backend_is_tpu(monkeypatch):
    """With the backend name monkeypatched to "tpu", "auto" stages the splash Pallas kernel
    (traced only: its TPU lowering is tested in test_model_attention_tpu.py)."""
    q = jnp.zeros((1, 16, 4, 16))
    kv = jnp.zeros((1, 16, 2, 16))
    real = jnp.ones((1, 16), bool)
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    jaxpr = str(jax.make_jaxpr(lambda q, k, v: causal_attention(q, k, v, real, 512))(q, kv, kv))
    assert "pallas_call" in jaxpr and "splash" in jaxpr
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    jaxpr = str(jax.make_jaxpr(lambda q, k, v: causal_attention(q, k, v, real, 512))(q, kv, kv))
    assert "pallas_call" not in jaxpr


def test_unsupported_combinations_are_config_errors():
    with pytest.raises(ValueError, match="attention_implementation 'flash' is not one of"):
        tiny_config(attention_implementation="flash")
    with pytest.raises(ValueError, match="attention_interpret=True .*='cudnn' has none"):
        tiny_config(attention_implementation="cudnn", dtype="bfloat16", attention_interpret=True)
    with pytest.raises(ValueError, match="attention_implementation='auto' has none"):
        tiny_config(attention_interpret=True)
    with pytest.raises(ValueError, match="'cudnn' needs dtype in .* got dtype='float32'"):
        tiny_config(attention_implementation="cudnn")
    with pytest.raises(ValueError, match="attention_interpret must be true or false, got 'yes'"):
        tiny_config(attention_implementation="splash", attention_interpret="yes")
    with pytest.raises(ValueError, match="multiple of 8 and at most 256, got 12"):
        tiny_config(attention_implementation="cudnn", dtype="bfloat16", head_dim=12)
    assert tiny_config(attention_implementation="splash", attention_interpret=True).attention_interpret


def model_config(implementation):
    """A 1-layer Qwen3 (hidden 32, 4 query heads over 2 kv heads of dim 16) with this attention."""
    return tiny_config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       attention_implementation=implementation,
                       attention_interpret=implementation in attention.PALLAS_IMPLEMENTATIONS)


def model_batch():
    """input_ids, attention_mask [4, T]: the three padding layouts and a full row."""
    rng = np.random.default_rng(2)
    real = np.concatenate([padding_mask(), np.ones((1, LENGTH), bool)])
    input_ids = np.where(real, rng.integers(1, 64, real.shape), 0).astype(np.int32)
    return input_ids, real.astype(np.int32)


def masked_loss_and_grads(config, input_ids, attention_mask):
    """(logits, d/d(params) of sum over real tokens of logits^2 / T), jitted."""
    graphdef, state = nnx.split(Qwen(config, rngs=nnx.Rngs(0)))

    def loss(state, input_ids, attention_mask):
        logits = nnx.merge(graphdef, state)(input_ids, attention_mask)
        real = attention_mask[..., None] == 1
        return jnp.sum(jnp.where(real, logits, 0) ** 2) / LENGTH, logits

    grads, logits = jax.jit(jax.grad(loss, has_aux=True))(state, input_ids, attention_mask)
    return logits, grads


@pytest.fixture(scope="module")
def dense_model_results():
    return masked_loss_and_grads(model_config("dense"), *model_batch())


@pytest.mark.parametrize("implementation", KERNELS)
@pytest.mark.slow
def test_model_logits_and_gradients_equal_dense(implementation, dense_model_results, runnable_cudnn):
    """The same random Qwen3 weights under each implementation: logits at real tokens and
    every parameter gradient of a loss over real tokens equal dense attention's."""
    batch = model_batch()
    real = batch[1] == 1
    dense_logits, dense_grads = dense_model_results
    logits, grads = masked_loss_and_grads(model_config(implementation), *batch)
    np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(dense_logits)[real], atol=1e-5)
    for (path, got), (_, expected) in zip(nnx.to_flat_state(grads), nnx.to_flat_state(dense_grads)):
        np.testing.assert_allclose(np.asarray(got.get_value()), np.asarray(expected.get_value()),
                                   atol=2e-5, err_msg=str(path))


@pytest.mark.slow
def test_sharded_splash_model_equals_one_device(dense_model_results):
    """fsdp=4 x tensor=2 on 8 simulated devices: the splash kernel under shard_map (rows over
    fsdp, the 2 kv heads over tensor) gives one device's (dense attention) logits and gradients."""
    assert jax.device_count() == 8
    config = model_config("splash")
    batch = model_batch()
    real = batch[1] == 1
    single_logits, single_grads = dense_model_results
    mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
    model = shard_model(Qwen(config, rngs=nnx.Rngs(0)), mesh)
    graphdef, state = nnx.split(model)
    sharded_batch = jax.device_put(batch, batch_sharding(mesh))

    def loss(state, input_ids, attention_mask):
        logits = nnx.merge(graphdef, state)(input_ids, attention_mask)
        return jnp.sum(jnp.where(attention_mask[..., None] == 1, logits, 0) ** 2) / LENGTH, logits

    with jax.set_mesh(mesh):
        lowered = jax.jit(jax.grad(loss, has_aux=True)).lower(state, *sharded_batch)
        grads, logits = lowered.compile()(state, *sharded_batch)
    assert "shard_map" in lowered.as_text() or "sdy.manual_computation" in lowered.as_text()
    np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(single_logits)[real], atol=1e-5)
    for (path, got), (_, expected) in zip(nnx.to_flat_state(grads), nnx.to_flat_state(single_grads)):
        np.testing.assert_allclose(np.asarray(got.get_value()), np.asarray(expected.get_value()),
                                   atol=2e-5, err_msg=str(path))
