"""Regenerate a paper's comparison table: one training run per row and seed, resumable.

    python scripts/experiment.py strategies --seeds 0,1,2      # seed 000 Table 3
    python scripts/experiment.py weighting                     # seed 003: fixed vs DWA vs MFL
    python scripts/experiment.py vae-data --seeds 0            # seed 002 Fig. 2: MTL-VAE by data types
    python scripts/experiment.py vae-encoder --seeds 0         # seed 002 Fig. 3: deterministic vs variational
    python scripts/experiment.py strategies --rows soft,hard --epochs 5 --output-dir runs/quick
    python scripts/experiment.py strategies --data-root asc=/data/TAU22 --data-root sed=/data/DESED

Rerunning the same command skips every finished row and rewrites table.md, results.json and the plots.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from keras_mtl.cli import common as cli

log = logging.getLogger(__name__)
PROG = "keras-mtl experiment"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "experiment",
        help="strategies (seed 000 Table 3), weighting (seed 003), vae-data or vae-encoder (seed 002), balancing or "
        "balancing-speech (task balancing methods), cross-corpus (issue 28), distill (issue 29)",
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--rows", help="only these rows (comma-separated names; see --dry-run)")
    p.add_argument(
        "--preset",
        help=f"built-in configuration the rows start from: {', '.join(cli.preset_names())} (default: the experiment's own)",
    )
    p.add_argument("--config", help="YAML overriding the preset for every row")
    p.add_argument("--epochs", type=int, help="epochs per run (per phase for FreezeMTL)")
    p.add_argument("--data-root", action="append", help="as in train.py: DIR, or task=DIR (repeatable)")
    p.add_argument("--output-dir", help="experiment folder (default runs/experiment-<name>)")
    p.add_argument("--dry-run", action="store_true", help="check every row's settings and list the runs; train nothing")
    cli.add_logging_options(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose, args.quiet)
    from keras_mtl.core.errors import ConfigError
    from keras_mtl.studies import experiments

    experiment = experiments.get_experiment(args.experiment)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    rows = experiments.select_rows(experiment, [r.strip() for r in (args.rows or "").split(",") if r.strip()])
    base = cli.base_config(args.preset or experiment.preset, args.config, args.epochs, args.data_root)
    out = Path(args.output_dir or f"runs/experiment-{experiment.name}")
    experiments.run_experiment(experiment, base, seeds, out, rows, dry_run=args.dry_run)
    if not args.dry_run:
        print((out / "table.md").read_text())
        print(f"experiment folder: {out}")
    return 0
