"""AP-vs-iteration curves as in the paper's Figures 1 and 4: box AP and mask AP against
iterations (and in units of "1x"), one line per setting (mean over seeds, min-max band), LR drops
marked, the paper's final number for a matching setting drawn as a star at the end of its schedule, and
the test-time-augmentation AP of the final evaluation (TEST.AUG, "bbox_TTA/AP") as an open diamond.
PASCAL VOC runs (every DATASETS.TEST a VOC dataset) plot VOC mAP ("bbox/AP50", the paper's VOC metric, with
its Sec. 5 numbers as stars) and box AP over IoU 0.5:0.95 instead."""
import csv
import json
import logging
import os
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..data.voc import is_voc_dataset
from .paper import lookup
from .runs import AXES, Run, config_settings

logger = logging.getLogger(__name__)
TASKS = (("bbox/AP", "box AP", "box_ap"), ("segm/AP", "mask AP", "mask_ap"))
# (metric, axis label, csv prefix = the paper.Reference field drawn as a star)
VOC_TASKS = (("bbox/AP50", "VOC mAP (AP at IoU 0.5)", "voc_map"), ("bbox/AP", "box AP (IoU 0.5:0.95)", "box_ap"))
KEYPOINT_TASK = ("keypoints/AP", "keypoint AP", "keypoint_ap")  # plotted for runs that have it (MODEL.KEYPOINT_ON)


def is_keypoint_run(run: Run) -> bool:
    """A keypoint run: MODEL.KEYPOINT_ON in its config (its paper numbers are Figure 6's keypoint AP)."""
    model = run.raw.get("MODEL")
    return isinstance(model, dict) and model.get("KEYPOINT_ON") is True


def is_voc_run(run: Run) -> bool:
    """A PASCAL VOC run: every DATASETS.TEST entry is a VOC dataset (detectron2's voc_* names, their subsets,
    or one registered with rethink.data.voc.register_pascal_voc in this process)."""
    datasets = run.raw.get("DATASETS")
    test = datasets.get("TEST") if isinstance(datasets, dict) else None
    test = [test] if isinstance(test, str) else list(test or [])
    return bool(test) and all(str(n).startswith("voc_") or is_voc_dataset(str(n)) for n in test)


def tta_key(key: str) -> str:
    """The test-time-augmentation metric of `key` (detectron2's suffix): "bbox/AP" -> "bbox_TTA/AP"."""
    task, metric = key.split("/", 1)
    return f"{task}_TTA/{metric}"


#: config keys that differ between the seeds of one setting (never a reason to draw two curves)
PER_SEED_KEYS = ("SEED", "OUTPUT_DIR")


def _leaves(node, prefix: str = "") -> Dict[str, str]:
    """{dotted key: value as JSON} of a config mapping (lists and tuples alike)."""
    if isinstance(node, dict):
        out: Dict[str, str] = {}
        for k, v in node.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(node, sort_keys=True, default=str)}


def other_settings(runs: Sequence[Run]) -> List[str]:
    """Config keys, beyond the axes, that set apart runs sharing every axis but the seed (a swept
    SOLVER.BASE_LR, say): two runs that both write the key with different values (a key one run lacks,
    an older or partial config, sets nothing apart)."""
    by_axes: Dict[tuple, List[Dict[str, str]]] = defaultdict(list)
    for r in runs:
        by_axes[tuple(str(r.axes[a]) for a in AXES if a != "seed")].append(_leaves(r.raw))
    keys = set()
    for configs in by_axes.values():
        for key in set().union(*configs) - set(PER_SEED_KEYS) - keys:
            if len({c[key] for c in configs if key in c}) > 1:
                keys.add(key)
    return sorted(keys)


def _short_names(keys: Sequence[str]) -> Dict[str, str]:
    """Each key's last part ("BASE_LR"), the whole key where two keys end alike."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last)}


def _names_label(members: Sequence[Run]) -> str:
    """A curve named by its runs: the run's name, or what the seeds' names share."""
    names = sorted(r.name or os.path.basename(r.path) for r in members)
    if len(names) == 1:
        return names[0]
    common = os.path.commonpath(names) if all(not os.path.isabs(n) for n in names) else ""
    return common or " + ".join(names)


def group_runs(runs: Sequence[Run]) -> Tuple[Dict[str, List[Run]], Dict[str, object]]:
    """Groups runs by every axis but the seed, and by the other config keys that set runs apart
    (other_settings). Returns ({label: runs}, {axis: value} shared by all): labels name what differs
    between the curves (varying axes, then KEY=value), the shared axes go to the title; when nothing
    differs, the one curve is named by its runs (their names, see runs.name_runs)."""
    axes = [r.axes for r in runs]
    shared = {a: axes[0][a] for a in AXES if a != "seed" and all(x[a] == axes[0][a] for x in axes)}
    others = other_settings(runs)
    short = _short_names(others)
    groups: Dict[str, List[Run]] = defaultdict(list)
    for r, ax in zip(runs, axes):
        varying = [f"{ax[a]}" if a in ("init", "norm", "schedule") else f"{a}={ax[a]}"
                   for a in AXES if a != "seed" and a not in shared]
        leaves = _leaves(r.raw)
        varying += [f"{short[k]}={json.loads(leaves[k]) if k in leaves else '?'}" for k in others]
        groups[" ".join(varying)].append(r)
    if list(groups) == [""]:
        groups = {_names_label(runs): list(runs)}
    return dict(sorted(groups.items())), shared


def aggregate(runs: List[Run], key: str):
    """Iterations and (mean, min, max, n) of `key` over the runs (seeds) that have each iteration."""
    by_iter = defaultdict(list)
    for r in runs:
        for m in r.evals(key):
            by_iter[int(m["iteration"])].append(float(m[key]))
    its = sorted(by_iter)
    vals = [by_iter[i] for i in its]
    return (np.array(its), np.array([np.mean(v) for v in vals]), np.array([min(v) for v in vals]),
            np.array([max(v) for v in vals]), np.array([len(v) for v in vals]))


def reference_for(run: Run, test_aug: bool = False):
    """The paper's number for `run` (its settings, and from its config the cascade heads, train-time
    augmentation, the less-data recipe and ResNeXt), or None; `test_aug`: the one for its *_TTA metrics."""
    ax = run.axes
    if is_voc_run(run):
        return lookup(ax["depth"], ax["norm"], ax["init"], test_aug=test_aug, dataset="voc", **config_settings(run.raw))
    if is_keypoint_run(run):  # Figure 6 says nothing of train-time augmentation: matched with or without
        if ax["train"] != "keypoints_coco_2017_train":
            return None
        return lookup(ax["depth"], ax["norm"], ax["init"], run.schedule_x, test_aug=test_aug,
                      dataset="coco_keypoints", **{**config_settings(run.raw), "train_aug": False})
    if ax["train"] != "coco_2017_train" and run.train_images is None:
        return None
    return lookup(ax["depth"], ax["norm"], ax["init"], run.schedule_x if run.train_images is None else None,
                  run.train_images, test_aug=test_aug, **config_settings(run.raw))


def plot_curves(runs: Sequence[Run], out_prefix: str, title: str = "") -> Dict[str, str]:
    """Writes <out_prefix>.png, .pdf and .csv; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups, shared = group_runs(runs)
    has_mask = any(r.evals("segm/AP") for r in runs)
    voc = [is_voc_run(r) for r in runs]
    if any(voc) and not all(voc):
        logger.warning("plotting PASCAL VOC and COCO runs together: box AP only (plot VOC runs apart for VOC mAP)")
    tasks = VOC_TASKS if all(voc) else TASKS if has_mask else TASKS[:1]
    if any(r.evals(KEYPOINT_TASK[0]) for r in runs):
        tasks = tasks + (KEYPOINT_TASK,)
    fig, axes = plt.subplots(1, len(tasks), figsize=(8.8 * len(tasks), 4.8), squeeze=False, layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    rows = {}
    with_tta = set()
    for t, (key, name, prefix) in enumerate(tasks):
        ax = axes[0][t]
        for g, (label, members) in enumerate(groups.items()):
            color = colors[g % len(colors)]
            its, mean, lo, hi, n = aggregate(members, key)
            if len(its) == 0:
                continue
            seeds = len({r.axes["seed"] for r in members})
            ax.plot(its, mean, "-o", color=color, ms=3, label=f"{label}" + (f" ({seeds} seeds)" if seeds > 1 else ""))
            if seeds > 1:
                ax.fill_between(its, lo, hi, color=color, alpha=0.2, lw=0)
            for step in sorted({s for r in members for s in r.steps}):
                ax.axvline(step, color=color, ls=":", lw=1)
            t_its, t_mean, t_lo, t_hi, t_n = aggregate(members, tta_key(key))
            if len(t_its):
                ax.plot(t_its, t_mean, "D", color=color, ms=8, mfc="none", label=f"{label} TTA")
                with_tta.add(prefix)
            ref = reference_for(members[0])
            ref_value = getattr(ref, prefix, None) if ref else None
            if ref_value is not None:
                ax.plot([members[0].max_iter], [ref_value], "*", color=color, ms=12, mec="black",
                        label=f"paper {ref.source}: {ref_value}")
            for i in range(len(its)):
                row = rows.setdefault((label, int(its[i])), {
                    "group": label, "iteration": int(its[i]), "x_1x": round(its[i] / members[0].unit, 6),
                    "n_seeds": int(n[i])})
                row[f"{prefix}_mean"], row[f"{prefix}_min"], row[f"{prefix}_max"] = (
                    round(float(mean[i]), 4), round(float(lo[i]), 4), round(float(hi[i]), 4))
            for i in range(len(t_its)):  # the final evaluation's TTA AP on the same row (after n_seeds is set)
                row = rows.setdefault((label, int(t_its[i])), {
                    "group": label, "iteration": int(t_its[i]), "x_1x": round(t_its[i] / members[0].unit, 6),
                    "n_seeds": int(t_n[i])})
                row[f"{prefix}_tta_mean"], row[f"{prefix}_tta_min"], row[f"{prefix}_tta_max"] = (
                    round(float(t_mean[i]), 4), round(float(t_lo[i]), 4), round(float(t_hi[i]), 4))
        units = {r.unit for r in runs}
        ax.set_xlabel("iterations")
        ax.set_ylabel(f"{name} (%)")
        if len(units) == 1:  # runs at different batch sizes have different "1x": no common top axis then
            unit = units.pop()
            top = ax.secondary_xaxis("top", functions=(lambda x, u=unit: x / u, lambda x, u=unit: x * u))
            top.set_xlabel('iterations in units of "1x"')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations are whole numbers
        ax.grid(alpha=0.3)
        # beside the axes, where it hides no point (constrained layout makes room for it)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    shared_txt = ", ".join(f"{k}={v}" for k, v in shared.items())
    fig.suptitle((title + "\n" if title else "") + shared_txt + "   (dotted: LR drops)", fontsize=10)
    os.makedirs(os.path.dirname(out_prefix) or ".", exist_ok=True)
    paths = {"png": out_prefix + ".png", "pdf": out_prefix + ".pdf", "csv": out_prefix + ".csv"}
    fig.savefig(paths["png"], dpi=120)
    fig.savefig(paths["pdf"])
    plt.close(fig)
    stats = [f"{p}_{s}" for _, _, p in tasks for s in ("mean", "min", "max")]
    stats += [f"{p}_tta_{s}" for _, _, p in tasks if p in with_tta for s in ("mean", "min", "max")]
    fields = ["group", "iteration", "x_1x", "n_seeds"] + stats
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows[k] for k in sorted(rows))
    logger.info("Wrote %s", ", ".join(paths.values()))
    return paths
