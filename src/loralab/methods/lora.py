"""LoRA (Hu et al., 2022) through PEFT: W_eff = W + s·B·A with s = alpha / rank.

PEFT already implements LoRA and the variants that only flip one of its switches (rsLoRA's s = alpha/√rank,
DoRA's magnitude/direction split, PiSSA/OLoRA initialisations), so those methods are this class with other
defaults; see their YAML files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from loralab.methods.base import CalibrationBatches, Method


@dataclass
class LoRA(Method):
    name: str = "lora"
    # PEFT's ``init_lora_weights``: True (kaiming-uniform A, B = 0), "gaussian", "pissa", "olora", ...
    init_lora_weights: bool | str = True
    use_rslora: bool = False
    use_dora: bool = False
    # rsLoRA and DoRA are these switches (their own methods), not options of plain LoRA
    implicit_fields: ClassVar[frozenset[str]] = frozenset({"use_rslora", "use_dora"})

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.rank) if self.use_rslora else self.alpha / self.rank

    def lora_config(self, target_modules: list[str], modules_to_save: list[str] | None) -> LoraConfig:
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(target_modules),
            modules_to_save=list(modules_to_save) if modules_to_save else None,
            init_lora_weights=self.init_lora_weights,
            use_rslora=self.use_rslora,
            use_dora=self.use_dora,
        )

    def prepare(
        self,
        model: nn.Module,
        target_modules: list[str],
        modules_to_save: list[str] | None = None,
        calibration: CalibrationBatches | None = None,
    ) -> nn.Module:
        return get_peft_model(model, self.lora_config(target_modules, modules_to_save))

    def save(self, model: nn.Module, out_dir: Path) -> Path:
        assert isinstance(model, PeftModel), "LoRA.save expects the PeftModel returned by prepare()"
        model.save_pretrained(str(out_dir), safe_serialization=True)
        return Path(out_dir) / "adapter_model.safetensors"

    def load(self, model: nn.Module, weights_dir: Path) -> nn.Module:
        """Every LoRA-family ``save`` writes a plain PEFT adapter on the pretrained weights (residual inits and
        SDS-LoRA convert theirs), so vanilla PEFT puts it back."""
        return PeftModel.from_pretrained(model, str(weights_dir))

    def merge(self, model: nn.Module) -> nn.Module:
        assert isinstance(model, PeftModel), "LoRA.merge expects the PeftModel returned by prepare()"
        return model.merge_and_unload()
