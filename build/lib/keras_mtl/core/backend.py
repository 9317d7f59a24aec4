"""The one place TensorFlow and tf_keras are imported from (legacy Keras 2 API).

Importing it also: turns TensorFlow's oneDNN kernels on for x86-64 CPUs where TensorFlow leaves
them off by default (AVX2-only CPUs train about 3x faster with them), and hides the start-up lines
TensorFlow prints about missing CUDA drivers on machines without a GPU, which read like errors.
An environment variable the user sets wins: ``TF_ENABLE_ONEDNN_OPTS=0`` keeps oneDNN off, and any
``TF_CPP_MIN_LOG_LEVEL`` set before keras_mtl is imported shows TensorFlow's start-up lines as is.
"""

import contextlib
import os
import platform
import re
import threading

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
USER_SET_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL" in os.environ and os.environ.get("KERAS_MTL_SET_LOG_LEVEL") != "1"
if not USER_SET_LOG_LEVEL:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    os.environ["KERAS_MTL_SET_LOG_LEVEL"] = "1"  # child processes see our setting, not the user's
if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# start-up lines of TensorFlow's C++ runtime that only say there is no GPU (or that oneDNN is on)
STARTUP_NOISE = re.compile(
    rb"All log messages before absl::InitializeLog|Could not find cuda drivers|failed call to cuInit"
    rb"|oneDNN custom operations are on|Unable to register cu(DNN|FFT|BLAS) factory"
    rb"|computation placer already registered|TF-TRT Warning|This TensorFlow binary is optimized"
    rb"|To enable the following instructions|rebuild TensorFlow with the appropriate compiler flags"
)


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern = STARTUP_NOISE):
    """Lines written to file descriptor 2 (also by C++ code) that match ``noise`` are dropped."""
    try:
        saved = os.dup(2)
        read_end, write_end = os.pipe()
    except OSError:
        yield
        return

    def pump():
        pending = b""
        while chunk := os.read(read_end, 65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not noise.search(line))
            if kept:
                os.write(saved, kept)
        if pending and not noise.search(pending):
            os.write(saved, pending)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump sees EOF
        thread.join(timeout=5)
        os.close(read_end)
        os.close(saved)


with contextlib.nullcontext() if USER_SET_LOG_LEVEL else filtered_stderr():
    import tensorflow as tf
    import tf_keras as keras

    tf.config.list_physical_devices()  # CUDA initialisation logs here, not at the first op

__all__ = ["tf", "keras", "onednn_enabled", "tracing_for_tflite", "in_tflite_trace"]


def onednn_enabled() -> bool:
    """Whether TensorFlow runs its oneDNN CPU kernels in this process (TF_ENABLE_ONEDNN_OPTS and the CPU)."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return False


_TFLITE_TRACING = threading.local()


@contextlib.contextmanager
def tracing_for_tflite():
    """Inside: graphs are traced for the TFLite converter, never run by TensorFlow's own kernels, so
    layers may use ops TFLite has but a TensorFlow CPU kernel lacks (see ``in_tflite_trace``)."""
    previous = getattr(_TFLITE_TRACING, "on", False)
    _TFLITE_TRACING.on = True
    try:
        yield
    finally:
        _TFLITE_TRACING.on = previous


def in_tflite_trace() -> bool:
    """True inside ``tracing_for_tflite``."""
    return getattr(_TFLITE_TRACING, "on", False)
