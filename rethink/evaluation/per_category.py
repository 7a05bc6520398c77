"""AP per category, as detectron2 prints it after each evaluation ("Per-category bbox AP:", a table of
category: AP in three pairs of columns), and the run directory's copy of the last evaluation's
(RunDir.per_category_ap_file: a json {test set: {task: {category: AP}}} and the same tables in markdown).

The values are the evaluator's "AP-<category name>" metrics (percent; None where undefined: a category
without ground truth in the test set), shown as "-" in the tables."""
import json
import logging
from typing import Dict, List, Mapping, Optional

from ..utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)

PREFIX = "AP-"


def per_category_ap(metrics: Mapping[str, Optional[float]]) -> Dict[str, Optional[float]]:
    """{category name: AP} from one task's metrics, in the evaluator's order."""
    return {k[len(PREFIX):]: v for k, v in metrics.items() if k.startswith(PREFIX)}


def format_per_category_table(metrics: Mapping[str, Optional[float]], pairs: int = 3) -> str:
    """A markdown table of category | AP, `pairs` pairs of columns per row (detectron2's layout); "" when the
    metrics hold no per-category AP."""
    items = list(per_category_ap(metrics).items())
    if not items:
        return ""
    pairs = max(1, min(pairs, len(items)))
    cells = [(name, "-" if ap is None else f"{ap:.3f}") for name, ap in items]
    cells += [("", "")] * (-len(cells) % pairs)
    name_w = max(len("category"), *(len(n) for n, _ in cells))
    ap_w = max(len("AP"), *(len(a) for _, a in cells))
    head = "| " + " | ".join(f"{'category':<{name_w}} | {'AP':<{ap_w}}" for _ in range(pairs)) + " |"
    rule = "|" + "|".join(f":{'-' * name_w}-|:{'-' * ap_w}-" for _ in range(pairs)) + "|"
    lines = [head, rule]
    for r in range(0, len(cells), pairs):
        lines.append("| " + " | ".join(f"{n:<{name_w}} | {a:<{ap_w}}" for n, a in cells[r:r + pairs]) + " |")
    return "\n".join(lines)


def per_category_report(results: Mapping[str, Mapping[str, Mapping[str, Optional[float]]]]):
    """({test set: {task: {category: AP}}}, markdown with a section per test set and task) of an evaluation's
    {test set: {task: metrics}}; tasks without per-category AP are left out."""
    data: Dict[str, Dict[str, Dict[str, Optional[float]]]] = {}
    sections: List[str] = []
    for dataset, tasks in results.items():
        for task, metrics in (tasks or {}).items():
            table = format_per_category_table(metrics)
            if not table:
                continue
            data.setdefault(dataset, {})[task] = per_category_ap(metrics)
            sections.append(f"## {dataset}: {task} AP per category\n\n{table}\n")
    return data, "\n".join(sections)


def save_per_category_ap(json_path: str, md_path: str, results) -> bool:
    """Write the per-category AP of an evaluation's {test set: {task: metrics}} to `json_path` and `md_path`
    (atomically); False (nothing written) when there is none."""
    data, markdown = per_category_report(results)
    if not data:
        return False
    atomic_write_text(json_path, json.dumps(data, indent=1))
    atomic_write_text(md_path, markdown)
    logger.info("Per-category AP saved to %s and %s", json_path, md_path)
    return True
