"""Run a trained or exported model on recordings: every task of the model answers.

    keras-mtl predict runs/<run> my_clip.wav recordings/ --output results/
    keras-mtl predict runs/<run>/export long_recording.flac --plot --scores
    keras-mtl predict runs/<run> --live

MODEL: a run folder (its float network) or an export folder (the int8 streaming pieces, in LiteRT).
INPUT: audio files, folders (searched recursively) or manifests (.csv/.tsv with a filename column);
any length, sample rate and channel count. Frame tasks write DCASE detections (filename, onset,
offset, event_label) to OUTPUT/<task>.tsv; clip tasks a label and class scores per file (and per
window of longer recordings, OUTPUT/<task>_windows.tsv); OUTPUT/predict.json lists model, files and
settings. A recording that cannot be read is one log line and one entry in predict.json; the others
go on, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from keras_mtl.cli import common as cli

log = logging.getLogger(__name__)
PROG = "keras-mtl predict"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a run folder (config.yaml, model.keras) or an export folder (*.tflite)")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="audio files, folders (recursive) or manifests")
    p.add_argument("--output", help="results folder (default: predictions/<time>-<model folder name>)")
    p.add_argument("--overwrite", action="store_true", help="replace the results an --output folder holds")
    p.add_argument(
        "--hop", type=float, help="seconds between clip-task windows on longer recordings (default: the clip length)"
    )
    p.add_argument(
        "--scores", action="store_true", help="also write frame scores per recording (sed_scores_eval format)"
    )
    p.add_argument("--plot", action="store_true", help="one PNG per recording: log-mel, scores, events, labels")
    p.add_argument("--live", action="store_true", help="listen to the default input device and print findings")
    p.add_argument("--seconds", type=float, help="with --live: stop after this many seconds of audio")
    p.add_argument("--device", help="with --live: the input device (a sounddevice name or index)")
    p.add_argument(
        "--benchmark",
        metavar="MINUTES",
        help="measure instead: generate recordings of these lengths (e.g. 1,60) and report the real-time factor "
        "and peak memory of predict on each (one process per length)",
    )
    cli.add_logging_options(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose, args.quiet)
    from keras_mtl.core.errors import ConfigError

    if args.benchmark:
        return benchmark(args)
    if args.live and args.inputs:
        raise ConfigError("--live listens to the microphone: give no INPUT with it")
    if not args.live and not args.inputs:
        raise ConfigError("give INPUT recordings, folders or manifests (or --live for the microphone)")
    if args.seconds is not None and not args.live:
        raise ConfigError("--seconds goes with --live")
    from keras_mtl.deploy import predict  # imports TensorFlow

    if args.live:
        predictor = predict.Predictor(args.model, hop=args.hop)
        device = int(args.device) if args.device and args.device.isdigit() else args.device
        blocks = predict.microphone_blocks(predictor.frontend.sample_rate, device=device)
        print(f"listening ({', '.join(t.display for t in predictor.tasks)}); Ctrl-C stops", flush=True)
        predictor.live(blocks, write=lambda line: print(line, flush=True), seconds=args.seconds)
        return 0
    files = predict.collect_inputs(args.inputs)  # a missing input is an error before the model loads
    output = results_folder(args.output, args.model, args.overwrite)
    predictor = predict.Predictor(args.model, hop=args.hop)
    log.info("%s: %d recordings -> %s", predictor.model.description, len(files), output)
    report = predictor.predict(args.inputs, output, args.scores, args.plot)
    write_summary(report)
    return 1 if report["failed"] else 0


def write_summary(report: dict) -> None:
    """The command's closing lines: recordings, failures, the results folder, the speed."""
    speed = f"{report['real_time_factor']}x real time" if report["real_time_factor"] else "no audio"
    print(
        f"{report['files_total'] - report['failed']} of {report['files_total']} recordings "
        f"({report['audio_seconds']:.1f} s of audio) in {report['processing_seconds']:.1f} s ({speed}); "
        f"results in {report['output_dir']}"
    )
    for entry in report["files"]:
        if entry["status"] == "failed":
            print(f"failed: {entry['error']}")


def benchmark(args) -> int:
    from keras_mtl.core.errors import ConfigError
    from keras_mtl.deploy.predict import load_model
    from keras_mtl.studies import predict_speed

    if args.inputs or args.live:
        raise ConfigError("--benchmark makes its own recordings: give no INPUT and no --live with it")
    try:
        minutes = [float(m) for m in args.benchmark.split(",") if m.strip()]
    except ValueError:
        raise ConfigError(f"--benchmark {args.benchmark!r}: expected comma-separated minutes, e.g. 1,60") from None
    rate = load_model(args.model).frontend.sample_rate
    rows = predict_speed.measure(args.model, minutes, rate, predict_speed.default_command())
    print(predict_speed.table(rows, args.model))
    return 0


def results_folder(given: str | None, model: str, overwrite: bool) -> Path:
    """The --output folder, writable: one holding earlier results is refused without --overwrite (their
    files would mix with these), which removes only what they wrote; the default is new every time."""
    from keras_mtl.core import fileio
    from keras_mtl.core.errors import ConfigError
    from keras_mtl.deploy.predict import REPORT

    if given is None:
        base = Path("predictions") / f"{time.strftime('%Y%m%d-%H%M%S')}-{Path(model).resolve().name}"
        folder, n = base, 1
        while folder.exists():
            n += 1
            folder = base.with_name(f"{base.name}-{n}")
        return fileio.ensure_writable(folder)
    folder = Path(given)
    earlier = folder / REPORT
    if earlier.exists() and not overwrite:
        raise ConfigError(f"{folder}: holds earlier predictions ({REPORT}); pass another --output, or --overwrite")
    if overwrite and earlier.is_file():  # only what the earlier predictions wrote, never the user's own files
        import json
        import shutil

        try:
            tasks = json.loads(earlier.read_text()).get("tasks", {}).values()
        except (ValueError, AttributeError):
            tasks = []
        for name in [f"{t['name']}{end}" for t in tasks for end in (".tsv", "_windows.tsv")] + [
            "scores",
            "plots",
            REPORT,
        ]:
            entry = folder / name
            if entry.is_dir():
                shutil.rmtree(entry)
            elif entry.exists():
                entry.unlink()
    return fileio.ensure_writable(folder, "; pass --output DIR")  # before the model loads
