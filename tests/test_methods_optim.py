"""LoRA-GA, LoRA-Pro, ScaledAdamW and AltLoRA: hand-computed updates, reference-vs-PEFT differences, Trainer runs,
optimizer state round trips and config errors."""
from __future__ import annotations

import copy
import io

import pytest
import scipy.linalg
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from peft import LoraConfig, get_peft_model

from loralab.errors import ConfigError
from loralab.methods.altlora import AltLoRA
from loralab.methods.lora_ga import LoRAGA
from loralab.methods.lora_pro import LoRAPro, adjusted_factor_grads, equivalent_gradient
from loralab.methods.scaled_adamw import ScaledAdamWLoRA
from loralab.models.tiny import tiny_llama, tiny_mlp

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------ fixtures
def one_layer(seed: int = 0, rank: int = 2, dtype: torch.dtype = torch.float32):
    """tiny_mlp with LoRA on fc2 only and non-zero random factors (so every preconditioner matters)."""
    model = get_peft_model(tiny_mlp(seed), LoraConfig(r=rank, lora_alpha=3.0, target_modules=["fc2"]))
    model = model.to(dtype)
    layer = model.base_model.model.fc2
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.randn(rank, 32, generator=gen, dtype=dtype) * 0.3)
        layer.lora_B["default"].weight.copy_(torch.randn(32, rank, generator=gen, dtype=dtype) * 0.1)
    return model, layer


def mlp_batch(k: int, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(100 + k)
    return torch.randn(12, 16, generator=gen, dtype=dtype), torch.randn(12, 8, generator=gen, dtype=dtype)


def backward(model, k: int) -> None:
    x, y = mlp_batch(k, next(model.parameters()).dtype)
    model.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(model(x), y).backward()


def factors(layer):
    return layer.lora_A["default"].weight, layer.lora_B["default"].weight


def lm_batches(n: int = 4, bsz: int = 4, length: int = 12):
    """Token sequences counting upwards from a random start: a pattern the tiny LM can pick up in a few steps."""
    gen = torch.Generator().manual_seed(7)
    out = []
    for _ in range(n):
        start = torch.randint(3, 40, (bsz, 1), generator=gen)
        ids = start + torch.arange(length)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return out


LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]


# ------------------------------------------------------------------------------------------------ ScaledAdamW
def hand_scaled_adamw(a, b, grads, lr, delta, betas, eps, identity=False):
    """Reference AdamWr by hand: no bias correction, B preconditioned with the updated A."""
    a, b = a.clone(), b.clone()
    (ma, va, mb, vb) = (torch.zeros_like(a), torch.zeros_like(a), torch.zeros_like(b), torch.zeros_like(b))
    r = a.shape[0]
    for ga, gb in grads:
        pa = ga if identity else torch.linalg.solve(b.T @ b + delta * torch.eye(r, dtype=a.dtype), ga)
        ma, va = betas[0] * ma + (1 - betas[0]) * pa, betas[1] * va + (1 - betas[1]) * pa**2
        a = a - lr * ma / (va.sqrt() + eps)
        # g_B (AAᵀ+δI)⁻¹ = solve((AAᵀ+δI), g_Bᵀ)ᵀ since the matrix is symmetric
        pb = gb if identity else torch.linalg.solve(a @ a.T + delta * torch.eye(r, dtype=a.dtype), gb.T).T
        mb, vb = betas[0] * mb + (1 - betas[0]) * pb, betas[1] * vb + (1 - betas[1]) * pb**2
        b = b - lr * mb / (vb.sqrt() + eps)
    return a, b


def test_scaled_adamw_steps_match_hand_computation():
    model, layer = one_layer()
    a, b = factors(layer)
    a0, b0 = a.detach().clone(), b.detach().clone()
    method = ScaledAdamWLoRA(rank=2, alpha=3.0, damping=0.05)
    opt = method.build_optimizer(model, lr=0.01, weight_decay=0.0)
    grads = []
    for k in range(3):
        backward(model, k)
        grads.append((a.grad.clone(), b.grad.clone()))
        opt.step()
    # The hand computation needs the grads seen at each step; they depend on the current factors, so we replay.
    ea, eb = hand_scaled_adamw(a0, b0, grads, 0.01, 0.05, (0.9, 0.999), 1e-6)
    torch.testing.assert_close(a.detach(), ea, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(b.detach(), eb, atol=1e-6, rtol=1e-5)
    # Without the preconditioner the same gradients give a different result, so the check above has teeth.
    ia, ib = hand_scaled_adamw(a0, b0, grads, 0.01, 0.05, (0.9, 0.999), 1e-6, identity=True)
    assert (ia - ea).abs().max() > 1e-4 and (ib - eb).abs().max() > 1e-4


def run_three_steps(model, opt):
    for k in range(3):
        backward(model, k)
        opt.step()
    return [p.detach().clone() for p in factors(model.base_model.model.fc2)]


def test_scaled_adamw_reference_differs_from_peft():
    import inspect

    from peft.optimizers import create_riemannian_optimizer

    # The documented damping difference: PEFT 1e-2, reference (and our default) 1e-6.
    assert inspect.signature(create_riemannian_optimizer).parameters["reg"].default == 1e-2
    assert ScaledAdamWLoRA().damping == 1e-6

    # float64 and a negligible ε: the reference's bias correction (old HF AdamW form) scales ε by 1/√(1−β2^t),
    # a third, smaller difference that would otherwise hide the comparison below.
    def peft_run():
        model, _ = one_layer(dtype=torch.float64)
        opt = create_riemannian_optimizer(model, torch.optim.AdamW, lr=0.01, reg=1e-2, eps=1e-12, weight_decay=0.0)
        return run_three_steps(model, opt)

    def ours(**kw):
        model, _ = one_layer(dtype=torch.float64)
        return run_three_steps(model, ScaledAdamWLoRA(**kw).build_optimizer(model, lr=0.01, weight_decay=0.0))

    peft_ab = peft_run()
    # PEFT's behaviour is our optimizer with PEFT's choices switched on ...
    peft_choices = dict(damping=1e-2, precondition_order="simultaneous", correct_bias=True, eps=1e-12)
    for got, want in zip(ours(**peft_choices), peft_ab):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    # ... and each reference choice alone changes the trajectory.
    for kw in ({"damping": 1e-6}, {"precondition_order": "sequential"}):
        variant = ours(**dict(peft_choices, **kw))
        assert max((x - y).abs().max().item() for x, y in zip(variant, peft_ab)) > 1e-4, kw
    reference = ours()
    assert max((x - y).abs().max().item() for x, y in zip(reference, peft_ab)) > 1e-3


# ------------------------------------------------------------------------------------------------ LoRA-Pro
def test_lora_pro_adjusted_grads_solve_the_least_squares_problem():
    gen = torch.Generator().manual_seed(3)
    n, m, r, s = 7, 5, 2, 1.5
    a = torch.randn(r, m, generator=gen, dtype=torch.float64)
    b = torch.randn(n, r, generator=gen, dtype=torch.float64)
    g = torch.randn(n, m, generator=gen, dtype=torch.float64)
    g_a, g_b = s * b.T @ g, s * g @ a.T
    ga_hat, gb_hat = adjusted_factor_grads(a, b, g_a, g_b, s)

    # Least squares over all (x_A, x_B): columns = images of unit perturbations under (x_A, x_B) ↦ s(B x_A + x_B A).
    cols = []
    for i in range(r * m):
        e = torch.zeros(r * m, dtype=torch.float64)
        e[i] = 1
        cols.append((s * b @ e.view(r, m)).flatten())
    for i in range(n * r):
        e = torch.zeros(n * r, dtype=torch.float64)
        e[i] = 1
        cols.append((s * e.view(n, r) @ a).flatten())
    sol = torch.linalg.lstsq(torch.stack(cols, 1), g.flatten().unsqueeze(1), driver="gelsd").solution.squeeze(1)
    best = equivalent_gradient(a, b, sol[: r * m].view(r, m), sol[r * m :].view(n, r), s)
    ours = equivalent_gradient(a, b, ga_hat, gb_hat, s)
    torch.testing.assert_close(ours, best, atol=1e-7, rtol=1e-7)
    assert (ours - g).norm() > 1e-3  # G is not in the tangent space: the minimum is not trivially zero

    # Perturbations never lower the residual.
    base = (ours - g).norm()
    for _ in range(20):
        da, db = torch.randn_like(ga_hat) * 1e-3, torch.randn_like(gb_hat) * 1e-3
        assert (equivalent_gradient(a, b, ga_hat + da, gb_hat + db, s) - g).norm() >= base - 1e-12

    # X: among the minimisers (ĝ_A + ZA, ĝ_B − BZ), Z = 0 is the one closest to the raw gradients ...
    def dist(z):
        return (ga_hat + z @ a - g_a).norm() ** 2 + (gb_hat - b @ z - g_b).norm() ** 2

    for _ in range(20):
        assert dist(torch.randn(r, r, dtype=torch.float64) * 1e-3) > dist(torch.zeros(r, r, dtype=torch.float64))
    # ... and it is the Sylvester solution of docs/methods/lora_pro.md#equivalent-gradient (checked with SciPy's
    # independent solver).
    rhs = -(torch.linalg.inv(b.T @ b) @ g_a @ a.T / s**2).numpy()
    x = scipy.linalg.solve_sylvester((b.T @ b).numpy(), (a @ a.T).numpy(), rhs)
    plain_a, _ = adjusted_factor_grads(a, b, g_a, g_b, s, x_choice="zero")
    torch.testing.assert_close(ga_hat, plain_a + torch.from_numpy(x) @ a, atol=1e-8, rtol=1e-7)


def test_lora_pro_optimizer_step_matches_hand_computation():
    model, layer = one_layer(dtype=torch.float64)
    a, b = factors(layer)
    s = layer.scaling["default"]
    a0, b0 = a.detach().clone(), b.detach().clone()
    # Full gradient G = ∂L/∂W_eff from an explicitly merged layer (independent of the LoRA factor gradients).
    x, y = mlp_batch(0, torch.float64)
    net = model.base_model.model
    w_eff = (net.fc2.base_layer.weight + s * b0 @ a0).detach().requires_grad_(True)
    h = torch.relu(torch.relu(net.fc1(x)) @ w_eff.T + net.fc2.base_layer.bias)
    torch.nn.functional.mse_loss(net.head(h), y).backward()
    g = w_eff.grad

    opt = LoRAPro(rank=2, alpha=3.0).build_optimizer(model, lr=0.05, weight_decay=0.0)
    backward(model, 0)
    opt.step()

    proj_b = b0 @ torch.linalg.solve(b0.T @ b0, b0.T)
    proj_a = a0.T @ torch.linalg.solve(a0 @ a0.T, a0)
    g_tilde = proj_b @ g + (torch.eye(32, dtype=g.dtype) - proj_b) @ g @ proj_a
    d = g_tilde / (g_tilde.abs() + 1e-8)  # Adam's first bias-corrected step
    btb, aat = b0.T @ b0, a0 @ a0.T
    rhs = -(torch.linalg.solve(btb, b0.T @ d @ a0.T) / s).numpy()
    xs = torch.from_numpy(scipy.linalg.solve_sylvester(btb.numpy(), aat.numpy(), rhs))
    ga = torch.linalg.solve(btb, b0.T @ d) / s + xs @ a0
    gb = (torch.eye(32, dtype=g.dtype) - proj_b) @ d @ a0.T @ torch.linalg.inv(aat) / s - b0 @ xs
    torch.testing.assert_close(a.detach(), a0 - 0.05 * ga, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(b.detach(), b0 - 0.05 * gb, atol=1e-7, rtol=1e-6)
    assert opt.state[a]["exp_avg"].shape == (32, 32)  # the full-size moment lives in the optimizer state


# ------------------------------------------------------------------------------------------------ AltLoRA
@pytest.mark.parametrize("freeze", [True, False])
def test_altlora_alternates_starting_with_b(freeze):
    model, layer = one_layer()
    a, b = factors(layer)
    opt = AltLoRA(rank=2, alpha=3.0, alter_freq=2, freeze_inactive=freeze).build_optimizer(model, 0.01, 0.0)
    moved = []
    for k in range(6):
        before = a.detach().clone(), b.detach().clone()
        backward(model, k)
        b_phase = k in (0, 1, 4, 5)
        # Frozen like the reference trainer: the inactive factor gets no gradient at all.
        assert (a.grad is None) == (freeze and b_phase) and (b.grad is None) == (freeze and not b_phase)
        opt.step()
        moved.append(("A" if not torch.equal(before[0], a) else "") + ("B" if not torch.equal(before[1], b) else ""))
    assert moved == ["B", "B", "A", "A", "B", "B"]
    assert a.requires_grad and b.requires_grad != freeze  # steps 7-8 are again an A-phase


def test_altlora_momentum_transport_matches_hand_computation():
    model, layer = one_layer()
    a, b = factors(layer)
    lr, delta, beta1 = 0.2, 1e-5, 0.9
    opt = AltLoRA(rank=2, alpha=3.0, damping=delta).build_optimizer(model, lr, 0.0)
    eye = torch.eye(2)
    m, b_old, t, transports = torch.zeros(2, 32), None, 0, []
    for k in range(6):  # phases B, A, B, A, B, A
        backward(model, k)
        a_k, b_k = a.detach().clone(), b.detach().clone()
        ga = a.grad.clone() if a.grad is not None else None
        opt.step()
        if k % 2 == 0:  # B-phase: A must not move
            assert torch.equal(a.detach(), a_k)
            continue
        # A-phase by hand: g̃ = H⁻¹∇A, P = H⁻¹BᵀB_old, M ← β1·P·M + (1−β1)·g̃,
        # A ← A − lr·M/(1−β1^t)
        h = b_k.T @ b_k + delta * eye
        transport = torch.linalg.solve(h, b_k.T @ (b_k if b_old is None else b_old))
        m = beta1 * transport @ m + (1 - beta1) * torch.linalg.solve(h, ga)
        t += 1
        torch.testing.assert_close(a.detach(), a_k - lr * m / (1 - beta1**t), atol=1e-6, rtol=1e-5)
        transports.append(transport)
        b_old = b_k
    # The transports are not the identity (B moved in between), so they matter for the result.
    assert all((p - eye).abs().max() > 1e-3 for p in transports[1:])


def test_altlora_plus_follows_the_authors_update():
    """The authors' altlora_plus step (optimizer_new.py), written out by hand for the first six steps (B, A, B, ...):
    N = β1·(transported M) + (1−β1)·g̃ enters the step, M is stored untransported, V has no bias correction,
    step size lr/(1−β1^t), then decoupled weight decay p ← p − lr·λ·p. The reference keeps each factor's previous
    partner as zeros until its first step."""
    model, layer = one_layer()
    a, b = factors(layer)
    lr, wd, delta, (beta1, beta2), eps = 1e-3, 0.1, 1e-5, (0.9, 0.999), 1e-4
    opt = AltLoRA(rank=2, alpha=3.0, variant="altlora_plus", damping=delta, eps=eps).build_optimizer(model, lr, wd)
    eye = torch.eye(2)
    ref = {"A": dict(t=0, m=torch.zeros(2, 32), v=torch.zeros(2, 32), old=torch.zeros(32, 2)),   # old partner: B
           "B": dict(t=0, m=torch.zeros(32, 2), v=torch.zeros(32, 2), old=torch.zeros(2, 32))}   # old partner: A
    first_steps = {}
    for k in range(6):
        backward(model, k)
        a_k, b_k = a.detach().clone(), b.detach().clone()
        side, p_k, grad = ("B", b_k, b.grad) if k % 2 == 0 else ("A", a_k, a.grad)
        opt.step()
        st = ref[side]
        st["t"] += 1
        if side == "A":
            precon = torch.inverse(b_k.T @ b_k + delta * eye)
            g, transport = precon @ grad, precon @ b_k.T @ st["old"]
            numer = beta1 * transport @ st["m"] + (1 - beta1) * g
            partner, moved = b_k, a.detach()
        else:
            precon = torch.inverse(a_k @ a_k.T + delta * eye)
            g, transport = grad @ precon, st["old"] @ a_k.T @ precon
            numer = beta1 * st["m"] @ transport + (1 - beta1) * g
            partner, moved = a_k, b.detach()
        st["v"] = beta2 * st["v"] + (1 - beta2) * g * g
        expected = p_k - lr / (1 - beta1 ** st["t"]) * numer / (st["v"].sqrt() + eps)
        expected = expected - lr * wd * expected
        st["m"] = beta1 * st["m"] + (1 - beta1) * g
        st["old"] = partner
        torch.testing.assert_close(moved, expected, atol=1e-6, rtol=1e-5)
        first_steps.setdefault(side, float((moved - p_k).abs().max() / lr))
    # No bias correction of V: where |g̃| ≫ ε the first step is lr/√(1−β2) ≈ 31.6·lr per entry, not Adam's ≤ lr.
    for side, size in first_steps.items():
        assert 25 < size < 31.7, (side, size)


# ------------------------------------------------------------------------------------------------ state round trip
@pytest.mark.parametrize(
    "method", [ScaledAdamWLoRA(rank=2, alpha=3.0), LoRAPro(rank=2, alpha=3.0), AltLoRA(rank=2, alpha=3.0)]
)
def test_optimizer_state_survives_a_checkpoint_round_trip(method):
    model, _ = one_layer()
    opt = method.build_optimizer(model, lr=0.01, weight_decay=0.01)
    for k in range(3):
        backward(model, k)
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)  # what the Trainer writes to optimizer.pt ...
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # ... and how it reads it back

    def resumed(load: bool):
        clone = copy.deepcopy(model)
        for name, p in clone.named_parameters():
            p.requires_grad_("lora_" in name)  # a fresh process starts with every factor trainable
        new = method.build_optimizer(clone, lr=0.01, weight_decay=0.01)
        if load:
            new.load_state_dict(saved)
        backward(clone, 3)
        new.step()
        return [p.detach() for n, p in clone.named_parameters() if "lora_" in n]

    with_state, without_state = resumed(True), resumed(False)
    backward(model, 3)
    opt.step()
    expected = [p.detach() for n, p in model.named_parameters() if "lora_" in n]
    for got, want in zip(with_state, expected):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert any(not torch.equal(g, w) for g, w in zip(without_state, expected))  # the state does matter


# ------------------------------------------------------------------------------------------------ LoRA-GA
def averaged_grads(model, batches, names):
    model = copy.deepcopy(model)
    for batch in batches:
        model(**batch).loss.backward()
    mods = dict(model.named_modules())
    return {n: mods[n].weight.grad / len(batches) for n in names}


def test_loraga_factors_equal_the_hand_gradient_svd_and_residual_restores_w():
    batches = lm_batches()
    model = tiny_llama(seed=1)
    names = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj"]
    grads = averaged_grads(model, batches, names)
    weights = {n: dict(model.named_modules())[n].weight.detach().clone() for n in names}
    ids = batches[0]["input_ids"]
    with torch.no_grad():
        logits0 = model(input_ids=ids).logits
    method = LoRAGA(rank=2, alpha=4.0, svd_method="exact", target_modules=["q_proj", "up_proj"],
                    grad_batches=len(batches))
    method.validate(model, ["q_proj", "up_proj"])
    peft_model = method.prepare(model, ["q_proj", "up_proj"], calibration=lambda: iter(batches))
    s = method.scaling
    for name in names:
        layer = dict(peft_model.named_modules())[f"base_model.model.{name}"]
        a0, b0 = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
        u, _, vh = torch.linalg.svd(grads[name], full_matrices=False)
        factor = grads[name].shape[0] ** 0.25 / 16**0.5
        torch.testing.assert_close(a0, vh[:2] * factor, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(b0, u[:, 2:4] * factor, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(layer.get_base_layer().weight + s * b0 @ a0, weights[name], atol=1e-6, rtol=1e-5)
        assert (layer.get_base_layer().weight - weights[name]).abs().max() > 1e-3  # W really was replaced
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, logits0, atol=1e-5, rtol=1e-4)


def test_loraga_saved_adapter_applies_to_the_original_weights(tmp_path):
    from peft import PeftModel

    batches = lm_batches()
    method = LoRAGA(rank=2, alpha=4.0, grad_batches=len(batches))
    model = method.prepare(tiny_llama(seed=1), ["q_proj"], calibration=lambda: iter(batches))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        layer.lora_B["default"].weight.add_(0.01)  # pretend training moved the factors
    ids = batches[0]["input_ids"]
    with torch.no_grad():
        trained = model(input_ids=ids).logits
    method.save(model, tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(seed=1), str(tmp_path))  # a fresh, un-residualised base
    assert loaded.peft_config["default"].r == 4  # [B | −B0], [A ; A0]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, trained, atol=1e-5, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:Full backward hook")  # raised inside PEFT's gradient estimation
def test_loraga_reference_differs_from_peft_as_documented():
    from peft import LoraGAConfig, preprocess_loraga

    batches = lm_batches()
    ours_model, peft_model = tiny_llama(seed=1), tiny_llama(seed=1)
    ours = LoRAGA(rank=2, alpha=4.0, grad_batches=len(batches)).prepare(ours_model, ["v_proj"],
                                                                        calibration=lambda: iter(batches))
    config = LoraConfig(r=2, lora_alpha=4.0, target_modules=["v_proj"], init_lora_weights="lora_ga",
                        lora_ga_config=LoraGAConfig(direction="ArB2r", scale="stable", stable_gamma=16))

    def train_step():
        for batch in batches:
            peft_model(**batch).loss.backward()

    preprocess_loraga(peft_model, config, train_step)
    theirs = get_peft_model(peft_model, config)
    name = "base_model.model.model.layers.0.self_attn.v_proj"
    grad = averaged_grads(tiny_llama(seed=1), batches, [name.removeprefix("base_model.model.")])
    sing = torch.linalg.svdvals(next(iter(grad.values())))[2:4]
    mine, peft_layer = dict(ours.named_modules())[name], dict(theirs.named_modules())[name]
    factor = 32**0.25 / 4
    a_ours, b_ours = mine.lora_A["default"].weight.detach(), mine.lora_B["default"].weight.detach()
    a_peft, b_peft = peft_layer.lora_A["default"].weight.detach(), peft_layer.lora_B["default"].weight.detach()
    # Same directions (up to the sign of each singular vector) ...
    for x, y in ((a_ours, a_peft), (b_ours.T, b_peft.T)):
        cos = (torch.nn.functional.normalize(x, dim=1) * torch.nn.functional.normalize(y, dim=1)).sum(1).abs()
        assert (cos > 0.999).all()
    # ... but the reference scales both factors by n^{1/4}/√γ, PEFT only B and B also by the singular values.
    torch.testing.assert_close(a_ours.norm(dim=1), torch.full((2,), factor), rtol=1e-4, atol=0)
    torch.testing.assert_close(a_peft.norm(dim=1), torch.ones(2), rtol=1e-4, atol=0)
    torch.testing.assert_close(b_ours.norm(dim=0), torch.full((2,), factor), rtol=1e-4, atol=0)
    torch.testing.assert_close(b_peft.norm(dim=0), factor * sing, rtol=1e-3, atol=0)
    # Hence the initial products differ in size by ‖S[r:2r]‖ / (√r·n^{1/4}/√γ).
    ratio = (b_peft @ a_peft).norm() / (b_ours @ a_ours).norm()
    torch.testing.assert_close(ratio, sing.norm() / (2**0.5 * factor), rtol=1e-3, atol=0)
    assert ratio < 0.5


# ------------------------------------------------------------------------------------------------ HF Trainer
@pytest.mark.parametrize("name", ["lora_ga", "lora_pro", "scaled_adamw", "altlora"])
def test_method_trains_inside_the_hf_trainer(name, tmp_path):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    cfg = OmegaConf.merge({"rank": 4, "alpha": 8}, {"m": OmegaConf.load(f"conf/method/{name}.yaml")})
    method = instantiate(cfg.m)
    assert method.name == name
    batches = lm_batches(n=4)
    rows = [{k: v[i] for k, v in batch.items()} for batch in batches for i in range(len(batch["input_ids"]))]
    if name == "lora_ga":  # the YAML asks for 64 calibration batches; these 4 are all there is
        method.grad_batches = len(batches)
    model = tiny_llama(seed=2)
    method.validate(model, LLAMA_TARGETS)
    model = method.prepare(model, LLAMA_TARGETS, calibration=lambda: iter(batches))

    def mean_loss():
        with torch.no_grad():
            return sum(model(**b).loss.item() for b in batches) / len(batches)

    lrs = []

    class RecordLr(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            lrs.append([g["lr"] for g in optimizer.param_groups])

    # AltLoRA has no second moment (SGD-like step sizes); the others are Adam-normalised.
    lr = {"lora_pro": 2e-3, "scaled_adamw": 3e-3, "altlora": 0.2}.get(name, 1e-2)
    optimizer = method.build_optimizer(model, lr, 0.0)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=10,
                             per_device_train_batch_size=4, learning_rate=lr, lr_scheduler_type="linear",
                             save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0)
    before = mean_loss()
    trainer = Trainer(model=model, args=args, train_dataset=rows, optimizers=(optimizer, None),
                      callbacks=[RecordLr(), *method.callbacks()])
    trainer.train()
    after = mean_loss()
    assert after < before - 0.05, (before, after)
    if optimizer is not None:
        # The Trainer's linear schedule drives every param group of our optimizer: lr_k = lr·(1 − k/10).
        assert len(lrs) == 10
        for k, row in enumerate(lrs, start=1):
            assert row == pytest.approx([lr * (1 - k / 10)] * len(row))
        assert trainer.optimizer.optimizer is optimizer


def test_altlora_resumes_exactly_from_a_trainer_checkpoint(tmp_path):
    """AltLoRA keeps the most state (moments, reference factors, phase): a resumed run must match a straight one."""
    from transformers import Trainer, TrainingArguments

    batches = lm_batches(n=4)
    rows = [{k: v[i] for k, v in batch.items()} for batch in batches for i in range(len(batch["input_ids"]))]

    def run(out, max_steps, resume=None):
        method = AltLoRA(rank=4, alpha=8.0)
        model = method.prepare(tiny_llama(seed=2), LLAMA_TARGETS)
        args = TrainingArguments(output_dir=str(out), use_cpu=True, report_to=[], max_steps=max_steps,
                                 per_device_train_batch_size=4, learning_rate=0.2, lr_scheduler_type="constant",
                                 save_strategy="steps", save_steps=3, logging_strategy="no", disable_tqdm=True, seed=0)
        optimizer = method.build_optimizer(model, 0.2, 0.0)
        trainer = Trainer(model=model, args=args, train_dataset=rows, optimizers=(optimizer, None))
        trainer.train(resume_from_checkpoint=resume)
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}

    straight = run(tmp_path / "straight", 5)
    run(tmp_path / "split", 3)  # stops after an odd step: the resumed run must start in an A-phase
    resumed = run(tmp_path / "split", 5, resume=str(tmp_path / "split" / "checkpoint-3"))
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------ config errors
@pytest.mark.parametrize(
    "method, fragment",
    [
        (ScaledAdamWLoRA(rank=2, damping=-1.0), "method.damping=-1.0"),
        (ScaledAdamWLoRA(rank=2, precondition_order="after"), "precondition_order='after'"),
        (ScaledAdamWLoRA(rank=2, beta1=1.0), "method.beta1=1.0"),
        (LoRAPro(rank=2, x_choice="min_norm"), "x_choice='min_norm'"),
        (AltLoRA(rank=2, alter_freq=0), "alter_freq=0"),
        (AltLoRA(rank=2, variant="altlora++"), "variant='altlora++'"),
        (LoRAGA(rank=2, direction="BrAr"), "direction='BrAr'"),
        (LoRAGA(rank=2, scale="weightS"), "scale='weightS'"),
        (LoRAGA(rank=2, grad_batches=0), "grad_batches=0"),
        (LoRAGA(rank=2, grad_batch_size=0), "grad_batch_size=0"),
        (LoRAGA(rank=20), "valid ranks are 1..16"),
    ],
)
def test_bad_options_raise_config_error_naming_them(method, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace("+", r"\+").replace(".", r"\.")):
        method.validate(tiny_mlp(), ["fc2"])


def test_loraga_without_calibration_is_a_config_error():
    with pytest.raises(ConfigError, match="calibration"):
        LoRAGA(rank=2).prepare(tiny_llama(), ["q_proj"], calibration=None)
