"""Which Trainer checkpoint a run may resume from.

The Trainer writes ``checkpoint-N/`` file by file, in place (weights, optimizer, scheduler, RNG state, then
``trainer_state.json``), so a process killed while saving leaves a directory that *looks* like the newest
checkpoint but is missing files or holds a truncated one; a disk error can do the same to an older one.
``transformers.trainer_utils.get_last_checkpoint`` only looks at directory names, and loading such a
directory either crashes deep inside ``torch.load`` or, worse, resumes from a mix of states.

``resumable_checkpoint`` therefore checks checkpoints newest first without loading any tensor into the
model: every file the Trainer needs is present, every safetensors file is exactly as long as its header
says, every ``torch.save`` archive has an intact zip directory (and matching CRCs when small enough to read
quickly), ``trainer_state.json`` parses and names the same step as the directory, and every file matches the
SHA-256 checksum recorded when the checkpoint was saved (``SHA256SUMS``, written last, so a checkpoint without
it was not completely saved; a same-length flipped byte passes every other check). The newest one that
passes is returned; the newer ones that failed are reported and moved aside to ``corrupt-checkpoint-N[.k]``
(kept for inspection, invisible to the Trainer's ``checkpoint-*`` globbing and rotation). When none passes,
nothing is moved and the run stops with an error that names each checkpoint and its problem.
"""
from __future__ import annotations

import json
import logging
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from loralab.checksums import manifest_problem
from loralab.errors import LoralabError

log = logging.getLogger("loralab")

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
QUARANTINE_PREFIX = "corrupt-"
TRAINER_STATE = "trainer_state.json"
# Reading a whole archive to verify its CRCs costs one pass over the file; above this size (full fine-tuning
# optimiser states of billion-parameter models) only the zip directory is checked, which still catches the
# common failure, truncation, because the directory sits at the end of the file.
CRC_CHECK_LIMIT_BYTES = 1 << 30

# File names the Trainer (and PEFT's save_pretrained) use for model weights, single-file or sharded.
WEIGHT_FILES = (
    "adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "model.safetensors.index.json",
    "pytorch_model.bin", "pytorch_model.bin.index.json",
)
OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")


class CorruptCheckpointError(LoralabError):
    """Checkpoints exist but none of them can be resumed from."""


@dataclass(frozen=True)
class SkippedCheckpoint:
    """A checkpoint that failed the checks: where it was, why, and where it was moved."""

    path: Path
    problem: str
    moved_to: Path

    def describe(self) -> str:
        return f"{self.path.name}: {self.problem} (moved to {self.moved_to.name})"


def checkpoint_step(path: Path) -> int | None:
    match = CHECKPOINT_RE.match(path.name)
    return int(match.group(1)) if match else None


def _safetensors_problem(path: Path) -> str | None:
    """The safetensors layout is an 8-byte header length, a JSON header, then the data the header indexes."""
    size = path.stat().st_size
    if size < 8:
        return f"{path.name} is truncated ({size} bytes, shorter than its 8-byte header length)"
    with path.open("rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        if 8 + header_len > size:
            return f"{path.name} is truncated ({size} bytes; its header alone claims {8 + header_len})"
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return f"{path.name} has an unreadable header"
    if not isinstance(header, dict):
        return f"{path.name} has an unreadable header"
    try:
        data_end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        return f"{path.name} has a malformed header"
    expected = 8 + header_len + data_end
    if size != expected:
        return f"{path.name} is {'truncated' if size < expected else 'over-long'} ({size} bytes, expected {expected})"
    return None


def _torch_archive_problem(path: Path) -> str | None:
    """``torch.save`` writes a zip archive; truncation destroys its trailing directory, bit rot its CRCs."""
    try:
        with zipfile.ZipFile(path) as archive:
            if path.stat().st_size <= CRC_CHECK_LIMIT_BYTES:
                bad = archive.testzip()
                if bad is not None:
                    return f"{path.name} is corrupt (CRC mismatch in member {bad})"
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"{path.name} is truncated or corrupt ({err})"
    return None


def _torch_file_problem(path: Path) -> str | None:
    with path.open("rb") as handle:
        magic = handle.read(4)
    if len(magic) < 4:
        return f"{path.name} is empty or truncated ({len(magic)} bytes)"
    is_zip = magic == b"PK\x03\x04"  # every zip archive starts with a local-file header
    # A file that is not a zip is a legacy pickle, which cannot be checked without unpickling it.
    return _torch_archive_problem(path) if is_zip else None


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{path.name} is not valid JSON ({err.__class__.__name__})"
    return None


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be resumed from, or None when it is complete. Never loads tensors into memory."""
    path = Path(path)
    if not path.is_dir():
        return "not a directory"
    names = {p.name for p in path.iterdir()}
    subdirs = {p.name for p in path.iterdir() if p.is_dir()}
    # Distributed back-ends keep weights/optimiser state in sub-directories (DeepSpeed global_stepN/, FSDP
    # sharded state dicts, one sub-directory per extra PEFT adapter); accept those as present.
    deepspeed = any(d.startswith("global_step") for d in subdirs)
    fsdp = any("fsdp" in d for d in subdirs) or any("fsdp" in n for n in names)
    adapter_subdir = any((path / d / w).is_file() for d in subdirs for w in WEIGHT_FILES[:2])
    missing = []
    if TRAINER_STATE not in names:
        missing.append(TRAINER_STATE)
    if not (names & set(WEIGHT_FILES) or deepspeed or fsdp or adapter_subdir):
        missing.append("model weights (" + " / ".join(WEIGHT_FILES[:3]) + ")")
    if not (names & set(OPTIMIZER_FILES) or deepspeed or any(d.startswith("optimizer") for d in subdirs)):
        missing.append("optimizer state (optimizer.pt)")
    if "scheduler.pt" not in names and not deepspeed:
        missing.append("scheduler.pt")
    if not any(n.startswith("rng_state") for n in names):
        missing.append("rng_state.pth")  # without it a resumed run draws different dropout masks
    if missing:
        return "missing " + ", ".join(missing)

    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        if file.suffix == ".safetensors":
            problem = _safetensors_problem(file)
        elif file.suffix in (".pt", ".pth", ".bin"):
            problem = _torch_file_problem(file)
        elif file.suffix == ".json":
            problem = _json_problem(file)
        else:
            problem = None
        if problem:
            return problem

    state = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
    step = checkpoint_step(path)
    if step is not None and state.get("global_step") != step:
        return f"{TRAINER_STATE} records step {state.get('global_step')!r}, not {step}"
    return manifest_problem(path)


def _quarantine(path: Path) -> Path:
    target = path.with_name(QUARANTINE_PREFIX + path.name)
    n = 1
    while target.exists():  # an earlier attempt may have set aside a checkpoint of the same step
        target = path.with_name(f"{QUARANTINE_PREFIX}{path.name}.{n}")
        n += 1
    path.rename(target)
    return target


def resumable_checkpoint(checkpoints_dir: str | Path) -> tuple[str | None, list[SkippedCheckpoint]]:
    """The newest complete checkpoint under ``checkpoints_dir`` (None if there are none) and what was skipped.

    Checkpoints newer than the returned one failed ``checkpoint_problem``; they are moved aside, so neither
    the Trainer's rotation nor a later resume picks them up again (and the Trainer can write a fresh
    directory of the same step). Raises ``CorruptCheckpointError``, moving nothing, when checkpoints exist
    but none is usable: silently starting over would discard the run's progress without a word.
    """
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return None, []
    candidates = sorted((p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None),
                        key=lambda p: checkpoint_step(p) or 0, reverse=True)
    bad: list[tuple[Path, str]] = []
    for candidate in candidates:
        problem = checkpoint_problem(candidate)
        if problem is None:
            skipped = [SkippedCheckpoint(path, why, _quarantine(path)) for path, why in bad]
            for s in skipped:
                log.warning("checkpoint %s is unusable and was not loaded: %s; moved it to %s",
                            s.path, s.problem, s.moved_to)
            return str(candidate), skipped
        bad.append((candidate, problem))
    if bad:
        # Nothing is moved here, so every re-run keeps reporting this until the user decides (force_rerun).
        raise CorruptCheckpointError(
            f"no usable checkpoint in {root}: " + "; ".join(f"{p.name}: {why}" for p, why in bad)
            + ". Re-run with force_rerun=true to start this run from scratch."
        )
    return None, []
