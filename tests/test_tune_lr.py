"""make tune-lr: the proxy's data split, the selection rule with its extension past an edge, the written TUNED
entry and its composition — and one real tuning of the embedded default on a tiny grid."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pytest
import yaml

from conftest import ROOT, compose
from loralab.errors import ConfigError
from loralab.lr_source import labelled_lr, lr_problem
from loralab.rundir import config_hash
from loralab.training.heldout import Window, proxy_split
from loralab.tuning.registry import write_entry
from loralab.tuning.selection import extend_lr, select_lr
from loralab.tuning.tune import ProxyResult, TuneSpec, proxy_overrides, tune_cells, tune_cell, tune_experiment

TINY = ["method=lora", "tune_lr.grid=[1e-3,1e-2]", "tune_lr.steps=3", "tune_lr.train_examples=24",
        "tune_lr.heldout_examples=8", "tune_lr.extend=0", "trainer.per_device_train_batch_size=4"]


def test_proxy_split_trains_on_a_head_and_scores_on_a_disjoint_tail() -> None:
    data = list(range(10))
    assert proxy_split(data, None) == (data, None)
    train, heldout = proxy_split(data, {"train_examples": 6, "heldout_examples": 3})
    assert list(train) == [0, 1, 2, 3, 4, 5] and list(heldout) == [7, 8, 9]
    assert train[1:3] == [1, 2] and heldout[-1] == 9 and len(Window(data, 2, 5)) == 3
    with pytest.raises(ConfigError, match="exceeds the 10 training examples of dataset d"):
        proxy_split(data, {"train_examples": 8, "heldout_examples": 3}, "d")
    with pytest.raises(ConfigError, match="proxy.heldout_examples=0"):
        proxy_split(data, {"train_examples": 8, "heldout_examples": 0})


def test_select_lr_picks_the_lowest_loss_and_flags_edges() -> None:
    assert select_lr({1e-3: 0.5, 3e-3: 0.2, 1e-2: 0.3}) == (3e-3, None)
    assert select_lr({1e-3: 0.5, 3e-3: 0.4, 1e-2: 0.3}) == (1e-2, "high")
    assert select_lr({1e-3: 0.5, 3e-3: float("nan"), 1e-2: float("inf")}) == (1e-3, "low")  # diverged = worst
    assert select_lr({1e-3: 0.2, 3e-3: 0.2, 1e-2: 0.3}) == (1e-3, "low")  # exact tie: the smaller lr
    assert select_lr({3e-3: 0.2}) == (3e-3, None)
    assert extend_lr(1e-2, "high") == 3e-2 and extend_lr(1e-3, "low") == 3e-4 and extend_lr(2e-4, "high") == 1e-3


def _spec(**kw: Any) -> TuneSpec:
    base = dict(grid=(1e-3, 3e-3, 1e-2), extend=2, steps=5, train_examples=8, heldout_examples=4, seed=0)
    return TuneSpec(**{**base, **kw})


def _fake_runner(optimum: float) -> tuple[list[float], Any]:
    calls: list[float] = []

    def runner(overrides: Sequence[str], conf_dir: Path) -> ProxyResult:
        lr = float(next(o for o in overrides if o.startswith("proxy.lr=")).split("=", 1)[1])
        calls.append(lr)
        loss = math.inf if lr > 50 * optimum else 1 + math.log10(lr / optimum) ** 2
        return ProxyResult(lr, loss, f"run-{lr:g}")
    return calls, runner


def test_tune_cell_extends_past_an_edge_until_interior_or_budget() -> None:
    cells = tune_cells("embedded", ["method=lora"])[1]
    calls, runner = _fake_runner(3e-3)
    assert tune_cell(cells[0], _spec(), runner=runner).lr == 3e-3 and calls == [1e-3, 3e-3, 1e-2]   # interior
    calls, runner = _fake_runner(1.5e-2)
    sel = tune_cell(cells[0], _spec(), runner=runner)
    assert (sel.lr, sel.edge, calls[3:]) == (1e-2, None, [3e-2])            # one step past the edge: interior
    calls, runner = _fake_runner(1.0)
    sel = tune_cell(cells[0], _spec(), runner=runner)
    assert (sel.lr, sel.edge, calls[3:]) == (0.1, "high", [3e-2, 0.1])      # budget spent, still on the edge


def test_tune_spec_is_checked() -> None:
    cfg = compose("experiment=embedded", "tune_lr.steps=0")
    with pytest.raises(ConfigError, match="tune_lr.steps=0"):
        TuneSpec.of(cfg, "embedded")
    with pytest.raises(ConfigError, match="declares no tune_lr block"):
        TuneSpec.of(compose("experiment=loram_table1"), "loram_table1")   # LoRAM's rates are the paper's
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['rank'\]"):
        TuneSpec.of(compose("experiment=embedded", "+tune_lr.rank=8"), "embedded")


def test_rates_are_tuned_per_model_method_dataset_and_rank() -> None:
    spec, cells = tune_cells("sds_table2", ["model=gemma_2b", "method=lora"])
    cells = [c for c in cells if c.sweep == "sds_table2"]                  # (the Full FT sweep, narrowed, too)
    assert [(c.model, c.method, c.dataset, c.rank) for c in cells] == [
        ("gemma_2b", "lora", "metamathqa", 8), ("gemma_2b", "lora", "code_feedback", 8),
        ("gemma_2b", "lora", "metamathqa", 32), ("gemma_2b", "lora", "code_feedback", 32)]
    assert all(f"rank={c.rank}" in c.job and f"seed={spec.seed}" in c.job for c in cells)
    cfg = compose(*proxy_overrides(cells[0], 3e-4))
    assert cfg.trainer.learning_rate == 3e-4 and cfg.trainer.max_steps == spec.steps and cfg.proxy.lr == 3e-4
    assert lr_problem(cfg) is None and list(cfg.eval.tasks) == []          # a proxy run is not a table cell
    assert str(cfg.paths.runs_dir).endswith("tune/runs")


def test_written_entry_composes_as_a_tuned_rate(tmp_path: Path) -> None:
    spec, (cell,) = tune_cells("embedded", ["method=lora"])
    calls, runner = _fake_runner(3e-3)
    selection = tune_cell(cell, spec, runner=runner)
    before = compose("experiment=embedded", "method=lora")
    path = write_entry([selection], tmp_path, "embedded", {8: before}, date="2026-01-02",
                       commit={"commit": "abc", "dirty": False})
    assert path == tmp_path / "embedded" / "tiny_lm_lora_arith_shift.yaml"
    node = yaml.safe_load(path.read_text())["lr_source"]
    tuned = node["tuned"]
    assert node["label"] == "TUNED" and tuned["lr_by_rank"] == {"8": 3e-3}
    assert tuned["grid"] == [1e-3, 3e-3, 1e-2] and tuned["budget"]["steps"] == spec.steps
    assert [x["lr"] for x in tuned["losses"]["8"]] == [1e-3, 3e-3, 1e-2]
    assert tuned["losses"]["8"][1]["run"] == "run-0.003"
    assert (tuned["date"], tuned["commit"]) == ("2026-01-02", "abc")
    assert tuned["replaced"] == {"8": {"lr": 3e-3, "label": None}}
    after = compose("experiment=embedded", "method=lora", f"hydra.searchpath=[file://{tmp_path.parent}]")
    assert labelled_lr(after).label is None                            # the group is tuned_lr/, not <tmp>/
    (tmp_path.parent / "tuned_lr").mkdir(exist_ok=True)
    path.parent.rename(tmp_path.parent / "tuned_lr" / "embedded")
    after = compose("experiment=embedded", "method=lora", f"hydra.searchpath=[file://{tmp_path.parent}]")
    assert labelled_lr(after).label == "TUNED" and lr_problem(after) is None
    assert config_hash(after) == config_hash(before)                    # same rate: the same run
    other_rank = compose("experiment=embedded", "method=lora", "rank=4", f"hydra.searchpath=[file://{tmp_path.parent}]")
    assert "tuned.lr_by_rank gives rates for ranks ['8'] only" in str(lr_problem(other_rank))   # never another's


def test_retuning_some_ranks_keeps_the_others(tmp_path: Path) -> None:
    spec, cells = tune_cells("sds_table2", ["model=gemma_2b", "method=sds_lora", "dataset=metamathqa"])
    by_rank = {c.rank: c for c in cells if c.sweep == "sds_table2"}
    fake = {"date": "2026-01-02", "commit": {"commit": "abc", "dirty": False}}
    for rank, optimum in ((8, 3e-5), (32, 1e-5)):
        _, runner = _fake_runner(optimum)
        write_entry([tune_cell(by_rank[rank], spec, runner=runner)], tmp_path, "sds_table2", {}, **fake)
    node = yaml.safe_load((tmp_path / "sds_table2" / "gemma_2b_sds_lora_metamathqa.yaml").read_text())["lr_source"]
    assert node["tuned"]["lr_by_rank"] == {"8": 3e-5, "32": 1e-5} and set(node["tuned"]["losses"]) == {"8", "32"}
    assert "r 8: 3e-05, r 32: 1e-05" in node["note"]
    path = tmp_path / "sds_table2" / "gemma_2b_sds_lora_metamathqa.yaml"
    path.write_text("# @package _global_\nlr_source: {label: TUNED, lr: 0.1, tuned: {losses: [{lr: 0.1}]}}\n")
    _, runner = _fake_runner(3e-5)
    write_entry([tune_cell(by_rank[8], spec, runner=runner)], tmp_path, "sds_table2", {}, **fake)  # not per rank:
    assert yaml.safe_load(path.read_text())["lr_source"]["tuned"]["lr_by_rank"] == {"8": 3e-5}    # replaced


def test_tune_lr_on_the_embedded_default(tmp_path: Path, one_compute_thread: None) -> None:
    """The CI-sized proxy: two grid points, three steps each, through the real runner (the extension past an
    edge is exercised above with a stand-in runner)."""
    done = tune_experiment("embedded", [*TINY, f"paths.results_dir={tmp_path / 'results'}"],
                           out_dir=tmp_path / "tuned_lr")
    ((selection, path),) = done
    assert selection.cell.rank == 8 and [r.lr for r in selection.results] == [1e-3, 1e-2]
    assert all(math.isfinite(r.heldout_loss) and r.heldout_loss > 0 for r in selection.results)
    assert selection.lr == min(selection.results, key=lambda r: r.heldout_loss).lr
    runs = tmp_path / "results" / "tune" / "runs"
    assert {r.run for r in selection.results} == {p.name for p in runs.iterdir()}
    node = yaml.safe_load(path.read_text())["lr_source"]
    assert node["label"] == "TUNED" and node["tuned"]["lr_by_rank"] == {"8": selection.lr} and node["tuned"]["commit"]
    # a second tuning reuses the finished proxy runs (same hashes) and selects the same rate
    again = tune_experiment("embedded", [*TINY, f"paths.results_dir={tmp_path / 'results'}"],
                            out_dir=tmp_path / "tuned_lr")
    assert again[0][0].lr == selection.lr and len(list(runs.iterdir())) == len(selection.results)
    assert (ROOT / "conf" / "tune" / "lr_proxy.yaml").is_file()
