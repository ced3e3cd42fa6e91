"""Training-step overhead of the methods on one Llama-shaped model, measured side by side in one process.

What is measured (``run_benchmark``):

1. **Step time per method.** Every method gets its own copy of one randomly initialised ``LlamaForCausalLM``,
   prepared by loralab's method class from ``conf/method/<name>.yaml`` (the runner's path), with the optimiser
   the runner would give it (``method.build_optimizer`` or the Trainer's default). A step is the Trainer's
   algorithm without the Trainer: forward (bf16 autocast on CUDA), backward, gradient clipping, optimiser step,
   LR-scheduler step, ``zero_grad(set_to_none=True)``. Methods with callbacks (SDS-LoRA's warm-up transition)
   are driven through them for their first steps, untimed, so SDS-LoRA is timed on its SDS path. Then the
   methods take turns, one step each, for ``steps`` rounds (the order rotates every round), so slow drifts of a
   shared machine hit all of them alike; medians are reported. Timing: ``time.perf_counter`` around the step
   with ``torch.cuda.synchronize`` before and after on CUDA.
2. **SDS-LoRA's refresh and transition**, timed on their own through ``SDSCallback.on_step_end`` (what the
   Trainer runs), interleaved with the steps; the refresh is amortised by its schedule's rate (the share of
   steps followed by a refresh, ≈0.457 for the phased schedule with k = 5, from ``refresh_steps``).
3. **FLOPs**: the FLOP-model lower bound (:mod:`loralab.benchmarking.flops`) and the matrix FLOPs the
   implementation actually issues (``torch.utils.flop_counter.FlopCounterMode`` over one step).
4. **Memory**: see :mod:`loralab.benchmarking.memory` (``accounted`` on both devices, ``cuda_peak`` on CUDA,
   ``rss`` in one subprocess per method on CPU).
5. **Framework tax**: the same prepared model trained through ``loralab.training.trainer.build_trainer`` (the
   runner's Trainer with its callbacks) and through the bare loop of 1 (with the method's callbacks driven by
   hand); each Trainer step runs one bare step from a callback, so the two alternate; the Trainer step is the
   interval between consecutive ``on_step_begin`` events minus the bare step inside it.

Targets (reported, not asserted): SDS/LoRA step-time ratio ≤ 1 + 1.5 × the FLOP model's overhead; memory
overhead ≤ 0.5 %; framework tax ≤ 3 %; amortised refresh ≤ 0.5 % of a step.
"""
from __future__ import annotations

import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import OmegaConf
from torch import nn

from loralab.benchmarking import memory as mem
from loralab.benchmarking.flops import LlamaShape, refresh_flops, step_flops, supports
from loralab.io import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[3]
CONF = ROOT / "conf"
DEFAULT_METHODS = ("full_ft", "lora", "sds_lora", "dora", "pissa", "lora_plus", "lora_pro", "scaled_adamw",
                   "altlora")
# Options that only shorten initialisation (never the timed step): SDS's warm-up is set by ``sds_warmup_steps``.
INIT_OVERRIDES: dict[str, dict[str, Any]] = {
    "lora_ga": {"grad_batches": 1},
    "corda": {"calibration_samples": None},
}
SDS_FAMILY = ("sds_lora", "sds_ortho")


# --------------------------------------------------------------------------------------------- configuration
@dataclass
class BenchConfig:
    shape: LlamaShape
    device: str = "cpu"
    dtype: str = "float32"          # model dtype; "bfloat16" also turns on bf16 autocast (CUDA: the paper recipe)
    rank: int = 32
    alpha: float = 16.0
    methods: tuple[str, ...] = DEFAULT_METHODS
    steps: int = 10                 # timed rounds (one step of every method per round)
    warmup: int = 2                 # untimed steps per method after its own warm-up phase
    sds_warmup_steps: int = 2       # SDS-LoRA's plain-LoRA steps before the transition (paper: 10; not timed)
    refresh_main_steps: int = 1000  # nominal SDS steps for the schedule's refresh rate (≈ a 1-epoch run)
    tax_methods: tuple[str, ...] = ("lora",)
    tax_steps: int = 10
    rss: bool = False
    flop_count: bool = True
    lr: float = 1e-5
    max_grad_norm: float = 1.0
    seed: int = 0
    threads: int | None = None      # torch.set_num_threads on CPU (None: leave torch's default)
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[self.dtype]

    @property
    def autocast(self) -> bool:
        return self.torch_dtype == torch.bfloat16

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = asdict(self.shape)
        return d


def cpu_default() -> BenchConfig:
    """Llama-shaped (GQA 4:1, MLP 3.5×) and wide enough that the linear layers dominate a CPU step."""
    shape = LlamaShape(hidden=1024, intermediate=3584, heads=16, kv_heads=4, layers=2, vocab=2048, seq=256, batch=2)
    # one thread: on a CPU shared with other jobs, OpenMP barriers turn every preemption into a stall of all threads
    return BenchConfig(shape=shape, rss=True, threads=1)


def cuda_default() -> BenchConfig:
    """LLaMA3-8B layer shapes and vocabulary (4 of its 32 layers), bf16 weights, bf16 autocast, batch 4 × 512."""
    shape = LlamaShape(hidden=4096, intermediate=14336, heads=32, kv_heads=8, layers=4, vocab=128256, seq=512,
                       batch=4)
    return BenchConfig(shape=shape, device="cuda", dtype="bfloat16", steps=20, warmup=3, tax_steps=20)


def tiny() -> BenchConfig:
    """Seconds-sized shape for the tests."""
    shape = LlamaShape(hidden=64, intermediate=160, heads=4, kv_heads=2, layers=2, vocab=96, seq=16, batch=2)
    return BenchConfig(shape=shape, rank=4, methods=("full_ft", "lora", "sds_lora"), steps=2, warmup=1,
                       tax_steps=2, threads=1)


PAPER_LORA_PEAK_BYTES = int(128.54e9)  # sds_lora.md §5.6, MetaMathQA row (GB read as 10^9 bytes)
LLAMA3_8B = LlamaShape(hidden=4096, intermediate=14336, heads=32, kv_heads=8, layers=32, vocab=128256, seq=512,
                       batch=4)


# ---------------------------------------------------------------------------------------------- building
def sync(device: torch.device) -> None:
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
    return sorted(p.stem for p in (CONF / "method").glob("*.yaml"))


def build_method(name: str, cfg: BenchConfig) -> Any:
    """The method object exactly as the runner builds it (Hydra instantiate of ``conf/method/<name>.yaml``)."""
    from loralab.instantiate import build

    path = CONF / "method" / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"unknown method {name!r}; valid: {method_names()}")
    node = OmegaConf.load(path)
    overrides = dict(INIT_OVERRIDES.get(name, {}))
    if name in SDS_FAMILY:
        overrides["warmup_steps"] = cfg.sds_warmup_steps
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
    return int(getattr(trainee.method, "warmup_steps", 0)) if trainee.name in SDS_FAMILY else 0


def sds_is_active(model: nn.Module) -> bool:
    from loralab.methods.sds_lora import sds_layers

    layers = sds_layers(model)
    return bool(layers) and all(mod.lora_variant[ad].state(mod, ad).active for _, mod, ad in layers)


# ------------------------------------------------------------------------------------------------ timing
def summarise(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"n": 0, "median": None}
    qs = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {"n": len(samples), "median": statistics.median(samples), "p25": qs[0], "p75": qs[2],
            "min": min(samples), "samples": samples}


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def sds_refresh_timer(trainee: Trainee) -> tuple[Callable[[], None], Callable[[], None], float]:
    """(refresh, no-op callback) closures calling ``SDSCallback.on_step_end`` at a due / not-due step, and the rate."""
    from loralab.methods.sds_lora import SDSCallback, refresh_due, refresh_steps

    cb = next(c for c in trainee.driver.callbacks if isinstance(c, SDSCallback))
    warm, main = cb.warmup_steps, trainee.cfg.refresh_main_steps
    total = warm + main
    due = next(warm + t for t in range(1, main + 1) if refresh_due(t, main, cb.refresh, cb.k, cb.interval))
    idle = next((warm + t for t in range(1, main + 1) if not refresh_due(t, main, cb.refresh, cb.k, cb.interval)),
                None)
    rate = len(refresh_steps(total, warm, cb.refresh, cb.k, cb.interval)) / main
    from transformers import TrainerControl, TrainerState

    def at(step: int | None) -> Callable[[], None]:
        def call() -> None:
            if step is None:
                return
            state = TrainerState(max_steps=total, global_step=step)
            cb.on_step_end(trainee.driver.args, state, TrainerControl(), model=trainee.model,
                           optimizer=trainee.optimizer)
        return call

    return at(due), at(idle), rate


def implemented_flops(trainee: Trainee) -> int:
    """Matrix FLOPs one step issues (forward, backward, optimiser), per ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        trainee.step()
    return int(counter.get_total_flops())


# ------------------------------------------------------------------------------------------ framework tax
def framework_tax(name: str, base: nn.Module, cfg: BenchConfig, batch: dict[str, torch.Tensor],
                  workdir: Path) -> dict[str, Any]:
    """Trainer step (runner's ``build_trainer``, runner's callbacks) vs the bare loop, alternating step by step."""
    from transformers import TrainerCallback

    from loralab.training.callbacks import NonFiniteGuard
    from loralab.training.trainer import build_trainer

    device = torch.device(cfg.device)
    warm = max(cfg.warmup, 1) + own_steps_for(name, cfg)
    max_steps = warm + cfg.tax_steps + 1
    args = trainer_arguments(cfg, workdir / f"tax-{name}", max_steps)
    bare = prepare(name, base, cfg, batch, args, max_steps)
    trainer_method = build_method(name, cfg)
    model = trainer_method.prepare(copy.deepcopy(base), list(cfg.targets), [], lambda: iter([dict(batch)]))
    cpu_batch = {k: v.cpu() for k, v in batch.items()}
    examples = [{k: v[i] for k, v in cpu_batch.items()} for i in range(cfg.shape.batch)] * max_steps

    def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    times: dict[str, list[float]] = {"trainer": [], "bare": []}

    class Alternate(TrainerCallback):
        last: float | None = None

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            sync(device)
            now = time.perf_counter()
            if self.last is not None:
                times["trainer"].append(now - self.last)
            times["bare"].append(timed(bare.driven_step, device))
            self.last = time.perf_counter()

    trainer = build_trainer(model, trainer_method, args, examples, collate, workdir / f"tax-{name}" / "steps.jsonl",
                            extra_callbacks=[Alternate()])
    trainer.train()
    # trainer[j] is the Trainer step right after bare[j]: pair them (same load on a shared machine)
    trainer_s, bare_s = times["trainer"][warm:], times["bare"][warm:len(times["trainer"])]
    paired = summarise([t / b for t, b in zip(trainer_s, bare_s)])
    result = {
        "trainer_step_s": summarise(trainer_s),
        "bare_step_s": summarise(bare_s),
        "paired_ratio": paired,
        "paired_difference_s": summarise([t - b for t, b in zip(trainer_s, bare_s)]),
        "tax": paired["median"] - 1.0 if paired["median"] else None,
        "callbacks": [type(cb).__name__ for cb in trainer.callback_handler.callbacks],
    }
    # what the runner's own per-step callback costs, on the bare model (gradients present, as before the step)
    guard = NonFiniteGuard()
    guard_times = []
    for _ in range(max(cfg.tax_steps // 2, 2)):
        bare.loss().backward()
        guard_times.append(timed(lambda: guard.on_pre_optimizer_step(args, bare.driver.state, bare.driver.control,
                                                                     model=bare.model), device))
        bare.optimizer.zero_grad(set_to_none=True)
    result["nonfinite_guard_s"] = summarise(guard_times)
    del trainer, model, bare
    gc.collect()
    return result


def own_steps_for(name: str, cfg: BenchConfig) -> int:
    return cfg.sds_warmup_steps if name in SDS_FAMILY else 0


# ------------------------------------------------------------------------------------------------ RSS probe
def rss_probe(name: str, cfg: BenchConfig) -> dict[str, Any]:
    """Run in a fresh process (see ``_probe_main``): peak RSS during training steps, baseline before the model."""
    payload = json.dumps({"name": name, "cfg": cfg.as_dict()})
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    proc = subprocess.run([sys.executable, "-m", "loralab.benchmarking.overhead", "--rss-probe", payload],
                          capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc={proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def config_from_dict(d: dict[str, Any]) -> BenchConfig:
    d = dict(d)
    d["shape"] = LlamaShape(**d["shape"])
    for key in ("methods", "tax_methods", "targets"):
        d[key] = tuple(d[key])
    return BenchConfig(**d)


def _probe_main(payload: str) -> None:
    spec = json.loads(payload)
    cfg = config_from_dict(spec["cfg"])
    name = spec["name"]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    baseline = mem.current_rss()
    batch = make_batch(cfg)
    base = build_base_model(cfg)
    warm = max(cfg.warmup, 1) + own_steps_for(name, cfg)
    max_steps = warm + 3
    with tempfile.TemporaryDirectory() as tmp:
        args = trainer_arguments(cfg, Path(tmp), max_steps)
        trainee = prepare(name, base, cfg, batch, args, max_steps)
    del base
    gc.collect()
    for _ in range(warm):
        trainee.driven_step()
    gc.collect()
    before = mem.current_rss()
    with mem.RSSSampler() as sampler:
        for _ in range(2):
            trainee.step()
    print(json.dumps({"baseline_bytes": baseline, "before_steps_bytes": before, "peak_bytes": sampler.peak,
                      "peak_minus_baseline_bytes": sampler.peak - baseline}))


# -------------------------------------------------------------------------------------------------- driver
def machine() -> dict[str, Any]:
    from loralab.provenance import hardware, package_versions

    info = hardware()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        info["cpu_model"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu_model"] = platform.processor()
    info["logical_cpus"] = os.cpu_count()
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    info["python"] = platform.python_version()
    info["packages"] = {k: v for k, v in package_versions().items() if k in ("torch", "transformers", "peft", "accelerate")}
    return info


def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda requested but torch.cuda.is_available() is False")
    unknown = [m for m in (*cfg.methods, *cfg.tax_methods) if m not in method_names()]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; valid: {method_names()}")
    methods = list(dict.fromkeys(cfg.methods))
    if "lora" not in methods:
        methods.insert(0, "lora")  # the reference of every ratio
    if cfg.threads and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    started = time.time()
    batch = make_batch(cfg)
    base = build_base_model(cfg)
    warm_total = max(cfg.warmup, 1) + cfg.sds_warmup_steps
    max_steps = warm_total + cfg.steps + 10  # the LR schedule never reaches zero inside the run

    with tempfile.TemporaryDirectory() as tmp:
        args = trainer_arguments(cfg, Path(tmp), max_steps)
        trainees: dict[str, Trainee] = {}
        for name in methods:
            log(f"[bench] preparing {name}")
            trainees[name] = prepare(name, base, cfg, batch, args, max_steps)

    # warm-up: each method's own phase (SDS: plain-LoRA steps, then the transition), then cfg.warmup steps
    sds_extra: dict[str, Any] = {}
    for name, tr in trainees.items():
        for i in range(own_warmup_steps(tr)):
            if i == own_warmup_steps(tr) - 1 and name == "sds_lora":
                # the last warm-up step ends with the transition: time it separately (one-off cost)
                kw = dict(model=tr.model, optimizer=tr.optimizer)
                tr.driver.begin(**kw)
                tr.step()
                sds_extra["transition_s"] = timed(lambda: tr.driver.end(**kw), device)
            else:
                tr.driven_step()
        for _ in range(cfg.warmup):
            tr.step()
        if name in SDS_FAMILY and not sds_is_active(tr.model):
            raise RuntimeError(f"{name} is still in its warm-up after {own_warmup_steps(tr)} steps")
        log(f"[bench] warmed up {name}")

    # interleaved timing: one step of every method per round, rotating the order; SDS refresh as its own entry
    timers: dict[str, Callable[[], None]] = {name: tr.step for name, tr in trainees.items()}
    refresh_rate = None
    if "sds_lora" in trainees:
        refresh, idle, refresh_rate = sds_refresh_timer(trainees["sds_lora"])
        timers["sds_lora:refresh"] = refresh
        timers["sds_lora:callback_idle"] = idle
        del refresh, idle
    samples: dict[str, list[float]] = {k: [] for k in timers}
    names = list(timers)
    gc.collect()
    for rnd in range(cfg.steps):
        k = rnd % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(timed(timers[name], device))
        log(f"[bench] round {rnd + 1}/{cfg.steps}: " + ", ".join(
            f"{n}={statistics.median(samples[n]) * 1e3:.1f}ms" for n in trainees))

    # FLOPs and memory, after the timing (untimed steps)
    results: dict[str, Any] = {}
    for name, tr in trainees.items():
        entry: dict[str, Any] = {"step_time_s": summarise(samples[name]), "prepare_s": tr.prepare_s,
                                 "trainable_params": sum(p.numel() for p in tr.model.parameters() if p.requires_grad)}
        if supports(name):
            entry["flop_model"] = step_flops(cfg.shape, name, cfg.rank, cfg.targets).as_dict()
        if cfg.flop_count:
            entry["implemented_matmul_flops"] = implemented_flops(tr)
        tr.optimizer.zero_grad(set_to_none=True)
        entry["memory_accounted"] = mem.accounted_bytes(tr.model, tr.optimizer, tr.loss)
        tr.optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            resident = mem.static_bytes(tr.model, tr.optimizer)
            increment = mem.cuda_step_increment(tr.step, device)
            entry["memory_cuda_peak"] = {"resident_bytes": resident["parameters"] + resident["buffers"]
                                         + resident["optimizer_state"], "step_increment_bytes": increment}
            entry["memory_cuda_peak"]["total"] = entry["memory_cuda_peak"]["resident_bytes"] + increment
        results[name] = entry

    if "sds_lora" in trainees:
        step = results["sds_lora"]["step_time_s"]["median"]
        ref = summarise(samples["sds_lora:refresh"])
        sds_extra.update({
            "refresh_s": ref, "callback_idle_s": summarise(samples["sds_lora:callback_idle"]),
            "refresh_rate_per_step": refresh_rate,
            "refresh_model_flops": refresh_flops(cfg.shape, cfg.rank, cfg.targets),
            "amortised_refresh_fraction_of_step": refresh_rate * ref["median"] / step if step else None,
            "transition_fraction_of_step": sds_extra.get("transition_s", 0.0) / step if step else None,
        })

    # RSS probes (CPU): one fresh process per method
    if cfg.rss and device.type == "cpu":
        for name in methods:
            log(f"[bench] RSS probe {name}")
            results[name]["memory_rss"] = rss_probe(name, cfg)

    del trainees, timers
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    tax: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in cfg.tax_methods:
            log(f"[bench] framework tax {name}")
            tax[name] = framework_tax(name, base, cfg, batch, Path(tmp))

    for name, entry in results.items():  # per-round ratios: both steps ran within seconds of each other
        paired = [t / ref for t, ref in zip(samples[name], samples["lora"])]
        entry["paired_time_ratio_to_lora"] = summarise(paired)
    act_bytes = 2 if cfg.autocast else cfg.torch_dtype.itemsize
    fused_bytes = 2 if cfg.autocast else 4  # PEFT keeps adapters in fp32 (autocast_adapter_dtype)
    layers = [(m, n) for _, m, n in cfg.shape.projections() if _ in cfg.targets]
    report = {
        "kind": "loralab-overhead-benchmark",
        "created_unix": started,
        "wall_s": round(time.time() - started, 1),
        "machine": machine(),
        "config": cfg.as_dict(),
        "methods": results,
        "sds": sds_extra,
        "framework_tax": tax,
        "flop_model_llama3_8b": {m: step_flops(LLAMA3_8B, m, cfg.rank, cfg.targets).as_dict()
                                 for m in ("lora", "sds_lora")},
        # SDS's extra memory by formula: for this run's shape (check against the measured difference) and for
        # the paper's setting (LLaMA3-8B, bf16 autocast, fp32 adapters), against its 128.54 GB LoRA peak
        "sds_memory_model": {
            "this_run": mem.sds_extra_bytes(layers * cfg.shape.layers, cfg.rank, cfg.shape.tokens, fused_bytes,
                                            act_bytes),
            "llama3_8b_bf16": mem.sds_extra_bytes(
                [(m, n) for _, m, n in LLAMA3_8B.projections() if _ in cfg.targets] * LLAMA3_8B.layers, cfg.rank,
                LLAMA3_8B.tokens, 2, 2),
            "paper_lora_peak_bytes": PAPER_LORA_PEAK_BYTES,
        },
    }
    model = report["sds_memory_model"]
    model["llama3_8b_bf16"]["fraction_of_paper_lora_peak"] = model["llama3_8b_bf16"]["total"] / PAPER_LORA_PEAK_BYTES
    if "sds_lora" in results:
        model["this_run"]["measured_accounted_difference"] = (results["sds_lora"]["memory_accounted"]["total"]
                                                              - results["lora"]["memory_accounted"]["total"])
    add_ratios(report)
    report["targets"] = evaluate_targets(report)
    return report


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def add_ratios(report: dict[str, Any]) -> None:
    results = report["methods"]
    lora = results.get("lora", {})
    for entry in results.values():
        entry["time_ratio_to_lora"] = _ratio(entry["step_time_s"]["median"], lora.get("step_time_s", {}).get("median"))
        if "flop_model" in entry and "flop_model" in lora:
            entry["flop_model_ratio_to_lora"] = _ratio(entry["flop_model"]["total"], lora["flop_model"]["total"])
        if "implemented_matmul_flops" in entry and "implemented_matmul_flops" in lora:
            entry["implemented_flops_ratio_to_lora"] = _ratio(entry["implemented_matmul_flops"],
                                                              lora["implemented_matmul_flops"])
        for key, total in (("memory_accounted", "total"), ("memory_cuda_peak", "total"),
                           ("memory_rss", "peak_minus_baseline_bytes")):
            if key in entry and key in lora and total in entry[key] and total in lora[key]:
                entry[f"{key}_ratio_to_lora"] = _ratio(entry[key][total], lora[key][total])
        if "flop_model" in entry and entry["step_time_s"]["median"]:
            entry["achieved_model_gflops"] = entry["flop_model"]["total"] / entry["step_time_s"]["median"] / 1e9
    fm = report["flop_model_llama3_8b"]
    report["flop_model_llama3_8b"]["sds_lora_overhead"] = fm["sds_lora"]["total"] / fm["lora"]["total"] - 1.0


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    results, out = report["methods"], []
    sds = results.get("sds_lora")
    if sds and sds.get("paired_time_ratio_to_lora", {}).get("median") and sds.get("flop_model_ratio_to_lora"):
        bound = sds["flop_model_ratio_to_lora"] - 1.0
        out.append({"name": "SDS/LoRA step time", "value": sds["paired_time_ratio_to_lora"]["median"],
                    "limit": 1.0 + 1.5 * bound, "rule": "paired median ≤ 1 + 1.5 × FLOP-model overhead"})
    if sds:
        for key in ("memory_cuda_peak", "memory_accounted", "memory_rss"):
            ratio = sds.get(f"{key}_ratio_to_lora")
            if ratio is not None:
                out.append({"name": f"SDS/LoRA memory ({key.removeprefix('memory_')})", "value": ratio,
                            "limit": 1.005, "rule": "overhead ≤ 0.5 %"})
    for name, tax in report["framework_tax"].items():
        if tax.get("tax") is not None:
            out.append({"name": f"framework tax ({name})", "value": tax["tax"], "limit": 0.03, "rule": "≤ 3 %"})
    frac = report["sds"].get("amortised_refresh_fraction_of_step")
    if frac is not None:
        out.append({"name": "amortised SDS refresh", "value": frac, "limit": 0.005, "rule": "≤ 0.5 % of a step"})
    for t in out:
        t["met"] = bool(t["value"] <= t["limit"])
    return out


# ------------------------------------------------------------------------------------------------- output
def _mb(x: float | None) -> str:
    return "–" if x is None else f"{x / 2**20:.1f}"


def _x(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    cfg, m = report["config"], report["machine"]
    s = cfg["shape"]
    lines = [
        "# Training-step overhead",
        "",
        f"Machine: {m.get('gpu') or m.get('cpu_model')} — {m.get('logical_cpus')} logical CPUs, torch threads "
        f"{m.get('cpu_threads')}, load average {m.get('load_average')}, {m.get('platform')}; "
        + ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items()) + ".",
        f"Model: Llama, hidden {s['hidden']}, intermediate {s['intermediate']}, {s['heads']} heads / {s['kv_heads']} "
        f"KV heads, {s['layers']} layers, vocab {s['vocab']}; batch {s['batch']} × seq {s['seq']}; "
        f"{cfg['device']} {cfg['dtype']}{' + bf16 autocast' if cfg['dtype'] == 'bfloat16' else ''}; rank "
        f"{cfg['rank']}, alpha {cfg['alpha']}; target modules {', '.join(cfg['targets'])}.",
        f"Timing: {cfg['steps']} interleaved rounds (median, p25–p75), after each method's warm-up; wall "
        f"{report['wall_s']} s.",
        "",
        "| method | step ms (p25–p75) | × LoRA, paired (p25–p75) | FLOP model × LoRA (lower bound) | issued matmul FLOPs × LoRA "
        "| model GFLOP/s | accounted MiB | × LoRA | peak RSS MiB | × LoRA |"
        + (" CUDA peak MiB | × LoRA |" if cfg["device"] == "cuda" else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if cfg["device"] == "cuda" else ""),
    ]
    for name, e in report["methods"].items():
        st = e["step_time_s"]
        rss = e.get("memory_rss", {})
        pr = e.get("paired_time_ratio_to_lora") or {}
        paired = f"{_x(pr.get('median'))} ({_x(pr.get('p25'))}–{_x(pr.get('p75'))})" if pr.get("median") else "–"
        row = (f"| {name} | {st['median'] * 1e3:.1f} ({st['p25'] * 1e3:.1f}–{st['p75'] * 1e3:.1f}) | "
               f"{paired} | {_x(e.get('flop_model_ratio_to_lora'))} | "
               f"{_x(e.get('implemented_flops_ratio_to_lora'))} | {_x(e.get('achieved_model_gflops'), 1)} | "
               f"{_mb(e['memory_accounted']['total'])} | {_x(e.get('memory_accounted_ratio_to_lora'), 4)} | "
               f"{_mb(rss.get('peak_minus_baseline_bytes'))} | {_x(e.get('memory_rss_ratio_to_lora'), 4)} |")
        if cfg["device"] == "cuda":
            row += (f" {_mb(e.get('memory_cuda_peak', {}).get('total'))} | "
                    f"{_x(e.get('memory_cuda_peak_ratio_to_lora'), 4)} |")
        lines.append(row)
    sds = report.get("sds") or {}
    if sds:
        lines += [
            "",
            f"SDS-LoRA refresh (all layers, via SDSCallback.on_step_end): {sds['refresh_s']['median'] * 1e3:.2f} ms "
            f"median; schedule rate {sds['refresh_rate_per_step']:.3f}/step → amortised "
            f"{sds['amortised_refresh_fraction_of_step'] * 100:.3f} % of an SDS step. Callback at a step without "
            f"refresh: {sds['callback_idle_s']['median'] * 1e6:.0f} µs. One-off transition (SVD "
            f"reparameterisation): {sds.get('transition_s', float('nan')) * 1e3:.1f} ms "
            f"({(sds.get('transition_fraction_of_step') or 0) * 100:.1f} % of one step).",
        ]
    if report["framework_tax"]:
        lines += ["", "| framework tax | Trainer step ms | bare loop ms | tax, paired median (p25–p75) "
                  "| Trainer − bare, ms | NonFiniteGuard ms/step |", "|---|---|---|---|---|---|"]
        for name, t in report["framework_tax"].items():
            pr, diff = t["paired_ratio"], t["paired_difference_s"]
            tax = (f"{(pr['median'] - 1) * 100:+.2f} % ({(pr['p25'] - 1) * 100:+.2f}…{(pr['p75'] - 1) * 100:+.2f})"
                   if pr.get("median") else "–")
            lines.append(f"| {name} | {t['trainer_step_s']['median'] * 1e3:.1f} | {t['bare_step_s']['median'] * 1e3:.1f}"
                         f" | {tax} | {diff['median'] * 1e3:+.1f} | {t['nonfinite_guard_s']['median'] * 1e3:.2f} |")
    mm = report.get("sds_memory_model", {})
    if "measured_accounted_difference" in mm.get("this_run", {}):
        lines += ["", f"SDS-LoRA memory beyond LoRA by formula (fp32 Q_A, Q_B; fused factors in the compute dtype; "
                  f"wider saved h): {_mb(mm['this_run']['total'])} MiB for this run, measured (accounted) "
                  f"{_mb(mm['this_run']['measured_accounted_difference'])} MiB. At LLaMA3-8B, 32 layers, bf16, batch "
                  f"4 × 512: {mm['llama3_8b_bf16']['total'] / 1e9:.2f} GB = "
                  f"{mm['llama3_8b_bf16']['fraction_of_paper_lora_peak'] * 100:.2f} % of the paper's 128.54 GB LoRA "
                  f"peak (paper: +0.62 GB, +0.48 %)."]
    fm = report["flop_model_llama3_8b"]
    lines += ["", f"FLOP model at full LLaMA3-8B (32 layers, batch 4 × 512, rank {cfg['rank']}): SDS/LoRA step "
              f"overhead lower bound {fm['sds_lora_overhead'] * 100:.2f} % (paper, H200 wall time: +4.35 % / +5.23 %).",
              "", "| target | value | limit | met |", "|---|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['name']} ({t['rule']}) | {t['value']:.4f} | {t['limit']:.4f} | {'yes' if t['met'] else 'no'} |")
    lines += ["", "Memory: *accounted* = parameters + buffers + optimiser state + gradients + tensors saved for "
              "backward (distinct storages; no transient workspace); *peak RSS* = peak resident set during two "
              "training steps minus the RSS before the model was built, one fresh process per method (CPU only); "
              "*CUDA peak* = resident model/optimiser bytes + max_memory_allocated growth over one step. "
              "*Issued matmul FLOPs*: FlopCounterMode over one step (on CPU the SDPA kernel is not counted; the "
              "FLOP model column includes attention). *Model GFLOP/s*: FLOP-model work / median step time.", ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    tag = f"{report['config']['device']}"
    json_path, md_path = out_dir / f"overhead-{tag}.json", out_dir / f"overhead-{tag}.md"
    atomic_write_json(json_path, report)
    atomic_write_text(md_path, markdown(report))
    return json_path, md_path


if __name__ == "__main__":  # the RSS probe's entry point (run_benchmark starts it in a fresh process)
    if len(sys.argv) == 3 and sys.argv[1] == "--rss-probe":
        _probe_main(sys.argv[2])
    else:
        print("usage: python -m loralab.benchmarking.overhead --rss-probe '<json>' (internal); "
              "use scripts/bench_overhead.py", file=sys.stderr)
        sys.exit(2)
