"""Search over a run's settings with Optuna (Akiba et al. 2019, TPE sampler): one ordinary run folder per
trial, the study in a database so that an interrupted search resumes and several machines share one.

The search space is a YAML file whose keys are settings of the run configuration, dotted as a
``--config`` YAML nests them (``weighting``, ``training.distill_weight``, ``training.distill_weight.sed``
for one task's value), and whose values are distributions::

    training.distill_weight: {low: 0.1, high: 4.0, log: true}   # a float (log-uniform)
    training.distill_temperature: {low: 1.0, high: 8.0}         # a float
    model.gru_units: {low: 32, high: 96, step: 16}               # an int: low, high (and step) are ints
    model.channels: {choices: [[8, 16, 32, 64, 64], [8, 16, 32, 48, 64]]}   # one of these values

The objective is read from each trial's ``metrics.json``: ``mean`` (the mean of the tasks' headline
figures: accuracy, event-based F1, frame ROC-AUC, ...; maximised), ``TASK`` or ``TASK:METRIC`` (that figure,
e.g. ``sed:psds1``; maximised, minimised for a metric named ``*error_rate`` or ``*loss``), or ``ar`` (AR:
the largest relative drop in percent of a task's headline figure against a reference run of that task;
minimised). A trial whose network exceeds ``max_macs`` (MACs per second of audio) is pruned before it
trains.

Storage: ``sqlite:///<out>/study.db`` by default (one machine); any SQLAlchemy URL
(``postgresql://user@host/db``, ``mysql+pymysql://...``) for one study shared by several machines, each
running the same command. A trial interrupted with its process (no heartbeat for two minutes) is failed
and retried once with the same settings. A study keeps its space, objective and base settings: reopening
it with others is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
import yaml

from keras_mtl.core import fileio
from keras_mtl.core.errors import ConfigError, DataError
from keras_mtl.runs import config as run_config
from keras_mtl.runs.folder import METRICS, task_entry
from keras_mtl.training.fit import train

log = logging.getLogger(__name__)

SPACE_KEYS = {"low", "high", "step", "log", "choices"}
HEARTBEAT_SECONDS = 60
GRACE_SECONDS = 120
#: consecutive failed trials after which the search stops: a failure every trial repeats is the input's
FAILURES_TO_STOP = 3


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched setting: ``path`` (dotted, e.g. ``training.distill_weight``), its distribution and the
    line of the space file that gives it."""

    path: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple | None = None
    line: int | None = None

    @property
    def encoded_choices(self) -> list[str]:
        """The choices as Optuna stores them: their JSON text (distinct for 1, 1.0 and true; lists too)."""
        return [json.dumps(c) for c in self.choices or ()]

    def suggest(self, trial: optuna.Trial):
        """The trial's value of this setting (Optuna's suggest_categorical / suggest_int / suggest_float)."""
        if self.choices is not None:
            return self.decode(trial.suggest_categorical(self.path, self.encoded_choices))
        if self.is_int:
            return trial.suggest_int(self.path, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.path, float(self.low), float(self.high), step=self.step, log=self.log)

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))

    def decode(self, stored):
        """A stored parameter back to the setting's value."""
        if self.choices is None:
            return stored
        return self.choices[self.encoded_choices.index(stored)]

    def values_to_check(self) -> list:
        if self.choices is not None:
            return list(self.choices)
        return [self.low, self.high] + (
            [self.low + self.step] if self.step is not None and self.low < self.high else []
        )

    def describe(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("line",) and v not in (None, False)}


def _line_numbers(text: str) -> dict:
    """{top-level key: its line (from 1)} of a YAML mapping."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {key.value: key.start_mark.line + 1 for key, _ in node.value}


def _number(value):
    """YAML 1.1 reads 1e-4 as text: a number written so is taken as one."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_space(path: str | Path) -> list[Dimension]:
    """The search space of a YAML file (module docstring). ConfigError naming the file, the line and the
    setting for anything that is not a distribution Optuna can sample."""
    path = Path(path)
    try:
        text = path.read_text()
        data = yaml.safe_load(text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the search space ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: the search space is a mapping of settings to distributions")
    lines = _line_numbers(text)
    dimensions = []
    for key, spec in data.items():
        line = lines.get(str(key))
        where = f"{path}:{line or '?'}: {key}"
        if not isinstance(key, str) or not all(part.strip() for part in key.split(".")):
            raise ConfigError(f"{where}: a setting is a name or a dotted path, e.g. training.distill_weight")
        if not isinstance(spec, dict) or not spec or set(spec) - SPACE_KEYS:
            raise ConfigError(
                f"{where}: expected {{low: L, high: H}} (with step or log: true) or {{choices: [...]}}"
                + (f"; unknown key(s): {', '.join(sorted(set(spec) - SPACE_KEYS))}" if isinstance(spec, dict) else "")
            )
        if "choices" in spec:
            choices = spec["choices"]
            if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where}: choices is a non-empty list, alone")
            if len({json.dumps(c) for c in choices}) < len(choices):
                raise ConfigError(f"{where}: a choice is given twice")
            dimensions.append(Dimension(key, choices=tuple(choices), line=line))
            continue
        low, high, step = (_number(spec.get(k)) for k in ("low", "high", "step"))
        log_scale = spec.get("log", False)
        numbers = [v for v in (low, high, step) if v is not None]
        if low is None or high is None or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in numbers):
            raise ConfigError(f"{where}: low and high are numbers (step too, if given)")
        if not all(math.isfinite(v) for v in numbers):
            raise ConfigError(f"{where}: not a finite number")
        if low > high:
            raise ConfigError(f"{where}: low {low} is above high {high}")
        if not isinstance(log_scale, bool) or (log_scale and (low <= 0 or step is not None)):
            raise ConfigError(f"{where}: log: true needs low > 0 and no step")
        if step is not None and step <= 0:
            raise ConfigError(f"{where}: step must be > 0")
        dimensions.append(Dimension(key, low=low, high=high, step=step, log=log_scale, line=line))
    return dimensions


def with_settings(base: dict, values: dict) -> dict:
    """``base`` (a configuration as a nested dict) with each dotted setting of ``values`` set in place:
    the rest of a mapping stays (``training.batch_size.asc`` keeps the other tasks' sizes), and one task's
    value of a setting given for all tasks at once (``training.distill_weight.sed`` over a number) keeps
    that number for the other tasks."""
    out = copy.deepcopy(base)
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = out
        for index, part in enumerate(parents):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                if index == len(parents) - 1 and out.get("tasks"):  # a per-task value over an all-tasks one
                    child = node[part] = {task: child for task in out["tasks"]}
                else:
                    raise ConfigError(f"{path}: {'.'.join(parents[: index + 1])} is a value, not a section")
            node = child
        node[leaf] = value
    return out


def check_space(base: dict, dimensions: list[Dimension], space_path: str | Path) -> None:
    """Each setting's values (both ends and one step, every choice) build a run configuration with
    ``base``: a ConfigError naming the space file, its line and the setting before any trial trains."""
    for dimension in dimensions:
        for value in dimension.values_to_check():
            try:
                run_config.build(with_settings(base, {dimension.path: value}))
            except ConfigError as exc:
                raise ConfigError(
                    f"{space_path}:{dimension.line or '?'}: {dimension.path} = {value!r}: {exc}"
                ) from None


def minimised(objective: str) -> bool:
    """Whether a smaller figure is better: ``ar``, and metrics named ``*error_rate`` or ``*loss``."""
    metric = objective.partition(":")[2]
    return objective == "ar" or metric.endswith("error_rate") or metric.endswith("loss")


def objective_value(metrics: dict, objective: str, references: dict | None = None) -> float:
    """The figure a trial is ranked by (module docstring); KeyError naming a missing task or metric."""
    if objective == "mean":
        values = [
            float(entry["headline"]["value"])
            for entry in metrics["tasks"].values()
            if isinstance(entry, dict) and entry.get("headline") and entry["headline"].get("value") is not None
        ]
        if not values:
            raise KeyError("no task with a headline figure")
        return sum(values) / len(values)
    if objective == "ar":
        drops = []
        for task, reference in (references or {}).items():
            ours = float(task_entry(metrics, task)["headline"]["value"])
            theirs = float(task_entry(reference, task)["headline"]["value"])
            drops.append(100.0 * (theirs - ours) / theirs if theirs else 0.0)
        if not drops:
            raise KeyError("--objective ar needs a reference run for each task (--reference TASK=RUN)")
        return max(drops)
    task, _, metric = objective.partition(":")
    entry = task_entry(metrics, task)
    if metric and metric not in entry["metrics"]:
        known = ", ".join(k for k, v in entry["metrics"].items() if isinstance(v, (int, float)))
        raise KeyError(f"{task} has no metric {metric!r} (its metrics: {known})")
    value = entry["metrics"][metric] if metric else entry["headline"]["value"]
    if value is None:
        raise KeyError(f"{objective} is empty in this run")
    return float(value)


def reference_metrics(references: dict[str, str]) -> dict:
    """{task: metrics dict} of reference run folders ({task: folder}); DataError for a folder without
    metrics.json or without that task's headline figure."""
    out = {}
    for task, folder in references.items():
        path = Path(folder) / METRICS
        if not path.is_file():
            raise DataError(f"{folder}: no {METRICS} (a finished run of {task} is the reference)")
        metrics = json.loads(path.read_text())
        try:
            value = task_entry(metrics, task)["headline"]["value"]
        except (KeyError, TypeError):
            value = None
        if value is None:
            raise DataError(f"{path}: no headline figure of {task} (the reference must be a run of {task})")
        out[task] = metrics
    return out


class ObjectiveError(ConfigError):
    """A trial's metrics do not hold the objective: every trial would fail alike, so the search stops."""


@dataclasses.dataclass
class Search:
    """One study: ``base`` (a run configuration as a nested dict, tasks included, not yet built), the
    ``dimensions`` searched, the objective, where trials go (``out``/trials/<study>-NNNN) and the storage."""

    base: dict
    dimensions: list[Dimension]
    out: Path
    objective: str = "mean"
    references: dict | None = None  # {task: metrics dict of the reference run} for "ar"
    max_macs: float | None = None
    storage: str | None = None
    study_name: str | None = None
    sampler_seed: int | None = None
    train_run: Callable[[run_config.RunConfig], dict] = train
    measure: Callable[[run_config.RunConfig], float] | None = None

    @property
    def direction(self) -> str:
        return "minimize" if minimised(self.objective) else "maximize"

    @property
    def name(self) -> str:
        return self.study_name or self.out.name

    def report_name(self, name: str) -> str:
        """``trials.csv`` / ``best.yaml``, or ``<study>-trials.csv`` for a study named otherwise than its folder."""
        return name if self.name == self.out.name else f"{self.name}-{name}"

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"

    def identity(self) -> dict:
        """What a study is: reopening it with another space, objective or base is refused."""
        base = {k: v for k, v in self.base.items() if k not in ("output_dir", "cache_dir", "data_root")}
        identity = {
            "space": [d.describe() for d in self.dimensions],
            "objective": self.objective,
            "references": sorted(self.references or {}),
            "max_macs": self.max_macs,
            "base": base,
        }
        return json.loads(json.dumps(identity, sort_keys=True, default=str))  # as the storage gives it back

    def open_study(self) -> optuna.Study:
        url = self.storage_url()
        fileio.ensure_writable(self.out)  # the trials and reports go there whatever the storage
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5; the retry is what we want
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
        existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
        done = existing[self.name].n_trials if self.name in existing else 0
        # a seeded sampler would draw the same settings again in every command that adds trials
        seed = None if self.sampler_seed is None else self.sampler_seed + done
        study = optuna.create_study(
            storage=storage,
            study_name=self.name,
            direction=self.direction,
            sampler=optuna.samplers.TPESampler(seed=seed),
            load_if_exists=True,
        )
        identity = self.identity()
        if "keras_mtl" not in study.user_attrs:
            study.set_user_attr("keras_mtl", identity)
        elif study.user_attrs["keras_mtl"] != identity or study.direction.name.lower() != self.direction:
            before = study.user_attrs["keras_mtl"]
            changed = [key for key in identity if before.get(key) != identity[key]] or ["direction"]
            raise ConfigError(
                f"study {self.name} in {url} was made with another {', '.join(changed)}: give another "
                "--study-name (or --output-dir) for a new search"
            )
        return study

    def macs(self, config: run_config.RunConfig) -> float:
        if self.measure is not None:
            return self.measure(config)
        return float(train(config, dry_run=True)["profile"]["total"]["macs_per_second"])

    def __call__(self, trial: optuna.Trial) -> float:
        values = {d.path: d.suggest(trial) for d in self.dimensions}
        folder = self.out / "trials" / f"{self.name}-{trial.number:04d}"
        config = run_config.build(with_settings(self.base, {**values, "output_dir": str(folder)}))
        trial.set_user_attr("run", str(folder))
        if self.max_macs is not None:
            macs = self.macs(config)
            trial.set_user_attr("macs_per_second", macs)
            if macs > self.max_macs:
                log.info(
                    "trial %d: %.2fM MACs/s is above --max-macs %.2fM: pruned",
                    trial.number,
                    macs / 1e6,
                    self.max_macs / 1e6,
                )
                raise optuna.TrialPruned(f"{macs:.0f} MACs/s > {self.max_macs:.0f}")
        log.info("trial %d: %s", trial.number, ", ".join(f"{k} = {v}" for k, v in values.items()))
        metrics = self.train_run(config)  # a folder holding a run is refused: nothing is overwritten
        figures = {
            name: entry["headline"]["value"]
            for name, entry in metrics["tasks"].items()
            if isinstance(entry, dict) and entry.get("headline")
        }
        trial.set_user_attr("figures", figures)
        try:
            value = objective_value(metrics, self.objective, self.references)
        except KeyError as exc:
            raise ObjectiveError(f"--objective {self.objective}: {exc.args[0] if exc.args else exc}") from None
        log.info("trial %d: %s = %.4f (run %s)", trial.number, self.objective, value, folder)
        return value


def write_report(study: optuna.Study, search: Search) -> dict:
    """``trials.csv`` (every trial: number, state, value, settings, run folder, MACs, each task's figure as
    ``figure:TASK``) and, once a trial has finished, ``best.yaml`` (the best trial's settings as a
    ``--config`` YAML) in ``search.out``; ``<study>-trials.csv`` and ``<study>-best.yaml`` for a study named
    otherwise than its folder. Returns {"trials", "complete", "best"}."""
    rows = []
    by_path = {d.path: d for d in search.dimensions}
    for trial in study.trials:
        row = {"number": trial.number, "state": trial.state.name, "value": trial.value}
        for path, dimension in by_path.items():
            if path in trial.params:
                row[path] = (
                    json.dumps(dimension.decode(trial.params[path])) if dimension.choices else trial.params[path]
                )
        row["run"] = trial.user_attrs.get("run")
        row["macs_per_second"] = trial.user_attrs.get("macs_per_second")
        for task, value in (trial.user_attrs.get("figures") or {}).items():
            row[f"figure:{task}"] = value
        rows.append(row)
    fileio.write_rows(search.out / search.report_name("trials.csv"), rows)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = None
    if complete:
        best = study.best_trial
        settings = {path: by_path[path].decode(value) for path, value in best.params.items() if path in by_path}
        header = (
            f"# best of {len(complete)} finished trials of study {study.study_name}: trial {best.number}, "
            f"{search.objective} = {best.value:.4f}, run {best.user_attrs.get('run')}\n"
            "# the searched settings only: train with the study's other options too (its run's config.yaml has all)\n"
        )
        text = header + yaml.safe_dump(with_settings({}, settings), sort_keys=False)
        fileio.write_text(search.out / search.report_name("best.yaml"), text)
    return {"trials": len(study.trials), "complete": len(complete), "best": best}


def run_search(search: Search, trials: int | None, timeout: float | None = None) -> dict:
    """Runs ``trials`` more trials (and/or until ``timeout`` seconds) of the study, writing the report after
    each. A trial whose sampled settings do not fit (ConfigError) fails and the search goes on; the same
    failure ``FAILURES_TO_STOP`` times in a row, a data error or an objective the metrics do not hold
    stops it with that error. Returns write_report's dict."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the trials and their failures are logged here
    study = search.open_study()
    if study.trials:
        log.info("study %s: %d trials before, continuing", study.study_name, len(study.trials))
    failures: list[str] = []
    stopped: list[Exception] = []

    def objective(trial):
        try:
            return search(trial)
        except (ObjectiveError, DataError) as exc:
            stopped.append(exc)
            trial.study.stop()
            raise
        except ConfigError as exc:
            failures.append(str(exc))
            if len(failures) >= FAILURES_TO_STOP and len(set(failures[-FAILURES_TO_STOP:])) == 1:
                stopped.append(exc)
                trial.study.stop()
            raise

    def report(study, trial):
        if trial.state == optuna.trial.TrialState.COMPLETE:
            failures.clear()
        elif trial.state == optuna.trial.TrialState.FAIL and failures:
            log.warning("trial %d failed: %s", trial.number, failures[-1])
        result = write_report(study, search)
        if result["best"] is not None:
            log.info("best so far: trial %d, %s = %.4f", result["best"].number, search.objective, result["best"].value)

    study.optimize(
        objective,
        n_trials=trials,
        timeout=timeout,
        catch=(ConfigError, DataError),
        callbacks=[report],
        show_progress_bar=False,
    )
    result = write_report(study, search)
    if stopped:
        raise stopped[-1]
    return result
