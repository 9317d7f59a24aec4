"""Quantisation-aware training (QAT) with tensorflow-model-optimization.

The convolutions and dense layers are wrapped by tfmot's default
8-bit scheme (fake-quantised weights and activations, batch norm folded in the forward pass where a
convolution feeds it); for layers tfmot does not cover, our configs: GRU (8-bit kernels, fake-quantised
gate activations) and temporal attention pooling (8-bit scores and output); the input normalisation
and pooling stay float. The wrapped network is fine-tuned with SoftMTL on the strong training data, and the
tuned weights are copied back into a float network of the original structure. The export then
calibrates and converts that network like any other (keras_mtl.deploy.export): its streaming pieces are rebuilt
from the network, so tfmot's learned ranges are not carried over, only the weights that learned to
live with 8-bit rounding.
"""

from __future__ import annotations

import logging
import math

from keras_mtl.core.backend import keras, tf
from keras_mtl.core.errors import ConfigError
from keras_mtl.data.pipeline import make_dataset
from keras_mtl.models import mtl as models
from keras_mtl.training.strategies import SoftMTL, make_optimizer

log = logging.getLogger(__name__)


QAT_LAYERS = (keras.layers.Conv2D, keras.layers.Dense)


def _attention_quantize_config():
    """tfmot QuantizeConfig of TemporalAttentionPooling: 8-bit symmetric score weights, 8-bit output."""
    import tensorflow_model_optimization as tfmot

    quantizers = tfmot.quantization.keras.quantizers

    class AttentionQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
        def get_weights_and_quantizers(self, layer):
            return [
                (
                    layer.score_kernel,
                    quantizers.LastValueQuantizer(num_bits=8, per_axis=False, symmetric=True, narrow_range=True),
                )
            ]

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            layer.score_kernel = quantize_weights[0]

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return [quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

        def get_config(self):
            return {}

    return AttentionQuantizeConfig


def _gru_quantize_config():
    """tfmot's RNN QuantizeConfig (not registered for GRU by tfmot): 8-bit kernels, fake-quantised gate
    activations; the state itself stays float (the int8 export quantises it per step)."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_registry import (
        Default8BitQuantizeConfigRNN,
    )

    return Default8BitQuantizeConfigRNN


def quantization_aware(network: keras.Model) -> keras.Model:
    """The network with tfmot fake quantisation: default 8-bit on Conv2D and Dense layers, our configs on
    GRU and temporal attention pooling (weights copied; the input normalisation and pooling stay float)."""
    import tensorflow_model_optimization as tfmot

    attention_config, gru_config = _attention_quantize_config(), _gru_quantize_config()
    annotate = tfmot.quantization.keras.quantize_annotate_layer

    def annotated_layer(layer):
        if isinstance(layer, QAT_LAYERS):
            return annotate(layer)
        if isinstance(layer, models.TemporalAttentionPooling):
            return annotate(layer, quantize_config=attention_config())
        if isinstance(layer, keras.layers.GRU):
            return annotate(
                layer,
                quantize_config=gru_config(
                    [["kernel", "recurrent_kernel"]], [["activation", "recurrent_activation"]], False
                ),
            )
        return layer

    annotated = keras.models.clone_model(network, clone_function=annotated_layer)
    custom = {name: getattr(models, name) for name in ("TemporalAttentionPooling", "WeakAttentionPooling")}
    custom.update(AttentionQuantizeConfig=attention_config, Default8BitQuantizeConfigRNN=gru_config)
    with tfmot.quantization.keras.quantize_scope(custom):
        return tfmot.quantization.keras.quantize_apply(annotated)


def copy_back(quantized: keras.Model, network: keras.Model) -> int:
    """Copies the weights of a quantization_aware network into a float one of the original
    structure; returns the number of variables copied. A tfmot QuantizeWrapper (named
    quant_<name>) holds the wrapped layer's variables under their own names (<name>/kernel:0)."""
    by_name = {layer.name: layer for layer in quantized.layers}
    copied = 0
    for layer in network.layers:
        if not layer.weights:
            continue
        source = by_name.get(f"quant_{layer.name}", by_name.get(layer.name))
        variables = {v.name: v for v in (source.weights if source is not None else [])}
        for weight in layer.weights:
            if weight.name not in variables:
                raise ConfigError(f"QAT: no variable {weight.name} in the quantisation-aware network")
            weight.assign(variables[weight.name])
            copied += 1
    return copied


def qat_finetune(
    network: keras.Model, config, tasks, data, epochs: int, learning_rate_scale: float = 0.1
) -> keras.Model:
    """A float copy of ``network`` fine-tuned ``epochs`` epochs with quantisation-aware training
    (SoftMTL with the run's loss weights, strong training data, the run's learning rate × scale)."""
    if epochs < 1:
        raise ConfigError("QAT needs at least one epoch")
    tuned = keras.models.clone_model(network)
    tuned.set_weights(network.get_weights())
    quantized = quantization_aware(tuned)
    tc = config.training
    steps = tc.steps_per_epoch or max(math.ceil(len(data.train[t.name]) / tc.batch_for(t.name)) for t in tasks)
    strategy = SoftMTL(quantized, tasks, loss_weights=config.task_loss_weights())
    strategy.compile(
        optimizer=make_optimizer(
            tc.learning_rate * learning_rate_scale, steps * epochs, tc.weight_decay, tc.warmup_fraction
        )
    )
    batches = tf.data.Dataset.zip(
        {t.name: make_dataset(data.train[t.name], tc.batch_for(t.name), training=True, seed=config.seed) for t in tasks}
    )
    log.info(
        "QAT: fine-tuning %d epochs x %d steps at learning rate %.2g",
        epochs,
        steps,
        tc.learning_rate * learning_rate_scale,
    )
    strategy.fit(batches, epochs=epochs, steps_per_epoch=steps, verbose=2)
    copied = copy_back(quantized, tuned)
    log.info("QAT: copied %d tuned variables back into the float network", copied)
    return tuned
