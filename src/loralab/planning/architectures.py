"""Shapes of the paper tables' hub models (the numbers of their ``config.json``; no weights needed) and the
published sizes of their data sets: the inputs of the planner (:mod:`loralab.planning.plan`) and of the rank
article's parameter table."""
from __future__ import annotations

from dataclasses import dataclass

from loralab.models.hub_configs import HUB_CONFIGS, HUB_IDS

#: The linear modules of one block, by the names the installed transformers gives them, per block type:
#: (d_in, d_out) as functions of (hidden, intermediate, attention width, KV width).
BLOCK_LINEARS = {
    "llama": {"q_proj": ["h", "a"], "k_proj": ["h", "kv"], "v_proj": ["h", "kv"], "o_proj": ["a", "h"],
              "gate_proj": ["h", "i"], "up_proj": ["h", "i"], "down_proj": ["i", "h"]},
    "vit": {"q_proj": ["h", "h"], "k_proj": ["h", "h"], "v_proj": ["h", "h"], "o_proj": ["h", "h"],
            "fc1": ["h", "i"], "fc2": ["i", "h"]},
    # "dense" is the attention output, the intermediate and the output projection of a DeBERTa block
    "deberta": {"query_proj": ["h", "h"], "key_proj": ["h", "h"], "value_proj": ["h", "h"],
                "dense": ["h", "h", "h", "i", "i", "h"]},
}


@dataclass(frozen=True)
class Architecture:
    """The shape of a hub model, as in its ``config.json`` (no weights needed)."""

    hub_id: str
    block: str                     # llama (LLaMA/Gemma decoder) | vit | deberta: names of its linear modules
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int = 0                 # 0: no token embeddings (ViT)
    tied_embeddings: bool = False
    embedding_params: int = 0      # parameters outside the blocks other than token embeddings / LM head
    tokens_per_example: int | None = None   # fixed sequence length (ViT: 197 patches + [CLS])
    eager_attention_terms: int = 0          # attention-score tensors saved per head per key (DeBERTa: 3)

    @property
    def family(self) -> str:
        """decoder (causal LM, no biases, RMSNorm) or encoder (biases, LayerNorm)."""
        return "decoder" if self.block == "llama" else "encoder"

    @property
    def attention_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_linears(self) -> dict[str, list[tuple[int, int]]]:
        """``(d_in, d_out)`` of the linear modules of one block, by PEFT module name (a name may match several)."""
        size = {"h": self.hidden, "i": self.intermediate, "a": self.attention_dim, "kv": self.kv_dim}
        return {name: [(size[dims[k]], size[dims[k + 1]]) for k in range(0, len(dims), 2)]
                for name, dims in BLOCK_LINEARS[self.block].items()}

    def layer_params(self) -> int:
        """Parameters of one block (weights, biases, norms)."""
        linears = [shape for shapes in self.layer_linears().values() for shape in shapes]
        weights = sum(a * b for a, b in linears)
        if self.family == "decoder":
            return weights + 2 * self.hidden                        # no biases; two RMSNorm weights
        return weights + sum(b for _, b in linears) + 4 * self.hidden   # biases; two LayerNorms (weight + bias)

    def total_params(self, num_labels: int = 0) -> int:
        embeddings = self.vocab * self.hidden
        head = 0 if self.family == "encoder" or self.tied_embeddings else self.vocab * self.hidden
        final_norm = self.hidden if self.family == "decoder" else 0
        classifier = num_labels * self.hidden + num_labels if num_labels else 0
        return embeddings + head + self.layers * self.layer_params() + final_norm + self.embedding_params + classifier

    def matmul_params(self, num_labels: int = 0) -> int:
        """Parameters used in matrix products per token: the blocks, the LM head / classifier (not look-ups)."""
        head = self.vocab * self.hidden if self.family == "decoder" else num_labels * self.hidden
        return self.layers * self.layer_params() + head


def from_hub_config(name: str) -> Architecture:
    """The planner's view of a paper model, from its ``config.json`` facts (:mod:`loralab.models.hub_configs`)."""
    c = HUB_CONFIGS[name]
    h, heads = c["hidden_size"], c["num_attention_heads"]
    shape = dict(hidden=h, intermediate=c["intermediate_size"], layers=c["num_hidden_layers"], heads=heads)
    if c["model_type"] in ("llama", "gemma"):
        return Architecture(HUB_IDS[name], "llama", **shape, kv_heads=c.get("num_key_value_heads", heads),
                            head_dim=c.get("head_dim", h // heads), vocab=c["vocab_size"],
                            tied_embeddings=c.get("tie_word_embeddings", False))
    if c["model_type"] == "vit":
        patches = (c["image_size"] // c["patch_size"]) ** 2
        # patch embedding (channels·patch² → hidden conv, with bias), [CLS], learned positions, final LayerNorm
        extra = c["num_channels"] * c["patch_size"] ** 2 * h + h + h + (patches + 1) * h + 2 * h
        return Architecture(HUB_IDS[name], "vit", **shape, kv_heads=heads, head_dim=h // heads,
                            embedding_params=extra, tokens_per_example=patches + 1)
    if c["model_type"] == "deberta-v2":
        # embedding LayerNorm, relative-position table (2·buckets × hidden) + its LayerNorm, pooler
        extra = 2 * h + 2 * c["position_buckets"] * h + 2 * h + c["pooler_hidden_size"] * h + c["pooler_hidden_size"]
        return Architecture(HUB_IDS[name], "deberta", **shape, kv_heads=heads, head_dim=h // heads,
                            vocab=c["vocab_size"], embedding_params=extra, eager_attention_terms=3)
    raise ValueError(f"no planner shape for model_type {c['model_type']!r} ({name})")


#: Hub models of the paper tables, from their config.json facts. Total parameters (no classifier):
#: llama3_8b 8,030,261,248 · llama2_7b 6,738,415,616 · gemma_2b 2,506,172,416 · vit_base 85,798,656 ·
#: vit_large 303,301,632 · deberta_v3_base 184,422,144 (asserted against the real architectures, built on the
#: meta device, in tests/test_architectures.py).
ARCHITECTURES: dict[str, Architecture] = {name: from_hub_config(name) for name in HUB_CONFIGS}

#: Training examples per epoch when the data config sets no ``limit`` (the data sets' published sizes).
TRAIN_EXAMPLES: dict[str, int] = {
    "metamathqa": 395_000, "code_feedback": 100_000, "commonsense170k": 170_420,
    "glue_cola": 8_551, "glue_sst2": 67_349, "glue_mrpc": 3_668, "glue_qqp": 363_846, "glue_stsb": 5_749,
    "glue_mnli": 392_702, "glue_qnli": 104_743, "glue_rte": 2_490,
    "cars": 8_144, "cub200": 5_994, "dtd": 1_880, "food101": 75_750, "sun397": 19_850,
}

#: Mean tokens per training example after per-batch padding — INFERRED estimates (tokenizer- and
#: template-dependent; MetaMathQA's value is absorbed by the calibration, the others are not).
TOKENS_PER_EXAMPLE: dict[str, int] = {
    "metamathqa": 300, "code_feedback": 330, "commonsense170k": 120,
    "glue_cola": 16, "glue_sst2": 32, "glue_mrpc": 56, "glue_qqp": 40, "glue_stsb": 40, "glue_mnli": 48,
    "glue_qnli": 56, "glue_rte": 80,
}

#: Evaluation examples per task (test / validation splits as used by the suites).
EVAL_EXAMPLES: dict[str, int] = {
    "gsm8k": 1_319, "math": 5_000, "humaneval": 164, "mbpp": 500,
    "boolq": 3_270, "piqa": 1_838, "siqa": 1_954, "hellaswag": 10_042, "winogrande": 1_267, "arc_e": 2_376,
    "arc_c": 1_172, "obqa": 500,
    "cola": 1_043, "sst2": 872, "mrpc": 408, "qqp": 40_430, "stsb": 1_500, "mnli_m": 9_815, "mnli_mm": 9_832,
    "qnli": 5_463, "rte": 277,
    "cars": 8_041, "cub200": 5_794, "dtd": 1_880, "food101": 25_250, "sun397": 19_850,
}

#: Decoding steps a batch of 16 greedy prompts takes when every row stops at its EOS or stop strings (the native
#: and harness engines do): the longest answer of the batch, in Llama tokens — INFERRED for scheduling, not
#: measured. Typical answers: GSM8K chain of thought ~120–150 tokens, MATH ~250–300 with a long tail, HumanEval
#: and MBPP responses (code and a short explanation) ~200 and ~150; the longest of 16 taken as ~2–3× that.
#: The planner uses min(this, max_new_tokens); tasks not listed, and beam search, cost max_new_tokens per batch.
ANSWER_TOKENS_PER_BATCH: dict[str, int] = {"gsm8k": 320, "math": 800, "humaneval": 450, "mbpp": 350}

#: Classes of the classification data sets (used when the data config has no ``num_labels``).
NUM_LABELS: dict[str, int] = {
    "glue_cola": 2, "glue_sst2": 2, "glue_mrpc": 2, "glue_qqp": 2, "glue_stsb": 1, "glue_mnli": 3, "glue_qnli": 2,
    "glue_rte": 2, "cars": 196, "cub200": 200, "dtd": 47, "food101": 101, "sun397": 397,
}

DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}
