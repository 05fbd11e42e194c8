"""The warm start runs one update at a time and reports each; progress lines (warm start and
steps) print off a terminal, with an eta that leaves out the first update's compilation.

Updates queued without bound by asynchronous dispatch stalled a 2-process warm start for good
(issue 27); `tests/multiprocess/test_multiprocess_warmstart.py` runs that case end to end.
"""

import jax
import numpy as np
import pytest
from flax import nnx

from entropy_rl.data import load_tokenizer, synthetic_problems
from entropy_rl.model import Qwen, tiny_config
from entropy_rl.parallel import MeshConfig, make_mesh, shard_model
from entropy_rl.train import warmstart
from entropy_rl.train.progress import PlainProgress, loss_reporter

TOKENIZER = load_tokenizer("builtin")


class RecordingMeshBound(warmstart.MeshBound):
    """MeshBound that records, at each call, whether the previous call's outputs were computed."""

    previous_ready: list[bool] = []

    def __call__(self, *args, **kwargs):
        if hasattr(self, "outputs"):
            RecordingMeshBound.previous_ready.append(all(x.is_ready() for x in jax.tree.leaves(self.outputs)))
        self.outputs = super().__call__(*args, **kwargs)
        return self.outputs


@pytest.mark.slow
def test_each_update_is_finished_before_the_next_and_reported(monkeypatch):
    """On today's code (asynchronous dispatch) no previous update had finished at any call."""
    monkeypatch.setattr(warmstart, "MeshBound", RecordingMeshBound)
    mesh = make_mesh(MeshConfig(data=2, fsdp=1, tensor=1), devices=jax.devices()[:2])
    config = tiny_config(vocab_size=TOKENIZER.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    graphdef, shapes = nnx.split(nnx.eval_shape(lambda: Qwen(config, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)  # numpy weights: no initialisation programs to compile
    model = shard_model(nnx.merge(graphdef, jax.tree.map(
        lambda s: jax.device_put((0.1 * rng.standard_normal(s.shape)).astype(s.dtype)), shapes)), mesh)
    reports = []
    result = warmstart.warm_start(model, synthetic_problems(64, seed=0), lambda p: TOKENIZER.encode(p.problem),
                                  TOKENIZER, steps=12, batch_size=32, learning_rate=3e-3, seed=0, mesh=mesh,
                                  report=lambda done, loss: reports.append((done, loss)))
    assert RecordingMeshBound.previous_ready == [True] * 11
    assert [done for done, _ in reports] == list(range(1, 13))
    assert all(isinstance(loss, float) for _, loss in reports)
    assert result["warmstart/loss_first"] == sum(loss for _, loss in reports[:10]) / 10


def test_eta_starts_after_the_first_update():
    now, lines = [0.0], []
    progress = PlainProgress(total=10, every_s=30, clock=lambda: now[0], label="warm start")
    progress.write = lines.append
    for step, at in enumerate([600.0, 610.0, 620.0, 630.0, 640.0, 650.0, 660.0, 670.0, 680.0, 690.0], start=1):
        now[0] = at  # the first update took 600 s (compilation), the others 10 s each
        progress.update(1)
    assert lines[0] == "warm start 1/10 (10%)  elapsed 0:10:00"  # no eta from one update
    assert lines[1] == "warm start 4/10 (40%)  elapsed 0:10:30  eta 0:01:00"


def test_loss_reporter_prints_plain_lines_off_a_terminal(capsys):
    report = loss_reporter(label="warm start", total=3, every_s=0, live=True)  # pytest's stderr is no terminal
    for done, loss in [(1, 2.5), (2, 1.25), (3, 0.000123456)]:
        report(done, loss)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["warm start 1/3 (33%)", "warm start 2/3 (66%)",
                                                     "warm start 3/3 (100%)"]
    assert lines[-1].endswith("loss=0.0001235")
