"""SDS-LoRA and its orthogonal-only ablation: schedule, reparameterisation, gradients, export, resume."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from peft import PeftModel
from transformers import Trainer, TrainerCallback, TrainerState, TrainingArguments

from loralab.errors import ConfigError
from loralab.methods.sds_lora import (
    SDSLoRA,
    clear_optimizer_state,
    orthonormal_basis,
    refresh_steps,
    sds_layers,
)
from loralab.methods.sds_ortho import SDSOrtho
from loralab.models.tiny import tiny_llama, tiny_mlp

CONF = Path(__file__).resolve().parents[1] / "conf" / "method"
LLAMA_TARGETS = ["q_proj", "v_proj", "down_proj"]


def _perturb(model: torch.nn.Module, std: float = 0.2, seed: int = 1) -> None:
    """Random non-trivial A and B so tests do not pass by accident on B = 0 or on exact SVD factors."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, mod, ad in sds_layers(model):
            for p in (mod.lora_A[ad].weight, mod.lora_B[ad].weight):
                p.add_(torch.randn(p.shape, generator=gen) * std)


def _transition(model: torch.nn.Module) -> None:
    for _, mod, ad in sds_layers(model):
        mod.lora_variant[ad].transition(mod, ad)


def _refresh(model: torch.nn.Module) -> None:
    for _, mod, ad in sds_layers(model):
        mod.lora_variant[ad].refresh(mod, ad)


def _sds_llama(method: SDSLoRA | None = None) -> tuple[SDSLoRA, PeftModel]:
    method = method or SDSLoRA(rank=4, alpha=8.0)
    model = tiny_llama()
    method.validate(model, LLAMA_TARGETS)
    return method, method.prepare(model, LLAMA_TARGETS)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------------------- schedule
def test_phased_schedule_matches_the_documented_example() -> None:
    # docs/methods/sds_lora.md#refresh-schedule: warm-up 2, k = 3, 11 steps
    assert refresh_steps(11, 2, "phased", k=3) == [3, 4, 5, 6, 8, 11]


def test_alternative_schedules_and_front_loading() -> None:
    assert refresh_steps(11, 2, "every_step") == list(range(3, 12))
    assert refresh_steps(11, 2, "uniform", interval=3) == [5, 8, 11]
    # k = 5 over 1000 SDS steps: about (T/k)·H_5 ≈ 457 refreshes, denser in the first phase
    steps = refresh_steps(1010, 10, "phased", k=5)
    assert abs(len(steps) - 457) <= 2
    assert sum(s <= 210 for s in steps) == 200 and sum(s > 810 for s in steps) == 40


# --------------------------------------------------------------------------------------------- checks
@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("k", 0, "method.k=0"),
        ("warmup_steps", 0, "method.warmup_steps=0"),
        ("interval", -1, "method.interval=-1"),
        ("refresh", "sometimes", "method.refresh='sometimes'"),
        ("use_dora", True, "method.use_dora"),
        ("scale_rule", "sqrt", "method.scale_rule='sqrt'"),
        ("init_lora_weights", "pissa", "method.init_lora_weights='pissa'"),
    ],
)
def test_bad_options_raise_config_error(field: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        SDSLoRA(rank=4, alpha=8.0, **{field: value}).validate(tiny_mlp(), ["fc1"])
    assert needle in str(err.value)
    assert any(word in str(err.value) for word in (">=", "valid"))


def test_rank_above_layer_size_is_rejected() -> None:
    with pytest.raises(ConfigError, match="rank=17"):
        SDSLoRA(rank=17, alpha=8.0).validate(tiny_mlp(), ["fc1"])


@pytest.mark.parametrize("name", ["sds_lora", "sds_ortho"])
def test_yaml_instantiates_with_documented_defaults(name: str) -> None:
    cfg = OmegaConf.create({"rank": 4, "alpha": 8.0, "method": OmegaConf.load(CONF / f"{name}.yaml")})
    method = instantiate(cfg.method)
    assert method.name == name and method.rank == 4 and method.warmup_steps == 10
    if name == "sds_lora":
        assert (method.k, method.refresh, method.scale_rule) == (5, "phased", "rslora")
        assert method.scaling == pytest.approx(8.0 / 2.0)


# ------------------------------------------------------------------------------ reparameterisation
def test_transition_preserves_function_and_sets_svd_bases() -> None:
    method, model = _sds_llama()
    _perturb(model)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    before = model(input_ids=ids).logits.detach()
    deltas = {n: mod.lora_variant[ad].delta_weight(mod, ad) for n, mod, ad in sds_layers(model)}
    _transition(model)
    after = model(input_ids=ids).logits.detach()
    assert _rel(after, before) <= 1e-5
    s = method.scaling
    for name, mod, ad in sds_layers(model):
        st = mod.lora_variant[ad].state(mod, ad)
        a, b = mod.lora_A[ad].weight, mod.lora_B[ad].weight
        assert st.active and bool(st.sds_on)
        assert _rel(mod.lora_variant[ad].delta_weight(mod, ad), deltas[name]) <= 1e-5
        eye = torch.eye(4)
        assert torch.allclose(st.q_b.T @ st.q_b, eye, atol=1e-5)
        assert torch.allclose(st.q_a.T @ st.q_a, eye, atol=1e-5)
        # Q_B, Q_A are the singular vectors of the warm-up update, split evenly over the two branches
        sigma = torch.linalg.svdvals(deltas[name])[:4]
        assert torch.allclose(b, st.q_b * sigma / (2 * s), atol=1e-5)
        assert torch.allclose(a, sigma[:, None] * st.q_a.T / (2 * s), atol=1e-5)


def test_refresh_is_orthonormal_spans_factors_and_keeps_signs() -> None:
    _, model = _sds_llama()
    _perturb(model)
    _transition(model)
    _perturb(model, std=0.05, seed=3)  # a few "optimiser steps" later
    old = {n: mod.lora_variant[ad].state(mod, ad).q_b.clone() for n, mod, ad in sds_layers(model)}
    _refresh(model)
    for name, mod, ad in sds_layers(model):
        st = mod.lora_variant[ad].state(mod, ad)
        b = mod.lora_B[ad].weight.detach()
        assert st.q_b.dtype == torch.float32
        assert torch.allclose(st.q_b @ (st.q_b.T @ b), b, atol=1e-5)  # span(Q_B) = col(B)
        assert ((st.q_b * old[name]).sum(0) > 0).all()  # no column flipped against the previous basis
        assert torch.allclose(st.up[:, :4], st.q_b) and torch.allclose(st.down[4:], st.q_a.T)


def test_sign_alignment_undoes_a_flipped_householder_column() -> None:
    m = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    q = orthonormal_basis(m)
    flipped = q * torch.tensor([1.0, -1.0, 1.0])
    assert torch.allclose(orthonormal_basis(m, previous=flipped), flipped, atol=1e-6)


def test_bases_are_fp32_under_bf16_adapter() -> None:
    method, model = _sds_llama()
    model = model.to(torch.bfloat16)
    _perturb(model)
    _transition(model)
    _refresh(model)
    for _, mod, ad in sds_layers(model):
        st = mod.lora_variant[ad].state(mod, ad)
        assert st.q_b.dtype == torch.float32 and mod.lora_A[ad].weight.dtype == torch.bfloat16
        assert torch.allclose(st.q_a.T @ st.q_a, torch.eye(4), atol=1e-5)
    ids = torch.randint(0, 64, (1, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [m.lora_A[ad].weight.grad for _, m, ad in sds_layers(model)]
    assert torch.isfinite(loss) and all(g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in grads)


def test_transition_clears_only_adam_state_of_factors() -> None:
    _, model = _sds_llama()
    extra = torch.nn.Parameter(torch.ones(3))
    params = [p for p in model.parameters() if p.requires_grad] + [extra]
    opt = torch.optim.AdamW(params, lr=1e-3)
    model(input_ids=torch.randint(0, 64, (1, 6)), labels=torch.randint(0, 64, (1, 6))).loss.backward()
    extra.grad = torch.ones(3)
    opt.step()
    factors = [p for _, m, ad in sds_layers(model) for p in (m.lora_A[ad].weight, m.lora_B[ad].weight)]
    assert all(p in opt.state for p in factors)
    clear_optimizer_state(opt, factors)
    assert not any(p in opt.state for p in factors) and extra in opt.state


# ------------------------------------------------------------------------------------- forward & grads
def _layer_grads(method: SDSLoRA, model: PeftModel, x: torch.Tensor, target: torch.Tensor):
    """(∇A, ∇B) of fc2 through the adapter and G = ∂L/∂W_eff of fc2 through an equal merged copy."""
    loss_fn = torch.nn.functional.mse_loss
    model.zero_grad()
    loss_fn(model(x), target).backward()
    layer = model.base_model.model.fc2
    grads = layer.lora_A["default"].weight.grad.clone(), layer.lora_B["default"].weight.grad.clone()
    merged = method.merge(copy.deepcopy(model))
    merged.fc2.weight.requires_grad_(True)
    loss_fn(merged(x), target).backward()
    return grads, merged.fc2.weight.grad, layer


def test_gradients_are_projections_of_full_gradient() -> None:
    method = SDSLoRA(rank=3, alpha=6.0, scale_rule="lora")
    model = method.prepare(tiny_mlp(), ["fc1", "fc2"])
    _perturb(model, std=0.3)
    x, target = torch.randn(7, 16), torch.randn(7, 8)
    s = method.scaling
    # warm-up (plain LoRA): singular values of the factors enter the gradients
    (ga, gb), g, layer = _layer_grads(method, model, x, target)
    a, b = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    assert torch.allclose(ga, s * b.T @ g, atol=1e-6) and torch.allclose(gb, s * g @ a.T, atol=1e-6)
    # SDS: only the orthonormal bases appear; B and A are perturbed so that B·A ≠ Q_B·(...)
    _transition(model)
    _perturb(model, std=0.3, seed=5)
    (ga, gb), g, layer = _layer_grads(method, model, x, target)
    st = layer.lora_variant["default"].state(layer, "default")
    assert torch.allclose(ga, s * st.q_b.T @ g, atol=1e-6)
    assert torch.allclose(gb, s * g @ st.q_a, atol=1e-6)
    assert not torch.allclose(ga, s * layer.lora_B["default"].weight.detach().T @ g, atol=1e-3)
    assert st.q_b.grad is None and not st.up.requires_grad


def test_fused_forward_tracks_fused_adamw_steps_and_reuses_buffers() -> None:
    method = SDSLoRA(rank=3, alpha=6.0)
    model = method.prepare(tiny_mlp(), ["fc2"])
    _perturb(model)
    _transition(model)
    layer = model.base_model.model.fc2
    st = layer.lora_variant["default"].state(layer, "default")
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    x = torch.randn(5, 32)

    def formula() -> torch.Tensor:
        return layer.base_layer(x) + method.scaling * (x @ a.T @ st.q_b.T + x @ st.q_a @ b.T)

    ptrs = (st.up.data_ptr(), st.down.data_ptr())
    assert torch.allclose(layer(x), formula(), atol=1e-6)
    # fused AdamW updates A and B without bumping their version counters: the forward must still see them
    opt = torch.optim.AdamW([a, b], lr=0.1, fused=True)
    # the layer twice in one graph: the custom backward must still give autograd's gradients of the formula
    a_ref, b_ref = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()

    def ref(z: torch.Tensor) -> torch.Tensor:
        return layer.base_layer(z) + method.scaling * (z @ a_ref.T @ st.q_b.T + z @ st.q_a @ b_ref.T)

    ref(ref(x)).pow(2).mean().backward()
    layer(layer(x)).pow(2).mean().backward()
    assert torch.allclose(a.grad, a_ref.grad, atol=1e-6) and torch.allclose(b.grad, b_ref.grad, atol=1e-6)
    opt.step()
    assert torch.allclose(layer(x), formula(), atol=1e-6)
    assert (st.up.data_ptr(), st.down.data_ptr()) == ptrs


# ------------------------------------------------------------------------------------ merge & export
def test_merge_equals_unmerged_on_nontrivial_adapter() -> None:
    method, model = _sds_llama()
    _perturb(model)
    _transition(model)
    _perturb(model, seed=2)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        base = tiny_llama()(input_ids=ids).logits
        merged = method.merge(model)(input_ids=ids).logits
    assert _rel(merged, unmerged) <= 1e-5 and _rel(unmerged, base) > 1e-2


@pytest.mark.parametrize("phase", ["warmup", "sds"])
def test_rank_2r_export_loads_in_vanilla_peft(tmp_path: Path, phase: str) -> None:
    method, model = _sds_llama()
    _perturb(model)
    if phase == "sds":
        _transition(model)
        _perturb(model, seed=4)  # B drifted away from span(Q_B): ΔW has rank up to 2r
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(input_ids=ids).logits
    method.save(model, tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(), str(tmp_path))
    assert loaded.peft_config["default"].r == 8
    assert not any("lora_sds" in n for n, _ in loaded.named_buffers())
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
    assert _rel(got, want) <= 1e-5


# --------------------------------------------------------------------------------------- with Trainer
class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, length: int = 12) -> None:
        gen = torch.Generator().manual_seed(0)
        # a learnable pattern (next token = token + 1) so a few steps lower the loss
        start = torch.randint(3, 40, (n, 1), generator=gen)
        self.ids = start + torch.arange(length)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class _BasisSpy(TrainerCallback):
    """Runs after SDSCallback: records the steps after which the first layer's Q_B changed."""

    def __init__(self) -> None:
        self.changed: list[int] = []
        self.last: torch.Tensor | None = None

    def on_step_end(self, args: object, state: TrainerState, control: object, model=None, **kw: object) -> None:
        _, mod, ad = sds_layers(model)[0]
        q_b = mod.lora_variant[ad].state(mod, ad).q_b.clone()
        if self.last is not None and not torch.equal(q_b, self.last):
            self.changed.append(state.global_step)
        self.last = q_b


def _train(method: SDSLoRA, out: Path, max_steps: int, resume: str | None = None, **kw: object) -> Trainer:
    model = method.prepare(tiny_llama(), LLAMA_TARGETS)
    args = TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4, learning_rate=1e-2,
        lr_scheduler_type="constant", save_strategy="steps", save_steps=kw.pop("save_steps", 1000),
        logging_steps=1000, report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0,
        disable_tqdm=True, **kw,
    )
    callbacks = method.callbacks() + [_BasisSpy()]
    trainer = Trainer(model=model, args=args, train_dataset=_Tokens(), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _snapshot(model: PeftModel) -> dict[str, torch.Tensor]:
    out = {}
    for name, mod, ad in sds_layers(model):
        st = mod.lora_variant[ad].state(mod, ad)
        out |= {f"{name}.A": mod.lora_A[ad].weight.detach().clone(),
                f"{name}.B": mod.lora_B[ad].weight.detach().clone()}
        out |= {f"{name}.{k}": v.clone() for k, v in st.state_dict().items()}
    return out


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    # warm-up 3, k=2 over 5 SDS steps → refreshes after 4,5,6,7; checkpoints at 2 (warm-up) and 4 (SDS)
    method = SDSLoRA(rank=4, alpha=8.0, warmup_steps=3, k=2)
    base = tmp_path_factory.mktemp("sds_trainer")
    full = _train(method, base / "full", 8, save_steps=2)
    runs = {"method": method, "full": _snapshot(full.model), "trainer": full, "dir": base / "full"}
    for step in (2, 4):
        resumed = _train(method, base / f"resumed{step}", 8, resume=str(base / "full" / f"checkpoint-{step}"))
        runs[step] = _snapshot(resumed.model)
    return runs


@pytest.mark.parametrize("step", [2, 4])
def test_resume_from_checkpoint_reproduces_uninterrupted_run(resume_runs: dict, step: int) -> None:
    full, resumed = resume_runs["full"], resume_runs[step]
    assert full.keys() == resumed.keys()
    assert all(bool(v) for k, v in full.items() if k.endswith("sds_on"))
    for key, value in full.items():
        assert torch.allclose(resumed[key], value, atol=1e-6, rtol=1e-5), key


def test_checkpoint_holds_bases_and_phase(resume_runs: dict) -> None:
    from safetensors.torch import load_file

    warm = load_file(str(resume_runs["dir"] / "checkpoint-2" / "adapter_model.safetensors"))
    sds = load_file(str(resume_runs["dir"] / "checkpoint-4" / "adapter_model.safetensors"))
    assert not any(v for k, v in warm.items() if k.endswith("sds_on"))
    assert all(v for k, v in sds.items() if k.endswith("sds_on"))
    q_b = next(v for k, v in sds.items() if k.endswith("lora_sds.q_b"))
    assert torch.allclose(q_b.T @ q_b, torch.eye(4), atol=1e-5)


def test_trainer_runs_transition_refreshes_and_optimizer_reset_on_schedule(resume_runs: dict) -> None:
    trainer = resume_runs["trainer"]
    spy = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, _BasisSpy))
    # Q_B set at the transition (step 3), then refreshed exactly on the phased schedule
    assert spy.changed == [3] + refresh_steps(8, 3, "phased", k=2) == [3, 4, 5, 6, 7]
    # Adam state of A and B restarted after the warm-up: 5 SDS steps counted, not 8
    _, mod, ad = sds_layers(trainer.model)[0]
    assert int(trainer.optimizer.state[mod.lora_A[ad].weight]["step"]) == 5


def test_training_lowers_loss_and_keeps_bases_orthonormal(resume_runs: dict) -> None:
    batch = _Tokens()[:]
    model = resume_runs["trainer"].model
    with torch.no_grad():
        before = tiny_llama()(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        after = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    assert after < before - 0.1
    for _, mod, ad in sds_layers(model):
        st = mod.lora_variant[ad].state(mod, ad)
        assert torch.allclose(st.q_b.T @ st.q_b, torch.eye(4), atol=1e-5)


def test_resume_with_other_warmup_is_refused(resume_runs: dict, tmp_path: Path) -> None:
    other = SDSLoRA(rank=4, alpha=8.0, warmup_steps=6, k=2)
    with pytest.raises(ConfigError, match="warmup_steps=6"):
        _train(other, tmp_path, 8, resume=str(resume_runs["dir"] / "checkpoint-4"))


# ---------------------------------------------------------------------------------- orthogonal-only
def test_ortho_update_has_singular_values_s_and_trains_the_bases() -> None:
    method = SDSOrtho(rank=3, alpha=6.0)
    model = method.prepare(tiny_mlp(), ["fc1", "fc2"])
    x, target = torch.randn(9, 16), torch.randn(9, 8)
    assert torch.allclose(model(x), tiny_mlp()(x))  # warm-up starts at B = 0
    _perturb(model, std=0.3)
    _transition(model)
    layer = model.base_model.model.fc2
    variant = layer.lora_variant["default"]
    sv = torch.linalg.svdvals(variant.delta_weight(layer, "default"))
    assert torch.allclose(sv[:3], torch.full((3,), method.scaling), atol=1e-5) and sv[3] < 1e-5
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = variant.delta_weight(layer, "default")
    loss0 = torch.nn.functional.mse_loss(model(x), target)
    loss0.backward()
    assert layer.lora_B["default"].weight.grad.abs().sum() > 0 and layer.lora_A["default"].weight.grad.abs().sum() > 0
    opt.step()
    after = variant.delta_weight(layer, "default")
    assert _rel(after, before) > 1e-4
    assert torch.allclose(torch.linalg.svdvals(after)[:3], torch.full((3,), method.scaling), atol=1e-5)
    with torch.no_grad():
        assert torch.nn.functional.mse_loss(model(x), target) < loss0
        merged = method.merge(copy.deepcopy(model))(x)
        assert torch.allclose(merged, model(x), atol=1e-5)
