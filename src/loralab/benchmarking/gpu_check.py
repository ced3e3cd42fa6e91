"""One prepared GPU check (``make gpu-check``): every number a GPU can give the project, in one command that fits
in 8 minutes on one H100, written to ``results/bench/gpu-check.{json,md}``.

Sections, each recorded with its wall time and, if it fails, its error (the others still run):

1. ``cuda_tests``: the ``cuda``-marked tests (``pytest -m cuda``, a subprocess);
2. ``overhead``: LoRA vs SDS-LoRA at LLaMA3-8B layer shapes (4 of its 32 layers, its vocabulary, batch 4 × 512)
   in bf16 with autocast: step time, allocator peak memory, the ratios beside the FLOP model, the memory formula
   and the paper's Table 6 ratios, and the refresh kernels compared on the GPU (per-matrix and batched
   Householder QR, batched CholeskyQR2 with its accuracy on the model's factors);
3. ``decoding``: evaluation decoding throughput, reference vs per-row stopping, on the embedded LM and on a
   LLaMA3-8B-shaped model (4 layers, bf16) replaying its continuations.

``dry_run`` runs the same sections on the CPU with tiny shapes (the CUDA tests on the CPU, the bf16 recipe on
CPU tensors) in about a minute, and writes ``gpu-check-dry-run.*``, whose every page says that no number in it
is a GPU number; CI runs it through the test suite so the check cannot rot.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from loralab.benchmarking import decoding
from loralab.benchmarking.config import ROOT, BenchConfig, cuda_default, paper_table6_ratios, tiny
from loralab.benchmarking.flops import LlamaShape

BUDGET_S = 480            # one H100, everything included
DRY_RUN_ENV = "LORALAB_GPU_CHECK_DRY_RUN"   # read by tests/test_cuda.py: run on the CPU instead of skipping


@dataclass(frozen=True)
class GpuCheckPlan:
    dry_run: bool
    overhead: BenchConfig
    decoding: decoding.DecodingBenchConfig


def make_plan(dry_run: bool) -> GpuCheckPlan:
    if dry_run:
        overhead = replace(cuda_default(), shape=tiny().shape, device="cpu", rank=4, methods=("lora", "sds_lora"),
                           steps=2, warmup=1, tax_steps=2, threads=1, refresh_kernel_rounds=2, label="gpu-check")
        return GpuCheckPlan(True, overhead, replace(decoding.tiny(), dtype="bfloat16"))
    overhead = replace(cuda_default(), methods=("lora", "sds_lora"), label="gpu-check")
    wide = LlamaShape(hidden=4096, intermediate=14336, heads=32, kv_heads=8, layers=4, vocab=128256, seq=256,
                      batch=16)
    return GpuCheckPlan(False, overhead, decoding.DecodingBenchConfig(device="cuda", dtype="bfloat16", shape=wide,
                                                                      rounds=3, threads=None))


def run_cuda_tests(dry_run: bool) -> dict[str, Any]:
    """``pytest -m cuda`` in a subprocess; counts and failing test ids from its JUnit XML."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if dry_run:
        env[DRY_RUN_ENV] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "cuda.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-n", "0",
                   f"--junitxml={xml}", "tests"]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if not xml.is_file():
            raise RuntimeError(f"pytest wrote no report (exit {done.returncode}): {done.stdout[-2000:]}"
                               f"{done.stderr[-2000:]}")
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        failing = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
                   if case.find("failure") is not None or case.find("error") is not None]
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    shown = [c for c in command[1:] if not c.startswith("--junitxml")]
    return {"command": " ".join(["python", *shown]), "returncode": done.returncode, **counts, "failing": failing,
            "output_tail": done.stdout[-3000:]}


def _section(name: str, work: Callable[[], Any], log: Callable[[str], None]) -> dict[str, Any]:
    log(f"[gpu-check] {name}")
    started = time.perf_counter()
    try:
        result = {"status": "ok", "result": work()}
    except Exception as err:  # noqa: BLE001  (recorded; the other sections still run)
        result = {"status": "failed", "error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc(limit=8)}
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def run_gpu_check(dry_run: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
    import torch

    from loralab.benchmarking.overhead import run_benchmark
    from loralab.benchmarking.report import machine

    if not dry_run and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device (torch.cuda.is_available() is False): run it on a GPU machine, or "
                           "`make gpu-check DRY_RUN=1` for the CPU dry run")
    plan = make_plan(dry_run)
    started = time.time()
    sections = {
        "cuda_tests": _section("CUDA-marked tests", lambda: run_cuda_tests(dry_run), log),
        "overhead": _section("overhead at LLaMA3-8B layer shapes, bf16", lambda: run_benchmark(plan.overhead, log),
                             log),
        "decoding": _section("evaluation decoding", lambda: decoding.run_decoding_benchmark(plan.decoding, log), log),
    }
    wall = round(time.time() - started, 1)
    tests = sections["cuda_tests"].get("result") or {}
    ok = all(s["status"] == "ok" for s in sections.values()) and tests.get("failures", 1) == 0 \
        and tests.get("errors", 1) == 0
    return {"kind": "loralab-gpu-check", "dry_run": dry_run, "created_unix": started, "wall_s": wall,
            "budget_s": BUDGET_S, "within_budget": wall <= BUDGET_S, "ok": ok, "machine": machine(),
            "device_name": None if dry_run else torch.cuda.get_device_name(0), "sections": sections}


# ------------------------------------------------------------------------------------------------ report
def _f(x: Any, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _overhead_summary(report: dict[str, Any]) -> list[str]:
    lora, sds = report["methods"]["lora"], report["methods"]["sds_lora"]
    paper = paper_table6_ratios()
    pt = " / ".join(_f(paper[d]["time"]) for d in ("metamathqa", "code_feedback"))
    pm = " / ".join(_f(paper[d]["memory"]) for d in ("metamathqa", "code_feedback"))
    paired = sds["paired_time_ratio_to_lora"]
    peak = sds.get("memory_cuda_peak_ratio_to_lora")
    s = report["config"]["shape"]
    lines = [f"LoRA vs SDS-LoRA, hidden {s['hidden']}, MLP {s['intermediate']}, {s['heads']}/{s['kv_heads']} heads, "
             f"{s['layers']} layers, vocab {s['vocab']}, batch {s['batch']} × {s['seq']}, rank "
             f"{report['config']['rank']}, {report['config']['dtype']}"
             f"{' + autocast' if report['config']['dtype'] == 'bfloat16' else ''}, {report['config']['steps']} rounds.",
             "", "| SDS-LoRA / LoRA | this run | paper Table 6 (MetaMathQA / Code-Feedback, whole runs, H200) |",
             "|---|---|---|",
             f"| step time (paired median, p25–p75) | {_f(paired['median'])} ({_f(paired['p25'])}–{_f(paired['p75'])}) "
             f"| {pt} |",
             f"| peak memory, allocator | {_f(peak)} | {pm} |",
             f"| memory, accounted | {_f(sds.get('memory_accounted_ratio_to_lora'))} | |",
             f"| FLOP model (these layers) | {_f(sds.get('flop_model_ratio_to_lora'))} | |",
             f"| FLOP model (full LLaMA3-8B) | {_f(1 + report['flop_model_llama3_8b']['sds_lora_overhead'])} | |",
             "", f"Median step: LoRA {lora['step_time_s']['median'] * 1e3:.1f} ms, SDS-LoRA "
             f"{sds['step_time_s']['median'] * 1e3:.1f} ms."]
    if peak is not None:
        lines[-1] += (f" Allocator peak: LoRA {lora['memory_cuda_peak']['total'] / 2**20:.0f} MiB, SDS-LoRA "
                      f"{sds['memory_cuda_peak']['total'] / 2**20:.0f} MiB.")
    kernels = (report.get("sds") or {}).get("refresh_kernels")
    if kernels:
        acc = kernels["cholesky_qr2_accuracy"]
        lines += ["", "| refresh kernel (all layers) | median ms |", "|---|---|"]
        lines += [f"| {k} | {kernels[k]['median'] * 1e3:.3f} |"
                  for k in ("per_layer", "batched_householder", "batched_cholesky_qr2")]
        lines += ["", f"Training uses {kernels['training_uses']} on this device. CholeskyQR2 on these factors: max "
                  f"‖QᵀQ − I‖ {acc['max_orthogonality_error']:.1e}, max distance to Householder "
                  f"{acc['max_distance_to_householder']:.1e}, largest factor condition number "
                  f"{_f(acc['max_factor_condition_number'], 1)}."]
    return lines


def markdown(report: dict[str, Any]) -> str:
    from loralab.benchmarking import report as overhead_report

    dry = report["dry_run"]
    title = ("# GPU check — DRY RUN on the CPU (tiny shapes): no number on this page is a GPU number" if dry else
             f"# GPU check — {report['device_name']}")
    lines = [title, "", f"Wall {report['wall_s']} s (budget {report['budget_s']} s: "
             f"{'within' if report['within_budget'] else 'OVER'}); all sections "
             f"{'ok' if report['ok'] else 'NOT ok'}.", ""]
    for name, section in report["sections"].items():
        lines += [f"## {name} ({section['status']}, {section['wall_s']} s)", ""]
        if section["status"] != "ok":
            lines += ["```", section["error"], section["traceback"], "```", ""]
            continue
        result = section["result"]
        if name == "cuda_tests":
            lines += [f"`{result['command']}`: {result['passed']} passed, {result['failures']} failed, "
                      f"{result['errors']} errors, {result['skipped']} skipped."]
            lines += [f"- failing: {t}" for t in result["failing"]]
        elif name == "overhead":
            lines += _overhead_summary(result)
            full = overhead_report.markdown(result)
            lines += ["", "<details><summary>full overhead report</summary>", "", "##" + full, "</details>"]
        else:
            lines += decoding.markdown(result).split("\n", 2)[2].splitlines()
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``gpu-check.json``/``.md`` (dry run: ``gpu-check-dry-run.*``) in ``out_dir``, atomically."""
    from loralab.benchmarking.report import write_json_and_markdown

    stem = "gpu-check-dry-run" if report["dry_run"] else "gpu-check"
    return write_json_and_markdown(report, markdown(report), Path(out_dir) / stem)
