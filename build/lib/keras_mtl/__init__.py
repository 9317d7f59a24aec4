"""keras-mtl: compact multi-task audio models (ASC, SED, speech tasks) for microcontrollers."""

import os

# tf_keras (Keras 2) everywhere: must be set before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.2.0"  # the one version number: pyproject.toml reads it, keras-mtl --version prints it

from keras_mtl.core import moved  # noqa: E402  (the old module paths, deprecated)

moved.install()
