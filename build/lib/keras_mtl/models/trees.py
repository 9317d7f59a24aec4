"""Task trees of hierarchical MTL (seed 001): ``{"tasks", "shared", "children"}`` dicts, checked and
turned into the owner of each conv block on a task's path (``shared``, ``gc-ac``, ``vad``)."""

from __future__ import annotations

from collections.abc import Mapping

from keras_mtl.core.errors import ConfigError


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
            raise ConfigError(
                f"tree {path}: {above + shared} layers from the input to {tasks[0]}, the template has {depth}"
            )

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
