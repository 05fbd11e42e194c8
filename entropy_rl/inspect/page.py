"""`entropy-rl inspect RUN_DIR [RUN_DIR ...] [-o report.html]`: one self-contained HTML page of runs.

The page (`write_page`) holds each run's summary, its curves (inline SVG, runs overlaid), the
most often flagged token strings and a token browser over samples.jsonl: every response as
its tokens, coloured by entropy or probability, the method's flagged tokens outlined, with
filters and paging in the page's own script. Everything is inline (CSS, script, figures,
data as JSON; a Content-Security-Policy of default-src 'none'), so the file opens from disk
and makes no network request. Its template and script are package assets
(entropy_rl/assets/inspect/).
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import io
import json
import os
import re
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from entropy_rl.inspect.runs import RunData, page_data, read_run

CURVE_FAMILIES = ("reward", "entropy", "token_fractions", "eval")  # entropy_rl.eval.plot's families, in order
ASSETS = "assets/inspect"


@dataclasses.dataclass(frozen=True)
class Section:
    """An extra part of the page (e.g. `entropy-rl compare`'s tables): a title and trusted HTML
    (escape user text with html.escape; figures with `figure_svg`)."""

    title: str
    html: str


def figure_svg(figure) -> str:
    """A matplotlib Figure as an inline <svg> element (text kept as text)."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def curve_figures(runs: Sequence[RunData]) -> list[str]:
    """Inline SVGs of the runs' accuracy, entropy (and percentiles), flagged-fraction and eval curves."""
    from entropy_rl.eval import plot

    def is_curve(key: str) -> bool:  # accuracy, entropy and its percentiles, flagged fractions, evaluations
        return key in ("accuracy", "reward/mean", *plot.NOT_METRICS) or plot.family_of(key)[0] in CURVE_FAMILIES[1:]

    def curve_keys(row: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in row.items() if is_curve(k)}

    rows = {run.label: [curve_keys(row) for row in run.metrics] for run in runs if run.metrics}
    figures = plot.make_figures(rows) if rows else {}
    svgs = [figure_svg(figures[family]) for family in CURVE_FAMILIES if family in figures]
    for figure in figures.values():
        plot.plt.close(figure)
    return svgs


def _number(value: Any, percent: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" if percent else f"{value:.4g}"


def _interval(value: Any, ci: Any) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else _number(value, True)


def summary_html(runs: list[dict[str, Any]]) -> str:
    """The runs' summary table and their notes (what is missing)."""
    head = ("run", "method", "task", "steps", "accuracy before [95% CI]", "after [95% CI]", "gain [95% CI]",
            "entropy start → end", "flag metric (mean)")
    rows = []
    for run in runs:
        task = os.path.basename(str(run["task"] or "–")) + (f" ({run['verifier']})" if run["verifier"] else "")
        gain = run["accuracy_gain"]
        cells = (run["label"], run["method"] or "–", task, run["steps"] or run["logged_steps"] or "–",
                 _interval(run["accuracy_before"], run["accuracy_before_ci"]),
                 _interval(run["accuracy_after"], run["accuracy_after_ci"]),
                 "–" if gain is None else f"{100 * gain:+.1f} pts [{100 * run['accuracy_gain_ci'][0]:+.1f}, "
                                          f"{100 * run['accuracy_gain_ci'][1]:+.1f}]",
                 f"{_number(run['entropy_start'])} → {_number(run['entropy_end'])}",
                 f"{run['flag'] or '–'} ({_number(run['masked_fraction'])})")
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    notes = [f"<li><b>{html.escape(run['label'])}</b>: {html.escape(note)}</li>" for run in runs for note in run["notes"]]
    table = ("<table class='summary'><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
             + "".join(rows) + "</tbody></table>")
    return table + (f"<ul class='notes' id='notes'>{''.join(notes)}</ul>" if notes else "")


def visible(piece: str) -> str:
    """A token's text with its whitespace shown (· space, ↵ newline, → tab), HTML-escaped."""
    return html.escape(piece.replace(" ", "·").replace("\n", "↵").replace("\t", "→")) or "<i>(part of a character)</i>"


def flagged_tables_html(runs: list[dict[str, Any]]) -> str:
    """Per run: the token strings its method flagged most often, with their mean probability and entropy."""
    parts = []
    for run in runs:
        if not run["flagged_tokens"]:
            parts.append(f"<p>{html.escape(run['label'])}: no flagged tokens in its samples.</p>")
            continue
        rows = "".join(
            f"<tr><td class='piece'>{visible(t['piece'])}</td><td>{t['flagged']}</td><td>{t['occurrences']}</td>"
            f"<td>{t['flagged'] / t['occurrences']:.2f}</td><td>{t['mean_p']:.3f}</td><td>{t['mean_entropy']:.3f}</td></tr>"
            for t in run["flagged_tokens"])
        parts.append(f"<h3>{html.escape(run['label'])} <small>({html.escape(run['flag'] or 'flagged')})</small></h3>"
                     "<table class='flagged'><thead><tr><th>token</th><th>flagged</th><th>occurrences</th>"
                     "<th>flagged share</th><th>mean p</th><th>mean entropy</th></tr></thead>"
                     f"<tbody>{rows}</tbody></table>")
    return "".join(parts)


def _asset(name: str) -> str:
    return resources.files("entropy_rl").joinpath(f"{ASSETS}/{name}").read_text(encoding="utf-8")


def _embedded_json(data: Any) -> str:
    """JSON safe inside a <script> element ("</" written as "<\\/", a JSON escape)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def render_page(runs: Sequence[RunData], *, title: str | None = None,
                extra_sections: Sequence[Section] = ()) -> str:
    """The page's HTML text for already read runs."""
    data = page_data(list(runs))
    sections = "".join(f"<section><h2>{html.escape(s.title)}</h2>{s.html}</section>" for s in extra_sections)
    figures = curve_figures(runs)
    replacements = {
        "TITLE": html.escape(title or "entropy-rl inspect: " + ", ".join(run.label for run in runs)),
        "CSS": _asset("page.css"), "SCRIPT": _asset("page.js"), "DATA": _embedded_json(data),
        "SUMMARY": summary_html(data["runs"]),
        "CURVES": "".join(f"<figure>{svg}</figure>" for svg in figures) or "<p>No metrics.jsonl: no curves.</p>",
        "FLAGGED": flagged_tables_html(data["runs"]), "SECTIONS": sections,
    }
    return re.sub(r"\{\{([A-Z]+)\}\}", lambda match: replacements[match.group(1)], _asset("page.html"))


def write_page(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *, labels: Sequence[str] | None = None,
               title: str | None = None, extra_sections: Sequence[Section] = ()) -> Path:
    """Write the inspect page of `run_dirs` (runs overlaid) to `out`; returns its path.

    labels: one per run (default: the directories' names, `entropy_rl.eval.plot.run_labels`).
    extra_sections: `Section`s appended after the token browser.
    Raises FileNotFoundError for a path that is no run directory, ValueError for an unreadable file.
    """
    from entropy_rl.eval.plot import run_labels

    labels = list(labels) if labels else run_labels(run_dirs)
    if len(labels) != len(run_dirs):
        raise ValueError(f"got {len(labels)} labels for {len(run_dirs)} runs")
    runs = [read_run(path, label) for path, label in zip(run_dirs, labels)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_page(runs, title=title, extra_sections=extra_sections), encoding="utf-8")
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="entropy-rl inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories (overlaid on one page)")
    parser.add_argument("-o", "--output", help="the HTML file (default: <first run>/inspect.html)")
    parser.add_argument("--labels", help="comma-separated run labels (default: folder names)")
    args = parser.parse_args(argv)
    output = args.output or os.path.join(args.runs[0], "inspect.html")
    try:
        path = write_page(args.runs, output, labels=args.labels.split(",") if args.labels else None)
    except (FileNotFoundError, ValueError) as err:
        print(f"entropy-rl inspect: {err}", file=sys.stderr)
        return 1
    print(f"{path} ({path.stat().st_size / 2**20:.2f} MiB)")
    return 0
