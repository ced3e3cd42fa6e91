"""Shapes of the paper tables' hub models (the numbers of their ``config.json``; no weights needed) and the
published sizes of their data sets: the inputs of the planner (:mod:`loralab.tables.plan`) and of the rank
article's parameter table."""
from __future__ import annotations

from dataclasses import dataclass

@dataclass(frozen=True)
class Architecture:
    """The shape of a hub model, as in its ``config.json`` (no weights needed)."""

    hub_id: str
    family: str                    # decoder (LLaMA/Gemma) | encoder (ViT, DeBERTa)
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
    def attention_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_linears(self) -> dict[str, list[tuple[int, int]]]:
        """``(d_in, d_out)`` of the linear modules of one block, by PEFT module name (a name may match several)."""
        h, i = self.hidden, self.intermediate
        if self.family == "decoder":
            return {"q_proj": [(h, self.attention_dim)], "k_proj": [(h, self.kv_dim)], "v_proj": [(h, self.kv_dim)],
                    "o_proj": [(self.attention_dim, h)], "gate_proj": [(h, i)], "up_proj": [(h, i)],
                    "down_proj": [(i, h)]}
        attention = {name: [(h, h)] for name in ("query", "key", "value", "query_proj", "key_proj", "value_proj")}
        # "dense" matches the attention output, the intermediate and the output projection of a BERT/ViT block
        return {**attention, "dense": [(h, h), (h, i), (i, h)]}

    def layer_params(self) -> int:
        """Parameters of one block (weights, biases, norms)."""
        h = self.hidden
        linears = [shape for name, shapes in self.layer_linears().items() for shape in shapes
                   if name in (("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
                               if self.family == "decoder" else ("query", "key", "value", "dense"))]
        weights = sum(a * b for a, b in linears)
        if self.family == "decoder":
            return weights + 2 * h                                  # no biases; two RMSNorm weights
        return weights + sum(b for _, b in linears) + 4 * h         # biases; two LayerNorms (weight + bias)

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


def _vit(hub_id: str, hidden: int, intermediate: int, layers: int, heads: int) -> Architecture:
    patches = (224 // 16) ** 2
    # patch embedding (3·16·16 → hidden conv, with bias), [CLS], 197 learned positions, final LayerNorm
    extra = 3 * 16 * 16 * hidden + hidden + hidden + (patches + 1) * hidden + 2 * hidden
    return Architecture(hub_id, "encoder", hidden, intermediate, layers, heads, heads, hidden // heads,
                        embedding_params=extra, tokens_per_example=patches + 1)


#: Hub models of the paper tables, dimensions from their config.json. Total parameters (no classifier):
#: llama3_8b 8,030,261,248 · llama2_7b 6,738,415,616 · gemma_2b 2,506,172,416 · vit_base 85,798,656 ·
#: vit_large 303,301,632 · deberta_v3_base 184,422,144 (asserted in tests/test_experiments.py).
ARCHITECTURES: dict[str, Architecture] = {
    "llama3_8b": Architecture("meta-llama/Meta-Llama-3-8B", "decoder", 4096, 14336, 32, 32, 8, 128, vocab=128256),
    "llama2_7b": Architecture("meta-llama/Llama-2-7b-hf", "decoder", 4096, 11008, 32, 32, 32, 128, vocab=32000),
    "gemma_2b": Architecture("google/gemma-2b", "decoder", 2048, 16384, 18, 8, 1, 256, vocab=256000,
                             tied_embeddings=True),
    "vit_base": _vit("google/vit-base-patch16-224-in21k", 768, 3072, 12, 12),
    "vit_large": _vit("google/vit-large-patch16-224-in21k", 1024, 4096, 24, 16),
    # DeBERTa-v3: embedding LayerNorm, relative-position table (2·256 × 768) + encoder LayerNorm, pooler
    "deberta_v3_base": Architecture("microsoft/deberta-v3-base", "encoder", 768, 3072, 12, 12, 12, 64,
                                    vocab=128100, embedding_params=2 * 768 + 512 * 768 + 2 * 768 + 768 * 768 + 768,
                                    eager_attention_terms=3),
}

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
GENERATIVE_TASK_TYPES: tuple[str, ...] = ("generate", "code")   # decoded token by token; the rest: forward passes
