"""Training: multi-task strategies, loss weighting, callbacks, tf.distribute and the fit loop."""
