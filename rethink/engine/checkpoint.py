"""Checkpoints in the run directory (rethink.utils.rundir names them: one per checkpoint iteration,
a final one, and the pointer naming the one a resume starts from), all written atomically (temp file,
then rename), so a crash never leaves a truncated checkpoint or a pointer to a missing one.

A checkpoint holds the model (without DDP's "module." prefix), the optimizer, the number of
completed iterations, the seed, the RNG states of this rank, and the categories the model predicts
(``[{"id", "name"}]``, label i = entry i - 1: an evaluation maps labels back to a test json's ids
with them, rethink.data.categories).

A resume starts every rank from the same file: rank 0 chooses it (the one `last_checkpoint` names,
else the newest present), reads it whole and checks that it loads; a damaged one (truncated, garbage,
unreadable) is reported by name, moved aside to `<name>.damaged` and the next newer-first candidate is
tried. Rank 0 broadcasts the chosen path and the sha256 of its bytes; every rank hashes what it read
and a difference is an error naming both digests. Checkpoints present but none readable is an error,
never a silent start from iteration 0.
"""
import hashlib
import io
import logging
import os
import random
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..utils.atomic import atomic_torch_save
from ..utils.rundir import RunDir
from ..weights import load_weights
from . import comm

logger = logging.getLogger(__name__)


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def rng_state() -> dict:
    """RNG states as tensors and ints only, so checkpoints load with torch.load(weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": (torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    """Saves and loads the run's checkpoints. With `keep` > 0, each periodic save removes the older
    periodic checkpoints beyond the newest `keep`, except those at `protected` iterations (the fork
    points that shorter schedules branch from, SOLVER.CHECKPOINT_ITERS); the final one is never removed."""

    def __init__(self, model, output_dir: str, optimizer=None, save_to_disk: bool = True, scaler=None,
                 keep: int = 0, protected=(), categories: Optional[List[dict]] = None):
        self.model, self.optimizer, self.output_dir, self.save_to_disk = model, optimizer, output_dir, save_to_disk
        self.categories = categories  # saved with every checkpoint (the training set's)
        self.loaded_categories: Optional[List[dict]] = None  # those of the checkpoint / weights file loaded
        self.scaler = scaler  # AMP GradScaler: its scale must survive a resume too
        self.keep, self.protected = int(keep), {int(k) for k in protected}
        self.run = RunDir(output_dir)
        self.last_saved: Optional[Tuple[str, int]] = None  # (name, iteration) of this process's last save

    def path(self, name: str) -> str:
        return self.run.checkpoint_file(name)

    def save(self, name: str, iteration: int, **extra) -> Optional[str]:
        """Write checkpoint `name` (a file stem: rundir.checkpoint_name(k), rundir.FINAL_CHECKPOINT)
        holding `iteration` completed iterations, and point the resume pointer at it."""
        if not self.save_to_disk:
            return None
        data = {"model": unwrap(self.model).state_dict(), "iteration": iteration, "rng": rng_state(), **extra}
        if self.categories:
            data["categories"] = [{"id": int(c["id"]), "name": str(c["name"])} for c in self.categories]
        if self.optimizer is not None:
            data["optimizer"] = self.optimizer.state_dict()
        if self.scaler is not None:
            data["scaler"] = self.scaler.state_dict()
        path = self.path(name)
        atomic_torch_save(data, path)
        self.run.set_last_checkpoint(path)
        self.last_saved = (name, iteration)
        logger.info("Saved checkpoint %s (iteration %d)", path, iteration)
        if self.keep > 0:
            self._prune(path)
        return path

    def _prune(self, newest: str) -> None:
        """Remove periodic checkpoints beyond the newest `keep` (fork points and `newest` stay)."""
        periodic = [(k, p) for k, p in self.run.checkpoints() if k not in self.protected]
        for k, p in periodic[:-self.keep]:
            if p != newest:
                os.remove(p)
                logger.info("Removed checkpoint %s (SOLVER.CHECKPOINT_KEEP %d)", p, self.keep)

    def last_checkpoint(self) -> Optional[str]:
        """The checkpoint `last_checkpoint` names (None without that file); see RunDir.last_checkpoint."""
        return self.run.last_checkpoint()

    def candidates(self) -> List[str]:
        """Checkpoints a resume may start from, best first: the one `last_checkpoint` names, then the
        final one, then the periodic ones, newest first. A pointer to a missing file is reported."""
        found = []
        if self.run.has_last_checkpoint():
            try:
                found.append(self.run.last_checkpoint())
            except FileNotFoundError as e:
                logger.warning("%s; resuming from the newest readable checkpoint instead", e)
        elif self.run.checkpoints() or os.path.isfile(self.run.final_checkpoint):
            logger.warning("%s has checkpoints but no %s: resuming from the newest readable one", self.output_dir,
                           os.path.basename(self.run.last_checkpoint_file))
        if os.path.isfile(self.run.final_checkpoint):
            found.append(self.run.final_checkpoint)
        found += [p for _, p in reversed(self.run.checkpoints())]
        return list(dict.fromkeys(found))

    def choose(self) -> Tuple[Optional[str], Optional[str], Optional[dict]]:
        """Rank 0's choice: (path, sha256 of its bytes, its loaded dict), or (None, None, None) when there
        is no checkpoint at all. Damaged candidates are moved aside with a warning; raises
        RuntimeError when checkpoints exist and none is readable."""
        damaged = []
        for path in self.candidates():
            try:
                blob = _read(path)
                data = _load_bytes(blob)
                if not isinstance(data, dict) or "model" not in data:
                    raise ValueError("not a rethink training checkpoint (no 'model')")
            except Exception as e:  # truncated, garbage, unreadable: report it and try the next
                aside = path + ".damaged"
                logger.warning("Checkpoint %s is damaged (%s: %s): moved aside to %s; trying the previous one",
                               path, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "", aside)
                _move_aside(path, aside)
                damaged.append(path)
                continue
            if damaged or path != self._pointed():
                self.run.set_last_checkpoint(path)
            return path, hashlib.sha256(blob).hexdigest(), data
        if damaged:
            raise RuntimeError(f"{self.output_dir}: every checkpoint is damaged ({', '.join(damaged)}; moved aside "
                               "to *.damaged). Not starting from iteration 0 silently: remove the run directory's "
                               "checkpoints and last_checkpoint to train from the start")
        return None, None, None

    def _pointed(self) -> Optional[str]:
        try:
            return self.run.last_checkpoint()
        except FileNotFoundError:
            return None

    def load_checkpoint(self, path: str, data: Optional[dict] = None) -> dict:
        """Restore model (strict), optimizer and RNG from one of our checkpoints (`data`: its loaded
        dict, when already read); returns its dict."""
        if data is None:
            data = _load_bytes(_read(path))
        unwrap(self.model).load_state_dict(data["model"])
        if self.optimizer is not None and "optimizer" in data:
            self.optimizer.load_state_dict(data["optimizer"])
        if self.scaler is not None and "scaler" in data:
            self.scaler.load_state_dict(data["scaler"])
        if "rng" in data:
            set_rng_state(data["rng"])
        self.loaded_categories = data.get("categories")
        if self.categories and self.loaded_categories and [c["id"] for c in self.categories] != \
                [c["id"] for c in self.loaded_categories]:
            logger.warning("%s was trained on categories %s, the training set has %s", path,
                           [c["id"] for c in self.loaded_categories], [c["id"] for c in self.categories])
        logger.info("Resumed from %s (iteration %d)", path, data.get("iteration", 0))
        return data

    def resume_or_load(self, weights: str, resume: bool, min_backbone_match: Optional[float] = None) -> int:
        """With `resume` and a checkpoint in output_dir: restore it on every rank and return its
        iteration. Otherwise load `weights` (MODEL.WEIGHTS; any format rethink.weights reads; refused when
        it fills less than `min_backbone_match` of the backbone, MODEL.WEIGHTS_MIN_BACKBONE_MATCH) and
        return 0. A collective: call it on every rank."""
        if resume:
            choice = {"path": None}
            data = None
            if comm.is_main_process():
                try:
                    path, digest, data = self.choose()
                    choice = {"path": path, "sha256": digest}
                except Exception as e:
                    choice = {"error": f"{type(e).__name__}: {e}"}
            choice = comm.broadcast(choice)
            if "error" in choice:
                raise RuntimeError(f"resume from {self.output_dir} (rank 0 chose): {choice['error']}")
            if choice["path"]:
                data = self._agree(choice["path"], choice["sha256"], data)
                return int(self.load_checkpoint(choice["path"], data).get("iteration", 0))
            logger.info("No checkpoint in %s: starting from MODEL.WEIGHTS", self.output_dir)
        if weights:
            self.loaded_categories = load_weights(unwrap(self.model), weights, min_backbone_match).categories
        return 0

    def _agree(self, path: str, digest: str, data: Optional[dict]) -> dict:
        """Every rank's copy of rank 0's choice, checked: each hashes the bytes it read; rank 0 compares
        and every rank raises when any differs (naming rank, path and both digests)."""
        mine, problem = digest, None
        if not comm.is_main_process():
            try:
                blob = _read(path)
                mine = hashlib.sha256(blob).hexdigest()
                data = _load_bytes(blob) if mine == digest else None
            except Exception as e:
                mine, problem = None, f"{type(e).__name__}: {e}"
        seen = comm.gather_to_main((comm.get_rank(), mine, problem))
        verdict = None
        if comm.is_main_process():
            bad = [f"rank {r} read {'sha256 ' + h if h else 'nothing'}{' (' + p + ')' if p else ''}"
                   for r, h, p in seen if h != digest]
            if bad:
                verdict = (f"resume: the ranks read different bytes for {path}: rank 0 chose it with sha256 {digest}, "
                           f"{'; '.join(bad)}. Is the file system showing nodes different contents?")
        verdict = comm.broadcast(verdict)
        if verdict:
            raise RuntimeError(verdict)
        return data


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _load_bytes(blob: bytes) -> dict:
    if not blob:
        raise ValueError("empty file")
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def _move_aside(path: str, aside: str) -> None:
    try:
        os.replace(path, aside)
    except OSError as e:
        logger.warning("Could not move %s aside (%s)", path, e)


# --------------------------------------------------------------------------------------------------------------------
# A standard-head checkpoint as a Cascade R-CNN's (the paper's scratch models switch to cascade for their final
# 270k iterations, Sec. 5.1; rethink.cluster.branches starts such a branch from its standard-head trunk).
# --------------------------------------------------------------------------------------------------------------------
BOX_HEAD, BOX_PREDICTOR = "roi_heads.box_head.", "roi_heads.box_predictor."


def cascade_checkpoint_from_standard(data: dict, num_stages: int, seed: int, source: str = "<checkpoint>") -> dict:
    """A training checkpoint of a model with StandardROIHeads, made one of the same model with CascadeROIHeads
    of `num_stages` stages: every stage gets a copy of the trained box head (roi_heads.box_head.*) and class-score
    layer; the class-agnostic box regressors (4 outputs instead of 4 x classes) start as the predictor's own
    initialisation does (weights N(0, 0.001) drawn from a generator seeded with `seed`, bias 0). This is how the
    detectron2 golden fixture's cascade model was made from the standard one (enhanced/README.md); the paper does
    not say how its stages were initialised. Everything else (backbone, RPN, mask head, iteration, RNG, AMP scale)
    is kept; the optimizer state is dropped (its parameters differ): SGD's momentum restarts at the switch."""
    model = data["model"]
    reg = BOX_PREDICTOR + "bbox_pred.weight"
    if reg not in model:
        cascade = any(k.startswith(BOX_PREDICTOR + "0.") for k in model)
        raise ValueError(f"{source}: not a standard-head checkpoint (no {reg}"
                         f"{'; it already has cascade stages' if cascade else ''})")
    gen = torch.Generator().manual_seed(int(seed))
    width = model[reg].shape[1]
    out = {}
    for key, value in model.items():
        if key.startswith(BOX_HEAD):
            rest = key[len(BOX_HEAD):]
            out.update({f"{BOX_HEAD}{k}.{rest}": value.clone() for k in range(num_stages)})
        elif key.startswith(BOX_PREDICTOR + "cls_score."):
            rest = key[len(BOX_PREDICTOR):]
            out.update({f"{BOX_PREDICTOR}{k}.{rest}": value.clone() for k in range(num_stages)})
        elif not key.startswith(BOX_PREDICTOR + "bbox_pred."):
            out[key] = value
    for k in range(num_stages):
        weight = torch.empty(4, width, dtype=model[reg].dtype).normal_(0.0, 0.001, generator=gen)
        out[f"{BOX_PREDICTOR}{k}.bbox_pred.weight"] = weight
        out[f"{BOX_PREDICTOR}{k}.bbox_pred.bias"] = torch.zeros(4, dtype=model[reg].dtype)
    converted = {k: v for k, v in data.items() if k != "optimizer"}
    converted["model"] = out
    logger.info("%s: standard box head and class scores copied into %d cascade stages, class-agnostic box "
                "regressors initialised (seed %d), optimizer state dropped", source, num_stages, seed)
    return converted
