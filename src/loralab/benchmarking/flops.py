"""FLOP model of one training step of a Llama-shaped decoder, per method: the lower bound the timings are read against.

The per-layer costs are the methods' own (``Method.token_flops``, ``step_flops``, ``periodic_flops``, in
``loralab.methods``); this module sums them over a model's layers and adds the base products and attention.

Counted: every matrix product (2 FLOPs per multiply-add). Not counted: element-wise work (norms, activations,
softmax, the loss, residual adds, LoRA's scaling, optimiser updates), embedding look-ups and their scatter-add
gradient. Those are memory-bound and do not scale with the adapter rank, so the model is a *lower bound* on
the step's work and on every method's overhead over another.

Per linear layer W ∈ R^{m×n} (m = out_features, n = in_features), per token:

===================  =========================  ==========================================================
part                 forward                     backward
===================  =========================  ==========================================================
frozen base W        2mn                         2mn input grad (only if the input needs a gradient);
                                                 no weight grad
trainable W (full)   2mn                         2mn input grad (if needed) + 2mn weight grad
LoRA  s·B·A (rank r) 2rn (A x) + 2mr (B h)       ∇B = gᵀh 2mr; ∂h = g B 2mr; ∇A = ∂hᵀx 2rn;
                     = 2r(m+n)                   ∂x = ∂h A 2rn (if needed)  → 2r(m+n) + 2r(m+n)
SDS  s·(Q_B A+B Q_Aᵀ) 2(2r)n + 2m(2r)             ∂h = g·[Q_B | B] 2m(2r) (only the Q_B half, 2mr, when
fused rank-2r path   = 2·(2r)(m+n)               the input needs no gradient); ∂x = ∂h·[A ; Q_Aᵀ] 2(2r)n
                                                 (if needed); weight grads only for A and B:
                                                 ∇A = ∂h_Aᵀx 2rn, ∇B = gᵀh_B 2mr → no ∇Q_A, ∇Q_B
===================  =========================  ==========================================================

So per adapted layer with input grad: LoRA 6r(m+n), SDS 10r(m+n) (frozen base 4mn in both): the SDS adapter
does 5/3 of LoRA's adapter work and the step-level overhead is 4r(m+n) / (4mn + 6r(m+n) + everything else).
The first decoder layer's q/k/v inputs come from frozen embeddings, so PEFT-style methods need no input
gradient there (autograd skips it); full fine-tuning trains the embeddings, so it needs every input gradient.

Per-step (not per-token) matrix work of the other methods:
DoRA: B·A each forward for the column norm, 2mnr (detached: no backward). PEFT forms it as lora_B(lora_A(I_n))
(FSDP-safe), which issues 2nr(n+m); the benchmark's "issued FLOPs" column shows that difference.
LoRA-Pro: s(B ĝ_A + ĝ_B A) and the map back Bᵀ D, D Aᵀ, 8mnr, plus r×r solves (counted as 4r²(m+n)).
ScaledAdamW: Gram matrices BᵀB, AAᵀ and the two preconditioned gradients, 4r²(m+n).
AltLoRA: one factor moves per step (the other is frozen, so its gradient is never formed): the per-token
backward is averaged over an A-phase and a B-phase; its preconditioner 2r²(m+n) per step.
Attention (identical for every method): QKᵀ and A·V over the full S×S score matrix, 4·S·d forward and twice
that backward per token (d = heads·head_dim); causal kernels that skip the masked half do about half of this.
Initialisations (PiSSA's SVD, LoRA-GA's gradient, SDS's warm-up SVD) happen once and are not in the step.
The SDS basis refresh (two QRs of m×r and n×r, counted as 2r²(m+n) by ``refresh_flops``;
docs/methods/flops.md#sds-refresh) runs after a fraction of the steps; it is reported on its own by the benchmark,
not in the per-step model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from loralab.methods.base import LinearFlops, Method


def base_linear_flops(m: int, n: int, trainable: bool, input_grad: bool = True) -> LinearFlops:
    """Per-token FLOPs of y = W x (frozen or trainable W)."""
    bwd = (2 * m * n if input_grad else 0) + (2 * m * n if trainable else 0)
    return LinearFlops(2 * m * n, bwd)


def supports(method: Method) -> bool:
    """Whether the method states a per-token FLOP model (``Method.token_flops``)."""
    try:
        method.token_flops(2, 2, 1)
    except NotImplementedError:
        return False
    return True


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    layers: int
    vocab: int
    seq: int
    batch: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def tokens(self) -> int:
        return self.seq * self.batch

    def projections(self) -> list[tuple[str, int, int]]:
        """(name, out_features m, in_features n) of one decoder layer's linear layers."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        q = self.heads * self.head_dim
        i = self.intermediate
        return [("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, q),
                ("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)]


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one training step, split by where they go."""

    base: int          # products with the pretrained weights (incl. lm_head), forward + backward
    adapter: int       # adapter paths, forward + backward
    attention: int     # QKᵀ and A·V, forward + backward
    per_step: int      # token-independent work (DoRA norm, optimiser products)

    @property
    def total(self) -> int:
        return self.base + self.adapter + self.attention + self.per_step

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def adapted_layers(shape: LlamaShape, targets: tuple[str, ...] | list[str]) -> list[tuple[int, int, bool]]:
    """(m, n, input needs a gradient) of every adapted layer of a PEFT-style method, as ``step_flops`` counts them."""
    return [(m, n, not (layer == 0 and name in ("q_proj", "k_proj", "v_proj")))
            for layer in range(shape.layers) for name, m, n in shape.projections() if name in targets]


def step_flops(shape: LlamaShape, method: Method, targets: tuple[str, ...] | list[str] | None = None) -> StepFlops:
    """FLOP-model lower bound of one training step (forward + backward + optimiser products) of ``method`` at its
    rank, from its cost hooks (``token_flops``, ``step_flops``)."""
    rank = method.rank
    targets = set(targets) if targets is not None else {name for name, _, _ in shape.projections()}
    full = method.trains_base_weights
    t = shape.tokens
    base = adapter = per_step = 0
    for layer in range(shape.layers):
        for name, m, n in shape.projections():
            # inputs of layer 0's q/k/v are functions of the (frozen, unless full FT) embeddings only
            input_grad = full or not (layer == 0 and name in ("q_proj", "k_proj", "v_proj"))
            base += t * base_linear_flops(m, n, trainable=full, input_grad=input_grad).total
            if not full and name in targets:
                adapter += t * method.token_flops(n, m, rank, input_grad).total
                per_step += method.step_flops(n, m, rank)
    base += t * base_linear_flops(shape.vocab, shape.hidden, trainable=full, input_grad=True).total  # lm_head
    d = shape.heads * shape.head_dim
    attention = shape.layers * t * 3 * (4 * shape.seq * d)  # forward 4·S·d per token, backward twice that
    return StepFlops(base=base, adapter=adapter, attention=attention, per_step=per_step)


def periodic_flops(shape: LlamaShape, method: Method, targets: tuple[str, ...] | list[str] | None = None) -> int:
    """FLOPs of one round of the method's periodic work over the model (``Method.periodic_flops``; SDS-LoRA: the
    basis refresh)."""
    targets = set(targets) if targets is not None else {name for name, _, _ in shape.projections()}
    return shape.layers * sum(method.periodic_flops(n, m, method.rank)
                              for name, m, n in shape.projections() if name in targets)
