"""Run configuration: dataclasses filled from a preset YAML, an optional user YAML and the CLI."""

from __future__ import annotations

import dataclasses
import os
from importlib import resources
from pathlib import Path

import yaml

from keras_mtl.data.synth.speech_synth import SpeechSynthConfig
from keras_mtl.data.synth.synthetic import SyntheticConfig
from keras_mtl.core.errors import ConfigError
from keras_mtl.features.augment import AugmentConfig
from keras_mtl.features.logmel import FrontEndConfig
from keras_mtl.models import normalization
from keras_mtl.models.mtl import ModelConfig


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings. ``batch_size`` maps task -> batch size; ``steps_per_epoch``
    defaults to the number of batches in the largest task's training set."""

    epochs: int = 12
    batch_size: dict = dataclasses.field(default_factory=lambda: {"asc": 64, "sed": 16})
    default_batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1
    steps_per_epoch: int | None = None
    augment: bool = True
    # mean teacher for frame tasks with weakly labelled / unlabelled clips: auto (when the data
    # exist), on (error when they do not), off
    mean_teacher: str = "auto"
    # items per batch from the weak and unlabelled sets (default: a quarter of the task's batch each)
    weak_batch_size: int | None = None
    unlabeled_batch_size: int | None = None
    # items per semi-supervised batch from the task's own (synthetic) strong split (default: the task's
    # batch; 0: none, e.g. to train on the strong real clips alone) and from the strong real set
    # (default: a quarter, when the set exists)
    strong_batch_size: int | None = None
    strong_real_batch_size: int | None = None
    consistency_weight: float = 2.0  # mean-teacher consistency weight after the ramp-up
    rampup_fraction: float = 0.25  # sigmoid ramp-up of the consistency over this share of the steps
    ema_decay: float = 0.999  # the teacher's largest EMA decay
    cross_weight: float = 1.0  # cross-task distillation weight (cross-soft, cross-hard)
    # GradNorm keeps every task's weight at least this share of an equal one (1/K); 0: the paper's method.
    # 0.25 (issue 28): GradNorm otherwise drove a clip task to 0.1-5% of the loss on two corpora
    gradnorm_min_share: float = 0.25
    # --batch-norm joint: the gradient of each task's loss through the pooled statistics: "own" (through its
    # own batch's share only: per-task gradients cost one pass each) or "exact" (through every task's share)
    joint_bn_gradient: str = "own"
    # --batch-norm calibrated: the share of the epochs, at the end, trained with every batch normalisation
    # frozen at statistics re-estimated over the mixture of the tasks' training batches, at this learning rate
    # (a share of learning_rate, cosine-decayed to 0 again)
    bn_calibration: float = 0.25
    bn_calibration_learning_rate: float = 1.0 / 3.0
    # the calibration stage's batches augmented as the earlier stages' (false: clean, as its frozen statistics
    # were estimated and as the deployed network hears them; issue 28: speech set AR 13.2% -> 5.4%, asc,sed
    # PSDS1 up, 3 seeds)
    bn_calibration_augment: bool = False
    # the run's network is the mean of the calibration stage's end-of-epoch weights (stochastic weight
    # averaging; its batch normalisation is frozen, so the statistics fit the mean). Off: it did not pay on the
    # speech set (issue 28, docs/method.md)
    bn_calibration_average: bool = False
    # which layers the calibration stage trains: "all", or "task": only layers on one task's path (its own
    # blocks and head), the layers two or more tasks share kept as the re-estimation left them (issue 28,
    # docs/method.md: on the speech set the clip tasks lose accuracy when the shared encoder trains on)
    bn_calibration_layers: str = "all"
    kl_weight: float = 1.0  # mtl-vae: weight of the KL term after the warm-up
    kl_warmup_fraction: float = 0.0  # mtl-vae: the KL weight rises linearly from 0 over this share of the steps
    # knowledge distillation (keras_mtl.training.distill): finished runs whose tasks cover some of this run's
    # (--teacher, repeatable), or a folder of precomputed teacher outputs (--teacher-outputs); per task
    # (a number for all, or {task: value}): the weight of the distillation loss and the softmax temperature
    teachers: tuple = ()
    teacher_outputs: str | None = None
    distill_weight: float | dict = 1.0
    distill_temperature: float | dict = 2.0

    def batch_for(self, task_name: str) -> int:
        return int(self.batch_size.get(task_name, self.default_batch_size))

    def distillation_for(self, task_name: str) -> tuple[float, float]:
        """(weight, temperature) of a task's distillation loss."""

        def pick(setting, default: float) -> float:
            return float(setting.get(task_name, default) if isinstance(setting, dict) else setting)

        return pick(self.distill_weight, 1.0), pick(self.distill_temperature, 2.0)

    def __post_init__(self):
        if self.epochs < 1:
            raise ConfigError("training.epochs must be at least 1")
        if any(int(b) < 1 for b in self.batch_size.values()) or self.default_batch_size < 1:
            raise ConfigError("batch sizes must be at least 1")
        if self.mean_teacher not in ("auto", "on", "off"):
            raise ConfigError(f"training.mean_teacher must be auto, on or off, not {self.mean_teacher!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError("training.ema_decay must be in [0, 1)")
        if not self.learning_rate > 0:
            raise ConfigError(f"training.learning_rate must be positive, not {self.learning_rate}")
        if self.weight_decay < 0 or not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError("training.weight_decay must be >= 0 and training.warmup_fraction in [0, 1)")
        if self.kl_weight < 0 or not 0.0 <= self.kl_warmup_fraction <= 1.0:
            raise ConfigError("training.kl_weight must be >= 0 and training.kl_warmup_fraction in [0, 1]")
        if not 0.0 <= self.gradnorm_min_share <= 1.0:
            raise ConfigError("training.gradnorm_min_share must be in [0, 1]")
        if not (0.0 < self.bn_calibration < 1.0 and self.bn_calibration_learning_rate > 0):
            raise ConfigError("training.bn_calibration must be in (0, 1) and bn_calibration_learning_rate > 0")
        if self.bn_calibration_layers not in ("all", "task"):
            raise ConfigError(f"training.bn_calibration_layers must be all or task, not {self.bn_calibration_layers!r}")
        if self.joint_bn_gradient not in ("own", "exact"):
            raise ConfigError(f"training.joint_bn_gradient must be own or exact, not {self.joint_bn_gradient!r}")
        if self.steps_per_epoch is not None and int(self.steps_per_epoch) < 1:
            raise ConfigError("training.steps_per_epoch must be at least 1")
        object.__setattr__(self, "teachers", tuple(str(t) for t in self.teachers or ()))
        for name, setting in (
            ("distill_weight", self.distill_weight),
            ("distill_temperature", self.distill_temperature),
        ):
            values = setting.values() if isinstance(setting, dict) else [setting]
            if any(not isinstance(v, (int, float)) or v < 0 for v in values):
                raise ConfigError(f"training.{name} must be a number >= 0 or {{task: number}}, not {setting!r}")
        temperatures = (
            self.distill_temperature.values()
            if isinstance(self.distill_temperature, dict)
            else [self.distill_temperature]
        )
        if any(t <= 0 for t in temperatures):
            raise ConfigError("training.distill_temperature must be positive")

    def semi_supervised_batches(self, task_name: str) -> tuple[int, int, int, int]:
        """(strong, weak, unlabeled, strong real) items per semi-supervised batch of a frame task."""
        batch = self.batch_for(task_name)
        quarter = max(1, batch // 4)

        def size(value, default):
            return default if value is None else int(value)

        sizes = (
            size(self.strong_batch_size, batch),
            size(self.weak_batch_size, quarter),
            size(self.unlabeled_batch_size, quarter),
            size(self.strong_real_batch_size, quarter),
        )
        if any(s < 0 for s in sizes):
            raise ConfigError("training: the strong, weak, unlabeled and strong_real batch sizes must be >= 0")
        return sizes


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """How ``scripts/export.py`` quantises the run's streaming pieces (``export --frame-step-activations``
    overrides it). ``frame_step_activations``: the frame tasks' recurrent steps in "int8" (int8 weights
    and activations) or "int16" (TFLite's 16x8 quantisation: int8 weights, int16 activations; its
    LOGISTIC/TANH use a table instead of int8's fixed-point exponential). The encoder and clip heads
    stay int8."""

    frame_step_activations: str = "int8"

    def __post_init__(self):
        if self.frame_step_activations not in ("int8", "int16"):
            raise ConfigError(
                f"export.frame_step_activations must be int8 or int16, not {self.frame_step_activations!r}"
            )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    tasks: tuple = ("asc", "sed")
    strategy: str = "soft"
    # task balancing: fixed, dwa, mfl, uncertainty, gradnorm, pcgrad, cagrad, famo (keras_mtl.training.weighting
    # and .balancing); "auto": gradnorm for two or more tasks whose losses are summed, else fixed
    weighting: str = "auto"
    order: tuple | None = None  # FreezeMTL: the order in which tasks are trained (and frozen)
    alpha: float | None = None  # loss weight of the first task; the others share 1 - alpha
    architecture: str = "mtl"  # see keras_mtl.models.architectures; "mtl" uses the model section
    architecture_options: dict | None = None  # config fields of a non-mtl architecture
    seed: int = 0
    deterministic: bool = False  # TensorFlow's deterministic op implementations (same metrics on rerun)
    distribute: str | None = None  # None, "mirrored" (local devices) or "multi-worker" (cluster from TF_CONFIG)
    preset: str = "default"
    data_root: dict | str | None = None
    output_dir: str | None = None
    cache_dir: str | None = None
    loss_weights: dict | None = None
    custom_tasks: dict | None = None  # name -> {"level", "source", "seconds", "classes"} (user-defined tasks)
    # task -> text file naming clips (paths relative to the task's data root, one a line) that are left
    # out of its training split
    exclude_train: dict | None = None
    # batch normalisation in training (keras_mtl.models.normalization.MODES): auto (calibrated for 2+ tasks
    # trained together, else per-task), calibrated (per-task, then the last epochs frozen at the mixture's
    # statistics), per-task (each batch its own), joint (statistics pooled over every task's batch), renorm
    batch_norm: str = "auto"
    frontend: FrontEndConfig = dataclasses.field(default_factory=FrontEndConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)
    speech_synthetic: SpeechSynthConfig = dataclasses.field(default_factory=SpeechSynthConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    def __post_init__(self):
        if self.distribute not in (None, "mirrored", "multi-worker"):
            raise ConfigError(f"--distribute must be mirrored or multi-worker, not {self.distribute!r}")
        if self.alpha is not None and not 0.0 < float(self.alpha) < 1.0:
            raise ConfigError(f"--alpha must be between 0 and 1 (exclusive), not {self.alpha}")
        normalization.resolve_mode(self.batch_norm, len(self.tasks))

    def task_loss_weights(self) -> dict | None:
        """The configured loss weights: ``alpha`` for the first task and (1 - alpha) / (K - 1) for
        each other one, or ``loss_weights``, or None (the strategy's default, the mean)."""
        if self.alpha is None:
            return self.loss_weights
        if self.loss_weights:
            raise ConfigError("give either --alpha or loss_weights, not both")
        if len(self.tasks) < 2:
            raise ConfigError("--alpha needs at least two tasks")
        rest = (1.0 - float(self.alpha)) / (len(self.tasks) - 1)
        return {name: (float(self.alpha) if i == 0 else rest) for i, name in enumerate(self.tasks)}

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


SECTIONS = {
    "frontend": FrontEndConfig,
    "augment": AugmentConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "synthetic": SyntheticConfig,
    "speech_synthetic": SpeechSynthConfig,
    "export": ExportConfig,
}


def preset_names() -> list[str]:
    folder = resources.files("keras_mtl.runs") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_preset(name: str) -> dict:
    """A built-in preset's settings. ``extends: OTHER`` in a preset starts it from OTHER's settings
    less OTHER's ``task_sets`` (those were measured on OTHER's encoder), merged as a user's YAML is
    (`merge`: sections key by key, lists and batch_size as a whole). Raises ConfigError for an
    unknown name or a cycle."""
    return _load_preset(name, ())


def preset_changes(name: str) -> dict:
    """What a preset's own file sets, without what it ``extends`` (the key itself dropped)."""
    data = _read_preset(name)
    data.pop("extends", None)
    return data


def _read_preset(name: str) -> dict:
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(preset_names())})")
    return yaml.safe_load((resources.files("keras_mtl.runs") / "presets" / f"{name}.yaml").read_text()) or {}


def _load_preset(name: str, seen: tuple) -> dict:
    if name in seen:
        raise ConfigError(f"preset {name!r} extends itself ({' -> '.join((*seen, name))})")
    data = _read_preset(name)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if str(parent) not in preset_names():
        raise ConfigError(f"preset {name!r} extends an unknown preset {parent!r} (known: {', '.join(preset_names())})")
    base = _load_preset(str(parent), (*seen, name))
    base.pop("task_sets", None)
    return merge(base, data)


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if (
            isinstance(value, dict)
            and isinstance(out.get(key), dict)
            and key not in ("batch_size", "loss_weights", "data_root", "custom_tasks", "architecture_options")
        ):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def for_task_set(data: dict, tasks) -> dict:
    """``data`` without its ``task_sets`` section, with that section's entry for exactly ``tasks`` (any
    order; keys like ``gc,ac,scr,vad``) merged in: settings a preset measured for one task set (a user's
    YAML over a preset: `combine_task_sets` first).

    Raises ConfigError when the section is not a mapping of mappings."""
    data = dict(data)
    sets = task_set_entries(data.pop("task_sets", None))
    settings = sets.get(frozenset(str(t) for t in tasks))
    if settings is None:
        return data
    return merge(data, settings)


def task_set_entries(sets) -> dict:
    """A ``task_sets`` section as {frozenset of task names: settings}. Raises ConfigError when it is
    not a mapping of mappings, when an entry's section (``model``, ``training``, ...) is not a mapping,
    or when two keys name the same set."""
    if not sets:
        return {}
    if not isinstance(sets, dict) or not all(isinstance(v, dict) for v in sets.values()):
        raise ConfigError("task_sets must map a task set ('gc,ac,scr,vad') to settings")
    out = {}
    for key, settings in sets.items():
        for section, value in settings.items():
            if section in SECTIONS and not isinstance(value, dict):
                raise ConfigError(f"task_sets: {key}: {section} must be a mapping of settings, not {value!r}")
        names = frozenset(name.strip() for name in str(key).split(",") if name.strip())
        if names in out:
            raise ConfigError(f"task_sets: {key!r} names the same task set as another entry")
        out[names] = settings
    return out


def combine_task_sets(preset: dict, user: dict) -> dict:
    """``preset`` with ``user``'s settings over it, as `train` resolves them for every task set: the
    result's ``task_sets`` holds, for each set either names, the preset's entry less what the user
    decides for that set (`without_keys` against the user's YAML with its own entry for the set), then
    the user's entry. Raises ConfigError for a malformed ``task_sets`` section (`task_set_entries`)."""
    preset, user = dict(preset), dict(user)
    theirs = task_set_entries(preset.pop("task_sets", None))
    mine = task_set_entries(user.pop("task_sets", None))
    combined = {}
    for names in (*theirs, *(n for n in mine if n not in theirs)):
        own = mine.get(names, {})
        entry = without_keys(theirs.get(names, {}), merge(user, own))
        combined[",".join(sorted(names))] = merge(entry, own)
    out = merge(preset, user)
    if combined:
        out["task_sets"] = combined
    return out


# the encoder's block structure: a user who sets one of these decides all of them
ENCODER_STRUCTURE = ("channels", "pools", "freq_strides", "shared_blocks", "share_groups", "tree")


def without_keys(settings: dict, user: dict) -> dict:
    """``settings`` less every key that ``user`` sets (within sections too; a user's encoder block
    structure replaces the whole of the preset's, ENCODER_STRUCTURE): what a user's YAML leaves to a
    preset's task-set entry."""
    out = {}
    for key, value in settings.items():
        if key not in user:
            out[key] = value
        elif isinstance(value, dict) and isinstance(user[key], dict) and key in SECTIONS:
            if key == "model" and any(name in user[key] for name in ENCODER_STRUCTURE):
                value = {k: v for k, v in value.items() if k not in ENCODER_STRUCTURE}
            rest = without_keys(value, user[key])
            if rest:
                out[key] = rest
    return out


def build(data: dict) -> RunConfig:
    """RunConfig from a nested dict; unknown keys are errors that name the key. A ``task_sets``
    section left in ``data`` is dropped: callers apply it where it belongs (`for_task_set`: after
    the preset, before the user's and the study's own settings)."""
    data = _link_mel_bands(for_task_set(data, ()))
    kwargs = {}
    for section, cls in SECTIONS.items():
        values = data.pop(section, None) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown key(s) in {section}: {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        try:
            kwargs[section] = cls(**values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid {section} settings: {exc}") from None
    names = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
    for key in ("tasks", "order"):
        if data.get(key) is not None:
            value = data[key]
            data[key] = tuple(value.split(",") if isinstance(value, str) else value)
    return RunConfig(**data, **kwargs)


def _link_mel_bands(data: dict) -> dict:
    """``data`` with ``frontend.n_mels`` and ``model.n_mels`` equal: the one given sets both (the
    network's input width is the front end's band count). ConfigError when both differ."""
    sections = {key: data.get(key) for key in ("frontend", "model")}
    if not all(value is None or isinstance(value, dict) for value in sections.values()):
        return data  # build() names the section that is not a mapping
    bands = {key: (value or {}).get("n_mels") for key, value in sections.items()}
    if bands["frontend"] is not None and bands["model"] is not None and bands["frontend"] != bands["model"]:
        raise ConfigError(
            f"frontend.n_mels {bands['frontend']} and model.n_mels {bands['model']} differ: "
            "set frontend.n_mels; the network follows it"
        )
    value = bands["frontend"] if bands["frontend"] is not None else bands["model"]
    if value is None:
        return data
    return {**data, **{key: {**(sections[key] or {}), "n_mels": value} for key in sections}}


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
