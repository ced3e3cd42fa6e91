"""CONTRIBUTING.md's checklists, followed once each in a copy of the config tree: the files they name are all a
new suite or paper table needs, and what they name exists."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import ROOT
from loralab.errors import ConfigError
from loralab.io import atomic_write_json, atomic_write_text
from loralab.rundir import config_hash

CONTRIBUTING = ROOT / "CONTRIBUTING.md"


def _section(title: str) -> str:
    text = CONTRIBUTING.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"CONTRIBUTING.md has no section {title!r}"
    return match.group(1)


@pytest.mark.parametrize("title", ["Add an evaluation suite", "Add a paper table"])
def test_every_file_and_test_a_checklist_names_exists(title: str) -> None:
    for path in re.findall(r"`((?:conf|src|tests|results)/[^`\s]+|Makefile|README\.md)`", _section(title)):
        file, _, test = path.partition("::")
        if "<" in file:                                      # conf/eval/<suite>.yaml: its folder exists
            assert (ROOT / file.split("<")[0]).is_dir(), path
            continue
        assert (ROOT / file).exists(), path
        for name in filter(None, test.split("::")):
            assert re.search(rf"^def {name}\(", (ROOT / file).read_text(encoding="utf-8"), re.M), path


def _tree(tmp_path: Path) -> Path:
    """A copy of the repository's config tree and reference tables: the checklists are followed there."""
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "conf", root / "conf")
    shutil.copytree(ROOT / "results" / "paper", root / "results" / "paper")
    return root


def _compose(root: Path, *overrides: str):
    from loralab.tables.grid import compose

    return compose([*overrides, "progress=false"], conf_dir=root / "conf")


# ------------------------------------------------------------------------------------------ a suite
SUITE = """\
name: toy_suite
protocol: toy-exact-match/v1+${.engine}
engine: native
tasks:
  - name: toy_sums
    type: generate
    data:
      _target_: loralab.data.hub.load_records
      path: %(data)s
      split: train
      override_key: eval.tasks.0.data.path
    prompt_template: "Q: {question}\\nA:"
    answer_field: answer
    filters:
      - {function: regex, pattern: "The answer is:?\\\\s*(-?[\\\\d,]*\\\\.?\\\\d+)", fallback: none}
      - {function: normalize, how: number}
    max_new_tokens: 16
    batch_size: 4
    metric: exact_match
"""


def test_add_an_evaluation_suite(tmp_path: Path) -> None:
    from loralab.evaluation.evaluator import load_suite_records
    from loralab.runner import check_config
    from loralab.validation import check_templates_fill

    root = _tree(tmp_path)
    data = tmp_path / "toy.jsonl"
    data.write_text('{"question": "2+3?", "answer": "5"}\n{"question": "7-4?", "answer": "3"}\n', encoding="utf-8")
    # steps 1-2: the suite's YAML, its records read by the existing loader (step 3: run with eval=<suite>)
    (root / "conf" / "eval" / "toy_suite.yaml").write_text(SUITE % {"data": data}, encoding="utf-8")

    cfg = _compose(root, "eval=toy_suite")
    OmegaConf.to_container(cfg, resolve=True)
    assert cfg.eval.protocol == "toy-exact-match/v1+native"
    check_config(cfg)                                        # what the runner checks before anything is loaded
    records = load_suite_records(cfg.eval)                   # ... and before training
    check_templates_fill(cfg.eval, records)
    assert [r["question"] for r in records["toy_sums"]] == ["2+3?", "7-4?"]

    # the same checks refuse a suite that leaves out what step 1 says it needs
    (root / "conf" / "eval" / "toy_suite.yaml").write_text(
        (SUITE % {"data": data}).replace("    metric: exact_match\n", "    metric: pass@1\n"), encoding="utf-8")
    with pytest.raises(ConfigError, match="metric='pass@1'"):
        check_config(_compose(root, "eval=toy_suite"))


# ------------------------------------------------------------------------------------ a paper table
REFERENCE = {
    "paper": "Toy paper", "table": "1", "title": "Toy table", "metric": "accuracy", "unit": "%", "tolerance": 1.0,
    "row_keys": ["model", "method", "rank"], "columns": ["Word problems"],
    "cells": [
        {"row": {"model": "tiny_lm", "method": "lora", "rank": 8}, "column": "Word problems", "value": 61.5,
         "source": "PAPER, Table 1"},
        {"row": {"model": "tiny_lm", "method": "pissa", "rank": 8}, "column": "Word problems", "value": None,
         "status": "unknown", "source": "NOT FOUND"},
    ],
}
EXPERIMENT = """\
# @package _global_
defaults:
  - override /model: tiny_lm
  - override /dataset: arith_shift

lr_source:
  label: INFERRED
  lr: 3.0e-3
  note: the embedded recipe's rate
trainer:
  learning_rate: ${lr_source.lr}

hydra:
  sweeper:
    params:
      method: lora,pissa

table:
  name: toy_table
  reference: toy_table
  sweeps: [toy_table]
  row_keys: [model, method, rank]
  columns:
    - {header: Word problems, task: arith_word_problems, metric: exact_match, scale: 100}
"""


def _finished_run(runs_dir: Path, cfg, exact_match: float) -> None:
    run_dir = runs_dir / f"run-{config_hash(cfg)}"
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_json(run_dir / "metrics.json", {
        "run": {"config_hash": config_hash(cfg), "model": cfg.model.name, "method": cfg.method.name,
                "rank": cfg.rank, "dataset": cfg.dataset.name, "seed": cfg.seed},
        "eval": {"protocol": cfg.eval.protocol, "tasks": {"arith_word_problems": {"exact_match": exact_match,
                                                                                 "n": 200}}}})
    atomic_write_json(run_dir / "status.json", {"state": "finished"})


def test_add_a_paper_table(tmp_path: Path) -> None:
    from loralab.lr_source import lr_problem
    from loralab.tables.grid import expand_sweep
    from loralab.tables.reference import load_reference, reference_file
    from loralab.tables.tabulate import Column, build_from_spec

    root = _tree(tmp_path)
    # step 1: the reference; step 2: the experiment with its sweep, labelled rate and table block
    (root / "results" / "paper" / "toy_table.yaml").write_text(yaml.safe_dump(REFERENCE), encoding="utf-8")
    (root / "conf" / "experiment" / "toy_table.yaml").write_text(EXPERIMENT, encoding="utf-8")

    # what tests/test_experiments.py checks of every experiment and table
    jobs = expand_sweep("toy_table", conf_dir=root / "conf")
    assert len(jobs) == 2
    cells = [_compose(root, *job) for job in jobs]
    assert [c.method.name for c in cells] == ["lora", "pissa"]
    assert all(lr_problem(c) is None for c in cells), [lr_problem(c) for c in cells]
    spec = OmegaConf.to_container(cells[0].table)
    papers = root / "results" / "paper"
    reference = load_reference(reference_file(spec["reference"], papers))
    assert spec["row_keys"] == reference.row_keys
    assert {Column(**c).header for c in spec["columns"]} == set(reference.columns)

    # a finished run of one cell is laid out beside the paper's number; the other cell stays empty
    runs = tmp_path / "runs"
    _finished_run(runs, cells[0], 0.6)
    text = build_from_spec(spec, runs, root=root, reference_dir=papers)
    lora = next(line for line in text.splitlines() if line.startswith("| tiny_lm | lora | 8 |"))
    assert "60.00" in lora and "61.5" in lora, text
