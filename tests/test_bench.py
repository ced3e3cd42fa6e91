"""The overhead benchmark: FLOP model against hand counts and torch's FLOP counter, memory accounting, and a tiny
end-to-end run through the script (output structure only; no timing assertions)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import script
from loralab.benchmarking import memory as mem
from loralab.benchmarking.config import cuda_default, tiny
from loralab.benchmarking.flops import LlamaShape, base_linear_flops, step_flops
from loralab.benchmarking.timing import implemented_flops
from loralab.benchmarking.trainees import build_base_model, build_method, make_batch, prepare, trainer_arguments
from loralab.methods.full_ft import FullFineTuning
from loralab.methods.lora import LoRA
from loralab.methods.sds_lora import SDSLoRA



@pytest.fixture(autouse=True)
def one_thread():
    """Tiny shapes on a shared CPU: one thread avoids OpenMP stalls; the session's setting is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ FLOP model
def test_linear_and_adapter_flops_by_hand() -> None:
    # W is 3×2 (m = 3 out, n = 2 in), r = 1, per token
    assert base_linear_flops(3, 2, trainable=False).forward == 12  # 2mn
    assert base_linear_flops(3, 2, trainable=False).backward == 12  # input grad only
    assert base_linear_flops(3, 2, trainable=False, input_grad=False).backward == 0
    assert base_linear_flops(3, 2, trainable=True).backward == 24  # input grad + weight grad
    lora, sds = LoRA(rank=1), SDSLoRA(rank=1)
    # token_flops takes (in_features n = 2, out_features m = 3, rank)
    assert (lora.token_flops(2, 3, 1).forward, lora.token_flops(2, 3, 1).backward) == (10, 20)
    # 2r(m+n); ∇B 6 + ∂h 6 + ∇A 4 + ∂x 4
    assert lora.token_flops(2, 3, 1, input_grad=False).backward == 16
    assert (sds.token_flops(2, 3, 1).forward, sds.token_flops(2, 3, 1).backward) == (20, 30)
    # 2(2r)(m+n); ∂h 12 + ∂x 8 + ∇A 4 + ∇B 6
    assert sds.token_flops(2, 3, 1, input_grad=False).backward == 16  # ∂h only the Q_B half: 6 + 4 + 6
    # large layers: SDS adapter = 5/3 of LoRA's, 10r(m+n) vs 6r(m+n)
    assert sds.token_flops(4096, 4096, 32).total * 3 == lora.token_flops(4096, 4096, 32).total * 5


def test_step_flops_of_a_one_layer_model_by_hand() -> None:
    shape = LlamaShape(hidden=4, intermediate=8, heads=2, kv_heads=1, layers=1, vocab=5, seq=3, batch=1)
    flops = step_flops(shape, LoRA(rank=1), targets=["q_proj"])
    # per token, frozen base: q 4×4, k 2×4, v 2×4 (inputs from frozen embeddings: forward only) = 32+16+16;
    # o 4×4, gate 8×4, up 8×4, down 4×8 forward + input grad = 64+128+128+128; lm_head 5×4: 40+40 → 592
    assert flops.base == 3 * 592
    # LoRA on q only (r = 1, no input grad): forward 2·(4+4) = 16, backward ∇B 8 + ∂h 8 + ∇A 8 = 24
    assert flops.adapter == 3 * 40
    # attention: 4·S·d forward, twice that backward: 3 · 4 · 3 · 4 per token
    assert flops.attention == 3 * 144
    assert flops.total == 1776 + 120 + 432
    full = step_flops(shape, FullFineTuning(rank=1))
    # every weight trainable and every input grad needed: 6mn over 4·4+2·4+2·4+4·4+8·4+8·4+4·8 = 144 and lm_head 20
    assert full.base == 3 * 6 * (144 + 20) and full.adapter == 0


@pytest.mark.parametrize("name", ["full_ft", "lora", "sds_lora", "dora"])
def test_flop_model_equals_the_matmuls_a_step_issues(name: str, tmp_path: Path) -> None:
    """On CPU, FlopCounterMode counts every mm of forward, backward and optimiser (the CPU SDPA kernel is not
    counted): it must equal the FLOP model's base + adapter + per-step terms."""
    torch.manual_seed(0)
    cfg = tiny()
    batch, base = make_batch(cfg), build_base_model(cfg)
    args = trainer_arguments(cfg, tmp_path, 10)
    trainee = prepare(name, base, cfg, batch, args, 10)
    for _ in range(cfg.sds_warmup_steps + 1):  # SDS: past the transition, so the fused path is counted
        trainee.driven_step()
    model = step_flops(cfg.shape, trainee.method, cfg.targets)
    issued = implemented_flops(trainee)
    if name == "dora":  # PEFT forms B·A as lora_B(lora_A(I_n)) (FSDP-safe): 2nr(n + m), not the bound's 2mnr
        n_squared = sum(n * n for _, _, n in cfg.shape.projections()) * cfg.shape.layers
        assert issued == model.base + model.adapter + model.per_step + 2 * cfg.rank * n_squared
    else:
        assert issued == model.base + model.adapter + model.per_step


# ------------------------------------------------------------------------------------------------ memory
def test_saved_tensor_meter_counts_distinct_activation_storages() -> None:
    w = torch.nn.Parameter(torch.randn(6, 4))
    x = torch.randn(5, 4, requires_grad=True)
    meter = mem.SavedTensorMeter(exclude=[w])
    with meter.active():
        y = torch.nn.functional.linear(x, w)  # saves x (for ∇W) and W (excluded: a parameter)
        z = (y * y).sum()  # saves y (twice, one storage)
    z.backward()
    assert meter.bytes == x.numel() * 4 + y.numel() * 4
    big = torch.zeros(10, 10)
    assert mem.unique_bytes([big, big[:3], big.T]) == 400


def test_accounted_memory_splits_static_and_saved(tmp_path: Path) -> None:
    cfg = tiny()
    batch, base = make_batch(cfg), build_base_model(cfg)
    trainee = prepare("lora", base, cfg, batch, trainer_arguments(cfg, tmp_path, 10), 10)
    trainee.step()  # creates the optimiser state
    acc = mem.accounted_bytes(trainee.model, trainee.optimizer, trainee.loss)
    trainable = sum(p.numel() * 4 for p in trainee.model.parameters() if p.requires_grad)
    assert acc["gradients"] == trainable and acc["optimizer_state"] >= 2 * trainable
    assert acc["saved_activations"] > 0
    assert acc["total"] == sum(v for k, v in acc.items() if k != "total")


# ------------------------------------------------------------------------------------------------ end to end
def test_tiny_benchmark_through_the_script(tmp_path: Path) -> None:
    bench_overhead = script("bench_overhead")
    rc = bench_overhead.main(["--preset", "tiny", "--device", "cpu", "--methods", "lora,sds_lora,full_ft",
                              "--steps", "2", "--warmup", "1", "--tax-steps", "2", "--no-rss", "--threads", "1",
                              "--out-dir", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "overhead-cpu.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overhead-cpu.json", "overhead-cpu.md"]  # no temp files
    assert set(report) >= {"machine", "config", "methods", "sds", "framework_tax", "targets", "flop_model_llama3_8b"}
    assert report["machine"]["cpu_threads"] == 1 and report["config"]["shape"]["hidden"] == 64
    assert set(report["methods"]) == {"lora", "sds_lora", "full_ft"}
    for name, entry in report["methods"].items():
        assert entry["step_time_s"]["n"] == 2 and entry["step_time_s"]["median"] > 0
        assert entry["flop_model"]["total"] == step_flops(tiny().shape, build_method(name, tiny())).total
        assert entry["memory_accounted"]["total"] > 0
    lora, sds = report["methods"]["lora"], report["methods"]["sds_lora"]
    assert lora["time_ratio_to_lora"] == 1.0 and lora["memory_accounted_ratio_to_lora"] == 1.0
    assert sds["flop_model_ratio_to_lora"] > 1.0
    assert sds["trainable_params"] == lora["trainable_params"]
    # SDS's extra memory is its bases (buffers) and the one shared fused-factor scratch; backward saves what
    # LoRA's does (x and a tokens×r intermediate), and the formula matches the measured difference
    assert sds["memory_accounted"]["buffers"] > lora["memory_accounted"]["buffers"]
    assert sds["memory_accounted"]["workspace"] > 0 == lora["memory_accounted"]["workspace"]
    assert sds["memory_accounted"]["saved_activations"] == lora["memory_accounted"]["saved_activations"]
    model = report["sds_memory_model"]["this_run"]
    flags = tiny().shape.layers * len(tiny().targets)  # plus the 1-byte sds_on flag of every adapted layer
    assert model["measured_accounted_difference"] == model["total"] + flags
    assert report["sds"]["refresh_rate_per_step"] == pytest.approx(0.457)  # phased, k = 5, 1000 SDS steps
    assert report["sds"]["refresh_s"]["n"] == 2 and report["sds"]["transition_s"] > 0
    tax = report["framework_tax"]["lora"]
    assert tax["trainer_step_s"]["n"] >= 1 and tax["bare_step_s"]["n"] >= 1 and tax["tax"] is not None
    assert "NonFiniteGuard" in tax["callbacks"] and "StepLogCallback" in tax["callbacks"]
    names = {t["name"] for t in report["targets"]}
    assert {"SDS/LoRA step time", "SDS/LoRA memory (accounted)", "framework tax (lora)",
            "amortised SDS refresh"} <= names
    assert all(isinstance(t["met"], bool) for t in report["targets"])
    md = (tmp_path / "overhead-cpu.md").read_text()
    assert "| sds_lora |" in md and "framework tax" in md and "AMD" in md or "Machine:" in md


# ------------------------------------------------------------------------------------- SDS hot path (optimised)
def _sds_fc2(rank: int = 3):
    from loralab.methods.sds_lora import SDSLoRA
    from loralab.models.tiny import tiny_mlp

    method = SDSLoRA(rank=rank, alpha=6.0)
    model = method.prepare(tiny_mlp(), ["fc2"])
    layer = model.base_model.model.fc2
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad():
        gen = torch.Generator().manual_seed(3)
        a.add_(torch.randn(a.shape, generator=gen) * 0.3)
        b.add_(torch.randn(b.shape, generator=gen) * 0.3)
    layer.lora_variant["default"].transition(layer, "default")
    with torch.no_grad():  # B drifts from span(Q_B) so both branches matter
        b.add_(torch.randn(b.shape, generator=torch.Generator().manual_seed(4)) * 0.1)
    return method, layer, layer.lora_variant["default"].state(layer, "default"), a, b


@pytest.mark.parametrize("x_needs_grad", [True, False])
def test_sds_fused_path_gradients_with_and_without_input_grad(x_needs_grad: bool) -> None:
    """The fused residual add (addmm) and the scale on the rank-2r side give autograd's gradients of the formula,
    also when x needs no gradient (only the Q_B half of ∂h is formed then)."""
    method, layer, st, a, b = _sds_fc2()
    s = method.scaling
    x = torch.randn(2, 5, 32, requires_grad=x_needs_grad)
    a_ref, b_ref = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_(x_needs_grad)
    ref = layer.base_layer(x_ref) + s * (x_ref @ a_ref.T @ st.q_b.T + x_ref @ st.q_a @ b_ref.T)
    out = layer(x)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    (ref * weights).sum().backward()
    (out * weights).sum().backward()
    # fp32 sums over 10 tokens in another order: agreement to a few ulps of the largest entries
    torch.testing.assert_close(a.grad, a_ref.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b.grad, b_ref.grad, atol=1e-5, rtol=1e-4)
    if x_needs_grad:
        torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-4)


def test_sds_fused_factors_follow_the_compute_dtype() -> None:
    """Under bf16 autocast the fused factors live in bf16 (no per-call casts, half the memory), are allocated once,
    and go back to fp32 from the fp32 bases when the model computes in fp32 again."""
    method, layer, st, a, b = _sds_fc2()
    s = method.scaling
    x = torch.randn(4, 32)
    exact = layer.base_layer(x) + s * (x @ a.detach().T @ st.q_b.T + x @ st.q_a @ b.detach().T)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        ptrs = (st.up.data_ptr(), st.down.data_ptr())
        layer(x)
    assert st.up.dtype == st.down.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    assert (st.up.data_ptr(), st.down.data_ptr()) == ptrs
    assert st.q_b.dtype == st.q_a.dtype == torch.float32
    torch.testing.assert_close(y.float(), exact, atol=0.05, rtol=0.05)
    y32 = layer(x)
    assert st.up.dtype == torch.float32 and torch.equal(st.up[:, :3], st.q_b) and torch.equal(st.down[3:], st.q_a.T)
    torch.testing.assert_close(y32, exact, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------- the CUDA recipe on CPU
def test_cuda_recipe_on_cpu_shapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA preset's path (bf16 weights + bf16 autocast, SDS's fused path in bf16, the allocator-peak memory
    columns, ratios and target, the Markdown's CUDA column) on tiny shapes on CPU. Only the CUDA allocator's
    statistics are stood in for: the stand-in runs the step and reports a fixed increment."""
    from dataclasses import replace

    from loralab.benchmarking import memory
    from loralab.benchmarking.overhead import run_benchmark
    from loralab.benchmarking.report import markdown

    calls = []

    def fake_peak(step, device: torch.device) -> int:  # noqa: ANN001
        calls.append(device.type)
        step()
        return 1000

    monkeypatch.setattr(memory, "step_peak_increment", fake_peak)
    cfg = replace(cuda_default(), shape=tiny().shape, device="cpu", rank=4, methods=("lora", "sds_lora"), steps=2,
                  warmup=1, tax_steps=2, threads=1, refresh_kernel_rounds=1)
    assert cfg.dtype == "bfloat16" and cfg.autocast
    report = run_benchmark(cfg, log=lambda msg: None)
    assert calls == ["cpu", "cpu"]
    for entry in report["methods"].values():
        peak = entry["memory_cuda_peak"]
        assert peak["step_increment_bytes"] == 1000 and peak["total"] == peak["resident_bytes"] + 1000
        assert entry["memory_cuda_peak_ratio_to_lora"] > 0
    assert "SDS/LoRA memory (cuda_peak)" in {t["name"] for t in report["targets"]}
    assert "CUDA peak MiB" in markdown(report)
    # under autocast SDS saves no bf16 copies of A and B, LoRA does: the formula still matches the measurement
    lora, sds = report["methods"]["lora"], report["methods"]["sds_lora"]
    assert sds["memory_accounted"]["saved_activations"] < lora["memory_accounted"]["saved_activations"]
    model = report["sds_memory_model"]["this_run"]
    assert model["lora_autocast_copies"] < 0
    assert model["measured_accounted_difference"] == model["total"] + cfg.shape.layers * len(cfg.targets)


def test_cuda_device_without_a_gpu_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: this is the CPU-only machine's behaviour")
    bench_overhead = script("bench_overhead")
    assert bench_overhead.main(["--device", "cuda", "--out-dir", str(tmp_path)]) == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_llama3_8b_shape_option_on_tiny_shapes(tmp_path: Path) -> None:
    """``--shape llama3_8b`` (here with its shapes overridden small): LoRA vs SDS-LoRA only, the real-width block
    with the measured memory beside the formula and the paper's Table 6 ratios, its own report files."""
    bench_overhead = script("bench_overhead")
    from loralab.benchmarking.config import llama3_8b_layers, paper_table6_ratios

    real = llama3_8b_layers()
    assert (real.shape.hidden, real.shape.intermediate, real.shape.heads, real.shape.kv_heads, real.rank) == (
        4096, 14336, 32, 8, 32)
    assert real.shape.layers == 1 and llama3_8b_layers(2).shape.layers == 2 and real.dtype == "float32"
    paper = paper_table6_ratios()
    assert paper["metamathqa"]["time"] == pytest.approx(1.68 / 1.61) and paper["code_feedback"]["time"] == \
        pytest.approx(1.81 / 1.72)
    assert paper["metamathqa"]["memory"] == pytest.approx(129.16 / 128.54)
    shape = ["--hidden", "64", "--intermediate", "160", "--heads", "4", "--kv-heads", "2", "--vocab", "96",
             "--seq", "16"]
    rc = bench_overhead.main(["--shape", "llama3_8b", "--device", "cpu", *shape, "--rank", "4", "--steps", "2",
                              "--refresh-kernel-rounds", "1", "--out-dir", str(tmp_path)])
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overhead-cpu-llama3_8b.json", "overhead-cpu-llama3_8b.md"]
    report = json.loads((tmp_path / "overhead-cpu-llama3_8b.json").read_text())
    assert set(report["methods"]) == {"lora", "sds_lora"} and report["framework_tax"] == {}
    rw = report["real_width"]
    assert rw["real_shapes"] is False and rw["layers"] == 1 and rw["paper_table6"] == paper
    layers = len(tiny().targets)  # one decoder layer: a 1-byte sds_on flag per adapted module beyond the formula
    assert rw["measured_extra_bytes"] == rw["formula_extra_bytes"] + layers
    assert rw["memory_accounted_ratio"] > 1.0 and rw["time_ratio_paired"]["n"] == 2
    md = (tmp_path / "overhead-cpu-llama3_8b.md").read_text()
    assert "NOT LLaMA3-8B's width" in md and "Table 6" in md
    assert bench_overhead.main(["--shape", "llama3_8b", "--preset", "tiny", "--out-dir", str(tmp_path / "x")]) == 2
