"""Every sandbox mode contains every hostile program it claims to (tests/sandbox_hostile.py), judged by the
verdict and by the host afterwards; the user-namespace mode meets a genuinely non-root evaluator.

Each mode's programs run in a separate runner process (the sandbox's parent), so a program that kills its
parent takes down the runner, which fails the test, and not pytest. The isolating modes run with the audit
hook off: the kernel boundaries alone must hold.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox_hostile import HOSTILE, SECRET_VAR, UNPRIVILEGED_UID, user_namespaces_work

RUNNER = Path(__file__).with_name("sandbox_hostile.py")
ROOT_USER = os.geteuid() == 0


def _run_suite(mode: str, as_uid: int | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LORALAB_SANDBOX"}
    env[SECRET_VAR] = secrets.token_hex(16)  # in the runner's initial environment, as in an evaluator's
    cmd = [sys.executable, "-B", str(RUNNER), mode, *(["--as-uid", str(as_uid)] if as_uid is not None else [])]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"the runner died (exit {proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


MODES = [
    pytest.param("namespaces", marks=pytest.mark.skipif(not ROOT_USER, reason="namespaces mode is root's")),
    pytest.param("userns", marks=pytest.mark.skipif(not user_namespaces_work(),
                                                    reason="this kernel refuses unprivileged user namespaces")),
    "plain",
]


def test_the_suite_covers_every_kind_of_attack() -> None:
    names = [h.name for h in HOSTILE]
    assert len(names) == len(set(names)) >= 25
    for kind in ("fork_bomb", "posixsubprocess", "dir_fd", "environ_parent", "tcp_", "setsid", "kill_parent",
                 "disk_fill", "forge_", "ctypes_"):
        assert any(kind in n for n in names), kind


@pytest.mark.parametrize("mode", MODES)
def test_hostile_programs_are_contained(mode: str) -> None:
    as_uid = UNPRIVILEGED_UID if mode == "userns" and ROOT_USER else None
    report = _run_suite(mode, as_uid)
    assert all(report["controls"].values()), report["controls"]  # the host checks can see an escape
    claimed = [h.name for h in HOSTILE if mode != "plain" or h.plain]
    records = report["records"]
    assert [r["name"] for r in records] == claimed
    escaped = {r["name"]: (r["status"], r["reason"], r["escapes"]) for r in records if r["escapes"]}
    assert escaped == {}
    assert report["host"] == []
    wrong = [o for o in report["ordinary"]
             if o["status"] != o["expected"][0] or not o["reason"].startswith(o["expected"][1])]
    assert wrong == []  # honest programs keep their verdicts in this mode
    assert {r["isolation"] for r in records} == {mode}
    if mode == "userns":
        assert report["uid"] != 0 and report["detected"] == "userns"  # what auto picks for a non-root user
    if mode == "namespaces":
        assert report["detected"] == "namespaces"
