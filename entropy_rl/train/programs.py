"""The update's programs and the counts they are built for, in one place: the loop
runs them (`build_programs`), `entropy-rl plan` lowers the same programs on abstract
inputs."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

from entropy_rl.parallel import batch_sharding
from entropy_rl.train.packed_update import PackedUpdate
from entropy_rl.train.step import StepConfig, TrainState, make_optimizer, make_train_step, no_grad_logprobs_program


@dataclasses.dataclass(frozen=True)
class UpdateSettings:
    """What the update's programs are built for, from the config alone.

    mini_batches: optimizer updates per PPO epoch, data.batch_size / algorithm.mini_batch_size;
    mini_rows: responses per mini-batch, algorithm.mini_batch_size x rollout.n; step_config:
    the train step's static part (its num_micro_batches M: mini_rows / micro_batch_size, or
    1); optimizer and its schedule over total_steps x ppo_epochs x mini_batches updates;
    algorithm: the packing mode and budgets (`PackedUpdate`).
    """

    mini_batches: int
    mini_rows: int
    step_config: StepConfig
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    algorithm: Any

    @classmethod
    def from_config(cls, config) -> "UpdateSettings":
        """The settings of a `TrainConfig`."""
        a, r = config.algorithm, config.rollout
        mini_batches, mini_rows = config.data.batch_size // a.mini_batch_size, a.mini_batch_size * r.n
        optimizer, schedule = make_optimizer(config.optimizer, config.total_steps * a.ppo_epochs * mini_batches)
        step_config = StepConfig(a.name, a.policy_loss(), temperature=r.temperature or 1.0,
                                 chunk_size=config.model.logprob_chunk_size,
                                 num_micro_batches=mini_rows // a.micro_batch_size if a.micro_batch_size else 1)
        return cls(mini_batches=mini_batches, mini_rows=mini_rows, step_config=step_config, optimizer=optimizer,
                   schedule=schedule, algorithm=a)

    @property
    def rows(self) -> int:
        """Responses of one rollout: data.batch_size x rollout.n."""
        return self.mini_batches * self.mini_rows

    @property
    def micro_rows(self) -> int:
        """Responses per micro-batch of the train step."""
        return self.mini_rows // self.step_config.num_micro_batches

    @property
    def forward_micro_batches(self) -> int:
        """Micro-batches of the no-grad forward over a whole rollout (each as a train step's)."""
        return self.step_config.num_micro_batches * self.mini_batches


@dataclasses.dataclass
class Programs:
    """The compiled programs of the update, each callable and lowerable (`MeshBound`):

    train_step (state, mini-batch, key) -> (state, metrics); logprobs (params, rollout
    batch) -> no-grad (logp, entropy) [B, T]; take_rows (batch, rows) -> the mini-batch of
    those rows, split as the batch; packed: the same on packed rows (algorithm.packing).
    """

    train_step: Any
    logprobs: Any
    take_rows: Any
    packed: PackedUpdate


def build_programs(state: TrainState, mesh: jax.sharding.Mesh, settings: UpdateSettings) -> Programs:
    """The update's programs for `state`'s model (its graphdef, and for the train steps its
    shardings; arrays or abstract) on `mesh`."""
    step_config = settings.step_config
    return Programs(
        train_step=make_train_step(state, mesh, optimizer=settings.optimizer, schedule=settings.schedule,
                                   config=step_config),
        logprobs=no_grad_logprobs_program(state.graphdef, mesh, temperature=step_config.temperature,
                                          chunk_size=step_config.chunk_size,
                                          num_micro_batches=settings.forward_micro_batches),
        take_rows=jax.jit(lambda batch, rows: jax.tree.map(lambda x: x[rows], batch),
                          out_shardings=batch_sharding(mesh)),
        packed=PackedUpdate.create(state, mesh, algorithm=settings.algorithm, optimizer=settings.optimizer,
                                   schedule=settings.schedule, step_config=step_config, micro_rows=settings.micro_rows),
    )
