"""Metric sinks: one host transfer per step, metrics.jsonl, TensorBoard events, and logs that
read as if a resumed run had never stopped."""

import json
import math
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from entropy_rl.train import metrics as mt
from entropy_rl.config import LoggingConfig
from entropy_rl.train.config import TrainConfig, load_config

QUIET = LoggingConfig(tensorboard=False, progress_bar=False)


def _tensorboard_scalars(directory) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} read from TFRecord event files (length, crc, event, crc)."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            length = struct.unpack("<Q", data[offset:offset + 8])[0]
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_to_scalars_converts_jax_numpy_and_python_values():
    scalars = mt.to_scalars({"a": jnp.float32(1.5), "b": np.int32(3), "c": 2, "d": jnp.array([0.25]), "e": jnp.nan})
    assert scalars["a"] == 1.5 and scalars["b"] == 3.0 and scalars["c"] == 2.0 and scalars["d"] == 0.25
    assert all(type(v) is float for v in scalars.values()) and math.isnan(scalars["e"])
    with pytest.raises(ValueError, match="'v' is not a scalar"):
        mt.to_scalars({"v": jnp.ones(3)})


def test_jsonl_rows_and_resume_truncation(tmp_path):
    with mt.MetricsLogger(tmp_path, QUIET, total_steps=5) as logger:
        for step in range(1, 6):
            logger.log(step, {"reward/mean": jnp.float32(step / 10), "loss": float("nan") if step == 2 else 0.0})
    rows = mt.read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[2]["reward/mean"] == pytest.approx(0.3) and math.isnan(rows[1]["loss"])
    with open(tmp_path / mt.METRICS_FILE, "a") as f:  # a killed run's torn last line
        f.write('{"step": 6, "rew')
    # resumed from the checkpoint of step 3: steps 4, 5 and the torn line go, then new rows follow
    with mt.MetricsLogger(tmp_path, QUIET, total_steps=5, start_step=3) as logger:
        logger.log(4, {"reward/mean": 0.9})
    rows = mt.read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["reward/mean"] == 0.9


def test_tensorboard_events_and_progress_bar(tmp_path, capsys):
    logging = LoggingConfig(tensorboard=True, progress_bar=True)
    with mt.MetricsLogger(tmp_path, logging, total_steps=3, config=TrainConfig()) as logger:
        for step in (1, 2, 3):
            logger.log(step, {"reward/mean": step * 0.5, "entropy/mean": jnp.float32(1.0 / step)})
        logger.write("a note")
    assert load_config(tmp_path / mt.CONFIG_FILE) == TrainConfig()
    scalars = _tensorboard_scalars(tmp_path / mt.TENSORBOARD_SUBDIR)
    assert scalars["reward/mean"] == [(1, 0.5), (2, 1.0), (3, 1.5)]
    assert [step for step, _ in scalars["entropy/mean"]] == [1, 2, 3]
    output = capsys.readouterr()
    text = output.out + output.err
    assert "a note" in text and "3/3" in text and "H=0.333" in text and "reward=1.5" in text


def test_wandb_requested_without_wandb_warns_and_goes_on(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("no wandb")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.warns(UserWarning, match="wandb is not installed"):
        logger = mt.MetricsLogger(tmp_path, LoggingConfig(tensorboard=False, progress_bar=False, wandb=True), total_steps=1)
    logger.log(1, {"x": 1.0})
    logger.close()
    assert json.loads((tmp_path / mt.METRICS_FILE).read_text())["x"] == 1.0
