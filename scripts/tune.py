#!/usr/bin/env python
"""`python scripts/tune.py ARGS` is `keras-mtl tune ARGS` (see `keras-mtl tune --help`)."""

import sys

from keras_mtl.cli.main import run

if __name__ == "__main__":
    run(["tune", *sys.argv[1:]])
