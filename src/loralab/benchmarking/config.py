"""What the overhead benchmark runs: the configuration, its presets and the reference shapes and numbers."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from loralab.benchmarking.flops import LlamaShape

ROOT = Path(__file__).resolve().parents[3]
CONF = ROOT / "conf"
DEFAULT_METHODS = ("full_ft", "lora", "sds_lora", "dora", "pissa", "lora_plus", "lora_pro", "scaled_adamw",
                   "altlora")
# The comparison this benchmark exists for (SDS-LoRA's Table 6): the subject's time and memory against the
# reference's, which is always measured. How each method is built, warmed up and costed is its own
# (``loralab.methods``: ``quick_init``, ``warmup_option``, the cost hooks).
REFERENCE = "lora"
SUBJECT = "sds_lora"
PAPER_LORA_PEAK_BYTES = int(128.54e9)  # docs/methods/flops.md#reference-numbers, MetaMathQA row (GB read as 10^9 bytes)
PAPER_TABLE6 = ROOT / "results" / "paper" / "sds_table6.yaml"
LLAMA3_8B = LlamaShape(hidden=4096, intermediate=14336, heads=32, kv_heads=8, layers=32, vocab=128256, seq=512,
                       batch=4)


@dataclass
class BenchConfig:
    shape: LlamaShape
    device: str = "cpu"
    dtype: str = "float32"          # model dtype; "bfloat16" also turns on bf16 autocast (CUDA: the paper recipe)
    rank: int = 32
    alpha: float = 16.0
    methods: tuple[str, ...] = DEFAULT_METHODS
    steps: int = 10                 # timed rounds (one step of every method per round)
    warmup: int = 2                 # untimed steps per method after its own warm-up phase
    sds_warmup_steps: int = 2       # SDS-LoRA's plain-LoRA steps before the transition (paper: 10; not timed)
    refresh_main_steps: int = 1000  # nominal SDS steps for the schedule's refresh rate (≈ a 1-epoch run)
    refresh_kernel_rounds: int = 10  # interleaved rounds of the refresh-kernel comparison (0: skip it)
    tax_methods: tuple[str, ...] = ("lora",)
    tax_steps: int = 10
    rss: bool = False
    flop_count: bool = True
    lr: float = 1e-5
    max_grad_norm: float = 1.0
    seed: int = 0
    threads: int | None = None      # torch.set_num_threads on CPU (None: leave torch's default)
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    label: str = ""                 # names the report files (overhead-<device>[-<label>].json)

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[self.dtype]

    @property
    def autocast(self) -> bool:
        return self.torch_dtype == torch.bfloat16

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = asdict(self.shape)
        return d


def paper_table6_ratios(path: Path = PAPER_TABLE6) -> dict[str, dict[str, float]]:
    """SDS/LoRA wall-time (extra + main time) and peak-memory ratios of SDS-LoRA Table 6, per data set, read from
    the reference file (LLaMA3-8B, one H200)."""
    from loralab.tables.reference import load_reference

    table = load_reference(path)

    def value(method: str, dataset: str, column: str) -> float:
        cell = table.lookup({"model": "llama3_8b", "method": method, "dataset": dataset}, column)
        if cell is None or cell.value is None:
            raise ValueError(f"{path}: no value for {method}/{dataset}/{column!r}")
        return float(cell.value)

    out = {}
    for dataset in ("metamathqa", "code_feedback"):
        sds_time = value("sds_lora", dataset, "Extra time (h)") + value("sds_lora", dataset, "Main time (h)")
        out[dataset] = {"time": sds_time / value("lora", dataset, "Main time (h)"),
                        "memory": value("sds_lora", dataset, "Memory (GB)") / value("lora", dataset, "Memory (GB)")}
    return out


def config_from_dict(d: dict[str, Any]) -> BenchConfig:
    """Inverse of ``BenchConfig.as_dict`` (the RSS probe gets its configuration as JSON)."""
    d = dict(d)
    d["shape"] = LlamaShape(**d["shape"])
    for key in ("methods", "tax_methods", "targets"):
        d[key] = tuple(d[key])
    return BenchConfig(**d)


def cpu_default() -> BenchConfig:
    """Llama-shaped (GQA 4:1, MLP 3.5×) and wide enough that the linear layers dominate a CPU step."""
    shape = LlamaShape(hidden=1024, intermediate=3584, heads=16, kv_heads=4, layers=2, vocab=2048, seq=256, batch=2)
    # one thread: on a CPU shared with other jobs, OpenMP barriers turn every preemption into a stall of all threads
    return BenchConfig(shape=shape, rss=True, threads=1, steps=16, tax_steps=16)


def cuda_default() -> BenchConfig:
    """LLaMA3-8B layer shapes and vocabulary (4 of its 32 layers), bf16 weights, bf16 autocast, batch 4 × 512."""
    shape = LlamaShape(hidden=4096, intermediate=14336, heads=32, kv_heads=8, layers=4, vocab=128256, seq=512,
                       batch=4)
    return BenchConfig(shape=shape, device="cuda", dtype="bfloat16", steps=20, warmup=3, tax_steps=20)


def llama3_8b_layers(layers: int = 1) -> BenchConfig:
    """LLaMA3-8B's real layer shapes (hidden 4096, MLP 14336, GQA 32/8 heads), rank 32, LoRA and SDS-LoRA, on the
    CPU in fp32: the ratios at the width the paper trains, where r(m+n)/(mn) is 4× smaller than at hidden 1024.
    The vocabulary is cut to 2048: the real head (128,256 × 4096) would be most of a 1–2-layer model's step and
    memory; batch 1 × 128 keeps a step to seconds on one core."""
    shape = LlamaShape(hidden=4096, intermediate=14336, heads=32, kv_heads=8, layers=layers, vocab=2048, seq=128,
                       batch=1)
    return BenchConfig(shape=shape, methods=("lora", "sds_lora"), steps=6, warmup=1, tax_methods=(), threads=1,
                       refresh_kernel_rounds=3, label="llama3_8b")


SHAPES = {"llama3_8b": llama3_8b_layers}


def tiny() -> BenchConfig:
    """Seconds-sized shape for the tests."""
    shape = LlamaShape(hidden=64, intermediate=160, heads=4, kv_heads=2, layers=2, vocab=96, seq=16, batch=2)
    return BenchConfig(shape=shape, rank=4, methods=("full_ft", "lora", "sds_lora"), steps=2, warmup=1,
                       tax_steps=2, threads=1, refresh_kernel_rounds=2)
