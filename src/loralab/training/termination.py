"""Stop cleanly on SIGTERM: what a scheduler sends before it kills a job (SLURM preemption or time limit,
``docker stop``, ``kill``).

While :func:`graceful_termination` is active, the first SIGTERM only raises a flag. During training,
:class:`StopOnTermination` sees it at the end of the current optimiser step, asks the Trainer to write a
checkpoint there and to stop; the runner then raises :class:`Terminated`, the run directory says
``interrupted`` with the completed steps, and running the same command again resumes from that checkpoint
(nothing since the last scheduled checkpoint is lost). Outside training (loading, evaluation) there is no
step to finish, so the signal raises :class:`Terminated` at once. A second SIGTERM always raises at once.

:class:`Terminated` derives from ``KeyboardInterrupt``, so everything that handles Ctrl-C (the run's status
record, a sweep stopping instead of going on to the next cell) handles it the same way. ``run.py`` exits with
status 143 (128 + SIGTERM), the convention schedulers read as "terminated".
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from types import FrameType
from typing import Any, Iterator

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

log = logging.getLogger("loralab")

EXIT_STATUS = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM; the run stopped (after a checkpoint when it was training)."""


class TerminationFlag:
    """Raised by the signal handler, read by :class:`StopOnTermination` and the runner."""

    def __init__(self) -> None:
        self.requested = False
        self.deferring = False   # True while a training step can absorb the signal (checkpoint, then stop)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        already = self.requested
        self.requested = True
        if self.deferring and not already:
            log.warning("SIGTERM: saving a checkpoint after the current step, then stopping "
                        "(send SIGTERM again to stop at once)")
            return
        raise Terminated(f"received signal {signal.Signals(signum).name}")


class StopOnTermination(TrainerCallback):
    """Turns a pending SIGTERM into "save a checkpoint now and stop" at the end of the optimiser step."""

    def __init__(self, flag: TerminationFlag) -> None:
        self.flag = flag

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        self.flag.deferring = True

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> TrainerControl:
        if self.flag.requested:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        self.flag.deferring = False


@contextlib.contextmanager
def graceful_termination() -> Iterator[TerminationFlag]:
    """Install the SIGTERM handler for the block (main thread only: Python delivers signals there; elsewhere,
    e.g. a run started from a worker thread, the flag is returned but never raised)."""
    flag = TerminationFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGTERM, flag.handle)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)
