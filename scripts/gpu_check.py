"""The prepared GPU check: CUDA-marked tests, LoRA vs SDS-LoRA at LLaMA3-8B layer shapes in bf16 (time, allocator
peak memory, ratios beside the paper's Table 6), the SDS refresh kernels on the GPU, and evaluation decoding
throughput, in one command that fits in 8 minutes on one H100.

    python scripts/gpu_check.py              # on a GPU machine: results/bench/gpu-check.{json,md}
    python scripts/gpu_check.py --dry-run    # the same script on the CPU, tiny shapes (~1 min): gpu-check-dry-run.*

Exit status: 0 all sections ran and every CUDA test passed, 1 otherwise (the report says what failed),
2 no GPU without --dry-run (nothing written). What each section measures: loralab.benchmarking.gpu_check.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loralab.benchmarking.gpu_check import run_gpu_check, write_report
from loralab.benchmarking.report import show_written

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: checks the script, not the GPU")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "results" / "bench")
    args = parser.parse_args(argv)
    try:
        report = run_gpu_check(args.dry_run, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    show_written(*write_report(report, args.out_dir))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
