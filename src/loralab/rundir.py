"""Run directories named by what the run *is* (a hash of its resolved config), not when it ran.

Re-running the same config finds the same directory: a finished run is skipped, an unfinished one resumes
from its last checkpoint. Keys that do not change the result (where results go, logging, progress bars, the
paper-table layout) are left out of the hash.

A finished run is skipped only once its records check out (``status.json``, ``metrics.json`` and
``config.yaml`` parse, the adapter is there and matches its checksums); a damaged one stops the run with one
line naming the file and the fix, ``force_rerun=true``. One process at a time works in a run directory: it
holds an exclusive ``flock`` on ``<run>/.lock`` (pid and host written inside), and a second process on the
same config stops before writing anything, naming the holder. The kernel drops the lock when its holder
exits or dies (kill -9 included), so a lock left by a dead process is simply taken over. ``flock`` works on
local file systems and on NFS (Linux clients emulate it with NFS byte-range locks); where the file system
refuses locks, the run goes on unlocked with a warning.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml
from omegaconf import DictConfig, OmegaConf

from loralab.checksums import MANIFEST, manifest_problem
from loralab.distributed import global_train_batch, is_main_process, world_size
from loralab.errors import LoralabError
from loralab.io import atomic_write_json, read_json
from loralab.methods.base import effective_config

log = logging.getLogger("loralab")

# Top-level keys that never change what a run computes. ``table`` lays results out in a paper table: a cell two
# tables share is one run, and renaming a column re-runs nothing. ``lr_source`` and ``tune_lr`` say where the
# learning rate came from and how it would be tuned; the rate itself, trainer.learning_rate, is hashed.
NON_SEMANTIC_KEYS = ("paths", "logger", "hydra", "progress", "force_rerun", "diagnostics", "table", "lr_source",
                     "tune_lr")

STATUS_FILE = "status.json"
CONFIG_FILE = "config.yaml"
LOCK_FILE = ".lock"
LOG_FILE = "run.log"
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
START_OVER = "re-run with force_rerun=true to start this run over"


class DamagedRunError(LoralabError):
    """A file of a run directory cannot be read or fails its checksum; the message names it and the fix."""


class RunLockedError(LoralabError):
    """Another live process holds the run directory."""

# A generate task's answer reading is a filter chain (``filters:``). A chain of one ``regex`` and one
# ``normalize`` step reads exactly what the four keys it replaced read, so it is hashed as those keys: runs
# declared before the chain keep their hashes and directories. Any other chain is hashed as written.
_LEGACY_READING = {"regex": {"pattern": "answer_pattern", "occurrence": "occurrence", "fallback": "fallback"},
                   "normalize": {"how": "normalizer"}}


def config_hash(cfg: DictConfig, processes: int | None = None) -> str:
    """Hash of what the run computes: the resolved config without :data:`NON_SEMANTIC_KEYS`, plus, for a
    multi-process run (``processes`` > 1; default: this process's world size), the number of processes and
    the global batch. The launch is added only then, so single-process runs keep the hashes they always had.
    The ``method`` block counts as the method runs it (``methods.base.effective_config``: the YAML over the
    dataclass's defaults), so a default kept only in the dataclass hashes as if the YAML listed it."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    semantic = {k: v for k, v in resolved.items() if k not in NON_SEMANTIC_KEYS}
    if isinstance(semantic.get("method"), dict):
        semantic["method"] = effective_config(semantic["method"])
    if isinstance(semantic.get("eval"), dict) and isinstance(semantic["eval"].get("tasks"), list):
        semantic["eval"] = {**semantic["eval"], "tasks": [_hashed_task(t) for t in semantic["eval"]["tasks"]]}
    processes = world_size() if processes is None else processes
    if processes > 1:  # per-device batch 4 on 2 processes is batch 8: another run than batch 4 alone
        semantic["launch"] = {"world_size": processes,
                              "global_train_batch": global_train_batch(resolved.get("trainer") or {}, processes)}
    payload = json.dumps(semantic, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


def _hashed_task(task: Any) -> Any:
    """An eval task as hashed: a ``[regex, normalize]`` filter chain as its legacy keys (:data:`_LEGACY_READING`)."""
    chain = task.get("filters") if isinstance(task, dict) else None
    if not isinstance(chain, list) or [s.get("function") if isinstance(s, dict) else None for s in chain] != \
            list(_LEGACY_READING):
        return task
    legacy: dict[str, Any] = {}
    for step in chain:
        keys = _LEGACY_READING[step["function"]]
        if not set(step) - {"function"} <= set(keys):
            return task  # a parameter the legacy keys had no place for
        legacy.update({keys[k]: v for k, v in step.items() if k != "function"})
    if set(legacy) & set(task):
        return task
    return {**{k: v for k, v in task.items() if k != "filters"}, **legacy}


@dataclass
class RunDir:
    path: Path

    @classmethod
    def for_config(cls, cfg: DictConfig) -> "RunDir":
        name = f"{cfg.model.name}-{cfg.method.name}-r{cfg.rank}-{cfg.dataset.name}-s{cfg.seed}-{config_hash(cfg)}"
        return cls(Path(cfg.paths.runs_dir) / name)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    def status(self) -> dict[str, Any]:
        file = self.path / STATUS_FILE
        if not file.exists():
            return {"state": "new"}
        status = read_record(file)
        if not isinstance(status.get("state"), str):
            raise DamagedRunError(f"{file} has no state; the run's progress is unknown: {START_OVER}")
        return status

    def is_finished(self) -> bool:
        return self.status().get("state") == "finished" and self.metrics_file.exists()

    def finished_metrics(self) -> dict[str, Any]:
        """The metrics of a finished run, once its records check out; DamagedRunError naming the file if not."""
        metrics = read_record(self.metrics_file)
        missing = [k for k in ("run", "eval", "train") if not isinstance(metrics.get(k), dict)]
        if missing:
            raise DamagedRunError(f"{self.metrics_file} lacks its {missing} section(s): {START_OVER}")
        config = self.path / CONFIG_FILE
        try:
            loaded = yaml.safe_load(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise DamagedRunError(f"{config} is unreadable ({_first_line(err)}): {START_OVER}") from err
        if not isinstance(loaded, dict) or not {"model", "method", "dataset", "seed"} <= set(loaded):
            raise DamagedRunError(f"{config} is not this run's resolved configuration: {START_OVER}")
        adapter = self.path / "adapter"
        if not adapter.is_dir():
            raise DamagedRunError(f"{adapter} (the trained weights) is missing: {START_OVER}")
        if (adapter / MANIFEST).is_file():
            problem = manifest_problem(adapter)
            if problem:
                raise DamagedRunError(f"{adapter}: {problem}: {START_OVER}")
        else:  # saved before adapters carried checksums: nothing to verify against
            log.warning("%s has no %s (saved by an earlier loralab); its weights were not verified", adapter, MANIFEST)
        return metrics

    def clear(self) -> None:
        """Remove the run's files; the lock file stays, so a process holding it keeps holding it."""
        if not self.path.exists():
            return
        for child in self.path.iterdir():
            if child.name == LOCK_FILE:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def mark(self, state: str, **details: Any) -> None:
        atomic_write_json(self.path / STATUS_FILE, {"state": state, **details})

    def check_unlocked(self) -> None:
        """Stop, writing nothing, if a live process holds this run directory (a cheap early look)."""
        if not is_main_process():
            return
        try:
            handle = open(self.path / LOCK_FILE, encoding="utf-8")  # noqa: SIM115 — closed below
        except FileNotFoundError:
            return
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunLockedError(self._locked_message(handle)) from None
            except OSError:
                return  # no locking on this file system: locked() warns about it
            fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run directory for the block (creating it); RunLockedError if a live process holds it.
        In a multi-process launch (torchrun, accelerate) the run is one job: its rank 0 holds the lock."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not is_main_process():
            yield
            return
        # read-write without O_APPEND, under which Linux's pwrite ignores the offset
        descriptor = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        with os.fdopen(descriptor, "r+", encoding="utf-8") as handle:
            if not _lock_exclusive(handle):
                raise RunLockedError(self._locked_message(handle))
            previous = _holder(handle)
            if previous:  # written by a holder that never released the lock: it died (the kernel released it)
                log.warning("taking over %s from %s, which ended without releasing it", self.path,
                            _describe(previous))
            record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S")})
            _overwrite(handle, record + "\n")
            try:
                yield
            finally:
                _overwrite(handle, "")  # an empty lock file: released cleanly
                with contextlib.suppress(OSError):  # (no lock to release where the file system refused one)
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def _locked_message(self, handle: Any) -> str:
        holder = _holder(handle)
        who = _describe(holder) if holder else "another process (it has not recorded its pid yet)"
        return (f"run directory {self.path} is in use by {who}; wait for it to end, or stop it and run the same "
                f"command again to resume")


@contextlib.contextmanager
def appending_log(file: Path) -> Iterator[None]:
    """Every log record of the block is appended to ``file`` as well (a run's ``run.log`` spans its attempts)."""
    handler = logging.FileHandler(file, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def read_record(file: Path) -> dict[str, Any]:
    """A run's JSON record (status, metrics) as a dict; DamagedRunError naming the file if it is not one."""
    try:
        record = read_json(file)
    except FileNotFoundError as err:
        raise DamagedRunError(f"{file} is missing: {START_OVER}") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedRunError(f"{file} is not valid JSON ({_first_line(err)}): {START_OVER}") from err
    if not isinstance(record, dict):
        raise DamagedRunError(f"{file} holds a JSON {type(record).__name__}, not an object: {START_OVER}")
    return record


def _lock_exclusive(handle: Any) -> bool:
    """Take the lock without waiting: False if another process holds it. A file system that refuses locks
    counts as taken (with a warning): stopping every run there would be worse than not detecting a twin."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as err:
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        log.warning("%s: the file system refuses locks (%s); a second process on this config would not be "
                    "stopped", handle.name, os.strerror(err.errno))
    return True


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _holder(handle: Any) -> dict[str, Any] | None:
    handle.seek(0)
    try:
        holder = json.loads(handle.read() or "null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def _describe(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('since')})"


def _overwrite(handle: Any, text: str) -> None:
    """Replace the lock file's content in one write at offset 0 (a reader sees old or new, rarely a mix)."""
    data = text.encode("utf-8")
    os.pwrite(handle.fileno(), data, 0)
    os.ftruncate(handle.fileno(), len(data))
    handle.flush()
