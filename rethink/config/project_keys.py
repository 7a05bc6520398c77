"""The config keys this project adds to detectron2's. Every new key is declared here, once, with
what it means; nothing else in the package adds keys."""
from fvcore.common.config import CfgNode as CN


def add_project_keys(cfg: CN) -> None:
    # --- schedules (rethink.config.schedule) -------------------------------------------------------
    # Paper schedule as "Nx" (N may be fractional: "0.5x", "6x"). When set, MAX_ITER = N * SCHEDULE_UNIT
    # and STEPS = (MAX_ITER - 2/3 unit, MAX_ITER - 2/9 unit), i.e. the LR drops 60k and 20k iterations
    # before the end for the 90k unit. An explicitly set MAX_ITER or STEPS wins. "" = use MAX_ITER/STEPS.
    cfg.SOLVER.SCHEDULE = ""
    # Iterations of one "1x" schedule at REFERENCE_IMS_PER_BATCH images/batch (the paper: 90k at 16).
    cfg.SOLVER.SCHEDULE_UNIT = 90000
    # The batch size at which BASE_LR and every iteration count of SOLVER/TEST are written. When
    # IMS_PER_BATCH differs, BASE_LR scales by IMS_PER_BATCH/REFERENCE and MAX_ITER, STEPS,
    # WARMUP_ITERS, CHECKPOINT_PERIOD, SCHEDULE_UNIT and TEST.EVAL_PERIOD by its inverse (linear scaling rule).
    # After resolution it equals IMS_PER_BATCH, so resolving a saved config again changes nothing.
    # 0 (the default) disables scaling, so a detectron2 config runs exactly as written; this project's
    # configs set 16 (configs/Base-MaskRCNN-FPN.yaml), the batch of the paper's schedules.
    cfg.SOLVER.REFERENCE_IMS_PER_BATCH = 0
    # Extra iterations (counted as completed iterations) at which to write model_XXXXXXX.pth besides
    # every CHECKPOINT_PERIOD: the fork points of shorter schedules branching off this run (rethink.cluster.branches).
    cfg.SOLVER.CHECKPOINT_ITERS = ()
    # Periodic checkpoints kept on disk: each save removes the older ones beyond the newest N, except
    # those at CHECKPOINT_ITERS (fork points); model_final is always kept. 0 keeps them all. A 6x R50
    # run writes 54 checkpoints of ~366 MB (20 GB) with CHECKPOINT_PERIOD 10000; 3 keep ~1.1 GB.
    cfg.SOLVER.CHECKPOINT_KEEP = 3

    # --- datasets (rethink.data.user_datasets) ------------------------------------------------------------
    # Your own COCO-format datasets, by their files: a list of [name, json, image_root] (image_root may be left
    # out: then it is found beside the json), e.g. (("mine_train", "/data/mine/train.json", "/data/mine/images"),).
    # Each name is then usable in DATASETS.TRAIN / DATASETS.TEST, and its subsets by name (mine_train_1of10_s0).
    # The config travels with every rank and every SLURM / local job, so the registration does too.
    # (A DATASETS.TRAIN / TEST entry ending in .json is a dataset by path, without a name.)
    # MODEL.ROI_HEADS.NUM_CLASSES 0 means "from the data": the number of categories of the first DATASETS.TRAIN
    # json (of DATASETS.TEST when there is none), resolved when the run starts; the saved config.yaml keeps 0.
    cfg.DATASETS.REGISTER = ()

    # --- initial weights (rethink.weights.load) -----------------------------------------------------------
    # Smallest fraction of the model's backbone (ResNet body) tensors that MODEL.WEIGHTS must fill, by name
    # and shape, for the load to go ahead: below it the load is refused, naming the file, how many matched
    # of how many and examples of what did not. 1.0 (the default) asks for the whole backbone, which every
    # correct file gives (ImageNet weights, detectron2 model files, our checkpoints); an R18 file into an
    # R50 model fills about half. Lower it (0.0 accepts any partial load) to load a partial backbone on purpose.
    cfg.MODEL.WEIGHTS_MIN_BACKBONE_MATCH = 1.0

    # --- mixed precision (rethink.engine.trainer) -----------------------------------------------------
    # Autocast dtype when SOLVER.AMP.ENABLED (CUDA only): "float16" (losses scaled by a GradScaler) or
    # "bfloat16" (float32's range: no scaler). Anchors, box decoding and the losses stay float32.
    cfg.SOLVER.AMP.DTYPE = "float16"

    # --- evaluation ----------------------------------------------------------------------------------
    # COCO evaluator backend: "hotcoco" (default: Rust, bit-identical to pycocotools, 25-60x faster on 5k
    # images), "pycocotools" (the reference implementation) or "faster_coco_eval" (C++, equal to ~1e-16).
    cfg.TEST.EVALUATOR = "hotcoco"
