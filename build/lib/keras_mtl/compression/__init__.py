"""Compression of trained multi-task networks: lottery tickets (LTH) and sparse sharing (LT4REC)."""
