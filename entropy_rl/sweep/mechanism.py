"""The papers' mechanism figures from the runs' own tokens (RUN_DIR/samples.jsonl).

Per response token of the kept sample rows (`entropy_rl.train.samples`): p = exp(logp),
entropy H, STAPO's gradient magnitude grad_sq = ||d log p / dz||^2 = 1 - 2p + sum_j p_j^2
(STAPO Theorem 3.1), the covariance cov the method selects on (SENT: over its low-entropy set),
the advantage of the response and the method's flag (STAPO's spurious tokens, SENT / KL-Cov's
penalised tokens, ...: the row's `flagged`). Figures, one row of panels per method:

  mechanism_gradient.png     grad_sq against p and against H, flagged tokens in red, with the
                             bounds (1 - p)^2 <= grad_sq <= 2 (1 - p)^2 (from p^2 <= sum_j p_j^2
                             <= p^2 + (1 - p)^2)
  mechanism_flagged.png      histograms of log10 p and H (densities) and the advantage sign of the
                             flagged tokens against the others
  mechanism_covariance.png   H against cov, flagged tokens in red (SENT's selection: low H,
                             extreme cov)

Rows written before `grad_sq` / `cov` existed still count for the flagged-token table and the
histograms; the figures that need the fields say "not recorded" for such a method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from entropy_rl.eval import plot  # noqa: F401  (selects the Agg backend)
from entropy_rl.jsonl import read_rows
from entropy_rl.train.samples import SAMPLES_FILE

FIGURES = ("mechanism_gradient", "mechanism_flagged", "mechanism_covariance")
# points drawn per panel at most (a fixed random subset of the others; every flagged token)
MAX_POINTS = 20000
FLAG_COLOR, OTHER_COLOR = "tab:red", "tab:blue"


@dataclass
class Tokens:
    """One method's recorded tokens, flat [N] arrays over all its runs' sample rows.

    grad_sq / cov are nan on tokens of rows that lack them; `rows` and `rows_without` count
    the sample rows and those of them without grad_sq or cov.
    """

    p: np.ndarray
    entropy: np.ndarray
    advantage: np.ndarray
    flagged: np.ndarray
    grad_sq: np.ndarray
    cov: np.ndarray
    flag: str | None
    rows: int
    rows_without: int

    @property
    def recorded(self) -> np.ndarray:
        """Tokens whose row recorded grad_sq and cov."""
        return ~np.isnan(self.grad_sq) & ~np.isnan(self.cov)


PER_TOKEN = ("logp", "entropy", "flagged")
RECORDED = ("grad_sq", "cov")  # absent from rows written before they existed


def _checked(row: Mapping[str, Any], path: Path, number: int) -> int:
    """The row's token count; ValueError naming the file and row when a per-token list is
    missing or of another length."""
    missing = [k for k in (*PER_TOKEN, "advantage") if k not in row]
    if missing:
        raise ValueError(f"{path}, row {number}: no {', '.join(missing)} (not a samples.jsonl row)")
    length = len(row["logp"])
    wrong = [k for k in (*PER_TOKEN, *RECORDED) if k in row and len(row[k]) != length]
    if wrong:
        raise ValueError(f"{path}, row {number}: {', '.join(wrong)} not of the {length} tokens of its logp")
    return length


def read_tokens(run_dirs: Sequence[Path]) -> Tokens | None:
    """The tokens of the runs' samples.jsonl files (None when none of them has a row)."""
    columns: dict[str, list] = {k: [] for k in ("logp", "entropy", "advantage", "flagged", "grad_sq", "cov")}
    flags, rows, rows_without = set(), 0, 0
    for run_dir in run_dirs:
        path = Path(run_dir) / SAMPLES_FILE
        for number, row in enumerate(read_rows(path), start=1):
            length = _checked(row, path, number)
            rows += 1
            rows_without += not all(k in row for k in RECORDED)
            flags.add(row.get("flag"))
            for key in PER_TOKEN:
                columns[key] += row[key]
            columns["advantage"] += [row["advantage"]] * length
            for key in RECORDED:
                columns[key] += row[key] if key in row else [math.nan] * length
    if not rows:
        return None
    arrays = {k: np.asarray(v, np.float64) for k, v in columns.items()}
    return Tokens(p=np.exp(arrays.pop("logp")), flagged=arrays.pop("flagged") != 0,
                  flag=", ".join(sorted(f for f in flags if f)) or None, rows=rows, rows_without=rows_without,
                  **arrays)


def _subset(keep: np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices: every `keep` token and a fixed random MAX_POINTS subset of the others."""
    others = np.flatnonzero(~keep)
    if len(others) > MAX_POINTS:
        others = np.sort(np.random.default_rng(seed).choice(others, MAX_POINTS, replace=False))
    return np.concatenate([others, np.flatnonzero(keep)])


def _scatter(ax, x: np.ndarray, y: np.ndarray, flagged: np.ndarray, flag: str | None) -> None:
    """Others in blue, flagged tokens in red on top."""
    picked = _subset(flagged)
    others, marked = picked[~flagged[picked]], picked[flagged[picked]]
    ax.scatter(x[others], y[others], s=4, alpha=0.3, color=OTHER_COLOR, label=f"other ({(~flagged).sum()})",
               rasterized=True)
    ax.scatter(x[marked], y[marked], s=10, alpha=0.8, color=FLAG_COLOR,
               label=f"flagged: {flag or 'no flag'} ({flagged.sum()})", rasterized=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _not_recorded(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"{what} not recorded\n(samples.jsonl rows written before the field existed)",
            ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax.set_axis_off()


def _gradient_panels(axes, method: str, t: Tokens) -> None:
    known = t.recorded
    if not known.any():
        for ax in axes:
            _not_recorded(ax, f"{method}: grad_sq")
        return
    _scatter(axes[0], t.p[known], t.grad_sq[known], t.flagged[known], t.flag)
    grid = np.linspace(0.0, 1.0, 101)
    axes[0].plot(grid, (1 - grid) ** 2, "k--", lw=0.8, label="(1-p)^2, 2(1-p)^2")
    axes[0].plot(grid, 2 * (1 - grid) ** 2, "k--", lw=0.8)
    axes[0].legend(fontsize=7)
    axes[0].set(xlabel="p (token probability)", ylabel="||d log p / dz||^2", title=f"{method}: gradient vs p")
    _scatter(axes[1], t.entropy[known], t.grad_sq[known], t.flagged[known], t.flag)
    axes[1].set(xlabel="H (nats)", ylabel="||d log p / dz||^2", title=f"{method}: gradient vs entropy")


def _histogram(ax, values: np.ndarray, flagged: np.ndarray, bins: np.ndarray, label: str) -> None:
    for mask, color, name in ((~flagged, OTHER_COLOR, "other"), (flagged, FLAG_COLOR, "flagged")):
        if mask.any():
            ax.hist(values[mask], bins=bins, density=True, alpha=0.5, color=color, label=f"{name} ({mask.sum()})")
    ax.set(xlabel=label, ylabel="density")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _flagged_panels(axes, method: str, t: Tokens) -> None:
    log_p = np.log10(np.maximum(t.p, 1e-12))  # STAPO's tau_p (0.002) is far below a linear bin
    _histogram(axes[0], log_p, t.flagged, np.linspace(min(float(log_p.min()), -3.0), 0, 41), "log10 p")
    axes[0].set_title(f"{method}: probability ({t.flag or 'no flag'})", fontsize=10)
    _histogram(axes[1], t.entropy, t.flagged, np.linspace(0, max(float(t.entropy.max()), 1e-3), 41), "H (nats)")
    axes[1].set_title(f"{method}: entropy", fontsize=10)
    signs = ("A < 0", "A = 0", "A > 0")
    for offset, (mask, color, name) in enumerate(((~t.flagged, OTHER_COLOR, "other"), (t.flagged, FLAG_COLOR, "flagged"))):
        sign = np.sign(t.advantage[mask])
        shares = [np.mean(sign == s) if mask.any() else 0.0 for s in (-1, 0, 1)]
        axes[2].bar(np.arange(3) + 0.4 * offset - 0.2, shares, width=0.4, color=color, alpha=0.7,
                    label=f"{name} ({mask.sum()})")
    axes[2].set_xticks(range(3), signs)
    axes[2].set(ylabel="fraction of tokens", title=f"{method}: advantage sign")
    axes[2].legend(fontsize=7)


def _covariance_panel(ax, method: str, t: Tokens) -> None:
    known = t.recorded
    if not known.any():
        _not_recorded(ax, f"{method}: cov")
        return
    _scatter(ax, t.entropy[known], t.cov[known], t.flagged[known], t.flag)
    ax.set(xlabel="H (nats)", ylabel="cov (centred logp x advantage)", title=f"{method}: selection by H and cov")


def figures(tokens: Mapping[str, Tokens]) -> dict[str, Any]:
    """{name: Figure} of FIGURES (module docstring); one row per method with recorded tokens."""
    methods = list(tokens)
    if not methods:
        return {}
    layout = {"mechanism_gradient": (2, _gradient_panels), "mechanism_flagged": (3, _flagged_panels),
              "mechanism_covariance": (1, lambda axes, m, t: _covariance_panel(axes[0], m, t))}
    made = {}
    for name, (columns, draw) in layout.items():
        figure, axes = plt.subplots(len(methods), columns, figsize=(4.6 * columns, 3.4 * len(methods)),
                                    squeeze=False)
        for row, method in zip(axes, methods):
            draw(row, method, tokens[method])
        figure.tight_layout()
        made[name] = figure
    return made


def token_summary(t: Tokens) -> dict[str, float]:
    """Fraction of flagged tokens, and the mean p, H, grad_sq of the flagged tokens and of the
    others (grad_sq over the tokens that recorded it; nan where a set is empty)."""
    def mean(values: np.ndarray, mask: np.ndarray) -> float:
        mask = mask & ~np.isnan(values)
        return float(values[mask].mean()) if mask.any() else math.nan

    out = {"tokens": int(len(t.p)), "flagged_fraction": float(t.flagged.mean()) if len(t.p) else math.nan}
    for name, mask in (("flagged", t.flagged), ("other", ~t.flagged)):
        out |= {f"{name}_p": mean(t.p, mask), f"{name}_entropy": mean(t.entropy, mask),
                f"{name}_grad_sq": mean(t.grad_sq, mask)}
    return out


def _f(x: float, digits: int = 4) -> str:
    return "n/a" if math.isnan(x) else f"{x:.{digits}g}"


def markdown(tokens: Mapping[str, Tokens | None], figure_names: Sequence[str]) -> str:
    """The report's mechanism section: the flagged-vs-other table, notes, the figures."""
    lines = ["## Mechanism (the runs' own tokens, samples.jsonl)", "",
             "Over every recorded response token of the kept sample rows, all steps and seeds: the fraction the "
             "method flagged (masked / penalised; its `flagged` field) and the mean probability p, entropy H (nats) "
             "and gradient magnitude ||d log p / dz||^2 = 1 - 2p + sum_j p_j^2 (STAPO Theorem 3.1) of the flagged "
             "tokens and of the others. See docs/mechanism.md.", "",
             "| method | flag | tokens | flagged (%) | p flagged | p other | H flagged | H other "
             "| grad_sq flagged | grad_sq other |", "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for method, t in tokens.items():
        if t is None:
            notes.append(f"- {method}: no samples.jsonl rows (logging.samples_per_step = 0?): not recorded.")
            continue
        s = token_summary(t)
        lines.append(f"| {method} | {t.flag or 'none'} | {s['tokens']} | {_f(100 * s['flagged_fraction'])} "
                     f"| {_f(s['flagged_p'])} | {_f(s['other_p'])} | {_f(s['flagged_entropy'])} "
                     f"| {_f(s['other_entropy'])} | {_f(s['flagged_grad_sq'])} | {_f(s['other_grad_sq'])} |")
        if t.rows_without:
            notes.append(f"- {method}: grad_sq / cov not recorded in {t.rows_without} of {t.rows} sample rows "
                         "(written before samples.jsonl had them); they are left out of those columns and figures.")
    lines += ["", *notes, *([""] if notes else []), *(f"![{name}]({name}.png)" for name in figure_names), ""]
    return "\n".join(lines)


def mechanism_report(groups: Mapping[str, Sequence[Path]], out_dir: Path) -> tuple[str, dict[str, Any]]:
    """Write the FIGURES of {method: run directories} to out_dir; (markdown section, JSON of the
    table {method: token_summary or None})."""
    tokens = {method: read_tokens(runs) for method, runs in groups.items()}
    made = figures({m: t for m, t in tokens.items() if t is not None})
    for name, figure in made.items():
        figure.savefig(out_dir / f"{name}.png", dpi=90)
        plt.close(figure)
    return markdown(tokens, list(made)), {m: t and token_summary(t) for m, t in tokens.items()}
