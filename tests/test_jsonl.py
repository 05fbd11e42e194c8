"""entropy_rl.jsonl: torn tails are skipped and repaired, and a rewrite killed midway leaves the
old file whole (a real kill: the writer process exceeds RLIMIT_FSIZE and gets SIGXFSZ)."""

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from entropy_rl import jsonl
from entropy_rl.train import metrics

ROWS = [{"step": i, "loss": 0.5 * i, "text": "é" * 20} for i in range(30)]


def _write(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def test_read_skips_a_torn_last_line_and_append_cuts_it_off(tmp_path):
    path = tmp_path / "a" / "rows.jsonl"
    assert jsonl.read_rows(path) == []
    jsonl.append_rows(path, ROWS[:2])
    with path.open("ab") as f:  # killed inside a multi-byte character of the third row
        f.write(json.dumps(ROWS[2], ensure_ascii=False).encode()[:-9])
    assert jsonl.read_rows(path) == ROWS[:2]
    jsonl.append_rows(path, ROWS[2:4])
    assert jsonl.read_rows(path) == ROWS[:4]


def test_a_complete_last_row_without_newline_is_kept(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(ROWS[0]))
    jsonl.append_rows(path, ROWS[1:2])
    assert jsonl.read_rows(path) == ROWS[:2]


@pytest.mark.parametrize("content, expected", [
    (b'{"a": 1}\n{oops\n{"a": 2}\n', "rows.jsonl:2: not a JSON row"),
    (b'{"a": 1}\n[1, 2]\n{"a": 2}\n', "rows.jsonl:2: expected a JSON object, got list"),
    (b'{"a": 1}\n\xff\xfe\n{"a": 2}\n', "rows.jsonl:2: not UTF-8 text"),
])
def test_a_bad_middle_line_names_file_and_line(tmp_path, content, expected):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=expected):
        jsonl.read_rows(path)


def test_rewrite_failing_midway_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "rows.jsonl"
    _write(path, ROWS)
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jsonl.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        jsonl.rewrite_rows(path, ROWS[:5])
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]  # no temporary file left
    monkeypatch.undo()
    jsonl.rewrite_rows(path, ROWS[:5])
    assert jsonl.read_rows(path) == ROWS[:5]


def test_a_kill_during_the_metrics_resume_rewrite_keeps_every_row(tmp_path):
    """Issue 20 item 5: a logger resumed at step 20 rewrites metrics.jsonl without the later rows;
    its process is killed (SIGXFSZ) after writing 100 bytes. The old file must stay whole."""
    path = tmp_path / metrics.METRICS_FILE
    _write(path, ROWS)
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import resource, signal
        from entropy_rl.config import LoggingConfig
        from entropy_rl.train.metrics import MetricsLogger
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; the default kills
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))
        MetricsLogger({str(tmp_path)!r}, LoggingConfig(tensorboard=False, progress_bar=False), total_steps=30,
                      start_step=20)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == -signal.SIGXFSZ, result.stderr.decode()
    assert path.read_bytes() == before


def test_metrics_resume_drops_later_rows_and_a_failed_rewrite_keeps_them(tmp_path, monkeypatch):
    path = tmp_path / metrics.METRICS_FILE
    _write(path, ROWS)
    before = path.read_bytes()
    monkeypatch.setattr(jsonl.os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))  # killed
    with pytest.raises(KeyboardInterrupt):
        metrics._drop_rows_after(str(path), 20)
    assert path.read_bytes() == before
    monkeypatch.undo()
    metrics._drop_rows_after(str(path), 20)  # the rerun completes it
    assert metrics.read_metrics(tmp_path) == ROWS[:21]
