"""Re-evaluate a finished run folder on its tasks' test splits and rewrite its metrics.json.

    keras-mtl evaluate runs/<run>

Reads the run's config.yaml and model.keras, prepares its test splits as training did (the feature
cache is reused) and replaces the per-task metrics in metrics.json; the other run facts stay. Use it
after a failed evaluation, or after changing a metric.
"""

from __future__ import annotations

import argparse
import logging

from keras_mtl.cli import common as cli

log = logging.getLogger(__name__)
PROG = "keras-mtl evaluate"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run folder with config.yaml and model.keras")
    cli.add_logging_options(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose, args.quiet)
    from keras_mtl.core import reporting  # imports TensorFlow
    from keras_mtl.training.evaluate import evaluate_run

    metrics = evaluate_run(args.run_dir)
    print(reporting.results_table(metrics))
    return 0
