"""The inspect page's size, build time and load / filter times in headless chromium.

    python tools/bench/inspect_page.py RUN_DIR [--cap-mb 50 | --steps 200] [--tokens-per-response N]
                                      [--loads 3] [--out /tmp/inspect_bench]

Without --cap-mb the page is the run's own. With it, a copy of the run gets a samples.jsonl
synthesized to that size (logging.samples_max_mb's default is 50) by repeating the run's rows
with later step numbers; --steps does the same up to that many steps (a finished run of a
config whose run was cut short); --tokens-per-response joins consecutive rows into responses of about N
tokens (long reasoning responses). Printed: the page's size, `entropy-rl inspect`'s wall and
CPU time, and, over --loads fresh loads in chromium (through chromedriver): the time from
navigation start until the first page of responses is rendered (the page's own
performance.now() mark, i.e. parse of the embedded JSON + first render) and the times of
filter changes (`inspectPage.update`: only flagged, wrong answers, a step range, a search,
the last page), median over the loads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import time
from pathlib import Path

from entropy_rl.inspect import write_page

TOKEN_KEYS = ("logp", "entropy", "flagged", "dropped", "penalised", "tokens", "pieces")
FILTERS = {"only flagged": {"flagged": True}, "wrong answers": {"correct": "wrong"},
           "steps >= half": "STEP", "search 'the'": {"search": "the"}, "last page": "LAST"}


def joined_rows(rows: list[dict], tokens: int) -> list[dict]:
    """Consecutive rows concatenated into responses of about `tokens` tokens."""
    out, current = [], None
    for row in rows:
        if current is None:
            current = dict(row, special={}, **{key: list(row[key]) for key in TOKEN_KEYS})
        else:
            for key in TOKEN_KEYS:
                current[key] += row[key]
            current["response"] += row["response"]
        if len(current["logp"]) >= tokens:
            current["length"] = len(current["logp"])
            out.append(current)
            current = None
    return out


def synthesize(run_dir: Path, out_dir: Path, cap_mb: float | None, steps: int | None, tokens: int | None) -> Path:
    """A copy of run_dir whose samples.jsonl is repeated rows up to cap_mb MiB or `steps` steps."""
    size_name = f"{cap_mb:g}mb" if cap_mb else f"{steps}steps"
    copy = out_dir / (f"{run_dir.name}-{size_name}" + (f"-{tokens}tok" if tokens else ""))
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "*.html"))
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    if tokens:
        rows = joined_rows(rows * max(1, tokens // 8), tokens)
    last_step = max(row["step"] for row in rows)
    lines, size, repeat = [], 0, 0
    while size < (cap_mb or math.inf) * 2**20 and repeat * last_step < (steps or math.inf):
        for row in rows:
            step = row["step"] + repeat * last_step
            if steps and step > steps:
                break
            line = json.dumps(dict(row, step=step), ensure_ascii=False) + "\n"
            lines.append(line)
            size += len(line.encode())
        repeat += 1
    (copy / "samples.jsonl").write_text("".join(lines))
    return copy


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def browser_cpu_s(driver) -> float:
    """CPU seconds (user + sys) used so far by chromedriver's chromium processes (from /proc)."""
    parents, times = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parents[pid], times[pid] = int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    root = driver.service.process.pid
    tree, added = {root}, {root}
    while added:
        added = {pid for pid, parent in parents.items() if parent in added}
        tree |= added
    return sum(times[pid] for pid in tree - {root})


def measure_load(driver, page: Path, max_step: int) -> dict[str, float]:
    """One fresh load: ms until the first page is rendered, the browser's CPU ms for the load,
    and each filter change's ms."""
    driver.get("about:blank")
    cpu = browser_cpu_s(driver)
    driver.get(page.as_uri())
    timing = driver.execute_script("return window.inspectPage.timing")
    result = {"first page rendered (ms from navigation)": timing["readyAt"],
              "JSON parse + first render (ms)": timing["parseAndFirstPageMs"],
              "browser CPU for the load (ms, all processes)": 1000 * (browser_cpu_s(driver) - cpu)}
    for name, patch in FILTERS.items():
        driver.execute_script("window.inspectPage.update({flagged: false, correct: 'all', stepMin: null, search: ''})")
        if patch == "STEP":
            patch = {"stepMin": max_step // 2}
        elif patch == "LAST":
            patch = {"page": 10**9}
        result[f"filter: {name} (ms)"] = driver.execute_script("return window.inspectPage.update(arguments[0])", patch)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--cap-mb", type=float)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--tokens-per-response", type=int)
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("/tmp/inspect_bench"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    synthesized = args.cap_mb or args.steps
    run_dir = (synthesize(args.run_dir, args.out, args.cap_mb, args.steps, args.tokens_per_response) if synthesized
               else args.run_dir)
    samples = run_dir / "samples.jsonl"
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    page = args.out / f"{run_dir.name}.html"
    usage, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    write_page([run_dir], page)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(f"run {run_dir}: samples.jsonl {samples.stat().st_size / 2**20:.1f} MiB, {len(rows)} responses, "
          f"{sum(r['length'] for r in rows)} tokens")
    print(f"page {page}: {page.stat().st_size / 2**20:.2f} MiB; built in {time.perf_counter() - wall:.1f} s wall, "
          f"{after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime:.1f} s CPU")
    driver = browser()
    try:
        loads = [measure_load(driver, page, max(r["step"] for r in rows)) for _ in range(args.loads)]
    finally:
        driver.quit()
    for key in loads[0]:
        values = [load[key] for load in loads]
        print(f"  {key:<45} median {statistics.median(values):8.1f}   (all: {', '.join(f'{v:.0f}' for v in values)})")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
