"""What a table may average into one number: runs of one recipe that differ in the seed alone.

A cell's value is a mean over runs (seeds, and the tasks of a task mean). Runs whose resolved configs differ in
anything but ``seed`` (keys the run hash ignores aside) are different experiments, and so are runs trained with
different global batches (several processes at the same per-device batch): pooling them is refused with one line
naming what differs. One global batch split differently (two processes at batch 4, one at batch 8) is one recipe.
A reference row that leaves a key open (null, or a wildcard such as LoRAM Table 4's rank ``all``) pools its values
by design; its runs are checked within each value.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from loralab.errors import ConfigError
from loralab.rundir import NON_SEMANTIC_KEYS

if TYPE_CHECKING:
    from loralab.tables.tabulate import Column, RunResult

# How a global batch is split into per-device batches and accumulation steps (a launch on more processes takes a
# smaller per-device batch): not a recipe difference, since check_one_batch holds the global batch of a row equal.
LAUNCH_KEYS = ("trainer.per_device_train_batch_size", "trainer.gradient_accumulation_steps")


def check_one_batch(table: str, row: dict[str, Any], runs: list[RunResult]) -> None:
    """Runs pooled in one row must train with the same global batch (e.g. not one process at per-device batch
    4 and two processes at per-device batch 4): otherwise they are different experiments, not seeds."""
    batches = {r.global_train_batch for r in runs}
    if len(batches) > 1:
        found = ", ".join(f"{r.path.name}: {r.global_train_batch} ({r.run.get('world_size', 1)} process(es))"
                          for r in runs)
        raise ConfigError(
            f"table {table}: row {row} would pool runs of different global batch sizes ({found}); "
            f"keep one, or select by it with filter: {{global_train_batch: N}}"
        )


def pooled_groups(column: Column, runs: list[RunResult]) -> list[list[RunResult]]:
    """The sets of runs whose values are averaged into one number of ``column`` (one per task of a task mean)."""
    if column.source == "eval":
        return [[r for r in runs if metric in r.scores.get(task, {})] for task, metric in column.task_metrics]
    return [[r for r in runs if r.column_value(column) is not None]]


def open_keys(row: dict[str, Any], from_reference: bool, wildcards: Mapping[str, Any]) -> list[str]:
    """Row keys a reference row leaves open (null, or its wildcard value): their runs are grouped, not seeds."""
    if not from_reference:
        return []
    return [k for k, want in row.items() if want is None or (k in wildcards and str(want) == str(wildcards[k]))]


def check_seeds_only(runs: list[RunResult], open_row_keys: list[str], fields: Mapping[str, str], where: str) -> None:
    """ConfigError unless the runs pooled as seeds have resolved configs that differ in ``seed`` alone (and in how
    their equal global batch is launched, :data:`LAUNCH_KEYS`).

    Runs that differ in an open row key (a wildcard row pools both ranks) are separate groups, each checked alone.
    """
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for run in runs:
        key = tuple(str(run.field_value(k, fields)) for k in open_row_keys)
        groups.setdefault(key, []).append(_flat({k: v for k, v in run.config.items() if k not in NON_SEMANTIC_KEYS}))
    differing: set[str] = set()
    for configs in groups.values():
        for key in set().union(*configs):
            if key != "seed" and key not in LAUNCH_KEYS and len({repr(c.get(key)) for c in configs}) > 1:
                differing.add(key)
    if differing:
        names = sorted(differing)
        raise ConfigError(
            f"{where}: refusing to pool {len(runs)} runs as seeds, their configs differ in {', '.join(names[:8])}"
            f"{f' (+{len(names) - 8} more)' if len(names) > 8 else ''} (runs: {', '.join(r.path.name for r in runs)})"
        )


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
