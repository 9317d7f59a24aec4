"""Foundations every other package may use: the TensorFlow/tf_keras backend, user errors, atomic file writes, paths, plotting."""
