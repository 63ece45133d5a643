"""Preemption: SIGTERM (a scheduler's notice) or SIGUSR1 (SLURM's `--signal`) saves a step checkpoint and stops.

Before training starts there is nothing to save, so the process exits at once (code 143); the run directory holds
only what was written atomically, and the same command starts the run again. During training the signal only sets a
flag: at the end of every optimizer step the processes agree on it with one all-reduce, so whichever process was
signalled, all of them save the same step, stop, and exit with code 143; `resume=auto` continues from that checkpoint.
After training (final save, evaluation) the flag is left alone: finishing is the quickest way to a complete result.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from transformers import TrainerCallback

from vlmtune.processes import any_process

log = logging.getLogger("vlmtune")

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_CODE = 128 + signal.SIGTERM  # 143, what a process killed by SIGTERM reports: schedulers read it as preempted
# Logged once the handlers are in place (scripts that send the signal can wait for it).
READY = "preemption: SIGTERM or SIGUSR1 stops this run cleanly (during training, after saving a step checkpoint)"


class Preempted(SystemExit):
    """A preemption signal arrived: training stopped after writing `checkpoint` (None: before training started)."""

    def __init__(self, checkpoint: Path | None) -> None:
        super().__init__(EXIT_CODE)
        self.checkpoint = checkpoint


class Preemption(TrainerCallback):
    """The signal handlers (installed by `install`) and the callback that turns their flag into one agreed save."""

    def __init__(self) -> None:
        self.signal: str | None = None  # the signal that arrived, if any
        self.phase = "before"  # before | training | after (training)

    def install(self) -> Preemption:
        for number in SIGNALS:
            signal.signal(number, self._handle)
        log.info(READY)
        return self

    def _handle(self, number, frame) -> None:
        self.signal = signal.Signals(number).name
        if self.phase == "before":
            log.warning("%s before training started: nothing to save, stopping; the same command starts again",
                        self.signal)
            raise Preempted(None)
        log.warning("%s: the current step finishes, then a checkpoint is saved and training stops", self.signal)

    def on_train_begin(self, args, state, control, **kwargs):
        self.phase = "training"

    def on_step_end(self, args, state, control, **kwargs):
        if any_process(self.signal is not None, args.device):
            self.signal = self.signal or "a preemption signal in another process"
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.phase = "after"  # neither exit nor save (see the module's docstring)

    @property
    def requested(self) -> bool:
        return self.signal is not None
