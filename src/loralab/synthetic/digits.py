"""The embedded vision task: scikit-learn's bundled 8×8 digits (1,797 images, no download).

The embedded ViT is pretrained on digits 0–4; the shifted task adapts it to digits 5–9 (labels 5..9 are
mapped to 0..4 so the classifier keeps its shape). Each split is a fixed, stratified 70/30 partition.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

CLASS_RANGES = {"base": (0, 5), "shift": (5, 10)}


def digit_records(classes: str, split: str, seed: int = 0) -> list[dict]:
    """Records ``{"pixel_values": (1, 8, 8) float tensor in [0, 1], "labels": int}``."""
    if classes not in CLASS_RANGES:
        raise ValueError(f"classes={classes!r}: valid values are {sorted(CLASS_RANGES)}")
    if split not in ("train", "eval"):
        raise ValueError(f"split={split!r}: valid splits are 'train' and 'eval'")
    lo, hi = CLASS_RANGES[classes]
    data = load_digits()
    keep = (data.target >= lo) & (data.target < hi)
    images = data.images[keep].astype(np.float32) / 16.0
    labels = data.target[keep] - lo
    train_x, eval_x, train_y, eval_y = train_test_split(
        images, labels, test_size=0.3, random_state=seed, stratify=labels
    )
    xs, ys = (train_x, train_y) if split == "train" else (eval_x, eval_y)
    return [{"pixel_values": torch.from_numpy(x).unsqueeze(0), "labels": int(y)} for x, y in zip(xs, ys)]


def collate_images(batch: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([b["pixel_values"] for b in batch]),
        "labels": torch.tensor([b["labels"] for b in batch], dtype=torch.long),
    }
