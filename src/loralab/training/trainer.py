"""The training loop is transformers' Trainer: resume, gradient accumulation, bf16, gradient checkpointing,
FSDP/DeepSpeed (via ``accelerate launch``) all come from it. This module only assembles its arguments."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from loralab.methods.base import Method
from loralab.training.callbacks import NonFiniteGuard, StepLogCallback


def training_arguments(trainer_cfg: DictConfig, output_dir: Path, seed: int, report_to: list[str],
                       progress: bool) -> TrainingArguments:
    options = OmegaConf.to_container(trainer_cfg, resolve=True)
    assert isinstance(options, dict)
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
    step_log: Path,
    extra_callbacks: Sequence[Any] = (),
) -> Trainer:
    optimizer = method.build_optimizer(model, lr=args.learning_rate, weight_decay=args.weight_decay)
    return Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=collator,
        optimizers=(optimizer, None),
        callbacks=[StepLogCallback(step_log), NonFiniteGuard(), *method.callbacks(), *extra_callbacks],
    )


def last_checkpoint(output_dir: Path) -> str | None:
    return get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None
