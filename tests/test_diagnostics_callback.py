"""DiagnosticsCallback inside a real HF Trainer run (tiny Llama + PEFT LoRA) and on SDS-style layers."""
from __future__ import annotations

import math
import os

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from loralab.diagnostics.callback import DiagnosticsCallback, find_sds_bases, lora_layers
from loralab.diagnostics.metrics import (
    cosine_similarity,
    lora_effective_gradient,
    orthonormal_basis,
    sds_effective_gradient,
    stable_rank,
)
from loralab.models.tiny import tiny_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class _GradCheck(TrainerCallback):
    """Runs after the diagnostics callback: on diagnostic steps, the captured G must reproduce .grad."""

    def __init__(self, diag: DiagnosticsCallback) -> None:
        self.diag, self.checked = diag, 0

    def on_pre_optimizer_step(self, args, state, control, **kw):  # noqa: ANN001
        if not self.diag.full_gradients:
            return
        for name, mod in self.diag._layers.items():
            g = self.diag.full_gradients[name].double()
            a, b = mod.lora_A["default"].weight, mod.lora_B["default"].weight
            s = mod.scaling["default"]
            # ∇A = s·BᵀG and ∇B = s·G·Aᵀ (dropout 0): G summed over both accumulation micro-batches.
            assert torch.allclose(b.grad.double(), s * g @ a.double().T, atol=1e-5, rtol=1e-3)
            assert torch.allclose(a.grad.double(), s * b.double().T @ g, atol=1e-5, rtol=1e-3)
            rec = self.diag.records[-1]["layers"][name]
            expected = cosine_similarity(g, lora_effective_gradient(g, a, b, s))
            assert rec["align"] == pytest.approx(expected, rel=1e-4)
            self.checked += 1
        self.diag.full_gradients = {}


def _dataset(n: int = 24, seq: int = 12) -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(3, 64, (n, seq), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": r, "labels": r, "attention_mask": torch.ones_like(r)} for r in ids]


def test_callback_in_trainer(tmp_path) -> None:  # noqa: ANN001
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    diag = DiagnosticsCallback(interval=2, max_layers=3, keep_full_gradients=True)
    check = _GradCheck(diag)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=4,
        learning_rate=1e-2, max_grad_norm=0.0, use_cpu=True, report_to=[], logging_steps=1, save_strategy="no",
    )
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(), callbacks=[diag, check])
    trainer.train()
    assert [r["step"] for r in diag.records] == [1, 2, 4]
    assert check.checked == 3 * 3  # 3 layers × 3 diagnostic steps
    assert len(lora_layers(model)) == 6 and len(diag.records[0]["layers"]) == 3
    # B = 0 at step 1: ∇A = s·BᵀG = 0 and B has no spectrum yet.
    first = diag.records[0]
    assert first["diag/erank_grad_A"] == 0.0 and first["diag/srank_B"] == 0.0 and first["diag/norm_dW"] == 0.0
    assert 1.0 <= first["diag/erank_grad_B"] <= 4.0
    last = diag.records[-1]
    for key in ("erank_grad_A", "erank_grad_B", "srank_A", "srank_B", "srank_dW", "align", "subspace_A", "subspace_B"):
        assert math.isfinite(last[f"diag/{key}"]), key
    assert 0.0 < last["diag/subspace_B"] <= 1.0 + 1e-9 and 0.0 < last["diag/align"] <= 1.0
    # Summaries reach the Trainer's log history with the Trainer's step convention; no per-layer blobs there.
    logged = [e for e in trainer.state.log_history if "diag/align" in e]
    assert [e["step"] for e in logged] == [1, 2, 4] and all("layers" not in e for e in logged)
    # Per-layer mean equals the summary.
    vals = [m["srank_dW"] for m in last["layers"].values()]
    assert last["diag/srank_dW"] == pytest.approx(sum(vals) / len(vals))
    # Hooks are gone after training: a forward/backward leaves no captured gradient behind.
    assert diag._handles == []
    batch = _dataset(2)
    out = model(input_ids=torch.stack([b["input_ids"] for b in batch]),
                labels=torch.stack([b["labels"] for b in batch]))
    out.loss.backward()
    assert diag._grads == {} and diag.full_gradients == {}


class _Holder(nn.Module):
    def __init__(self, qa: torch.Tensor, qb: torch.Tensor, on: bool) -> None:
        super().__init__()
        self.register_buffer("q_a", qa)
        self.register_buffer("q_b", qb)
        self.register_buffer("sds_on", torch.tensor(on))


def _peft_mlp() -> nn.Module:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(10, 12), nn.Tanh(), nn.Linear(12, 6))
    model = get_peft_model(base, LoraConfig(r=3, lora_alpha=6, target_modules=["0", "2"], init_lora_weights=False))
    return model


def test_find_sds_bases_layouts() -> None:
    model = _peft_mlp()
    layer = next(iter(lora_layers(model).values()))  # 10 → 12
    assert find_sds_bases(layer, "default") is None  # plain LoRA
    qa, qb = orthonormal_basis(torch.randn(10, 3)).float(), orthonormal_basis(torch.randn(12, 3)).float()
    layer.lora_sds = nn.ModuleDict({"default": _Holder(qa, qb, on=False)})
    assert find_sds_bases(layer, "default") is None  # still in warm-up
    layer.lora_sds["default"].sds_on.fill_(True)
    got = find_sds_bases(layer, "default")
    assert got is not None and torch.equal(got[0], qa) and torch.equal(got[1], qb)
    del layer.lora_sds
    layer.register_buffer("sds_QA", qa.T.contiguous())  # stored r×n: must come back n×r
    layer.register_buffer("sds_QB", qb.clone())
    got = find_sds_bases(layer, "default")
    assert got is not None and got[0].shape == (10, 3) and torch.equal(got[0], qa)


def test_measure_layer_uses_sds_formulas() -> None:
    model = _peft_mlp()
    layers = lora_layers(model)
    name, layer = next(iter(layers.items()))
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    qa, qb = orthonormal_basis(torch.randn(10, 3)).float(), orthonormal_basis(torch.randn(12, 3)).float()
    layer.lora_sds = nn.ModuleDict({"default": _Holder(qa, qb, on=True)})
    diag = DiagnosticsCallback(interval=1, max_layers=4, keep_full_gradients=True)
    state = type("S", (), {"global_step": 0, "log_history": []})()
    args = type("A", (), {"gradient_checkpointing": False})()
    diag.on_train_begin(args, state, None, model=model)
    diag.on_step_begin(args, state, None, model=model)
    model(torch.randn(5, 10)).pow(2).sum().backward()
    diag.on_pre_optimizer_step(args, state, None)
    rec = diag.records[0]["layers"][name]
    assert rec["sds"] == 1.0
    g = diag.full_gradients[name]
    s = layer.scaling["default"]
    assert rec["align"] == pytest.approx(cosine_similarity(g, sds_effective_gradient(g, qa, qb, s)), rel=1e-5)
    assert rec["align"] != pytest.approx(cosine_similarity(g, lora_effective_gradient(g, a, b, s)), rel=1e-3)
    dw = s * (qb @ a.detach() + b.detach() @ qa.T)
    assert rec["srank_dW"] == pytest.approx(stable_rank(dw), rel=1e-6)
    assert rec["norm_dW"] == pytest.approx(float(dw.norm()), rel=1e-6)
    other = [n for n in layers if n != name][0]
    assert diag.records[0]["layers"][other]["sds"] == 0.0  # the other layer has no bases: plain LoRA path
    assert state.log_history and state.log_history[0]["step"] == 1


def test_layer_selection_spreads_over_depth() -> None:
    model = get_peft_model(tiny_llama(num_hidden_layers=4), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    names = list(lora_layers(model))
    assert len(names) == 8
    for k, expected in ((1, [names[0]]), (2, [names[0], names[-1]]), (3, [names[0], names[4], names[-1]]), (20, names)):
        diag = DiagnosticsCallback(max_layers=k)
        assert list(diag._select(model)) == expected
    with pytest.raises(ValueError):
        DiagnosticsCallback(interval=0)
