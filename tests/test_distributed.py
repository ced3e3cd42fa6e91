"""Multi-process runs: a real 2-process ``torchrun`` launch (gloo, CPU) of the entry point must give one run
directory, recorded by the main process only, with the result of one process at the same global batch; and
the world size is part of a run's identity without changing any single-process run's hash."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, compose
from loralab import distributed
from loralab.errors import ConfigError
from loralab.io import read_json
from loralab.rundir import RunDir, config_hash
from loralab.runner import run
from loralab.tables.build import build_table, collect_runs

# `python run.py` today: pinned so that no change to the run identity silently moves existing results.
EMBEDDED_DEFAULT_HASH = "e433be6174"


def test_single_process_hashes_are_unchanged() -> None:
    cfg = compose()
    assert config_hash(cfg) == EMBEDDED_DEFAULT_HASH
    assert config_hash(cfg, processes=1) == EMBEDDED_DEFAULT_HASH
    assert RunDir.for_config(cfg).path.name.endswith(EMBEDDED_DEFAULT_HASH)


def test_world_size_is_part_of_the_run_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    per_device_4 = compose("trainer.per_device_train_batch_size=4")
    per_device_8 = compose("trainer.per_device_train_batch_size=8")
    alone, two = config_hash(per_device_4, processes=1), config_hash(per_device_4, processes=2)
    assert two != alone                                    # global batch 8 is not global batch 4
    assert two != config_hash(per_device_8, processes=1)   # nor the same global batch on one process
    assert config_hash(per_device_4, processes=4) not in (alone, two)
    monkeypatch.setenv("WORLD_SIZE", "2")                  # what torchrun tells each process
    assert config_hash(per_device_4) == two
    assert distributed.global_train_batch(per_device_4.trainer) == 8


def test_on_main_alone_is_a_plain_call() -> None:
    assert distributed.on_main(lambda a, b: a + b, 1, b=2) == 3
    with pytest.raises(ConfigError, match="bad"):
        distributed.on_main(lambda: (_ for _ in ()).throw(ConfigError("bad")))


# Methods whose training differs from plain LoRA in what DDP touches: LoRA+'s parameter groups, LoRA-Pro's and
# ScaledAdamW's optimisers that read whole factor pairs, SDS-LoRA's callbacks that rewrite A and B at the end
# of the warm-up (step 10) and refresh the bases (steps 11, 12). lora: the embedded default, shrunk.
METHODS = ("lora", "lora_plus", "lora_pro", "scaled_adamw", "sds_lora")
SHRUNK = ["trainer.max_steps=12", "trainer.warmup_steps=2", "trainer.logging_steps=1", "trainer.save_steps=6",
          "eval.tasks.0.data.n=8", "eval.engine=lm_eval", "progress=false"]


def _losses(run_dir: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    return [(r["step"], r["epoch"], r["loss"]) for r in rows if "loss" in r]


def _updates(run_dir: Path) -> dict[str, torch.Tensor]:
    """ΔW/s = B·A per adapted layer (SDS-LoRA's rank-2r export included), from the saved adapter."""
    weights = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    return {k: weights[k.replace("lora_A", "lora_B")] @ weights[k] for k in weights if k.endswith("lora_A.weight")}


def _generations(run_dir: Path) -> list[str]:
    lines = (run_dir / "samples" / "arith_word_problems.jsonl").read_text().splitlines()
    return [json.loads(line)["generation"] for line in lines]


@pytest.mark.slow
def test_two_processes_equal_one_at_the_same_global_batch(tmp_path: Path, one_compute_thread: None) -> None:
    """``torchrun --nproc_per_node 2`` over a sweep of methods (per-device batch 4) against one process at batch
    8: one run directory per cell written by the main process, the same losses, update and scores."""
    two_dir, one_dir = tmp_path / "two", tmp_path / "one"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    launch = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "run.py", "-m",
         f"method={','.join(METHODS)}", *SHRUNK, "trainer.per_device_train_batch_size=4",
         f"paths.results_dir={two_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-3000:]
    (sweep,) = list(two_dir.rglob("sweep.json"))                 # one sweep record, written by the main process
    assert read_json(sweep)["counts"] == {"finished": len(METHODS)}
    assert len(list(two_dir.rglob("metrics.json"))) == len(METHODS)   # one run directory per cell, not per rank

    for method in METHODS:
        (two_run,) = list((two_dir / "runs").glob(f"tiny_lm-{method}-*"))
        assert read_json(two_run / "status.json")["state"] == "finished"
        two = read_json(two_run / "metrics.json")
        # two ranks trained: the process group had 2 members, and each step consumed 2 × 4 examples
        assert (two["run"]["world_size"], two["run"]["global_train_batch"]) == (2, 8)

        one = run(compose(f"method={method}", *SHRUNK, "trainer.per_device_train_batch_size=8", runs_dir=one_dir))
        (one_run,) = list((one_dir / "runs").glob(f"tiny_lm-{method}-*"))
        assert (one["run"]["world_size"], one["run"]["global_train_batch"]) == (1, 8)
        assert one_run.name != two_run.name                      # same global batch, still another launch

        two_losses, one_losses = _losses(two_run), _losses(one_run)
        assert [s for s, _, _ in two_losses] == [s for s, _, _ in one_losses] == list(range(1, 13))
        assert [e for _, e, _ in two_losses] == [e for _, e, _ in one_losses]      # same examples per step
        # gradients are summed in another order across ranks: equal to float rounding, not bit for bit
        assert [l for _, _, l in two_losses] == pytest.approx([l for _, _, l in one_losses], rel=1e-4), method
        two_updates, one_updates = _updates(two_run), _updates(one_run)
        assert two_updates.keys() == one_updates.keys()
        # SDS-LoRA's bases are defined up to a rotation within (near-)equal singular values, which Adam's
        # element-wise steps do not ignore: its update agrees to 1e-2, the others' to 1e-3
        tolerance = 1e-2 if method == "sds_lora" else 1e-3
        for key, update in one_updates.items():
            assert (two_updates[key] - update).abs().max() <= tolerance * update.abs().max(), (method, key)
        assert two["eval"]["tasks"] == one["eval"]["tasks"], method
        assert _generations(two_run) == _generations(one_run), method

    # the table builder sees two launches of one global batch; a run at another global batch is refused
    runs = collect_runs(two_dir / "runs") + collect_runs(one_dir / "runs")
    spec = {"name": "t", "row_keys": ["model", "method"],
            "columns": [{"header": "EM", "task": "arith_word_problems", "metric": "exact_match"}]}
    assert "| tiny_lm | lora |" in build_table(spec, runs)
    runs[1].run["global_train_batch"] = 4
    with pytest.raises(ConfigError, match="different global batch sizes"):
        build_table(spec, runs)
