"""``keras-mtl VERB [options]``: one command for every job; ``keras-mtl VERB --help`` for a verb's options.

The scripts in ``scripts/`` are shims: ``python scripts/train.py ARGS`` is ``keras-mtl train ARGS``.
A verb's module (and TensorFlow) is imported only when the verb runs, so ``--help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from keras_mtl.cli import common

# verb -> (module in keras_mtl.cli, one line for the verb list)
VERBS = {
    "train": ("train", "train a multi-task model and write a run folder"),
    "evaluate": ("evaluate", "re-evaluate a finished run folder on its test splits (rewrites metrics.json)"),
    "export": ("export", "export a run as streaming int8 TFLite models and C arrays, verified on the host"),
    "predict": ("predict", "run a run's or an export's model on recordings or the microphone: events, labels, plots"),
    "firmware": ("firmware", "build the Cortex-M firmware for an export and run it in QEMU on a recording"),
    "compress": ("compress", "compress a run: lottery tickets (lth), sparse sharing (lt4rec) or QAT"),
    "profile": ("profile", "per-layer parameters and MACs per second of audio of a configured model"),
    "synergy": ("synergy", "hierarchical MTL by task synergy (seed 001): pairs, AR, task tree, tables"),
    "analyze": ("analyze", "which tasks help each other (seed 004): measurements, gains, correlations"),
    "experiment": ("experiment", "regenerate a paper's comparison table, one run per row and seed"),
    "tune": ("tune", "search a run's settings with Optuna: a run folder per trial, a resumable study"),
    "download": ("download", "download and verify a public corpus into its published layout"),
    "make-manifest": ("make_manifest", "write a clip manifest (filename,label,split) from file names"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="keras-mtl",
        description="Compact multi-task audio models for microcontrollers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="verbs:\n"
        + "\n".join(f"  {verb:<14} {line}" for verb, (_, line) in VERBS.items())
        + "\n\n'keras-mtl VERB --help' lists a verb's options.",
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("verb", choices=list(VERBS), metavar="VERB", help="one of the verbs below")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the verb's options")
    return p


def main(argv: list[str] | None = None) -> int | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--version":
        from keras_mtl import __version__

        print(f"keras-mtl {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        parser().print_help()
        return 0 if argv else 2
    args = parser().parse_args(argv[:1])
    module = importlib.import_module(f"keras_mtl.cli.{VERBS[args.verb][0]}")
    return module.main(argv[1:])


def run(argv: list[str] | None = None) -> None:
    """The console entry point: a user error is one ``error:`` line and exit code 2."""
    common.run_main(lambda: main(argv))


if __name__ == "__main__":
    run()
