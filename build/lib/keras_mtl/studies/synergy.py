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

import dataclasses
import itertools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from keras_mtl.compression.compress import CompressionSettings, compress_run
from keras_mtl.core import fileio
from keras_mtl.core.errors import ConfigError
from keras_mtl.core.reporting import pyplot, save_figure
from keras_mtl.models.trees import describe
from keras_mtl.runs import config as run_config
from keras_mtl.runs.folder import task_entry
from keras_mtl.studies.runner import run_all

log = logging.getLogger(__name__)


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
        good = [
            int(k)
            for k, value in by_depth.items()
            if value is not None and not math.isnan(value) and value <= threshold
        ]
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


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    stage: str  # single, pair, flat, tree, split
    tasks: tuple
    model: dict  # merged into the run's model section
    overrides: dict = dataclasses.field(default_factory=dict)  # merged into the run's configuration


def first_jobs(tasks: Sequence[str], depths: Sequence[int]) -> list[Job]:
    """Stages 1 and 2, in a fixed order (the order --shard i/n deals them out in)."""
    jobs = [Job(f"single-{t}", "single", (t,), {}) for t in tasks]
    for a, b in itertools.combinations(tasks, 2):
        jobs += [Job(f"pair-{a}-{b}-k{k}", "pair", (a, b), {"shared_blocks": int(k)}) for k in depths]
    return jobs


def final_jobs(tasks: Sequence[str], depths: Sequence[int], tree: dict, depth: int) -> list[Job]:
    """Stage 4: the synthesised tree, the flat models and the alternative two-part splits."""
    jobs = [Job("tree", "tree", tuple(tasks), {"tree": tree})]
    jobs += [Job(f"flat-k{k}", "flat", tuple(tasks), {"shared_blocks": int(k)}) for k in depths]
    chosen = sorted(sorted(child["tasks"]) for child in tree["children"]) if len(tree["children"]) == 2 else None
    first, rest = tasks[0], list(tasks[1:])
    for size in range(1, len(rest)):
        for companions in itertools.combinations(rest, size):
            left = [first, *companions]
            right = [t for t in rest if t not in companions]
            if len(left) < 2 or len(right) < 2 or sorted([sorted(left), sorted(right)]) == chosen:
                continue
            split = {
                "tasks": list(tasks),
                "shared": int(tree["shared"]),
                "children": [_group(part, depth - int(tree["shared"])) for part in (left, right)],
            }
            jobs.append(Job(f"split-{'-'.join(left)}--{'-'.join(right)}", "split", tuple(tasks), {"tree": split}))
    return jobs


def _group(tasks: list[str], layers: int) -> dict:
    return {"tasks": tasks, "shared": layers, "children": [{"tasks": [t], "shared": 0, "children": []} for t in tasks]}


def shard_of(jobs: list[Job], shard: tuple[int, int] | None) -> list[Job]:
    """Jobs i, i + n, i + 2n, ... of the list for shard (i, n) (0-based i)."""
    if shard is None:
        return list(jobs)
    index, count = shard
    if not 0 <= index < count:
        raise ConfigError(f"--shard {index}/{count}: the index must be in 0..{count - 1}")
    return jobs[index::count]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {text}: the index must be in 0..n-1")
    return index, count


def job_config(base: dict, job: Job, out: Path):
    model = run_config.merge(base.get("model") or {}, job.model)
    data = run_config.merge(
        base,
        {
            "tasks": list(job.tasks),
            "strategy": "soft",
            "model": model,
            "output_dir": str(out / "runs" / job.name),
            **job.overrides,
        },
    )
    return run_config.build(data)


def run_jobs(jobs: list[Job], base: dict, out: Path) -> None:
    """Trains every job without a metrics.json, in order (keras_mtl.studies.runner)."""
    run_all([(job.name, job_config(base, job, out)) for job in jobs])


def job_metrics(out: Path, job: Job) -> dict | None:
    path = out / "runs" / job.name / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


def headline(metrics: dict, task: str) -> float:
    value = task_entry(metrics, task)["headline"]["value"]
    return float("nan") if value is None else float(value)


def relative_drop(single: float, multi: float) -> float:
    """Drop of the metric in percent of the single-task value (negative: the multi-task model is better)."""
    return 100.0 * (single - multi) / single if single else float("nan")


def ar_of(metrics: dict, singles: dict[str, float]) -> float:
    """AR of a multi-task run: the largest relative drop of any of its tasks (NaN if one is undefined)."""
    names = [entry.get("name", t) for t, entry in metrics["tasks"].items()]
    drops = [relative_drop(singles[t], headline(metrics, t)) for t in names]
    return float("nan") if any(math.isnan(d) for d in drops) else max(drops)


def collect_ar(out: Path, tasks: Sequence[str], depths: Sequence[int]) -> tuple[dict, dict, dict]:
    """(single-task headlines, single-task params, AR table {(a, b): {k: AR}}) from finished runs."""
    missing = [job.name for job in first_jobs(tasks, depths) if job_metrics(out, job) is None]
    if missing:
        raise ConfigError(
            f"{out}: stage 1/2 runs not finished yet: {', '.join(missing[:6])}"
            f"{' ...' if len(missing) > 6 else ''} (run the shards first, then --merge)"
        )
    singles, params = {}, {}
    for task in tasks:
        metrics = job_metrics(out, Job(f"single-{task}", "single", (task,), {}))
        singles[task], params[task] = headline(metrics, task), int(metrics["model"]["params"])
    table = {}
    for a, b in itertools.combinations(tasks, 2):
        table[(a, b)] = {
            int(k): ar_of(job_metrics(out, Job(f"pair-{a}-{b}-k{k}", "pair", (a, b), {})), singles) for k in depths
        }
    return singles, params, table


# seed 001's figures (Tables 2-4), for the tables written beside ours
PAPER_TABLE3 = {
    ("gc", "ac"): [2.3, 0.6, 0.9, 1.2, 1.0],
    ("gc", "scr"): [0.4, 0.4, 0.8, 0.8, 1.2],
    ("gc", "vad"): [0.0, 0.0, 0.4, 0.0, 0.0],
    ("ac", "scr"): [0.8, 3.7, 2.7, 2.0, 7.0],
    ("ac", "vad"): [1.8, 2.0, 1.7, 2.4, 2.3],
    ("scr", "vad"): [0.5, 0.5, 1.2, 1.2, 1.3],
}


PAPER_TABLE4 = [
    ("4 independent models", 0.0, 120000),
    ("flat MTL, 7 shared", 2.7, 56600),
    ("LT4REC", 9.0, 58000),
    ("LTH", 6.5, 58000),
    ("{GC,AC},{SCR,VAD}", 1.9, 52600),
    ("{GC,SCR},{AC,VAD}", 4.0, 60700),
    ("{GC,VAD},{AC,SCR}", 3.5, 56600),
]


def template_depth(base: dict) -> int:
    return len(run_config.build(base).model.channels)


COMPRESSION_LABELS = {"lth": "LTH (pruned flat MTL)", "lt4rec": "LT4REC (sparse sharing)"}


def check_compression(methods: Sequence[str]) -> None:
    unknown = sorted(set(methods) - set(COMPRESSION_LABELS))
    if unknown:
        raise ConfigError(f"--compress {','.join(unknown)}: known methods are {', '.join(COMPRESSION_LABELS)}")


def run_compression(out: Path, finals: list[Job], methods: Sequence[str], rate: float = 0.2) -> None:
    """The seed 001 Table 4 baselines: the largest flat model (fewest shared layers) pruned by each
    method down to the synthesised tree's parameters, into runs/<method>; a finished one is kept."""
    check_compression(methods)
    if not methods:
        return
    tree = job_metrics(out, next(job for job in finals if job.stage == "tree"))
    flats = sorted((job for job in finals if job.stage == "flat"), key=lambda job: job.model["shared_blocks"])
    source = out / "runs" / flats[0].name
    target = int(tree["model"]["params"])
    dense = int(job_metrics(out, flats[0])["model"]["params"])
    if dense <= target:
        log.warning(
            "compression skipped: the largest flat model (%s, %d params) is not larger than the tree (%d)",
            flats[0].name,
            dense,
            target,
        )
        return
    for method in methods:
        if (out / "runs" / method / "metrics.json").exists():
            log.info("%s: done before, skipped", method)
            continue
        log.info("%s: pruning %s (%d params) to the tree's %d", method.upper(), flats[0].name, dense, target)
        compress_run(source, CompressionSettings(method, target, rate), out / "runs" / method)


def run_synergy(
    tasks: Sequence[str],
    depths: Sequence[int],
    threshold: float,
    base: dict,
    out: Path,
    shard: tuple[int, int] | None = None,
    merge: bool = False,
    dry_run: bool = False,
    compress: Sequence[str] = (),
    compress_rate: float = 0.2,
) -> dict | None:
    """All stages (see above). ``shard``: only that share of stages 1-2, then stop; ``merge``: skip
    stages 1-2 (their runs must exist), synthesise, run stage 4 and write the tables. ``compress``:
    also the LTH / LT4REC baselines (run_compression); finished ones join the tables in any case."""
    tasks = list(tasks)
    if len(tasks) < 2 or len(set(tasks)) != len(tasks):
        raise ConfigError(f"--tasks needs two or more distinct tasks, got {','.join(tasks)}")
    depth = template_depth(base)
    depths = sorted({int(k) for k in depths})
    if not depths or depths[0] < 0 or depths[-1] > depth:
        raise ConfigError(f"--depths must lie in 0..{depth} (the template's layers), got {depths}")
    edge_weights({}, threshold)  # checks the threshold before anything is trained
    check_compression(compress)
    first = first_jobs(tasks, depths)
    if dry_run:
        for job in shard_of(first, shard):
            job_config(base, job, out)
            log.info("would train %s (%s)", job.name, ", ".join(job.tasks))
        return None
    if not merge:
        run_jobs(shard_of(first, shard), base, out)
        if shard is not None:
            log.info("shard %d/%d done; when every shard has finished: --merge", shard[0], shard[1])
            return None
    singles, params, ar = collect_ar(out, tasks, depths)
    weights = edge_weights(ar, threshold)
    tree = synthesize(tasks, weights, depth)
    fileio.write_json(out / "tree.json", tree)
    log.info("synthesised tree (threshold %.2f%%):\n%s", threshold, describe(tree))
    finals = final_jobs(tasks, depths, tree, depth)
    run_jobs(finals, base, out)
    run_compression(out, finals, compress, compress_rate)
    return summarize(out, tasks, depths, threshold, singles, params, ar, weights, tree, finals)


def summarize(out: Path, tasks, depths, threshold, singles, params, ar, weights, tree, finals) -> dict:
    independent = sum(params.values())
    rows = [
        {
            "model": f"{len(tasks)} independent models",
            "job": None,
            "metrics": {t: 100 * singles[t] for t in tasks},
            "ar": 0.0,
            "params": independent,
        }
    ]
    for job in finals:
        metrics = job_metrics(out, job)
        if job.stage == "tree":
            label = "hierarchical (synthesised): " + _tree_label(tree)
        elif job.stage == "flat":
            label = f"flat MTL, {job.model['shared_blocks']} shared"
        else:
            label = "split " + _tree_label(job.model["tree"])
        rows.append(
            {
                "model": label,
                "job": job.name,
                "metrics": {t: 100 * headline(metrics, t) for t in tasks},
                "ar": ar_of(metrics, singles),
                "params": int(metrics["model"]["params"]),
            }
        )
    for method, label in COMPRESSION_LABELS.items():
        path = out / "runs" / method / "metrics.json"
        if path.exists():
            metrics = json.loads(path.read_text())
            rows.append(
                {
                    "model": f"{label}, {metrics['model']['dense_params']:,} → non-zero",
                    "job": method,
                    "metrics": {t: 100 * headline(metrics, t) for t in tasks},
                    "ar": ar_of(metrics, singles),
                    "params": int(metrics["model"]["params"]),
                }
            )
    for row in rows:
        row["saving_percent"] = 100.0 * (1 - row["params"] / independent)
    summary = {
        "tasks": list(tasks),
        "depths": list(depths),
        "threshold": threshold,
        "tree": tree,
        "singles": {t: 100 * v for t, v in singles.items()},
        "single_params": params,
        "ar": {f"{a}-{b}": {str(k): v for k, v in by_k.items()} for (a, b), by_k in ar.items()},
        "edge_weights": {"-".join(sorted(p, key=list(tasks).index)): w for p, w in weights.items()},
        "models": rows,
    }
    fileio.write_json(out / "results.json", summary)
    fileio.write_text(out / "tables.md", markdown_tables(summary))
    fileio.write_text(
        out / "models.csv",
        _csv(
            ["model", *tasks, "AR %", "params", "saving %"],
            [
                [
                    r["model"],
                    *[f"{r['metrics'][t]:.2f}" for t in tasks],
                    f"{r['ar']:.2f}",
                    r["params"],
                    f"{r['saving_percent']:.1f}",
                ]
                for r in rows
            ],
        ),
    )
    fileio.write_text(
        out / "ar.csv",
        _csv(
            ["T1", "T2", *[f"AR{k}" for k in depths]],
            [[a, b, *[f"{ar[(a, b)][k]:.2f}" for k in depths]] for (a, b) in ar],
        ),
    )
    plot_graph(tasks, weights, out / "graph.png")
    plot_tree(tree, out / "tree.png")
    return summary


def _tree_label(tree: Mapping) -> str:
    parts = [child["tasks"] for child in tree.get("children") or []]
    return ",".join("{" + ",".join(t.upper() for t in part) + "}" for part in parts) + f" after {tree['shared']} shared"


def _csv(header, rows) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def markdown_tables(summary: dict) -> str:
    tasks, depths = summary["tasks"], summary["depths"]
    lines = [
        f"# Task synergy ({', '.join(t.upper() for t in tasks)}; AR threshold {summary['threshold']}%)",
        "",
        "Single-task models (stage 1): " + ", ".join(f"{t.upper()} {v:.2f}" for t, v in summary["singles"].items()),
        "",
        "## AR (%) of two-task models by shared layers (seed 001 Table 3 shape)",
        "",
        "| T1 | T2 | " + " | ".join(f"AR{k}" for k in depths) + " | edge weight |",
        "|" + "---|" * (len(depths) + 3),
    ]
    for pair, by_k in summary["ar"].items():
        a, b = pair.split("-")
        weight = summary["edge_weights"].get(pair, summary["edge_weights"].get(f"{b}-{a}"))
        lines.append(
            f"| {a.upper()} | {b.upper()} | " + " | ".join(f"{by_k[str(k)]:.1f}" for k in depths) + f" | {weight} |"
        )
    if set(tasks) == {"gc", "ac", "scr", "vad"} and depths == [4, 5, 6, 7, 8]:
        lines += [
            "",
            "Paper (seed 001 Table 3): "
            + "; ".join(f"{a.upper()}-{b.upper()} {' / '.join(map(str, v))}" for (a, b), v in PAPER_TABLE3.items()),
        ]
    lines += [
        "",
        "## Tree",
        "",
        "```",
        describe(summary["tree"]),
        "```",
        "",
        "## Models (seed 001 Tables 2 and 4 shape)",
        "",
        "| model | " + " | ".join(t.upper() for t in tasks) + " | AR % | params | saving vs independent |",
        "|" + "---|" * (len(tasks) + 4),
    ]
    for row in summary["models"]:
        lines.append(
            f"| {row['model']} | "
            + " | ".join(f"{row['metrics'][t]:.2f}" for t in tasks)
            + f" | {row['ar']:.2f} | {row['params']:,} | {row['saving_percent']:.1f}% |"
        )
    if set(tasks) == {"gc", "ac", "scr", "vad"}:
        lines += [
            "",
            "Paper (seed 001 Table 4, AR % / size): "
            + "; ".join(f"{name} {value} / {size:,}" for name, value, size in PAPER_TABLE4)
            + " — the hierarchical model saves 56% of the independent models' size at AR 1.9%.",
        ]
    return "\n".join(lines) + "\n"


def plot_graph(tasks, weights, path: Path) -> None:
    """The tasks on a circle, each edge labelled with its weight (shared layers within the threshold)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    angles = {t: 2 * math.pi * i / len(tasks) + math.pi / 2 for i, t in enumerate(tasks)}
    xy = {t: (math.cos(a), math.sin(a)) for t, a in angles.items()}
    top = max(weights.values(), default=1) or 1
    for pair, weight in weights.items():
        a, b = sorted(pair, key=list(tasks).index)
        (x0, y0), (x1, y1) = xy[a], xy[b]
        ax.plot([x0, x1], [y0, y1], color="tab:blue", linewidth=0.5 + 3 * weight / top, alpha=0.7, zorder=1)
        ax.text(
            (x0 + x1) / 2,
            (y0 + y1) / 2,
            str(weight),
            ha="center",
            va="center",
            fontsize=10,
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "none"},
            zorder=3,
        )
    for task, (x, y) in xy.items():
        ax.scatter([x], [y], s=900, color="tab:orange", zorder=2)
        ax.text(x, y, task.upper(), ha="center", va="center", fontsize=10, zorder=4)
    ax.set_xlim(-1.4, 1.4)
    ax.set_ylim(-1.4, 1.4)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("edge weight: shared layers with AR within the threshold", fontsize=9)
    save_figure(fig, path)


def plot_tree(tree: Mapping, path: Path) -> None:
    """The tree of shared layers: one box per node with its tasks and its layers."""
    plt = pyplot()
    leaves = []

    def layout(node, depth_y, start):
        children = node.get("children") or []
        if not children:
            leaves.append(node)
            return [(node, len(leaves) - 1.0, depth_y, start)]
        placed = []
        for child in children:
            placed += layout(child, depth_y + 1, start + int(node["shared"]))
        xs = [x for n, x, y, s in placed if n in children]
        return [(node, sum(xs) / len(xs), depth_y, start)] + placed

    placed = layout(tree, 0, 0)
    fig, ax = plt.subplots(figsize=(max(4, 1.8 * len(leaves)), 1.4 * (1 + max(y for _, _, y, _ in placed))))
    position = {id(n): (x, -y) for n, x, y, _ in placed}
    for node, x, y, start in placed:
        for child in node.get("children") or []:
            cx, cy = position[id(child)]
            ax.plot([x, cx], [-y, cy], color="gray", zorder=1)
        count = int(node["shared"])
        span = f"layers {start + 1}-{start + count}" if count > 1 else (f"layer {start + 1}" if count else "-")
        ax.text(
            x,
            -y,
            f"{'+'.join(t.upper() for t in node['tasks'])}\n{span}",
            ha="center",
            va="center",
            fontsize=9,
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "tab:blue"},
            zorder=2,
        )
    ax.set_xlim(-0.8, len(leaves) - 0.2)
    ax.set_ylim(-(max(y for _, _, y, _ in placed)) - 0.6, 0.6)
    ax.axis("off")
    save_figure(fig, path)
