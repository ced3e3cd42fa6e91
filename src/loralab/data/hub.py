"""Real data sets through ``datasets.load_dataset``: a local copy first, the hub (or its offline cache) second.

``path`` may be a directory saved with ``save_to_disk``, a directory of data files, or a single
json/jsonl/csv/parquet file in the data set's own schema.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from loralab.errors import DatasetUnavailableError

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_records(
    hub_id: str | None = None,
    name: str | None = None,
    split: str = "train",
    path: str | None = None,
    limit: int | None = None,
    override_key: str = "dataset.path",
) -> list[dict[str, Any]]:
    import datasets  # heavy import, only for runs that use real data

    try:
        if path:
            data = _load_local(Path(path).expanduser(), split)
        elif hub_id:
            data = datasets.load_dataset(hub_id, name, split=split)
        else:
            raise DatasetUnavailableError(f"neither a hub id nor {override_key} is set")
    except DatasetUnavailableError:
        raise
    except Exception as err:  # datasets raises many types (ConnectionError, FileNotFoundError, HfHubHTTPError...)
        where = f"local path {path!r}" if path else f"hub id {hub_id!r}" + (f" (config {name!r})" if name else "")
        raise DatasetUnavailableError(
            f"could not load data set from {where}, split {split!r}: {type(err).__name__}: {str(err)[:200]}. "
            f"Point the config at a local copy with {override_key}=/local/file_or_dir"
        ) from err
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    return [dict(row) for row in data]


def _load_local(path: Path, split: str):
    import datasets

    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file():
        builder = FILE_BUILDERS.get("".join(path.suffixes[-1:]))
        if builder is None:
            raise DatasetUnavailableError(f"{path}: unsupported file type; valid: {sorted(FILE_BUILDERS)}")
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        loaded = datasets.load_from_disk(str(path))
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    return datasets.load_dataset(str(path), split=split)
