#!/usr/bin/env python
"""`python scripts/synergy.py ARGS` is `keras-mtl synergy ARGS` (see `keras-mtl synergy --help`)."""

import sys

from keras_mtl.cli.main import run

if __name__ == "__main__":
    run(["synergy", *sys.argv[1:]])
