"""Losses shared by the strategies."""

from __future__ import annotations

from keras_mtl.core.backend import keras, tf
from keras_mtl.tasks.registry import ClipClassificationTask


def bce(y_true, y_pred):
    """Mean binary cross-entropy over every element; 0 for an empty selection (e.g. a batch with no
    strongly labelled item). Shapes: equal, any rank; returns a scalar."""
    if y_true.shape.rank is not None and y_true.shape[0] == 0:
        return tf.constant(0.0)
    values = keras.losses.binary_crossentropy(y_true, y_pred)
    return tf.math.divide_no_nan(tf.reduce_sum(values), tf.cast(tf.size(values), tf.float32))


def softened_kl(teacher, student, temperature: float):
    """Knowledge distillation of a single-label clip task (Hinton et al. 2015, "Distilling the knowledge
    in a neural network"): T² · KL(softmax(log t / T) ‖ softmax(log s / T)), mean over the batch.
    ``teacher``, ``student``: (B, C) class probabilities (softmax outputs; the logits are their logs up
    to a constant, which the softmax removes); ``temperature`` T > 0. Returns a scalar."""
    eps = 1e-7
    log_t = tf.nn.log_softmax(tf.math.log(tf.cast(teacher, tf.float32) + eps) / temperature, axis=-1)
    log_s = tf.nn.log_softmax(tf.math.log(tf.cast(student, tf.float32) + eps) / temperature, axis=-1)
    kl = tf.reduce_sum(tf.exp(log_t) * (log_t - log_s), axis=-1)
    return temperature**2 * tf.reduce_mean(kl)


def binary_kl(teacher, student):
    """Mean over every element of KL(Bernoulli(t) ‖ Bernoulli(s)) = BCE(t, s) − H(t): the binary
    cross-entropy to the teacher's probabilities less its constant part, the teacher's entropy (same
    gradient; 0 when the student matches). Shapes: equal, any rank; returns a scalar."""
    eps = 1e-7
    t = tf.clip_by_value(tf.cast(teacher, tf.float32), eps, 1.0 - eps)
    s = tf.clip_by_value(tf.cast(student, tf.float32), eps, 1.0 - eps)
    values = t * (tf.math.log(t) - tf.math.log(s)) + (1.0 - t) * (tf.math.log(1.0 - t) - tf.math.log(1.0 - s))
    return tf.reduce_mean(values)


def distillation_loss(task, teacher, student, temperature: float):
    """The distillation term of ``task``: softened_kl for single-label clip tasks (softmax outputs),
    binary_kl (binary cross-entropy to the teacher's probabilities less the teacher's entropy) for
    multi-label clip and frame tasks (each class its own sigmoid; the temperature does not apply).
    Both are 0 when the student matches the teacher, so a loss-ratio balancer (GradNorm, DWA) sees the
    task's progress, not the teacher's entropy. Shapes: the task's output, (B, ...)."""
    if task.level == "clip" and isinstance(task, ClipClassificationTask):
        return softened_kl(teacher, student, temperature)
    return binary_kl(teacher, student)
