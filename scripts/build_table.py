"""Write a paper-shaped table from finished runs: ours | paper | Δ per cell, as Markdown and as an HTML report
(the table with links to the runs, their loss curves overlaid, score against trainable parameters and step time;
one self-contained file).

    python scripts/build_table.py --experiment embedded            # → results/tables/embedded.{md,html}
    python scripts/build_table.py --experiment sds_table2 paths.results_dir=/scratch/results
    python scripts/build_table.py --experiment sds_table2 trainer.max_steps=20   # the sweeps ran with overrides

Runs are read from ``paths.runs_dir``, the table written to ``paths.tables_dir`` and the paper's numbers read from
``paths.reference_dir`` (conf/paths/default.yaml; ``--runs`` and ``--out-dir`` override the first two).

The table shows the finished runs that are its experiment's cells (same config hash), composed with the same
Hydra overrides the sweeps ran with; an override of a swept key (model=llama3_8b) still shows the whole grid.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydra.errors import HydraException
from omegaconf import OmegaConf

from loralab.errors import LoralabError
from loralab.io import atomic_write_text
from loralab.reports.html import render_html
from loralab.tables.grid import configured_paths
from loralab.tables.tabulate import render_markdown, table_from_spec

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", required=True, help="name of a conf/experiment/<name>.yaml with a table block")
    parser.add_argument("--runs", type=Path, default=None, help="run directories (default: paths.runs_dir)")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the table goes (default: paths.tables_dir)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides the sweeps ran with, as for python run.py -m")
    args = parser.parse_args(argv)

    spec_file = ROOT / "conf" / "experiment" / f"{args.experiment}.yaml"
    if not spec_file.exists():
        valid = sorted(p.stem for p in spec_file.parent.glob("*.yaml"))
        print(f"error: no experiment {args.experiment!r}; valid: {valid}", file=sys.stderr)
        return 2
    spec = OmegaConf.to_container(OmegaConf.load(spec_file).table)
    try:
        paths = configured_paths(args.overrides, ROOT / "conf")
        table = table_from_spec(spec, args.runs or Path(paths.runs_dir), root=ROOT, overrides=args.overrides,
                                reference_dir=Path(paths.reference_dir))
    except (LoralabError, HydraException) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    markdown = render_markdown(table)
    out = (args.out_dir or Path(paths.tables_dir)) / f"{spec['name']}.md"
    report = out.with_suffix(".html")
    atomic_write_text(out, markdown)
    atomic_write_text(report, render_html(table, report))
    print(markdown)
    print(f"written: {out}\nreport:  {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
