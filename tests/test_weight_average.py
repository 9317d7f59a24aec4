"""The calibration stage's weight average (keras_mtl.training.callbacks.WeightAverage)."""

from __future__ import annotations

import numpy as np

from keras_mtl.core.backend import keras, tf
from keras_mtl.training.callbacks import WeightAverage


def _network():
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, name="shared/dense")(inputs)
    hidden = keras.layers.BatchNormalization(name="shared/bn")(hidden)
    return keras.Model(inputs, keras.layers.Dense(2, name="a/out")(hidden))


def test_the_average_is_the_mean_of_the_active_epochs_and_survives_a_checkpoint(tmp_path):
    network = _network()
    average = WeightAverage(network)
    rng = np.random.default_rng(0)
    states = [[rng.normal(size=w.shape).astype(np.float32) for w in network.get_weights()] for _ in range(4)]
    network.set_weights(states[0])
    average.on_epoch_end(0)  # not active: an earlier stage's epoch is not averaged in
    average.active = True
    for epoch, state in enumerate(states[1:3], start=1):
        network.set_weights(state)
        average.on_epoch_end(epoch)
    saved = tf.train.Checkpoint(average=average.variables).write(str(tmp_path / "ckpt"))

    resumed = WeightAverage(network)  # --resume: a new process reads the running mean back and goes on
    tf.train.Checkpoint(average=resumed.variables).read(saved).assert_consumed()
    resumed.active = True
    network.set_weights(states[3])
    resumed.on_epoch_end(3)
    assert resumed.apply() == 3
    for got, *averaged in zip(network.get_weights(), *states[1:]):
        np.testing.assert_allclose(got, np.mean(averaged, axis=0), rtol=1e-6, atol=1e-6)


def test_nothing_averaged_leaves_the_network_unchanged():
    network = _network()
    before = network.get_weights()
    assert WeightAverage(network).apply() == 0
    for got, expected in zip(network.get_weights(), before):
        np.testing.assert_array_equal(got, expected)
