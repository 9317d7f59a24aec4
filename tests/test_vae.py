"""The multi-task VAE for SED (seed 002): KL term, sampling, per-head item selection, training."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_mtl.core.backend import keras, tf
from keras_mtl.core.errors import ConfigError
from keras_mtl.deploy import streaming, tflite
from keras_mtl.models import vae
from keras_mtl.tasks.registry import resolve_tasks
from keras_mtl.training import fit
from keras_mtl.training.vae import MTLVAE

REPO = Path(__file__).resolve().parent.parent
TINY = dict(channels=(4, 8), pools=((2, 16), (2, 8)), encoder_units=8, latent_dim=4, decoder_units=8, dropout=0.0)


def _sed():
    return resolve_tasks(["sed"], None)


def test_kl_divergence_matches_the_closed_form():
    mean = tf.constant([[0.5, -1.0]])
    log_var = tf.constant([[0.0, math.log(2.0)]])
    # -1/2 (1 + log s^2 - m^2 - s^2) per dimension: 0.125 and 1 - ln(2)/2
    expected = 0.125 + (1.0 - 0.5 * math.log(2.0))
    assert float(vae.kl_divergence(mean, log_var)) == pytest.approx(expected, rel=1e-6)
    assert float(vae.kl_divergence(tf.zeros((3, 5, 4)), tf.zeros((3, 5, 4)))) == 0.0  # the prior itself


def test_sampling_is_stochastic_in_training_and_the_mean_at_inference():
    layer = vae.Sampling()
    mean, log_var = tf.fill((2, 50, 4), 0.3), tf.zeros((2, 50, 4))
    first, second = layer([mean, log_var], training=True), layer([mean, log_var], training=True)
    assert not np.allclose(first, second)
    assert abs(float(tf.math.reduce_std(first - mean)) - 1.0) < 0.2  # exp(0 / 2) = unit noise
    np.testing.assert_array_equal(layer([mean, log_var], training=False), mean)
    np.testing.assert_array_equal(vae.Sampling(variational=False)([mean, log_var], training=True), mean)
    network = vae.build_mtl_vae(_sed(), vae.VAEConfig(**TINY))
    x = np.random.default_rng(0).standard_normal((1, 200, 128)).astype(np.float32)
    np.testing.assert_array_equal(network(x, training=False)["sed"], network(x, training=False)["sed"])
    assert not np.allclose(network(x, training=True)["sed"], network(x, training=True)["sed"])


def test_deterministic_encoder_has_no_variance_and_no_kl():
    network = vae.build_mtl_vae(_sed(), vae.VAEConfig(**TINY, variational=False))
    assert "sed_latent_log_var" not in network.output
    strategy = MTLVAE(network, _sed())
    x = np.random.default_rng(0).standard_normal((2, 200, 128)).astype(np.float32)
    terms = strategy.loss_terms(network(x, training=True), tf.zeros((2, 50, 10)))
    assert float(terms["kld"]) == 0.0


def test_each_head_loss_sees_only_its_items():
    strategy = MTLVAE(vae.build_mtl_vae(_sed(), vae.VAEConfig(**TINY)), _sed())
    rng = np.random.default_rng(1)
    roles = tf.constant([0, 1, 2, 3], tf.int32)
    targets = {
        "strong": tf.constant((rng.random((4, 25, 10)) > 0.7).astype(np.float32)),
        "weak": tf.constant((rng.random((4, 10)) > 0.5).astype(np.float32)),
        "role": roles,
    }
    outputs = {
        "sed": rng.uniform(0.05, 0.95, (4, 25, 10)),
        "sed_weak": rng.uniform(0.05, 0.95, (4, 10)),
        "sed_reconstruction": rng.standard_normal((4, 25, 128)),
        "sed_reconstruction_target": rng.standard_normal((4, 25, 128)),
        "sed_latent_mean": rng.standard_normal((4, 25, 4)),
        "sed_latent_log_var": rng.standard_normal((4, 25, 4)),
    }
    outputs = {k: tf.constant(v, tf.float32) for k, v in outputs.items()}
    base = {k: float(v) for k, v in strategy.loss_terms(outputs, targets).items() if k in strategy.term_trackers}
    heads = {
        "strong_bce": ("sed", {0, 3}),
        "weak_bce": ("sed_weak", {1}),
        "reconstruction_mse": ("sed_reconstruction", {2}),
    }
    for term, (key, own_rows) in heads.items():
        for row in range(4):
            changed = dict(outputs)
            value = outputs[key].numpy().copy()
            value[row] = (
                np.clip(value[row] * 0.5 + 0.2, 0.01, 0.99) if term != "reconstruction_mse" else value[row] + 1.0
            )
            changed[key] = tf.constant(value)
            result = float(strategy.loss_terms(changed, targets)[term])
            if row in own_rows:
                assert result != pytest.approx(base[term]), (term, row)
            else:
                assert result == pytest.approx(base[term], abs=0), (term, row)
    # a batch without unlabelled items has no reconstruction loss
    no_unlabeled = dict(targets, role=tf.constant([0, 1, 3, 3], tf.int32))
    assert float(strategy.loss_terms(outputs, no_unlabeled)["reconstruction_mse"]) == 0.0


@pytest.mark.slow
def test_train_cli_mtl_vae_with_four_data_types_reduces_the_loss(tmp_path, tiny_env):
    env = tiny_env  # the session's synthetic data and feature cache
    config = tmp_path / "vae.yaml"
    config.write_text(
        "synthetic: {sed_strong_real: 3}\n"
        "architecture_options: {channels: [4, 8], pools: [[2, 16], [2, 8]], encoder_units: 8,"
        " latent_dim: 4, decoder_units: 8, dropout: 0.0}\n"
        "training: {steps_per_epoch: 4, strong_real_batch_size: 2, kl_warmup_fraction: 0.5}\n"
    )
    run = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "train.py"),
            "--preset",
            "tiny",
            "--task-set",
            "sed",
            "--model",
            "mtl-vae",
            "--config",
            str(config),
            "--epochs",
            "4",
            "--output-dir",
            str(run),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "semi-supervised batches for sed" in result.stderr and "sed/strong_real: 3 clips" in result.stderr
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert float(rows[-1]["sed_strong_bce"]) < float(rows[0]["sed_strong_bce"])
    assert float(rows[-1]["sed_reconstruction_mse"]) < float(rows[0]["sed_reconstruction_mse"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["strategy"] == "mtl-vae" and {"event_f1_macro", "segment_f1_macro"} <= set(
        metrics["tasks"]["sed"]["metrics"]
    )
    summary = (run / "model_summary.txt").read_text()
    assert "shared/encoder_gru" in summary and "shared/sampling" in summary and "sed/reconstruction" in summary
    loaded = keras.models.load_model(run / "model.keras", compile=False)
    assert isinstance(loaded.get_layer("shared/sampling"), vae.Sampling)
    # a fresh process that never imported keras_mtl.models.vae loads the run and plans its streaming export
    plan = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from keras_mtl.deploy.export import load_run; "
            "print([p.name for p in load_run(Path(sys.argv[1]))[3].pieces])",
            str(run),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert plan.returncode == 0 and "['encoder', 'sed_step']" in plan.stdout, plan.stderr[-2000:]


def test_mtl_vae_refuses_what_it_cannot_do():
    with pytest.raises(ConfigError, match="one frame-level task"):
        vae.build_mtl_vae(resolve_tasks(["asc"], None), vae.VAEConfig(**TINY))
    from keras_mtl.cli import common as cli
    from keras_mtl.runs import config as run_config

    config = run_config.build(run_config.merge(cli.base_config("seed002"), {"strategy": "hard"}))
    with pytest.raises(ConfigError, match="its own strategy"):
        fit.check_strategy_options(config)


def test_mtl_vae_streams_its_mean_path_as_one_step_with_both_states():
    from keras_mtl.features.logmel import FrontEndConfig

    keras.utils.set_random_seed(0)
    config = vae.VAEConfig(**TINY)
    network = vae.build_mtl_vae(_sed(), config, feature_mean=np.full(128, -5.0, np.float32))
    plan = streaming.plan_streaming(network, _sed(), FrontEndConfig(), config.time_pool_factor, "mtl-vae")
    assert [p.name for p in plan.pieces] == ["encoder", "sed_step"]
    step = plan.piece("sed_step")
    layer_names = {layer.name for layer in step.model.layers}
    assert "shared/latent_mean" in layer_names and "shared/latent_log_var" not in layer_names
    assert step.model.inputs[1].shape[-1] == config.encoder_units + config.decoder_units
    features = np.random.default_rng(0).standard_normal((1, 401, 128)).astype(np.float32)
    full = np.asarray(network(features, training=False)["sed"])[0]
    frames = np.asarray(keras.Model(network.input, network.get_layer(step.branch).output)(features))[0]
    streamed = streaming.StreamingRunner(plan, streaming.keras_call).predict(step, features[0], {step.branch: frames})
    np.testing.assert_allclose(streamed, full, atol=1e-5)
    # int8: the one-vector state splits and joins with ops TFLite-Micro has, and it runs them like LiteRT
    samples = [{"frame": f[None], "state": np.zeros((1, 16), np.float32)} for f in frames[::4]]
    flatbuffer = tflite.convert_int8(step.model, lambda: iter(samples))
    assert {"STRIDED_SLICE", "CONCATENATION"} <= set(tflite.operators(flatbuffer))
    litert, micro = tflite.Int8Model(flatbuffer, "litert-reference"), tflite.Int8Model(flatbuffer, "tflm", 32 * 1024)
    state = np.zeros((1, 16), np.float32)
    for frame in frames[:20]:
        inputs = {"frame": litert.quantize("frame", frame[None]), "state": litert.quantize("state", state)}
        expected, got = litert.run_int8(inputs), micro.run_int8(inputs)
        for name in ("scores", "new_state"):
            assert np.abs(expected[name].astype(int) - got[name].astype(int)).max() <= 2
        state = litert.dequantize("new_state", expected["new_state"])
