"""HardMTL and DWA: what each updates, the DWA formula, and that training loss goes down."""

from __future__ import annotations

import numpy as np
import pytest

from keras_mtl.core.backend import keras, tf
from keras_mtl.data.pipeline import FeatureExtractor, make_semi_supervised_dataset
from keras_mtl.data.readers import desed
from keras_mtl.features.logmel import FrontEndConfig
from keras_mtl.models.mtl import ModelConfig, build_model
from keras_mtl.tasks.registry import parse_task_set
from keras_mtl.training.strategies import (
    CrossHardMTL,
    CrossSoftMTL,
    FreezeMTL,
    HardMTL,
    SoftMTL,
    ema_decay,
    make_optimizer,
    sigmoid_rampup,
)
from keras_mtl.training.weighting import DynamicWeightAverage, FocalTaskWeighting, dwa_weights, focal_task_weights

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
    sed_before, asc_before, shared_before = (
        _weights(model, "sed/gru"),
        _weights(model, "asc/classifier"),
        _weights(model, "shared/conv1"),
    )
    strategy.train_step(data)  # step 0: ASC
    assert all(np.array_equal(a, b) for a, b in zip(sed_before, _weights(model, "sed/gru")))
    assert not all(np.array_equal(a, b) for a, b in zip(asc_before, _weights(model, "asc/classifier")))
    assert not all(np.array_equal(a, b) for a, b in zip(shared_before, _weights(model, "shared/conv1")))
    asc_after = _weights(model, "asc/classifier")
    strategy.train_step(data)  # step 1: SED
    assert all(np.array_equal(a, b) for a, b in zip(asc_after, _weights(model, "asc/classifier")))
    assert not all(np.array_equal(a, b) for a, b in zip(sed_before, _weights(model, "sed/gru")))


def test_hard_mtl_fit_takes_turns_with_one_compiled_step_per_task():
    keras.utils.set_random_seed(0)
    tasks = parse_task_set("asc,sed")
    model = build_model(tasks, SMALL)
    strategy = HardMTL(model, tasks)
    strategy.compile(optimizer=make_optimizer(1e-2, total_steps=10, warmup_fraction=0.0))
    dataset = tf.data.Dataset.from_tensors(_data(tasks)).repeat()
    sed_before = _weights(model, "sed/gru")
    strategy.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0)  # step 0: ASC
    assert all(np.array_equal(a, b) for a, b in zip(sed_before, _weights(model, "sed/gru")))
    asc_after = _weights(model, "asc/classifier")
    strategy.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0)  # step 1: SED
    assert all(np.array_equal(a, b) for a, b in zip(asc_after, _weights(model, "asc/classifier")))
    assert not all(np.array_equal(a, b) for a, b in zip(sed_before, _weights(model, "sed/gru")))
    assert int(strategy.optimizer.iterations.numpy()) == 2


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


@pytest.mark.slow
@pytest.mark.parametrize("strategy_cls", [SoftMTL, HardMTL])
def test_strategies_reduce_the_training_loss(strategy_cls):
    keras.utils.set_random_seed(1)
    tasks = parse_task_set("asc,sed")
    model = build_model(tasks, SMALL)
    strategy = strategy_cls(model, tasks)
    strategy.compile(optimizer=make_optimizer(1e-2, total_steps=60, warmup_fraction=0.0))
    data = _data(tasks)

    def total():
        return sum(
            float(t.loss(data[t.name][1], strategy.paths[t.name](data[t.name][0], training=False))) for t in tasks
        )

    before = total()
    for _ in range(40):
        strategy.train_step(data)
    assert total() < 0.8 * before


# --- Cross, Freeze, mean teacher, MFL ----------------------------------------------------------


SMALL_WEAK = ModelConfig(
    channels=(4, 8), pools=((2, 16), (2, 8)), gru_units=8, dropout=0.0, head_dropout=0.0, weak_output=True
)


def _all_weights(layers):
    return [w.numpy().copy() for layer in layers for w in layer.weights]


def test_teacher_is_the_ema_of_the_student_after_k_steps():
    keras.utils.set_random_seed(2)
    tasks = parse_task_set("asc,sed")
    model = build_model(tasks, SMALL)
    strategy = CrossSoftMTL(model, tasks, max_ema_decay=0.6)
    strategy.compile(optimizer=make_optimizer(1e-2, total_steps=10, warmup_fraction=0.0))
    data = _data(tasks)
    expected = None
    for step in range(4):
        strategy.train_step(data)
        student = [w.numpy() for w in model.weights]
        decay = min(1.0 - 1.0 / (step + 1), 0.6)
        expected = student if expected is None else [decay * t + (1 - decay) * s for t, s in zip(expected, student)]
        assert float(ema_decay(step, 0.6)) == pytest.approx(decay)
    for teacher_weight, value in zip(strategy.teacher.weights, expected):
        np.testing.assert_allclose(teacher_weight.numpy(), value, rtol=1e-5, atol=1e-6)
    assert not all(np.array_equal(t.numpy(), s.numpy()) for t, s in zip(strategy.teacher.weights, model.weights))


def test_cross_loss_is_zero_when_student_and_teacher_agree():
    tasks = parse_task_set("asc,sed")
    model = build_model(tasks, SMALL)
    strategy = CrossHardMTL(model, tasks)
    features = _data(tasks)["asc"][0]
    outputs = model(features, training=False)
    assert float(strategy._cross_loss(tasks[0], outputs, outputs, training=True)) == 0.0
    other = dict(outputs, sed=outputs["sed"] * 0.5)
    assert float(strategy._cross_loss(tasks[0], other, outputs, training=True)) > 0.0
    # the task's own output is not distilled: a disagreement there adds nothing
    own = dict(outputs, asc=outputs["asc"] * 0.5)
    assert float(strategy._cross_loss(tasks[0], own, outputs, training=True)) == 0.0


def test_freeze_phase_two_leaves_encoder_and_first_decoder_bit_identical():
    keras.utils.set_random_seed(3)
    tasks = parse_task_set("asc,sed")
    model = build_model(tasks, SMALL)
    strategy = FreezeMTL(model, tasks, order=["asc", "sed"])
    data = _data(tasks)
    strategy.begin_phase(0)
    strategy.compile(optimizer=make_optimizer(1e-2, total_steps=10, warmup_fraction=0.0))
    sed_start = _weights(model, "sed/gru")
    strategy.train_step(data)
    assert all(np.array_equal(a, b) for a, b in zip(sed_start, _weights(model, "sed/gru")))  # phase 1: ASC only
    strategy.begin_phase(1)
    strategy.compile(optimizer=make_optimizer(1e-2, total_steps=10, warmup_fraction=0.0))
    frozen_layers = strategy.heads["asc"].layers
    assert any(layer.name == "shared/bn1" for layer in frozen_layers)
    frozen = _all_weights(frozen_layers)  # moving statistics included
    sed_before = _weights(model, "sed/gru")
    for _ in range(3):
        strategy.train_step(data)
    assert all(np.array_equal(a, b) for a, b in zip(frozen, _all_weights(frozen_layers)))
    assert not all(np.array_equal(a, b) for a, b in zip(sed_before, _weights(model, "sed/gru")))


def test_freeze_needs_an_order_naming_every_task():
    tasks = parse_task_set("asc,sed")
    with pytest.raises(Exception, match="--order"):
        FreezeMTL(build_model(tasks, SMALL), tasks, order=["asc"])


def _semi_splits(tiny_corpus, tmp_path):
    task = parse_task_set("sed")[0]
    root = tiny_corpus / "desed"
    extractor = FeatureExtractor(FrontEndConfig(), tmp_path / "cache")
    return task, [
        extractor.prepare(task, split, desed.read_desed(root, split), SMALL.time_pool_factor)
        for split in ("synthetic_train", "weak", "unlabeled")
    ]


def test_mean_teacher_batches_keep_items_in_their_roles(tiny_corpus, tmp_path):
    task, (strong, weak, unlabeled) = _semi_splits(tiny_corpus, tmp_path)
    features, targets = next(iter(make_semi_supervised_dataset(strong, weak, unlabeled, (3, 2, 2))))
    role = targets["role"].numpy()
    assert role.tolist() == [0, 0, 0, 1, 1, 2, 2] and features.shape[0] == 7
    frames = targets["strong"].numpy()
    clip_tags = targets["weak"].numpy()
    assert not frames[3:].any()  # no frame labels for weak or unlabelled items
    assert not clip_tags[5:].any()  # no tags for unlabelled items
    np.testing.assert_array_equal(clip_tags[:3], frames[:3].max(axis=1))  # strong items: tags from their events
    weak_tags = {tuple(np.flatnonzero(row)) for row in clip_tags[3:5]}
    expected = {tuple(sorted(task.classes.index(t) for t in item.tags)) for item in weak.items}
    assert weak_tags <= expected
    strong_sums = {float(t.sum()) for t in strong.targets}
    assert {float(f.sum()) for f in frames[:3]} <= strong_sums


def test_mean_teacher_loss_uses_each_label_only_for_its_role():
    keras.utils.set_random_seed(4)
    tasks = parse_task_set("sed")
    model = build_model(tasks, SMALL_WEAK)
    strategy = SoftMTL(model, tasks, mean_teacher_tasks=["sed"], rampup_steps=0)
    strategy.compile(optimizer=make_optimizer(1e-2, total_steps=10, warmup_fraction=0.0))
    features, frames = _data(tasks, n=6)["sed"]
    targets = {
        "strong": frames.numpy(),
        "weak": frames.numpy().max(axis=1),
        "role": np.array([0, 0, 1, 1, 2, 2], np.int32),
    }

    def supervised(t):
        return float(
            strategy._semi_supervised_loss(
                tasks[0],
                {k: tf.constant(v) for k, v in t.items()},
                model(features, training=False),
                None,
                training=False,
            )[0]
        )

    base = supervised(targets)
    changed = {k: v.copy() for k, v in targets.items()}
    changed["strong"][2:] = 1.0 - changed["strong"][2:]  # frame labels of weak/unlabelled items: ignored
    changed["weak"][4:] = 1.0 - changed["weak"][4:]  # tags of unlabelled items: ignored
    assert supervised(changed) == pytest.approx(base)
    changed["weak"][2] = 1.0 - changed["weak"][2]  # a weak item's tags count
    assert supervised(changed) != pytest.approx(base)


def test_rampup_and_mfl_weights_on_hand_examples():
    assert float(sigmoid_rampup(0, 10)) == pytest.approx(np.exp(-5))
    assert float(sigmoid_rampup(5, 10)) == pytest.approx(np.exp(-1.25))
    assert float(sigmoid_rampup(30, 10)) == 1.0
    # kappa 0.5 and 0.9, gamma 2: raw 0.25 ln 2 = 0.17329 and 0.01 ln(1/0.9) = 0.0010536, rescaled to sum 2
    weights = focal_task_weights(np.array([0.5, 0.9]), gamma=2.0)
    raw = np.array([0.25 * np.log(2), 0.01 * -np.log(0.9)])
    assert weights == pytest.approx(2 * raw / raw.sum())
    assert weights[0] == pytest.approx(1.98798, abs=1e-4)


def test_mfl_callback_moves_weight_to_the_weaker_task():
    tasks = parse_task_set("asc,sed")
    strategy = SoftMTL(build_model(tasks, SMALL), tasks)
    callback = FocalTaskWeighting(strategy)
    callback.on_train_begin()
    callback.on_epoch_end(0, {"asc_accuracy": 0.9, "sed_frame_f1": 0.3})
    assert float(strategy.loss_weights["sed"].numpy()) > 1.5 > float(strategy.loss_weights["asc"].numpy())


def _training_loss_before_and_after(strategy, tasks, train_data, plain_data, callbacks=(), epochs=8):
    """Summed task losses on ``plain_data`` before and after fitting every phase on ``train_data``."""

    def total():
        return sum(
            float(t.loss(plain_data[t.name][1], strategy.paths[t.name](plain_data[t.name][0], training=False)))
            for t in tasks
        )

    before = total()
    dataset = tf.data.Dataset.from_tensors(train_data).repeat()
    for index, _ in enumerate(strategy.phases()):
        strategy.begin_phase(index)
        strategy.compile(optimizer=make_optimizer(1e-2, total_steps=epochs * 5, warmup_fraction=0.0))
        strategy.fit(dataset, epochs=epochs, steps_per_epoch=5, verbose=0, callbacks=list(callbacks))
    return before, total()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["cross-soft", "cross-hard", "freeze", "soft+dwa", "soft+mfl", "soft+mean-teacher", "hard+mean-teacher"]
)
def test_every_strategy_and_weighting_reduces_the_training_loss(name):
    from keras_mtl.training.registry import get_strategy
    from keras_mtl.training.weighting import make_weighting

    keras.utils.set_random_seed(5)
    tasks = parse_task_set("asc,sed")
    strategy_name, _, extra = name.partition("+")
    semi = extra == "mean-teacher"
    options = {"order": ["sed", "asc"]} if strategy_name == "freeze" else {}
    if semi:
        options["mean_teacher_tasks"] = ["sed"]
    strategy = get_strategy(strategy_name)(build_model(tasks, SMALL_WEAK if semi else SMALL), tasks, **options)
    plain = _data(tasks)
    train_data = dict(plain)
    if semi:  # three strongly labelled items and one unlabelled
        features, frames = plain["sed"]
        train_data["sed"] = (
            features,
            {"strong": frames, "weak": tf.reduce_max(frames, axis=1), "role": tf.constant([0, 0, 0, 2], tf.int32)},
        )
    callbacks = [make_weighting(extra, strategy)] if extra in ("dwa", "mfl") else []
    before, after = _training_loss_before_and_after(strategy, tasks, train_data, plain, callbacks)
    assert after < 0.8 * before
    if callbacks:
        assert any(abs(float(w.numpy()) - 1.0) > 1e-6 for w in strategy.loss_weights.values())


def test_strategies_declare_their_options_and_the_trainer_names_none():
    """Each strategy builds its own options from a run's configuration and checks the run's settings;
    the fit loop asks the strategy and never branches on a strategy's name."""
    import dataclasses
    from pathlib import Path

    from keras_mtl.cli import common
    from keras_mtl.core.errors import ConfigError
    from keras_mtl.runs import config as run_config
    from keras_mtl.training import fit
    from keras_mtl.training.registry import STRATEGIES, get_strategy

    def configured(**changes):
        return run_config.build(run_config.merge(common.base_config("tiny"), {"tasks": ["asc", "sed"], **changes}))

    freeze = configured(strategy="freeze", order=["sed", "asc"])
    for name, cls in STRATEGIES.items():
        assert dataclasses.is_dataclass(cls.Options), name
        options = cls.options_from(freeze, 120, () if cls.architecture_only else ("sed",))
        assert isinstance(options, cls.Options), name
    assert get_strategy("freeze").options_from(freeze, 120).order == ("sed", "asc")
    cross = get_strategy("cross-soft").options_from(configured(), 120, ("sed",))
    assert cross.cross_weight == configured().training.cross_weight and cross.mean_teacher_tasks == ("sed",)
    assert cross.rampup_steps == round(configured().training.rampup_fraction * 120)
    get_strategy("freeze").check(freeze, "freeze")
    with pytest.raises(ConfigError, match="needs --order"):
        get_strategy("freeze").check(configured(strategy="freeze"), "freeze")
    with pytest.raises(ConfigError, match="strategy hard"):
        get_strategy("hard").check(configured(strategy="hard", alpha=0.6), "hard")
    source = Path(fit.__file__).read_text()
    assert not [name for name in STRATEGIES if f'"{name}"' in source]
    assert "__name__ ==" not in source and "config.strategy ==" not in source
