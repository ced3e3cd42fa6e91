"""The ``paths`` config keys the table scripts read: ``paths.tables_dir`` is where a table is written,
``paths.reference_dir`` where the papers' numbers are read from, ``paths.runs_dir`` where the runs are found."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from loralab.errors import ConfigError
from loralab.tables.grid import configured_paths
from loralab.tables.reference import REFERENCE_DIR, reference_file


def _build_table(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "scripts/build_table.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_the_defaults_are_the_repository_layout() -> None:
    paths = configured_paths()
    assert (paths.runs_dir, paths.tables_dir, paths.reference_dir) == ("results/runs", "results/tables",
                                                                       "results/paper")
    assert (ROOT / paths.reference_dir).resolve() == REFERENCE_DIR
    moved = configured_paths(["paths.results_dir=/scratch/r", "model=llama3_8b"])  # other overrides do not count
    assert (moved.runs_dir, moved.tables_dir, moved.reference_dir) == ("/scratch/r/runs", "/scratch/r/tables",
                                                                       "results/paper")


def test_build_table_reads_the_reference_from_and_writes_the_table_to_the_configured_paths(tmp_path: Path) -> None:
    """sds_table6's published numbers, one changed, copied to another reference_dir: the table shows the copy."""
    data = yaml.safe_load((REFERENCE_DIR / "sds_table6.yaml").read_text())
    cell = next(c for c in data["cells"] if c.get("value") is not None)
    cell["value"] = 987.65
    references = tmp_path / "references"
    references.mkdir()
    (references / "sds_table6.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    runs = tmp_path / "runs"
    runs.mkdir()

    built = _build_table("--experiment", "sds_table6", f"paths.runs_dir={runs}", f"paths.tables_dir={tmp_path / 't'}",
                         f"paths.reference_dir={references}")
    assert built.returncode == 0, built.stderr
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["sds_table6.html", "sds_table6.md"]
    assert "987.65" in (tmp_path / "t" / "sds_table6.md").read_text()


def test_build_table_names_the_reference_file_it_cannot_find(tmp_path: Path) -> None:
    built = _build_table("--experiment", "sds_table6", f"paths.reference_dir={tmp_path / 'none'}",
                         f"paths.tables_dir={tmp_path / 't'}", f"paths.runs_dir={tmp_path}")
    assert built.returncode == 2 and str(tmp_path / "none" / "sds_table6.yaml") in built.stderr
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("value", ["results/paper/sds_table2.yaml", "sds_table2.yaml", ""])
def test_a_reference_is_named_by_its_file_stem(value: str) -> None:
    with pytest.raises(ConfigError, match="file stem in paths.reference_dir"):
        reference_file(value)
    assert reference_file("sds_table2") == REFERENCE_DIR / "sds_table2.yaml"
