"""Progress a person can watch: a live bar on a terminal, plain periodic lines in a log file or CI.

On a terminal (stderr is a TTY) a loop shows tqdm's bar (count, rate, time left) and training shows transformers' own
bar (`ProgressCallback`) with the running loss beside it; log records are routed through tqdm meanwhile, so they do
not break the bar. Without a terminal there is no bar: a loop logs a plain line every `PLAIN_EVERY_S` seconds and
one when it ends, and training prints the Trainer's loss lines (`PrinterCallback`), as before. Only the main process
reports progress.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from vlmtune.processes import is_main_process

log = logging.getLogger("vlmtune")

PLAIN_EVERY_S = 30.0  # seconds between two plain progress lines (logs, CI)

T = TypeVar("T")


def on_terminal() -> bool:
    """Whether a person watches this process's stderr (the bars are drawn there)."""
    return sys.stderr.isatty()


class PlainProgress:
    """tqdm's counting interface (`update`, `close`, a context manager) written as log lines: one every
    `PLAIN_EVERY_S` seconds and a last one with the total time and rate."""

    def __init__(self, total: int | None, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= PLAIN_EVERY_S and (self.total is None or self.n < self.total):
            self.last = now
            rate = self.n / (now - self.start)
            left = f", about {(self.total - self.n) / rate:.0f} s left" if self.total and rate > 0 else ""
            log.info("%s: %s %s, %.3g %s/s%s", self.desc, self._count(), self.unit, rate, self.unit, left)

    def close(self) -> None:
        seconds = time.monotonic() - self.start
        rate = f" ({self.n / seconds:.3g} {self.unit}/s)" if seconds > 0 else ""
        log.info("%s: %s %s in %.1f s%s", self.desc, self._count(), self.unit, seconds, rate)

    def _count(self) -> str:
        return f"{self.n}/{self.total}" if self.total is not None else str(self.n)

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Silent:
    """Progress of a process other than the main one: nothing to show."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


@contextlib.contextmanager
def progress(total: int | None, desc: str, unit: str, *, leave: bool | None = True) -> Iterator[Any]:
    """Count work done with `.update(n)`: a bar on a terminal, plain log lines otherwise, nothing on other processes.

    `leave=None` keeps the finished bar only when no other bar is showing (tqdm's rule): a loop that may run inside
    another one's bar (generation inside quantization or training) then clears itself when done.
    """
    if not is_main_process():
        yield _Silent()
    elif on_terminal():
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm(), tqdm(total=total, desc=desc, unit=f" {unit}", leave=leave, dynamic_ncols=True,
                                           file=sys.stderr) as bar:
            yield bar
    else:
        with PlainProgress(total, desc, unit) as plain:
            yield plain


def track(items: Iterable[T], desc: str, unit: str, *, total: int | None = None,
          leave: bool | None = True) -> Iterator[T]:
    """`items`, one at a time, counted by `progress` (`total` defaults to `len(items)`)."""
    total = total if total is not None else len(items) if hasattr(items, "__len__") else None
    with progress(total, desc, unit, leave=leave) as bar:
        for item in items:
            yield item
            bar.update(1)


def training_progress():
    """The Trainer callback that reports training: transformers' bar with the running loss on a terminal, its plain
    loss lines (`PrinterCallback`) otherwise. `watch_training` installs it."""
    from transformers import PrinterCallback, ProgressCallback

    class TrainingBar(ProgressCallback):
        """transformers' training bar (steps, rate, time left) with the last logged loss beside it."""

        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            if self.training_bar is not None:
                from tqdm.contrib.logging import logging_redirect_tqdm

                self.training_bar.set_description("training")
                self.training_bar.unit = " step"
                self.redirect = contextlib.ExitStack()
                self.redirect.enter_context(logging_redirect_tqdm())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.training_bar is not None and logs and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{logs['loss']:.4g}", refresh=False)
            super().on_log(args, state, control, logs=logs, **kwargs)

        def on_train_end(self, args, state, control, **kwargs):
            if self.training_bar is not None:
                self.redirect.close()
            super().on_train_end(args, state, control, **kwargs)

    return TrainingBar() if on_terminal() else PrinterCallback()


def watch_training(trainer) -> None:
    """Replace the Trainer's own progress report (a bar or loss lines, per `disable_tqdm`) by `training_progress()`."""
    from transformers import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(training_progress())
