"""The table builder: paper layout, ours | paper | Δ, seeds pooled, protocols never mixed."""
from pathlib import Path

import pytest

from loralab.errors import ConfigError
from loralab.io import atomic_write_json
from loralab.tables.tabulate import RunResult, build_table, collect_runs
from loralab.tables.reference import REFERENCE_DIR, load_reference

SPEC = {
    "name": "sds_table2",
    "row_keys": ["model", "method", "rank"],
    "filter": {"dataset": "metamathqa"},
    "columns": [{"header": "GSM8K", "task": "gsm8k", "metric": "exact_match", "scale": 100}],
}


def _run(method: str, score: float, seed: int = 0, protocol: str = "metamath-gsm8k/v1", **extra) -> RunResult:
    run = {"model": "llama3_8b", "method": method, "rank": 32, "dataset": "metamathqa", "seed": seed, **extra}
    return RunResult(run, protocol, {"gsm8k": {"exact_match": score}}, Path("."))


def _row(table: str, method: str) -> list[str]:
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| llama3_8b | {method} | 32 |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_cells_show_ours_paper_and_delta() -> None:
    reference = load_reference(REFERENCE_DIR / "sds_table2.yaml")
    table = build_table(SPEC, [_run("sds_lora", 0.80), _run("sds_lora", 0.78, seed=1)], reference)
    ours, paper, delta = _row(table, "sds_lora")[3:6]
    assert ours == "79.00 ± 1.41 (n=2)"
    assert paper == "77.13"  # SDS-LoRA Table 2, LLaMA3-8B rank 32
    assert delta.startswith("+1.87") and "⚠" in delta  # tolerance of that table is below 1.87


def test_paper_rows_without_runs_are_laid_out_and_unknown_cells_stay_unknown() -> None:
    reference = load_reference(REFERENCE_DIR / "sds_table2.yaml")
    table = build_table(SPEC, [], reference)
    ours, paper, delta = _row(table, "lora")[3:6]
    assert (ours, paper, delta) == ("—", "73.49", "—")
    assert "| gemma_2b | sds_lora | 32 |" in table


def test_mixed_protocols_in_one_column_are_refused() -> None:
    runs = [_run("lora", 0.7), _run("sds_lora", 0.8, protocol="lm-eval-gsm8k-cot/v3")]
    with pytest.raises(ConfigError, match="mixes evaluation protocols"):
        build_table(SPEC, runs)


def test_runs_outside_the_filter_are_ignored_and_smoke_runs_are_marked() -> None:
    other = RunResult({"model": "llama3_8b", "method": "pissa", "rank": 32, "dataset": "other"}, "p",
                      {"gsm8k": {"exact_match": 1}}, Path("."))
    runs = [_run("lora", 0.5, smoke=True), other]
    table = build_table(SPEC, runs)
    assert "(smoke)" in _row(table, "lora")[3]
    assert "pissa" not in table


def test_collect_runs_reads_only_finished_runs(tmp_path: Path) -> None:
    metrics = {"run": {"method": "lora"}, "eval": {"protocol": "p", "tasks": {}}}
    for name, state in (("done", "finished"), ("crashed", "running")):
        atomic_write_json(tmp_path / name / "metrics.json", metrics)
        atomic_write_json(tmp_path / name / "status.json", {"state": state})
    assert [r.path.name for r in collect_runs(tmp_path)] == ["done"]


def test_diagnostics_are_tabulated_like_accuracy() -> None:
    spec = {**SPEC, "columns": [{"header": "Alignment", "source": "diagnostics", "field": "align.mean"},
                                {"header": "erank ∇A", "source": "diagnostics", "field": "erank_grad_A.last"}]}
    runs = []
    for method, align, erank in (("lora", 0.30, 5.5), ("sds_lora", 0.52, 7.4)):
        run = _run(method, 0.0)
        run.metrics = {"diagnostics": {"align": {"mean": align}, "erank_grad_A": {"last": erank}}}
        runs.append(run)
    table = build_table(spec, runs)
    assert _row(table, "sds_lora")[3] == "0.52" and _row(table, "sds_lora")[6] == "7.40"
    assert _row(table, "lora")[3] == "0.30"


# ------------------------------------------------------------------------------------------ pooling as seeds
def _configured(method: str, score: float, seed: int, steps: int = 100, n: int = 200, rank: int = 32) -> RunResult:
    run = _run(method, score, seed=seed, rank=rank)
    run.path = Path(f"{method}-r{rank}-s{seed}-{steps}")
    run._config = {"model": {"name": "llama3_8b"}, "method": {"name": method, "rank": rank}, "rank": rank,
                   "seed": seed, "trainer": {"max_steps": steps}, "eval": {"tasks": [{"data": {"n": n}}]},
                   "paths": {"results_dir": f"/somewhere/{seed}"}, "table": {"name": f"layout-{seed}"}}
    return run


def test_runs_that_differ_only_in_the_seed_are_pooled() -> None:
    table = build_table(SPEC, [_configured("lora", 0.20, seed=0), _configured("lora", 0.30, seed=1)])
    assert _row(table, "lora")[3] == "25.00 ± 7.07 (n=2)"    # paths and the table layout are not the recipe


def test_runs_of_different_recipes_are_not_pooled_as_seeds() -> None:
    runs = [_configured("lora", 0.20, seed=0, steps=20, n=10), _configured("lora", 0.07, seed=1, steps=100, n=200)]
    with pytest.raises(ConfigError) as err:
        build_table(SPEC, runs)
    message = str(err.value)
    assert "\n" not in message and "row (model=llama3_8b, method=lora, rank=32)" in message and "'GSM8K'" in message
    assert "differ in eval.tasks, trainer.max_steps (runs: lora-r32-s0-20, lora-r32-s1-100)" in message


def test_a_wildcard_row_pools_its_ranks_and_checks_the_seeds_of_each() -> None:
    spec = {**SPEC, "wildcards": {"rank": "all"}}
    reference = load_reference(REFERENCE_DIR / "sds_table2.yaml")
    reference_rows = [{"model": "llama3_8b", "method": "lora", "rank": "all"}]
    reference.rows = lambda: reference_rows  # type: ignore[method-assign]
    runs = [_configured("lora", 0.2, seed=s, rank=r) for s in (0, 1) for r in (8, 32)]
    text = build_table(spec, runs, reference)
    line = next(ln for ln in text.splitlines() if ln.startswith("| llama3_8b | lora | all"))
    assert "20.00 ± 0.00 (n=4)" in line                        # ranks differ by design, seeds alone within a rank
    runs[0]._config["trainer"] = {"max_steps": 5}
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        build_table(spec, runs, reference)
