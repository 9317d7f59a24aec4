"""Search a run's settings with Optuna: one run folder per trial, the study in a database (resumable).

    python scripts/tune.py space.yaml --task-set asc,sed --preset board --trials 20
    python scripts/tune.py space.yaml --preset board --teacher runs/default --objective ar \\
        --reference asc=runs/single-asc --reference sed=runs/single-sed --max-macs 4.5e6 --trials 30
    python scripts/tune.py space.yaml --preset board --storage postgresql://me@db/keras_mtl --study-name board
                                                    # the same command on several machines: one study

space.yaml maps settings (dotted as a --config YAML nests them) to distributions (low/high[/step|log],
or choices):

    training.distill_weight.sed: {low: 0.1, high: 4.0, log: true}
    model.gru_units: {low: 32, high: 96, step: 16}
    model.channels: {choices: [[8, 16, 32, 64, 64], [8, 16, 32, 48, 64]]}
    weighting: {choices: [gradnorm, dwa]}

Every other option is train.py's and applies to every trial. The study folder (--output-dir, default
runs/tune-<space>) holds study.db (unless --storage), trials/<study>-NNNN/ (ordinary run folders),
trials.csv and best.yaml (the best settings as a --config YAML; <study>-trials.csv and <study>-best.yaml
for a --study-name other than the folder's). Rerunning the same command adds trials
to the study; with another space, objective or option it is refused (give another --study-name).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from keras_mtl.cli import common as cli
from keras_mtl.cli import train as train_cli

log = logging.getLogger(__name__)
PROG = "keras-mtl tune"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("space", help="YAML search space: dotted settings -> {low, high[, step | log]} or {choices}")
    p.add_argument("--trials", type=int, default=20, help="trials this command runs (default 20)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument(
        "--objective",
        default="mean",
        help="mean (the tasks' mean headline figure, maximised; default), TASK or TASK:METRIC (e.g. sed:psds1; "
        "maximised, minimised for *error_rate and *loss), ar (the largest relative drop against --reference "
        "runs, minimised)",
    )
    p.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="TASK=RUN",
        help="for --objective ar: a finished run of TASK to compare with (repeatable, one per task)",
    )
    p.add_argument("--max-macs", type=float, help="prune a trial whose network needs more MACs per second of audio")
    p.add_argument("--output-dir", help="study folder (default runs/tune-<space file's name>)")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///<study folder>/study.db)")
    p.add_argument("--study-name", help="study name in the storage (default: the study folder's name)")
    p.add_argument("--sampler-seed", type=int, help="seed of the TPE sampler (the trials' own: --seed)")
    train_cli.add_run_options(p, one_run=False)
    cli.add_logging_options(p)
    args = p.parse_args(argv)
    if args.trials < 1:
        p.error("--trials must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose, args.quiet)
    from keras_mtl.core.errors import ConfigError
    from keras_mtl.runs import config as run_config
    from keras_mtl.studies import tune
    from keras_mtl.tasks.registry import safe_name

    dimensions = tune.load_space(args.space)  # a bad space file: one error line before anything loads
    if args.distribute:
        raise ConfigError("--distribute trains one run on several devices or workers; tune runs one trial at a time")
    out = Path(args.output_dir or f"runs/tune-{Path(args.space).stem}")
    base = train_cli.config_data(args)
    config = run_config.build(base)
    base = {**base, "tasks": list(config.tasks)}
    tune.check_space(base, dimensions, args.space)
    references = {}
    for text in args.reference:
        task, sep, folder = text.partition("=")
        if not sep or not task.strip() or not folder:
            raise ConfigError(f"--reference {text!r}: expected TASK=RUN_FOLDER")
        if safe_name(task.strip()) not in config.tasks:
            raise ConfigError(
                f"--reference {text!r}: {task.strip()} is not one of the tasks ({', '.join(config.tasks)})"
            )
        references[safe_name(task.strip())] = folder
    task = args.objective.partition(":")[0]
    if args.objective not in ("mean", "ar") and safe_name(task) not in config.tasks:
        raise ConfigError(
            f"--objective {args.objective}: expected mean, ar, or TASK[:METRIC] of the tasks ({', '.join(config.tasks)})"
        )
    if args.objective == "ar" and set(references) != set(config.tasks):
        missing = ", ".join(t for t in config.tasks if t not in references)
        raise ConfigError(
            f"--objective ar compares every task with a single-task run: --reference TASK=RUN for {missing}"
        )
    search = tune.Search(
        base=base,
        dimensions=dimensions,
        out=out,
        objective=args.objective,
        references=tune.reference_metrics(references) if references else None,
        max_macs=args.max_macs,
        storage=args.storage,
        study_name=args.study_name,
        sampler_seed=args.sampler_seed,
    )
    result = tune.run_search(search, args.trials, args.timeout)
    best = result["best"]
    print(f"study folder: {out}  ({result['complete']} of {result['trials']} trials finished)")
    if best is not None:
        print(
            f"best: trial {best.number}, {args.objective} = {best.value:.4f}, settings in {out / search.report_name('best.yaml')}"
        )
    return 0
