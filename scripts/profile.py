#!/usr/bin/env python
"""`python scripts/profile.py ARGS` is `keras-mtl profile ARGS` (see `keras-mtl profile --help`)."""

import sys

from keras_mtl.cli.main import run

if __name__ == "__main__":
    run(["profile", *sys.argv[1:]])
