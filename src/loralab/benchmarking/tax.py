"""The framework's tax: a loralab Trainer step (the runner's ``build_trainer`` and callbacks) against the bare
training loop of :mod:`loralab.benchmarking.trainees`, on the same prepared model, alternating step by step.

Each Trainer step runs one bare step from a callback (``on_step_begin``), so the two alternate; the Trainer step
is the interval between consecutive ``on_step_begin`` events minus the bare step inside it, and each Trainer step
is paired with the bare step right before it (same load on a shared machine).
"""
from __future__ import annotations

import copy
import gc
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loralab.benchmarking.config import BenchConfig
from loralab.benchmarking.timing import summarise, timed
from loralab.benchmarking.trainees import build_method, own_steps_for, prepare, sync, trainer_arguments


def framework_tax(name: str, base: nn.Module, cfg: BenchConfig, batch: dict[str, torch.Tensor],
                  workdir: Path) -> dict[str, Any]:
    """Trainer step (runner's ``build_trainer``, runner's callbacks) vs the bare loop, alternating step by step."""
    from transformers import TrainerCallback, TrainerState

    from loralab.training.callbacks import NonFiniteGuard
    from loralab.training.trainer import build_trainer

    device = torch.device(cfg.device)
    warm = max(cfg.warmup, 1) + own_steps_for(name, cfg)
    max_steps = warm + cfg.tax_steps + 1
    args = trainer_arguments(cfg, workdir / f"tax-{name}", max_steps)
    bare = prepare(name, base, cfg, batch, args, max_steps)
    trainer_method = build_method(name, cfg)
    model = trainer_method.prepare(copy.deepcopy(base), list(cfg.targets), [], lambda: iter([dict(batch)]))
    cpu_batch = {k: v.cpu() for k, v in batch.items()}
    examples = [{k: v[i] for k, v in cpu_batch.items()} for i in range(cfg.shape.batch)] * max_steps

    def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    times: dict[str, list[float]] = {"trainer": [], "bare": []}

    class Alternate(TrainerCallback):
        last: float | None = None

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            sync(device)
            now = time.perf_counter()
            if self.last is not None:
                times["trainer"].append(now - self.last)
            times["bare"].append(timed(bare.driven_step, device))  # noqa: F821 (deleted at the end, after its last use)
            self.last = time.perf_counter()

    trainer = build_trainer(model, trainer_method, args, examples, collate, workdir / f"tax-{name}" / "steps.jsonl",
                            extra_callbacks=[Alternate()])
    trainer.train()
    # trainer[j] is the Trainer step right after bare[j]: pair them (same load on a shared machine)
    trainer_s, bare_s = times["trainer"][warm:], times["bare"][warm:len(times["trainer"])]
    paired = summarise([t / b for t, b in zip(trainer_s, bare_s)])
    result = {
        "trainer_step_s": summarise(trainer_s),
        "bare_step_s": summarise(bare_s),
        "paired_ratio": paired,
        "paired_difference_s": summarise([t - b for t, b in zip(trainer_s, bare_s)]),
        "tax": paired["median"] - 1.0 if paired["median"] else None,
        "callbacks": [type(cb).__name__ for cb in trainer.callback_handler.callbacks],
    }
    # what the runner's own per-step callback costs on its hot path (a step that is not logged, evaluated or
    # saved: no host read), on the bare model with gradients present, as before the optimiser step
    guard, hot = NonFiniteGuard(), TrainerState(max_steps=10**6, global_step=2)
    guard_times = []
    for _ in range(max(cfg.tax_steps // 2, 2)):
        bare.loss().backward()
        guard_times.append(timed(lambda: guard.on_pre_optimizer_step(args, hot, bare.driver.control,  # noqa: F821
                                                                     model=bare.model), device))  # noqa: F821
        bare.optimizer.zero_grad(set_to_none=True)
    result["nonfinite_guard_s"] = summarise(guard_times)
    del trainer, model, bare
    gc.collect()
    return result
