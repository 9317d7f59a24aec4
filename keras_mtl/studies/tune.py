"""Search over a run's settings with Optuna (Akiba et al. 2019, TPE sampler): one ordinary run folder per
trial, the study in a database so that an interrupted search resumes and several machines share one.

The search space is a YAML file whose keys are dotted settings of the run configuration (as a
``--config`` YAML nests them) and whose values are distributions::

    training.distill_weight: {low: 0.1, high: 4.0, log: true}   # a float (log-uniform)
    training.distill_temperature: {low: 1.0, high: 8.0}         # a float
    model.gru_units: {low: 32, high: 96, step: 16}               # an int: low and high are ints
    model.channels: {choices: [[8, 16, 32, 64, 64], [8, 16, 32, 48, 64]]}   # one of these values

The objective is read from each trial's ``metrics.json``: ``mean`` (the mean of the tasks' headline
figures: accuracy, event-based F1, frame ROC-AUC, ...; maximised), ``TASK`` or ``TASK:METRIC`` (that figure,
e.g. ``sed:psds1``; maximised), or ``ar`` (AR: the largest relative drop in percent of a task's headline
figure against a reference run of that task, ``references`` {task: run folder}; minimised). A trial
whose network exceeds ``max_macs`` (MACs per second of audio) is pruned before it trains.

Storage: ``sqlite:///<out>/study.db`` by default (one machine); any SQLAlchemy URL
(``postgresql://user@host/db``, ``mysql+pymysql://...``) for one study shared by several machines, each
running the same command. A trial interrupted with its process (no heartbeat for two minutes) is failed
and retried once with the same settings.
"""

from __future__ import annotations

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
from keras_mtl.studies.runner import train_unfinished
from keras_mtl.training.fit import train

log = logging.getLogger(__name__)

SPACE_KEYS = {"low", "high", "step", "log", "choices"}
HEARTBEAT_SECONDS = 60
GRACE_SECONDS = 120


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched setting: ``path`` (dotted, e.g. ``training.distill_weight``) and its distribution."""

    path: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple | None = None

    def suggest(self, trial: optuna.Trial):
        """The trial's value of this setting (Optuna's suggest_categorical / suggest_int / suggest_float)."""
        if self.choices is not None:
            # Optuna stores scalars only: other values (lists) go through their JSON text
            encoded = [
                c if c is None or isinstance(c, (bool, int, float, str)) else json.dumps(c) for c in self.choices
            ]
            picked = trial.suggest_categorical(self.path, encoded)
            return self.choices[encoded.index(picked)]
        if isinstance(self.low, int) and isinstance(self.high, int) and not isinstance(self.step, float):
            return trial.suggest_int(self.path, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.path, float(self.low), float(self.high), step=self.step, log=self.log)

    def values_to_check(self) -> list:
        return list(self.choices) if self.choices is not None else [self.low, self.high]


def _line_numbers(text: str) -> dict:
    """{top-level key: its line (from 1)} of a YAML mapping."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {key.value: key.start_mark.line + 1 for key, _ in node.value}


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
        raise ConfigError(f"{path}: the search space is a mapping of dotted settings to distributions")
    lines = _line_numbers(text)
    dimensions = []
    for key, spec in data.items():
        where = f"{path}:{lines.get(str(key), '?')}: {key}"
        if not isinstance(key, str) or "." not in key or not all(key.split(".")):
            raise ConfigError(f"{where}: a setting is a dotted path, e.g. training.distill_weight")
        if not isinstance(spec, dict) or not spec or set(spec) - SPACE_KEYS:
            raise ConfigError(
                f"{where}: expected {{low: L, high: H}} (with step or log: true) or {{choices: [...]}}"
                + (f"; unknown key(s): {', '.join(sorted(set(spec) - SPACE_KEYS))}" if isinstance(spec, dict) else "")
            )
        if "choices" in spec:
            choices = spec["choices"]
            if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where}: choices is a non-empty list, alone")
            dimensions.append(Dimension(key, choices=tuple(choices)))
            continue
        low, high, step, log_scale = spec.get("low"), spec.get("high"), spec.get("step"), spec.get("log", False)
        numbers = [v for v in (low, high, step) if v is not None]
        if low is None or high is None or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in numbers):
            raise ConfigError(f"{where}: low and high are numbers (step too, if given)")
        if not math.isfinite(low) or not math.isfinite(high) or low > high:
            raise ConfigError(f"{where}: low {low} is above high {high}" if low > high else f"{where}: not finite")
        if not isinstance(log_scale, bool) or (log_scale and (low <= 0 or step is not None)):
            raise ConfigError(f"{where}: log: true needs low > 0 and no step")
        if step is not None and step <= 0:
            raise ConfigError(f"{where}: step must be > 0")
        dimensions.append(Dimension(key, low=low, high=high, step=step, log=log_scale))
    return dimensions


def nested(values: dict) -> dict:
    """{"training.distill_weight": 1.0} -> {"training": {"distill_weight": 1.0}}."""
    out: dict = {}
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def check_space(base: dict, dimensions: list[Dimension], space_path: str | Path) -> None:
    """Each setting's values (both ends, every choice) build a run configuration with ``base``: a
    ConfigError naming the space file and the setting before any trial trains."""
    for dimension in dimensions:
        for value in dimension.values_to_check():
            try:
                run_config.build(run_config.merge(base, nested({dimension.path: value})))
            except ConfigError as exc:
                raise ConfigError(f"{space_path}: {dimension.path} = {value!r}: {exc}") from None


def objective_value(metrics: dict, objective: str, references: dict | None = None) -> float:
    """The figure a trial is ranked by (module docstring); KeyError naming a missing task or metric."""
    if objective == "mean":
        values = [
            float(entry["headline"]["value"])
            for entry in metrics["tasks"].values()
            if isinstance(entry, dict) and entry.get("headline")
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
    value = entry["metrics"][metric] if metric else entry["headline"]["value"]
    if value is None:
        raise KeyError(f"{objective} is empty in this run")
    return float(value)


@dataclasses.dataclass
class Search:
    """One study: ``base`` (a run configuration as a dict, tasks included), the ``dimensions`` searched,
    the objective, where trials go (``out``/trials/NNNN) and the storage URL."""

    base: dict
    dimensions: list[Dimension]
    out: Path
    objective: str = "mean"
    references: dict | None = None  # {task: metrics dict of the reference run} for "ar"
    max_macs: float | None = None
    storage: str | None = None
    study_name: str | None = None
    sampler_seed: int | None = None
    train_run: Callable[[run_config.RunConfig], dict] = train_unfinished
    measure: Callable[[run_config.RunConfig], float] | None = None

    @property
    def direction(self) -> str:
        return "minimize" if self.objective == "ar" else "maximize"

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"

    def open_study(self) -> optuna.Study:
        url = self.storage_url()
        fileio.ensure_writable(self.out)
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5; the retry is what we want
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
        study = optuna.create_study(
            storage=storage,
            study_name=self.study_name or self.out.name,
            direction=self.direction,
            sampler=optuna.samplers.TPESampler(seed=self.sampler_seed),
            load_if_exists=True,
        )
        if study.direction.name.lower() != self.direction:
            raise ConfigError(
                f"study {study.study_name} in {url} is to {study.direction.name.lower()}; "
                f"--objective {self.objective} is to {self.direction} (another --study-name)"
            )
        return study

    def macs(self, config: run_config.RunConfig) -> float:
        if self.measure is not None:
            return self.measure(config)
        return float(train(config, dry_run=True)["profile"]["total"]["macs_per_second"])

    def __call__(self, trial: optuna.Trial) -> float:
        values = {d.path: d.suggest(trial) for d in self.dimensions}
        folder = self.out / "trials" / f"{trial.number:04d}"
        config = run_config.build(run_config.merge(self.base, {**nested(values), "output_dir": str(folder)}))
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
        metrics = self.train_run(config)
        figures = {
            name: entry["headline"]["value"]
            for name, entry in metrics["tasks"].items()
            if isinstance(entry, dict) and entry.get("headline")
        }
        trial.set_user_attr("figures", figures)
        value = objective_value(metrics, self.objective, self.references)
        log.info("trial %d: %s = %.4f", trial.number, self.objective, value)
        return value


def write_report(study: optuna.Study, search: Search) -> dict:
    """``trials.csv`` (every trial: number, state, value, settings, run folder, figures) and, once a trial
    has finished, ``best.yaml`` (the best trial's settings as a ``--config`` YAML) in ``search.out``.
    Returns {"trials", "complete", "best"}."""
    rows = []
    for trial in study.trials:
        row = {"number": trial.number, "state": trial.state.name, "value": trial.value}
        for dimension in search.dimensions:
            if dimension.path in trial.params:
                row[dimension.path] = trial.params[dimension.path]
        row["run"] = trial.user_attrs.get("run")
        row["macs_per_second"] = trial.user_attrs.get("macs_per_second")
        for task, value in (trial.user_attrs.get("figures") or {}).items():
            row[task] = value
        rows.append(row)
    fileio.write_rows(search.out / "trials.csv", rows)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = None
    if complete:
        best = study.best_trial
        settings = {d.path: _decoded(d, best.params[d.path]) for d in search.dimensions if d.path in best.params}
        header = (
            f"# best of {len(complete)} finished trials of study {study.study_name}: trial {best.number}, "
            f"{search.objective} = {best.value:.4f}, run {best.user_attrs.get('run')}\n"
        )
        fileio.write_text(search.out / "best.yaml", header + yaml.safe_dump(nested(settings), sort_keys=False))
    return {"trials": len(study.trials), "complete": len(complete), "best": best}


def _decoded(dimension: Dimension, stored):
    if dimension.choices is None:
        return stored
    for choice in dimension.choices:
        if choice == stored or (not isinstance(choice, (bool, int, float, str)) and json.dumps(choice) == stored):
            return choice
    return stored


def reference_metrics(references: dict[str, str]) -> dict:
    """{task: metrics dict} of reference run folders ({task: folder}); DataError for a folder without
    metrics.json."""
    out = {}
    for task, folder in references.items():
        path = Path(folder) / METRICS
        if not path.is_file():
            raise DataError(f"{folder}: no {METRICS} (a finished run of {task} is the reference)")
        out[task] = json.loads(path.read_text())
    return out


def run_search(search: Search, trials: int | None, timeout: float | None = None) -> dict:
    """Runs ``trials`` more trials (and/or until ``timeout`` seconds) of the study, writing the report after
    each; a trial that fails (its error logged) does not stop the search. Returns write_report's dict."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the trials are logged here, with their run folders
    study = search.open_study()
    done_before = len(study.trials)
    if done_before:
        log.info("study %s: %d trials before, continuing", study.study_name, done_before)

    def report(study, trial):
        result = write_report(study, search)
        if trial.state != optuna.trial.TrialState.COMPLETE:
            log.info("trial %d: %s", trial.number, trial.state.name.lower())
        if result["best"] is not None:
            log.info("best so far: trial %d, %s = %.4f", result["best"].number, search.objective, result["best"].value)

    study.optimize(
        search,
        n_trials=trials,
        timeout=timeout,
        catch=(ConfigError, DataError, KeyError, ValueError, RuntimeError),
        callbacks=[report],
        show_progress_bar=False,
    )
    return write_report(study, search)
