#!/usr/bin/env python
"""The two-command demo (`make demo`): does ImageNet-style pre-training help a small detector?

On a CPU machine in ~10 minutes, with the same tools a COCO user runs:
  1. generate a synthetic COCO-format detection set (3 shape classes) and a separate synthetic
     classification set (4 other shape classes, standing in for ImageNet);
  2. pre-train a ResNet-18 GN backbone on the classification set  (tools/pretrain_backbone.py);
  3. train the tiny R18-FPN GN Mask R-CNN from scratch and from that backbone, evaluating box and
     mask AP every 50 iterations  (launch/submit.py --sweep launch/sweeps/demo.yaml --cluster local);
  4. plot AP-vs-iteration curves and the results table  (tools/plot_curves.py).
Everything goes to output/demo/.
"""
import logging
import os
import subprocess
import sys
import time

OUT = "output/demo"
log = logging.getLogger("demo")


def step(title, *cmd):
    log.info("==> %s\n    $ %s", title, " ".join(cmd))
    t = time.time()
    subprocess.run([sys.executable, *cmd], check=True)
    log.info("    done in %.0f s", time.time() - t)


def main():
    logging.basicConfig(level=logging.INFO, format="[demo %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("RETHINK_CACHE", os.path.abspath(os.path.join(OUT, "cache")))
    start = time.time()
    from rethink.data import get_dataset_spec
    from rethink.data.synthetic import make_synthetic_classification

    log.info("==> Generating the synthetic detection set and the classification set")
    train = get_dataset_spec("synthetic_coco_train")  # generated on first use
    get_dataset_spec("synthetic_coco_val")
    cls_dir = os.path.join(OUT, "classification")
    make_synthetic_classification(cls_dir, num_per_class=512, seed=0)
    log.info("    detection set: %s; classification set: %s", os.path.dirname(os.path.dirname(train.json_file)), cls_dir)
    step("Pre-training a ResNet-18 GN backbone on the classification set (the ImageNet stand-in)",
         "tools/pretrain_backbone.py", "--data", cls_dir, "--config", "configs/demo/pretrained_gn_r18_tiny.yaml",
         "--size", "32", "--min-scale", "0.35", "--epochs", "8", "--batch-size", "16", "--lr", "0.05", "--output", os.path.join(OUT, "backbone", "R-18-GN.pth"))
    step("Training the detector from scratch and from the pre-trained backbone (submitit, local executor)",
         "launch/submit.py", "--sweep", "launch/sweeps/demo.yaml", "--cluster", "local", "--wait")
    step("Plotting AP curves and the results table", "tools/plot_curves.py", os.path.join(OUT, "sweep"),
         "--out", os.path.join(OUT, "ap_curves"), "--title", "demo: tiny R18-FPN GN Mask R-CNN on synthetic shapes")
    summarize(start)


def summarize(start):
    import csv

    with open(os.path.join(OUT, "ap_curves_table.csv")) as f:
        rows = {r["init"]: r for r in csv.DictReader(f)}
    with open(os.path.join(OUT, "ap_curves.csv")) as f:
        curve = {}
        for r in csv.DictReader(f):
            curve.setdefault(int(r["iteration"]), {})[r["group"].split()[0]] = float(r["box_ap_mean"])
    lines = [f"Done in {(time.time() - start) / 60:.1f} min. Results in {OUT}/:",
             f"  {OUT}/ap_curves.png (+ .pdf, .csv)   box and mask AP vs iterations, scratch vs pre-trained",
             f"  {OUT}/ap_curves_table.md (+ .csv)    one row per run"]
    for init in ("scratch", "pretrained"):
        r = rows.get(init)
        if r:
            lines.append(f"  {init:>10}: final box AP {float(r['box_AP']):.1f}, mask AP {float(r['mask_AP']):.1f} "
                         f"(best box AP {float(r['box_AP_best']):.1f}) after {r['iters_done']} iterations")
    both = [(it, v) for it, v in sorted(curve.items()) if {"scratch", "pretrained"} <= set(v)]
    if both:
        lines.append("  box AP along the way (scratch / pre-trained): " +
                     ", ".join(f"it {it}: {v['scratch']:.1f} / {v['pretrained']:.1f}" for it, v in both))
    log.info("\n".join(lines))


if __name__ == "__main__":
    main()
