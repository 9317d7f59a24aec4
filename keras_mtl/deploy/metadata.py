"""Settings carried inside a .tflite (as SiliconLabs MLTK does): what a host tool or a firmware
generator needs to run an exported model without the run folder.

The settings are one JSON document in the model's ``metadata`` list under the name ``keras_mtl``
(TFLite schema: ``Model.metadata`` -> ``Metadata{name, buffer}``; the buffer holds the bytes).
TFLite-Micro and LiteRT ignore metadata they do not know, so the model runs unchanged.

Each piece's document holds the front end (``frontend``: FrontEndConfig fields), the streaming
form (``streaming``: step or window frames, hop, embeddings per second, pad frame, the stepped
encoder's states and lags), the piece (``piece``: name, kind, task, branch, windows), its task
(``task``: classes, level, threshold, median filter), its inputs' and outputs' quantisation (by
name), the measured TFLite-Micro arena, and the keras-mtl version.
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np

from keras_mtl.core.errors import DataError
from keras_mtl.deploy import c_arrays
from keras_mtl.deploy.tflite import Int8Model, operators
from keras_mtl.features.logmel import FrontEndConfig, mel_weight_matrix

NAME = "keras_mtl"


def embed(flatbuffer: bytes, settings: dict) -> bytes:
    """``flatbuffer`` with ``settings`` (JSON-serialisable) as its ``keras_mtl`` metadata, replacing any."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(settings, sort_keys=True).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _name(m) != NAME] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read(flatbuffer: bytes) -> dict | None:
    """The ``keras_mtl`` settings of a .tflite, or None when it has none."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    for entry in model.metadata or []:
        if _name(entry) == NAME:
            return json.loads(bytes(model.buffers[entry.buffer].data).decode())
    return None


def _name(entry) -> str:
    name = entry.name
    return name.decode() if isinstance(name, bytes) else str(name)


def streaming_settings(plan) -> dict:
    """The streaming form of a StreamingPlan as JSON: the encoder's kind, frames per invocation, hop,
    context, embeddings per second, pad frame, branches; a stepped encoder's states, lags and warm-up."""
    step = plan.step
    streaming = {
        "encoder": "step" if step is not None else "window",
        "window_frames": plan.window_frames,
        "hop_frames": plan.hop_frames,
        "context_frames": plan.context_frames,
        "output_frames": plan.output_frames,
        "pad_value": [float(v) for v in plan.pad_value],
        "branches": list(plan.branches),
    }
    if step is not None:
        streaming["states"] = [
            {"name": s.name, "layer": s.layer, "kind": s.kind, "shape": list(s.shape), "lag": s.lag, "stride": s.stride}
            for s in step.states
        ]
        streaming["lags"] = dict(step.lags)
        streaming["warmup"] = step.warmup
    return streaming


def piece_settings(piece, plan, frontend, task, model, arena: int, version: str) -> dict:
    """The settings document of one exported piece (see the module docstring); ``model``: its Int8Model."""
    document = {
        "keras_mtl_version": version,
        "frontend": dataclasses.asdict(frontend),
        "streaming": streaming_settings(plan),
        "piece": {
            "name": piece.name,
            "kind": piece.kind,
            "task": piece.task,
            "branch": piece.branch,
            "windows": piece.windows,
        },
        "tflm_arena_bytes": int(arena),
        "inputs": {n: dict(zip(("scale", "zero_point"), model.input_quantization(n))) for n in model.input_names()},
        "outputs": {n: dict(zip(("scale", "zero_point"), model.output_quantization(n))) for n in model.output_names()},
    }
    if task is not None:
        document["task"] = {
            "name": task.name,
            "title": task.display,
            "level": task.level,
            "classes": list(task.classes),
            "clip_seconds": float(task.clip_seconds),
            **(
                {"threshold": float(task.threshold), "median_filter_frames": int(task.median_filter_frames)}
                if task.level == "frame"
                else {}
            ),
        }
    return document


def firmware_headers(flatbuffers: dict[str, bytes]) -> tuple[str, str]:
    """``model_settings.h`` and ``km_pieces.h`` from the settings inside the exported .tflite files
    alone ({piece name: flatbuffer}, in the export's order); DataError when one has no settings."""
    documents = {}
    for name, flatbuffer in flatbuffers.items():
        document = read(flatbuffer)
        if document is None:
            raise DataError(f"{name}.tflite: no keras_mtl settings inside (export it with scripts/export.py)")
        documents[name] = document
    first = next(iter(documents.values()))
    frontend = FrontEndConfig(**first["frontend"])
    streaming = first["streaming"]
    step = step_from_settings(streaming)
    pieces = [SimpleNamespace(**d["piece"]) for d in documents.values()]
    plan = SimpleNamespace(
        window_frames=streaming["window_frames"],
        hop_frames=streaming["hop_frames"],
        context_frames=streaming["context_frames"],
        output_frames=streaming["output_frames"],
        pad_value=np.asarray(streaming["pad_value"], np.float32),
        branches=streaming["branches"],
        pieces=pieces,
        step=step,
    )
    tasks = {}
    for document in documents.values():
        if "task" in document:
            task = dict(document["task"])
            tasks[task["name"]] = SimpleNamespace(**task, n_classes=len(task["classes"]))
    models = {name: Int8Model(flatbuffer) for name, flatbuffer in flatbuffers.items()}
    arenas = {name: d["tflm_arena_bytes"] for name, d in documents.items()}
    embedding_ms = plan.hop_frames * frontend.hop_length * 1000 // (frontend.sample_rate * plan.output_frames)
    settings = c_arrays.settings_header(
        frontend, mel_weight_matrix(frontend), plan, list(tasks.values()), models, arenas
    )
    pieces_h = c_arrays.pieces_header(
        plan, list(tasks.values()), models, {n: operators(f) for n, f in flatbuffers.items()}, embedding_ms
    )
    return settings, pieces_h


def step_from_settings(streaming: dict) -> SimpleNamespace | None:
    """The stepped encoder's plan (``states`` with name, shape, size, lag and stride; ``lags``,
    ``warmup``, ``step_frames``) from an export's ``streaming`` settings; None for a windowed
    encoder. Exports older than the state fields (lag, stride) zero no rows."""
    if streaming["encoder"] != "step":
        return None
    states = [
        SimpleNamespace(
            name=s["name"],
            size=int(np.prod(s["shape"])),
            shape=tuple(int(v) for v in s["shape"]),
            lag=int(s.get("lag", 0)),
            stride=int(s.get("stride", 1)),
        )
        for s in streaming["states"]
    ]
    return SimpleNamespace(
        states=states, lags=streaming["lags"], warmup=streaming["warmup"], step_frames=streaming["window_frames"]
    )
