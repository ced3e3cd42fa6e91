"""LoRAM (docs/methods/loram.md#algorithm-1): DST-I basis, logarithmic gain, magnitude matching with ν = mean square,
residual, ablation switches (basis, gain, tracking) and the rank-1 guard."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from loralab.errors import ConfigError
from loralab.methods.corda import CorDA
from loralab.methods.loram import LoRAM, dst_basis
from loralab.models.tiny import tiny_llama, tiny_mlp

TARGETS = ["fc1", "fc2", "head"]


def mlp_with_offset() -> torch.nn.Module:
    # A non-zero mean makes ν[W] (mean square) differ from var(W): using the variance would fail the checks.
    model = tiny_mlp()
    with torch.no_grad():
        for mod in (model.fc1, model.fc2, model.head):
            mod.weight.add_(0.3)
    return model


def init_of(method: LoRAM, model=None, calibration=None) -> dict[str, tuple]:
    """Per target: (W, W_res, s, A0, B0), W taken before prepare."""
    model = model if model is not None else mlp_with_offset()
    original = {name: getattr(model, name).weight.detach().clone() for name in TARGETS}
    method.validate(model, TARGETS)
    peft_model = method.prepare(model, TARGETS, None, calibration)
    out = {}
    for name in TARGETS:
        layer = getattr(peft_model.base_model.model, name)
        out[name] = (
            original[name],
            layer.get_base_layer().weight.detach(),
            layer.scaling["default"],
            layer.lora_A["default"].weight.detach().double(),
            layer.lora_B["default"].weight.detach().double(),
        )
    return out


def nu(m: torch.Tensor) -> float:
    return float(m.detach().double().square().mean())


def test_dst_basis_matches_sine_formula_and_is_orthonormal():
    n, r = 11, 4
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    full = np.sqrt(2 / (n + 1)) * np.sin((i + 1) * (j + 1) * np.pi / (n + 1))
    np.testing.assert_allclose(full @ full, np.eye(n), atol=1e-12)  # DST-I is symmetric and involutory
    phi = dst_basis(n, r)
    np.testing.assert_allclose(phi.numpy(), full[:, :r], atol=1e-12)
    torch.testing.assert_close(phi.T @ phi, torch.eye(r, dtype=torch.float64), atol=1e-12, rtol=0)


def test_default_init_reproduces_algorithm_1():
    rank, alpha = 4, 8.0  # s = 2 ≠ 1: B0, A0 are not compensated (INFERRED default)
    for name, (w, w_res, s, a0, b0) in init_of(LoRAM(rank=rank, alpha=alpha)).items():
        n, m = w.shape
        q = math.log(rank) / math.log(min(n, m))
        beta = (q * nu(w) * n * m / rank) ** 0.25  # closed form: ν[Φ_nΦ_mᵀ] = r/(nm) for orthonormal bases
        beta_var = (q * float(w.double().var()) * n * m / rank) ** 0.25
        assert abs(beta - beta_var) > 1e-3 * beta  # the test tells ν from var
        torch.testing.assert_close(b0, beta * dst_basis(n, rank), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(a0, beta * dst_basis(m, rank).T, atol=1e-6, rtol=1e-5)
        assert nu(b0 @ a0) == pytest.approx(q * nu(w), rel=1e-5)
        assert nu(b0) == pytest.approx(beta**2 / n, rel=1e-5)
        assert nu(a0) == pytest.approx(beta**2 / m, rel=1e-5)
        assert s == pytest.approx(alpha / rank)
        torch.testing.assert_close(w_res.double() + s * b0 @ a0, w.double(), atol=1e-5, rtol=1e-5), name


def test_compensated_scaling_matches_magnitude_of_the_scaled_product():
    rank = 4
    for w, _, s, a0, b0 in init_of(LoRAM(rank=rank, alpha=8.0, compensate_scaling=True)).values():
        q = math.log(rank) / math.log(min(w.shape))
        assert nu(s * b0 @ a0) == pytest.approx(q * nu(w), rel=1e-5)
        assert nu(b0 @ a0) != pytest.approx(q * nu(w), rel=1e-2)


def test_rank_one_is_rejected_with_log_gain_but_allowed_with_spectral_gain():
    with pytest.raises(ConfigError, match=r"rank=1.*rank >= 2"):
        LoRAM(rank=1, alpha=1.0).validate(tiny_mlp(), TARGETS)
    inits = init_of(LoRAM(rank=1, alpha=1.0, gain="spectral"))
    assert all(nu(b0 @ a0) > 0 for *_, a0, b0 in inits.values())


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"basis": "dct"}, "method.basis='dct'.*dst, orth, gaussian"),
        ({"gain": "linear"}, "method.gain='linear'"),
        ({"gain": 1.5}, r"method.gain=1.5.*\(0, 1\]"),
        ({"gain": 0.0}, "method.gain=0.0"),
        ({"tracking": "loftq"}, "method.tracking='loftq'.*none, pissa, milora, corda, lora_ga"),
        ({"tracking": "lora_ga", "loraga_gamma": 0}, "method.loraga_gamma=0"),
        ({"tracking": "corda", "corda_method": "abc"}, "corda_method"),
        ({"seed": "x"}, "method.seed"),
    ],
)
def test_bad_options_raise_config_error(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        LoRAM(rank=4, **kwargs).validate(tiny_mlp(), TARGETS)


@pytest.mark.parametrize("basis", ["orth", "gaussian"])
def test_random_bases_keep_the_magnitude_and_are_seeded(basis):
    rank = 4
    first = init_of(LoRAM(rank=rank, alpha=4.0, basis=basis, seed=5))
    again = init_of(LoRAM(rank=rank, alpha=4.0, basis=basis, seed=5))
    other = init_of(LoRAM(rank=rank, alpha=4.0, basis=basis, seed=6))
    for name, (w, w_res, s, a0, b0) in first.items():
        n = w.shape[0]
        q = math.log(rank) / math.log(min(w.shape))
        assert nu(b0 @ a0) == pytest.approx(q * nu(w), rel=1e-5)
        torch.testing.assert_close(w_res.double() + s * b0 @ a0, w.double(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b0, again[name][4])
        assert not torch.allclose(b0, other[name][4])
        first_col = b0[:, 0] / b0[:, 0].norm()
        assert (first_col.abs() - dst_basis(n, rank)[:, 0]).abs().max() > 1e-2  # not the DST basis
        gram = b0.T @ b0
        if basis == "orth":  # β²·I
            torch.testing.assert_close(gram, gram[0, 0] * torch.eye(rank, dtype=gram.dtype), atol=1e-6, rtol=1e-5)
        else:
            assert (gram - gram.diagonal().diag()).abs().max() > 1e-3


def test_spectral_gain_uses_equation_10():
    rank = 3
    for w, _, _, a0, b0 in init_of(LoRAM(rank=rank, alpha=3.0, gain="spectral")).values():
        sv = torch.linalg.svdvals(w.double())
        q = float(sv[:rank].sum() ** 2 / (rank * sv.square().sum()))
        assert nu(b0 @ a0) == pytest.approx(q * nu(w), rel=1e-5)
        assert q != pytest.approx(math.log(rank) / math.log(min(w.shape)), rel=1e-2)


@pytest.mark.parametrize("tracking", ["pissa", "milora"])
def test_tracking_matches_the_weight_driven_reference(tracking):
    rank = 4  # alpha = rank: s = 1 as in the paper
    for w, _, _, a0, b0 in init_of(LoRAM(rank=rank, alpha=4.0, tracking=tracking)).values():
        n, m = w.shape
        sv = torch.linalg.svdvals(w.double())
        picked = sv[:rank] if tracking == "pissa" else sv[-rank:]
        assert nu(b0 @ a0) == pytest.approx(float(picked.square().sum()) / (n * m), rel=1e-5)
        assert nu(b0 @ a0) != pytest.approx(math.log(rank) / math.log(min(n, m)) * nu(w), rel=1e-2)
        torch.testing.assert_close(b0, b0[0, 0] / dst_basis(n, rank)[0, 0] * dst_basis(n, rank))  # still DST


def test_tracking_corda_matches_corda_initial_product():
    rank, alpha = 4, 4.0
    targets = ["q_proj", "down_proj"]

    def calibration():
        g = torch.Generator().manual_seed(2)
        for _ in range(2):
            ids = torch.randint(3, 64, (2, 40), generator=g)
            yield {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    corda = CorDA(rank=rank, alpha=alpha, calibration_samples=4).prepare(tiny_llama(), targets, None, calibration)
    loram = LoRAM(rank=rank, alpha=alpha, tracking="corda", calibration_samples=4)
    loram_model = loram.prepare(tiny_llama(), targets, None, calibration)
    checked = 0
    for (name, mod), (_, ref) in zip(loram_model.named_modules(), corda.named_modules()):
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            product = mod.lora_B["default"].weight @ mod.lora_A["default"].weight
            ref_product = ref.scaling["default"] * ref.lora_B["default"].weight @ ref.lora_A["default"].weight
            assert nu(product) == pytest.approx(nu(ref_product), rel=1e-4), name
            checked += 1
    assert checked == 2 * len(targets)
    assert not any(hasattr(m, "eigens") for m in loram_model.modules())  # CorDA scratch fields removed


def test_tracking_lora_ga_matches_the_stable_reference_init():
    rank, gamma = 4, 9.0
    g = torch.Generator().manual_seed(4)
    for w, _, _, a0, b0 in init_of(LoRAM(rank=rank, alpha=4.0, tracking="lora_ga", loraga_gamma=gamma)).values():
        n, m = w.shape
        # Reference LoRA-GA ArB2r + stable scale on some gradient: frames from its SVD, both times n^{1/4}/√γ.
        u, _, vh = torch.linalg.svd(torch.randn(n, m, generator=g, dtype=torch.float64), full_matrices=False)
        factor = n**0.25 / math.sqrt(gamma)
        ref = (factor * u[:, rank : 2 * rank]) @ (factor * vh[:rank])
        assert nu(b0 @ a0) == pytest.approx(nu(ref), rel=1e-5)
        assert b0[:, 0].norm() == pytest.approx(factor, rel=1e-5)  # on DST bases β is LoRA-GA's own factor


class OneLinear(torch.nn.Module):
    def __init__(self, size: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(size, size, bias=False, dtype=dtype)
        with torch.no_grad():
            self.proj.weight.copy_(0.02 * torch.randn(size, size, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize(("dtype", "options", "low", "high"), [
    # LoRAM + rsLoRA at r = 128, uncompensated: ‖s·B0A0‖ ≈ √(s²·Q) ≈ 9.5 ‖W‖, so W_res rounded to bf16 moves W by ~1 %
    (torch.bfloat16, dict(use_rslora=True), 5e-3, 2e-2),
    (torch.bfloat16, dict(use_rslora=True, compensate_scaling=True), 5e-4, 3e-3),   # s·B0A0 back to Q·ν[W]
    (torch.bfloat16, dict(), 5e-4, 3e-3),                                           # the paper's s = 1
    (torch.float32, dict(use_rslora=True), 0.0, 1e-5),
])
def test_step0_change_of_the_stored_residual_is_measured_and_reported(dtype, options, low, high, caplog):
    rank = 128
    model = OneLinear(1024, dtype)
    w = model.proj.weight.detach().double().clone()
    method = LoRAM(rank=rank, alpha=float(rank), **options)
    method.validate(model, ["proj"])
    with caplog.at_level("WARNING"):
        peft_model = method.prepare(model, ["proj"])
    layer = peft_model.base_model.model.proj
    s = layer.scaling["default"]
    b0, a0 = layer.lora_B["default"].weight.detach().double(), layer.lora_A["default"].weight.detach().double()
    step0 = float((layer.get_base_layer().weight.double() + s * b0 @ a0 - w).norm() / w.norm())
    summary = method.init_summary()["step0_weight_error"]
    assert summary["layers"] == 1 and summary["max"] == summary["mean"]
    assert summary["max"] == pytest.approx(step0, rel=1e-2, abs=1e-5)  # fp32 arithmetic of W_res: ~1e-6
    assert low <= step0 < high
    assert ("changes the weights by up to" in caplog.text) == (step0 > 5e-3)  # warned of above 0.5 %
