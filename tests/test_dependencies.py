"""The dependency lock: pyproject.toml bounds what loralab works with, constraints.txt pins what the suite
passed with (``make install`` applies it, ``make lock`` regenerates it). A dependency added or re-bounded
without re-locking, or an environment that drifted from the lock, fails here."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import ROOT

tomllib = pytest.importorskip("tomllib")

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
REQUIREMENTS = [Requirement(r) for r in PROJECT["dependencies"]] + [
    Requirement(r) for extra in ("dev", "slurm") for r in PROJECT["optional-dependencies"][extra]]
# packages whose internals the code relies on: a new major version must be a deliberate upgrade
INTERNALS_USED = {"transformers": "6", "peft": "1", "lm-eval": "0.5", "wandb": "1"}


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            assert pinned, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = pinned
    return pins


def test_every_dependency_is_locked_within_its_bounds() -> None:
    lock = _lock()
    for requirement in REQUIREMENTS:
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement} is not in constraints.txt: run make lock"
        assert requirement.specifier.contains(lock[name], prereleases=True), f"{requirement} vs lock {lock[name]}"


def test_packages_whose_internals_are_used_stop_before_their_next_major() -> None:
    for requirement in REQUIREMENTS:
        name = canonicalize_name(requirement.name)
        if name in INTERNALS_USED:
            bound = INTERNALS_USED[name]
            assert f"<{bound}" in str(requirement.specifier), f"{requirement}: needs an upper bound <{bound}"
            assert not requirement.specifier.contains(bound) and requirement.specifier.contains(_lock()[name])


def test_this_environment_is_the_locked_one() -> None:
    lock = _lock()
    for requirement in REQUIREMENTS:
        name = canonicalize_name(requirement.name)
        try:
            installed = Version(version(requirement.name))
        except PackageNotFoundError:
            continue  # an extra not installed here
        assert installed.public == lock[name], f"{name} {installed} installed, {lock[name]} locked: make install"
