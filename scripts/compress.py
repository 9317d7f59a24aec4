#!/usr/bin/env python
"""`python scripts/compress.py ARGS` is `keras-mtl compress ARGS` (see `keras-mtl compress --help`)."""

import sys

from keras_mtl.cli.main import run

if __name__ == "__main__":
    run(["compress", *sys.argv[1:]])
