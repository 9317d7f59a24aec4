"""Export a trained run for microcontrollers: streaming int8 TFLite models, verified on the host.

    python scripts/export.py runs/<run>                  # writes runs/<run>/export/
    python scripts/export.py runs/<run> --output-dir build/model --max-eval-clips 50
    python scripts/export.py runs/<run> --qat              # QAT fine-tune first; reports PTQ vs QAT
    python scripts/export.py runs/<run> --frame-step-activations int16   # 16x8 recurrent steps

The export folder holds encoder.tflite, <task>_head.tflite / <task>_step.tflite, c/ (one
<name>_model_data.cc/.h per model and model_settings.h for the firmware) and export_report.json
(flatbuffer and TFLite-Micro arena bytes per model, TFLite-Micro vs LiteRT agreement, float vs
int8 metrics per task, MACs / 1 s).
"""

from __future__ import annotations

import argparse
import json
import logging

from keras_mtl.cli import common as cli
from keras_mtl.deploy.export import export_run

log = logging.getLogger(__name__)
PROG = "keras-mtl export"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished run folder (config.yaml, model.keras)")
    p.add_argument("--output-dir", help="export folder (default RUN_DIR/export)")
    p.add_argument("--calibration-clips", type=int, default=64, help="training clips per task for PTQ calibration")
    p.add_argument("--max-eval-clips", type=int, help="evaluate float vs int8 on at most this many test clips per task")
    p.add_argument(
        "--qat",
        action="store_true",
        help="quantisation-aware fine-tuning (tfmot) before the export; the PTQ export goes to EXPORT/ptq",
    )
    p.add_argument("--qat-epochs", type=int, default=2, help="epochs of QAT fine-tuning (default 2)")
    p.add_argument(
        "--frame-step-activations",
        choices=["int8", "int16"],
        help="quantise the frame tasks' recurrent steps with int8 activations or with int16 ones and int8 "
        "weights (TFLite's 16x8 mode; table-based sigmoid/tanh on the device); default: the run's "
        "export.frame_step_activations (int8 unless its preset says otherwise)",
    )
    cli.add_logging_options(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose, args.quiet)
    from keras_mtl.core.errors import ConfigError

    if args.calibration_clips < 1:
        raise ConfigError("--calibration-clips must be at least 1")
    if args.qat and args.qat_epochs < 1:
        raise ConfigError("--qat-epochs must be at least 1")
    report = export_run(
        args.run_dir,
        args.output_dir,
        calibration_clips=args.calibration_clips,
        max_eval_clips=args.max_eval_clips,
        qat_epochs=args.qat_epochs if args.qat else 0,
        frame_step_activations=args.frame_step_activations,
    )
    print(json.dumps({"models": report["models"], "total": report["total"]}, indent=1)[:4000])
    for task, result in report["tasks"].items():
        h = result["headline"]
        print(
            f"{task}: {h} float {result['float'][h]:.4f}  float streamed {result['float_streamed'][h]:.4f}  "
            f"int8 streamed {result['int8_streamed'][h]:.4f}  ({result['int8_minus_float_points']:+.2f} points)"
        )
    for task, result in report.get("quantization", {}).get("tasks", {}).items():
        print(
            f"{task}: {result['headline']} float {result['float']:.4f}  PTQ int8 {result['ptq_int8_streamed']:.4f}  "
            f"QAT float {result['qat_float']:.4f}  QAT int8 {result['qat_int8_streamed']:.4f}"
        )
    print(f"export folder: {report['output_dir']}")
    return 0
