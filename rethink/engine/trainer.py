"""The training loop (a plain loop + hooks, as detectron2's SimpleTrainer/DefaultTrainer) and
inference with COCO evaluation.

Determinism: before every step the torch / numpy / python RNGs are re-seeded from (SEED, iteration,
rank), and the data stream depends only on (SEED, iteration, rank layout). Nothing depends on
SOLVER.MAX_ITER, so a run resumed or forked at iteration k continues exactly as an uninterrupted run.
"""
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from tqdm import tqdm

from ..data import get_dataset_spec
from ..data.build import build_test_loader, build_train_loader
from ..data.categories import dataset_categories, label_to_category_id
from ..evaluation.build import build_evaluator
from ..evaluation.per_category import save_per_category_ap
from ..modeling import build_model
from ..modeling.tta import GeneralizedRCNNWithTTA
from ..utils.rundir import RunDir, checkpoint_name
from ..utils.signals import EvaluationStopped, current_stop_request
from ..visualization import DatasetImages, prediction_panels
from . import comm
from .checkpoint import Checkpointer, unwrap
from .hooks import EvalHook, IterationTimer, LRScheduler, MetricsWriter, PeriodicCheckpointer, PreciseBN
from .solver import build_optimizer, clip_gradients
from .train_loop import LOG_PERIOD, TrainerBase, agree_on_stop, check_finite
from .worker import create_ddp_model, rank_device

logger = logging.getLogger(__name__)
#: test images shown with their predictions in TensorBoard after each evaluation of a training
TENSORBOARD_IMAGES = 3


def seed_step(seed: int, iteration: int, rank: int) -> None:
    """Seed every RNG for one training step from (seed, iteration, rank) alone."""
    s = np.random.SeedSequence([seed, iteration, rank]).generate_state(2)
    torch.manual_seed(int(s[0]))
    np.random.seed(int(s[1]))
    random.seed(int(s[1]))


def to_device(sample: dict, device) -> tuple:
    target = {k: v.to(device, non_blocking=True) for k, v in sample["target"].items()}
    return sample["image"].to(device, non_blocking=True), target


class Trainer(TrainerBase):
    """The detection trainer: model, optimizer, data and hooks from a resolved config; trains from
    `start_iter` to SOLVER.MAX_ITER. `resume_or_load(resume)` picks the start; `train()` runs."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.device = rank_device(cfg.MODEL.DEVICE)
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        torch.manual_seed(cfg.SEED)  # the initial weights depend on SEED alone (same on every rank)
        self.model = model = create_ddp_model(build_model(cfg).to(self.device), self.device)
        self.optimizer = build_optimizer(cfg, unwrap(model))
        self.amp = cfg.SOLVER.AMP.ENABLED and self.device.type == "cuda"
        if cfg.SOLVER.AMP.ENABLED and not self.amp:
            logger.warning("SOLVER.AMP.ENABLED is set but the device is %s: training in float32", self.device)
        self.amp_dtype = getattr(torch, cfg.SOLVER.AMP.DTYPE)
        # float16 needs its losses scaled; bfloat16 has float32's exponent range and does not
        self.scaler = torch.amp.GradScaler("cuda") if self.amp and self.amp_dtype == torch.float16 else None
        # the categories the model learns (label i = entry i - 1), kept in every checkpoint
        self.categories = dataset_categories(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else None
        self.checkpointer = Checkpointer(model, cfg.OUTPUT_DIR, self.optimizer, save_to_disk=comm.is_main_process(),
                                         scaler=self.scaler, keep=cfg.SOLVER.CHECKPOINT_KEEP,
                                         protected=cfg.SOLVER.CHECKPOINT_ITERS, categories=self.categories)
        self.max_iter = cfg.SOLVER.MAX_ITER
        self._pending_losses: List[Dict[str, torch.Tensor]] = []

    def resume_or_load(self, resume: bool = True) -> int:
        self.start_iter = self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume,
                                                           self.cfg.MODEL.WEIGHTS_MIN_BACKBONE_MATCH)
        return self.start_iter

    def build_hooks(self) -> List:
        cfg = self.cfg
        hooks = [IterationTimer(), LRScheduler()]
        if cfg.TEST.PRECISE_BN.ENABLED:
            hooks.append(PreciseBN(cfg.TEST.EVAL_PERIOD, _BNForward(self.model), self._precise_bn_loader,
                                   cfg.TEST.PRECISE_BN.NUM_ITER))
        hooks.append(PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.CHECKPOINT_ITERS))
        hooks.append(EvalHook(cfg.TEST.EVAL_PERIOD, lambda: flatten_results(self.test())))
        if comm.is_main_process():
            hooks.append(MetricsWriter(cfg.OUTPUT_DIR, LOG_PERIOD))
        return hooks

    def _precise_bn_loader(self, iteration: int):
        """Training batches for PreciseBN, from a stream of their own (seed offset by the iteration)
        so the main data order is untouched; yields what the wrapped model takes."""
        loader = build_train_loader(self.cfg, self.rank, self.world_size, start_iter=0,
                                    seed=self.cfg.SEED + 1_000_003 * (iteration + 1))
        for batch in loader:
            images, targets = zip(*(to_device(s, self.device) for s in batch))
            yield _LossInputs(list(images), list(targets))

    def train(self) -> None:
        if not self.hooks:
            self.register_hooks(self.build_hooks())
        self.data_iter = iter(build_train_loader(self.cfg, self.rank, self.world_size, start_iter=self.start_iter))
        super().train(self.start_iter, self.max_iter)

    def run_step(self) -> None:
        t0 = time.perf_counter()
        batch = next(self.data_iter)
        # seeded after fetching: starting a DataLoader iterator draws from the global RNG
        seed_step(self.cfg.SEED, self.iter, self.rank)
        images, targets = zip(*(to_device(s, self.device) for s in batch))
        data_time = time.perf_counter() - t0
        autocast = torch.autocast("cuda", dtype=self.amp_dtype) if self.amp else nullcontext()
        with autocast:
            loss_dict = self.model(list(images), list(targets))
        losses = sum(loss_dict.values())
        # no CPU-GPU sync between forward and backward: the losses are reduced for logging only every
        # LOG_PERIOD steps, and the finiteness check is one reduced flag after backward, before the update
        self.optimizer.zero_grad(set_to_none=True)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        (self.scaler.scale(losses) if self.scaler is not None else losses).backward()
        self.stop_agreed = check_finite(loss_dict, self.iter + 1, f"The last good checkpoint in {self.cfg.OUTPUT_DIR} "
                                        "is kept.", stop=self.stop_request.signum)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
            clip_gradients(self.cfg, params)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            clip_gradients(self.cfg, params)
            self.optimizer.step()
        self._pending_losses.append({k: v.detach() for k, v in loss_dict.items()})
        if self._log_due(self.completed):
            self._put_losses()
        self.storage.put_scalar("data_time", data_time)
        self.storage.put_scalar("world_size", self.world_size, smoothing=False)

    def save_for_stop(self):
        """The checkpoint after `completed` iterations (unless the periodic or final one was just
        written there: a stop during the evaluation after it)."""
        done, last = self.completed, self.checkpointer.last_saved
        if last is not None and last[1] == done:
            return self.checkpointer.path(last[0]) if comm.is_main_process() else None
        return self.checkpointer.save(checkpoint_name(done), done, seed=self.cfg.SEED)

    def _log_due(self, done: int) -> bool:
        eval_period = self.cfg.TEST.EVAL_PERIOD
        return done % LOG_PERIOD == 0 or done >= self.max_iter or (eval_period > 0 and done % eval_period == 0)

    def _put_losses(self) -> None:
        """The losses of the steps since the last log, averaged over ranks in one reduction."""
        keys = sorted(self._pending_losses[0])
        stacked = torch.stack([torch.stack([d[k].float() for k in keys]) for d in self._pending_losses])
        for row in comm.reduce_mean_tensor(stacked).tolist():
            self.storage.put_scalars(total_loss=sum(row), **dict(zip(keys, row)))
        self._pending_losses = []

    def test(self) -> Dict[str, Dict[str, Dict[str, float]]]:
        """COCO evaluation of the current model on every DATASETS.TEST; results on rank 0. With
        TEST.AUG.ENABLED the final evaluation (at SOLVER.MAX_ITER) adds test-time augmentation's."""
        tta = self.cfg.TEST.AUG.ENABLED and self.completed >= self.max_iter
        return evaluate(self.cfg, unwrap(self.model), self.device, tta=tta, categories=self.categories,
                        visualize=self._log_predictions)

    def _log_predictions(self, name: str, evaluator) -> None:
        """The first TENSORBOARD_IMAGES images of test set `name`: predictions (score >= 0.5) beside the
        ground truth, to TensorBoard with this evaluation's metrics (MetricsWriter). Rank 0."""
        try:
            panels = prediction_panels(DatasetImages.from_name(name), evaluator.image_results, TENSORBOARD_IMAGES)
        except (OSError, ValueError, KeyError) as e:  # an unreadable image: the evaluation's numbers stand
            logger.warning("No prediction images of %s for TensorBoard: %s", name, e)
            return
        for image_id, panel in panels:
            self.storage.put_image(f"{name}/predictions/{image_id}", panel)


class _LossInputs:
    """A batch for fvcore's update_bn_stats, which calls model(inputs)."""

    def __init__(self, images, targets):
        self.images, self.targets = images, targets


class _BNForward(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs: _LossInputs):
        return self.model(inputs.images, inputs.targets)


def inference_on_dataset(model, loader, evaluator, device) -> dict:
    """Run `model` over this rank's shard of `loader`, feed `evaluator`, return its results. Masks are
    pasted on the device; their RLE encoding (evaluator.process) runs in a thread, overlapped with the
    next images' inference. A progress bar on rank 0.

    Under a StopRequest (utils.signals: the training's, or --eval-only's), a stop signal ends it after
    the batch in progress, on every rank at the same batch: the ranks agree (train_loop.agree_on_stop)
    before the first batch, after each of the first `common` batches (the shortest shard's length, so
    every rank makes the same number of calls) and after the last; then every rank raises
    EvaluationStopped, before the evaluator gathers or evaluates anything. Each agreement is one
    all-max of 2 integers (gloo: 0.7 ms measured on 2 busy CPU cores) against a batch's forward of
    tens of milliseconds (GPU) to a second (CPU); none on one process."""
    was_training = model.training
    model.eval()
    evaluator.reset()
    request, total = current_stop_request(), len(loader)

    def stop_if_agreed(done: int, *values: int) -> List[int]:
        signum, maxima = agree_on_stop(request.signum, device, *values)
        if signum:
            raise EvaluationStopped(signum, done, total, tuple(request.received))
        return maxima

    pending = []
    try:
        with torch.no_grad(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="coco-encode") as encoder:
            try:
                common = -stop_if_agreed(0, -total)[0] if request is not None else 0
                for n, batch in enumerate(tqdm(loader, desc="inference", disable=not comm.is_main_process(),
                                               mininterval=10), 1):
                    images = [s["image"].to(device, non_blocking=True) for s in batch]
                    outputs = model(images, output_sizes=[(s["height"], s["width"]) for s in batch])
                    outputs = [{k: v.cpu() for k, v in o.items()} for o in outputs]  # masks: pasted, bool
                    pending.append(encoder.submit(evaluator.process, [s["image_id"] for s in batch], outputs))
                    if len(pending) > 4:  # bounded: at most a few images' masks wait in memory
                        pending.pop(0).result()
                    if n <= common:
                        stop_if_agreed(n)
                for p in pending:
                    p.result()  # re-raises an encoding error here
                if request is not None:
                    stop_if_agreed(total)
            except EvaluationStopped:
                encoder.shutdown(wait=True, cancel_futures=True)  # the queued encodings are not needed
                raise
    finally:
        model.train(was_training)
    return evaluator.evaluate()


def write_detections(cfg, name: str, evaluator, tta: bool = False, visualize: Optional[Callable] = None) -> None:
    """Rank 0, after test set `name`'s evaluation: its detections to the run directory
    (RunDir.coco_results_file: COCO results format, as detectron2's COCOEvaluator writes), then
    `visualize(name, evaluator)` when given. Evaluators without COCO results (VOC) write nothing."""
    if not comm.is_main_process() or not hasattr(evaluator, "save_results"):
        return
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    evaluator.save_results(RunDir(cfg.OUTPUT_DIR).coco_results_file(name if len(cfg.DATASETS.TEST) > 1 else None,
                                                                    tta))
    if visualize is not None:
        visualize(name, evaluator)


def evaluate(cfg, model, device, tta: Optional[bool] = None, categories: Optional[List[dict]] = None,
             visualize: Optional[Callable] = None) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{dataset: {"bbox": {...}, "segm": {...}}} on rank 0 ({} elsewhere). With `tta` (default
    TEST.AUG.ENABLED) the model wrapped in test-time augmentation (modeling/tta.py) is evaluated too,
    its tasks under detectron2's suffix: {"bbox_TTA": {...}, "segm_TTA": {...}} (flat "bbox_TTA/AP").
    `categories`: what the model was trained on ([{"id", "name"}] by label: the training set's, or a
    checkpoint's); each test json's ids are matched to them (data.categories.label_to_category_id), so a
    test json that numbers or orders them differently is evaluated right. None: the test json's sorted ids.
    Rank 0 writes each test set's detections (write_detections; `visualize(name, evaluator)` is called
    after the plain model's) and the AP per category (RunDir.per_category_ap_file) to OUTPUT_DIR."""
    tta = cfg.TEST.AUG.ENABLED if tta is None else tta
    tasks = ("bbox",) + (("segm",) if cfg.MODEL.MASK_ON else ()) + (("keypoints",) if cfg.MODEL.KEYPOINT_ON else ())
    results = {}
    for name in cfg.DATASETS.TEST:
        loader = build_test_loader(cfg, name, comm.get_rank(), comm.get_world_size())
        spec = get_dataset_spec(name)
        coco = spec.evaluator_type == "coco"
        evaluator = build_evaluator(spec, cfg.TEST.EVALUATOR, tasks, gather=comm.gather_to_main,
                                    is_main=comm.is_main_process(),  # COCO AP, or VOC mAP for VOC datasets
                                    contiguous_to_cat=label_to_category_id(categories, dataset_categories(name),
                                                                           spec.json_file) if coco else None,
                                    kpt_oks_sigmas=cfg.TEST.KEYPOINT_OKS_SIGMAS)
        results[name] = inference_on_dataset(model, loader, evaluator, device)
        write_detections(cfg, name, evaluator, visualize=visualize)
        if tta:
            logger.info("Running inference with test-time augmentation on %s ...", name)
            augmented = inference_on_dataset(GeneralizedRCNNWithTTA(cfg, model), loader, evaluator, device)
            results[name].update({f"{task}_TTA": v for task, v in augmented.items()})
            write_detections(cfg, name, evaluator, tta=True)
    if comm.is_main_process():
        run = RunDir(cfg.OUTPUT_DIR)
        save_per_category_ap(run.per_category_ap_file("json"), run.per_category_ap_file("md"), results)
    return results if comm.is_main_process() else {}


def flatten_results(results: Dict[str, Dict[str, Dict[str, float]]]) -> Dict[str, float]:
    """{"bbox/AP": ..} for one test set; "<dataset>/bbox/AP" when there are several. Undefined
    metrics (None) are left out."""
    flat = {}
    for name, tasks in results.items():
        prefix = f"{name}/" if len(results) > 1 else ""
        for task, metrics in (tasks or {}).items():
            for metric, value in metrics.items():
                if value is not None:  # undefined (no ground truth in that slice)
                    flat[f"{prefix}{task}/{metric}"] = value
    return flat
