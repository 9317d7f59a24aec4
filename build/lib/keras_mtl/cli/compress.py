"""Compress a trained multi-task run: Lottery Ticket pruning, LT4REC sparse sharing, or QAT.

    python scripts/compress.py runs/<run> --method lth --target-params 52600
    python scripts/compress.py runs/<run> --method lt4rec --target-params 52600 --rate 0.2 --epochs 10
    python scripts/compress.py runs/<run> --method qat --epochs 2

LTH and LT4REC retrain the run's network from fresh initial weights (the run's seed) in rounds of
--epochs each, pruning --rate of the surviving weights per round until --target-params non-zero
parameters remain; QAT fine-tunes the trained network and exports it to int8 beside the run's PTQ.
Writes a run folder (default RUN_DIR/compress-<method>): config.yaml, model.keras, history.csv (one
row per round), metrics.json (model.params = non-zero parameters), masks.npz, rounds.png; QAT also
export/ and ptq-export/.
"""

from __future__ import annotations

import argparse
import logging

from keras_mtl.cli import common as cli
from keras_mtl.compression.compress import CompressionSettings, compress_run

log = logging.getLogger(__name__)
PROG = "keras-mtl compress"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished run folder (config.yaml, metrics.json, model.keras)")
    p.add_argument("--method", required=True, choices=["lth", "lt4rec", "qat"])
    p.add_argument("--target-params", type=int, help="non-zero parameters to prune to (default: half the model's)")
    p.add_argument(
        "--rate", type=float, default=0.2, help="fraction of surviving weights pruned per round (default 0.2)"
    )
    p.add_argument(
        "--epochs", type=int, help="epochs per round (default: the run's); QAT: fine-tuning epochs (default 2)"
    )
    p.add_argument(
        "--rewind-epoch",
        type=int,
        default=0,
        help="LTH: rewind survivors to their values after this many epochs of the first round (default 0: initial)",
    )
    p.add_argument("--output-dir", help="the compressed run folder (default RUN_DIR/compress-METHOD)")
    p.add_argument(
        "--max-eval-clips", type=int, help="QAT: evaluate the int8 exports on at most this many test clips per task"
    )
    p.add_argument(
        "--calibration-clips", type=int, default=64, help="QAT: training clips per task calibrating the int8 exports"
    )
    cli.add_logging_options(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose, args.quiet)
    from keras_mtl.core.errors import ConfigError

    settings = CompressionSettings(args.method, args.target_params, args.rate, args.epochs, args.rewind_epoch)
    if args.calibration_clips < 1:
        raise ConfigError("--calibration-clips must be at least 1")
    options = (
        {"max_eval_clips": args.max_eval_clips, "calibration_clips": args.calibration_clips}
        if args.method == "qat"
        else {}
    )
    metrics = compress_run(args.run_dir, settings, args.output_dir, **options)
    print(
        f"{args.method.upper()}: {metrics['model']['params']:,} parameters"
        f"{' non-zero of ' + format(metrics['model']['dense_params'], ',') if 'dense_params' in metrics['model'] else ''}"
    )
    for task, result in metrics["tasks"].items():
        h = result["headline"]
        print(f"{task}: {h['name']} {h['value']:.4f}" if h["value"] is not None else f"{task}: {h['name']} undefined")
    for task, result in metrics["compression"].get("int8", {}).items():
        print(
            f"{task}: {result['headline']} float {result['float']:.4f}  PTQ int8 {result['ptq_int8_streamed']:.4f}  "
            f"QAT float {result['qat_float']:.4f}  QAT int8 {result['qat_int8_streamed']:.4f}"
        )
    print(f"run folder: {metrics['output_dir']}")
    return 0
