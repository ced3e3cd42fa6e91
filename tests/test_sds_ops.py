"""SDS-LoRA's kernels: the batched basis refresh equals the per-layer one, the hot path and the refresh read no
tensor value on the host, and the fused path keeps no per-layer copies (memory equal to LoRA's but the bases)."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from loralab.benchmarking.memory import SavedTensorMeter
from loralab.methods import sds_ops
from loralab.methods.lora import LoRA
from loralab.methods.sds_lora import SDSCallback, SDSLoRA, orthonormal_basis, sds_layers
from loralab.models.tiny import tiny_llama, tiny_mlp

TARGETS = ["q_proj", "k_proj", "v_proj", "down_proj"]


class HostReads(TorchDispatchMode):
    """Counts ops that copy a tensor value to the host (``.item()``, ``bool(t)``): device syncs on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func.overloadpacket.__name__ in ("_local_scalar_dense", "item", "is_nonzero"):
            self.count += 1
        return func(*args, **(kwargs or {}))


def _sds_model(seed: int = 0):
    method = SDSLoRA(rank=4, alpha=8.0)
    model = method.prepare(tiny_llama(), TARGETS)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, mod, ad in sds_layers(model):
            for p in (mod.lora_A[ad].weight, mod.lora_B[ad].weight):
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
        for _, mod, ad in sds_layers(model):
            mod.lora_variant[ad].transition(mod, ad)
        for _, mod, ad in sds_layers(model):  # a few "optimiser steps" later
            for p in (mod.lora_A[ad].weight, mod.lora_B[ad].weight):
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return method, model


# ------------------------------------------------------------------------------------------------ refresh
@pytest.mark.parametrize(("batched", "chunk"), [(True, sds_ops.REFRESH_CHUNK_FLOATS), (True, 300), (None, 300)])
def test_batched_refresh_equals_the_per_layer_qr(batched: bool | None, chunk: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Mixed shapes (grouped), Aᵀ as a strided view, a bf16 source, a flipped previous basis, and chunking; the
    batched path (the default off the CPU) is forced here, so it is tested on CPU shapes."""
    monkeypatch.setattr(sds_ops, "REFRESH_CHUNK_FLOATS", chunk)
    gen = torch.Generator().manual_seed(0)
    sources = [torch.randn(20, 3, generator=gen), torch.randn(3, 20, generator=gen).T,
               torch.randn(12, 3, generator=gen), torch.randn(20, 3, generator=gen).bfloat16(),
               torch.randn(20, 3, generator=gen)]
    bases = [orthonormal_basis(s + 0.1 * torch.randn(s.shape, generator=gen)) for s in sources]
    bases[0] = bases[0] * torch.tensor([1.0, -1.0, 1.0])
    expected = [orthonormal_basis(s, previous=b) for s, b in zip(sources, bases)]
    with HostReads() as reads:
        sds_ops.refresh_bases(list(zip(sources, bases)), batched=batched)
    assert reads.count == 0
    for got, want in zip(bases, expected):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_callback_refresh_is_the_per_layer_refresh_of_every_layer() -> None:
    _, model = _sds_model()
    _, reference = _sds_model()
    cb = SDSCallback(warmup_steps=1, refresh="every_step", k=5, interval=1)
    with HostReads() as reads:
        cb.on_step_end(None, type("S", (), {"global_step": 2, "max_steps": 10})(), None, model=model)
    assert reads.count == 0  # the refresh is queued without a device sync
    for (_, mod, ad), (_, ref, _) in zip(sds_layers(model), sds_layers(reference)):
        ref.lora_variant[ad].refresh(ref, ad)
        st, want = mod.lora_variant[ad].state(mod, ad), ref.lora_variant[ad].state(ref, ad)
        torch.testing.assert_close(st.q_b, want.q_b, atol=1e-6, rtol=0)
        torch.testing.assert_close(st.q_a, want.q_a, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------ hot path
def test_fused_forward_and_backward_read_nothing_on_the_host() -> None:
    _, model = _sds_model()
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, labels=ids)  # first call allocates the scratch
    with HostReads() as reads:
        model(input_ids=ids, labels=ids).loss.backward()
    assert reads.count == 0


def test_layers_share_one_scratch_sized_for_the_largest() -> None:
    _, model = _sds_model()
    states = [mod.lora_variant[ad].state(mod, ad) for _, mod, ad in sds_layers(model)]
    assert len({id(st.scratch) for st in states}) == 1
    assert all(set(dict(st.named_buffers())) == {"sds_on", "q_b", "q_a"} for st in states)  # no per-layer copies
    scratch = states[0].scratch
    biggest = max(2 * st.rank * sum(st.q_b.shape[:1] + st.q_a.shape[:1]) for st in states)
    assert scratch.numel == biggest
    ids = torch.randint(0, 64, (1, 5))
    model(input_ids=ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids)
    assert sorted(str(t.dtype) for t in scratch.tensors()) == ["torch.bfloat16", "torch.float32"]
    assert all(t.numel() == biggest for t in scratch.tensors())


@pytest.mark.parametrize("autocast", [False, True])
def test_sds_saves_no_more_activations_than_lora(autocast: bool) -> None:
    """Backward keeps x and the tokens×r input of B's branch, as LoRA does; under autocast LoRA also keeps bf16
    copies of A and B, which SDS does not make."""
    torch.manual_seed(0)
    x = torch.randn(6, 32)
    saved = {}
    for name, method in (("lora", LoRA(rank=3, alpha=6.0)), ("sds", SDSLoRA(rank=3, alpha=6.0))):
        model = method.prepare(tiny_mlp(), ["fc2"])
        if name == "sds":
            layer = model.base_model.model.fc2
            with torch.no_grad():
                layer.lora_B["default"].weight.normal_()
            layer.lora_variant["default"].transition(layer, "default")
        layer = model.base_model.model.fc2
        meter = SavedTensorMeter(exclude=[*model.parameters(), *model.buffers()])
        inp = (x.bfloat16() if autocast else x).requires_grad_()  # as in every layer but the first
        with meter.active(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = layer(inp)
        saved[name] = meter.bytes
        out.float().sum().backward()
    r, m, n, itemsize = 3, 32, 32, 2 if autocast else 4
    lora_casts = r * (m + n) * 2 if autocast else 0
    assert saved["sds"] == saved["lora"] - lora_casts
    base_cast = m * n * 2 if autocast else 0  # the frozen base weight's bf16 copy (both methods)
    assert saved["sds"] == (6 * n + 6 * r) * itemsize + base_cast  # x and h_B
