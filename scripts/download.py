#!/usr/bin/env python
"""`python scripts/download.py ARGS` is `keras-mtl download ARGS` (see `keras-mtl download --help`)."""

import sys

from keras_mtl.cli.main import run

if __name__ == "__main__":
    run(["download", *sys.argv[1:]])
