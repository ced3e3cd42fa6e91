"""Labelled learning rates: every paper-table cell runs at a PAPER / INFERRED / TUNED rate, and a sweep with an
unlabelled pair refuses to start, naming the pairs, before any cell runs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, compose
from loralab.errors import ConfigError
from loralab.lr_source import LABELS, check_learning_rate, labelled_lr, lr_problem, sweep_problems
from loralab.rundir import config_hash


def _cell(lr: Any = 2e-4, source: Any = "default", paper: bool = True, **extra: Any) -> dict[str, Any]:
    """A resolved config of the shape the check reads."""
    cfg: dict[str, Any] = {"method": {"name": "lora"}, "dataset": {"name": "metamathqa"}, "model": {"name": "m"},
                           "rank": 8, "trainer": {"learning_rate": lr},
                           "table": {"name": "t", "reference": "t" if paper else None}, **extra}
    if source == "default":
        source = {"label": "INFERRED", "lr": 2e-4, "note": "why"}
    if source is not None:
        cfg["lr_source"] = source
    return cfg


def test_a_labelled_rate_passes_and_is_described() -> None:
    assert lr_problem(_cell()) is None
    assert labelled_lr(_cell()).describe() == "0.0002 (INFERRED)"
    assert labelled_lr(_cell(lr=1e-3)).label is None            # the label speaks of another rate
    assert labelled_lr(_cell(lr=1e-3)).describe() == "0.001 (unlabelled)"


@pytest.mark.parametrize(("cell", "says"), [
    (_cell(source=None), "no labelled learning rate in paper experiment t"),
    (_cell(lr=1e-3), "trainer.learning_rate=0.001 is not the labelled rate"),      # a command-line lr
    (_cell(source={"label": "GUESSED", "lr": 2e-4, "note": "x"}), "valid labels: ['PAPER', 'INFERRED', 'TUNED']"),
    (_cell(source={"label": "INFERRED", "lr": 2e-4, "note": ""}), "lr_source.note is empty"),
    (_cell(source={"label": "TUNED", "lr": 2e-4, "note": "x", "tuned": {"grid": [1e-4]}}), "lacks its provenance"),
    (_cell(lr=None, source={"label": "INFERRED", "lr": None, "note": "x", "by_rank": {"32": 1e-5}}),
     "rates for ranks ['32'] only"),
])
def test_paper_cells_refuse_unusable_rates(cell: dict[str, Any], says: str) -> None:
    problem = lr_problem(cell)
    assert problem is not None and says in str(problem), problem


def test_other_runs_may_be_unlabelled_but_not_rateless() -> None:
    assert lr_problem(_cell(source=None, paper=False)) is None                  # the embedded default
    assert lr_problem(_cell(lr=1e-3, paper=False)) is None                      # an explicit command-line rate
    assert lr_problem(_cell(source=None, proxy={"lr": 1e-3})) is None          # tune-lr's proxy runs
    assert "not a positive number" in str(lr_problem(_cell(lr=None, source=None, paper=False)))


def test_sweep_problems_name_each_pair_once_with_its_cells() -> None:
    cells = [_cell(source=None, rank=r, model={"name": m}) for m in ("a", "b") for r in (8, 32)]
    cells.append(_cell())
    (line,) = sweep_problems(cells)
    assert line.startswith("lora × metamathqa: no labelled learning rate") and "[a r8, a r32, b r8, b r32]" in line


def test_composed_paper_cells_carry_their_label() -> None:
    lora = labelled_lr(compose("experiment=sds_table2", "method=lora"))
    assert (lora.lr, lora.label) == (2e-4, "INFERRED") and lora.note
    loram = labelled_lr(compose("experiment=loram_table1", "method=pissa"))  # one PAPER rate beats method_dataset
    assert (loram.lr, loram.label) == (2e-5, "PAPER")
    with pytest.raises(ConfigError, match="is not the labelled rate"):
        check_learning_rate(compose("experiment=sds_table2", "method=lora", "trainer.learning_rate=1e-3"))
    check_learning_rate(compose("experiment=sds_table2", "method=lora", "lr_source.lr=1e-3",
                                "lr_source.note=a grid point"))                 # relabelled: accepted
    with pytest.raises(ConfigError, match="olora on metamathqa .* no labelled learning rate"):
        check_learning_rate(compose("experiment=sds_table2", "method=olora"))


def test_labels_stay_out_of_the_run_hash() -> None:
    base = compose("experiment=sds_table2", "method=lora")
    assert config_hash(compose("experiment=sds_table2", "method=lora", "lr_source.note=other")) == config_hash(base)
    assert config_hash(compose("experiment=sds_table2", "method=lora", "lr_source.lr=1e-3")) != config_hash(base)


def test_label_set_is_the_documented_one() -> None:
    assert LABELS == ("PAPER", "INFERRED", "TUNED")


def test_plan_sweeps_refuses_and_lists_the_unlabelled_pairs() -> None:
    proc = subprocess.run([sys.executable, "scripts/plan.py", "--experiment", "sds_table2", "--sweeps",
                           "method=olora", "model=gemma_2b", "rank=8"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""                           # the Makefile gets no sweep to run
    assert "olora × metamathqa: no labelled learning rate" in proc.stderr
    assert "olora × code_feedback: no labelled learning rate" in proc.stderr


@pytest.mark.slow
def test_multirun_refuses_before_any_cell_runs(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "run.py", "-m", "experiment=sds_table2", "method=olora,lora",
                           "model=tiny_lm", "rank=8", "dataset=metamathqa", f"paths.results_dir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True)
    out = proc.stdout + proc.stderr                                             # Hydra logs to stdout
    assert proc.returncode == 2, out[-2000:]
    assert "olora × metamathqa: no labelled learning rate" in out
    assert "lora × metamathqa" not in out.replace("olora × metamathqa", "")     # labelled LoRA is not listed
    assert not (tmp_path / "runs").exists() and not list(tmp_path.rglob("cell.json"))   # no cell started


def test_tables_show_each_rows_rate_and_label() -> None:
    from loralab.tables.tabulate import RunResult, build_table

    spec = {"name": "t", "row_keys": ["model", "method", "rank"],
            "columns": [{"header": "GSM8K", "task": "gsm8k", "metric": "exact_match", "scale": 100}]}

    def run(method: str, seed: int, config: dict[str, Any]) -> RunResult:
        result = RunResult({"model": "m", "method": method, "rank": 8, "seed": seed}, "p/v1",
                           {"gsm8k": {"exact_match": 0.5}}, Path("."))
        result._config = config
        return result

    tuned = {"trainer": {"learning_rate": 1e-3}, "lr_source": {"label": "TUNED", "lr": 1e-3, "note": "x"}}
    runs = [run("lora", 0, _cell()), run("lora", 1, _cell()), run("sds_lora", 0, tuned),
            run("pissa", 0, _cell(lr=3e-3, source=None))]
    table = build_table(spec, runs)
    rows = {line.split("|")[2].strip(): line.strip().strip("|").split("|")[-1].strip()
            for line in table.splitlines() if line.startswith("| m |")}
    assert rows == {"lora": "0.0002 (INFERRED)", "sds_lora": "0.001 (TUNED)", "pissa": "0.003 (unlabelled)"}
    assert "| lr (label) |" in table.splitlines()[[i for i, ln in enumerate(table.splitlines()) if "ours" in ln][0]]


def test_sweep_check_reads_a_sweep_given_on_the_command_line_only() -> None:
    """Without an experiment there are no hydra.sweeper.params: the check must still read the cells."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from loralab.lr_source import SweepLrCheck

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["method=lora"], return_hydra_config=True)
        assert cfg.hydra.sweeper.get("params") is None
        assert SweepLrCheck._problems(cfg) == ([], 1)                            # one cell, unlabelled is fine
        cfg = hydra_compose(config_name="config", overrides=["experiment=sds_table2", "method=olora",
                                                             "model=gemma_2b", "rank=8"], return_hydra_config=True)
        problems, cells = SweepLrCheck._problems(cfg)
        assert cells == 2 and [p.split(":")[0] for p in problems] == ["olora × metamathqa", "olora × code_feedback"]
