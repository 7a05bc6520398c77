#!/usr/bin/env python
"""Draw ground truth and predictions on a dataset's images, to PNG files (as detectron2's
tools/visualize_json_results.py and tools/visualize_data.py).

    # a run's predictions (every coco_instances_results*.json its evaluations wrote): predictions | ground truth
    python tools/visualize.py --run output/scratch_gn_r50 --conf-threshold 0.5 --max-images 20
    # any COCO results file (e.g. detectron2's inference/coco_instances_results.json) on a dataset
    python tools/visualize.py --results RESULTS.json --dataset coco_2017_val --output vis/
    # a dataset's ground truth alone: by catalog name, or a COCO json and its image folder
    python tools/visualize.py --dataset coco_2017_val --output vis/gt --max-images 50
    python tools/visualize.py --json /data/mine/instances.json --image-root /data/mine/images --output vis/mine

Boxes, masks and class names in one colour per category; predictions also with their scores, only those
scoring >= --conf-threshold. Images are taken in image-id order (--max-images, 0 = all) or by --image-ids,
and written as <output>/<image id>_<file stem>.png (a run: <run>/visualize/<results file stem>/ by default).
"""
import argparse
import logging
import sys

from rethink.utils.logger import setup_logging
from rethink.visualization import DEFAULT_THRESHOLD, DatasetImages, load_results, visualize_run, write_visualizations

logger = logging.getLogger("visualize")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group("what to draw (one of --run, --results with a dataset, a dataset alone)")
    what.add_argument("--run", metavar="DIR", help="a run directory: draw the predictions its evaluations saved")
    what.add_argument("--results", metavar="FILE", help="a COCO results json to draw on the dataset")
    what.add_argument("--dataset", metavar="NAME", help="a dataset of the catalog (e.g. coco_2017_val)")
    what.add_argument("--json", metavar="FILE", help="a COCO-format annotation file (instead of --dataset)")
    what.add_argument("--image-root", metavar="DIR", help="the folder of --json's images")
    p.add_argument("--output", metavar="DIR", help="where the images go (a run: default <run>/visualize)")
    p.add_argument("--conf-threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"draw predictions scoring at least this (default {DEFAULT_THRESHOLD})")
    p.add_argument("--max-images", type=int, default=20, help="images to draw, in image-id order; 0: all (default 20)")
    p.add_argument("--image-ids", type=int, nargs="+", metavar="ID", help="draw these images instead")
    args = p.parse_args(argv)
    if args.run and (args.results or args.dataset or args.json):
        p.error("--run takes its results and datasets from the run directory; drop --results/--dataset/--json")
    if args.json and args.dataset:
        p.error("name the dataset once: --dataset NAME, or --json FILE --image-root DIR")
    if args.json and not args.image_root:
        p.error("--json needs --image-root (the folder its file_names are in)")
    if not args.run and not (args.dataset or args.json):
        p.error("nothing to draw: give --run DIR, or a dataset (--dataset NAME or --json/--image-root), "
                "with --results FILE for predictions")
    if not args.run and not args.output:
        p.error("--output DIR is needed (a run directory has a default)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        if args.run:
            paths = visualize_run(args.run, args.output, args.conf_threshold, args.max_images, args.image_ids)
        else:
            images = (DatasetImages.from_name(args.dataset) if args.dataset
                      else DatasetImages(args.json, args.image_root))
            results = load_results(args.results) if args.results else None
            paths = write_visualizations(images, args.output, results, args.conf_threshold, args.max_images,
                                         args.image_ids)
    except (OSError, ValueError, KeyError) as e:
        logger.error("%s", e.args[0] if isinstance(e, KeyError) and e.args else e)
        return 1
    logger.info("%d images written%s", len(paths), f", e.g. {paths[0]}" if paths else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
