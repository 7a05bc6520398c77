#!/usr/bin/env python
"""AP-vs-iteration curves and the results table for runs or sweeps.

    python tools/plot_curves.py output/sweeps/paper            # every run below a sweep dir
    python tools/plot_curves.py output/a output/b --out output/cmp/ap_curves --title "R50 GN"

Writes <out>.png/.pdf/.csv (curves: box and mask AP vs iterations, mean and min-max over seeds, LR
drops dotted, the paper's number as a star, the final test-time-augmentation AP as an open diamond when
TEST.AUG ran) and <out>_table.md/.csv (one row per run vs the paper; box_AP_TTA / mask_AP_TTA when present).

Curves are named in the legend (beside the plots) by what differs between them: the varying settings (init,
norm, schedule, ...) and any other config key set differently (e.g. BASE_LR=0.01); one curve is named by its run.
Table rows start with the run's name (its path relative to the folder searched).

A run is any directory with a config.yaml: rethink runs (metrics.jsonl) and detectron2 runs (metrics.json)
plot side by side, on completed iterations. Configs are read leniently (only the grouping axes, detectron2's
defaults for what is missing; values as the config loader reads them, so STEPS: (4000, 5000) is two LR drops), so
runs of older or newer versions plot; what cannot be read is a warning.
"""
import argparse
import logging
import os

from rethink.results.curves import plot_curves
from rethink.results.report import build_table, write_table
from rethink.results.runs import find_runs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="run directories or directories holding runs")
    p.add_argument("--out", help="output prefix (default: <first path>/ap_curves)")
    p.add_argument("--title", default="")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out or os.path.join(args.paths[0], "ap_curves")
    runs = find_runs(args.paths)
    paths = plot_curves(runs, out, args.title)
    paths.update(write_table(build_table(runs), out + "_table"))
    logging.info("%d runs -> %s", len(runs), ", ".join(paths.values()))


if __name__ == "__main__":
    main()
