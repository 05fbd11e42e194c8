"""`entropy-rl inspect`: a self-contained HTML page of run directories (summary, curves,
flagged tokens, a token browser over samples.jsonl). Reads files only; no jax.

    from entropy_rl.inspect import Section, write_page
    write_page(["runs/stapo", "runs/grpo"], "report.html",
               extra_sections=[Section("Comparison", "<table>...</table>")])
"""

from entropy_rl.inspect.page import Section, figure_svg, main, render_page, write_page
from entropy_rl.inspect.runs import RunData, read_run

__all__ = ["RunData", "Section", "figure_svg", "main", "read_run", "render_page", "write_page"]
