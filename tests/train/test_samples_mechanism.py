"""samples.jsonl's mechanism fields from a real run, and `compare`'s mechanism figures of it.

One tiny STAPO run (the setup of test_run_visibility: 1-layer policy, the real Qwen3 tokenizer,
rewards that differ within a group; 1 step, every response kept, temperature 0.8, the
log-softmax streamed in vocabulary chunks) with `sample_records` wrapped to recompute, from
the policy's full logits on the kept rows, p of each sampled token and sum_j p_j^2 in float64:
the stored grad_sq = 1 - 2p + sum_j p_j^2 must equal it, and the stored cov must equal
(logp - mean logp)(A - mean A) over the batch recomputed in numpy.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropy_rl.sweep import compare, mechanism
from entropy_rl.train import loop
from entropy_rl.train.samples import SAMPLES_FILE
from tests.train.test_run_visibility import _config

TEMPERATURE = 0.8

# one worker builds the module's run (`--dist loadgroup`): about 90 s of CPU time
pytestmark = [pytest.mark.xdist_group("samples-mechanism"), pytest.mark.slow]


def _float64_grad_sq(batch, rows, state, temperature):
    """[R, T] 1 - 2 p_y + sum_j p_j^2 from the model's full float32 logits, in float64 numpy."""
    picked = jax.tree.map(lambda x: None if x is None else np.asarray(x)[rows], batch)
    model = state.model()
    prompt_length = picked.prompt_tokens.shape[1]
    input_ids = np.concatenate([picked.prompt_tokens, picked.tokens[:, :-1]], axis=1)
    attention = np.concatenate([picked.prompt_mask, picked.mask[:, :-1]], axis=1)
    hidden = model.hidden_states(jnp.asarray(input_ids), jnp.asarray(attention))
    logits = np.asarray(model.logits(hidden), np.float64)[:, prompt_length - 1:] / temperature
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    p = np.exp(np.take_along_axis(log_probs, picked.tokens[..., None], -1)[..., 0])
    return 1 - 2 * p + np.exp(2 * log_probs).sum(-1), picked.mask


@pytest.fixture(scope="session")  # session: other modules interleave on a worker
def stapo_run(tmp_path_factory):
    """(run dir, {step: (float64 grad_sq [R, T], mask [R, T])} recomputed while the run wrote its rows)."""
    tmp_path = tmp_path_factory.mktemp("mechanism")
    config = _config(tmp_path, total_steps=1, **{"rollout.temperature": TEMPERATURE, "model.logprob_chunk_size": 5000,
                                                  "eval.num_problems": 1, "eval.n": 2})
    recomputed = {}
    original = loop.sample_records

    def recording(step, batch, entropy, *, rows, state, temperature, **kwargs):
        recomputed[step] = _float64_grad_sq(batch, rows, state, temperature)
        return original(step, batch, entropy, rows=rows, state=state, temperature=temperature, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "sample_records", recording)
        loop.train(config)
    return pathlib.Path(config.run_dir), recomputed


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / SAMPLES_FILE).read_text().splitlines()]


def test_stored_grad_sq_equals_the_models_logits_recomputation(stapo_run):
    run_dir, recomputed = stapo_run
    rows = _rows(run_dir)
    assert len(rows) == 8 and set(recomputed) == {1}
    expected, mask = recomputed[1]
    for i, row in enumerate(rows):
        length = row["length"]
        assert len(row["grad_sq"]) == len(row["cov"]) == length == int(mask[i].sum())
        np.testing.assert_allclose(row["grad_sq"], expected[i, :length], atol=2e-5)
        p = np.exp(row["logp"])
        assert np.all((1 - p) ** 2 - 1e-4 <= row["grad_sq"]) and np.all(row["grad_sq"] <= 2 * (1 - p) ** 2 + 1e-4)


def test_stored_cov_equals_numpy_over_the_batch(stapo_run):
    rows = _rows(stapo_run[0])  # every row of the batch is kept: the batch's means are recomputable
    logp = np.concatenate([r["logp"] for r in rows])
    advantage = np.concatenate([[r["advantage"]] * r["length"] for r in rows])
    expected = (logp - logp.mean()) * (advantage - advantage.mean())
    np.testing.assert_allclose(np.concatenate([r["cov"] for r in rows]), expected, atol=5e-5)
    assert np.abs(expected).max() > 1e-3  # not vacuous


def test_compare_writes_the_mechanism_figures_and_table(stapo_run, tmp_path):
    run_dir = stapo_run[0]
    result = compare.compare([run_dir], tmp_path / "report", warn=lambda line: None)
    for name in mechanism.FIGURES:
        assert (tmp_path / "report" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _rows(run_dir)
    flagged = np.concatenate([r["flagged"] for r in rows]).astype(bool)
    grad_sq = np.concatenate([r["grad_sq"] for r in rows])
    [summary] = result["mechanism"].values()
    assert flagged.any() and summary["flagged_fraction"] == pytest.approx(flagged.mean())
    assert summary["flagged_grad_sq"] == pytest.approx(grad_sq[flagged].mean())
    assert summary["other_grad_sq"] == pytest.approx(grad_sq[~flagged].mean())
    report = (tmp_path / "report" / "report.md").read_text()
    [method] = result["mechanism"]
    assert f"| {method} | loss/spurious_fraction | {len(grad_sq)} |" in report
    assert "not recorded" not in report
