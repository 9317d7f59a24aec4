"""Tasks: the registry of built-in and manifest tasks, their losses and their DCASE metrics."""
