"""Multi-process runs (``torchrun``, ``accelerate launch``): one run directory, training on every rank,
everything that writes or evaluates on the main process only.

The launchers start one process per device and tell each its place through ``WORLD_SIZE`` / ``RANK``. The
Trainer shards the batches and averages the gradients; around it the runner must make sure that exactly
one process clears, creates and records the run directory, saves the weights and evaluates (the harness
returns results on rank 0 only, and two writers of ``status.json`` race). :func:`on_main` does that: the
main process runs the step, the outcome (value or exception) is broadcast, and every rank returns or raises
the same thing, so a failure on the main process stops all ranks with the same error instead of leaving
them to hang in the next collective.

The ranks wait for the main process on a gloo group of their own with a long timeout: evaluating a paper
suite can take longer than the default group's timeout (``trainer.ddp_timeout``, 30 min), and an NCCL
collective waiting that long would be killed by its watchdog.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

#: How long the other ranks wait for the main process to save, evaluate and record a run.
MAIN_PROCESS_WAIT = timedelta(hours=48)

_wait_group: Any = None


def world_size() -> int:
    """Number of processes of this run: the initialised group's, else the launcher's ``WORLD_SIZE`` (1 alone)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def global_train_batch(trainer_cfg: Any, processes: int | None = None) -> int:
    """Examples per optimiser step over all processes: per-device batch × accumulation × processes."""
    per_device = int(trainer_cfg.get("per_device_train_batch_size") or 8)   # TrainingArguments' default
    accumulation = int(trainer_cfg.get("gradient_accumulation_steps") or 1)
    return per_device * accumulation * (world_size() if processes is None else processes)


def setup(trainer_cfg: Any) -> None:
    """Join the launcher's process group before anything touches the run directory; alone, do nothing.

    The group is created the way ``TrainingArguments`` creates it (accelerate's ``PartialState`` with the
    same device, backend and timeout), so the Trainer later finds and uses it.
    """
    if world_size() <= 1 or dist.is_initialized():
        return
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available(), backend=trainer_cfg.get("ddp_backend"),
                 timeout=timedelta(seconds=int(trainer_cfg.get("ddp_timeout") or 1800)))


def _group() -> Any:
    global _wait_group
    if _wait_group is None:
        _wait_group = dist.new_group(backend="gloo", timeout=MAIN_PROCESS_WAIT)
    return _wait_group


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on the main process; its value, or its exception, on every rank.

    Every rank must call it at the same point (it is a collective when there are several processes).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return fn(*args, **kwargs)
    outcome: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            outcome[0] = ("value", fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 — re-raised here and on every other rank
            outcome[0] = ("error", _portable(err))
            dist.broadcast_object_list(outcome, src=0, group=_group())
            raise
    dist.broadcast_object_list(outcome, src=0, group=_group())
    kind, payload = outcome[0]
    if kind == "error":
        raise payload
    return payload


def _portable(err: BaseException) -> BaseException:
    """The exception itself when it survives pickling (the other ranks re-raise it), else a RuntimeError."""
    import pickle

    try:
        return pickle.loads(pickle.dumps(err))
    except Exception:  # noqa: BLE001 — any unpicklable exception is described instead
        return RuntimeError(f"the main process failed: {type(err).__name__}: {err}")
