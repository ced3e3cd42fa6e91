"""The published ``config.json`` of each paper model (the facts that fix its architecture: layers, widths,
heads, vocabulary, positions), typed here so the real architecture can be built without the hub.

``build_on_meta`` instantiates the model with transformers' own classes on the ``meta`` device (shapes, no
weights, no memory): tests check against it that every method's ``target_modules`` name real layers of the
installed transformers, that the planner's parameter counts (:mod:`loralab.planning.architectures`, derived
from the same facts) equal the real model's, and that LoRA's trainable count at the paper's rank is the
paper's. A transformers release that renames layers fails those tests instead of a paper table.

Keyed by the name of the model config in ``conf/model/``; ``hub_id`` must equal that config's. Kept out of
the model YAMLs so that the run hashes of paper-model runs do not change with these facts.
"""
from __future__ import annotations

from typing import Any

HUB_CONFIGS: dict[str, dict[str, Any]] = {
    "llama3_8b": {  # meta-llama/Meta-Llama-3-8B
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
        "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
        "bos_token_id": 128000, "eos_token_id": 128001,
    },
    "llama2_7b": {  # meta-llama/Llama-2-7b-hf
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
        "max_position_embeddings": 4096, "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2,
    },
    "gemma_2b": {  # google/gemma-2b: multi-query attention (1 KV head) of width 256, tied embeddings
        "model_type": "gemma", "hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 18,
        "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 256000,
        "max_position_embeddings": 8192, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
        "hidden_activation": "gelu_pytorch_tanh", "attention_bias": False,
        "tie_word_embeddings": True, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
    },
    "vit_base": {  # google/vit-base-patch16-224-in21k
        "model_type": "vit", "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
        "num_attention_heads": 12, "image_size": 224, "patch_size": 16, "num_channels": 3, "qkv_bias": True,
        "hidden_act": "gelu", "layer_norm_eps": 1e-12,
    },
    "vit_large": {  # google/vit-large-patch16-224-in21k
        "model_type": "vit", "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
        "num_attention_heads": 16, "image_size": 224, "patch_size": 16, "num_channels": 3, "qkv_bias": True,
        "hidden_act": "gelu", "layer_norm_eps": 1e-12,
    },
    "deberta_v3_base": {  # microsoft/deberta-v3-base: relative attention over 256 buckets, no absolute positions
        "model_type": "deberta-v2", "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
        "num_attention_heads": 12, "vocab_size": 128100, "max_position_embeddings": 512, "type_vocab_size": 0,
        "relative_attention": True, "position_buckets": 256, "max_relative_positions": -1,
        "norm_rel_ebd": "layer_norm", "share_att_key": True, "pos_att_type": ["p2c", "c2p"],
        "position_biased_input": False, "hidden_act": "gelu", "layer_norm_eps": 1e-7, "pooler_hidden_size": 768,
        "pooler_hidden_act": "gelu", "pooler_dropout": 0,
    },
}

HUB_IDS: dict[str, str] = {
    "llama3_8b": "meta-llama/Meta-Llama-3-8B", "llama2_7b": "meta-llama/Llama-2-7b-hf", "gemma_2b": "google/gemma-2b",
    "vit_base": "google/vit-base-patch16-224-in21k", "vit_large": "google/vit-large-patch16-224-in21k",
    "deberta_v3_base": "microsoft/deberta-v3-base",
}


def build_on_meta(name: str, kind: str, num_labels: int | None = None) -> Any:
    """The paper model ``name`` as the runner loads it (``model.kind``'s auto class), on the meta device."""
    import torch
    from transformers import AutoConfig

    from loralab.models.loading import AUTO_CLASSES

    facts = dict(HUB_CONFIGS[name])
    config = AutoConfig.for_model(facts.pop("model_type"), **facts)
    if num_labels is not None and kind != "causal_lm":
        config.num_labels = num_labels
    with torch.device("meta"):
        return AUTO_CLASSES[kind].from_config(config)
