"""The per-file checksum manifests: the format is coreutils' own (``sha256sum -c`` verifies what we write, and
we read what ``sha256sum`` writes), and every kind of change to a sealed directory is named."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from loralab.checksums import MANIFEST, manifest_problem, read_manifest, write_manifest

SHA256SUM = shutil.which("sha256sum")
needs_coreutils = pytest.mark.skipif(SHA256SUM is None, reason="coreutils' sha256sum is not installed")


def _sealed(tmp_path: Path) -> Path:
    directory = tmp_path / "sealed"
    (directory / "sub").mkdir(parents=True)
    (directory / "weights.safetensors").write_bytes(bytes(range(256)) * 64)
    (directory / "sub" / "state.json").write_text('{"step": 4}')
    (directory / "back\\slash.txt").write_text("escaped by coreutils")
    write_manifest(directory)
    return directory


@needs_coreutils
def test_sha256sum_verifies_what_we_write_and_fails_where_we_fail(tmp_path: Path) -> None:
    directory = _sealed(tmp_path)
    assert manifest_problem(directory) is None
    ok = subprocess.run([SHA256SUM, "--strict", "-c", MANIFEST], cwd=directory, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    data = bytearray((directory / "weights.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same length
    (directory / "weights.safetensors").write_bytes(bytes(data))
    problem = manifest_problem(directory)
    assert problem is not None and "weights.safetensors" in problem and "SHA-256" in problem
    bad = subprocess.run([SHA256SUM, "-c", MANIFEST], cwd=directory, capture_output=True, text=True)
    assert bad.returncode != 0 and "weights.safetensors: FAILED" in bad.stdout


@needs_coreutils
def test_we_read_what_sha256sum_writes(tmp_path: Path) -> None:
    directory = _sealed(tmp_path)
    names = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                   if p.is_file() and p.name != MANIFEST)
    theirs = subprocess.run([SHA256SUM, "--", *names], cwd=directory, capture_output=True, text=True, check=True)
    (directory / MANIFEST).write_text(theirs.stdout)
    assert read_manifest(directory).keys() == set(names)
    assert manifest_problem(directory) is None


CHANGES = {
    "file removed": (lambda d: (d / "sub" / "state.json").unlink(), ["sub/state.json", "missing"]),
    "file added": (lambda d: (d / "extra.bin").write_bytes(b"x"), ["extra.bin", "not listed"]),
    "manifest removed": (lambda d: (d / MANIFEST).unlink(), ["missing SHA256SUMS"]),
    "manifest garbled": (lambda d: (d / MANIFEST).write_text("not a checksum line\n"), ["SHA256SUMS", "line 1"]),
    "same-length edit": (lambda d: (d / "sub" / "state.json").write_text('{"step": 5}'), ["sub/state.json", "SHA-256"]),
}


@pytest.mark.parametrize("case", list(CHANGES))
def test_every_change_is_named(case: str, tmp_path: Path) -> None:
    directory = _sealed(tmp_path)
    change, phrases = CHANGES[case]
    change(directory)
    problem = manifest_problem(directory)
    assert problem is not None
    for phrase in phrases:
        assert phrase in problem, problem
