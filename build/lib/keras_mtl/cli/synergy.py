"""Hierarchical multi-task learning by task synergy (seed 001): single-task models, the pairwise
shared-depth sweep and its AR table, the synthesised tree, and the tree's model against the
independent, flat and other split models.

    python scripts/synergy.py --tasks gc,ac,scr,vad --threshold 2.0
    python scripts/synergy.py --tasks gc,ac,scr,vad --shard 0/4      # on four machines or shells ...
    python scripts/synergy.py --tasks gc,ac,scr,vad --merge          # ... then once, when all are done
    python scripts/synergy.py --tasks gc,ac,scr,vad --merge --compress lth,lt4rec   # + the pruning baselines

Writes <out>/runs/<job>/ (one ordinary run folder per model; a finished one is not trained again),
tree.json, results.json, tables.md, ar.csv, models.csv, graph.png and tree.png.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from keras_mtl.cli import common as cli

log = logging.getLogger(__name__)
PROG = "keras-mtl synergy"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="gc,ac,scr,vad", help="comma-separated tasks (default gc,ac,scr,vad)")
    p.add_argument("--threshold", type=float, default=2.0, help="AR threshold Q in percent (default 2.0)")
    p.add_argument("--depths", default="4,5,6,7,8", help="shared depths k of the pairwise sweep (default 4..8)")
    p.add_argument(
        "--preset",
        default="seed001",
        help=f"the template's preset: {', '.join(cli.preset_names())} (default seed001: 8 layers)",
    )
    p.add_argument("--config", help="YAML overriding the preset for every model")
    p.add_argument("--epochs", type=int, help="epochs per model")
    p.add_argument("--data-root", action="append", help="as in train.py: DIR, or task=DIR (repeatable)")
    p.add_argument("--output-dir", help="experiment folder (default runs/synergy-<tasks>)")
    p.add_argument("--shard", metavar="I/N", help="train only the I-th of N shares of stages 1-2, then stop")
    p.add_argument(
        "--merge", action="store_true", help="stages 1-2 are done (by shards): synthesise, run stage 4, tabulate"
    )
    p.add_argument(
        "--compress",
        default="",
        metavar="lth,lt4rec",
        help="also prune the largest flat model to the tree's size with these methods (Table 4's LTH / LT4REC rows)",
    )
    p.add_argument(
        "--compress-rate",
        type=float,
        default=0.2,
        help="fraction of surviving weights pruned per round by --compress (default 0.2)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="check the settings and list the stage 1-2 runs; train nothing"
    )
    cli.add_logging_options(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose, args.quiet)
    from keras_mtl.core.errors import ConfigError
    from keras_mtl.studies import synergy

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        depths = [int(k) for k in args.depths.split(",") if k.strip()]
    except ValueError:
        raise ConfigError(f"--depths {args.depths!r}: expected comma-separated integers") from None
    if args.merge and args.shard:
        raise ConfigError("--merge assembles the shards' runs: give it without --shard")
    base = cli.base_config(args.preset, args.config, args.epochs, args.data_root)
    out = Path(args.output_dir or f"runs/synergy-{'-'.join(tasks)}")
    summary = synergy.run_synergy(
        tasks,
        depths,
        args.threshold,
        base,
        out,
        synergy.parse_shard(args.shard),
        merge=args.merge,
        dry_run=args.dry_run,
        compress=[m.strip() for m in args.compress.split(",") if m.strip()],
        compress_rate=args.compress_rate,
    )
    if summary is not None:
        print((out / "tables.md").read_text())
        print(f"synergy folder: {out}")
    return 0
