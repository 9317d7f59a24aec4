"""A run: its configuration and presets, its prepared inputs, its network, and the run folder it writes and reads."""
