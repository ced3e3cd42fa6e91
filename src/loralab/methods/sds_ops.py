"""SDS-LoRA's numerical kernels: the fused rank-2r forward/backward and the basis refresh over all layers.

Memory (why the fused factors are not per-layer buffers): the forward needs [A ; Q_Aᵀ] and [Q_B | B] as two
contiguous matrices for its two GEMMs, but only for the duration of the layer's call. They are written into one
scratch buffer per (device, dtype) shared by all layers adapted together (the layers run one after another
on one stream), and rebuilt the same way in backward, so the only per-layer state beyond LoRA's is the fp32
bases Q_B, Q_A: r·(m+n) floats. Backward keeps x (as LoRA does) and the B-branch input h_B = x·Q_A (tokens×r,
LoRA keeps its tokens×r intermediate too); the A-branch half of h is not needed for any gradient.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

# Largest stacked refresh batch, in floats: bounds the transient memory of one batched QR (a few 10 MB).
REFRESH_CHUNK_FLOATS = 1 << 24


# ------------------------------------------------------------------------------------------ linear algebra
def orthonormal_basis(m: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
    """Orthonormal basis (fp32) of col(m) by reduced QR; columns sign-aligned with ``previous``.

    Householder QR may flip a column's sign between refreshes, which would flip the sign of that column's
    contribution to Q_B A discontinuously; aligning with the previous basis avoids it.
    """
    q, _ = torch.linalg.qr(m.detach().float(), mode="reduced")
    if previous is not None:  # column-wise <q, previous>, one kernel and no m×r temporary; a zero keeps the sign
        q.mul_(torch.where(torch.linalg.vecdot(q, previous.float(), dim=0) < 0, -1.0, 1.0))
    return q


def low_rank_svd(b: torch.Tensor, a: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD U Σ Vᵀ of scale·B·A (rank ≤ r) in fp32 via QR of both factors and an r×r core SVD: O((m+n)r²)."""
    qb, rb = torch.linalg.qr(b.detach().float(), mode="reduced")
    qa, ra = torch.linalg.qr(a.detach().float().T, mode="reduced")
    u, sigma, vh = torch.linalg.svd(scale * rb @ ra.T)
    return qb @ u, sigma, qa @ vh.T


@torch.no_grad()
def refresh_bases(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], batched: bool | None = None) -> None:
    """``basis.copy_(orthonormal_basis(source, previous=basis))`` for every (source, basis) pair.

    Sources are tall rows×r matrices (B, or Aᵀ as a view); bases are their fp32 rows×r buffers. Nothing reads a
    tensor value on the host, so the refresh queues without a device sync. ``batched`` (default: on every device
    but the CPU) groups the pairs by (device, rows, r) and orthonormalises each group with one batched Householder
    QR (chunked to bound its transient memory), one sign-alignment kernel and one foreach copy: the same QR and
    sign rule as the per-matrix path, in a handful of launches per group instead of ~10 per matrix. On the CPU
    the per-matrix path is the default because it measured faster there: LAPACK factors one matrix at a time
    either way, and torch's CPU allocator does not cache, so the stacked copies cost fresh pages every refresh.
    """
    groups: dict[tuple[torch.device, int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for src, dst in pairs:
        groups.setdefault((dst.device, dst.shape[0], dst.shape[1]), []).append((src, dst))
    for (device, rows, r), members in groups.items():
        if not (batched if batched is not None else device.type != "cpu"):
            for src, dst in members:
                dst.copy_(orthonormal_basis(src, dst))
            continue
        step = max(1, REFRESH_CHUNK_FLOATS // (rows * r))
        for start in range(0, len(members), step):
            chunk = members[start:start + step]
            srcs, dsts = [s.detach() for s, _ in chunk], [d for _, d in chunk]
            # LAPACK/cuSOLVER factor column-major matrices and return a column-major Q: work on the transposes
            # (G×r×rows, contiguous), so the stack is the layout the QR wants and the sign dots run along
            # contiguous rows
            stacked_t = torch.stack([s.mT for s in srcs]).to(torch.float32)
            q_t = torch.linalg.qr(stacked_t.mT, mode="reduced")[0].mT
            previous_t = torch.stack([d.mT for d in dsts])
            q_t.mul_(torch.where(torch.linalg.vecdot(q_t, previous_t, dim=-1) < 0, -1.0, 1.0).unsqueeze(-1))
            torch._foreach_copy_(dsts, list(q_t.mT.unbind(0)))


# --------------------------------------------------------------------------------------- fused factors
class FusedScratch:
    """Scratch for the fused factors, one flat buffer per (device, dtype), shared by the layers attached together.

    ``fill`` writes one layer's [A ; Q_Aᵀ] (2r×n) and [Q_B | B] (m×2r) into it and returns the two views. Sized
    once (``reserve``) for the largest layer, so the buffers are allocated once per dtype and never per step.
    Sharing is safe because a layer's factors are used only inside its own forward or backward call, and
    those run one at a time in stream order; backward rebuilds them instead of keeping them alive.
    """

    def __init__(self) -> None:
        self.numel = 0
        self.buffers: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self.last_dtype: torch.dtype | None = None

    def reserve(self, out_features: int, in_features: int, rank: int) -> None:
        self.numel = max(self.numel, 2 * rank * (out_features + in_features))

    def tensors(self) -> list[torch.Tensor]:
        return list(self.buffers.values())

    @torch.no_grad()
    def fill(self, a: torch.Tensor, b: torch.Tensor, q_a: torch.Tensor, q_b: torch.Tensor,
             dtype: torch.dtype | None = None, down: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(down, up) of one layer in ``dtype`` (default: the last one used); ``down=False`` leaves it unwritten."""
        dtype = dtype or self.last_dtype or a.dtype
        r, n, m = a.shape[0], a.shape[1], b.shape[0]
        need = 2 * r * (m + n)
        key = (a.device, dtype)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < need:
            self.numel = max(self.numel, need)
            buf = self.buffers[key] = torch.empty(self.numel, device=a.device, dtype=dtype)
        self.last_dtype = dtype
        dn, up = buf[:2 * r * n].view(2 * r, n), buf[2 * r * n:need].view(m, 2 * r)
        if down:
            dn[:r].copy_(a)
            dn[r:].copy_(q_a.T)
        up[:, :r].copy_(q_b)
        up[:, r:].copy_(b)
        return dn, up


class FusedLowRank(torch.autograd.Function):
    """out = result + s·up·(down·x) with up = [Q_B | B], down = [A ; Q_Aᵀ]; backward forms only ∇x, ∇A and ∇B.

    Hot-path choices (each saves a pass over a tokens×out_features tensor, which on a GPU costs about as much as
    the rank-2r products themselves): the residual add and the scale s ride in the second GEMM
    (``addmm(result, h, upᵀ, alpha=s)``) instead of a separate multiply and add, and backward applies s to the
    rank-2r intermediates rather than to the incoming gradient. When x needs no gradient (inputs computed from
    frozen embeddings only) just the Q_B half of ∂h is formed, the half that ∇A needs.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, result: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                q_a: torch.Tensor, q_b: torch.Tensor, scratch: FusedScratch, scale: float,
                dtype: torch.dtype) -> torch.Tensor:
        r = a.shape[0]
        # autocast off + explicit dtype, so backward computes in exactly the dtype forward used
        with torch.autocast(x.device.type, enabled=False):
            xd = x.to(dtype)
            dn, u = scratch.fill(a, b, q_a, q_b, dtype)
            h = xd @ dn.T
            if result.dtype == dtype and result.shape[:-1] == h.shape[:-1]:
                out = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), u.T,
                                  alpha=scale).view(result.shape)
            else:  # e.g. bf16 base output, fp32 adapter without autocast: PEFT's result + delta.to(result.dtype)
                out = result + ((h @ u.T) * scale).to(result.dtype)
            # only h_B = x·Q_A is needed (for ∇B): keep r columns, not 2r, and let h go
            h_b = h.reshape(-1, 2 * r)[:, r:].contiguous() if ctx.needs_input_grad[3] else None
        # A, B and the bases are saved (no copies: parameters and buffers) for autograd's in-place check: a refresh
        # between this forward and its backward would be an error, not a silently wrong gradient
        ctx.save_for_backward(xd, h_b, a, b, q_a, q_b)
        ctx.scratch, ctx.scale, ctx.dtypes = scratch, scale, (dtype, x.dtype, result.dtype, a.dtype, b.dtype)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xd, h_b, a, b, q_a, q_b = ctx.saved_tensors
        dtype, x_dtype, result_dtype, a_dtype, b_dtype = ctx.dtypes
        r, need_x = a.shape[0], ctx.needs_input_grad[0]
        grad_x = grad_a = grad_b = None
        with torch.autocast(grad_out.device.type, enabled=False):
            dn, u = ctx.scratch.fill(a, b, q_a, q_b, dtype, down=need_x)
            g = grad_out.to(dtype).reshape(-1, grad_out.shape[-1])
            # ∂h = s·g·up (tokens×2r); only its Q_B half (for ∇A) when x needs no gradient
            grad_h = (g @ (u if need_x else u[:, :r])).mul_(ctx.scale)
            if need_x:
                grad_x = (grad_h @ dn).view(*xd.shape[:-1], dn.shape[1]).to(x_dtype)
            if ctx.needs_input_grad[2]:
                grad_a = (grad_h[:, :r].T @ xd.reshape(-1, xd.shape[-1])).to(a_dtype)
            if ctx.needs_input_grad[3]:
                grad_b = (g.T @ h_b).mul_(ctx.scale).to(b_dtype)
        grad_result = grad_out if ctx.needs_input_grad[1] else None
        if grad_result is not None and grad_result.dtype != result_dtype:
            grad_result = grad_result.to(result_dtype)
        return grad_x, grad_result, grad_a, grad_b, None, None, None, None, None


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on ``x`` computes in here: autocast's dtype when autocast is on, else x's."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
