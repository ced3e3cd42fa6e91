"""Choose each row's learning rate of a table by its declared proxy and write it as a TUNED config entry.

    python scripts/tune_lr.py --experiment sds_table2                       # every row of SDS-LoRA Table 2
    python scripts/tune_lr.py --experiment sds_table2 model=llama3_8b       # overrides narrow it as with run.py -m
    python scripts/tune_lr.py --experiment sds_table2 --dry-run             # the rows and proxy runs; nothing run
    make tune-lr EXPERIMENT=sds_table2 ARGS="model=llama3_8b"

The proxy (grid, extension, step budget, train/held-out subset, seed) is the experiment's ``tune_lr`` block;
each row is tuned at every rank it is swept at. The rule and the written entry are documented in
loralab.tuning. Proxy runs are ordinary runs
(``tune=lr_proxy proxy.lr=<lr>``) under <results>/tune/runs: finished ones are reused, unfinished ones resume.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hydra.errors import HydraException

from loralab.errors import LoralabError
from loralab.tables.grid import CONF_DIR
from loralab.tuning.tune import proxy_overrides, tune_cells, tune_experiment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", required=True, help="a conf/experiment/<name>.yaml with a tune_lr block")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the TUNED entries go (default: conf/tuned_lr, which runs compose)")
    parser.add_argument("--dry-run", action="store_true", help="list the rows and their proxy runs; run nothing")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for python run.py -m")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.dry_run:
            spec, cells = tune_cells(args.experiment, args.overrides)
            print(f"{len(cells)} rate(s) to tune × grid {list(spec.grid)} (+ up to {spec.extend} past an edge); "
                  f"proxy budget {spec.budget()}")
            for cell in cells:
                print(f"  {cell.describe()}: python run.py {' '.join(proxy_overrides(cell, spec.grid[0]))}")
            return 0
        done = tune_experiment(args.experiment, args.overrides, CONF_DIR, args.out)
    except (LoralabError, HydraException) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("| sweep | model | method | data set | rank | held-out loss per lr | TUNED lr | entry |")
    print("|---|---|---|---|---|---|---|---|")
    for selection, path in done:
        c = selection.cell
        losses = ", ".join(f"{r.lr:g}: {r.heldout_loss:.4g}" for r in selection.results)
        edge = f" ({selection.edge} edge)" if selection.edge else ""
        print(f"| {c.sweep} | {c.model} | {c.method} | {c.dataset} | {c.rank} | {losses} | {selection.lr:g}{edge} "
              f"| {path} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
