"""The training loop is transformers' Trainer: resume, gradient accumulation, bf16, gradient checkpointing,
FSDP/DeepSpeed (via ``accelerate launch``) all come from it. This module assembles its arguments and
callbacks, and covers the two places where a resumed run would otherwise differ from an uninterrupted one:
which checkpoint to trust (``checkpoints.py``) and resuming from the final one (``train_or_restore``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import Trainer, TrainerState, TrainingArguments
from transformers.trainer_utils import TrainOutput

from loralab.methods.base import Method
from loralab.training.callbacks import NonFiniteGuard, StepLogCallback
from loralab.training.checkpoint_seal import CheckpointSeal
from loralab.training.termination import StopOnTermination, TerminationFlag
from loralab.training.checkpoints import TRAINER_STATE


def training_arguments(trainer_cfg: DictConfig, output_dir: Path, seed: int, report_to: list[str],
                       progress: bool) -> TrainingArguments:
    options = OmegaConf.to_container(trainer_cfg, resolve=True)
    assert isinstance(options, dict)
    # The Trainer's NaN filter reads the loss on the host every step and logs a running mean in place of a
    # non-finite loss; NonFiniteGuard already stops such a run, so the filter only costs a sync per step.
    options.setdefault("logging_nan_inf_filter", False)
    return TrainingArguments(
        output_dir=str(output_dir),
        seed=seed,
        data_seed=seed,
        report_to=report_to,
        disable_tqdm=not progress,
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        save_strategy="steps",
        **options,
    )


def build_trainer(
    model: torch.nn.Module,
    method: Method,
    args: TrainingArguments,
    train_dataset: Sequence[dict[str, Any]],
    collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    step_log: Path | StepLogCallback,
    extra_callbacks: Sequence[Any] = (),
    termination: TerminationFlag | None = None,
) -> Trainer:
    """The Trainer of a run. ``termination``: stop with a checkpoint on SIGTERM (see training/termination.py)."""
    if not isinstance(step_log, StepLogCallback):
        step_log = StepLogCallback(step_log)
    optimizer = method.build_optimizer(model, lr=args.learning_rate, weight_decay=args.weight_decay)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=collator,
        optimizers=(optimizer, None),
        # order matters at step end: a SIGTERM's save request must be set before NonFiniteGuard looks at the
        # flags, so that a checkpoint is never written from a step the guard has not checked
        callbacks=[step_log, *([StopOnTermination(termination)] if termination else []), NonFiniteGuard(),
                   *method.callbacks(), *extra_callbacks],
    )
    trainer.add_callback(CheckpointSeal(trainer))  # last: it seals each checkpoint once the rest is written
    return trainer


def train_or_restore(trainer: Trainer, resume_from: str | None) -> TrainOutput:
    """``trainer.train(resume_from_checkpoint=resume_from)``, unless that checkpoint already ends the training.

    A run killed or failed after its last optimiser step (while saving the adapter or evaluating) resumes
    from its final checkpoint. transformers 5 takes one more optimiser step before its stop check when
    ``max_steps`` is set, so ``train`` would end one step past the uninterrupted run. Such a checkpoint is
    loaded as it is, with its Trainer state (log history included), and nothing is trained;
    ``training_loss`` is then None because this process trained no step.
    """
    if resume_from:
        state = TrainerState.load_from_json(str(Path(resume_from) / TRAINER_STATE))
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            trainer._load_from_checkpoint(resume_from)  # the Trainer's own loader: same path as a resume
            trainer.state = state
            return TrainOutput(state.global_step, None, {})  # type: ignore[arg-type]
    return trainer.train(resume_from_checkpoint=resume_from)


def loss_summary(log_history: Sequence[dict[str, Any]]) -> dict[str, float | int | None]:
    """The training loss of the whole run, from the Trainer's log history.

    ``TrainOutput.training_loss`` averages only the steps the *current process* ran, so after a resume it
    differs from an uninterrupted run. The log history is restored from the checkpoint, so the last logged
    loss and the step-weighted mean over all logged windows are the same with and without interruption.
    Steps after the last logging step are not in the history and so not in the mean.
    """
    by_step = {int(e["step"]): float(e["loss"]) for e in log_history if "loss" in e and "step" in e}
    total, previous = 0.0, 0
    for step in sorted(by_step):
        total += by_step[step] * (step - previous)  # a logged loss is the mean over its logging window
        previous = step
    last = max(by_step, default=None)
    return {
        "final_loss": by_step[last] if last is not None else None,
        "final_loss_step": last,
        "mean_loss": total / previous if previous else None,
    }
