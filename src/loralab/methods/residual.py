"""Base of every initialisation that rewrites the frozen weight (PiSSA, MiLoRA, OLoRA, CorDA, LoRAM).

Such a method installs a non-zero (A0, B0) and replaces W by ``W_res = W − s·B0A0`` so the model is unchanged at
step 0. Saving it honestly: the trained adapter only reproduces the fine-tuned model on top of ``W_res``, not on
the pretrained ``W``. ``save`` therefore writes PEFT's *converted* adapter,
``ΔW = s·(BA − B0A0) = s·[B | −B0]·[A ; A0]`` — a plain rank-2r LoRA (``init_lora_weights=True``, same scaling)
that loads with ``PeftModel.from_pretrained`` on a fresh pretrained base. This is the conversion PEFT performs
for ``save_pretrained(path_initial_model_for_weight_conversion=...)``; it is done here directly from an in-memory
copy of (A0, B0) because PEFT's path drops ``modules_to_save`` weights from the converted file and needs the
initial adapter on disk.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from torch import nn

from loralab.methods.base import CalibrationBatches
from loralab.methods.lora import LoRA

ADAPTER = "default"
# A residual init that moves the weights by more than this at step 0 (bf16 rounding of a large W_res) is warned of;
# the paper's LoRAM (s = 1) in bf16 moves them by ~0.2 %.
STEP0_WARN = 5e-3
log = logging.getLogger(__name__)


def lora_linear_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    """(name, PEFT LoRA layer) for every adapted ``nn.Linear`` of ``model``, in module order."""
    for name, module in model.named_modules():
        if (isinstance(module, LoraLayer) and ADAPTER in module.lora_A
                and isinstance(module.get_base_layer(), nn.Linear)):
            yield name, module


def init_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype initialisations compute in: at least fp32, and the weight's own when it is wider (fp64)."""
    return torch.promote_types(weight.dtype, torch.float32)


@torch.no_grad()
def set_residual_init(layer: LoraLayer, lora_A: torch.Tensor, lora_B: torch.Tensor) -> float:
    """Install (A0, B0) in a PEFT layer and replace its frozen weight by ``W − s·B0A0``.

    The math runs in :func:`init_dtype` of the weight (fp32 for bf16/fp16/fp32 models, fp64 for fp64 ones), from the
    factors *as stored* in the adapter, so ``W_res + s·B0A0`` reproduces W up to the rounding of W_res alone.
    Returns that step-0 change of the layer, ‖W_res + s·B0A0 − W‖_F / ‖W‖_F: the rounding of W_res to the model
    dtype, which grows with ‖s·B0A0‖ (bf16 LoRAM + rsLoRA without compensation: ~1 % at r = 128).
    """
    base = layer.get_base_layer()
    weight = base.weight
    s = layer.scaling[ADAPTER]
    layer.lora_A[ADAPTER].weight.data = lora_A.to(layer.lora_A[ADAPTER].weight.dtype).contiguous()
    layer.lora_B[ADAPTER].weight.data = lora_B.to(layer.lora_B[ADAPTER].weight.dtype).contiguous()
    dtype = init_dtype(weight)
    a0, b0 = layer.lora_A[ADAPTER].weight.to(dtype), layer.lora_B[ADAPTER].weight.to(dtype)
    original = weight.to(dtype)
    residual = original - s * (b0 @ a0)
    base.weight.data = residual.to(weight.dtype)
    return float((base.weight.to(dtype) - residual).norm() / original.norm().clamp_min(torch.finfo(dtype).tiny))


@dataclass
class ResidualLoRA(LoRA):
    """LoRA whose initialisation puts a non-zero B0A0 and subtracts s·B0A0 from the frozen weight."""

    # (A0, B0) as PEFT state-dict entries, kept on the CPU for the converted save; filled by ``prepare``.
    _initial: dict[str, torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)
    # Per layer, the step-0 change the stored residual leaves (see set_residual_init); filled by inits that use it.
    step0_errors: dict[str, float] = field(default_factory=dict, init=False, repr=False, compare=False)

    def init_summary(self) -> dict[str, Any] | None:
        """How far the rounded residual moves the model at step 0 (relative Frobenius error of W, over layers)."""
        if not self.step0_errors:
            return None
        errors = list(self.step0_errors.values())
        return {"step0_weight_error": {"max": max(errors), "mean": sum(errors) / len(errors), "layers": len(errors)}}

    def create_peft_model(
        self,
        model: nn.Module,
        target_modules: list[str],
        modules_to_save: list[str] | None,
        calibration: CalibrationBatches | None,
    ) -> PeftModel:
        """Build the PEFT model with (A0, B0) installed and W already replaced by the residual."""
        return get_peft_model(model, self.lora_config(target_modules, modules_to_save))

    def prepare(
        self,
        model: nn.Module,
        target_modules: list[str],
        modules_to_save: list[str] | None = None,
        calibration: CalibrationBatches | None = None,
    ) -> nn.Module:
        self.step0_errors = {}
        peft_model = self.create_peft_model(model, target_modules, modules_to_save, calibration)
        if self.step0_errors and (worst := max(self.step0_errors.values())) > STEP0_WARN:
            log.warning("%s: storing the residual W − s·B0A0 in the model's dtype changes the weights by up to %.2g %% "
                        "(relative Frobenius) at step 0; recorded in metrics.json (train.init)", self.name, 100 * worst)
        state = get_peft_model_state_dict(peft_model)
        self._initial = {k: v.detach().cpu().clone() for k, v in state.items() if ".lora_A." in k or ".lora_B." in k}
        return peft_model

    def save(self, model: nn.Module, out_dir: Path) -> Path:
        """Write ``s·(BA − B0A0)`` as a rank-2r LoRA adapter that applies to the *pretrained* weights."""
        if not isinstance(model, PeftModel):
            raise TypeError(f"{type(self).__name__}.save expects the PeftModel returned by prepare()")
        if self._initial is None:
            raise RuntimeError(f"{type(self).__name__}.save needs the initial adapter recorded by prepare()")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = get_peft_model_state_dict(model)
        converted: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            value = value.detach().cpu()
            if ".lora_A." in key:  # [A ; A0] stacks the rank dimension (rows of A)
                converted[key] = torch.cat([value, self._initial[key].to(value.dtype)], dim=0)
            elif ".lora_B." in key:  # [B | −B0] stacks the rank dimension (columns of B)
                converted[key] = torch.cat([value, -self._initial[key].to(value.dtype)], dim=1)
            else:  # modules_to_save and anything else trained alongside the adapter
                converted[key] = value
        converted = {k: v.contiguous() for k, v in converted.items()}
        save_file(converted, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})

        config: LoraConfig = copy.deepcopy(model.peft_config[ADAPTER])
        config.r *= 2
        # Keep the scaling of the doubled rank equal to the trained one: alpha/r or alpha/√r.
        config.lora_alpha *= math.sqrt(2) if config.use_rslora else 2
        config.init_lora_weights = True
        config.corda_config = None
        config.inference_mode = True
        config.save_pretrained(str(out_dir))
        return out_dir / "adapter_model.safetensors"
