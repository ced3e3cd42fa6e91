"""Reference files of the paper tables: they load, form complete grids, carry the published numbers, and the
loader rejects malformed files with an error that names the file and the problem."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import yaml

from loralab.errors import ConfigError
from loralab.tables.reference import REFERENCE_DIR, STATUSES, load_all_references, load_reference

EXPECTED = [f"sds_table{i}" for i in range(1, 8)] + [f"loram_table{i}" for i in range(1, 5)] + ["rank_params"]
FILES = sorted(REFERENCE_DIR.glob("*.yaml"))


@pytest.fixture(scope="module")
def refs():
    return load_all_references()


def test_expected_files_ship():
    assert set(EXPECTED) <= {p.stem for p in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_file_loads_with_exact_row_keys_and_full_grid(path: Path):
    table = load_reference(path)
    raw = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert len(table.cells) == len(raw["cells"])
    for cell in raw["cells"]:  # checked on the raw YAML, independent of the loader
        assert set(cell["row"]) == set(raw["row_keys"]), cell
        assert cell["column"] in raw["columns"], cell
    positions = Counter(
        (tuple(c["row"][k] for k in raw["row_keys"]), c["column"]) for c in raw["cells"]
    )
    rows = {p[0] for p in positions}
    assert positions == Counter({(r, c): 1 for r in rows for c in raw["columns"]})
    assert len(table.rows()) == len(rows)
    assert all(list(r) == table.row_keys for r in table.rows())
    for cell in table.cells:
        assert cell.status in STATUSES
        assert (cell.value is None) == (cell.status != "known")
        assert cell.source.strip(), cell


def test_rows_are_distinct_and_in_file_order(refs):
    rows = refs["loram_table1"].rows()
    assert rows[0] == {"model": "llama2_7b", "method": "full_ft", "rank": None}
    assert rows[1] == {"model": "llama2_7b", "method": "lora", "rank": 16}
    assert rows[-1] == {"model": "llama2_7b", "method": "loram", "rank": 128}
    assert len(rows) == 15


def _value(table, column, **row):
    cell = table.lookup(row, column)
    assert cell is not None, (row, column)
    return cell


@pytest.mark.parametrize("name,row,column,value", [
    ("sds_table1", dict(model="gemma_2b", method="lora", rank=32), "HellaSwag", 45.05),
    ("sds_table1", dict(model="gemma_2b", method="sds_lora", rank=32), "Avg", 74.80),
    ("sds_table1", dict(model="llama3_8b", method="full_ft", rank=None), "Avg", 86.44),
    ("sds_table2", dict(model="llama3_8b", method="sds_lora", rank=32), "GSM8K", 77.13),
    ("sds_table2", dict(model="gemma_2b", method="sds_lora", rank=32), "HumanEval", 34.01),
    ("sds_table2", dict(model="llama3_8b", method="full_ft", rank=None), "HumanEval", 49.11),
    ("sds_table3", dict(model="vit_base", method="sds_lora", rank=32), "Avg", 82.59),
    ("sds_table4", dict(model="gemma_2b", method="lora_pro", rank=8), "GSM8K", 44.58),
    ("sds_table4", dict(model="llama3_8b", method="altlora", rank=8), "HumanEval", 42.07),
    ("loram_table1", dict(model="llama2_7b", method="rslora", rank=16), "GSM8K", 39.04),
    ("loram_table1", dict(model="llama2_7b", method="loram", rank=128), "MBPP", 31.53),
    ("loram_table2", dict(model="deberta_v3_base", method="loram", rank=8), "STS-B", 89.93),
    ("loram_table2", dict(model="deberta_v3_base", method="full_ft", rank=None), "CoLA", 67.26),
    ("loram_table3", dict(model="llava_uhd_vicuna_13b", method="pissa", rank=64), "MME-Cognition", 311.0),
    ("loram_table3", dict(model="llava_uhd_vicuna_13b", method="loram", rank=64), "ScienceQA", 0.700),
    ("loram_table4", dict(model="llama2_7b", method="loram", rank=16, use_rslora=False, basis="dst", gain="log",
                          tracking="lora_ga"), "GSM8K", 30.9),
    ("loram_table4", dict(model="llama2_7b", method="loram", rank=128, use_rslora=False, basis="gaussian", gain="log",
                          tracking="none"), "MBPP", 32.8),
    ("loram_table4", dict(model="llama2_7b", method="lora_ga", rank=128, use_rslora=True), "MATH", 9.08),
    ("loram_table4", dict(model="llama2_7b", method="loram", rank="all", use_rslora=True, basis="dst", gain="log",
                          tracking="none"), "Average", 31.1),
])
def test_spot_check_numbers_against_the_sources(refs, name, row, column, value):
    cell = _value(refs[name], column, **row)
    assert cell.status == "known" and cell.value == pytest.approx(value, abs=1e-9)


def test_std_is_kept_for_loram_table1(refs):
    cell = _value(refs["loram_table1"], "GSM8K", model="llama2_7b", method="pissa", rank=128)
    assert (cell.value, cell.std) == (51.48, 0.77)


@pytest.mark.parametrize("name,row,column", [
    ("sds_table1", dict(model="gemma_2b", method="lora", rank=32), "BoolQ"),
    ("sds_table1", dict(model="gemma_2b", method="pissa", rank=8), "Avg"),
    ("sds_table2", dict(model="gemma_2b", method="lora", rank=32), "MATH"),
    # printed in Table 4 only; inferred to be the same run but not copied into Table 2
    ("sds_table2", dict(model="gemma_2b", method="sds_lora", rank=8), "GSM8K"),
    ("sds_table4", dict(model="gemma_2b", method="scaled_adamw", rank=8), "GSM8K"),
    ("loram_table2", dict(model="deberta_v3_base", method="loram", rank=8), "MNLI"),
    ("loram_table3", dict(model="llava_uhd_vicuna_13b", method="loram", rank=64), "MME-Cognition"),
])
def test_not_found_cells_are_present_and_unknown(refs, name, row, column):
    cell = _value(refs[name], column, **row)
    assert cell.status == "unknown" and cell.value is None


def test_tables_without_published_numbers_have_none(refs):
    for name in ("sds_table5", "sds_table7"):
        assert refs[name].known_cells() == []
        assert len(refs[name].cells) > 0


def test_sds_table6_overheads_consistent_with_times_and_memory(refs):
    t = refs["sds_table6"]
    for ds in ("metamathqa", "code_feedback"):
        lora = {c: _value(t, c, model="llama3_8b", method="lora", dataset=ds).value for c in t.columns}
        sds = {c: _value(t, c, model="llama3_8b", method="sds_lora", dataset=ds).value for c in t.columns}
        time_pct = 100 * ((sds["Extra time (h)"] + sds["Main time (h)"]) / lora["Main time (h)"] - 1)
        mem_pct = 100 * (sds["Memory (GB)"] / lora["Memory (GB)"] - 1)
        assert abs(time_pct - sds["Time overhead (%)"]) <= 0.005 + 1e-9, (ds, time_pct)
        assert abs(mem_pct - sds["Memory overhead (%)"]) <= 0.005 + 1e-9, (ds, mem_pct)
        assert lora["Time overhead (%)"] is None and lora["Extra time (h)"] is None
    mm = _value(t, "Main time (h)", model="llama3_8b", method="sds_lora", dataset="metamathqa").value
    assert (0.01 + mm) / 1.61 == pytest.approx(1.0435, abs=5e-5)
    assert t.unit_for("Memory (GB)") == "GB" and t.tolerance_for("Memory (GB)") == 2.0
    assert t.unit_for("Main time (h)") == "h" and t.tolerance_for("Main time (h)") == t.tolerance


def test_loram_table4_original_methods_match_table1(refs):
    """Table 4's 'x' entries are Table 1 values truncated to the printed decimals
    (docs/methods/protocols.md#loram-tables)."""
    t1, t4 = refs["loram_table1"], refs["loram_table4"]
    checked = 0
    for method in ("milora", "pissa", "loram"):
        for rank in (16, 128):
            for col in ("MATH", "GSM8K", "MBPP", "HumanEval"):
                full = _value(t1, col, model="llama2_7b", method=method, rank=rank).value
                fields = dict(use_rslora=False, basis="dst", gain="log", tracking="none") if method == "loram" else {}
                short = _value(t4, col, model="llama2_7b", method=method, rank=rank, **fields).value
                decimals = 2 if col == "MATH" else 1
                truncated = math.floor(full * 10**decimals + 1e-6) / 10**decimals
                assert truncated == pytest.approx(short), (method, rank, col)
                checked += 1
    assert checked == 24


def test_hyperparameters_parse_as_numbers(refs):
    lr = refs["loram_table1"].hyperparameters["learning_rate"]
    assert isinstance(lr["value"], float) and lr["value"] == 2e-5
    assert refs["sds_table1"].hyperparameters["sds_warmup_steps"]["value"] == 10
    assert refs["sds_table1"].hyperparameters["sds_refresh_k"]["value"] == 5


def test_lookup_semantics(refs):
    t = refs["sds_table2"]
    # extra run-config keys are ignored; a null reference key (Full FT has no rank) matches any rank
    run = {"model": "gemma_2b", "method": "full_ft", "rank": 32, "lr": 1e-4}
    assert t.lookup(run, "GSM8K").value == 56.23
    assert t.lookup({"model": "gemma_2b", "method": "lora", "rank": 16}, "GSM8K") is None
    assert t.lookup({"model": "gemma_2b", "method": "lora", "rank": 32}, "Avg") is None
    # an exact row wins over a wildcard one
    t4 = refs["loram_table4"]
    run4 = {"model": "llama2_7b", "method": "loram", "rank": 16, "use_rslora": True, "basis": "dst", "gain": "log",
            "tracking": "none"}
    assert t4.lookup(run4, "Average").status == "not_applicable"
    assert t4.lookup(run4, "GSM8K").value == 52.1
    assert t.metric_for("HumanEval") == "pass@1" and t.metric_for("GSM8K") == "accuracy"


# ------------------------------------------------------------------------------------- malformed files
GOOD = {
    "paper": "P", "table": "9", "title": "T", "metric": "accuracy", "unit": "%", "tolerance": 1.0,
    "row_keys": ["model", "method"], "columns": ["A", "B"],
    "cells": [
        {"row": {"model": "m", "method": "lora"}, "column": "A", "value": 1.5, "source": "PAPER"},
        {"row": {"model": "m", "method": "lora"}, "column": "B", "value": None, "status": "unknown"},
    ],
}


def _write(tmp_path: Path, data, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def _mutated(**changes):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    for key, value in changes.items():
        data[key] = value
    return data


def test_good_minimal_file_loads(tmp_path):
    t = load_reference(_write(tmp_path, GOOD, "good.yaml"))
    assert t.table == "9" and t.lookup({"model": "m", "method": "lora"}, "A").value == 1.5
    assert t.path.name == "good.yaml"


CELL_A = {"row": {"model": "m", "method": "lora"}, "column": "A", "value": 1.5, "source": "PAPER"}
CELL_B_UNK = {"row": {"model": "m", "method": "lora"}, "column": "B", "value": None, "status": "unknown"}


@pytest.mark.parametrize("data,fragments", [
    (_mutated(cells=[{"row": {"model": "m"}, "column": "A", "value": 1.0, "source": "x"}, CELL_B_UNK]),
     ["cells[0]", "missing row key", "method"]),
    (_mutated(cells=[{**CELL_A, "row": {"model": "m", "method": "lora", "seed": 1}}, CELL_B_UNK]),
     ["cells[0]", "seed", "not row_keys"]),
    (_mutated(cells=[{**CELL_A, "column": "C"}, CELL_B_UNK]), ["unknown column 'C'", "['A', 'B']"]),
    (_mutated(cells=[CELL_A, CELL_A, CELL_B_UNK]), ["cells[1]", "duplicate cell", "cells[0]"]),
    (_mutated(cells=[CELL_A, {**CELL_B_UNK, "value": 3.0}]), ["cells[1]", "status 'unknown'", "value null"]),
    (_mutated(cells=[CELL_A, {**CELL_B_UNK, "status": None}]), ["cells[1]", "no status"]),
    (_mutated(cells=[CELL_A, {**CELL_B_UNK, "status": "maybe"}]), ["unknown status 'maybe'", "not_applicable"]),
    (_mutated(cells=[{**CELL_A, "source": ""}, CELL_B_UNK]), ["cells[0]", "source"]),
    (_mutated(cells=[{**CELL_A, "value": "high"}, CELL_B_UNK]), ["numeric value", "'high'"]),
    (_mutated(cells=[{**CELL_A, "note": "x"}, CELL_B_UNK]), ["unknown keys ['note']"]),
    (_mutated(cells=[CELL_A]), ["missing from the grid", "column 'B'"]),
    (_mutated(tolerance=-1), ["tolerance", ">= 0"]),
    (_mutated(colums=["A"]), ["unknown key(s) ['colums']"]),
    (_mutated(row_keys=["model", "model"]), ["row_keys", "duplicate"]),
    (_mutated(column_tolerances={"Z": 1.0}), ["column_tolerances", "unknown column 'Z'"]),
])
def test_malformed_files_give_clear_errors(tmp_path, data, fragments):
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_reference(path)
    message = str(err.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_missing_required_key_and_bad_yaml(tmp_path):
    data = dict(GOOD)
    del data["columns"]
    with pytest.raises(ConfigError, match=r"missing key\(s\) \['columns'\]"):
        load_reference(_write(tmp_path, data))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_reference(_write(tmp_path, "cells: [unclosed", "broken.yaml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_reference(tmp_path / "nope.yaml")
