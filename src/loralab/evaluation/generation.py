"""Batched deterministic generation (greedy, or beam search where a protocol uses it) with explicit left padding.

Left padding keeps every prompt's last token at the same position, so a batch generates exactly what each
prompt would generate alone; the attention mask hides the pads (tests check batch-size invariance).
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, add_bos: bool = True) -> list[int]:
    """The ids the model sees for a prompt: BOS (where the tokenizer has one), then the prompt's own tokens."""
    bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    return bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]


def left_padded_batch(
    prompts: list[str], tokenizer: PreTrainedTokenizerBase, add_bos: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = [encode_prompt(tokenizer, p, add_bos) for p in prompts]
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, ids in enumerate(encoded):
        input_ids[i, width - len(ids):] = torch.tensor(ids)
        attention_mask[i, width - len(ids):] = 1
    return input_ids, attention_mask


@torch.no_grad()
def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int = 16,
    progress: bool = True,
    num_beams: int = 1,
) -> list[str]:
    """Greedy continuations of ``prompts`` (``num_beams > 1``: beam search, still without sampling)."""
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams={num_beams!r}: it must be an integer >= 1")
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outputs: list[str] = []
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="generating", disable=not progress, leave=False):
        input_ids, attention_mask = left_padded_batch(prompts[start:start + batch_size], tokenizer)
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=num_beams,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = generated[:, input_ids.shape[1]:]
        outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return outputs
