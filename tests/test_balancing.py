"""Gradient-level task balancing (keras_mtl.training.balancing): the formulas on hand-made
gradients, and each method lowering the loss of a small two-task problem."""

from __future__ import annotations

import numpy as np
import pytest

from keras_mtl.core.backend import keras, tf
from keras_mtl.training import balancing
from keras_mtl.training.callbacks import checkpoint_of
from keras_mtl.training.strategies import SoftMTL, StrategyOptions, make_optimizer


def test_pcgrad_projects_a_conflicting_pair_exactly_and_leaves_an_agreeing_pair():
    g1, g2 = np.array([1.0, 1.0, 0.0]), np.array([-1.0, 0.5, 2.0])  # g1 . g2 = -0.5 < 0
    out = balancing.pcgrad(tf.constant(np.stack([g1, g2]), tf.float32)).numpy()
    np.testing.assert_allclose(out[0], g1 - g1 @ g2 / (g2 @ g2) * g2, rtol=1e-6)
    np.testing.assert_allclose(out[1], g2 - g2 @ g1 / (g1 @ g1) * g1, rtol=1e-6)
    assert abs(out[0] @ g2) < 1e-6  # no longer conflicts
    agree = np.stack([g1, np.array([1.0, 0.0, 3.0])])
    np.testing.assert_allclose(balancing.pcgrad(tf.constant(agree, tf.float32)).numpy(), agree)


def test_cagrad_at_c_zero_is_the_mean_and_its_direction_helps_every_task():
    gradients = tf.constant([[1.0, 0.2, 0.0], [-0.6, 1.0, 0.3], [0.1, 0.1, 1.0]])
    np.testing.assert_allclose(balancing.cagrad(gradients, c=0.0).numpy(), tf.reduce_mean(gradients, 0).numpy())
    d = balancing.cagrad(gradients, c=0.5).numpy()
    assert (gradients.numpy() @ d > 0).all()  # a descent direction for every task


def test_uncertainty_loss_is_kendalls_formula():
    losses, s = [tf.constant(2.0), tf.constant(0.3)], [tf.constant(0.5), tf.constant(-1.0)]
    expected = 0.5 * np.exp(-0.5) * 2.0 + 0.25 + 0.5 * np.exp(1.0) * 0.3 - 0.5
    assert float(balancing.uncertainty_loss(losses, s)) == pytest.approx(expected, rel=1e-6)


def test_cosines_of_every_pair():
    values = balancing.cosines(tf.constant([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]))
    assert {k: round(float(v), 6) for k, v in values.items()} == {(0, 1): 0.0, (0, 2): -1.0, (1, 2): 0.0}


class _Clip:
    """A clip task stand-in for a toy network: mean squared error."""

    level = "clip"

    def __init__(self, name):
        self.name = name

    def loss(self, y, p):
        return tf.reduce_mean(tf.square(y - p))

    def keras_metrics(self):
        return []


def _toy(scale_b: float):
    x = keras.Input((4,), name="mel")
    h = keras.layers.Dense(8, activation="tanh", name="shared/dense")(x)
    out = {
        "a": keras.layers.Dense(1, name="a/classifier")(h),
        "b": keras.layers.Dense(1, name="b/classifier")(h),
    }
    network = keras.Model(x, out)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((64, 4)).astype(np.float32)
    ya = np.sin(xs[:, :1]).astype(np.float32)
    yb = (scale_b * np.cos(xs[:, 1:2])).astype(np.float32)
    return network, {"a": (tf.constant(xs), tf.constant(ya)), "b": (tf.constant(xs), tf.constant(yb))}


@pytest.mark.parametrize("method", sorted(balancing.BALANCERS))
def test_every_method_lowers_the_loss_on_a_small_problem(method):
    keras.utils.set_random_seed(0)
    network, batch = _toy(scale_b=10.0)
    strategy = SoftMTL(network, [_Clip("a"), _Clip("b")], StrategyOptions(balancing=method))
    strategy.compile(optimizer=make_optimizer(1e-2, total_steps=200, warmup_fraction=0.0))
    first = float(strategy.train_step(batch)["loss"])
    for _ in range(60):
        logs = strategy.train_step(batch)
    for tracker in strategy.metrics:
        tracker.reset_state()
    last = strategy.train_step(batch)
    assert float(last["a_loss"]) < 0.9 * float(batch["a"][1].numpy().var() + 1)
    assert float(last["loss"]) < first and np.isfinite(float(logs["loss"]))
    if balancing.BALANCERS[method].per_task:
        assert -1.0 <= float(last["cos_a_b"]) <= 1.0


@pytest.mark.parametrize("min_share", [0.0, 0.25])
def test_gradnorm_moves_tasks_of_very_different_scales_towards_equal_weighted_gradient_norms(min_share):
    keras.utils.set_random_seed(0)
    network, batch = _toy(scale_b=30.0)
    options = StrategyOptions(balancing="gradnorm", gradnorm_min_share=min_share)
    strategy = SoftMTL(network, [_Clip("a"), _Clip("b")], options)
    strategy.compile(optimizer=make_optimizer(1e-3, total_steps=400, warmup_fraction=0.0))
    shared = [network.trainable_variables[i] for i in strategy.shared_index]

    def norms():
        with tf.GradientTape(persistent=True) as tape:
            losses = strategy.task_losses(batch, training=False)
        out = [tf.linalg.global_norm(tape.gradient(losses[n][0], shared)).numpy() for n in ("a", "b")]
        return np.array(out)

    start = norms()
    for _ in range(80):
        strategy.train_step(batch)
    weights = np.array([strategy.loss_weights[n].numpy() for n in ("a", "b")])
    end = norms() * weights
    assert weights[1] < weights[0]  # the task with the larger gradients is weighted down
    assert abs(weights.sum() - 1.0) < 1e-5
    gap, start_gap = abs(np.log(end[1] / end[0])), abs(np.log(start[1] / start[0]))
    if not min_share:
        assert gap < 0.5 * start_gap
    else:  # scales further apart than the floor lets the weights follow: held at the floor, gap closed by > 1
        assert abs(weights.min() - min_share / 2) < 1e-5 and gap < start_gap - 1.0  # measured: 3.65 -> 2.17


@pytest.mark.parametrize("method", sorted(balancing.BALANCERS))
def test_a_restored_checkpoint_continues_every_method_as_the_uninterrupted_run(method, tmp_path):
    """What --resume restores (callbacks.checkpoint_of: network, optimizer, the method's state): a
    strategy restored after 5 steps takes the same next 5 steps as the one that went on."""

    def strategy_and_batch():
        keras.utils.set_random_seed(0)
        network, batch = _toy(scale_b=10.0)
        strategy = SoftMTL(network, [_Clip("a"), _Clip("b")], StrategyOptions(balancing=method))
        strategy.compile(optimizer=make_optimizer(1e-2, total_steps=200, warmup_fraction=0.0))
        return strategy, batch

    going, batch = strategy_and_batch()
    for _ in range(5):
        going.train_step(batch)
    saved = checkpoint_of(going).write(str(tmp_path / "ckpt"))
    restored, _ = strategy_and_batch()
    restored.train_step(batch)  # creates the optimizer's slots before the restore, as a resumed fit does
    checkpoint_of(restored).read(saved).assert_consumed()
    for _ in range(4):
        going.train_step(batch), restored.train_step(batch)
    for tracker in [*going.metrics, *restored.metrics]:  # the logs are running means since the last reset
        tracker.reset_state()
    expected, got = going.train_step(batch), restored.train_step(batch)
    for name in ("loss", "a_loss", "b_loss"):
        assert float(got[name]) == pytest.approx(float(expected[name]), rel=1e-5), name
    state = list(going.balancer.variables) + list(going.balancer.state)
    again = list(restored.balancer.variables) + list(restored.balancer.state)
    for a, b in zip(state, again):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
