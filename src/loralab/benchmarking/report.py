"""The benchmark's report: ratios to LoRA, the targets, the machine description, and the JSON/Markdown files."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from loralab.io import atomic_write_json, atomic_write_text


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU/GPU, threads, load, platform and package versions."""
    from loralab.provenance import hardware, package_versions

    info = hardware()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        info["cpu_model"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu_model"] = platform.processor()
    info["logical_cpus"] = os.cpu_count()
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    info["python"] = platform.python_version()
    info["packages"] = {k: v for k, v in package_versions().items()
                        if k in ("torch", "transformers", "peft", "accelerate")}
    return info


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def add_ratios(report: dict[str, Any]) -> None:
    """Every method's time, FLOP and memory ratios to LoRA, in place."""
    results = report["methods"]
    lora = results.get("lora", {})
    for entry in results.values():
        entry["time_ratio_to_lora"] = _ratio(entry["step_time_s"]["median"], lora.get("step_time_s", {}).get("median"))
        if "flop_model" in entry and "flop_model" in lora:
            entry["flop_model_ratio_to_lora"] = _ratio(entry["flop_model"]["total"], lora["flop_model"]["total"])
        if "implemented_matmul_flops" in entry and "implemented_matmul_flops" in lora:
            entry["implemented_flops_ratio_to_lora"] = _ratio(entry["implemented_matmul_flops"],
                                                              lora["implemented_matmul_flops"])
        for key, total in (("memory_accounted", "total"), ("memory_cuda_peak", "total"),
                           ("memory_rss", "peak_minus_baseline_bytes")):
            if key in entry and key in lora and total in entry[key] and total in lora[key]:
                entry[f"{key}_ratio_to_lora"] = _ratio(entry[key][total], lora[key][total])
        if "flop_model" in entry and entry["step_time_s"]["median"]:
            entry["achieved_model_gflops"] = entry["flop_model"]["total"] / entry["step_time_s"]["median"] / 1e9
    fm = report["flop_model_llama3_8b"]
    report["flop_model_llama3_8b"]["sds_lora_overhead"] = fm["sds_lora"]["total"] / fm["lora"]["total"] - 1.0


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets (reported, never asserted): value, limit, rule and whether it is met."""
    results, out = report["methods"], []
    sds = results.get("sds_lora")
    if sds and sds.get("paired_time_ratio_to_lora", {}).get("median") and sds.get("flop_model_ratio_to_lora"):
        bound = sds["flop_model_ratio_to_lora"] - 1.0
        out.append({"name": "SDS/LoRA step time", "value": sds["paired_time_ratio_to_lora"]["median"],
                    "limit": 1.0 + 1.5 * bound, "rule": "paired median ≤ 1 + 1.5 × FLOP-model overhead"})
    if sds:
        for key in ("memory_cuda_peak", "memory_accounted", "memory_rss"):
            ratio = sds.get(f"{key}_ratio_to_lora")
            if ratio is not None:
                out.append({"name": f"SDS/LoRA memory ({key.removeprefix('memory_')})", "value": ratio,
                            "limit": 1.005, "rule": "overhead ≤ 0.5 %"})
    for name, tax in report["framework_tax"].items():
        if tax.get("tax") is not None:
            out.append({"name": f"framework tax ({name})", "value": tax["tax"], "limit": 0.03, "rule": "≤ 3 %"})
    frac = report["sds"].get("amortised_refresh_fraction_of_step")
    if frac is not None:
        out.append({"name": "amortised SDS refresh", "value": frac, "limit": 0.005, "rule": "≤ 0.5 % of a step"})
    for t in out:
        t["met"] = bool(t["value"] <= t["limit"])
    return out


# ------------------------------------------------------------------------------------------------- output
def _mb(x: float | None) -> str:
    return "–" if x is None else f"{x / 2**20:.1f}"


def _x(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the per-method table, SDS-LoRA's refresh and memory, the framework tax, targets."""
    cfg, m = report["config"], report["machine"]
    s = cfg["shape"]
    peak = any("memory_cuda_peak" in e for e in report["methods"].values())
    lines = [
        "# Training-step overhead",
        "",
        f"Machine: {m.get('gpu') or m.get('cpu_model')} — {m.get('logical_cpus')} logical CPUs, torch threads "
        f"{m.get('cpu_threads')}, load average {m.get('load_average')}, {m.get('platform')}; "
        + ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items()) + ".",
        f"Model: Llama, hidden {s['hidden']}, intermediate {s['intermediate']}, {s['heads']} heads / {s['kv_heads']} "
        f"KV heads, {s['layers']} layers, vocab {s['vocab']}; batch {s['batch']} × seq {s['seq']}; "
        f"{cfg['device']} {cfg['dtype']}{' + bf16 autocast' if cfg['dtype'] == 'bfloat16' else ''}; rank "
        f"{cfg['rank']}, alpha {cfg['alpha']}; target modules {', '.join(cfg['targets'])}.",
        f"Timing: {cfg['steps']} interleaved rounds (median, p25–p75), after each method's warm-up; wall "
        f"{report['wall_s']} s.",
        "",
        "| method | step ms (p25–p75) | × LoRA, paired (p25–p75) | FLOP model × LoRA (lower bound) "
        "| issued matmul FLOPs × LoRA | model GFLOP/s | accounted MiB | × LoRA | peak RSS MiB | × LoRA |"
        + (" CUDA peak MiB | × LoRA |" if peak else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if peak else ""),
    ]
    for name, e in report["methods"].items():
        st = e["step_time_s"]
        rss = e.get("memory_rss", {})
        pr = e.get("paired_time_ratio_to_lora") or {}
        paired = f"{_x(pr.get('median'))} ({_x(pr.get('p25'))}–{_x(pr.get('p75'))})" if pr.get("median") else "–"
        row = (f"| {name} | {st['median'] * 1e3:.1f} ({st['p25'] * 1e3:.1f}–{st['p75'] * 1e3:.1f}) | "
               f"{paired} | {_x(e.get('flop_model_ratio_to_lora'))} | "
               f"{_x(e.get('implemented_flops_ratio_to_lora'))} | {_x(e.get('achieved_model_gflops'), 1)} | "
               f"{_mb(e['memory_accounted']['total'])} | {_x(e.get('memory_accounted_ratio_to_lora'), 4)} | "
               f"{_mb(rss.get('peak_minus_baseline_bytes'))} | {_x(e.get('memory_rss_ratio_to_lora'), 4)} |")
        if peak:
            row += (f" {_mb(e.get('memory_cuda_peak', {}).get('total'))} | "
                    f"{_x(e.get('memory_cuda_peak_ratio_to_lora'), 4)} |")
        lines.append(row)
    sds = report.get("sds") or {}
    if sds:
        lines += [
            "",
            f"SDS-LoRA refresh (all layers, via SDSCallback.on_step_end): {sds['refresh_s']['median'] * 1e3:.2f} ms "
            f"median; schedule rate {sds['refresh_rate_per_step']:.3f}/step → amortised "
            f"{sds['amortised_refresh_fraction_of_step'] * 100:.3f} % of an SDS step. Callback at a step without "
            f"refresh: {sds['callback_idle_s']['median'] * 1e6:.0f} µs. One-off transition (SVD "
            f"reparameterisation): {sds.get('transition_s', float('nan')) * 1e3:.1f} ms "
            f"({(sds.get('transition_fraction_of_step') or 0) * 100:.1f} % of one step).",
        ]
    if report["framework_tax"]:
        lines += ["", "| framework tax | Trainer step ms | bare loop ms | tax, paired median (p25–p75) "
                  "| Trainer − bare, ms | NonFiniteGuard ms/step |", "|---|---|---|---|---|---|"]
        for name, t in report["framework_tax"].items():
            pr, diff = t["paired_ratio"], t["paired_difference_s"]
            tax = (f"{(pr['median'] - 1) * 100:+.2f} % ({(pr['p25'] - 1) * 100:+.2f}…{(pr['p75'] - 1) * 100:+.2f})"
                   if pr.get("median") else "–")
            lines.append(f"| {name} | {t['trainer_step_s']['median'] * 1e3:.1f}"
                         f" | {t['bare_step_s']['median'] * 1e3:.1f} | {tax} | {diff['median'] * 1e3:+.1f}"
                         f" | {t['nonfinite_guard_s']['median'] * 1e3:.2f} |")
    kernels = sds.get("refresh_kernels")
    if kernels:
        acc = kernels["cholesky_qr2_accuracy"]
        names = ("per_layer", "batched_householder", "batched_cholesky_qr2")
        lines += ["", "Refresh kernels on this model's factors (median ms): " + ", ".join(
            f"{k} {kernels[k]['median'] * 1e3:.2f}" for k in names)
            + f" — training uses {kernels['training_uses']} here. CholeskyQR2 (candidate, fp32) on these factors: "
            f"max ‖QᵀQ − I‖ {acc['max_orthogonality_error']:.1e}, max distance to the Householder bases "
            f"{acc['max_distance_to_householder']:.1e}, largest factor condition number "
            f"{_x(acc['max_factor_condition_number'], 1)}."]
    mm = report.get("sds_memory_model", {})
    if "measured_accounted_difference" in mm.get("this_run", {}):
        run, big = mm["this_run"], mm["llama3_8b_bf16"]
        lines += ["", f"SDS-LoRA memory beyond LoRA by formula (fp32 bases Q_A, Q_B; one shared fused-factor scratch; "
                  f"minus LoRA's autocast copies of A and B): {_mb(run['total'])} MiB for this run (bases "
                  f"{_mb(run['bases'])}, scratch {_mb(run['scratch'])}), measured (accounted) "
                  f"{_mb(run['measured_accounted_difference'])} MiB. At LLaMA3-8B, 32 layers, bf16 autocast, batch "
                  f"4 × 512: {big['total'] / 1e9:.3f} GB = {big['fraction_of_paper_lora_peak'] * 100:.2f} % of the "
                  f"paper's 128.54 GB LoRA peak (paper: +0.62 GB, +0.48 %)."]
    lines += real_width_lines(report)
    fm = report["flop_model_llama3_8b"]
    lines += ["", f"FLOP model at full LLaMA3-8B (32 layers, batch 4 × 512, rank {cfg['rank']}): SDS/LoRA step "
              f"overhead lower bound {fm['sds_lora_overhead'] * 100:.2f} % (paper, H200 wall time: +4.35 % / +5.23 %).",
              "", "| target | value | limit | met |", "|---|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['name']} ({t['rule']}) | {t['value']:.4f} | {t['limit']:.4f} "
                     f"| {'yes' if t['met'] else 'no'} |")
    lines += ["", "Memory: *accounted* = parameters + buffers + persistent scratch + optimiser state + gradients + "
              "tensors saved for backward (distinct storages; no transient workspace); *peak RSS* = peak resident set "
              "during two training steps minus the RSS before the model was built, one fresh process per method (CPU "
              "only); "
              "*CUDA peak* = resident model/optimiser bytes + max_memory_allocated growth over one step. "
              "*Issued matmul FLOPs*: FlopCounterMode over one step (on CPU the SDPA kernel is not counted; the "
              "FLOP model column includes attention). *Model GFLOP/s*: FLOP-model work / median step time.", ""]
    return "\n".join(lines)


def real_width_lines(report: dict[str, Any]) -> list[str]:
    """The real-width paragraph (LLaMA3-8B layer shapes): measured ratios beside the formula and Table 6."""
    rw = report.get("real_width")
    if not rw:
        return []
    cfg, paper = report["config"], rw["paper_table6"]
    time = rw["time_ratio_paired"]
    peak = rw.get("memory_cuda_peak_ratio")
    big = rw["projection_llama3_8b_bf16"]
    s = cfg["shape"]
    where = ("LLaMA3-8B's real layer width" if rw["real_shapes"] else
             "the llama3_8b preset with overridden shapes (NOT LLaMA3-8B's width)")
    return ["", f"**At {where}** (hidden {s['hidden']}, MLP {s['intermediate']}, {s['heads']}/{s['kv_heads']} heads, "
            f"rank {cfg['rank']}, {rw['layers']} layer(s), {cfg['device']} {cfg['dtype']}): "
            f"SDS/LoRA step time {_x(time.get('median'))} (paired, p25–p75 {_x(time.get('p25'))}–"
            f"{_x(time.get('p75'))}) against the FLOP model's {_x(rw['flop_model_ratio'], 4)} for these layers; "
            f"memory (accounted) {_x(rw['memory_accounted_ratio'], 4)}"
            + (f", allocator peak {_x(peak, 4)}" if peak is not None else "")
            + f". SDS's extra memory measured {_mb(rw['measured_extra_bytes'])} MiB, by formula "
            f"{_mb(rw['formula_extra_bytes'])} MiB (plus a 1-byte flag per adapted module). The formula projected to "
            f"the full model (32 layers, bf16 autocast): +{big['total'] / 1e9:.3f} GB = "
            f"{big['fraction_of_paper_lora_peak'] * 100:.2f} % of the paper's LoRA peak. Paper, Table 6 (H200, whole "
            f"runs): time × {paper['metamathqa']['time']:.4f} / {paper['code_feedback']['time']:.4f}, memory × "
            f"{paper['metamathqa']['memory']:.4f} / {paper['code_feedback']['memory']:.4f} (MetaMathQA / "
            f"Code-Feedback). The ratios here are of {rw['layers']} layer(s) with a {s['vocab']}-token head: most of "
            "the frozen model, the head and the activations that dilute SDS's share in a full run are absent."]


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``overhead-<device>[-<label>].json`` and ``.md`` into ``out_dir`` (atomically); returns both paths."""
    tag = report["config"]["device"] + (f"-{report['config']['label']}" if report["config"].get("label") else "")
    return write_json_and_markdown(report, markdown(report), Path(out_dir) / f"overhead-{tag}")


def write_json_and_markdown(report: dict[str, Any], text: str, stem: Path) -> tuple[Path, Path]:
    """A benchmark's report as ``<stem>.json`` and its rendering as ``<stem>.md``, both atomically."""
    json_path, md_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")
    atomic_write_json(json_path, report)
    atomic_write_text(md_path, text)
    return json_path, md_path


def show_written(json_path: Path, md_path: Path) -> None:
    """What a benchmark script prints when done: the markdown report, then where both files are (stderr)."""
    import sys

    print(md_path.read_text(encoding="utf-8"))
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
