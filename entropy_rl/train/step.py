"""The pure train step: forward -> token statistics -> policy loss -> gradients -> optax update.

One update batch holds B responses (prompt left-padded to P, response right-padded to T):

    logp, H   = response_logprobs(params, batch)                   [B, T] float32
    prepared  = prepare_policy_loss(LossInputs(stop_gradient(logp), H, ...))   whole-batch selections
    grads     = sum_k d/dparams [ numerator_k(params) / denominator ]   over M micro-batches
    params    <- AdamW(clip_by_global_norm(grads))   skipped by optax.apply_if_finite when
                                                       a gradient is not finite

Every token selection and the loss denominator come from the WHOLE update batch, so the
M-micro-batch gradient equals the one-pass gradient under every aggregation mode (only the
summation order differs). The step is compiled once per run by `make_train_step` with
explicit shardings on the mesh (parameters by their logical axes, the batch split over
("data", "fsdp")) and donates the old state.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import NamedSharding, PartitionSpec

from entropy_rl import losses
from entropy_rl.parallel import MeshBound, batch_sharding, mesh_compiler_options, variable_sharding
from entropy_rl.train.packing import PackedLayout

# Quantiles of the token entropy reported each step.
ENTROPY_QUANTILES = (0.1, 0.5, 0.9)


@struct.dataclass
class TrainState:
    """Everything an update changes. graphdef is static (the model's structure).

    params: the model's nnx.State (what `nnx.split(model)` returns); opt_state: the
    `optax.ApplyIfFiniteState` of `skip_non_finite(optimizer)` (it counts the skipped
    updates, see `non_finite_counts`); step: int32 scalar, updates attempted.
    """

    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    params: nnx.State
    opt_state: optax.ApplyIfFiniteState
    step: jax.Array

    def model(self) -> nnx.Module:
        """The policy as an nnx Module sharing this state's parameter arrays (no copy)."""
        return nnx.merge(self.graphdef, self.params)


@struct.dataclass
class UpdateBatch:
    """B responses with their prompts; every leaf has the batch as dim 0.

    prompt_tokens, prompt_mask: int32 [B, P], left-padded; tokens, mask: int32 [B, T],
    right-padded responses; advantages: float32 [B]; old_logp: float32 [B, T];
    ref_logp: float32 [B, T] or None (no reference-KL term).
    """

    prompt_tokens: jax.Array
    prompt_mask: jax.Array
    tokens: jax.Array
    mask: jax.Array
    advantages: jax.Array
    old_logp: jax.Array
    ref_logp: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The static part of a train step (hashable: it selects the compiled program).

    loss_name: a registered policy loss ("ppo_clip", "stapo", ...); loss: its
    PolicyLossConfig; temperature: the sampling temperature (log-probs and entropy are those
    of the sampling distribution); chunk_size: vocabulary rows per chunk of the streamed
    log-softmax (0 = the whole vocabulary at once); num_micro_batches: M >= 1, dividing B.
    """

    loss_name: str
    loss: Any
    temperature: float = 1.0
    chunk_size: int = 0
    num_micro_batches: int = 1


# --------------------------------------------------------------------------- optimizer


def make_schedule(*, learning_rate: float, warmup_steps: int, total_steps: int, schedule: str = "constant",
                  min_lr_ratio: float = 0.0) -> optax.Schedule:
    """Learning rate per optimizer update: linear warm-up to `learning_rate` over
    `warmup_steps` (first update at lr / (warmup_steps + 1), never 0), then constant or a
    cosine decay to learning_rate * min_lr_ratio at `total_steps`."""
    warmup = optax.linear_schedule(learning_rate / (warmup_steps + 1), learning_rate, warmup_steps)
    if schedule == "constant":
        after = optax.constant_schedule(learning_rate)
    elif schedule == "cosine":
        after = optax.cosine_decay_schedule(learning_rate, max(total_steps - warmup_steps, 1), alpha=min_lr_ratio)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; expected 'constant' or 'cosine'")
    return optax.join_schedules([warmup, after], [warmup_steps])


def skip_non_finite(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """`optimizer` under `optax.apply_if_finite`: an update whose gradients are not all finite
    leaves the parameters and the inner optimizer state (its step count included) unchanged.
    It never gives up and applies one: the run decides when to stop (`non_finite_counts`)."""
    return optax.apply_if_finite(optimizer, max_consecutive_errors=jnp.iinfo(jnp.int32).max)


def non_finite_counts(state: TrainState) -> tuple[int, int]:
    """(updates skipped in a row until now, updates skipped in total), read on the host."""
    opt_state = state.opt_state
    consecutive, total = jax.device_get((opt_state.notfinite_count, opt_state.total_notfinite))
    return int(consecutive), int(total)


def make_optimizer(optimizer_config, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(AdamW with global-norm clipping under `skip_non_finite`, its schedule) from an
    `OptimizerConfig`.

    total_steps counts optimizer updates (RL steps x PPO epochs x mini-batches).
    """
    o = optimizer_config
    schedule = make_schedule(learning_rate=o.learning_rate, warmup_steps=o.warmup_steps, total_steps=total_steps,
                             schedule=o.schedule, min_lr_ratio=o.min_lr_ratio)
    adamw = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mu_dtype=o.mu_dtype)
    if o.grad_clip_norm is not None:
        adamw = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), adamw)
    return skip_non_finite(adamw), schedule


# --------------------------------------------------------------------------- state and shardings


def tree_shardings(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """The tree with each nnx Variable holding its NamedSharding (from its logical axes) and
    every other leaf (step counters, optimizer counts) replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def sharding_of(leaf):
        if isinstance(leaf, nnx.Variable):
            return leaf.replace(variable_sharding(leaf, mesh))
        return replicated

    return jax.tree.map(sharding_of, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def state_sharding(state: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
    """NamedShardings of every leaf of `state` (parameters and Adam moments by logical axes)."""
    return tree_shardings(state, mesh)


def create_train_state(model: nnx.Module, optimizer: optax.GradientTransformation,
                       mesh: jax.sharding.Mesh) -> TrainState:
    """A fresh TrainState for `model`, every leaf placed on `mesh` by its logical axes.

    `optimizer` is wrapped by `skip_non_finite` (as `make_optimizer` returns it)."""
    graphdef, params = nnx.split(model)
    opt_state = optimizer.init(params)
    if not isinstance(opt_state, optax.ApplyIfFiniteState):
        raise TypeError("create_train_state: wrap the optimizer with skip_non_finite(...) "
                        "(make_optimizer does), so that non-finite updates are skipped and counted")
    state = TrainState(graphdef=graphdef, params=params, opt_state=opt_state, step=jnp.zeros((), jnp.int32))
    return jax.device_put(state, state_sharding(state, mesh))


# --------------------------------------------------------------------------- forward


def response_logprobs(graphdef: nnx.GraphDef, params: nnx.State, batch: UpdateBatch, *, temperature: float = 1.0,
                      chunk_size: int = 0) -> tuple[jax.Array, jax.Array]:
    """(logp, entropy), float32 [B, T], of the response tokens under the model at `temperature`.

    The model reads prompt + response [B, P + T - 1]; the hidden state at position P + j - 1
    predicts response token j. Log-softmax and entropy stream the vocabulary in chunks of
    `chunk_size` rows of the unembedding (0 = all at once), never materialising [B, T, V].
    Mixed precision as in sampling (`Qwen.logits`): the logits dot takes compute-dtype
    operands (bf16 hidden states and unembedding under dtype=bfloat16) and accumulates in
    float32; the float32 master weights receive the gradient through the cast.
    Values on padding positions are finite but meaningless (mask them).
    """
    hidden, unembedding = _response_hidden(graphdef, params, batch)
    return losses.chunked_logprobs_and_entropy(hidden, unembedding, batch.tokens,
                                               chunk_size=chunk_size or unembedding.shape[0],
                                               temperature=temperature or 1.0)


def response_collision(graphdef: nnx.GraphDef, params: nnx.State, batch: UpdateBatch, *, temperature: float = 1.0,
                       chunk_size: int = 0) -> jax.Array:
    """float32 [B, T] collision probability sum_j p_j^2 of the policy at each response
    position (the distribution `response_logprobs` scores), streamed over the vocabulary."""
    hidden, unembedding = _response_hidden(graphdef, params, batch)
    return losses.chunked_collision_probability(hidden, unembedding, chunk_size=chunk_size or unembedding.shape[0],
                                                temperature=temperature or 1.0)


def _response_hidden(graphdef: nnx.GraphDef, params: nnx.State, batch: UpdateBatch) -> tuple[jax.Array, jax.Array]:
    """(hidden [B, T, D] predicting each response token, unembedding [V, D] in compute dtype)."""
    chex.assert_rank([batch.prompt_tokens, batch.tokens], 2)
    model = nnx.merge(graphdef, params)
    prompt_length = batch.prompt_tokens.shape[1]
    input_ids = jnp.concatenate([batch.prompt_tokens, batch.tokens[:, :-1]], axis=1)
    attention_mask = jnp.concatenate([batch.prompt_mask, batch.mask[:, :-1]], axis=1)
    hidden = model.hidden_states(input_ids, attention_mask)[:, prompt_length - 1:]
    return hidden, model.unembedding().astype(model.dtype)  # as the sampler's logits: compute-dtype operands


# --------------------------------------------------------------------------- statistics


def token_statistics(logp: jax.Array, entropy: jax.Array, advantages: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Stop-gradient statistics over the valid tokens of a batch, float32 scalars.

    entropy mean and quantiles (p10/p50/p90), mean entropy on tokens with A > 0 and A < 0,
    mean logp, and Cui et al.'s Cov(logp, A) = mean_t (logp_t - mean logp)(A_t - mean A).
    logp, entropy, mask: [B, T]; advantages: [B] (broadcast over tokens).
    """
    chex.assert_rank([logp, entropy, mask], 2)
    chex.assert_rank(advantages, 1)
    logp, entropy = jax.lax.stop_gradient(logp), jax.lax.stop_gradient(entropy)
    valid = mask.astype(jnp.float32)
    token_adv = jnp.broadcast_to(advantages[:, None], mask.shape).astype(jnp.float32)

    def mean_over(selected):
        return losses.safe_divide(jnp.sum(selected * entropy), jnp.sum(selected))

    stats = {
        "entropy/mean": mean_over(valid),
        "entropy/positive_adv": mean_over(valid * (token_adv > 0)),
        "entropy/negative_adv": mean_over(valid * (token_adv < 0)),
        "logp/mean": losses.safe_divide(jnp.sum(valid * logp), jnp.sum(valid)),
        "cov_logp_adv": losses.safe_divide(jnp.sum(losses.centered_covariance(logp, token_adv, valid)),
                                           jnp.sum(valid)),
    }
    for q in ENTROPY_QUANTILES:
        stats[f"entropy/p{round(q * 100)}"] = losses.masked_quantile(entropy, valid, q)
    return stats


# --------------------------------------------------------------------------- the step


def loss_inputs(batch: UpdateBatch, logp: jax.Array, entropy: jax.Array) -> losses.LossInputs:
    """The policy losses' batch: `logp`, `entropy` [B, T] and the batch's arrays (advantages
    broadcast over tokens)."""
    token_adv = jnp.broadcast_to(batch.advantages[:, None], batch.mask.shape).astype(jnp.float32)
    return losses.LossInputs(logp=logp, old_logp=batch.old_logp, advantages=token_adv, mask=batch.mask,
                             entropy=entropy, ref_logp=batch.ref_logp)


def _split_micro_batches(tree: Any, num_micro: int) -> Any:
    """Leaves [B, ...] as [M, B / M, ...] with micro-batch k = rows k, k + M, k + 2M, ...

    (strided, so each device keeps its share of every micro-batch).
    """

    def split(leaf):
        rows = leaf.shape[0]
        return jnp.swapaxes(leaf.reshape(rows // num_micro, num_micro, *leaf.shape[1:]), 0, 1)

    return jax.tree.map(split, tree)


def _whole_batch_gradients(params, batch: UpdateBatch, rng, *, graphdef, config: StepConfig):
    """(loss, grads, loss metrics) in one forward/backward over the batch."""

    def loss_fn(p):
        logp, entropy = response_logprobs(graphdef, p, batch, temperature=config.temperature,
                                          chunk_size=config.chunk_size)
        return losses.policy_loss(config.loss_name, loss_inputs(batch, logp, entropy), config=config.loss, rng=rng)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, grads, metrics


def _accumulated_gradients(params, batch: UpdateBatch, rng, *, graphdef, config: StepConfig):
    """Like `_whole_batch_gradients`, over M micro-batches with jax.lax.scan.

    A no-grad forward over the whole batch, itself run micro-batch by micro-batch, feeds
    `prepare_policy_loss` (selections and the denominator); each micro-batch adds
    d(numerator_k / denominator)/dparams.
    """
    forward = functools.partial(response_logprobs, graphdef, temperature=config.temperature,
                                chunk_size=config.chunk_size)
    logp, entropy = micro_batched_logprobs(graphdef, params, batch, temperature=config.temperature,
                                           chunk_size=config.chunk_size, num_micro_batches=config.num_micro_batches)
    prepared = losses.prepare_policy_loss(config.loss_name, loss_inputs(batch, logp, entropy), config=config.loss,
                                          rng=rng)
    denominator = prepared.denominator[0]
    micro = _split_micro_batches((batch, prepared), config.num_micro_batches)

    def micro_loss(p, micro_batch, micro_prepared):
        micro_logp, micro_entropy = forward(p, micro_batch)
        numerator, metric_sums = losses.policy_loss_terms(
            config.loss_name, micro_prepared, loss_inputs(micro_batch, micro_logp, micro_entropy), config=config.loss)
        return losses.safe_divide(numerator, denominator), metric_sums

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def body(carry, xs):
        out = grad_fn(params, *xs)
        return jax.tree.map(jnp.add, carry, out), None

    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, params, *first))
    (loss, metric_sums), grads = jax.lax.scan(body, zeros, micro)[0]
    return loss, grads, losses.metric_means(metric_sums)


def train_step(state: TrainState, batch: UpdateBatch, rng: jax.Array, *, optimizer: optax.GradientTransformation,
               schedule: optax.Schedule, config: StepConfig) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on `batch` (pure). `optimizer` is under `skip_non_finite`: when a
    gradient is not finite, params and the inner optimizer state stay unchanged.

    Returns (new state, metrics): loss, grad_norm (before clipping), lr (the schedule at the
    optimizer's count of applied updates), skipped (0/1) and the loss's own metrics (clip and
    masked fractions, KL, ...) under "loss/". Token statistics (entropy, ...) are the
    caller's, once per rollout batch (`token_statistics`).
    """
    gradients = _whole_batch_gradients if config.num_micro_batches == 1 else _accumulated_gradients
    return _apply_gradients(state, batch, rng, gradients, optimizer=optimizer, schedule=schedule, config=config)


def _apply_gradients(state: TrainState, batch: UpdateBatch, rng: jax.Array, gradients, *, optimizer, schedule,
                     config: StepConfig) -> tuple[TrainState, dict[str, jax.Array]]:
    """The optimizer update of `train_step` with grads from gradients(params, batch, rng,
    graphdef=..., config=...) -> (loss, grads, loss metrics)."""
    loss, grads, loss_metrics = gradients(state.params, batch, rng, graphdef=state.graphdef, config=config)
    schedule_state = optax.tree_utils.tree_get(state.opt_state, "ScaleByScheduleState")
    lr = schedule(0 if schedule_state is None else schedule_state.count)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state,
                              step=state.step + 1)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": jnp.asarray(lr, jnp.float32),
               "skipped": (~opt_state.last_finite).astype(jnp.float32)}
    return new_state, metrics | {f"loss/{k}": jnp.asarray(v, jnp.float32) for k, v in loss_metrics.items()}


def make_train_step(state: TrainState, mesh: jax.sharding.Mesh, *, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, config: StepConfig) -> MeshBound:
    """`train_step` compiled with explicit shardings: state by logical axes (donated), the
    batch split over ("data", "fsdp"), the PRNG key and the metrics replicated; traced and
    run under `jax.set_mesh(mesh)`, so the model's activation constraints are active."""
    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = state_sharding(state, mesh)
    step = functools.partial(train_step, optimizer=optimizer, schedule=schedule, config=config)
    return MeshBound(jax.jit(step, in_shardings=(shardings, batch_sharding(mesh), replicated),
                             out_shardings=(shardings, replicated), donate_argnums=0,
                             compiler_options=mesh_compiler_options(mesh)), mesh)


def micro_batched_logprobs(graphdef: nnx.GraphDef, params: nnx.State, batch: UpdateBatch, *, temperature: float = 1.0,
                           chunk_size: int = 0, num_micro_batches: int = 1) -> tuple[jax.Array, jax.Array]:
    """No-grad `response_logprobs` over M micro-batches in sequence (jax.lax.map), so the
    forward's temporaries are those of B / M rows; (logp, entropy) [B, T] in the batch's row
    order (micro-batch k = rows k, k + M, ... as in `_split_micro_batches`)."""
    params = jax.lax.stop_gradient(params)
    forward = functools.partial(response_logprobs, graphdef, params, temperature=temperature, chunk_size=chunk_size)
    if num_micro_batches == 1:
        return forward(batch)
    per_micro = jax.lax.map(forward, _split_micro_batches(batch, num_micro_batches))
    # [M, B / M, T] -> [B / M, M, T] -> [B, T]: row j * M + k is micro-batch k's row j.
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:]), per_micro)


def make_no_grad_logprobs(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh, *, temperature: float = 1.0,
                          chunk_size: int = 0, num_micro_batches: int = 1) -> MeshBound:
    """Compiled `micro_batched_logprobs` (params, batch) -> (logp, entropy) [B, T], the batch
    split over ("data", "fsdp"), traced and run under `jax.set_mesh(mesh)`: the old and
    reference log-probs of a rollout."""
    forward = functools.partial(micro_batched_logprobs, graphdef, temperature=temperature, chunk_size=chunk_size,
                                num_micro_batches=num_micro_batches)
    rows = batch_sharding(mesh)
    return MeshBound(jax.jit(forward, in_shardings=(None, rows), out_shardings=(rows, rows),
                             compiler_options=mesh_compiler_options(mesh)), mesh)


# `make_no_grad_logprobs`, one program per (graphdef, mesh, settings) in a process.
no_grad_logprobs_program = functools.lru_cache(maxsize=16)(make_no_grad_logprobs)


# --------------------------------------------------------------------------- packed rows


def packed_layout_sharding(mesh: jax.sharding.Mesh) -> PackedLayout:
    """A `PackedLayout`'s shardings: packed rows [M, R, S] split over the batch axes on R,
    gather [B, T] and micro [B] split as the batch."""
    rows = batch_sharding(mesh)
    packed = NamedSharding(mesh, PartitionSpec(None, *rows.spec))
    return PackedLayout(source=packed, segment_ids=packed, positions=packed, targets=packed, gather=rows,
                        micro=rows)


def _micro_part(layout: PackedLayout) -> tuple[jax.Array, ...]:
    """The [M, R, S] arrays a micro-batch's forward reads (source, segment_ids, positions, targets)."""
    return layout.source, layout.segment_ids, layout.positions, layout.targets


def packed_micro_logprobs(graphdef: nnx.GraphDef, params: nnx.State, batch: UpdateBatch, part: tuple, *,
                          temperature: float = 1.0, chunk_size: int = 0) -> tuple[jax.Array, jax.Array]:
    """(logp, entropy) float32 [R, S] of one micro-batch of packed rows: at each packed token,
    those of the response token its hidden state predicts (meaningless where it predicts none).

    part = (source, segment_ids, positions, targets) [R, S] of a `PackedLayout`: the rows'
    tokens are gathered from the batch's padded inputs on the devices, and the model attends
    within each segment (`Qwen.hidden_states` with segment ids and per-sequence positions).
    Precision and chunking as in `response_logprobs`.
    """
    source, segment_ids, positions, targets = part
    model = nnx.merge(graphdef, params)
    inputs = jnp.concatenate([batch.prompt_tokens, batch.tokens[:, :-1]], axis=1).reshape(-1)
    hidden = model.hidden_states(jnp.take(inputs, source), (segment_ids != 0).astype(jnp.int32), positions=positions,
                                 segment_ids=segment_ids)
    unembedding = model.unembedding().astype(model.dtype)
    return losses.chunked_logprobs_and_entropy(hidden, unembedding, jnp.take(batch.tokens.reshape(-1), targets),
                                               chunk_size=chunk_size or unembedding.shape[0],
                                               temperature=temperature or 1.0)


def packed_logprobs(graphdef: nnx.GraphDef, params: nnx.State, batch: UpdateBatch, layout: PackedLayout, *,
                    temperature: float = 1.0, chunk_size: int = 0) -> tuple[jax.Array, jax.Array]:
    """`response_logprobs` computed on packed rows: (logp, entropy) float32 [B, T], the M
    micro-batches of `layout` in sequence (jax.lax.map), each token's values gathered back
    to its (row, column) of the batch."""
    forward = functools.partial(packed_micro_logprobs, graphdef, params, batch, temperature=temperature,
                                chunk_size=chunk_size)
    part = _micro_part(layout)
    per_micro = forward(tuple(x[0] for x in part)) if layout.num_micro_batches == 1 else jax.lax.map(forward, part)
    return tuple(x.reshape(-1)[layout.gather] for x in per_micro)


def _micro_rows(layout: PackedLayout, k, values: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """Micro-batch k's [R, S] values gathered to [B, T] (rows of other micro-batches get
    some value of micro-batch k: finite, and weighted 0 by the caller)."""
    per_micro = layout.source[0].size
    index = jnp.clip(layout.gather - k * per_micro, 0, per_micro - 1)
    return tuple(x.reshape(-1)[index] for x in values)


def _rows_of_micro(prepared: losses.PreparedLoss, batch: UpdateBatch, in_micro: jax.Array):
    """(prepared, batch) with every row outside the micro-batch (in_micro [B] False) weighted 0:
    its numerator and metric sums are exactly those of the micro-batch's rows alone."""
    rows = in_micro.astype(jnp.float32)
    prepared = dataclasses.replace(prepared, pg_weight=prepared.pg_weight * rows[:, None],
                                   aux_weight=prepared.aux_weight * rows[:, None], row_share=prepared.row_share * rows)
    return prepared, batch.replace(mask=batch.mask * in_micro[:, None].astype(batch.mask.dtype))


def _packed_gradients(params, batch: UpdateBatch, rng, *, layout: PackedLayout, graphdef, config: StepConfig):
    """(loss, grads, loss metrics) of the batch on packed rows: one pass when the layout has
    one micro-batch, else `_accumulated_gradients`' scheme over its M token-budget
    micro-batches (whole-batch no-grad forward -> `prepare_policy_loss`; micro-batch k adds
    d(numerator_k / denominator)/dparams, its rows' values gathered to [B, T] and the other
    rows weighted 0)."""
    forward = functools.partial(packed_logprobs, graphdef, temperature=config.temperature,
                                chunk_size=config.chunk_size)
    if layout.num_micro_batches == 1:
        def loss_fn(p):
            logp, entropy = forward(p, batch, layout)
            return losses.policy_loss(config.loss_name, loss_inputs(batch, logp, entropy), config=config.loss, rng=rng)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, grads, metrics
    logp, entropy = forward(jax.lax.stop_gradient(params), batch, layout)
    prepared = losses.prepare_policy_loss(config.loss_name, loss_inputs(batch, logp, entropy), config=config.loss,
                                          rng=rng)
    denominator = prepared.denominator[0]
    micro_forward = functools.partial(packed_micro_logprobs, graphdef, temperature=config.temperature,
                                      chunk_size=config.chunk_size)

    def micro_loss(p, k, part):
        micro_logp, micro_entropy = _micro_rows(layout, k, micro_forward(p, batch, part))
        micro_prepared, micro_batch = _rows_of_micro(prepared, batch, layout.micro == k)
        numerator, metric_sums = losses.policy_loss_terms(
            config.loss_name, micro_prepared, loss_inputs(micro_batch, micro_logp, micro_entropy), config=config.loss)
        return losses.safe_divide(numerator, denominator), metric_sums

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def body(carry, xs):
        return jax.tree.map(jnp.add, carry, grad_fn(params, *xs)), None

    xs = (jnp.arange(layout.num_micro_batches), _micro_part(layout))
    first = jax.tree.map(lambda x: x[0], xs)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, params, *first))
    (loss, metric_sums), grads = jax.lax.scan(body, zeros, xs)[0]
    return loss, grads, losses.metric_means(metric_sums)


def packed_train_step(state: TrainState, batch: UpdateBatch, layout: PackedLayout, rng: jax.Array, *,
                      optimizer: optax.GradientTransformation, schedule: optax.Schedule, config: StepConfig
                      ) -> tuple[TrainState, dict[str, jax.Array]]:
    """`train_step` with the forwards and backwards on the packed rows of `layout` (its
    micro-batches replace config.num_micro_batches); the same loss, gradients and metrics."""
    gradients = functools.partial(_packed_gradients, layout=layout)
    return _apply_gradients(state, batch, rng, gradients, optimizer=optimizer, schedule=schedule, config=config)


def make_packed_train_step(state: TrainState, mesh: jax.sharding.Mesh, *, optimizer: optax.GradientTransformation,
                           schedule: optax.Schedule, config: StepConfig) -> MeshBound:
    """`packed_train_step` compiled as `make_train_step` (one program per layout shape)."""
    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = state_sharding(state, mesh)
    step = functools.partial(packed_train_step, optimizer=optimizer, schedule=schedule, config=config)
    return MeshBound(jax.jit(step, in_shardings=(shardings, batch_sharding(mesh), packed_layout_sharding(mesh), replicated),
                             out_shardings=(shardings, replicated), donate_argnums=0,
                             compiler_options=mesh_compiler_options(mesh)), mesh)


def make_packed_no_grad_logprobs(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh, *, temperature: float = 1.0,
                                 chunk_size: int = 0) -> MeshBound:
    """Compiled no-grad `packed_logprobs` (params, batch, layout) -> (logp, entropy) [B, T]:
    the old and reference log-probs of a rollout on packed rows."""
    def forward(params, batch, layout):
        return packed_logprobs(graphdef, jax.lax.stop_gradient(params), batch, layout, temperature=temperature,
                               chunk_size=chunk_size)

    rows = batch_sharding(mesh)
    return MeshBound(jax.jit(forward, in_shardings=(None, rows, packed_layout_sharding(mesh)), out_shardings=(rows, rows),
                             compiler_options=mesh_compiler_options(mesh)), mesh)


def place_layout(layout: PackedLayout, mesh: jax.sharding.Mesh) -> PackedLayout:
    """The host layout (the same on every process) as global arrays split as `packed_layout_sharding`."""
    return jax.tree.map(lambda x, sharding: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index]),
                        layout, packed_layout_sharding(mesh))
