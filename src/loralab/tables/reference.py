"""Published reference numbers of the paper tables, one YAML file per table under ``results/paper/``
(``paths.reference_dir``); an experiment's ``table.reference`` names its file by stem (``sds_table2``).

A reference file describes a table as a full grid: ``row_keys`` names the run-config fields that identify a
row (``model``, ``method``, ``rank``, ...), ``columns`` the table's columns, and ``cells`` holds one entry per
(row, column) pair of the table's layout. A cell the sources do not give is still present, with
``value: null`` and ``status: unknown``; a position that exists in the grid but has no meaning in the paper's
layout (e.g. a relative-overhead column of the baseline row) has ``status: not_applicable``.

Row-key values may be ``null`` when the key does not apply to that row (Full FT has no rank). ``lookup``
first matches rows exactly and then lets such ``null`` values act as wildcards.

``load_reference`` validates everything and raises :class:`loralab.errors.ConfigError` naming the file,
the offending key or cell, and what would be valid.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from loralab.errors import ConfigError

#: ``results/paper`` of the repository this package is installed from (editable install, src layout); the
#: default of library callers. ``scripts/build_table.py`` reads ``paths.reference_dir`` instead.
REFERENCE_DIR: Path = Path(__file__).resolve().parents[3] / "results" / "paper"

KNOWN = "known"
UNKNOWN = "unknown"
NOT_APPLICABLE = "not_applicable"
STATUSES: tuple[str, ...] = (KNOWN, UNKNOWN, NOT_APPLICABLE)

REQUIRED_KEYS: tuple[str, ...] = (
    "paper", "table", "title", "metric", "unit", "tolerance", "row_keys", "columns", "cells",
)
OPTIONAL_KEYS: tuple[str, ...] = (
    "source_note", "hyperparameters", "column_metrics", "column_units", "column_tolerances",
)
CELL_KEYS: tuple[str, ...] = ("row", "column", "value", "source", "status", "std")

RowKey = tuple[Any, ...]
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: the files have ~10^2 cells


@dataclass
class ReferenceCell:
    """One published number (or a documented gap) of a paper table."""

    row: dict[str, Any]
    column: str
    value: float | None
    source: str
    status: str = KNOWN
    std: float | None = None

    @property
    def known(self) -> bool:
        return self.status == KNOWN


@dataclass
class ReferenceTable:
    """A validated reference file. ``cells`` are in file order."""

    paper: str
    table: str
    title: str
    metric: str
    unit: str
    tolerance: float
    row_keys: list[str]
    columns: list[str]
    hyperparameters: dict[str, Any]
    cells: list[ReferenceCell]
    path: Path
    source_note: str = ""
    column_metrics: dict[str, str] = field(default_factory=dict)
    column_units: dict[str, str] = field(default_factory=dict)
    column_tolerances: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index: dict[tuple[RowKey, str], ReferenceCell] = {
            (self._key(c.row), c.column): c for c in self.cells
        }

    def _key(self, row: Mapping[str, Any]) -> RowKey:
        return tuple(row.get(k) for k in self.row_keys)

    def rows(self) -> list[dict[str, Any]]:
        """Distinct row dicts (exactly the ``row_keys``), in the order they first appear in the file."""
        seen: dict[RowKey, dict[str, Any]] = {}
        for cell in self.cells:
            seen.setdefault(self._key(cell.row), {k: cell.row[k] for k in self.row_keys})
        return list(seen.values())

    def lookup(self, row: Mapping[str, Any], column: str) -> ReferenceCell | None:
        """The cell for a run's row and a column, or None when the table has no such position.

        Only the ``row_keys`` of ``row`` are looked at (a whole run config may be passed); a missing key
        counts as None. An exact match wins; otherwise a row whose null keys act as wildcards and whose
        other keys match (the fewest wildcards first, then file order).
        """
        query = self._key(row)
        exact = self._index.get((query, column))
        if exact is not None:
            return exact
        best: tuple[int, ReferenceCell] | None = None
        for cell in self.cells:
            if cell.column != column:
                continue
            ref = self._key(cell.row)
            if all(r is None or r == q for r, q in zip(ref, query)):
                wildcards = sum(r is None for r in ref)
                if best is None or wildcards < best[0]:
                    best = (wildcards, cell)
        return None if best is None else best[1]

    def known_cells(self) -> list[ReferenceCell]:
        return [c for c in self.cells if c.known]

    def metric_for(self, column: str) -> str:
        return self.column_metrics.get(column, self.metric)

    def unit_for(self, column: str) -> str:
        return self.column_units.get(column, self.unit)

    def tolerance_for(self, column: str) -> float:
        return self.column_tolerances.get(column, self.tolerance)


# --------------------------------------------------------------------------------------------- loading
def _fail(path: Path, where: str, problem: str) -> ConfigError:
    return ConfigError(f"reference file {path}: {where}: {problem}")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _text(path: Path, data: Mapping[str, Any], key: str, *, allow_number: bool = False) -> str:
    value = data[key]
    if allow_number and _is_number(value):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, f"key '{key}'", f"must be a non-empty string, got {value!r}")
    return value


def _names(path: Path, data: Mapping[str, Any], key: str) -> list[str]:
    value = data[key]
    if not isinstance(value, list) or not value:
        raise _fail(path, f"key '{key}'", f"must be a non-empty list of names, got {value!r}")
    for name in value:
        if not isinstance(name, str) or not name:
            raise _fail(path, f"key '{key}'", f"entries must be non-empty strings, got {name!r}")
    dupes = sorted({n for n in value if value.count(n) > 1})
    if dupes:
        raise _fail(path, f"key '{key}'", f"duplicate names {dupes}")
    return list(value)


def _per_column(path: Path, data: Mapping[str, Any], key: str, columns: list[str], number: bool) -> dict:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise _fail(path, f"key '{key}'", f"must be a mapping column -> value, got {value!r}")
    for col, item in value.items():
        if col not in columns:
            raise _fail(path, f"key '{key}'", f"unknown column {col!r}; valid columns: {columns}")
        ok = _is_number(item) and item >= 0 if number else isinstance(item, str) and item
        if not ok:
            kind = "a number >= 0" if number else "a non-empty string"
            raise _fail(path, f"key '{key}', column {col!r}", f"must be {kind}, got {item!r}")
    return {c: (float(v) if number else v) for c, v in value.items()}


def _cell(path: Path, i: int, raw: Any, row_keys: list[str], columns: list[str]) -> ReferenceCell:
    where = f"cells[{i}]"
    if not isinstance(raw, dict):
        raise _fail(path, where, f"must be a mapping with keys {list(CELL_KEYS)}, got {raw!r}")
    extra = sorted(set(raw) - set(CELL_KEYS))
    if extra:
        raise _fail(path, where, f"unknown keys {extra}; valid keys: {list(CELL_KEYS)}")
    for key in ("row", "column", "value"):
        if key not in raw:
            raise _fail(path, where,
                        f"missing key '{key}' (required: row, column, value; optional: source, status, std)")
    row = raw["row"]
    if not isinstance(row, dict):
        raise _fail(path, where, f"'row' must be a mapping of {row_keys}, got {row!r}")
    where = f"cells[{i}] (row {row}, column {raw['column']!r})"
    missing = [k for k in row_keys if k not in row]
    if missing:
        raise _fail(path, where, f"row is missing row key(s) {missing}; row_keys are {row_keys}")
    surplus = sorted(k for k in row if k not in row_keys)
    if surplus:
        raise _fail(path, where, f"row has key(s) {surplus} that are not row_keys {row_keys}")
    for k, v in row.items():
        if not (v is None or isinstance(v, (str, int, float, bool))):
            raise _fail(path, where, f"row key '{k}' must be a scalar (string, number, bool or null), got {v!r}")
    column = raw["column"]
    if column not in columns:
        raise _fail(path, where, f"unknown column {column!r}; valid columns: {columns}")
    value, source = raw["value"], raw.get("source", "")
    status = raw.get("status", KNOWN if value is not None else None)
    if status is None:
        raise _fail(path, where, f"value is null but no status is given; use status '{UNKNOWN}' or '{NOT_APPLICABLE}'")
    if status not in STATUSES:
        raise _fail(path, where, f"unknown status {status!r}; valid statuses: {list(STATUSES)}")
    if not isinstance(source, str):
        raise _fail(path, where, f"'source' must be a string, got {source!r}")
    std = raw.get("std")
    if status == KNOWN:
        if not _is_number(value):
            raise _fail(path, where, f"status '{KNOWN}' needs a numeric value, got {value!r}")
        if not source.strip():
            raise _fail(path, where, "a known value needs a non-empty 'source' saying where it comes from")
        if std is not None and not (_is_number(std) and std >= 0):
            raise _fail(path, where, f"'std' must be a number >= 0 or absent, got {std!r}")
    else:
        if value is not None:
            raise _fail(path, where, f"value {value!r} given with status '{status}'; such cells must have value null")
        if std is not None:
            raise _fail(path, where, f"'std' given with status '{status}'; only known cells carry a std")
    return ReferenceCell(
        row=dict(row), column=column, value=None if value is None else float(value), source=source,
        status=status, std=None if std is None else float(std),
    )


def load_reference(path: str | Path) -> ReferenceTable:
    """Read and validate one reference file (see the module docstring for the schema)."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except FileNotFoundError:
        raise ConfigError(f"reference file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"reference file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise _fail(path, "top level", f"must be a mapping with keys {list(REQUIRED_KEYS)}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise _fail(path, "top level", f"missing key(s) {missing}; required: {list(REQUIRED_KEYS)}")
    extra = sorted(set(data) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if extra:
        raise _fail(path, "top level", f"unknown key(s) {extra}; valid: {list(REQUIRED_KEYS + OPTIONAL_KEYS)}")
    tolerance = data["tolerance"]
    if not _is_number(tolerance) or tolerance < 0:
        raise _fail(path, "key 'tolerance'", f"must be a number >= 0, got {tolerance!r}")
    hyper = data.get("hyperparameters") or {}
    if not isinstance(hyper, dict):
        raise _fail(path, "key 'hyperparameters'", f"must be a mapping, got {hyper!r}")
    note = data.get("source_note") or ""
    if not isinstance(note, str):
        raise _fail(path, "key 'source_note'", f"must be a string, got {note!r}")
    row_keys, columns = _names(path, data, "row_keys"), _names(path, data, "columns")
    raw_cells = data["cells"]
    if not isinstance(raw_cells, list) or not raw_cells:
        raise _fail(path, "key 'cells'", "must be a non-empty list of cells")
    cells = [_cell(path, i, raw, row_keys, columns) for i, raw in enumerate(raw_cells)]

    positions: dict[tuple[RowKey, str], int] = {}
    for i, cell in enumerate(cells):
        pos = (tuple(cell.row[k] for k in row_keys), cell.column)
        if pos in positions:
            raise _fail(path, f"cells[{i}] (row {cell.row}, column {cell.column!r})",
                        f"duplicate cell: the same row and column already appear at cells[{positions[pos]}]")
        positions[pos] = i
    row_tuples = list(dict.fromkeys(p[0] for p in positions))
    gaps = [(dict(zip(row_keys, r)), c) for r in row_tuples for c in columns if (r, c) not in positions]
    if gaps:
        shown = "; ".join(f"row {r} column {c!r}" for r, c in gaps[:5])
        raise _fail(path, "cells", f"{len(gaps)} (row, column) position(s) missing from the grid, e.g. {shown}; "
                                   f"list every position, with value null and status '{UNKNOWN}' if not known")
    return ReferenceTable(
        paper=_text(path, data, "paper"), table=_text(path, data, "table", allow_number=True),
        title=_text(path, data, "title"), metric=_text(path, data, "metric"), unit=_text(path, data, "unit"),
        tolerance=float(tolerance), row_keys=row_keys, columns=columns, hyperparameters=dict(hyper),
        cells=cells, path=path, source_note=note,
        column_metrics=_per_column(path, data, "column_metrics", columns, number=False),
        column_units=_per_column(path, data, "column_units", columns, number=False),
        column_tolerances=_per_column(path, data, "column_tolerances", columns, number=True),
    )


def reference_file(name: str, directory: str | Path = REFERENCE_DIR) -> Path:
    """The file of reference table ``name`` (an experiment's ``table.reference``) in ``directory``."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.endswith((".yaml", ".yml")):
        raise ConfigError(f"table.reference={name!r} is invalid: name a reference table by its file stem in "
                          f"paths.reference_dir (e.g. table.reference=sds_table2 for "
                          f"{Path(directory) / 'sds_table2.yaml'})")
    return Path(directory) / f"{name}.yaml"


def load_all_references(directory: str | Path | None = None) -> dict[str, ReferenceTable]:
    """Every ``*.yaml`` reference file of a directory (default :data:`REFERENCE_DIR`), keyed by file stem."""
    directory = Path(directory) if directory is not None else REFERENCE_DIR
    if not directory.is_dir():
        raise ConfigError(f"reference directory {directory} does not exist")
    return {p.stem: load_reference(p) for p in sorted(directory.glob("*.yaml"))}
