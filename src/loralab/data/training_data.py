"""Training examples and their collator, by dataset kind (``dataset.kind`` in the YAML).

* ``sft`` — prompt/response records for a causal LM (loss on the response only);
* ``image_classification`` — ``{"pixel_values", "labels"}`` records (lists, or lazily decoded sequences);
* ``sequence_classification`` — ``{"text_a", "text_b", "label"}`` records (GLUE), tokenised as one sentence
  or a sentence pair; ``num_labels: 1`` makes the task a regression (STS-B) with float labels.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch
from loralab.instantiate import build
from omegaconf import DictConfig

from loralab.data.digits import collate_images
from loralab.data.text import IGNORE_INDEX, CausalLMCollator, encode_sft
from loralab.data.vision import ImageRecords
from loralab.errors import ConfigError

log = logging.getLogger(__name__)
Collator = Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]


def _check_fields(records: Sequence[dict[str, Any]], fields: list[str], dataset: str) -> None:
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


def _sft(cfg: DictConfig, records: Sequence[dict[str, Any]], tokenizer: Any) -> tuple[list[dict], Collator]:
    _check_fields(records, _fields_of(cfg.prompt_template) + _fields_of(cfg.response_template), cfg.name)
    encoded = encode_sft(list(records), tokenizer, cfg.prompt_template, cfg.response_template, cfg.max_length,
                         prompt_template_with_input=cfg.get("prompt_template_with_input"))
    # A prompt longer than max_length leaves no response token to learn from; such a row would only add a
    # NaN loss (every label ignored), so it is dropped and counted.
    examples = [ex for ex in encoded if any(label != IGNORE_INDEX for label in ex["labels"])]
    if not examples:
        raise ConfigError(f"dataset {cfg.name}: dataset.max_length={cfg.max_length} cuts every response off; "
                          f"raise dataset.max_length")
    if len(examples) < len(encoded):
        log.warning("dataset %s: %d of %d rows dropped: their prompt fills dataset.max_length=%d", cfg.name,
                    len(encoded) - len(examples), len(encoded), cfg.max_length)
    return examples, CausalLMCollator(tokenizer.pad_token_id)


def _images(cfg: DictConfig, records: Sequence[dict[str, Any]], tokenizer: Any) -> tuple[Sequence[dict], Collator]:
    # A lazily decoded sequence was checked by its loader (fields, label range, first image); decoding every
    # image here only to check it would cost a pass over the whole data set.
    if not isinstance(records, ImageRecords):
        _check_fields(records, ["pixel_values", "labels"], cfg.name)
    return records, collate_images


class SequenceClassificationCollator:
    """Right-pads token ids (and token type ids where the tokenizer makes them); labels long, or float for
    regression."""

    def __init__(self, pad_token_id: int, regression: bool) -> None:
        self.pad_token_id, self.regression = pad_token_id, regression

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(ex["input_ids"]) for ex in batch)
        out = {"input_ids": torch.full((len(batch), width), self.pad_token_id, dtype=torch.long),
               "attention_mask": torch.zeros((len(batch), width), dtype=torch.long)}
        if "token_type_ids" in batch[0]:
            out["token_type_ids"] = torch.zeros((len(batch), width), dtype=torch.long)
        for i, ex in enumerate(batch):
            n = len(ex["input_ids"])
            out["input_ids"][i, :n] = torch.tensor(ex["input_ids"])
            out["attention_mask"][i, :n] = 1
            if "token_type_ids" in out:
                out["token_type_ids"][i, :n] = torch.tensor(ex["token_type_ids"])
        out["labels"] = torch.tensor([ex["labels"] for ex in batch],
                                     dtype=torch.float32 if self.regression else torch.long)
        return out


def encode_sentences(tokenizer: Any, records: Sequence[dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """Token ids of each record's sentence (pair), truncated to ``max_length``; shared with the evaluator."""
    firsts = [r["text_a"] for r in records]
    pair = any(r.get("text_b") is not None for r in records)
    seconds = [r.get("text_b") or "" for r in records] if pair else None
    encoded = tokenizer(firsts, seconds, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids") if k in encoded]
    return [{k: encoded[k][i] for k in keys} for i in range(len(records))]


def _sequence_classification(cfg: DictConfig, records: Sequence[dict[str, Any]],
                             tokenizer: Any) -> tuple[list[dict], Collator]:
    _check_fields(records, ["text_a", "label"], cfg.name)
    num_labels = int(cfg.num_labels)
    for i, r in enumerate(records):
        if num_labels > 1 and not (isinstance(r["label"], int) and 0 <= r["label"] < num_labels):
            raise ConfigError(f"dataset {cfg.name}: row {i} has label={r['label']!r}; valid labels are "
                              f"0..{num_labels - 1} (dataset.num_labels={num_labels})")
    encoded = encode_sentences(tokenizer, records, int(cfg.max_length))
    examples = [{**enc, "labels": float(r["label"]) if num_labels == 1 else int(r["label"])}
                for enc, r in zip(encoded, records)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return examples, SequenceClassificationCollator(pad, regression=num_labels == 1)


BUILDERS = {"sft": _sft, "image_classification": _images, "sequence_classification": _sequence_classification}


def training_examples(cfg: DictConfig, tokenizer: Any) -> tuple[Sequence[dict[str, Any]], Collator]:
    if cfg.kind not in BUILDERS:
        raise ConfigError(f"dataset.kind={cfg.kind!r}; valid kinds: {sorted(BUILDERS)}")
    records = build(cfg.train)
    if not isinstance(records, ImageRecords):
        records = list(records)
    if not len(records):
        raise ConfigError(f"dataset {cfg.name}: the training split is empty")
    return BUILDERS[cfg.kind](cfg, records, tokenizer)
