"""The contract every fine-tuning method fulfils.

A method is one class (instantiated by Hydra from ``conf/method/<name>.yaml``) that knows how to

* check itself against a model (``validate``),
* declare the training data its initialisation looks at, if any (``calibration_request``),
* turn a pretrained model into the model that trains (``prepare``),
* build its optimiser when the default AdamW over trainable parameters is not what the paper uses
  (``build_optimizer``),
* hook into the training loop for schedules such as SDS-LoRA's basis refresh (``callbacks``),
* write its trained weights as safetensors (``save``), put them back on a fresh pretrained model (``load``) and
  fold them into the base model (``merge``).

The runner only talks to this interface, so adding a method never touches the runner.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Sequence

import torch
from torch import nn

from loralab.errors import ConfigError

# Yields training batches (dicts of tensors) for methods whose initialisation looks at data
# (LoRA-GA's gradient SVD, CorDA's activation covariance).
CalibrationBatches = Callable[[], Iterable[dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class CalibrationRequest:
    """The training data a method's initialisation looks at, as the method declares it.

    The runner provides exactly this: the first ``samples`` training examples, in the order the training set is
    stored (LoRA-GA's reference takes its first bsz × iters examples the same way), collated ``batch_size`` at a
    time; a training set with fewer examples stops the run before anything is written.
    """

    samples: int
    batch_size: int
    option: str  # the config option(s) that set it, for messages: "method.calibration_samples=256"

    @property
    def batches(self) -> int:
        return -(-self.samples // self.batch_size)

    def record(self) -> dict[str, Any]:
        """What ``metrics.json`` records about the calibration data the method got."""
        return {"source": "the first `samples` training examples", "samples": self.samples,
                "batch_size": self.batch_size, "batches": self.batches, "option": self.option}


def calibration_batches(request: CalibrationRequest, examples: Sequence[Any],
                        collate: Callable[[list[Any]], dict[str, torch.Tensor]], method: str) -> CalibrationBatches:
    """The batches ``request`` asks for, from the training ``examples``; ConfigError if there are too few."""
    if request.samples > len(examples):
        raise ConfigError(
            f"method={method} asks for {request.samples} calibration samples ({request.option}) but the training "
            f"set has {len(examples)} examples; lower the request or train on more data"
        )

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        for start in range(0, request.samples, request.batch_size):
            stop = min(start + request.batch_size, request.samples)
            yield collate([examples[i] for i in range(start, stop)])

    return batches


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct leaf names of the model's ``nn.Linear`` modules (what ``target_modules`` may name)."""
    return sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, nn.Linear)})


def matching_linears(model: nn.Module, target_modules: list[str]) -> dict[str, nn.Linear]:
    """Full names of the ``nn.Linear`` modules whose leaf name is in ``target_modules``."""
    wanted = set(target_modules)
    return {
        name: mod
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in wanted
    }


@dataclass
class Method:
    """Base class of all methods. Subclasses override the hooks they need."""

    name: str = "method"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # None → the model config's ``target_modules``.
    target_modules: list[str] | None = None
    # Whether the model is unchanged at step 0 (checked by the conformance tests).
    preserves_init: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    # Why the method's optimiser or callbacks need whole parameter matrices on every rank ("" if they do not):
    # reported when a sharded launch (FSDP, DeepSpeed) is refused.
    needs_whole_factors: ClassVar[str] = ""

    # ----------------------------------------------------------------- checks
    def validate(self, model: nn.Module, target_modules: list[str]) -> None:
        """Fail with a message that names the bad value and the valid range."""
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise ConfigError(f"rank={self.rank!r} is invalid: rank must be a positive integer (e.g. rank=8)")
        if not self.alpha > 0:
            raise ConfigError(f"alpha={self.alpha!r} is invalid: alpha must be > 0 (e.g. alpha=16)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"method.dropout={self.dropout!r} is invalid: it must lie in [0, 1)")
        targets = matching_linears(model, target_modules)
        if not targets:
            raise ConfigError(
                f"target_modules={list(target_modules)} match no linear layer of the model; "
                f"its linear modules are: {linear_module_names(model)}"
            )
        for name, mod in targets.items():
            limit = min(mod.in_features, mod.out_features)
            if self.rank > limit:
                raise ConfigError(
                    f"rank={self.rank} exceeds min(in, out)={limit} of target '{name}' "
                    f"({mod.in_features}->{mod.out_features}); valid ranks are 1..{limit}"
                )

    def multi_process_issue(self) -> str | None:
        """Why this configuration would train differently on several DDP processes than on one at the same
        global batch, naming the setting that works; None when it trains the same (checked before the run)."""
        return None

    # --------------------------------------------------------------- building
    def calibration_request(self) -> CalibrationRequest | None:
        """The training data ``prepare`` needs as ``calibration`` (None: a data-free initialisation)."""
        return None

    def prepare(
        self,
        model: nn.Module,
        target_modules: list[str],
        modules_to_save: list[str] | None = None,
        calibration: CalibrationBatches | None = None,
    ) -> nn.Module:
        raise NotImplementedError

    def init_summary(self) -> dict[str, Any] | None:
        """What ``prepare`` did that a reader of the results should see (recorded in metrics.json train.init)."""
        return None

    def build_optimizer(self, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer | None:
        """Return a custom optimiser, or None for the trainer's default AdamW."""
        return None

    def callbacks(self) -> list[Any]:
        """``transformers.TrainerCallback`` instances the method needs (schedules, refreshes)."""
        return []

    # ---------------------------------------------------------------- output
    def save(self, model: nn.Module, out_dir: Path) -> Path:
        """Write the trained weights (safetensors) to ``out_dir``; return the weights file."""
        raise NotImplementedError

    def load(self, model: nn.Module, weights_dir: Path) -> nn.Module:
        """The pretrained ``model`` with the weights ``save`` wrote to ``weights_dir`` (what ``merge`` takes)."""
        raise NotImplementedError

    def merge(self, model: nn.Module) -> nn.Module:
        """The plain model with the update folded into its weights."""
        raise NotImplementedError

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
