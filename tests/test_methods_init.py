"""What makes each LoRA variant that variant (init identities, scalings, optimiser groups), plus step-0
preservation and save → load round trips on tiny_llama, and rejection of bad options."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from peft import PeftModel

from loralab.errors import ConfigError
from loralab.methods.corda import CorDA, run_calibration
from loralab.methods.dora import DoRA
from loralab.methods.lora_plus import LoRAPlus
from loralab.methods.loram import LoRAM
from loralab.methods.milora import MiLoRA
from loralab.methods.olora import OLoRA
from loralab.methods.pissa import PiSSA
from loralab.methods.residual import lora_linear_layers
from loralab.methods.rslora import RsLoRA
from loralab.models.tiny import tiny_llama

TARGETS = ["q_proj", "v_proj", "gate_proj", "down_proj"]
RANK, ALPHA = 4, 8.0  # s = 2 (alpha/r) or 4 (alpha/√r): a forgotten scaling shows up
CONF = Path(__file__).resolve().parents[1] / "conf" / "method"


def calibration(n_batches: int = 2, batch: int = 2, length: int = 40, seed: int = 1):
    def batches():
        g = torch.Generator().manual_seed(seed)
        for _ in range(n_batches):
            ids = torch.randint(3, 64, (batch, length), generator=g)
            yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    return batches


def inputs() -> torch.Tensor:
    return torch.randint(3, 64, (2, 12), generator=torch.Generator().manual_seed(7))


def prepared(method, modules_to_save=None, calib=None):
    base = tiny_llama()
    method.validate(base, TARGETS)
    return method.prepare(base, TARGETS, modules_to_save, calib)


def pretrained_weights() -> dict[str, torch.Tensor]:
    return {name: mod.weight.detach().clone() for name, mod in tiny_llama().named_modules() if hasattr(mod, "weight")}


def layers_with_original(model):
    """(layer, W_res, s, A0, B0, W) for every adapted linear layer."""
    original = pretrained_weights()
    for name, layer in lora_linear_layers(model):
        s = layer.scaling["default"]
        yield (
            layer.get_base_layer().weight.detach(),
            s,
            layer.lora_A["default"].weight.detach(),
            layer.lora_B["default"].weight.detach(),
            original[name.removeprefix("base_model.model.")],
        )


def assert_residual_identity(model) -> None:
    for w_res, s, a0, b0, w in layers_with_original(model):
        assert (s * b0 @ a0).norm() > 1e-2 * w.norm()  # a non-trivial init, so the identity says something
        torch.testing.assert_close(w_res + s * b0 @ a0, w, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- equations
def test_pissa_uses_top_r_singular_triplets():
    model = prepared(PiSSA(rank=RANK, alpha=ALPHA))
    assert_residual_identity(model)
    for _, s, a0, b0, w in layers_with_original(model):
        U, S, Vh = torch.linalg.svd(w, full_matrices=False)
        top = U[:, :RANK] @ torch.diag(S[:RANK]) @ Vh[:RANK]
        bottom = U[:, -RANK:] @ torch.diag(S[-RANK:]) @ Vh[-RANK:]
        torch.testing.assert_close(s * b0 @ a0, top, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(s * b0 @ a0, bottom, atol=1e-3)
        # √S split with S divided by s: B0ᵀB0 = diag(S_r / s).
        torch.testing.assert_close(b0.T @ b0, torch.diag(S[:RANK] / s), atol=1e-5, rtol=1e-4)


def test_milora_uses_bottom_r_singular_triplets():
    model = prepared(MiLoRA(rank=RANK, alpha=ALPHA))
    assert_residual_identity(model)
    for _, s, a0, b0, w in layers_with_original(model):
        U, S, Vh = torch.linalg.svd(w, full_matrices=False)
        top = U[:, :RANK] @ torch.diag(S[:RANK]) @ Vh[:RANK]
        bottom = U[:, -RANK:] @ torch.diag(S[-RANK:]) @ Vh[-RANK:]
        torch.testing.assert_close(s * b0 @ a0, bottom, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(s * b0 @ a0, top, atol=1e-3)
        torch.testing.assert_close(b0.T @ b0, torch.diag(S[-RANK:] / s), atol=1e-5, rtol=1e-4)


def test_olora_uses_qr_of_w():
    model = prepared(OLoRA(rank=RANK, alpha=ALPHA))
    assert_residual_identity(model)
    for _, s, a0, b0, w in layers_with_original(model):
        Q, R = torch.linalg.qr(w)
        torch.testing.assert_close(b0, Q[:, :RANK], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a0, R[:RANK], atol=1e-5, rtol=1e-5)  # no division by s, unlike PiSSA


def test_corda_uses_covariance_weighted_svd():
    # One calibration sample: C is then fixed up to a global scale, which the damped SVD's vectors ignore.
    calib = calibration(n_batches=1, batch=1, length=48)
    model = prepared(CorDA(rank=RANK, alpha=ALPHA, calibration_samples=1), calib=calib)
    assert_residual_identity(model)

    base = tiny_llama()
    q_proj = base.model.layers[0].self_attn.q_proj
    seen = []
    q_proj.register_forward_hook(lambda mod, inp, out: seen.append(inp[0][0].detach()))
    with torch.no_grad():
        base(input_ids=next(iter(calib()))["input_ids"])
    x = seen[0]
    cov = x.T @ x
    cov = cov + 0.01 * cov.diagonal().mean() * torch.eye(cov.shape[0])  # PEFT's first damping level
    w = q_proj.weight.detach()
    U_wc = torch.linalg.svd(w @ cov)[0][:, :RANK]
    U_w = torch.linalg.svd(w)[0][:, :RANK]

    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    b0 = layer.lora_B["default"].weight.detach()
    proj_b = b0 @ torch.linalg.pinv(b0)
    torch.testing.assert_close(proj_b, U_wc @ U_wc.T, atol=1e-4, rtol=1e-4)  # IPM: top-r of W·C
    assert (proj_b - U_w @ U_w.T).abs().max() > 1e-2  # ... which is not PiSSA's subspace


def test_corda_calibration_respects_sample_budget():
    model = tiny_llama()
    assert run_calibration(model, calibration(n_batches=3, batch=2), max_samples=3) == 3
    assert run_calibration(model, calibration(n_batches=3, batch=2), max_samples=None) == 6


def test_rslora_scaling_is_alpha_over_sqrt_rank():
    model = prepared(RsLoRA(rank=RANK, alpha=ALPHA))
    scalings = [layer.scaling["default"] for _, layer in lora_linear_layers(model)]
    assert len(scalings) == 2 * len(TARGETS)
    assert scalings == [pytest.approx(ALPHA / math.sqrt(RANK))] * len(scalings)
    assert ALPHA / math.sqrt(RANK) != pytest.approx(ALPHA / RANK)


def test_dora_magnitude_is_row_norm_of_w():
    model = prepared(DoRA(rank=RANK, alpha=ALPHA))
    original = pretrained_weights()
    count = 0
    for name, layer in lora_linear_layers(model):
        w = original[name.removeprefix("base_model.model.")]
        m = layer.lora_magnitude_vector["default"].weight.detach()
        torch.testing.assert_close(m, w.norm(dim=1), atol=1e-6, rtol=1e-6)
        if w.shape[0] == w.shape[1]:  # column norms would be the wrong axis
            assert not torch.allclose(m, w.norm(dim=0), atol=1e-3)
        count += 1
    assert count == 2 * len(TARGETS)


def test_lora_plus_gives_b_ratio_times_the_learning_rate():
    method = LoRAPlus(rank=RANK, alpha=ALPHA, loraplus_lr_ratio=4.0)
    model = prepared(method)
    opt = method.build_optimizer(model, lr=1e-3, weight_decay=0.05)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert {id(p) for _, p in trainable} == set(lr_of)
    for name, p in trainable:
        expected = 4e-3 if ".lora_B." in name else 1e-3
        assert lr_of[id(p)] == pytest.approx(expected), name
        assert wd_of[id(p)] == pytest.approx(0.05), name


# ------------------------------------------------------- step 0 and save/load
ALL_METHODS = {
    "rslora": lambda: RsLoRA(rank=RANK, alpha=ALPHA),
    "dora": lambda: DoRA(rank=RANK, alpha=ALPHA),
    "pissa": lambda: PiSSA(rank=RANK, alpha=ALPHA),
    "pissa_niter": lambda: PiSSA(rank=RANK, alpha=ALPHA, niter=4),
    "milora": lambda: MiLoRA(rank=RANK, alpha=ALPHA),
    "olora": lambda: OLoRA(rank=RANK, alpha=ALPHA),
    "lora_plus": lambda: LoRAPlus(rank=RANK, alpha=ALPHA),
    "corda": lambda: CorDA(rank=RANK, alpha=ALPHA, calibration_samples=4),  # what calibration() holds
    "loram": lambda: LoRAM(rank=RANK, alpha=ALPHA),
    "loram_rslora": lambda: LoRAM(rank=RANK, alpha=ALPHA, use_rslora=True),
}


@pytest.mark.parametrize("key", sorted(ALL_METHODS))
def test_output_unchanged_at_step_zero(key):
    x = inputs()
    with torch.no_grad():
        reference = tiny_llama()(x).logits
        model = prepared(ALL_METHODS[key](), calib=calibration())
        out = model(x).logits
    torch.testing.assert_close(out, reference, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("key", sorted(ALL_METHODS))
def test_save_load_round_trip_on_fresh_base(key, tmp_path):
    method = ALL_METHODS[key]()
    model = prepared(method, modules_to_save=["lm_head"], calib=calibration())
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # stand-in for training: move every trainable tensor
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    x = inputs()
    with torch.no_grad():
        trained = model(x).logits
        untouched = tiny_llama()(x).logits
        path = method.save(model, tmp_path)
        assert path.exists() and path.suffix == ".safetensors"
        loaded = PeftModel.from_pretrained(tiny_llama(), str(tmp_path))(x).logits
        after_save = model(x).logits
    assert (trained - untouched).abs().max() > 1e-2  # the "training" changed the outputs
    torch.testing.assert_close(loaded, trained, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(after_save, trained)  # saving leaves the in-memory model as it was


def test_plain_peft_save_of_a_residual_init_does_not_round_trip(tmp_path):
    # Why ResidualLoRA.save converts: MiLoRA's adapter alone, on the pretrained base, gives a different model.
    # (PEFT re-runs a deterministic PiSSA/OLoRA init on load, but nothing re-creates MiLoRA/LoRAM residuals.)
    model = prepared(MiLoRA(rank=RANK, alpha=ALPHA))
    x = inputs()
    with torch.no_grad():
        trained = model(x).logits
        model.save_pretrained(str(tmp_path))
        loaded = PeftModel.from_pretrained(tiny_llama(), str(tmp_path))(x).logits
    assert (loaded - trained).abs().max() > 1e-3  # numerical noise is ~1e-7


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("method", "needle"),
    [
        (LoRAPlus(rank=RANK, loraplus_lr_ratio=0.0), "loraplus_lr_ratio"),
        (LoRAPlus(rank=RANK, loraplus_lr_ratio=-2.0), "loraplus_lr_ratio"),
        (LoRAPlus(rank=RANK, loraplus_lr_embedding=0.0), "loraplus_lr_embedding"),
        (PiSSA(rank=RANK, niter=-1), "niter"),
        (CorDA(rank=RANK, corda_method="svd"), "corda_method"),
        (CorDA(rank=RANK, calibration_samples=0), "calibration_samples"),
        (RsLoRA(rank=RANK, use_rslora=False), "use_rslora"),
        (DoRA(rank=RANK, use_dora=False), "use_dora"),
        (MiLoRA(rank=100), "rank=100"),
    ],
)
def test_bad_options_raise_config_error(method, needle):
    with pytest.raises(ConfigError, match=needle):
        method.validate(tiny_llama(), TARGETS)


def test_corda_without_calibration_raises_config_error():
    method = CorDA(rank=RANK)
    with pytest.raises(ConfigError, match="calibration"):
        method.prepare(tiny_llama(), TARGETS, None, None)


# ---------------------------------------------------------------- YAML files
@pytest.mark.parametrize(
    ("name", "cls"),
    [("rslora", RsLoRA), ("dora", DoRA), ("pissa", PiSSA), ("milora", MiLoRA), ("olora", OLoRA),
     ("lora_plus", LoRAPlus), ("corda", CorDA), ("loram", LoRAM)],
)
def test_yaml_instantiates_the_method(name, cls):
    cfg = OmegaConf.create({"rank": 6, "alpha": 12, "method": OmegaConf.load(CONF / f"{name}.yaml")})
    method = instantiate(cfg.method, _convert_="all")
    assert type(method) is cls and method.name == name
    assert (method.rank, method.alpha) == (6, 12)
    method.validate(tiny_llama(), TARGETS)  # the YAML defaults are valid
