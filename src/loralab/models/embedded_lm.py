"""The embedded causal LM: a tiny Llama the project pretrains itself on CPU.

It stands in for a hub checkpoint where none can be fetched. It is built once per distinct pretraining
recipe, saved with ``save_pretrained`` (safetensors + tokenizer) into a cache directory keyed by a hash of
the recipe, and afterwards loaded exactly like a local copy of a hub model (``from_pretrained(path)``).
Pretraining is seeded and single-process, so the same recipe gives the same weights.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from loralab.synthetic import arithmetic
from loralab.models.cache import build_once

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
RECIPE_VERSION = 2  # bump when the corpus or the loop changes, so caches are not reused across versions


@dataclass(frozen=True)
class TinyLMRecipe:
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 128
    steps: int = 400
    batch_size: int = 32
    learning_rate: float = 3e-3
    corpus_size: int = 20000
    seed: int = 0


def char_tokenizer(alphabet: list[str]) -> PreTrainedTokenizerFast:
    """One token per character; decoding concatenates characters back without separators."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + list(alphabet))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def pretrained_tiny_lm(cache_root: str | Path | None = None, **recipe_overrides: object) -> Path:
    """Directory of the pretrained embedded LM, pretraining it first if this recipe was never built."""
    recipe = TinyLMRecipe(**recipe_overrides)  # type: ignore[arg-type]

    def write(directory: Path) -> None:
        model, tokenizer = _pretrain(recipe)
        model.save_pretrained(directory, safe_serialization=True)
        tokenizer.save_pretrained(directory)

    return build_once("tiny_lm", recipe, RECIPE_VERSION, write, cache_root)


def _pretrain(recipe: TinyLMRecipe) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    tokenizer = char_tokenizer(arithmetic.ALPHABET)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        num_hidden_layers=recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_attention_heads,
        intermediate_size=recipe.intermediate_size,
        max_position_embeddings=recipe.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    texts = arithmetic.pretraining_corpus(recipe.corpus_size, seed=recipe.seed)
    encoded = [
        [tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        for t in texts
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.learning_rate, total_steps=recipe.steps, pct_start=0.05
    )
    model.train()
    for _ in tqdm(range(recipe.steps), desc="pretraining embedded LM", leave=False):
        batch = [encoded[rng.randrange(len(encoded))] for _ in range(recipe.batch_size)]
        input_ids, labels = _pad(batch, tokenizer.pad_token_id)
        loss = model(input_ids=input_ids, attention_mask=(labels != -100).long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return model, tokenizer


def _pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, ids in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(ids)] = torch.tensor(ids)
    return input_ids, labels
