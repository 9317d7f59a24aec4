#!/usr/bin/env python
"""`python scripts/predict.py ARGS` is `keras-mtl predict ARGS` (see `keras-mtl predict --help`)."""

import sys

from keras_mtl.cli.main import run

if __name__ == "__main__":
    run(["predict", *sys.argv[1:]])
