"""Scaling out. A real 2-process ``torchrun`` launch (gloo, CPU) of the entry point gives one run directory,
recorded by the main process only, with the result of one process at the same global batch; the world size is
part of a run's identity without changing any single-process run's hash; launches a method cannot run under
(FSDP, DeepSpeed, a setting DDP breaks, SLURM tasks without ranks) are refused before anything runs; and a cell
that fails under the submitit launcher is summarised as under the in-process one."""
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
from loralab.instantiate import build
from loralab.io import read_json
from loralab.rundir import RunDir, config_hash
from loralab.runner import run
from loralab.tables.tabulate import build_table, collect_runs
from loralab.training.parallelism import check_launch, sharding

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
# LoRA-GA: a data-driven initialisation (calibration batches); PiSSA: a residual SVD initialisation;
# full_ft: every parameter, a full-model checkpoint.
METHODS = ("lora", "lora_plus", "lora_pro", "scaled_adamw", "sds_lora", "lora_ga", "pissa", "full_ft")
SHRUNK = ["trainer.max_steps=12", "trainer.warmup_steps=2", "trainer.logging_steps=1", "trainer.save_steps=6",
          "eval.tasks.0.data.n=8", "eval.engine=lm_eval", "progress=false"]


def _losses(run_dir: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    return [(r["step"], r["epoch"], r["loss"]) for r in rows if "loss" in r]


def _updates(run_dir: Path) -> dict[str, torch.Tensor]:
    """ΔW/s = B·A per adapted layer (SDS-LoRA's rank-2r export included), or every weight of a full model."""
    if (run_dir / "adapter" / "model.safetensors").is_file():
        return load_file(str(run_dir / "adapter" / "model.safetensors"))
    weights = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    return {k: weights[k.replace("lora_A", "lora_B")] @ weights[k] for k in weights if k.endswith("lora_A.weight")}


def _generations(run_dir: Path) -> list[str]:
    lines = (run_dir / "samples" / "arith_word_problems.jsonl").read_text().splitlines()
    return [json.loads(line)["generation"] for line in lines]


def _assert_equal_to_one_process(two_run: Path, one_dir: Path, *overrides: str) -> None:
    """The 2-process run (per-device batch 4) against the same config on one process at batch 8."""
    assert read_json(two_run / "status.json")["state"] == "finished"
    two = read_json(two_run / "metrics.json")
    # two ranks trained: the process group had 2 members, and each step consumed 2 × 4 examples
    assert (two["run"]["world_size"], two["run"]["global_train_batch"]) == (2, 8)
    method = two["run"]["method"]

    one = run(compose(*overrides, *SHRUNK, "trainer.per_device_train_batch_size=8", runs_dir=one_dir))
    (one_run,) = list((one_dir / "runs").glob(f"tiny_lm-{method}-*"))
    assert (one["run"]["world_size"], one["run"]["global_train_batch"]) == (1, 8)
    assert one_run.name != two_run.name                          # same global batch, still another launch

    two_losses, one_losses = _losses(two_run), _losses(one_run)
    assert [s for s, _, _ in two_losses] == [s for s, _, _ in one_losses] == list(range(1, 13))
    assert [e for _, e, _ in two_losses] == [e for _, e, _ in one_losses]      # same examples per step
    # gradients are summed in another order across ranks: equal to float rounding, not bit for bit
    assert [loss for _, _, loss in two_losses] == pytest.approx([loss for _, _, loss in one_losses], rel=1e-4), method
    two_updates, one_updates = _updates(two_run), _updates(one_run)
    assert two_updates.keys() == one_updates.keys()
    # SDS-LoRA's bases are defined up to a rotation within (near-)equal singular values, which Adam's
    # element-wise steps do not ignore: its update agrees to 1e-2, the others' to 1e-3
    tolerance = 1e-2 if method == "sds_lora" else 1e-3
    for key, update in one_updates.items():
        assert (two_updates[key] - update).abs().max() <= tolerance * update.abs().max(), (method, key)
    assert two["eval"]["tasks"] == one["eval"]["tasks"], method
    assert _generations(two_run) == _generations(one_run), method


def _torchrun(results: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "run.py", *args,
         *SHRUNK, "trainer.per_device_train_batch_size=4", f"paths.results_dir={results}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.slow
def test_two_processes_equal_one_at_the_same_global_batch(tmp_path: Path, one_compute_thread: None) -> None:
    """``torchrun --nproc_per_node 2`` over a sweep of methods (per-device batch 4) against one process at batch
    8: one run directory per cell written by the main process, the same losses, update and scores."""
    two_dir, one_dir = tmp_path / "two", tmp_path / "one"
    launch = _torchrun(two_dir, "-m", f"method={','.join(METHODS)}")
    assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-3000:]
    (sweep,) = list(two_dir.rglob("sweep.json"))                 # one sweep record, written by the main process
    assert read_json(sweep)["counts"] == {"finished": len(METHODS)}
    assert len(list(two_dir.rglob("metrics.json"))) == len(METHODS)   # one run directory per cell, not per rank

    for method in METHODS:
        (two_run,) = list((two_dir / "runs").glob(f"tiny_lm-{method}-*"))
        _assert_equal_to_one_process(two_run, one_dir, f"method={method}")

    # the table builder sees two launches of one global batch; a run at another global batch is refused
    runs = collect_runs(two_dir / "runs") + collect_runs(one_dir / "runs")
    spec = {"name": "t", "row_keys": ["model", "method"],
            "columns": [{"header": "EM", "task": "arith_word_problems", "metric": "exact_match"}]}
    assert "| tiny_lm | lora |" in build_table(spec, runs)
    runs[1].run["global_train_batch"] = 4
    with pytest.raises(ConfigError, match="different global batch sizes"):
        build_table(spec, runs)


@pytest.mark.slow
def test_altlora_on_two_processes_with_its_ddp_setting(tmp_path: Path, one_compute_thread: None) -> None:
    """AltLoRA freezes the inactive factor by switching requires_grad, which DDP does not follow: refused on
    several processes, and equal to one process with method.freeze_inactive=false."""
    launch = _torchrun(tmp_path / "two", "method=altlora", "method.freeze_inactive=false")
    assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-3000:]
    (two_run,) = list((tmp_path / "two" / "runs").iterdir())
    _assert_equal_to_one_process(two_run, tmp_path / "one", "method=altlora", "method.freeze_inactive=false")


def test_a_setting_ddp_breaks_is_refused_before_anything_runs(results_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    altlora = build(compose("method=altlora").method, _convert_="all")
    check_launch(altlora, {}, processes=1)
    with pytest.raises(ConfigError, match="method.freeze_inactive=false"):
        check_launch(altlora, {}, processes=2)
    monkeypatch.setenv("WORLD_SIZE", "2")                    # as torchrun launches every rank
    with pytest.raises(ConfigError, match="altlora on 2 processes"):
        run(compose("method=altlora", runs_dir=results_dir))
    assert not results_dir.exists()
    check_launch(build(compose("method=altlora", "method.freeze_inactive=false").method, _convert_="all"), {})


@pytest.mark.parametrize("method", ["lora", "sds_lora", "lora_pro"])
@pytest.mark.parametrize("launch", ["trainer", "accelerate"])
@pytest.mark.parametrize("sharded", ["FSDP", "DeepSpeed"])
def test_sharded_launches_are_refused_with_the_alternative(method: str, launch: str, sharded: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    instance = build(compose(f"method={method}").method, _convert_="all")
    if launch == "trainer":   # trainer.fsdp=full_shard / trainer.deepspeed=ds.json, passed to TrainingArguments
        trainer = {"fsdp": "full_shard"} if sharded == "FSDP" else {"deepspeed": "ds_zero2.json"}
    else:                     # accelerate launch --use_fsdp / --use_deepspeed tells the process by environment
        trainer = {}
        monkeypatch.setenv("ACCELERATE_USE_FSDP" if sharded == "FSDP" else "ACCELERATE_USE_DEEPSPEED", "true")
    assert sharding(trainer) == sharded
    with pytest.raises(ConfigError) as refused:
        check_launch(instance, trainer, processes=2)
    message = str(refused.value)
    assert message.startswith(f"{sharded} is not supported") and "torchrun --nproc_per_node N" in message
    assert "\n" not in message and (instance.needs_whole_factors in message)
    assert bool(instance.needs_whole_factors) == (method != "lora")


def test_slurm_tasks_without_ranks_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    lora = build(compose("method=lora").method, _convert_="all")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")          # srun of 4 tasks (submitit tasks_per_node=4)
    with pytest.raises(ConfigError, match="tasks_per_node=1"):
        check_launch(lora, {})
    monkeypatch.setenv("WORLD_SIZE", "4")                    # srun torchrun / a launcher that sets the ranks
    check_launch(lora, {})


def test_fsdp_from_the_command_line_exits_2_with_one_line(results_dir: Path) -> None:
    result = subprocess.run([sys.executable, "run.py", "+trainer.fsdp=full_shard", f"paths.results_dir={results_dir}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "FSDP is not supported" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert not (results_dir / "runs").exists()


@pytest.mark.slow
def test_a_failed_cell_under_submitit_is_summarised_like_in_process(results_dir: Path) -> None:
    """The SLURM path without SLURM: hydra/launcher=submitit_local runs the cell in another process; a failure
    there gives the basic launcher's summary (one line per failed cell, sweep.json, exit 1), not a traceback."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "run.py", "-m", "hydra/launcher=submitit_local", "rank=0",
                             f"paths.results_dir={results_dir}"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output and "Error executing job" not in output
    assert "sweep: 1 of 1 cells failed" in output
    assert "#0 rank=0" in output and "ConfigError: rank=0 is invalid" in output
    (sweep,) = list(results_dir.rglob("sweep.json"))
    (cell,) = read_json(sweep)["cells"]
    assert cell["state"] == "failed" and cell["error"].startswith("ConfigError: rank=0")
