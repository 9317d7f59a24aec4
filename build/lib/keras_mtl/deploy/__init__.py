"""Deployment: streaming pieces, int8 TFLite conversion and checks, C arrays, QAT and the Cortex-M firmware."""
