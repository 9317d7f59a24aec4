"""keras-mtl tune: a YAML search space sampled by Optuna, one run folder per trial, the study in SQLite
(resumable), trials over a MACs budget pruned, the best settings as a --config YAML."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess

import optuna
import pytest
import yaml

from keras_mtl.core.errors import ConfigError
from keras_mtl.runs import config as run_config
from keras_mtl.studies import tune
from tests.conftest import keras_mtl_command, run_cli

SPACE = """\
training.learning_rate: {low: 0.0001, high: 0.01, log: true}
training.epochs: {low: 2, high: 8, step: 2}
model.channels: {choices: [[8, 16], [16, 32]]}
"""


def _space(tmp_path, text=SPACE):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_a_space_file_gives_optuna_distributions_and_nested_settings(tmp_path):
    dimensions = tune.load_space(_space(tmp_path))
    assert [d.path for d in dimensions] == ["training.learning_rate", "training.epochs", "model.channels"]
    trial = optuna.trial.FixedTrial(
        {"training.learning_rate": 0.003, "training.epochs": 6, "model.channels": json.dumps([16, 32])}
    )
    values = {d.path: d.suggest(trial) for d in dimensions}
    assert values == {"training.learning_rate": 0.003, "training.epochs": 6, "model.channels": [16, 32]}
    assert tune.with_settings({}, values) == {
        "training": {"learning_rate": 0.003, "epochs": 6},
        "model": {"channels": [16, 32]},
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):  # sampled values stay in their ranges and types
        trial = study.ask()
        epochs = dimensions[1].suggest(trial)
        assert isinstance(epochs, int) and epochs in (2, 4, 6, 8)
        assert 1e-4 <= dimensions[0].suggest(trial) <= 1e-2
        assert dimensions[2].suggest(trial) in ([8, 16], [16, 32])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("training.learning_rate: {low: 0.01, high: 0.001}\n", ":1: training.learning_rate: low 0.01 is above high"),
        ("model.gru_units: {low: 8, high: 16}\nmodel.channels: {choose: [1]}\n", ":2: model.channels: expected"),
        ("training.learning_rate: {low: 0, high: 0.1, log: true}\n", "log: true needs low > 0"),
        ("model..channels: {low: 1, high: 3}\n", "a setting is a name or a dotted path"),
        ("model.gru_units: {choices: [8, 8]}\n", "a choice is given twice"),
        ("model.channels: {choices: []}\n", "choices is a non-empty list"),
        ("training: [1, 2\n", "not YAML"),
    ],
)
def test_a_bad_space_file_is_one_error_line_naming_the_file_and_line(tmp_path, text, expected):
    path = _space(tmp_path, text)
    result = run_cli(["tune", path, "--preset", "tiny", "--task-set", "asc"])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0] and expected in lines[0]


def test_a_setting_the_configuration_does_not_have_is_refused_before_any_trial(tmp_path):
    path = _space(tmp_path, "model.no_such_setting: {low: 1, high: 2}\n")
    out = tmp_path / "study"
    result = run_cli(["tune", path, "--preset", "tiny", "--task-set", "asc", "--output-dir", out])
    assert result.returncode == 2 and f"{path}:1: model.no_such_setting" in result.stderr
    assert not out.exists()
    result = run_cli(["tune", _space(tmp_path), "--preset", "tiny", "--task-set", "asc", "--objective", "ar"])
    assert result.returncode == 2 and "--reference" in result.stderr


def _metrics(**figures) -> dict:
    return {
        "tasks": {
            task: {"name": task, "headline": {"name": "accuracy", "value": value}, "metrics": {"psds1": value / 2}}
            for task, value in figures.items()
        }
    }


def test_the_objective_is_the_mean_a_task_s_figure_or_ar_against_references():
    metrics = _metrics(asc=0.70, sed=0.40)
    assert tune.objective_value(metrics, "mean") == pytest.approx(0.55)
    assert tune.objective_value(metrics, "sed") == pytest.approx(0.40)
    assert tune.objective_value(metrics, "sed:psds1") == pytest.approx(0.20)
    references = {"asc": _metrics(asc=0.75), "sed": _metrics(sed=0.40)}
    assert tune.objective_value(metrics, "ar", references) == pytest.approx(100 * 0.05 / 0.75)
    with pytest.raises(KeyError):
        tune.objective_value(metrics, "scr")


def test_a_search_prunes_over_budget_resumes_from_its_database_and_writes_the_best_settings(tmp_path):
    """Trials through a stand-in for training (its figure: a function of the trial's settings) and for
    the MACs count: the budget prunes before training, a second call adds trials to the same study."""
    trained = []

    def fake_train(config: run_config.RunConfig) -> dict:
        trained.append((config.output_dir, config.training.learning_rate))
        lr, channels = config.training.learning_rate, config.model.channels
        return _metrics(asc=1.0 - abs(lr - 0.001) * 50 + (0.01 if channels[0] == 8 else 0.0))

    base = run_config.merge(run_config.load_preset("tiny"), {"tasks": ["asc"]})
    search = tune.Search(
        base=base,
        dimensions=tune.load_space(_space(tmp_path)),
        out=tmp_path / "study",
        sampler_seed=0,
        train_run=fake_train,
        max_macs=1000.0,
        measure=lambda config: 2000.0 if config.training.epochs == 8 else 500.0,
    )
    first = tune.run_search(search, trials=6)
    assert first["trials"] == 6
    second = tune.run_search(search, trials=4)
    assert second["trials"] == 10  # the same study in study.db, continued
    assert len({lr for _, lr in trained}) == len(trained)  # a seeded sampler does not repeat the first call's draws
    rows = list(csv.DictReader((tmp_path / "study" / "trials.csv").open()))
    assert len(rows) == 10
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    assert all(r["training.epochs"] == "8" for r in pruned)
    assert len(trained) == 10 - len(pruned)  # a pruned trial never trained
    assert all(f"{tmp_path / 'study' / 'trials' / 'study'}-" in str(folder) for folder, _ in trained)
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best = max(complete, key=lambda r: float(r["value"]))
    settings = yaml.safe_load((tmp_path / "study" / "best.yaml").read_text())
    assert settings["training"]["learning_rate"] == pytest.approx(float(best["training.learning_rate"]))
    assert float(best["figure:asc"]) == pytest.approx(float(best["value"]))
    assert isinstance(settings["model"]["channels"], list)
    assert f"trial {best['number']}" in (tmp_path / "study" / "best.yaml").read_text().splitlines()[0]
    # best.yaml is a --config YAML: it builds a run configuration over the base
    run_config.build(run_config.merge(base, settings))


def test_a_study_asked_for_the_other_direction_is_refused(tmp_path):
    base = run_config.merge(run_config.load_preset("tiny"), {"tasks": ["asc"]})
    dims = tune.load_space(_space(tmp_path))
    tune.Search(base=base, dimensions=dims, out=tmp_path / "s").open_study()
    with pytest.raises(ConfigError, match="another --study-name"):
        tune.Search(base=base, dimensions=dims, out=tmp_path / "s", objective="ar").open_study()


@pytest.mark.slow
def test_tune_trains_a_run_folder_per_trial_end_to_end(tmp_path, tiny_env):
    """The README's command in its smallest form: two one-epoch tiny trials."""
    space = _space(tmp_path, "training.learning_rate: {low: 0.001, high: 0.01, log: true}\n")
    out = tmp_path / "study"
    args = ["tune", str(space), "--preset", "tiny", "--task-set", "asc", "--epochs", "1", "--trials", "2"]
    result = subprocess.run(
        [*keras_mtl_command(), *args, "--output-dir", str(out), "--max-macs", "1e9"],
        capture_output=True,
        text=True,
        env=tiny_env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 of 2 trials finished" in result.stdout
    for number in ("0000", "0001"):
        metrics = json.loads((out / "trials" / f"study-{number}" / "metrics.json").read_text())
        assert "asc" in metrics["tasks"]
    assert (out / "study.db").is_file() and (out / "best.yaml").is_file()
    # AR against a reference run, under a MACs budget, in a storage named by URL with a study name
    reference = out / "trials" / "study-0000"
    args = ["tune", str(space), "--preset", "tiny", "--task-set", "asc", "--epochs", "1", "--trials", "1"]
    args += ["--objective", "ar", "--reference", f"asc={reference}", "--max-macs", "1e9", "--study-name", "ar"]
    args += ["--storage", f"sqlite:///{tmp_path / 'shared.db'}", "--output-dir", str(out)]
    result = subprocess.run([*keras_mtl_command(), *args], capture_output=True, text=True, env=tiny_env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((out / "ar-trials.csv").open()))
    assert len(rows) == 1 and rows[0]["state"] == "COMPLETE" and (out / "trials" / "ar-0000" / "metrics.json").is_file()
    assert len(list(csv.DictReader((out / "trials.csv").open()))) == 2 and (out / "ar-best.yaml").is_file()
    assert (tmp_path / "shared.db").is_file()


def test_choices_of_any_type_come_back_as_given_and_per_task_settings_keep_the_other_tasks():
    dimension = tune.Dimension("model.x", choices=(1, True, 1.0, [8, 16], "a"))
    assert [dimension.decode(e) for e in dimension.encoded_choices] == [1, True, 1.0, [8, 16], "a"]
    assert [type(dimension.decode(e)) for e in dimension.encoded_choices] == [int, bool, float, list, str]
    base = {"tasks": ["asc", "sed"], "training": {"distill_weight": 1.5, "batch_size": {"asc": 32, "sed": 16}}}
    out = tune.with_settings(
        base, {"training.distill_weight.sed": 0.5, "training.batch_size.asc": 8, "weighting": "dwa"}
    )
    assert out["training"] == {"distill_weight": {"asc": 1.5, "sed": 0.5}, "batch_size": {"asc": 8, "sed": 16}}
    assert out["weighting"] == "dwa" and base["training"]["distill_weight"] == 1.5  # base untouched


def _search(tmp_path, train_run, **options):
    base = run_config.merge(run_config.load_preset("tiny"), {"tasks": ["asc"]})
    space = _space(tmp_path, "training.learning_rate: {low: 0.001, high: 0.01}\n")
    return tune.Search(
        base=base, dimensions=tune.load_space(space), out=tmp_path / "study", train_run=train_run, **options
    )


def test_a_study_reopened_with_another_space_or_objective_is_refused(tmp_path):
    search = _search(tmp_path, lambda config: _metrics(asc=0.5))
    tune.run_search(search, trials=1)
    with pytest.raises(ConfigError, match="another objective"):
        tune.run_search(dataclasses.replace(search, objective="asc:psds1"), trials=1)
    with pytest.raises(ConfigError, match="another space"):
        other = tune.load_space(_space(tmp_path, "training.learning_rate: {low: 0.001, high: 0.1}\n"))
        tune.run_search(dataclasses.replace(search, dimensions=other), trials=1)
    assert tune.run_search(search, trials=1)["complete"] == 2


def test_an_objective_the_metrics_lack_or_a_repeated_failure_stops_the_search_with_its_error(tmp_path):
    search = _search(tmp_path, lambda config: _metrics(asc=0.5), objective="asc:no_such_metric")
    with pytest.raises(tune.ObjectiveError, match="no metric 'no_such_metric'"):
        tune.run_search(search, trials=5)
    calls = []

    def refusing(config):
        calls.append(config)
        raise ConfigError("data/asc: no such folder")

    with pytest.raises(ConfigError, match="no such folder"):
        tune.run_search(_search(tmp_path / "b", refusing), trials=10)
    assert len(calls) == tune.FAILURES_TO_STOP
