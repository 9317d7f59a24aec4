"""Task-synergy tree synthesis (seed 001) and models built from a tree spec."""

from __future__ import annotations

import math

import numpy as np
import pytest

from keras_mtl.core.errors import ConfigError
from keras_mtl.models import trees
from keras_mtl.studies import synergy

# seed 001, Table 3: AR (%) of two-task models with k = 4..8 shared layers (our own copy)
SEED001_TABLE3 = {
    ("gc", "ac"): [2.3, 0.6, 0.9, 1.2, 1.0],
    ("gc", "scr"): [0.4, 0.4, 0.8, 0.8, 1.2],
    ("gc", "vad"): [0.0, 0.0, 0.4, 0.0, 0.0],
    ("ac", "scr"): [0.8, 3.7, 2.7, 2.0, 7.0],
    ("ac", "vad"): [1.8, 2.0, 1.7, 2.4, 2.3],
    ("scr", "vad"): [0.5, 0.5, 1.2, 1.2, 1.3],
}


def _ar(table):
    return {pair: dict(zip(range(4, 9), values)) for pair, values in table.items()}


def _weights(pairs: dict) -> dict:
    return {frozenset(p.split("-")): w for p, w in pairs.items()}


def test_seed001_worked_example():
    weights = synergy.edge_weights(_ar(SEED001_TABLE3), 2.0)
    assert weights[frozenset(("ac", "vad"))] == 6 and weights[frozenset(("ac", "scr"))] == 7
    assert all(w == 8 for pair, w in weights.items() if pair not in ({"ac", "vad"}, {"ac", "scr"}))
    tree = synergy.synthesize(["gc", "ac", "scr", "vad"], weights, depth=8)
    assert tree["shared"] == 6
    parts = [(child["tasks"], child["shared"]) for child in tree["children"]]
    assert parts == [(["gc", "ac"], 2), (["scr", "vad"], 2)]
    trees.validate_tree(tree, 8)
    owners = trees.block_owners(tree)
    assert owners["gc"] == ["shared"] * 6 + ["gc-ac"] * 2 and owners["vad"] == ["shared"] * 6 + ["scr-vad"] * 2


def test_three_tasks():
    tree = synergy.synthesize(["a", "b", "c"], _weights({"a-b": 6, "a-c": 4, "b-c": 5}), depth=8)
    assert tree["shared"] == 4
    (ab, c) = tree["children"]
    assert ab["tasks"] == ["a", "b"] and ab["shared"] == 2 and [leaf["shared"] for leaf in ab["children"]] == [2, 2]
    assert c == {"tasks": ["c"], "shared": 4, "children": []}


def test_ties_go_to_the_most_balanced_split_and_empty_nodes_dissolve():
    everything = {f"{a}-{b}": 5 for a, b in (("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d"))}
    tree = synergy.synthesize(["a", "b", "c", "d"], _weights(everything), depth=8)
    # after 5 shared layers every inner weight is 0: the balanced split {a, b} | {c, d} wins the tie,
    # and its two nodes, sharing nothing, dissolve into the root
    assert tree["shared"] == 5
    assert [child["tasks"] for child in tree["children"]] == [["a"], ["b"], ["c"], ["d"]]
    assert all(child["shared"] == 3 for child in tree["children"])
    # the same input gives the same tree
    assert synergy.synthesize(["a", "b", "c", "d"], _weights(everything), depth=8) == tree


def test_a_task_that_shares_nothing():
    tree = synergy.synthesize(["a", "b", "c"], _weights({"a-b": 8, "a-c": 0, "b-c": 0}), depth=8)
    assert tree["shared"] == 0
    assert [(child["tasks"], child["shared"]) for child in tree["children"]] == [(["a", "b"], 8), (["c"], 8)]
    trees.validate_tree(tree, 8)


@pytest.mark.parametrize("threshold", [-1.0, math.nan, "2", None])
def test_invalid_thresholds(threshold):
    with pytest.raises(ConfigError, match="threshold"):
        synergy.edge_weights(_ar(SEED001_TABLE3), threshold)


def test_missing_pairs_and_bad_trees():
    with pytest.raises(ConfigError, match="no edge weight for the pair gc, vad"):
        synergy.synthesize(["gc", "vad"], {}, depth=8)
    with pytest.raises(ConfigError, match="the template has 8"):
        trees.validate_tree(
            {
                "tasks": ["a", "b"],
                "shared": 3,
                "children": [
                    {"tasks": ["a"], "shared": 5, "children": []},
                    {"tasks": ["b"], "shared": 4, "children": []},
                ],
            },
            8,
        )
    with pytest.raises(ConfigError, match="split"):
        trees.validate_tree({"tasks": ["a", "b"], "shared": 8, "children": [{"tasks": ["a"], "shared": 0}]}, 8)


def test_model_from_a_tree_shares_exactly_what_the_tree_says():
    from keras_mtl.core.backend import keras
    from keras_mtl.models.mtl import ModelConfig, build_model, task_submodel
    from keras_mtl.tasks.registry import parse_task_set

    tree = synergy.synthesize(["gc", "ac", "scr", "vad"], synergy.edge_weights(_ar(SEED001_TABLE3), 2.0), depth=8)
    config = ModelConfig(
        channels=(4,) * 8,
        pools=((1, 2), (2, 2), (1, 2), (2, 2), (1, 2), (1, 2), (1, 1), (1, 1)),
        gru_units=4,
        tree=tree,
    )
    tasks = parse_task_set("gc,ac,scr,vad")
    model = build_model(tasks, config)
    names = {layer.name for layer in model.layers}
    assert {"shared/conv6", "gc-ac/conv7", "gc-ac/conv8", "scr-vad/conv7"} <= names
    assert not any(name.startswith(("shared/conv7", "gc/conv", "vad/conv")) for name in names)

    def variables_of(task):
        return {id(v) for v in task_submodel(model, task).trainable_variables}

    per_task = {t.name: variables_of(t.name) for t in tasks}
    conv7 = {id(v) for v in model.get_layer("gc-ac/conv7").trainable_variables}
    assert conv7 <= per_task["gc"] and conv7 <= per_task["ac"]
    assert not conv7 & per_task["scr"] and not conv7 & per_task["vad"]
    conv1 = {id(v) for v in model.get_layer("shared/conv1").trainable_variables}
    assert all(conv1 <= variables for variables in per_task.values())
    # every parameter belongs to exactly one node (or a task's decoder): the sum over nodes is the total
    by_node = {}
    for layer in model.layers:
        by_node[layer.name.split("/")[0]] = by_node.get(layer.name.split("/")[0], 0) + layer.count_params()
    assert sum(by_node.values()) == model.count_params()
    assert set(by_node) >= {"shared", "gc-ac", "scr-vad", "gc", "ac", "scr", "vad"}
    out = model(np.zeros((1, 101, 128), np.float32))
    assert set(out) >= {"gc", "ac", "scr", "vad"}
    assert isinstance(model, keras.Model)


@pytest.mark.slow
def test_synergy_pipeline_end_to_end_with_shards_and_merge(tmp_path, tiny_env):
    """Reduced: the tiny preset's 2-layer template, three speech tasks, depths 1 and 2, one epoch."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "synergy.py"
    env = tiny_env  # the session's synthetic data and feature cache
    out = tmp_path / "synergy"
    common = [
        sys.executable,
        str(script),
        "--tasks",
        "gc,ac,vad",
        "--depths",
        "1,2",
        "--threshold",
        "50",
        "--preset",
        "tiny",
        "--epochs",
        "1",
        "--output-dir",
        str(out),
    ]
    for shard in ("0/2", "1/2"):
        result = subprocess.run([*common, "--shard", shard], capture_output=True, text=True, env=env, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((out / "runs").glob("*/metrics.json"))) == 3 + 3 * 2  # singles and pairs, split between shards
    result = subprocess.run([*common, "--merge"], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "results.json").read_text())
    trees.validate_tree(summary["tree"], 2)
    assert sorted(trees.block_owners(summary["tree"])) == ["ac", "gc", "vad"]
    assert set(summary["ar"]) == {"gc-ac", "gc-vad", "ac-vad"} and all(
        set(v) == {"1", "2"} for v in summary["ar"].values()
    )
    models = [row["model"] for row in summary["models"]]
    assert models[0] == "3 independent models" and any(m.startswith("hierarchical") for m in models)
    assert sum(m.startswith("flat MTL") for m in models) == 2
    independent = summary["models"][0]["params"]
    assert all(row["params"] <= independent for row in summary["models"])
    for name in ("tables.md", "ar.csv", "models.csv", "graph.png", "tree.png", "tree.json"):
        assert (out / name).stat().st_size > 0, name
    again = subprocess.run(
        [*common, "--merge", "--compress", "lth", "--compress-rate", "0.5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert again.returncode == 0 and "done before, skipped" in again.stderr, again.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["models"]
    assert rows[: len(summary["models"])] == summary["models"]
    tree_params = next(row["params"] for row in rows if row["model"].startswith("hierarchical"))
    lth = [row for row in rows if row["model"].startswith("LTH")]  # the flat-k1 model pruned to the tree's size
    assert len(lth) == 1 and abs(lth[0]["params"] - tree_params) <= max(1, tree_params // 500)
    assert (out / "runs" / "lth" / "masks.npz").is_file()
