"""One command: a run folder -> an export folder of streaming int8 TFLite models, verified on the host
(TFLite-Micro vs LiteRT per operator, float vs int8 metrics, arenas), with C arrays and settings headers."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from keras_mtl import __version__
from keras_mtl.core import fileio
from keras_mtl.core.backend import keras
from keras_mtl.deploy import agreement, c_arrays, metadata
from keras_mtl.deploy.qat import qat_finetune
from keras_mtl.deploy.streaming import (
    StreamingPlan,
    StreamingRunner,
    fit_frames,
    keras_call,
    plan_streaming,
    windows_of,
)
from keras_mtl.deploy.tflite import Int8Model, convert_int8, int8_call, minimum_arena, operators
from keras_mtl.models import profiling
from keras_mtl.runs.config import ExportConfig
from keras_mtl.runs.folder import open_run
from keras_mtl.runs.inputs import prepare_data
from keras_mtl.runs.network import time_resolution

log = logging.getLogger(__name__)


def load_run(run_dir: Path):
    """A finished run's configuration, tasks, trained network and streaming plan."""
    run = open_run(run_dir)
    network = run.network()
    factor, _ = time_resolution(run.config)
    return (
        run.config,
        run.tasks,
        network,
        plan_streaming(network, run.tasks, run.config.frontend, factor, run.config.architecture),
    )


def export_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    calibration_clips: int = 64,
    verify_samples: int = 16,
    max_eval_clips: int | None = None,
    qat_epochs: int = 0,
    frame_step_activations: str | None = None,
) -> dict:
    """Quantise a run's network into streaming int8 models, verify them (TFLite-Micro vs LiteRT,
    float vs int8 metrics), measure arenas and write models, C arrays, settings header and
    ``export_report.json`` into ``out_dir`` (default ``<run>/export``).

    ``qat_epochs`` > 0: first export the trained network as it is (post-training quantisation, into
    ``out_dir/ptq``), then fine-tune it that many epochs with quantisation-aware training
    (keras_mtl.deploy.qat.qat_finetune) and export the result into ``out_dir``; the report holds
    both sets of metrics.

    ``frame_step_activations`` ("int8" or "int16": 16x8 quantisation of the frame tasks' recurrent
    steps) overrides the run's ``export.frame_step_activations``."""
    run_dir = Path(run_dir)
    config, tasks, network, plan = load_run(run_dir)
    if frame_step_activations is not None:
        config = dataclasses.replace(config, export=ExportConfig(frame_step_activations=frame_step_activations))
    out = Path(out_dir) if out_dir else run_dir / "export"
    fileio.ensure_writable(out, "" if out_dir else "; pass --output-dir DIR")  # before minutes of work
    data = prepare_data(config, tasks)
    settings = dict(calibration_clips=calibration_clips, verify_samples=verify_samples, max_eval_clips=max_eval_clips)
    if qat_epochs <= 0:
        return _export_network(run_dir, config, tasks, network, plan, data, out, **settings)
    ptq = _export_network(run_dir, config, tasks, network, plan, data, out / "ptq", **settings)
    tuned = qat_finetune(network, config, tasks, data, qat_epochs)
    factor, _ = time_resolution(config)
    report = _export_network(
        run_dir,
        config,
        tasks,
        tuned,
        plan_streaming(tuned, tasks, config.frontend, factor, config.architecture),
        data,
        out,
        **settings,
    )
    report["quantization"] = {
        "method": "qat",
        "epochs": qat_epochs,
        "ptq_export": str(out / "ptq"),
        "tasks": {
            task: {
                "headline": result["headline"],
                "float": ptq["tasks"][task]["float"][result["headline"]],
                "ptq_int8_streamed": ptq["tasks"][task]["int8_streamed"][result["headline"]],
                "qat_float": result["float"][result["headline"]],
                "qat_int8_streamed": result["int8_streamed"][result["headline"]],
            }
            for task, result in report["tasks"].items()
        },
    }
    fileio.write_json(out / "export_report.json", {k: v for k, v in report.items() if k != "output_dir"})
    return report


def calibration_samples(plan: StreamingPlan, tasks, train: dict, clips: int, rng) -> dict[str, list[dict]]:
    """Inputs of every piece from up to ``clips`` training clips per task, run through the float
    pieces: encoder windows, clip-head embeddings and frame-step (embedding, state) pairs."""
    float_runner = StreamingRunner(plan, keras_call)
    calibration: dict[str, list[dict]] = {p.name: [] for p in plan.pieces}
    for task in tasks:
        split = train[task.name]
        picks = rng.choice(len(split), size=min(clips, len(split)), replace=False)
        for index in picks:
            features = split.load_features(int(index)).astype(np.float32)
            clip_embeddings = None  # every branch's, computed once per clip
            if plan.step is not None:  # the step inputs with their states: up to 40 spread over the clip
                steps = list(float_runner.encoder_steps(features))
                calibration["encoder"].extend(inputs for inputs, _ in steps[:: max(1, len(steps) // 40)][:40])
                clip_embeddings = float_runner.stepped_embeddings(features, steps)
            elif "encoder" in calibration:
                calibration["encoder"].extend({"mel": w[None]} for w in windows_of(features, plan)[:2])
            for piece in plan.pieces:
                if piece.task != task.name:
                    continue
                if piece.kind == "clip_model":
                    calibration[piece.name].append({"mel": features[None]})
                    continue
                if clip_embeddings is None:
                    clip_embeddings = float_runner.embeddings(features)
                embeddings = clip_embeddings[piece.branch]
                if piece.kind == "clip_head":
                    width = piece.model.inputs[0].shape[1]
                    calibration[piece.name].append({"frames": fit_frames(embeddings, width)[None]})
                elif len(calibration[piece.name]) < 40 * clips:
                    # The recurrent state over every frame, as the device runs it; up to 40 pairs kept.
                    state = np.zeros((1, piece.model.inputs[1].shape[-1]), np.float32)
                    pairs = []
                    for frame in embeddings:
                        pairs.append({"frame": frame[None], "state": state})
                        state = keras_call(piece, {"frame": frame[None], "state": state})["new_state"]
                    calibration[piece.name].extend(pairs[:: max(1, len(pairs) // 40)][:40])
    return calibration


def _export_network(
    run_dir: Path,
    config,
    tasks,
    network,
    plan: StreamingPlan,
    data,
    out: Path,
    calibration_clips: int,
    verify_samples: int,
    max_eval_clips: int | None,
) -> dict:
    """export_run for one network: calibrate, convert, verify, evaluate, write ``out``."""
    rng = np.random.default_rng(config.seed)
    float_runner = StreamingRunner(plan, keras_call)

    calibration = calibration_samples(plan, tasks, data.train, calibration_clips, rng)

    report = {
        "run": str(run_dir),
        "streaming": {k: v for k, v in metadata.streaming_settings(plan).items() if k != "pad_value"},
        "models": {},
        "tasks": {},
    }
    int8_models, arenas, flatbuffers = {}, {}, {}
    c_dir = out / "c"
    for piece in plan.pieces:
        samples = calibration[piece.name]
        log.info("quantising %s (%d calibration samples)", piece.name, len(samples))
        activations = config.export.frame_step_activations if piece.kind == "frame_step" else "int8"
        flatbuffer = convert_int8(piece.model, lambda: iter(samples), activations)
        litert = Int8Model(flatbuffer)
        checks = [
            samples[int(i)] for i in rng.choice(len(samples), size=min(verify_samples, len(samples)), replace=False)
        ]
        int8_inputs = [{n: litert.quantize(n, v) for n, v in s.items()} for s in checks]
        arena = minimum_arena(flatbuffer, int8_inputs[0])
        micro = Int8Model(flatbuffer, "tflm", arena_size=arena)
        reference = Int8Model(flatbuffer, "litert-reference")
        end_to_end = agreement.end_to_end_lsb(
            [reference.run_int8(i) for i in int8_inputs], [micro.run_int8(i) for i in int8_inputs]
        )
        per_operator = agreement.per_operator_lsb(
            flatbuffer, [[i[name] for name in litert.input_names()] for i in int8_inputs], arena
        )
        int8_models[piece.name], arenas[piece.name] = litert, arena
        task = next((t for t in tasks if t.name == piece.task), None)
        flatbuffer = metadata.embed(
            flatbuffer, metadata.piece_settings(piece, plan, config.frontend, task, litert, arena, __version__)
        )
        flatbuffers[piece.name] = flatbuffer
        with fileio.atomic_path(out / f"{piece.name}.tflite") as tmp:
            tmp.write_bytes(flatbuffer)
        c_arrays.write_model_array(c_dir, piece.name, flatbuffer)
        report["models"][piece.name] = {
            "kind": piece.kind,
            "activations": activations,
            "task": piece.task,
            "flatbuffer_bytes": len(flatbuffer),
            "tflm_arena_bytes": arena,
            "operators": operators(flatbuffer),
            "inputs": {n: list(map(int, d["shape"])) for n, d in zip(litert.input_names(), litert.inputs)},
            "verified_inputs": len(int8_inputs),
            # each operator fed the same inputs: within the requantisation rounding difference (agreement.py)
            "tflm_vs_litert_per_operator_max_lsb": max(per_operator.values()),
            "tflm_vs_litert_per_operator_lsb": per_operator,
            # the whole model: rounding differences carried on and possibly grown by later operators
            "tflm_vs_litert_max_lsb": end_to_end,
        }
        log.info(
            "%s: %d bytes, arena %d bytes, TFLM vs LiteRT: per operator ≤ %d LSB, end to end %d LSB",
            piece.name,
            len(flatbuffer),
            arena,
            max(per_operator.values()),
            end_to_end,
        )

    int8_runner = StreamingRunner(plan, int8_call(int8_models))
    layers = profiling.profile(network, config.frontend)
    prof = profiling.summarize(layers, [t.name for t in tasks])
    for task in tasks:
        split = data.test[task.name]
        count = len(split) if max_eval_clips is None else min(len(split), max_eval_clips)
        items = split.items[:count]
        pieces = [p for p in plan.pieces if p.task == task.name]
        predictions = {"float": [], "float_streamed": [], "int8_streamed": []}
        path = keras.Model(network.input, network.output[task.name])
        for index in range(count):
            features = split.load_features(index).astype(np.float32)
            predictions["float"].append(np.asarray(path(features[None], training=False))[0])
            for key, runner in (("float_streamed", float_runner), ("int8_streamed", int8_runner)):
                predictions[key].append(runner.predict(pieces[0], features))
        scores = {key: task.evaluate(value, items, split.frame_seconds) for key, value in predictions.items()}
        headline = task.headline
        report["tasks"][task.display] = {
            "name": task.name,
            "split": split.split,
            "clips": count,
            "headline": headline,
            **{key: _jsonable(value) for key, value in scores.items()},
            "int8_minus_float_points": 100.0
            * ((scores["int8_streamed"][headline] or 0.0) - (scores["float"][headline] or 0.0)),
            "macs_per_second": prof["task_paths"][task.name]["macs_per_second"],
            "params": prof["task_paths"][task.name]["params"],
        }
        log.info(
            "%s %s: float %.4f, float streamed %.4f, int8 streamed %.4f",
            task.name,
            headline,
            scores["float"][headline] or 0.0,
            scores["float_streamed"][headline] or 0.0,
            scores["int8_streamed"][headline] or 0.0,
        )
    report["total"] = {
        "flatbuffer_bytes": sum(m["flatbuffer_bytes"] for m in report["models"].values()),
        "tflm_arena_bytes_max": max(arenas.values()),
        "macs_per_second": prof["total"]["macs_per_second"],
        "params": prof["total"]["params"],
    }
    # the firmware's headers from the settings inside the .tflite files alone (keras_mtl.deploy.metadata)
    settings_h, pieces_h = metadata.firmware_headers(flatbuffers)
    fileio.write_text(c_dir / "model_settings.h", settings_h)
    fileio.write_text(c_dir / "km_pieces.h", pieces_h)
    fileio.write_json(out / "export_report.json", report)
    report["output_dir"] = str(out)
    return report


def _jsonable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, type(None)))}
