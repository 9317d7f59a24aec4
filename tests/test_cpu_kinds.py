"""CPUs without oneDNN (AVX2-only x86, TF_ENABLE_ONEDNN_OPTS=0): every architecture still builds,
trains, profiles and exports; and TensorFlow's no-GPU start-up lines are hidden unless asked for."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from keras_mtl.core import backend
from tests.conftest import REPO, keras_mtl_command

EQUIVALENCE = """
import sys, numpy as np
from keras_mtl.core.backend import onednn_enabled
from keras_mtl.models.cp_mobile import AnyStrideDepthwiseConv2D
rng = np.random.default_rng(0)
out = {"onednn": np.array(onednn_enabled())}
for stride in ((2, 1), (1, 2), (2, 2)):
    for n in (17, 64):
        for padding in ("same", "valid"):
            layer = AnyStrideDepthwiseConv2D(3, strides=stride, padding=padding, use_bias=False)
            x = rng.standard_normal((1, n, n + 3, 4)).astype(np.float32)
            layer.build(x.shape)
            layer.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in layer.get_weights()])
            out[f"{stride}-{n}-{padding}"] = layer(x).numpy()
np.savez(sys.argv[1], **out)
"""


def run(args, onednn: str, **kwargs):
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn}
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=600, **kwargs)


def test_unequal_strides_give_the_same_outputs_with_and_without_onednn(tmp_path):
    outputs = {}
    for onednn in ("0", "1"):
        result = run([sys.executable, "-c", EQUIVALENCE, str(tmp_path / f"{onednn}.npz")], onednn)
        assert result.returncode == 0, result.stderr[-2000:]
        outputs[onednn] = np.load(tmp_path / f"{onednn}.npz")
    assert not outputs["0"]["onednn"]  # the user's TF_ENABLE_ONEDNN_OPTS=0 wins
    if not outputs["1"]["onednn"]:
        pytest.skip("this TensorFlow build has no oneDNN kernels to compare with")
    for key in outputs["0"].files:
        if key != "onednn":
            np.testing.assert_allclose(outputs["0"][key], outputs["1"][key], atol=1e-5, err_msg=key)


@pytest.mark.slow
def test_every_architecture_smoke_test_passes_with_onednn_off():
    result = run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "tests/test_architectures.py",
        ],
        "0",
    )
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ("profile", "--model", "cp_mobile"),
        ("train", "--task-set", "asc", "--architecture", "cp_mobile", "--dry-run"),
        ("train", "--task-set", "asc,sed", "--architecture", "cp_mobile_rnn", "--dry-run", "--config", "HOP200"),
    ],
    ids=["profile-cp_mobile", "dry-run-cp_mobile", "dry-run-cp_mobile_rnn"],
)
def test_the_reported_commands_work_with_onednn_off(args, tmp_path):
    # cp_mobile_rnn pools time by 8: it needs a hop giving a multiple of 8 frames a second to export
    hop = tmp_path / "hop200.yaml"
    hop.write_text("frontend:\n  hop_length: 200\n")
    args = [str(hop) if a == "HOP200" else a for a in args]
    result = run([*keras_mtl_command(), *args], "0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MACs" in result.stdout


def test_start_up_noise_is_dropped_and_other_lines_kept(capfd):
    with backend.filtered_stderr():
        os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine\n")
        os.write(2, b"E0000 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n")
        os.write(2, b"a line that matters\n")
    assert capfd.readouterr().err == "a line that matters\n"


def test_importing_the_backend_prints_nothing_on_stderr_and_turns_onednn_on_by_default_on_x86():
    """One fresh interpreter with none of the settings in its environment: no start-up noise on stderr,
    and oneDNN on where TensorFlow has it (x86). TF_ENABLE_ONEDNN_OPTS=0 winning is asserted by
    test_unequal_strides_give_the_same_outputs_with_and_without_onednn."""
    import platform

    unset = ("TF_CPP_MIN_LOG_LEVEL", "KERAS_MTL_SET_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    code = (
        "from keras_mtl.core.backend import onednn_enabled, tf\n"
        "print(float(tf.reduce_sum(tf.ones(3))), onednn_enabled())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    total, onednn = result.stdout.split()
    assert total == "3.0"
    assert "cuda" not in result.stderr.lower() and "absl" not in result.stderr, result.stderr
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert onednn == "True"


EXPORT = """
import numpy as np
from keras_mtl.core.backend import keras
from keras_mtl.deploy.tflite import convert_int8, operators
from keras_mtl.models import architectures
from keras_mtl.tasks.registry import parse_task_set
keras.utils.set_random_seed(0)
model = architectures.build("cp_mobile", parse_task_set("asc"), base_channels=8)
mel = keras.Input((101, 128), batch_size=1, name="mel")
static = keras.Model(mel, model(mel))
rng = np.random.default_rng(0)
flatbuffer = convert_int8(static, lambda: ({"mel": rng.standard_normal((1, 101, 128))} for _ in range(4)))
print(" ".join(sorted(set(operators(flatbuffer)))))
"""


@pytest.mark.slow
def test_cp_mobile_exports_its_strided_depthwise_convolutions_with_onednn_off():
    result = run([sys.executable, "-c", EXPORT], "0")
    assert result.returncode == 0, result.stderr[-2000:]
    ops = result.stdout.split()
    assert "DEPTHWISE_CONV_2D" in ops and "STRIDED_SLICE" not in ops, ops
