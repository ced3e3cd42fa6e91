"""CorDA (Yang et al., NeurIPS 2024): LoRA initialised from a covariance-weighted SVD of W.

What makes it CorDA: input activations of calibration data give ``C = mean XᵀX`` per layer (damped); the SVD
``W·C = U S Vᵀ`` with ``V̂ = C^{-1} V`` rewrites ``W = U S V̂ᵀ``. IPM keeps the top-r triplets (task data),
KPM the bottom-r (general data); then PiSSA-style ``A0 = diag(√(S/s)) V̂ᵀ``, ``B0 = U diag(√(S/s))`` and
``W_res = W − s·B0A0``. PEFT's ``preprocess_corda`` + ``init_lora_weights="corda"`` implement it; the
runner feeds it the first ``calibration_samples`` training examples, one sample at a time (PEFT's hook expects a
batch of one).
Saving converts to a plain LoRA on the pretrained weights (see :class:`ResidualLoRA`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.config import CordaConfig
from peft.tuners.lora.corda import preprocess_corda
from torch import nn

from loralab.errors import ConfigError
from loralab.methods.base import CalibrationBatches, CalibrationRequest
from loralab.methods.residual import ResidualLoRA

# Inputs of HF models carry a per-sample sequence axis (tokens / patches), so they are fed one sample at a time;
# any other batch (e.g. the tiny MLP's ``x``) is fed whole, its rows then being the "tokens" of one sample.
_PER_SAMPLE_KEYS = ("input_ids", "pixel_values", "inputs_embeds")


@torch.no_grad()
def run_calibration(model: nn.Module, calibration: CalibrationBatches, max_samples: int | None) -> int:
    """Forward calibration data through ``model`` (no labels, eval mode); return the number of samples used."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    used = 0
    try:
        for batch in calibration():
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels" and isinstance(v, torch.Tensor)}
            if not any(k in inputs for k in _PER_SAMPLE_KEYS):
                model(**inputs)
                used += 1
            else:
                size = next(iter(inputs.values())).shape[0]
                for i in range(size):
                    sample = {k: v[i : i + 1] for k, v in inputs.items()}
                    mask = sample.get("attention_mask")
                    if mask is not None and mask.dim() == 2:  # drop padding so it does not enter the covariance
                        keep = mask[0].bool()
                        sample = {k: (v[:, keep] if v.dim() >= 2 and v.shape[1] == keep.numel() else v)
                                  for k, v in sample.items()}
                    model(**sample)
                    used += 1
                    if max_samples is not None and used >= max_samples:
                        return used
            if max_samples is not None and used >= max_samples:
                return used
    finally:
        model.train(was_training)
    return used


def corda_calibration_request(max_samples: int | None, method: str) -> CalibrationRequest:
    """``max_samples`` training examples, one per batch (CorDA's covariance hook takes one sample at a time)."""
    if max_samples is None:
        raise ConfigError(
            f"method={method} needs a number of calibration samples for a run: method.calibration_samples=null "
            "(every sample passed to prepare) is only for direct use; set an integer >= 1 (e.g. 256)"
        )
    return CalibrationRequest(samples=max_samples, batch_size=1, option=f"method.calibration_samples={max_samples}")


def validate_corda_options(method: str, max_samples: int | None, option_prefix: str = "method") -> None:
    """ConfigError unless ``method`` is ipm/kpm and ``max_samples`` is None or a positive integer."""
    if method not in ("ipm", "kpm"):
        raise ConfigError(f"{option_prefix}.corda_method={method!r} is invalid: use 'ipm' (top-r) or 'kpm' (bottom-r)")
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                    or max_samples < 1):
        raise ConfigError(
            f"{option_prefix}.calibration_samples={max_samples!r} is invalid: use null (all batches) or an integer >= 1"
        )


def corda_preprocess(
    model: nn.Module,
    lora_config: LoraConfig,
    calibration: CalibrationBatches | None,
    max_samples: int | None,
    who: str,
) -> None:
    """Run PEFT's ``preprocess_corda`` on ``model``: leaves ``module.eigens`` (U, S, V̂ for r triplets) on targets."""
    if calibration is None:
        raise ConfigError(f"{who} needs calibration batches (data-driven init), but the runner passed calibration=None")
    count = {"n": 0}

    def run_model() -> None:
        count["n"] = run_calibration(model, calibration, max_samples)

    preprocess_corda(model, lora_config, run_model=run_model)
    if count["n"] == 0:
        raise ConfigError(f"{who}: the calibration batches were empty; at least one sample is needed")
    if max_samples is not None and count["n"] < max_samples:
        raise ConfigError(f"{who} asks for {max_samples} calibration samples (method.calibration_samples) and got "
                          f"{count['n']}")


@dataclass
class CorDA(ResidualLoRA):
    name: str = "corda"
    init_lora_weights: bool | str = "corda"
    implicit_fields: ClassVar[frozenset[str]] = frozenset({"init_lora_weights", "use_rslora", "use_dora"})
    # "ipm" (instruction-previewed, top-r, task data; INFERRED to be what LoRAM's ablation used) or "kpm" (bottom-r).
    corda_method: str = "ipm"
    # Calibration samples for the covariance; the CorDA paper's count is not verified, 256 is INFERRED
    # (docs/methods/corda.md#defaults-and-choices).
    calibration_samples: int | None = 256
    quick_init: ClassVar[dict[str, Any]] = {"calibration_samples": None}

    # costs: docs/methods/corda.md#cost-model
    def init_memory_bytes(self, in_features: int, out_features: int, rank: int) -> float:
        """The fp32 covariance of the layer's input (in × in)."""
        return 4.0 * in_features * in_features

    def validate(self, model: nn.Module, target_modules: list[str]) -> None:
        super().validate(model, target_modules)
        validate_corda_options(self.corda_method, self.calibration_samples)

    def calibration_request(self) -> CalibrationRequest:
        return corda_calibration_request(self.calibration_samples, self.name)

    def lora_config(self, target_modules: list[str], modules_to_save: list[str] | None) -> LoraConfig:
        with warnings.catch_warnings():  # PEFT warns that corda_config is missing; it is set on the next lines
            warnings.filterwarnings("ignore", message=".*corda_config.*")
            config = super().lora_config(target_modules, modules_to_save)
        config.init_lora_weights = "corda"
        config.corda_config = CordaConfig(corda_method=self.corda_method)
        return config

    def create_peft_model(
        self,
        model: nn.Module,
        target_modules: list[str],
        modules_to_save: list[str] | None,
        calibration: CalibrationBatches | None,
    ) -> PeftModel:
        config = self.lora_config(target_modules, modules_to_save)
        corda_preprocess(model, config, calibration, self.calibration_samples, who="corda")
        return get_peft_model(model, config)
