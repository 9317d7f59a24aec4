#!/usr/bin/env python
"""`python scripts/analyze_tasks.py ARGS` is `keras-mtl analyze ARGS` (see `keras-mtl analyze --help`)."""

import sys

from keras_mtl.cli.main import run

if __name__ == "__main__":
    run(["analyze", *sys.argv[1:]])
