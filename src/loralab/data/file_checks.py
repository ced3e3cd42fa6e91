"""What is wrong with a local data file, said the way a person fixes it: the file, the line, the problem.

``datasets`` reports a malformed file as "An error occurred while generating the dataset" (or, for an empty
one, a bare ``StopIteration``), naming neither the file nor the line. These checks run only after a load
failed, so a good file is read once, by ``datasets``.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


def data_file_problem(path: Path) -> str | None:
    """``"<file>, line N: <problem>"`` for the first problem in ``path`` (a file, or a directory of data files),
    None when none is found."""
    files = sorted(p for p in path.rglob("*") if p.suffix in DATA_SUFFIXES) if path.is_dir() else [path]
    for file in files:
        problem = _problem(file)
        if problem:
            return f"{file}{problem}"
    return None


def _problem(file: Path) -> str | None:
    try:
        if file.suffix == ".parquet":
            return _parquet_problem(file)
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        return f": not UTF-8 text (byte {err.start} cannot be decoded)"
    except OSError as err:
        return f": cannot be read ({err.strerror or err})"
    if not text.strip():
        return ": the file is empty"
    if file.suffix == ".csv":
        return _csv_problem(text)
    if file.suffix == ".json" and text.lstrip().startswith("["):
        return _json_array_problem(text)
    return _json_lines_problem(text)  # .jsonl, and .json files written one record per line (datasets reads both)


def _json_lines_problem(text: str) -> str | None:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            return f", line {number}: not valid JSON ({err.msg} at column {err.colno})"
        if not isinstance(record, dict):
            return f", line {number}: a JSON {type(record).__name__}, not an object with the data set's fields"
    return None


def _json_array_problem(text: str) -> str | None:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        return f", line {err.lineno}: not valid JSON ({err.msg} at column {err.colno})"
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            return (f": item {i} of the array is a JSON {type(record).__name__}, "
                    f"not an object with the data set's fields")
    return None


def _csv_problem(text: str) -> str | None:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
        for row in reader:
            if row and len(row) != len(header):
                return f", line {reader.line_num}: {len(row)} fields, but the header has {len(header)}"
    except csv.Error as err:
        return f", line {reader.line_num}: not valid CSV ({err})"
    return None


def _parquet_problem(file: Path) -> str | None:
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(file)
    except Exception as err:  # noqa: BLE001 — pyarrow raises several types for a damaged file
        return f": not a readable Parquet file ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    return None
