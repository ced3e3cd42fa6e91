"""The methods under test, built as the runner builds them, and their training step without the Trainer.

Every method gets its own copy of one randomly initialised ``LlamaForCausalLM``, prepared by loralab's method
class from ``conf/method/<name>.yaml``, with the optimiser the runner would give it (``method.build_optimizer``
or the Trainer's default). A step is the Trainer's algorithm: forward (bf16 autocast when the config's dtype is
bf16), backward, gradient clipping, optimiser step, LR-scheduler step, ``zero_grad(set_to_none=True)``. Methods
with callbacks (SDS-LoRA's warm-up transition) are driven through them by ``Driver`` with a real TrainerState.
"""
from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from loralab.benchmarking.config import CONF, BenchConfig


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on CPU, where every op has finished when it returns."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_base_model(cfg: BenchConfig) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    s = cfg.shape
    config = LlamaConfig(
        vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate, num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads, num_hidden_layers=s.layers, max_position_embeddings=s.seq,
        tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2, attn_implementation="sdpa",
    )
    torch.manual_seed(cfg.seed)
    with torch.device(cfg.device):
        model = LlamaForCausalLM(config)
    return model.to(cfg.torch_dtype)


def make_batch(cfg: BenchConfig) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    ids = torch.randint(3, cfg.shape.vocab, (cfg.shape.batch, cfg.shape.seq), generator=gen)
    return {k: v.to(cfg.device) for k, v in
            {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}.items()}


def method_names() -> list[str]:
    """The method names ``conf/method/*.yaml`` defines."""
    return sorted(p.stem for p in (CONF / "method").glob("*.yaml"))


def method_node(name: str) -> tuple[Any, Any]:
    """``conf/method/<name>.yaml`` and the ``Method`` class it names."""
    from loralab.methods.base import method_class

    path = CONF / "method" / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"unknown method {name!r}; valid: {method_names()}")
    node = OmegaConf.load(path)
    return node, method_class(str(node._target_))


def build_method(name: str, cfg: BenchConfig) -> Any:
    """The method object exactly as the runner builds it (Hydra instantiate of ``conf/method/<name>.yaml``)."""
    from loralab.instantiate import build

    node, cls = method_node(name)
    overrides = dict(cls.quick_init)  # the step is timed, not the initialisation
    if cls.warmup_option:
        overrides[cls.warmup_option] = cfg.sds_warmup_steps
    for key, value in overrides.items():
        node[key] = value
    root = OmegaConf.create({"rank": cfg.rank, "alpha": cfg.alpha, "method": node})
    return build(root.method, _convert_="all")


def trainer_arguments(cfg: BenchConfig, output_dir: Path, max_steps: int) -> Any:
    """``loralab.training.trainer.training_arguments`` over ``conf/trainer/embedded.yaml``, sized for the bench."""
    from loralab.training.trainer import training_arguments

    trainer_cfg = OmegaConf.load(CONF / "trainer" / "embedded.yaml")
    trainer_cfg.merge_with({
        "max_steps": max_steps, "per_device_train_batch_size": cfg.shape.batch, "learning_rate": cfg.lr,
        "max_grad_norm": cfg.max_grad_norm, "save_steps": max_steps + 1, "bf16": cfg.autocast,
        "gradient_checkpointing": False, "warmup_steps": 0,
    })
    return training_arguments(trainer_cfg, output_dir, cfg.seed, report_to=[], progress=False)


def default_optimizer(model: nn.Module, args: Any) -> torch.optim.Optimizer:
    """The optimiser ``Trainer.create_optimizer`` builds when the method has none of its own."""
    from transformers import Trainer

    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return cls([p for p in model.parameters() if p.requires_grad], **kwargs)


@dataclass
class Driver:
    """A method's Trainer callbacks, called by hand with a real ``TrainerState`` (what the Trainer would pass)."""

    callbacks: list[Any]
    args: Any
    max_steps: int
    state: Any = None
    control: Any = None

    def __post_init__(self) -> None:
        from transformers import TrainerControl, TrainerState

        self.state = TrainerState(max_steps=self.max_steps)
        self.control = TrainerControl()

    def begin(self, **kw: Any) -> None:
        for cb in self.callbacks:
            cb.on_step_begin(self.args, self.state, self.control, **kw)

    def end(self, **kw: Any) -> None:
        self.state.global_step += 1
        for cb in self.callbacks:
            cb.on_step_end(self.args, self.state, self.control, **kw)


@dataclass
class Trainee:
    """One method's model, optimiser and step."""

    name: str
    method: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    batch: dict[str, torch.Tensor]
    cfg: BenchConfig
    driver: Driver
    prepare_s: float = 0.0

    @property
    def device(self) -> torch.device:
        return torch.device(self.cfg.device)

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.cfg.autocast else nullcontext()

    def loss(self) -> torch.Tensor:
        with self.autocast():
            return self.model(**self.batch).loss

    def step(self) -> None:
        self.loss().backward()
        if self.cfg.max_grad_norm:
            params = [p for p in self.model.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def driven_step(self) -> None:
        """A step with the method's callbacks, as the Trainer runs it (used for warm-up phases)."""
        kw = dict(model=self.model, optimizer=self.optimizer)
        self.driver.begin(**kw)
        self.step()
        self.driver.end(**kw)


def prepare(name: str, base: nn.Module, cfg: BenchConfig, batch: dict[str, torch.Tensor], args: Any,
            max_steps: int) -> Trainee:
    from transformers import get_scheduler

    method = build_method(name, cfg)
    model = copy.deepcopy(base)
    targets = list(cfg.targets)
    method.validate(model, targets)
    calibration = lambda: iter([{k: v for k, v in batch.items()}])  # noqa: E731  (LoRA-GA, CorDA)
    started = time.perf_counter()
    model = method.prepare(model, targets, [], calibration)
    prepare_s = time.perf_counter() - started
    model.train()
    optimizer = method.build_optimizer(model, lr=args.learning_rate, weight_decay=args.weight_decay)
    if optimizer is None:
        optimizer = default_optimizer(model, args)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=0, num_training_steps=max_steps)
    driver = Driver(list(method.callbacks()), args, max_steps)
    return Trainee(name, method, model, optimizer, scheduler, batch, cfg, driver, prepare_s)


def own_warmup_steps(trainee: Trainee) -> int:
    option = trainee.method.warmup_option
    return int(getattr(trainee.method, option)) if option else 0




def own_steps_for(name: str, cfg: BenchConfig) -> int:
    """Steps of a method's own warm-up phase before its timed path (SDS-LoRA: the plain-LoRA steps)."""
    return cfg.sds_warmup_steps if method_node(name)[1].warmup_option else 0
