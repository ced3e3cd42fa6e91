"""Turning prompt/response records into causal-LM training examples.

The loss is taken on the response only (the prompt's labels are -100), as in the instruction-tuning recipes
the papers follow (MetaMathQA, Code-Feedback, Commonsense-170K).
"""
from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


def render(template: str, record: dict[str, Any]) -> str:
    """Fill ``{field}`` placeholders of a template from a record."""
    return template.format(**record)


def render_prompt(record: dict[str, Any], prompt_template: str, prompt_template_with_input: str | None = None,
                  input_field: str = "input") -> str:
    """Alpaca-style data sets have two prompt layouts: one for rows with a non-empty ``input``, one without."""
    if prompt_template_with_input and record.get(input_field):
        return render(prompt_template_with_input, record)
    return render(prompt_template, record)


def encode_sft(
    records: list[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    prompt_template: str,
    response_template: str,
    max_length: int,
    prompt_template_with_input: str | None = None,
) -> list[dict[str, list[int]]]:
    examples = []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for record in records:
        prompt_ids = bos + tokenizer(render_prompt(record, prompt_template, prompt_template_with_input),
                                     add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(render(response_template, record), add_special_tokens=False)["input_ids"] + eos
        input_ids = (prompt_ids + response_ids)[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
        examples.append({"input_ids": input_ids, "labels": labels})
    return examples


class CausalLMCollator:
    """Right-pads a batch of encoded examples; the attention mask marks real tokens."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(ex["input_ids"]) for ex in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, ex in enumerate(batch):
            n = len(ex["input_ids"])
            input_ids[i, :n] = torch.tensor(ex["input_ids"])
            labels[i, :n] = torch.tensor(ex["labels"])
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
