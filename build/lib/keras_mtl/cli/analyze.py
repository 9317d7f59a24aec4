"""Which tasks help each other (seed 004): measure every task's data and learning curve, train each
task alone, every pair with all layers shared and all tasks together, and relate the measurements
to the gain each task gets from each other one.

    python scripts/analyze_tasks.py --tasks asc,sed,scr,gc,ac,vad
    python scripts/analyze_tasks.py --tasks gc,ac,scr,vad --preset seed001 --reuse runs/synergy-gc-ac-scr-vad

Writes <out>/runs/<job>/ (ordinary run folders; finished ones are not trained again; --reuse takes
matching single-task and all-shared pair runs of a synergy folder), measurements.csv, gains.csv,
correlations.csv, regression.json, efficiency.csv, report.md, correlations.png, learning_curves.png.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from keras_mtl.cli import common as cli

log = logging.getLogger(__name__)
PROG = "keras-mtl analyze"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="asc,sed,scr,gc,ac,vad", help="comma-separated tasks (default: all six)")
    p.add_argument(
        "--preset",
        default="default",
        help=f"configuration of every run: {', '.join(cli.preset_names())} (default: default)",
    )
    p.add_argument("--config", help="YAML overriding the preset for every run")
    p.add_argument("--epochs", type=int, help="epochs per run")
    p.add_argument("--data-root", action="append", help="as in train.py: DIR, or task=DIR (repeatable)")
    p.add_argument("--reuse", help="a synergy folder whose matching runs are used instead of training")
    p.add_argument("--output-dir", help="report folder (default runs/analysis-<tasks>)")
    p.add_argument("--dry-run", action="store_true", help="list the runs to train or reuse; train nothing")
    cli.add_logging_options(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose, args.quiet)
    from keras_mtl.studies import analysis

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    base = cli.base_config(args.preset, args.config, args.epochs, args.data_root)
    out = Path(args.output_dir or f"runs/analysis-{'-'.join(tasks)}")
    summary = analysis.run_analysis(tasks, base, out, Path(args.reuse) if args.reuse else None, dry_run=args.dry_run)
    if summary is not None:
        print((out / "report.md").read_text())
        print(f"report folder: {out}")
    return 0
