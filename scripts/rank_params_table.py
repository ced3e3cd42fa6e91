"""Write the rank article's LoRA parameter-count table, computed exactly from the model's dimensions.

    python scripts/rank_params_table.py                 # → results/tables/rank_params.md   (make reproduce-rank-params)
    python scripts/rank_params_table.py --out-dir /tmp

Every count is r·(d_in + d_out) per adapted matrix (loralab.tables.rank_params) with the dimensions of the
model named by conf/experiment/rank_params.yaml (LLaMA-2-7B: loralab.planning.architectures.ARCHITECTURES, the
numbers of its config.json). Each cell the article prints (results/paper/rank_params.yaml) must match to the digit; the
script exits 1 otherwise, and also if the reference's stated dimensions differ from the model's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from loralab.io import atomic_write_text
from loralab.planning.architectures import ARCHITECTURES
from loralab.tables.grid import configured_paths
from loralab.tables.rank_params import article_table, render_rank_table
from loralab.tables.reference import REFERENCE_DIR, load_reference, reference_file

ROOT = Path(__file__).resolve().parents[1]


def model_config(model: str) -> dict[str, Any]:
    """The transformers-style config fields of a model on record (no weights, no network)."""
    arch = ARCHITECTURES[model]
    return {"hidden_size": arch.hidden, "intermediate_size": arch.intermediate, "num_attention_heads": arch.heads,
            "num_key_value_heads": arch.kv_heads, "head_dim": arch.head_dim, "num_hidden_layers": arch.layers}


def build(spec: dict[str, Any], reference_dir: Path = REFERENCE_DIR) -> tuple[str, list[str]]:
    """``(markdown, problems)``: the computed table beside the article's numbers, and every mismatch."""
    reference = load_reference(reference_file(spec["reference"], reference_dir))
    config = model_config(spec["model"])
    stated = {"targets": list(spec["targets"]), "budget": spec["budget"], **config}
    problems = [f"reference says {key} = {item['value']}, the spec / model {spec['model']} has {stated[key]}"
                for key, item in reference.hyperparameters.items()
                if key in stated and item.get("value") != stated[key]]
    table = article_table(config, spec["ranks"], spec["targets"], spec["budget"])
    lines = ["| scope | column | ours | paper | Δ |", "|---|---|---:|---:|---:|"]
    for row in reference.rows():
        for column in reference.columns:
            cell = reference.lookup(row, column)
            ours = table.get(row["scope"], {}).get(column)
            paper = None if cell is None or cell.value is None else int(cell.value)
            delta = "—" if ours is None or paper is None else f"{ours - paper:+d}"
            if paper is not None and ours != paper:
                problems.append(f"{row['scope']} / {column}: computed {ours}, article {paper}")
            lines.append(f"| {row['scope']} | {column} | {'—' if ours is None else f'{ours:,}'} | "
                         f"{'—' if paper is None else f'{paper:,}'} | {delta} |")
    text = "\n".join([
        f"# {reference.title}", "",
        f"Source: {reference.paper}. Computed from {spec['model']}'s dimensions (r·(d_in + d_out) per adapted "
        f"matrix); '—' in the paper column marks cells the article's available text does not show.", "",
        render_rank_table(config, spec["ranks"], spec["targets"], spec["budget"]),
        "Against the article:", "", *lines, "",
        "All published cells match to the digit." if not problems else f"{len(problems)} mismatch(es).",
    ]) + "\n"
    return text, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=None, help="where the table goes (default: paths.tables_dir)")
    parser.add_argument("overrides", nargs="*", help="paths overrides, e.g. paths.results_dir=/scratch/results")
    args = parser.parse_args(argv)
    paths = configured_paths(args.overrides, ROOT / "conf")
    spec = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "experiment" / "rank_params.yaml").table)
    assert isinstance(spec, dict)
    text, problems = build(spec, Path(paths.reference_dir))
    out = (args.out_dir or Path(paths.tables_dir)) / f"{spec['name']}.md"
    atomic_write_text(out, text)
    print(text)
    print(f"written: {out}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
