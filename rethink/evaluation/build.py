"""The evaluator of a test dataset, chosen by its kind (detectron2's metadata ``evaluator_type``): COCO AP
for COCO-format datasets, VOC mAP for PASCAL VOC ones (rethink.data.voc, and their subsets)."""
from typing import Any, Callable, List, Mapping, Optional, Sequence

from .coco import COCOEvaluator
from .voc import PascalVOCDetectionEvaluator


def build_evaluator(spec, backend: str, tasks: Sequence[str],
                    gather: Optional[Callable[[Any], Optional[List[Any]]]] = None, is_main: bool = True,
                    contiguous_to_cat: Optional[Mapping[int, int]] = None, kpt_oks_sigmas: Sequence[float] = ()):
    """The evaluator for `spec` (a rethink.data.DatasetSpec: its json_file, name and evaluator_type).
    `contiguous_to_cat`: {label: category id of the json} (COCO; default its sorted ids); `kpt_oks_sigmas`:
    TEST.KEYPOINT_OKS_SIGMAS (COCO; empty: COCO's)."""
    kind = spec.evaluator_type
    if kind == "pascal_voc":
        extra = [t for t in tasks if t != "bbox"]
        if extra:
            raise ValueError(f"dataset {spec.name}: PASCAL VOC evaluation has boxes only, not {extra} "
                             f"(set MODEL.MASK_ON False for VOC: detectron2's PascalVOC-Detection configs do)")
        return PascalVOCDetectionEvaluator(spec.json_file, gather=gather, is_main=is_main, dataset_name=spec.name)
    if kind != "coco":
        raise ValueError(f"dataset {spec.name}: unknown evaluator type {kind!r} ('coco' or 'pascal_voc')")
    return COCOEvaluator(spec.json_file, backend=backend, tasks=tasks, gather=gather, is_main=is_main,
                         contiguous_to_cat=contiguous_to_cat, kpt_oks_sigmas=kpt_oks_sigmas)
