"""Download, verify and extract a corpus described in datasets/<corpus>/descriptor.yaml.

    python scripts/download.py speech_commands --to data/speech_commands
    python scripts/download.py tau22 --to data/
    python scripts/download.py path/to/descriptor.yaml --to DIR

Interrupted downloads resume where they stopped; checksums are verified before extraction;
archive members that would escape the target folder are refused. Corpora that need manual
steps (Common Voice terms, DESED's YouTube sources) print what to do.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from keras_mtl.cli import common as cli
from keras_mtl.core.paths import REPO_ROOT

DATASETS = REPO_ROOT / "datasets"
log = logging.getLogger(__name__)
PROG = "keras-mtl download"


def main(argv=None) -> int:
    from keras_mtl.core.errors import UserError
    from keras_mtl.data.download import download_corpus, load_descriptor

    known = sorted(p.parent.name for p in DATASETS.glob("*/descriptor.yaml"))
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("corpus", help=f"one of {', '.join(known)}, or a descriptor YAML file")
    p.add_argument("--to", required=True, help="target folder")
    p.add_argument("--delete-archives", action="store_true", help="remove archives after extraction")
    args = p.parse_args(argv)
    cli.setup_logging()
    path = Path(args.corpus)
    if path.suffix not in (".yaml", ".yml"):
        if args.corpus not in known:
            raise UserError(f"unknown corpus {args.corpus!r} (known: {', '.join(known)})")
        path = DATASETS / args.corpus / "descriptor.yaml"
    target = download_corpus(load_descriptor(path), args.to, keep_archives=not args.delete_archives)
    log.info("done: %s", target)
    return 0
