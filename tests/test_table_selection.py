"""Tables do not decide what a run is: the ``table:`` block stays out of the run hash, and a table selects the
finished runs whose configuration is one of its cells, so a cell two tables share is one run shown in both."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from conftest import ROOT, compose
from loralab.io import atomic_write_json, atomic_write_text
from loralab.rundir import RunDir, config_hash
from loralab.tables.tabulate import build_from_spec
from loralab.tables.grid import table_cells

# One cell of LoRAM Table 1 that Table 4 (same recipe) sweeps too.
SHARED_CELL = ["model=llama2_7b", "method=pissa", "rank=16", "dataset=metamathqa", "seed=0"]


def test_the_embedded_default_keeps_its_run_hash() -> None:
    assert "table" not in compose()
    assert config_hash(compose()) == "e433be6174"            # the hash of `python run.py` before tables left it


def test_renaming_a_column_does_not_change_what_a_run_is() -> None:
    cfg = compose("experiment=loram_table1")
    before = config_hash(cfg)
    cfg.table.columns[0].header = "GSM8K (renamed)"
    cfg.table.name = "another_table"
    assert config_hash(cfg) == before


def test_a_cell_two_tables_share_is_one_run() -> None:
    one = compose("experiment=loram_table1", *SHARED_CELL)
    four = compose("experiment=loram_table4", *SHARED_CELL)
    assert one.table.name != four.table.name
    assert RunDir.for_config(one).path == RunDir.for_config(four).path


def _finished_run(runs_dir: Path, overrides: list[str], gsm8k: float) -> None:
    cfg = compose(*overrides)
    run_dir = runs_dir / f"run-{config_hash(cfg)}"
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_json(run_dir / "metrics.json", {
        "run": {"config_hash": config_hash(cfg), "model": cfg.model.name, "method": cfg.method.name,
                "rank": cfg.rank, "dataset": cfg.dataset.name, "seed": cfg.seed},
        "eval": {"protocol": cfg.eval.protocol, "tasks": {"gsm8k": {"exact_match": gsm8k, "n": 1319}}}})
    atomic_write_json(run_dir / "status.json", {"state": "finished"})


def _gsm8k(table: str, runs_dir: Path) -> str:
    spec = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "experiment" / f"{table}.yaml").table)
    text = build_from_spec(spec, runs_dir, root=ROOT)  # type: ignore[arg-type]
    header = next(ln for ln in text.splitlines() if ln.startswith("| model |")).split("|")
    row = next(ln for ln in text.splitlines() if ln.startswith("| llama2_7b | pissa | 16 |")).split("|")
    return row[header.index(" GSM8K ours ")].strip()


def test_a_shared_run_shows_in_both_tables_and_another_recipe_in_neither(tmp_path: Path) -> None:
    _finished_run(tmp_path, ["experiment=loram_table1", *SHARED_CELL], gsm8k=0.4)
    # the same (model, method, rank, data set, seed) at another learning rate is not a cell of either table
    _finished_run(tmp_path, ["experiment=loram_table1", *SHARED_CELL, "trainer.learning_rate=1e-3"], gsm8k=0.9)
    assert _gsm8k("loram_table1", tmp_path) == "40.00"
    assert _gsm8k("loram_table4", tmp_path) == "40.00"


def test_overrides_of_swept_keys_keep_the_whole_grid_and_add_the_cells_they_name() -> None:
    grid = table_cells("loram_table2")
    cells = table_cells("loram_table2", ["model=tiny_deberta", "trainer.max_steps=2"])
    assert len(grid) == 48 + 8 + 8
    named = [c for c in cells if "model=tiny_deberta" in c]
    whole = [c for c in cells if "model=tiny_deberta" not in c]
    assert len(named) == len(whole) == len(grid)
    assert all(c[-1] == "trainer.max_steps=2" and "model=deberta_v3_base" in c for c in whole)
    # a sweep given on the command line (`run.py -m experiment=embedded seed=0,1`) is swept here too
    assert sorted(c[-1] for c in table_cells("embedded", ["seed=0,1"])) == ["seed=0"] * 5 + ["seed=1"] * 5


def test_group_options_are_named_after_their_files() -> None:
    # runs_of_table compares a cell's `model=`/`method=`/`dataset=` choice with the run's recorded name
    for group in ("model", "method", "dataset"):
        for file in (ROOT / "conf" / group).glob("*.yaml"):
            assert OmegaConf.load(file).name == file.stem, file


def test_a_multi_process_run_of_a_cell_is_shown(tmp_path: Path) -> None:
    # its hash includes the launch (world size, global batch): the table hashes the cell as launched that way
    cfg = compose("experiment=loram_table1", *SHARED_CELL)
    run_dir = tmp_path / "two-processes"
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_json(run_dir / "metrics.json", {
        "run": {"config_hash": config_hash(cfg, processes=2), "model": "llama2_7b", "method": "pissa", "rank": 16,
                "dataset": "metamathqa", "seed": 0, "world_size": 2, "global_train_batch": 256},
        "eval": {"protocol": cfg.eval.protocol, "tasks": {"gsm8k": {"exact_match": 0.3, "n": 1319}}}})
    atomic_write_json(run_dir / "status.json", {"state": "finished"})
    assert config_hash(cfg, processes=2) != config_hash(cfg)
    assert _gsm8k("loram_table1", tmp_path) == "30.00"
