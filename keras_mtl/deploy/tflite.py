"""int8 TFLite: full-integer conversion (int8, or int16 activations with int8 weights), the LiteRT and
TFLite-Micro interpreters with inputs and outputs by name, and the smallest TFLite-Micro arena a model
runs with."""

from __future__ import annotations

import faulthandler
import logging
import os
from collections.abc import Callable, Iterable

import numpy as np

from keras_mtl.core.backend import keras, tf, tracing_for_tflite
from keras_mtl.deploy import agreement
from keras_mtl.deploy.streaming import Piece

log = logging.getLogger(__name__)


#: activation types of a full-integer model: "int8" (int8 weights and activations) or "int16" (TFLite's
#: 16x8 quantisation: int8 weights, int16 activations, inputs and outputs; symmetric, zero point 0)
ACTIVATIONS = ("int8", "int16")


def convert_int8(
    model: keras.Model, representative: Callable[[], Iterable[dict[str, np.ndarray]]], activations: str = "int8"
) -> bytes:
    """Full-integer post-training quantisation: int8 weights; int8 activations, inputs and outputs, or with
    ``activations="int16"`` TFLite's 16x8 mode (int16 activations, inputs and outputs: the reference
    LOGISTIC/TANH then interpolate a table instead of int8's fixed-point exponential).
    ValueError for another ``activations``."""
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {ACTIVATIONS}, not {activations!r}")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # samples by input name: a list would be matched to the inputs in the converter's own order
    converter.representative_dataset = lambda: (
        {name: np.asarray(x, np.float32) for name, x in sample.items()} for sample in representative()
    )
    if activations == "int16":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
        converter.inference_input_type = converter.inference_output_type = tf.int16
    else:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8
    # one weight scale per FULLY_CONNECTED: the CMSIS-NN FULLY_CONNECTED of the firmware's pinned
    # TFLite-Micro tree (2023) applies the first channel's scale to every channel of a per-channel FC
    # and computes wrong outputs (measured: up to 9 LSB); convolutions keep per-channel scales
    converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    with tracing_for_tflite():
        return converter.convert()


def operators(flatbuffer: bytes) -> list[str]:
    """Builtin operator names used by a .tflite model."""
    from tflite_micro.python.tflite_micro import runtime

    model = runtime.convert_bytearray_to_object(bytearray(flatbuffer))
    names = {value: name for name, value in vars(runtime.schema_fb.BuiltinOperator).items() if not name.startswith("_")}
    return sorted({names.get(runtime.get_builtin_code_from_operator_code(code), "?") for code in model.operatorCodes})


class Int8Model:
    """A quantised model run by LiteRT ("litert"; "litert-reference": its reference kernels, no
    XNNPACK) or TFLite-Micro ("tflm"), with inputs and outputs by name (the Keras names, from the
    model's signature) and float in/out conversion. Inputs and outputs are int8, or int16 for a
    16x8 model (``dtype`` per name)."""

    def __init__(self, flatbuffer: bytes, runtime_name: str = "litert", arena_size: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.flatbuffer = flatbuffer
        self.runtime = runtime_name
        litert = Interpreter(model_content=flatbuffer)
        litert.allocate_tensors()
        signature = litert._get_full_signature_list()["serving_default"]
        names_in = {index: name for name, index in signature["inputs"].items()}
        names_out = {index: name for name, index in signature["outputs"].items()}
        # subgraph order, the order TFLite-Micro numbers its inputs and outputs in
        self.inputs = [dict(d, key=names_in[d["index"]]) for d in litert.get_input_details()]
        self.outputs = [dict(d, key=names_out[d["index"]]) for d in litert.get_output_details()]
        if runtime_name == "litert":
            self.interpreter = litert
        elif runtime_name == "litert-reference":
            self.interpreter = agreement.reference_interpreter(flatbuffer)
        elif runtime_name == "tflm":
            from tflite_micro.python.tflite_micro import runtime

            self.interpreter = runtime.Interpreter.from_bytes(flatbuffer, arena_size=arena_size)
        else:
            raise ValueError(f"unknown runtime {runtime_name!r}")

        self._in_q = {d["key"]: _scale_zero(d) for d in self.inputs}
        self._out_q = {d["key"]: _scale_zero(d) for d in self.outputs}
        self._dtype = {d["key"]: np.dtype(d["dtype"]) for d in self.inputs + self.outputs}
        # state outputs fed back as the same input with the same quantisation: the round trip through float
        # is the identity there, so `run` hands them back as integers and takes them as they are
        self._kept_int8 = {
            f"new_{name}"
            for name, q in self._in_q.items()
            if self._out_q.get(f"new_{name}") == q and self._dtype[f"new_{name}"] == self._dtype[name]
        }
        # what run_int8 needs per call, looked up once (a clip's frame steps make hundreds of calls)
        self._set = [
            (d["key"], d["index"], tuple(int(n) for n in d["shape"]), np.dtype(d["dtype"])) for d in self.inputs
        ]
        self._get = [(d["key"], d["index"]) for d in self.outputs]

    def input_names(self) -> list[str]:
        return [d["key"] for d in self.inputs]

    def output_names(self) -> list[str]:
        return [d["key"] for d in self.outputs]

    def run_int8(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for position, (key, index, shape, dtype) in enumerate(self._set):
            value = inputs[key]
            if value.dtype != dtype or value.shape != shape:
                value = np.asarray(value, dtype).reshape(shape)
            if self.runtime != "tflm":
                self.interpreter.set_tensor(index, value)
            else:
                self.interpreter.set_input(value, position)
        self.interpreter.invoke()
        if self.runtime != "tflm":  # LiteRT's get_tensor returns a copy
            return {key: self.interpreter.get_tensor(index) for key, index in self._get}
        return {key: np.array(self.interpreter.get_output(i)) for i, (key, _) in enumerate(self._get)}

    def dtype(self, name: str) -> np.dtype:
        """The integer type of an input or output (int8, or int16 in a 16x8 model)."""
        return self._dtype[name]

    def input_quantization(self, name: str) -> tuple[float, int]:
        return self._in_q[name]

    def output_quantization(self, name: str) -> tuple[float, int]:
        return self._out_q[name]

    def quantize(self, name: str, value: np.ndarray) -> np.ndarray:
        return quantize(value, *self.input_quantization(name), dtype=self._dtype[name])

    def dequantize(self, name: str, value: np.ndarray) -> np.ndarray:
        scale, zero = self.output_quantization(name)
        return (value.astype(np.float32) - zero) * scale

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Float in, float out: quantise the inputs, invoke, dequantise the outputs; except a state (output
        ``new_X`` fed back as input ``X`` with the same scale and zero point), which comes out as integers and is
        taken back as it is: the same values as its float round trip, without the numpy work per step."""
        raw = self.run_int8(
            {
                name: value if value.dtype == self._dtype[name] else self.quantize(name, value)
                for name, value in inputs.items()
            }
        )
        return {name: value if name in self._kept_int8 else self.dequantize(name, value) for name, value in raw.items()}


def quantize(value: np.ndarray, scale: float, zero_point: int, dtype=np.int8) -> np.ndarray:
    """round(value / scale) + zero_point (half to even), saturated to ``dtype`` (int8 or int16)."""
    info = np.iinfo(dtype)
    return np.clip(np.round(np.asarray(value, np.float32) / scale) + zero_point, info.min, info.max).astype(dtype)


def _scale_zero(detail: dict) -> tuple[float, int]:
    scale, zero = detail["quantization"]
    return float(scale), int(zero)


def minimum_arena(flatbuffer: bytes, sample_inputs: dict[str, np.ndarray], upper: int | None = None) -> int:
    """Smallest TFLite-Micro arena (bytes, multiple of 16) with which the model allocates and runs."""

    def runs(size: int) -> bool:
        try:
            model = Int8Model(flatbuffer, "tflm", arena_size=size)
            model.run_int8(sample_inputs)
            return True
        except RuntimeError:  # TFLite-Micro reports a too-small arena as a failed allocation
            return False

    high = upper or max(16 * 1024, 4 * len(flatbuffer))
    with agreement.quiet_native_stderr():
        return search_arena(lambda size: probe_in_child(runs, size), high)


def probe_in_child(probe: Callable[[int], bool], size: int) -> bool:
    """``probe(size)`` in a forked child where the platform can fork: the tflite-micro package's
    interpreter crashes (SIGSEGV in its constructor) at some arena sizes too small for the model,
    where others give a RuntimeError (measured: a speech clip head, 2,832 bytes; its minimum 4,160).
    A child that crashes counts as "does not run"."""
    if not hasattr(os, "fork"):
        return probe(size)
    pid = os.fork()
    if pid == 0:  # the child: no Python cleanup, no buffers flushed twice, no crash report of its own
        faulthandler.disable()
        try:
            code = 0 if probe(size) else 1
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        log.debug("TFLite-Micro crashed with a %d-byte arena (signal %d): too small", size, os.WTERMSIG(status))
        return False
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def search_arena(works, high: int) -> int:
    while not works(high):
        high *= 2
        if high > 64 * 1024 * 1024:
            raise RuntimeError("TFLite-Micro could not allocate this model with 64 MiB of arena")
    low = 0
    while high - low > 16:
        middle = (low + high) // 2 // 16 * 16
        if middle <= low:
            break
        if works(middle):
            high = middle
        else:
            low = middle
    return high


def int8_call(models: dict[str, Int8Model]) -> Callable[[Piece, dict], dict]:
    """``call(piece, inputs)`` for StreamingRunner, float in and out; ``call.prepare(piece, name, values)``
    quantises many steps' inputs at once (the same int8 values as step by step: element-wise)."""

    def call(piece: Piece, inputs: dict) -> dict:
        return models[piece.name].run(inputs)

    call.prepare = lambda piece, name, values: models[piece.name].quantize(name, values)
    return call
