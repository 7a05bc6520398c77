"""The results table: one row per run, named first (its path relative to the folder searched, runs.name_runs;
the csv's last column "run" is its full path), with its axes, final and best box/mask AP, AP50/AP75, the
final test-time-augmentation box/mask AP (TEST.AUG: "bbox_TTA/AP", columns shown when a run has them),
iterations done (completed iterations, detectron2 runs converted, see rethink.runs), GPU-hours (empty for
detectron2 runs), and the paper's number with the delta where one applies (for the TTA AP too: the paper's
"+ test aug" numbers). PASCAL VOC runs (curves.is_voc_run) also get their VOC mAP ("bbox/AP50": final and best)
and the paper's VOC number (Sec. 5) with the delta. Keypoint runs (MODEL.KEYPOINT_ON) get their keypoint AP
("keypoints/AP": final, best, AP50, AP75) and the paper's (Figure 6) with the delta."""
import csv
import os
from typing import Dict, List, Sequence

from .curves import is_voc_run, reference_for
from .runs import AXES, Run

COLUMNS = ["name"] + list(AXES) + ["iters_done", "max_iter", "box_AP", "box_AP_best", "box_AP50", "box_AP75", "mask_AP",
                        "mask_AP_best", "mask_AP50", "mask_AP75", "box_AP_TTA", "mask_AP_TTA", "voc_mAP",
                        "voc_mAP_best", "kp_AP", "kp_AP_best", "kp_AP50", "kp_AP75",
                        "gpu_hours", "paper_box_AP", "delta_box", "paper_mask_AP", "delta_mask",
                        "paper_voc_mAP", "delta_voc", "paper_kp_AP", "delta_kp", "paper_source",
                        "paper_box_AP_TTA", "delta_box_TTA", "paper_mask_AP_TTA", "delta_mask_TTA", "paper_source_TTA",
                        "run"]


def _fmt(v):
    return "" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))


def run_row(run: Run) -> Dict[str, object]:
    row: Dict[str, object] = {"name": run.name or os.path.basename(run.path), **run.axes}
    gpu_hours = run.gpu_hours()
    row.update(iters_done=run.last_iteration, max_iter=run.max_iter,
               gpu_hours=None if gpu_hours is None else round(gpu_hours, 3), run=run.path)
    for task, short in (("bbox", "box"), ("segm", "mask"), ("keypoints", "kp")):
        evals = run.evals(f"{task}/AP")
        if not evals:
            continue
        last = evals[-1]
        row[f"{short}_AP"] = last[f"{task}/AP"]
        row[f"{short}_AP_best"] = max(e[f"{task}/AP"] for e in evals)
        row[f"{short}_AP50"] = last.get(f"{task}/AP50")
        row[f"{short}_AP75"] = last.get(f"{task}/AP75")
        tta = run.evals(f"{task}_TTA/AP")
        if tta:
            row[f"{short}_AP_TTA"] = tta[-1][f"{task}_TTA/AP"]
    voc = run.evals("bbox/AP50") if is_voc_run(run) else []
    if voc:
        row["voc_mAP"], row["voc_mAP_best"] = voc[-1]["bbox/AP50"], max(e["bbox/AP50"] for e in voc)
    for suffix, ref in (("", reference_for(run)), ("_TTA", reference_for(run, test_aug=True))):
        if ref is None or (suffix and f"box_AP{suffix}" not in row and f"mask_AP{suffix}" not in row):
            continue
        row[f"paper_source{suffix}"] = ref.source
        for short, col, value in (("box", "box_AP", ref.box_ap), ("mask", "mask_AP", ref.mask_ap),
                                  ("voc", "voc_mAP", ref.voc_map), ("kp", "kp_AP", ref.keypoint_ap)):
            row[f"paper_{col}{suffix}"] = value
            if value is not None and row.get(f"{col}{suffix}") is not None:
                row[f"delta_{short}{suffix}"] = round(row[f"{col}{suffix}"] - value, 2)
    return row


def build_table(runs: Sequence[Run]) -> List[Dict[str, object]]:
    return sorted((run_row(r) for r in runs), key=lambda r: tuple(str(r[a]) for a in AXES))


def write_table(rows: List[Dict[str, object]], out_prefix: str) -> Dict[str, str]:
    """Writes <out_prefix>.csv and <out_prefix>.md."""
    os.makedirs(os.path.dirname(out_prefix) or ".", exist_ok=True)
    paths = {"csv": out_prefix + ".csv", "md": out_prefix + ".md"}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})
    shown = [c for c in COLUMNS if c != "run" and any(r.get(c) not in (None, "") for r in rows)]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in shown) + " |" for r in rows]
    with open(paths["md"], "w") as f:
        f.write("\n".join(lines) + "\n")
    return paths
