#!/usr/bin/env python
"""`python scripts/export.py ARGS` is `keras-mtl export ARGS` (see `keras-mtl export --help`)."""

import sys

from keras_mtl.cli.main import run

if __name__ == "__main__":
    run(["export", *sys.argv[1:]])
