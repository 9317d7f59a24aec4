"""How closely TFLite-Micro (what the device runs) and LiteRT agree on an int8 model.

The two runtimes requantise differently: LiteRT's wheels are built with single rounding
(`TFLITE_SINGLE_ROUNDING`: one rounding of acc·M·2^s), TFLite-Micro and CMSIS-NN with the gemmlowp
double rounding (rounding doubling high multiply, then a rounding shift). On a tie the two results
differ by one step, so every requantising operator (FULLY_CONNECTED, CONV_2D, ADD, MUL, ...) may
differ by 1 LSB. Downstream operators then see different inputs and may move the difference further
(a TANH whose input step is larger than its output step turns 1 LSB into 2). So the agreement is
measured per operator, each fed the same inputs (LiteRT's intermediate tensors), where it must be
at most 1 LSB; the end-to-end difference of the whole model is reported beside it.
"""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

#: the largest per-operator difference the rounding-mode difference explains
ROUNDING_LSB = 1


def reference_interpreter(flatbuffer: bytes, preserve_all_tensors: bool = False):
    """LiteRT with its reference kernels (no XNNPACK), the closest host twin of TFLite-Micro."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=flatbuffer,
        experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
        experimental_preserve_all_tensors=preserve_all_tensors,
    )
    interpreter.allocate_tensors()
    return interpreter


def single_operator_models(flatbuffer: bytes) -> list[tuple[str, bytes, list[int], list[int]]]:
    """One model per operator of the first subgraph: (label, flatbuffer, input tensor ids, output tensor ids).
    The ids are those of the full model; constant inputs (weights, biases) stay constants."""
    from tensorflow.lite.tools import flatbuffer_utils
    from tflite_micro.python.tflite_micro import runtime

    names = {value: name for name, value in vars(runtime.schema_fb.BuiltinOperator).items() if not name.startswith("_")}
    count = len(flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer)).subgraphs[0].operators)
    models = []
    for position in range(count):
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
        subgraph = model.subgraphs[0]
        operator = subgraph.operators[position]
        code = model.operatorCodes[operator.opcodeIndex]
        label = f"{position}:{names.get(max(code.builtinCode, code.deprecatedBuiltinCode), '?')}"
        inputs = [int(t) for t in operator.inputs if t >= 0 and model.buffers[subgraph.tensors[t].buffer].data is None]
        outputs = [int(t) for t in operator.outputs]
        subgraph.operators = [operator]
        subgraph.inputs = np.array(inputs, np.int32)
        subgraph.outputs = np.array(outputs, np.int32)
        model.signatureDefs = []
        models.append((label, bytes(flatbuffer_utils.convert_object_to_bytearray(model)), inputs, outputs))
    return models


def per_operator_lsb(
    flatbuffer: bytes, int8_inputs: list[list[np.ndarray]], arena_size: int = 64 * 1024
) -> dict[str, int]:
    """Largest |TFLite-Micro − LiteRT| (integer steps: int8, or int16 in a 16x8 model) of each operator's
    outputs, every operator fed LiteRT's values of its inputs. `int8_inputs`: model inputs (integers) in
    subgraph order, one list per sample;
    `arena_size`: a first guess of the arena one operator needs (the whole model's is enough)."""
    operators = single_operator_models(flatbuffer)
    needed = sorted({t for _, _, inputs, outputs in operators for t in inputs + outputs})
    reference = reference_interpreter(flatbuffer, preserve_all_tensors=True)
    details = reference.get_input_details()
    tensors_per_sample = []
    for sample in int8_inputs:
        for detail, value in zip(details, sample):
            reference.set_tensor(detail["index"], np.asarray(value, detail["dtype"]).reshape(detail["shape"]))
        reference.invoke()
        tensors_per_sample.append({t: reference.get_tensor(t).copy() for t in needed})
    worst = {}
    for label, model, inputs, outputs in operators:
        micro = _micro_interpreter(model, arena_size)
        worst[label] = 0
        for tensors in tensors_per_sample:
            for position, tensor in enumerate(inputs):
                micro.set_input(tensors[tensor], position)
            micro.invoke()
            for position, tensor in enumerate(outputs):
                got = np.asarray(micro.get_output(position))
                if got.dtype not in (np.int8, np.int16):
                    continue  # int32 index outputs and the like: not requantised
                diff = np.abs(got.astype(np.int32) - tensors[tensor].astype(np.int32).reshape(got.shape)).max()
                worst[label] = max(worst[label], int(diff))
    return worst


def end_to_end_lsb(reference_outputs: list[dict[str, np.ndarray]], micro_outputs: list[dict[str, np.ndarray]]) -> int:
    """Largest |TFLite-Micro − LiteRT| over the named outputs of several samples."""
    return max(
        (
            int(np.abs(a[k].astype(np.int32) - b[k].astype(np.int32)).max())
            for a, b in zip(reference_outputs, micro_outputs)
            for k in a
        ),
        default=0,
    )


def _micro_interpreter(model: bytes, arena_size: int):
    from tflite_micro.python.tflite_micro import runtime

    while True:
        try:
            with quiet_native_stderr():  # a too-small arena is reported on stderr, then raised
                return runtime.Interpreter.from_bytes(model, arena_size=arena_size)
        except RuntimeError:
            if arena_size > 64 * 1024 * 1024:
                raise
            arena_size *= 2


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence what TFLite-Micro's C++ prints on stderr (failed allocations while searching an arena)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
