"""Batch normalisation for tasks whose recordings come from different corpora: the modes a run picks
(``batch_norm``) and Batch Renormalization.

A multi-task step runs each task's batch through the shared encoder in its own forward pass, so
plain batch normalisation normalises every task with its own corpus's batch statistics while
training, but the moving averages that inference and the int8 export use are a blend of all the
corpora: a task whose corpus sits far from the blend sees, deployed, inputs it never trained on.

Batch Renormalization (Ioffe 2017, "Batch Renormalization: Towards Reducing Minibatch Dependence in
Batch-Normalized Models") normalises in training with the moving statistics, through the batch
statistics corrected by r = sigma_B / sigma and d = (mu_B - mu) / sigma (no gradient through r, d):
the forward pass of every task in training is the one inference runs, and gradients still flow as
through batch normalisation. At inference it is plain batch normalisation with its moving
statistics, so it folds into the convolution before it in TFLite as before.
"""

from __future__ import annotations

from keras_mtl.core.backend import keras
from keras_mtl.core.errors import ConfigError

#: auto (the default): calibrated for two tasks or more whose strategy trains them together, else per-task;
#: per-task: each task's batch normalised with its own statistics (what one forward pass per task gives);
#: calibrated: per-task, then the last epochs with every batch normalisation frozen at statistics
#: re-estimated over the mixture of the tasks' training batches (keras_mtl.models.joint.precise_statistics);
#: joint: one set of batch statistics pooled over every task's batch in each step (keras_mtl.models.joint);
#: renorm: Batch Renormalization
MODES = ("auto", "per-task", "calibrated", "joint", "renorm")

#: the correction's bounds (Ioffe 2017's final values): training forward = inference forward while
#: a batch's statistics stay within a factor of 3 and 5 standard deviations of the moving ones
RENORM_CLIPPING = {"rmin": 1.0 / 3.0, "rmax": 3.0, "dmax": 5.0}


def resolve_mode(mode: str, n_tasks: int) -> str:
    """The mode a run of ``n_tasks`` tasks trains with: ``mode`` (``auto``: calibrated), or ``per-task`` for
    one task (the modes differ only when batches of several tasks meet). ConfigError for a mode not in
    MODES. (A strategy that trains one task at a time takes ``auto`` as per-task: training.fit.)"""
    mode = str(mode).strip().lower()
    if mode not in MODES:
        raise ConfigError(f"batch_norm must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "auto":
        mode = "calibrated"
    return "per-task" if n_tasks < 2 and mode in ("joint", "calibrated") else mode


def freeze_batch_norm(model: keras.Model, frozen: bool = True) -> int:
    """Every BatchNormalization layer of ``model`` frozen (``trainable = False``: it normalises with its
    moving statistics in training as in inference, and its scale and offset stop training), or with
    ``frozen=False`` trainable again; the number of layers. The training function must be rebuilt
    afterwards (``compile``)."""
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.trainable = not frozen
    return len(layers)


def with_batch_renorm(model: keras.Model) -> keras.Model:
    """A copy of ``model`` (same layers and names, freshly initialised) whose BatchNormalization
    layers use Batch Renormalization, with the layer's own momentum for the renorm statistics (so
    training normalises with the same moving averages inference uses). Other layers are unchanged."""

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization) and not config.get("renorm"):
            config.update(renorm=True, renorm_clipping=dict(RENORM_CLIPPING), renorm_momentum=config["momentum"])
        return type(layer).from_config(config)

    return keras.models.clone_model(model, clone_function=clone)


def uses_batch_renorm(model: keras.Model) -> bool:
    return any(getattr(layer, "renorm", False) for layer in model.layers)
