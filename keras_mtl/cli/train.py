"""Train a multi-task audio model and write a run folder.

python scripts/train.py --task-set asc,sed
python scripts/train.py --task-set asc --epochs 5 --output-dir runs/asc-only
python scripts/train.py --task-set asc,sed --data-root asc=/data/TAU22 --data-root sed=/data/dcase/dataset
python scripts/train.py --task-set asc,sed --strategy cross-hard
python scripts/train.py --task-set asc,sed --strategy freeze --order sed,asc
python scripts/train.py --task-set asc,sed --weighting dwa      # or mfl; --alpha 0.7 for fixed weights
python scripts/train.py --task-set asc,sed --dry-run
python scripts/train.py --preset seed002                         # MTL-VAE for SED (--model mtl-vae)
"""

from __future__ import annotations

import argparse
import logging

from keras_mtl.cli import common as cli
from keras_mtl.data.synth.chains import CORPORA_MODES

log = logging.getLogger(__name__)
PROG = "keras-mtl train"
# TensorFlow is imported inside main(): worker processes spawned for data synthesis
# re-import this module and must stay light.


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(p)
    cli.add_logging_options(p)
    args = p.parse_args(argv)
    if args.resume:
        defaults = vars(p.parse_args([]))
        given = [
            "--" + key.replace("_", "-")
            for key, value in vars(args).items()
            if key not in RESUME_KEEPS and value != defaults.get(key)
        ]
        if given:
            from keras_mtl.core.errors import ConfigError

            raise ConfigError(
                f"--resume continues {args.resume} with its own config.yaml: {', '.join(given)} cannot be changed "
                "there; start a new run (--config RUN/config.yaml with your changes) for other settings"
            )
    return args


def add_run_options(p: argparse.ArgumentParser, one_run: bool = True) -> None:
    """The options that make a run's configuration (``resolve_config``); with ``one_run``, also the run
    folder's own (--output-dir, --dry-run, --overwrite, --resume), which a search (``tune``) sets per trial."""
    p.add_argument(
        "--task-set",
        help="comma-separated tasks: asc, sed, scr, gc, ac, vad (or NAME from --task); "
        "default: the preset's, else asc,sed",
    )
    p.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="NAME=LEVEL:PATH[:seconds=S][:classes=A,B]",
        help="define a task, no code (NAME: any text). From a manifest: clip level (filename,label[,split] "
        "CSV) or frame level (filename,onset,offset,event_label[,split]), e.g. --task knock=clip:data/m.csv. "
        "Over a corpus folder with its own labels: LEVEL tau22, desed or speech_commands, e.g. "
        "--task office=desed:/data/office (weak/unlabelled splits and mean teacher kept). classes= fixes "
        "the label set and order; repeatable",
    )
    p.add_argument(
        "--strategy",
        default="soft",
        help="multi-task strategy: soft (default), hard, cross-soft, cross-hard, freeze (needs --order)",
    )
    p.add_argument("--order", help="freeze: the order tasks are trained and frozen in, e.g. sed,asc")
    p.add_argument(
        "--weighting",
        help="task balancing: auto (default: gradnorm for 2+ tasks of soft/cross-soft without --alpha, else fixed), "
        "fixed, dwa, mfl (loss weights per epoch); uncertainty, gradnorm, pcgrad, cagrad, famo (in every step, "
        "see keras_mtl.training.balancing)",
    )
    p.add_argument(
        "--batch-norm",
        help="batch statistics in training: calibrated (the default for 2+ tasks trained together: each task's "
        "batch its own, then the last quarter of the epochs with batch normalisation frozen at the statistics of "
        "the mixture of the tasks' batches, which inference uses), per-task (each task's batch its own "
        "throughout), joint (one set pooled over every task's batch in each step), renorm (Batch "
        "Renormalization)",
    )
    p.add_argument(
        "--alpha", type=float, help="loss weight of the first task (soft, cross-soft); the others share 1-alpha"
    )
    p.add_argument(
        "--mean-teacher",
        choices=("auto", "on", "off"),
        help="mean teacher for frame tasks with weak/unlabelled clips (default auto: when they exist)",
    )
    p.add_argument(
        "--architecture",
        "--model",
        dest="architecture",
        help="model family: mtl (default), cp_mobile, cp_mobile_rnn, georgiev_dnn, mtl-vae (SED)",
    )
    p.add_argument(
        "--preset",
        default="default",
        help=f"built-in configuration: {', '.join(cli.preset_names())} (default: default)",
    )
    p.add_argument("--config", help="YAML file overriding the preset (e.g. a run folder's config.yaml)")
    p.add_argument(
        "--teacher",
        action="append",
        metavar="RUN",
        help="knowledge distillation from a finished run whose tasks cover some of this run's (repeatable: "
        "several teachers of a task are averaged)",
    )
    p.add_argument(
        "--teacher-outputs",
        metavar="DIR",
        help="knowledge distillation from outputs computed elsewhere: DIR/teacher.json and DIR/<task>/<clip>.npy "
        "(docs: Training, knowledge distillation)",
    )
    p.add_argument("--distill-weight", help="weight of the distillation loss: one for all tasks, or task=W,...")
    p.add_argument("--distill-temperature", help="softmax temperature of clip tasks' distillation: T or task=T,...")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", help="one size for all tasks, or task=N,... (e.g. asc=64,sed=16)")
    p.add_argument("--learning-rate", type=float)
    p.add_argument(
        "--data-root",
        action="append",
        help="folder with the corpora (tau22/, desed/ or one corpus layout); or task=DIR, repeatable. "
        "Default: the built-in synthetic data",
    )
    p.add_argument("--difficulty", type=float, help="difficulty of the built-in synthetic data (default 1.0)")
    p.add_argument(
        "--corpora",
        choices=CORPORA_MODES,
        help="built-in data: each corpus with its own level, band and sample rate (distinct, the default) "
        "or all alike (the sets of keras-mtl 0.1)",
    )
    if one_run:
        p.add_argument("--output-dir", help="run folder (default: runs/<time>-<tasks>-<strategy>/)")
    p.add_argument("--cache-dir", help="feature cache folder")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--distribute",
        choices=["mirrored", "multi-worker"],
        help="tf.distribute: mirrored (this machine's devices) or multi-worker (cluster from TF_CONFIG)",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic TensorFlow ops: the same seed gives the same metrics on this machine (slower)",
    )
    if not one_run:
        return
    p.add_argument(
        "--dry-run", action="store_true", help="build the model, print its summary and profile, do not train"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run an --output-dir holds (without it, a folder holding a run is refused before any "
        "data is read)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its last epoch checkpoint, with its own config.yaml (any other "
        "training option with it is refused)",
    )


#: the options that may go with --resume: where to log, not what to train
RESUME_KEEPS = ("resume", "verbose", "quiet")


def resolve_config(args):
    """The run configuration of the parsed options (``config_data``, built: unknown settings are ConfigError)."""
    from keras_mtl.runs import config as run_config

    return run_config.build(config_data(args))


def config_data(args) -> dict:
    """The run configuration of the parsed options as a nested dict, before it is built: preset < the
    preset's settings for the task set < --config YAML < its settings for the task set < the command line."""
    from keras_mtl.runs import config as run_config
    from keras_mtl.tasks.registry import parse_task_set, safe_name

    preset = run_config.load_preset(args.preset)
    user = run_config.load_yaml(args.config) if args.config else {}
    custom = dict(parse_task_definition(text) for text in args.task)
    task_set = args.task_set or ",".join(user.get("tasks") or preset.get("tasks") or ["asc", "sed"])
    tasks = [t.name for t in parse_task_set(task_set, custom)]
    # preset < the preset's settings for this task set < the user's YAML < its settings for this task set <
    # the command line
    data = run_config.for_task_set(run_config.combine_task_sets(preset, user), tasks)
    override = {
        "tasks": tasks,
        "strategy": args.strategy.strip().lower(),
        "preset": args.preset,
    }
    if args.weighting:
        override["weighting"] = args.weighting.strip().lower()
    if args.batch_norm:
        override["batch_norm"] = args.batch_norm.strip().lower()
    if custom:
        override["custom_tasks"] = custom
    training = {}
    if args.order:
        override["order"] = [safe_name(name) for name in args.order.split(",") if name.strip()]
    if args.alpha is not None:
        override["alpha"] = args.alpha
    if args.mean_teacher:
        training["mean_teacher"] = args.mean_teacher
    if args.epochs is not None:
        training["epochs"] = args.epochs
    if args.learning_rate is not None:
        training["learning_rate"] = args.learning_rate
    if args.batch_size:
        sizes = cli.parse_task_values(args.batch_size, "--batch-size", int)
        training["batch_size"] = (
            {safe_name(t): n for t, n in sizes.items()} if isinstance(sizes, dict) else {t: sizes for t in tasks}
        )
    if args.teacher:
        training["teachers"] = list(args.teacher)
    if args.teacher_outputs:
        training["teacher_outputs"] = args.teacher_outputs
    for option, key in (("--distill-weight", "distill_weight"), ("--distill-temperature", "distill_temperature")):
        text = getattr(args, key)
        if text:
            values = cli.parse_task_values(text, option, float)
            training[key] = {safe_name(t): v for t, v in values.items()} if isinstance(values, dict) else values
    if training:
        override["training"] = training
    if args.data_root:
        override["data_root"] = cli.parse_data_roots(args.data_root)
    if args.difficulty is not None:
        override["synthetic"] = {"difficulty": args.difficulty}
    if args.corpora is not None:
        override.setdefault("synthetic", {})["corpora"] = args.corpora
        override["speech_synthetic"] = {"corpora": args.corpora}
    for key in ("seed", "output_dir", "cache_dir", "architecture"):
        if getattr(args, key, None) is not None:
            override[key] = getattr(args, key)
    if args.deterministic:
        override["deterministic"] = True
    if args.distribute:
        override["distribute"] = args.distribute
    return run_config.merge(data, override)


def parse_task_definition(text: str):
    """'digits=clip:fsdd.csv:seconds=2' -> ('digits', {'level': 'clip', 'source': 'fsdd.csv', 'seconds': 2.0});
    'office=desed:/data/office:classes=Door,Speech' fixes the label set and its order."""
    from keras_mtl.core.errors import ConfigError
    from keras_mtl.tasks.registry import LAYOUTS

    name, sep, rest = text.partition("=")
    level, sep2, source = rest.partition(":")
    usage = f"expected NAME=clip:MANIFEST, NAME=frame:MANIFEST or NAME=LAYOUT:DIR ({', '.join(LAYOUTS)})"
    if not sep or not sep2 or not name.strip() or not source:
        raise ConfigError(f"--task {text!r}: {usage}")
    level = level.strip().lower()
    if level not in ("clip", "frame", *LAYOUTS):
        raise ConfigError(f"--task {text!r}: unknown level or layout {level!r}; {usage}")
    options = {}
    while True:  # trailing :seconds=S and :classes=A,B,C (a path may hold ':' itself)
        head, colon, tail = source.rpartition(":")
        key = tail.split("=", 1)[0]
        if not colon or "=" not in tail or key not in ("seconds", "classes"):
            break
        options[key], source = tail.split("=", 1)[1], head
    seconds = None
    if "seconds" in options:
        try:
            seconds = float(options["seconds"])
        except ValueError:
            raise ConfigError(f"--task {text!r}: seconds must be a number") from None
    spec = {"level": level, "source": source, "seconds": seconds}
    if "classes" in options:
        spec["classes"] = [c.strip() for c in options["classes"].split(",") if c.strip()]
    return name.strip(), spec


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose, args.quiet)
    from keras_mtl.core import reporting  # imports TensorFlow
    from keras_mtl.runs import folder
    from keras_mtl.training.fit import train

    config = folder.resume_config(args.resume) if args.resume else resolve_config(args)

    if args.dry_run:
        info = train(config, dry_run=True)
        print(info["summary"])
        print()
        print(info["profile_table"])
        total = info["profile"]["total"]
        print(
            f"\nint8 weights: {total['int8_weight_bytes']:,} bytes; "
            f"peak activations (int8, batch 1, 1 s): {total['int8_activation_bytes']:,} bytes"
        )
        return 0
    metrics = train(config, resume=bool(args.resume), overwrite=args.overwrite)
    print()
    print(reporting.results_table(metrics))
    print(f"\nrun folder: {metrics['output_dir']}  ({metrics['seconds']['total']:.0f} s)")
    return 0
