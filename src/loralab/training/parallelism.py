"""Which multi-process launches a method runs correctly under; checked before anything is loaded or written.

* **DDP** (``torchrun --nproc_per_node N run.py ...``, ``accelerate launch --multi_gpu``): every rank holds
  the whole model, gradients are averaged before the optimiser step, so every method's optimiser and callbacks
  see what one process at the same global batch sees (measured on CPU, 2 gloo ranks: tests/test_distributed.py).
  A method can still name a setting DDP breaks (:meth:`loralab.methods.base.Method.multi_process_issue`).
  SLURM tasks started without a launcher (``srun`` of several tasks, ``tasks_per_node`` > 1) are refused: no
  rank would know the others, and each would train alone into the same run directory.
* **FSDP** and **DeepSpeed** are refused for every method. The runner saves and evaluates the whole trained
  model on the main process, which FSDP and ZeRO-3 keep sharded; ZeRO-1/2 hand the optimiser flat shards of
  the parameters, which breaks the optimisers that work on whole factor matrices, and rewrite parameters from
  their own fp32 copies, which undoes SDS-LoRA's in-place reparameterisation. Neither can run on the CPUs this
  project is tested on (accelerate enables FSDP only on GPUs), so neither is offered unmeasured for the rest.
"""
from __future__ import annotations

import os
from typing import Any

from loralab.distributed import world_size
from loralab.errors import ConfigError
from loralab.methods.base import Method

DDP_HINT = ("use DDP instead: torchrun --nproc_per_node N run.py ... (or accelerate launch --multi_gpu), which "
            "runs every method as one process at the same global batch would")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def sharding(trainer_cfg: Any) -> str | None:
    """``"FSDP"`` / ``"DeepSpeed"`` when the trainer options or ``accelerate launch``'s environment ask for it."""
    if trainer_cfg.get("fsdp") or trainer_cfg.get("fsdp_config") or _flag("ACCELERATE_USE_FSDP"):
        return "FSDP"
    if trainer_cfg.get("deepspeed") or _flag("ACCELERATE_USE_DEEPSPEED"):
        return "DeepSpeed"
    return None


def check_launch(method: Method, trainer_cfg: Any, processes: int | None = None) -> None:
    """One line naming the launch a method cannot run under and the launch that works, before anything runs."""
    sharded = sharding(trainer_cfg)
    if sharded is not None:
        why = ("the main process saves and evaluates the whole trained model, which FSDP keeps sharded"
               if sharded == "FSDP" else
               "ZeRO hands the optimiser flat shards of the parameters (stage 3: of the model too), while the "
               "main process saves and evaluates the whole model")
        extra = (f"; {method.name} also needs it because {method.needs_whole_factors}"
                 if method.needs_whole_factors else "")
        raise ConfigError(f"{sharded} is not supported by loralab's runner ({why}{extra}); {DDP_HINT}")
    slurm_tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS") or 1)
    if slurm_tasks > 1 and "WORLD_SIZE" not in os.environ:
        raise ConfigError(
            f"SLURM started {slurm_tasks} tasks of this run and no launcher told them their ranks (WORLD_SIZE is "
            "unset): each would train alone into the same run directory; use hydra.launcher.tasks_per_node=1 "
            "(one GPU per cell) or torchrun --nproc_per_node N run.py ... inside the job"
        )
    processes = world_size() if processes is None else processes
    if processes > 1 and (issue := method.multi_process_issue()):
        raise ConfigError(f"{method.name} on {processes} processes: {issue}")
