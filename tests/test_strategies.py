"""HardMTL and DWA: what each updates, the DWA formula, and that training loss goes down."""
from __future__ import annotations

import numpy as np
import pytest

from keras_mtl.backend import keras, tf
from keras_mtl.models import ModelConfig, build_model
from keras_mtl.strategies import HardMTL, SoftMTL, make_optimizer
from keras_mtl.tasks import parse_task_set
from keras_mtl.weighting import DynamicWeightAverage, dwa_weights

SMALL = ModelConfig(channels=(4, 8), pools=((2, 16), (2, 8)), gru_units=8, dropout=0.0, head_dropout=0.0)


def _data(tasks, seed=0, n=4):
    rng = np.random.default_rng(seed)
    out = {}
    for task in tasks:
        frames = 101 if task.level == "clip" else 201
        x = rng.standard_normal((n, frames, 128)).astype(np.float32)
        if task.level == "clip":
            y = np.arange(n) % task.n_classes
            x += y[:, None, None] * 0.5  # learnable
            y = y.astype(np.int32)
        else:
            y = np.zeros((n, frames // SMALL.time_pool_factor, task.n_classes), np.float32)
            y[:, 10:30, 0] = 1.0
            x[:, 40:120, :20] += 3.0
        out[task.name] = (tf.constant(x), tf.constant(y))
    return out


def _weights(model, layer):
    return [w.numpy().copy() for w in model.get_layer(layer).trainable_weights]


def test_hard_mtl_alternates_and_leaves_the_other_decoder_bit_identical():
    keras.utils.set_random_seed(0)
    tasks = parse_task_set("asc,sed")
    model = build_model(tasks, SMALL)
    strategy = HardMTL(model, tasks)
    strategy.compile(optimizer=make_optimizer(1e-2, total_steps=10, warmup_fraction=0.0))
    data = _data(tasks)
    sed_before, asc_before, shared_before = _weights(model, "sed/gru"), _weights(model, "asc/classifier"), _weights(model, "shared/conv1")
    strategy.train_step(data)  # step 0: ASC
    assert all(np.array_equal(a, b) for a, b in zip(sed_before, _weights(model, "sed/gru")))
    assert not all(np.array_equal(a, b) for a, b in zip(asc_before, _weights(model, "asc/classifier")))
    assert not all(np.array_equal(a, b) for a, b in zip(shared_before, _weights(model, "shared/conv1")))
    asc_after = _weights(model, "asc/classifier")
    strategy.train_step(data)  # step 1: SED
    assert all(np.array_equal(a, b) for a, b in zip(asc_after, _weights(model, "asc/classifier")))
    assert not all(np.array_equal(a, b) for a, b in zip(sed_before, _weights(model, "sed/gru")))


def test_dwa_formula_on_a_hand_computed_example():
    # ratios 0.8/1.0 = 0.8 and 0.3/0.6 = 0.5; T = 2 -> K * exp(r/T) / sum = 2 * e^0.4 / (e^0.4 + e^0.25)
    weights = dwa_weights(np.array([0.8, 0.3]), np.array([1.0, 0.6]), temperature=2.0)
    expected = 2 * np.exp([0.4, 0.25]) / np.exp([0.4, 0.25]).sum()
    assert weights == pytest.approx(expected)
    assert weights.sum() == pytest.approx(2.0) and weights[0] == pytest.approx(1.0749, abs=1e-4)


def test_dwa_callback_assigns_weights_after_two_epochs():
    tasks = parse_task_set("asc,sed")
    strategy = SoftMTL(build_model(tasks, SMALL), tasks)
    callback = DynamicWeightAverage(strategy)
    callback.on_train_begin()
    assert [float(w.numpy()) for w in strategy.loss_weights.values()] == [1.0, 1.0]
    logs = {"asc_loss": 1.0, "sed_loss": 0.6}
    callback.on_epoch_end(0, logs)
    assert logs["weight_asc"] == 1.0 and [float(w.numpy()) for w in strategy.loss_weights.values()] == [1.0, 1.0]
    callback.on_epoch_end(1, {"asc_loss": 0.8, "sed_loss": 0.3})
    assert float(strategy.loss_weights["asc"].numpy()) == pytest.approx(1.0749, abs=1e-4)


@pytest.mark.parametrize("strategy_cls", [SoftMTL, HardMTL])
def test_strategies_reduce_the_training_loss(strategy_cls):
    keras.utils.set_random_seed(1)
    tasks = parse_task_set("asc,sed")
    model = build_model(tasks, SMALL)
    strategy = strategy_cls(model, tasks)
    strategy.compile(optimizer=make_optimizer(1e-2, total_steps=60, warmup_fraction=0.0))
    data = _data(tasks)

    def total():
        return sum(float(t.loss(data[t.name][1], strategy.paths[t.name](data[t.name][0], training=False))) for t in tasks)

    before = total()
    for _ in range(40):
        strategy.train_step(data)
    assert total() < 0.8 * before
