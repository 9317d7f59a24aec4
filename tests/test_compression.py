"""Lottery Ticket pruning, LT4REC sparse sharing and the compress CLI on a tiny ASC + SED setup."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_mtl.cli import common as cli
from keras_mtl.compression.pruning import (
    SparseSharingMTL,
    lottery_ticket,
    masked,
    model_params,
    prunable_weights,
    prune_by_magnitude,
    pruning_wrappers,
    round_fraction,
)
from keras_mtl.core.backend import keras
from keras_mtl.core.errors import ConfigError
from keras_mtl.models.mtl import task_submodel
from keras_mtl.runs import config as run_config
from keras_mtl.runs.inputs import prepare_data
from keras_mtl.runs.network import build_network
from keras_mtl.tasks.registry import resolve_tasks
from keras_mtl.training.fit import fit_network, training_batches

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("compression")
    saved = {k: os.environ.get(k) for k in ("KERAS_MTL_DATA_DIR", "KERAS_MTL_CACHE_DIR")}
    os.environ["KERAS_MTL_DATA_DIR"], os.environ["KERAS_MTL_CACHE_DIR"] = str(root / "data"), str(root / "cache")
    config = run_config.build(
        run_config.merge(cli.base_config("tiny"), {"tasks": ["asc", "sed"], "training": {"epochs": 1}})
    )
    tasks = resolve_tasks(list(config.tasks), config.custom_tasks)
    data = prepare_data(config, tasks)
    yield config, tasks, data, root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _network(config, tasks, data, seed=0):
    keras.utils.set_random_seed(seed)
    return build_network(config, tasks, weak_output=bool(data.semi))


def test_magnitude_pruning_drops_the_smallest_survivors():
    weights = {"a:kernel": np.array([[0.1, -0.5], [0.3, -0.05]])}
    masks = {"a:kernel": np.ones((2, 2), np.float32)}
    once = prune_by_magnitude(weights, masks, 0.5)
    np.testing.assert_array_equal(once["a:kernel"], [[0, 1], [1, 0]])
    twice = prune_by_magnitude(weights, once, 0.5)  # only survivors count
    np.testing.assert_array_equal(twice["a:kernel"], [[0, 1], [0, 0]])
    assert round_fraction(nonzero=100, target=90, alive=80, rate=0.2) == pytest.approx(10 / 80)
    assert round_fraction(nonzero=100, target=10, alive=80, rate=0.2) == 0.2
    with pytest.raises(ConfigError):
        prune_by_magnitude(weights, masks, 1.0)


@pytest.mark.slow
def test_lottery_ticket_rounds_zeros_and_rewinding(setup):
    config, tasks, data, _ = setup
    network = _network(config, tasks, data)
    initial = {key: v.numpy().copy() for key, v in prunable_weights(network).items()}
    total = model_params(network)
    prunable = sum(v.size for v in initial.values())
    target = total - int(0.6 * prunable)  # rate 0.3: rounds at 30%, 51%, then the rest to 60%

    class Probe(keras.callbacks.Callback):
        """At each round's start: the weights (rewound, masked); after every batch: pruned entries are 0."""

        def __init__(self):
            super().__init__()
            self.starts, self.batches, self.masks = [], 0, None

        def on_train_begin(self, logs=None):
            self.starts.append({k: v.numpy().copy() for k, v in prunable_weights(network).items()})

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1
            for wrapper in pruning_wrappers(self.model.network):
                for weight, mask, _ in wrapper.pruning_vars:
                    assert np.all(weight.numpy()[mask.numpy() == 0] == 0), wrapper.name

    probe = Probe()
    masks, rounds, metrics = lottery_ticket(network, tasks, data, config, target, rate=0.3, callbacks=[probe])
    assert [r["round"] for r in rounds] == [0, 1, 2, 3] and probe.batches == 4 * config.training.steps_per_epoch
    for row in rounds[:3]:  # the schedule: 1 - (1 - p)^r of every weight
        for key, value in row["sparsity"].items():
            assert value == pytest.approx(1 - 0.7 ** row["round"], abs=1.0 / initial[key].size + 1e-9), key
    assert abs(rounds[-1]["nonzero_params"] - target) <= max(1, total // 1000) + len(initial)
    for index, start in enumerate(probe.starts[1:], start=1):  # rewound: survivors at their initial values
        mask_then = {k: (v != 0) for k, v in start.items()}
        for key, value in start.items():
            np.testing.assert_array_equal(value, initial[key] * mask_then[key], err_msg=f"round {index} {key}")
            assert mask_then[key].mean() == pytest.approx(1 - rounds[index]["sparsity"][key], abs=1e-9)
    final = prunable_weights(network)
    for key, mask in masks.items():
        assert np.all(final[key].numpy()[mask == 0] == 0)
        assert np.any(final[key].numpy()[mask == 1] != initial[key][mask == 1])  # the survivors were trained
    assert set(metrics) == {"asc", "sed"}


def test_lottery_ticket_refuses_an_impossible_target(setup):
    config, tasks, data, _ = setup
    network = _network(config, tasks, data)
    total = model_params(network)
    for target in (total, 3):
        with pytest.raises(ConfigError, match="target-params"):
            lottery_ticket(network, tasks, data, config, target)


def _two_masks(network, seed=0):
    """Random masks for asc and sed over their paths' prunable weights."""
    rng = np.random.default_rng(seed)
    keys = prunable_weights(network)
    masks = {}
    for name in ("asc", "sed"):
        path = {v.ref() for v in task_submodel(network, name).trainable_weights}
        masks[name] = {
            key: (rng.random(v.shape) < 0.6).astype(np.float32) for key, v in keys.items() if v.ref() in path
        }
    return masks


def test_sparse_sharing_masks_isolate_private_weights_and_share_the_intersection(setup):
    config, tasks, data, _ = setup
    network = _network(config, tasks, data)
    masks = _two_masks(network)
    shared = [k for k in masks["asc"] if k in masks["sed"]]
    assert shared and all(k.startswith("shared/") for k in shared)
    assert any(not np.array_equal(masks["asc"][k], masks["sed"][k]) for k in shared)  # different masks, same weights
    features = {
        "asc": np.random.default_rng(1).standard_normal((2, 101, 128)).astype(np.float32),
        "sed": np.random.default_rng(2).standard_normal((1, 1001, 128)).astype(np.float32),
    }

    def outputs():
        result = {}
        for name in ("asc", "sed"):
            with masked(network, masks[name]):
                result[name] = np.asarray(task_submodel(network, name)(features[name], training=False))
        return result

    before = outputs()
    variables = prunable_weights(network)
    key = "shared/conv1:kernel"
    only_asc = np.argwhere((masks["asc"][key] == 1) & (masks["sed"][key] == 0))[0]
    both = np.argwhere((masks["asc"][key] == 1) & (masks["sed"][key] == 1))[0]
    value = variables[key].numpy()
    value[tuple(only_asc)] += 5.0
    variables[key].assign(value)
    after = outputs()
    np.testing.assert_array_equal(after["sed"], before["sed"])  # asc's private weight: sed does not see it
    assert np.abs(after["asc"] - before["asc"]).max() > 1e-6
    value[tuple(both)] += 5.0
    variables[key].assign(value)
    shared_change = outputs()
    assert np.abs(shared_change["sed"] - after["sed"]).max() > 1e-6  # a shared weight: both see it


def test_sparse_sharing_turn_updates_only_the_turns_mask(setup):
    config, tasks, data, _ = setup
    network = _network(config, tasks, data)
    masks = _two_masks(network, seed=3)
    strategy = fit_network(network, tasks, data, config, epochs=1, strategy_cls=SparseSharingMTL, task_masks=masks)
    assert strategy.optimizer.iterations.numpy() == config.training.steps_per_epoch
    # an asc turn by hand (learning rate > 0): entries outside asc's mask stay bit-identical, sed's own weights too
    from keras_mtl.training.strategies import make_optimizer

    strategy = SparseSharingMTL(network, tasks, task_masks=masks)
    strategy.compile(optimizer=make_optimizer(0.01, total_steps=100, warmup_fraction=0.0))
    batches = {t.name: next(iter(training_batches(t, data, config.training, None, 0))) for t in tasks}
    variables = prunable_weights(network)
    before = {k: v.numpy().copy() for k, v in variables.items()}
    strategy._turn_step(tasks[0], batches)
    for key, mask in masks["asc"].items():
        now = variables[key].numpy()
        np.testing.assert_array_equal(now[mask == 0], before[key][mask == 0], err_msg=key)
    assert any(np.any(variables[k].numpy()[m == 1] != before[k][m == 1]) for k, m in masks["asc"].items())
    for key in set(masks["sed"]) - set(masks["asc"]):  # sed's own weights: not asc's turn
        np.testing.assert_array_equal(variables[key].numpy(), before[key])


@pytest.mark.slow
def test_compress_cli_writes_run_folders(tmp_path, tiny_run):
    env = tiny_run.env
    run = tmp_path / "run"
    shutil.copytree(tiny_run.path, run, ignore=shutil.ignore_patterns("checkpoint", "export", "compress-*"))
    dense = json.loads((run / "metrics.json").read_text())["model"]["params"]
    target = int(dense * 0.7)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "compress.py"),
            str(run),
            "--method",
            "lt4rec",
            "--target-params",
            str(target),
            "--rate",
            "0.3",
            "--epochs",
            "1",
            "-q",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = run / "compress-lt4rec"
    metrics = json.loads((out / "metrics.json").read_text())
    assert abs(metrics["model"]["params"] - target) <= max(1, dense // 1000)
    assert metrics["model"]["dense_params"] == dense and set(metrics["tasks"]) == {"asc", "sed"}
    masks = np.load(out / "masks.npz")
    assert any(k.startswith("asc/shared/") for k in masks.files) and any(
        k.startswith("sed/shared/") for k in masks.files
    )
    assert (out / "model.keras").is_file() and (out / "rounds.png").is_file() and (out / "history.csv").is_file()
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "compress.py"),
            str(run),
            "--method",
            "qat",
            "--epochs",
            "1",
            "--max-eval-clips",
            "1",
            "--calibration-clips",
            "2",
            "-q",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    qat = json.loads((run / "compress-qat" / "metrics.json").read_text())
    assert (
        set(qat["compression"]["int8"]) == {"asc", "sed"} and "qat_int8_streamed" in qat["compression"]["int8"]["asc"]
    )
    assert (run / "compress-qat" / "export" / "encoder.tflite").is_file()
    assert (run / "compress-qat" / "ptq-export" / "encoder.tflite").is_file()
