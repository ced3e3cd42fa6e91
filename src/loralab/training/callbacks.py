"""Trainer callbacks the runner always installs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from loralab.errors import NonFiniteLossError


class StepLogCallback(TrainerCallback):
    """Appends every Trainer log event (loss, lr, grad norm, ...) as one JSON line to ``steps.jsonl``.

    A resumed run appends after the entries of the interrupted one; each line carries its step, so readers
    keep the last entry per step.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._tail_checked = False

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs and state.is_world_process_zero:
            self.write({"step": state.global_step, **logs})

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (also used for records that are not Trainer log events, e.g. diagnostics)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._tail_checked:
            self._tail_checked = True
            drop_partial_last_line(self.path)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=float) + "\n")


def drop_partial_last_line(path: Path) -> None:
    """Cut a line a killed process left half-written, so appending after it keeps every line valid JSON."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        data = handle.read()
        if data.endswith(b"\n"):
            return
        handle.truncate(data.rfind(b"\n") + 1)  # no newline at all: the whole file was one partial line


class NonFiniteGuard(TrainerCallback):
    """Stops training at the first step whose gradients are NaN/inf, before anything after it is saved.

    Sync-free on the hot path: each step's gradient norm (one fused ``_foreach_norm`` pass) only updates a
    device-side record of the first non-finite step. The record is read on the host — one sync — only where the
    Trainer syncs anyway: before the optimiser step of a step that will be logged, evaluated or checkpointed, of
    the first and of the last step (so those steps are never applied), and as a safety net at step/epoch/train
    end whenever the Trainer is about to log, evaluate, save or stop. A non-finite step between two checks is
    applied in memory, but the run still stops, naming that first bad step, before any checkpoint or the final
    adapter is written after it; so the last saved checkpoint is the last good one.
    """

    def __init__(self) -> None:
        self._first_step: torch.Tensor | None = None  # step number of the first non-finite step (0: none yet)
        self._first_norm: torch.Tensor | None = None  # its gradient norm
        self._pending = False  # steps recorded since the last host check

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                              model: torch.nn.Module | None = None, **kwargs: Any) -> None:
        if model is None:
            return
        grads = [p.grad.detach() for p in model.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return
        step = state.global_step + 1  # global_step counts completed optimiser steps: this is the next one
        self.record(grads, step)
        if self._sync_point(args, state, step):
            self.check(args, state, applied=False)

    def record(self, grads: list[torch.Tensor], step: int) -> None:
        """Fold this step's gradient norm into the device-side record; no host sync."""
        with torch.no_grad():
            # the sum of per-tensor norms is finite iff every gradient is (as before: same test, fused kernel)
            total = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32)).sum()
            if self._first_step is None or self._first_step.device != total.device:
                self._first_step = torch.zeros((), dtype=torch.long, device=total.device)
                self._first_norm = torch.zeros((), dtype=torch.float32, device=total.device)
            new = torch.logical_and(~torch.isfinite(total), self._first_step == 0)
            self._first_step.masked_fill_(new, step)
            self._first_norm.copy_(torch.where(new, total, self._first_norm))
        self._pending = True

    @staticmethod
    def _sync_point(args: TrainingArguments, state: TrainerState, step: int) -> bool:
        """Whether the Trainer will log, evaluate or save after ``step`` (DefaultFlowCallback's rules), or it is
        the first or the last step."""
        def every(strategy: Any, interval: Any) -> bool:
            return strategy == "steps" and bool(interval) and interval > 0 and step % interval == 0

        return (step == 1 or (bool(state.max_steps) and step >= state.max_steps)
                or every(args.logging_strategy, state.logging_steps) or every(args.save_strategy, state.save_steps)
                or every(args.eval_strategy, state.eval_steps))

    def check(self, args: TrainingArguments, state: TrainerState, applied: bool) -> None:
        """Read the record (one host sync) and raise if a step was non-finite."""
        if not self._pending or self._first_step is None:
            return
        self._pending = False
        first = int(self._first_step)
        if first == 0:
            return
        last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been saved yet"
        when = "after it, without saving anything" if applied or first <= state.global_step else "before applying it"
        raise NonFiniteLossError(
            f"non-finite loss or gradient at step {first} (gradient norm {float(self._first_norm)}); "
            f"training stopped {when}, and {kept}. Lower trainer.learning_rate or check the data."
        )

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        # runs after DefaultFlowCallback has set the flags: nothing is logged or saved from a bad state
        if control.should_log or control.should_save or control.should_evaluate or control.should_training_stop:
            self.check(args, state, applied=True)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        self.check(args, state, applied=True)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        self.check(args, state, applied=True)
