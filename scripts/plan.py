"""List a paper table's cells with an estimate of GPU memory and GPU-hours per cell and in total; run nothing.

    python scripts/plan.py --experiment sds_table1                  # every sweep feeding the table
    python scripts/plan.py --experiment sds_table1 model=llama3_8b  # overrides narrow the sweep as with run.py -m
    python scripts/plan.py --experiment sds_table1 --out results/plans/sds_table1.md
    python scripts/plan.py --calibration                            # only the Table 6 calibration
    python scripts/plan.py --experiment sds_table7 --sweeps         # the sweep names (used by the Makefile), after
                                                                    # checking every cell has a labelled lr
    python scripts/plan.py --experiment sds_table7 --tables         # the tables those sweeps write

The estimate (memory model, FLOP model, the assumed throughput and its calibration against SDS-LoRA Table 6)
is documented in loralab.planning.plan.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydra.errors import HydraException

from loralab.errors import LoralabError
from loralab.io import atomic_write_text
from loralab.lr_source import refusal, sweep_problems
from loralab.tables.grid import CONF_DIR, sweep_configs, sweeps_of, tables_of
from loralab.planning.plan import calibrate, plan, render_calibration, render_plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", help="name of a conf/experiment/<name>.yaml with a table block")
    parser.add_argument("--sweeps", action="store_true", help="print the experiments whose sweeps feed the table")
    parser.add_argument("--tables", action="store_true", help="print the experiments whose tables the sweeps fill")
    parser.add_argument("--calibration", action="store_true", help="print the throughput calibration only")
    parser.add_argument("--out", type=Path, help="also write the plan to this file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for python run.py -m")
    args = parser.parse_args(argv)
    if not args.experiment and not args.calibration:
        parser.error("--experiment is required (or --calibration)")
    try:
        if args.calibration:
            print(render_calibration(calibrate(CONF_DIR), CONF_DIR))
            return 0
        if args.sweeps:  # the Makefile runs these next: refuse first if any cell's learning rate is unlabelled
            cell_overrides = [o for o in args.overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
            problems = sweep_problems(sweep_configs(args.experiment, cell_overrides))
            if problems:
                print(f"error: {refusal(problems, f'experiment {args.experiment}')}", file=sys.stderr)
                return 2
        if args.sweeps or args.tables:
            print("\n".join(sweeps_of(args.experiment) if args.sweeps else tables_of(args.experiment)))
            return 0
        text = render_plan(plan(args.experiment, args.overrides))
    except (LoralabError, HydraException) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text, end="")
    if args.out:
        atomic_write_text(args.out, text)
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
