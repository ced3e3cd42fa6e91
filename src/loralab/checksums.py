"""Per-file SHA-256 manifests, so bit rot in a saved directory is found before anything is read from it.

Length and header checks catch a truncated file, not a flipped byte: a checkpoint or adapter whose weights
rotted on disk would load, resume and end with different scores. Each directory the runner must trust later
(every Trainer checkpoint, the final ``adapter/``) gets a ``SHA256SUMS`` file listing every file under it,
written last and atomically: a directory whose manifest is missing was not completely written.

The format is coreutils' (``<hex digest>  <path>``, one line per file, paths relative to the directory, a
leading backslash on lines whose path needed escaping), so ``sha256sum -c SHA256SUMS`` run inside the
directory verifies it too.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from loralab.io import atomic_write_text

MANIFEST = "SHA256SUMS"
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _listed_files(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.is_file() and p.relative_to(directory).as_posix() != MANIFEST)


def _escape(name: str) -> tuple[str, str]:
    """coreutils' escaping of a path in a checksum line: (line prefix, escaped path)."""
    if "\\" not in name and "\n" not in name and "\r" not in name:
        return "", name
    return "\\", name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _unescape(name: str) -> str:
    out, i = [], 0
    while i < len(name):
        if name[i] == "\\" and i + 1 < len(name):
            out.append({"\\": "\\", "n": "\n", "r": "\r"}.get(name[i + 1], name[i + 1]))
            i += 2
        else:
            out.append(name[i])
            i += 1
    return "".join(out)


def write_manifest(directory: str | Path) -> None:
    """Hash every file under ``directory`` into ``directory/SHA256SUMS`` (written atomically, last)."""
    directory = Path(directory)
    lines = []
    for name in _listed_files(directory):
        prefix, escaped = _escape(name)
        lines.append(f"{prefix}{file_sha256(directory / name)}  {escaped}\n")
    atomic_write_text(directory / MANIFEST, "".join(lines))


def read_manifest(directory: Path) -> dict[str, str]:
    """``{relative path: hex digest}`` from ``directory/SHA256SUMS``; ValueError naming a malformed line."""
    listed: dict[str, str] = {}
    text = (directory / MANIFEST).read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        escaped = line.startswith("\\")
        body = line[1:] if escaped else line
        digest, sep, name = body.partition("  ")
        if not sep:  # coreutils' binary mode marks the path with '*' instead of a second space
            digest, sep, name = body.partition(" *")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()) or not name:
            raise ValueError(f"{MANIFEST} line {number} is not '<sha256>  <file>'")
        listed[_unescape(name) if escaped else name] = digest.lower()
    return listed


def manifest_problem(directory: str | Path) -> str | None:
    """Why the files under ``directory`` do not match its manifest (None when every one does).

    A missing manifest, a file listed but absent, a file present but not listed, and a file whose content
    hashes differently are each a problem; the message names the file.
    """
    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        return f"missing {MANIFEST} (the per-file checksums written once a save completes)"
    try:
        listed = read_manifest(directory)
    except (UnicodeDecodeError, ValueError) as err:
        return f"{MANIFEST} is unreadable ({err})"
    present = set(_listed_files(directory))
    missing, added = sorted(set(listed) - present), sorted(present - set(listed))
    if missing:
        return f"{missing[0]} is listed in {MANIFEST} but missing"
    if added:
        return f"{added[0]} is not listed in {MANIFEST} (added after the save)"
    for name in sorted(listed):
        if file_sha256(directory / name) != listed[name]:
            return (f"{name} does not match its SHA-256 checksum in {MANIFEST} "
                    f"(the file changed on disk since it was saved)")
    return None
