"""One forward pass of a multi-task network over every task's batch, with batch statistics pooled
over all of them.

Tasks have different clip lengths (1 s scenes, 10 s event recordings), so their batches cannot be
stacked and each goes through the network on its own. Run that way, plain batch normalisation
normalises each task's batch with its own corpus's statistics while training, but the moving
averages that inference and the int8 export use blend all corpora: the deployed network normalises
a task's audio with statistics it never trained with (issue 28: on two real corpora, a frame task's
segment-F1 0.78 with its own statistics and 0.26 with the blend).

``JointForward`` walks the network's layers in their (topological) order and runs each layer on the
batch of every task whose path holds it. A batch normalisation layer on the paths of several tasks
normalises all their batches with one set of statistics, those of the mixture of their batches with
an equal share for each task, and moves its averages once per step by them. So
training normalises each corpus with statistics of the mixture, the statistics inference uses: the
single-task model trained on the union of the corpora behaves the same way. Layers on one task's
path (its decoder, its own blocks) see that task's batch alone, as before.
"""

from __future__ import annotations

from collections.abc import Mapping

from keras_mtl.core.backend import keras, tf
from keras_mtl.core.errors import ConfigError


class JointForward:
    """``JointForward(network, paths)(batches, training)`` -> {task: {output name: tensor}}.

    ``paths``: {task: the output names of ``network`` the task's batch is run to} (e.g. ``["asc"]``,
    ``["sed", "sed_weak"]``, or every output for the Cross strategies); only the layers those outputs
    need are run on the task's batch. ConfigError for a network whose graph reuses a layer (more than
    one call of one layer), which cannot be walked this way.
    """

    def __init__(self, network: keras.Model, paths: Mapping[str, list], exact_gradient: bool = False):
        self.exact_gradient = exact_gradient
        config = network.get_config()
        self.layers = {layer.name: layer for layer in network.layers}
        self.order = [entry["name"] for entry in config["layers"]]
        self.inbound = {}
        for entry in config["layers"]:
            nodes = entry["inbound_nodes"]
            if len(nodes) > 1:
                raise ConfigError(f"{entry['name']}: a layer called {len(nodes)} times; no joint forward pass")
            self.inbound[entry["name"]] = [(source[0], source[2]) for source in nodes[0]] if nodes else []
        if len(config["input_layers"]) != 1:
            raise ConfigError("the joint forward pass takes networks with one input")
        self.input_name = config["input_layers"][0][0]
        outputs = config["output_layers"]
        self.outputs = {
            name: (source[0], source[2]) for name, source in (outputs.items() if isinstance(outputs, dict) else [])
        }
        self.paths = {task: [self._check_output(name) for name in names] for task, names in paths.items()}
        self.needed = {task: self._ancestors([self.outputs[n][0] for n in names]) for task, names in self.paths.items()}

    def _check_output(self, name):
        if name not in self.outputs:
            raise ConfigError(f"the network has no output {name!r} (outputs: {', '.join(self.outputs)})")
        return name

    def _ancestors(self, names) -> set:
        seen, stack = set(), list(names)
        while stack:
            name = stack.pop()
            if name not in seen:
                seen.add(name)
                stack.extend(source for source, _ in self.inbound[name])
        return seen

    def __call__(self, batches: Mapping[str, tf.Tensor], training: bool) -> dict:
        values = {task: {self.input_name: batches[task]} for task in self.paths}
        for name in self.order:
            if name == self.input_name:
                continue
            layer = self.layers[name]
            tasks = [task for task in self.paths if name in self.needed[task]]
            if not tasks:
                continue
            inputs = {task: self._inputs(values[task], name) for task in tasks}
            if training and len(tasks) > 1 and _pools(layer):
                results = pooled_batch_norm(layer, [inputs[task] for task in tasks], self.exact_gradient)
                for task, result in zip(tasks, results):
                    values[task][name] = result
            else:
                for task in tasks:
                    values[task][name] = layer(inputs[task], training=training)
        return {
            task: {out: _pick(values[task][self.outputs[out][0]], self.outputs[out][1]) for out in outs}
            for task, outs in self.paths.items()
        }

    def _inputs(self, values: dict, name: str):
        sources = [_pick(values[source], index) for source, index in self.inbound[name]]
        return sources[0] if len(sources) == 1 else sources


def precise_statistics(network: keras.Model, batches, steps: int) -> int:
    """PreciseBN (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", sec. 3) over a mixture of tasks:
    every batch normalisation layer's moving mean and variance set to the average, over ``steps``
    joint forward passes (``JointForward``, training mode, dropout off), of the statistics of the
    equal-share mixture of the tasks' batches whose paths hold it (a layer on one task's path: that
    task's batches). ``batches``: an iterator of {task: features (batch, frames, mel bands)}, the
    network's output of each task's name its path. Moves nothing else; returns the steps run.

    Under tf.distribute (the network built in a strategy's scope; called here in cross-replica context)
    each worker runs its own ``steps`` and the averages end as the mean over all replicas (``agree_statistics``):
    every replica then normalises with the same statistics."""
    norms = [layer for layer in network.layers if isinstance(layer, keras.layers.BatchNormalization)]
    dropouts = [layer for layer in network.layers if isinstance(layer, keras.layers.Dropout)]
    saved = [(layer.momentum, layer.trainable) for layer in norms], [layer.rate for layer in dropouts]
    forward = None
    done = 0
    try:
        for layer in dropouts:
            layer.rate = 0.0
        for layer in norms:
            layer.trainable = True
        for done, batch in enumerate(batches, start=1):
            if forward is None:
                forward = JointForward(network, {task: [task] for task in batch})
            for layer in norms:  # a cumulative average: step k (from 1) weighs 1/k
                layer.momentum = 1.0 - 1.0 / done
            forward(batch, training=True)
            if done >= steps:
                break
    finally:
        for layer, (momentum, trainable) in zip(norms, saved[0]):
            layer.momentum, layer.trainable = momentum, trainable
        for layer, rate in zip(dropouts, saved[1]):
            layer.rate = rate
    agree_statistics(network)
    return done


def agree_statistics(network: keras.Model) -> int:
    """Every batch normalisation's moving mean and variance set, on every replica of a tf.distribute
    strategy, to their mean over the replicas (all workers'; a collective, so every worker calls it at the
    same point, outside ``strategy.run``). Moving averages are per-replica (``ON_READ``) variables: each replica's own copy
    normalises its forward passes in training steps, while a cross-replica read (evaluation, saving) is
    already the mean. Without a strategy, nothing moves. Returns the variables set."""
    done = 0
    for layer in network.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        for variable in (layer.moving_mean, layer.moving_variance):
            if isinstance(variable, tf.distribute.DistributedValues):
                variable.assign(variable.read_value())  # the read is the replicas' mean; the assign sets every one
                done += 1
    return done


def _pick(value, index: int):
    return value[index] if isinstance(value, (list, tuple)) else value


def _pools(layer) -> bool:
    """Batch normalisation whose statistics come from the batch (not renorm, not frozen)."""
    return isinstance(layer, keras.layers.BatchNormalization) and not layer.renorm and layer.trainable


def pooled_batch_norm(layer: keras.layers.BatchNormalization, inputs: list, exact_gradient: bool = False) -> list:
    """``layer`` applied to every tensor of ``inputs`` with the mean and variance of their mixture, each
    tensor (task) an equal share of it whatever its length (per channel: the mean of the tensors' means,
    and the mean of their second moments less its square), its moving averages moved once by them.
    Shapes may differ except in the channel axis. Equal shares, not one per element: 16 ten-second
    recordings outweigh 32 one-second clips fivefold by element, and the clip task's corpus then sits
    off the statistics it is deployed with (measured on the cross-corpus benchmark: clip accuracy 0.74
    by element, 0.88 by task).

    The values are the pooled statistics; the gradient of output k flows through tensor k's own share
    of them and not into the other tensors (their shares are constants for it): each task's loss keeps
    a gradient graph of its own batch, so per-task gradients (GradNorm, PCGrad, ...) cost what they did
    with one pass per task. ``exact_gradient``: every tensor's share is differentiable for every output
    (the exact gradient of the joint pass; a task's gradient then runs through every task's batch)."""
    rank = len(inputs[0].shape)
    axes = sorted(a % rank for a in layer.axis)
    reduce = [a for a in range(rank) if a not in axes]
    shape = [1] * rank
    for a in axes:
        shape[a] = int(inputs[0].shape[a])
    # moments about the moving mean (a constant): no cancellation when the mean is large
    shift = tf.stop_gradient(tf.reshape(tf.cast(layer.moving_mean, tf.float32), shape))
    xs = [tf.cast(x, tf.float32) - shift for x in inputs]
    counts = [tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), reduce)), tf.float32) for x in xs]
    firsts = [tf.reduce_sum(x, axis=reduce) / n for x, n in zip(xs, counts)]
    seconds = [tf.reduce_sum(tf.square(x), axis=reduce) / n for x, n in zip(xs, counts)]
    total = float(len(xs))
    first_all, second_all = tf.add_n(firsts), tf.add_n(seconds)
    if not exact_gradient:
        first_all, second_all = tf.stop_gradient(first_all), tf.stop_gradient(second_all)
    gamma = tf.reshape(layer.gamma, shape) if layer.gamma is not None else None
    beta = tf.reshape(layer.beta, shape) if layer.beta is not None else None
    outputs = []
    for i, x in enumerate(xs):
        # the pooled sums, with this tensor's own share differentiable
        if exact_gradient:
            m1, m2 = first_all / total, second_all / total
        else:
            m1 = (first_all + firsts[i] - tf.stop_gradient(firsts[i])) / total
            m2 = (second_all + seconds[i] - tf.stop_gradient(seconds[i])) / total
        variance = tf.maximum(m2 - tf.square(m1), 0.0)
        y = tf.nn.batch_normalization(x, tf.reshape(m1, shape), tf.reshape(variance, shape), beta, gamma, layer.epsilon)
        outputs.append(tf.cast(y, inputs[i].dtype))
    mean = first_all / total
    variance = tf.maximum(second_all / total - tf.square(mean), 0.0)
    mean = mean + tf.reshape(shift, [-1])
    momentum = layer.momentum
    layer.moving_mean.assign(
        momentum * layer.moving_mean + (1.0 - momentum) * tf.reshape(mean, layer.moving_mean.shape)
    )
    layer.moving_variance.assign(
        momentum * layer.moving_variance + (1.0 - momentum) * tf.reshape(variance, layer.moving_variance.shape)
    )
    return outputs
