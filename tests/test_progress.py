"""Progress a person can watch: bars with rate and time left on a terminal, plain lines (and no bar) elsewhere.

Each command runs in a fresh process, once on a pseudo-terminal (stdout and stderr on the terminal, as when a person
types it) and once with pipes (a log file, CI).
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

from conftest import REPO, run_cli

# "40%|████      | 4/10 [00:02<00:03,  1.70 answers/s" (or "2.10s/ answers" when slower than one a second)
BAR = re.compile(r"\d+%\|[^|]*\| *\d+/\d+ \[\d\d:\d\d<\d\d:\d\d, +(?:[\d.]+ \w+/s|[\d.]+s/ \w+)")
TERMINAL_ONLY = ("\r", "%|", "█")  # what a bar writes


def run_in_terminal(*args: str, timeout: float = 600) -> str:
    """Run a command with a 120-column pseudo-terminal as its stdin, stdout and stderr; return all it wrote."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a bar needs a width
    proc = subprocess.Popen(list(args), stdin=follower, stdout=follower, stderr=follower, cwd=REPO, env=os.environ)
    os.close(follower)
    out = bytearray()
    try:
        while select.select([leader], [], [], timeout)[0]:
            try:
                chunk = os.read(leader, 1 << 16)
            except OSError:  # the command exited and closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(leader)
        proc.kill() if proc.poll() is None else None
    text = out.decode(errors="replace")
    assert proc.wait() == 0, f"{' '.join(args)} exited {proc.returncode}\n{text[-6000:]}"
    return text


def _evaluate(tiny: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "vlmtune.cli", "evaluate", f"checkpoint={tiny / 'vlm' / 'llava'}",
            f"run_dir={run_dir}", "logger=none", "eval.batch_size=4"]


def test_evaluation_shows_a_bar_on_a_terminal_and_plain_lines_in_a_log(tiny, shapes, tmp_path):
    on_terminal = run_in_terminal(*_evaluate(tiny, tmp_path / "terminal"))
    bars = [line for line in on_terminal.split("\r") if line.startswith("generating answers:")]
    assert bars and all(BAR.search(line) for line in bars[1:]), on_terminal[-3000:]
    assert bars[-1].split("|")[2].strip().startswith("11/11"), bars[-1]

    logged = run_cli(*_evaluate(tiny, tmp_path / "log"))
    assert re.search(r"generating answers: 11/11 answers in [\d.]+ s \([\d.]+ answers/s\)", logged), logged[-3000:]
    assert not any(mark in logged for mark in TERMINAL_ONLY), logged[-3000:]


def test_training_shows_a_bar_with_the_running_loss_on_a_terminal_and_loss_lines_in_a_log(tiny, shapes, tmp_path):
    # The recipes' shared trainer layer (vlmtune.train.trainer) installs the report: a real `vlmtune pretrain`.
    def pretrain(run_dir: Path) -> list[str]:
        return [sys.executable, "-m", "vlmtune.cli", "pretrain", f"run_dir={run_dir}", "logger=none",
                "optim.max_steps=4", "optim.batch_size=4", "logging_steps=1"]

    on_terminal = run_in_terminal(*pretrain(tmp_path / "terminal"))
    bars = [line for line in on_terminal.split("\r") if line.startswith("training:")]
    assert any(BAR.search(line) and "loss=" in line for line in bars), on_terminal[-3000:]
    assert re.search(r"4/4 \[\d\d:\d\d<00:00", bars[-1]), bars[-1]

    logged = run_cli(*pretrain(tmp_path / "log"))
    assert len(re.findall(r"\{'loss': '[\d.]+'", logged)) == 4, logged[-3000:]  # the Trainer's lines
    assert not any(mark in logged for mark in TERMINAL_ONLY), logged[-3000:]


def test_plain_lines_come_every_interval_with_rate_and_time_left(monkeypatch, caplog):
    import logging

    from vlmtune import progress

    clock = iter([0.0, 10.0, 31.0, 40.0, 70.0, 71.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    with caplog.at_level(logging.INFO, logger="vlmtune"):
        assert list(progress.track(range(4), "counting", "items")) == [0, 1, 2, 3]
    assert [r.getMessage() for r in caplog.records] == [
        "counting: 2/4 items, 0.0645 items/s, about 31 s left",  # at 31 s: 2 done, none logged at 10 s
        "counting: 4/4 items in 71.0 s (0.0563 items/s)",  # the 4th update at 70 s is the last: the end line says it
    ]

