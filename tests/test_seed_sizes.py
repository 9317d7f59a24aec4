"""Model sizes against the seed papers' tables (shared/reference/seed_tables.md)."""

from __future__ import annotations

import dataclasses

import pytest

from keras_mtl.models.mtl import build_model
from keras_mtl.runs import config as run_config
from keras_mtl.tasks.registry import parse_task_set

# seed 001, Table 2: size of the flat 4-task model (GC, AC, SCR, VAD) by number of shared layers
TABLE2 = {0: 120_000, 4: 92_900, 5: 80_800, 6: 68_700, 7: 56_600, 8: 44_500}


def _trainable(model) -> int:
    return int(sum(w.shape.num_elements() for w in model.trainable_weights))


@pytest.mark.parametrize("shared, size", sorted(TABLE2.items()))
def test_seed001_flat_model_sizes(shared, size):
    model_config = run_config.build(run_config.load_preset("seed001")).model
    model = build_model(parse_task_set("gc,ac,scr,vad"), dataclasses.replace(model_config, shared_blocks=shared))
    assert abs(_trainable(model) - size) <= 0.05 * size
    names = {layer.name for layer in model.layers}
    if 0 < shared < 8:
        assert f"shared/conv{shared}" in names and f"gc/conv{shared + 1}" in names and f"vad/conv{shared + 1}" in names


def test_seed001_single_task_template_is_about_30k():
    model_config = run_config.build(run_config.load_preset("seed001")).model
    sizes = [_trainable(build_model([task], model_config)) for task in parse_task_set("gc,ac,scr,vad")]
    assert abs(sum(sizes) / 4 - 30_000) <= 0.05 * 30_000


def _profile(preset: str, task_set: str):
    from keras_mtl.models import profiling

    model_config = run_config.build(run_config.load_preset(preset)).model
    model = build_model(parse_task_set(task_set), model_config)
    layers = profiling.profile(model)
    return sum(l.params for l in layers), sum(l.macs for l in layers)


def test_seed000_table2_sizes():
    """CNN (ASC) 60k / 29M, CRNN (SED) 628k / 43M, MT 633.5k / 43.2M, params / MACs per 1 s, within 5%."""
    cnn = _profile("seed000_cnn", "asc")
    crnn = _profile("seed000", "sed")
    mt = _profile("seed000", "asc,sed")
    for (params, macs), (ref_params, ref_macs) in ((cnn, (60e3, 29e6)), (crnn, (628e3, 43e6)), (mt, (633.5e3, 43.2e6))):
        assert abs(params - ref_params) <= 0.05 * ref_params, (params, ref_params)
        assert abs(macs - ref_macs) <= 0.05 * ref_macs, (macs, ref_macs)
    # The paper: MT needs 7.8% fewer parameters and 40% fewer MACs than CNN + CRNN side by side.
    param_saving = 1 - mt[0] / (cnn[0] + crnn[0])
    mac_saving = 1 - mt[1] / (cnn[1] + crnn[1])
    assert 0.06 <= param_saving <= 0.10 and 0.37 <= mac_saving <= 0.43
