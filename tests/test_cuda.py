"""What only a GPU can check: SDS-LoRA's fused path under CUDA bf16 autocast, the batched basis refresh on
cuSOLVER, native generation's per-row stopping on the device, and the allocator-peak memory measure.

Marked ``cuda``: skipped without a GPU; ``make gpu-check`` runs them on one. Its dry run
(``LORALAB_GPU_CHECK_DRY_RUN=1``, what CI exercises) runs them on the CPU so that they cannot rot.
"""
from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.cuda
DRY_RUN_ENV = "LORALAB_GPU_CHECK_DRY_RUN"


@pytest.fixture
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get(DRY_RUN_ENV) == "1":
        return torch.device("cpu")
    pytest.skip("needs a CUDA device (make gpu-check; its DRY_RUN=1 runs these on the CPU)")


def _sds_layer(device: torch.device, rank: int = 8):
    from loralab.methods.sds_lora import SDSLoRA
    from loralab.models.tiny import tiny_mlp

    torch.manual_seed(0)
    method = SDSLoRA(rank=rank, alpha=16.0)
    model = method.prepare(tiny_mlp(), ["fc2"]).to(device)
    layer = model.base_model.model.fc2
    with torch.no_grad():
        for weight in (layer.lora_A["default"].weight, layer.lora_B["default"].weight):
            weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(1)).to(device) * 0.3)
    layer.lora_variant["default"].transition(layer, "default")
    return method, layer


def test_sds_fused_path_under_bf16_autocast(device: torch.device) -> None:
    """The fused rank-2r path in bf16 on the device against the fp32 formula, forward and gradients."""
    method, layer = _sds_layer(device)
    state = layer.lora_variant["default"].state(layer, "default")
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    x = torch.randn(4, 16, 32, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and state.up.dtype == torch.bfloat16
    exact = layer.base_layer(x) + method.scaling * (x @ a.detach().T @ state.q_b.T + x @ state.q_a @ b.detach().T)
    # bf16 keeps ~3 significant digits per operation: compare the whole output, not element by element
    assert float(torch.linalg.norm(y.float() - exact) / torch.linalg.norm(exact)) < 2e-2
    y.float().square().mean().backward()
    assert a.grad is not None and b.grad is not None and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_batched_refresh_matches_the_per_matrix_householder_qr(device: torch.device) -> None:
    """``refresh_bases(batched=True)`` (what training runs off the CPU) against one QR per matrix on the CPU."""
    from loralab.methods.sds_ops import orthonormal_basis, refresh_bases

    gen = torch.Generator().manual_seed(0)
    sources = [torch.randn(rows, 8, generator=gen) for rows in (64, 64, 160, 64)]
    previous = [torch.linalg.qr(torch.randn(s.shape, generator=gen))[0] for s in sources]
    want = [orthonormal_basis(s, p) for s, p in zip(sources, previous)]
    pairs = [(s.to(device), p.clone().to(device)) for s, p in zip(sources, previous)]
    refresh_bases(pairs, batched=True)
    for (_, got), expected in zip(pairs, want):
        torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)


def test_per_row_stopping_on_the_device_gives_the_reference_text(device: torch.device) -> None:
    from loralab.synthetic.arithmetic import ALPHABET
    from loralab.evaluation.generation import generate_greedy
    from loralab.models.embedded_lm import char_tokenizer
    from loralab.models.tiny import tiny_llama

    tokenizer = char_tokenizer(ALPHABET)
    model = tiny_llama(vocab_size=len(tokenizer), seed=3).to(device)
    prompts = ["Q: Ann has 3 pens.", "1+1=", "Q: Leo has 12 keys. Leo finds 7. How many keys now?\nA:", "9-4=",
               "Ben", "Eve has 19 cups. Eve uses 2.", "0+0=", "Kim has 5 rocks."]
    reference = generate_greedy(model, tokenizer, prompts, 16, batch_size=3, progress=False,
                                stop_in_decoding=False, by_length=False)
    stop = sorted({g[2:4] for g in reference if len(g) >= 4})[:3]  # strings the generations really hold
    cut = generate_greedy(model, tokenizer, prompts, 16, batch_size=3, progress=False, stop=stop,
                          stop_in_decoding=False, by_length=False)
    assert cut != reference
    assert generate_greedy(model, tokenizer, prompts, 16, batch_size=3, progress=False, stop=stop) == cut


def test_allocator_peak_of_a_training_step(device: torch.device) -> None:
    """The CUDA-peak memory column's measure: positive on CUDA, absent where the allocator keeps no statistics."""
    from loralab.benchmarking.memory import step_peak_increment

    layer = torch.nn.Linear(256, 256).to(device)
    x = torch.randn(64, 256, device=device)

    def step() -> None:
        layer(x).square().sum().backward()

    peak = step_peak_increment(step, device)
    if device.type == "cuda":
        assert peak is not None and peak >= 64 * 256 * 4  # at least the saved activation
    else:
        assert peak is None
