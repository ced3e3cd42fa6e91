"""Pictures: each run's curves.png, and a table's HTML report rendered by a real headless Chromium.

The runs here are run directories typed in the runner's formats (``metrics.json``, ``steps.jsonl`` lines as
StepLogCallback writes them, ``status.json``); the report is built by ``scripts/build_table.py`` itself and
opened from disk in Chromium (Debian's package, installed by ``.ci/run``), which must show the table and both
plots without a console error and without fetching anything but the file.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest
from omegaconf import OmegaConf
from PIL import Image

from browser import chromium_path, open_page
from conftest import ROOT, compose
from loralab.io import atomic_write_json
from loralab.reports.curves import curves_figure, panels, read_steps, write_curves
from loralab.reports.html import pareto_front, step_time
from loralab.rundir import config_hash
from loralab.tables.tabulate import RunResult

METHODS = {"lora": (0.62, 81_920, 0.11), "pissa": (0.66, 81_920, 0.12), "sds_lora": (0.71, 81_920, 0.13),
           "full_ft": (0.74, 868_224, 0.30)}  # score, trainable parameters, seconds per step


def write_run(runs: Path, method: str, seed: int, diagnostics: bool = False, killed_mid_line: bool = False) -> Path:
    score, trainable, per_step = METHODS[method]
    run = runs / f"tiny_lm-{method}-r8-arith_shift-s{seed}-0123456789"
    steps = 60
    lines = []
    for step in range(10, steps + 1, 10):
        loss = 3.0 * math.exp(-step / (25 + 10 * score)) + 0.1 * seed
        lines.append({"step": step, "loss": loss, "grad_norm": 1.0 / step, "learning_rate": 1e-3 * (1 - step / 70)})
        if diagnostics:
            lines.append({"step": step, "diag/align": 0.3 + step / 1000, "diag/srank_A": 5.0, "diag/srank_B": 2.5,
                          "diag/subspace_A": math.nan, "diag/sds": 0.0})
    lines.append({"step": steps, "train_runtime": per_step * steps, "train_loss": 1.0})
    run.mkdir(parents=True)
    cfg = compose("experiment=embedded", f"method={method}", f"seed={seed}")  # a cell of the embedded table
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    partial = '{"step": 61, "lo' if killed_mid_line else ""  # what a process killed while logging leaves
    (run / "steps.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + partial)
    atomic_write_json(run / "status.json", {"state": "finished"})
    atomic_write_json(run / "metrics.json", {
        "run": {"name": run.name, "config_hash": config_hash(cfg), "model": "tiny_lm", "method": method, "rank": 8,
                "dataset": "arith_shift", "seed": seed, "smoke": False},
        "eval": {"protocol": "loralab-arith-exact-match/v1+native",
                 "tasks": {"arith_word_problems": {"exact_match": score + 0.01 * seed, "n": 200}}},
        "train": {"steps": steps, "resumed_from": None},
        "cost": {"trainable_params": trainable, "wall_time_s": 99.0},
    })
    return run


def test_curves_png_draws_loss_lr_and_the_diagnostics(tmp_path: Path) -> None:
    run = write_run(tmp_path, "sds_lora", 0, diagnostics=True, killed_mid_line=True)
    series = read_steps(run / "steps.jsonl")  # the half-written last line (a killed run) is skipped
    titles = [title for title, _ in panels(series)]
    assert titles == ["training loss", "learning rate", "gradient norm", "alignment cos(G, G̃)", "stable rank"]
    assert "subspace overlap with previous" not in titles  # only NaN: nothing to draw
    assert dict(panels(series))["stable rank"].keys() == {"srank_A", "srank_B"}
    out = write_curves(run)
    assert out == run / "curves.png"
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] >= 800 and image.size[1] >= 600
    assert curves_figure({}, "empty") is None and write_curves(tmp_path / "no-such-run") is None


def test_step_time_counts_only_the_last_session() -> None:
    run = RunResult({}, "p", {}, Path("."), {"train": {"steps": 60, "resumed_from": "/r/checkpoints/checkpoint-40"}})
    run._steps = [{"step": 60, "train_runtime": 10.0}]
    assert step_time(run) == pytest.approx(0.5)  # 20 steps in the session that logged train_runtime
    run.metrics["train"]["resumed_from"] = None
    assert step_time(run) == pytest.approx(10.0 / 60)


def test_pareto_front_keeps_the_points_nothing_beats() -> None:
    points = [(1.0, 0.5), (2.0, 0.4), (2.0, 0.7), (3.0, 0.6), (4.0, 0.9)]
    assert pareto_front(points) == [(1.0, 0.5), (2.0, 0.7), (4.0, 0.9)]


@pytest.mark.skipif(chromium_path() is None, reason="NOT TESTED: Chromium is missing; `.ci/run` installs it "
                    "(apt-get install -y chromium) — without it the HTML report is not checked in a browser")
def test_html_report_renders_in_chromium(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    made = [write_run(runs, method, seed) for method in METHODS for seed in (0, 1)]
    for run in made:
        write_curves(run)
    out_dir = tmp_path / "tables"
    result = subprocess.run([sys.executable, "scripts/build_table.py", "--experiment", "embedded", "--runs", str(runs),
                             "--out-dir", str(out_dir), "seed=0,1"],  # as the sweep `run.py -m ... seed=0,1`
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = out_dir / "embedded.html"
    text = report.read_text(encoding="utf-8")
    assert "<script" not in text and "http://" not in text and "https://" not in text  # self-contained

    with open_page(report.as_uri()) as page:
        page.screenshot(tmp_path / "report.png")
        rows = page.evaluate("[...document.querySelectorAll('#results tbody tr')].map("
                             "r => [...r.cells].map(c => c.innerText.trim()))")
        images = page.evaluate("[...document.images].map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
        links = page.evaluate("[...document.querySelectorAll('#results a.run')].map(a => a.href)")
        errors, urls, failed = page.console_errors(), page.requested_urls(), page.failed_requests()

    assert errors == [] and failed == []
    # nothing fetched but the report itself and its two plots, which it carries as data URIs
    assert [u for u in urls if not u.startswith("data:image/png;base64,")] == [report.as_uri()]
    assert len(urls) == 3
    by_method = {row[1]: row for row in rows}
    assert set(by_method) == set(METHODS) and all(row[0] == "tiny_lm" and row[2] == "8" for row in rows)
    assert by_method["sds_lora"][3].startswith("71.50 ± 0.71 (n=2)")  # seeds pooled, as in the Markdown
    assert [alt for alt, *_ in images] == ["training loss of every row",
                                           "score against trainable parameters and step time"]
    assert all(complete and width > 600 and height > 300 for _, complete, width, height in images)
    # each cell links every run behind it, and its curves.png
    run_links = {Path(unquote(link.removeprefix("file://"))).resolve() for link in links}
    assert {run.resolve() for run in made} <= run_links
    assert {(run / "curves.png").resolve() for run in made} <= run_links
    with Image.open(tmp_path / "report.png") as shot:
        assert shot.size[0] == 1280 and shot.size[1] > 900  # the whole page, table and both plots
