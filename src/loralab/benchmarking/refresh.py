"""SDS-LoRA's basis refresh kernel by kernel, on the benchmark model's own factors: the measurement behind the
refresh kernel training uses (``sds_ops.refresh_bases``: Householder QR, batched per factor shape off the CPU).

* ``per_layer``: ``orthonormal_basis`` and a copy per matrix, the implementation before batching;
* ``batched_householder``: ``refresh_bases(batched=True)``, what training runs off the CPU (on the CPU it
  runs ``per_layer``, measured faster there: see ``refresh_bases``);
* ``batched_cholesky_qr2`` (candidate, not used): CholeskyQR2 in fp32 (Gram matrix, Cholesky, triangular
  inverse, GEMM, twice), BLAS-3 only. It is not used because fp32 CholeskyQR2 loses orthogonality once κ(factor)
  exceeds ~1e4 (‖QᵀQ − I‖ ≈ 1 at κ = 1e5, rank-deficient factors included), and a fallback to Householder chosen
  without a host sync would have to compute the Householder result for every matrix anyway. Its orthogonality
  error and its distance to the Householder bases on these factors are reported next to its time, and so is the
  factors' largest condition number; on a GPU this shows what the batched QR costs against BLAS-3 work.

All kernels write into copies of the bases: the benchmark model is not changed.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from loralab.benchmarking.timing import interleave, summarise


def _pairs(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from loralab.methods.sds_lora import sds_layers

    return [(src.detach(), dst.detach().clone()) for _, m, ad in sds_layers(model)
            for src, dst in m.lora_variant[ad].basis_pairs(m, ad)]


@torch.no_grad()
def per_layer(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """The refresh before batching: one QR, one sign alignment and one copy per matrix."""
    from loralab.methods.sds_ops import orthonormal_basis

    for src, dst in pairs:
        dst.copy_(orthonormal_basis(src, dst))


@torch.no_grad()
def cholesky_qr2(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Candidate kernel: batched fp32 CholeskyQR2 (no fallback), same grouping, layout and sign rule."""
    groups: dict[tuple[torch.device, int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for src, dst in pairs:
        groups.setdefault((dst.device, dst.shape[0], dst.shape[1]), []).append((src, dst))
    for (device, _, r), members in groups.items():
        q_t = torch.stack([s.mT for s, _ in members]).to(torch.float32)  # G×r×rows: Qᵀ = L⁻¹ Xᵀ per pass
        eye = torch.eye(r, device=device).expand(len(members), r, r)
        for _ in range(2):
            chol = torch.linalg.cholesky_ex(q_t @ q_t.mT).L
            q_t = torch.linalg.solve_triangular(chol, eye, upper=False) @ q_t
        previous_t = torch.stack([d.mT for _, d in members])
        q_t.mul_(torch.where(torch.linalg.vecdot(q_t, previous_t, dim=-1) < 0, -1.0, 1.0).unsqueeze(-1))
        torch._foreach_copy_([d for _, d in members], list(q_t.mT.unbind(0)))


def compare_refresh_kernels(model: nn.Module, device: torch.device, rounds: int) -> dict[str, Any]:
    """Interleaved timings of the three kernels on ``model``'s SDS factors, plus the candidate's accuracy."""
    from loralab.methods.sds_ops import refresh_bases

    kernels: dict[str, Callable[[list], None]] = {
        "per_layer": per_layer, "batched_householder": lambda p: refresh_bases(p, batched=True),
        "batched_cholesky_qr2": cholesky_qr2}
    work = {name: _pairs(model) for name in kernels}
    samples = interleave({name: (lambda k=k, p=work[name]: k(p)) for name, k in kernels.items()}, rounds, device)
    out: dict[str, Any] = {name: summarise(v) for name, v in samples.items()}
    out["training_uses"] = "per_layer" if device.type == "cpu" else "batched_householder"
    reference, candidate = _pairs(model), _pairs(model)
    refresh_bases(reference, batched=True)
    cholesky_qr2(candidate)
    eye = None
    orth, dist = 0.0, 0.0
    for (_, want), (_, got) in zip(reference, candidate):
        eye = torch.eye(got.shape[1], device=got.device) if eye is None or eye.shape[0] != got.shape[1] else eye
        orth = max(orth, float(torch.linalg.matrix_norm(got.T @ got - eye)))
        dist = max(dist, float(torch.linalg.matrix_norm(got - want)))
    conds = [float(torch.linalg.cond(src.double())) for src, _ in reference]
    out["cholesky_qr2_accuracy"] = {"max_orthogonality_error": orth, "max_distance_to_householder": dist,
                                    "max_factor_condition_number": max(conds) if conds else None,
                                    "matrices": len(reference)}
    return out
