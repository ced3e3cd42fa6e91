"""Plan a paper table before running it: its cells, and GPU memory and GPU-hours per cell and in total.

Nothing is run and no weights are needed. The pieces:

**Grid.** A table's cells are the jobs of its experiments' Hydra sweeps (``hydra.sweeper.params``; a table
whose rows are not one cartesian product lists its sibling sweeps in ``table.sweeps``). The job list is made
by Hydra's own basic sweeper (:mod:`loralab.tables.grid`), so command-line overrides replace a swept
key exactly as ``python run.py -m`` would, and every job is then composed with the real config tree, so the
estimate sees the cell's actual model, method, rank, data set, trainer and evaluation settings.

**Parameters** come from the architecture of each hub model (the numbers of its ``config.json``, kept in
:data:`loralab.planning.architectures.ARCHITECTURES`; e.g. LLaMA3-8B has 8,030,261,248 parameters), trainable
parameters from the method's target modules and its ``Method.trainable_params`` per adapted matrix (LoRA:
``r·(d_in + d_out)``). Everything method-specific below is the method's own cost hook (``loralab.methods.base``).

**Memory** (one GPU, nothing sharded)::

    weights            N · bytes(model.dtype)                     (bf16: 2 B)
    trainable state    T · (4 fp32 master + 4 grad + 8 Adam m, v) = 16 B per trainable parameter
                       (full FT counted the same way: mixed precision with an fp32 master copy)
    method extras      ``extra_memory_bytes`` per adapted layer + ``shared_memory_bytes`` once: SDS-LoRA's
                       Q_A/Q_B buffers, LoRA-Pro's full-size Adam moments and equivalent gradient (12 B per
                       adapted weight element), VeRA's shared projections; ``init_memory_bytes``: LoRA-GA's
                       full weight gradients and CorDA's covariances at initialisation (a transient peak)
    activations        with gradient checkpointing: every layer's input (b·s·h) + one layer's saved tensors;
                       without: all layers' saved tensors. Saved elements per token per layer:
                       decoder 8h + 2·kv_dim + 4i (SwiGLU), encoder 8h + 2i (+ 3·heads·s for DeBERTa's eager
                       disentangled attention), at 2 B (bf16 autocast) or 4 B
    logits             b·s·V · 10 B (bf16 logits, their fp32 copy for the loss, its fp32 gradient)
    CUDA context       1 GiB (context, allocator slack)

**Time.** Training FLOPs per token (matrix products only, ``N_mm`` = parameters used in matrix products,
i.e. without embedding look-ups): forward ``2·N_mm``; backward ``2·N_mm`` for activation gradients (the base is
frozen, so no weight gradients) plus ``2·N_mm`` weight gradients for full fine-tuning only; gradient
checkpointing recomputes the forward (``+2·N_mm``); attention scores add ``4·s·d_attn`` per layer forward
(half for causal models), backward and recompute in the same ratio; the adapter itself ``6·T``. So LoRA with
checkpointing is ``≈ 6·N_mm`` per token and full FT ``≈ 8·N_mm``. GPU-hours = FLOPs / (MFU · peak) (but at least
3 ms per block per micro-batch, PyTorch's eager dispatch, which binds for small models only), with the
peak of an H100/H200 (989 TFLOP/s dense bf16) and the MFU **calibrated** so that the paper's Table 6 cell
(LoRA, LLaMA3-8B, MetaMathQA 100K, one epoch, single H200: 1.61 h) comes out at exactly 1.61 h under our
config of that cell. Tokens per example are assumptions (:data:`TOKENS_PER_EXAMPLE`, INFERRED); vision
models see ``(224/16)² + 1 = 197`` tokens per image.

**Evaluation** time: generation is memory-bound, so each decode step costs one read of the weights at 60 %
of the HBM bandwidth (3.35 TB/s, H100 SXM); ``ceil(n / batch) · steps`` per task, where a batch's steps are its
longest answer: greedy decoding ends each row at its EOS or stop strings and the batch with its last row, so
``steps = min(max_new_tokens, ANSWER_TOKENS_PER_BATCH[task])`` (INFERRED answer lengths); beam search, which
decodes past stop strings, and tasks without an answer length on record cost ``max_new_tokens``. Each cell's
notes say which tasks were estimated which way. Classification is a forward pass at the calibrated MFU.
Evaluation-set sizes are in :data:`EVAL_EXAMPLES`.

All of this is an estimate for scheduling, not a measurement: the point is the order of magnitude per cell,
which cells need more than one 80 GB GPU (FSDP), and the total.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from omegaconf import DictConfig

from loralab.errors import ConfigError
from loralab.instantiate import build
from loralab.evaluation.tasks import task_type
from loralab.lr_source import labelled_lr
from loralab.methods.base import Method

from loralab.planning.architectures import (ANSWER_TOKENS_PER_BATCH, ARCHITECTURES, DTYPE_BYTES, EVAL_EXAMPLES,
                                            NUM_LABELS, TOKENS_PER_EXAMPLE, TRAIN_EXAMPLES, Architecture)
from loralab.tables.grid import CONF_DIR, compose, expand_sweep, sweeps_of

GIB = 1024 ** 3
PEAK_BF16_FLOPS = 989e12        # H100 SXM / H200 dense bf16 tensor-core peak (NVIDIA datasheets)
HBM_BANDWIDTH = 3.35e12         # H100 SXM, bytes/s (H200: 4.8e12)
DECODE_BANDWIDTH_EFFICIENCY = 0.6   # INFERRED: fraction of HBM bandwidth a batched HF generate() step reaches
GPU_MEMORY_BYTES = 80e9         # one H100 (the plan's unit); H200: 141e9
USABLE_FRACTION = 0.9           # leave 10 % for fragmentation when counting GPUs
CUDA_CONTEXT_BYTES = 1 * GIB
# INFERRED: PyTorch eager dispatch of one block's forward + backward (~100 kernels, ~30 µs each) per micro-batch;
# a floor on step time that only binds for small models on short sequences (DeBERTa on GLUE, ViTs)
EAGER_SECONDS_PER_LAYER = 3e-3

# The calibration point: SDS-LoRA paper Table 6 (results/paper/sds_table6.yaml).
CALIBRATION_HOURS = 1.61
CALIBRATION_OVERRIDES: tuple[str, ...] = ("experiment=sds_table6", "model=llama3_8b", "method=lora",
                                          "dataset=metamathqa", "rank=32")
CALIBRATION_LABEL = "LoRA, LLaMA3-8B, MetaMathQA 100K, 1 epoch, one H200: 1.61 h (SDS-LoRA Table 6)"
CALIBRATION_MEMORY_GB = 128.54
# For comparison only (not fitted): the other LoRA cell of the same table.
CHECK_OVERRIDES: tuple[str, ...] = ("experiment=sds_table6", "model=llama3_8b", "method=lora",
                                    "dataset=code_feedback", "rank=32")
CHECK_HOURS = 1.72


# ------------------------------------------------------------------------------------------- estimates
@dataclass
class CellEstimate:
    overrides: list[str]
    model: str
    method: str
    rank: int
    dataset: str
    seed: int
    lr: str = "?"                     # the learning rate and its label (loralab.lr_source)
    total_params: int | None = None
    trainable_params: int | None = None
    memory: dict[str, float] = field(default_factory=dict)   # bytes by component
    gpus: int | None = None
    train_tokens: float | None = None
    train_flops: float | None = None
    train_hours: float | None = None
    eval_hours: float | None = None
    dispatch_bound: bool = False      # train time set by the per-layer dispatch floor, not by FLOPs
    rank_applies: bool = True         # False for methods that train every weight (no adapter rank)
    notes: list[str] = field(default_factory=list)

    @property
    def memory_bytes(self) -> float | None:
        return sum(self.memory.values()) if self.memory else None

    @property
    def gpu_hours(self) -> float | None:
        if self.train_hours is None:
            return None
        return self.train_hours + (self.eval_hours or 0.0)


def _targets(cfg: DictConfig) -> list[str]:
    return [str(t) for t in (cfg.method.get("target_modules") or cfg.model.get("target_modules") or [])]


def _num_labels(cfg: DictConfig) -> int:
    value = cfg.dataset.get("num_labels")
    return int(value) if value else NUM_LABELS.get(str(cfg.dataset.name), 0)


def _seq_len(cfg: DictConfig, arch: Architecture) -> int:
    if arch.tokens_per_example:
        return arch.tokens_per_example
    max_length = cfg.dataset.get("max_length")
    return int(max_length) if max_length else 512


def adapted_shapes(arch: Architecture, targets: Iterable[str]) -> list[tuple[int, int]]:
    """``(in_features, out_features)`` of one block's linear layers that ``targets`` names."""
    linears = arch.layer_linears()
    unknown = [t for t in targets if t not in linears]
    if unknown:
        raise ConfigError(f"target module(s) {unknown} are not linear modules of a {arch.block} block; "
                          f"known: {sorted(linears)}")
    return [shape for t in targets for shape in linears[t]]


def per_layer_cost(arch: Architecture, targets: Iterable[str], cost: Callable[[int, int], float]) -> float:
    """A method's cost hook (``cost(in_features, out_features)``) summed over every adapted layer of the model."""
    return arch.layers * sum(cost(a, b) for a, b in adapted_shapes(arch, targets))


def trainable_params(arch: Architecture, method: Method, targets: Iterable[str], num_labels: int = 0,
                     modules_to_save: Iterable[str] = ()) -> tuple[int, int]:
    """``(trainable parameters, adapted weight elements)`` of a method (at its rank) on an architecture."""
    if method.trains_base_weights:
        return arch.total_params(num_labels), 0
    adapted = adapted_shapes(arch, targets)
    per_layer = sum(method.trainable_params(a, b, method.rank) for a, b in adapted)
    saved = 0
    for name in modules_to_save:
        if name == "classifier":
            saved += num_labels * arch.hidden + num_labels
        elif name == "pooler":
            saved += arch.hidden * arch.hidden + arch.hidden
    return arch.layers * per_layer + saved, arch.layers * sum(a * b for a, b in adapted)


def _activation_bytes(cfg: DictConfig, arch: Architecture, micro_batch: int, seq: int) -> tuple[float, float]:
    """``(block activations, logits)`` in bytes for one micro-batch."""
    act_bytes = 2 if cfg.trainer.get("bf16") or cfg.trainer.get("fp16") else 4
    tokens = micro_batch * seq
    h, i = arch.hidden, arch.intermediate
    if arch.family == "decoder":
        per_token_layer = 8 * h + 2 * arch.kv_dim + 4 * i
    else:
        per_token_layer = 8 * h + 2 * i + arch.eager_attention_terms * arch.heads * seq
    layer = tokens * per_token_layer * act_bytes
    if cfg.trainer.get("gradient_checkpointing"):
        blocks = arch.layers * tokens * h * act_bytes + layer
    else:
        blocks = arch.layers * layer
    logits = tokens * arch.vocab * 10 if arch.family == "decoder" else 0
    return float(blocks), float(logits)


def _train_examples(cfg: DictConfig) -> int | None:
    limit = cfg.dataset.get("train", {}).get("limit") if cfg.dataset.get("train") is not None else None
    published = TRAIN_EXAMPLES.get(str(cfg.dataset.name))
    if limit:
        return min(int(limit), published) if published else int(limit)
    return published


def _flops_per_token(cfg: DictConfig, arch: Architecture, method: Method, trainable: int, seq: int,
                     num_labels: int) -> float:
    n_mm = arch.matmul_params(num_labels)
    full = method.trains_base_weights
    ckpt = bool(cfg.trainer.get("gradient_checkpointing"))
    passes = 2.0 + 2.0 + (2.0 if full else 0.0) + (2.0 if ckpt else 0.0)   # in units of N_mm FLOPs
    attention_fwd = 4.0 * seq * arch.attention_dim * arch.layers * (0.5 if arch.family == "decoder" else 1.0)
    attention = attention_fwd * (1 + 2 + (1 if ckpt else 0))
    adapter = 0.0 if full else 6.0 * trainable
    return passes * n_mm + attention + adapter


def decode_steps_per_batch(task: DictConfig) -> tuple[int, str]:
    """Decoding steps one batch of a generative task costs, and on what basis (see the module docstring)."""
    max_new = int(task.get("max_new_tokens") or 1)
    answer = ANSWER_TOKENS_PER_BATCH.get(str(task.name))
    if int(task.get("num_beams") or 1) > 1:
        return max_new, "max_new_tokens (beam search)"
    if answer is None:
        return max_new, "max_new_tokens (no answer length on record)"
    return min(max_new, answer), "expected answer lengths"


def _eval_hours(cfg: DictConfig, arch: Architecture, num_labels: int,
                throughput: float) -> tuple[float, list[str], dict[str, list[str]]]:
    """Hours, tasks without a size on record, and the generative tasks by the basis of their decode steps."""
    weights = arch.total_params(num_labels) * DTYPE_BYTES.get(str(cfg.model.get("dtype", "float32")), 4)
    step_s = weights / (HBM_BANDWIDTH * DECODE_BANDWIDTH_EFFICIENCY)
    seconds, missing, bases = 0.0, [], {}
    for task in cfg.eval.get("tasks") or []:
        n = EVAL_EXAMPLES.get(str(task.name))
        if n is None:
            missing.append(str(task.name))
            continue
        if task_type(task).generative:  # decoded token by token; the other types: forward passes
            batch = int(task.get("batch_size") or 1)
            steps, basis = decode_steps_per_batch(task)
            bases.setdefault(basis, []).append(str(task.name))
            seconds += math.ceil(n / batch) * steps * step_s
        else:
            seq = arch.tokens_per_example or TOKENS_PER_EXAMPLE.get(str(cfg.dataset.name), 128)
            seconds += n * seq * 2.0 * arch.matmul_params(num_labels) / throughput
    return seconds / 3600.0, missing, bases


def estimate_cell(cfg: DictConfig, overrides: Sequence[str] = (), throughput: float | None = None) -> CellEstimate:
    """Memory and GPU-hours of one composed cell (``throughput``: effective FLOP/s; default: calibrated)."""
    method = build(cfg.method, _convert_="all")
    cell = CellEstimate(list(overrides), str(cfg.model.name), str(cfg.method.name), int(cfg.rank),
                        str(cfg.dataset.name), int(cfg.seed), labelled_lr(cfg).describe(),
                        rank_applies=not method.trains_base_weights)
    arch = ARCHITECTURES.get(cell.model)
    if arch is None:
        cell.notes.append(f"no architecture on record for model {cell.model!r}: not estimated")
        return cell
    throughput = calibrate().throughput if throughput is None else throughput
    num_labels = _num_labels(cfg)
    seq = _seq_len(cfg, arch)
    targets = _targets(cfg)
    trainable, adapted = trainable_params(arch, method, targets, num_labels,
                                          [str(m) for m in cfg.model.get("modules_to_save") or []])
    cell.total_params, cell.trainable_params = arch.total_params(num_labels), trainable

    weight_bytes = DTYPE_BYTES.get(str(cfg.model.get("dtype", "float32")), 4)
    micro_batch = int(cfg.trainer.get("per_device_train_batch_size") or 1)
    blocks, logits = _activation_bytes(cfg, arch, micro_batch, seq)
    memory = {"weights": cell.total_params * weight_bytes, "trainable_state": trainable * 16.0,
              "activations": blocks, "logits": logits, "cuda_context": float(CUDA_CONTEXT_BYTES)}
    if not method.trains_base_weights:
        extra = per_layer_cost(arch, targets, lambda a, b: method.extra_memory_bytes(a, b, method.rank))
        extra += method.shared_memory_bytes(adapted_shapes(arch, targets) * arch.layers, method.rank)
        if extra:
            memory["method_extra"] = extra
        # a data-driven initialisation's transient peak, counted only where it exceeds the training-time state
        excess = per_layer_cost(arch, targets, lambda a, b: method.init_memory_bytes(a, b, method.rank)) - (
            memory["trainable_state"] + blocks + logits)
        if excess > 0:
            memory["init_peak_extra"] = excess
    cell.memory = memory
    total = sum(memory.values())
    cell.gpus = max(1, math.ceil(total / (GPU_MEMORY_BYTES * USABLE_FRACTION)))
    if cell.gpus > 1:
        cell.notes.append(f"needs ~{cell.gpus} × 80 GB GPUs (FSDP-sharded weights and optimiser state)")

    examples = _train_examples(cfg)
    tokens_per_example = arch.tokens_per_example or TOKENS_PER_EXAMPLE.get(cell.dataset)
    if examples is None or tokens_per_example is None:
        cell.notes.append(f"no size / token count on record for data set {cell.dataset!r}: time not estimated")
        return cell
    epochs = float(cfg.trainer.get("num_train_epochs") or 1)
    max_steps = int(cfg.trainer.get("max_steps") or -1)
    if max_steps > 0:
        global_batch = micro_batch * int(cfg.trainer.get("gradient_accumulation_steps") or 1)
        cell.train_tokens = float(max_steps * global_batch * tokens_per_example)
    else:
        cell.train_tokens = float(examples) * epochs * tokens_per_example
    # attention over the typical (padded) length; activation memory above uses the longest (max_length)
    cell.train_flops = cell.train_tokens * _flops_per_token(cfg, arch, method, trainable, tokens_per_example,
                                                            num_labels)
    micro_batches = cell.train_tokens / tokens_per_example / micro_batch
    floor_s = micro_batches * arch.layers * EAGER_SECONDS_PER_LAYER
    cell.train_hours = max(cell.train_flops / throughput, floor_s) / 3600.0
    cell.dispatch_bound = floor_s > cell.train_flops / throughput
    cell.eval_hours, missing, bases = _eval_hours(cfg, arch, num_labels, throughput)
    if missing:
        cell.notes.append(f"evaluation time not estimated for {missing}")
    for basis, tasks in bases.items():
        cell.notes.append(f"evaluation decode steps per batch: {basis} for {', '.join(tasks)}")
    return cell


@dataclass(frozen=True)
class Calibration:
    tokens: float
    flops_per_token: float
    throughput: float            # effective FLOP/s

    @property
    def mfu(self) -> float:
        return self.throughput / PEAK_BF16_FLOPS


_CALIBRATION: dict[Path, Calibration] = {}


def calibrate(conf_dir: Path = CONF_DIR) -> Calibration:
    """The effective throughput that makes our config of the paper's Table 6 LoRA cell take 1.61 h."""
    key = Path(conf_dir).resolve()
    if key not in _CALIBRATION:
        cfg = compose(CALIBRATION_OVERRIDES, conf_dir)
        cell = estimate_cell(cfg, CALIBRATION_OVERRIDES, throughput=1.0)   # hours at 1 FLOP/s
        if cell.train_flops is None or cell.train_tokens is None:
            raise ConfigError(f"cannot calibrate: the Table 6 cell ({' '.join(CALIBRATION_OVERRIDES)}) "
                              f"has no FLOP estimate ({cell.notes})")
        throughput = cell.train_flops / (CALIBRATION_HOURS * 3600.0)
        _CALIBRATION[key] = Calibration(cell.train_tokens, cell.train_flops / cell.train_tokens, throughput)
    return _CALIBRATION[key]


# ------------------------------------------------------------------------------------------------ plan
@dataclass
class Plan:
    experiment: str
    sweeps: list[str]
    cells: list[CellEstimate]
    calibration: Calibration

    @property
    def gpu_hours(self) -> float:
        return sum(c.gpu_hours or 0.0 for c in self.cells)

    @property
    def unestimated(self) -> int:
        return sum(c.gpu_hours is None for c in self.cells)


def plan(experiment: str, extra: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> Plan:
    """Every cell of every sweep feeding ``experiment``'s table, estimated. Overrides of Hydra's own settings
    (``hydra/launcher=submitit_slurm``, ``hydra.launcher.*``) do not change a cell and are left out."""
    extra = [o for o in extra if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    calibration = calibrate(conf_dir)
    cells = []
    for sweep in sweeps_of(experiment, conf_dir):
        for job in expand_sweep(sweep, extra, conf_dir):
            cells.append(estimate_cell(compose(job, conf_dir), job, calibration.throughput))
    return Plan(experiment, sweeps_of(experiment, conf_dir), cells, calibration)


def _fmt_count(n: int | None) -> str:
    if n is None:
        return "?"
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{suffix}"
    return str(n)


def _fmt(x: float | None, digits: int = 2) -> str:
    return "?" if x is None else f"{x:.{digits}f}"


def render_calibration(calibration: Calibration, conf_dir: Path = CONF_DIR) -> str:
    cfg = compose(CALIBRATION_OVERRIDES, conf_dir)
    calibrated = estimate_cell(cfg, CALIBRATION_OVERRIDES, calibration.throughput)
    check = estimate_cell(compose(CHECK_OVERRIDES, conf_dir), CHECK_OVERRIDES, calibration.throughput)
    return "\n".join([
        f"Calibration: {CALIBRATION_LABEL}",
        f"  our config of that cell ({' '.join(CALIBRATION_OVERRIDES)}): {calibration.tokens:.3e} tokens "
        f"(examples × epochs × {TOKENS_PER_EXAMPLE['metamathqa']} tokens, INFERRED) × "
        f"{calibration.flops_per_token:.3e} FLOP/token (frozen base: 2N fwd + 2N activation grads + 2N recompute, "
        f"plus attention and adapter) = {calibration.tokens * calibration.flops_per_token:.3e} FLOP",
        f"  → effective throughput {calibration.throughput / 1e12:.0f} TFLOP/s = {100 * calibration.mfu:.1f} % MFU "
        f"of {PEAK_BF16_FLOPS / 1e12:.0f} TFLOP/s (H100/H200 dense bf16), used for every cell",
        f"  calibration cell re-estimated: {_fmt(calibrated.train_hours)} h (by construction); not fitted, for "
        f"comparison: LoRA on Code-Feedback {_fmt(check.train_hours)} h (paper {CHECK_HOURS:.2f} h)",
        f"  memory of the calibration cell: {_fmt((calibrated.memory_bytes or 0) / GIB, 1)} GiB with our recipe "
        f"(micro-batch {int(cfg.trainer.per_device_train_batch_size)}, gradient checkpointing "
        f"{'on' if cfg.trainer.get('gradient_checkpointing') else 'off'}); the paper measured "
        f"{CALIBRATION_MEMORY_GB} GB with its own, unreported batch and sequence settings",
    ])


def render_plan(result: Plan, conf_dir: Path = CONF_DIR) -> str:
    header = ["#", "model", "method", "rank", "dataset", "seed", "overrides", "lr (label)", "params", "trainable",
              "memory GiB", "GPUs", "train h", "eval h", "GPU-h"]
    lines = [f"Plan for {result.experiment} (sweeps: {', '.join(result.sweeps)}): {len(result.cells)} cells, "
             "nothing run", "", render_calibration(result.calibration, conf_dir), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    grouped = {"model", "method", "rank", "dataset", "seed", "experiment"}
    notes: dict[str, list[int]] = {}
    for n, c in enumerate(result.cells, 1):
        extra = [o for o in c.overrides if o.split("=", 1)[0].lstrip("+~") not in grouped]
        memory = c.memory_bytes
        lines.append("| " + " | ".join([
            str(n), c.model, c.method, str(c.rank) if c.rank_applies else "—", c.dataset, str(c.seed),
            " ".join(extra) or "—", c.lr, _fmt_count(c.total_params), _fmt_count(c.trainable_params),
            _fmt(None if memory is None else memory / GIB, 1), "?" if c.gpus is None else str(c.gpus),
            _fmt(c.train_hours) + ("*" if c.dispatch_bound else ""), _fmt(c.eval_hours), _fmt(c.gpu_hours)]) + " |")
        for note in c.notes:
            notes.setdefault(note, []).append(n)
    peak = max((c.memory_bytes or 0.0 for c in result.cells), default=0.0)
    lines += ["", f"Total: {result.gpu_hours:.1f} GPU-hours (H100/H200-class, training + evaluation) over "
                  f"{len(result.cells)} cells; largest cell {peak / GIB:.1f} GiB on one GPU"
                  + (f"; {result.unestimated} cell(s) not estimated" if result.unestimated else "") + "."]
    if any(c.dispatch_bound for c in result.cells):
        lines.append(f"* time set by the dispatch floor ({EAGER_SECONDS_PER_LAYER * 1e3:.0f} ms per block per "
                     "micro-batch), not by FLOPs: small model or short sequences.")
    lines += [f"cells {_ranges(cells)}: {note}" for note, cells in notes.items()]
    return "\n".join(lines) + "\n"


def _ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 7] -> '1-3, 7'``."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)
