"""Write a clip-level manifest (filename,label[,split]) for a folder of audio files.

    python scripts/make_manifest.py ../shared/data/real-mini/fsdd/recordings fsdd.csv \
        --label '^(\\d+)_' --test '_[0-4]\\.wav$'
    python scripts/train.py --task-set digits --task digits=clip:fsdd.csv
"""

from __future__ import annotations

import argparse
import logging

from keras_mtl.cli import common as cli
from keras_mtl.data.readers.manifest import build_clip_manifest

log = logging.getLogger(__name__)
PROG = "keras-mtl make-manifest"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="folder searched recursively for audio files")
    p.add_argument("out", help="manifest CSV to write")
    p.add_argument("--label", required=True, help="regex whose first group (in the relative path) is the label")
    p.add_argument("--test", help="regex: matching relative paths form the test split")
    args = p.parse_args(argv)
    cli.setup_logging()
    rows = build_clip_manifest(args.folder, args.out, args.label, args.test)
    log.info("wrote %s (%d clips)", args.out, rows)
    return 0
