"""Model builder, SoftMTL step, profiler."""

from __future__ import annotations

import numpy as np
import pytest

from keras_mtl.core.backend import keras, tf
from keras_mtl.core.errors import ConfigError
from keras_mtl.models import profiling
from keras_mtl.models.mtl import ModelConfig, build_model, shared_layers, task_submodel
from keras_mtl.tasks.registry import get_task, parse_task_set
from keras_mtl.training.strategies import SoftMTL, WarmupCosine, make_optimizer

SMALL = ModelConfig(channels=(4, 8, 8), pools=((2, 4), (2, 4), (1, 8)), gru_units=8, dropout=0.0, head_dropout=0.0)


def _batch(task, frames, n=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, frames, 128)).astype(np.float32)
    if task.level == "clip":
        y = rng.integers(0, task.n_classes, size=n).astype(np.int32)
    else:
        y = (rng.random((n, frames // SMALL.time_pool_factor, task.n_classes)) > 0.8).astype(np.float32)
    return tf.constant(x), tf.constant(y)


def test_shared_layers_are_named_and_shared():
    tasks = parse_task_set("asc,sed")
    model = build_model(tasks, SMALL)
    names = [layer.name for layer in model.layers]
    for expected in (
        "shared/conv1",
        "shared/bn1",
        "shared/conv3",
        "shared/frames",
        "asc/attention",
        "asc/classifier",
        "sed/gru",
        "sed/classifier",
    ):
        assert expected in names
    frames = model.get_layer("shared/frames")
    consumers = {node.outbound_layer.name for node in frames.outbound_nodes}
    assert consumers == {"asc/attention", "sed/gru"}  # one layer, two consumers
    kernel = model.get_layer("shared/conv1").kernel
    asc_vars = {id(v) for v in task_submodel(model, "asc").trainable_variables}
    sed_vars = {id(v) for v in task_submodel(model, "sed").trainable_variables}
    assert id(kernel) in asc_vars and id(kernel) in sed_vars  # one variable in both task paths
    assert sum(1 for v in model.trainable_variables if v.name.startswith("shared/conv1/kernel")) == 1
    assert all(layer.name.startswith("shared/") for layer in shared_layers(model))


def test_variable_length_inputs_and_output_shapes():
    tasks = parse_task_set("asc,sed")
    model = build_model(tasks, SMALL)
    out_short = model(tf.zeros((1, 101, 128)))
    out_long = model(tf.zeros((1, 1001, 128)))
    assert out_short["asc"].shape == (1, 10) and out_long["asc"].shape == (1, 10)
    assert out_long["sed"].shape == (1, SMALL.output_frames(1001), 10) == (1, 250, 10)
    assert np.allclose(out_short["asc"].numpy().sum(), 1.0, atol=1e-5)


def test_single_task_model_from_the_same_builder():
    model = build_model([get_task("sed")], SMALL)
    assert set(model.output) == {"sed"}
    assert not any(layer.name.startswith("asc/") for layer in model.layers)


def test_partial_sharing_copies_later_blocks_per_task():
    config = ModelConfig(channels=(4, 8, 8), pools=((2, 4), (2, 4), (1, 8)), gru_units=8, shared_blocks=1)
    model = build_model(parse_task_set("asc,sed"), config)
    names = {layer.name for layer in model.layers}
    assert {"shared/conv1", "asc/conv2", "sed/conv2", "asc/conv3", "sed/conv3"} <= names
    assert "shared/conv2" not in names


def test_soft_mtl_step_updates_shared_and_both_heads():
    keras.utils.set_random_seed(0)
    tasks = parse_task_set("asc,sed")
    model = build_model(tasks, SMALL)
    strategy = SoftMTL(model, tasks)
    strategy.compile(optimizer=make_optimizer(1e-2, total_steps=10, warmup_fraction=0.0))
    watched = ["shared/conv1", "shared/conv3", "asc/attention", "asc/classifier", "sed/gru", "sed/classifier"]
    before = {name: [w.numpy().copy() for w in model.get_layer(name).trainable_weights] for name in watched}
    data = {"asc": _batch(tasks[0], 101), "sed": _batch(tasks[1], 401)}
    logs = strategy.train_step(data)
    assert {"loss", "asc_loss", "sed_loss", "asc_accuracy", "sed_frame_f1"} <= set(logs)
    assert float(logs["loss"]) == pytest.approx(0.5 * float(logs["asc_loss"]) + 0.5 * float(logs["sed_loss"]), rel=1e-4)
    for name in watched:
        after = model.get_layer(name).trainable_weights
        assert any(not np.allclose(b, a.numpy()) for b, a in zip(before[name], after)), f"{name} did not change"


def test_soft_mtl_single_task_leaves_other_head_alone():
    tasks = parse_task_set("asc")
    model = build_model(tasks, SMALL)
    strategy = SoftMTL(model, tasks)
    strategy.compile(optimizer=make_optimizer(1e-2, total_steps=10))
    logs = strategy.train_step({"asc": _batch(tasks[0], 101)})
    assert float(logs["loss"]) == pytest.approx(float(logs["asc_loss"]), rel=1e-5)


def test_warmup_cosine_schedule():
    schedule = WarmupCosine(1e-3, total_steps=100, warmup_fraction=0.1)
    values = [float(schedule(step)) for step in range(100)]
    assert values[0] == pytest.approx(1e-4) and values[9] == pytest.approx(1e-3)
    assert max(values) == pytest.approx(1e-3)
    assert values[99] < 1e-5 and all(a >= b for a, b in zip(values[10:], values[11:]))


def test_profiler_counts_by_hand():
    inp = keras.Input((None, 128), name="mel")
    x = keras.layers.Reshape((-1, 128, 1), name="shared/expand")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="shared/conv1")(x)
    x = keras.layers.BatchNormalization(name="shared/bn1")(x)
    x = keras.layers.MaxPooling2D((4, 128), name="shared/pool1")(x)
    x = keras.layers.Reshape((-1, 8), name="shared/frames")(x)
    g = keras.layers.GRU(4, return_sequences=True, name="sed/gru")(x)
    d = keras.layers.Dense(3, name="sed/classifier")(g)
    layers = {p.name: p for p in profiling.profile(keras.Model(inp, d))}
    assert layers["shared/conv1"].params == 72 and layers["shared/conv1"].macs == 101 * 128 * 8 * 9
    assert layers["shared/bn1"].params == 16 and layers["shared/bn1"].macs == 16
    assert layers["sed/gru"].macs == 25 * 3 * (8 + 4) * 4
    assert layers["sed/classifier"].params == 15 and layers["sed/classifier"].macs == 25 * 4 * 3


def test_separable_blocks_and_frequency_strides_shape_and_count():
    config = ModelConfig(separable=True, freq_strides=(2, 1, 1, 1, 1), pools=((2, 2), (2, 4), (1, 2), (1, 2), (1, 2)))
    assert config.freq_pool_factor == 128
    network = build_model(parse_task_set("asc,sed"), config)
    conv1, conv2 = network.get_layer("shared/conv1"), network.get_layer("shared/conv2")
    assert type(conv1) is keras.layers.Conv2D and conv1.strides == (1, 2)
    assert isinstance(conv2, keras.layers.SeparableConv2D)
    assert network(np.zeros((1, 101, 128), np.float32))["sed"].shape == (1, 25, 10)
    layers = {p.name: p for p in profiling.profile(network)}
    assert layers["shared/conv1"].output_shape == (101, 64, 16) and layers["shared/conv1"].macs == 101 * 64 * 16 * 9
    # depthwise 3 x 3 on 16 channels, then pointwise 16 -> 32, at 50 x 32 positions
    assert layers["shared/conv2"].macs == 50 * 32 * 16 * (9 + 32)
    assert layers["shared/conv2"].params == 16 * 9 + 16 * 32
    with pytest.raises(ConfigError, match="freq_strides"):
        ModelConfig(freq_strides=(2, 1))


def test_profiler_reproduces_the_cp_mobile_worked_example():
    """shared/reference: depthwise 3x3 over 64 channels, output 64 x 9 -> 576+128 params, 331,776+128 MACs."""
    inp = keras.Input((None, 128), name="mel")
    x = keras.layers.Reshape((-1, 128, 1), name="expand")(inp)
    x = keras.layers.Conv2D(64, 1, use_bias=False, name="pw")(x)
    x = keras.layers.AveragePooling2D((101 // 9, 2), name="pool")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    layers = {p.name: p for p in profiling.profile(keras.Model(inp, x))}
    assert layers["dw"].output_shape == (9, 64, 64)
    assert layers["dw"].params + layers["bn"].params == 704
    assert layers["dw"].macs + layers["bn"].macs == 331_904


def test_crnn_weak_output_is_attention_pooled():
    import dataclasses

    config = dataclasses.replace(SMALL, weak_output=True)
    model = build_model(parse_task_set("sed"), config)
    out = model(tf.random.normal((2, 401, 128)))
    assert set(out) == {"sed", "sed_weak"}
    strong, weak = out["sed"].numpy(), out["sed_weak"].numpy()
    assert weak.shape == (2, 10)
    assert np.all(weak <= strong.max(axis=1) + 1e-6) and np.all(weak >= strong.min(axis=1) - 1e-6)
    strategy = SoftMTL(model, parse_task_set("sed"))  # the weak output rides along; the strong one is trained
    strategy.compile(optimizer=make_optimizer(1e-3, total_steps=2))
    assert np.isfinite(float(strategy.train_step({"sed": _batch(parse_task_set("sed")[0], 401)})["loss"]))


def test_share_groups_build_a_two_level_tree():
    """Seed 001's worked example: 6 layers shared by all, {GC, AC} and {SCR, VAD} share 2 more (Table 4: 52,600)."""
    import dataclasses

    from keras_mtl.runs import config as run_config

    base = run_config.build(run_config.load_preset("seed001")).model
    config = dataclasses.replace(
        base,
        shared_blocks=6,
        share_groups=({"tasks": ["gc", "ac"], "blocks": 2}, {"tasks": ["scr", "vad"], "blocks": 2}),
    )
    model = build_model(parse_task_set("gc,ac,scr,vad"), config)
    names = {layer.name for layer in model.layers}
    assert {"shared/conv6", "gc-ac/conv7", "gc-ac/conv8", "scr-vad/conv7", "scr-vad/frames"} <= names
    assert "gc/conv7" not in names and "shared/conv7" not in names
    size = sum(w.shape.num_elements() for w in model.trainable_weights)
    assert abs(size - 52_600) <= 0.05 * 52_600
    with pytest.raises(Exception, match="two share groups"):
        dataclasses.replace(
            base, shared_blocks=4, share_groups=({"tasks": ["gc"], "blocks": 1}, {"tasks": ["gc"], "blocks": 1})
        )
