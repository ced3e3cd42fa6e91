"""``make gpu-check DRY_RUN=1``: the prepared GPU check runs end to end on the CPU (tiny shapes), so the command a
GPU machine will run cannot rot; its files say on every page that no number in them is a GPU number."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, script


def test_dry_run_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("LORALAB_GPU_CHECK_DRY_RUN", None)  # the script sets it for its own pytest run
    done = subprocess.run([sys.executable, "scripts/gpu_check.py", "--dry-run", "--out-dir", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu-check-dry-run.json", "gpu-check-dry-run.md"]
    report = json.loads((tmp_path / "gpu-check-dry-run.json").read_text())
    assert report["dry_run"] is True and report["device_name"] is None and report["ok"] is True
    sections = report["sections"]
    assert {name: s["status"] for name, s in sections.items()} == {"cuda_tests": "ok", "overhead": "ok",
                                                                   "decoding": "ok"}
    tests = sections["cuda_tests"]["result"]
    assert tests["tests"] >= 4 and tests["passed"] == tests["tests"] and tests["skipped"] == 0  # ran, on the CPU
    overhead = sections["overhead"]["result"]
    assert set(overhead["methods"]) == {"lora", "sds_lora"} and overhead["config"]["dtype"] == "bfloat16"
    assert overhead["sds"]["refresh_kernels"]["batched_cholesky_qr2"]["n"] >= 1
    assert all(m["identical_text"] for w in sections["decoding"]["result"]["workloads"] for m in w["models"].values())
    md = (tmp_path / "gpu-check-dry-run.md").read_text()
    assert md.startswith("# GPU check — DRY RUN on the CPU (tiny shapes): no number on this page is a GPU number")
    assert "paper Table 6" in md and "| batched_cholesky_qr2 |" in md and "llama_shaped" in md


def test_without_a_gpu_the_real_check_refuses_and_writes_nothing(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: this is the CPU-only machine's behaviour")
    gpu_check = script("gpu_check")
    assert gpu_check.main(["--out-dir", str(tmp_path)]) == 2
    assert "make gpu-check DRY_RUN=1" in capsys.readouterr().err and not list(tmp_path.iterdir())
