"""Build a paper-shaped Markdown table: for each cell, ours | paper | Δ.

A table is declared by the ``table:`` block of an experiment config:

    table:
      name: sds_table2                           # the experiment: its sweeps' cells are the table's runs
      reference: sds_table2                      # <paths.reference_dir>/sds_table2.yaml, or null when no paper
                                                 # reports these cells
      row_keys: [model, method, rank]            # run fields that identify a row
      columns:
        - {header: GSM8K, task: gsm8k, metric: exact_match, scale: 100}

``build_from_spec`` selects runs by their configuration: a finished run belongs to the table when its config hash
is one of the experiment's cells (``loralab.tables.grid``), whichever command or table made it. Runs whose
resolved configs (``config.yaml``, less the keys the run hash ignores) differ in the seed alone are pooled
(mean ± std over seeds); pooling runs that differ in anything else is refused, naming the differing keys. A
column's runs must share one evaluation protocol: mixing protocols in a column is refused, since such numbers
are not comparable. The last column shows each row's learning rate and its label (PAPER / INFERRED / TUNED,
``loralab.lr_source``).

Optional keys (all backwards compatible; a spec without them behaves as before):

    fields: {refresh: method.refresh}  # extra run fields, read from the run's config.yaml (dotted paths);
                                       # usable in row_keys and filter
    filter: {dataset: metamathqa}   # only runs with these row-field values
    wildcards: {rank: all}          # a reference row whose rank is 'all' pools the runs of every rank
    note: "..."                     # one paragraph printed under the title (e.g. what a column measures)
    columns:
      - {header: Avg, tasks: [boolq, piqa], metric: accuracy, scale: 100}  # mean of the per-task means
      - {header: MNLI, tasks: [mnli_m, mnli_mm], metric: accuracy, average: examples}  # over both sets' examples
      - {header: Average, tasks: [{task: gsm8k, metric: exact_match}, {task: mbpp, metric: pass@1}], scale: 100}
      - {header: "Main time (h)", source: steps, field: train_runtime, scale: 2.777777777777778e-04}
      - {header: "Memory (GB)", source: cost, field: peak_memory_bytes.gpu_allocated, scale: 9.313225746154785e-10}
      - {header: "Time overhead (%)", source: steps, field: train_runtime, relative_to: {method: lora}}

``source`` is ``eval`` (default: ``metrics.json`` eval scores of ``task``/``tasks``), a top-level section of
``metrics.json`` (``cost``, ``train``, ``diagnostics``; ``field`` is a dotted path inside it, e.g.
``align.mean`` for the mean gradient alignment of a run with ``diagnostics.enabled=true``) or ``steps`` (the last
value of ``field`` in ``steps.jsonl``, e.g. the Trainer's ``train_runtime``). ``relative_to`` turns a column into the
percent change against the row with those row keys replaced (e.g. the LoRA row of the same model/data set).

A reference row key that is null (Full FT has no rank) or equal to its ``wildcards`` value matches any run
value, so such rows collect their runs whatever the run's rank. Cells the reference marks ``not_applicable``
show ``n/a``.
"""
from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from loralab.errors import ConfigError
from loralab.lr_source import labelled_lr
from loralab.tables.grid import runs_of_table
from loralab.tables.pooling import check_one_batch, check_seeds_only, open_keys, pooled_groups
from loralab.rundir import CONFIG_FILE, START_OVER, STATUS_FILE, DamagedRunError, read_record
from loralab.tables.reference import NOT_APPLICABLE, REFERENCE_DIR, ReferenceTable, load_reference, reference_file

log = logging.getLogger("loralab")

SOURCES: tuple[str, ...] = ("eval", "cost", "train", "diagnostics", "steps")
AVERAGES: tuple[str, ...] = ("tasks", "examples")
LR_HEADER = "lr (label)"


@dataclass(frozen=True)
class Column:
    header: str
    task: str | None = None
    metric: str | None = None
    scale: float = 1.0
    tasks: tuple[Any, ...] | None = None          # mean over several eval tasks: names or {task, metric}
    source: str = "eval"                          # eval | cost | train | steps
    field: str | None = None                      # dotted path for the non-eval sources
    relative_to: Mapping[str, Any] | None = None  # percent change against another row
    # with tasks: "tasks" = unweighted mean of the task means; "examples" = the metric over all the tasks' examples
    # (each task weighted by its n), e.g. MNLI's overall matched + mismatched accuracy
    average: str = "tasks"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"column {self.header!r}: source={self.source!r}; valid: {list(SOURCES)}")
        if self.average not in AVERAGES or (self.average == "examples" and self.tasks is None):
            raise ConfigError(f"column {self.header!r}: average={self.average!r}; valid: {list(AVERAGES)}, "
                              "and 'examples' needs tasks")
        if self.source == "eval":
            if (self.task is None) == (self.tasks is None):
                raise ConfigError(f"column {self.header!r}: an eval column needs exactly one of task / tasks")
            if self.tasks is not None:  # entries: a task name (scored by `metric`) or {task: ..., metric: ...}
                pairs = tuple((t["task"], t.get("metric", self.metric)) if isinstance(t, Mapping) else (t, self.metric)
                              for t in self.tasks)
                object.__setattr__(self, "tasks", pairs)
            if self.metric is None and any(m is None for _, m in self.task_metrics):
                raise ConfigError(f"column {self.header!r}: an eval column needs a metric")
        elif not self.field:
            raise ConfigError(f"column {self.header!r}: source {self.source!r} needs field (a dotted path)")

    @property
    def task_metrics(self) -> tuple[tuple[str, str | None], ...]:
        """(task, metric) of every eval task the column reads."""
        if self.source != "eval":
            return ()
        if self.tasks is not None:
            return self.tasks  # type: ignore[return-value]  (normalised to pairs in __post_init__)
        return ((str(self.task), self.metric),)

    @property
    def eval_tasks(self) -> tuple[str, ...]:
        return tuple(t for t, _ in self.task_metrics)


@dataclass
class RunResult:
    run: dict[str, Any]
    protocol: str
    scores: dict[str, dict[str, float]]
    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)  # the whole metrics.json (cost, train, ...)
    _config: dict[str, Any] | None = field(default=None, repr=False)
    _steps: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def smoke(self) -> bool:
        return bool(self.run.get("smoke"))

    @property
    def config(self) -> dict[str, Any]:
        """The run's resolved ``config.yaml`` ({} when the run directory has none)."""
        if self._config is None:
            file = Path(self.path) / "config.yaml"
            self._config = (yaml.safe_load(file.read_text(encoding="utf-8")) or {}) if file.is_file() else {}
        return self._config

    @property
    def steps(self) -> list[dict[str, Any]]:
        if self._steps is None:
            file = Path(self.path) / "steps.jsonl"
            lines = file.read_text(encoding="utf-8").splitlines() if file.is_file() else []
            self._steps = [json.loads(line) for line in lines if line.strip()]
        return self._steps

    @property
    def global_train_batch(self) -> int | None:
        """Examples per optimiser step over all processes (older single-process runs: from config.yaml)."""
        if self.run.get("global_train_batch") is not None:
            return int(self.run["global_train_batch"])
        trainer = self.config.get("trainer") or {}
        if "per_device_train_batch_size" not in trainer:
            return None
        return int(trainer["per_device_train_batch_size"]) * int(trainer.get("gradient_accumulation_steps") or 1)

    def field_value(self, key: str, fields: Mapping[str, str]) -> Any:
        """A row-key / filter value: a ``fields`` entry is read from config.yaml, anything else from ``run``."""
        if key in fields:
            return _dotted(self.config, fields[key])
        return self.run.get(key)

    def column_value(self, column: Column) -> float | None:
        """The (scaled) value of a single-task, example-weighted or non-eval column for this run, None if none."""
        if column.source == "eval" and column.tasks is not None:  # average: examples
            scored = [self.scores.get(t, {}) for t, _ in column.task_metrics]
            if not all(m in sc and sc.get("n") for sc, (_, m) in zip(scored, column.task_metrics)):
                return None
            total = sum(sc["n"] for sc in scored)
            return sum(sc[m] * sc["n"] for sc, (_, m) in zip(scored, column.task_metrics)) / total * column.scale
        if column.source == "eval":
            assert column.task is not None
            value = self.scores.get(column.task, {}).get(column.metric) if column.task in self.scores else None
        elif column.source == "steps":
            value = next((e[column.field] for e in reversed(self.steps) if column.field in e), None)
        else:
            value = _dotted(self.metrics.get(column.source) or {}, str(column.field))
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value) * column.scale


def _dotted(data: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return None
        data = data[part]
    return data


def collect_runs(runs_dir: Path, skipped: list[str] | None = None) -> list[RunResult]:
    """Every finished run under ``runs_dir`` (unfinished and failed runs have no metrics.json). A run whose
    records cannot be read is left out with a warning and described in ``skipped``: one damaged run must not
    stop every table."""
    results = []
    for metrics_file in sorted(Path(runs_dir).glob("*/metrics.json")):
        try:
            result = _read_run(metrics_file)
        except DamagedRunError as err:
            log.warning("left out of the table: %s", err)
            if skipped is not None:
                skipped.append(str(err))
            continue
        if result is not None:
            results.append(result)
    return results


def _read_run(metrics_file: Path) -> RunResult | None:
    status_file = metrics_file.parent / STATUS_FILE
    if status_file.exists() and read_record(status_file).get("state") != "finished":
        return None
    metrics = read_record(metrics_file)
    evaluation = metrics.get("eval")
    if not isinstance(metrics.get("run"), dict) or not isinstance(evaluation, dict) \
            or not isinstance(evaluation.get("tasks"), dict) or "protocol" not in evaluation:
        raise DamagedRunError(f"{metrics_file} lacks its run / eval.protocol / eval.tasks entries: {START_OVER}")
    result = RunResult(metrics["run"], evaluation["protocol"], evaluation["tasks"], metrics_file.parent, metrics)
    config = metrics_file.parent / CONFIG_FILE
    if config.is_file():
        try:
            loaded = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        except (UnicodeDecodeError, yaml.YAMLError) as err:
            raise DamagedRunError(f"{config} is unreadable ({type(err).__name__}): {START_OVER}") from err
        if not isinstance(loaded, dict):
            raise DamagedRunError(f"{config} is not a configuration: {START_OVER}")
        result._config = loaded
    return result


def _matches(run: RunResult, wanted: dict[str, Any], fields: Mapping[str, str]) -> bool:
    return all(str(run.field_value(k, fields)) == str(v) for k, v in wanted.items())


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _cell(values: list[float], smoke: bool) -> tuple[str, float | None]:
    if not values:
        return "—", None
    mean = statistics.fmean(values)
    text = _fmt(mean) + (f" ± {statistics.stdev(values):.2f} (n={len(values)})" if len(values) > 1 else "")
    return text + (" (smoke)" if smoke else ""), mean


@dataclass
class Cell:
    """One column of one row: our value (text as printed, number), the paper's, and their difference."""

    ours_text: str
    ours: float | None
    paper: float | None
    delta: float | None
    flagged: bool                                    # |Δ| above the table's tolerance
    runs: list[RunResult] = field(default_factory=list)  # the runs behind our value
    not_applicable: bool = False

    @property
    def texts(self) -> tuple[str, str, str]:
        """(ours, paper, Δ) as the Markdown table prints them."""
        if self.not_applicable:
            return "n/a", "n/a", "—"
        delta = (f"{self.delta:+.2f}" if self.delta is not None else "—") + (" ⚠" if self.flagged else "")
        return self.ours_text, _fmt(self.paper), delta


@dataclass
class Row:
    key: dict[str, Any]
    cells: list[Cell]
    runs: list[RunResult]

    @property
    def lr(self) -> str:
        """The row's learning rate(s) with their labels, from the runs' config.yaml ('—' without runs)."""
        described = [labelled_lr(r.config).describe() for r in self.runs if r.config]
        return ", ".join(dict.fromkeys(described)) or "—"


@dataclass
class Table:
    """A built table: what the Markdown and the HTML report both render."""

    name: str
    title: str
    notes: list[str]
    row_keys: list[str]
    columns: list[Column]
    rows: list[Row]

    @property
    def header(self) -> list[str]:
        return ([*self.row_keys] + [f"{c.header} {part}" for c in self.columns for part in ("ours", "paper", "Δ")]
                + [LR_HEADER])


def tabulate(spec: dict[str, Any], runs: list[RunResult], reference: ReferenceTable | None = None) -> Table:
    row_keys: list[str] = list(spec["row_keys"])
    fields: dict[str, str] = dict(spec.get("fields") or {})
    wildcards: dict[str, Any] = dict(spec.get("wildcards") or {})
    columns = [Column(**c) for c in spec["columns"]]
    selected = [r for r in runs if _matches(r, spec.get("filter") or {}, fields)]

    for column in columns:  # one protocol per column, or the numbers are not comparable
        protocols = {r.protocol for r in selected if any(t in r.scores for t in column.eval_tasks)}
        if len(protocols) > 1:
            raise ConfigError(
                f"table {spec['name']}: column {column.header!r} mixes evaluation protocols {sorted(protocols)}; "
                f"filter the runs to one protocol"
            )

    def key_of(run: RunResult) -> dict[str, Any]:
        return {k: run.field_value(k, fields) for k in row_keys}

    # (row, from_reference): reference rows match runs with null / wildcard keys as "any value"
    keys: list[tuple[dict[str, Any], bool]] = []
    if reference is not None:
        keys.extend(({k: row.get(k) for k in row_keys}, True) for row in reference.rows())
    for run in selected:
        key = key_of(run)
        if not any(_row_matches(key, row, ref, wildcards) for row, ref in keys):
            keys.append((key, False))

    def runs_of(row: dict[str, Any], ref: bool) -> list[RunResult]:
        return [r for r in selected if _row_matches(key_of(r), row, ref, wildcards)]

    tolerance = reference.tolerance if reference is not None else None
    rows: list[Row] = []
    for row, ref_row in keys:
        row_runs = runs_of(row, ref_row)
        check_one_batch(spec["name"], row, row_runs)
        smoke = any(r.smoke for r in row_runs)
        cells = []
        for column in columns:
            ref = reference.lookup(row, column.header) if reference is not None else None
            if ref is not None and ref.status == NOT_APPLICABLE:
                cells.append(Cell("n/a", None, None, None, False, not_applicable=True))
                continue
            where = f"table {spec['name']}, row {_fmt_row(row)}, column {column.header!r}"
            for group in pooled_groups(column, row_runs):
                check_seeds_only(group, open_keys(row, ref_row, wildcards), fields, where)
            if column.relative_to:
                base_runs = runs_of({**row, **column.relative_to}, ref_row)  # e.g. the LoRA row of this model
                for group in pooled_groups(column, base_runs):
                    check_seeds_only(group, open_keys(row, ref_row, wildcards), fields, f"{where} (baseline)")
                ours_text, ours = _relative(_column_mean(column, row_runs), _column_mean(column, base_runs), smoke)
                used = row_runs + base_runs
            elif column.tasks is not None and column.average == "tasks":
                ours_text, ours = _task_mean(column, row_runs, smoke)
                used = [r for r in row_runs if any(t in r.scores for t in column.eval_tasks)]
            else:
                used = [r for r in row_runs if r.column_value(column) is not None]
                ours_text, ours = _cell([v for r in used if (v := r.column_value(column)) is not None], smoke)
            paper = ref.value if ref is not None else None
            delta = None if ours is None or paper is None else ours - paper
            limit = reference.tolerance_for(column.header) if reference is not None else None
            flagged = delta is not None and limit is not None and abs(delta) > limit
            cells.append(Cell(ours_text, ours, paper, delta, flagged, used))
        rows.append(Row(row, cells, row_runs))

    title = spec.get("title") or (reference.title if reference is not None else spec["name"])
    notes = []
    if reference is not None:
        notes.append(f"Paper: {reference.paper}, Table {reference.table}. ⚠ marks |Δ| > {tolerance}"
                     + (" (per-column tolerances apply)." if reference.column_tolerances else "."))
    else:
        notes.append("No published numbers exist for these cells: the paper column is empty by design.")
    notes.append("Cells marked (smoke) come from shrunken CI runs and are not reproductions.")
    notes.append(f"{LR_HEADER}: each row's learning rate and its label (PAPER: the paper states it; INFERRED: "
                 "reasoned, see the config's lr_source.note; TUNED: chosen by make tune-lr).")
    if spec.get("note"):
        notes.append(str(spec["note"]).strip())
    flagged_cells = sum(c.flagged for r in rows for c in r.cells)
    if flagged_cells:
        notes.append(f"{flagged_cells} cell(s) differ from the paper by more than the tolerance.")
    return Table(spec["name"], str(title), notes, row_keys, columns, rows)


def render_markdown(table: Table) -> str:
    lines = ["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
    for row in table.rows:
        cells = [_fmt_key(row.key.get(k)) for k in table.row_keys]
        for cell in row.cells:
            cells += cell.texts
        cells.append(row.lr)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([f"# {table.title}", "", *table.notes, "", *lines]) + "\n"


def build_table(spec: dict[str, Any], runs: list[RunResult], reference: ReferenceTable | None = None) -> str:
    return render_markdown(tabulate(spec, runs, reference))


def _fmt_row(row: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={_fmt_key(v)}" for k, v in row.items()) + ")"


def _column_mean(column: Column, runs: list[RunResult]) -> float | None:
    if column.tasks is not None and column.average == "tasks":
        return _task_mean(column, runs, False)[1]
    values = [v for r in runs if (v := r.column_value(column)) is not None]
    return statistics.fmean(values) if values else None


def _task_mean(column: Column, runs: list[RunResult], smoke: bool) -> tuple[str, float | None]:
    """Mean over ``column.tasks`` of each task's mean over the runs; '—' unless every task has a score."""
    per_task = []
    for task, metric in column.task_metrics:
        values = [r.scores[task][metric] * column.scale for r in runs if metric in r.scores.get(task, {})]
        if not values:
            return "—", None
        per_task.append(statistics.fmean(values))
    mean = statistics.fmean(per_task)
    return _fmt(mean) + (" (smoke)" if smoke else ""), mean


def _relative(value: float | None, base: float | None, smoke: bool) -> tuple[str, float | None]:
    if value is None or base is None or base == 0:
        return "—", None
    change = 100.0 * (value / base - 1.0)
    return f"{change:+.2f}" + (" (smoke)" if smoke else ""), change


def _row_matches(key: dict[str, Any], row: dict[str, Any], from_reference: bool, wildcards: Mapping[str, Any]) -> bool:
    """Does a run's key belong to ``row``? Reference rows treat null and wildcard values as 'any value'."""
    for k, want in row.items():
        if from_reference and (want is None or (k in wildcards and str(want) == str(wildcards[k]))):
            continue
        if str(key.get(k)) != str(want):
            return False
    return True


def _fmt_key(value: Any) -> str:
    return "—" if value is None else str(value)


def build_from_spec(spec: dict[str, Any], runs_dir: Path, root: Path = Path("."),
                    overrides: Sequence[str] = (), reference_dir: Path = REFERENCE_DIR) -> str:
    return render_markdown(table_from_spec(spec, runs_dir, root, overrides, reference_dir))


def table_from_spec(spec: dict[str, Any], runs_dir: Path, root: Path = Path("."),
                    overrides: Sequence[str] = (), reference_dir: Path = REFERENCE_DIR) -> Table:
    """The table of experiment ``spec['name']`` from the finished runs under ``runs_dir`` that are its cells, the
    cells composed with ``overrides`` as its sweeps ran them (see :func:`loralab.tables.grid.table_cells`), beside
    the published numbers of ``spec['reference']`` in ``reference_dir``."""
    reference = load_reference(reference_file(spec["reference"], reference_dir)) if spec.get("reference") else None
    skipped: list[str] = []
    runs = runs_of_table(spec["name"], collect_runs(runs_dir, skipped), overrides, root / "conf")
    table = tabulate(spec, runs, reference)
    table.notes.extend(f"Run left out, its records being damaged (re-run it with force_rerun=true): {problem}"
                       for problem in skipped)
    return table
