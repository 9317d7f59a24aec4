#!/usr/bin/env python
"""`python scripts/experiment.py ARGS` is `keras-mtl experiment ARGS` (see `keras-mtl experiment --help`)."""

import sys

from keras_mtl.cli.main import run

if __name__ == "__main__":
    run(["experiment", *sys.argv[1:]])
