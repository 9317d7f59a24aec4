"""Losses shared by the strategies."""

from __future__ import annotations

from keras_mtl.core.backend import keras, tf


def bce(y_true, y_pred):
    """Mean binary cross-entropy over every element; 0 for an empty selection (e.g. a batch with no
    strongly labelled item). Shapes: equal, any rank; returns a scalar."""
    if y_true.shape.rank is not None and y_true.shape[0] == 0:
        return tf.constant(0.0)
    values = keras.losses.binary_crossentropy(y_true, y_pred)
    return tf.math.divide_no_nan(tf.reduce_sum(values), tf.cast(tf.size(values), tf.float32))
