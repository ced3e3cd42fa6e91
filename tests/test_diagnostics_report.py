"""Report rendering and the figure script's smoke run."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from test_claim_sds_curves import synthetic_result

from loralab.diagnostics.claims import check_rank_tools
from loralab.diagnostics.report import Claim, format_value, render_report, write_report


def test_format_value() -> None:
    assert format_value(0.000123456) == "0.0001235"
    assert format_value([1, None, math.nan]) == "[1, —, nan]"
    assert format_value(True) == "True"


def test_render_report_counts_and_lists_numbers(tmp_path: Path) -> None:
    claims = [
        Claim("a", "Paper X", "it works", "x > 1", True, {"x": 2.5}, ["fig.png"]),
        Claim("b", "Paper Y", "it also works", "y < 0", False, {"y": [1.0, 2.0]}, note="why not"),
    ]
    text = render_report(claims, preamble="hello")
    assert "**1/2 claims pass.**" in text
    assert "| a | Paper X | it works | PASS |" in text and "| b | Paper Y | it also works | FAIL |" in text
    assert "| y | [1, 2] |" in text and "![a](fig.png)" in text and "why not" in text
    out = write_report(claims, tmp_path / "sub" / "report.md")
    assert out.read_text(encoding="utf-8") == render_report(claims)


def test_rank_tools_claim_on_synthetic_updates() -> None:
    rng = np.random.default_rng(0)
    deltas = {f"l{i}": rng.standard_normal((10, 8)) @ np.diag(np.arange(8, 0, -1.0) ** (i + 1)) for i in range(3)}
    claim = check_rank_tools(deltas, 2, [float("nan"), 0.5, 0.7])
    assert claim.passed
    kept = claim.numbers["energy fraction kept [greedy, uniform]"]
    assert kept[0] >= kept[1]
    assert claim.numbers["mean κ_t (LoRA gradient, Fig. 1 testbed)"] == 0.6


def test_make_figures_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_figures.py"
    spec = importlib.util.spec_from_file_location("make_figures", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Claims g train real models (tested in test_claim_sds_curves.py); here synthetic curves exercise the
    # script's plotting and report for them.
    monkeypatch.setattr(module, "sds_curves", lambda **size: synthetic_result())
    assert module.main(["--quick", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "claims pass" in report and "FAIL" not in report
    assert "## g2. SDS-LoRA Fig. 3 (loss), embedded task" in report
    # the protocol, the paired test and the tuned rates with their provenance are in the report
    assert "*Criterion:* Protocol: each method at its own learning rate from the tune-lr step" in report
    assert "| paired t-test, H1 SDS < LoRA: t (df 2), one-sided p |" in report
    assert "| tune-lr, SDS-LoRA: selected lr (TUNED 2026-01-01, 0123456789ab) | 0.001 |" in report
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(pngs) == 10, pngs
    for name in pngs:
        assert f"]({name})" in report
