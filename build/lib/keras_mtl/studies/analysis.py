"""Which tasks help each other (seed 004): dataset and learning-curve measurements of every task,
the gain of each task from being trained with another one (hard parameter sharing), and how the
measurements relate to the gain (Pearson correlation, cross-validated logistic regression).

Measurements per task (training split): labels, clips, labelled frames (frame tasks), label entropy
(bits) and kurtosis (excess, of the label counts), type/token ratio (distinct labels / label
occurrences), mean clip length, total duration, sample rate, an SNR estimate (median over clips of
the 95th minus the 5th percentile of frame level, dB, from the log-mel frames), the share of event
time where two or more events overlap (frame tasks) and the label granularity (strong, weak and
unlabelled clips). Learning-curve features of the single-task run (its batch_loss.csv): the slope
of the loss at 10/20/30/50/70% of the training batches and a, b, c of L(i) = a ln(c i + d) + b (d = 1).

Gain of main task M with auxiliary task A: M's headline metric in the two-task model minus the
single-task one, in points (positive: A helps M). Every ordered pair is one sample: M's features,
A's features and their ratios M/A are the explanatory variables.

Class overlap (seed 004, experiment 5; ASC with SED on the built-in synthetic data, whose generator
draws each scene's events mostly from that scene's typical events): an event typical of two or more
scenes is shared, one typical of a single scene unique. ASC alone and ASC + SED are trained again
with the ASC training clips that contain a shared event left out, and ASC accuracy is compared on
the scenes with a unique event and on the others, with and without those clips.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from keras_mtl.core import fileio
from keras_mtl.core.backend import keras, tf
from keras_mtl.core.errors import ConfigError
from keras_mtl.core.reporting import pyplot, save_figure
from keras_mtl.data.synth import sounds, synthetic
from keras_mtl.deploy.export import calibration_samples
from keras_mtl.deploy.streaming import fit_frames, invocations_per_second, plan_streaming
from keras_mtl.deploy.tflite import Int8Model, convert_int8
from keras_mtl.models import architectures, profiling
from keras_mtl.runs.folder import read_config, read_metrics
from keras_mtl.runs.inputs import prepare_data
from keras_mtl.runs.network import time_resolution
from keras_mtl.studies import synergy
from keras_mtl.studies.synergy import Job
from keras_mtl.tasks.registry import resolve_tasks

log = logging.getLogger(__name__)

CURVE_POINTS = (0.1, 0.2, 0.3, 0.5, 0.7)


# -- statistics ---------------------------------------------------------------------------------


def label_entropy(counts: Sequence[float]) -> float:
    """Shannon entropy (bits) of the label distribution given by ``counts``."""
    counts = np.asarray([c for c in counts if c > 0], np.float64)
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: no negative zero


def label_kurtosis(counts: Sequence[float]) -> float:
    """Excess (Fisher) kurtosis of the label counts: 0 for a normal spread, negative for a flat one."""
    x = np.asarray(counts, np.float64)
    if x.size < 2 or np.allclose(x, x[0]):
        return 0.0
    centred = x - x.mean()
    return float((centred**4).mean() / (centred**2).mean() ** 2 - 3.0)


def log_curve(i, a, b, c, d):
    return a * np.log(c * i + d) + b


def fit_log_curve(steps: Sequence[float], losses: Sequence[float]) -> dict:
    """a, b, c of L(i) = a ln(c i + d) + b fitted by least squares, and the RMSE. d is fixed at 1:
    scaling c and d together only shifts b (a ln(k(c i + d)) = a ln(c i + d) + a ln k), so the four
    parameters are not identifiable together."""
    from scipy.optimize import curve_fit

    i, y = np.asarray(steps, np.float64), np.asarray(losses, np.float64)
    if i.size < 5:
        raise ConfigError(f"a learning curve needs at least 5 points to fit, got {i.size}")
    scale = float(i.max())
    u = i / scale  # fit on steps scaled to (0, 1]: c then is per unit of training, reported per step

    def model(x, a, b, log_c):
        return log_curve(x, a, b, np.exp(log_c), 1.0)

    best = None
    for log_c in (-2.0, 0.0, 2.0, 4.0, 6.0):
        try:
            params, _ = curve_fit(model, u, y, p0=(-0.3, float(y[0]), log_c), maxfev=20000)
        except RuntimeError:
            continue
        rmse = float(np.sqrt(np.mean((model(u, *params) - y) ** 2)))
        if best is None or rmse < best[1]:
            best = (params, rmse)
    if best is None:
        raise ConfigError("the learning curve could not be fitted with a ln(c i + 1) + b")
    (a, b, log_c), rmse = best
    return {"a": float(a), "b": float(b), "c": float(np.exp(log_c) / scale), "d": 1.0, "rmse": rmse}


def curve_gradients(losses: Sequence[float], points: Sequence[float] = CURVE_POINTS) -> dict:
    """Slope of the loss per batch at each fraction of training: a linear fit over a window of 10% of
    the batches (at least 3) centred on the point."""
    y = np.asarray(losses, np.float64)
    n = y.size
    half = max(1, int(round(0.05 * n)))
    out = {}
    for point in points:
        centre = min(n - 1, max(0, int(round(point * (n - 1)))))
        lo, hi = max(0, centre - half), min(n, centre + half + 1)
        x = np.arange(lo, hi, dtype=np.float64)
        out[f"gradient_{int(round(100 * point))}"] = float(np.polyfit(x, y[lo:hi], 1)[0]) if hi - lo >= 2 else 0.0
    return out


def snr_estimate(features: Sequence[np.ndarray]) -> float:
    """Median over clips of the 95th minus the 5th percentile of frame level (dB) from log-mel frames."""
    spreads = []
    for frames in features:
        level = 10.0 * np.log10(np.mean(np.exp(np.asarray(frames, np.float64)), axis=-1) + 1e-12)
        spreads.append(np.percentile(level, 95) - np.percentile(level, 5))
    return float(np.median(spreads)) if spreads else float("nan")


def overlap_share(items, seconds_per_frame: float = 0.01) -> float | None:
    """Share of event time (at 10 ms) during which two or more events are active; None without events."""
    active_total, overlapped = 0, 0
    for item in items:
        if not item.events:
            continue
        end = max(e.offset for e in item.events)
        counts = np.zeros(int(math.ceil(end / seconds_per_frame)) + 1, np.int32)
        for event in item.events:
            counts[int(event.onset / seconds_per_frame) : int(math.ceil(event.offset / seconds_per_frame))] += 1
        active_total += int((counts > 0).sum())
        overlapped += int((counts > 1).sum())
    return overlapped / active_total if active_total else None


def dataset_measurements(task, train, semi=(), sample_rate: int = 16000, snr_clips: int = 50) -> dict:
    """The dataset features of one task from its prepared training split (and semi-supervised splits)."""
    items = train.items
    if task.level == "clip":
        labels = [item.label for item in items]
    else:
        labels = [event.label for item in items for event in (item.events or ())]
    counts = [labels.count(c) for c in task.classes]
    durations = [item.duration or task.clip_seconds for item in items]
    rng = np.random.default_rng(0)
    picks = rng.choice(len(train), size=min(snr_clips, len(train)), replace=False)
    result = {
        "labels": task.n_classes,
        "clips": len(items),
        "labelled_frames": int(
            sum(float(t.sum() > 0) if t.ndim == 1 else float((t.max(axis=-1) > 0).sum()) for t in train.targets)
        )
        if task.level == "frame"
        else 0,
        "entropy": label_entropy(counts),
        "kurtosis": label_kurtosis(counts),
        "type_token_ratio": len({l for l in labels}) / len(labels) if labels else 0.0,
        "mean_clip_seconds": float(np.mean(durations)),
        "total_seconds": float(np.sum(durations)),
        "sample_rate": sample_rate,
        "snr_db": snr_estimate([train.load_features(int(i)) for i in picks]),
        "overlap_share": (overlap_share(items) or 0.0) if task.level == "frame" else 0.0,
        "strong_clips": len(items) if task.level == "frame" else 0,
        "weak_clips": len(semi[0]) if len(semi) > 0 and semi[0] is not None else 0,
        "unlabeled_clips": len(semi[1]) if len(semi) > 1 and semi[1] is not None else 0,
    }
    return result


def learning_curve_features(run_dir: Path) -> dict:
    """Gradients and log-curve parameters of a run's training loss (batch_loss.csv; else history.csv
    with one point per epoch)."""
    import csv

    batch_log = run_dir / "batch_loss.csv"
    if batch_log.exists():
        rows = list(csv.DictReader(batch_log.open()))
        steps = [float(r["step"]) for r in rows]
        losses = [float(r["loss"]) for r in rows]
    else:
        rows = list(csv.DictReader((run_dir / "history.csv").open()))
        metrics = read_metrics(run_dir)
        steps = [float(r["epoch"]) * metrics["steps_per_epoch"] for r in rows]
        losses = [float(r["loss"]) for r in rows]
    features = curve_gradients(losses)
    try:
        fit = fit_log_curve(steps, losses)
    except ConfigError as error:
        log.warning("%s: %s; its curve parameters are left empty", run_dir, error)
        fit = {k: float("nan") for k in ("a", "b", "c", "d", "rmse")}
    features.update({f"curve_{k}": v for k, v in fit.items()})
    return features


# -- relations ----------------------------------------------------------------------------------


def correlations(table, target: str = "gain"):
    """Pearson r and p of every numeric column with ``target`` (constant columns left out), by |r|."""
    import pandas as pd
    from scipy.stats import pearsonr

    rows = []
    for column in table.columns:
        if column == target or not np.issubdtype(table[column].dtype, np.number):
            continue
        x = table[column].astype(float)
        if x.nunique() < 2 or table[target].nunique() < 2 or x.isna().any():
            continue
        r, p = pearsonr(x, table[target].astype(float))
        rows.append({"feature": column, "r": float(r), "p": float(p)})
    result = pd.DataFrame(rows, columns=["feature", "r", "p"])
    return result.reindex(result["r"].abs().sort_values(ascending=False).index).reset_index(drop=True)


def gain_classifier(table, features: Sequence[str], target: str = "gain", folds: int = 5, seed: int = 0) -> dict:
    """Logistic regression predicting gain > 0 from standardised ``features``, stratified k-fold
    cross-validated: accuracy per fold and its mean, the majority-class baseline, and the
    coefficients of a fit on all samples."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = table[list(features)].astype(float).to_numpy()
    y = (table[target].astype(float).to_numpy() > 0).astype(int)
    counts = np.bincount(y, minlength=2)
    folds = int(min(folds, counts.min()))
    result = {"samples": int(len(y)), "positive": int(counts[1]), "baseline_accuracy": float(counts.max() / len(y))}
    if folds < 2:
        result["note"] = "one class (almost) only: no cross-validation"
        return result
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    scores = cross_val_score(model, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    model.fit(x, y)
    coefficients = model[-1].coef_[0]
    result.update(
        {
            "folds": folds,
            "fold_accuracy": [float(s) for s in scores],
            "cv_accuracy": float(scores.mean()),
            "coefficients": {f: float(c) for f, c in zip(features, coefficients)},
        }
    )
    return result


def pair_table(tasks: Sequence[str], measurements: dict, singles: dict, pairs: dict):
    """One row per ordered pair (main, auxiliary): gain in points and the features of both (main_*,
    aux_*) and their ratios (ratio_*)."""
    import pandas as pd

    rows = []
    for main, aux in itertools.permutations(tasks, 2):
        key = tuple(sorted((main, aux), key=list(tasks).index))
        if key not in pairs or pairs[key].get(main) is None or singles.get(main) is None:
            continue
        row = {"main": main, "auxiliary": aux, "gain": 100.0 * (pairs[key][main] - singles[main])}
        for name, value in measurements[main].items():
            row[f"main_{name}"] = value
            other = measurements[aux].get(name)
            row[f"aux_{name}"] = other
            if isinstance(value, (int, float)) and isinstance(other, (int, float)) and other:
                row[f"ratio_{name}"] = value / other
        rows.append(row)
    return pd.DataFrame(rows)


# -- efficiency ---------------------------------------------------------------------------------


def latency_per_second(network, n_mels: int, frames: int = 101, repeats: int = 20) -> float:
    """Median wall time (ms) of one batch-1 forward pass over 1 s of log-mel frames (Keras, float)."""
    x = tf.zeros((1, frames, n_mels))
    call = tf.function(lambda v: network(v, training=False))
    return median_milliseconds(lambda: tf.nest.map_structure(lambda t: t.numpy(), call(x)), repeats)


def median_milliseconds(run, repeats: int = 20) -> float:
    """Median wall time (ms) of ``run()`` over ``repeats`` calls, after one untimed warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(1000.0 * (time.perf_counter() - started))
    return float(np.median(times))


def int8_latency_per_second(network, tasks, config, train: dict, repeats: int = 20) -> tuple[float, int]:
    """(median LiteRT int8 time in ms of one second of audio, flatbuffer bytes), calibrated on four
    training clips per task. Networks with an encoder to stream: the int8 pieces of keras_mtl.deploy,
    run the way the device runs them (the encoder once per second or per step, each frame step once per output frame, each
    clip head once per clip: its share of one second). Networks without one (whole-clip models such
    as the Georgiev DNN): the whole network, every task's output, on one second of frames."""
    factor, _ = time_resolution(config)
    plan = plan_streaming(network, tasks, config.frontend, factor, config.architecture)
    rng = np.random.default_rng(0)
    if plan.branches:
        calibration = calibration_samples(plan, tasks, train, 4, rng)
        runs = [
            (
                piece.model,
                calibration[piece.name],
                invocations_per_second(piece, plan),
            )
            for piece in plan.pieces
        ]
    else:
        frames = config.frontend.n_frames(config.frontend.sample_rate)
        mel = keras.Input(shape=(frames, int(network.input.shape[-1])), batch_size=1, name="mel")
        whole = keras.Model(mel, network(mel), name="whole_network")
        samples = [
            {"mel": fit_frames(train[t.name].load_features(int(i)).astype(np.float32), frames)[None]}
            for t in tasks
            for i in rng.choice(len(train[t.name]), size=min(4, len(train[t.name])), replace=False)
        ]
        runs = [(whole, samples, 1.0)]
    milliseconds, size = 0.0, 0
    for keras_model, samples, per_second in runs:
        flatbuffer = convert_int8(keras_model, lambda: iter(samples))
        interpreter = Int8Model(flatbuffer)
        inputs = {name: interpreter.quantize(name, value) for name, value in samples[0].items()}
        milliseconds += per_second * median_milliseconds(lambda: interpreter.run_int8(inputs), repeats)
        size += len(flatbuffer)
    return milliseconds, size


@dataclasses.dataclass
class Efficiency:
    model: str
    params: int
    int8_weight_bytes: int
    macs_per_second: int
    float_latency_ms: float  # float Keras, whole network, batch 1, 1 s of log-mel frames
    int8_latency_ms: float  # LiteRT int8, one second of audio (int8_latency_per_second)
    int8_flatbuffer_bytes: int  # the .tflite bytes timed


# -- the pipeline --------------------------------------------------------------------------------

COMPARED = ("frontend", "augment", "training", "synthetic", "speech_synthetic", "seed", "architecture")


def analysis_jobs(tasks: Sequence[str], overlap_list: Path | None = None) -> list:
    """Single-task runs, every two-task run with all layers shared, the all-task run and, with an
    ``overlap_list`` (ASC clips to leave out), ASC alone and ASC + SED without those clips."""
    jobs = [Job(f"single-{t}", "single", (t,), {}) for t in tasks]
    jobs += [Job(f"pair-{a}-{b}", "pair", (a, b), {}) for a, b in itertools.combinations(tasks, 2)]
    jobs.append(Job("all", "all", tuple(tasks), {}))
    if overlap_list is not None:
        left_out = {"exclude_train": {"asc": str(overlap_list)}}
        jobs.append(Job("overlap-single-asc", "overlap", ("asc",), {}, left_out))
        jobs.append(Job("overlap-pair-asc-sed", "overlap", ("asc", "sed"), {}, left_out))
    return jobs


# -- class overlap (experiment 5) -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EventRelation:
    """Which events are typical of which scenes, and what follows from it."""

    scene_events: dict  # scene -> events typical of it

    @property
    def shared_events(self) -> set:
        return {e for e in self.events if sum(e in v for v in self.scene_events.values()) > 1}

    @property
    def unique_events(self) -> set:
        return self.events - self.shared_events

    @property
    def events(self) -> set:
        return {e for v in self.scene_events.values() for e in v}

    @property
    def scenes_with_unique_events(self) -> list:
        return sorted(s for s, v in self.scene_events.items() if set(v) & self.unique_events)


def synthetic_overlap(synthetic_config) -> tuple[EventRelation, list[str]]:
    """The built-in synthetic data's scene/event relation and its ASC training clips (paths relative
    to the ASC root) that contain a shared event (from the generator's plan: nothing is rendered)."""
    relation = EventRelation({scene: tuple(events) for scene, events in sounds.SCENE_EVENTS.items()})
    shared = relation.shared_events
    plans = synthetic.plan_all(synthetic_config)["asc_train"]
    return relation, [p["file"] for p in plans if any(e["label"] in shared for e in p["events"])]


def overlap_rows(relation: EventRelation, metrics: dict, clips: int, left_out: int) -> list[dict]:
    """ASC accuracy overall, on the scenes with a unique event and on the others, per model and data."""
    unique = relation.scenes_with_unique_events
    rows = []
    for data, single, pair in (
        ("all ASC clips", "single-asc", "pair-asc-sed"),
        (f"{left_out} of {clips} ASC clips (shared events) left out", "overlap-single-asc", "overlap-pair-asc-sed"),
    ):
        for model, name in (("ASC alone", single), ("ASC + SED", pair)):
            asc = metrics[name]["tasks"]["asc"]["metrics"]
            per_scene = {s: v for s, v in (asc.get("class_accuracy") or {}).items() if v is not None}
            row = {
                "training data": data,
                "model": model,
                "asc accuracy": 100.0 * float(asc["accuracy"]),
                "scenes with a unique event": 100.0 * float(np.mean([per_scene[s] for s in unique if s in per_scene])),
                "scenes sharing all their events": 100.0
                * float(np.mean([v for s, v in per_scene.items() if s not in unique])),
            }
            sed = metrics[name]["tasks"].get("sed")
            row["sed event f1"] = 100.0 * float(sed["metrics"]["event_f1_macro"]) if sed else float("nan")
            rows.append(row)
    return rows


def matching_run(job, config, reuse: Path | None) -> Path | None:
    """A finished synergy run of the same tasks with every layer shared and the same settings (its
    single-task runs, pair-<a>-<b>-k<depth> and flat-k<depth>)."""
    if reuse is None:
        return None
    depth = len(config.model.channels)
    names = {"single": [job.name], "pair": [f"{job.name}-k{depth}"], "all": [f"flat-k{depth}"]}.get(job.stage, [])
    wanted = config.to_dict()
    for name in names:
        folder = Path(reuse) / "runs" / name
        if not (folder / "metrics.json").exists():
            continue
        try:  # built, so that fields added since the run take their defaults
            found = read_config(folder).to_dict()
        except ConfigError:
            continue
        model = dict(found.get("model") or {})
        if model.get("shared_blocks") in (depth, None):
            model["shared_blocks"] = wanted["model"]["shared_blocks"]
        if model == wanted["model"] and all(found.get(k) == wanted.get(k) for k in COMPARED):
            return folder
    return None


def run_analysis(
    tasks: Sequence[str], base: dict, out: Path, reuse: Path | None = None, dry_run: bool = False
) -> dict | None:
    """Trains what is missing, then measures, relates and writes the report folder ``out``."""
    tasks = list(tasks)
    if len(tasks) < 2 or len(set(tasks)) != len(tasks):
        raise ConfigError(f"--tasks needs two or more distinct tasks, got {','.join(tasks)}")
    overlap = None
    if {"asc", "sed"} <= set(tasks):
        probe = synergy.job_config(base, analysis_jobs(tasks)[0], out)
        if probe.data_root is None:
            overlap = synthetic_overlap(probe.synthetic)
        else:
            log.info(
                "class-overlap experiment skipped: it needs the built-in synthetic data (which events "
                "belong to which scene is known there)"
            )
    overlap_list = out / "class_overlap" / "asc_clips_with_shared_events.txt"
    jobs = analysis_jobs(tasks, overlap_list if overlap else None)
    folders = {}
    for job in jobs:
        config = synergy.job_config(base, job, out)
        folders[job.name] = matching_run(job, config, reuse) or out / "runs" / job.name
    if dry_run:
        for job in jobs:
            state = "reused" if folders[job.name].parent.parent != out else "train"
            log.info("%s: %s (%s)", job.name, state, folders[job.name])
        return None
    if overlap:
        fileio.write_text(overlap_list, "".join(f"{name}\n" for name in overlap[1]))
    todo = [job for job in jobs if not (folders[job.name] / "metrics.json").exists()]
    log.info("%d runs to train, %d reused or done before", len(todo), len(jobs) - len(todo))
    synergy.run_jobs(todo, base, out)
    metrics = {name: read_metrics(folder) for name, folder in folders.items()}

    all_config = synergy.job_config(base, next(job for job in jobs if job.name == "all"), out)
    resolved = resolve_tasks(tasks, all_config.custom_tasks)
    data = prepare_data(all_config, resolved)
    measurements = {}
    for task in resolved:
        values = dataset_measurements(
            task, data.train[task.name], data.semi.get(task.name, ()), all_config.frontend.sample_rate
        )
        values.update(learning_curve_features(folders[f"single-{task.name}"]))
        measurements[task.name] = values
    singles = {t: synergy.headline(metrics[f"single-{t}"], t) for t in tasks}
    pairs = {
        (a, b): {t: synergy.headline(metrics[f"pair-{a}-{b}"], t) for t in (a, b)}
        for a, b in itertools.combinations(tasks, 2)
    }
    table = pair_table(tasks, measurements, singles, pairs)
    corr = correlations(table)
    top = [f for f in corr["feature"].head(5)] if len(corr) else []
    regression = gain_classifier(table, top) if top else {"note": "no varying feature"}
    efficiency = efficiency_rows(tasks, folders, all_config, data.train)

    out.mkdir(parents=True, exist_ok=True)
    import pandas as pd

    measured = pd.DataFrame([{"task": t, **v} for t, v in measurements.items()])
    fileio.write_text(out / "measurements.csv", measured.to_csv(index=False))
    fileio.write_text(out / "gains.csv", table.to_csv(index=False))
    fileio.write_text(out / "correlations.csv", corr.to_csv(index=False))
    fileio.write_json(out / "regression.json", regression)
    fileio.write_text(
        out / "efficiency.csv", pd.DataFrame([dataclasses.asdict(e) for e in efficiency]).to_csv(index=False)
    )
    plot_correlations(table, corr, out / "correlations.png")
    plot_learning_curves(tasks, folders, measurements, out / "learning_curves.png")
    overlap_table = None
    if overlap:
        relation, left_out = overlap
        overlap_table = pd.DataFrame(overlap_rows(relation, metrics, len(data.train["asc"]), len(left_out)))
        fileio.write_text(out / "class_overlap" / "results.csv", overlap_table.to_csv(index=False))
        fileio.write_json(
            out / "class_overlap" / "relation.json",
            {
                "scene_events": {k: list(v) for k, v in relation.scene_events.items()},
                "shared_events": sorted(relation.shared_events),
                "unique_events": sorted(relation.unique_events),
                "scenes_with_unique_events": relation.scenes_with_unique_events,
                "asc_clips_left_out": len(left_out),
            },
        )
    summary = {
        "tasks": tasks,
        "singles": singles,
        "pairs": {f"{a}-{b}": v for (a, b), v in pairs.items()},
        "runs": {k: str(v) for k, v in folders.items()},
        "regression": regression,
    }
    fileio.write_json(out / "results.json", summary)
    fileio.write_text(
        out / "report.md",
        report_markdown(tasks, measured, table, corr, regression, efficiency, overlap and (overlap[0], overlap_table)),
    )
    return summary


def efficiency_rows(tasks, folders: dict, config, train: dict) -> list[Efficiency]:
    """The all-task model vs one single-task model (the mean) vs every single-task model in turn."""

    def measure(name, names):
        network = architectures.load_network(folders[name] / "model.keras")
        layers = profiling.profile(network, config.frontend)
        total = profiling.summarize(layers)["total"]
        log.info("efficiency: %s: float and int8 latency", name)
        try:
            int8_ms, int8_bytes = int8_latency_per_second(
                network, resolve_tasks(names, config.custom_tasks), config, train
            )
        except (ConfigError, RuntimeError, ValueError) as error:  # e.g. an op with no int8 kernel
            log.warning("efficiency: %s: no int8 latency (%s)", name, str(error).splitlines()[0][:200])
            int8_ms, int8_bytes = float("nan"), 0
        return (
            int(total["params"]),
            int(total["int8_weight_bytes"]),
            int(total["macs_per_second"]),
            latency_per_second(
                network, int(network.input.shape[-1]), config.frontend.n_frames(config.frontend.sample_rate)
            ),
            int8_ms,
            int8_bytes,
        )

    multi = measure("all", list(tasks))
    singles = [measure(f"single-{t}", [t]) for t in tasks]
    mean = [float(np.mean([s[i] for s in singles])) for i in range(6)]
    total = [float(np.sum([s[i] for s in singles])) for i in range(6)]

    def row(label, values):
        return Efficiency(
            label, int(values[0]), int(values[1]), int(values[2]), float(values[3]), float(values[4]), int(values[5])
        )

    return [
        row(f"multi-task ({'+'.join(tasks)})", multi),
        row("one single-task model (mean)", mean),
        row(f"{len(tasks)} single-task models in turn", total),
    ]


def plot_correlations(table, corr, path: Path) -> None:
    """Heat map of the correlations among the gain and the features most correlated with it."""
    plt = pyplot()
    names = ["gain"] + list(corr["feature"].head(12))
    matrix = table[names].astype(float).corr().to_numpy() if len(names) > 1 else np.ones((1, 1))
    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(names), 0.8 + 0.5 * len(names)))
    image = ax.imshow(np.nan_to_num(matrix), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    fig.colorbar(image, ax=ax, shrink=0.8, label="Pearson r")
    ax.set_title("gain and the most related features", fontsize=9)
    save_figure(fig, path)


def plot_learning_curves(tasks, folders: dict, measurements: dict, path: Path) -> None:
    """Each single-task run's training loss per batch with its fitted a ln(c i + d) + b."""
    import csv

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for task in tasks:
        log_path = folders[f"single-{task}"] / "batch_loss.csv"
        if not log_path.exists():
            continue
        rows = list(csv.DictReader(log_path.open()))
        steps = np.array([float(r["step"]) for r in rows])
        (line,) = ax.plot(steps, [float(r["loss"]) for r in rows], alpha=0.5, label=task)
        m = measurements[task]
        if math.isnan(m["curve_a"]):
            continue
        ax.plot(
            steps,
            log_curve(steps, m["curve_a"], m["curve_b"], m["curve_c"], m["curve_d"]),
            color=line.get_color(),
            linestyle="--",
        )
    ax.set_xlabel("training batch")
    ax.set_ylabel("training loss (dashed: a ln(c i + d) + b)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def report_markdown(tasks, measured, table, corr, regression: dict, efficiency: list, overlap=None) -> str:
    lines = [
        f"# Which tasks help each other ({', '.join(t.upper() for t in tasks)})",
        "",
        "## Dataset and learning-curve measurements (training splits)",
        "",
        _markdown(measured),
        "",
        "## Gain of the main task from the auxiliary one (points; two-task model, all layers shared)",
        "",
        _markdown(table[["main", "auxiliary", "gain"]]) if len(table) else "(none)",
        "",
        "## Features most correlated with the gain (Pearson)",
        "",
        _markdown(corr.head(15)) if len(corr) else "(none)",
        "",
        "## Logistic regression: gain > 0 from the five most correlated features",
        "",
        "```",
        json.dumps(regression, indent=1),
        "```",
        "",
        "## Efficiency per 1 s of audio on this machine (batch 1)",
        "",
        "Float: the Keras network on 1 s of log-mel frames. Int8: LiteRT running the streaming int8 "
        "pieces the way a device does (encoder once, frame steps once per output frame; a network "
        "without an encoder to stream runs whole on 1 s of frames).",
        "",
        "| model | params | int8 weight bytes | MACs / 1 s | float ms / 1 s | int8 ms / 1 s | int8 .tflite bytes |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in efficiency:
        lines.append(
            f"| {e.model} | {e.params:,} | {e.int8_weight_bytes:,} | {e.macs_per_second:,} | "
            f"{e.float_latency_ms:.2f} | {e.int8_latency_ms:.2f} | {e.int8_flatbuffer_bytes:,} |"
        )
    if overlap:
        relation, results = overlap
        lines += [
            "",
            "## Class overlap: ASC with SED (seed 004, experiment 5)",
            "",
            f"Shared events (typical of two or more scenes): {', '.join(sorted(relation.shared_events))}. "
            f"Unique: {', '.join(sorted(relation.unique_events)) or 'none'}, so the scenes with a unique event "
            f"are {', '.join(relation.scenes_with_unique_events) or 'none'}. Accuracy in %, SED event F1 in %.",
            "",
            _markdown(results),
        ]
    return "\n".join(lines) + "\n"


def _markdown(frame) -> str:
    """A DataFrame as a markdown table (numbers to 4 significant digits)."""

    def cell(value):
        if isinstance(value, (float, np.floating)):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)
