"""LoRAM (Zhang et al., NeurIPS 2025, "The Primacy of Magnitude in Low-Rank Adaptation"), Algorithm 1.

What makes it LoRAM: a data-free, SVD-free init whose *magnitude* matches what spectral inits give. Per target
weight ``W`` (n × m, out × in):

* bases ``Φ_n``, ``Φ_m`` = first r columns of the n×n / m×m DST-I matrix,
  ``Φ_N[i, j] = √(2/(N+1))·sin((i+1)(j+1)π/(N+1))`` (orthonormal, analytic, deterministic);
* gain ``Q = log_{min(n,m)} r = ln r / ln min(n,m)``, the logarithmic stand-in for the spectral gain Q[r];
* ``β = (Q·ν[W] / ν[Φ_nΦ_mᵀ])^{1/4}`` with ``ν[M] = ‖M‖_F² / #entries`` (mean square, not variance);
* ``B0 = β·Φ_n``, ``A0 = β·Φ_mᵀ``, frozen weight ``W − s·B0A0`` (the paper has s = 1, i.e. ``alpha = rank``).

Ablation switches (LoRAM Table 4): ``basis`` dst | orth (random orthonormal) | gaussian; ``gain`` log | spectral
(the exact ``Q[r] = (Σ_{i≤r} σ_i)² / (r·Σ σ_i²)``, Eq. 10) | a constant; ``tracking`` none | pissa | milora | corda |
lora_ga: β is set so that ``ν[B0A0]`` equals the magnitude of that method's initial product (with s = 1) instead of
Q·ν[W]. LoRA-GA's reference "stable" init is two orthonormal r-frames times ``n^{1/4}/√γ`` each, so its magnitude is
data-free, ``ν = r/(γ²·m)``, and no gradient is needed.
Not in PEFT: factors are installed on a PEFT LoRA model after creation; saving converts to a plain LoRA on the
pretrained weights (see :class:`ResidualLoRA`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.config import CordaConfig
from torch import nn

from loralab.errors import ConfigError
from loralab.methods.base import CalibrationBatches, CalibrationRequest, matching_linears
from loralab.methods.corda import corda_calibration_request, corda_preprocess, validate_corda_options
from loralab.methods.residual import ResidualLoRA, init_dtype, lora_linear_layers, set_residual_init

BASES = ("dst", "orth", "gaussian")
GAINS = ("log", "spectral")
TRACKING = ("none", "pissa", "milora", "corda", "lora_ga")


def dst_basis(size: int, rank: int) -> torch.Tensor:
    """First ``rank`` columns of the orthonormal DST-I matrix of order ``size`` (built directly as size × rank)."""
    i = torch.arange(1, size + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, rank + 1, dtype=torch.float64)[None, :]
    return math.sqrt(2.0 / (size + 1)) * torch.sin(math.pi * i * j / (size + 1))


def orth_basis(size: int, rank: int, generator: torch.Generator) -> torch.Tensor:
    """Random size × rank matrix with orthonormal columns (QR of a Gaussian, signs fixed so it is unique)."""
    q, r = torch.linalg.qr(torch.randn(size, rank, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


def gaussian_basis(size: int, rank: int, generator: torch.Generator) -> torch.Tensor:
    """i.i.d. N(0, 1/size) entries, so columns have unit norm in expectation like the orthonormal bases."""
    return torch.randn(size, rank, generator=generator, dtype=torch.float64) / math.sqrt(size)


def mean_square(matrix: torch.Tensor) -> float:
    """The paper's magnitude ν[M] = ‖M‖_F² / #entries."""
    return float(matrix.double().square().mean())


def log_gain(rank: int, n: int, m: int) -> float:
    """Q ≈ log_{min(n,m)}(r); 0 at r = 1 (the degenerate case)."""
    return math.log(rank) / math.log(min(n, m))


def spectral_gain(weight: torch.Tensor, rank: int) -> float:
    """Exact spectral gain factor Q[r] = (Σ_{i≤r} σ_i)² / (r·Σ_i σ_i²) (LoRAM Eq. 10)."""
    sv = torch.linalg.svdvals(weight.float()).double()  # fp32 SVD (fast on GPUs), fp64 sums
    return float(sv[:rank].sum() ** 2 / (rank * sv.square().sum()))


def product_magnitude(basis_n: torch.Tensor, basis_m: torch.Tensor) -> float:
    """ν[Φ_nΦ_mᵀ] via the r×r Gram matrices (no n×m product): tr(Φ_nᵀΦ_n·Φ_mᵀΦ_m) / (n·m)."""
    n, m = basis_n.shape[0], basis_m.shape[0]
    return float(torch.trace((basis_n.T @ basis_n) @ (basis_m.T @ basis_m)) / (n * m))


def loram_beta(target_magnitude: float, basis_n: torch.Tensor, basis_m: torch.Tensor) -> float:
    """β = (target / ν[Φ_nΦ_mᵀ])^{1/4}, so that ν[β²Φ_nΦ_mᵀ] = target."""
    return (target_magnitude / product_magnitude(basis_n, basis_m)) ** 0.25


@dataclass
class LoRAM(ResidualLoRA):
    name: str = "loram"
    init_lora_weights: bool | str = False  # PEFT leaves A, B alone; create_peft_model installs LoRAM's factors
    implicit_fields: ClassVar[frozenset[str]] = frozenset({"init_lora_weights", "use_dora"})
    basis: str = "dst"
    # "log" (paper default), "spectral" (exact Q[r] from the SVD of W) or a constant in (0, 1].
    gain: str | float = "log"
    tracking: str = "none"
    # s ≠ 1: NOT FOUND whether LoRAM compensates. False (INFERRED, like PEFT's OLoRA): B0, A0 as above and
    # W_res = W − s·B0A0. True: divide β² by s (as PEFT's PiSSA divides S by s) so that ν[s·B0A0] = Q·ν[W].
    compensate_scaling: bool = False
    seed: int = 0  # random bases (orth, gaussian) only
    corda_method: str = "ipm"  # tracking = corda only
    loraga_gamma: float = 16.0  # tracking = lora_ga only: LoRA-GA's stable_gamma (its reference default)
    calibration_samples: int | None = 256  # tracking = corda only
    # Per-layer record of the init (beta, gain, target magnitude, scaling), filled by prepare; for logging.
    init_stats: dict[str, dict[str, float]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def validate(self, model: nn.Module, target_modules: list[str]) -> None:
        super().validate(model, target_modules)
        if self.basis not in BASES:
            raise ConfigError(f"method.basis={self.basis!r} is invalid: use one of {', '.join(BASES)}")
        if self.tracking not in TRACKING:
            raise ConfigError(f"method.tracking={self.tracking!r} is invalid: use one of {', '.join(TRACKING)}")
        if isinstance(self.gain, str):
            if self.gain not in GAINS:
                raise ConfigError(f"method.gain={self.gain!r} is invalid: use 'log', 'spectral' or a number in (0, 1]")
        elif isinstance(self.gain, bool) or not isinstance(self.gain, (int, float)) or not 0 < self.gain <= 1:
            raise ConfigError(f"method.gain={self.gain!r} is invalid: use 'log', 'spectral' or a number in (0, 1]")
        if self.tracking == "none" and self.gain == "log" and self.rank == 1:
            raise ConfigError(
                "rank=1 is invalid for loram with gain='log': Q = ln(1)/ln(min(n,m)) = 0 gives A0 = B0 = 0, an "
                "adapter whose gradients vanish forever; use rank >= 2 (or gain='spectral' / a constant gain)"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"method.seed={self.seed!r} is invalid: it must be an integer")
        if self.tracking == "corda":
            validate_corda_options(self.corda_method, self.calibration_samples)
        gamma = self.loraga_gamma
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
            raise ConfigError(f"method.loraga_gamma={gamma!r} is invalid: it must be > 0 (LoRA-GA default 16)")
        for name, mod in matching_linears(model, target_modules).items():
            if min(mod.in_features, mod.out_features) < 2:
                raise ConfigError(f"loram: target '{name}' has min(in, out) = 1, where log_min(n,m)(r) is undefined")

    def lora_config(self, target_modules: list[str], modules_to_save: list[str] | None) -> LoraConfig:
        config = super().lora_config(target_modules, modules_to_save)
        config.init_lora_weights = False
        return config

    def calibration_request(self) -> CalibrationRequest | None:
        """Data only for tracking = corda (CorDA's covariance); LoRAM itself is data-free."""
        return corda_calibration_request(self.calibration_samples, self.name) if self.tracking == "corda" else None

    def _corda_magnitudes(
        self, model: nn.Module, target_modules: list[str], calibration: CalibrationBatches | None
    ) -> dict[int, float]:
        """ν[U diag(S) V̂ᵀ] of CorDA's initial product per target layer (keyed by module id), via PEFT."""
        config = LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            target_modules=list(target_modules),
            init_lora_weights="corda",
            corda_config=CordaConfig(corda_method=self.corda_method),
        )
        corda_preprocess(model, config, calibration, self.calibration_samples, who="loram (tracking='corda')")
        out: dict[int, float] = {}
        for mod in matching_linears(model, target_modules).values():
            eig = mod.eigens
            out[id(mod)] = mean_square((eig.U_WC.double() * eig.S_WC.double()[None, :]) @ eig.V_WC.double().T)
            del mod.eigens  # get_peft_model must not see CorDA fields
        return out

    def _target_magnitude(self, weight: torch.Tensor, rank: int, reference: float | None) -> tuple[float, float]:
        """(gain Q, ν wanted for B0A0) of one layer."""
        n, m = weight.shape
        if self.tracking == "corda":
            assert reference is not None
            return float("nan"), reference
        if self.tracking == "lora_ga":
            # B0A0 = f²·U_bV_aᵀ with orthonormal frames and f = n^{1/4}/√γ: ‖B0A0‖_F² = f⁴·r = n·r/γ².
            return float("nan"), rank / (float(self.loraga_gamma) ** 2 * m)
        if self.tracking in ("pissa", "milora"):
            # PiSSA/MiLoRA at s = 1: B0A0 = U_r S_r V_rᵀ with top/bottom r triplets, ν = Σ σ_i² / (n·m).
            sv = torch.linalg.svdvals(weight.float()).double()
            picked = sv[:rank] if self.tracking == "pissa" else sv[-rank:]
            return float("nan"), float(picked.square().sum() / (n * m))
        if self.gain == "log":
            q = log_gain(rank, n, m)
        elif self.gain == "spectral":
            q = spectral_gain(weight, rank)
        else:
            q = float(self.gain)
        return q, q * mean_square(weight)

    def _bases(self, n: int, m: int, rank: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.basis == "dst":
            return dst_basis(n, rank), dst_basis(m, rank)
        make: Any = orth_basis if self.basis == "orth" else gaussian_basis
        return make(n, rank, generator), make(m, rank, generator)

    def create_peft_model(
        self,
        model: nn.Module,
        target_modules: list[str],
        modules_to_save: list[str] | None,
        calibration: CalibrationBatches | None,
    ) -> PeftModel:
        references = self._corda_magnitudes(model, target_modules, calibration) if self.tracking == "corda" else {}
        peft_model = get_peft_model(model, self.lora_config(target_modules, modules_to_save))
        generator = torch.Generator().manual_seed(self.seed)  # one stream, consumed in module order
        self.init_stats = {}
        for name, layer in lora_linear_layers(peft_model):
            base = layer.get_base_layer()
            weight = base.weight.detach().to(init_dtype(base.weight))
            rank, s = layer.r["default"], layer.scaling["default"]
            n, m = weight.shape
            q, target = self._target_magnitude(weight, rank, references.get(id(base)))
            basis_n, basis_m = self._bases(n, m, rank, generator)
            beta = loram_beta(target, basis_n, basis_m) if target > 0 else 0.0
            if self.compensate_scaling:
                beta /= math.sqrt(s)
            if not beta > 0:
                raise ConfigError(
                    f"loram: the init of '{name}' is A0 = B0 = 0 (target magnitude {target:g}), an adapter that "
                    "cannot learn; check the layer's weight, or use another gain/tracking option"
                )
            lora_B = (beta * basis_n).to(weight.device, weight.dtype)
            lora_A = (beta * basis_m.T).to(weight.device, weight.dtype)
            self.step0_errors[name] = set_residual_init(layer, lora_A, lora_B)
            self.init_stats[name] = {"beta": beta, "gain": q, "target_magnitude": target, "scaling": s}
        return peft_model
