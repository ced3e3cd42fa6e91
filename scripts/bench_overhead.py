"""Per-method training-step overhead (time, memory, FLOPs) and the framework's tax, side by side in one process.

    python scripts/bench_overhead.py                         # CPU default (Llama, hidden 1024, 2 layers, seq 256)
    python scripts/bench_overhead.py --device cuda           # LLaMA3-8B layer shapes, 4 layers, bf16 autocast
    python scripts/bench_overhead.py --methods lora,sds_lora --steps 30 --layers 8
    python scripts/bench_overhead.py --methods all           # every conf/method/*.yaml
    python scripts/bench_overhead.py --shape llama3_8b       # 1 decoder layer at LLaMA3-8B's real width (2: --layers 2)

Writes results/bench/overhead-<device>.json and .md (atomically). What each number means is in the docstrings
of loralab.benchmarking.overhead (what is measured), .timing (timing protocol), .flops (the FLOP model) and
.memory (memory measures).
Timings on a shared machine are noisy: methods are interleaved step by step and medians are reported.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from loralab.benchmarking.config import SHAPES, cpu_default, cuda_default, tiny
from loralab.benchmarking.overhead import run_benchmark
from loralab.benchmarking.report import show_written, write_report
from loralab.benchmarking.trainees import method_names

ROOT = Path(__file__).resolve().parents[1]
SHAPE_FIELDS = ("hidden", "intermediate", "heads", "kv_heads", "layers", "vocab", "seq", "batch")


def _names(text: str) -> tuple[str, ...]:
    return tuple(method_names()) if text == "all" else tuple(n.strip() for n in text.split(",") if n.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when available (preset cuda), else cpu (preset cpu)")
    parser.add_argument("--preset", choices=("cpu", "cuda", "tiny"), default=None,
                        help="shape and step counts; default follows --device")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None,
                        help="a paper model's real layer shapes (LoRA vs SDS-LoRA, 1 layer unless --layers); "
                             "replaces --preset")
    for name in SHAPE_FIELDS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, help=f"override the preset's {name}")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="model dtype; bfloat16 adds bf16 autocast (preset cuda: bfloat16, cpu: float32)")
    parser.add_argument("--rank", type=int, default=None)
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--methods", type=_names, default=None, help="comma-separated conf/method names, or 'all'")
    parser.add_argument("--steps", type=int, default=None, help="timed rounds (one step of every method each)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per method before timing")
    parser.add_argument("--sds-warmup-steps", type=int, default=None)
    parser.add_argument("--tax-methods", type=_names, default=None, help="methods for the Trainer-vs-bare-loop tax")
    parser.add_argument("--tax-steps", type=int, default=None)
    parser.add_argument("--rss", action=argparse.BooleanOptionalAction, default=None,
                        help="peak-RSS probe per method in fresh processes (CPU; default on for preset cpu)")
    parser.add_argument("--flop-count", action=argparse.BooleanOptionalAction, default=True,
                        help="count the matrix FLOPs each method issues (FlopCounterMode, one extra step each)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU (preset cpu: 1)")
    parser.add_argument("--refresh-kernel-rounds", type=int, default=None,
                        help="rounds of the SDS refresh-kernel comparison (0 skips it)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "results" / "bench")
    args = parser.parse_args(argv)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.shape and args.preset:
        print(f"error: --shape {args.shape} and --preset {args.preset}: give one of them", file=sys.stderr)
        return 2
    preset = args.preset or ("cuda" if device == "cuda" else "cpu")
    cfg = SHAPES[args.shape]() if args.shape else {"cpu": cpu_default, "cuda": cuda_default, "tiny": tiny}[preset]()
    cfg = replace(cfg, device=device, flop_count=args.flop_count)
    if device == "cuda" and args.dtype is None:
        cfg = replace(cfg, dtype="bfloat16")
    shape = replace(cfg.shape, **{k: getattr(args, k) for k in SHAPE_FIELDS if getattr(args, k) is not None})
    cfg = replace(cfg, shape=shape)
    for key in ("dtype", "rank", "alpha", "methods", "steps", "warmup", "sds_warmup_steps", "tax_methods",
                "tax_steps", "rss", "threads", "refresh_kernel_rounds"):
        if getattr(args, key) is not None:
            cfg = replace(cfg, **{key: getattr(args, key)})
    try:
        report = run_benchmark(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    show_written(*write_report(report, args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
