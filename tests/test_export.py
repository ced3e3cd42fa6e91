"""``python -m loralab.export``: a finished run as a PEFT adapter, a merged model or a vLLM-servable LoRA.

The runs here are built in-process the way the runner builds them (the method from its real YAML, prepared on a
model loaded by ``load_model`` from a local directory, moved off its init by the conformance suite's fake steps,
saved by ``Method.save``), so the trained model's own outputs are the reference the exports must reproduce.
The end-to-end test (a real ``python run.py``, the real ``lm_eval`` CLI) is in test_export_lm_eval.py.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from conftest import ROOT, compose
from loralab.export import ADAPTER_CONFIG, EXPORT_RECORD, ExportError, export, vllm_problems
from loralab.instantiate import build
from loralab.io import atomic_write_json
from loralab.methods.base import Method
from loralab.models.embedded_lm import char_tokenizer
from loralab.models.loading import load_model
from loralab.models.tiny import tiny_llama
from test_conformance import METHODS, MODELS, calibration_for, make_nontrivial, outputs

TARGETS = ["q_proj", "v_proj", "up_proj"]
ATOL, RTOL = 3e-5, 1e-4
BATCH = MODELS["llama"].batch(7)
# a row of the method index: page, method, paper, what it changes, then the three export formats
INDEX_ROW = re.compile(r"^\| \[(\w+)\.md\]\(\1\.md\) \| .+? \| .+? \| .+? \| (.+?) \| (.+?) \| (.+?) \|$")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama + tokenizer saved like a downloaded hub snapshot (what ``model.path`` points at)."""
    path = tmp_path_factory.mktemp("base")
    tiny_llama(seed=0).save_pretrained(path)
    char_tokenizer(list("0123456789+-=abcdefghijklmnopqrstuvwxyz ?:.\n")).save_pretrained(path)
    return path


def finished_run(tmp_path: Path, base_dir: Path, name: str, rank: int = 8) -> tuple[Path, torch.Tensor]:
    """A finished run directory of ``name`` (the default alpha 16) and the trained model's logits on BATCH."""
    cfg = compose(f"method={name}", f"rank={rank}", f"model.path={base_dir}", "model.builder=null",
                  f"model.target_modules=[{','.join(TARGETS)}]", *METHODS[name].overrides,
                  runs_dir=tmp_path / "results")
    model, _ = load_model(cfg.model)
    method = build(cfg.method, _convert_="all")
    assert isinstance(method, Method)
    method.validate(model, TARGETS)
    model = method.prepare(model, TARGETS, [], calibration_for(MODELS["llama"]))
    make_nontrivial(method, model, tmp_path / "trainer")
    trained = outputs(model, BATCH)
    assert (trained - outputs(tiny_llama(seed=0), BATCH)).abs().max() > 1e-2, "the adapter did not change the model"

    run = tmp_path / "results" / "runs" / f"tiny-{name}-r{rank}"
    method.save(model, run / "adapter")
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_json(run / "status.json", {"state": "finished"})
    atomic_write_json(run / "metrics.json", {"run": {"name": run.name, "method": name, "rank": rank},
                                             "eval": {"protocol": "test/v1", "tasks": {}}})
    return run, trained


def index_rows() -> dict[str, tuple[str, str, str]]:
    """The export formats per method in the method index (docs/methods/README.md), where each method's row
    lives with the rest of what the index says about it."""
    rows = {}
    for line in (ROOT / "docs" / "methods" / "README.md").read_text(encoding="utf-8").splitlines():
        if match := INDEX_ROW.match(line):
            rows[match[1]] = (match[2].strip(), match[3].strip(), match[4].strip())
    return rows


def documented_formats(run: Path, rank: int) -> tuple[str, str, str]:
    """The method index's export cells for this run's method, derived from what its saved adapter is."""
    config_file = run / "adapter" / ADAPTER_CONFIG
    if not config_file.is_file():
        return "✗ no adapter", "✓", "✗ no adapter"
    config = json.loads(config_file.read_text())
    size = {rank: "r", 2 * rank: "2r"}[config["r"]]
    peft = f"rank {size}" + (" + magnitude" if config.get("use_dora") else "")
    with safe_open(str(run / "adapter" / "adapter_model.safetensors"), framework="pt") as handle:
        names = list(handle.keys())
    if vllm_problems(config, names, "causal_lm", rank, "m", max_lora_rank=512):
        return peft, "✓", "✗ DoRA" if config.get("use_dora") else "✗"
    vllm = f"rank {size}" + ("" if float(config["lora_alpha"]).is_integer() else ", alpha folded into lora_B")
    return peft, "✓", vllm


# ------------------------------------------------------------------------------------------------ merged
@pytest.mark.parametrize("name", sorted(METHODS))
def test_merged_export_is_the_trained_model(name: str, tmp_path: Path, base_dir: Path) -> None:
    run, trained = finished_run(tmp_path, base_dir, name)
    out = export(run, "merged", tmp_path / "merged")

    # a plain transformers model: no PEFT layers, no loralab code needed to load it
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    torch.testing.assert_close(outputs(loaded, BATCH), trained, atol=ATOL, rtol=RTOL)
    record = json.loads((out / EXPORT_RECORD).read_text())
    assert record["format"] == "merged" and record["run"]["name"] == run.name

    # the method index says what this method's adapter exports to
    assert index_rows().get(name) == documented_formats(run, 8), f"{name}: export columns in docs/methods/README.md"


# -------------------------------------------------------------------------------------------------- peft
def test_peft_export_loads_with_vanilla_peft(tmp_path: Path, base_dir: Path) -> None:
    run, trained = finished_run(tmp_path, base_dir, "pissa")
    out = export(run, "peft", tmp_path / "peft")
    loaded = PeftModel.from_pretrained(tiny_llama(seed=0), str(out))
    torch.testing.assert_close(outputs(loaded, BATCH), trained, atol=ATOL, rtol=RTOL)
    assert json.loads((out / ADAPTER_CONFIG).read_text())["r"] == 16  # residual init: rank 2r


# -------------------------------------------------------------------------------------------------- vLLM
@pytest.mark.parametrize("name", ["lora", "sds_lora"])
def test_vllm_export_reproduces_the_model_with_an_integer_alpha(name: str, tmp_path: Path, base_dir: Path) -> None:
    run, trained = finished_run(tmp_path, base_dir, name)
    out = export(run, "vllm", tmp_path / "vllm")
    config = json.loads((out / ADAPTER_CONFIG).read_text())
    assert isinstance(config["lora_alpha"], int) and not config["use_dora"] and not config["modules_to_save"]
    assert config["r"] <= 16  # vLLM's default --max-lora-rank
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as handle:
        assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in handle.keys())
    if name == "sds_lora":  # s·2r is not an integer: the scaling moved into lora_B
        assert config["r"] == 16 and config["lora_alpha"] == 16 and config["use_rslora"] is False
        assert "folded" in " ".join(json.loads((out / EXPORT_RECORD).read_text())["notes"])
    loaded = PeftModel.from_pretrained(tiny_llama(seed=0), str(out))
    torch.testing.assert_close(outputs(loaded, BATCH), trained, atol=ATOL, rtol=RTOL)


def test_vllm_export_refuses_a_rank_2r_adapter_above_the_limit(tmp_path: Path, base_dir: Path) -> None:
    run, trained = finished_run(tmp_path, base_dir, "pissa", rank=16)
    with pytest.raises(ExportError, match=r"rank up to 2r = 32 \(r = 16\).*--max-lora-rank 32.*--format merged"):
        export(run, "vllm", tmp_path / "vllm")
    assert not (tmp_path / "vllm").exists()
    out = export(run, "vllm", tmp_path / "vllm", max_lora_rank=32)  # the server started with --max-lora-rank 32
    loaded = PeftModel.from_pretrained(tiny_llama(seed=0), str(out))
    torch.testing.assert_close(outputs(loaded, BATCH), trained, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(("name", "fmt", "reason"), [
    ("dora", "vllm", "does not load DoRA"),
    ("full_ft", "vllm", "no adapter to serve"),
    ("full_ft", "peft", "no PEFT adapter"),
])
def test_formats_a_method_cannot_take_are_refused(name: str, fmt: str, reason: str, tmp_path: Path,
                                                  base_dir: Path) -> None:
    run, _ = finished_run(tmp_path, base_dir, name)
    with pytest.raises(ExportError, match=f"{reason}.*--format merged"):
        export(run, fmt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_refuses_bad_input_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    unfinished = tmp_path / "run"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("{}\n")
    atomic_write_json(unfinished / "status.json", {"state": "running"})
    cases = [
        ([str(unfinished), "--format", "merged", "--out", str(tmp_path / "o1")], "is not finished"),
        ([str(tmp_path / "nowhere"), "--format", "merged", "--out", str(tmp_path / "o2")], "not a run directory"),
    ]
    for argv, message in cases:
        result = subprocess.run([sys.executable, "-m", "loralab.export", *argv], capture_output=True, text=True,
                                cwd=ROOT, timeout=120)
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], result.stderr
    assert not any(tmp_path.glob("o*"))


def test_max_lora_rank_must_be_a_value_vllm_accepts(tmp_path: Path, base_dir: Path) -> None:
    run, _ = finished_run(tmp_path, base_dir, "lora")
    with pytest.raises(ExportError, match=r"--max-lora-rank 12 is not a value vLLM accepts; valid: \[1, 8, 16"):
        export(run, "vllm", tmp_path / "out", max_lora_rank=12)


def test_out_must_be_new_or_empty(tmp_path: Path, base_dir: Path) -> None:
    run, _ = finished_run(tmp_path, base_dir, "lora")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="exists and is not empty"):
        export(run, "peft", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
