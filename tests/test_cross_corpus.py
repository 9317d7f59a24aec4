"""Tasks from different corpora (issue 28): what the deployed network computes for each corpus is
what that corpus was trained with, and the normalisation survives the export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_mtl.cli import common as cli
from keras_mtl.core.backend import keras, tf
from keras_mtl.core.errors import ConfigError
from keras_mtl.models import normalization
from keras_mtl.models.joint import pooled_batch_norm
from keras_mtl.models.mtl import ModelConfig, build_model
from keras_mtl.runs import config as run_config
from keras_mtl.runs.inputs import prepare_data
from keras_mtl.tasks.registry import parse_task_set, resolve_tasks
from keras_mtl.training.fit import calibration_batches, training_batches
from keras_mtl.training.strategies import CrossSoftMTL, HardMTL, SoftMTL, make_optimizer

SMALL = ModelConfig(channels=(8, 8), pools=((2, 16), (2, 8)), gru_units=8, dropout=0.0, head_dropout=0.0)
REAL_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-mini"


def _two_corpora(tasks, n=8, seed=0):
    """ASC's corpus: log-mel of loud broadband noise; SED's: 20 dB quieter (ln 100 lower in every band)
    and band-limited (the upper half of the bands at the log floor, as 8 kHz audio resampled to 16 kHz)."""
    rng = np.random.default_rng(seed)
    asc, sed = tasks
    x_asc = rng.normal(0.0, 1.0, (n, 101, 128)).astype(np.float32)
    y_asc = (np.arange(n) % asc.n_classes).astype(np.int32)
    x_asc += 0.5 * y_asc[:, None, None]
    x_sed = rng.normal(-np.log(100.0), 1.0, (n, 201, 128)).astype(np.float32)
    x_sed[:, :, 64:] = np.log(1e-6)
    y_sed = np.zeros((n, 201 // SMALL.time_pool_factor, sed.n_classes), np.float32)
    y_sed[:, 10:30, 0] = 1.0
    x_sed[:, 40:120, :20] += 3.0
    return {asc.name: (tf.constant(x_asc), tf.constant(y_asc)), sed.name: (tf.constant(x_sed), tf.constant(y_sed))}


def _train(mode: str, steps: int = 60):
    keras.utils.set_random_seed(0)
    tasks = parse_task_set("asc,sed")
    data = _two_corpora(tasks)
    # the input normalisation's statistics over both corpora, as training computes them
    frames = np.concatenate([data[t.name][0].numpy().reshape(-1, 128) for t in tasks])
    network = build_model(tasks, SMALL, frames.mean(axis=0), frames.var(axis=0))
    if mode == "renorm":
        network = normalization.with_batch_renorm(network)
    strategy = SoftMTL(network, tasks, joint_batch_norm=mode == "joint")
    strategy.compile(optimizer=make_optimizer(3e-3, total_steps=steps, warmup_fraction=0.0))
    for _ in range(steps):
        strategy.train_step(data)
    return strategy, tasks, data


def _train_inference_gap(strategy, tasks, data) -> dict:
    """Per task, on its own corpus: the largest difference between its outputs normalised as in
    training (the step's forward pass in training mode) and as deployed (inference mode)."""
    network = strategy.network
    saved = network.get_weights()
    trained = strategy.student_outputs(data, training=True)  # joint: every corpus in one pass
    network.set_weights(saved)  # training mode moved the moving averages
    for task in tasks if not trained else ():
        trained[task.name] = network(data[task.name][0], training=True)
        network.set_weights(saved)
    return {
        task.name: float(
            np.max(np.abs(trained[task.name][task.name] - network(data[task.name][0], training=False)[task.name]))
        )
        for task in tasks
    }


@pytest.mark.slow  # trains a network for every batch-norm mode (about a minute)
def test_each_corpus_trains_with_the_statistics_it_is_deployed_with():
    # Bounds. Batch Renormalization's training pass normalises with the moving statistics themselves (the
    # renorm averages, with the layer's momentum, are the same running averages): float rounding alone
    # while the correction stays inside its clipping, 1e-4 on probabilities in [0, 1]. Joint statistics
    # normalise with the pooled batch statistics, which the moving averages follow (momentum 0.9, the
    # learning rate decayed to 0 over 60 steps on fixed batches: measured 0.018 and 0.005): 0.03, where
    # per-task statistics give 0.34 and 0.17 on the same corpora. Per-task statistics miss
    # both by far: each corpus trains with its own batch statistics and is deployed with their blend.
    renorm = _train_inference_gap(*_train("renorm"))
    joint = _train_inference_gap(*_train("joint"))
    per_task = _train_inference_gap(*_train("per-task"))
    assert max(renorm.values()) < 1e-4, renorm
    assert max(joint.values()) < 0.03, joint
    assert max(per_task.values()) > 0.1, per_task


def test_calibrated_statistics_are_the_mixture_s_and_training_then_normalises_as_deployed():
    """--batch-norm calibrated: per-task steps, then PreciseBN over the tasks' mixture (the first shared
    batch normalisation's moving mean = the mean of the two corpora's batch means, equal shares), then
    steps with every batch normalisation frozen: training-mode outputs equal inference outputs for both
    corpora (no dropout in the small network: exactly), where per-task training missed by > 0.1."""
    from keras_mtl.models.joint import precise_statistics

    strategy, tasks, data = _train("per-task", steps=40)
    network = strategy.network
    assert max(_train_inference_gap(strategy, tasks, data).values()) > 0.1
    batches = [{t.name: data[t.name][0] for t in tasks}] * 3
    assert precise_statistics(network, iter(batches), steps=3) == 3
    layer = network.get_layer("shared/bn1")
    probe = keras.Model(network.input, layer.input)
    means = [np.asarray(probe(data[t.name][0])).reshape(-1, layer.moving_mean.shape[0]).mean(axis=0) for t in tasks]
    # float32 moments of large conv outputs: exact to ~1e-4; the corpora's means lie far further apart
    assert np.all(
        np.abs(layer.moving_mean.numpy() - (means[0] + means[1]) / 2) <= 1e-3 * np.abs(means[0] - means[1]) + 1e-3
    )
    strategy.freeze_batch_norm()
    strategy.compile(optimizer=make_optimizer(1e-3, total_steps=5, warmup_fraction=0.0))
    frozen = layer.moving_mean.numpy().copy()
    for _ in range(5):
        strategy.train_step(data)
    np.testing.assert_array_equal(layer.moving_mean.numpy(), frozen)
    for task in tasks:
        x = data[task.name][0]
        np.testing.assert_allclose(
            network(x, training=True)[task.name], network(x, training=False)[task.name], atol=1e-6
        )


def test_a_calibration_stage_of_the_tasks_own_layers_leaves_the_shared_ones_as_re_estimated():
    """training.bn_calibration_layers: task — in the calibration stage only layers on one task's path train;
    the shared encoder keeps its weights bit for bit, and the saved network is trainable again."""
    strategy, tasks, data = _train("per-task", steps=5)
    network = strategy.network
    strategy.freeze_batch_norm()
    frozen = strategy.freeze_shared_layers()
    assert frozen == ["shared/conv1", "shared/conv2"]  # the shared batch normalisations: frozen already
    strategy.compile(optimizer=make_optimizer(1e-3, total_steps=5, warmup_fraction=0.0))
    shared = {v.name: v.numpy().copy() for v in network.weights if v.name.startswith("shared/")}
    heads = {v.name: v.numpy().copy() for v in network.trainable_weights}
    assert heads and not any(name.startswith("shared/") for name in heads)
    for _ in range(3):
        strategy.train_step(data)
    for v in network.weights:
        if v.name in shared:
            np.testing.assert_array_equal(v.numpy(), shared[v.name])
    assert all(not np.array_equal(v.numpy(), heads[v.name]) for v in network.trainable_weights if "kernel" in v.name)
    assert strategy.freeze_shared_layers(frozen=False) == frozen
    normalization.freeze_batch_norm(network, frozen=False)
    assert all(layer.trainable for layer in network.layers)
    with pytest.raises(ConfigError, match="bn_calibration_layers"):
        run_config.TrainingConfig(bn_calibration_layers="heads")


def test_pooled_batch_norm_normalises_with_the_mixture_of_the_tasks_batches():
    keras.utils.set_random_seed(1)
    layer = keras.layers.BatchNormalization(momentum=0.9, gamma_initializer="random_normal", beta_initializer="ones")
    reference = keras.layers.BatchNormalization(momentum=0.9, gamma_initializer="random_normal")
    a = tf.random.normal((3, 5, 4, 6)) * 3.0 + 2.0
    b = tf.random.normal((3, 5, 4, 6)) * 0.1 - 4.0
    layer.build(a.shape)
    reference.build(a.shape)
    reference.set_weights(layer.get_weights())
    # batches of one size: batch normalisation over the two together
    pooled = pooled_batch_norm(layer, [a, b])
    together = reference(tf.concat([a, b], axis=0), training=True)
    np.testing.assert_allclose(tf.concat(pooled, axis=0), together, atol=1e-4)
    np.testing.assert_allclose(layer.moving_mean, reference.moving_mean, atol=1e-5)
    np.testing.assert_allclose(layer.moving_variance, reference.moving_variance, rtol=2e-2)  # Keras: unbiased
    # batches of different lengths count equally: the mean of their normalised means is beta
    c = tf.random.normal((2, 9, 4, 6)) + 7.0
    means = [tf.reduce_mean(tf.reshape(t, (-1, 6)), axis=0) for t in pooled_batch_norm(layer, [a, c])]
    np.testing.assert_allclose((means[0] + means[1]) / 2.0, layer.beta, atol=1e-4)


def test_the_exact_gradient_of_pooled_statistics_is_batch_norm_s_own_gradient():
    # training.joint_bn_gradient: exact: the gradient of a loss on one task's output reaches the other
    # task's batch through the pooled statistics, as plain batch normalisation over both together does
    keras.utils.set_random_seed(2)
    layer = keras.layers.BatchNormalization(gamma_initializer="random_normal")
    reference = keras.layers.BatchNormalization(gamma_initializer="random_normal")
    a = tf.random.normal((3, 5, 4, 6)) * 3.0 + 2.0
    b = tf.random.normal((3, 5, 4, 6)) * 0.5 - 1.0
    layer.build(a.shape)
    reference.build(a.shape)
    reference.set_weights(layer.get_weights())
    weights = tf.random.normal((3, 5, 4, 6))
    gradients = {}
    for exact in (False, True):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            out_a, _ = pooled_batch_norm(layer, [a, b], exact_gradient=exact)
            loss = tf.reduce_sum(out_a * weights)
        gradients[exact] = tape.gradient(loss, [a, b])
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        together = reference(tf.concat([a, b], axis=0), training=True)
        loss = tf.reduce_sum(together[:3] * weights)
    expected = tape.gradient(loss, [a, b])
    np.testing.assert_allclose(gradients[True][0], expected[0], atol=1e-4)
    np.testing.assert_allclose(gradients[True][1], expected[1], atol=1e-4)
    assert gradients[False][1] is None or float(tf.reduce_max(tf.abs(gradients[False][1]))) == 0.0


@pytest.mark.parametrize("strategy_class", [SoftMTL, HardMTL, CrossSoftMTL])
def test_the_joint_pass_gives_the_networks_own_outputs_in_inference(strategy_class):
    keras.utils.set_random_seed(0)
    tasks = parse_task_set("asc,sed")
    network = build_model(tasks, SMALL)
    strategy = strategy_class(network, tasks, joint_batch_norm=True)
    data = _two_corpora(tasks)
    joint = strategy.joint({t.name: data[t.name][0] for t in tasks}, training=False)
    for task in tasks:
        expected = network(data[task.name][0], training=False)
        for key, value in joint[task.name].items():
            np.testing.assert_allclose(value, expected[key], atol=1e-6)
    strategy.compile(optimizer=make_optimizer(1e-3, total_steps=2, warmup_fraction=0.0))
    before = network.get_layer("shared/bn1").moving_mean.numpy().copy()
    strategy.train_step(data)
    assert not np.allclose(before, network.get_layer("shared/bn1").moving_mean.numpy())


def test_batch_renorm_copy_keeps_layers_names_and_outputs_shapes():
    tasks = parse_task_set("asc,sed")
    network = build_model(tasks, SMALL)
    renormed = normalization.with_batch_renorm(network)
    assert [layer.name for layer in renormed.layers] == [layer.name for layer in network.layers]
    assert normalization.uses_batch_renorm(renormed) and not normalization.uses_batch_renorm(network)
    x = tf.zeros((1, 101, 128))
    assert {k: v.shape for k, v in renormed(x).items()} == {k: v.shape for k, v in network(x).items()}


def test_batch_norm_mode_resolves_by_task_count_and_refuses_unknown_modes():
    assert normalization.resolve_mode("joint", 2) == "joint"
    assert normalization.resolve_mode("joint", 1) == "per-task"  # one task: the same thing
    assert normalization.resolve_mode("renorm", 3) == "renorm"
    assert normalization.resolve_mode("calibrated", 1) == "per-task"
    assert normalization.resolve_mode("calibrated", 2) == "calibrated"
    assert normalization.resolve_mode("auto", 2) == "calibrated"
    assert normalization.resolve_mode("auto", 1) == "per-task"
    with pytest.raises(ConfigError, match="batch_norm must be one of auto, per-task, calibrated, joint, renorm"):
        normalization.resolve_mode("group", 2)


def test_joint_statistics_with_a_strategy_that_trains_one_task_at_a_time_is_refused():
    from keras_mtl.training.fit import resolve_batch_norm

    base = {"tasks": ["asc", "sed"], "batch_norm": "joint"}
    assert resolve_batch_norm(run_config.build({**base, "strategy": "hard"})).batch_norm == "joint"
    with pytest.raises(ConfigError, match="--batch-norm joint .* --strategy freeze trains them one at a time"):
        resolve_batch_norm(run_config.build({**base, "strategy": "freeze", "order": ["asc", "sed"]}))
    freeze = {**base, "strategy": "freeze", "order": ["asc", "sed"]}
    assert resolve_batch_norm(run_config.build({**freeze, "batch_norm": "auto"})).batch_norm == "per-task"
    assert resolve_batch_norm(run_config.build({**base, "batch_norm": "auto"})).batch_norm == "calibrated"
    calibrated = {**freeze, "batch_norm": "calibrated"}
    with pytest.raises(ConfigError, match="--batch-norm calibrated .* --strategy freeze trains them one at a time"):
        resolve_batch_norm(run_config.build(calibrated))


def test_a_renorm_network_saves_and_loads_with_its_statistics(tmp_path):
    network, _, data = _train("renorm", steps=3)
    network = network.network
    path = tmp_path / "model.keras"
    network.save(path)
    loaded = keras.models.load_model(path, safe_mode=False)
    x = data["sed"][0]
    np.testing.assert_allclose(loaded(x, training=False)["sed"], network(x, training=False)["sed"], atol=1e-6)
    assert normalization.uses_batch_renorm(loaded)


@pytest.mark.skipif(not (REAL_MINI / "fsdd").is_dir(), reason="shared/data/real-mini is not beside the checkout")
def test_cross_corpus_data_is_built_from_the_real_recordings(tmp_path):
    from keras_mtl.data.readers.manifest import read_clip_manifest, read_frame_manifest
    from keras_mtl.studies import cross_corpus

    tasks = cross_corpus.build(REAL_MINI, tmp_path / "data", n_train=4, n_test=2, digit_takes=1)
    frame = read_frame_manifest(tasks["keywords"]["source"])
    clip = read_clip_manifest(tasks["digits"]["source"])
    assert len(frame["train"]) == 4 and len(frame["test"]) == 2
    assert len(clip["test"]) == 300 and len(clip["train"]) == 60  # takes 0-4 test, take 5 train
    events = [e for item in frame["train"] for e in item.events]
    assert events and all(0.0 <= e.onset < e.offset <= 10.0 for e in events)
    assert {e.label for e in events} <= set(cross_corpus.WORDS)
    assert cross_corpus.build(REAL_MINI, tmp_path / "data", n_train=4, n_test=2, digit_takes=1) == tasks  # reused


def test_an_unknown_batch_norm_mode_is_one_error_line(tiny_env, tmp_path, monkeypatch):
    from tests.conftest import run_cli

    monkeypatch.chdir(tmp_path)
    argv = ["train", "--task-set", "asc,sed", "--preset", "tiny", "--batch-norm", "group", "--dry-run"]
    result = run_cli(argv, env=tiny_env)
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1].startswith("error: batch_norm must be one of auto, per-task, calibrated")
    )
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_MINI / "fsdd").is_dir(), reason="shared/data/real-mini is not beside the checkout")
def test_cross_corpus_experiment_end_to_end(tiny_env, tmp_path):
    from tests.conftest import keras_mtl_command

    out = tmp_path / "experiment"
    args = ["experiment", "cross-corpus", "--rows", "single-digits,joint", "--seeds", "0", "--preset", "tiny"]
    result = subprocess.run(
        [*keras_mtl_command(), *args, "--epochs", "1", "--output-dir", str(out)],
        capture_output=True,
        text=True,
        env={**tiny_env, "KERAS_MTL_REAL_MINI": str(REAL_MINI)},
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "rows" / "joint" / "seed0" / "metrics.json").read_text())
    assert metrics["batch_norm"] == "joint" and set(metrics["tasks"]) == {"keywords", "digits"}
    gaps = json.loads((out / "gaps.json").read_text())
    assert set(gaps["joint"]["reports"][0]["tasks"]) == {"keywords", "digits"}
    assert "keywords frame ROC-AUC" in (out / "table.md").read_text()
    assert "batch statistics" in (out / "gaps.md").read_text()


@pytest.mark.parametrize("augmented", [True, False])
def test_the_calibration_stage_trains_on_clean_batches_unless_asked_for_augmented_ones(augmented):
    """training.bn_calibration_augment: false (the default): the calibration stage's batches are the tasks'
    batches unaugmented, as its frozen statistics were estimated; true: the augmented training batches."""
    from keras_mtl.runs import config as run_config

    asked = {"bn_calibration_augment": True} if augmented else {}  # false: the default
    settings = {"tasks": ["asc"], "training": {"epochs": 2, **asked}}
    config = run_config.build(run_config.merge(cli.base_config("tiny"), settings))
    assert config.training.bn_calibration_augment is augmented
    tasks = resolve_tasks(list(config.tasks), config.custom_tasks)
    data = prepare_data(config, tasks)
    tc = config.training
    train_ds = tf.data.Dataset.zip({t.name: training_batches(t, data, tc, config.augment, 0) for t in tasks})
    stage = calibration_batches(tasks, data, tc, config.augment, 0, train_ds)
    assert (stage is train_ds) is augmented
    if not augmented:
        clean = next(iter(training_batches(tasks[0], data, tc, None, 0)))[0]
        np.testing.assert_array_equal(next(iter(stage))["asc"][0], clean)
        assert not np.array_equal(next(iter(train_ds))["asc"][0], clean)  # the masked batches differ
    assert calibration_batches(tasks, data, tc, None, 0, train_ds) is train_ds  # augmentation off: nothing to drop


@pytest.mark.slow  # needs the shared tiny run, trained and exported through the command line
def test_a_calibrated_run_is_scored_with_the_test_mixture_s_statistics_and_its_gap_is_against_them(tiny_run):
    """normalization_report on a calibrated two-task run: each task is scored as deployed (moving
    statistics), with its test batches' own statistics and with the test mixture's (each task's test batch
    pooled beside the other's); the gap is the pooled figure less the deployed one."""
    from keras_mtl.studies.cross_corpus import normalization_report

    report = normalization_report(tiny_run.path)
    assert report["batch_norm"] == "calibrated"
    assert set(report["tasks"]) == {"asc", "sed"}
    for entry in report["tasks"].values():
        assert set(entry) == {"inference", "batch_statistics", "joint_statistics", "gap"}
        for metric, value in entry["inference"].items():
            assert entry["gap"][metric] == pytest.approx(entry["joint_statistics"][metric] - value)


_REPLICAS_SCRIPT = """
import json
from keras_mtl.core.backend import keras, tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
from keras_mtl.models.joint import agree_statistics, precise_statistics
from keras_mtl.models.mtl import ModelConfig, build_model
from keras_mtl.tasks.registry import parse_task_set

config = ModelConfig(channels=(8, 8), pools=((2, 16), (2, 8)), gru_units=8, dropout=0.0, head_dropout=0.0,
                     shared_blocks=1)
tasks = parse_task_set("asc,sed")
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
batch = {"asc": tf.constant(rng.normal(0.0, 1.0, (4, 101, 128)), tf.float32),
         "sed": tf.constant(rng.normal(-4.6, 1.0, (4, 201, 128)), tf.float32)}
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    network = build_model(tasks, config)
plain = build_model(tasks, config)
plain.set_weights(network.get_weights())
norms = [layer for layer in network.layers if isinstance(layer, keras.layers.BatchNormalization)]

def apart():  # replicas whose per-task training moved their own moving averages
    r = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.float32)
    for layer in norms:
        layer.moving_mean.assign(layer.moving_mean + 5.0 * r + 1.0)
        layer.moving_variance.assign(layer.moving_variance * (1.0 + r))

strategy.run(apart)
before = {(layer.name, name): [np.asarray(v) for v in getattr(layer, name).values]
          for layer in norms for name in ("moving_mean", "moving_variance")}
agreed = agree_statistics(network)
mean_error = max(float(np.max(np.abs(np.asarray(getattr(layer, name).values[r]) - np.mean(before[layer.name, name], 0))))
                 for layer in norms for name in ("moving_mean", "moving_variance") for r in (0, 1))
strategy.run(apart)
precise_statistics(network, iter([batch] * 3), 3)
precise_statistics(plain, iter([batch] * 3), 3)
replicas, single = 0.0, 0.0
for layer in norms:
    for name in ("moving_mean", "moving_variance"):
        variable = getattr(layer, name)
        copies = [np.asarray(v) for v in variable.values]
        reference = np.asarray(getattr(plain.get_layer(layer.name), name))
        replicas = max(replicas, float(np.max(np.abs(copies[0] - copies[1]))))
        single = max(single, float(np.max(np.abs(copies[0] - reference)) / np.max(np.abs(reference))))
print(json.dumps({"layers": len(norms), "agreed": agreed, "mean_error": mean_error, "replicas": replicas,
                  "single": single}))
"""


def test_under_tf_distribute_every_replica_ends_with_the_mixture_statistics_of_one_device():
    """Batch statistics under a tf.distribute strategy (two replicas on two logical CPUs, a fresh process):
    agree_statistics sets every replica's moving averages to the replicas' mean (each worker's PreciseBN
    ran on its own batches); PreciseBN from replicas that had drifted apart ends with identical
    statistics, equal to those one device computes from the same batches. So the calibration stage's
    training steps normalise alike on every replica (--distribute with --batch-norm calibrated)."""
    result = subprocess.run([sys.executable, "-c", _REPLICAS_SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["layers"] >= 3  # shared and per-task batch normalisations
    assert figures["agreed"] == 2 * figures["layers"] and figures["mean_error"] < 1e-6
    assert figures["replicas"] == 0.0
    assert figures["single"] < 1e-4  # of each variable's scale: float32 moments, summed in another order
