"""The embedded ViT: a tiny ViT the project pretrains itself on digits 0–4 (cached like the embedded LM)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from loralab.synthetic.digits import collate_images, digit_records
from loralab.models.cache import build_once
from loralab.models.tiny import tiny_vit
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


def pretrained_tiny_vit(cache_root: str | Path | None = None, **recipe_overrides: object) -> Path:
    """Directory of the pretrained embedded ViT, pretraining it first if this recipe was never built."""
    recipe = TinyViTRecipe(**recipe_overrides)  # type: ignore[arg-type]
    return build_once("tiny_vit", recipe, RECIPE_VERSION,
                      lambda directory: _pretrain(recipe).save_pretrained(directory, safe_serialization=True),
                      cache_root)


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
