"""Training examples and their collator, by dataset kind (``dataset.kind`` in the YAML)."""
from __future__ import annotations

from typing import Any, Callable

import torch
from loralab.instantiate import build
from omegaconf import DictConfig

from loralab.data.digits import collate_images
from loralab.data.text import CausalLMCollator, encode_sft
from loralab.errors import ConfigError

Collator = Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]


def _check_fields(records: list[dict[str, Any]], fields: list[str], dataset: str) -> None:
    for i, record in enumerate(records):
        missing = [f for f in fields if f not in record or record[f] is None]
        if missing:
            raise ConfigError(
                f"dataset {dataset}: row {i} lacks field(s) {missing}; rows must have {fields} "
                f"(this row has {sorted(record)})"
            )


def _fields_of(template: str) -> list[str]:
    import string

    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def _sft(cfg: DictConfig, records: list[dict[str, Any]], tokenizer: Any) -> tuple[list[dict], Collator]:
    _check_fields(records, _fields_of(cfg.prompt_template) + _fields_of(cfg.response_template), cfg.name)
    examples = encode_sft(records, tokenizer, cfg.prompt_template, cfg.response_template, cfg.max_length)
    return examples, CausalLMCollator(tokenizer.pad_token_id)


def _images(cfg: DictConfig, records: list[dict[str, Any]], tokenizer: Any) -> tuple[list[dict], Collator]:
    _check_fields(records, ["pixel_values", "labels"], cfg.name)
    return records, collate_images


BUILDERS = {"sft": _sft, "image_classification": _images}


def training_examples(cfg: DictConfig, tokenizer: Any) -> tuple[list[dict[str, Any]], Collator]:
    if cfg.kind not in BUILDERS:
        raise ConfigError(f"dataset.kind={cfg.kind!r}; valid kinds: {sorted(BUILDERS)}")
    records = list(build(cfg.train))
    if not records:
        raise ConfigError(f"dataset {cfg.name}: the training split is empty")
    return BUILDERS[cfg.kind](cfg, records, tokenizer)
