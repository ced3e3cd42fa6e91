"""Performance measurements: per-method training-step time and memory against a FLOP model, SDS-LoRA's refresh
cost and the framework's tax over a bare training loop (``scripts/bench_overhead.py``), evaluation decoding
(``scripts/bench_decoding.py``; both are ``make bench``) and the prepared GPU check (``make gpu-check``).

Modules: ``config`` (what runs), ``trainees`` (the methods and their bare step), ``timing`` (interleaved
rounds), ``refresh`` (SDS refresh kernels), ``memory``/``rss`` (memory measures), ``tax`` (Trainer vs bare
loop), ``flops`` (the FLOP model), ``report`` (ratios, targets, files), ``overhead`` (``run_benchmark``),
``decoding`` (reference vs per-row stopping) and ``gpu_check`` (all of them on one GPU)."""
from loralab.benchmarking.config import BenchConfig, cpu_default, cuda_default, tiny
from loralab.benchmarking.flops import LlamaShape, StepFlops, base_linear_flops, step_flops
from loralab.benchmarking.overhead import run_benchmark
from loralab.benchmarking.report import write_report

__all__ = [
    "BenchConfig", "LlamaShape", "StepFlops", "base_linear_flops", "cpu_default", "cuda_default",
    "run_benchmark", "step_flops", "tiny", "write_report",
]
