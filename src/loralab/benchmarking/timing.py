"""Timing: interleaved rounds of every timer (the methods' steps, SDS-LoRA's refresh), medians, FLOP counting.

The timers take turns, one call each per round, and the order rotates every round, so slow drifts of a shared
machine hit all of them alike. A call is timed with ``time.perf_counter`` around it, with a device sync before
and after on CUDA.
"""
from __future__ import annotations

import gc
import statistics
import time
from typing import Any, Callable

import torch

from loralab.benchmarking.trainees import Trainee, sync


def summarise(samples: list[float]) -> dict[str, Any]:
    """Median, quartiles and minimum of ``samples`` (which are kept)."""
    if not samples:
        return {"n": 0, "median": None}
    qs = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {"n": len(samples), "median": statistics.median(samples), "p25": qs[0], "p75": qs[2],
            "min": min(samples), "samples": samples}


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, its device work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleave(timers: dict[str, Callable[[], Any]], rounds: int, device: torch.device,
               progress: Callable[[int, dict[str, list[float]]], None] | None = None) -> dict[str, list[float]]:
    """``rounds`` rounds of one call per timer, the order rotated by one every round; the samples per timer."""
    samples: dict[str, list[float]] = {k: [] for k in timers}
    names = list(timers)
    gc.collect()
    for rnd in range(rounds):
        k = rnd % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(timed(timers[name], device))
        if progress is not None:
            progress(rnd, samples)
    return samples


def sds_refresh_timer(trainee: Trainee) -> tuple[Callable[[], None], Callable[[], None], float]:
    """(refresh, no-op callback) closures calling ``SDSCallback.on_step_end`` at a due / not-due step, and the rate."""
    from transformers import TrainerControl, TrainerState

    from loralab.methods.sds_lora import SDSCallback, refresh_due, refresh_steps

    cb = next(c for c in trainee.driver.callbacks if isinstance(c, SDSCallback))
    warm, main = cb.warmup_steps, trainee.cfg.refresh_main_steps
    total = warm + main
    due = next(warm + t for t in range(1, main + 1) if refresh_due(t, main, cb.refresh, cb.k, cb.interval))
    idle = next((warm + t for t in range(1, main + 1) if not refresh_due(t, main, cb.refresh, cb.k, cb.interval)),
                None)
    rate = len(refresh_steps(total, warm, cb.refresh, cb.k, cb.interval)) / main

    def at(step: int | None) -> Callable[[], None]:
        def call() -> None:
            if step is None:
                return
            state = TrainerState(max_steps=total, global_step=step)
            cb.on_step_end(trainee.driver.args, state, TrainerControl(), model=trainee.model,
                           optimizer=trainee.optimizer)
        return call

    return at(due), at(idle), rate


def implemented_flops(trainee: Trainee) -> int:
    """Matrix FLOPs one step issues (forward, backward, optimiser), per ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        trainee.step()
    return int(counter.get_total_flops())
