"""Same config and seed → the same numbers and the same adapter, bit for bit on CPU; the seed reaches the data
order, the adapter initialisation and dropout.

All runs share this process, so the second run starts from whatever global RNG state the first one left:
it only matches if the runner seeds everything random itself.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from conftest import compose
from loralab.runner import run
from loralab.training import trainer as trainer_module

# Small batches and two adapted projections keep each step cheap; what is tested does not depend on either.
SHORT = ["trainer.max_steps=3", "trainer.save_steps=100", "trainer.logging_steps=1",
         "trainer.per_device_train_batch_size=2", "method.target_modules=[q_proj,v_proj]", "eval.tasks.0.data.n=4"]


pytestmark = pytest.mark.usefixtures("one_compute_thread")


class _InitialAdapter(TrainerCallback):
    """Snapshots the adapter as training starts, i.e. right after its initialisation."""

    def __init__(self, sink: dict[str, torch.Tensor]) -> None:
        self.sink = sink

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.sink.update({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})


def _run(results: Path, *overrides: str) -> dict[str, Any]:
    initial: dict[str, torch.Tensor] = {}
    original = trainer_module.build_trainer
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("loralab.runner.build_trainer",
                      lambda *a, **k: original(*a, **{**k, "extra_callbacks": [*k.get("extra_callbacks", ()),
                                                                              _InitialAdapter(initial)]}))
        metrics = run(compose(*SHORT, *overrides, runs_dir=results))
    (run_dir,) = (results / "runs").iterdir()
    logs = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    return {
        "metrics": metrics,
        "initial": initial,
        "adapter": load_file(run_dir / "adapter" / "adapter_model.safetensors"),
        # per-step loss and gradient norm: the whole trajectory, not just its end
        "trajectory": [(e["step"], e["loss"], e["grad_norm"]) for e in logs if "loss" in e],
    }


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def _lora_a(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if "lora_A" in k}


@pytest.mark.slow
def test_same_seed_same_result_and_the_seed_reaches_data_init_and_dropout(tmp_path: Path) -> None:
    first = _run(tmp_path / "a", "method.dropout=0.1")
    second = _run(tmp_path / "b", "method.dropout=0.1")
    other_seed = _run(tmp_path / "c", "method.dropout=0.1", "seed=1")
    no_dropout = _run(tmp_path / "d", "method.dropout=0.0")

    # identical: trajectory, metrics (all but wall time/provenance), initial and final adapter
    assert first["trajectory"] == second["trajectory"] and len(first["trajectory"]) == 3
    assert first["metrics"]["train"] == second["metrics"]["train"]
    assert first["metrics"]["eval"] == second["metrics"]["eval"]
    assert _same(first["initial"], second["initial"]) and first["initial"]
    assert _same(first["adapter"], second["adapter"])

    # another seed: another adapter initialisation (A is random; B starts at zero either way) ...
    assert not _same(_lora_a(first["initial"]), _lora_a(other_seed["initial"]))
    # ... and another data order: with B = 0 the first step's loss is the base model's on the first batch,
    # independent of A and of dropout, so it differs only if the batch does
    assert first["trajectory"][0][1] != other_seed["trajectory"][0][1]
    assert first["trajectory"][0][1] == no_dropout["trajectory"][0][1]
    assert not _same(first["adapter"], other_seed["adapter"])

    # dropout: same seed, so same data and initialisation; the adapters differ only through dropout masks,
    # which the identical repeat above shows are drawn from the seeded generator
    assert _same(first["initial"], no_dropout["initial"])
    assert not _same(first["adapter"], no_dropout["adapter"])


def test_a_run_that_pretrains_the_embedded_model_ends_as_one_that_finds_it_cached(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first run of a config on a fresh machine (cold model cache) and every later one (warm cache) share a
    run directory name, and a finished run is never redone: both must give the same result."""
    monkeypatch.setenv("LORALAB_CACHE", str(tmp_path / "cache"))  # empty: the first run pretrains in-process
    small = ["model.builder.steps=5", "+model.builder.corpus_size=500"]  # a small recipe keeps the build short
    cold = _run(tmp_path / "cold", *small, "method.dropout=0.1")
    assert list((tmp_path / "cache" / "embedded").glob("tiny_lm-*/config.json")), "the first run did not build"
    warm = _run(tmp_path / "warm", *small, "method.dropout=0.1")

    assert cold["metrics"]["run"]["name"] == warm["metrics"]["run"]["name"]
    assert _same(cold["initial"], warm["initial"]) and cold["initial"]
    assert cold["trajectory"] == warm["trajectory"]
    assert cold["metrics"]["train"] == warm["metrics"]["train"]
    assert cold["metrics"]["eval"] == warm["metrics"]["eval"]
    assert _same(cold["adapter"], warm["adapter"])
