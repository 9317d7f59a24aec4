"""Hierarchical multi-task learning by task synergy (seed 001): from pairwise AR values to a tree.

AR(i, j, k): the largest relative drop (%) of task i's or task j's metric, in the two-task model
whose first k encoder layers are shared, against each task's single-task model.

Synthesis with threshold Q:
  1. edge weight w(i, j) = the largest k whose AR(i, j, k) <= Q (0 when there is none);
  2. for the current set of tasks, the smallest edge weight L inside it becomes L shared layers of
     the set's node; the weights inside the set drop by L;
  3. the set is split in two non-empty parts maximising the smallest edge weight inside each part
     (a single task is unconstrained); ties go to the most balanced split, then to the split whose
     part holding the set's first task (in the given order) comes first lexicographically by task
     position;
  4. each part is synthesised the same way and hangs below the node; a single task gets the layers
     left to the template's depth. A node that would share no layer (L = 0, not the root) is
     dissolved into its parent, which then has more than two children.

The tree is a plain dict (YAML/JSON): {"tasks": [...], "shared": L, "children": [...]}; the root's
layers are the model's ``shared/`` blocks, an inner node's are named by its tasks (``gc+ac/conv7``),
a task's own by the task (``vad/conv8``); TensorFlow scope names allow no "+", so
parts are joined with "-".
"""
from __future__ import annotations

import itertools
import math
from typing import Mapping, Sequence

from keras_mtl.errors import ConfigError


def edge_weights(ar: Mapping[tuple[str, str], Mapping[int, float]], threshold: float) -> dict[frozenset, int]:
    """{pair: largest shared depth k with AR <= threshold, or 0}; ``ar[(a, b)][k]`` in percent."""
    if not isinstance(threshold, (int, float)) or math.isnan(threshold) or threshold < 0:
        raise ConfigError(f"the AR threshold must be a number >= 0 (percent), not {threshold!r}")
    weights = {}
    for (a, b), by_depth in ar.items():
        if a == b:
            raise ConfigError(f"AR table: a task paired with itself ({a})")
        pair = frozenset((a, b))
        if pair in weights:
            raise ConfigError(f"AR table: the pair {a}, {b} appears twice")
        good = [int(k) for k, value in by_depth.items() if value is not None and not math.isnan(value)
                and value <= threshold]
        weights[pair] = max(good, default=0)
    return weights


def synthesize(tasks: Sequence[str], weights: Mapping[frozenset, int], depth: int) -> dict:
    """The tree of shared layers for ``tasks`` (see the module docstring); ``depth``: the template's
    number of encoder layers."""
    tasks = list(tasks)
    if len(set(tasks)) != len(tasks) or not tasks:
        raise ConfigError(f"synthesis needs distinct tasks, got {tasks}")
    if depth < 1:
        raise ConfigError("the template needs at least one layer")
    for a, b in itertools.combinations(tasks, 2):
        w = weights.get(frozenset((a, b)))
        if w is None:
            raise ConfigError(f"no edge weight for the pair {a}, {b} (missing from the AR table)")
        if not 0 <= w <= depth:
            raise ConfigError(f"edge weight {w} of {a}, {b} is outside 0..{depth}")
    order = {t: i for i, t in enumerate(tasks)}
    return _node(tasks, dict(weights), depth, order, root=True)


def _node(tasks: list[str], weights: dict, remaining: int, order: dict, root: bool = False) -> dict:
    if len(tasks) == 1:
        return {"tasks": tasks, "shared": remaining, "children": []}
    inner = [weights[frozenset(p)] for p in itertools.combinations(tasks, 2)]
    shared = min(min(inner), remaining)
    reduced = {pair: w - shared for pair, w in weights.items() if pair <= set(tasks)}
    left, right = _best_split(tasks, reduced, order)
    children = []
    for part in (left, right):
        child = _node(part, reduced, remaining - shared, order)
        if child["shared"] == 0 and child["children"]:
            children.extend(child["children"])  # a node without layers of its own: dissolved
        else:
            children.append(child)
    return {"tasks": tasks, "shared": shared, "children": children}


def _best_split(tasks: list[str], weights: dict, order: dict) -> tuple[list[str], list[str]]:
    first, rest = tasks[0], tasks[1:]
    best, best_key = None, None
    for size in range(0, len(rest)):
        for companions in itertools.combinations(rest, size):
            left = [first, *companions]
            right = [t for t in rest if t not in companions]
            score = min(_inner_minimum(left, weights), _inner_minimum(right, weights))
            key = (-score, abs(len(left) - len(right)), [order[t] for t in left])
            if best_key is None or key < best_key:
                best, best_key = (left, right), key
    return best


def _inner_minimum(part: list[str], weights: dict) -> float:
    if len(part) < 2:
        return math.inf  # a single task constrains nothing
    return min(weights[frozenset(p)] for p in itertools.combinations(part, 2))


# -- trees ----------------------------------------------------------------------------------------

def validate_tree(tree: Mapping, depth: int) -> None:
    """Checks a tree spec: every task on exactly one leaf, children's tasks partition the node's,
    and every root-to-leaf path has ``depth`` layers."""
    def visit(node, above: int, path: str):
        if not isinstance(node, Mapping) or "tasks" not in node or "shared" not in node:
            raise ConfigError(f"tree {path}: a node needs 'tasks' and 'shared'")
        tasks, shared, children = list(node["tasks"]), int(node["shared"]), list(node.get("children") or [])
        if shared < 0:
            raise ConfigError(f"tree {path}: negative shared depth")
        if children:
            covered = [t for child in children for t in child.get("tasks", [])]
            if sorted(covered) != sorted(tasks) or len(children) < 2:
                raise ConfigError(f"tree {path}: the children must split {tasks} into at least two parts")
            for child in children:
                visit(child, above + shared, f"{path}/{'+'.join(child['tasks'])}")
        elif len(tasks) != 1:
            raise ConfigError(f"tree {path}: a leaf holds exactly one task, not {tasks}")
        elif above + shared != depth:
            raise ConfigError(f"tree {path}: {above + shared} layers from the input to {tasks[0]}, "
                              f"the template has {depth}")

    visit(tree, 0, "root")


def node_prefix(node: Mapping, root: bool) -> str:
    """Layer-name prefix of a node's blocks: 'shared' for the root, the task for a leaf, 'a-b' between."""
    if root:
        return "shared"
    return "-".join(node["tasks"])


def block_owners(tree: Mapping) -> dict[str, list[str]]:
    """{task: [prefix of block 1, block 2, ...]} along the task's path through the tree."""
    owners: dict[str, list[str]] = {}

    def visit(node, above: list[str], root: bool):
        here = above + [node_prefix(node, root)] * int(node["shared"])
        if not node.get("children"):
            owners[node["tasks"][0]] = here
        for child in node.get("children") or []:
            visit(child, here, False)

    visit(tree, [], True)
    return owners


def describe(tree: Mapping, indent: str = "") -> str:
    """The tree as indented text: one line per node, its tasks and its layers."""
    lines = []

    def visit(node, start: int, pad: str, root: bool):
        count = int(node["shared"])
        span = f"layers {start + 1}-{start + count}" if count > 1 else (f"layer {start + 1}" if count else "no layers")
        lines.append(f"{pad}{node_prefix(node, root)} [{', '.join(node['tasks'])}]: {span}")
        for child in node.get("children") or []:
            visit(child, start + count, pad + "  ", False)

    visit(tree, 0, indent, True)
    return "\n".join(lines)
