"""Real data sets through ``datasets.load_dataset``: a local copy first, the hub (or its offline cache) second.

``path`` may be a directory saved with ``save_to_disk``, a directory of data files, or a single
json/jsonl/csv/parquet file in the data set's own schema. Every loader of a real data set goes through
:func:`load_records`, so every one of them can be pointed at a local copy with the override its config names.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from loralab.data.file_checks import data_file_problem
from loralab.errors import DataFileError, DatasetUnavailableError, LoralabError

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def command_line_key(override_key: str) -> str:
    """``eval.tasks[0].data.path`` → ``eval.tasks.0.data.path``: Hydra's override grammar has no brackets."""
    return re.sub(r"\[(\d+)\]", r".\1", override_key)


def config_key(override_key: str) -> str:
    """``eval.tasks.0.data.path`` → ``eval.tasks[0].data.path``: how the key reads in the config tree."""
    return re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", override_key)


def how_to_override(override_key: str, path: str | None) -> str:
    """The sentence every unavailable-data error ends with: the override that works, and the current value."""
    cli = command_line_key(override_key)
    tree = config_key(override_key)
    current = f" (the config key {tree}={path!r} now)" if tree != cli else ""
    return f"Point the config at a local copy with {cli}=/local/file_or_dir{current}"


def load_records(
    hub_id: str | None = None,
    name: str | None = None,
    split: str = "train",
    path: str | None = None,
    limit: int | None = None,
    override_key: str = "dataset.path",
    lazy: bool = False,
) -> Any:
    """Rows of one split as a list of dicts, or (``lazy=True``) as the ``datasets.Dataset`` itself.

    The lazy form indexes rows on demand, so image data sets are not decoded into memory all at once.
    """
    import datasets  # heavy import, only for runs that use real data

    try:
        if path:
            data = _load_local(Path(path).expanduser(), split)
        elif hub_id:
            data = datasets.load_dataset(hub_id, name, split=split)
        else:
            raise DatasetUnavailableError(f"neither a hub id nor {command_line_key(override_key)} is set")
    except DatasetUnavailableError:
        raise
    except Exception as err:  # datasets raises many types (ConnectionError, FileNotFoundError, HfHubHTTPError...)
        if path:
            raise _local_load_error(Path(path).expanduser(), split, override_key, err) from err
        where = f"hub id {hub_id!r}" + (f" (config {name!r})" if name else "")
        raise DatasetUnavailableError(
            f"could not load data set from {where}, split {split!r}: {type(err).__name__}: {str(err)[:200]}. "
            f"{how_to_override(override_key, path)}"
        ) from err
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    return data if lazy else [dict(row) for row in data]


def _local_load_error(path: Path, split: str, override_key: str, err: Exception) -> LoralabError:
    """The error for a local copy that did not load: missing, or what is wrong inside it (file, line, problem)."""
    key = command_line_key(override_key)
    if not path.exists():
        return DatasetUnavailableError(f"{key}={path} does not exist; point it at a local copy of the data set (a "
                                       f"json/jsonl/csv/parquet file, or a directory saved with save_to_disk)")
    problem = data_file_problem(path)
    if problem:
        return DataFileError(f"data set {key}: {problem}; fix the file, or point {key} at a good copy")
    cause = err
    while cause.__cause__ is not None or cause.__context__ is not None:  # datasets wraps the real error
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    return DatasetUnavailableError(f"could not load the data set at {key}={path}, split {split!r}: "
                                   f"{type(cause).__name__}: {str(cause)[:300]}")


def require_fields(rows: Sequence[dict[str, Any]], fields: Sequence[str], source: str) -> None:
    """Fail early, naming the row and the missing field(s), when rows are not in the schema a loader expects.

    A json file whose rows disagree is read with the union of their fields, the missing ones as None, so
    None counts as missing.
    """
    for i, row in enumerate(rows):
        missing = [f for f in fields if row.get(f) is None]
        if missing:
            raise DatasetUnavailableError(
                f"{source}: row {i} lacks field(s) {missing}; expected the fields {list(fields)} of the data "
                f"set's own schema (this row has {sorted(k for k, v in row.items() if v is not None)})"
            )


def _load_local(path: Path, split: str):
    import datasets

    if path.is_file():
        builder = FILE_BUILDERS.get("".join(path.suffixes[-1:]))
        if builder is None:
            raise DatasetUnavailableError(f"{path}: unsupported file type; valid: {sorted(FILE_BUILDERS)}")
        # A single file holds one split, whatever the config's split is called.
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        loaded = datasets.load_from_disk(str(path))
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    return datasets.load_dataset(str(path), split=split)
