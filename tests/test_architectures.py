"""Smoke test over every registered architecture: build, forward on 1 s and 10 s, profile, 2 training steps."""

from __future__ import annotations

import numpy as np
import pytest

from keras_mtl.core.backend import keras, tf
from keras_mtl.core.errors import ConfigError
from keras_mtl.models import architectures, profiling
from keras_mtl.tasks.registry import parse_task_set
from keras_mtl.training.strategies import SoftMTL, make_optimizer

TASKS = {
    "mtl": ("asc,sed", {"channels": (4, 8), "pools": ((2, 16), (2, 8)), "gru_units": 8}),
    "cp_mobile": ("asc", {"base_channels": 8}),
    "cp_mobile_rnn": ("asc,sed", {"base_channels": 8, "gru_units": 8}),
    "georgiev_dnn": ("asc,scr", {"hidden": (16, 16, 16)}),
    "mtl-vae": (
        "sed",
        {"channels": (4, 8), "pools": ((2, 16), (2, 8)), "encoder_units": 8, "latent_dim": 4, "decoder_units": 8},
    ),
}


def test_every_registered_architecture_is_covered():
    assert set(TASKS) == set(architectures.REGISTRY)


@pytest.mark.parametrize("name", sorted(architectures.REGISTRY))
def test_architecture_smoke(name):
    keras.utils.set_random_seed(0)
    task_set, options = TASKS[name]
    tasks = parse_task_set(task_set)
    architecture = architectures.get_architecture(name)
    model = architectures.build(name, tasks, **options)
    for frames in (101, 1001):  # 1 s and 10 s
        out = model(tf.zeros((1, frames, 128)))
        for task in tasks:
            if task.level == "clip":
                assert out[task.name].shape == (1, task.n_classes)
            else:
                assert out[task.name].shape == (1, architecture.output_frames(options, frames), task.n_classes)
    layers = profiling.profile(model)
    assert sum(l.params for l in layers) == sum(w.shape.num_elements() for w in model.trainable_weights)
    assert sum(l.macs for l in layers) > 0
    if architecture.strategy == "mtl-vae":
        from keras_mtl.training.vae import MTLVAE

        strategy = MTLVAE(model, tasks)
    else:
        strategy = SoftMTL(model, tasks)
    strategy.compile(optimizer=make_optimizer(1e-3, total_steps=2))
    rng = np.random.default_rng(0)
    before = [w.numpy().copy() for w in model.trainable_weights]
    for _ in range(2):
        batch = {}
        for task in tasks:
            frames = 101 if task.level == "clip" else 401
            x = rng.standard_normal((2, frames, 128)).astype(np.float32)
            if task.level == "clip":
                y = rng.integers(0, task.n_classes, size=2).astype(np.int32)
            else:
                y = (rng.random((2, architecture.output_frames(options, frames), task.n_classes)) > 0.8).astype(
                    np.float32
                )
            batch[task.name] = (tf.constant(x), tf.constant(y))
        logs = strategy.train_step(batch)
        assert np.isfinite(float(logs["loss"]))
    assert any(not np.allclose(b, a.numpy()) for b, a in zip(before, model.trainable_weights))


def test_registry_rejects_tasks_it_cannot_predict():
    with pytest.raises(ConfigError, match="cannot predict frame-level task sed"):
        architectures.build("cp_mobile", parse_task_set("sed"))
    with pytest.raises(ConfigError, match="unknown architecture 'resnet'"):
        architectures.build("resnet", parse_task_set("asc"))
