"""What the runner adds to every Trainer checkpoint, after the Trainer has written its own files.

1. **The open logging window.** The Trainer sums the loss on the device between logging steps and logs the
   window's mean at the next one. A checkpoint that falls between two logging steps (SIGTERM's checkpoint, or a
   ``save_steps`` that is not a multiple of ``logging_steps``) does not hold that partial sum, so a run resumed
   from it logs a mean over the steps since the resume only, and its ``final_loss`` / ``mean_loss`` differ from
   an uninterrupted run's. The sum (exact: a float32 read back as a float) and the last logged step are saved
   as ``loss_window.json`` and put back when training resumes, so the resumed run logs exactly what the
   uninterrupted one logs.
2. **The checksum manifest** (``SHA256SUMS``, :mod:`loralab.checksums`), written last: a checkpoint without
   one was not completely saved, and one whose files no longer match it has rotted on disk; either way
   :func:`loralab.training.checkpoints.checkpoint_problem` refuses to resume from it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from loralab.checksums import write_manifest
from loralab.io import atomic_write_json, read_json

log = logging.getLogger("loralab")


def loss_window_file(args: TrainingArguments) -> str:
    """One file per process (each sums its own losses), named like the Trainer's ``rng_state[_i].pth``."""
    return "loss_window.json" if args.world_size <= 1 else f"loss_window_{args.process_index}.json"


class CheckpointSeal(TrainerCallback):
    """Saves the open logging window and the checksum manifest with each checkpoint; restores the window on
    resume. Needs the Trainer itself: the window lives in its ``_tr_loss`` / ``_globalstep_last_logged``."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        atomic_write_json(checkpoint / loss_window_file(args), {
            "step": state.global_step,
            "loss_sum": float(self.trainer._tr_loss),  # float32 → float is exact, and so is JSON's repr
            "last_logged_step": int(self.trainer._globalstep_last_logged),
        })
        if args.world_size > 1:  # every process's files must be on disk before they are hashed
            self.trainer.accelerator.wait_for_everyone()
        if state.is_world_process_zero:
            write_manifest(checkpoint)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        if state.global_step == 0:  # a fresh start: nothing to restore
            return
        file = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / loss_window_file(args)
        if not file.is_file():
            log.warning("%s is missing: the losses logged next cover only the steps after this resume", file)
            return
        window = read_json(file)
        if window.get("step") != state.global_step:
            raise ValueError(f"{file} belongs to step {window.get('step')}, not {state.global_step}")
        current = self.trainer._tr_loss
        self.trainer._tr_loss = torch.tensor(window["loss_sum"], dtype=current.dtype, device=current.device)
        self.trainer._globalstep_last_logged = int(window["last_logged_step"])

