"""Image classification data (SDS-LoRA Table 3: Stanford Cars, CUB-200, DTD, Food-101, SUN397).

Rows are read through the hub loader lazily (an image is decoded only when its row is used) and turned into
``{"pixel_values": (C, H, W) float tensor, "labels": int}``, sized for the model being trained: height, width
and channels come from the model's own config (``image_size``, ``num_channels``), mean/std from its image
processor config where it ships one (ViT-in21k: 0.5/0.5), else none. Resizing is a plain bilinear resize to
the model's size, no crop or augmentation (the paper gives no preprocessing; INFERRED).

Accepted forms of the image field (``image_field``, default ``image``):

* a PIL image — what a hub data set's ``image`` column decodes to;
* ``{"bytes": ..., "path": ...}`` — the same column read without decoding;
* a string: base64-encoded PNG/JPEG bytes (optionally with a ``data:image/...;base64,`` prefix), or a path
  to an image file;
* a nested list of integers 0–255, H×W (grey) or H×W×C (C = 1, 3 or 4), as a json file can hold it.

The label field (``label_field``, default ``label``) holds an int class index in ``[0, num_labels)``.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence, overload

import numpy as np
import torch

from loralab.data.hub import load_records
from loralab.errors import ConfigError, DatasetUnavailableError, ModelUnavailableError


@dataclass(frozen=True)
class ImageSpec:
    """What the model takes: (height, width), channels, and per-channel normalisation."""

    size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _pair(value: Any) -> tuple[int, int]:
    """A config's image_size: one int (square) or (height, width)."""
    if isinstance(value, (int, float, str)):
        return int(value), int(value)
    height, width = list(value)
    return int(height), int(width)


def model_image_spec(model_cfg: Any) -> ImageSpec:
    """The input spec of the model a config names, read from its config (and image processor config)."""
    from transformers import AutoConfig

    from loralab.models.loading import resolve_source

    source = resolve_source(model_cfg)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ModelUnavailableError(
            f"could not read the image size of model {model_cfg.get('name')!r} from {source}: {err}; "
            f"point the config at a local copy with model.path=/local/dir"
        ) from err
    channels = int(getattr(config, "num_channels", 3))
    mean, std = (0.0,) * channels, (1.0,) * channels
    processor_file = Path(source) / "preprocessor_config.json"
    if processor_file.is_file():
        processor = json.loads(processor_file.read_text())
        mean = tuple(float(v) for v in processor.get("image_mean", mean))
        std = tuple(float(v) for v in processor.get("image_std", std))
    return ImageSpec(_pair(getattr(config, "image_size", 224)), channels, mean, std)


def decode_image(value: Any):
    """A PIL image from any of the accepted forms (module docstring); ValueError names the form it got."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"]))
        if value.get("path"):
            return Image.open(value["path"])
    if isinstance(value, str):
        text = value.split(",", 1)[1] if value.startswith("data:") else value
        try:
            return Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
        except (binascii.Error, ValueError, OSError):
            if Path(value).is_file():
                return Image.open(value)
            raise ValueError(f"string is neither base64 image bytes nor an image file: {value[:40]!r}") from None
    if isinstance(value, (list, tuple, np.ndarray)):
        array = np.asarray(value)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise ValueError(f"nested-list image of shape {array.shape}; expected H×W or H×W×C with C in 1, 3, 4")
        if array.min() < 0 or array.max() > 255:
            raise ValueError("nested-list image values must lie in 0..255")
        return Image.fromarray(array.astype(np.uint8))
    raise ValueError(f"unsupported image value of type {type(value).__name__}")


def to_pixel_values(image: Any, spec: ImageSpec) -> torch.Tensor:
    """Convert (grey/RGB), resize to the model's size, scale to [0, 1], normalise: a (C, H, W) tensor."""
    from PIL import Image

    mode = "L" if spec.channels == 1 else "RGB"
    height, width = spec.size
    resized = image.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return torch.from_numpy(((array - mean) / std).transpose(2, 0, 1).copy())


class ImageRecords(Sequence[dict[str, Any]]):
    """Rows decoded on access: a data set of 100K images is never held in memory as tensors."""

    def __init__(self, rows: Sequence[dict[str, Any]], spec: ImageSpec, image_field: str, label_field: str,
                 source: str) -> None:
        self.rows, self.spec = rows, spec
        self.image_field, self.label_field, self.source = image_field, label_field, source

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        row = self.rows[index]
        try:
            image = decode_image(row[self.image_field])
        except (ValueError, OSError) as err:
            raise DatasetUnavailableError(f"{self.source}: row {index}: cannot read the image: {err}") from err
        return {"pixel_values": to_pixel_values(image, self.spec), "labels": int(row[self.label_field])}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]


def _column(rows: Any, field: str) -> list[Any]:
    return list(rows[field]) if hasattr(rows, "column_names") else [r.get(field) for r in rows]


def image_records(model: Any, hub_id: str | None = None, name: str | None = None, split: str = "train",
                  path: str | None = None, limit: int | None = None, override_key: str = "dataset.train.path",
                  image_field: str = "image", label_field: str = "label", num_labels: int | None = None,
                  image_size: int | None = None, num_channels: int | None = None) -> ImageRecords:
    """Lazily decoded image rows sized for ``model`` (its config node); explicit size/channels win."""
    source = f"{path or hub_id} (split {split!r})"
    rows = load_records(hub_id, name, split, path, limit, override_key, lazy=True)
    columns = list(rows.column_names)
    missing = [f for f in (image_field, label_field) if f not in columns]
    if missing:
        raise DatasetUnavailableError(
            f"{source}: no field(s) {missing}; its fields are {columns}. Set the image/label field names with "
            f"{override_key.rsplit('.', 1)[0]}.image_field / .label_field"
        )
    valid = f"the integers 0..{int(num_labels) - 1} (dataset.num_labels={num_labels})" if num_labels is not None \
        else "integer class indices"
    for i, label in enumerate(_column(rows, label_field)):
        is_index = isinstance(label, (int, np.integer)) and not isinstance(label, bool)
        if not is_index or (num_labels is not None and not 0 <= int(label) < int(num_labels)):
            raise ConfigError(f"{source}: row {i} has {label_field}={label!r}; valid labels are {valid}")
    spec = model_image_spec(model)
    if image_size is not None:
        spec = ImageSpec(_pair(image_size), spec.channels, spec.mean, spec.std)
    if num_channels is not None and int(num_channels) != spec.channels:
        raise ConfigError(f"num_channels={num_channels} but model {model.get('name')!r} takes {spec.channels}")
    records = ImageRecords(rows, spec, image_field, label_field, source)
    if len(records):
        records[0]  # an unreadable image format fails here, before training, not mid-epoch
    return records
