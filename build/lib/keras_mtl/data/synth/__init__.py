"""The built-in synthetic data: procedural sounds and scenes, espeak-ng speech, VAD mixtures."""
