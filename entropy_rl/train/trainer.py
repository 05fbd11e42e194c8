"""What a run sets up once: `set_up` builds the mesh, the policy, the problems and prompt
iterator (`train.data_setup`), the sampling and update settings (`train.programs`) into a
`Trainer`."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

from entropy_rl.data import Problem
from entropy_rl.eval.heldout import heldout_eval
from entropy_rl.parallel import make_mesh
from entropy_rl.parallel.hosts import mesh_process_count
from entropy_rl.policy import build_policy
from entropy_rl.train.checkpoint import Checkpointer, set_aside_previous_run
from entropy_rl.train.config import TrainConfig
from entropy_rl.train.data_setup import (PromptEncoder, drop_long_prompts, heldout_problems, make_iterator,
                                         settings_line, training_problems)
from entropy_rl.train.limits import check_lengths
from entropy_rl.train.programs import UpdateSettings
from entropy_rl.train.progress import say
from entropy_rl.train.step import TrainState


@dataclasses.dataclass
class Trainer:
    """Everything a run sets up once: the mesh, data, sampling and update settings."""

    config: TrainConfig
    mesh: jax.sharding.Mesh
    tokenizer: Any
    encode: PromptEncoder
    problems: list[Problem]
    heldout: list[Problem]
    iterator: Any
    sampling: Any  # SamplingConfig of the rollouts (prompt_bucket: the base of each batch's bucket)
    update: UpdateSettings  # mini-batches, step config, optimizer: what the update's programs are built for
    checkpointer: Checkpointer
    seed_key: jax.Array
    eval_key: jax.Array  # the same held-out samples' randomness before, during and after

    @functools.cached_property
    def vocab_size(self) -> int:
        """The policy's vocabulary (its logits), at least the tokenizer's."""
        return self.config.model.qwen_config(self.tokenizer.vocab_size).vocab_size

    def evaluate(self, state: TrainState, label: str) -> dict[str, Any]:
        """The held-out evaluation, announced before and after (it can take long)."""
        e = self.config.eval
        say(f"held-out eval ({label}): {len(self.heldout)} {e.benchmark} problems x {e.n} samples ...")
        start = time.time()
        result = heldout_eval(state.model(), self.tokenizer, self.heldout, self.encode, self.eval_key,
                              config=self.config, mesh=self.mesh)
        say(f"held-out eval ({label}): accuracy {result['accuracy']:.3f} in {time.time() - start:.0f} s")
        return result



def set_up(config: TrainConfig, devices: Sequence[jax.Device] | None = None) -> tuple[Trainer, nnx.Module]:
    """(the run's Trainer, the freshly built policy on the mesh)."""
    mesh = make_mesh(config.mesh, devices=devices)
    processes = mesh_process_count(mesh)
    if config.data.batch_size % processes:
        raise ValueError(f"data.batch_size = {config.data.batch_size} prompts do not split over {processes} processes")
    policy, tokenizer = build_policy(config.model, seed=config.seed, mesh=mesh)
    encode = PromptEncoder(config, tokenizer)
    problems = training_problems(config)
    if config.data.max_prompt_length is not None:
        problems = drop_long_prompts(problems, encode, config.data.max_prompt_length)
    check_lengths(config, longest_prompt=max(((p.id, len(encode(p))) for p in problems), key=lambda x: x[1],
                                             default=None))
    say(settings_line(config, len(problems)))
    sampling = config.rollout.sampling_config(stop_token_ids=tokenizer.stop_token_ids,
                                              pad_token_id=tokenizer.pad_token_id)
    seed_key = jax.random.key(config.seed)
    if not config.resume:  # a fresh run in a used run_dir: the old one is moved aside, never deleted
        set_aside_previous_run(config.run_dir)
    trainer = Trainer(config=config, mesh=mesh, tokenizer=tokenizer, encode=encode, problems=problems,
                      heldout=heldout_problems(config), iterator=make_iterator(config, problems), sampling=sampling,
                      update=UpdateSettings.from_config(config),
                      checkpointer=Checkpointer.from_config(config), seed_key=seed_key,
                      eval_key=jax.random.fold_in(seed_key, 2**31 - 1))
    return trainer, policy
