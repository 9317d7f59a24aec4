"""Studies over many runs: the papers' comparison tables, task synergy, task-relation analysis, the batch runner."""
