"""Mechanism diagnostics during a run (``diagnostics.enabled=true``): logged like the loss, summarised in
metrics.json. The metric definitions live in :mod:`loralab.diagnostics`."""
from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig

from loralab.diagnostics.callback import DiagnosticsCallback
from loralab.distributed import is_main_process
from loralab.training.callbacks import StepLogCallback


def diagnostics_callback(cfg: DictConfig, step_log: StepLogCallback,
                         report_to: list[str]) -> DiagnosticsCallback | None:
    if not cfg.get("enabled"):
        return None

    def sink(summary: dict[str, Any]) -> None:
        if not is_main_process():  # one writer of steps.jsonl in a multi-process run
            return
        step_log.write(summary)
        if "wandb" in report_to:
            import wandb

            if wandb.run is not None:
                wandb.log({**{k: v for k, v in summary.items() if k != "step"}, "train/global_step": summary["step"]})

    return DiagnosticsCallback(interval=int(cfg.interval), max_layers=int(cfg.max_layers),
                               alignment=bool(cfg.get("alignment", True)), log_to_trainer=False, sink=sink)


def summarise(callback: DiagnosticsCallback | None) -> dict[str, Any] | None:
    """First, last and mean value of every layer-mean metric over the diagnostic steps."""
    if callback is None or not callback.records:
        return None
    keys = sorted({k for r in callback.records for k in r if k.startswith("diag/")})
    summary: dict[str, Any] = {"steps": [r["step"] for r in callback.records]}
    for key in keys:
        values = [r[key] for r in callback.records if key in r and not math.isnan(r[key])]
        name = key.removeprefix("diag/")
        summary[name] = ({"first": values[0], "last": values[-1], "mean": sum(values) / len(values)}
                         if values else None)
    return summary
