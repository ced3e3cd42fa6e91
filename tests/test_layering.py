"""The import layering of docs/architecture.md: a module imports its own layer or a lower one, never a higher one.

Every ``import`` statement of src/loralab counts, wherever it stands: at the top of a module, inside a function
(a lazy import is still a dependency), under ``if TYPE_CHECKING``. A new top-level module or package must be
placed in a layer here before the suite passes.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "loralab"

# Top to bottom. Each name is a top-level module or package of loralab; "loralab" is the package's __init__.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("entry", frozenset({"export", "hydra_callbacks", "sweep_progress"})),
    ("recipe", frozenset({"runner", "tuning", "figures"})),
    ("components", frozenset({"training", "evaluation", "tables", "planning", "reports", "diagnostics",
                              "benchmarking", "tracking", "validation", "lr_source", "rundir"})),
    ("data", frozenset({"data"})),
    ("methods and models", frozenset({"methods", "models"})),
    ("base", frozenset({PACKAGE, "errors", "io", "instantiate", "checksums", "distributed",
                        "provenance", "markup", "synthetic"})),
)
RANK = {unit: rank for rank, (_, units) in enumerate(LAYERS) for unit in units}


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, src: Path = SRC) -> list[tuple[int, str]]:
    """(line, module) of every loralab import in a file; ``from loralab import x`` counts as ``loralab.x``."""
    name = module_name(path, src)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found += [(node.lineno, f"{module}.{alias.name}" if module == PACKAGE else module)
                      for alias in node.names]
    return sorted({(line, module) for line, module in found if module.split(".")[0] == PACKAGE})


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def source_files() -> list[Path]:
    return sorted((SRC / PACKAGE).rglob("*.py"))


def upward_imports(files: list[Path], src: Path = SRC) -> list[str]:
    problems = []
    for path in files:
        here = unit_of(module_name(path, src))
        for line, module in imported_modules(path, src):
            there = unit_of(module)
            if there in RANK and RANK[there] < RANK[here]:
                problems.append(f"{path.relative_to(src)}:{line}: {LAYERS[RANK[here]][0]} layer ({here}) imports "
                                f"{module}, of the higher {LAYERS[RANK[there]][0]} layer")
    return problems


def test_every_module_is_in_a_layer() -> None:
    units = {unit_of(module_name(path)) for path in source_files()}
    unplaced = sorted(units - RANK.keys())
    assert not unplaced, f"place these in a layer of tests/test_layering.py and docs/architecture.md: {unplaced}"


def test_no_module_imports_a_higher_layer() -> None:
    problems = upward_imports(source_files())
    assert not problems, "imports that run upward:\n" + "\n".join(problems)


@pytest.mark.parametrize("statement", [
    "from loralab.runner import run",
    "import loralab.runner",
    "from loralab import runner",
    "def lazy():\n    from loralab.evaluation.extraction import last_boxed\n",
    "from ..runner import run",
])
def test_the_check_sees_every_form_of_import(tmp_path: Path, statement: str) -> None:
    # A data module importing upward, written in each form the check must catch (the relative one resolves
    # from loralab/data/ two levels up to loralab/runner).
    fake_src = tmp_path / "src"
    (fake_src / PACKAGE / "data").mkdir(parents=True)
    module = fake_src / PACKAGE / "data" / "fake.py"
    module.write_text(statement + "\n", encoding="utf-8")
    assert len(upward_imports([module], fake_src)) == 1
