"""Evaluation throughput: the native engine's decoding against the reference decoding, side by side in one process.

*Reference* ("old"): prompts batched in their order, each batch decoded until every row emitted EOS or reached
``max_new_tokens``, stop strings cut afterwards. *Per-row* ("new", what evaluation runs): prompts batched by
length, each row ended at its stop strings, the batch when all rows have ended
(:mod:`loralab.evaluation.generation`). Both give the same text (checked here on every workload).

Per workload and path:

* **decode steps issued**: forward passes of the model (the prompt's pass makes the first token, each later
  pass one more), summed over batches, counted by a forward hook; **row-steps**: the same weighted by the rows
  of each pass (what the hardware computes; rows that have finished are still in the batch);
* **decode steps needed**: per batch, its longest row's *needed* length, summed over the path's batches. A row
  needs the tokens up to its EOS, or up to the token after which its cut at a stop string is final, or all of
  ``max_new_tokens``; needed lengths come from the reference's own tokens, and their sum is the **tokens
  needed** (the same for both paths);
* **time**: wall time of the whole workload, both paths interleaved round by round (medians); **generated
  tokens per second** = tokens needed / time, so both paths are credited with the same useful output.

Models: the embedded LM (its own generations) and a Llama-shaped model of benchmark width with random weights.
A random model never writes a stop string nor EOS where a trained one would, so the Llama-shaped model
*replays* the embedded model's reference continuations (:class:`Replay` sets its last-position logits to pick
the scripted token after the real forward pass): the same rows, stops and batches, at the cost per step of the
wider model, where the stopping criterion's host-side work is a smaller share of a step.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from loralab.benchmarking.flops import LlamaShape
from loralab.benchmarking.timing import interleave, summarise
from loralab.evaluation.generation import (
    decode_batch,
    encode_prompt,
    final_stop_cut,
    generate_greedy,
    length_batches,
)

STANDIN_STOPS = [". ", "+"]  # strings the embedded LM's generations hit at varied positions


@dataclass(frozen=True)
class Workload:
    """One generative task of a suite, as the native engine would decode it (``overrides`` compose the suite)."""

    name: str
    overrides: tuple[str, ...] = ()
    limit: int | None = None          # first prompts only (tests)


@dataclass
class DecodingBenchConfig:
    device: str = "cpu"
    dtype: str = "float32"
    shape: LlamaShape = field(default_factory=lambda: LlamaShape(hidden=1024, intermediate=3584, heads=16,
                                                                 kv_heads=4, layers=2, vocab=2048, seq=256,
                                                                 batch=16))
    rounds: int = 3
    threads: int | None = 1
    workloads: tuple[Workload, ...] = (
        Workload("arith_shift (as configured: no stop strings, batch 100)"),
        Workload(f"arith_shift, stop strings {STANDIN_STOPS}, batch 16",
                 (f"+eval.tasks.0.stop=[{','.join(repr(s) for s in STANDIN_STOPS)}]", "eval.tasks.0.batch_size=16")),
    )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["workloads"] = [asdict(w) for w in self.workloads]
        return d


def cpu_default() -> DecodingBenchConfig:
    return DecodingBenchConfig()


def tiny() -> DecodingBenchConfig:
    """Seconds-sized: 24 prompts, a narrow Llama-shaped model, one round."""
    shape = LlamaShape(hidden=64, intermediate=160, heads=4, kv_heads=2, layers=2, vocab=96, seq=160, batch=8)
    workloads = tuple(Workload(w.name, w.overrides, limit=24) for w in DecodingBenchConfig().workloads)
    return DecodingBenchConfig(shape=shape, rounds=1, workloads=workloads)


# ---------------------------------------------------------------------------------------------- measures
class StepMeter:
    """Counts a model's forward passes and the rows they compute (a forward hook)."""

    def __init__(self, model: nn.Module) -> None:
        self.steps = self.row_steps = 0
        self.handle = model.register_forward_hook(self._count, with_kwargs=True)

    def _count(self, module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        self.steps += 1
        self.row_steps += int(kwargs["input_ids"].shape[0])

    def take(self) -> dict[str, int]:
        out = {"decode_steps": self.steps, "row_steps": self.row_steps}
        self.steps = self.row_steps = 0
        return out


class Replay:
    """Forward hook that makes a model emit given continuations: after the real forward pass, the logits at the
    last position are set to choose each row's next scripted token (EOS once the script ends). Rows are matched
    to scripts by their prompt's tokens at the prompt's pass; greedy decoding keeps the row order."""

    def __init__(self, model: nn.Module, scripts: dict[tuple[int, ...], list[int]], eos: int) -> None:
        self.scripts, self.eos = scripts, eos
        self.rows: list[list[int]] = []
        self.position = 0
        self.handle = model.register_forward_hook(self._force, with_kwargs=True)

    def _force(self, module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1:  # the prompt's pass (later passes feed one token per row)
            mask = kwargs.get("attention_mask")  # Transformers drops an all-ones mask (a batch without pads)
            mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
            self.rows = [self.scripts[tuple(row[keep].tolist())] for row, keep in zip(ids, mask)]
            self.position = 0
        wanted = [s[self.position] if self.position < len(s) else self.eos for s in self.rows]
        logits = output.logits
        logits[:, -1].fill_(torch.finfo(logits.dtype).min)
        logits[torch.arange(len(wanted)), -1, torch.tensor(wanted, device=logits.device)] = 0.0
        self.position += 1
        return output


def trimmed(row: list[int], eos: int | None, pad: int) -> list[int]:
    """A generated row without what follows its end: up to and including EOS, else without trailing pads."""
    if eos is not None and eos in row:
        return row[: row.index(eos) + 1]
    while row and row[-1] == pad:
        row = row[:-1]
    return row


def needed_length(row: list[int], tokenizer: Any, stop: Sequence[str], max_new_tokens: int) -> int:
    """Tokens a row needs: through its EOS, or through the token after which its stop-string cut is final."""
    for k in range(1, len(row) + 1):
        if row[k - 1] == tokenizer.eos_token_id:
            return k
        if stop and final_stop_cut(tokenizer.decode(row[:k], skip_special_tokens=True), stop) is not None:
            return k
    return min(len(row), max_new_tokens)


def reference_rows(model: nn.Module, tokenizer: Any, encoded: list[list[int]], max_new_tokens: int,
                   batch_size: int) -> list[list[int]]:
    """Every prompt's generated tokens under the reference decoding (its order, no stopping but EOS)."""
    from loralab.evaluation.generation import pad_id

    rows: list[list[int]] = [[] for _ in encoded]
    with torch.no_grad():
        for batch in length_batches([len(e) for e in encoded], batch_size, by_length=False):
            new = decode_batch(model, tokenizer, [encoded[i] for i in batch], max_new_tokens)
            for i, row in zip(batch, new.tolist()):
                rows[i] = trimmed(row, tokenizer.eos_token_id, pad_id(tokenizer))
    return rows


# ------------------------------------------------------------------------------------------------ runs
def compare_paths(model: nn.Module, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int,
                  stop: Sequence[str], needed: list[int], rounds: int, device: torch.device) -> dict[str, Any]:
    """Both paths on one workload: steps (one run each), interleaved timings, throughput and their ratios."""
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    paths = {"reference": {"stop_in_decoding": False, "by_length": False},
             "per_row": {"stop_in_decoding": True, "by_length": True}}
    texts: dict[str, list[str]] = {}

    def run(name: str) -> Callable[[], None]:
        def call() -> None:
            texts[name] = generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size, progress=False,
                                          stop=stop, **paths[name])
        return call

    meter = StepMeter(model)
    out: dict[str, Any] = {}
    try:
        for name in paths:
            run(name)()
            out[name] = meter.take()
    finally:
        meter.handle.remove()
    samples = interleave({name: run(name) for name in paths}, rounds, device)
    tokens_needed = sum(needed)
    for name, flags in paths.items():
        batches = length_batches([len(e) for e in encoded], batch_size, flags["by_length"])
        entry = out[name]
        entry["decode_steps_needed"] = sum(max(needed[i] for i in b) for b in batches)
        entry["time_s"] = summarise(samples[name])
        entry["tokens_per_s"] = tokens_needed / entry["time_s"]["median"]
    ref, new = out["reference"], out["per_row"]
    out.update({
        "tokens_needed": tokens_needed,
        "identical_text": texts["reference"] == texts["per_row"],
        "time_ratio_per_row_to_reference": new["time_s"]["median"] / ref["time_s"]["median"],
        "throughput_ratio_per_row_to_reference": new["tokens_per_s"] / ref["tokens_per_s"],
        "paired_time_ratio": summarise([n / r for n, r in zip(samples["per_row"], samples["reference"])]),
        "steps_ratio_per_row_to_reference": new["decode_steps"] / ref["decode_steps"],
    })
    return out


def _suite_prompts(workload: Workload) -> tuple[list[str], int, int, list[str]]:
    """Prompts, max_new_tokens, batch size and stop strings of the workload's (first) generative task."""
    from loralab.evaluation.evaluator import load_suite_records
    from loralab.evaluation.tasks.generative import build_prompt
    from loralab.tables.grid import compose

    cfg = compose(list(workload.overrides))
    task = cfg.eval.tasks[0]
    records = load_suite_records(cfg.eval)[task.name]
    prompts = [build_prompt(task, r) for r in records][: workload.limit]
    return prompts, int(task.max_new_tokens), int(task.batch_size), [str(s) for s in task.get("stop") or []]


def _embedded() -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loralab.models.embedded_lm import pretrained_tiny_lm

    path = pretrained_tiny_lm()
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _llama_shaped(cfg: DecodingBenchConfig, tokenizer: Any, longest: int) -> nn.Module:
    from dataclasses import replace

    from loralab.benchmarking.config import BenchConfig
    from loralab.benchmarking.trainees import build_base_model

    shape = replace(cfg.shape, seq=max(cfg.shape.seq, longest), vocab=max(cfg.shape.vocab, len(tokenizer)))
    model = build_base_model(BenchConfig(shape=shape, device=cfg.device, dtype=cfg.dtype))
    return model.eval()


def run_decoding_benchmark(cfg: DecodingBenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every workload on the embedded LM and, replaying its continuations, on the Llama-shaped model."""
    from loralab.benchmarking.report import machine

    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda requested but torch.cuda.is_available() is False")
    if cfg.threads and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    started = time.time()
    embedded, tokenizer = _embedded()
    embedded.to(device)
    results = []
    for workload in cfg.workloads:
        prompts, max_new, batch_size, stop = _suite_prompts(workload)
        encoded = [encode_prompt(tokenizer, p) for p in prompts]
        rows = reference_rows(embedded, tokenizer, encoded, max_new, batch_size)
        needed = [needed_length(r, tokenizer, stop, max_new) for r in rows]
        entry: dict[str, Any] = {"workload": asdict(workload), "prompts": len(prompts), "max_new_tokens": max_new,
                                 "batch_size": batch_size, "stop": stop, "models": {}}
        log(f"[bench-eval] {workload.name}: embedded LM")
        entry["models"]["embedded"] = compare_paths(embedded, tokenizer, prompts, max_new, batch_size, stop,
                                                    needed, cfg.rounds, device)
        log(f"[bench-eval] {workload.name}: Llama-shaped model replaying the embedded LM")
        wide = _llama_shaped(cfg, tokenizer, max(len(e) for e in encoded) + max_new)
        replay = Replay(wide, {tuple(e): r for e, r in zip(encoded, rows)}, tokenizer.eos_token_id)
        try:
            entry["models"]["llama_shaped"] = compare_paths(wide, tokenizer, prompts, max_new, batch_size, stop,
                                                            needed, cfg.rounds, device)
        finally:
            replay.handle.remove()
        del wide
        results.append(entry)
    return {"kind": "loralab-decoding-benchmark", "created_unix": started,
            "wall_s": round(time.time() - started, 1), "machine": machine(), "config": cfg.as_dict(),
            "embedded_params": sum(p.numel() for p in embedded.parameters()), "workloads": results}


# ------------------------------------------------------------------------------------------------ report
def markdown(report: dict[str, Any]) -> str:
    cfg, m, s = report["config"], report["machine"], report["config"]["shape"]
    lines = [
        "# Evaluation decoding: per-row stopping and length batches vs the reference decoding",
        "",
        f"Machine: {m.get('gpu') or m.get('cpu_model')} — {m.get('logical_cpus')} logical CPUs, torch threads "
        f"{m.get('cpu_threads')}, load average {m.get('load_average')}; {cfg['device']} {cfg['dtype']}; "
        f"{cfg['rounds']} interleaved rounds (medians); wall {report['wall_s']} s.",
        f"Models: the embedded LM ({report['embedded_params'] / 1e6:.2f}M parameters, its own generations) and a "
        f"Llama-shaped model (hidden {s['hidden']}, intermediate {s['intermediate']}, {s['heads']}/{s['kv_heads']} "
        f"heads, {s['layers']} layers, vocab {s['vocab']}, random weights) replaying the embedded LM's "
        "continuations. Same text on both paths is checked, not assumed.",
        "",
        "| workload | model | same text | decode steps issued: reference → per-row | needed: reference → per-row "
        "| row-steps: reference → per-row | tokens needed | tokens/s: reference → per-row | × throughput "
        "(paired time ratio p25–p75) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in report["workloads"]:
        for model, r in entry["models"].items():
            ref, new, pr = r["reference"], r["per_row"], r["paired_time_ratio"]
            lines.append(
                f"| {entry['workload']['name']} ({entry['prompts']} prompts, max {entry['max_new_tokens']} new) "
                f"| {model} | {'yes' if r['identical_text'] else '**no**'} | {ref['decode_steps']} → "
                f"{new['decode_steps']} | {ref['decode_steps_needed']} → {new['decode_steps_needed']} | "
                f"{ref['row_steps']} → {new['row_steps']} | {r['tokens_needed']} | {ref['tokens_per_s']:.0f} → "
                f"{new['tokens_per_s']:.0f} | {r['throughput_ratio_per_row_to_reference']:.2f} "
                f"({1 / pr['p75']:.2f}–{1 / pr['p25']:.2f}) |")
    lines += ["", "*Decode steps*: forward passes summed over batches (the prompt's pass included); *needed*: per "
              "batch, the longest row's tokens up to its EOS or its final stop-string cut; *row-steps*: forward "
              "passes × rows (finished rows stay in the batch); *tokens/s*: tokens needed over wall time, the same "
              "useful output credited to both paths.", ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: Any) -> tuple[Any, Any]:
    """``decoding-<device>.json`` and ``.md`` in ``out_dir`` (atomically); returns both paths."""
    from pathlib import Path

    from loralab.benchmarking.report import write_json_and_markdown

    return write_json_and_markdown(report, markdown(report), Path(out_dir) / f"decoding-{report['config']['device']}")
