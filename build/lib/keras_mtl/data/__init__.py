"""Audio data: corpus readers in the published layouts, the built-in synthetic sets, the tf.data pipeline, downloads."""
