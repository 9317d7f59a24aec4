"""CP-Mobile as in the DCASE 2024 Task 1 baseline: every per-layer row of the published table."""

from __future__ import annotations

import numpy as np
import pytest

from keras_mtl.features.logmel import FrontEndConfig
from keras_mtl.models import profiling
from keras_mtl.models.cp_mobile import CPMobileConfig, build_cp_mobile, make_divisible

# (row, params, MACs), copied from the baseline's README table (shared/reference).
PUBLISHED = [
    ("in_c0", 88, 304144),
    ("in_c1", 2368, 2506816),
    ("b1/expand", 2176, 2228352),
    ("b1/depthwise", 704, 626816),
    ("b1/project", 2112, 2228288),
    ("b2/expand", 2176, 2228352),
    ("b2/depthwise", 704, 626816),
    ("b2/project", 2112, 2228288),
    ("b3/expand", 2176, 2228352),
    ("b3/depthwise", 704, 331904),
    ("b3/project", 2112, 1179712),
    ("b4/expand", 2176, 1179776),
    ("b4/depthwise", 704, 166016),
    ("b4/project", 3696, 1032304),
    ("b5/expand", 6960, 1935600),
    ("b5/depthwise", 1320, 311280),
    ("b5/project", 6832, 1935472),
    ("b6/expand", 6960, 1935600),
    ("b6/depthwise", 1320, 311280),
    ("b6/project", 12688, 3594448),
]
CLASSIFIER = [("asc/classifier_conv", 1040, 299520), ("asc/classifier_bn", 20, 20), ("asc/pool", 0, 0)]
# 32 kHz, hop 500 -> 65 frames per second; 256 mel bands (the baseline's front end)
BASELINE_FRONTEND = FrontEndConfig(sample_rate=32000, window_length=3072, hop_length=500, fft_length=4096, n_mels=256)


def test_make_divisible_matches_the_baseline_channels():
    assert [make_divisible(v) for v in (8, 32, 57.6, 103.68, 32 * 2.1, 56 * 2.1)] == [8, 32, 56, 104, 64, 120]
    assert CPMobileConfig().stage_channels() == [32, 56, 104]


def test_dcase2024_baseline_reproduced_row_by_row():
    layers = profiling.profile(build_cp_mobile(10), BASELINE_FRONTEND)
    by_row = {}
    for layer in layers:
        for row, _, _ in PUBLISHED:
            if layer.name.startswith(f"shared/{row}/"):
                params, macs = by_row.get(row, (0, 0))
                by_row[row] = (params + layer.params, macs + layer.macs)
    assert [(row, *by_row[row]) for row, _, _ in PUBLISHED] == PUBLISHED
    named = {layer.name: (layer.params, layer.macs) for layer in layers}
    assert [(name, *named[name]) for name, _, _ in CLASSIFIER] == CLASSIFIER
    assert sum(l.params for l in layers) == 61_148
    assert sum(l.macs for l in layers) == 29_419_156
    shapes = {layer.name: layer.output_shape for layer in layers}
    assert shapes["shared/b3/depthwise/conv"] == (9, 64, 64)  # time stride 2 in block 3
    assert shapes["shared/b4/depthwise/conv"] == (9, 32, 64)  # frequency stride 2 in block 4


def test_cp_mobile_with_grn_runs_and_counts_its_parameters():
    model = build_cp_mobile(10, CPMobileConfig(grn=True))
    out = model(np.zeros((2, 65, 256), np.float32))["asc"].numpy()
    assert out.shape == (2, 10) and np.allclose(out.sum(axis=1), 1.0, atol=1e-5)
    grn = [l for l in model.layers if l.name.endswith("/grn")]
    assert len(grn) == 6
    assert model.count_params() - build_cp_mobile(10).count_params() == sum(2 * l.gamma.shape[0] for l in grn)


@pytest.mark.slow
def test_profile_script_prints_the_baseline_totals():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "profile.py"
    result = subprocess.run([sys.executable, str(script), "--model", "cp_mobile"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "61,148" in result.stdout and "29,419,156" in result.stdout and "int8 weights" in result.stdout


def test_activation_estimate_is_the_largest_layer_input_plus_output():
    layers = profiling.profile(build_cp_mobile(10), BASELINE_FRONTEND)
    # the first stem conv: input 65x256x1, output 33x128x8
    first = next(l for l in layers if l.name == "shared/in_c0/conv")
    assert first.input_elements == 65 * 256 and np.prod(first.output_shape) == 33 * 128 * 8
    assert profiling.activation_bytes(layers) == max(l.input_elements + int(np.prod(l.output_shape)) for l in layers)
