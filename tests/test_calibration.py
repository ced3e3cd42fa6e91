"""Data-driven initialisations get exactly the calibration data their method declares: the runner provides the
first N training examples in the declared batches, refuses (one line, nothing written) when the training set has
fewer, and records what the method got in metrics.json."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import compose
from loralab.errors import ConfigError
from loralab.instantiate import build
from loralab.methods.base import CalibrationRequest, calibration_batches
from loralab.runner import run


class Stop(Exception):
    """Raised by a spy to end a run once the initialisation has seen its data (nothing is written by then)."""


def _rows(n: int) -> list[dict[str, int]]:
    return [{"i": i} for i in range(n)]


def _collate(rows: list[dict[str, int]]) -> dict[str, torch.Tensor]:
    return {"i": torch.tensor([r["i"] for r in rows])}


def test_provider_yields_exactly_the_first_samples_in_declared_batches() -> None:
    request = CalibrationRequest(samples=7, batch_size=3, option="method.x=7")
    batches = calibration_batches(request, _rows(20), _collate, "m")
    assert [b["i"].tolist() for b in batches()] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [b["i"].tolist() for b in batches()] == [[0, 1, 2], [3, 4, 5], [6]]  # re-iterable, same data
    assert request.batches == 3
    assert request.record() == {"source": "the first `samples` training examples", "samples": 7, "batch_size": 3,
                                "batches": 3, "option": "method.x=7"}


def test_provider_refuses_a_request_larger_than_the_training_set() -> None:
    request = CalibrationRequest(samples=128, batch_size=2, option="method.grad_batches=64 × method.grad_batch_size=2")
    with pytest.raises(ConfigError) as err:
        calibration_batches(request, _rows(10), _collate, "lora_ga")
    message = str(err.value)
    assert "\n" not in message
    assert all(p in message
               for p in ("method=lora_ga", "128 calibration samples", "grad_batches=64", "has 10 examples"))


@pytest.mark.parametrize(
    ("overrides", "request_"),
    [
        (["method=lora_ga"], CalibrationRequest(128, 2, "method.grad_batches=64 × method.grad_batch_size=2")),
        (["method=corda"], CalibrationRequest(256, 1, "method.calibration_samples=256")),
        (["method=loram", "method.tracking=corda"], CalibrationRequest(256, 1, "method.calibration_samples=256")),
        (["method=loram"], None),
        (["method=lora"], None),
    ],
)
def test_methods_declare_what_their_yaml_asks_for(overrides: list[str], request_: CalibrationRequest | None) -> None:
    method = build(compose(*overrides).method, _convert_="all")
    assert method.calibration_request() == request_


def test_corda_without_a_sample_count_cannot_run() -> None:
    method = build(compose("method=corda", "method.calibration_samples=null").method, _convert_="all")
    with pytest.raises(ConfigError, match="calibration_samples=null"):
        method.calibration_request()


def test_runner_gives_lora_ga_its_64_batches_of_2_first_training_examples(monkeypatch: pytest.MonkeyPatch,
                                                                         results_dir: Path) -> None:
    import loralab.methods.lora_ga as lora_ga
    from loralab.data.training_data import training_examples
    from loralab.models.loading import load_model

    seen: list[dict[str, torch.Tensor]] = []

    def spy(model, layers, batches, max_batches):
        seen.extend(batches())
        raise Stop

    monkeypatch.setattr(lora_ga, "estimate_gradients", spy)
    cfg = compose("method=lora_ga", runs_dir=results_dir)   # the embedded task: 2,000 examples, batch 32
    with pytest.raises(Stop):
        run(cfg)
    assert [len(b["input_ids"]) for b in seen] == [2] * 64
    _, tokenizer = load_model(cfg.model)
    examples, collator = training_examples(cfg.dataset, tokenizer)
    for n, batch in enumerate(seen):
        expected = collator(examples[2 * n: 2 * n + 2])
        assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert not results_dir.exists()                           # stopped in the initialisation: nothing written


@pytest.mark.parametrize(("overrides", "phrases"), [
    (["method=lora_ga", "method.grad_batches=1001"], ["method=lora_ga", "2002 calibration samples", "has 2000"]),
    (["method=corda", "method.calibration_samples=5000"], ["method=corda", "5000 calibration samples", "has 2000"]),
])
def test_runner_stops_before_writing_when_the_data_set_is_too_small(overrides: list[str], phrases: list[str],
                                                                    results_dir: Path) -> None:
    with pytest.raises(ConfigError) as err:
        run(compose(*overrides, runs_dir=results_dir))
    assert all(p in str(err.value) for p in phrases), str(err.value)
    assert not results_dir.exists()


def test_metrics_record_the_calibration_data_the_method_got(results_dir: Path) -> None:
    metrics = run(compose("method=corda", "method.calibration_samples=3", "trainer.max_steps=1",
                          "trainer.save_steps=1", "eval.tasks.0.data.n=2", runs_dir=results_dir))
    assert metrics["train"]["calibration"] == {
        "source": "the first `samples` training examples", "samples": 3, "batch_size": 1, "batches": 3,
        "option": "method.calibration_samples=3"}
    loram = run(compose("method=loram", "trainer.max_steps=1", "trainer.save_steps=1", "eval.tasks.0.data.n=2",
                        runs_dir=results_dir))
    assert loram["train"]["calibration"] is None              # LoRAM's init looks at no data
    step0 = loram["train"]["init"]["step0_weight_error"]
    assert step0["layers"] == 28 and step0["max"] < 1e-6        # every adapted layer; fp32 stores W_res exactly
