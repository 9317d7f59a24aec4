"""Readers of the published corpus layouts (TAU22, DESED, Speech Commands, Common Voice, VAD, manifests)."""
