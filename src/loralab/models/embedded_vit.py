"""The embedded ViT: a tiny ViT the project pretrains itself on digits 0–4 (cached like the embedded LM)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from loralab.data.digits import collate_images, digit_records
from loralab.models.embedded_lm import default_cache_root
from loralab.models.tiny import tiny_vit

log = logging.getLogger(__name__)
RECIPE_VERSION = 1


@dataclass(frozen=True)
class TinyViTRecipe:
    hidden_size: int = 48
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 96
    patch_size: int = 2
    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 2e-3
    seed: int = 0

    def key(self) -> str:
        payload = json.dumps({**asdict(self), "version": RECIPE_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def pretrained_tiny_vit(cache_root: str | Path | None = None, **recipe_overrides: object) -> Path:
    """Directory of the pretrained embedded ViT, pretraining it first if this recipe was never built."""
    recipe = TinyViTRecipe(**recipe_overrides)  # type: ignore[arg-type]
    root = Path(cache_root) if cache_root else default_cache_root()
    target = root / "embedded" / f"tiny_vit-{recipe.key()}"
    if (target / "config.json").exists():
        return target
    root.joinpath("embedded").mkdir(parents=True, exist_ok=True)
    log.info("pretraining the embedded ViT once (recipe %s) into %s", recipe.key(), target)
    staging = Path(tempfile.mkdtemp(prefix=".tiny_vit-", dir=root / "embedded"))
    try:
        _pretrain(recipe).save_pretrained(staging, safe_serialization=True)
        (staging / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _pretrain(recipe: TinyViTRecipe):
    model = tiny_vit(
        seed=recipe.seed,
        hidden_size=recipe.hidden_size,
        num_hidden_layers=recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads,
        intermediate_size=recipe.intermediate_size,
        patch_size=recipe.patch_size,
        num_labels=5,
    )
    records = digit_records("base", "train", seed=recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate)
    model.train()
    for _ in tqdm(range(recipe.epochs), desc="pretraining embedded ViT", leave=False):
        order = torch.randperm(len(records), generator=generator).tolist()
        for start in range(0, len(order), recipe.batch_size):
            batch = collate_images([records[i] for i in order[start:start + recipe.batch_size]])
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    model.eval()
    return model
