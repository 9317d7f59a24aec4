#!/usr/bin/env python
"""`python scripts/firmware.py ARGS` is `keras-mtl firmware ARGS` (see `keras-mtl firmware --help`)."""

import sys

from keras_mtl.cli.main import run

if __name__ == "__main__":
    run(["firmware", *sys.argv[1:]])
