#!/usr/bin/env python
"""`python scripts/make_manifest.py ARGS` is `keras-mtl make-manifest ARGS` (see `keras-mtl make-manifest --help`)."""

import sys

from keras_mtl.cli.main import run

if __name__ == "__main__":
    run(["make-manifest", *sys.argv[1:]])
