"""The method contract: what the planner, the overhead benchmark and the run hash know of a method comes from the
method itself (``loralab.methods.base.Method``), and nothing outside ``methods/`` branches on a method's name.

``tests/fixtures/method_contract/baseline.json`` holds the planner's and the FLOP model's numbers and the run
hashes of every method, computed (by ``capture.py`` there) on the code that still branched on method names; the
hooks must reproduce them exactly.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from loralab.benchmarking import flops
from loralab.benchmarking.config import LLAMA3_8B
from loralab.benchmarking.trainees import method_node
from loralab.instantiate import build
from loralab.methods.base import Method, effective_config
from loralab.rundir import config_hash
from loralab.planning import plan
from loralab.tables.grid import compose

ROOT = Path(__file__).resolve().parents[1]
BASELINE = json.loads((ROOT / "tests" / "fixtures" / "method_contract" / "baseline.json").read_text())
METHOD_NAMES = sorted(yaml.safe_load(p.read_text())["name"] for p in (ROOT / "conf" / "method").glob("*.yaml"))
BASELINE_METHODS = sorted({key.split("/")[1] for key in BASELINE["hash"]})
PLAN_CELLS = {
    "llama3_8b_metamathqa_r32": ("experiment=sds_table6", "model=llama3_8b", "dataset=metamathqa", "rank=32"),
    "vit_base_cars_r32": ("experiment=sds_table3", "model=vit_base", "dataset=cars", "rank=32"),
    "deberta_mrpc_r8": ("experiment=loram_table2", "dataset=glue_mrpc", "rank=8"),
}
CELLS = {"embedded_default": (), **PLAN_CELLS}


def bench_method(name: str, rank: int) -> Method:
    node, _ = method_node(name)
    return build(node, rank=rank, alpha=16.0, _convert_="all")


# ------------------------------------------------------------------------------------------ numbers unchanged
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_run_hashes_of_every_method_are_unchanged(cell: str) -> None:
    got = {m: config_hash(compose([*CELLS[cell], f"method={m}", "progress=false"]), processes=1)
           for m in BASELINE_METHODS}
    assert got == {m: BASELINE["hash"][f"{cell}/{m}"] for m in BASELINE_METHODS}


def _saved_params(cfg) -> int:
    """Parameters of the model's trained heads (``modules_to_save``)."""
    arch = plan.ARCHITECTURES[str(cfg.model.name)]
    trained = plan.trainable_params(arch, build(cfg.method, _convert_="all"), plan._targets(cfg),
                                    plan._num_labels(cfg), [str(m) for m in cfg.model.get("modules_to_save") or []])
    adapter = plan.per_layer_cost(arch, plan._targets(cfg), lambda a, b: cfg.rank * (a + b))
    return trained[0] - int(adapter)


@pytest.mark.parametrize("cell", sorted(PLAN_CELLS))
def test_planner_numbers_of_every_method_are_unchanged(cell: str) -> None:
    throughput = plan.calibrate().throughput
    for method in BASELINE_METHODS:
        cfg = compose([*PLAN_CELLS[cell], f"method={method}", "progress=false"])
        est = plan.estimate_cell(cfg, [], throughput)
        expected = json.loads(json.dumps(BASELINE["plan"][f"{cell}/{method}"]))
        if method == "sds_lora" and cfg.model.get("modules_to_save"):
            # the Q_A/Q_B buffers have the shapes of A and B only: the trained heads have none (the old count
            # took 4 B per trainable parameter, heads included)
            expected["memory"]["method_extra"] -= 4.0 * _saved_params(cfg)
        got = {"total_params": est.total_params, "trainable_params": est.trainable_params, "memory": est.memory,
               "gpus": est.gpus, "train_flops": est.train_flops, "train_hours": est.train_hours}
        assert json.loads(json.dumps(got)) == expected, method


def test_flop_model_of_every_method_is_unchanged() -> None:
    for method in BASELINE_METHODS:
        for rank in (8, 32):
            m = bench_method(method, rank)
            expected = BASELINE["flops"][f"{method}/r{rank}"]
            if expected is None:
                assert not flops.supports(m), method
                continue
            assert flops.supports(m), method
            assert flops.step_flops(LLAMA3_8B, m).as_dict() == expected["step"], method
            assert flops.step_flops(LLAMA3_8B, m, ("q_proj", "v_proj")).as_dict() == expected["step_qv"], method
    assert flops.periodic_flops(LLAMA3_8B, bench_method("sds_lora", 32)) == BASELINE["flops"]["refresh/r32"]


# --------------------------------------------------------------------------------- no branches on names
NAME_TEST = re.compile(
    r"""(?:==|!=)\s*(?P<q1>['"])(?P<a>[a-z0-9_]+)(?P=q1)"""           # x == "lora"
    r"""|(?P<q2>['"])(?P<b>[a-z0-9_]+)(?P=q2)\s*(?:==|!=|\bnot\s+in\b|\bin\b)"""  # "lora" == x, "lora" in x
    r"""|\bin\s*[(\[{](?P<c>[^)\]}]*)[)\]}]"""                       # x in ("lora", ...)
    r"""|\bcase\s+(?P<q3>['"])(?P<d>[a-z0-9_]+)(?P=q3)""")          # case "lora":
QUOTED = re.compile(r"""['"]([a-z0-9_]+)['"]""")


def name_branches(root: Path, names: set[str]) -> list[str]:
    """``path:line: code`` of every comparison or membership test against a method-name literal under ``root``
    outside ``methods/``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if "methods" in path.relative_to(root).parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for match in NAME_TEST.finditer(code):
                literals = {match.group(g) for g in ("a", "b", "d") if match.group(g)}
                if match.group("c") and not re.search(r"\bfor\b[^=]*$", code[:match.start()]):  # not a for loop
                    literals |= set(QUOTED.findall(match.group("c")))
                if literals & names:
                    found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
                    break
    return found


def test_nothing_outside_methods_branches_on_a_method_name() -> None:
    found = name_branches(ROOT / "src" / "loralab", set(METHOD_NAMES))
    assert not found, "knowledge of a method belongs in its class (loralab.methods):\n" + "\n".join(found)


def test_the_name_check_sees_each_form(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text('if m == "lora":\n    pass\nif m in ("x", "dora"):\n    pass\n'
                                   'ok = results["lora"]\nif "sds_lora" in trainees:\n    pass\n'
                                   'match m:\n    case "pissa":\n        pass\nz = m != "lora"  # x\n'
                                   'for m in ("lora", "dora"):\n    pass\n')
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "b.py").write_text('if m == "lora":\n    pass\n')
    assert [f.split(":")[1] for f in name_branches(tmp_path, {"lora", "dora", "sds_lora", "pissa"})] == \
        ["1", "3", "6", "9", "11"]


# ----------------------------------------------------------------------------------------- defaults once
def test_effective_config_adds_exactly_the_dataclass_defaults() -> None:
    node = yaml.safe_load((ROOT / "conf" / "method" / "scaled_adamw.yaml").read_text())
    node.update(rank=8, alpha=16)
    full = effective_config(node)
    assert full["beta1"] == 0.9 and full["damping"] == 1e-6
    assert effective_config({**node, "damping": 1e-2})["damping"] == 1e-2
    assert "use_dora" not in full and "preserves_init" not in full


def test_method_has_no_extra_field() -> None:
    assert not hasattr(Method(), "extra")


# ------------------------------------------------------------------------------------------- hooks documented
COST_HOOKS = ("trainable_params", "token_flops", "step_flops", "periodic_flops", "extra_memory_bytes",
              "shared_memory_bytes", "init_memory_bytes")


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_cost_override_cites_its_page(name: str) -> None:
    """A method that states a cost other than LoRA's says where the formula comes from on its page."""
    _, cls = method_node(name)
    overridden = [h for h in COST_HOOKS if getattr(cls, h) is not getattr(Method, h)]
    if cls.trains_base_weights:
        overridden.append("trains_base_weights")
    page = (ROOT / "docs" / "methods" / f"{name}.md").read_text(encoding="utf-8")
    if overridden:
        assert "\n## Cost model\n" in page, f"{name} overrides {overridden}: docs/methods/{name}.md needs a Cost model"


def test_vera_hooks_match_what_peft_builds() -> None:
    """VeRA's trainable vectors and its shared projections, as PEFT allocates them on a tiny Llama."""
    from loralab.methods.base import count_trainable, matching_linears
    from loralab.methods.vera import VeRA
    from loralab.models.tiny import tiny_llama

    base, targets = tiny_llama(seed=0), ["q_proj", "v_proj", "up_proj", "down_proj"]
    shapes = [(m.in_features, m.out_features) for m in matching_linears(base, targets).values()]
    method = VeRA(rank=4)
    model = method.prepare(base, targets)
    assert count_trainable(model) == sum(method.trainable_params(a, b, 4) for a, b in shapes)
    shared = {id(t): t for n, t in model.named_buffers() if "vera_A" in n or "vera_B" in n}
    assert sum(4 * t.numel() for t in shared.values()) == method.shared_memory_bytes(shapes, 4)
