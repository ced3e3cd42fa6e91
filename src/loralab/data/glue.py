"""GLUE (LoRAM Table 2, DeBERTa-v3-base): the eight tasks in the ``nyu-mll/glue`` schema.

Rows keep their source fields and gain ``text_a``, ``text_b`` (None for single-sentence tasks) and ``label``
(int, or float for STS-B's regression), the fields the ``sequence_classification`` data kind and the
``sequence_classify`` evaluation type read. GLUE's test labels are hidden (-1), so evaluation uses the
validation splits (MNLI: ``validation_matched`` and ``validation_mismatched``), as run_glue.py does.
"""
from __future__ import annotations

from typing import Any

from loralab.data.hub import load_records, require_fields
from loralab.errors import ConfigError, DatasetUnavailableError

# task → (sentence fields, number of labels; 1 = regression)
TASKS: dict[str, tuple[tuple[str, ...], int]] = {
    "cola": (("sentence",), 2),
    "sst2": (("sentence",), 2),
    "mrpc": (("sentence1", "sentence2"), 2),
    "qqp": (("question1", "question2"), 2),
    "stsb": (("sentence1", "sentence2"), 1),
    "mnli": (("premise", "hypothesis"), 3),
    "qnli": (("question", "sentence"), 2),
    "rte": (("sentence1", "sentence2"), 2),
}


def glue_records(task: str, hub_id: str | None = "nyu-mll/glue", name: str | None = None, split: str = "train",
                 path: str | None = None, limit: int | None = None,
                 override_key: str = "dataset.train.path") -> list[dict[str, Any]]:
    if task not in TASKS:
        raise ConfigError(f"GLUE task={task!r}; valid tasks: {sorted(TASKS)}")
    fields, num_labels = TASKS[task]
    source = f"GLUE {task} ({path or hub_id}, split {split!r})"
    rows = load_records(hub_id, name or task, split, path, limit, override_key)
    require_fields(rows, [*fields, "label"], source)
    out = []
    for i, row in enumerate(rows):
        label = float(row["label"]) if num_labels == 1 else int(row["label"])
        valid = 0 <= label <= 5 if num_labels == 1 else 0 <= label < num_labels  # STS-B scores lie in [0, 5]
        if not valid:
            hidden = " (GLUE's test labels are hidden as -1: evaluate on the validation split)" if label == -1 else ""
            expected = "scores in [0, 5]" if num_labels == 1 else f"labels 0..{num_labels - 1}"
            raise DatasetUnavailableError(f"{source}: row {i} has label={row['label']!r}; valid: {expected}{hidden}")
        out.append({**row, "text_a": row[fields[0]], "text_b": row[fields[1]] if len(fields) > 1 else None,
                    "label": label})
    return out
