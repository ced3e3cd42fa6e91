"""Turn a finished run into what other tools load: ``python -m loralab.export <run dir> --format F --out DIR``.

Formats:

* ``peft`` — the run's adapter as it is (``adapter/``): ``PeftModel.from_pretrained(base, DIR)``. Every method
  but full fine-tuning writes a plain PEFT LoRA adapter that applies to the *pretrained* weights (PiSSA, MiLoRA,
  OLoRA, CorDA, LoRA-GA and LoRAM convert their residual init to rank 2r; SDS-LoRA exports its fused factors at
  rank 2r; DoRA keeps its magnitude vector).
* ``merged`` — the update folded into the base weights by the method's own ``Method.merge``, saved with
  ``save_pretrained`` (safetensors) together with the tokenizer: ``AutoModelForCausalLM.from_pretrained(DIR)``,
  ``lm_eval --model hf --model_args pretrained=DIR``, vLLM or TGI load it like any model. Every method.
* ``vllm`` — a LoRA adapter within vLLM's documented limits, or a refusal that says why and suggests ``merged``.

vLLM's limits (vllm-project/vllm: ``vllm/config/lora.py``, ``vllm/lora/peft_helper.py``,
``vllm/lora/lora_model.py``, ``vllm/lora/utils.py``): the server's ``--max-lora-rank`` takes one of 1, 8, 16,
32, 64, 128, 256, 320, 512 (default 16) and an adapter whose ``r`` exceeds it is rejected; DoRA adapters are
rejected; ``modules_to_save`` must be empty; the adapter may hold only ``lora_A``/``lora_B`` weights (anything
else is an "unsupported LoRA weight"); the scaling is ``lora_alpha / r`` (``/ √r`` with ``use_rslora``) with
``lora_alpha`` declared an integer, and per-module ``rank_pattern``/``alpha_pattern`` are not read.

What this exporter decides:

* rank — the adapter is written at the rank it was saved with, never truncated. A residual-init method's update
  ``ΔW = s·(BA − B0A0) = s·[B | −B0][A ; A0]`` and SDS-LoRA's ``s·[Q_B | B][A ; Q_Aᵀ]`` have rank up to 2r in
  general, so no rank-r LoRA reproduces them; their adapter is rank 2r and is refused when 2r exceeds
  ``--max-lora-rank`` (pass the value the server is started with), with the smallest value that would do;
* ``lora_alpha`` — kept when it is an integer; otherwise (SDS-LoRA's s·2r) the scaling is folded into
  ``lora_B`` and ``lora_alpha = r``, ``use_rslora = false`` (scaling exactly 1), which leaves ΔW unchanged;
* DoRA, full fine-tuning (no adapter), classification heads (``modules_to_save``) and non-causal-LM models are
  refused, pointing at ``merged``.

Every export writes ``loralab_export.json`` (run, scores, base model, what was done) next to the files, and
the output directory appears complete or not at all. Refusals and bad arguments exit 2 with one line and
write nothing.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from loralab.errors import LoralabError
from loralab.instantiate import build
from loralab.io import atomic_write_dir, atomic_write_json, read_json
from loralab.methods.base import Method
from loralab.models.loading import load_model

log = logging.getLogger("loralab")

FORMATS = ("peft", "merged", "vllm")
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
EXPORT_RECORD = "loralab_export.json"


class ExportError(LoralabError):
    """The run cannot be exported in the asked format (or the arguments are invalid); nothing was written."""


@dataclass
class FinishedRun:
    path: Path
    cfg: DictConfig
    metrics: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> "FinishedRun":
        path = Path(path)
        if not (path / "config.yaml").is_file():
            raise ExportError(f"{path} is not a run directory (no config.yaml); pass results/runs/<run name>")
        status = read_json(path / "status.json") if (path / "status.json").is_file() else {}
        if status.get("state") != "finished" or not (path / "metrics.json").is_file():
            raise ExportError(f"run {path.name} is not finished (state {status.get('state', 'unknown')!r}); "
                              "finish it first (run the same command again)")
        if not (path / "adapter").is_dir():
            raise ExportError(f"run {path.name} has no adapter/ directory with trained weights")
        return cls(path, OmegaConf.load(path / "config.yaml"), read_json(path / "metrics.json"))

    @property
    def weights_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def adapter_config(self) -> dict[str, Any] | None:
        file = self.weights_dir / ADAPTER_CONFIG
        return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None

    def method(self) -> Method:
        method = build(self.cfg.method, _convert_="all")
        assert isinstance(method, Method)
        return method


# --------------------------------------------------------------------------------------------------- vLLM
def vllm_problems(adapter_config: dict[str, Any] | None, tensor_names: Sequence[str], model_kind: str,
                  trained_rank: int, method: str, max_lora_rank: int) -> list[str]:
    """Why vLLM would reject this adapter (empty: it loads). ``trained_rank``: the run's ``rank``."""
    if adapter_config is None:
        return [f"{method} trains every weight and has no adapter to serve"]
    problems = []
    if model_kind != "causal_lm":
        problems.append(f"vLLM serves causal language models with LoRA, and this model is {model_kind}")
    if adapter_config.get("use_dora"):
        problems.append("vLLM does not load DoRA adapters (its magnitude vector has no place in a LoRA)")
    if adapter_config.get("modules_to_save"):
        problems.append(f"vLLM requires modules_to_save to be empty, and this adapter trains "
                        f"{adapter_config['modules_to_save']} in full")
    if adapter_config.get("rank_pattern") or adapter_config.get("alpha_pattern"):
        problems.append("vLLM reads no per-module rank_pattern/alpha_pattern")
    if adapter_config.get("bias", "none") != "none":
        problems.append(f"the adapter trains biases (bias={adapter_config['bias']!r}); vLLM expects bias='none'")
    others = [n for n in tensor_names if not n.endswith((".lora_A.weight", ".lora_B.weight"))]
    if others:
        problems.append(f"vLLM loads only lora_A/lora_B weights, and the adapter also holds {others[:3]}"
                        + (f" and {len(others) - 3} more" if len(others) > 3 else ""))
    rank = int(adapter_config["r"])
    if rank > max_lora_rank:
        why = (f"{method}'s trained update has rank up to 2r = {rank} (r = {trained_rank}), so no rank-"
               f"{trained_rank} LoRA reproduces it exactly; " if rank == 2 * trained_rank else "")
        fits = next((v for v in VLLM_MAX_LORA_RANKS if v >= rank), None)
        hint = (f"start vLLM with --max-lora-rank {fits} and pass --max-lora-rank {fits} here, or "
                if fits is not None else "")
        problems.append(f"{why}its adapter has rank {rank} > --max-lora-rank {max_lora_rank}: {hint}"
                        "export --format merged")
    return problems


def write_vllm_adapter(run: FinishedRun, out: Path) -> list[str]:
    """The run's adapter with an integer ``lora_alpha`` (the scaling folded into lora_B where it is not)."""
    config = dict(run.adapter_config or {})
    tensors = load_file(str(run.weights_dir / ADAPTER_WEIGHTS))
    notes = []
    alpha, rank = config["lora_alpha"], int(config["r"])
    if not float(alpha).is_integer():
        scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        for name, value in tensors.items():
            if name.endswith(".lora_B.weight"):
                tensors[name] = (value.double() * scaling).to(value.dtype).contiguous()
        config.update(lora_alpha=rank, use_rslora=False)
        notes.append(f"lora_alpha {alpha} is not an integer: the scaling {scaling:.6g} was folded into lora_B and "
                     f"lora_alpha set to r = {rank} (scaling 1), the same ΔW")
    else:
        config["lora_alpha"] = int(alpha)
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return notes


# ----------------------------------------------------------------------------------------------- formats
def write_peft_adapter(run: FinishedRun, out: Path) -> list[str]:
    for file in run.weights_dir.iterdir():
        if file.is_file():
            shutil.copy2(file, out / file.name)
    return []


def write_merged(run: FinishedRun, out: Path) -> list[str]:
    """Fresh pretrained base + the run's saved weights (``Method.load``), folded in by ``Method.merge``."""
    method = run.method()
    base, tokenizer = load_model(run.cfg.model, num_labels=run.cfg.dataset.get("num_labels"))
    merged = method.merge(method.load(base, run.weights_dir))
    merged.save_pretrained(str(out), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return [f"merged with {type(method).__name__}.merge into the {run.cfg.model.name} base"]


def check_format(run: FinishedRun, fmt: str, max_lora_rank: int) -> None:
    """Refuse before anything is written."""
    method = str(run.cfg.method.name)
    if fmt == "peft" and run.adapter_config is None:
        raise ExportError(f"{method} trains every weight and has no PEFT adapter: use --format merged")
    if fmt == "vllm":
        if max_lora_rank not in VLLM_MAX_LORA_RANKS:
            raise ExportError(f"--max-lora-rank {max_lora_rank} is not a value vLLM accepts; valid: "
                              f"{list(VLLM_MAX_LORA_RANKS)}")
        names: list[str] = []
        if run.adapter_config is not None:
            from safetensors import safe_open

            with safe_open(str(run.weights_dir / ADAPTER_WEIGHTS), framework="pt") as handle:
                names = list(handle.keys())
        problems = vllm_problems(run.adapter_config, names, str(run.cfg.model.kind), int(run.cfg.rank), method,
                                 max_lora_rank)
        if problems:
            raise ExportError(f"{run.path.name} cannot be served by vLLM as a LoRA: {'; '.join(problems)}. "
                              f"--format merged works for every method")


def export(run_dir: str | Path, fmt: str, out: str | Path, max_lora_rank: int = VLLM_DEFAULT_MAX_LORA_RANK,
           overwrite: bool = False) -> Path:
    """Export ``run_dir`` as ``fmt`` into ``out`` (created whole, or not at all); returns ``out``."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is invalid; valid: {list(FORMATS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ExportError(f"--out {out} exists and is not empty; pick a new directory or pass --overwrite")
    run = FinishedRun.open(run_dir)
    check_format(run, fmt, max_lora_rank)
    writers = {"peft": write_peft_adapter, "merged": write_merged, "vllm": write_vllm_adapter}

    def write(tmp: Path) -> None:
        notes = writers[fmt](run, tmp)
        adapter = json.loads((tmp / ADAPTER_CONFIG).read_text()) if (tmp / ADAPTER_CONFIG).is_file() else None
        atomic_write_json(tmp / EXPORT_RECORD, {
            "format": fmt,
            "run_dir": str(run.path.resolve()),
            "run": run.metrics["run"],
            "eval": run.metrics["eval"],
            "base_model": (run.metrics.get("provenance") or {}).get("model") or _model_source(run.cfg.model),
            "adapter_rank": adapter.get("r") if adapter else None,
            "notes": notes,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })

    atomic_write_dir(out, write)
    return out


def _model_source(model_cfg: DictConfig) -> dict[str, Any]:
    return {k: model_cfg.get(k) for k in ("name", "hub_id", "path", "revision") if model_cfg.get(k) is not None}


USAGE = {
    "peft": "PeftModel.from_pretrained(<base model>, '{out}')",
    "merged": "AutoModelForCausalLM.from_pretrained('{out}'), or lm_eval --model hf --model_args pretrained={out}",
    "vllm": "vllm serve <base model> --enable-lora --max-lora-rank {rank} --lora-modules {name}={out}",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loralab.export", description=__doc__.split("\n\n")[0],
                                     epilog="Formats: peft (the adapter as trained), merged (a plain model), "
                                            "vllm (a LoRA within vLLM's limits, or a refusal with the reason).")
    parser.add_argument("run_dir", type=Path, help="a finished run: results/runs/<run name>")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    parser.add_argument("--out", required=True, type=Path, help="output directory (new or empty)")
    parser.add_argument("--max-lora-rank", type=int, default=VLLM_DEFAULT_MAX_LORA_RANK,
                        help=f"vllm: the server's --max-lora-rank (default {VLLM_DEFAULT_MAX_LORA_RANK}, vLLM's)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = export(args.run_dir, args.fmt, args.out, args.max_lora_rank, args.overwrite)
    except LoralabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    record = read_json(out / EXPORT_RECORD)
    for note in record["notes"]:
        log.info("note: %s", note)
    usage = USAGE[args.fmt].format(out=out, rank=args.max_lora_rank, name=args.run_dir.name)
    log.info("wrote %s export of %s to %s\nload it with: %s", args.fmt, args.run_dir.name, out, usage)
    return 0


if __name__ == "__main__":
    sys.exit(main())
