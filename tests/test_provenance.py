"""Provenance names the model snapshot a run used: the hub-cache commit a revision resolved to, not just 'main'.

The hub cache here is built by the test in the layout huggingface_hub writes (``models--org--name/refs/main``
holding the commit, ``snapshots/<commit>/`` holding the files) around a tiny model the project builds, and the
model is loaded by loralab's own loader through ``from_pretrained(hub_id)`` with the hub offline.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OLDER = "89abcdef0123456789abcdef0123456789abcdef"
SCRIPT = """
import json, sys
from omegaconf import OmegaConf
from loralab.models.loading import load_model, model_provenance
out = []
for extra in ({}, {"revision": sys.argv[1]}, {"path": sys.argv[2]}):
    cfg = OmegaConf.create({"name": "t", "kind": "causal_lm", "hub_id": "loralab-test/tiny-llama", "path": None,
                            "builder": None, "dtype": "float32", **extra})
    model, tokenizer = load_model(cfg)  # the weights really come from that snapshot
    out.append(model_provenance(cfg))
print(json.dumps(out))
"""


def test_provenance_records_the_resolved_snapshot_commit(tmp_path: Path) -> None:
    from loralab.models.embedded_lm import char_tokenizer
    from loralab.models.tiny import tiny_llama

    repo = tmp_path / "hub" / "models--loralab-test--tiny-llama"
    for commit, seed in ((COMMIT, 0), (OLDER, 1)):
        tiny_llama(seed=seed).save_pretrained(repo / "snapshots" / commit)
        char_tokenizer(list("0123456789abc ")).save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, OLDER, str(repo / "snapshots" / OLDER)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    main, pinned, local = json.loads(result.stdout.splitlines()[-1])
    assert main == {"source": "hub", "hub_id": "loralab-test/tiny-llama", "revision": "main", "commit": COMMIT}
    assert pinned["revision"] == OLDER and pinned["commit"] == OLDER
    assert local == {"source": "path", "path": str((repo / "snapshots" / OLDER).resolve()), "commit": OLDER}
