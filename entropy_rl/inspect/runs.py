"""A run directory as the page's data: summary, curves' metric rows, sample responses token by token.

Reads only files (no jax): RUN_DIR/summary.json, config.yaml, metrics.jsonl and samples.jsonl
(rows described in `entropy_rl.train.samples`). What is missing or from an older format is
not an error but a note the page shows (`RunData.notes`); a file that cannot be read at all
(a bad line other than a torn last one, a row without the per-token lists) raises ValueError
naming the file and line.

A response on the page ("responses" of `page_data`) is a compact JSON list, RESPONSE_FIELDS
in order (a list, not an object: at the samples cap the keys alone would be a third of the page):

    run (index into "runs"), step, row, reward, correct, answer, reference, advantage,
    prompt (index into "prompts"), flagged (number of tokens the method flagged),
    text (the decoded response; null when pieces join to it), pieces ([T] text of each token,
    special tokens by name; null in older samples), special (indices of special tokens),
    lp ([T] log-prob x 1000), h ([T] entropy x 1000), kind (T digits, indices into KINDS),
    coef ([T] penalty coefficients; null when none is non-zero)
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from entropy_rl.jsonl import parse_json_object, read_rows

# the file names of entropy_rl.train (imported there with jax; tests check they agree)
SAMPLES_FILE, SUMMARY_FILE, CONFIG_FILE, METRICS_FILE = "samples.jsonl", "summary.json", "config.yaml", "metrics.jsonl"
TOKEN_KEYS = ("logp", "entropy", "flagged", "dropped", "penalised")

# A token's kind on the page. The method's `flag` metric names what its flagged tokens are:
# STAPO silences spurious tokens, Clip-Cov drops some, SENT / KL-Cov penalise some; 20-Entropy
# masks all but the top-entropy fraction, so there the kept ones are outlined.
KINDS = ("", "silenced", "penalised", "kept", "dropped", "masked")
RESPONSE_FIELDS = ("run", "step", "row", "reward", "correct", "answer", "reference", "advantage", "prompt",
                   "flagged", "text", "pieces", "special", "lp", "h", "kind", "coef")
FLAGGED_KIND = {"loss/spurious_fraction": "silenced", "loss/dropped_fraction": "dropped",
                "loss/penalised_fraction": "penalised", "loss/masked_fraction": "masked"}


@dataclasses.dataclass
class RunData:
    """One run directory read for the page; notes say what is missing or approximate."""

    label: str
    path: str
    summary: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


def read_run(path: str | os.PathLike, label: str) -> RunData:
    """RunData of RUN_DIR; FileNotFoundError when it is no run directory at all."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run directory")
    files = [path / name for name in (SUMMARY_FILE, CONFIG_FILE, METRICS_FILE, SAMPLES_FILE)]
    if not any(f.exists() for f in files):
        raise FileNotFoundError(f"{path}: not a run directory (none of {', '.join(f.name for f in files)})")
    run = RunData(label=label, path=str(path))
    summary, config, metrics, samples = files
    if summary.exists():
        run.summary = parse_json_object(summary.read_text(), 1, path=summary)
    else:
        run.notes.append(f"no {SUMMARY_FILE}: the run has not finished (before/after accuracy unknown)")
    if config.exists():
        run.config = yaml.safe_load(config.read_text())
    if metrics.exists():
        from entropy_rl.eval.plot import read_metrics

        run.metrics = read_metrics(metrics)
    else:
        run.notes.append(f"no {METRICS_FILE}: no curves")
    run.samples = _read_samples(samples, run.notes)
    return run


def _read_samples(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """The rows of samples.jsonl, checked; notes for a missing file, a torn line, an older format."""
    if not path.exists():
        notes.append(f"no {SAMPLES_FILE}: no token browser (logging.samples_per_step=0, or the run stopped "
                     "before its first step)")
        return []
    data = path.read_bytes()
    rows = read_rows(path)
    if sum(1 for line in data.splitlines() if line.strip()) > len(rows):  # read_rows left out a torn last line
        notes.append(f"{SAMPLES_FILE}: its last line is torn (the writer was killed mid-line) and was left out")
    for number, row in enumerate(rows, start=1):
        missing = [key for key in ("step", "response", *TOKEN_KEYS) if key not in row]
        if missing:
            raise ValueError(f"{path}:{number}: a sample row without {', '.join(missing)}")
        lengths = {key: len(row[key]) for key in TOKEN_KEYS}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{path}:{number}: per-token lists of different lengths {lengths}")
    old = sum(row.get("pieces") is None for row in rows)
    if old:
        notes.append(f"{SAMPLES_FILE}: {old} of {len(rows)} rows have no token pieces (written by an older "
                     "version, or a tokenizer whose pieces do not join to its text): their tokens are shown "
                     "as cells without text, under the response text")
    return rows


def token_kinds(row: dict[str, Any]) -> list[int]:
    """Each token's index into KINDS, from the row's flags and its method's flag metric."""
    flagged_kind = FLAGGED_KIND.get(row.get("flag") or "", "dropped")
    kinds = []
    for flagged, dropped, penalty in zip(row["flagged"], row["dropped"], row["penalised"]):
        if penalty:
            kind = "penalised"
        elif flagged:
            kind = flagged_kind
        elif flagged_kind == "masked":
            kind = "kept"
        else:
            kind = "dropped" if dropped else ""
        kinds.append(KINDS.index(kind))
    return kinds


def _display_pieces(row: dict[str, Any]) -> tuple[list[str] | None, list[int]]:
    """(pieces with special tokens by name, indices of the special tokens); (None, []) without pieces."""
    pieces = row.get("pieces")
    if pieces is None:
        return None, []
    special = {int(i): name for i, name in (row.get("special") or {}).items()}
    return [special.get(i, piece) for i, piece in enumerate(pieces)], sorted(special)


def finite(value: Any) -> Any:
    """value with NaN / inf floats as None, in nested dicts and lists (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def page_response(row: dict[str, Any], run_index: int, prompt_index: int) -> list[Any]:
    """The compact page form of one samples.jsonl row: RESPONSE_FIELDS in order (module docstring)."""
    pieces, special = _display_pieces(row)
    coef = row["penalised"] if pieces is not None and any(row["penalised"]) else None  # older rows: 0/1 flags
    return [run_index, row["step"], row.get("row"), finite(row.get("reward")), row.get("correct"), row.get("answer"),
            row.get("reference"), finite(row.get("advantage")), prompt_index, int(sum(row["flagged"])),
            None if pieces is not None else row["response"], pieces, special,
            [round(x * 1000) for x in row["logp"]], [round(x * 1000) for x in row["entropy"]],
            "".join(map(str, token_kinds(row))), coef]


def flagged_token_table(rows: list[dict[str, Any]], limit: int = 30) -> list[dict[str, Any]]:
    """The token strings the method flagged most often over `rows` (those with pieces):
    [{"piece", "flagged", "occurrences", "mean_p", "mean_entropy"}], most flagged first;
    mean_p / mean_entropy are over the flagged occurrences."""
    flagged, seen, p_sum, h_sum = defaultdict(int), defaultdict(int), defaultdict(float), defaultdict(float)
    for row in rows:
        pieces, _ = _display_pieces(row)
        if pieces is None:
            continue
        for piece, logp, entropy, flag in zip(pieces, row["logp"], row["entropy"], row["flagged"]):
            seen[piece] += 1
            if flag:
                flagged[piece] += 1
                p_sum[piece] += math.exp(logp)
                h_sum[piece] += entropy
    ranked = sorted(flagged, key=lambda piece: (-flagged[piece], piece))[:limit]
    return [{"piece": piece, "flagged": flagged[piece], "occurrences": seen[piece],
             "mean_p": p_sum[piece] / flagged[piece], "mean_entropy": h_sum[piece] / flagged[piece]}
            for piece in ranked]


def run_summary(run: RunData) -> dict[str, Any]:
    """The page's summary of a run: method, task, steps, accuracy before/after with 95% CIs."""
    config = run.config or {}
    data, algorithm = config.get("data") or {}, config.get("algorithm") or {}
    summary = run.summary or {}
    steps = [row["step"] for row in run.metrics if "step" in row]
    return {
        "label": run.label, "path": run.path,
        "method": summary.get("method") or algorithm.get("name"),
        "task": data.get("dataset"), "verifier": data.get("verifier"),
        "steps": summary.get("steps") or config.get("total_steps"), "logged_steps": max(steps, default=None),
        **{key: summary.get(key) for key in (
            "accuracy_before", "accuracy_before_ci", "accuracy_after", "accuracy_after_ci", "accuracy_gain",
            "accuracy_gain_ci", "heldout_problems", "heldout_samples_per_problem", "entropy_start",
            "entropy_end", "masked_fraction", "wall_clock_s")},
        "flag": next((row.get("flag") for row in run.samples if row.get("flag")), None),
        "notes": run.notes,
    }


def page_data(runs: list[RunData]) -> dict[str, Any]:
    """The JSON the page embeds: runs' summaries and flagged-token tables, prompts, responses, KINDS."""
    prompts: dict[str, int] = {}
    responses = []
    for index, run in enumerate(runs):
        for row in run.samples:
            prompt = prompts.setdefault(row.get("prompt", ""), len(prompts))
            responses.append(page_response(row, index, prompt))
    return {
        "runs": [finite(run_summary(run) | {"flagged_tokens": flagged_token_table(run.samples)}) for run in runs],
        "prompts": list(prompts), "fields": RESPONSE_FIELDS, "responses": responses, "kinds": KINDS,
    }
