"""Memory measures for the overhead benchmark, on CPU (where torch keeps no allocator statistics) and CUDA.

* ``accounted`` (both devices, deterministic): bytes of the distinct storages that a training step holds at its
  peak, counted rather than sampled: parameters + buffers + persistent scratch (``workspace``) + optimiser
  state + one gradient per trainable parameter + the tensors autograd saves for the backward pass (captured
  with ``saved_tensors_hooks``, each storage once, parameters and buffers excluded because they are already
  counted). It leaves out the transient workspace of single operations (a matmul's output before the next op
  frees its input, the softmax of the loss, ...), so it is a lower bound of the true peak; it is exact for
  what differs between LoRA and SDS-LoRA (bases, scratch, saved activations and autocast copies).
* ``cuda_peak`` (CUDA only): what the method's model, buffers and optimiser state occupy between steps plus
  ``torch.cuda.max_memory_allocated`` growth during one step — the analogue of the paper's peak memory with
  several methods' models resident in one process.
* ``rss`` (CPU, optional, separate processes): peak resident set size sampled during training steps minus the
  RSS before the model was built, in a fresh process per method with glibc's mmap threshold pinned low so that
  freed tensors go back to the OS. It includes everything (allocator slack, transient buffers, the Python
  objects) and is noisier than ``accounted``.
"""
from __future__ import annotations

import os
import resource
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch
from torch import nn


def _key(t: torch.Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


def unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and shared tensors counted once)."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes():
            seen[_key(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())


def optimizer_tensors(optimizer: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    if optimizer is None:
        return []
    inner = optimizer
    while hasattr(inner, "optimizer"):  # accelerate's wrapper
        inner = inner.optimizer
    out: list[torch.Tensor] = []
    for state in inner.state.values():
        out += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return out


def static_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, int]:
    """Parameters, buffers, workspace, optimiser state (after at least one step) and trainable parameters' grads."""
    params = list(model.parameters())
    return {
        "parameters": unique_bytes(params),
        "buffers": unique_bytes(model.buffers()),
        "workspace": unique_bytes(workspace_tensors(model)),
        "optimizer_state": unique_bytes(optimizer_tensors(optimizer)),
        "gradients": sum(p.numel() * p.element_size() for p in params if p.requires_grad),
    }


def workspace_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Persistent scratch that is neither parameter nor buffer (SDS-LoRA's shared fused-factor scratch): modules
    holding a ``scratch`` with a ``tensors()`` method; shared scratch is counted once (by storage)."""
    out: list[torch.Tensor] = []
    for module in model.modules():
        scratch = module.__dict__.get("scratch")
        if scratch is not None and callable(getattr(scratch, "tensors", None)):
            out += scratch.tensors()
    return out


class SavedTensorMeter:
    """Distinct storages that autograd holds for backward, minus the ``exclude`` storages (parameters, buffers).

    Counted when read (``bytes``), over the saved tensors still alive then: a graph branch that is dropped during
    the forward (e.g. DoRA's detached B·A) frees its saved tensors, and the allocator may hand their addresses to
    later tensors, so counting at pack time would be wrong both ways.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self.exclude = {_key(t) for t in exclude}
        self.saved: list[weakref.ref] = []

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        if _key(t) not in self.exclude:
            self.saved.append(weakref.ref(t))
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    @property
    def bytes(self) -> int:
        return unique_bytes(t for t in (ref() for ref in self.saved) if t is not None)

    @contextmanager
    def active(self) -> Iterator[SavedTensorMeter]:
        with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
            yield self


def accounted_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None, forward: Any) -> dict[str, int]:
    """``static_bytes`` plus the activations saved by one call of ``forward()`` (which returns the loss)."""
    meter = SavedTensorMeter(exclude=[*model.parameters(), *model.buffers()])
    with meter.active():
        loss = forward()
    saved = meter.bytes  # at the end of the forward, when the saved activations peak
    loss.backward()
    out = static_bytes(model, optimizer)
    out["saved_activations"] = saved
    out["total"] = sum(out.values())
    return out


def sds_extra_bytes(layers: Iterable[tuple[int, int, bool]], rank: int, fused_bytes: int,
                    autocast: bool) -> dict[str, int]:
    """Memory SDS-LoRA holds beyond LoRA at the step's peak, for adapted layers [(m, n, input needs grad), ...].

    + the fp32 bases Q_B (m×r) and Q_A (n×r) of every layer: the method's state, 4·r·(m+n) bytes per layer;
    + one fused-factor scratch per compute dtype, shared by all layers: 2r·max(m+n) numbers of ``fused_bytes``;
    − under autocast, the bf16 copies of B (and of A where the input needs a gradient) that LoRA's linear layers
      save for backward, 2 bytes per number; the fused path casts into the scratch and saves no copy.
    Saved activations are otherwise LoRA's: x and a tokens×r intermediate (SDS keeps h_B = x·Q_A, LoRA A·x).
    Trainable parameters, gradients and optimiser state are LoRA's.
    """
    layers = list(layers)
    bases = sum(4 * rank * (m + n) for m, n, _ in layers)
    scratch = 2 * rank * max((m + n for m, n, _ in layers), default=0) * fused_bytes
    casts = sum(2 * rank * (m + (n if grad else 0)) for m, n, grad in layers) if autocast else 0
    return {"bases": bases, "scratch": scratch, "lora_autocast_copies": -casts, "total": bases + scratch - casts}


# ----------------------------------------------------------------------------------------------- CUDA
def step_peak_increment(step: Any, device: torch.device) -> int | None:
    """Allocator-measured peak growth over one step: ``cuda_step_increment`` on CUDA, None on devices whose
    allocator keeps no statistics (CPU). The benchmark's CUDA-peak columns are built from this value."""
    return cuda_step_increment(step, device) if device.type == "cuda" else None


def cuda_step_increment(step: Any, device: torch.device) -> int:
    """Growth of ``torch.cuda.max_memory_allocated`` over one call of ``step()`` (grads set to None before)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


# ------------------------------------------------------------------------------------------------ RSS
def current_rss() -> int:
    """Resident set size of this process now, in bytes (Linux /proc; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RSSSampler:
    """Samples ``current_rss`` on a thread (heavy ops release the GIL) and keeps the maximum."""

    def __init__(self, interval_s: float = 0.0005) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss())
            time.sleep(self.interval_s)

    def __enter__(self) -> RSSSampler:
        self.peak = current_rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss())
