"""The contract every fine-tuning method fulfils.

A method is one class (instantiated by Hydra from ``conf/method/<name>.yaml``) that knows how to

* check itself against a model (``validate``),
* declare the training data its initialisation looks at, if any (``calibration_request``),
* turn a pretrained model into the model that trains (``prepare``),
* build its optimiser when the default AdamW over trainable parameters is not what the paper uses
  (``build_optimizer``),
* hook into the training loop for schedules such as SDS-LoRA's basis refresh (``callbacks``),
* write its trained weights as safetensors (``save``), put them back on a fresh pretrained model (``load``) and
  fold them into the base model (``merge``),
* state its cost per adapted linear layer (``in_features`` → ``out_features`` at ``rank``), which the planner
  (``planning/plan.py``), the overhead benchmark (``benchmarking/``) and the diagnostics read instead of knowing
  methods by name: trainable parameters (``trainable_params``), matrix FLOPs per token of a training step
  (``token_flops``), per step (``step_flops``) and of periodic work outside the step (``periodic_flops``), memory
  beyond the trainable parameters' weights, gradients and Adam state (``extra_memory_bytes``; held once per model:
  ``shared_memory_bytes``) and the transient peak of a data-driven initialisation (``init_memory_bytes``).

The defaults are those of a plain LoRA-shaped adapter (``s·B·A`` on a frozen base, trained by AdamW); a method
overrides only the hooks where it differs, citing the formula's source in ``docs/methods/<name>.md``. The runner
and the tools only talk to this interface, so adding a method never touches them (CONTRIBUTING.md).
"""
from __future__ import annotations

import importlib
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping, Sequence

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


@dataclass(frozen=True)
class LinearFlops:
    """Matrix FLOPs (2 per multiply-add) of one linear layer's path for one token."""

    forward: int
    backward: int

    @property
    def total(self) -> int:
        return self.forward + self.backward


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
    preserves_init: ClassVar[bool] = True
    # Every parameter of the model trains (full fine-tuning): no adapter, the base's weight gradients are formed,
    # rank and the target modules do not apply.
    trains_base_weights: ClassVar[bool] = False
    # Dataclass fields that are not options of this method: a parent's switch the subclass fixes as part of what
    # it is (PiSSA's init_lora_weights) or an inherited option it ignores. ``effective_config`` leaves them out
    # unless a config sets them, so they are neither listed in the YAML nor part of the run hash.
    implicit_fields: ClassVar[frozenset[str]] = frozenset()
    # Option values that make the initialisation cheap without changing the training step (benchmarks time the
    # step, not the initialisation), e.g. one calibration batch.
    quick_init: ClassVar[dict[str, Any]] = {}
    # The option holding the number of plain-LoRA steps before the method's own update takes over (SDS-LoRA's
    # warm-up); None: the method trains its own way from step 0.
    warmup_option: ClassVar[str | None] = None
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

    def in_warmup(self, model: nn.Module) -> bool:
        """Whether the prepared ``model`` still trains as plain LoRA (see ``warmup_option``)."""
        return False

    # ------------------------------------------------------------------ costs
    # Per adapted linear layer y = W x, W ∈ R^{out×in}; docs/methods/flops.md derives the LoRA defaults.
    def trainable_params(self, in_features: int, out_features: int, rank: int) -> int:
        """Parameters the method trains for one adapted layer: A (rank×in) and B (out×rank)."""
        return rank * (in_features + out_features)

    def token_flops(self, in_features: int, out_features: int, rank: int, input_grad: bool = True) -> LinearFlops:
        """Matrix FLOPs per token of the adapter path of one layer in a training step (the frozen base product is
        counted by the caller). LoRA: forward A x, B h = 2r(n+m); backward ∇B, ∂h, ∇A = 2mr + 2mr + 2rn and ∂x =
        2rn only when the layer's input needs a gradient."""
        m, n, r = out_features, in_features, rank
        return LinearFlops(2 * r * (m + n), 4 * m * r + 2 * r * n + (2 * r * n if input_grad else 0))

    def step_flops(self, in_features: int, out_features: int, rank: int) -> int:
        """Matrix FLOPs per optimiser step (independent of the tokens) of one layer: norms, preconditioners."""
        return 0

    def periodic_flops(self, in_features: int, out_features: int, rank: int) -> int:
        """Matrix FLOPs of one layer's periodic work run between some steps (SDS-LoRA's basis refresh); its rate
        is the method's schedule."""
        return 0

    def extra_memory_bytes(self, in_features: int, out_features: int, rank: int) -> float:
        """Training-time bytes of one layer beyond the trainable parameters' own 16 B (fp32 weight, gradient,
        Adam m and v): cached buffers, optimiser state of another shape."""
        return 0.0

    def shared_memory_bytes(self, layers: Sequence[tuple[int, int]], rank: int) -> float:
        """Training-time bytes held once for the whole model rather than per layer (e.g. projections every adapted
        layer shares), given the ``(in_features, out_features)`` of all adapted layers."""
        return 0.0

    def init_memory_bytes(self, in_features: int, out_features: int, rank: int) -> float:
        """Transient bytes of one layer while the initialisation runs (before training): full gradients,
        activation covariances."""
        return 0.0

    # ----------------------------------------------------------------- config
    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """The method's options and their defaults: its dataclass fields but ``implicit_fields``."""
        out = {}
        for f in fields(cls):
            if not f.init or f.name in cls.implicit_fields:
                continue
            out[f.name] = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        return out

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


def method_class(target: str) -> type[Method]:
    """The ``Method`` subclass a config's ``_target_`` names."""
    module, _, name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name, None)
    except ImportError as err:
        raise ConfigError(f"method._target_={target!r} cannot be imported ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ConfigError(f"method._target_={target!r} is not a loralab Method subclass")
    return cls


def effective_config(node: Mapping[str, Any]) -> dict[str, Any]:
    """A resolved ``method`` config block as the method runs it: its YAML and overrides over the dataclass's
    option defaults (``Method.option_defaults``). What the run hash covers, so listing a default in the YAML or
    on the command line, or leaving it out, is the same run."""
    node = dict(node)
    target = node.get("_target_")
    if not isinstance(target, str):
        return node
    return {**method_class(target).option_defaults(), **node}


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
