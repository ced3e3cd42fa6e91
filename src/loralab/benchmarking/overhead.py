"""Training-step overhead of the methods on one Llama-shaped model, measured side by side in one process.

What is measured (``run_benchmark``; each part lives in its own module):

1. **Step time per method** (:mod:`.trainees` builds the methods and their bare training step, :mod:`.timing`
   interleaves them): after each method's own warm-up (SDS-LoRA: plain-LoRA steps and the transition, driven
   through its callbacks), the methods take turns, one step each, for ``steps`` rounds, the order rotating
   every round; medians are reported, and per-round ratios to LoRA.
2. **SDS-LoRA's refresh and transition**, timed on their own through ``SDSCallback.on_step_end`` (what the
   Trainer runs), interleaved with the steps; the refresh is amortised by its schedule's rate (the share of
   steps followed by a refresh, ≈0.457 for the phased schedule with k = 5, from ``refresh_steps``). The refresh
   kernels are also compared on the model's own factors (:mod:`.refresh`).
3. **FLOPs**: the FLOP-model lower bound (:mod:`.flops`) and the matrix FLOPs the implementation actually issues
   (``torch.utils.flop_counter.FlopCounterMode`` over one step).
4. **Memory** (:mod:`.memory`): ``accounted`` on every device, the allocator's peak where the device keeps one
   (CUDA), ``rss`` in one fresh process per method on CPU (:mod:`.rss`).
5. **Framework tax** (:mod:`.tax`): the runner's Trainer step against the bare loop, alternating.

Targets (reported, not asserted; :mod:`.report`): SDS/LoRA step-time ratio ≤ 1 + 1.5 × the FLOP model's
overhead; memory overhead ≤ 0.5 %; framework tax ≤ 3 %; amortised refresh ≤ 0.5 % of a step.
"""
from __future__ import annotations

import gc
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from loralab.benchmarking import memory as mem
from loralab.benchmarking.config import (LLAMA3_8B, PAPER_LORA_PEAK_BYTES, REFERENCE, SUBJECT, BenchConfig,
                                         paper_table6_ratios)
from loralab.benchmarking.flops import adapted_layers, periodic_flops, step_flops, supports
from loralab.benchmarking.refresh import compare_refresh_kernels
from loralab.benchmarking.report import add_ratios, evaluate_targets, machine
from loralab.benchmarking.rss import rss_probe
from loralab.benchmarking.tax import framework_tax
from loralab.benchmarking.timing import implemented_flops, interleave, sds_refresh_timer, summarise, timed
from loralab.benchmarking.trainees import (
    Trainee,
    build_base_model,
    build_method,
    make_batch,
    method_names,
    own_warmup_steps,
    prepare,
    trainer_arguments,
)


def _warm_up(trainees: dict[str, Trainee], cfg: BenchConfig, device: torch.device,
             log: Callable[[str], None]) -> dict[str, Any]:
    """Each method's own phase (SDS: plain-LoRA steps, then the transition, timed), then ``cfg.warmup`` steps."""
    sds_extra: dict[str, Any] = {}
    for name, tr in trainees.items():
        for i in range(own_warmup_steps(tr)):
            if i == own_warmup_steps(tr) - 1 and name == SUBJECT:
                # the last warm-up step ends with the transition: time it separately (one-off cost)
                kw = dict(model=tr.model, optimizer=tr.optimizer)
                tr.driver.begin(**kw)
                tr.step()
                sds_extra["transition_s"] = timed(lambda: tr.driver.end(**kw), device)
            else:
                tr.driven_step()
        for _ in range(cfg.warmup):
            tr.step()
        if tr.method.in_warmup(tr.model):
            raise RuntimeError(f"{name} is still in its warm-up after {own_warmup_steps(tr)} steps")
        log(f"[bench] warmed up {name}")
    return sds_extra


def _method_entry(name: str, tr: Trainee, cfg: BenchConfig, samples: list[float],
                  device: torch.device) -> dict[str, Any]:
    """Time, FLOPs and memory of one method (the FLOP count and memory probes run untimed steps)."""
    entry: dict[str, Any] = {"step_time_s": summarise(samples), "prepare_s": tr.prepare_s,
                             "trainable_params": sum(p.numel() for p in tr.model.parameters() if p.requires_grad)}
    if supports(tr.method):
        entry["flop_model"] = step_flops(cfg.shape, tr.method, cfg.targets).as_dict()
    if cfg.flop_count:
        entry["implemented_matmul_flops"] = implemented_flops(tr)
    tr.optimizer.zero_grad(set_to_none=True)
    entry["memory_accounted"] = mem.accounted_bytes(tr.model, tr.optimizer, tr.loss)
    tr.optimizer.zero_grad(set_to_none=True)
    increment = mem.step_peak_increment(tr.step, device)
    if increment is not None:
        resident = mem.static_bytes(tr.model, tr.optimizer)
        held = resident["parameters"] + resident["buffers"] + resident["workspace"] + resident["optimizer_state"]
        entry["memory_cuda_peak"] = {"resident_bytes": held, "step_increment_bytes": increment,
                                     "total": held + increment}
    return entry


def _sds_memory_model(cfg: BenchConfig, results: dict[str, Any]) -> dict[str, Any]:
    """SDS's extra memory by formula: for this run (to check against the measured difference) and for the
    paper's setting (LLaMA3-8B, bf16 autocast, fp32 adapters) against its 128.54 GB LoRA peak."""
    fused_bytes = 2 if cfg.autocast else 4  # PEFT keeps adapters in fp32 (autocast_adapter_dtype)
    model = {"this_run": mem.sds_extra_bytes(adapted_layers(cfg.shape, cfg.targets), cfg.rank, fused_bytes,
                                             cfg.autocast),
             "llama3_8b_bf16": mem.sds_extra_bytes(adapted_layers(LLAMA3_8B, cfg.targets), cfg.rank, 2, True),
             "paper_lora_peak_bytes": PAPER_LORA_PEAK_BYTES}
    model["llama3_8b_bf16"]["fraction_of_paper_lora_peak"] = model["llama3_8b_bf16"]["total"] / PAPER_LORA_PEAK_BYTES
    if SUBJECT in results:
        model["this_run"]["measured_accounted_difference"] = (results[SUBJECT]["memory_accounted"]["total"]
                                                              - results[REFERENCE]["memory_accounted"]["total"])
    return model


def _real_width(cfg: BenchConfig, results: dict[str, Any], memory_model: dict[str, Any]) -> dict[str, Any] | None:
    """At LLaMA3-8B's layer shapes (``--shape llama3_8b``, or any run with those shapes): SDS/LoRA measured beside
    the FLOP model, the memory formula and the paper's Table 6 ratios; None otherwise."""
    s, ref = cfg.shape, LLAMA3_8B
    real = (s.hidden, s.intermediate, s.heads, s.kv_heads) == (ref.hidden, ref.intermediate, ref.heads, ref.kv_heads)
    if not (real or cfg.label == "llama3_8b") or SUBJECT not in results:
        return None
    sds, run = results[SUBJECT], memory_model["this_run"]
    return {
        "real_shapes": real,
        "layers": s.layers,
        "time_ratio_paired": sds["paired_time_ratio_to_lora"],
        "flop_model_ratio": sds.get("flop_model_ratio_to_lora"),
        "memory_accounted_ratio": sds.get("memory_accounted_ratio_to_lora"),
        "memory_cuda_peak_ratio": sds.get("memory_cuda_peak_ratio_to_lora"),
        "measured_extra_bytes": run.get("measured_accounted_difference"),
        "formula_extra_bytes": run["total"],
        "projection_llama3_8b_bf16": memory_model["llama3_8b_bf16"],
        "paper_table6": paper_table6_ratios(),
    }


def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every method of ``cfg`` (LoRA always included, as the reference) and return the report."""
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda requested but torch.cuda.is_available() is False")
    unknown = [m for m in (*cfg.methods, *cfg.tax_methods) if m not in method_names()]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; valid: {method_names()}")
    methods = list(dict.fromkeys(cfg.methods))
    if REFERENCE not in methods:
        methods.insert(0, REFERENCE)  # the reference of every ratio
    if cfg.threads and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    started = time.time()
    batch = make_batch(cfg)
    base = build_base_model(cfg)
    max_steps = max(cfg.warmup, 1) + cfg.sds_warmup_steps + cfg.steps + 10  # the LR never reaches zero in the run
    with tempfile.TemporaryDirectory() as tmp:
        args = trainer_arguments(cfg, Path(tmp), max_steps)
        trainees: dict[str, Trainee] = {}
        for name in methods:
            log(f"[bench] preparing {name}")
            trainees[name] = prepare(name, base, cfg, batch, args, max_steps)
    sds_extra = _warm_up(trainees, cfg, device, log)

    # interleaved timing: one step of every method per round, rotating the order; SDS refresh as its own entry
    timers: dict[str, Callable[[], None]] = {name: tr.step for name, tr in trainees.items()}
    refresh_rate = None
    if SUBJECT in trainees:
        timers[f"{SUBJECT}:refresh"], timers[f"{SUBJECT}:callback_idle"], refresh_rate = sds_refresh_timer(
            trainees[SUBJECT])

    def progress(rnd: int, samples: dict[str, list[float]]) -> None:
        log(f"[bench] round {rnd + 1}/{cfg.steps}: " + ", ".join(
            f"{n}={statistics.median(samples[n]) * 1e3:.1f}ms" for n in trainees))  # noqa: F821 (deleted below)

    samples = interleave(timers, cfg.steps, device, progress)
    results = {name: _method_entry(name, tr, cfg, samples[name], device) for name, tr in trainees.items()}
    if SUBJECT in trainees:
        step = results[SUBJECT]["step_time_s"]["median"]
        ref = summarise(samples[f"{SUBJECT}:refresh"])
        sds_extra.update({
            "refresh_s": ref, "callback_idle_s": summarise(samples[f"{SUBJECT}:callback_idle"]),
            "refresh_rate_per_step": refresh_rate,
            "refresh_model_flops": periodic_flops(cfg.shape, trainees[SUBJECT].method, cfg.targets),
            "amortised_refresh_fraction_of_step": refresh_rate * ref["median"] / step if step else None,
            "transition_fraction_of_step": sds_extra.get("transition_s", 0.0) / step if step else None,
        })
        if cfg.refresh_kernel_rounds:
            log("[bench] refresh kernels")
            sds_extra["refresh_kernels"] = compare_refresh_kernels(trainees[SUBJECT].model, device,
                                                                   cfg.refresh_kernel_rounds)
    if cfg.rss and device.type == "cpu":  # RSS probes: one fresh process per method
        for name in methods:
            log(f"[bench] RSS probe {name}")
            results[name]["memory_rss"] = rss_probe(name, cfg)

    del trainees, timers
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    tax: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in cfg.tax_methods:
            log(f"[bench] framework tax {name}")
            tax[name] = framework_tax(name, base, cfg, batch, Path(tmp))

    for name, entry in results.items():  # per-round ratios: both steps ran within seconds of each other
        entry["paired_time_ratio_to_lora"] = summarise([t / r for t, r in zip(samples[name], samples[REFERENCE])])
    report = {
        "kind": "loralab-overhead-benchmark",
        "created_unix": started,
        "wall_s": round(time.time() - started, 1),
        "machine": machine(),
        "config": cfg.as_dict(),
        "methods": results,
        "sds": sds_extra,
        "framework_tax": tax,
        "flop_model_llama3_8b": {m: step_flops(LLAMA3_8B, build_method(m, cfg), cfg.targets).as_dict()
                                 for m in (REFERENCE, SUBJECT)},
        "sds_memory_model": _sds_memory_model(cfg, results),
    }
    add_ratios(report)
    report["real_width"] = _real_width(cfg, results, report["sds_memory_model"])
    report["targets"] = evaluate_targets(report)
    return report
