"""Conformance suite: every method × every tiny architecture family, five promises each.

For each (method, model) pair, with the method built from its real YAML (``conf/method/<name>.yaml``):

1. step 0 — the prepared model computes what the pretrained one does (where the method promises it);
2. save → load — the saved weights, loaded the way the method documents onto a *fresh* pretrained base, give
   the trained model's outputs;
3. merge — on a non-trivial adapter, ``method.merge`` gives the unmerged outputs and leaves a plain model;
4. training — a few steps through 🤗 ``Trainer`` with the method's own optimiser and callbacks lower the loss;
5. trainable parameters — exactly r·(d_in + d_out) per adapted linear (+ the method's extras, + the
   ``modules_to_save`` copies), or every parameter for full fine-tuning.

What differs between methods lives in ``METHODS`` and between models in ``MODELS`` (registries, not branches).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_model
from torch import nn
from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments, default_data_collator
from transformers.utils import ModelOutput

from conftest import compose
from loralab.instantiate import build
from loralab.methods.base import Method, count_trainable, matching_linears
from loralab.methods.sds_lora import sds_layers
from loralab.models.tiny import TinyMLP, tiny_llama, tiny_mlp, tiny_vit

RANK, ALPHA = 4, 8  # s = 2 (alpha/r) or 4 (alpha/√r): an export that forgets the scaling shows up
# fp32 tolerances: residual inits (W − s·B0A0 + s·B0A0) and merges differ from the reference by rounding only.
ATOL, RTOL = 3e-5, 1e-4
# A "non-trivial" adapter must move some output by far more than the tolerance, or the equalities prove nothing.
MIN_CHANGE = 1e-2
Batch = dict[str, torch.Tensor]


# ================================================================================================ models
@dataclass
class RegressionOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class RegressionMLP(TinyMLP):
    """The project's tiny MLP with an HF-style ``(x, labels) → (loss, logits)`` interface.

    Why: LoRA-GA's gradient estimate and the Trainer both read ``model(**batch).loss``; the bare TinyMLP returns a
    tensor. The layers (names, shapes, weights) are TinyMLP's own, so the MLP is adapted exactly as built.
    """

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> RegressionOutput:
        logits = super().forward(x)
        return RegressionOutput(loss=None if labels is None else F.mse_loss(logits, labels), logits=logits)


def regression_mlp() -> RegressionMLP:
    model = RegressionMLP()
    model.load_state_dict(tiny_mlp(seed=0).state_dict())  # the same weights as loralab's tiny_mlp()
    return model


def mlp_batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(16, 16, generator=g), "labels": torch.randn(16, 8, generator=g)}


def llama_batch(seed: int) -> Batch:
    ids = torch.randint(3, 64, (4, 12), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def vit_batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(8, 1, 8, 8, generator=g), "labels": torch.randint(0, 5, (8,), generator=g)}


@dataclass(frozen=True)
class ModelCase:
    build: Callable[[], nn.Module]  # a fresh pretrained base, identical weights on every call
    targets: list[str]
    modules_to_save: list[str]
    batch: Callable[[int], Batch]  # seed → a labelled batch


MODELS: dict[str, ModelCase] = {
    # The MLP regresses onto new targets: its head is new task-specific output, so it trains in full.
    "mlp": ModelCase(regression_mlp, ["fc1", "fc2"], ["head"], mlp_batch),
    # The LM keeps its head frozen (same vocabulary), like the runner's tiny_lm config.
    "llama": ModelCase(lambda: tiny_llama(seed=0), ["q_proj", "v_proj", "up_proj"], [], llama_batch),
    # New classes: the classifier trains in full, like conf/model/tiny_vit.yaml.
    "vit": ModelCase(lambda: tiny_vit(seed=0), ["q_proj", "v_proj", "fc1"], ["classifier"], vit_batch),
}


def without_labels(batch: Batch) -> Batch:
    return {k: v for k, v in batch.items() if k != "labels"}


@torch.no_grad()
def outputs(model: nn.Module, batch: Batch) -> torch.Tensor:
    model.eval()
    return model(**without_labels(batch)).logits


@torch.no_grad()
def loss_of(model: nn.Module, batch: Batch) -> float:
    model.eval()
    return float(model(**batch).loss)


def calibration_for(case: ModelCase) -> Callable[[], Iterator[Batch]]:
    """Two labelled batches, as the runner's ``calibration()`` yields (CorDA covariances, LoRA-GA gradients)."""

    def batches() -> Iterator[Batch]:
        for seed in (11, 12):
            yield case.batch(seed)

    return batches


# =============================================================================================== methods
def load_peft(base: nn.Module, out_dir: Path, method: Method) -> nn.Module:
    """Plain PEFT adapters (converted ones included: residual inits and SDS's rank-2r export)."""
    return PeftModel.from_pretrained(base, str(out_dir))


def load_full(base: nn.Module, out_dir: Path, method: Method) -> nn.Module:
    load_model(base, str(out_dir / "model.safetensors"))
    return base


def lora_count(base: nn.Module, case: ModelCase, rank: int) -> int:
    return sum(rank * (lin.in_features + lin.out_features) for lin in matching_linears(base, case.targets).values())


def dora_count(base: nn.Module, case: ModelCase, rank: int) -> int:
    # + one magnitude entry per output unit of every adapted layer
    return lora_count(base, case, rank) + sum(lin.out_features for lin in matching_linears(base, case.targets).values())


def every_parameter(base: nn.Module, case: ModelCase, rank: int) -> int:
    return sum(p.numel() for p in base.parameters())


def sds_switched_on(model: nn.Module) -> None:
    """The Trainer must have run SDS's warm-up transition: every layer is in its SDS phase."""
    layers = sds_layers(model)
    assert layers, "no SDS layers found"
    still_warm = [name for name, mod, ad in layers if not mod.lora_variant[ad].state(mod, ad).active]
    assert not still_warm, f"the warm-up transition never ran for {still_warm}"


@dataclass(frozen=True)
class Expect:
    """What the suite expects of one method."""

    overrides: tuple[str, ...] = ()  # extra Hydra overrides (schedules shrunk to the suite's few steps)
    lr: float = 1e-2
    preserves_init: bool = True
    loader: Callable[[nn.Module, Path, Method], nn.Module] = load_peft
    # Trainable parameters of the adapter proper (modules_to_save copies are added by the test).
    adapter_params: Callable[[nn.Module, ModelCase, int], int] = lora_count
    with_modules_to_save: bool = True  # False where modules_to_save means nothing (everything trains)
    after_training: Callable[[nn.Module], None] | None = None


# SDS's warm-up is 10 steps in the YAML; 2 here so the suite's few steps cross the transition and refreshes.
SDS = Expect(overrides=("method.warmup_steps=2",), after_training=sds_switched_on)

METHODS: dict[str, Expect] = {
    "full_ft": Expect(lr=1e-3, loader=load_full, adapter_params=every_parameter, with_modules_to_save=False),
    "lora": Expect(),
    "rslora": Expect(),
    "lora_plus": Expect(lr=2e-3),  # B's lr is 16× this
    "dora": Expect(adapter_params=dora_count),
    "pissa": Expect(),
    "milora": Expect(),
    "olora": Expect(),
    # calibration_for() holds two batches: CorDA's MLP case counts a whole batch as one sample
    "corda": Expect(overrides=("method.calibration_samples=2",)),
    "loram": Expect(),
    "sds_lora": SDS,
    "sds_ortho": SDS,
    "lora_ga": Expect(overrides=("method.grad_batches=2",)),
    "lora_pro": Expect(),
    "scaled_adamw": Expect(),
    # AltLoRA (not "+") has no second moment: its step is lr × the r×r-preconditioned momentum, gradient-descent
    # sized rather than Adam's ≈ lr per entry, so the Adam-scale 1e-2 barely moves the tiny models in 6 steps.
    "altlora": Expect(lr=0.2),
    # VeRA trains only the vectors b (out) and d (rank) per layer; its update b·B·d·A is tiny at first
    "vera": Expect(lr=0.1, adapter_params=lambda base, case, rank: sum(
        m.out_features + rank for m in matching_linears(base, case.targets).values())),
}

PAIRS = [pytest.param(m, k, id=f"{m}-{k}") for m in METHODS for k in MODELS]


@functools.lru_cache(maxsize=None)
def method_config(name: str) -> Any:
    """The composed ``cfg.method`` node (composition is slow; instantiation is done fresh per test)."""
    return compose(f"method={name}", f"rank={RANK}", f"alpha={ALPHA}", *METHODS[name].overrides).method


def make_method(name: str) -> Method:
    method = build(method_config(name), _convert_="all")
    assert isinstance(method, Method)
    return method


def prepared(name: str, key: str, with_modules_to_save: bool = True) -> tuple[Method, nn.Module]:
    """Build the method from its YAML and apply it to a fresh base, as the runner does (validate → prepare)."""
    method, case = make_method(name), MODELS[key]
    base = case.build()
    method.validate(base, case.targets)
    to_save = case.modules_to_save if with_modules_to_save else []
    return method, method.prepare(base, case.targets, to_save, calibration_for(case))


def trainer_args(out_dir: Path, lr: float, steps: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out_dir), max_steps=steps, learning_rate=lr, weight_decay=0.0, lr_scheduler_type="constant",
        per_device_train_batch_size=64, use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
        disable_tqdm=True, remove_unused_columns=False, seed=0, dataloader_num_workers=0,
    )


@torch.no_grad()
def perturb(model: nn.Module, seed: int) -> None:
    """Stand-in for an optimiser step: move every trainable tensor by a seeded random amount."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.requires_grad:
            p.add_(0.05 * torch.randn(p.shape, generator=g).to(p.dtype))


def make_nontrivial(method: Method, model: nn.Module, out_dir: Path, steps: int = 5) -> None:
    """``steps`` fake optimiser steps with the method's callbacks fired around each, as the Trainer fires them.

    Why callbacks: SDS-LoRA's warm-up transition and basis refreshes happen in them, and its save/merge must be
    checked in the SDS phase (where the export is a genuine rank-2r adapter), not only in the plain-LoRA warm-up.
    """
    callbacks = method.callbacks()
    args = trainer_args(out_dir, lr=0.0, steps=steps)
    state, control = TrainerState(max_steps=steps), TrainerControl()
    model.train()
    for step in range(1, steps + 1):
        for cb in callbacks:
            cb.on_step_begin(args, state, control, model=model)
        perturb(model, seed=step)
        state.global_step = step
        for cb in callbacks:
            cb.on_step_end(args, state, control, model=model, optimizer=None)


def plain_type(key: str) -> type[nn.Module]:
    return type(MODELS[key].build())


# ================================================================================================= tests
@pytest.mark.parametrize(("name", "key"), PAIRS)
def test_step_zero_output(name: str, key: str) -> None:
    case = MODELS[key]
    x = case.batch(7)
    reference = outputs(case.build(), x)
    method, model = prepared(name, key)
    assert method.preserves_init is METHODS[name].preserves_init, "the method's claim disagrees with the registry"
    out = outputs(model, x)
    if METHODS[name].preserves_init:
        torch.testing.assert_close(out, reference, atol=ATOL, rtol=RTOL)
    else:
        assert (out - reference).abs().max() > MIN_CHANGE


@pytest.mark.parametrize(("name", "key"), PAIRS)
def test_save_load_round_trip(name: str, key: str, tmp_path: Path) -> None:
    case = MODELS[key]
    x = case.batch(7)
    method, model = prepared(name, key)
    make_nontrivial(method, model, tmp_path / "trainer")
    trained = outputs(model, x)
    assert (trained - outputs(case.build(), x)).abs().max() > MIN_CHANGE, "the adapter did not change the model"

    path = method.save(model, tmp_path / "adapter")
    assert Path(path).is_file() and Path(path).suffix == ".safetensors"
    torch.testing.assert_close(outputs(model, x), trained)  # saving leaves the in-memory model as it was
    loaded = METHODS[name].loader(case.build(), tmp_path / "adapter", method)
    torch.testing.assert_close(outputs(loaded, x), trained, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(("name", "key"), PAIRS)
def test_merge_matches_unmerged(name: str, key: str, tmp_path: Path) -> None:
    case = MODELS[key]
    x = case.batch(7)
    method, model = prepared(name, key)
    make_nontrivial(method, model, tmp_path)
    unmerged = outputs(model, x)
    assert (unmerged - outputs(case.build(), x)).abs().max() > MIN_CHANGE, "the adapter did not change the model"

    merged = method.merge(model)
    assert type(merged) is plain_type(key), f"merge returned {type(merged).__name__}, not the plain model"
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules()), "adapter layers survived the merge"
    torch.testing.assert_close(outputs(merged, x), unmerged, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(("name", "key"), PAIRS)
def test_training_lowers_loss(name: str, key: str, tmp_path: Path) -> None:
    expect, case = METHODS[name], MODELS[key]
    batch = case.batch(3)
    # No modules_to_save here: a fully trained head would lower the loss even if the method's update were broken.
    # (The head's save/merge/count are covered by the other checks.)
    method, model = prepared(name, key, with_modules_to_save=False)
    before = loss_of(model, batch)

    # The runner's path: method optimiser (None → Trainer's AdamW) and method callbacks inside a real Trainer,
    # full-batch steps on one fixed batch, so the loss must go down unless the update is wrong.
    args = trainer_args(tmp_path, expect.lr, steps=6)
    examples = [{k: v[i] for k, v in batch.items()} for i in range(len(batch["labels"]))]
    trainer = Trainer(
        model=model, args=args, train_dataset=examples, data_collator=default_data_collator,
        optimizers=(method.build_optimizer(model, lr=args.learning_rate, weight_decay=args.weight_decay), None),
        callbacks=method.callbacks(),
    )
    trainer.train()

    after = loss_of(model, batch)
    # Deterministic full-batch steps: a working update gains ≥ 2 % on every pair; 1 % separates it from a no-op.
    assert after < 0.99 * before, f"loss {before:.5f} → {after:.5f}"
    if expect.after_training is not None:
        expect.after_training(model)


@pytest.mark.parametrize(("name", "key"), PAIRS)
def test_trainable_parameter_count(name: str, key: str) -> None:
    expect, case = METHODS[name], MODELS[key]
    base = case.build()
    expected = expect.adapter_params(base, case, RANK)
    if expect.with_modules_to_save:
        wanted = set(case.modules_to_save)
        expected += sum(
            p.numel() for n, mod in base.named_modules() if n.rsplit(".", 1)[-1] in wanted for p in mod.parameters()
        )
    method, model = prepared(name, key)
    assert count_trainable(model) == expected
    if not method.trains_base_weights:  # the planner's count (Method.trainable_params) is what PEFT trains
        heads = expected - expect.adapter_params(base, case, RANK)
        layers = matching_linears(base, case.targets).values()
        hook = sum(method.trainable_params(m.in_features, m.out_features, method.rank) for m in layers)
        assert count_trainable(model) == hook + heads


def test_registry_covers_every_method_yaml() -> None:
    # A method added under conf/method/ without an entry here would silently escape the matrix.
    yamls = {p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "method").glob("*.yaml")}
    assert set(METHODS) == yamls
