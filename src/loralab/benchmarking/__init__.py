"""Performance measurements: per-method training-step time and memory against a FLOP model, SDS-LoRA's refresh
cost and the framework's tax over a bare training loop (``scripts/bench_overhead.py``, ``make bench``)."""
from loralab.benchmarking.flops import LlamaShape, StepFlops, adapter_flops, base_linear_flops, step_flops
from loralab.benchmarking.overhead import BenchConfig, cpu_default, cuda_default, run_benchmark, tiny, write_report

__all__ = [
    "BenchConfig", "LlamaShape", "StepFlops", "adapter_flops", "base_linear_flops", "cpu_default", "cuda_default",
    "run_benchmark", "step_flops", "tiny", "write_report",
]
