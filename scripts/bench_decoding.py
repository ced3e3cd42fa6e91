"""Evaluation decoding throughput: per-row stopping and length batches against the reference decoding, side by side.

    python scripts/bench_decoding.py                    # CPU: embedded LM + a Llama-shaped model (hidden 1024)
    python scripts/bench_decoding.py --device cuda --dtype bfloat16 --hidden 4096 --intermediate 14336 \
        --heads 32 --kv-heads 8 --layers 4 --vocab 128256
    python scripts/bench_decoding.py --preset tiny      # seconds (24 prompts, narrow model)

Writes results/bench/decoding-<device>.json and .md (atomically). What is measured: the docstring of
loralab.benchmarking.decoding.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from loralab.benchmarking.decoding import Workload, cpu_default, run_decoding_benchmark, tiny, write_report
from loralab.benchmarking.report import show_written

ROOT = Path(__file__).resolve().parents[1]
SHAPE_FIELDS = ("hidden", "intermediate", "heads", "kv_heads", "layers", "vocab")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("cpu", "tiny"), default="cpu")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="the Llama-shaped model's dtype (default float32)")
    for name in SHAPE_FIELDS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                            help=f"the Llama-shaped model's {name}")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds per workload")
    parser.add_argument("--limit", type=int, default=None, help="first prompts of each workload only")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU (default 1)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "results" / "bench")
    args = parser.parse_args(argv)

    cfg = {"cpu": cpu_default, "tiny": tiny}[args.preset]()
    shape = replace(cfg.shape, **{k: getattr(args, k) for k in SHAPE_FIELDS if getattr(args, k) is not None})
    cfg = replace(cfg, device=args.device, shape=shape)
    for key in ("dtype", "rounds", "threads"):
        if getattr(args, key) is not None:
            cfg = replace(cfg, **{key: getattr(args, key)})
    if args.limit is not None:
        cfg = replace(cfg, workloads=tuple(Workload(w.name, w.overrides, args.limit) for w in cfg.workloads))
    if cfg.rounds < 1:
        print(f"error: --rounds={cfg.rounds}: it must be at least 1", file=sys.stderr)
        return 2
    try:
        report = run_decoding_benchmark(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    show_written(*write_report(report, args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
