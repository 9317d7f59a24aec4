"""Tasks from different corpora (issue 28): what the deployed network computes for each corpus is
what that corpus was trained with, and the normalisation survives the export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from keras_mtl.core.backend import keras, tf
from keras_mtl.core.errors import ConfigError
from keras_mtl.models import normalization
from keras_mtl.models.mtl import ModelConfig, build_model
from keras_mtl.tasks.registry import parse_task_set
from keras_mtl.training.strategies import SoftMTL, make_optimizer

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


def _train(mode: str, steps: int = 30):
    keras.utils.set_random_seed(0)
    tasks = parse_task_set("asc,sed")
    data = _two_corpora(tasks)
    # the input normalisation's statistics over both corpora, as training computes them
    frames = np.concatenate([data[t.name][0].numpy().reshape(-1, 128) for t in tasks])
    network = build_model(tasks, SMALL, frames.mean(axis=0), frames.var(axis=0))
    if mode == "renorm":
        network = normalization.with_batch_renorm(network)
    strategy = SoftMTL(network, tasks)
    strategy.compile(optimizer=make_optimizer(3e-3, total_steps=steps, warmup_fraction=0.0))
    for _ in range(steps):
        strategy.train_step(data)
    return network, tasks, data


def _train_inference_gap(network, tasks, data) -> dict:
    """Per task, on its own corpus: the largest difference between its outputs normalised as in
    training (the batch's forward pass in training mode) and as deployed (inference mode)."""
    gaps = {}
    for task in tasks:
        x = data[task.name][0]
        saved = network.get_weights()
        trained = network(x, training=True)[task.name].numpy()
        network.set_weights(saved)  # training mode moved the moving averages
        deployed = network(x, training=False)[task.name].numpy()
        gaps[task.name] = float(np.max(np.abs(trained - deployed)))
    return gaps


def test_batch_renorm_trains_each_corpus_with_the_statistics_it_is_deployed_with():
    # Bound: with Batch Renormalization the training forward pass normalises with the moving statistics
    # (renorm statistics with the layer's momentum are the same running averages), so the two outputs
    # differ by float rounding alone while the correction stays inside its clipping; 1e-4 on
    # probabilities in [0, 1]. Plain batch normalisation misses that by orders of magnitude here: each
    # corpus trains on its own batch statistics and is deployed with their blend.
    renorm = _train_inference_gap(*_train("renorm"))
    batch = _train_inference_gap(*_train("batch"))
    assert max(renorm.values()) < 1e-4, renorm
    assert max(batch.values()) > 0.05, batch


def test_batch_renorm_copy_keeps_layers_names_and_outputs_shapes():
    tasks = parse_task_set("asc,sed")
    network = build_model(tasks, SMALL)
    renormed = normalization.with_batch_renorm(network)
    assert [layer.name for layer in renormed.layers] == [layer.name for layer in network.layers]
    assert normalization.uses_batch_renorm(renormed) and not normalization.uses_batch_renorm(network)
    x = tf.zeros((1, 101, 128))
    assert {k: v.shape for k, v in renormed(x).items()} == {k: v.shape for k, v in network(x).items()}


def test_batch_norm_mode_resolves_by_task_count_and_refuses_unknown_modes():
    assert normalization.resolve_mode("auto", 2) == "renorm"
    assert normalization.resolve_mode("auto", 1) == "batch"
    assert normalization.resolve_mode("batch", 3) == "batch"
    with pytest.raises(ConfigError, match="batch_norm"):
        normalization.resolve_mode("group", 2)


def test_a_renorm_network_saves_and_loads_with_its_statistics(tmp_path):
    network, _, data = _train("renorm", steps=3)
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
