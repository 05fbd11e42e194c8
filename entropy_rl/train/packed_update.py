"""The RL loop's packed update (algorithm.packing): the update batch's old / reference
log-probs and train steps on packed rows (entropy_rl.train.packing), their programs and the
token counts reported per step.

Budgets: a row holds S = algorithm.pack_tokens tokens (None: the padded row's W = P + T - 1
rounded up to PACK_MULTIPLE, whole splash / Pallas GPU blocks; S doubles when a sequence is
longer); a micro-batch holds
algorithm.micro_batch_tokens tokens (None: as many as a padded micro-batch,
micro_batch_size or mini-batch responses x W), so memory does not depend on how long the
responses happened to be. "auto" packs a batch when its packed rows hold fewer tokens than
the padded batch; "on" always packs (tests, benchmarks); "off" never packs.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from entropy_rl.parallel.hosts import allgather_host_values
from entropy_rl.rollout.decoding import batch_shards
from entropy_rl.train.packing import PackedLayout, pack_update_batch, padded_tokens
from entropy_rl.train.step import (UpdateBatch, make_packed_no_grad_logprobs, make_packed_train_step,
                                   place_layout)

PACK_MULTIPLE = 128  # a row budget is whole splash / Pallas GPU blocks


def budgeted_layout(prompts: np.ndarray, responses: np.ndarray, *, prompt_columns: int, response_columns: int,
                    pack_tokens: int | None, micro_batch_tokens: int | None, micro_rows: int, row_multiple: int
                    ) -> PackedLayout:
    """`pack_update_batch` of rows with these prompt / response lengths under the run's budgets
    (the module docstring: None = the padded row's width rounded up to PACK_MULTIPLE, and a
    padded micro-batch's tokens), R a multiple of row_multiple (the mesh's batch shards)."""
    width = prompt_columns + response_columns - 1
    return pack_update_batch(prompts, responses, prompt_columns=prompt_columns, response_columns=response_columns,
                             pack_tokens=pack_tokens or -(-width // PACK_MULTIPLE) * PACK_MULTIPLE,
                             micro_tokens=micro_batch_tokens or micro_rows * width, row_multiple=row_multiple)


@jax.jit
def _row_lengths(batch: UpdateBatch) -> tuple[jax.Array, jax.Array]:
    return batch.prompt_mask.sum(1), batch.mask.sum(1)


@dataclasses.dataclass
class PackedUpdate:
    """The packed programs and budgets of a run (see the module docstring).

    micro_rows: responses per padded micro-batch; row_multiple: the mesh's batch shards.
    """

    mode: str
    pack_tokens: int | None
    micro_batch_tokens: int | None
    micro_rows: int
    row_multiple: int
    train_step: object
    logprobs: object

    @classmethod
    def create(cls, state, mesh, *, algorithm, optimizer, schedule, step_config, micro_rows: int) -> "PackedUpdate":
        return cls(algorithm.packing, algorithm.pack_tokens, algorithm.micro_batch_tokens, micro_rows,
                   batch_shards(mesh),
                   make_packed_train_step(state, mesh, optimizer=optimizer, schedule=schedule, config=step_config),
                   make_packed_no_grad_logprobs(state.graphdef, mesh, temperature=step_config.temperature,
                                                chunk_size=step_config.chunk_size))

    def lengths(self, batch: UpdateBatch) -> tuple[np.ndarray, np.ndarray]:
        """(prompt lengths, response lengths) [B] of the batch's rows, on every host."""
        return tuple(allgather_host_values(x) for x in _row_lengths(batch))

    def packed_layout(self, prompts: np.ndarray, responses: np.ndarray, *, prompt_columns: int,
                      response_columns: int) -> PackedLayout:
        """`budgeted_layout` of rows with these prompt / response lengths under this run's budgets."""
        return budgeted_layout(prompts, responses, prompt_columns=prompt_columns, response_columns=response_columns,
                               pack_tokens=self.pack_tokens, micro_batch_tokens=self.micro_batch_tokens,
                               micro_rows=self.micro_rows, row_multiple=self.row_multiple)

    def layout(self, batch: UpdateBatch, lengths, rows=None) -> PackedLayout | None:
        """The packed layout of the batch's rows `rows` (None: all), or None when it would not
        save work (`lengths` from `lengths`, of every row of the update batch)."""
        prompts, responses = (x if rows is None else x[rows] for x in lengths)
        prompt_columns, response_columns = batch.prompt_tokens.shape[1], batch.tokens.shape[1]
        layout = self.packed_layout(prompts, responses, prompt_columns=prompt_columns,
                                    response_columns=response_columns)
        saves = layout.packed_tokens < padded_tokens(len(prompts), prompt_columns, response_columns)
        return layout if saves or self.mode == "on" else None

    @staticmethod
    def token_metrics(batch: UpdateBatch, lengths, layout: PackedLayout | None) -> dict[str, float]:
        """update/useful_token_fraction (real input tokens over those computed on, packed when
        packing) and update/useful_token_fraction_padded (over the padded batch's)."""
        prompts, responses = lengths
        real = float(np.sum(np.where(responses > 0, prompts + responses - 1, 0)))
        padded = padded_tokens(len(prompts), batch.prompt_tokens.shape[1], batch.tokens.shape[1])
        computed = padded if layout is None else layout.packed_tokens
        return {"update/useful_token_fraction": real / computed, "update/useful_token_fraction_padded": real / padded}

    def run_logprobs(self, params, batch: UpdateBatch, layout: PackedLayout, mesh):
        """The no-grad packed (logp, entropy) [B, T] of the batch."""
        return self.logprobs(params, batch, place_layout(layout, mesh))

    def run_train_step(self, state, batch: UpdateBatch, layout: PackedLayout, rng, mesh):
        return self.train_step(state, batch, place_layout(layout, mesh), rng)
