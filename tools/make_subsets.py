#!/usr/bin/env python
"""Create the paper's nested training subsets (see rethink/data/subsets.py for the selection rule).

    python tools/make_subsets.py                                   # coco_2017_train, all paper subsets, seed 0
    python tools/make_subsets.py --subsets 1of10 10k --seeds 0 1 2
    python tools/make_subsets.py --json /data/mine/instances.json --name mine --subsets 1of10
    python tools/make_subsets.py --json my.json --name mine --output-dir subsets/

Without --output-dir the files go to $RETHINK_CACHE/subsets/ (default ~/.cache/rethink), where the
dataset catalog finds them by name (e.g. DATASETS.TRAIN ("coco_2017_train_1of10_s0",), or
("mine_1of10_s0",) for the --json example: its manifest names the json and the image folder, so
`mine` need not be registered); subsets are also created there automatically on first use. With
--output-dir, a written json is a dataset by its path (DATASETS.TRAIN ("subsets/mine_1of10_s0.json",)).
The image folder of --json is --image-root, else found beside the json as for a dataset by path
(rethink/data/user_datasets.py). Existing subsets are verified against their manifest and source,
and kept; --force rewrites them. A mistake is one message and exit status 2.
"""
import argparse
import logging
import os
import sys

from rethink.data.catalog import get_dataset_spec
from rethink.data.errors import DatasetNotFoundError
from rethink.data.subsets import PAPER_SELECTIONS, Selection, make_subsets
from rethink.data.user_datasets import find_image_root
from rethink.utils.usererrors import run_cli

logger = logging.getLogger("make_subsets")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--dataset", default="coco_2017_train",
                     help="a dataset name from the catalog (default: %(default)s)")
    src.add_argument("--json", help="a COCO instance json instead of a dataset name")
    ap.add_argument("--name", help="base name of the subsets with --json (default: the json's file name stem)")
    ap.add_argument("--image-root", help="the image folder of --json (default: found beside the json)")
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
    if args.json:
        json_file, base = args.json, args.name or os.path.splitext(os.path.basename(args.json))[0]
        image_root = args.image_root
        if not image_root and os.path.isfile(json_file):
            try:
                image_root = find_image_root(os.path.abspath(json_file), base)
            except DatasetNotFoundError as e:  # the subsets can still be made; the catalog will ask for it
                logger.warning("%s; not recorded in the manifests (give --image-root)", str(e).splitlines()[0])
    else:
        spec = get_dataset_spec(args.dataset)
        json_file, base, image_root = spec.json_file, args.dataset, spec.image_root
    for js, manifest in make_subsets(json_file, base, sels, args.seeds, args.output_dir, args.force, image_root):
        logger.info("%s (manifest %s)", js, os.path.basename(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))  # a user error: one message, exit status 2 (RETHINK_TRACEBACK=1: the traceback)
