"""Paper tables as code: every experiment composes, its grid has the paper's cells, one smoke cell per table runs
end to end into its table, the rank-parameter table is exact, and the planner's estimates are sane."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, compose, script
from loralab.lr_source import lr_problem
from loralab.methods.lora import LoRA
from loralab.tables.tabulate import Column, RunResult, build_from_spec, build_table
from loralab.planning.architectures import ARCHITECTURES
from loralab.tables.grid import expand_sweep, sweeps_of, table_sweeps, tables_of
from loralab.planning.plan import (CALIBRATION_HOURS, CALIBRATION_OVERRIDES, GIB, calibrate, estimate_cell, plan,
                                 render_plan, trainable_params)
from loralab.tables.reference import load_reference, reference_file

EXPERIMENTS = ROOT / "conf" / "experiment"
FIXTURES = ROOT / "tests" / "fixtures" / "data"

# Cells of every sweep: the paper's grids (models × methods × ranks × data sets × seeds).
GRID_SIZES: dict[str, int] = {
    "embedded": 5, "sds_curves": 2 * 5,
    "sds_table1": 2 * 6 * 2, "sds_table1_full_ft": 2,
    "sds_table2": 2 * 6 * 2 * 2, "sds_table2_full_ft": 2 * 2,
    "sds_table3": 2 * 6 * 2 * 5, "sds_table3_full_ft": 2 * 5,
    "sds_table4": 2 * 5 * 2, "sds_table5": 2 * 3, "sds_table6": 2 * 2,
    "sds_table7": 3, "sds_table7_intervals": 3,
    "loram_table1": 6 * 2 * 3 * 3, "loram_table1_lora_plus": 2 * 3 * 3, "loram_table1_full_ft": 3 * 3,
    "loram_table2": 6 * 8, "loram_table2_lora_plus": 8, "loram_table2_full_ft": 8,
    "loram_table4": 5 * 2 * 2 * 3, "loram_table4_tracking": 4 * 2 * 2 * 3, "loram_table4_basis": 2 * 2 * 2 * 3,
    "loram_table4_rslora": 2 * 2 * 2 * 3,
}
TABLES = ["sds_table1", "sds_table2", "sds_table3", "sds_table4", "sds_table5", "sds_table6", "sds_table7",
          "sds_table7_intervals", "loram_table1", "loram_table2", "loram_table4"]


def _raw(name: str) -> Any:
    return OmegaConf.load(EXPERIMENTS / f"{name}.yaml")


def _spec(name: str) -> dict[str, Any]:
    return OmegaConf.to_container(_raw(name).table)  # type: ignore[return-value]


def _jobs(name: str) -> list[dict[str, str]]:
    return [dict(o.split("=", 1) for o in job) for job in expand_sweep(name)]


# ------------------------------------------------------------------------------------------ composition
def test_every_experiment_file_is_accounted_for() -> None:
    names = {p.stem for p in EXPERIMENTS.glob("*.yaml")}
    assert names == set(GRID_SIZES) | {"rank_params"}
    assert {s for t in TABLES for s in sweeps_of(t)} | {"embedded", "sds_curves"} == set(GRID_SIZES)


@pytest.mark.parametrize("name", sorted(GRID_SIZES))
def test_experiment_composes_and_its_grid_has_the_papers_cells(name: str) -> None:
    cfg = compose(f"experiment={name}")                       # the single-run config (sweeps apply in -m)
    assert cfg.table.name
    jobs = _jobs(name)
    assert len(jobs) == GRID_SIZES[name]
    assert len({tuple(sorted(j.items())) for j in jobs}) == len(jobs)        # no cell twice
    # a covering sample of cells composes: the first cell with each value of each swept key
    picked: dict[int, dict[str, str]] = {}
    for key in jobs[0]:
        for value in dict.fromkeys(j[key] for j in jobs):
            n = next(n for n, j in enumerate(jobs) if j[key] == value)
            picked[n] = jobs[n]
    for job in picked.values():
        cell = compose(*[f"{k}={v}" for k, v in job.items()])
        i = jobs.index(job)
        assert cell.method.name == jobs[i]["method"] and cell.dataset.name == jobs[i].get("dataset", cell.dataset.name)
        assert lr_problem(cell) is None, lr_problem(cell)      # every cell runs at a labelled learning rate


@pytest.mark.parametrize("table", TABLES)
def test_table_block_matches_its_reference(table: str) -> None:
    spec = _spec(table)
    assert spec["name"] == table
    columns = [Column(**c) for c in spec["columns"]]
    assert "filter" not in spec and "table" not in spec.get("fields", {})   # runs are selected by their config
    if spec.get("reference"):
        reference = load_reference(reference_file(spec["reference"]))
        assert spec["row_keys"] == reference.row_keys
        headers = [c.header for c in columns]
        assert set(headers) <= set(reference.columns), set(headers) - set(reference.columns)
        # every column of the paper is reproduced, except Table 6's unmeasured "Extra time (h)"
        assert set(reference.columns) - set(headers) <= {"Extra time (h)"}
    for key in spec["row_keys"]:
        assert key in {"model", "method", "rank", "dataset", "seed"} or key in spec["fields"], key
    own = set(tables_of(table)) - {table}                      # sweeps that declare a table of their own
    assert table_sweeps(table) == [s for s in sweeps_of(table) if s not in own]


def test_sds_recipes_take_per_method_learning_rates_and_loram_one_rate() -> None:
    lr = {m: compose("experiment=sds_table2", f"method={m}").trainer.learning_rate
          for m in ("lora", "pissa", "full_ft", "lora_plus")}
    assert lr == {"lora": 2e-4, "pissa": 2e-5, "full_ft": 2e-5, "lora_plus": 1e-4}
    assert compose("experiment=sds_table3", "method=full_ft", "dataset=dtd").trainer.learning_rate == 5e-5
    for method in ("lora", "pissa", "full_ft"):                # the paper's single rate overrides method_dataset
        cfg = compose("experiment=loram_table1", f"method={method}", "rank=128")
        assert cfg.trainer.learning_rate == 2e-5 and cfg.alpha == 128          # s = alpha / rank = 1
        assert cfg.trainer.per_device_train_batch_size * cfg.trainer.gradient_accumulation_steps == 128
        assert cfg.dataset.train.limit == 100_000
    assert compose("experiment=loram_table1_lora_plus").method.loraplus_lr_ratio == 4.0
    assert compose("experiment=sds_table2", "method=lora_plus").method.loraplus_lr_ratio == 16.0
    epochs = {d: compose("experiment=loram_table2", f"dataset={d}").trainer.num_train_epochs
              for d in ("glue_mrpc", "glue_rte")}
    assert epochs == {"glue_mrpc": 5, "glue_rte": 3}
    for sweep in (s for s in GRID_SIZES if s.endswith("_full_ft")):        # full FT runs once, not once per rank
        cells = _jobs(sweep)
        assert {j["method"] for j in cells} == {"full_ft"} and len({j["rank"] for j in cells}) == 1


@pytest.mark.parametrize("table", [t for t in TABLES if t != "sds_table7_intervals"])
def test_paper_recipe_is_a_valid_trainer_configuration(table: str, tmp_path: Path) -> None:
    from transformers import TrainingArguments

    options = OmegaConf.to_container(compose(f"experiment={table}").trainer, resolve=True)
    assert isinstance(options, dict)
    options["bf16"] = False                                    # bf16 needs a GPU; everything else is checked
    TrainingArguments(output_dir=str(tmp_path), use_cpu=True, **options)


def test_loram_table4_sweeps_cover_the_ablation_rows() -> None:
    fields = ("method", "method.use_rslora", "method.basis", "method.tracking")
    rows = {tuple(j.get(f) for f in fields) for s in sweeps_of("loram_table4") for j in _jobs(s)}
    assert ("loram", None, None, None) in rows                          # default LoRAM (DST, log gain)
    assert {("loram", None, b, None) for b in ("orth", "gaussian")} <= rows
    assert {("loram", None, None, t) for t in ("milora", "pissa", "corda", "lora_ga")} <= rows
    assert {(m, "True", None, None) for m in ("loram", "lora_ga")} <= rows
    assert {(m, None, None, None) for m in ("milora", "pissa", "corda", "lora_ga")} <= rows


# ----------------------------------------------------------------------------------------- smoke runs
SMOKE = ["rank=8", "trainer=embedded", "trainer.max_steps=2", "trainer.save_steps=2", "trainer.logging_steps=1",
         "trainer.per_device_train_batch_size=2", "trainer.gradient_accumulation_steps=1", "smoke=true"]
EVAL_FIXTURES: dict[str, list[str]] = {
    "metamathqa": ["gsm8k", "math"], "code_feedback": ["humaneval", "mbpp"],
    "commonsense170k": ["boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_e", "arc_c", "obqa"],
    "glue_mnli": ["glue_mnli", "glue_mnli"], "cars": ["cars"],
}
# One cell per table (two for the overhead table, whose overhead columns compare two rows).
SMOKE_CELLS: dict[str, list[list[str]]] = {
    "sds_table1": [["model=tiny_lm", "method=sds_lora", "dataset=commonsense170k"]],
    "sds_table2": [["model=tiny_lm", "method=sds_lora", "dataset=metamathqa"]],
    "sds_table3": [["model=tiny_vit", "method=lora", "dataset=cars"]],
    # LoRA-GA's gradient sees one batch of 2: the two training examples the fixture gives
    "sds_table4": [["model=tiny_lm", "method=lora_ga", "dataset=code_feedback", "method.grad_batches=1"]],
    "sds_table5": [["model=tiny_lm", "method=sds_ortho", "dataset=metamathqa"]],
    "sds_table6": [["model=tiny_lm", "method=lora", "dataset=metamathqa"],
                   ["model=tiny_lm", "method=sds_lora", "dataset=metamathqa"]],
    "sds_table7": [["model=tiny_lm", "method=sds_lora", "dataset=metamathqa", "method.refresh=uniform"]],
    "loram_table1": [["model=tiny_lm", "method=loram", "dataset=metamathqa"]],
    "loram_table2": [["model=tiny_deberta", "method=loram", "dataset=glue_mnli"]],
    "loram_table4": [["model=tiny_lm", "method=loram", "dataset=metamathqa", "method.tracking=pissa"]],
}
# (row prefix of the smoke run, columns the run fills, a paper value the table must show or None)
SMOKE_EXPECT: dict[str, tuple[str, list[str], str | None]] = {
    "sds_table1": ("| tiny_lm | sds_lora | 8 |", ["HellaSwag", "Avg"], "84.93"),
    "sds_table2": ("| tiny_lm | sds_lora | 8 |", ["MATH", "GSM8K"], "77.13"),
    "sds_table3": ("| tiny_vit | lora | 8 |", ["Cars"], "82.59"),
    "sds_table4": ("| tiny_lm | lora_ga | 8 |", ["HumanEval"], "45.12"),
    "sds_table5": ("| tiny_lm | sds_ortho | 8 |", ["MATH", "GSM8K"], None),
    "sds_table6": ("| tiny_lm | sds_lora | metamathqa |", ["Main time (h)", "Time overhead (%)"], "1.67"),
    "sds_table7": ("| tiny_lm | sds_lora | 8 | uniform |", ["MATH", "GSM8K"], None),
    "loram_table1": ("| tiny_lm | loram | 8 |", ["GSM8K", "MATH"], "40.32"),
    "loram_table2": ("| tiny_deberta | loram | 8 |", ["MNLI"], "95.29"),
    "loram_table4": ("| tiny_lm | loram | 8 | False | dst | log | pissa |", ["MATH", "GSM8K"], "25.50"),
}


def _fixture_overrides(dataset: str) -> list[str]:
    out = [f"dataset.train.path={FIXTURES / f'{dataset}.jsonl'}"]
    for i, name in enumerate(EVAL_FIXTURES[dataset]):
        out += [f"eval.tasks.{i}.data.path={FIXTURES / f'{name}.jsonl'}", f"eval.tasks.{i}.limit=2"]
    if dataset in ("metamathqa", "code_feedback"):
        out += [f"eval.tasks.{i}.max_new_tokens=8" for i in range(2)]
    if dataset == "code_feedback":
        out.append("eval.allow_code_execution=true")
    if dataset == "commonsense170k":
        # The recipe's cut-off (256 tokens) is in LLaMA tokens; the embedded tokenizer has one token per character,
        # which LLM-Adapters' prompts alone exceed.
        out += ["eval.max_new_tokens=4", "eval.num_beams=1", "dataset.max_length=1024"]
    return out


def _cells(table: str, row: str) -> list[str]:
    line = next((ln for ln in table.splitlines() if ln.startswith(row)), None)
    assert line is not None, f"no row {row!r} in\n{table}"
    return [c.strip() for c in line.strip().strip("|").split("|")]


@pytest.mark.slow
@pytest.mark.parametrize("table", sorted(SMOKE_CELLS))
def test_smoke_cell_runs_end_to_end_into_its_table(table: str, results_dir: Path) -> None:
    from loralab.runner import run

    for cell in SMOKE_CELLS[table]:
        dataset = next(o.split("=", 1)[1] for o in cell if o.startswith("dataset="))
        missing = [n for n in [dataset, *EVAL_FIXTURES[dataset]] if not (FIXTURES / f"{n}.jsonl").is_file()]
        if missing:
            pytest.skip(f"fixture data not present: {missing}")
        cfg = compose(f"experiment={table}", *cell, *SMOKE, *_fixture_overrides(dataset), runs_dir=results_dir)
        assert cfg.smoke
        run(cfg)

    spec = _spec(table)
    # the table's cells are composed with the overrides its runs were made with (shared by all its smoke cells)
    made_with = [[*cell, *SMOKE,
                  *_fixture_overrides(next(o.split("=", 1)[1] for o in cell if o.startswith("dataset=")))]
                 for cell in SMOKE_CELLS[table]]
    text = build_from_spec(spec, results_dir / "runs", root=ROOT,
                           overrides=[o for o in made_with[0] if all(o in m for m in made_with)])
    row, columns, paper_value = SMOKE_EXPECT[table]
    cells = _cells(text, row)
    header = _cells(text, "| " + spec["row_keys"][0] + " |")
    for column in columns:
        ours = cells[header.index(f"{column} ours")]
        assert ours.endswith("(smoke)") and re.match(r"^[+-]?\d+\.\d\d", ours), (column, ours)
    if paper_value is not None:                                # the paper column is filled from the reference
        assert f"| {paper_value} |" in text
    if spec.get("reference"):                                  # the paper's rows are laid out, ours beside them
        reference = load_reference(reference_file(spec["reference"]))
        assert len([r for r in text.splitlines() if r.startswith("| ") and "ours" not in r]) >= len(reference.rows())


def test_sds_table7_intervals_table_builds_from_its_own_runs(tmp_path: Path) -> None:
    # no runs: the extension table is laid out from its spec alone and stays empty (no paper numbers)
    text = build_from_spec(_spec("sds_table7_intervals"), tmp_path, root=ROOT)
    assert "No published numbers" in text and tables_of("sds_table7") == ["sds_table7", "sds_table7_intervals"]


# ----------------------------------------------------------------------------------------- builder
def _run(run: dict[str, Any], scores: dict[str, dict[str, float]], config: dict[str, Any] | None = None,
         metrics: dict[str, Any] | None = None) -> RunResult:
    result = RunResult(run, "p/v1", scores, Path("."), metrics or {})
    result._config = config or {}
    return result


def test_builder_fields_wildcards_task_means_and_na_cells() -> None:
    spec = _spec("loram_table4")
    reference = load_reference(reference_file(spec["reference"]))
    method = {"use_rslora": False, "basis": "dst", "gain": "log", "tracking": "none"}
    runs = [_run({"model": "llama2_7b", "method": "loram", "rank": rank},
                 {task: {metric: value / 100} for task, metric in
                  (("math", "exact_match"), ("gsm8k", "exact_match"), ("mbpp", "pass@1"), ("humaneval", "pass@1"))},
                 {"method": method})
            for rank, value in ((16, 20.0), (128, 30.0))]
    text = build_table(spec, runs, reference)
    r16 = _cells(text, "| llama2_7b | loram | 16 | False | dst | log | none |")
    assert r16[7:10] == ["20.00", "5.30", "+14.70 ⚠"]          # MATH: ours | paper | Δ
    assert r16[-4:-1] == ["n/a", "n/a", "—"]                  # Average is not a per-rank column
    pooled = _cells(text, "| llama2_7b | loram | all | False | dst | log | none |")
    assert pooled[-4] == "25.00" and pooled[7] == "n/a"       # both ranks, four tasks pooled


def test_loram_table2_mnli_is_the_overall_matched_and_mismatched_accuracy() -> None:
    spec = _spec("loram_table2")
    reference = load_reference(reference_file(spec["reference"]))
    run = _run({"model": "deberta_v3_base", "method": "lora", "rank": 8},
               {"mnli_m": {"accuracy": 0.80, "n": 100}, "mnli_mm": {"accuracy": 0.90, "n": 300}})
    lora = _cells(build_table(spec, [run], reference), "| deberta_v3_base | lora | 8 |")
    assert lora[3:6] == ["87.50", "90.23", "-2.73 ⚠"]         # (80·100 + 90·300) / 400, not matched alone (80)
    matched_only = _run(run.run, {"mnli_m": {"accuracy": 0.80, "n": 100}})
    assert _cells(build_table(spec, [matched_only], reference), "| deberta_v3_base | lora | 8 |")[3] == "—"


def test_builder_cost_columns_and_overheads() -> None:
    spec = _spec("sds_table6")
    reference = load_reference(reference_file(spec["reference"]))
    runs = []
    for method, seconds, gib in (("lora", 3600.0, 100.0), ("sds_lora", 3780.0, 101.0)):
        run = _run({"model": "llama3_8b", "method": method, "dataset": "metamathqa"}, {},
                   {},
                   {"cost": {"peak_memory_bytes": {"gpu_allocated": gib * GIB}}})
        run._steps = [{"step": 10, "loss": 1.0}, {"step": 10, "train_runtime": seconds}]
        runs.append(run)
    text = build_table(spec, runs, reference)
    lora = _cells(text, "| llama3_8b | lora | metamathqa |")
    sds = _cells(text, "| llama3_8b | sds_lora | metamathqa |")
    assert lora[3:6] == ["1.00", "1.61", "-0.61 ⚠"] and lora[6] == "n/a"      # the baseline has no overhead
    assert sds[6:9] == ["+5.00", "4.35", "+0.65"]                             # (3780 / 3600 − 1) · 100
    assert sds[9] == "101.00" and sds[12] == "+1.00"


# ----------------------------------------------------------------------------------------- rank table
def test_rank_params_table_is_exact(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "scripts/rank_params_table.py", "--out-dir", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "rank_params.md").read_text()
    assert "| q_v_all_layers | 2,097,152 | 4,194,304 | 8,388,608 | 33,554,432 | 524,288 | 19 |" in text
    assert "| attention_matrix | 32,768 | 65,536 | 131,072 | 524,288 | 8,192 | 1,220 |" in text
    assert "| q_v_all_layers | max_rank_budget_10M | 19 | 19 | +0 |" in text
    assert "All published cells match to the digit." in text
    assert sweeps_of("rank_params") == []                       # computed, nothing to run


def test_rank_params_mismatch_is_reported() -> None:
    build = script("rank_params_table").build
    spec = _spec("rank_params")
    assert build(spec)[1] == []
    _, problems = build({**spec, "budget": 5_000_000})
    assert any("budget" in p for p in problems) and any("max_rank_budget_10M" in p for p in problems)


# ----------------------------------------------------------------------------------------------- plan
def test_architectures_match_the_hub_models() -> None:
    totals = {name: arch.total_params() for name, arch in ARCHITECTURES.items()}
    assert totals == {"llama3_8b": 8_030_261_248, "llama2_7b": 6_738_415_616, "gemma_2b": 2_506_172_416,
                      "vit_base": 85_798_656, "vit_large": 303_301_632, "deberta_v3_base": 184_422_144}
    for name, arch in ARCHITECTURES.items():
        assert OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml").hub_id == arch.hub_id
    llama2 = ARCHITECTURES["llama2_7b"]
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert trainable_params(llama2, LoRA(rank=16), targets)[0] == 39_976_960          # LoRAM Table 1: "40M"
    assert trainable_params(llama2, LoRA(rank=128), targets)[0] == 319_815_680        # "320M"
    deberta = ARCHITECTURES["deberta_v3_base"]
    targets = ["query_proj", "key_proj", "value_proj", "dense"]
    assert trainable_params(deberta, LoRA(rank=8), targets)[0] == 1_327_104           # LoRAM Table 2: "1.33M"


def test_plan_is_calibrated_on_table6_and_sane() -> None:
    calibration = calibrate()
    assert 0.1 < calibration.mfu < 0.6
    cell = estimate_cell(compose(*CALIBRATION_OVERRIDES), CALIBRATION_OVERRIDES, calibration.throughput)
    assert cell.train_hours == pytest.approx(CALIBRATION_HOURS, rel=1e-9)      # by construction
    memory_gib = cell.memory_bytes / GIB
    assert cell.memory["weights"] / GIB < memory_gib < 80e9 / GIB              # bf16 weights (15 GiB) < it < H100
    assert cell.gpus == 1

    result = plan("sds_table2", ["model=llama3_8b"])
    assert len(result.cells) == 24 + 2
    full = [c for c in result.cells if c.method == "full_ft"]
    lora = [c for c in result.cells if c.method == "lora" and c.rank == 32 and c.dataset == "metamathqa"]
    assert full and all(c.gpus > 1 for c in full)                                # 8B full FT needs sharding
    assert full[0].train_flops > lora[0].train_flops
    assert result.gpu_hours == pytest.approx(sum(c.gpu_hours for c in result.cells))
    text = render_plan(result)
    assert "1.61 h" in text and "MFU" in text and f"over {len(result.cells)} cells" in text


def test_plan_cli_lists_sweeps_and_tables() -> None:
    result = subprocess.run([sys.executable, "scripts/plan.py", "--experiment", "loram_table4", "--sweeps"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["loram_table4", "loram_table4_tracking", "loram_table4_basis",
                                     "loram_table4_rslora"]
