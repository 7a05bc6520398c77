"""The GPU check behind benchmarks/gpu_check.sh: what an 8-GPU job will hit, on one GPU, in one table.

    bash benchmarks/gpu_check.sh                 # on the GPU machine (installs the carried wheels first)
    python benchmarks/gpu_check.py --tiny --device cpu   # the same steps, tiny, on a CPU (what CI runs)

Rows (R50-FPN GN Mask R-CNN, 800 x 1333 inputs, generated COCO-like data, 1 rank, 2 images/iteration):
  train fp32 / fp16 / bf16   s/iter (median of the timed steps after warm-up) and peak GPU memory
  train SyncBN (world 1)     the SyncBN config with nn.SyncBatchNorm swapped in (a 1-rank NCCL group)
  eval                       inference + grid_sample paste on the GPU + RLE + COCO AP on 200 images: s/image
  SIGUSR2 mid-run            tools/train.py gets SLURM's timeout signal: how it exits, which checkpoint
                             is left, and whether --resume finishes the run (iterations redone = lost work)
Each row says "ok" or the error, so one run shows everything; the script never stops at the first failure.
"""
import argparse
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import torch

from rethink.config import load_config
from rethink.data import make_synthetic_coco
from rethink.data.build import build_train_loader
from rethink.engine import comm
from rethink.engine.events import EventStorage
from rethink.engine.solver import build_optimizer, set_lr
from rethink.engine.trainer import Trainer, evaluate, flatten_results
from rethink.modeling.norm import to_torch_syncbn

log = logging.getLogger("gpu_check")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def overrides(args, out_dir, **extra):
    size = ["INPUT.MIN_SIZE_TRAIN", "(800,)", "INPUT.MAX_SIZE_TRAIN", "1333", "INPUT.MIN_SIZE_TEST", "800",
            "INPUT.MAX_SIZE_TEST", "1333"]
    if args.tiny:  # the demo's tiny detector (configs/demo/scratch_gn_r18_tiny.yaml) at its 128-256 px
        size = []
    o = size + ["MODEL.DEVICE", args.device, "MODEL.ROI_HEADS.NUM_CLASSES", "3",
                "DATASETS.TRAIN", "('coco_2017_train',)", "DATASETS.TEST", "('coco_2017_val',)",
                "SOLVER.IMS_PER_BATCH", "2", "SOLVER.REFERENCE_IMS_PER_BATCH", "0",
                "SOLVER.BASE_LR", "0.002", "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", str(args.workers),
                "TEST.EVAL_PERIOD", "0", "SEED", "0", "OUTPUT_DIR", out_dir]
    for k, v in extra.items():
        o += [k.replace("__", "."), str(v)]
    return o


def timed_steps(cfg, n_warm: int, n_timed: int, syncbn: bool = False):
    """(median s/iter, peak memory in GiB) of `n_timed` training steps after `n_warm`."""
    trainer = Trainer(cfg)
    if syncbn and trainer.device.type == "cuda":  # what Trainer does on CUDA with several ranks
        trainer.model = to_torch_syncbn(trainer.model)
        trainer.optimizer = build_optimizer(cfg, trainer.model)
    trainer.data_iter = iter(build_train_loader(cfg))
    trainer.storage = EventStorage(0)
    set_lr(trainer.optimizer, cfg.SOLVER.BASE_LR)
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(n_warm + n_timed):
        trainer.iter = i
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.run_step()
        if cuda:
            torch.cuda.synchronize()
        if i >= n_warm:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
    return trainer, statistics.median(times), peak


def signal_check(args, config, out_dir, env):
    """tools/train.py with periodic checkpoints; SIGUSR2 once it has passed `stop_at`; then --resume."""
    iters, period, stop_at = (12, 4, 6) if args.tiny else (60, 20, 30)
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train.py"), "--config", config, "{resume}",
           *overrides(args, out_dir, SOLVER__MAX_ITER=iters, SOLVER__CHECKPOINT_PERIOD=period,
                      SOLVER__STEPS=(iters - 1,))]
    first, again = [c for c in cmd if c != "{resume}"], [c if c != "{resume}" else "--resume" for c in cmd]
    proc = subprocess.Popen(first, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = os.path.join(out_dir, "metrics.jsonl")
    deadline = time.time() + args.signal_timeout
    done = 0
    while proc.poll() is None and time.time() < deadline:
        done = len(open(metrics).read().splitlines()) if os.path.isfile(metrics) else 0
        last = open(os.path.join(out_dir, "last_checkpoint")).read().strip() \
            if os.path.isfile(os.path.join(out_dir, "last_checkpoint")) else ""
        if last and int(last[6:13] or 0) >= stop_at:
            break
        time.sleep(0.5)
    signalled_after = open(os.path.join(out_dir, "last_checkpoint")).read().strip() \
        if os.path.isfile(os.path.join(out_dir, "last_checkpoint")) else "none"
    proc.send_signal(signal.SIGUSR2)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    left = open(os.path.join(out_dir, "last_checkpoint")).read().strip() \
        if os.path.isfile(os.path.join(out_dir, "last_checkpoint")) else "none"
    resumed = subprocess.run(again, env=env, capture_output=True, text=True, timeout=args.signal_timeout)
    finished = os.path.isfile(os.path.join(out_dir, "model_final.pth"))
    return (f"exit {proc.returncode} after SIGUSR2 (checkpoint then: {signalled_after}, left: {left}); "
            f"--resume exit {resumed.returncode}, model_final {'written' if finished else 'MISSING'}"
            f"{'' if resumed.returncode == 0 else ': ' + resumed.stderr[-300:]}"), done


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="R18 at 128-256 px, few steps and images (CPU smoke test)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--steps", type=int, default=20, help="timed training steps per precision (after 5 warm-up)")
    p.add_argument("--eval-images", type=int, default=200)
    p.add_argument("--signal-timeout", type=float, default=300)
    p.add_argument("--work-dir", default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    if args.tiny:
        args.steps, args.eval_images, args.workers = min(args.steps, 2), min(args.eval_images, 4), 0
    work = args.work_dir or tempfile.mkdtemp(prefix="gpu_check_")
    env = dict(os.environ, RETHINK_CACHE=os.path.join(work, "cache"))
    os.environ["RETHINK_CACHE"] = env["RETHINK_CACHE"]
    t0 = time.time()
    side = (96, 160) if args.tiny else (640, 1000)  # resized to short side 800 (128 tiny) by the mapper
    paths = make_synthetic_coco(os.path.join(work, "data"), num_images=16 if args.tiny else 64, seed=0,
                                num_val=args.eval_images, min_size=side[0], max_size=side[1])
    for split in ("train", "val"):  # COCO's layout, so tools/train.py in a subprocess finds it too
        os.makedirs(os.path.join(work, "coco", "annotations"), exist_ok=True)
        os.symlink(paths[split], os.path.join(work, "coco", "annotations", f"instances_{split}2017.json"))
        os.symlink(paths["image_root_" + split], os.path.join(work, "coco", f"{split}2017"))
    env["RETHINK_DATASETS"] = os.environ["RETHINK_DATASETS"] = work
    log.info("data generated in %.0f s under %s", time.time() - t0, work)
    configs = os.path.join(ROOT, "configs")
    gn = os.path.join(configs, "demo", "scratch_gn_r18_tiny.yaml") if args.tiny else os.path.join(configs,
                                                                                                  "scratch_gn_r50.yaml")
    syncbn_config, syncbn_extra = (gn, {"MODEL__RESNETS__NORM": "SyncBN"}) if args.tiny else \
        (os.path.join(configs, "scratch_syncbn_r50.yaml"), {})
    rows = [("check", "s/iter or s/image", "peak GiB", "result")]
    model = None
    for name, extra in (("train fp32", {}), ("train fp16", {"SOLVER__AMP__ENABLED": True}),
                        ("train bf16", {"SOLVER__AMP__ENABLED": True, "SOLVER__AMP__DTYPE": "bfloat16"})):
        try:
            cfg = load_config(gn, overrides(args, os.path.join(work, name.replace(" ", "_")), **extra))
            trainer, sec, peak = timed_steps(cfg, 1 if args.tiny else 5, args.steps)
            model = trainer.model if name == "train fp32" else model
            rows.append((name, f"{sec:.3f}", f"{peak:.1f}", "ok"))
        except Exception as e:  # noqa: BLE001 - every row runs and reports
            traceback.print_exc()
            rows.append((name, "-", "-", f"FAILED: {type(e).__name__}: {e}"[:200]))
    try:
        if args.device.startswith("cuda"):
            torch.distributed.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{29500 + os.getpid() % 1000}",
                                                 rank=0, world_size=1)
            comm.init_cpu_group()
        cfg = load_config(syncbn_config, overrides(args, os.path.join(work, "syncbn"), **syncbn_extra))
        _, sec, peak = timed_steps(cfg, 1 if args.tiny else 3, max(2, args.steps // 2), syncbn=True)
        rows.append(("train SyncBN (world 1)", f"{sec:.3f}", f"{peak:.1f}", "ok"))
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        rows.append(("train SyncBN (world 1)", "-", "-", f"FAILED: {type(e).__name__}: {e}"[:200]))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    try:
        cfg = load_config(gn, overrides(args, os.path.join(work, "eval")))
        if model is None:
            raise RuntimeError("no trained model (the fp32 row failed)")
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        results = flatten_results(evaluate(cfg, model, torch.device(args.device)))
        sec = (time.perf_counter() - t) / args.eval_images
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if args.device.startswith("cuda") else float("nan")
        rows.append((f"eval {args.eval_images} images", f"{sec:.3f}", f"{peak:.1f}",
                     f"ok (box AP {results.get('bbox/AP', float('nan')):.1f}, mask AP "
                     f"{results.get('segm/AP', float('nan')):.1f} after {args.steps + 5} steps)"))
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        rows.append((f"eval {args.eval_images} images", "-", "-", f"FAILED: {type(e).__name__}: {e}"[:200]))
    try:
        result, _ = signal_check(args, gn, os.path.join(work, "signal"), env)
        rows.append(("SIGUSR2 mid-run", "-", "-", result))
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        rows.append(("SIGUSR2 mid-run", "-", "-", f"FAILED: {type(e).__name__}: {e}"[:200]))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    lines = [f"gpu_check on {device}, torch {torch.__version__}, {time.time() - t0:.0f} s in all"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
    log.info("\n%s", "\n".join(lines))
    return 0 if all(r[3].startswith("ok") or r[0] == "SIGUSR2 mid-run" for r in rows[1:]) else 1


if __name__ == "__main__":
    sys.exit(main())
