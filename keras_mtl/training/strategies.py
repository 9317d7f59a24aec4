"""Multi-task training strategies as ``keras.Model`` subclasses that override ``train_step``.

A strategy wraps the functional multi-task network. Each training step receives one batch
per task, ``{task name: (features, targets)}`` (tasks have different clip lengths, so their
batches cannot be stacked), computes every task's loss on its own batch through that task's
path of the network, and combines the losses (seed 000, Fig. 5):

soft        SoftMTL: one update per step on the weighted sum of all task losses.
hard        HardMTL: tasks take turns; step s updates the shared encoder and task (s mod K)'s decoder.
cross-soft  CrossSoftMTL: SoftMTL plus distillation across tasks: on task A's batch the student's
            outputs for every other task B are pulled (MSE) towards an EMA teacher's outputs.
cross-hard  CrossHardMTL: HardMTL plus the same distillation on the turn's batch.
freeze      FreezeMTL(A, B, ...): phase 1 trains task A alone; phase 2 freezes everything on A's
            path (shared encoder, decoder A) and trains decoder B alone; and so on.

Mean teacher (Tarvainen & Valpola 2017; DCASE task 4 baseline) is used inside every strategy for
frame tasks whose batches mix strongly labelled, weakly labelled and unlabelled clips (targets
``{"strong", "weak", "role"}``, see ``keras_mtl.data.pipeline.make_semi_supervised_dataset``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

from keras_mtl.core.backend import keras, tf
from keras_mtl.core.errors import ConfigError
from keras_mtl.models import normalization
from keras_mtl.models.joint import JointForward
from keras_mtl.models.mtl import task_submodel
from keras_mtl.training import balancing
from keras_mtl.training.losses import bce, distillation_loss

STRONG, WEAK, UNLABELED, STRONG_REAL = 0, 1, 2, 3  # item roles in a semi-supervised batch


def weak_key(task_name: str) -> str:
    return f"{task_name}_weak"


def ema_decay(step, max_decay: float = 0.999):
    """The mean teacher's EMA decay after optimizer step ``step`` (0-based): min(1 - 1/(step+1), max)."""
    step = tf.cast(step, tf.float32)
    return tf.minimum(1.0 - 1.0 / (step + 1.0), max_decay)


def sigmoid_rampup(step, rampup_steps: int):
    """exp(-5 (1 - t/T)^2), clipped to 1 after T steps (Laine & Aila 2017)."""
    if rampup_steps <= 0:
        return tf.constant(1.0)
    t = tf.clip_by_value(tf.cast(step, tf.float32) / float(rampup_steps), 0.0, 1.0)
    return tf.exp(-5.0 * tf.square(1.0 - t))


@dataclasses.dataclass(frozen=True)
class StrategyOptions:
    """Options every strategy takes.

    ``loss_weights``: {task: weight} (default: the mean, 1/K each); ``mean_teacher_tasks``: frame tasks
    whose batches are semi-supervised (strong/weak/unlabelled; the network must have their
    ``<task>_weak`` output); ``consistency_weight`` scales their student-teacher MSE, ramped up over
    ``rampup_steps`` optimizer steps; ``max_ema_decay`` caps the teacher's EMA decay; ``balancing``
    a gradient-level method of ``keras_mtl.training.balancing`` (summing strategies; None: the plain sum);
    ``joint_batch_norm``: every training step runs all tasks' batches through the network in one joint
    forward pass whose shared batch normalisation pools their statistics (keras_mtl.models.joint), so
    each corpus trains with the mixture statistics inference uses (False: one pass per task);
    ``gradnorm_min_share``: GradNorm keeps every task's weight at least this share of an equal one (1/K);
    ``joint_bn_exact``: with ``joint_batch_norm``, each task's loss differentiates through every task's share
    of the pooled statistics (the exact gradient of the joint pass), not its own share alone;
    ``distillation``: {task: (weight, temperature)} of the tasks whose batches carry a teacher's outputs
    (keras_mtl.training.distill): their loss adds weight × losses.distillation_loss."""

    loss_weights: dict | None = None
    mean_teacher_tasks: tuple = ()
    consistency_weight: float = 2.0
    rampup_steps: int = 0
    max_ema_decay: float = 0.999
    balancing: str | None = None
    joint_batch_norm: bool = False
    gradnorm_min_share: float = 0.0
    joint_bn_exact: bool = False
    distillation: dict | None = None

    def __post_init__(self):
        object.__setattr__(self, "mean_teacher_tasks", tuple(self.mean_teacher_tasks or ()))
        if self.consistency_weight < 0 or self.rampup_steps < 0 or not 0.0 <= self.max_ema_decay < 1.0:
            raise ConfigError(
                "strategy options: consistency_weight and rampup_steps must be >= 0, max_ema_decay in [0, 1)"
            )


@dataclasses.dataclass(frozen=True)
class CrossOptions(StrategyOptions):
    """Cross strategies: ``cross_weight`` scales the distillation of the other tasks' teacher outputs."""

    cross_weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class FreezeOptions(StrategyOptions):
    """FreezeMTL: ``order``, the tasks in the order they are trained and then frozen."""

    order: tuple = ()

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "order", tuple(self.order or ()))


class MultiTaskStrategy(keras.Model):
    """Base class: per-task paths, loss trackers and metrics; the EMA teacher when needed.

    A strategy declares its options (``Options``, a dataclass), builds them from a run's
    configuration (``options_from``) and says which run settings it cannot train with (``check``);
    the trainer asks it and never branches on its name. Options can be given as one ``options``
    object or as keyword arguments (``SoftMTL(network, tasks, loss_weights={...})``).
    """

    Options = StrategyOptions
    cross = False  # distil every other task's teacher output on each task's batch
    min_tasks = 1
    sums_losses = False  # the loss is a weighted sum of task losses: loss weights and dynamic weightings apply
    phased = False  # trains in phases (one per task) and takes ``order``
    architecture_only = False  # comes with an architecture (its ``strategy``), not chosen with --strategy
    joint_statistics = True  # takes ``joint_batch_norm`` (FreezeMTL trains one task per phase and freezes it)
    distils = True  # its task losses add the distillation term of batches that carry teacher outputs

    def __init__(self, network: keras.Model, tasks: Sequence, options: StrategyOptions | None = None, **kwargs):
        fields = {f.name for f in dataclasses.fields(self.Options)}
        given = {key: kwargs.pop(key) for key in list(kwargs) if key in fields}
        if options is None:
            options = self.Options(**given)
        elif given:
            options = dataclasses.replace(options, **given)
        if not isinstance(options, self.Options):
            raise ConfigError(f"{type(self).__name__} takes {self.Options.__name__}, not {type(options).__name__}")
        super().__init__(name=kwargs.pop("name", type(self).__name__.lower()), **kwargs)
        self.options = options
        self.network = network
        self.tasks = list(tasks)
        self.task_names = [t.name for t in self.tasks]
        if self.cross and len(self.tasks) < 2:
            raise ConfigError(f"{type(self).__name__} needs at least two tasks")
        self.paths = {t.name: task_submodel(network, t.name) for t in self.tasks}
        weights = options.loss_weights or {t.name: 1.0 / len(self.tasks) for t in self.tasks}
        unknown = set(weights) - set(self.task_names)
        if unknown:
            raise ConfigError(f"loss weights name unknown task(s): {', '.join(sorted(unknown))}")
        self.loss_weights = {
            name: tf.Variable(float(weights.get(name, 0.0)), trainable=False, name=f"weight_{name}")
            for name in self.task_names
        }
        self.loss_trackers = {name: keras.metrics.Mean(name=f"{name}_loss") for name in self.task_names}
        self.total_tracker = keras.metrics.Mean(name="loss")
        self.task_metrics = {t.name: t.keras_metrics() for t in self.tasks}

        self.mean_teacher_tasks = options.mean_teacher_tasks
        for name in self.mean_teacher_tasks:
            task = self.tasks[self.task_names.index(name)] if name in self.task_names else None
            if task is None or task.level != "frame":
                raise ConfigError(f"mean teacher: {name} is not a frame-level task of this run")
            if weak_key(name) not in network.output:
                raise ConfigError(f"mean teacher for {name} needs the network's {weak_key(name)} output (weak_output)")
        self.consistency_weight = float(options.consistency_weight)
        self.rampup_steps = int(options.rampup_steps)
        self.cross_weight = float(getattr(options, "cross_weight", 0.0))
        self.distillation = dict(options.distillation or {})
        self.max_ema_decay = float(options.max_ema_decay)
        self.heads = {name: self._heads(network, name) for name in self.task_names}
        self.joint = None
        if options.joint_batch_norm and len(self.tasks) > 1 and self.joint_statistics:
            outputs = list(network.output) if self.cross else None
            self.joint = JointForward(
                network,
                {name: outputs or list(self.heads[name].output) for name in self.task_names},
                exact_gradient=options.joint_bn_exact,
            )
        self.teacher = None
        self.ema_start_step = 0  # the optimizer step the teacher's EMA decay ramps up from (restart_teacher)
        if self.cross or self.mean_teacher_tasks:
            self.teacher = keras.models.clone_model(network)
            self.teacher.set_weights(network.get_weights())
            self.teacher.trainable = False
            self.teacher_heads = {name: self._heads(self.teacher, name) for name in self.task_names}
        self.balancer = balancing.make_balancer(options.balancing, self)
        # variables on the paths of two or more tasks: where task gradients meet (and may conflict)
        owners: dict[int, int] = {}
        for path in self.paths.values():
            for variable in path.trainable_variables:
                owners[id(variable)] = owners.get(id(variable), 0) + 1
        self.shared_ids = {id(v) for v in network.trainable_variables if owners.get(id(v), 0) > 1}
        self.cosine_trackers = []  # ((i, j), the epoch's mean cosine of tasks i and j on the shared variables)
        if self.balancer is not None and self.balancer.per_task:
            self.cosine_trackers = [
                ((i, j), keras.metrics.Mean(name=f"cos_{self.task_names[i]}_{self.task_names[j]}"))
                for i in range(len(self.tasks))
                for j in range(i + 1, len(self.tasks))
            ]

    @property
    def shared_index(self) -> list:
        """Positions in ``optimized_variables()`` of the variables on the paths of two or more tasks (by
        identity: freezing layers, e.g. the calibrated batch normalisation's last epochs, moves them)."""
        return [i for i, v in enumerate(self.optimized_variables()) if id(v) in self.shared_ids]

    # -- what a run's configuration means for the strategy ---------------------------------------

    @classmethod
    def options_from(cls, config, total_steps: int, mean_teacher_tasks: Sequence[str] = ()) -> StrategyOptions:
        """The options of a run: its loss weights and training section; ``total_steps`` optimizer
        steps per phase (for ramp-ups), ``mean_teacher_tasks`` the tasks with semi-supervised batches."""
        tc = config.training
        values = dict(
            loss_weights=config.task_loss_weights(),
            mean_teacher_tasks=tuple(mean_teacher_tasks),
            consistency_weight=tc.consistency_weight,
            rampup_steps=int(round(tc.rampup_fraction * total_steps)),
            max_ema_decay=tc.ema_decay,
            cross_weight=tc.cross_weight,
            order=tuple(config.order or ()),
            balancing=config.weighting if config.weighting in balancing.BALANCERS else None,
            joint_batch_norm=normalization.resolve_mode(config.batch_norm, len(config.tasks)) == "joint",
            gradnorm_min_share=tc.gradnorm_min_share,
            joint_bn_exact=tc.joint_bn_gradient == "exact",
            distillation={t: tc.distillation_for(t) for t in config.tasks}
            if tc.teachers or tc.teacher_outputs
            else None,
        )
        fields = {f.name for f in dataclasses.fields(cls.Options)}
        return cls.Options(**{key: value for key, value in values.items() if key in fields})

    @classmethod
    def check(cls, config, name: str) -> None:
        """ConfigError for run settings this strategy cannot train with (``name``: as the user wrote
        it), before any data is read."""
        if len(config.tasks) < cls.min_tasks:
            raise ConfigError(f"--strategy {name} needs at least two tasks")
        if (config.training.teachers or config.training.teacher_outputs) and not cls.distils:
            raise ConfigError(f"knowledge distillation (--teacher, --teacher-outputs) does not apply to {name}")
        if config.order and not cls.phased:
            raise ConfigError("--order is for --strategy freeze")
        if (config.alpha is not None or config.loss_weights) and not cls.sums_losses:
            raise ConfigError(
                f"loss weights (--alpha) apply to a sum of task losses: strategy {name} "
                f"updates one task per step (use {' or '.join(SUMMING)})"
            )

    def _heads(self, network, name: str) -> keras.Model:
        """The task's outputs as a dict: the task's own and, if present, its weak output."""
        keys = [k for k in (name, weak_key(name)) if k in network.output]
        return keras.Model(network.input, {k: network.output[k] for k in keys}, name=f"{name}_heads")

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    @property
    def metrics(self):
        tracked = [self.total_tracker, *self.loss_trackers.values()]
        for metric_list in self.task_metrics.values():
            tracked.extend(metric_list)
        return tracked + [tracker for _, tracker in getattr(self, "cosine_trackers", [])]

    # -- losses ---------------------------------------------------------------------------------

    def task_step_loss(self, task, features, targets, training: bool, student=None):
        """(loss, targets, strong predictions) of ``task`` on its own batch, including the
        mean-teacher consistency and, for the Cross strategies, the distillation of the other tasks.
        ``student``: the network's outputs for the batch when computed already (the joint forward pass)."""
        distilled = isinstance(targets, dict) and "teacher" in targets
        soft = targets["teacher"] if distilled else None
        if distilled and "target" in targets:
            targets = targets["target"]
        semi = task.name in self.mean_teacher_tasks and isinstance(targets, dict)
        if self.cross and training:
            student = self.network(features, training=True) if student is None else student
            teacher = self.teacher(features, training=False)
        else:
            if student is None:
                student = self.heads[task.name](features, training=training)
            teacher = self.teacher_heads[task.name](features, training=False) if semi and training else None
        prediction = student[task.name]
        extra = self._cross_loss(task, student, teacher, training)
        if distilled:
            weight, temperature = (self.distillation or {}).get(task.name, (1.0, 2.0))
            extra += weight * distillation_loss(task, soft, prediction, temperature)
        if not semi:
            return task.loss(targets, prediction) + extra, targets, prediction
        loss, strong_targets, strong_predictions = self._semi_supervised_loss(task, targets, student, teacher, training)
        return loss + extra, strong_targets, strong_predictions

    def _cross_loss(self, task, student, teacher, training: bool):
        if not (self.cross and training):
            return 0.0
        own = {task.name, weak_key(task.name)}
        terms = [tf.reduce_mean(tf.square(student[k] - tf.stop_gradient(teacher[k]))) for k in student if k not in own]
        return self.cross_weight * tf.add_n(terms)

    def _semi_supervised_loss(self, task, targets, student, teacher, training: bool):
        """Strong BCE on strong items, weak BCE on strong + weak items, consistency on all."""
        role = targets["role"]
        strong_rows = tf.logical_or(tf.equal(role, STRONG), tf.equal(role, STRONG_REAL))
        weak_rows = tf.logical_or(strong_rows, tf.equal(role, WEAK))
        strong_targets = tf.boolean_mask(targets["strong"], strong_rows)
        strong_predictions = tf.boolean_mask(student[task.name], strong_rows)
        loss = bce(strong_targets, strong_predictions)
        loss += bce(
            tf.boolean_mask(targets["weak"], weak_rows), tf.boolean_mask(student[weak_key(task.name)], weak_rows)
        )
        if training and teacher is not None:
            consistency = tf.reduce_mean(tf.square(student[task.name] - tf.stop_gradient(teacher[task.name])))
            consistency += tf.reduce_mean(
                tf.square(student[weak_key(task.name)] - tf.stop_gradient(teacher[weak_key(task.name)]))
            )
            loss += self.consistency_weight * sigmoid_rampup(self.optimizer.iterations, self.rampup_steps) * consistency
        return loss, strong_targets, strong_predictions

    def student_outputs(self, data, training: bool) -> dict:
        """{task: the network's outputs for its batch} from the joint forward pass while training with
        joint batch statistics; empty otherwise (each task's loss then runs its own pass)."""
        if not (training and self.joint is not None):
            return {}
        return self.joint({name: data[name][0] for name in self.task_names}, training=True)

    def task_losses(self, data, training: bool) -> dict:
        """{task: (loss, targets, predictions)} on each task's own batch."""
        students = self.student_outputs(data, training)
        return {
            task.name: self.task_step_loss(task, *data[task.name], training=training, student=students.get(task.name))
            for task in self.tasks
        }

    def combine(self, losses: dict):
        return tf.add_n([self.loss_weights[name] * losses[name][0] for name in self.task_names])

    def regularization(self):
        return tf.add_n(self.network.losses) if self.network.losses else 0.0

    # -- bookkeeping ----------------------------------------------------------------------------

    def _record_task(self, name, loss, targets, predictions):
        self.loss_trackers[name].update_state(loss)
        for metric in self.task_metrics[name]:
            metric.update_state(targets, predictions)

    def _record(self, total, losses):
        self.total_tracker.update_state(total)
        for name, (loss, targets, predictions) in losses.items():
            self._record_task(name, loss, targets, predictions)
        return {m.name: m.result() for m in self.metrics}

    def update_teacher(self):
        """teacher <- d * teacher + (1 - d) * student, d = ema_decay(step just taken). Done once in
        cross-replica context, so that under tf.distribute every replica's teacher gets the same update."""
        if self.teacher is None:
            return
        decay = ema_decay(self.optimizer.iterations - 1 - self.ema_start_step, self.max_ema_decay)
        pairs = [
            (t, s) for t, s in zip(self.teacher.weights, self.network.weights) if t.dtype.is_floating
        ]  # not counters

        def update(distribution, decay):
            for teacher_weight, student_weight in pairs:
                distribution.extended.update(
                    teacher_weight,
                    lambda t, s, d: t.assign(d * t + (1.0 - d) * tf.cast(s, t.dtype)),
                    args=(student_weight, decay),
                )

        tf.distribute.get_replica_context().merge_call(update, args=(decay,))

    def compile(self, *args, **kwargs):
        """``keras.Model.compile``, then the optimizer's slots made for ``optimized_variables()``: a
        training function that made them in its first trace would be traced twice (tf.function traces
        again once variables were created), ~6 s for a small network's multi-task step; HardMTL's turns
        need them before their branches run; a checkpoint restores into them (``--resume``)."""
        super().compile(*args, **kwargs)
        self.optimizer.build(self.optimized_variables())

    def optimized_variables(self) -> list:
        """The variables the optimizer keeps state for, in the order it was built with (checkpoints
        match optimizer slots to variables by that order)."""
        extra = self.balancer.variables if getattr(self, "balancer", None) is not None else []
        return self.network.trainable_variables + list(extra)

    def apply(self, tape, total, variables, gradients=None):
        # under tf.distribute the replicas' gradients are summed: each replica's mean loss is divided by
        # their number, giving the gradient of the mean over the global batch
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if gradients is None:
            gradients = tape.gradient(total, variables)
        if replicas > 1:
            gradients = [None if g is None else g / replicas for g in gradients]
        self.optimizer.apply_gradients(zip(gradients, variables))
        self.update_teacher()

    def test_step(self, data):
        losses = self.task_losses(data, training=False)
        return self._record(self.combine(losses), losses)

    # -- phases (FreezeMTL trains in several) ---------------------------------------------------

    def phases(self) -> list[str | None]:
        """One entry per training phase; the trainer compiles and fits once per phase."""
        return [None]

    def begin_phase(self, index: int) -> None:
        pass

    def freeze_batch_norm(self) -> None:
        """Every batch normalisation of the network (and of its EMA teacher, whose weights pair with the
        network's in order) frozen at its moving statistics (``--batch-norm calibrated``'s last epochs);
        the training function is rebuilt by the next ``compile``."""
        normalization.freeze_batch_norm(self.network)
        if self.teacher is not None:
            normalization.freeze_batch_norm(self.teacher)
        self.train_function = None

    def freeze_shared_layers(self, frozen: bool = True) -> list:
        """Every layer with weights on the paths of two or more tasks frozen (``trainable = False``), or with
        ``frozen=False`` the ones this froze trainable again; their names. The training function is rebuilt
        by the next ``compile`` (``training.bn_calibration_layers: task``)."""
        if frozen:  # the layers whose trainable weights are all shared (shared_ids, set when the strategy was made)
            names = [
                layer.name
                for layer in self.network.layers
                if layer.trainable_weights and all(id(v) in self.shared_ids for v in layer.trainable_weights)
            ]
            self.frozen_shared = ",".join(names)  # a string: Keras tracks lists and layers set on a model
        else:
            names = [name for name in getattr(self, "frozen_shared", "").split(",") if name]
            self.frozen_shared = ""
        for name in names:
            self.network.get_layer(name).trainable = not frozen
        self.train_function = None
        return names

    def restart_teacher(self, step: int, copy: bool = True) -> None:
        """The EMA teacher starts again from optimizer step ``step``: its decay ramps up from there as from
        the run's start, and with ``copy`` its weights become the student's (a teacher averaged under
        other batch statistics would teach the outputs those statistics give: the calibrated stage)."""
        self.ema_start_step = int(step)
        if copy and self.teacher is not None:
            self.teacher.set_weights(self.network.get_weights())
        self.train_function = None


class SoftMTL(MultiTaskStrategy):
    """All tasks trained jointly through the shared encoder; loss = weighted sum (default: mean)."""

    sums_losses = True

    def train_step(self, data):
        if self.balancer is not None:
            return self.balanced_step(data)
        with tf.GradientTape() as tape:
            losses = self.task_losses(data, training=True)
            total = self.combine(losses) + self.regularization()
        self.apply(tape, total, self.optimized_variables())
        return self._record(total, losses)

    def balanced_step(self, data):
        """One update through ``self.balancer``: its total for every variable, and for the shared ones
        (per-task methods) its direction from the task gradients, plus the regularisation's gradient."""
        variables = self.optimized_variables()
        with tf.GradientTape(persistent=True) as tape:
            losses = self.task_losses(data, training=True)
            task_losses = [losses[name][0] for name in self.task_names]
            regularization = self.regularization()
            total = self.balancer.total(task_losses) + regularization
        gradients = tape.gradient(total, variables)
        shared_index = [i for i, v in enumerate(variables) if id(v) in self.shared_ids]
        if self.balancer.per_task and shared_index:
            shared = [variables[i] for i in shared_index]
            flat = tf.stack(
                [
                    tf.concat(
                        [tf.reshape(tf.zeros_like(v) if g is None else g, [-1]) for g, v in zip(per_task, shared)], 0
                    )
                    for per_task in (tape.gradient(loss, shared) for loss in task_losses)
                ]
            )
            pairs = balancing.cosines(flat)
            for pair, tracker in self.cosine_trackers:
                tracker.update_state(pairs[pair])
            direction = self.balancer.shared_direction(flat, task_losses)
            extra = tape.gradient(regularization, shared) if self.network.losses else [None] * len(shared)
            offset = 0
            for index, variable, regular in zip(shared_index, shared, extra):
                size = variable.shape.num_elements()
                piece = tf.reshape(direction[offset : offset + size], variable.shape)
                gradients[index] = piece if regular is None else piece + regular
                offset += size
        del tape
        self.balancer.after_step(task_losses)
        weights = self.balancer.log_weights()
        if weights is not None:
            for name, weight in zip(self.task_names, weights):
                self.loss_weights[name].assign(weight)
        self.apply(None, total, variables, gradients)
        return self._record(total, losses)


class HardMTL(MultiTaskStrategy):
    """Tasks take turns (seed 000): step s updates the shared encoder and the decoder of task
    s mod K on that task's batch only; the other decoders are not touched (no gradient, no
    optimizer update, no weight decay)."""

    min_tasks = 2

    def turn_variables(self, task):
        return self.heads[task.name].trainable_variables

    def _turn_step(self, task, data):
        """Task ``task``'s turn: its loss on its batch updates the shared encoder and its decoder."""
        features, targets = data[task.name]
        with tf.GradientTape() as tape:
            # with joint batch statistics every task's batch goes forward, so that the turn's task is
            # normalised with the statistics of the mixture the moving averages hold
            student = self.student_outputs(data, training=True).get(task.name)
            loss, strong_targets, predictions = self.task_step_loss(task, features, targets, True, student)
            total = loss + self.regularization()
        self.apply(tape, total, self.turn_variables(task))
        self._record_task(task.name, loss, strong_targets, predictions)
        self.total_tracker.update_state(loss)
        return loss

    def train_step(self, data):
        """One step (train_on_batch); fit() runs one compiled function per turn instead (below)."""
        turn = tf.cast(self.optimizer.iterations % len(self.tasks), tf.int32)
        tf.switch_case(turn, [functools.partial(self._turn_step, task, data) for task in self.tasks])
        return {m.name: m.result() for m in self.metrics}

    def make_train_function(self, force=False):
        """One compiled step per task turn, chosen in Python from the step counter: no branch around
        the gradient update, which tf.distribute cannot synchronise inside a branch."""
        if self.train_function is not None and not force:
            return self.train_function
        from tf_keras.src.engine.training import reduce_per_replica

        def compiled_turn(task):
            def run_step(data):
                self._turn_step(task, data)
                self._train_counter.assign_add(1)
                return {m.name: m.result() for m in self.metrics}

            def turn_function(iterator):
                outputs = self.distribute_strategy.run(run_step, args=(next(iterator),))
                return reduce_per_replica(outputs, self.distribute_strategy, reduction=self.distribute_reduction_method)

            return turn_function if self.run_eagerly else tf.function(turn_function, reduce_retracing=True)

        turns = [compiled_turn(task) for task in self.tasks]

        def train_function(iterator):
            return turns[int(self.optimizer.iterations.numpy()) % len(turns)](iterator)

        self.train_function = train_function
        return train_function


class CrossSoftMTL(SoftMTL):
    """SoftMTL + cross-task distillation from an EMA teacher of the whole model (seed 000, Fig. 5c)."""

    Options = CrossOptions
    cross = True
    min_tasks = 2


class CrossHardMTL(HardMTL):
    """HardMTL + cross-task distillation: a turn's batch also trains the other decoders towards
    the teacher's outputs on that batch, so every variable can change on every step."""

    Options = CrossOptions
    cross = True

    def turn_variables(self, task):
        return self.network.trainable_variables


class FreezeMTL(MultiTaskStrategy):
    """FreezeMTL(A, B, ...) (seed 000, Fig. 5d): phase i trains task ``order[i]`` alone; every
    layer on the paths of the earlier tasks (shared encoder, their decoders) is frozen, so the
    later decoders learn on the frozen encoder's embeddings. Frozen batch normalisation runs in
    inference mode: frozen layers stay bit-identical, moving statistics included."""

    Options = FreezeOptions
    min_tasks = 2
    phased = True
    # phase 1 trains the encoder on the first task alone and later phases run it frozen (inference mode):
    # every task is trained and deployed with the first task's statistics already
    joint_statistics = False

    def __init__(self, network: keras.Model, tasks: Sequence, options: FreezeOptions | None = None, **kwargs):
        super().__init__(network, tasks, options, **kwargs)
        order = list(self.options.order)
        if sorted(order) != sorted(self.task_names):
            raise ConfigError(
                f"freeze needs --order naming every task of the set once, e.g. --order {','.join(self.task_names)} "
                f"(got {','.join(order) or 'none'})"
            )
        self.order = order
        self.active = order[0]

    @classmethod
    def check(cls, config, name: str) -> None:
        super().check(config, name)
        if not config.order:
            raise ConfigError(f"--strategy freeze needs --order, e.g. --order {','.join(config.tasks)}")
        if sorted(config.order) != sorted(config.tasks):
            raise ConfigError(
                f"--order {','.join(config.order)} must name each task of the set ({','.join(config.tasks)}) once"
            )

    def phases(self):
        return list(self.order)

    def begin_phase(self, index: int) -> None:
        self.active = self.order[index]
        frozen = {id(layer) for name in self.order[:index] for layer in self.heads[name].layers}
        for layer in self.network.layers:
            layer.trainable = id(layer) not in frozen
        self.train_function = None

    def optimized_variables(self) -> list:
        return self.heads[self.active].trainable_variables

    def train_step(self, data):
        task = self.tasks[self.task_names.index(self.active)]
        features, targets = data[task.name]
        with tf.GradientTape() as tape:
            loss, strong_targets, predictions = self.task_step_loss(task, features, targets, training=True)
            total = loss + self.regularization()
        self.apply(tape, total, self.optimized_variables())
        self.total_tracker.update_state(loss)
        self._record_task(task.name, loss, strong_targets, predictions)
        return {m.name: m.result() for m in self.metrics}


STRATEGIES = {
    "soft": SoftMTL,
    "hard": HardMTL,
    "cross-soft": CrossSoftMTL,
    "cross-hard": CrossHardMTL,
    "freeze": FreezeMTL,
}
SUMMING = tuple(name for name, cls in STRATEGIES.items() if cls.sums_losses)  # where loss weights apply


@keras.utils.register_keras_serializable(package="keras_mtl")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up over the first ``warmup_fraction`` of steps, then cosine decay to 0 (seed 000)."""

    def __init__(self, peak: float, total_steps: int, warmup_fraction: float = 0.1, start_step: int = 0):
        self.peak = float(peak)
        self.total_steps = max(1, int(total_steps))
        self.warmup_fraction = float(warmup_fraction)
        self.start_step = int(start_step)  # the optimizer step the schedule starts at (a later training stage)

    def __call__(self, step):
        step = tf.cast(step, tf.float32) - float(self.start_step)
        total = tf.cast(self.total_steps, tf.float32)
        warmup = tf.maximum(1.0, tf.math.round(total * self.warmup_fraction))
        warm = self.peak * (step + 1.0) / warmup
        progress = tf.clip_by_value((step - warmup) / tf.maximum(1.0, total - warmup), 0.0, 1.0)
        cosine = 0.5 * self.peak * (1.0 + tf.cos(3.141592653589793 * progress))
        return tf.where(step < warmup, warm, cosine)

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_fraction": self.warmup_fraction,
            "start_step": self.start_step,
        }


def make_optimizer(
    learning_rate: float,
    total_steps: int,
    weight_decay: float = 1e-4,
    warmup_fraction: float = 0.1,
    start_step: int = 0,
):
    """AdamW (betas 0.9, 0.999) with warm-up + cosine decay over ``total_steps`` from ``start_step`` (a later
    stage's optimizer counts on from the steps before it: the mean teacher's EMA decay and ramp-up read it)."""
    schedule = WarmupCosine(learning_rate, total_steps, warmup_fraction, start_step)
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay, beta_1=0.9, beta_2=0.999)
