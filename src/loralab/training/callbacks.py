"""Trainer callbacks the runner always installs."""
from __future__ import annotations

import json
import math
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
    """Stops training at the first step whose gradients are NaN/inf, before the optimiser applies them.

    Raising here means the step is never applied and no checkpoint is written after it, so the last saved
    checkpoint is the last good one.
    """

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                              model: torch.nn.Module | None = None, **kwargs: Any) -> None:
        if model is None:
            return
        grads = [p.grad.detach() for p in model.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return
        total = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]).sum()
        if not math.isfinite(total.item()):
            # global_step counts completed optimiser steps, so the failing one is the next
            last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been saved yet"
            raise NonFiniteLossError(
                f"non-finite loss or gradient at step {state.global_step + 1} (gradient norm {total.item()}); "
                f"training stopped before applying it and {kept}. Lower trainer.learning_rate or check the data."
            )
