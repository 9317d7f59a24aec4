#!/usr/bin/env python
"""`python scripts/train.py ARGS` is `keras-mtl train ARGS` (see `keras-mtl train --help`)."""

import sys

from keras_mtl.cli.main import run

if __name__ == "__main__":
    run(["train", *sys.argv[1:]])
