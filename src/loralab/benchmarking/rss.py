"""Peak resident memory of one method's training steps, measured in a fresh process (CPU; see memory.py).

``rss_probe`` starts ``python -m loralab.benchmarking.rss --rss-probe '<json>'`` with glibc's mmap threshold
pinned low (freed tensors go back to the OS); the child builds the model, runs the method's warm-up, samples
the RSS during two training steps and prints one JSON line.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from loralab.benchmarking import memory as mem
from loralab.benchmarking.config import BenchConfig, config_from_dict
from loralab.benchmarking.trainees import build_base_model, make_batch, own_steps_for, prepare, trainer_arguments


def rss_probe(name: str, cfg: BenchConfig) -> dict[str, Any]:
    """Run in a fresh process (see ``_probe_main``): peak RSS during training steps, baseline before the model."""
    payload = json.dumps({"name": name, "cfg": cfg.as_dict()})
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    proc = subprocess.run([sys.executable, "-m", "loralab.benchmarking.rss", "--rss-probe", payload],
                          capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc={proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _probe_main(payload: str) -> None:
    spec = json.loads(payload)
    cfg = config_from_dict(spec["cfg"])
    name = spec["name"]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    baseline = mem.current_rss()
    batch = make_batch(cfg)
    base = build_base_model(cfg)
    warm = max(cfg.warmup, 1) + own_steps_for(name, cfg)
    max_steps = warm + 3
    with tempfile.TemporaryDirectory() as tmp:
        args = trainer_arguments(cfg, Path(tmp), max_steps)
        trainee = prepare(name, base, cfg, batch, args, max_steps)
    del base
    gc.collect()
    for _ in range(warm):
        trainee.driven_step()
    gc.collect()
    before = mem.current_rss()
    with mem.RSSSampler() as sampler:
        for _ in range(2):
            trainee.step()
    print(json.dumps({"baseline_bytes": baseline, "before_steps_bytes": before, "peak_bytes": sampler.peak,
                      "peak_minus_baseline_bytes": sampler.peak - baseline}))


if __name__ == "__main__":  # the probe's entry point (rss_probe starts it in a fresh process)
    if len(sys.argv) == 3 and sys.argv[1] == "--rss-probe":
        _probe_main(sys.argv[2])
    else:
        print("usage: python -m loralab.benchmarking.rss --rss-probe '<json>' (internal); "
              "use scripts/bench_overhead.py", file=sys.stderr)
        sys.exit(2)
