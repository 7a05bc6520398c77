#!/usr/bin/env python
"""Create the paper's nested training subsets (see rethink/data/subsets.py for the selection rule).

    python tools/make_subsets.py                                   # coco_2017_train, all paper subsets, seed 0
    python tools/make_subsets.py --subsets 1of10 10k --seeds 0 1 2
    python tools/make_subsets.py --json my.json --name mine --output-dir subsets/

Without --output-dir the files go to $RETHINK_CACHE/subsets/ (default ~/.cache/rethink), where the
dataset catalog finds them by name (e.g. DATASETS.TRAIN ("coco_2017_train_1of10_s0",)); subsets are
also created there automatically on first use. Existing subsets are verified against their manifest
and source, and kept; --force rewrites them.
"""
import argparse
import logging
import os
import sys

from rethink.data.catalog import get_dataset_spec
from rethink.data.errors import DatasetError
from rethink.data.subsets import PAPER_SELECTIONS, Selection, make_subsets

logger = logging.getLogger("make_subsets")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--dataset", default="coco_2017_train",
                     help="a dataset name from the catalog (default: %(default)s)")
    src.add_argument("--json", help="a COCO instance json instead of a dataset name")
    ap.add_argument("--name", help="base name of the subsets with --json (default: the json's file name stem)")
    ap.add_argument("--subsets", nargs="+", default=[s.tag for s in PAPER_SELECTIONS],
                    help="fractions (1of10) and/or image counts (10k, 3.5k, 1000) (default: %(default)s)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--output-dir", help="where to write (default: $RETHINK_CACHE/subsets)")
    ap.add_argument("--force", action="store_true", help="rewrite subsets that exist")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        sels = [Selection.parse(s) for s in args.subsets]
    except ValueError as e:
        ap.error(str(e))
    try:
        if args.json:
            json_file, base = args.json, args.name or os.path.splitext(os.path.basename(args.json))[0]
        else:
            json_file, base = get_dataset_spec(args.dataset).json_file, args.dataset
        for js, manifest in make_subsets(json_file, base, sels, args.seeds, args.output_dir, args.force):
            logger.info("%s (manifest %s)", js, os.path.basename(manifest))
    except DatasetError as e:
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
