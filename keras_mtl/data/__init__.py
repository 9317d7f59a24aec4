"""Datasets: audio I/O, corpus readers (TAU22, DESED), synthetic data, and tf.data pipelines."""
