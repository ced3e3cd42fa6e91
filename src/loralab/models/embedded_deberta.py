"""A tiny randomly initialised DeBERTa-v2 classifier with a character tokenizer, for offline GLUE smoke runs.

It has DeBERTa-v3-base's module names (``query_proj``, ``key_proj``, ``value_proj``, ``dense``, ``pooler``,
``classifier``), so the paper model's target modules apply to it unchanged. Nothing is learned: the weights
are a seeded random initialisation, saved once (safetensors + tokenizer) under a cache directory keyed by a
hash of the recipe and then loaded like a local copy of a hub model. The classifier head is re-sized to the
data set's ``num_labels`` when the runner loads it.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, PreTrainedTokenizerFast

from loralab.models.cache import build_once

SPECIAL_TOKENS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
# Printable ASCII minus the whitespace that is not a plain space: GLUE text is English sentences.
CHARACTERS = sorted(set(string.printable) - set("\t\n\r\x0b\x0c"))
RECIPE_VERSION = 1


@dataclass(frozen=True)
class TinyDebertaRecipe:
    hidden_size: int = 32
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 64
    max_position_embeddings: int = 512
    seed: int = 0


def char_pair_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character; ``[CLS] a [SEP]`` for one sentence, ``[CLS] a [SEP] b [SEP]`` for a pair."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                   unk_token="[UNK]", mask_token="[MASK]")


def tiny_deberta(recipe: TinyDebertaRecipe, num_labels: int = 2) -> DebertaV2ForSequenceClassification:
    torch.manual_seed(recipe.seed)
    config = DebertaV2Config(
        vocab_size=len(SPECIAL_TOKENS) + len(CHARACTERS),
        hidden_size=recipe.hidden_size,
        num_hidden_layers=recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads,
        intermediate_size=recipe.intermediate_size,
        max_position_embeddings=recipe.max_position_embeddings,
        # DeBERTa-v3's attention layout: relative positions (c2p/p2c), no absolute position input, no type ids.
        relative_attention=True,
        position_buckets=64,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        type_vocab_size=0,
        pooler_hidden_size=recipe.hidden_size,
        pad_token_id=0,
        num_labels=num_labels,
    )
    return DebertaV2ForSequenceClassification(config)


def pretrained_tiny_deberta(cache_root: str | Path | None = None, **recipe_overrides: object) -> Path:
    """Directory of the tiny DeBERTa (built once per recipe; "pretrained" only in the loading sense)."""
    recipe = TinyDebertaRecipe(**recipe_overrides)  # type: ignore[arg-type]

    def write(directory: Path) -> None:
        tiny_deberta(recipe).save_pretrained(directory, safe_serialization=True)
        char_pair_tokenizer().save_pretrained(directory)

    return build_once("tiny_deberta", recipe, RECIPE_VERSION, write, cache_root)
